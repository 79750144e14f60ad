"""``pose aden eval``: the RelPose++ protocol on held-out sequences.

For each view count ``V`` and each sequence, the first ``V`` views of a seeded random
order are estimated and scored by the shared :func:`geometry.pose_metrics.relpose_metrics`
(RRA@5/15/30: share of view pairs whose relative rotation is within the threshold; CC@10:
share of camera centres within 10 % of the scene scale after a similarity alignment),
averaged over the sets (:func:`geometry.pose_metrics.average_relpose_metrics`, each set
weighs the same, as RelPose++). Per category and for the symmetric / asymmetric groups too,
when the sequences carry categories.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from geometry.device import module_device
from geometry.pose_metrics import average_relpose_metrics, relpose_metrics
from pose.camera.aden.data import PoseSequence, poses_from_relative
from pose.camera.aden.model import AdenNet

__all__ = ["evaluate", "metrics_table", "run_eval"]

METRICS = ("rra5", "rra15", "rra30", "cc10")


def _summary(per_set: list[dict[str, float]], pairs: int) -> dict[str, float]:
    return {**average_relpose_metrics(per_set), "pairs": pairs}


def evaluate(model: AdenNet, sequences: list[PoseSequence], view_counts: tuple[int, ...],
             seed: int = 0, batch: int = 16, sets_per_sequence: int = 1,
             select: str = "argmax", mirror_views: bool = False) -> dict:
    """Metrics of ``model`` per view count (and per category / symmetry group).

    Each sequence gives ``sets_per_sequence`` view sets (random orders of its frames; per
    view count, the first ``V`` of each order).

    The images go to the model's device; the metrics are computed on the CPU.

    Returns ``{"views": {"V": {rra5, rra15, rra30, cc10, pairs}}, "groups": {"V": {group:
    {...}}}, "seconds_per_set": {"V": s}}``.
    """
    model.eval()
    device = module_device(model)  # a stand-in without weights (tests) gets CPU images
    out: dict = {"views": {}, "groups": {}, "seconds_per_set": {}}
    rng = np.random.default_rng(seed)
    orders = [(s, rng.permutation(len(s.images))) for s in sequences
              for _ in range(sets_per_sequence)]
    for V in view_counts:
        usable = [(s, o[:V]) for s, o in orders if len(s.images) >= V]
        per_set: list[dict[str, float]] = []
        groups: dict[str, list[dict[str, float]]] = defaultdict(list)
        seconds = 0.0
        for k in range(0, len(usable), batch):
            chunk = usable[k:k + batch]
            images = torch.stack([s.images[torch.as_tensor(o)] for s, o in chunk]).float() / 255
            start = time.perf_counter()
            R, t, _ = model.predict(images.to(device), seed=seed, select=select,
                                    mirror_views=mirror_views)
            R, t = R.cpu(), t.cpu()  # waits for the device: the timing is the whole predict
            seconds += time.perf_counter() - start
            for b, (seq, order) in enumerate(chunk):
                T_est = poses_from_relative(R[b], t[b])
                T_gt = seq.T_world_cam[torch.as_tensor(order)].double()
                m = relpose_metrics(T_est, T_gt)
                per_set.append(m)
                for name in (f"category:{seq.category}", f"symmetry:{seq.symmetry}"):
                    groups[name].append(m)
        key = str(V)
        pairs = V * (V - 1) // 2
        out["views"][key] = _summary(per_set, pairs * len(per_set))
        out["groups"][key] = {g: _summary(v, pairs * len(v)) for g, v in sorted(groups.items())}
        out["seconds_per_set"][key] = seconds / max(1, len(usable))
    return out


def metrics_table(metrics: dict, title: str = "ADen"):
    """A rich table: one row per view count, RRA@5/15/30 and CC@10 in percent."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("views", "RRA@5", "RRA@15", "RRA@30", "CC@10", "pairs", "s/set"):
        table.add_column(col, justify="right")
    for V, m in metrics["views"].items():
        table.add_row(V, *(f"{100 * m[k]:.1f}" for k in METRICS), str(m["pairs"]),
                      f"{metrics.get('seconds_per_set', {}).get(V, float('nan')):.3f}")
    return table


def run_eval(checkpoint: Path, synthetic: bool, co3d: Path | None, out: Path, seed: int,
             sequences_count: int, frames: int, view_counts: tuple[int, ...],
             supersample: int = 1, cache: str | None = None, workers: int = 0,
             background: bool = True, sets_per_sequence: int = 1,
             quiet: bool = False, device: str = "cpu", select: str = "argmax",
             mirror_views: bool = False) -> dict:
    """Evaluate a checkpoint on ``device`` (``cpu``, ``cuda``, ``cuda:N``); write
    ``out/metrics.json`` and print the table. ``select``, ``mirror_views``: how ADen picks
    its pose (:meth:`~pose.camera.aden.model.AdenNet.predict`)."""
    from rich.console import Console

    from geometry.device import check_device
    from geometry.errors import UserError
    from geometry.io.atomic import atomic_write_text, check_output_folder
    from pose.camera.aden.data import co3d_sequences, synthetic_sequences
    from pose.camera.aden.train import load_model

    if synthetic == (co3d is not None):
        raise UserError("give exactly one of --synthetic and --co3d DIR.")
    if not view_counts or min(view_counts) < 2:
        raise UserError("--view-counts needs view counts of at least 2.")
    check_output_folder(out)
    check_device(device)
    model = load_model(checkpoint, device)
    size = model.config.image_size
    if synthetic:
        sequences = synthetic_sequences(sequences_count, max(frames, max(view_counts)), size,
                                        seed, None, supersample, cache, workers, background,
                                        quiet=quiet)
    else:
        sequences = co3d_sequences(co3d, size)
    if sets_per_sequence < 1:
        raise UserError(f"--sets-per-sequence {sets_per_sequence} must be at least 1.")
    metrics = evaluate(model, sequences, tuple(view_counts), seed=seed,
                       sets_per_sequence=sets_per_sequence, select=select,
                       mirror_views=mirror_views)
    metrics["model"] = model.config.mode
    metrics["select"] = select
    metrics["mirror_views"] = mirror_views
    metrics["checkpoint"] = str(checkpoint)
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    Console().print(metrics_table(metrics, f"ADen ({model.config.mode}) on "
                                  f"{'synthetic seed ' + str(seed) if synthetic else co3d}"))
    return metrics
