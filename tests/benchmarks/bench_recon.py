"""Benchmark of ``recon eval``: the synthetic scenes and the real sets in ../shared/datasets,
for InstantSplat and RDG-GS on the same views, with RDG-GS's ablations.

Prints one table: scene, views, method (an ablation is ``rdggs-<switch off>``), PSNR, SSIM
(masked where masks exist), depth AbsRel (where the scene has ground-truth depth), ATE
(and ATE / scene extent), rotation error, the fit's seconds and its ratio to InstantSplat's
fit on the same scene. Every run's full output (eval.json, report.md, compare/ images)
stays under ``--out``.

    .venv/bin/python tests/benchmarks/bench_recon.py --out /tmp/bench_eval
    .venv/bin/python tests/benchmarks/bench_recon.py --only synthetic-orbit dtu-scan24 \\
        --methods instantsplat rdggs --ablations no-refine no-relative no-sampling
    .venv/bin/python tests/benchmarks/bench_recon.py --known-poses --out /tmp/bench_known

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
    gt_prior_row: bool = True
    """Add ``rdggs-gt-prior`` on the synthetic scenes: RDG-GS given the ground-truth depth as
    a relative prior (``--rdggs.depth-prior files``), each view's map under a random scale
    and shift like a monocular network's. An oracle: what the method does with a dense,
    accurate relative depth prior, which no weight-free prior here gives."""
    mono_checkpoint: Path | None = None
    """A local Depth-Anything-V2 state_dict: adds ``rdggs-mono`` (RDG-GS with the monocular
    prior, as in the paper) on every scene."""
    seeds: tuple[int, ...] = (0,)
    """Seeds of every fit (SfM, patch offsets, ...). With several, each row is the mean over
    them and the table adds the standard deviation and the mean difference to
    InstantSplat's run with the same seed (one seed's held-out PSNR can move 0.4 dB)."""
    known_poses: bool = False
    """Give every method the ground-truth training cameras (as the RDG-GS literature does on
    LLFF and DTU); test views are then rendered from their true poses."""


def synthetic_cases(bench: Bench) -> list[Case]:
    from reconstruction.procedural import SceneConfig, generate

    cases = []
    for kind, views in (("orbit", 25), ("forward", 20)):
        path = bench.out / "scenes" / f"synthetic_{kind}"
        name = f"synthetic-{kind}"
        if bench.only and name not in bench.only:
            continue
        if bench.regenerate or not (path / "transforms.json").is_file():
            t0 = time.perf_counter()
            generate(SceneConfig(kind=kind, num_views=views), path, quiet=False)
            print(f"generated {path} in {time.perf_counter() - t0:.1f} s")
        cases.append(Case(name, path, {"train_views": bench.train_views}))
    return cases


def relative_gt_priors(scene: Path, folder: Path) -> Path:
    """``folder/<stem>.npy`` for every image of a synthetic scene: its ground-truth depth
    times a random scale in [0.5, 2] plus a random shift in [0, 1] of its median (seeded by
    the view), 0 where nothing is hit."""
    import numpy as np

    meta = json.loads((scene / "transforms.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(meta["frames"]):
        depth = np.load(scene / frame["depth_file_path"])
        rng = np.random.default_rng(k)
        hit = depth > 0
        shift = rng.uniform(0.0, 1.0) * float(np.median(depth[hit])) if hit.any() else 0.0
        relative = np.where(hit, rng.uniform(0.5, 2.0) * depth + shift, 0.0)
        np.save(folder / f"{Path(frame['file_path']).stem}.npy", relative.astype(np.float32))
    return folder


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
    from reconstruction.pose_opt import PoseOptConfig
    from reconstruction.rdggs.config import RDGGSConfig

    unknown = [a for a in bench.ablations if a not in ABLATIONS]
    if unknown:
        raise SystemExit(f"unknown ablation(s) {unknown}; choose from {list(ABLATIONS)}")
    cases = synthetic_cases(bench) + [c for c in real_cases()
                                      if not bench.only or c.name in bench.only]
    rows = []  # (scene, label, [results per seed], error)
    for case in cases:
        variants = [(m, m, {}) for m in bench.methods]
        if case.name in bench.ablation_scenes:
            variants += [(f"rdggs-{a}", "rdggs", ABLATIONS[a]) for a in bench.ablations]
        if bench.mono_checkpoint is not None:
            variants.append(("rdggs-mono", "rdggs", {"depth_prior": "mono",
                                                     "mono_checkpoint": bench.mono_checkpoint}))
        if bench.gt_prior_row and case.name.startswith("synthetic-"):
            priors = relative_gt_priors(case.dataset, bench.out / "gt_priors" / case.name)
            variants.append(("rdggs-gt-prior", "rdggs",
                             {"depth_prior": "files", "prior_dir": priors}))
        for label, method, changes in variants:
            per_seed, error = [], None
            for seed in bench.seeds:
                out = bench.out / "eval" / case.name / (label if seed == 0 else
                                                         f"{label}-seed{seed}")
                t0 = time.perf_counter()
                if bench.reuse and (out / "eval.json").is_file():
                    per_seed.append(json.loads((out / "eval.json").read_text()))
                    continue
                config = Eval(dataset=case.dataset, out=out, method=method, seed=seed,
                              iterations=bench.iterations, quiet=True, threads=bench.threads,
                              known_poses=bench.known_poses,
                              options=(dataclasses.replace(RDGGSConfig(), **changes)
                                       if method == "rdggs" else None),
                              test_pose_options=PoseOptConfig(
                                  iterations=bench.test_pose_iterations),
                              **case.options)
                try:
                    per_seed.append(config.run())
                except (UserError, RuntimeError, ValueError) as err:
                    traceback.print_exc()
                    error = f"{type(err).__name__}: {err}"
                    break
                print(f"{case.name} {label} seed {seed}: {time.perf_counter() - t0:.1f} s",
                      flush=True)
            rows.append((case.name, label, None if error else per_seed, error))

    def f(value, digits):
        if value is None or (isinstance(value, float) and math.isnan(value)) or \
                isinstance(value, str):
            return "-"
        return f"{value:.{digits}f}"

    def fit_seconds(r: dict) -> float | None:
        return r.get("method_timings", {}).get("total")

    def mean(runs: list[dict], key) -> float | None:
        values = [key(r) if callable(key) else r.get(key) for r in runs]
        values = [v for v in values if v is not None and not math.isnan(v)]
        return sum(values) / len(values) if values else None

    def std(runs: list[dict], key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None and not math.isnan(r[key])]
        if len(values) < 2:
            return None
        m = sum(values) / len(values)
        return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))

    def paired_difference(runs: list[dict], base_runs: list[dict] | None,
                          key: str) -> float | None:
        """Mean of ``run[key] - baseline[key]`` over the seeds (same seed paired)."""
        if not base_runs or len(base_runs) != len(runs):
            return None
        pairs = [(r.get(key), b.get(key)) for r, b in zip(runs, base_runs, strict=True)]
        if any(a is None or b is None for a, b in pairs):
            return None
        return sum(a - b for a, b in pairs) / len(pairs)

    baseline = {name: runs for name, label, runs, _ in rows
                if runs is not None and label == "instantsplat"}
    several = len(bench.seeds) > 1
    header = (f"{'scene':<18} {'views':>5} {'method':<20} {'PSNR':>6} {'SSIM':>6} "
              f"{'PSNR-m':>6} {'SSIM-m':>6} {'AbsRel':>7} {'ATE':>8} {'ATE/ext':>8} "
              f"{'rot':>6} {'fit s':>7} {'x IS':>5}")
    if several:
        header += f" {'sd PSNR':>7} {'sd AbsRel':>9} {'dPSNR':>6} {'dSSIM':>6} {'dAbsRel':>8}"
    print()
    print(header)
    print("-" * len(header))
    for name, label, runs, error in rows:
        if runs is None:
            print(f"{name:<18} {'':>5} {label:<20} failed: {error}")
            continue
        seconds = mean(runs, fit_seconds)
        base_runs = baseline.get(name)
        base = mean(base_runs, fit_seconds) if base_runs else None
        ratio = seconds / base if seconds is not None and base else None
        line = (f"{name:<18} {len(runs[0]['views']['train']):>5} {label:<20} "
                f"{f(mean(runs, 'psnr'), 2):>6} {f(mean(runs, 'ssim'), 3):>6} "
                f"{f(mean(runs, 'psnr_masked'), 2):>6} {f(mean(runs, 'ssim_masked'), 3):>6} "
                f"{f(mean(runs, 'depth_absrel'), 4):>7} {f(mean(runs, 'ate_rmse'), 4):>8} "
                f"{f(mean(runs, 'ate_rel'), 4):>8} {f(mean(runs, 'rot_err_mean_deg'), 2):>6} "
                f"{f(seconds, 0):>7} {f(ratio, 2):>5}")
        if several:
            line += (f" {f(std(runs, 'psnr'), 2):>7} {f(std(runs, 'depth_absrel'), 4):>9} "
                     f"{f(paired_difference(runs, base_runs, 'psnr'), 2):>6} "
                     f"{f(paired_difference(runs, base_runs, 'ssim'), 3):>6} "
                     f"{f(paired_difference(runs, base_runs, 'depth_absrel'), 4):>8}")
        print(line)
    print("\nx IS: the fit's total seconds over InstantSplat's on the same scene (target <= 1.5)")
    if several:
        print(f"means over seeds {list(bench.seeds)}; sd: standard deviation over them; d*: mean "
              "difference to InstantSplat with the same seed")
    print("poses: " + ("ground-truth training cameras given to every method (--known-poses)"
                       if bench.known_poses else "pose-free (cameras estimated, then aligned)"))


if __name__ == "__main__":
    main()
