"""SpaRP's pose stage (pose.camera.sparp.solver): NOCS maps -> camera poses.

Exact maps of generated objects give the cameras back to float precision; maps with
Gaussian noise (sigma 0.03 NOCS units) and 30 % outlier pixels within 3 degrees (median of
the relative rotations, the issue's bar); symmetric objects whose per-view maps were
canonicalised to different symmetric frames get consistent poses back from the colours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.errors import UserError
from geometry.pose_metrics import pose_metrics, rotation_angle_deg
from pose.camera.sparp.solver import (
    NocsView,
    SolverConfig,
    Symmetry,
    intrinsics_from_fov,
    median_filter_nocs,
    project,
    smooth_nocs,
    solve_pnp,
    solve_views,
)
from pose.camera.sparp.synthetic import corrupt, random_cameras, render_box_nocs


def _angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of R_a^T R_b (atan2-based: exact near 0, unlike acos of the trace)."""
    return float(rotation_angle_deg(torch.from_numpy(R_a), torch.from_numpy(R_b)))


def _views(seq) -> list[NocsView]:
    return [NocsView(seq.nocs[v].double().numpy(), seq.masks[v].numpy(),
                     seq.cameras.K[v].numpy(), seq.images[v].double().numpy())
            for v in range(seq.num_views)]


@pytest.fixture(scope="module")
def sequences():
    from reconstruction.procedural.objects import ObjectSequenceConfig, object_sequence

    cfg = ObjectSequenceConfig(image_size=64, views=4)
    return [object_sequence(seed, cfg) for seed in (101, 102, 103, 105)]


def test_intrinsics_and_projection_follow_the_pixel_centre_convention():
    K = intrinsics_from_fov(64, 48, 90.0)
    # 90 degrees across the longer side: f = W / 2; principal point at the image centre.
    assert np.allclose(K, [[32, 0, 32], [0, 32, 24], [0, 0, 1]])
    uv, z = project(K, np.eye(3), np.zeros(3), np.array([[0.0, 0.0, 2.0], [1.0, -0.5, 2.0]]))
    assert np.allclose(uv, [[32, 24], [48, 16]]) and np.allclose(z, 2.0)
    with pytest.raises(UserError):
        intrinsics_from_fov(64, 64, 180.0)


def test_pnp_on_exact_points_is_exact_and_ignores_outliers():
    """Random object points projected by a known camera; 30 % replaced by random points."""
    rng = np.random.default_rng(0)
    K = intrinsics_from_fov(128, 96, 50.0)
    R_true = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    R_true *= np.linalg.det(R_true)
    t_true = np.array([0.1, -0.05, 2.5])
    pts = rng.uniform(-0.5, 0.5, (400, 3))
    uv, _ = project(K, R_true, t_true, pts)
    bad = rng.random(400) < 0.3
    pts_obs = np.where(bad[:, None], rng.uniform(-0.5, 0.5, (400, 3)), pts)
    pose = solve_pnp(uv, pts_obs, K, (128, 96), SolverConfig(), rng)
    assert _angle_deg(pose.R_cam_obj, R_true) < 1e-6
    assert np.allclose(pose.t_cam_obj, t_true, atol=1e-7)
    # random replacements that land near the true point are (rightly) inliers
    assert 0 <= pose.num_inliers - int((~bad).sum()) <= 3


def test_exact_maps_of_generated_objects_give_the_cameras(sequences):
    errors = []
    for seq in sequences:
        result = solve_views(_views(seq))
        m = pose_metrics(torch.from_numpy(result.T_obj_cam), seq.cameras.T_world_cam)
        errors.append(m.rel_rot_err_deg)
        # Translations in NOCS units: the similarity to the true cameras has the object's
        # size as its scale (metres per NOCS unit).
        assert m.scale == pytest.approx(seq.nocs_scale, rel=1e-6)
        assert float(m.trans_err.max()) < 1e-6 * seq.nocs_scale
        assert all(v.num_inliers == v.num_points for v in result.views)
    assert float(torch.cat(errors).max()) < 1e-4  # float64 PnP on exact maps


