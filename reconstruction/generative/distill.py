"""Distillation into a Gaussian scene: loss terms for the engine's trainer.

Each term is a :class:`~reconstruction.engine.losses.LossTerm`: the trainer adds it to the
photometric loss of its input view, and its densification strategy (which reads the
screen-space gradients of the input view's render) runs unchanged. On the steps a term
applies (every ``every`` iterations from ``start_fraction`` of the run) it samples
``batch_size`` novel cameras around the object (:mod:`.cameras`), renders the trainer's
Gaussians there (square ``render_size``, the inputs' field of view, the trainer's
background and SH degree) and returns ``weight`` times its loss:

- :class:`ScoreDistillationLoss`: SDS or C-SDS (:mod:`.sds`) from a
  :class:`~reconstruction.generative.sds.ScoreModel`;
- :class:`ImageDistillationLoss`: image-space distillation (UpFusion, SparseFusion): an
  :class:`ImageDenoiser` turns each render into a target image (a diffusion model: encode,
  noise to a level that falls with training progress, a few DDIM steps back, decode: see
  :class:`DiffusionImageDenoiser`; or an oracle), and the render is regressed onto it with
  ``l2_weight * MSE + lpips_weight * LPIPS``.

Cameras and noise are drawn from generators seeded by ``(seed, iteration)``, so a run is
deterministic and a resumed run continues as an uninterrupted one would. Gradients reach
the Gaussians only (the cameras of the inputs are read detached).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from reconstruction.engine.losses import LossTerm
from reconstruction.generative.cameras import orbit_band, sample_orbit_cameras, square_intrinsics
from reconstruction.generative.schedule import TimestepSampler, Weighting, partial_ddim
from reconstruction.generative.sds import Mode, NovelCameras, ScoreModel, score_distillation

if typing.TYPE_CHECKING:
    from reconstruction.engine.trainer import GaussianTrainer


@dataclass
class NovelViewConfig:
    """When and where novel views are rendered for distillation."""

    weight: float = 1.0
    """Weight of the term against the photometric loss of the input view."""
    every: int = 1
    """Apply on every this-many iterations."""
    start_fraction: float = 0.0
    """Share of the iterations before the term starts."""
    batch_size: int = 1
    """Novel views per application."""
    render_size: int = 64
    """Side of the square novel-view render (pixels)."""
    elevation_margin_deg: float = 30.0
    """Novel views lie up to this many degrees above the highest / below the lowest input."""
    elevation_limit_deg: float = 80.0
    """... and never steeper than this above or below the horizon."""
    radius_jitter: float = 0.0
    """Camera distance varies by up to this share of the inputs' mean distance."""
    timesteps: TimestepSampler = field(default_factory=TimestepSampler)
    """Diffusion times (annealed from high to low by default)."""
    densify: bool = True
    """Feed the novel renders' screen-space gradients to the trainer's densification
    strategy too (regions only the novel views see get Gaussians split and cloned)."""


@dataclass
class _Stats:
    applied: int = 0
    loss_sum: float = 0.0


