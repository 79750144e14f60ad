"""Options of ``pose sparp-train`` (light: imported for ``--help``)."""

from __future__ import annotations

from dataclasses import dataclass

from geometry.errors import UserError

__all__ = ["SparpData", "SparpTrainConfig"]


@dataclass
class SparpData:
    """The generated training data."""

    sequences: int = 300
    """Objects (one seed each) rendered before training."""
    seed: int = 0
    """First object seed (benchmarks use unseen seeds, e.g. 5000 on)."""
    frames: int = 6
    """Photos rendered per object (the inputs are drawn from them)."""
    supersample: int = 2
    """Colour rays per pixel along each axis (anti-aliasing)."""
    distance_range: tuple[float, float] = (0.7, 0.9)
    """Range of the cameras' mean distance to the object, in units of the distance at which
    its bounding sphere just fills the view (the generator's default 1.0-1.4 leaves 20-45
    object pixels in a 16 px tile; 0.7-0.9 about 60-110)."""


@dataclass
class SparpTrainConfig:
    """Options of the training run."""

    steps: int = 20000
    """Optimiser steps (``--max-minutes`` usually ends the run first)."""
    batch: int = 8
    """Examples per step (per rank)."""
    lr: float = 2e-3
    """Peak AdamW learning rate (warm-up, then cosine decay)."""
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    views: str = "3"
    """Input photos per example: a count or an inclusive range such as 2-4 (1 to 6)."""
    p_nocs: float = 0.85
    """Share of the examples in the NOCS domain (the rest: the six novel views)."""
    seed: int = 0
    """Seed of the initial weights and of the batches."""
    grad_clip: float = 1.0
    log_every: int = 10
    checkpoint_every_s: float = 120.0

    def view_range(self) -> tuple[int, int]:
        parts = self.views.split("-")
        try:
            lo, hi = int(parts[0]), int(parts[-1])
        except ValueError:
            lo, hi = 0, 0
        if len(parts) > 2 or not 1 <= lo <= hi <= 6:
            raise UserError(f"--views {self.views} is not a count or range of 1 to 6 photos "
                            "(e.g. 3 or 2-4).")
        return lo, hi
