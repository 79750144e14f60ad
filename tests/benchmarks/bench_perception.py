"""The perception chain end to end, timed: ``perception synth`` with its defaults, then
``perception detect`` (oracle and noisy oracle) and ``perception eval`` on ``mini_val``.

Prints the synth wall time (and CPU time of this process and its workers), the dataset
size, and mAP/NDS/TP errors of both detectors through the official devkit.

    .venv/bin/python tests/benchmarks/bench_perception.py [--out DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from perception.cli import main


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(out: Path, workers: int) -> None:
    data = out / "nuscenes"
    start, cpu = time.perf_counter(), cpu_seconds()
    main(["synth", "--out", str(data), "--workers", str(workers), "--overwrite"])
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 2**20
    print(f"\nsynth (defaults, {workers} workers): {wall:.1f} s wall, {cpu:.1f} s CPU, "
          f"{size:.0f} MiB")
    for detector in ("oracle", "noisy-oracle"):
        results = out / f"{detector}.json"
        main(["detect", "--dataroot", str(data), "--split", "mini_val", "--detector", detector,
              "--out", str(results)])
        start = time.perf_counter()
        main(["eval", "--dataroot", str(data), "--split", "mini_val", "--results", str(results),
              "--out", str(out / f"{detector}-metrics"), "--no-plots"])
        metrics = json.loads((out / f"{detector}-metrics" / "metrics.json").read_text())
        errors = ", ".join(f"{k} {v:.3f}" for k, v in metrics["tp_errors"].items())
        print(f"{detector}: mAP {metrics['mean_ap']:.4f}  NDS {metrics['nd_score']:.4f}  "
              f"({errors}); eval {time.perf_counter() - start:.1f} s\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="keep the outputs here")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.out is None:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), args.workers)
    else:
        run(args.out, args.workers)
