"""Benchmark of issue 22 (``recon fit`` quality): held-out quality before/after each change.

Every row is one ``recon eval`` run (in this process, one after the other, so the rows of a
dataset see the same machine); the rows are cumulative, each adding one change of the issue
to the row above:

==========  ===================================================================================
row         options (``recon fit`` / ``recon eval``)
==========  ===================================================================================
before      today's behaviour: ``--init-options.no-fill-coverage --train.no-coverage-densify
            --init-options.stereo.no-fill-consistent``,
            ``--iterations 250``, ``--train.background 0 0 0``; test poses one view at a
            time (``--test-pose-batch 1 --test-pose-options.coarse-levels 1
            --test-pose-options.patience 0``)
+fill       1. dense coverage at initialisation (``InitConfig.fill_coverage``, and the stereo
            stage's guessed points moved to a depth the other views agree with,
            ``StereoConfig.fill_consistent``)
+densify    2. coverage densification during optimisation (``TrainConfig.coverage_densify``)
+batch      4. test poses batched, coarse to fine, early stopping (eval time)
after       5. the schedule by photo count (no ``--iterations``) and the background
            behind the Gaussians the photos' mean colour (``TrainConfig.background`` None;
            the rows above keep black): every default
==========  ===================================================================================

A row whose options this checkout does not have (a change not merged yet) prints ``n/a``.
Datasets (absent ones are skipped): ``dtu`` (``../shared/datasets/dtu_scan24``, the 3-view
split 25, 22, 28 and the 25 standard test views, 384x384), ``co3d`` (``co3d_apple``, LLFF
protocol: 3 training views, every 8th view tested, shrunk to 512 px), ``textureless`` (a
generated arc scene whose three boxes are uniform-coloured, ``SceneConfig(kind="arc",
textureless=1, radius=2.2)``, 9 views 256x192: training 0, 4, 8; its masks are the boxes).

Columns: held-out PSNR / SSIM (masked: on the dataset's object masks, where it has them),
the training-view coverage of the initial Gaussians before / after the fill (metrics.json
``coverage_before_fill`` / ``coverage_after_fill``), the mean rotation error of the
training cameras, the optimisation steps, the fit time and the eval time (test poses,
renders and metrics: the total minus the fit). Then, per dataset, each row against
``before``: PSNR difference and time ratios.

Run from the repository root (one dataset and --quick take a few minutes on 2 cores)::

    .venv/bin/python tests/benchmarks/bench_fit_quality.py [--quick]
        [--datasets dtu,co3d,textureless] [--rows before,after] [--seeds 0,1,2,3]
        [--threads T] [--out DIR]

``--quick``: only ``before`` and ``after`` and a fifth of the test views. ``--seeds 0,1,2,3``
runs every row once per fit seed (SfM's random choices) and adds, per row, the mean PSNR,
the median and worst rotation error and the runs whose cameras failed: from three photos a
single seed's rotation error swings by tenths of a degree, and some seeds fail outright.
Outputs go to a temporary folder (deleted) unless ``--out`` is given: then every eval output
is kept there, with the figures in ``OUT/bench_fit_quality.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "datasets"
DTU = SHARED / "dtu_scan24"
CO3D = SHARED / "co3d_apple"

#: Options of the rows: ``fit.`` paths are FitConfig fields (recon fit), ``eval.`` paths
#: EvalConfig fields (recon eval). Cumulative: each row is the one above plus a change.
_BEFORE = {
    "fit.init_options.fill_coverage": False,
    "fit.init_options.stereo.fill_consistent": False,
    "fit.train.coverage_densify": False,
    "eval.iterations": 250,
    "eval.test_pose_batch": 1,
    "eval.test_pose_options.coarse_levels": 1,
    "eval.test_pose_options.patience": 0,
    "fit.train.background": (0.0, 0.0, 0.0),
}
ROWS: dict[str, dict[str, object]] = {
    "before": _BEFORE,
    "+fill": {**_BEFORE, "fit.init_options.fill_coverage": True,
              "fit.init_options.stereo.fill_consistent": True},
    "+densify": {**_BEFORE, "fit.init_options.fill_coverage": True,
                 "fit.init_options.stereo.fill_consistent": True,
                 "fit.train.coverage_densify": True},
    "+batch": {"fit.init_options.fill_coverage": True, "fit.train.coverage_densify": True,
               "fit.init_options.stereo.fill_consistent": True,
               "eval.iterations": 250, "fit.train.background": (0.0, 0.0, 0.0)},
    "after": {},
    # ablation: today's defaults without moving the stereo stage's guessed depths
    "-consistent": {"fit.init_options.stereo.fill_consistent": False},
}
#: What each row needs this checkout to have besides the options it sets (the defaults it
#: relies on): ``after`` is only "after" once every change exists.
_REQUIRES = {
    "+batch": ("eval.test_pose_batch", "eval.test_pose_options.coarse_levels",
               "eval.test_pose_options.patience"),
    "after": ("fit.init_options.fill_coverage", "fit.init_options.stereo.fill_consistent",
              "fit.train.coverage_densify",
              "eval.test_pose_batch", "fit.time_budget"),
}
QUICK_ROWS = ("before", "after")


def _field_types(cls) -> dict[str, object]:
    import typing

    hints = typing.get_type_hints(cls, include_extras=False)
    return {f.name: hints.get(f.name) for f in dataclasses.fields(cls)}


def supported(path: str) -> bool:
    """Whether the option ``fit.a.b`` / ``eval.a.b`` exists in this checkout (a field of
    FitConfig / EvalConfig, nested through dataclass fields: what ``recon fit --help`` and
    ``recon eval --help`` list as ``--a.b``)."""
    from reconstruction.engine.config import FitConfig
    from reconstruction.eval.config import EvalConfig

    root, *names = path.split(".")
    cls = {"fit": FitConfig, "eval": EvalConfig}[root]
    for name in names:
        if cls is None or not dataclasses.is_dataclass(cls):
            return False
        types = _field_types(cls)
        if name not in types:
            return False
        cls = types[name]
    return True


def _set(obj, names: list[str], value) -> None:
    for name in names[:-1]:
        obj = getattr(obj, name)
    setattr(obj, names[-1], value)


def _find(tree, key: str):
    """The first value of ``key`` anywhere in a nest of dicts, or None."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


