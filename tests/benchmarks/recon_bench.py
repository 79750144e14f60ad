"""Benchmark of ``recon eval``: the synthetic scenes and the real sets in ../shared/datasets,
for InstantSplat and RDG-GS on the same views, with RDG-GS's ablations.

Prints one table: scene, views, method (an ablation is ``rdggs-<switch off>``), PSNR, SSIM
(masked where masks exist), depth AbsRel (where the scene has ground-truth depth), ATE
(and ATE / scene extent), rotation error, the fit's seconds and its ratio to InstantSplat's
fit on the same scene. Every run's full output (eval.json, report.md, compare/ images)
stays under ``--out``.

    .venv/bin/python tests/benchmarks/recon_bench.py --out /tmp/bench_eval
    .venv/bin/python tests/benchmarks/recon_bench.py --only synthetic-orbit dtu-scan24 \\
        --methods instantsplat rdggs --ablations no-refine no-relative no-sampling
    .venv/bin/python tests/benchmarks/recon_bench.py --known-poses --out /tmp/bench_known

Ablations run on ``--ablation-scenes`` only (the synthetic ones by default: a DTU eval takes
about 15 minutes per method on two CPU cores). Not collected by pytest (tests/benchmarks is
excluded); nothing here asserts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import tyro

REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO / ".." / "shared" / "datasets"

#: RDG-GS ablations: one component switched off each (RDGGSConfig field -> value).
ABLATIONS: dict[str, dict] = {
    "no-refine": {"refine_prior": False},
    "no-relative": {"relative_depth": False},
    "no-sampling": {"adaptive_sampling": False},
    "prior-init": {"depth_prior": "init"},
    "prior-fused": {"depth_prior": "fused"},
}


@dataclass
class Case:
    name: str
    dataset: Path
    options: dict = field(default_factory=dict)


@dataclass
class Bench:
    """Run recon eval on every available scene and print one table."""

    out: Path = Path("/tmp/bench_eval")
    """Folder for the scenes and the eval outputs."""
    only: tuple[str, ...] = ()
    """Run only these cases (names as in the table)."""
    methods: tuple[str, ...] = ("instantsplat", "rdggs")
    """Methods compared on every scene (recon eval --method)."""
    ablations: tuple[str, ...] = ("no-refine", "no-relative", "no-sampling")
    """RDG-GS variants with one component off (from: no-refine, no-relative, no-sampling,
    prior-init, prior-fused); empty for none."""
    ablation_scenes: tuple[str, ...] = ("synthetic-orbit", "synthetic-forward")
    """Scenes the ablations run on."""
    iterations: int | None = 1000
    """Method steps (None: the method's default schedule, 300 for InstantSplat)."""
    test_pose_iterations: int = 100
    """Test-view pose optimisation steps."""
    train_views: int = 5
    """Training views of the synthetic scenes (real sets use their literature's split)."""
    regenerate: bool = False
    """Render the synthetic scenes again even if they exist."""
    threads: int | None = 1
    """CPU threads of every fit (None: all cores); 1 lets two benchmarks share two cores."""
    reuse: bool = False
    """Read eval.json of runs that already finished under --out instead of running again."""
    known_poses: bool = False
    """Give every method the ground-truth training cameras (as the RDG-GS literature does on
    LLFF and DTU); test views are then rendered from their true poses."""


def synthetic_cases(bench: Bench) -> list[Case]:
    from reconstruction.eval.synthetic import SyntheticConfig, generate

    cases = []
    for kind, views in (("orbit", 25), ("forward", 20)):
        path = bench.out / "scenes" / f"synthetic_{kind}"
        name = f"synthetic-{kind}"
        if bench.only and name not in bench.only:
            continue
        if bench.regenerate or not (path / "transforms.json").is_file():
            t0 = time.perf_counter()
            generate(SyntheticConfig(out=path, kind=kind, num_views=views), quiet=False)
            print(f"generated {path} in {time.perf_counter() - t0:.1f} s")
        cases.append(Case(name, path, {"train_views": bench.train_views}))
    return cases


def real_cases() -> list[Case]:
    cases = []
    if (DATASETS / "dtu_scan24").is_dir():
        cases.append(Case("dtu-scan24", DATASETS / "dtu_scan24", {"train_views": 3}))
    if (DATASETS / "co3d_apple").is_dir():
        # 20 frames around the object; 3 views of the LLFF split (every 8th held out).
        cases.append(Case("co3d-apple", DATASETS / "co3d_apple",
                          {"train_views": 3, "max_size": 512}))
    return cases


def main() -> None:
    bench = tyro.cli(Bench)
    from geometry.errors import UserError
    from reconstruction.eval.cli import Eval
    from reconstruction.eval.config import PoseOptConfig
    from reconstruction.rdggs.config import RDGGSConfig

    unknown = [a for a in bench.ablations if a not in ABLATIONS]
    if unknown:
        raise SystemExit(f"unknown ablation(s) {unknown}; choose from {list(ABLATIONS)}")
    cases = synthetic_cases(bench) + [c for c in real_cases()
                                      if not bench.only or c.name in bench.only]
    rows = []
    for case in cases:
        variants = [(m, m, {}) for m in bench.methods]
        if case.name in bench.ablation_scenes:
            variants += [(f"rdggs-{a}", "rdggs", ABLATIONS[a]) for a in bench.ablations]
        for label, method, changes in variants:
            out = bench.out / "eval" / case.name / label
            t0 = time.perf_counter()
            if bench.reuse and (out / "eval.json").is_file():
                rows.append((case.name, label, json.loads((out / "eval.json").read_text()),
                             None))
                continue
            config = Eval(dataset=case.dataset, out=out, method=method,
                          iterations=bench.iterations, quiet=True, threads=bench.threads,
                          known_poses=bench.known_poses,
                          rdggs=dataclasses.replace(RDGGSConfig(), **changes),
                          test_pose_options=PoseOptConfig(iterations=bench.test_pose_iterations),
                          **case.options)
            try:
                results = config.run()
                rows.append((case.name, label, results, None))
            except (UserError, RuntimeError, ValueError) as err:
                traceback.print_exc()
                rows.append((case.name, label, None, f"{type(err).__name__}: {err}"))
            print(f"{case.name} {label}: {time.perf_counter() - t0:.1f} s", flush=True)

    def f(value, digits):
        if value is None or (isinstance(value, float) and math.isnan(value)) or \
                isinstance(value, str):
            return "-"
        return f"{value:.{digits}f}"

    def fit_seconds(r: dict) -> float | None:
        return r.get("method_timings", {}).get("total")

    baseline = {name: fit_seconds(r) for name, label, r, _ in rows
                if r is not None and label == "instantsplat"}
    header = (f"{'scene':<18} {'views':>5} {'method':<20} {'PSNR':>6} {'SSIM':>6} "
              f"{'PSNR-m':>6} {'SSIM-m':>6} {'AbsRel':>7} {'ATE':>8} {'ATE/ext':>8} "
              f"{'rot':>6} {'fit s':>7} {'x IS':>5}")
    print()
    print(header)
    print("-" * len(header))
    for name, label, r, error in rows:
        if r is None:
            print(f"{name:<18} {'':>5} {label:<20} failed: {error}")
            continue
        seconds = fit_seconds(r)
        base = baseline.get(name)
        ratio = seconds / base if seconds is not None and base else None
        print(f"{name:<18} {len(r['views']['train']):>5} {label:<20} "
              f"{f(r['psnr'], 2):>6} {f(r['ssim'], 3):>6} {f(r['psnr_masked'], 2):>6} "
              f"{f(r['ssim_masked'], 3):>6} {f(r.get('depth_absrel'), 4):>7} "
              f"{f(r['ate_rmse'], 4):>8} {f(r['ate_rel'], 4):>8} "
              f"{f(r['rot_err_mean_deg'], 2):>6} {f(seconds, 0):>7} {f(ratio, 2):>5}")
    print("\nx IS: the fit's total seconds over InstantSplat's on the same scene (target <= 1.5)")
    print("poses: " + ("ground-truth training cameras given to every method (--known-poses)"
                       if bench.known_poses else "pose-free (cameras estimated, then aligned)"))


if __name__ == "__main__":
    main()
