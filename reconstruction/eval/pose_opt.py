"""Rendering a splat scene, and optimising a test view's pose against the frozen scene.

Pose-free methods reconstruct in their own frame; after the Sim(3) alignment of the
training cameras a held-out view's ground-truth pose is only approximately right in that
frame. As InstantSplat (and CF-3DGS, NoPe-NeRF) do before measuring novel views, the pose
is refined photometrically: a twist ``xi`` updates it on the left,
``T_cam_world = se3_exp(xi) @ T_cam_world_init``, and Adam minimises 3DGS's loss
``0.8 L1 + 0.2 (1 - SSIM)`` between the render and the test image; the Gaussians never
change. The first part of the schedule runs at reduced resolution (a wider basin); the
colours are evaluated once from the initial viewpoint (the view-dependent part barely
changes over a few degrees); of the final pose and the best one seen, the one with the
lowest full-resolution loss with full SH colours is kept, never worse than the initial.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from geometry.se3 import se3_exp
from reconstruction.eval.config import PoseOptConfig
from reconstruction.gaussians import GaussianScene

__all__ = ["PoseOptResult", "PoseOptConfig", "cull_to_view", "optimise_pose", "render"]


@dataclass
class PoseOptResult:
    """The refined pose of one test view and how the optimisation went."""

    T_cam_world: Tensor  # [4, 4] refined world-to-camera
    initial_loss: float
    final_loss: float
    rotation_change_deg: float
    translation_change: float
    """Distance the camera centre moved, in the scene's units."""
    iterations: int