@contextlib.contextmanager
def fit_options(options: dict[str, object], captured: dict):
    """While active, the method fits that ``recon eval`` runs get the ``fit.`` options (eval
    has no such flags: the registry's ``fit`` is wrapped), and their metrics land in
    ``captured``."""
    import reconstruction.methods as methods

    original = methods.fit

    def fit(config, *args, **kwargs):
        for path, value in options.items():
            _set(config, path.split(".")[1:], value)
        metrics = original(config, *args, **kwargs)
        captured["metrics"] = metrics
        captured["iterations"] = config.iterations
        return metrics

    methods.fit = fit
    try:
        yield
    finally:
        methods.fit = original


def make_textureless(folder: Path) -> Path:
    """The generated textureless scene (see the module doc), written once into ``folder``."""
    from reconstruction.procedural import SceneConfig, generate

    path = folder / "textureless_arc"
    if not (path / "transforms.json").exists():
        generate(SceneConfig(kind="arc", num_views=9, width=256, height=192, seed=0,
                             radius=2.2, textureless=1.0), path)
    return path


def datasets(names: list[str], work: Path, quick: bool) -> list[tuple[str, dict | None, str]]:
    """``(name, EvalConfig keyword arguments or None, note)`` per dataset asked for."""
    from reconstruction.eval.splits import DTU_TEST_IDS

    out = []
    for name in names:
        if name == "dtu":
            if not (DTU / "cameras.npz").exists():
                out.append((name, None, f"skipped: {DTU} is absent"))
                continue
            tests = DTU_TEST_IDS[::5] if quick else DTU_TEST_IDS
            out.append((name, {"dataset": DTU, "views": "25,22,28",
                               "test_views": ",".join(map(str, tests))},
                        f"DTU scan24, 3 views, {len(tests)} test views"))
        elif name == "co3d":
            if not (CO3D / "gt_cameras.npz").exists():
                out.append((name, None, f"skipped: {CO3D} is absent"))
                continue
            out.append((name, {"dataset": CO3D, "format": "co3d"},
                        "CO3D apple, LLFF protocol, 3 training views"))
        elif name == "textureless":
            tests = "2,6" if quick else "1,2,3,5,6,7"
            out.append((name, {"dataset": make_textureless(work), "views": "0,4,8",
                               "test_views": tests},
                        f"generated arc scene, textureless boxes, test views {tests}"))
        else:
            raise SystemExit(f"unknown dataset {name!r}; use dtu, co3d, textureless")
    return out


