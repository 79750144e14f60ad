"""SparseFusion ablation on the synthetic nuScenes-format dataset: LiDAR-only, camera-only
and fusion, each trained the same way (small preset), scored by the official devkit on
mini_val.

    python tests/benchmarks/bench_sparsefusion_ablation.py [--dataroot D] [--out DIR]
        [--pretrain-epochs 2] [--epochs 1] [--minutes 30] [--sequential] [--threads 1]

Protocol (SparseFusion's own): stage 1 trains the LiDAR-only and the camera-only models
(``--pretrain-epochs``); stage 2 trains each of the three detectors for ``--epochs`` from
the stage-1 weights of the branches it contains (LiDAR from LiDAR, camera from camera,
fusion from both), with the same schedule and time budget. Stage-1 checkpoints already in
OUT are reused.

Without --dataroot it first writes the dataset (``perception synth``: 10 scenes of 20
keyframes, seed 0) into OUT/synth. Prints the table (rows lidar, camera, fusion; columns
mAP, NDS, train minutes, the pretraining minutes of the branches used, steps) and ends
with ``fusion_gain_map=X fusion_gain_nds=Y`` (fusion minus the better single modality).
The table is also written to OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODALITIES = ("lidar", "camera", "fusion")


def ensure_dataset(out: Path, scenes: int, samples: int) -> Path:
    root = out / "synth"
    if (root / "v1.0-mini" / "sample.json").is_file():
        return root
    subprocess.run([sys.executable, "-m", "perception.cli", "synth", "--out", str(root),
                    "--scenes", str(scenes), "--samples-per-scene", str(samples),
                    "--overwrite"], check=True, cwd=ROOT)
    return root


def detect_and_evaluate(dataroot: Path, checkpoint: Path, val_samples, out: Path) -> dict:
    import torch

    from perception.evaluation import evaluate
    from perception.results import write_results
    from perception.sparsefusion.checkpoint import load_model
    from perception.sparsefusion.data import collate

    model = load_model(checkpoint)
    config = model.config
    results = {}
    with torch.no_grad():
        for sample in val_samples:
            boxes = model.predict(model(collate([sample], config)))[0]
            results[sample.token] = boxes.to_results(sample.token, sample.T_global_lidar)
    from perception.results import ResultsMeta

    results_path = out / f"results_{config.modality}.json"
    write_results(results_path, results, ResultsMeta(use_lidar=config.use_lidar,
                                                     use_camera=config.use_camera))
    os.environ.setdefault("MPLBACKEND", "Agg")
    summary = evaluate(dataroot, "v1.0-mini", "mini_val", results_path,
                       out / f"eval_{config.modality}", plots=False)
    return {"mAP": summary["mean_ap"], "NDS": summary["nd_score"],
            "per_class_ap": summary["mean_dist_aps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataroot", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / ".." / "sparsefusion_ablation")
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="time budget of each training (minutes)")
    parser.add_argument("--pretrain-epochs", type=int, default=2,
                        help="epochs of the LiDAR-only and camera-only pretraining (stage 1)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs of each detector's training from the pretrained branches")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--sequential", action="store_true",
                        help="train one after the other (default: all three at once)")
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--samples-per-scene", type=int, default=20)
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES))
    parser.add_argument("--eval-only", action="store_true",
                        help="score the checkpoints already in OUT (train minutes from their "
                             "config.json: the training loop's own time)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="prepared-sample cache (default OUT/cache)")
    args = parser.parse_args()

    from perception.sparsefusion.config import small_preset
    from perception.sparsefusion.train import load_samples

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    dataroot = args.dataroot or ensure_dataset(out, args.scenes, args.samples_per_scene)
    cache = (args.cache_dir or out / "cache").resolve()
    config = small_preset()
    t0 = time.monotonic()
    load_samples(dataroot, "v1.0-mini", "mini_train", config, cache)
    val = load_samples(dataroot, "v1.0-mini", "mini_val", config, cache)
    print(f"prepared samples in {time.monotonic() - t0:.0f} s", flush=True)

    def command(modality: str, folder: Path, epochs: int, init: list[Path]) -> list[str]:
        cmd = [sys.executable, "-m", "perception.sparsefusion.cli", "train",
               "--dataroot", str(dataroot), "--out", str(folder), "--modality", modality,
               "--epochs", str(epochs), "--max-minutes", str(args.minutes),
               "--threads", str(args.threads), "--lr", str(args.lr), "--cache-dir", str(cache)]
        if init:
            cmd += ["--init-from", *(str(path) for path in init)]
        return cmd

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))

    def run_all(jobs: dict[str, list[str]], tag: str) -> dict[str, float]:
        """Run trainings (at once, or one by one); returns their wall minutes."""
        minutes: dict[str, float] = {}
        if args.sequential:
            for name, cmd in jobs.items():
                start = time.monotonic()
                subprocess.run(cmd, check=True, cwd=ROOT, env=env)
                minutes[name] = (time.monotonic() - start) / 60.0
            return minutes
        running = {}
        for name, cmd in jobs.items():
            log = open(out / f"{tag}_{name}.log", "w")  # noqa: SIM115
            running[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                              stderr=subprocess.STDOUT), time.monotonic(), log)
        for name, (proc, start, log) in running.items():
            code = proc.wait()
            log.close()
            minutes[name] = (time.monotonic() - start) / 60.0
            if code != 0:
                raise SystemExit(f"training {name} failed; see {out}/{tag}_{name}.log")
        return minutes

    # Stage 1, as SparseFusion is trained: the single-modality branches first.
    pre = {m: out / f"pretrain_{m}" for m in ("lidar", "camera")}
    todo = {m: command(m, folder, args.pretrain_epochs, [])
            for m, folder in pre.items() if not (folder / "config.json").is_file()}
    if todo and not args.eval_only:
        run_all(todo, "pretrain")
    pre_minutes = {m: float(json.loads((folder / "config.json").read_text())["minutes"])
                   for m, folder in pre.items()}
    # Stage 2: the three detectors, each from the pretrained branches it contains, with the
    # same schedule.
    inits = {"lidar": [pre["lidar"]], "camera": [pre["camera"]],
             "fusion": [pre["camera"], pre["lidar"]]}
    minutes: dict[str, float] = {}
    if args.eval_only:
        for modality in args.modalities:
            saved = json.loads((out / modality / "config.json").read_text())
            minutes[modality] = float(saved["minutes"])
    else:
        minutes = run_all({m: command(m, out / m, args.epochs, inits[m])
                           for m in args.modalities}, "train")
        (out / "minutes.json").write_text(json.dumps(minutes, indent=2))

    rows = {}
    for modality in args.modalities:
        rows[modality] = detect_and_evaluate(dataroot, out / modality, val, out)
        rows[modality]["minutes"] = minutes[modality]
        rows[modality]["pretrain_minutes"] = sum(pre_minutes[m] for m in ("lidar", "camera")
                                                 if pre[m] in inits[modality])
        steps = json.loads((out / modality / "config.json").read_text())
        rows[modality]["steps"] = steps.get("step", 0)
    lines = ["| model | mAP | NDS | train minutes | pretraining minutes (branches) | steps |",
             "|---|---|---|---|---|---|"]
    for modality, row in rows.items():
        lines.append(f"| {modality} | {row['mAP']:.4f} | {row['NDS']:.4f} | "
                     f"{row['minutes']:.1f} | {row['pretrain_minutes']:.1f} | {row['steps']} |")
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    if all(m in rows for m in MODALITIES):
        gain_map = rows["fusion"]["mAP"] - max(rows["lidar"]["mAP"], rows["camera"]["mAP"])
        gain_nds = rows["fusion"]["NDS"] - max(rows["lidar"]["NDS"], rows["camera"]["NDS"])
        print(f"fusion_gain_map={gain_map:.4f} fusion_gain_nds={gain_nds:.4f}")


if __name__ == "__main__":
    main()
