"""Densification strategies of the Gaussian trainer (modelled on gsplat's ``Strategy``).

A strategy watches every step (:meth:`Strategy.step_post_backward`: screen-space gradient
statistics) and, on its schedule (:meth:`Strategy.is_refine_step`), changes the set of
Gaussians through the trainer (:meth:`~reconstruction.engine.trainer.GaussianTrainer.remap`,
:meth:`~reconstruction.engine.trainer.GaussianTrainer.append_gaussians`). Its statistics
are part of the checkpoint and of the NaN roll-back snapshot.

:class:`DefaultStrategy` is 3DGS's adaptive density control as F-3DGO uses it (clone small,
split large Gaussians with a high mean screen-space gradient, prune transparent ones),
capped for few-view training, then *coverage sampling* (``coverage_densify``): Gaussians
are added where a training view's rendered alpha stays low, since gradient-driven
densification only splits Gaussians that exist and an empty region has none. Coverage
sampling is one mechanism with hooks (:meth:`DefaultStrategy.coverage_sample`): which tiles
to sample (:meth:`~DefaultStrategy.select_tiles`), at what depth
(:meth:`~DefaultStrategy.placement_depth`: here the rendered depth completed into the
holes, edge-aware, by :func:`reconstruction.init.coverage.complete_depth`) and which new
points to keep (:meth:`~DefaultStrategy.accept`: here those that no other view sees in
front of the surface it renders). RDG-GS's adaptive sampling is the same mechanism on its
depth priors, with its slow-tile criterion (:class:`reconstruction.rdggs.method.AdaptiveSampling`).
"""

from __future__ import annotations

import math
import time
import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from reconstruction.engine.components import GAUSSIAN_FIELDS, TrainerComponent

if typing.TYPE_CHECKING:
    from reconstruction.engine.config import TrainConfig
    from reconstruction.engine.trainer import GaussianTrainer


class Strategy(TrainerComponent):
    """When and how the set of Gaussians changes during training (no change by default)."""

    def reset(self, num_gaussians: int, device: torch.device) -> None:
        """The Gaussians were replaced or re-indexed: statistics restart."""

    def step_post_backward(self, trainer: GaussianTrainer, meta: dict) -> None:
        """After the backward pass of a step (``meta`` of the render, gradients filled)."""

    def is_refine_step(self, iteration: int) -> bool:
        """Whether :meth:`refine` runs once ``iteration`` steps are done."""
        return False

    def refine(self, trainer: GaussianTrainer) -> dict[str, int]:
        """Change the Gaussians; counts of what happened (for logs)."""
        return {}

    def snapshot(self) -> tuple:
        """The statistics, for the trainer's roll-back snapshot."""
        return ()

    def restore(self, snapshot: tuple) -> None:
        """Undo to a :meth:`snapshot`."""


@dataclass(frozen=True)
class CoverageSampling:
    """The parameters of coverage sampling (:meth:`DefaultStrategy.coverage_sample`)."""

    tile: int
    """Side of the tiles (full-resolution pixels) whose mean alpha is tested."""
    sparse_alpha: float
    """Tiles whose mean rendered alpha is below this are sampled ..."""
    samples_per_tile: int
    """... with this many new Gaussians on a regular grid inside each (rounded to a square)."""
    max_fraction: float
    """At most this share of the current Gaussian count is added per round."""
    opacity: float
    """Opacity of the new Gaussians."""