def render(scene: GaussianScene, K: Tensor, T_cam_world: Tensor, width: int, height: int,
           background: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[Tensor, Tensor]:
    """Render ``scene`` into one camera.

    Args:
        scene: Gaussians (any float dtype; rendered in float32 on its device).
        K: ``[3, 3]`` intrinsics in pixels.
        T_cam_world: ``[4, 4]`` world-to-camera (OpenCV).
        width, height: image size in pixels.
        background: RGB behind the Gaussians.

    Returns:
        ``rgb [H, W, 3]`` and ``alpha [H, W, 1]`` (float32, differentiable w.r.t. the pose).
    """
    from reconstruction.splatting import rasterization

    s = scene if scene.means.dtype == torch.float32 else scene.to(dtype=torch.float32)
    device = s.means.device
    bg = torch.tensor(background, dtype=torch.float32, device=device)[None]
    colors, alphas, _ = rasterization(
        s.means, s.quats, s.scales, s.opacities, s.sh,
        T_cam_world.to(device, torch.float32)[None], K.to(device, torch.float32)[None],
        int(width), int(height), sh_degree=s.sh_degree, backgrounds=bg)
    return colors[0], alphas[0]


@dataclass
class _FrozenSplats:
    """Activated Gaussian parameters with colours fixed for one viewpoint (float32)."""

    means: Tensor  # [N, 3]
    quats: Tensor  # [N, 4]
    scales: Tensor  # [N, 3]
    opacities: Tensor  # [N]
    colours: Tensor  # [N, 3]

    @staticmethod
    def from_scene(scene: GaussianScene, T_cam_world: Tensor) -> _FrozenSplats:
        """SH colours evaluated once from the camera centre of ``T_cam_world``: a pose
        search moves the camera by a few degrees and centimetres, over which view-dependent
        colour barely changes, and skipping the SH per step saves a good part of it."""
        from reconstruction.splatting import sh_to_color

        s = scene.to(dtype=torch.float32)
        T = T_cam_world.to(s.means)
        centre = -T[:3, :3].T @ T[:3, 3]
        colours = sh_to_color(s.sh_degree, s.means - centre, s.sh)
        return _FrozenSplats(s.means, s.quats, s.scales, s.opacities, colours)

    def render(self, K: Tensor, T_cam_world: Tensor, width: int, height: int,
               background: tuple[float, float, float]) -> Tensor:
        from reconstruction.splatting import rasterization

        bg = torch.tensor(background, dtype=torch.float32, device=self.means.device)[None]
        colors, _, _ = rasterization(self.means, self.quats, self.scales, self.opacities,
                                     self.colours, T_cam_world[None], K[None], int(width),
                                     int(height), backgrounds=bg)
        return colors[0]


def cull_to_view(scene: GaussianScene, K: Tensor, T_cam_world: Tensor, width: int, height: int,
                 margin: float = 0.5) -> GaussianScene:
    """The Gaussians in front of the camera whose centres project within the image grown by
    ``margin`` of its size on every side (a pose search stays inside that)."""
    T = T_cam_world.to(scene.means.dtype)
    pts = scene.means @ T[:3, :3].T + T[:3, 3]
    z = pts[:, 2]
    uv = pts[:, :2] / z.clamp_min(1e-6)[:, None] * torch.stack((K[0, 0], K[1, 1])).to(z) \
        + torch.stack((K[0, 2], K[1, 2])).to(z)
    keep = (z > 1e-3) & (uv[:, 0] > -margin * width) & (uv[:, 0] < (1 + margin) * width) \
        & (uv[:, 1] > -margin * height) & (uv[:, 1] < (1 + margin) * height)
    fields = scene.tensors()
    return GaussianScene(**{k: v[keep] for k, v in fields.items()})


def _scaled(K: Tensor, image: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Area-downsampled image and the intrinsics of that image size."""
    if scale == 1.0:
        return K, image
    h, w = image.shape[:2]
    h2, w2 = max(8, round(h * scale)), max(8, round(w * scale))
    small = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=(h2, w2),
                                            mode="area")[0].permute(1, 2, 0).contiguous()
    K2 = K.clone()
    K2[0] = K2[0] * (w2 / w)
    K2[1] = K2[1] * (h2 / h)
    return K2, small


def optimise_pose(scene: GaussianScene, K: Tensor, T_cam_world_init: Tensor, target: Tensor,
                  config: PoseOptConfig, scene_scale: float,
                  background: tuple[float, float, float] = (0.0, 0.0, 0.0),
                  on_step: Callable[[int], None] | None = None) -> PoseOptResult:
    """Refine one camera's pose so that the frozen scene renders like ``target``.

    Args:
        scene: the reconstructed Gaussians (not modified).
        K: ``[3, 3]`` intrinsics of ``target``.
        T_cam_world_init: ``[4, 4]`` initial world-to-camera.
        target: ``[H, W, 3]`` the test image in [0, 1].
        config: schedule and learning rates.
        scene_scale: typical camera distance to the scene (sets the translation step).
        background: RGB behind the Gaussians (as in training).
        on_step: called with the step index after each step (progress bars).

    Returns:
        :class:`PoseOptResult`; its pose has a full-resolution loss no higher than the
        initial pose's.
    """
    from reconstruction.instantsplat.losses import photometric_loss

    device = scene.means.device
    K = K.to(device, torch.float32)
    T_init = T_cam_world_init.to(device, torch.float32)
    target = target.to(device, torch.float32)
    h, w = target.shape[:2]
    local = cull_to_view(scene.to(dtype=torch.float32).detach(), K, T_init, w, h)
    coarse = _scaled(K, target, config.coarse_scale)

    def full_loss(T: Tensor) -> float:
        with torch.no_grad():
            rgb, _ = render(local, K, T, w, h, background)
            return float(photometric_loss(rgb, target, config.ssim_weight))

    initial = full_loss(T_init)
    best_T, best_loss = T_init.clone(), initial
    if local.num_gaussians == 0 or config.iterations <= 0:
        return PoseOptResult(T_init.cpu(), initial, initial, 0.0, 0.0, 0)
    splats = _FrozenSplats.from_scene(local, T_init)
    rho = torch.zeros(3, device=device, requires_grad=True)
    omega = torch.zeros(3, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([
        {"params": [rho], "lr": config.lr_translation * scene_scale},
        {"params": [omega], "lr": config.lr_rotation}])
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    n_coarse = int(config.coarse_fraction * config.iterations)
    for step in range(config.iterations):
        # Constant steps for the first half, then exponential decay to a tenth (settles
        # the oscillation of Adam near the optimum without slowing the long descent along
        # the rotation-translation valley).
        progress = step / max(1, config.iterations - 1)
        decay = 0.1 ** max(0.0, 2.0 * progress - 1.0)
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr * decay
        K_s, target_s = coarse if step < n_coarse else (K, target)
        T = se3_exp(torch.cat((rho, omega))) @ T_init
        rgb = splats.render(K_s, T, target_s.shape[1], target_s.shape[0], background)
        loss = photometric_loss(rgb, target_s, config.ssim_weight)
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            break
        loss.backward()
        if not (torch.isfinite(rho.grad).all() and torch.isfinite(omega.grad).all()):
            break
        optimizer.step()
        if step >= n_coarse:
            # The loss just computed belongs to the pose before this step (with colours
            # fixed at the initial view: a candidate, confirmed with full SH at the end).
            value = loss.item()
            if value < best_loss:
                best_loss, best_T = value, T.detach().clone()
        if on_step is not None:
            on_step(step)
    with torch.no_grad():
        T_last = se3_exp(torch.cat((rho, omega))) @ T_init
    candidates = [(full_loss(T_last), T_last)]
    if not torch.equal(best_T, T_init):
        candidates.append((full_loss(best_T), best_T))
    best_loss, best_T = initial, T_init.clone()
    for value, T in candidates:
        if value < best_loss:
            best_loss, best_T = value, T
    R_delta = best_T[:3, :3] @ T_init[:3, :3].T
    cos = float(((torch.trace(R_delta) - 1) / 2).clamp(-1, 1))
    c_init = -T_init[:3, :3].T @ T_init[:3, 3]
    c_best = -best_T[:3, :3].T @ best_T[:3, 3]
    return PoseOptResult(best_T.detach().cpu(), initial, best_loss, math.degrees(math.acos(cos)),
                         float((c_best - c_init).norm()), config.iterations)
