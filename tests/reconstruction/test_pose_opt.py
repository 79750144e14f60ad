"""Render-and-compare pose optimisation against a frozen splat scene: a perturbed pose is
recovered, hypotheses are batched independently, and the mask term pulls the silhouette."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.cameras import Cameras
from geometry.pose_metrics import rotation_angle_deg
from geometry.se3 import invert_T, make_T
from geometry.so3 import axis_angle_to_matrix
from reconstruction.gaussians import GaussianScene
from reconstruction.pose_opt import PoseOptConfig, optimise_poses
from reconstruction.scene_model import GaussianSceneModel
from reconstruction.splatting import rgb_to_sh

W, H = 64, 48
K = torch.tensor([[60.0, 0.0, W / 2], [0.0, 60.0, H / 2], [0.0, 0.0, 1.0]])


def _scene(n: int = 1500, seed: int = 0) -> GaussianScene:
    """Small opaque Gaussians filling a box 2-4 m in front of the origin camera, with a
    smooth colour field (a pose search needs gradients wider than one Gaussian)."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=gen) * torch.tensor([3.0, 2.4, 2.0]) \
        + torch.tensor([-1.5, -1.2, 2.0])
    x, y, z = means.unbind(-1)
    colours = 0.5 + 0.45 * torch.stack([torch.sin(3 * x + 1), torch.cos(2.5 * y),
                                        torch.sin(2 * z + x)], -1)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return GaussianScene(means=means, quats=quats, log_scales=torch.full((n, 3), math.log(0.06)),
                         logit_opacities=torch.full((n,), 3.0),
                         sh0=rgb_to_sh(colours)[:, None, :], shN=torch.zeros(n, 0, 3))


def _model(scene: GaussianScene) -> GaussianSceneModel:
    return GaussianSceneModel(scene, _cameras(torch.eye(4)[None]))


def _cameras(T_cam_world: torch.Tensor) -> Cameras:
    """``[B]`` cameras of the test's intrinsics at world-to-camera poses ``[B, 4, 4]``."""
    return Cameras(K=K, T_world_cam=invert_T(T_cam_world), width=W, height=H)


def _render(model: GaussianSceneModel, T_cam_world: torch.Tensor) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
    out = model.render(_cameras(T_cam_world[None]), ("rgb", "alpha"))
    return out.rgb[0], out.alpha[0]


def _pose_errors(T_a: torch.Tensor, T_b: torch.Tensor) -> tuple[float, float]:
    rot = float(rotation_angle_deg(T_a[:3, :3], T_b[:3, :3]))
    c_a = -T_a[:3, :3].T @ T_a[:3, 3]
    c_b = -T_b[:3, :3].T @ T_b[:3, 3]
    return rot, float((c_a - c_b).norm())


def _perturbation(angle_deg: float = 2.0) -> torch.Tensor:
    """``angle_deg`` about a tilted axis and 6 cm sideways."""
    axis = torch.nn.functional.normalize(torch.tensor([0.4, -0.8, 0.45]), dim=0)
    return make_T(axis_angle_to_matrix(axis * math.radians(angle_deg)),
                  torch.tensor([0.06, -0.02, 0.0]))


def test_near_model_renders_like_the_full_one():
    model = _model(_scene())
    T = torch.eye(4)
    full, _ = _render(model, T)
    local = model.near(_cameras(T[None]))
    assert 0 < local.scene.num_gaussians <= model.scene.num_gaussians
    culled, _ = _render(local, T)
    torch.testing.assert_close(culled, full, atol=1e-5, rtol=0)


def test_perturbed_pose_is_recovered():
    model = _model(_scene())
    T_true = torch.eye(4)
    target, alpha = _render(model, T_true)
    assert float(alpha.mean()) > 0.95  # the view is covered
    T_init = _perturbation() @ T_true
    rot0, trans0 = _pose_errors(T_init, T_true)
    config = PoseOptConfig(iterations=60, coarse_fraction=0.0)
    result = optimise_poses(model, _cameras(T_init[None]), target.detach()[None], config,
                            scene_scale=3.0)
    rot1, trans1 = _pose_errors(result.T_cam_world[0], T_true)
    assert float(result.final_loss[0]) < 0.3 * float(result.initial_loss[0])
    assert rot1 < 0.25 * rot0, (rot0, rot1)
    assert trans1 < 0.25 * trans0, (trans0, trans1)
    assert float(result.rotation_change_deg[0]) == pytest.approx(
        float(rotation_angle_deg(T_init[:3, :3], result.T_cam_world[0, :3, :3])), abs=1e-3)
    torch.testing.assert_close(result.T_world_cam, invert_T(result.T_cam_world))


