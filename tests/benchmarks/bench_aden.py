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

The defaults are the recipe that learns from scratch on 2 CPU cores: 32 px views, a
3-stage ResNet (16/32/64), 4 x 4 feature-map tokens per view in the fusion transformer,
learned per-view frames (AdenConfig.view_frames), AdamW at 1e-3, 2-8 views per step, each
training sequence mirrored left-right half the time (--no-mirror: not). Metrics
are :func:`geometry.pose_metrics.relpose_metrics` averaged over the held-out sets (through
:func:`pose.camera.aden.evaluate.evaluate`); "ms/set" is the inference time per set in
batches of 16 sets, "ms / one 8-view set" one set alone.
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
from pose.camera.aden.model import SELECTIONS
from pose.camera.aden.train import build_model, make_batch_fn

MODES = ("aden", "regression", "grid")
VIEWS = (2, 5, 8)
GROUPS = {"symmetry:axis": "symmetric", "symmetry:near": "near-symmetric",
          "symmetry:none": "asymmetric"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="training time per model (minutes)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out objects")
    parser.add_argument("--train-sequences", type=int, default=2000,
                        help="training objects (600 starve the baselines)")
    parser.add_argument("--eval-sequences", type=int, default=90)
    parser.add_argument("--size", type=int, default=32, help="image side (pixels)")
    parser.add_argument("--render-size", type=int, default=None,
                        help="side of the rendered views (default: --size; resized to it)")
    parser.add_argument("--patch-tokens", type=int, default=4,
                        help="P x P feature-map tokens per view in the fusion transformer")
    parser.add_argument("--views", default="2-8", help="views per training sequence")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64],
                        help="ResNet stage widths (each halves the map after a /2 stem)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--grid-size", type=int, default=20000)
    parser.add_argument("--hypotheses", type=int, default=500)
    parser.add_argument("--queries", type=int, default=AdenConfig.queries,
                        help="ADen's learnable queries: hypotheses per view in training")
    parser.add_argument("--random-negatives", type=int, default=AdenConfig.random_negatives,
                        help="uniformly random rotations per pair among the discriminator's "
                             "candidates in training")
    parser.add_argument("--local-negatives", type=int, default=AdenConfig.local_negatives,
                        help="turns of the true rotation per pair among those candidates")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="rendering processes")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--no-background", action="store_true",
                        help="plain backdrop (no ground/sky that gives away the pose of "
                             "symmetric objects)")
    parser.add_argument("--no-view-frames", action="store_true",
                        help="pair features only (no learned per-view frames)")
    parser.add_argument("--no-generated-negatives", action="store_true",
                        help="ADen's discriminator without the generator's hypotheses as "
                             "negatives")
    parser.add_argument("--rank-temperature-deg", type=float, default=0.0,
                        help="> 0: ADen's discriminator learns to rank its candidates by "
                             "their distance to the truth (AdenConfig.rank_temperature_deg) "
                             "instead of the paper's contrastive loss")
    parser.add_argument("--select", choices=SELECTIONS, default="argmax",
                        help="how ADen picks its pose: the discriminator's argmax (the "
                             "paper's) or the chordal mean of its hypotheses")
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                        help="mirror each training sequence left-right with probability 1/2 "
                             "(AdenTrainConfig.mirror; --no-mirror: the recipe before)")
    parser.add_argument("--mirror-views", action="store_true",
                        help="at inference, also estimate from the mirrored views and average")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_aden_"))
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=150)

    start = time.perf_counter()
    bg = not args.no_background
    render = args.render_size or args.size
    train_seqs = synthetic_sequences(args.train_sequences, 8, args.size, 0, render,
                                     cache=out / f"train_data_bg{int(bg)}",
                                     workers=args.workers, background=bg, quiet=False)
    eval_seqs = synthetic_sequences(args.eval_sequences, 8, args.size, args.seed, render,
                                    cache=out / f"eval_data_{args.seed}_bg{int(bg)}",
                                    workers=args.workers, background=bg, quiet=False)
    console.print(f"data: {len(train_seqs)} training and {len(eval_seqs)} held-out sequences "
                  f"of 8 views at {args.size} px in {time.perf_counter() - start:.0f} s")

    results = {}
    for mode in args.modes:
        cfg = AdenConfig(mode=mode, image_size=args.size, widths=tuple(args.widths),
                         d_model=128, hidden=256, hypotheses=args.hypotheses,
                         grid_size=args.grid_size, view_frames=not args.no_view_frames,
                         patch_tokens=args.patch_tokens,
                         generated_negatives=not args.no_generated_negatives,
                         rank_temperature_deg=args.rank_temperature_deg,
                         queries=args.queries, random_negatives=args.random_negatives,
                         local_negatives=args.local_negatives)
        train = AdenTrainConfig(steps=10**7, batch=args.batch, views=args.views, lr=args.lr,
                                warmup_steps=50, mirror=args.mirror)
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
        metrics = evaluate(model, eval_seqs, VIEWS, seed=args.seed, select=args.select,
                           mirror_views=args.mirror_views)
        one = eval_seqs[0].images[None].float() / 255.0  # one 8-view set, alone
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            model.predict(one, seed=args.seed, select=args.select, mirror_views=args.mirror_views)
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
    cols = [f"{v} views" for v in VIEWS] + ["Acc@30 (5v)", "CC@10 (5v)"] + [
        f"ms/set {v}v" for v in VIEWS] + ["ms / one 8-view set", "steps"]
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for mode, m in results.items():
        table.add_row(mode, *(f"{100 * m['views'][str(v)]['rra15']:.1f}" for v in VIEWS),
                      f"{100 * m['views']['5']['rra30']:.1f}",
                      f"{100 * m['views']['5']['cc10']:.1f}",
                      *(f"{1000 * m['seconds_per_set'][str(v)]:.1f}" for v in VIEWS),
                      f"{1000 * m['seconds_one_set']:.0f}", str(m["steps"]))
    console.print(table)
    groups = Table(title="Acc@15 (%) per category group (symmetric: bottle/can/bowl/vase; "
                         "near-symmetric: mug/box; asymmetric: chair/car/toy)")
    groups.add_column("model")
    groups.add_column("group")
    for v in VIEWS:
        groups.add_column(f"{v} views", justify="right")
    groups.add_column("sets (5v)", justify="right")
    for mode, m in results.items():
        for group, label in GROUPS.items():
            cells = []
            for v in VIEWS:
                g = m["groups"][str(v)].get(group)
                cells.append("-" if g is None or not g["pairs"] else f"{100 * g['rra15']:.1f}")
            g5 = m["groups"]["5"].get(group)
            n = 0 if g5 is None else g5["pairs"] // 10
            groups.add_row(mode, label, *cells, str(n))
    console.print(groups)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
