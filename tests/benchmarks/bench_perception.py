"""The perception chain end to end, timed: ``perception synth`` with its defaults, then
``perception detect`` (oracle and noisy oracle) and ``perception eval`` on ``mini_val``.

Prints the synth wall time and the CPU time of its scene jobs (they run in worker
processes), the dataset size, and mAP/NDS/TP errors of both detectors through the
official devkit.

    .venv/bin/python tests/benchmarks/bench_perception.py [--out DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from perception.cli import main
from perception.synth import SynthSpec, write_dataset


def run(out: Path, workers: int) -> None:
    data = out / "nuscenes"
    shutil.rmtree(data, ignore_errors=True)
    start = time.perf_counter()
    summary = write_dataset(SynthSpec(), data, workers=workers)  # the CLI's defaults
    wall = time.perf_counter() - start
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 2**20
    print(f"synth (defaults: {summary.samples} samples, {summary.sweeps} sweeps, "
          f"{summary.images} images; {workers} workers): {wall:.1f} s wall, "
          f"{summary.cpu_seconds:.1f} s CPU in the scene jobs, {size:.0f} MiB\n")
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
