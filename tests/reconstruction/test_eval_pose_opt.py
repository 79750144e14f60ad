"""Test-view pose optimisation against a frozen splat scene recovers a perturbed pose."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.se3 import make_T
from geometry.so3 import axis_angle_to_matrix
from reconstruction.eval.config import PoseOptConfig
from reconstruction.eval.metrics import rotation_angle_deg
from reconstruction.eval.pose_opt import cull_to_view, optimise_pose, render
from reconstruction.gaussians import GaussianScene
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


def _pose_errors(T_a: torch.Tensor, T_b: torch.Tensor) -> tuple[float, float]:
    rot = float(rotation_angle_deg(T_a[:3, :3], T_b[:3, :3]))
    c_a = -T_a[:3, :3].T @ T_a[:3, 3]
    c_b = -T_b[:3, :3].T @ T_b[:3, 3]
    return rot, float((c_a - c_b).norm())


def test_render_matches_culled_render():
    scene = _scene()
    T = torch.eye(4)
    full, _ = render(scene, K, T, W, H)
    local = cull_to_view(scene, K, T, W, H)
    assert 0 < local.num_gaussians <= scene.num_gaussians
    culled, _ = render(local, K, T, W, H)
    torch.testing.assert_close(culled, full, atol=1e-5, rtol=0)


def test_perturbed_pose_is_recovered():
    scene = _scene()
    T_true = torch.eye(4)
    target, alpha = render(scene, K, T_true, W, H)
    assert float(alpha.mean()) > 0.95  # the view is covered
    # 2 degrees about a tilted axis and 6 cm sideways.
    axis = torch.nn.functional.normalize(torch.tensor([0.4, -0.8, 0.45]), dim=0)
    delta = make_T(axis_angle_to_matrix(axis * math.radians(2.0)), torch.tensor([0.06, -0.02, 0.0]))
    T_init = delta @ T_true
    rot0, trans0 = _pose_errors(T_init, T_true)
    config = PoseOptConfig(iterations=60, coarse_fraction=0.0)
    result = optimise_pose(scene, K, T_init, target.detach(), config, scene_scale=3.0)
    rot1, trans1 = _pose_errors(result.T_cam_world, T_true)
    assert result.final_loss < 0.3 * result.initial_loss
    assert rot1 < 0.25 * rot0, (rot0, rot1)
    assert trans1 < 0.25 * trans0, (trans0, trans1)
    assert result.rotation_change_deg == pytest.approx(
        float(rotation_angle_deg(T_init[:3, :3], result.T_cam_world[:3, :3])), abs=1e-3)


def test_no_iterations_keeps_the_initial_pose():
    scene = _scene(300)
    T = torch.eye(4)
    target, _ = render(scene, K, T, W, H)
    result = optimise_pose(scene, K, T, target, PoseOptConfig(iterations=0), 1.0)
    torch.testing.assert_close(result.T_cam_world, T)
    assert result.initial_loss == result.final_loss < 1e-6