def run_row(dataset: dict, row: str, out: Path, threads: int | None, quiet: bool,
            seed: int = 0) -> dict:
    """One recon eval run with the row's options (the fit's ``--seed`` ``seed``); the
    bench's figures (or why n/a)."""
    from reconstruction.eval.config import EvalConfig
    from reconstruction.eval.protocol import run_eval

    options = {**ROWS[row], "fit.seed": seed}
    missing = [p for p in (*options, *_REQUIRES.get(row, ())) if not supported(p)]
    if missing:
        return {"row": row, "seed": seed, "na": "needs " + ", ".join(
            "--" + p.split(".", 1)[1].replace("_", "-") for p in missing)}
    config = EvalConfig(out=out, threads=threads, quiet=quiet, save_renders=False,
                        overwrite=True, **dataset)
    for path, value in options.items():
        if path.startswith("eval."):
            _set(config, path.split(".")[1:], value)
    captured: dict = {}
    t0 = time.perf_counter()
    with fit_options({p: v for p, v in options.items() if p.startswith("fit.")}, captured):
        results = run_eval(config)
    wall = time.perf_counter() - t0
    seconds = results.get("seconds", {})
    fit_s = seconds.get("fit")
    metrics = captured.get("metrics", {})
    return {
        "row": row, "seed": seed,
        "psnr": results.get("psnr"), "ssim": results.get("ssim"),
        "psnr_masked": results.get("psnr_masked"), "ssim_masked": results.get("ssim_masked"),
        "coverage_before_fill": _find(metrics, "coverage_before_fill"),
        "coverage_after_fill": _find(metrics, "coverage_after_fill"),
        "rot_err_mean_deg": results.get("rot_err_mean_deg"),
        "training_psnr_db": metrics.get("training_psnr_db"),
        "iterations": metrics.get("iterations", captured.get("iterations")),
        "fit_s": fit_s,
        "eval_s": wall - fit_s if fit_s is not None else None,
        "test_pose_s": seconds.get("test_pose"),
        "wall_s": wall,
    }


def _fmt(value, digits: int = 2, scale: float = 1.0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value * scale:.{digits}f}{suffix}"


COLUMNS = (("PSNR", "psnr", 2, 1.0), ("SSIM", "ssim", 3, 1.0),
           ("PSNR-m", "psnr_masked", 2, 1.0), ("SSIM-m", "ssim_masked", 3, 1.0),
           ("cov0 %", "coverage_before_fill", 1, 100.0),
           ("cov1 %", "coverage_after_fill", 1, 100.0),
           ("rot deg", "rot_err_mean_deg", 2, 1.0), ("train dB", "training_psnr_db", 2, 1.0),
           ("steps", "iterations", 0, 1.0), ("fit s", "fit_s", 1, 1.0),
           ("eval s", "eval_s", 1, 1.0), ("pose s", "test_pose_s", 1, 1.0))


def _label(r: dict) -> str:
    return r["row"] if r.get("seed", 0) == 0 else f"{r['row']}@s{r['seed']}"


