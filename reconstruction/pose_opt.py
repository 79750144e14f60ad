"""Render-and-compare pose optimisation: camera poses refined against a frozen scene.

Any :class:`~reconstruction.scene_model.SceneModel` whose renders are differentiable w.r.t.
the cameras (``differentiable_cameras``) can be used. ``recon eval`` refines each held-out
view's pose this way before measuring novel views (pose-free methods reconstruct in their
own frame, and the Sim(3)-aligned ground-truth pose is only approximately right there), as
InstantSplat, CF-3DGS and NoPe-NeRF do; the camera-pose refiners of ``pose/`` (SparseAGS)
call the same function with many pose hypotheses.

Each hypothesis ``b`` of a batch of ``B`` (cameras of one image size) has its own twist
``xi_b`` updating its pose on the left, ``T_cam_world_b = se3_exp(xi_b) @ T_cam_world_init_b``,
and Adam minimises 3DGS's loss ``0.8 L1 + 0.2 (1 - SSIM)`` between its render and its target
image, plus optionally ``mask_weight * mean |alpha - mask|`` against a target silhouette;
the scene never changes. All ``B`` hypotheses are rendered in one call per step; their
losses are summed, and since renders and Adam are per camera and per element, each
hypothesis follows the path it would follow alone (up to float rounding, and to the near
model's colours, which :meth:`SceneModel.near` bakes once for all the hypotheses).

The first part of the schedule runs at reduced resolution (a wider basin), optionally at
several resolutions, coarsest first (``coarse_levels``); the scene is replaced by
:meth:`SceneModel.near` of the initial cameras (Gaussians: those in view, colours evaluated
once, as the view-dependent part barely changes over a few degrees); of the final pose and
the best one seen, the one with the lowest full-resolution loss of the full model is kept,
never worse than the initial pose.

Early stopping (``patience`` > 0, off by default), once the learning rate has decayed to
half (from 65 % of the schedule; before, Adam's larger steps make the loss oscillate by
design): a hypothesis whose loss has not improved by ``min_improvement`` (relative to its
best at the current resolution) for ``patience`` steps waits, unchanged, for the next
resolution, and after the last one is done; waiting and finished hypotheses are left out of
the render batch, so they cost nothing, and when every hypothesis waits the schedule jumps
to the next resolution (or ends). Adam's moments and step count are kept per hypothesis, so
a hypothesis that waits resumes as if the skipped steps had not happened (its learning rate
follows the shared schedule).

Torch is imported inside the functions, so that :class:`PoseOptConfig` stays light for the
command lines' ``--help``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from geometry.cameras import Cameras
    from reconstruction.scene_model import SceneModel

__all__ = ["PoseOptConfig", "PoseOptResult", "optimise_poses"]

#: Early stopping counts once the learning rate has decayed to half (``0.1 ** 0.3``): until
#: then Adam still swings through the minimum with its constant-phase step, and a hypothesis
#: that has not set a new best for a few steps may well still be descending (measured on a
#: generated scene: a view stopped 6 steps into the decay ended 1.8 degrees off).
PATIENCE_FROM_DECAY = 0.3


@dataclass
class PoseOptConfig:
    """Options of the render-and-compare pose optimisation."""

    iterations: int = 50
    """Adam steps per view (0 disables the optimisation). On the CPU a 384x384 step
    with 50k Gaussians takes about a second, mostly the compositing backward."""
    lr_rotation: float = 3e-3
    """Adam step of the rotation (radians); decayed to a tenth over the second half."""
    lr_translation: float = 3e-3
    """Adam step of the translation, times the scene scale; decayed like the rotation's."""
    coarse_fraction: float = 0.5
    """Share of the steps rendered at coarse-scale resolution (about half the cost)."""
    coarse_scale: float = 0.5
    """Image scale of the (last) coarse resolution."""
    coarse_levels: int = 1
    """Number of coarse resolutions sharing the coarse steps equally, coarsest first: level
    l of L renders at coarse-scale to the power L - l (2: a quarter, then half size)."""
    patience: int = 0
    """Early stopping: once the steps have decayed to half (from 65 % of the schedule), a
    hypothesis whose loss has not improved by min-improvement for this many steps waits for
    the next resolution, and after the full-resolution one stops (it is then no longer
    rendered). 0: every hypothesis takes every step."""
    min_improvement: float = 1e-3
    """Relative loss decrease that counts as an improvement for patience."""
    ssim_weight: float = 0.2
    """Weight of (1 - SSIM) against L1."""
    mask_weight: float = 0.0
    """Weight of the silhouette term mean |alpha - mask| (used only when masks are
    given)."""


