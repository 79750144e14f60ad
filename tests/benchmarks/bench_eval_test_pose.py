"""Benchmark of ``recon eval``'s test-pose stage: the per-view path against the batched one.

The same fitted scene (InstantSplat on the training views, fitted once) and the same aligned
test poses go through each variant of the test-pose optimisation:

- ``per-view``: one view at a time, pose_opt's plain schedule (50 steps, half of them at
  half size): ``recon eval --test-pose-batch 1 --test-pose-options.patience 0``, the path
  before batching;
- ``batched``: ``--test-pose-batch`` views per render call, the same schedule;
- ``eval-default``: what ``recon eval`` does now (batched, early stopping);
- ``per-view-new``: eval's schedule, one view at a time.

Each row: wall-clock and CPU seconds of the stage (CPU time, summed over threads, is the
steadier figure on a shared machine), steps rendered per view, mean full-resolution loss, mean
test PSNR of the renders at the chosen poses, and the distance of each view's pose to the
per-view path's (rotation in degrees, centre in the ground truth's units): mean and max.

    .venv/bin/python tests/benchmarks/bench_eval_test_pose.py
    .venv/bin/python tests/benchmarks/bench_eval_test_pose.py --only dtu-scan24 \\
        --fit-cache /tmp/bench_test_pose_fits --threads 2

``--fit-cache`` keeps the fitted scenes between runs (the fit is not what is measured).
DTU scan24 (../shared/datasets/dtu_scan24; 3 training views 25, 22, 28, the 25 standard test
views) runs where present. Not collected by pytest; nothing here asserts.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO / ".." / "shared" / "datasets"
VARIANTS = ("per-view", "batched", "eval-default", "per-view-new")


@dataclass
class Bench:
    """Time recon eval's test-pose stage per view and batched, on the same fitted scene."""

    out: Path | None = None
    """Folder for the generated scene and the fits (default: a temporary folder)."""
    fit_cache: Path | None = None
    """Keep the fitted scenes here and reuse them on the next run."""
    only: tuple[str, ...] = ()
    """Run only these scenes (generated-orbit, dtu-scan24)."""
    variants: tuple[str, ...] = VARIANTS
    """Variants to run (the first is the reference of the pose distances)."""
    batch: int = 8
    """--test-pose-batch of the batched variants."""
    threads: int = 1
    """CPU threads (torch.set_num_threads)."""
    max_test_views: int | None = None
    """Use only the first N test views (a quick look)."""


def _scenes(work: Path) -> list[tuple[str, Path, dict]]:
    from reconstruction.procedural import SceneConfig, generate

    scenes = []
    folder = work / "generated-orbit"
    if not (folder / "transforms.json").exists():
        generate(SceneConfig(num_views=14, width=200, height=150, supersample=2, arc_deg=70.0,
                             seed=3), folder)
    scenes.append(("generated-orbit", folder,
                   {"views": "6,7,8", "test_views": "3,4,5,9,10,11", "iterations": 300}))
    dtu = DATASETS / "dtu_scan24"
    if (dtu / "cameras.npz").exists():
        scenes.append(("dtu-scan24", dtu, {}))
    else:
        print(f"dtu-scan24: skipped ({dtu} is absent)")
    return scenes


def _variant(name: str, batch: int):
    from reconstruction.eval.config import eval_test_pose_options
    from reconstruction.pose_opt import PoseOptConfig

    return {"per-view": (1, PoseOptConfig()), "batched": (batch, PoseOptConfig()),
            "eval-default": (batch, eval_test_pose_options()),
            "per-view-new": (1, eval_test_pose_options())}[name]


def _prepare(name: str, dataset: Path, options: dict, work: Path, cache: Path | None,
             threads: int):
    """The evaluation state, the fitted model and the aligned frame of one scene."""
    from reconstruction.eval import protocol as P
    from reconstruction.eval.cli import Eval
    from reconstruction.methods import get_method

    config = Eval(dataset=dataset, out=work / f"{name}-eval", quiet=True, threads=threads,
                  **options)
    ev = P._load(config)
    fit_dir = (cache or work) / name
    if not (fit_dir / "method" / "fit" / "splats.ply").exists():
        t0 = time.perf_counter()
        fit_dir.mkdir(parents=True, exist_ok=True)
        P._fit_method(ev, fit_dir)
        print(f"{name}: fitted in {time.perf_counter() - t0:.0f} s -> {fit_dir}")
    model = get_method(config.method).load(fit_dir / "method" / "fit", config.device)
    frame = P._align(ev, model)
    return ev, model, frame