def test_no_iterations_keeps_the_initial_pose():
    model = _model(_scene(300))
    T = torch.eye(4)
    target, _ = _render(model, T)
    result = optimise_poses(model, _cameras(T[None]), target[None], PoseOptConfig(iterations=0),
                            1.0)
    torch.testing.assert_close(result.T_cam_world[0], T)
    assert float(result.initial_loss[0]) == float(result.final_loss[0]) < 1e-6
    assert result.iterations == 0


def test_hypotheses_are_optimised_independently_in_one_batch():
    model = _model(_scene())
    target, _ = _render(model, torch.eye(4))
    axis = torch.nn.functional.normalize(torch.tensor([0.1, 1.0, -0.2]), dim=0)
    T_init = torch.stack([_perturbation(), torch.eye(4),
                          make_T(axis_angle_to_matrix(axis * math.radians(3.0)),
                                 torch.zeros(3))])
    config = PoseOptConfig(iterations=20)
    batch = optimise_poses(model, _cameras(T_init), target[None].expand(3, -1, -1, -1), config,
                           3.0)
    assert batch.T_cam_world.shape == (3, 4, 4) and batch.final_loss.shape == (3,)
    assert bool((batch.final_loss <= batch.initial_loss).all())
    for k in range(3):
        alone = optimise_poses(model, _cameras(T_init[k:k + 1]), target[None], config, 3.0)
        # The same path up to float rounding (degree-0 colours: the baked colours agree).
        torch.testing.assert_close(batch.T_cam_world[k], alone.T_cam_world[0], atol=1e-4,
                                   rtol=0)
        assert float(batch.final_loss[k]) == pytest.approx(float(alone.final_loss[0]), rel=1e-3)
    # The true pose is a minimum: it moves by rounding only.
    assert float(batch.rotation_change_deg[1]) < 0.05


def _project(T_cam_world: torch.Tensor, pt_world: torch.Tensor) -> torch.Tensor:
    pt_cam = T_cam_world[:3, :3] @ pt_world + T_cam_world[:3, 3]
    return (K @ pt_cam)[:2] / pt_cam[2]


def test_mask_term_alone_recovers_a_shift():
    # A small black square on black: the photometric term is flat, only its silhouette
    # tells where the camera is.
    n = 400
    u = torch.linspace(-0.4, 0.4, 20)
    means = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(n, 2)
    means = torch.cat((means, torch.full((n, 1), 3.0)), -1)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    scene = GaussianScene(means=means, quats=quats, log_scales=torch.full((n, 3), math.log(0.03)),
                          logit_opacities=torch.full((n,), 4.0),
                          sh0=rgb_to_sh(torch.zeros(n, 3))[:, None], shN=torch.zeros(n, 0, 3))
    model = _model(scene)
    target, alpha = _render(model, torch.eye(4))
    mask = alpha > 0.5
    T_init = make_T(torch.eye(3), torch.tensor([0.15, -0.1, 0.0]))
    config = PoseOptConfig(iterations=60, coarse_fraction=0.0, mask_weight=1.0)
    result = optimise_poses(model, _cameras(T_init[None]), target[None], config, 3.0,
                            masks=mask[None])
    assert float(result.final_loss[0]) < 0.2 * float(result.initial_loss[0])
    # A sideways shift and a small turn look alike: compare where the square's centre lands.
    centre = torch.tensor([0.0, 0.0, 3.0])
    px0 = float((_project(T_init, centre) - _project(torch.eye(4), centre)).norm())
    px1 = float((_project(result.T_cam_world[0], centre) - _project(torch.eye(4), centre)).norm())
    assert px1 < 0.2 * px0, (px0, px1)
    # Without the mask term nothing pulls the pose (the images are all black).
    still = optimise_poses(model, _cameras(T_init[None]), target[None],
                           PoseOptConfig(iterations=10), 3.0, masks=mask[None])
    assert float(still.rotation_change_deg[0]) < 1e-3
