"""SparseAGS outlier correction: the hypothesis grid, the scene's up, and a view turned by
180 degrees about the object found again by search and refinement (value checks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geometry.cameras import Cameras
from geometry.pose_metrics import rotation_angle_deg
from geometry.se3 import look_at
from geometry.so3 import axis_angle_to_matrix
from pose.camera.sparseags.correction import (
    CorrectionConfig,
    correct_outlier,
    planned_steps,
    pose_hypotheses,
    up_direction,
)
from reconstruction.gaussians import GaussianScene
from reconstruction.scene_model import GaussianSceneModel
from reconstruction.splatting import rgb_to_sh

W, H = 64, 48
K = torch.tensor([[60.0, 0.0, W / 2], [0.0, 60.0, H / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
#: (azimuth, elevation) in degrees of the inlier cameras, all 1 m from the object.
INLIERS = ((0, 20), (50, 30), (110, 15), (170, 25), (240, 20), (300, 35))

# A small search: 3 elevations x 24 azimuths x 1 radius at 32x24 px, 3 kept with 2 jittered
# copies each at 48x36, the best 2 at 64x48 (about 7 s on one loaded core).
SMALL = CorrectionConfig(radius_factors=(1.0,), elevation_margin_deg=10.0,
                         elevation_step_deg=20.0, search_size=32, search_iterations=10,
                         top_fraction=0.04, top_min=3, jitter_count=2, refine_size=48,
                         refine_iterations=20, final_keep=2, final_size=64, final_iterations=30)


def _object(n: int = 800, seed: int = 0) -> GaussianScene:
    """Opaque Gaussians on an ellipsoid about the origin (z up), coloured by azimuth and
    height with stripes: every side of it looks different."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    means = d * torch.tensor([0.28, 0.22, 0.32])
    azimuth = torch.atan2(d[:, 1], d[:, 0])
    colours = torch.stack([0.5 + 0.45 * torch.cos(azimuth), 0.5 + 0.45 * torch.sin(azimuth),
                           0.5 + 0.4 * d[:, 2]], -1)
    stripes = torch.sign(torch.sin(9 * means[:, 2] + 5 * azimuth))
    colours = colours * (0.75 + 0.25 * stripes)[:, None]
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return GaussianScene(means=means, quats=quats, log_scales=torch.full((n, 3), math.log(0.035)),
                         logit_opacities=torch.full((n,), 4.0),
                         sh0=rgb_to_sh(colours.clamp(0, 1))[:, None], shN=torch.zeros(n, 0, 3))


def _pose(azimuth_deg: float, elevation_deg: float, radius: float = 1.0) -> torch.Tensor:
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = radius * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    return torch.from_numpy(look_at(eye, np.zeros(3)))


def _cameras(poses: list[torch.Tensor]) -> Cameras:
    return Cameras(K=K, T_world_cam=torch.stack(poses), width=W, height=H)


def _turned(T_world_cam: torch.Tensor, degrees: float) -> torch.Tensor:
    """The pose orbited by ``degrees`` about the world z axis through the origin."""
    R = torch.eye(4, dtype=torch.float64)
    R[:3, :3] = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.radians(degrees)],
                                                  dtype=torch.float64))
    return R @ T_world_cam


@pytest.fixture(scope="module")
def problem():
    """The model (the object itself: its exact pose is the global minimum), the inlier
    cameras, and an outlier view 1.05 m away at azimuth 200 with its photo and mask."""
    torch.manual_seed(0)
    inliers = _cameras([_pose(a, e) for a, e in INLIERS])
    model = GaussianSceneModel(_object(), inliers)
    true = _pose(200.0, 22.0, radius=1.05)
    with torch.no_grad():
        out = model.render(_cameras([true]), ("rgb", "alpha"))
    return model, inliers, true, out.rgb[0], (out.alpha[0] > 0.5).float()


def _errors(T: torch.Tensor, true: torch.Tensor) -> tuple[float, float]:
    return (float(rotation_angle_deg(T[:3, :3], true[:3, :3])),
            float((T[:3, 3] - true[:3, 3]).norm()))


