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


def _counting(model: GaussianSceneModel, calls: list[tuple[int, int]]) -> GaussianSceneModel:
    """``model`` whose near model records ``(cameras, image height)`` of each render call."""
    near = model.near

    def counted_near(cameras):
        local = near(cameras)
        render = local.render

        def counted_render(cams, outputs=("rgb",)):
            calls.append((len(cams), int(torch.as_tensor(cams.height).reshape(-1)[0])))
            return render(cams, outputs)

        local.render = counted_render
        return local

    model.near = counted_near
    return model


def test_early_stopping_stops_a_converged_row_and_drops_it_from_the_batch():
    calls: list[tuple[int, int]] = []
    model = _counting(_model(_scene()), calls)
    target, _ = _render(model, torch.eye(4))
    # Row 0 looks away from the scene: its loss cannot change (converged from the start);
    # row 1 starts 2 degrees off.
    away = make_T(axis_angle_to_matrix(torch.tensor([0.0, math.pi, 0.0])), torch.zeros(3))
    T_init = torch.stack([away, _perturbation()])
    config = PoseOptConfig(iterations=60, coarse_fraction=0.0, patience=8,
                           min_improvement=1e-3)
    result = optimise_poses(model, _cameras(T_init), target[None].expand(2, -1, -1, -1),
                            config, 3.0)
    # Patience counts once the steps have decayed to half (from step 39 of 60): row 0 sets
    # its first best at step 39 and stops 8 steps later, where it started.
    assert int(result.steps[0]) == 39 + 1 + 8
    torch.testing.assert_close(result.T_cam_world[0], away, atol=1e-6, rtol=0)
    assert float(result.final_loss[0]) == float(result.initial_loss[0])
    # A stopped row is no longer rendered: 2 cameras per call, then 1.
    assert 48 < int(result.steps[1]) <= 60
    assert calls == [(2, H)] * 48 + [(1, H)] * (int(result.steps[1]) - 48)
    rot1, trans1 = _pose_errors(result.T_cam_world[1], torch.eye(4))
    rot0, trans0 = _pose_errors(T_init[1], torch.eye(4))
    assert rot1 < 0.25 * rot0 and trans1 < 0.25 * trans0, (rot1, trans1)
    # Early stopping of one row changes nothing for the other (rows are independent).
    alone = optimise_poses(_model(_scene()), _cameras(T_init[1:]), target[None], config, 3.0)
    assert int(alone.steps[0]) == int(result.steps[1])
    torch.testing.assert_close(result.T_cam_world[1], alone.T_cam_world[0], atol=1e-4, rtol=0)
    # Without patience every row takes every step (the default: callers see no change).
    calls.clear()
    full = optimise_poses(model, _cameras(T_init), target[None].expand(2, -1, -1, -1),
                          PoseOptConfig(iterations=60, coarse_fraction=0.0), 3.0)
    assert full.steps.tolist() == [60, 60] and calls == [(2, H)] * 60


def test_a_waiting_row_resumes_at_the_next_resolution():
    calls: list[tuple[int, int]] = []
    model = _counting(_model(_scene()), calls)
    target, _ = _render(model, torch.eye(4))
    away = make_T(axis_angle_to_matrix(torch.tensor([0.0, math.pi, 0.0])), torch.zeros(3))
    T_init = torch.stack([away, _perturbation()])
    # Half size for steps 0-34 of 40, full size after; patience counts from step 26.
    config = PoseOptConfig(iterations=40, coarse_fraction=0.875, patience=3)
    result = optimise_poses(model, _cameras(T_init), target[None].expand(2, -1, -1, -1),
                            config, 3.0)
    # Row 0 (constant loss) counts from step 26 and waits after step 29; it takes up the
    # full size at step 35 and stops after 4 steps there.
    assert int(result.steps[0]) == 30 + 4
    assert calls[:30] == [(2, H // 2)] * 30
    coarse = [c for c in calls if c[1] == H // 2]
    fine = [c for c in calls if c[1] == H]
    assert calls == coarse + fine and coarse[30:] == [(1, H // 2)] * (len(coarse) - 30)
    assert fine[:4] == [(2, H)] * 4 and fine[4:] == [(1, H)] * (len(fine) - 4)
    assert int(result.steps[1]) == len(calls) and len(coarse) <= 35
    torch.testing.assert_close(result.T_cam_world[0], away, atol=1e-6, rtol=0)
    assert float(result.final_loss[1]) < 0.5 * float(result.initial_loss[1])


def test_coarse_levels_schedule():
    from reconstruction.pose_opt import _PoseProblem

    model = _model(_scene(200))
    target, _ = _render(model, torch.eye(4))

    def levels(**options):
        problem = _PoseProblem(model, _cameras(torch.eye(4)[None]), target[None],
                               PoseOptConfig(**options), None)
        return problem.levels()

    assert levels() == [(0, 0.5), (25, 1.0)]  # today's schedule
    assert levels(coarse_levels=2) == [(0, 0.25), (12, 0.5), (25, 1.0)]
    assert levels(coarse_levels=3, coarse_fraction=0.6, iterations=10) == [
        (0, 0.125), (2, 0.25), (4, 0.5), (6, 1.0)]
    assert levels(coarse_fraction=0.0) == [(0, 1.0)]
    assert levels(coarse_levels=3, iterations=2) == [(0, 0.5), (1, 1.0)]  # empty levels go


def test_row_adam_is_torch_adam_and_leaves_other_rows_alone():
    from reconstruction.pose_opt import _RowAdam

    gen = torch.Generator().manual_seed(0)
    # The reference: torch's Adam on a translation and a rotation part (as before _RowAdam).
    rho, omega = torch.zeros(3, 3, requires_grad=True), torch.zeros(3, 3, requires_grad=True)
    optimizer = torch.optim.Adam([{"params": [rho], "lr": 1e-2}, {"params": [omega],
                                                                   "lr": 3e-3}])
    lr = torch.tensor([1e-2] * 3 + [3e-3] * 3)
    mine, adam = torch.zeros(3, 6), _RowAdam(3, 6, "cpu")
    for _ in range(5):
        grad = torch.randn(3, 6, generator=gen)
        rho.grad, omega.grad = grad[:, :3].clone(), grad[:, 3:].clone()
        optimizer.step()
        adam.step(mine, torch.arange(3), grad, lr)
    torch.testing.assert_close(mine, torch.cat((rho, omega), -1).detach(), atol=1e-7,
                               rtol=1e-5)
    before = mine.clone()
    adam.step(mine, torch.tensor([1]), torch.randn(1, 6, generator=gen), lr)
    torch.testing.assert_close(mine[[0, 2]], before[[0, 2]], atol=0, rtol=0)
    assert not torch.equal(mine[1], before[1])
    assert adam.t.tolist() == [5.0, 6.0, 5.0]
