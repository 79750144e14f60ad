"""Benchmark of ``recon eval``: the synthetic scenes and the real sets in ../shared/datasets.

Prints one table: scene, views, method, PSNR, SSIM (masked where masks exist), ATE (and
ATE / scene extent), rotation error and seconds. Every run's full output (eval.json,
report.md, compare/ images) stays under ``--out``.

    .venv/bin/python tests/benchmarks/recon_bench.py --out /tmp/bench_eval
    .venv/bin/python tests/benchmarks/recon_bench.py --only synthetic-orbit dtu-scan24

Not collected by pytest (tests/benchmarks is excluded); nothing here asserts.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import tyro

REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO / ".." / "shared" / "datasets"


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
    iterations: int | None = 1000
    """Method steps (None: the method's default schedule, 300 for InstantSplat)."""
    test_pose_iterations: int = 100
    """Test-view pose optimisation steps."""
    train_views: int = 5
    """Training views of the synthetic scenes (real sets use their literature's split)."""
    regenerate: bool = False
    """Render the synthetic scenes again even if they exist."""


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

    cases = synthetic_cases(bench) + [c for c in real_cases()
                                      if not bench.only or c.name in bench.only]
    rows = []
    for case in cases:
        out = bench.out / "eval" / case.name
        config = Eval(dataset=case.dataset, out=out, iterations=bench.iterations, quiet=True,
                      test_pose_options=PoseOptConfig(iterations=bench.test_pose_iterations),
                      **case.options)
        t0 = time.perf_counter()
        try:
            results = config.run()
            rows.append((case.name, results, None))
        except (UserError, RuntimeError, ValueError) as err:
            traceback.print_exc()
            rows.append((case.name, None, f"{type(err).__name__}: {err}"))
        print(f"{case.name}: {time.perf_counter() - t0:.1f} s")

    def f(value, digits):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.{digits}f}"

    header = (f"{'scene':<18} {'views':>5} {'method':<12} {'PSNR':>6} {'SSIM':>6} "
              f"{'PSNR-m':>6} {'SSIM-m':>6} {'ATE':>8} {'ATE/ext':>8} {'rot':>6} {'sec':>7}")
    print()
    print(header)
    print("-" * len(header))
    for name, r, error in rows:
        if r is None:
            print(f"{name:<18} failed: {error}")
            continue
        print(f"{name:<18} {len(r['views']['train']):>5} {r['method']:<12} "
              f"{f(r['psnr'], 2):>6} {f(r['ssim'], 3):>6} {f(r['psnr_masked'], 2):>6} "
              f"{f(r['ssim_masked'], 3):>6} {f(r['ate_rmse'], 4):>8} {f(r['ate_rel'], 4):>8} "
              f"{f(r['rot_err_mean_deg'], 2):>6} {f(r['seconds']['total'], 0):>7}")


if __name__ == "__main__":
    main()
