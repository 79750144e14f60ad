"""Joint reconstruction of 3D Gaussians and camera poses from a few posed photos.

One fit (:func:`fit_joint`) builds the Gaussians from scratch: points drawn uniformly in a
ball about the scene centre (the world is normalised: centre at the origin, mean camera
distance 1), kept where the object masks agree (a visual hull that tolerates one
disagreeing view), coloured by the photos they project into. The
:class:`~reconstruction.engine.trainer.GaussianTrainer` then optimises them jointly with an
SE(3) residual per camera (every camera free; the regulariser toward the fit's initial
poses fixes the gauge), on the paper's losses: photometric and silhouette terms whose
weights ramp up over the first part of the fit (SparseAGS's warm-up), the epipolar term
of the feature matches where the photos were matched (:mod:`~.matches`), plus optional
extra terms (the generative prior). Photos with masks are composited on black, the model's
background.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pose.camera.sparseags.config import JointConfig
from reconstruction.engine.losses import LossTerm, PoseRegulariser, photometric_loss

__all__ = ["FitResult", "Views", "fit_joint", "initial_points"]


@dataclass
class Views:
    """The input views in the normalised world."""

    images: list[Tensor]  # V x [H_v, W_v, 3] float32 in [0, 1] (on black where masked)
    masks: list[Tensor] | None  # V x [H_v, W_v] float32 in {0, 1}, or None
    Ks: Tensor  # [V, 3, 3] float64 pixels
    names: list[str]
    matches: object = None
    """:class:`~pose.camera.sparseags.matches.Matches` between the views, or None (then no
    epipolar terms)."""

    def __len__(self) -> int:
        return len(self.images)

    def size(self, k: int) -> tuple[int, int]:
        """``(width, height)`` of view ``k``."""
        return int(self.images[k].shape[1]), int(self.images[k].shape[0])

    def cameras(self, T_world_cam: Tensor, rows: Sequence[int] | None = None):
        """:class:`~geometry.cameras.Cameras` of views ``rows`` (all) at the given poses
        (``[V, 4, 4]`` for all the views)."""
        from geometry.cameras import Cameras

        rows = list(range(len(self))) if rows is None else list(rows)
        return Cameras(K=self.Ks[rows], T_world_cam=T_world_cam[rows].double(),
                       width=torch.tensor([self.size(k)[0] for k in rows]),
                       height=torch.tensor([self.size(k)[1] for k in rows]),
                       names=[self.names[k] for k in rows])


@dataclass
class FitResult:
    """One joint fit of some views."""

    rows: list[int]
    """The views it used (indices into :class:`Views`)."""
    scene: object  # GaussianScene
    T_world_cam: Tensor  # [V, 4, 4] float64: refined for ``rows``, unchanged for the others
    psnr_db: list[float]
    """Final training PSNR of each used view."""

    def model(self, views: Views):
        """The fit as a :class:`~reconstruction.scene_model.GaussianSceneModel` (its cameras:
        the used views at their refined poses)."""
        from reconstruction.scene_model import GaussianSceneModel

        return GaussianSceneModel(self.scene, views.cameras(self.T_world_cam, self.rows))


class _Ramp:
    """A loss weight rising linearly from ``start`` to 1 over the first ``fraction`` of the
    trainer's iterations."""

    def __init__(self, start: float, fraction: float) -> None:
        self.start, self.fraction = start, fraction

    def __call__(self, trainer) -> float:
        progress = trainer.iteration / max(1, trainer.config.iterations)
        if self.fraction <= 0:
            return 1.0
        return self.start + (1.0 - self.start) * min(1.0, progress / self.fraction)


class RampedPhotometricLoss(LossTerm):
    """``weight * ramp * ((1 - w) L1 + w (1 - SSIM))`` of the rendered view."""

    def __init__(self, weight: float, ramp: _Ramp, ssim_weight: float = 0.2) -> None:
        self.weight, self.ramp, self.ssim_weight = weight, ramp, ssim_weight

    def __call__(self, trainer, view, image, alpha, meta, target) -> Tensor | float:
        if self.weight <= 0:
            return 0.0
        return self.weight * self.ramp(trainer) * photometric_loss(image, target,
                                                                   self.ssim_weight)


class SilhouetteLoss(LossTerm):
    """``weight * ramp * mean |alpha - mask|`` of the rendered view (the paper's mask loss),
    at the resolution the trainer rendered."""

    def __init__(self, masks: list[Tensor], weight: float, ramp: _Ramp) -> None:
        self.masks, self.weight, self.ramp = masks, weight, ramp
        self._scaled: dict[tuple[int, int, int], Tensor] = {}

    def _mask(self, view: int, h: int, w: int, device: torch.device) -> Tensor:
        key = (view, h, w)
        if key not in self._scaled:
            mask = self.masks[view].float()
            if tuple(mask.shape) != (h, w):
                mask = torch.nn.functional.interpolate(mask[None, None], size=(h, w),
                                                       mode="area")[0, 0]
            self._scaled[key] = mask.to(device)
        return self._scaled[key]

    def __call__(self, trainer, view, image, alpha, meta, target) -> Tensor | float:
        if self.weight <= 0:
            return 0.0
        h, w = alpha.shape[:2]
        mask = self._mask(view, h, w, alpha.device)
        return self.weight * self.ramp(trainer) * (alpha[..., 0] - mask).abs().mean()