@dataclass
class PoseOptResult:
    """Refined poses of ``B`` hypotheses and how their optimisation went."""

    T_cam_world: Tensor  # [B, 4, 4] refined world-to-camera (float32, CPU)
    T_world_cam: Tensor  # [B, 4, 4] the same poses camera-to-world
    initial_loss: Tensor  # [B] full-resolution loss of the initial poses
    final_loss: Tensor  # [B] full-resolution loss of the refined poses (<= initial_loss)
    rotation_change_deg: Tensor  # [B] angle between initial and refined orientation
    translation_change: Tensor  # [B]
    """Distance each camera centre moved, in the scene's units."""
    iterations: int
    steps: Tensor | None = None
    """``[B]`` int64: the steps each hypothesis took (fewer than ``iterations`` where early
    stopping let it wait or stop)."""


def _scaled(K: Tensor, images: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Area-downsampled images ``[B, h, w, C]`` and the intrinsics ``[B, 3, 3]`` of that
    size (at least 8 pixels a side)."""
    import torch

    if scale == 1.0:
        return K, images
    h, w = images.shape[1:3]
    h2, w2 = max(8, round(h * scale)), max(8, round(w * scale))
    small = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=(h2, w2),
                                            mode="area").permute(0, 2, 3, 1).contiguous()
    K2 = K.clone()
    K2[:, 0] = K2[:, 0] * (w2 / w)
    K2[:, 1] = K2[:, 1] * (h2 / h)
    return K2, small


def optimise_poses(model: SceneModel, cameras: Cameras, targets: Tensor,
                   config: PoseOptConfig, scene_scale: float, masks: Tensor | None = None,
                   on_step: Callable[[int], None] | None = None) -> PoseOptResult:
    """Refine ``B`` camera poses so that the frozen scene renders like ``targets``.

    Args:
        model: the scene (not modified); ``model.differentiable_cameras`` must be true.
        cameras: ``[B]`` initial cameras (intrinsics and camera-to-world poses in the
            model's frame) of one image size ``W x H``: views or pose hypotheses.
        targets: ``[B, H, W, 3]`` images in [0, 1].
        config: schedule, learning rates and loss weights.
        scene_scale: typical camera distance to the scene (sets the translation step).
        masks: optional ``[B, H, W]`` target silhouettes in [0, 1] (bool or float) for the
            ``mask_weight`` term.
        on_step: called with the step index after each step (progress bars).

    Returns:
        :class:`PoseOptResult`; every hypothesis keeps its own best pose, whose
        full-resolution loss is no higher than its initial pose's.
    """
    if not model.differentiable_cameras:
        raise ValueError(f"{type(model).__name__} renders are not differentiable w.r.t. the "
                         "cameras; its poses cannot be optimised by render-and-compare")
    problem = _PoseProblem(model, cameras, targets, config, masks)
    if config.iterations <= 0:
        return problem.result(problem.T_init, problem.initial, 0)
    local = model.near(problem.cameras_at(problem.T_init))
    if local.info().get("num_gaussians", 1) == 0:  # nothing in view: nothing to align
        return problem.result(problem.T_init, problem.initial, 0)
    T_last, best_T = problem.descend(local, scene_scale, on_step)
    return problem.choose(T_last, best_T)


class _PoseProblem:
    """The targets, initial poses and losses of one :func:`optimise_poses` call."""

    def __init__(self, model: SceneModel, cameras: Cameras, targets: Tensor,
                 config: PoseOptConfig, masks: Tensor | None) -> None:
        import torch

        from geometry.se3 import invert_T
        from reconstruction.scene_model import camera_size

        self.model, self.config = model, config
        device = model.device
        self.width, self.height = camera_size(cameras)
        b = self.num = len(cameras)
        self.targets = targets.to(device, torch.float32)
        if self.targets.shape != (b, self.height, self.width, 3):
            raise ValueError(f"targets must be [B, H, W, 3] = {(b, self.height, self.width, 3)}"
                             f", got {tuple(targets.shape)}")
        self.use_mask = masks is not None and config.mask_weight > 0
        self.masks = None
        if self.use_mask:
            self.masks = masks.to(device, torch.float32)
            if self.masks.shape != (b, self.height, self.width):
                raise ValueError(f"masks must be [B, H, W] = {(b, self.height, self.width)}, "
                                 f"got {tuple(masks.shape)}")
        self.outputs = ("rgb", "alpha") if self.use_mask else ("rgb",)
        self.K = cameras.K.to(device, torch.float32)
        self.T_init = invert_T(cameras.T_world_cam.detach().double()).to(device, torch.float32)
        self.initial = self.full_losses(self.T_init)
        self.steps = torch.zeros(b, dtype=torch.long)  # loss evaluations per hypothesis

    def cameras_at(self, T_cam_world: Tensor) -> Cameras:
        from geometry.cameras import Cameras
        from geometry.se3 import invert_T

        return Cameras(K=self.K, T_world_cam=invert_T(T_cam_world), width=self.width,
                       height=self.height)

    def losses(self, model: SceneModel, K: Tensor, T_cam_world: Tensor, target: Tensor,
               mask: Tensor | None) -> Tensor:
        """``[B]`` loss of each pose (one render call for all)."""
        import torch

        from geometry.cameras import Cameras
        from geometry.se3 import invert_T
        from reconstruction.engine.losses import photometric_loss

        h, w = target.shape[1:3]
        out = model.render(Cameras(K=K, T_world_cam=invert_T(T_cam_world), width=w, height=h),
                           self.outputs)
        values = [photometric_loss(out.rgb[k], target[k], self.config.ssim_weight)
                  for k in range(len(target))]
        if self.use_mask:
            values = [v + self.config.mask_weight * (out.alpha[k] - mask[k]).abs().mean()
                      for k, v in enumerate(values)]
        return torch.stack(values)

    def full_losses(self, T_cam_world: Tensor, rows: Tensor | None = None) -> Tensor:
        """Full-resolution losses with the full model, of hypotheses ``rows`` (all)."""
        import torch

        masks = self.masks
        with torch.no_grad():
            if rows is None:
                return self.losses(self.model, self.K, T_cam_world, self.targets,
                                   masks).double()
            return self.losses(self.model, self.K[rows], T_cam_world[rows], self.targets[rows],
                               None if masks is None else masks[rows]).double()

    def levels(self) -> list[tuple[int, float]]:
        """``(first step, image scale)`` of each resolution of the schedule, in order."""
        config = self.config
        n_coarse = min(config.iterations, int(config.coarse_fraction * config.iterations))
        num = max(1, config.coarse_levels)
        result, start = [], 0
        for level in range(num):  # equal shares, the remainder to the finer levels
            count = n_coarse // num + (1 if level >= num - n_coarse % num else 0)
            if count > 0:
                result.append((start, config.coarse_scale ** (num - level)))
            start += count
        return result + [(n_coarse, 1.0)]

    def descend(self, local: SceneModel, scene_scale: float,
                on_step: Callable[[int], None] | None) -> tuple[Tensor, Tensor]:
        """Adam on a twist per hypothesis; ``(last poses, best poses seen)`` ``[B, 4, 4]``."""
        import torch

        from geometry.se3 import se3_exp

        config, b, device = self.config, self.num, self.K.device
        levels = self.levels()
        xi = torch.zeros(b, 6, device=device)  # (rho, omega) per hypothesis
        adam = _RowAdam(b, 6, device)
        base_lr = torch.tensor([config.lr_translation * scene_scale] * 3
                               + [config.lr_rotation] * 3, device=device)
        best_T, best_loss = self.T_init.clone(), self.initial.clone()
        # A hypothesis whose loss or gradient stops being finite keeps its last pose (as a
        # lone optimisation would stop there); the others go on. One that stops improving
        # (patience) waits for the next level.
        alive = torch.ones(b, dtype=torch.bool, device=device)
        for index, (first, scale) in enumerate(levels):
            end = levels[index + 1][0] if index + 1 < len(levels) else config.iterations
            final_level = index == len(levels) - 1
            K_s, target_s = _scaled(self.K, self.targets, scale)
            mask_s = None
            if self.use_mask:
                mask_s = _scaled(self.K, self.masks[..., None], scale)[1][..., 0]
            waiting = torch.zeros(b, dtype=torch.bool, device=device)
            level_best = torch.full((b,), math.inf, dtype=torch.float64, device=device)
            since = torch.zeros(b, dtype=torch.long, device=device)
            for step in range(first, end):
                active = alive & ~waiting
                if not bool(active.any()):
                    break
                rows = active.nonzero()[:, 0]
                everyone = len(rows) == b
                # Constant steps for the first half, then exponential decay to a tenth
                # (settles the oscillation of Adam near the optimum without slowing the
                # long descent along the rotation-translation valley).
                decay = 2.0 * step / max(1, config.iterations - 1) - 1.0
                lr = base_lr * 0.1 ** max(0.0, decay)
                x = xi[rows].clone().requires_grad_(True)
                T = se3_exp(x) @ self.T_init[rows]
                if everyone:
                    loss = self.losses(local, K_s, T, target_s, mask_s)
                else:
                    loss = self.losses(local, K_s[rows], T, target_s[rows],
                                       None if mask_s is None else mask_s[rows])
                finite = torch.isfinite(loss).detach()
                if bool(finite.any()):
                    loss[finite].sum().backward()
                grad = x.grad if x.grad is not None else torch.zeros_like(x)
                ok = finite & torch.isfinite(grad).all(-1)
                alive[rows[~ok]] = False
                self.steps[rows.cpu()] += 1
                value = loss.detach().double()
                if final_level:
                    # The loss just computed belongs to the pose before this step (with the
                    # near model's baked colours: a candidate, confirmed with the full model
                    # at the end).
                    better = ok & (value < best_loss[rows])
                    best_loss[rows[better]] = value[better]
                    best_T[rows[better]] = T.detach()[better]
                move = ok
                if config.patience > 0 and decay > PATIENCE_FROM_DECAY:
                    improved = ok & (value < level_best[rows] * (1.0 - config.min_improvement))
                    level_best[rows[improved]] = value[improved]
                    since[rows] = torch.where(improved, 0, since[rows] + 1)
                    # A hypothesis that runs out of patience stays at the pose just measured.
                    stop = ok & (since[rows] >= config.patience)
                    waiting[rows[stop]] = True
                    move = ok & ~stop
                adam.step(xi, rows[move], grad[move], lr)
                if on_step is not None:
                    on_step(step)
            if not bool(alive.any()):
                break
        with torch.no_grad():
            T_last = se3_exp(xi) @ self.T_init
        return T_last, best_T

    def choose(self, T_last: Tensor, best_T: Tensor) -> PoseOptResult:
        """Of the initial, last and best-seen pose of each hypothesis, the one with the
        lowest full-resolution loss of the full model."""
        import torch

        loss_last = self.full_losses(T_last)
        moved = torch.tensor([not torch.equal(best_T[k], self.T_init[k])
                              for k in range(self.num)], device=self.K.device)
        loss_best = torch.full_like(self.initial, math.inf)
        if bool(moved.any()):
            loss_best[moved] = self.full_losses(best_T, moved)
        final, chosen = self.initial.clone(), self.T_init.clone()
        for value, T in ((loss_last, T_last), (loss_best, best_T)):
            better = value < final
            final = torch.where(better, value, final)
            chosen = torch.where(better[:, None, None], T, chosen)
        return self.result(chosen, final, self.config.iterations, self.steps)

    def result(self, T_cam_world: Tensor, final: Tensor, iterations: int,
               steps: Tensor | None = None) -> PoseOptResult:
        import torch

        from geometry.se3 import invert_T
        from geometry.so3 import rotation_angle

        T_cam_world = T_cam_world.detach()
        rotation_change = torch.rad2deg(rotation_angle(self.T_init[:, :3, :3],
                                                       T_cam_world[:, :3, :3]))
        c_init = invert_T(self.T_init)[:, :3, 3]
        T_world_cam = invert_T(T_cam_world)
        return PoseOptResult(T_cam_world.cpu(), T_world_cam.cpu(), self.initial.cpu(),
                             final.cpu(), rotation_change.double().cpu(),
                             (T_world_cam[:, :3, 3] - c_init).norm(dim=-1).double().cpu(),
                             iterations, steps.clone() if steps is not None
                             else torch.zeros(self.num, dtype=torch.long))


class _RowAdam:
    """Adam (PyTorch's update, default betas and eps) on the rows of a ``[B, D]`` parameter
    with moments and step counts per row: a row left out of a step is left exactly as it
    was, moments included, so a hypothesis that waits resumes where it stopped."""

    def __init__(self, rows: int, dim: int, device, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        import torch

        self.m = torch.zeros(rows, dim, device=device)
        self.v = torch.zeros(rows, dim, device=device)
        self.t = torch.zeros(rows, dtype=torch.float64, device=device)
        self.betas, self.eps = betas, eps

    def step(self, param: Tensor, rows: Tensor, grad: Tensor, lr: Tensor) -> None:
        """Update ``param[rows]`` (in place) with the gradient rows ``grad`` and the
        per-column learning rate ``lr [D]``."""
        import torch

        if len(rows) == 0:
            return
        b1, b2 = self.betas
        with torch.no_grad():
            self.t[rows] += 1
            t = self.t[rows][:, None]
            m = self.m[rows] * b1 + grad * (1 - b1)
            v = self.v[rows] * b2 + grad * grad * (1 - b2)
            self.m[rows], self.v[rows] = m, v
            step_size = (lr[None].double() / (1 - b1 ** t)).to(param.dtype)
            denom = v.sqrt() / (1 - b2 ** t).sqrt().to(param.dtype) + self.eps
            param[rows] = param[rows] - step_size * m / denom