class NovelViewLoss(LossTerm):
    """Base of the distillation terms: sampling, rendering, scheduling (see the module doc).

    Subclasses implement :meth:`novel_loss`.

    Args:
        config: when and where to render.
        total_iterations: the trainer's iterations (start and annealing).
        centre: ``[3]`` object centre in the trainer's world (default: the point nearest
            to the input cameras' optical axes).
        name: prefix of the figures in metrics.json.
    """

    def __init__(self, config: NovelViewConfig, total_iterations: int,
                 centre: Tensor | None = None, name: str = "distill") -> None:
        self.config = config
        self.total_iterations = max(1, total_iterations)
        self.centre = centre
        self.name = name
        self.stats = _Stats()

    def applies(self, iteration: int) -> bool:
        c = self.config
        return (c.weight > 0 and iteration >= c.start_fraction * self.total_iterations
                and iteration % max(1, c.every) == 0)

    def progress(self, trainer: GaussianTrainer) -> float:
        """Share of the distillation phase done (0 at its start, 1 at the end)."""
        start = self.config.start_fraction * self.total_iterations
        return min(1.0, max(0.0, (trainer.iteration - start)
                            / max(1.0, self.total_iterations - start)))

    def sample_cameras(self, trainer: GaussianTrainer,
                       generator: torch.Generator) -> NovelCameras:
        """Novel cameras about the object from the trainer's current (detached) inputs."""
        c = self.config
        band = orbit_band(trainer.viewmats().detach(), trainer.intrinsics().detach(),
                          [t.shape[1] for t in trainer.targets], self.centre,
                          c.elevation_margin_deg, c.elevation_limit_deg)
        T = sample_orbit_cameras(band, c.batch_size, generator, c.radius_jitter)
        K = square_intrinsics(band, c.render_size, c.batch_size)
        return NovelCameras(T.float().to(trainer.device), K.float().to(trainer.device),
                            c.render_size, c.render_size)

    def render(self, trainer: GaussianTrainer, cameras: NovelCameras
               ) -> tuple[Tensor, Tensor, dict]:
        """``(rgb [B, H, W, 3], alpha [B, H, W, 1], meta)`` of the trainer's Gaussians."""
        from reconstruction.splatting import rasterization

        p = trainer.params
        b = len(cameras.T_cam_world)
        return rasterization(
            p["means"], p["quats"], torch.exp(p["log_scales"]), torch.sigmoid(p["logit_opacities"]),
            torch.cat([p["sh0"], p["shN"]], 1), cameras.T_cam_world, cameras.K, cameras.width,
            cameras.height, sh_degree=trainer.sh_degree_at(trainer.iteration),
            backgrounds=trainer.background[None].expand(b, -1))

    @staticmethod
    def _feed_strategy(trainer: GaussianTrainer, meta: dict) -> None:
        """After backward, hand each novel view's screen-space gradient to the strategy as
        if it were a training view's (its ``step_post_backward`` reads ``means2d.grad``)."""
        from types import SimpleNamespace

        means2d = meta["means2d"]
        if not means2d.requires_grad:
            return

        def hook(grad: Tensor) -> None:
            for c in range(grad.shape[0]):
                trainer.strategy.step_post_backward(trainer, {
                    "means2d": SimpleNamespace(grad=grad[c:c + 1]), "radii": meta["radii"][c:c + 1],
                    "width": meta["width"], "height": meta["height"]})

        means2d.register_hook(hook)

    def novel_loss(self, trainer: GaussianTrainer, rgb: Tensor, alpha: Tensor,
                   cameras: NovelCameras, generator: torch.Generator) -> Tensor:
        """The unweighted loss (a scalar) of the renders."""
        raise NotImplementedError

    def __call__(self, trainer, view, image, alpha, meta, target) -> Tensor | float:
        if not self.applies(trainer.iteration):
            return 0.0
        generator = torch.Generator().manual_seed(trainer.seed * 1_000_003
                                                  + trainer.iteration * 7 + 29)
        cameras = self.sample_cameras(trainer, generator)
        rgb, alphas, meta = self.render(trainer, cameras)
        if self.config.densify:
            self._feed_strategy(trainer, meta)
        loss = self.novel_loss(trainer, rgb, alphas, cameras, generator)
        self.stats.applied += 1
        self.stats.loss_sum += float(loss.detach())
        return self.config.weight * loss

    def state_meta(self) -> dict:
        return {f"{self.name}_applied": self.stats.applied,
                f"{self.name}_loss_sum": self.stats.loss_sum}

    def load_state(self, tensors: dict[str, Tensor], meta: dict,
                   device: torch.device) -> None:
        self.stats = _Stats(int(meta.get(f"{self.name}_applied", 0)),
                            float(meta.get(f"{self.name}_loss_sum", 0.0)))

    def metrics(self) -> dict:
        s = self.stats
        return {f"{self.name}_steps": s.applied,
                f"{self.name}_mean_loss": s.loss_sum / s.applied if s.applied else None}


# ---------------------------------------------------------------------- score distillation