def _project(points: Tensor, K: Tensor, T_world_cam: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel positions ``[N, 2]`` and depths ``[N]`` of world points in one camera."""
    R, c = T_world_cam[:3, :3], T_world_cam[:3, 3]
    p = (points - c) @ R
    z = p[:, 2]
    uv = p[:, :2] / z.clamp_min(1e-6)[:, None] * K.diagonal()[:2] + K[:2, 2]
    return uv, z


def initial_points(views: Views, T_world_cam: Tensor, rows: Sequence[int], count: int,
                   radius: float, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` coloured points ``([N, 3], [N, 3])`` in a ball about the origin (see the
    module doc); the ball's radius is ``radius`` capped by the narrowest field of view
    (at the mean camera distance, 1)."""
    gen = torch.Generator().manual_seed(seed)
    half_fov = min(min(views.size(k)[0] / (2 * float(views.Ks[k, 0, 0])),
                       views.size(k)[1] / (2 * float(views.Ks[k, 1, 1]))) for k in rows)
    r = min(radius, 0.9 * half_fov)
    candidates = []
    total = 0
    for attempt in range(8):
        n = 4 * count
        d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64),
                                          dim=1)
        pts = d * (r * torch.rand(n, 1, generator=gen, dtype=torch.float64) ** (1 / 3))
        keep = _carve(views, T_world_cam, rows, pts)
        if views.masks is not None and attempt == 7 and total + int(keep.sum()) < count // 10:
            keep = torch.ones_like(keep)  # masks that agree nowhere: keep the ball
        candidates.append(pts[keep])
        total += int(keep.sum())
        if total >= count:
            break
    pts = torch.cat(candidates)[:count]
    if len(pts) == 0:
        pts = d[:count] * r * 0.5
    return pts.float(), _colours(views, T_world_cam, rows, pts).float()


