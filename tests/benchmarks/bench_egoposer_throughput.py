"""EgoPoser inference throughput on the CPU: windows per second at batch 1 (online).

One "window" is one call of the online predictor for the newest frame: ring-buffer
gather, the 57 input features of the 35 frames the SlowFast streams read, the network,
and the restored world pose (local rotations and pelvis position). Reported for the eager
network and for the TorchScript-traced one, plus the network alone and offline batched
prediction. The paper's target is 600 windows/s (on a GPU).

Besides wall-clock rates the table reports rates per CPU second of this process
(``time.process_time``): on a shared machine other jobs steal the cores, so the wall rate
understates what an idle machine does; the CPU rate is its upper bound.

    .venv/bin/python tests/benchmarks/bench_egoposer_throughput.py [--threads 1] \
        [--checkpoint CKPT_DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pose.body.egoposer.config import ModelConfig, SynthConfig
from pose.body.egoposer.features import NUM_FEATURES
from pose.body.egoposer.infer import StreamingPredictor, predict_sequence
from pose.body.egoposer.model import build_model
from pose.body.egoposer.synth import synthesize_sequence
from pose.body.egoposer.tracking import tracker_trajectories


def _rate(fn: Callable[[int], None], n: int, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` (wall rate, CPU rate) in calls per second for ``n`` calls."""
    fn(min(n, 20))  # warm-up
    best_wall, best_cpu = 0.0, 0.0
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(n)
        w1, c1 = time.perf_counter(), time.process_time()
        best_wall = max(best_wall, n / (w1 - w0))
        best_cpu = max(best_cpu, n / max(c1 - c0, 1e-9))
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; batch 1 gains nothing from intra-op threads, and "
                             "on a loaded 2-core machine 2 threads thrash (30x slower)")
    parser.add_argument("--frames", type=int, default=600, help="frames per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained checkpoint (default: the default architecture, "
                             "randomly initialised: the speed does not depend on weights)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=110)

    if args.checkpoint is not None:
        from pose.body.egoposer.train import load_checkpoint

        model, cfg, _, _ = load_checkpoint(args.checkpoint)
    else:
        cfg = ModelConfig()
        torch.manual_seed(0)
        model = build_model(cfg).eval()
    seq = synthesize_sequence(np.random.default_rng(0),
                              SynthConfig(seconds=args.frames / 30.0 + 0.1))
    g, j = seq.fk()
    rot, pos = tracker_trajectories(g, j)
    vis = torch.ones(seq.num_frames, 2, dtype=torch.bool)
    n = min(args.frames, seq.num_frames)
    params = sum(p.numel() for p in model.parameters())
    load0 = os.getloadavg()[0]

    rows = []
    for trace in (False, True):
        stream = StreamingPredictor(model, cfg, trace=trace)

        def run(k: int, stream: StreamingPredictor = stream) -> None:
            for t in range(k):
                stream.push(rot[t % n], pos[t % n], vis[t % n])

        rows.append((f"online, batch 1, full pipeline ({'traced' if trace else 'eager'})",
                     *_rate(run, n, args.repeats)))
    x = torch.randn(1, len(cfg.frame_offsets()), NUM_FEATURES)
    for trace in (False, True):
        net = StreamingPredictor(model, cfg, trace=trace).step
        if trace:
            import warnings

            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net = torch.jit.freeze(torch.jit.trace(model, x))
        else:
            net = model

        def run_net(k: int, net: Callable = net) -> None:
            with torch.inference_mode():
                for _ in range(k):
                    net(x)

        rows.append((f"network only, batch 1 ({'traced' if trace else 'eager'})",
                     *_rate(run_net, n, args.repeats)))

    def run_offline(k: int) -> None:
        predict_sequence(model, cfg, rot[:k], pos[:k], vis[:k], 1.0, chunk=512)

    rows.append(("offline, batched 512", *_rate(run_offline, n, args.repeats)))
    load1 = os.getloadavg()[0]

    table = Table(title=f"EgoPoser ({cfg.kind}, d_model {cfg.d_model}, {cfg.layers} layers, "
                        f"{params / 1e3:.0f}k parameters), torch threads {torch.get_num_threads()}")
    for col in ("measurement", "windows/s (wall)", "windows/s per CPU-s"):
        table.add_column(col, justify="left" if col == "measurement" else "right", no_wrap=True)
    for name, wall, cpu in rows:
        table.add_row(name, f"{wall:.0f}", f"{cpu:.0f}")
    console.print(table)
    console.print(f"target: 600 windows/s; machine: {os.cpu_count()} CPUs, load average "
                  f"{load0:.1f} before, {load1:.1f} after")


if __name__ == "__main__":
    main()