class DefaultStrategy(Strategy):
    """3DGS's adaptive density control with F-3DGO's few-view caps, then coverage sampling
    (options in :class:`~reconstruction.engine.config.TrainConfig`: ``refine_*``,
    ``grad_threshold``, ``dense_scale``, ``prune_opacity``, ``max_gaussians``,
    ``max_densify_fraction``, ``coverage_*``)."""

    #: Whether :meth:`coverage_sample` renders depth (for :meth:`placement_depth`).
    coverage_needs_depth = True

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.grad_accum = torch.zeros(0)
        self.grad_count = torch.zeros(0)
        self.coverage_added = 0
        self.coverage_rounds = 0
        self.coverage_seconds = 0.0
        self._renders: dict[int, tuple[Tensor, Tensor]] = {}  # view -> (alpha, depth)

    def reset(self, num_gaussians: int, device: torch.device) -> None:
        self.grad_accum = torch.zeros(num_gaussians, device=device)
        self.grad_count = torch.zeros(num_gaussians, device=device)

    def step_post_backward(self, trainer: GaussianTrainer, meta: dict) -> None:
        """Accumulate the screen-space gradient norm (in half-image units) of the visible
        Gaussians."""
        grad = meta["means2d"].grad
        if grad is None:
            return
        grad = grad[0] * torch.tensor([meta["width"] / 2.0, meta["height"] / 2.0],
                                      device=grad.device)
        visible = (meta["radii"][0] > 0).all(-1)
        self.grad_accum += torch.where(visible, grad.norm(dim=-1), 0.0)
        self.grad_count += visible.to(self.grad_count.dtype)

    def is_refine_step(self, iteration: int) -> bool:
        c = self.config
        start, stop = int(c.refine_start * c.iterations), int(c.refine_stop * c.iterations)
        return c.refine_every > 0 and start < iteration <= stop and \
            (iteration - start) % c.refine_every == 0

    @torch.no_grad()
    def refine(self, trainer: GaussianTrainer) -> dict[str, int]:
        """Clone, split and prune, then coverage sampling (``coverage_densify``); counts of
        each."""
        counts = self.densify_and_prune(trainer)
        if self.config.coverage_densify:
            t0 = time.perf_counter()
            counts["coverage"] = self.coverage_sample(trainer)
            self.coverage_added += counts["coverage"]
            self.coverage_rounds += 1
            self.coverage_seconds += time.perf_counter() - t0
        return counts

    @torch.no_grad()
    def densify_and_prune(self, trainer: GaussianTrainer) -> dict[str, int]:
        """Clone, split and prune (3DGS's adaptive density control); counts of each."""
        c = self.config
        p = {n: trainer.params[n].detach() for n in GAUSSIAN_FIELDS}
        n = trainer.num_gaussians
        avg = self.grad_accum / self.grad_count.clamp_min(1)
        candidates = avg > c.grad_threshold
        # Few views over-fit easily and a burst of splits wrecks a converged image: grow by
        # at most max_densify_fraction per round, highest gradients first.
        budget = max(0, min(c.max_gaussians - n, int(c.max_densify_fraction * n)))
        if int(candidates.sum()) > budget:
            keep = torch.zeros_like(candidates)
            if budget > 0:
                keep[torch.topk(torch.where(candidates, avg, -1.0), budget).indices] = True
            candidates &= keep
        large = torch.exp(p["log_scales"]).max(-1).values \
            > c.dense_scale * trainer.data.scene_scale
        clone = candidates & ~large
        split = candidates & large

        g = torch.Generator().manual_seed(trainer.seed * 7_919 + trainer.iteration)
        # Revised opacity (Rota Bulo et al. 2024, gsplat's revised_opacity): a Gaussian that
        # becomes two gets alpha' = 1 - sqrt(1 - alpha) each, so that the pair covers what
        # the one did and the image does not jump at every refinement.
        logits = p["logit_opacities"].clone()
        grown = clone | split
        alpha = torch.sigmoid(logits[grown])
        logits[grown] = torch.logit(1 - torch.sqrt((1 - alpha).clamp_min(1e-12)), eps=1e-6)
        p = {**p, "logit_opacities": logits}
        new: dict[str, list[Tensor]] = {name: [p[name][clone]] for name in GAUSSIAN_FIELDS}
        if split.any():
            idx = torch.nonzero(split)[:, 0]
            scales = torch.exp(p["log_scales"][idx])
            from geometry.so3 import quat_to_matrix

            R = quat_to_matrix(torch.nn.functional.normalize(p["quats"][idx], dim=-1))
            for _ in range(2):
                offset = torch.randn(len(idx), 3, generator=g).to(trainer.device) * scales
                new["means"].append(p["means"][idx] + (R @ offset[..., None])[..., 0])
                new["log_scales"].append(p["log_scales"][idx] - math.log(1.6))
                for name in ("quats", "logit_opacities", "sh0", "shN"):
                    new[name].append(p[name][idx])
        keep = ~split & (torch.sigmoid(p["logit_opacities"]) >= c.prune_opacity)
        pruned = int((~keep & ~split).sum())
        n_new = int(sum(t.shape[0] for t in new["means"]))
        trainer.params["logit_opacities"].data.copy_(logits)  # the originals of the clones
        trainer.remap(keep, n_new, {name: torch.cat(new[name]) for name in GAUSSIAN_FIELDS})
        return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": pruned,
                "added": n_new}

    # ------------------------------------------------------------------ coverage sampling

    def coverage_settings(self) -> CoverageSampling:
        """The parameters of :meth:`coverage_sample` (``TrainConfig.coverage_*``)."""
        c = self.config
        return CoverageSampling(tile=c.coverage_tile, sparse_alpha=c.coverage_alpha,
                                samples_per_tile=c.coverage_samples_per_tile,
                                max_fraction=c.coverage_max_fraction,
                                opacity=c.coverage_opacity)

    @torch.no_grad()
    def select_tiles(self, view: int, rgb: Tensor, alpha: Tensor,
                     target: Tensor) -> tuple[Tensor, Tensor]:
        """Tiles of ``view`` to sample: ``(selected [th, tw] bool, score [th, tw])``, from
        the render ``rgb [H, W, 3]``, ``alpha [H, W, 1]`` and the photo ``target``.

        Mean alpha under ``sparse_alpha`` and mean L1 error at least ``coverage_min_error``
        (an empty region that the background colour already explains needs nothing). Score
        (higher first): the error, doubled where nothing is rendered.
        """
        settings = self.coverage_settings()
        tile_err, tile_alpha = tile_means(rgb, alpha, target, settings.tile)
        selected = (tile_alpha < settings.sparse_alpha) & \
            (tile_err >= self.config.coverage_min_error)
        return selected, tile_err * (2.0 - tile_alpha)

    @torch.no_grad()
    def placement_depth(self, trainer: GaussianTrainer, view: int) -> Tensor:
        """``[H, W]`` camera z at which new Gaussians of ``view`` are placed (0: none here).

        The depth rendered where the view is covered (alpha at least 0.5), completed into the
        rest guided by the photo (:func:`~reconstruction.init.coverage.complete_depth`); only
        the pixels whose own alpha is below ``sparse_alpha`` get one.
        """
        from reconstruction.init.coverage import complete_depth

        alpha, depth = self._renders[view]
        known = (alpha >= 0.5) & (depth > 0)
        filled = complete_depth(depth, known, trainer.targets[view].cpu())
        return torch.where(alpha < self.coverage_settings().sparse_alpha, filled, 0.0)

    @torch.no_grad()
    def accept(self, trainer: GaussianTrainer, view: int, pts_world: Tensor) -> Tensor:
        """``[P]`` bool: which new world points ``[P, 3]`` of ``view`` to keep: those that no
        other view sees in front of the surface it renders there, by more than
        ``coverage_margin`` (:func:`~reconstruction.init.coverage.free_space_violations`)."""
        from reconstruction.init.coverage import free_space_violations

        observed = [torch.where(a >= 0.5, d, 0.0) for a, d in
                    (self._renders[k] for k in range(trainer.data.num_views))]
        bad = free_space_violations(pts_world.cpu(), view, trainer.intrinsics().detach().cpu(),
                                    trainer.viewmats().detach().cpu(), observed,
                                    self.config.coverage_margin)
        return ~bad

    @torch.no_grad()
    def coverage_sample(self, trainer: GaussianTrainer) -> int:
        """Add Gaussians in the selected tiles of every training view (:meth:`select_tiles`)
        at :meth:`placement_depth`, kept by :meth:`accept`, highest tile scores first within
        ``max_fraction`` of the count; returns how many were added."""
        settings = self.coverage_settings()
        c = self.config
        tile = settings.tile
        n = trainer.num_gaussians
        budget = max(0, min(c.max_gaussians - n, int(settings.max_fraction * n)))
        k = max(1, int(math.isqrt(max(1, settings.samples_per_tile))))
        candidates = []  # (score, view, rows, cols)
        self._renders = {}
        for view in range(trainer.data.num_views):
            rgb, alpha, meta, target = trainer.render(view, 1.0, depth=self.coverage_needs_depth)
            if self.coverage_needs_depth:
                self._renders[view] = (alpha[..., 0].cpu(), meta["depth"][..., 0].cpu())
            selected, score = self.select_tiles(view, rgb, alpha, target)
            if budget == 0 or not bool(selected.any()):
                continue
            h, w = target.shape[:2]
            ty, tx = torch.nonzero(selected.cpu(), as_tuple=True)
            score = score.cpu()
            # A k x k grid of pixels inside each selected tile.
            step = tile / k
            off = (torch.arange(k, dtype=torch.float64) + 0.5) * step
            rows = (ty[:, None, None] * tile + off[None, :, None]).long()
            cols = (tx[:, None, None] * tile + off[None, None, :]).long()
            rows, cols = torch.broadcast_tensors(rows, cols)
            rows = rows.reshape(len(ty), -1).clamp_max(h - 1)
            cols = cols.reshape(len(ty), -1).clamp_max(w - 1)
            tile_score = score[ty, tx]
            for i in range(len(ty)):
                candidates.append((float(tile_score[i]), view, rows[i], cols[i]))
        if budget == 0 or not candidates:
            self._renders = {}
            return 0
        candidates.sort(key=lambda item: -item[0])
        depths: dict[int, Tensor] = {}
        per_view: dict[int, tuple[list[Tensor], list[Tensor]]] = {}
        total = 0
        for _, view, rows, cols in candidates:
            if view not in depths:
                depths[view] = self.placement_depth(trainer, view).cpu()
            ok = depths[view][rows, cols] > 0
            rows, cols = rows[ok], cols[ok]
            if total + len(rows) > budget:
                rows, cols = rows[:budget - total], cols[:budget - total]
            if len(rows) == 0:
                continue
            per_view.setdefault(view, ([], []))
            per_view[view][0].append(rows)
            per_view[view][1].append(cols)
            total += len(rows)
            if total >= budget:
                break
        values: dict[str, list[Tensor]] = {name: [] for name in GAUSSIAN_FIELDS}
        K_all, T_all = trainer.intrinsics(), trainer.viewmats()
        from reconstruction.splatting.sh import rgb_to_sh

        sh_rest = trainer.params["shN"].shape[1]
        logit = math.log(settings.opacity / (1.0 - settings.opacity))
        added = 0
        for view, (rows_list, cols_list) in per_view.items():
            rows, cols = torch.cat(rows_list), torch.cat(cols_list)
            z = depths[view][rows, cols].double()
            K, T = K_all[view].double().cpu(), T_all[view].double().cpu()
            x = (cols.double() + 0.5 - K[0, 2]) / K[0, 0] * z
            y = (rows.double() + 0.5 - K[1, 2]) / K[1, 1] * z
            pts_cam = torch.stack([x, y, z], 1)
            pts_world = (pts_cam - T[:3, 3]) @ T[:3, :3]  # R^T (p - t), row vectors
            keep = self.accept(trainer, view, pts_world)
            pts_world, z, rows, cols = pts_world[keep], z[keep], rows[keep], cols[keep]
            m = len(rows)
            if m == 0:
                continue
            # Standard deviation: half the spacing of the samples on the image, at depth z.
            sigma = z / K[0, 0] * (tile / k) * 0.5
            colours = trainer.targets[view].cpu()[rows, cols].clamp(0, 1)
            values["means"].append(pts_world.float())
            values["quats"].append(torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(m, 4).clone())
            values["log_scales"].append(torch.log(sigma.float())[:, None].expand(m, 3).clone())
            values["logit_opacities"].append(torch.full((m,), logit))
            values["sh0"].append(rgb_to_sh(colours.float().cpu())[:, None, :])
            values["shN"].append(torch.zeros(m, sh_rest, 3))
            added += m
        self._renders = {}
        if added == 0:
            return 0
        trainer.append_gaussians({name: torch.cat(v).to(trainer.device)
                                  for name, v in values.items()})
        return added

    def metrics(self) -> dict:
        if not self.config.coverage_densify:
            return {}
        return {"coverage_densify_added": self.coverage_added,
                "coverage_densify_rounds": self.coverage_rounds,
                "coverage_densify_seconds": round(self.coverage_seconds, 3)}

    def state_meta(self) -> dict:
        return {"coverage_added": self.coverage_added, "coverage_rounds": self.coverage_rounds}

    # ------------------------------------------------------------------ state

    def snapshot(self) -> tuple:
        return (self.grad_accum.clone(), self.grad_count.clone())

    def restore(self, snapshot: tuple) -> None:
        self.grad_accum, self.grad_count = (t.clone() for t in snapshot)

    def state_tensors(self) -> dict[str, Tensor]:
        return {"stats.grad_accum": self.grad_accum.cpu().contiguous(),
                "stats.grad_count": self.grad_count.cpu().contiguous()}

    def load_state(self, tensors: dict[str, Tensor], meta: dict,
                   device: torch.device) -> None:
        self.grad_accum = tensors["stats.grad_accum"].to(device)
        self.grad_count = tensors["stats.grad_count"].to(device)
        self.coverage_added = int(meta.get("coverage_added", 0))
        self.coverage_rounds = int(meta.get("coverage_rounds", 0))


def tile_means(rgb: Tensor, alpha: Tensor, target: Tensor, tile: int) -> tuple[Tensor, Tensor]:
    """Per ``tile`` x ``tile`` block (the last ones clipped): mean L1 error of ``rgb [H, W, 3]``
    against ``target`` and mean alpha (``alpha [H, W, 1]``), each ``[th, tw]``."""
    err = (rgb - target).abs().mean(-1)
    tile_err = F.avg_pool2d(err[None, None], tile, ceil_mode=True)[0, 0]
    tile_alpha = F.avg_pool2d(alpha[..., 0][None, None], tile, ceil_mode=True)[0, 0]
    return tile_err, tile_alpha
