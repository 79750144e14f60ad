"""RDG-GS on the Gaussian engine: depth priors, relative depth guidance, adaptive sampling.

:func:`build_trainer` (the method's builder, run by ``recon fit --method rdggs``) builds the
per-view depth priors (:mod:`.priors`) and returns the engine's
:class:`~reconstruction.engine.trainer.GaussianTrainer` with two RDG-GS components:

- :class:`RelativeDepthLoss`, a loss term: expected depth is rendered every step and the
  scale-free patch losses of :mod:`.losses` (local patches, the whole view, depth against
  image) are added, their weights falling linearly to ``depth_decay`` of their value over
  the run (``relative_depth``);
- :class:`AdaptiveSampling`, the densification strategy: after each round of the default
  strategy it samples new Gaussians where the training views are sparsely covered (low
  rendered opacity) and, with ``slow_tiles``, where they converge slowly (tile error high
  and barely falling since the last round), placed on the refined (filled) prior depth
  (``adaptive_sampling``).

Every random choice (patch offsets) is seeded by ``(seed, iteration)`` and the priors are
recomputed the same way on ``--resume``; the per-tile errors of the last sampling round are
checkpointed, so a resumed run continues as an uninterrupted one would.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from reconstruction.engine.config import TrainConfig
from reconstruction.engine.losses import LossTerm, default_loss_terms
from reconstruction.engine.strategy import CoverageSampling, DefaultStrategy, tile_means
from reconstruction.engine.trainer import GaussianTrainer
from reconstruction.rdggs.config import RDGGSConfig
from reconstruction.rdggs.losses import depth_image_loss, patch_pearson_loss
from reconstruction.rdggs.priors import DepthPriors


def downsample_depth(depth: Tensor, valid: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Valid-weighted area resampling of ``[H, W]`` depth to ``size = (h, w)``; a coarse
    pixel is valid where at least half of what it covers was."""
    d = (depth * valid)[None, None].double()
    m = valid[None, None].double()
    d2 = F.interpolate(d, size=size, mode="area")[0, 0]
    m2 = F.interpolate(m, size=size, mode="area")[0, 0]
    ok = m2 >= 0.5
    return torch.where(ok, d2 / m2.clamp_min(1e-12), 0.0).float(), ok