def test_view_turned_180_degrees_is_corrected(problem):
    model, inliers, true, image, mask = problem
    initial = _turned(true, 180.0)
    assert _errors(initial, true)[0] == pytest.approx(180.0, abs=1e-6)
    steps = []
    result = correct_outlier(model, inliers, image, mask, K, W, H, SMALL, scene_scale=1.0,
                             initial_T_world_cam=initial, on_step=lambda: steps.append(1))
    rot_err, centre_err = _errors(result.T_world_cam, true)
    # The grid's nearest hypothesis is within 7.5 deg of azimuth and 10 deg of elevation;
    # refinement at 64x48 px brings it to ~0.1 deg and ~1 mm (measured), so 1 deg and 1 cm
    # leave room for float rounding on other machines.
    assert rot_err < 1.0 and centre_err < 0.01
    assert not result.from_initial
    assert result.initial_loss is not None and result.loss < 0.5 * result.initial_loss
    assert result.perceptual_kind == "1-ssim" and result.perceptual < 0.01
    assert result.T_world_cam.dtype == torch.float64 and result.T_world_cam.shape == (4, 4)
    grid = len(pose_hypotheses(inliers, model.centre(), SMALL))
    assert grid == 3 * 24
    assert result.hypotheses == (grid + 1) + 3 * 3 + 2
    assert len(steps) == planned_steps(grid + 1, SMALL)
    assert [s.name for s in result.stages] == ["search", "refine", "final"]
    assert (result.stages[-1].width, result.stages[-1].height) == (W, H)


def test_correction_is_deterministic_and_works_without_mask(problem):
    model, inliers, true, image, _ = problem
    config = CorrectionConfig(radius_factors=(1.0,), azimuth_step_deg=30.0,
                              elevation_margin_deg=0.0, elevation_step_deg=45.0,
                              search_size=32, search_iterations=12, top_fraction=0.1,
                              top_min=2, jitter_count=1, refine_size=48, refine_iterations=20,
                              final_keep=1, final_size=64, final_iterations=30)
    first = correct_outlier(model, inliers, image, None, K, W, H, config, 1.0)
    second = correct_outlier(model, inliers, image, None, K, W, H, config, 1.0)
    assert torch.equal(first.T_world_cam, second.T_world_cam)
    assert first.loss == second.loss
    # Azimuths every 30 deg, one elevation (the inliers' middle, 25 deg): the nearest
    # hypothesis is 10 deg of azimuth and 3 deg of elevation off; refinement closes it.
    rot_err, centre_err = _errors(first.T_world_cam, true)
    assert rot_err < 1.0 and centre_err < 0.01


def test_hypotheses_circle_the_object_and_aim_at_it():
    inliers = _cameras([_pose(a, e) for a, e in INLIERS])
    centre = torch.tensor([0.05, -0.02, 0.01], dtype=torch.float64)
    config = CorrectionConfig(radius_factors=(0.8, 1.0, 1.25), roll_deg=(0.0, 20.0),
                              elevation_margin_deg=10.0, elevation_step_deg=10.0)
    T = pose_hypotheses(inliers, centre, config)
    # Elevations and azimuths about the centre, in the frame of the inliers' up (their
    # orbit's normal, a few degrees off z as their elevations vary).
    up = up_direction(inliers)
    e1 = torch.nn.functional.normalize(torch.linalg.cross(up, T.new_tensor([1.0, 0.0, 0.0])),
                                       dim=0)
    e2 = torch.linalg.cross(up, e1)
    offsets = T[:, :3, 3] - centre
    distance = offsets.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin(offsets @ up / distance))
    n_elev = len(torch.unique(elevation.round(decimals=6)))
    assert len(T) == n_elev * 24 * 3 * 2 and n_elev in (5, 6)
    inlier_offsets = inliers.T_world_cam[:, :3, 3] - centre
    inlier_elev = torch.rad2deg(torch.asin(inlier_offsets @ up / inlier_offsets.norm(dim=-1)))
    assert float(elevation.min()) == pytest.approx(float(inlier_elev.min()) - 10.0, abs=1e-6)
    assert float(elevation.max()) == pytest.approx(float(inlier_elev.max()) + 10.0, abs=1e-6)
    radius = float(inlier_offsets.norm(dim=-1).median())
    assert sorted({round(float(d) / radius, 6) for d in distance}) == [0.8, 1.0, 1.25]
    azimuth = torch.rad2deg(torch.atan2(offsets @ e2, offsets @ e1)) % 360.0
    assert len(torch.unique((azimuth / 15.0).round() % 24)) == 24
    residue = (azimuth - azimuth[0]) / 15.0
    torch.testing.assert_close(residue, residue.round(), atol=1e-6, rtol=0)
    # Every camera looks at the centre (its optical axis passes through it) ...
    axis = T[:, :3, 2]
    torch.testing.assert_close((axis * -offsets / distance[:, None]).sum(-1),
                               torch.ones(len(T), dtype=torch.float64), atol=1e-9, rtol=0)
    # ... with its x axis level (roll 0) or turned 20 deg about the axis.
    level = torch.linalg.cross(axis, up.expand_as(axis))
    level = torch.nn.functional.normalize(level, dim=-1)
    roll = torch.rad2deg(torch.acos((T[:, :3, 0] * level).sum(-1).abs().clamp(max=1.0)))
    assert sorted({round(float(r), 4) for r in roll}) == [0.0, 20.0]
    # Aimed through another pixel ray, the centre lands on that ray.
    ray = torch.tensor([0.1, -0.05, 1.0], dtype=torch.float64)
    T_ray = pose_hypotheses(inliers, centre, config, ray_cam=ray)
    R_cam_world = T_ray[:, :3, :3].transpose(-1, -2)
    centre_cam = (R_cam_world @ (centre - T_ray[:, :3, 3])[..., None])[..., 0]
    expected = (ray / ray.norm()).expand_as(centre_cam)
    torch.testing.assert_close(centre_cam / centre_cam.norm(dim=-1, keepdim=True), expected,
                               atol=1e-9, rtol=0)