def print_table(results: dict[str, dict]) -> None:
    """The figures per dataset and row (and seed), each row's change against ``before``
    (of the same seed), and with several seeds each row's spread over them."""
    head = f"{'dataset':<12} {'row':<9} " + " ".join(f"{c[0]:>8}" for c in COLUMNS)
    print(head)
    print("-" * len(head))
    for name, entry in results.items():
        if entry.get("skipped"):
            print(f"{name:<12} {entry['skipped']}")
            continue
        for r in entry["rows"]:
            if "na" in r:
                print(f"{name:<12} {_label(r):<9} n/a ({r['na']})")
                continue
            print(f"{name:<12} {_label(r):<9} " + " ".join(
                f"{_fmt(r.get(key), d, s):>8}" for _, key, d, s in COLUMNS))
    print()
    print("against 'before': PSNR / masked PSNR difference (dB), fit and eval time ratios")
    for name, entry in results.items():
        rows = [r for r in entry.get("rows", []) if "na" not in r]
        bases = {r.get("seed", 0): r for r in rows if r["row"] == "before"}
        for r in rows:
            base = bases.get(r.get("seed", 0))
            if base is None or r["row"] == "before":
                continue
            parts = []
            for key in ("psnr", "psnr_masked"):
                if r.get(key) is not None and base.get(key) is not None:
                    parts.append(f"{key} {r[key] - base[key]:+.2f}")
            for key in ("fit_s", "eval_s"):
                if r.get(key) and base.get(key):
                    parts.append(f"{key[:-2]} x{r[key] / base[key]:.2f}")
            print(f"  {name:<12} {_label(r):<9} " + ", ".join(parts))
    if len({r.get("seed", 0) for e in results.values() for r in e.get("rows", [])}) < 2:
        return
    # Camera-pose errors of a 3-view fit swing with the seed (SfM's random choices): over the
    # seeds, the median and worst rotation error, and the runs whose cameras failed (> 10°).
    print()
    print("over the seeds: PSNR mean, rotation error median / worst (deg), failed runs")
    for name, entry in results.items():
        by_row: dict[str, list[dict]] = {}
        for r in entry.get("rows", []):
            if "na" not in r:
                by_row.setdefault(r["row"], []).append(r)
        for row, runs in by_row.items():
            psnr = [r["psnr"] for r in runs if r.get("psnr") is not None]
            rot = sorted(r["rot_err_mean_deg"] for r in runs
                         if r.get("rot_err_mean_deg") is not None)
            if not psnr or not rot:
                continue
            failed = sum(v > 10.0 for v in rot)
            print(f"  {name:<12} {row:<14} PSNR {statistics.fmean(psnr):.2f}, rotation "
                  f"{statistics.median(rot):.2f} / {rot[-1]:.2f}, failed {failed}/{len(rot)} "
                  f"(seeds {','.join(str(r.get('seed', 0)) for r in runs)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="rows before and after only, a fifth of the test views")
    parser.add_argument("--datasets", default="dtu,co3d,textureless")
    parser.add_argument("--rows", default=None, help=f"comma-separated of {list(ROWS)}")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated fit seeds: every row runs once per seed")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of the fits (default: all cores)")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep every eval output here (default: a deleted temp folder)")
    parser.add_argument("--verbose", action="store_true", help="progress bars and fit logs")
    args = parser.parse_args()
    rows = (args.rows.split(",") if args.rows else list(QUICK_ROWS if args.quick else ROWS))
    for row in rows:
        if row not in ROWS:
            raise SystemExit(f"unknown row {row!r}; use {list(ROWS)}")
    try:
        seeds = [int(v) for v in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r} is not a comma-separated list of "
                         "integers") from None
    from geometry.threads import set_threads

    set_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-fit-quality-"))
    out = args.out if args.out is not None else work
    results: dict[str, dict] = {}
    try:
        for name, dataset, note in datasets(args.datasets.split(","), work, args.quick):
            if dataset is None:
                results[name] = {"skipped": note}
                print(f"{name}: {note}", flush=True)
                continue
            print(f"{name}: {note}", flush=True)
            results[name] = {"note": note, "rows": []}
            for row in rows:
                for seed in seeds:
                    folder = row.lstrip("+") + (f"_s{seed}" if len(seeds) > 1 else "")
                    figures = run_row(dataset, row, out / name / folder, args.threads,
                                      quiet=not args.verbose, seed=seed)
                    results[name]["rows"].append(figures)
                    shown = figures.get("na") or ", ".join(
                        f"{key} {_fmt(figures.get(key), d, s)}" for _, key, d, s in COLUMNS
                        if figures.get(key) is not None)
                    print(f"  {_label(figures)}: {shown}", flush=True)
        print()
        print_table(results)
        if args.out is not None:
            (args.out / "bench_fit_quality.json").write_text(
                json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
