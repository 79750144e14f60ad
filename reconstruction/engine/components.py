"""What loss terms, strategies and callbacks of the Gaussian trainer have in common.

A component may carry state that a resumed run needs (:meth:`TrainerComponent.state_tensors`
and :meth:`TrainerComponent.state_meta`, restored by :meth:`TrainerComponent.load_state`)
and figures for ``metrics.json`` (:meth:`TrainerComponent.metrics`); every hook defaults
to nothing.
"""

from __future__ import annotations

import typing

import torch
from torch import Tensor

if typing.TYPE_CHECKING:
    from reconstruction.engine.trainer import GaussianTrainer

#: The trainer's per-Gaussian parameters (raw, as in :class:`GaussianScene`).
GAUSSIAN_FIELDS = ("means", "quats", "log_scales", "logit_opacities", "sh0", "shN")


class TrainerComponent:
    """Optional hooks of a part of the trainer (see the module doc)."""

    def bind(self, trainer: GaussianTrainer) -> None:
        """Called once the trainer is built (e.g. to move data to its device)."""

    def state_tensors(self) -> dict[str, Tensor]:
        """Named tensors to checkpoint (keys unique across components)."""
        return {}

    def state_meta(self) -> dict:
        """JSON-able state to checkpoint (keys unique across components)."""
        return {}

    def load_state(self, tensors: dict[str, Tensor], meta: dict,
                   device: torch.device) -> None:
        """Restore what :meth:`state_tensors` and :meth:`state_meta` saved."""

    def metrics(self) -> dict:
        """Figures for metrics.json (keys prefixed by the method's name)."""
        return {}