def ray_points(views: Views, T_world_cam: Tensor, rows: Sequence[int], count: int,
               near: float, far: float, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` points on the rays of random pixels of the views, at log-uniform depths in
    ``[near, far]`` (camera distances; the world's mean camera distance is 1), coloured by
    their pixel: without masks, the background (a table, a room) must be modelled too."""
    gen = torch.Generator().manual_seed(seed + 7)
    per_view = max(1, count // max(1, len(rows)))
    pts, cols = [], []
    for k in rows:
        w, h = views.size(k)
        u = torch.rand(per_view, generator=gen, dtype=torch.float64) * w
        v = torch.rand(per_view, generator=gen, dtype=torch.float64) * h
        depth = near * (far / near) ** torch.rand(per_view, generator=gen, dtype=torch.float64)
        K = views.Ks[k]
        x = (u - K[0, 2]) / K[0, 0]
        y = (v - K[1, 2]) / K[1, 1]
        p_cam = torch.stack([x * depth, y * depth, depth], 1)
        T = T_world_cam[k].double()
        pts.append(p_cam @ T[:3, :3].T + T[:3, 3])
        cols.append(views.images[k][v.long().clamp_max(h - 1), u.long().clamp_max(w - 1)].double())
    return torch.cat(pts).float(), torch.cat(cols).float()


def _carve(views: Views, T_world_cam: Tensor, rows: Sequence[int], pts: Tensor) -> Tensor:
    """Points in some view's frame and (with masks) inside the masks of all but at most one
    of the views that see them."""
    seen = torch.zeros(len(pts), dtype=torch.int64)
    inside = torch.zeros(len(pts), dtype=torch.int64)
    for k in rows:
        w, h = views.size(k)
        uv, z = _project(pts, views.Ks[k], T_world_cam[k].double())
        ok = (z > 1e-3) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        seen += ok.long()
        if views.masks is not None:
            px = uv[ok].floor().long()
            hit = torch.zeros(len(pts), dtype=torch.bool)
            hit[ok] = views.masks[k][px[:, 1], px[:, 0]] > 0.5
            inside += hit.long()
    if views.masks is None:
        return seen >= 1
    return (seen >= 1) & (inside >= seen - 1) & (inside >= 1)


def _colours(views: Views, T_world_cam: Tensor, rows: Sequence[int], pts: Tensor) -> Tensor:
    """Mean colour of the pixels the points project into (grey where none)."""
    total = torch.zeros(len(pts), 3, dtype=torch.float64)
    count = torch.zeros(len(pts), 1, dtype=torch.float64)
    for k in rows:
        w, h = views.size(k)
        uv, z = _project(pts, views.Ks[k], T_world_cam[k].double())
        ok = (z > 1e-3) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        if views.masks is not None:
            px = uv.floor().long().clamp_min(0)
            px[:, 0] = px[:, 0].clamp_max(w - 1)
            px[:, 1] = px[:, 1].clamp_max(h - 1)
            ok &= views.masks[k][px[:, 1], px[:, 0]] > 0.5
        px = uv[ok].floor().long()
        total[ok] += views.images[k][px[:, 1], px[:, 0]].double()
        count[ok] += 1
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, 0.5))


def train_config(config: JointConfig, iterations: int, optimise_poses: bool = True):
    """The :class:`~reconstruction.engine.config.TrainConfig` of one fit."""
    from reconstruction.engine.config import TrainConfig

    return TrainConfig(
        iterations=iterations, sh_degree=config.sh_degree, optimise_poses=optimise_poses,
        lr_pose_rotation=config.lr_pose_rotation,
        lr_pose_translation=config.lr_pose_translation,
        pose_reg_weight=config.pose_reg_weight, max_gaussians=config.max_gaussians,
        lr_means=config.lr_means, lr_means_final=config.lr_means / 100,
        refine_every=max(10, iterations // 6), checkpoint_every=0,
        background=(0.0, 0.0, 0.0), initial_opacity=0.3)


def fit_joint(views: Views, T_world_cam: Tensor, config: JointConfig, seed: int = 0,
              rows: Sequence[int] | None = None, iterations: int | None = None,
              optimise_poses: bool = True, device: str | torch.device = "cpu",
              extra_terms: Sequence[LossTerm] = (),
              on_step: Callable[[], None] | None = None) -> FitResult:
    """Fit Gaussians (from scratch) and the poses of views ``rows`` (all) jointly.

    Args:
        views: the photos, masks and intrinsics (normalised world).
        T_world_cam: ``[V, 4, 4]`` the current poses of all the views.
        config: losses, learning rates and sizes.
        seed: seed of the initial points and of the trainer's view order.
        rows: the views to use (default all).
        iterations: steps (default ``config.iterations``).
        optimise_poses: refine the poses (False: only the Gaussians).
        device: where the optimisation runs.
        extra_terms: further loss terms (the generative prior).
        on_step: called after every step.

    Returns:
        :class:`FitResult` (poses of the views not used are returned unchanged).
    """
    from geometry.se3 import invert_T
    from reconstruction.engine.trainer import GaussianTrainer, TrainData
    from reconstruction.gaussians import GaussianScene

    rows = list(range(len(views))) if rows is None else list(rows)
    iterations = config.iterations if iterations is None else iterations
    T_world_cam = T_world_cam.detach().double().cpu()
    n_rays = 0 if views.masks is not None else round(config.background_share * config.num_points)
    points, colours = initial_points(views, T_world_cam, rows, config.num_points - n_rays,
                                     config.ball_radius, seed)
    if n_rays > 0:
        more, more_colours = ray_points(views, T_world_cam, rows, n_rays, config.ray_near,
                                        config.ray_far, seed)
        points, colours = torch.cat([points, more]), torch.cat([colours, more_colours])
    tc = train_config(config, iterations, optimise_poses)
    scene = GaussianScene.from_points(points, colours.clamp(0, 1), sh_degree=tc.sh_degree,
                                      initial_opacity=tc.initial_opacity)
    data = TrainData(images=[views.images[k] for k in rows], Ks=views.Ks[rows].float(),
                     T_cam_world_init=invert_T(T_world_cam[rows]).float(), scene_scale=1.0)
    ramp = _Ramp(config.ramp_start, config.ramp_fraction)
    terms: list[LossTerm] = [RampedPhotometricLoss(config.rgb_weight, ramp, tc.ssim_weight)]
    if views.masks is not None:
        terms.append(SilhouetteLoss([views.masks[k] for k in rows], config.mask_weight, ramp))
    terms.append(PoseRegulariser(config.pose_reg_weight))
    if views.matches is not None and config.epipolar_weight > 0:
        from pose.camera.sparseags.matches import EpipolarLoss

        terms.append(EpipolarLoss(views.matches, rows, views.Ks, config.epipolar_weight,
                                  config.epipolar_sigma, config.epipolar_anneal))
    terms.extend(extra_terms)
    trainer = GaussianTrainer(data, scene, tc, seed=seed, device=device, loss_terms=terms)
    trainer.pose_mask.fill_(1.0)  # every camera may move: the regulariser sets the gauge
    step = None if on_step is None else (lambda it, loss, value: on_step())
    if optimise_poses and config.pose_warmup > 0:
        # The random Gaussians first take the shape the photos agree on; poses follow.
        tc.optimise_poses = False
        trainer.train(on_step=step, stop_at=round(config.pose_warmup * iterations))
        tc.optimise_poses = True
    trainer.train(on_step=step)
    with torch.no_grad():
        refined = invert_T(trainer.viewmats().detach().double().cpu())
    out = T_world_cam.clone()
    out[rows] = refined
    psnrs = [v if math.isfinite(v) else 0.0 for v in trainer.evaluate()]
    return FitResult(rows=rows, scene=trainer.scene(), T_world_cam=out, psnr_db=psnrs)