class ScoreDistillationLoss(NovelViewLoss):
    """SDS / C-SDS of the novel renders under ``model`` (see :mod:`.sds`).

    Args:
        model: the frozen diffusion model with its conditioning (e.g. Sparse3D's controller
            on the input views).
        config: sampling and schedule.
        total_iterations: the trainer's iterations.
        guidance_scale: classifier-free guidance scale.
        mode: ``sds`` or ``csds``.
        weighting: ``w(t)`` (:func:`~reconstruction.generative.schedule.sds_weight`).
    """

    def __init__(self, model: ScoreModel, config: NovelViewConfig, total_iterations: int,
                 guidance_scale: float = 7.5, mode: Mode = "sds", weighting: Weighting = "sds",
                 centre: Tensor | None = None, name: str = "sds") -> None:
        super().__init__(config, total_iterations, centre, name)
        self.model = model
        self.guidance_scale = guidance_scale
        self.mode = mode
        self.weighting = weighting

    def novel_loss(self, trainer, rgb, alpha, cameras, generator) -> Tensor:
        n = len(self.model.alphas_cumprod)
        t = self.config.timesteps.steps(len(rgb), self.progress(trainer), generator, n)
        return score_distillation(self.model, rgb, cameras, t, generator, self.guidance_scale,
                                  self.mode, self.weighting, reduction="mean")


# ---------------------------------------------------------------------- image-space distillation


class ImageDenoiser(Protocol):
    """Turns renders into distillation targets."""

    def __call__(self, images: Tensor, cameras: NovelCameras, strength: Tensor,
                 generator: torch.Generator) -> Tensor:
        """Targets ``[B, H, W, 3]`` in [0, 1] for renders ``images [B, H, W, 3]`` at
        ``cameras``, noised to ``strength [B]`` (shares of the diffusion steps) first."""
        ...


class LatentDiffusionModel(ScoreModel, Protocol):
    """A :class:`~reconstruction.generative.sds.ScoreModel` that can also decode."""

    def decode(self, latents: Tensor) -> Tensor:
        """Images ``[B, H, W, 3]`` in [0, 1] of scaled latents ``[B, C, h, w]``."""
        ...


class DiffusionImageDenoiser:
    """UpFusion's target: encode, noise to ``strength``, ``steps`` guided DDIM steps, decode.

    Args:
        model: the conditioned diffusion model.
        steps: DDIM steps from the noise level back to 0.
        guidance_scale: classifier-free guidance scale.
    """

    def __init__(self, model: LatentDiffusionModel, steps: int = 4,
                 guidance_scale: float = 3.0) -> None:
        self.model = model
        self.steps = steps
        self.guidance_scale = guidance_scale

    @torch.no_grad()
    def __call__(self, images, cameras, strength, generator) -> Tensor:
        latents = self.model.encode(images)
        n = len(self.model.alphas_cumprod)
        t_start = int(round(float(strength.max()) * (n - 1)))

        def predict(x: Tensor, t: Tensor) -> Tensor:
            return self.model.predict_noise(x, t, cameras).guided(self.guidance_scale)

        clean = partial_ddim(latents, predict, t_start, self.steps, self.model.alphas_cumprod,
                             generator)
        return self.model.decode(clean).clamp(0, 1)


class ImageDistillationLoss(NovelViewLoss):
    """Regress novel renders onto their denoised targets: ``l2_weight * MSE +
    lpips_weight * LPIPS`` (LPIPS only with a network: :func:`reconstruction.eval.lpips.
    load_lpips`, or any module ``(image, reference) -> [B]`` on ``[B, H, W, 3]``).

    Args:
        denoiser: render -> target (:class:`DiffusionImageDenoiser`, an oracle, ...).
        config: sampling and noise-level schedule.
        total_iterations: the trainer's iterations.
        lpips: the LPIPS network, or None.
    """

    def __init__(self, denoiser: ImageDenoiser, config: NovelViewConfig,
                 total_iterations: int, l2_weight: float = 1.0, lpips_weight: float = 0.0,
                 lpips: torch.nn.Module | None = None, centre: Tensor | None = None,
                 name: str = "image_distill") -> None:
        super().__init__(config, total_iterations, centre, name)
        self.denoiser = denoiser
        self.l2_weight = l2_weight
        self.lpips_weight = lpips_weight if lpips is not None else 0.0
        self.lpips = lpips

    def novel_loss(self, trainer, rgb, alpha, cameras, generator) -> Tensor:
        strength = self.config.timesteps.fraction(len(rgb), self.progress(trainer), generator)
        with torch.no_grad():
            target = self.denoiser(rgb.detach(), cameras, strength, generator).to(rgb)
        loss = self.l2_weight * ((rgb - target) ** 2).mean()
        if self.lpips_weight > 0:
            lp = self.lpips.to(rgb.device)
            loss = loss + self.lpips_weight * lp(rgb, target).mean()
        return loss
