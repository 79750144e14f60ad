"""EgoPoser vs baselines on held-out synthesised motion, at 100% / 50% / 0% hand visibility.

Trains EgoPoser (SlowFast transformer) and the per-frame MLP baseline on synthesised motion
on the CPU, then evaluates them and the 'stand still under the head' baseline on held-out
sequences (a different seed: other subjects, other motions) under four hand-visibility
regimes: ``all`` (100%), ``half`` (~50%, random stretches), ``none`` (0%) and ``fov`` (the
head-attached frustum plus dropouts). Prints the table and writes ``results.json``.

    .venv/bin/python tests/benchmarks/bench_egoposer.py                    # 20 min + 5 min
    .venv/bin/python tests/benchmarks/bench_egoposer.py --max-minutes 5    # a shorter run
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from pose.body.egoposer.config import FovConfig, LossWeights, ModelConfig, SynthConfig, TrainConfig
from pose.body.egoposer.data import make_eval_sequences, prepare_sequences
from pose.body.egoposer.infer import evaluate, model_predictor, stand_still_baseline
from pose.body.egoposer.synth import synthesize_dataset
from pose.body.egoposer.train import save_model, train

MODES = (("all", "100%"), ("half", "50%"), ("none", "0%"), ("fov", "FoV"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-minutes", type=float, default=20.0,
                        help="EgoPoser training time (minutes)")
    parser.add_argument("--mlp-minutes", type=float, default=None,
                        help="MLP baseline training time (default: max-minutes / 4)")
    parser.add_argument("--train-sequences", type=int, default=300)
    parser.add_argument("--eval-sequences", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each sequence")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine 2 threads thrash)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--w-vel", type=float, default=LossWeights().w_vel,
                        help="weight of the velocity loss")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for checkpoints and results.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mlp_minutes = args.mlp_minutes if args.mlp_minutes is not None else args.max_minutes / 4
    console = Console(width=120)

    t0 = time.monotonic()
    synth = SynthConfig(seconds=args.seconds)
    fov = FovConfig()
    train_seqs = synthesize_dataset(args.train_sequences, seed=args.seed, cfg=synth)
    data = prepare_sequences(train_seqs, fov)
    eval_seqs = synthesize_dataset(args.eval_sequences, seed=args.seed + 1000, cfg=synth)
    console.print(f"data: {args.train_sequences} training sequences "
                  f"({data.num_frames / 30 / 60:.0f} min), {args.eval_sequences} held-out "
                  f"({time.monotonic() - t0:.0f} s); torch threads {torch.get_num_threads()}")

    models = {}
    info = {}
    for kind, minutes in (("egoposer", args.max_minutes), ("mlp", mlp_minutes)):
        cfg = ModelConfig(kind=kind)
        t = time.monotonic()
        train_cfg = TrainConfig(steps=10**9, max_minutes=minutes, seed=args.seed,
                                loss=LossWeights(w_vel=args.w_vel))
        model, result = train(data, cfg, train_cfg, fov)
        losses = [row["loss"] for row in result.history]  # means over 20 steps
        info[kind] = {"minutes": (time.monotonic() - t) / 60, "steps": result.step,
                      "final_loss": float(sum(losses[-3:]) / max(1, len(losses[-3:])))}
        console.print(f"{kind}: {result.step} steps in {info[kind]['minutes']:.1f} min, "
                      f"loss {losses[0]:.3f} -> {info[kind]['final_loss']:.3f}")
        models[kind] = (model, cfg)
        if args.out is not None:
            save_model(args.out / kind, model, cfg, fov, {"steps": result.step})

    predictors = {"EgoPoser": model_predictor(*models["egoposer"]),
                  "per-frame MLP": model_predictor(*models["mlp"]),
                  "stand still": stand_still_baseline}
    results: dict[str, dict[str, dict]] = {}
    for mode, _ in MODES:
        seqs = make_eval_sequences(eval_seqs, mode, fov, seed=args.seed + 1000)
        results[mode] = {name: evaluate(p, seqs) for name, p in predictors.items()}

    def fmt(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.2f}"

    table = Table(title=f"Held-out synthetic motion ({args.eval_sequences} sequences x "
                        f"{args.seconds:g} s), EgoPoser trained {info['egoposer']['minutes']:.1f}"
                        f" min on {torch.get_num_threads()} threads")
    for col in ("hands visible", "method", "MPJPE cm", "MPJRE deg", "MPJVE cm/s",
                "Jitter m/s^3", "H-PE cm", "MPJPE seen", "MPJPE unseen"):
        table.add_column(col, justify="left" if col in ("method", "hands visible") else "right",
                         no_wrap=True)
    for mode, label in MODES:
        for name, groups in results[mode].items():
            a = groups["all"]
            table.add_row(label, name, fmt(a["mpjpe_cm"]), fmt(a["mpjre_deg"]),
                          fmt(a["mpjve_cm_s"]), fmt(a["jitter_m_s3"]), fmt(a["hand_pe_cm"]),
                          fmt(groups["hands_visible"]["mpjpe_cm"]),
                          fmt(groups["hands_hidden"]["mpjpe_cm"]))
        table.add_section()
    console.print(table)
    gt_jitter = results["all"]["EgoPoser"]["all"]["gt_jitter_m_s3"]
    console.print(f"ground-truth jitter: {gt_jitter:.2f} m/s^3; fov-mode hands visible in "
                  f"{results['fov']['EgoPoser']['hands_visible']['frames']} of "
                  f"{results['fov']['EgoPoser']['all']['frames']} frames")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "training": info,
             "results": results}, indent=2))
        console.print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