def _on_device(priors: DepthPriors, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """``(depth [H, W], valid [H, W])`` of every view on ``device``."""
    return [(d.to(device), v.to(device)) for d, v in zip(priors.depth, priors.valid, strict=True)]


class RelativeDepthLoss(LossTerm):
    """RDG-GS's relative depth guidance: Pearson patch losses against the depth priors."""

    def __init__(self, rdggs: RDGGSConfig, priors: DepthPriors) -> None:
        self.rdggs = rdggs
        self.priors = priors
        self.needs_depth = rdggs.relative_depth
        self.depth_loss_ema: float | None = None

    def bind(self, trainer: GaussianTrainer) -> None:
        self.prior_full = _on_device(self.priors, trainer.device)
        self.prior_coarse = []
        for (d, v), (small, _, _) in zip(self.prior_full, trainer.coarse_targets, strict=True):
            self.prior_coarse.append(downsample_depth(d, v, tuple(small.shape[:2])))

    def depth_weight(self, trainer: GaussianTrainer) -> float:
        """Linear decay from 1 to ``depth_decay`` over the iterations."""
        progress = min(1.0, trainer.iteration / max(1, trainer.config.iterations))
        return 1.0 - (1.0 - self.rdggs.depth_decay) * progress

    def __call__(self, trainer, view, image, alpha, meta, target) -> Tensor | float:
        r = self.rdggs
        if not r.relative_depth or "depth" not in meta:
            return 0.0
        depth = meta["depth"][..., 0]
        prior, prior_valid = (self.prior_full if meta["scale"] == 1.0 else self.prior_coarse)[view]
        if prior.shape != depth.shape:  # a coarse level of another rounding: resample
            prior, prior_valid = downsample_depth(prior, prior_valid, tuple(depth.shape))
        covered = alpha[..., 0].detach() > 0.5
        valid = prior_valid & covered & torch.isfinite(depth.detach())
        size = max(4, round(r.patch_size * meta["scale"]))
        g = torch.Generator().manual_seed(trainer.seed * 104_729 + trainer.iteration)
        offset = tuple(int(o) for o in torch.randint(0, size, (2,), generator=g))
        weight = self.depth_weight(trainer)
        terms = depth.sum() * 0.0
        if r.local_weight > 0:
            local, _ = patch_pearson_loss(depth, prior, valid, size, offset,
                                          r.min_valid_fraction)
            terms = terms + r.local_weight * local
        if r.global_weight > 0:
            whole, _ = patch_pearson_loss(depth, prior, valid, max(depth.shape))
            terms = terms + r.global_weight * whole
        if r.image_weight > 0:
            terms = terms + r.image_weight * depth_image_loss(
                depth, target, covered, size, r.image_edge_gamma)
        value = float(terms.detach())
        self.depth_loss_ema = value if self.depth_loss_ema is None else \
            0.95 * self.depth_loss_ema + 0.05 * value
        return weight * terms

    def state_meta(self) -> dict:
        return {"rdggs_depth_loss_ema": self.depth_loss_ema}

    def load_state(self, tensors: dict[str, Tensor], meta: dict,
                   device: torch.device) -> None:
        self.depth_loss_ema = meta.get("rdggs_depth_loss_ema")

    def metrics(self) -> dict:
        return {"rdggs_depth_loss": self.depth_loss_ema}


class AdaptiveSampling(DefaultStrategy):
    """The default gradient densification, then RDG-GS's adaptive sampling: the engine's
    coverage sampling (:meth:`~reconstruction.engine.strategy.DefaultStrategy.coverage_sample`)
    with RDG-GS's parameters, its slow-tile criterion and the prior depth for placement."""

    coverage_needs_depth = False  # placed on the prior, not on the rendered depth

    def __init__(self, config: TrainConfig, rdggs: RDGGSConfig, priors: DepthPriors) -> None:
        super().__init__(config)
        self.rdggs = rdggs
        self.priors = priors
        self.tile_error: dict[int, Tensor] = {}
        self.sampled = 0
        self.sampling_rounds = 0
        self.sampling_seconds = 0.0

    def bind(self, trainer: GaussianTrainer) -> None:
        self.prior_full = _on_device(self.priors, trainer.device)

    # ------------------------------------------------------------------ adaptive sampling

    @torch.no_grad()
    def refine(self, trainer: GaussianTrainer) -> dict[str, int]:
        counts = self.densify_and_prune(trainer)  # RDG-GS's own sampling replaces coverage's
        if self.rdggs.adaptive_sampling:
            t0 = time.perf_counter()
            counts["sampled"] = self.adaptive_sample(trainer)
            self.sampling_seconds += time.perf_counter() - t0
        return counts

    def coverage_settings(self) -> CoverageSampling:
        r = self.rdggs
        return CoverageSampling(tile=r.sample_tile, sparse_alpha=r.sparse_alpha,
                                samples_per_tile=r.samples_per_tile,
                                max_fraction=r.max_sample_fraction, opacity=r.sample_opacity)

    @torch.no_grad()
    def select_tiles(self, view: int, rgb: Tensor, alpha: Tensor,
                     target: Tensor) -> tuple[Tensor, Tensor]:
        """Tiles of ``view`` to sample: ``(selected [th, tw] bool, score [th, tw])``.

        Sparse: mean rendered opacity under ``sparse_alpha``. Slow (with ``slow_tiles``): L1
        error above ``slow_error_ratio`` times the view's median tile error and above
        ``slow_progress`` times its value at the previous round (no previous round: not
        slow). Updates the stored tile errors.
        """
        r = self.rdggs
        tile_err, tile_alpha = tile_means(rgb, alpha, target, r.sample_tile)
        sparse = tile_alpha < r.sparse_alpha
        previous = self.tile_error.get(view)
        high = tile_err > r.slow_error_ratio * tile_err.median()
        if r.slow_tiles and previous is not None and previous.shape == tile_err.shape:
            slow = high & (tile_err > r.slow_progress * previous)
        else:
            slow = torch.zeros_like(high)
        self.tile_error[view] = tile_err.clone()
        score = tile_err * (2.0 - tile_alpha)
        return sparse | slow, score

    @torch.no_grad()
    def placement_depth(self, trainer: GaussianTrainer, view: int) -> Tensor:
        """The refined (filled) prior depth: sparse regions are its holes."""
        return self.prior_full[view][0]

    @torch.no_grad()
    def accept(self, trainer: GaussianTrainer, view: int, pts_world: Tensor) -> Tensor:
        return torch.ones(len(pts_world), dtype=torch.bool)

    @torch.no_grad()
    def adaptive_sample(self, trainer: GaussianTrainer) -> int:
        """Add Gaussians on the prior depth in the selected tiles of every view; the count."""
        total = self.coverage_sample(trainer)
        self.sampled += total
        self.sampling_rounds += 1
        return total

    # ------------------------------------------------------------------ state and metrics

    def state_tensors(self) -> dict[str, Tensor]:
        out = super().state_tensors()
        for view, errors in self.tile_error.items():
            out[f"rdggs.tile_error.{view}"] = errors.cpu().contiguous()
        return out

    def state_meta(self) -> dict:
        return {"rdggs_sampled": self.sampled, "rdggs_sampling_rounds": self.sampling_rounds}

    def load_state(self, tensors: dict[str, Tensor], meta: dict,
                   device: torch.device) -> None:
        super().load_state(tensors, meta, device)
        prefix = "rdggs.tile_error."
        self.tile_error = {int(k[len(prefix):]): v.to(device)
                           for k, v in tensors.items() if k.startswith(prefix)}
        self.sampled = int(meta.get("rdggs_sampled", 0))
        self.sampling_rounds = int(meta.get("rdggs_sampling_rounds", 0))

    def metrics(self) -> dict:
        r, s = self.rdggs, self.priors.stats
        return {
            "rdggs_components": {"refine_prior": r.refine_prior,
                                 "relative_depth": r.relative_depth,
                                 "adaptive_sampling": r.adaptive_sampling},
            "rdggs_prior_source": self.priors.source,
            "rdggs_prior_coverage": s.get("coverage"),
            "rdggs_prior_scale": s.get("scale"),
            "rdggs_prior_shift": s.get("shift"),
            "rdggs_prior_sparse_absrel": s.get("sparse_absrel"),
            "rdggs_prior_seconds": s.get("seconds"),
            "rdggs_sampled_gaussians": self.sampled,
            "rdggs_sampling_rounds": self.sampling_rounds,
            "rdggs_sampling_seconds": round(self.sampling_seconds, 3),
        }


def build_trainer(job) -> GaussianTrainer:
    """The RDG-GS trainer of a ``recon fit`` run (see the module doc).

    Args:
        job: the engine's :class:`~reconstruction.engine.fit.TrainerJob` (the run's config
            and RDG-GS options, training data, initial Gaussians, photos, initialisation).

    Raises:
        UserError: a missing or unusable monocular checkpoint, conflicting options.
    """
    from reconstruction.rdggs.priors import build_priors

    config, rdggs = job.config, job.options
    t0 = time.perf_counter()
    priors = build_priors(job.images, job.data.images, job.init_state, rdggs,
                          config.init_options.stereo, device=config.device)
    priors.stats["seconds"] = round(time.perf_counter() - t0, 3)
    terms = [*default_loss_terms(config.train), RelativeDepthLoss(rdggs, priors)]
    return GaussianTrainer(job.data, job.scene, config.train, seed=config.seed,
                           device=config.device, loss_terms=terms,
                           strategy=AdaptiveSampling(config.train, rdggs, priors))