def _psnr(ev, model, frame, T_world_cam) -> list[float]:
    import torch

    from reconstruction.eval import metrics as M
    from reconstruction.eval import protocol as P

    values = []
    for k, index in enumerate(ev.split.test):
        with torch.no_grad():
            image = model.render(P._test_camera(ev, frame, k, T_world_cam[k]), ("rgb",)).rgb[0]
        values.append(M.psnr(image.cpu().clamp(0, 1), ev.dataset.load_image(index)))
    return values


def _distances(frame, T_a, T_b) -> tuple[list[float], list[float]]:
    from geometry.pose_metrics import rotation_angle_deg

    rot = [float(rotation_angle_deg(T_a[k, :3, :3], T_b[k, :3, :3])) for k in range(len(T_a))]
    centre = [float((T_a[k, :3, 3] - T_b[k, :3, 3]).norm()) * frame.to_gt
              for k in range(len(T_a))]
    return rot, centre


def main(bench: Bench) -> None:
    import torch

    from reconstruction.eval import protocol as P

    torch.set_num_threads(bench.threads)
    work = bench.out or Path(tempfile.mkdtemp(prefix="bench_test_pose_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for name, dataset, options in _scenes(work):
            if bench.only and name not in bench.only:
                continue
            ev, model, frame = _prepare(name, dataset, options, work, bench.fit_cache,
                                        bench.threads)
            if bench.max_test_views is not None:
                ev.split.test = ev.split.test[:bench.max_test_views]
                frame.T_world_cam_test = frame.T_world_cam_test[:bench.max_test_views]
                frame.K_test = frame.K_test[:bench.max_test_views]
            size = f"{int(ev.gt_test.width[0])}x{int(ev.gt_test.height[0])}"
            print(f"{name}: {len(ev.split.test)} test views at {size}, "
                  f"{model.info().get('num_gaussians')} Gaussians")
            reference = None
            for variant in bench.variants:
                batch, pose_options = _variant(variant, bench.batch)
                ev.config = dataclasses.replace(ev.config, test_pose_batch=batch,
                                                test_pose_options=pose_options)
                t0, c0 = time.perf_counter(), time.process_time()
                T_world_cam, info = P._optimise_test_poses(ev, model, frame, True)
                seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
                psnr = _psnr(ev, model, frame, T_world_cam)
                if reference is None:
                    reference = T_world_cam
                rot, centre = _distances(frame, T_world_cam, reference)
                row = (name, variant, batch, seconds, cpu,
                       sum(v["steps"] for v in info) / len(info),
                       sum(v["final_loss"] for v in info) / len(info),
                       sum(psnr) / len(psnr), sum(rot) / len(rot), max(rot),
                       sum(centre) / len(centre), max(centre))
                rows.append(row)
                print("  " + _format(row), flush=True)
    finally:
        if bench.out is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"threads {bench.threads}; pose distances to the first variant "
          f"({bench.variants[0]}); centre in the ground truth's units")
    print(f"{'scene':16} {'variant':13} {'batch':>5} {'seconds':>8} {'cpu s':>8} {'steps':>6} "
          f"{'loss':>8} {'PSNR':>7} {'rot mean':>9} {'rot max':>8} {'c mean':>8} "
          f"{'c max':>8}")
    for row in rows:
        print(_format(row))


def _format(row) -> str:
    name, variant, batch, seconds, cpu, steps, loss, psnr, rot, rot_max, c, c_max = row
    psnr_text = f"{psnr:7.3f}" if math.isfinite(psnr) else f"{'inf':>7}"
    return (f"{name:16} {variant:13} {batch:5d} {seconds:8.1f} {cpu:8.1f} {steps:6.1f} "
            f"{loss:8.5f} "
            f"{psnr_text} {rot:9.4f} {rot_max:8.4f} {c:8.4f} {c_max:8.4f}")


if __name__ == "__main__":
    main(tyro.cli(Bench))
