"""ADen vs its baselines on held-out procedural object sequences (an unseen seed).

Trains, each for the same wall-clock time on the CPU and with the same backbone, ADen
(generator + discriminator), the M = 1 regression baseline and rotation-grid scoring
(RelPose-style: the discriminator alone scores a fixed uniform grid), then evaluates them on
held-out objects: Acc@15 (relative rotation accuracy at 15 degrees over all view pairs) at
2 / 5 / 8 views, per symmetry group at 5 views, and inference time per 8-view set. Prints
the table and writes ``results.json`` (and the checkpoints) under --out (default: a
temporary folder).

    .venv/bin/python tests/benchmarks/bench_aden.py                  # 3 x 10 min training
    .venv/bin/python tests/benchmarks/bench_aden.py --minutes 2      # a quick look
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from geometry.training import TrainLoop, train_loop
from pose.camera.aden.config import AdenConfig, AdenTrainConfig
from pose.camera.aden.data import synthetic_sequences
from pose.camera.aden.evaluate import evaluate
from pose.camera.aden.train import build_model, make_batch_fn

MODES = ("aden", "regression", "grid")
VIEWS = (2, 5, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="training time per model (minutes)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out objects")
    parser.add_argument("--train-sequences", type=int, default=600)
    parser.add_argument("--eval-sequences", type=int, default=90)
    parser.add_argument("--size", type=int, default=48, help="image side (pixels)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--grid-size", type=int, default=20000)
    parser.add_argument("--hypotheses", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="rendering processes")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--no-background", action="store_true",
                        help="plain backdrop (no ground/sky that gives away the pose of "
                             "symmetric objects)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_aden_"))
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=150)

    start = time.perf_counter()
    bg = not args.no_background
    train_seqs = synthetic_sequences(args.train_sequences, 8, args.size, 0,
                                     cache=out / f"train_data_bg{int(bg)}",
                                     workers=args.workers, background=bg, quiet=False)
    eval_seqs = synthetic_sequences(args.eval_sequences, 8, args.size, args.seed,
                                    cache=out / f"eval_data_{args.seed}_bg{int(bg)}",
                                    workers=args.workers, background=bg, quiet=False)
    console.print(f"data: {len(train_seqs)} training and {len(eval_seqs)} held-out sequences "
                  f"of 8 views at {args.size} px in {time.perf_counter() - start:.0f} s")

    results = {}
    for mode in args.modes:
        cfg = AdenConfig(mode=mode, image_size=args.size, widths=(16, 32, 64, 128),
                         d_model=128, hidden=256, hypotheses=args.hypotheses,
                         grid_size=args.grid_size)
        train = AdenTrainConfig(steps=10**7, batch=args.batch, views="2-8", lr=args.lr,
                                warmup_steps=50)
        model = build_model(cfg, seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=train.lr,
                                weight_decay=train.weight_decay)
        loop = TrainLoop(out=out / f"ck_{mode}", kind="aden",
                         config={"model": cfg.to_dict(), "train": asdict(train)},
                         steps=train.steps, max_minutes=args.minutes,
                         warmup_steps=train.warmup_steps, grad_clip=train.grad_clip,
                         log_every=20, desc=f"ADen ({mode})")
        result = train_loop(model, opt, make_batch_fn(train_seqs, train), lambda m, b: m(b),
                            loop)
        metrics = evaluate(model, eval_seqs, VIEWS, seed=args.seed)
        one = eval_seqs[0].images[None].float() / 255.0  # one 8-view set, alone
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            model.predict(one, seed=args.seed)
            times.append(time.perf_counter() - t0)
        metrics["seconds_one_set"] = min(times)
        metrics["steps"] = result.step
        metrics["train_minutes"] = result.elapsed_s / 60
        results[mode] = metrics
        last = result.history[-1] if result.history else {}
        console.print(f"{mode}: {result.step} steps, last logged loss "
                      f"{last.get('loss', float('nan')):.3f}, Acc@15 at 5 views "
                      f"{100 * metrics['views']['5']['rra15']:.1f}%")

    table = Table(title=f"Acc@15 (%) on {len(eval_seqs)} held-out objects (seed {args.seed}), "
                        f"{args.minutes:g} min training each")
    cols = [f"{v} views" for v in VIEWS] + ["axis-sym. (5v)", "near-sym. (5v)",
                                             "asym. (5v)", "Acc@30 (5v)", "ms / 8-view set",
                                             "steps"]
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for mode, m in results.items():
        groups = m["groups"]["5"]

        def acc(group: str, groups=groups) -> str:
            g = groups.get(group)
            return "-" if g is None or not g["pairs"] else f"{100 * g['rra15']:.1f}"

        table.add_row(mode, *(f"{100 * m['views'][str(v)]['rra15']:.1f}" for v in VIEWS),
                      acc("symmetry:axis"), acc("symmetry:near"), acc("symmetry:none"),
                      f"{100 * m['views']['5']['rra30']:.1f}",
                      f"{1000 * m['seconds_one_set']:.0f}", str(m["steps"]))
    console.print(table)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
