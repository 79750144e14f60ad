"""How long ``recon fit`` optimises: the default step count for a number of photos, the
``--time-budget`` that shortens it to fit, and the views whose fit stays far behind.

**Default step count** (``--iterations`` not given): every view needs a share of the
steps (one view per step), so the count grows with the photos::

    iterations = max(250, 250 / 3 x views, rounded up to 50)

so every view gets the share 3 photos always got (83 steps): 250 for 2-3 photos (their runs
take the time they did), 950 for 11, 1000 for 12 (InstantSplat's count). Measured on 11
DTU scan 24 photos (see :data:`STEPS_PER_VIEW`).

**Time budget** (:class:`TimeBudget`): after a few steps the per-step time is measured
(coarse and full-resolution steps apart: the first ``coarse_fraction`` of the schedule
renders at half size) and the schedule is shortened so that the remaining steps, the final
evaluation and the writing end within the budget. It is checked again every 10 % of the
schedule (splats grow, so steps slow down) and after the first full-resolution steps; it only
ever shortens. The trainer's schedules all derive from ``TrainConfig.iterations`` (learning
rate decay, SH degree steps, densification window, coarse phase), so changing it re-derives
them together; the checkpoint records the count (the trainer's state) and the decisions.

**Low-PSNR views** (:func:`low_psnr_views`): a view whose final training PSNR stays far
below the median of the views is flagged by name: usually a wrong camera pose or a photo
that does not fit the others.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: Steps of the smallest schedule (2-3 photos; the schedule before the count scaled).
MIN_ITERATIONS = 250
#: Steps per photo: 3 photos' share of the 250 steps. Measured on 11 photos (1 thread):
#: CO3D apple (288x512) 28.9 dB training PSNR after 1000 steps (worst view 21.4 dB, flagged),
#: 216 s of CPU for the whole run; DTU scan 24 (views 20-30, 384x384) 17.2 dB after 250
#: steps (23 a view, the old default; worst view 13.7 dB), 20.3 dB after 1000 (worst 15.7)
#: with 235 s of training at a load of ~4: more steps a view would not fit 5 minutes.
STEPS_PER_VIEW = MIN_ITERATIONS / 3
#: A view is flagged when its PSNR is this far below the median of the views ...
LOW_PSNR_GAP_DB = 5.0
#: ... or below this floor while also LOW_PSNR_NEAR_GAP_DB below the median.
LOW_PSNR_FLOOR_DB = 15.0
LOW_PSNR_NEAR_GAP_DB = 3.0


def default_iterations(num_views: int) -> int:
    """The step count of the default schedule for ``num_views`` photos."""
    steps = STEPS_PER_VIEW * max(1, num_views)
    return max(MIN_ITERATIONS, 50 * math.ceil(round(steps, 6) / 50))


def schedule_rule() -> str:
    """The default rule in words (for the log and metrics.json)."""
    return f"max({MIN_ITERATIONS}, {MIN_ITERATIONS}/3 x photos, rounded up to 50)"


def low_psnr_views(names: list[str], psnrs: list[float]) -> list[dict]:
    """The views whose training PSNR stays far below the others':
    ``[{"name", "psnr", "median_psnr"}]`` in view order.

    A view is flagged when it is more than :data:`LOW_PSNR_GAP_DB` below the median of the
    views, or below :data:`LOW_PSNR_FLOOR_DB` and more than :data:`LOW_PSNR_NEAR_GAP_DB`
    below the median (the median is not moved by one bad view; a scene that is hard for
    every view flags none).
    """
    finite = [p for p in psnrs if math.isfinite(p)]
    if len(finite) < 2:
        return []
    median = float(statistics.median(finite))
    flagged = []
    for name, value in zip(names, psnrs, strict=True):
        low = not math.isfinite(value) or value < median - LOW_PSNR_GAP_DB or (
            value < LOW_PSNR_FLOOR_DB and value < median - LOW_PSNR_NEAR_GAP_DB)
        if low:
            flagged.append({"name": name, "psnr": float(value), "median_psnr": median})
    return flagged


def low_psnr_message(flagged: list[dict]) -> str:
    """One warning line naming the flagged views and what to do."""
    median = flagged[0]["median_psnr"]
    views = ", ".join(f"{v['name']} {v['psnr']:.1f} dB" for v in flagged)
    it_they = "it" if len(flagged) == 1 else "them"
    return (f"{len(flagged)} view(s) fit far worse than the others (training PSNR, median "
            f"{median:.1f} dB): {views}; usually a wrong camera pose or a photo that does not "
            f"match the others (blur, moving objects, another scene): check {it_they}, then "
            "remove the photo from the folder or correct its pose (e.g. refine the poses or "
            "give known cameras with --poses) and rerun.")


@dataclass
class Decision:
    """One look at the budget: at ``iteration``, the schedule went to ``iterations``."""

    iteration: int
    iterations: int
    spent_s: float
    """Seconds of the run spent so far (all runs of it, when resumed)."""
    step_s: float
    """Estimated seconds of one step from here (full resolution)."""
    coarse_step_s: float | None
    """... of one coarse step (None: no coarse step left or measured)."""

    def as_dict(self) -> dict:
        return {"iteration": self.iteration, "iterations": self.iterations,
                "spent_s": round(self.spent_s, 3), "step_s": round(self.step_s, 4),
                "coarse_step_s": None if self.coarse_step_s is None
                else round(self.coarse_step_s, 4)}


@dataclass
class TimeBudget:
    """Shortens the schedule of a trainer so that the whole run ends within ``seconds``.

    Call :meth:`after_step` after every optimisation step; it returns a :class:`Decision`
    when it looked at the budget (and then ``trainer.config.iterations`` may be smaller).

    Args:
        seconds: the budget of the whole run (loading, initialisation, training,
            evaluation, writing).
        spent_before: seconds already spent (at the start of training: loading and
            initialisation, plus the time of the earlier run when resuming).
        clock: seconds (monotonic); a fake one makes tests deterministic.
    """

    seconds: float
    spent_before: float = 0.0
    clock: Callable[[], float] = time.perf_counter
    warmup: int = 2
    """Steps whose time is not measured (first calls: allocations, caches)."""
    measure: int = 8
    """Steps measured before the first decision."""
    recheck: float = 0.1
    """Decide again every this share of the schedule ..."""
    fine_recheck: int = 5
    """... and this many full-resolution steps after the first one."""
    window: int = 20
    """Step times (of each resolution) the estimate takes the median of."""
    fine_per_coarse: float = 2.0
    """Full-resolution step time over coarse step time, used until full-resolution steps
    are measured (measured 1.7 on 384x384 DTU photos, 2.4 on 288x512 CO3D ones: the look
    after the first full-resolution steps corrects it)."""
    margin: float = 0.05
    """Share of the budget kept free (the machine's speed varies)."""
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._t_start = self.clock()
        self._last = None
        self._steps = 0
        self._times: dict[bool, list[float]] = {True: [], False: []}
        self._next_check: int | None = None
        self._fine_check: int | None = None
        self._fine_guessed = False  # the last decision guessed the full-resolution step

    def spent(self) -> float:
        """Seconds of the run so far."""
        return self.spent_before + self.clock() - self._t_start

    def start(self) -> None:
        """Training (re)starts now: the next step's time is measured from here."""
        self._last = self.clock()

    def after_step(self, trainer, coarse: bool) -> Decision | None:
        """Record the step that just ended (``coarse``: rendered at the coarse scale) and
        shorten the schedule when it is due."""
        now = self.clock()
        if self._last is not None and self._steps >= self.warmup:
            self._times[coarse].append(now - self._last)
            del self._times[coarse][:-self.window]
        self._last = now
        self._steps += 1
        it = trainer.iteration
        due = False
        if self._next_check is None:
            due = self._steps >= self.warmup + self.measure
        elif it >= self._next_check:
            due = True
        if not coarse and self._fine_guessed and self._fine_check is None:
            self._fine_check = self._steps + self.fine_recheck
        if self._fine_check is not None and self._steps == self._fine_check:
            due = True
        if not due or it >= trainer.config.iterations:
            return None
        decision = self.decide(trainer)
        self._last = self.clock()  # the decision's own time is not a step's
        return decision

    def _estimates(self) -> tuple[float, float | None]:
        """``(full-resolution, coarse)`` seconds per step."""
        fine = statistics.median(self._times[False]) if self._times[False] else None
        coarse = statistics.median(self._times[True]) if self._times[True] else None
        if fine is None:
            fine = (coarse or 0.0) * self.fine_per_coarse
        return fine, coarse

    def predicted(self, trainer, iterations: int, fine: float, coarse: float | None) -> float:
        """Seconds from now to the end of a run of ``iterations`` steps (its remaining
        steps, the final evaluation of every view and the writing)."""
        c = trainer.config
        it = trainer.iteration
        # steps it < coarse_fraction * iterations are coarse (full size for small photos:
        # then no coarse step is measured and they cost a full-resolution step)
        n_coarse = max(0, min(iterations, math.ceil(c.coarse_fraction * iterations)) - it)
        n_fine = max(0, iterations - it - n_coarse)
        evaluate = trainer.data.num_views * fine  # a render per view (a step's worth, safe)
        return n_coarse * (fine if coarse is None else coarse) + n_fine * fine + evaluate + 1.0

    def decide(self, trainer) -> Decision:
        """Shorten ``trainer.config.iterations`` to what the rest of the budget allows (never
        lengthen it, never below the steps done)."""
        fine, coarse = self._estimates()
        self._fine_guessed = not self._times[False]
        current, it = trainer.config.iterations, trainer.iteration
        left = self.seconds * (1.0 - self.margin) - self.spent()
        chosen = current
        if self.predicted(trainer, current, fine, coarse) > left:
            low, high = it, current  # predicted() grows with the count: bisect
            while low < high:
                mid = (low + high + 1) // 2
                if self.predicted(trainer, mid, fine, coarse) <= left:
                    low = mid
                else:
                    high = mid - 1
            chosen = max(it, low)
        trainer.set_iterations(chosen)
        self._next_check = it + max(1, math.ceil(self.recheck * chosen))
        decision = Decision(iteration=it, iterations=chosen, spent_s=self.spent(),
                            step_s=fine, coarse_step_s=coarse)
        self.decisions.append(decision)
        return decision