def test_up_is_the_orbit_normal_not_the_mean_camera_up():
    """Cameras on a ring tilted 20 deg from the xy plane, all looking down 30 deg at the
    centre: the mean image-up leans toward the ring's centre, the ring's normal does not."""
    tilt = axis_angle_to_matrix(torch.tensor([math.radians(20.0), 0.0, 0.0],
                                             dtype=torch.float64))
    normal = tilt @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    poses = []
    for a in range(0, 360, 45):
        eye = tilt @ torch.tensor([math.cos(math.radians(a)), math.sin(math.radians(a)),
                                   math.tan(math.radians(30.0))], dtype=torch.float64)
        poses.append(torch.from_numpy(look_at(eye.numpy(), np.zeros(3), normal.numpy())))
    up = up_direction(_cameras(poses))
    torch.testing.assert_close(up, normal, atol=1e-9, rtol=0)
    # Two cameras span no plane: the mean image-up (here both level: the normal again).
    up_two = up_direction(_cameras(poses[:2]))
    assert float(up_two @ normal) > math.cos(math.radians(31.0))


def test_bad_inputs_are_refused(problem):
    model, inliers, _, image, mask = problem
    with pytest.raises(ValueError, match="image must be"):
        correct_outlier(model, inliers, image[:-1], None, K, W, H, SMALL, 1.0)
    with pytest.raises(ValueError, match="mask must be"):
        correct_outlier(model, inliers, image, mask[:, :-1], K, W, H, SMALL, 1.0)
    with pytest.raises(ValueError, match="top_fraction"):
        CorrectionConfig(top_fraction=0.0)


def test_decimated_scene_merges_moments():
    """Two Gaussians in one voxel become one with their opacity-weighted mean, the mean
    covariance plus their spread, the weighted colour and the higher opacity; a lone one is
    kept as it is."""
    from geometry.so3 import quat_to_matrix
    from pose.camera.sparseags.correction import decimated

    means = torch.tensor([[0.01, 0.01, 0.01], [0.05, 0.01, 0.01], [0.55, 0.5, 0.5]])
    opac = torch.tensor([0.25, 0.75, 0.5])
    sigma = torch.tensor([[0.01, 0.02, 0.03], [0.01, 0.02, 0.03], [0.04, 0.02, 0.01]])
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.4, 0.6]])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(3, 1)
    scene = GaussianScene(means=means, quats=quats, log_scales=sigma.log(),
                          logit_opacities=torch.logit(opac), sh0=rgb_to_sh(colours)[:, None],
                          shN=torch.zeros(3, 0, 3))
    model = GaussianSceneModel(scene, _cameras([_pose(0, 20)]))
    merged = decimated(model, 0.1).scene
    assert merged.num_gaussians == 2
    pair = int(torch.argmin(merged.means[:, 0]))
    w = opac[:2] / opac[:2].sum()
    torch.testing.assert_close(merged.means[pair], (w[:, None] * means[:2]).sum(0))
    spread = (w[:, None] * (means[:2] - merged.means[pair]) ** 2).sum(0)
    cov = torch.diag(sigma[0] ** 2 + spread)  # both share sigma; the spread is along x only
    R = quat_to_matrix(torch.nn.functional.normalize(merged.quats[pair], dim=0))
    got = R @ torch.diag(merged.scales[pair] ** 2) @ R.T
    torch.testing.assert_close(got, cov, atol=1e-8, rtol=1e-4)
    torch.testing.assert_close(merged.opacities[pair], torch.tensor(0.75), atol=1e-6, rtol=0)
    torch.testing.assert_close(merged.sh0[pair, 0], (w[:, None] * rgb_to_sh(colours[:2])).sum(0))
    lone = 1 - pair
    torch.testing.assert_close(merged.means[lone], means[2])
    torch.testing.assert_close(merged.scales[lone].sort().values, sigma[2].sort().values)
    assert decimated(model, 0.001) is model  # nothing to merge: the model itself
