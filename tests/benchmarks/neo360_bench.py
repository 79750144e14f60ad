"""NeO 360 benchmark: held-out novel-view PSNR with 3 source views on generated outdoor scenes.

    python tests/benchmarks/neo360_bench.py [--seed S] [--minutes M] [--steps N] [--threads T]
        [--scenes N] [--finetune-steps N] [--finetune-lr LR] [--augment] [--models ...]

Trains, each for a third of ``--minutes`` (default 45, on the CPU), NeO 360 (triplane +
pixel-aligned features), the pixel-aligned-features-only baseline (pixelNeRF-like, same
time) and the triplane-only ablation on ``--scenes`` generated outdoor scenes (default
192, ~2.5 min to make); scores them on 5 held-out scenes (3 spread source views, 2 other
views each), and NeO 360 again after fine-tuning on each scene's source views. Writes
only to a temp dir (or --out). Its last line is
``neo360_psnr=X pixel_baseline_psnr=Y triplane_only_psnr=Z finetuned_psnr=W``
(``--models`` trains only some of the three; the others print nan).
Under each model's line: where its error lies, by what the target pixels see (sky, a
surface inside the unit sphere: foreground, or beyond it: background), with each region's
share of the pixels and of the squared error, and its PSNR.

On a shared, loaded machine a time budget gives each model the CPU share it happens to
get; ``--steps N`` instead trains every model for ``N`` optimiser steps (the learning-rate
schedule then runs over the steps), a budget that load does not change. The line of each
model gives its steps and seconds.

Then the speed of the native sparse-voxel kernels against their PyTorch references on
``bench_sparse_voxel.py``'s default inputs: ray marching and voxel scatter (when
``geometry.ops.sparse_voxel`` imports; else said to be skipped).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from reconstruction.neo360.cli import HELD_OUT_SEED  # noqa: E402
from reconstruction.neo360.config import NeO360Config  # noqa: E402
from reconstruction.neo360.data import SyntheticScenes, generate_scenes  # noqa: E402
from reconstruction.neo360.train import (  # noqa: E402
    FinetuneOptions,
    TrainOptions,
    evaluate,
    evaluation_views,
    finetune,
    format_regions,
    train,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=45.0,
                        help="training time of the three models together")
    parser.add_argument("--steps", type=int, default=None,
                        help="train each model for this many steps instead of a time budget")
    parser.add_argument("--scenes", type=int, default=192,
                        help="training scenes (fewer overfit: 24 put NeO 360 0.26 dB behind)")
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=5)
    parser.add_argument("--finetune-steps", type=int, default=50)
    parser.add_argument("--finetune-lr", type=float, default=FinetuneOptions.lr)
    parser.add_argument("--rays", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--augment", action="store_true",
                        help="train every model on scenes in random field frames (a yaw "
                             "and a left-right mirror; TrainOptions.augment)")
    parser.add_argument("--models", nargs="+", default=None,
                        choices=("neo360", "pixel_baseline", "triplane_only"),
                        help="train and score only these models (default: all three)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    data = SyntheticScenes(args.scenes, args.views, args.size, args.seed * 1000)
    scenes = generate_scenes(data)
    held = generate_scenes(replace(data, num_scenes=args.held_out,
                                   seed=HELD_OUT_SEED + 100 * args.seed))
    print(f"generated {len(scenes)} training and {len(held)} held-out scenes "
          f"({args.size} px, {args.views} views) in {time.monotonic() - t0:.0f} s")
    out = args.out or Path(tempfile.mkdtemp(prefix="neo360_bench_"))
    base = NeO360Config()
    variants = {"neo360": base, "pixel_baseline": replace(base, use_triplane=False),
                "triplane_only": replace(base, use_pixel=False)}
    if args.models:
        variants = {k: v for k, v in variants.items() if k in args.models}
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    opts = TrainOptions(steps=args.steps or 10 ** 6, num_rays=args.rays, seed=args.seed,
                        log_every=50, augment=args.augment)
    max_minutes = None if args.steps else args.minutes / 3
    results, models = {}, {}
    for name, cfg in variants.items():
        torch.manual_seed(args.seed)
        model, res = train(scenes, cfg, opts, out / name, max_minutes=max_minutes,
                           quiet=True)
        score = evaluate(model, held, 3, seed=args.seed)
        results[name], models[name] = score["psnr"], model
        print(f"{name:15s} {res.step:6d} steps {res.elapsed_s:6.0f} s  held-out PSNR "
              f"{score['psnr']:.2f} dB ({score['views']} views)")
        if "regions" in score:
            print("  " + format_regions(score["regions"]))
    ft_scores = []
    for k, scene in enumerate(held if "neo360" in models else []):
        model = copy.deepcopy(models["neo360"])
        src = evaluation_views(scene, k, 3, args.seed)
        cams = scene.cameras[src]
        finetune(model, scene.images[src], cams.K, cams.T_world_cam,
                 FinetuneOptions(args.finetune_steps, lr=args.finetune_lr,
                                 num_rays=args.rays, seed=args.seed))
        ft_scores.append(evaluate(model, [scene], 3, seed=args.seed, first_index=k)["psnr"])
    results["finetuned"] = sum(ft_scores) / len(ft_scores) if ft_scores else float("nan")
    print(f"neo360 fine-tuned ({args.finetune_steps} steps per scene, lr "
          f"{args.finetune_lr:g}): "
          f"{results['finetuned']:.2f} dB")
    try:
        import geometry.ops.sparse_voxel  # noqa: F401
    except ImportError as err:
        print(f"kernel speed: skipped (geometry.ops.sparse_voxel: {err})")
    else:
        # bench_sparse_voxel.py's default inputs (best of 3; its own run gives the options)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_sparse_voxel import time_ray_march, time_voxel_scatter

        print("kernel speed (native vs PyTorch reference, "
              f"{torch.get_num_threads()} thread(s), wall clock):")
        time_ray_march(65536, 128, 1, 3)
        time_voxel_scatter(200_000, 16, 3)
    print(f"total {time.monotonic() - t0:.0f} s; checkpoints in {out}")
    nan = float("nan")  # (models left out with --models)
    print(f"neo360_psnr={results.get('neo360', nan):.2f} "
          f"pixel_baseline_psnr={results.get('pixel_baseline', nan):.2f} "
          f"triplane_only_psnr={results.get('triplane_only', nan):.2f} "
          f"finetuned_psnr={results['finetuned']:.2f}")


if __name__ == "__main__":
    main()
