"""Generative novel-view synthesis on generated object scenes (issue 16): held-out PSNR of
photometric-only fitting (InstantSplat's trainer), UpSRT renders, UpFusion distillation and
distillation with an oracle denoiser, at 1 / 3 / 6 input views.

    python tests/benchmarks/generative_bench.py [--seed S] [--minutes M] [--views 1 3 6]

Each row family is one function ``(args, results) -> None`` in :data:`ROWS` that adds
``name_psnr_V`` entries to ``results`` (H7: ``oracle``; H8: ``upsrt``, ``upfusion``). The
last line is ``upsrt_psnr_1=X upsrt_psnr_3=Y upsrt_psnr_6=Z instantsplat_psnr_1=W
oracle_gain_db=G`` (``nan`` for a figure not measured, e.g. a row family skipped by
``--rows`` or by the ``--minutes`` budget).

UpSRT rows (:mod:`reconstruction.upfusion.benchmark`, ``--upsrt CKPT`` or a tiny model
trained here for ``--upsrt-minutes``): held-out PSNR of UpSRT's renders of ``--upsrt-scenes``
unseen objects from 1 / 3 / 6 input views (also on object pixels only, and of copying the
nearest input photo for reference), then InstantSplat from the same single input view (the
engine's one-photo initialisation) on the same held-out views: ``instantsplat_psnr_1``.

Oracle rows (:func:`reconstruction.generative.oracle.run_oracle_experiment`): the same
initial Gaussians (the inputs' depth unprojected plus faint random ones in a ball) are
fitted with the engine's trainer (photometric loss + densification, poses fixed) with and
without image-space distillation from the oracle (the ground-truth render at each sampled
camera); held-out views are evenly spaced over the full circle. Writes nothing to disk.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable


def oracle_rows(args: argparse.Namespace, results: dict[str, float]) -> None:
    """``oracle_photometric_psnr_V`` (InstantSplat's trainer, photometric only, from the
    true input depth), ``oracle_psnr_V`` and ``oracle_gain_db_V`` per view count;
    ``oracle_gain_db`` at 3 views (the done-when figure)."""
    from reconstruction.generative.oracle import OracleExperiment, run_oracle_experiment

    for views in args.views:
        if _over_budget(args):
            print(f"oracle, {views} views: skipped (--minutes budget spent)")
            continue
        exp = OracleExperiment(seed=args.seed, views=views, size=args.size,
                               render_size=args.size, iterations=args.iterations,
                               threads=args.threads)
        r = run_oracle_experiment(exp)
        results[f"oracle_photometric_psnr_{views}"] = r["photometric_psnr"]
        results[f"oracle_psnr_{views}"] = r["oracle_psnr"]
        results[f"oracle_gain_db_{views}"] = r["oracle_gain_db"]
        print(f"{views} views: photometric-only (InstantSplat trainer) {r['photometric_psnr']:.2f}"
              f" dB, + oracle distillation {r['oracle_psnr']:.2f} dB "
              f"(gain {r['oracle_gain_db']:+.2f} dB, {r['seconds']:.0f} s)", flush=True)
    if "oracle_gain_db_3" in results:
        results["oracle_gain_db"] = results["oracle_gain_db_3"]


def _upsrt_model(args: argparse.Namespace):
    """``--upsrt CKPT``, else a tiny UpSRT trained here for ``--upsrt-minutes`` (generated
    object sequences, seeds 0-159; the bench's are 100000 + seed onwards)."""
    import tempfile
    from pathlib import Path

    from geometry.threads import set_threads
    from reconstruction.upfusion.train import UpSRTTrainOptions, load_upsrt, run_train
    from reconstruction.upfusion.upsrt import preset

    set_threads(args.threads)
    if args.upsrt is not None:
        return load_upsrt(Path(args.upsrt))
    with tempfile.TemporaryDirectory(prefix="upsrt-bench-") as tmp:
        options = UpSRTTrainOptions(steps=100_000, batch_size=6, queries=384)
        model, result = run_train(Path(tmp) / "upsrt", True, None, preset("tiny"), options,
                                  max_minutes=args.upsrt_minutes, quiet=True)
    print(f"trained a tiny UpSRT for {result.elapsed_s / 60:.1f} min ({result.step} steps)",
          flush=True)
    return model


def upsrt_rows(args: argparse.Namespace, results: dict[str, float]) -> None:
    """``upsrt_psnr_V``: UpSRT's renders of the held-out views of ``--upsrt-scenes`` unseen
    generated objects from V input views (:mod:`reconstruction.upfusion.benchmark`), at the
    model's training size (``--upsrt-size``); ``instantsplat_psnr_1``: InstantSplat from the
    same single input view, scored on the same held-out views."""
    from reconstruction.upfusion.benchmark import (
        bench_sequences,
        instantsplat_single_view_rows,
        nearest_view_rows,
    )
    from reconstruction.upfusion.benchmark import upsrt_rows as rows

    if _over_budget(args):
        print("upsrt: skipped (--minutes budget spent)")
        return
    args.upsrt_model = getattr(args, "upsrt_model", None) or _upsrt_model(args)
    t0 = time.monotonic()
    sequences = bench_sequences(args.seed, args.upsrt_scenes, args.upsrt_size)
    r = rows(args.upsrt_model, sequences, view_counts=tuple(args.views))
    results.update(r)
    print(f"UpSRT renders ({len(sequences)} unseen objects, {args.upsrt_size} px, held-out "
          "views): " + ", ".join(f"{v} views {r[f'upsrt_psnr_{v}']:.2f} dB"
                                 for v in args.views)
          + f" ({time.monotonic() - t0:.0f} s)", flush=True)
    if all(f"upsrt_object_psnr_{v}" in r for v in args.views):
        print("UpSRT renders, object pixels only: " + ", ".join(
            f"{v} views {r[f'upsrt_object_psnr_{v}']:.2f} dB" for v in args.views), flush=True)
    r = nearest_view_rows(sequences, tuple(args.views))
    results.update(r)
    print("copying the nearest input photo (no model): " + ", ".join(
        f"{v} views {r[f'copy_psnr_{v}']:.2f} dB" for v in args.views), flush=True)
    if 1 in args.views:
        r = instantsplat_single_view_rows(sequences, args.instantsplat_iterations, args.seed)
        results["instantsplat_psnr_1"] = r["instantsplat_psnr_1"]
        print(f"InstantSplat from the same single view (one-photo initialisation, "
              f"{args.instantsplat_iterations} iterations), same held-out views: "
              f"{r['instantsplat_psnr_1']:.2f} dB ({r['instantsplat_seconds']:.0f} s)",
              flush=True)


def upfusion_rows(args: argparse.Namespace, results: dict[str, float]) -> None:
    """``upfusion_psnr_V``: splats fitted to V inputs (true cameras) with UpFusion's
    distillation, UpSRT as the denoiser, next to the same fit photometric only
    (``upfusion_photometric_psnr_V``), both from the inputs' visual hull."""
    from reconstruction.upfusion.benchmark import DistillBench, bench_sequences
    from reconstruction.upfusion.benchmark import upfusion_rows as rows

    if _over_budget(args):
        print("upfusion: skipped (--minutes budget spent)")
        return
    args.upsrt_model = getattr(args, "upsrt_model", None) or _upsrt_model(args)
    r = rows(args.upsrt_model, bench_sequences(args.seed, 1, args.size),
             DistillBench(iterations=args.iterations, render_size=args.size, seed=args.seed),
             view_counts=tuple(args.views))
    for v in args.views:
        results[f"upfusion_psnr_{v}"] = r[f"upfusion_psnr_{v}"]
        results[f"upfusion_photometric_psnr_{v}"] = r[f"photometric_psnr_{v}"]
        print(f"{v} views: photometric-only from the hull {r[f'photometric_psnr_{v}']:.2f} dB, "
              f"+ UpFusion distillation (UpSRT denoiser) {r[f'upfusion_psnr_{v}']:.2f} dB",
              flush=True)
    print(f"upfusion rows: {r['upfusion_seconds']:.0f} s", flush=True)


#: Row families, run in this order (H8 adds "upsrt" and "upfusion").
ROWS: dict[str, Callable[[argparse.Namespace, dict[str, float]], None]] = {
    "oracle": oracle_rows,
    "upsrt": upsrt_rows,
    "upfusion": upfusion_rows,
}

LAST_LINE = ("upsrt_psnr_1", "upsrt_psnr_3", "upsrt_psnr_6", "instantsplat_psnr_1",
             "oracle_gain_db")

_START = time.monotonic()


def _over_budget(args: argparse.Namespace) -> bool:
    return args.minutes is not None and time.monotonic() - _START > 60.0 * args.minutes


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7, help="scene seed (unseen by training)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="start no new measurement after this many minutes")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 3, 6])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--size", type=int, default=48, help="image side (pixels)")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--upsrt", default=None,
                        help="UpSRT checkpoint folder (recon upsrt train); default: train a "
                             "tiny one here for --upsrt-minutes")
    parser.add_argument("--upsrt-minutes", type=float, default=6.0)
    parser.add_argument("--upsrt-scenes", type=int, default=10,
                        help="unseen objects of the upsrt rows")
    parser.add_argument("--upsrt-size", type=int, default=64,
                        help="image side of the upsrt rows (the tiny model trains at 64)")
    parser.add_argument("--instantsplat-iterations", type=int, default=300,
                        help="iterations of InstantSplat from the single view (upsrt rows)")
    args = parser.parse_args(argv)
    results: dict[str, float] = {}
    for name in args.rows:
        ROWS[name](args, results)
    print(" ".join(f"{key}={results.get(key, math.nan):.2f}" for key in LAST_LINE))
    return results


if __name__ == "__main__":
    main()