def test_noisy_maps_with_outliers_stay_within_3_degrees(sequences):
    rng = np.random.default_rng(1)
    errors = []
    for seq in sequences:
        views = [corrupt(v, 0.03, 0.3, rng) for v in _views(seq)]
        result = solve_views(views)
        errors.append(pose_metrics(torch.from_numpy(result.T_obj_cam),
                                   seq.cameras.T_world_cam).rel_rot_err_deg)
        for v, view in zip(result.views, views, strict=True):
            # about 70 % of the pixels are inliers; the band may drop a few noisy ones
            assert 0.45 * view.mask.sum() < v.num_inliers < 0.8 * view.mask.sum()
    errors = torch.cat(errors)
    assert float(errors.median()) < 3.0, errors


def test_relative_poses_put_the_first_camera_at_the_origin(sequences):
    seq = sequences[0]
    result = solve_views(_views(seq))
    T = result.T_cam0_cam
    assert np.allclose(T[0], np.eye(4), atol=1e-9)
    T_gt = seq.cameras.T_world_cam.numpy()
    T_gt_rel = np.linalg.inv(T_gt[0]) @ T_gt
    for k in range(1, len(T)):
        assert _angle_deg(T[k, :3, :3], T_gt_rel[k, :3, :3]) < 1e-4
        assert np.allclose(T[k, :3, 3] * seq.nocs_scale, T_gt_rel[k, :3, 3], atol=1e-6)


def test_symmetric_maps_canonicalised_per_view_are_made_consistent():
    """A square box (4-fold about z) whose map in view k was given in the frame rotated by
    k * 90 degrees, as a network may predict it; its texture is not symmetric."""
    rng = np.random.default_rng(3)
    K = intrinsics_from_fov(96, 96, 45.0)
    half = np.array([0.5, 0.5, 0.8])
    poses = random_cameras(4, rng)
    symmetry = Symmetry(order=4)
    rotations = symmetry.rotations()
    views = []
    for k, (R, t) in enumerate(poses):
        view = render_box_nocs(half, R, t, K, 96, 96)
        nocs = view.nocs.copy()
        nocs[view.mask] = (nocs[view.mask] - 0.5) @ rotations[k].T + 0.5
        views.append(NocsView(nocs, view.mask, K, view.rgb))

    def relative_errors(result):
        T_cam0_cam = result.T_cam0_cam
        T_cam0_obj = np.eye(4)
        T_cam0_obj[:3, :3], T_cam0_obj[:3, 3] = poses[0]
        errs = []
        for k, (R, t) in enumerate(poses):
            T_obj_cam = np.eye(4)
            T_obj_cam[:3, :3], T_obj_cam[:3, 3] = R.T, -R.T @ t
            errs.append(_angle_deg((T_cam0_obj @ T_obj_cam)[:3, :3], T_cam0_cam[k, :3, :3]))
        return np.array(errs)

    naive = relative_errors(solve_views(views))
    assert np.allclose(naive, [0, 90, 180, 90], atol=1e-3)  # what PnP alone gives
    result = solve_views(views, symmetry=symmetry)
    assert [v.symmetry_index for v in result.views] == [0, 1, 2, 3]
    assert relative_errors(result).max() < 1e-3


def test_objects_symmetric_in_shape_and_texture_keep_their_maps_frames():
    """A generated can ('axis': geometry and texture symmetric about z) solved with the
    continuous symmetry hypotheses: all tie, so the exact maps' own (correct) frames stay."""
    from reconstruction.procedural.objects import ObjectSequenceConfig, object_sequence

    seq = object_sequence(1, ObjectSequenceConfig(image_size=64, views=4))
    assert seq.category == "can" and seq.symmetry == "axis"
    result = solve_views(_views(seq), Symmetry.from_tag(seq.symmetry))
    assert [v.symmetry_index for v in result.views] == [0, 0, 0, 0]
    m = pose_metrics(torch.from_numpy(result.T_obj_cam), seq.cameras.T_world_cam)
    assert float(m.rel_rot_err_deg.max()) < 1e-4


