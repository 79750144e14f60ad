"""Densification strategies of the Gaussian trainer (modelled on gsplat's ``Strategy``).

A strategy watches every step (:meth:`Strategy.step_post_backward`: screen-space gradient
statistics) and, on its schedule (:meth:`Strategy.is_refine_step`), changes the set of
Gaussians through the trainer (:meth:`~reconstruction.engine.trainer.GaussianTrainer.remap`,
:meth:`~reconstruction.engine.trainer.GaussianTrainer.append_gaussians`). Its statistics
are part of the checkpoint and of the NaN roll-back snapshot.

:class:`DefaultStrategy` is 3DGS's adaptive density control as F-3DGO uses it (clone small,
split large Gaussians with a high mean screen-space gradient, prune transparent ones),
capped for few-view training. Methods subclass it (RDG-GS adds adaptive sampling after each
round).
"""

from __future__ import annotations

import math
import typing

import torch
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


class DefaultStrategy(Strategy):
    """3DGS's adaptive density control with F-3DGO's few-view caps (options in
    :class:`~reconstruction.engine.config.TrainConfig`: ``refine_*``, ``grad_threshold``,
    ``dense_scale``, ``prune_opacity``, ``max_gaussians``, ``max_densify_fraction``)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.grad_accum = torch.zeros(0)
        self.grad_count = torch.zeros(0)

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