def test_symmetry_tags():
    assert Symmetry.from_tag("none").rotations().shape == (1, 3, 3)
    assert Symmetry.from_tag("near").order == 1
    axis = Symmetry.from_tag("axis")
    assert axis.order == 0 and axis.rotations().shape == (36, 3, 3)
    z4 = Symmetry.from_tag("z4").rotations()
    assert np.allclose(z4[1], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    assert np.allclose(Symmetry.from_tag("x2").rotations()[1], np.diag([1.0, -1, -1]))
    with pytest.raises(UserError, match="unknown symmetry"):
        Symmetry.from_tag("spiral")


def test_filters_keep_linear_maps_and_remove_outliers():
    """A NOCS map linear in the pixel coordinates is a fixed point of the local plane fit
    (also at the silhouette), and the median filter removes isolated gross errors."""
    h, w = 20, 24
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    nocs = np.stack((0.2 + 0.02 * cols, 0.3 + 0.015 * rows, 0.5 + 0.01 * (cols - rows)), -1)
    mask = (rows - 10) ** 2 + (cols - 12) ** 2 < 64
    smoothed, ok = smooth_nocs(nocs, mask, 7)
    assert ok[mask].mean() > 0.95
    # 1e-6: the fit's ridge term on the slopes (1e-6) and box-filter round-off
    assert np.abs(smoothed[ok] - nocs[ok]).max() < 1e-6
    spoiled = nocs.copy()
    spoiled[10, 12] = (0.9, 0.1, 0.9)
    median = median_filter_nocs(spoiled, mask, 3)
    assert np.abs(median[10, 12] - nocs[10, 12]).max() < 0.03


def test_too_few_pixels_is_a_user_error():
    K = intrinsics_from_fov(32, 32, 50.0)
    mask = np.zeros((32, 32), bool)
    mask[10:12, 10:13] = True
    view = NocsView(np.full((32, 32, 3), 0.5), mask, K)
    with pytest.raises(UserError, match="only 6 valid pixels"):
        solve_views([view, view], names=["a.png", "b.png"])


CO3D_APPLE = Path(__file__).parents[2].parent / "shared" / "datasets" / "co3d_apple"


@pytest.mark.slow
def test_co3d_apple_cameras_come_back_from_rendered_nocs_maps():
    """Real cameras end to end: read_co3d -> NOCS maps rendered by our rasterizer -> solver
    (about 12 s on 2 loaded cores; measured 0.81 deg median, the rendering's residue)."""
    if not (CO3D_APPLE / "gt_cameras.npz").is_file():
        pytest.skip(f"the CO3D apple sequence is not at {CO3D_APPLE}")
    from pose.camera.sparp.co3d_check import run_co3d_check

    check = run_co3d_check(CO3D_APPLE)
    assert check.views == 20 and check.image_size == (266, 474)
    assert check.rot_err_median_deg < 2.0, check.rot_err_median_deg
    assert check.rel_rot_err_median_deg < 2.0, check.rel_rot_err_median_deg
    assert check.rra15 == 1.0 and check.cca10 == 1.0


@pytest.mark.slow
def test_co3d_apple_cameras_come_back_from_nocs_maps_of_fitted_splats():
    """The issue's criterion: splats fitted to the real apple photos with all ground-truth
    cameras fixed -> NOCS maps rendered from the splats -> the solver gives the cameras
    back within 2 deg (median). Measured 0.65 deg; the whole check took 7.7 min on 2
    heavily loaded cores (fit 7.4 min)."""
    if not (CO3D_APPLE / "gt_cameras.npz").is_file():
        pytest.skip(f"the CO3D apple sequence is not at {CO3D_APPLE}")
    from pose.camera.sparp.co3d_splats import run_co3d_splats_check

    check = run_co3d_splats_check(CO3D_APPLE)
    assert check.views == 20 and check.image_size == (144, 256)
    assert check.object_pixels_median > 1000
    assert check.rot_err_median_deg < 2.0, check.rot_err_median_deg
    assert check.rra15 == 1.0 and check.cca10 == 1.0
