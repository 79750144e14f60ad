"""SpaRP's pose stage on held-out generated objects: poses from exact and from noisy NOCS maps.

For ``--objects`` object sequences of an unseen seed (reconstruction.procedural.objects,
``--views`` views, ``--image-size`` px), solves the cameras from (a) the exact NOCS maps and
(b) the maps with Gaussian noise (sigma ``--sigma`` NOCS units) and ``--outliers`` of the
object pixels replaced by uniform random coordinates; reports RRA@5/15 (relative rotation
accuracy over all view pairs), CCA@10 (camera centres within 10 % of the scene extent after
the similarity alignment), the median relative rotation error and the solver's time per
object, per category group. ``--co3d`` adds the real-camera convention check (CO3D apple:
its cameras -> NOCS maps rendered by our rasterizer -> the solver). Network-predicted maps
are not benchmarked: the diffusion model is not part of this version. Writes results.json
under --out when given. The last line is ``exact_median_deg=X noisy_median_deg=Y``.

    .venv/bin/python tests/benchmarks/sparp_bench.py --seed 5000
    .venv/bin/python tests/benchmarks/sparp_bench.py --objects 10 --co3d
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from geometry.pose_metrics import accuracy_under, pose_metrics
from pose.camera.sparp.solver import NocsView, SolverConfig, Symmetry, solve_views
from pose.camera.sparp.synthetic import corrupt

CO3D_APPLE = Path(__file__).parents[2].parent / "shared" / "datasets" / "co3d_apple"


def _views(seq) -> list[NocsView]:
    return [NocsView(seq.nocs[v].double().numpy(), seq.masks[v].numpy(),
                     seq.cameras.K[v].double().numpy(), seq.images[v].double().numpy())
            for v in range(seq.num_views)]


def _summary(rel: list[torch.Tensor], cca: list[float], times: list[float]) -> dict:
    errors = torch.cat(rel) if rel else torch.zeros(0)
    rra5, rra15 = (float(v) for v in accuracy_under(errors, (5.0, 15.0)))
    return {"rra5": rra5, "rra15": rra15, "cca10": float(np.mean(cca)),
            "median_deg": float(errors.median()), "mean_deg": float(errors.mean()),
            "time_per_object_s": float(np.mean(times)), "objects": len(cca)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=5000, help="first object seed (unseen)")
    parser.add_argument("--objects", type=int, default=24)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--sigma", type=float, default=0.03)
    parser.add_argument("--outliers", type=float, default=0.3)
    parser.add_argument("--co3d", action="store_true", help="add the CO3D apple check")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from reconstruction.procedural.objects import ObjectSequenceConfig, object_sequences

    console = Console(width=110)
    config = ObjectSequenceConfig(image_size=args.image_size, views=args.views)
    rng = np.random.default_rng(args.seed)
    groups: dict[str, dict[str, list]] = {}
    cfg = SolverConfig(seed=args.seed)
    t_render = time.perf_counter()
    sequences = list(object_sequences(args.seed, args.objects, config))
    t_render = time.perf_counter() - t_render
    for seq in sequences:
        clean = _views(seq)
        noisy = [corrupt(v, args.sigma, args.outliers, rng) for v in clean]
        for mode, views in (("exact", clean), ("noisy", noisy)):
            t0 = time.perf_counter()
            # A network's maps of a symmetric object need the hypotheses; exact maps are
            # exact, so the solver is run without them (they only add time).
            result = solve_views(views, Symmetry(), cfg)
            dt = time.perf_counter() - t0
            m = pose_metrics(torch.from_numpy(result.T_obj_cam), seq.cameras.T_world_cam)
            for key in (f"{mode}/all", f"{mode}/{seq.symmetry}"):
                g = groups.setdefault(key, {"rel": [], "cca": [], "time": []})
                g["rel"].append(m.rel_rot_err_deg)
                g["cca"].append(m.centre_under_10pct)
                g["time"].append(dt)
    results = {key: _summary(g["rel"], g["cca"], g["time"]) for key, g in sorted(groups.items())}

    table = Table(title=f"SpaRP pose stage: {args.objects} objects (seed {args.seed}), "
                        f"{args.views} views, {args.image_size} px; noisy = sigma "
                        f"{args.sigma} + {args.outliers:.0%} outliers")
    for col in ("maps / symmetry", "objects", "RRA@5", "RRA@15", "CCA@10", "median deg",
                "mean deg", "s / object"):
        table.add_column(col)
    for key, r in results.items():
        table.add_row(key, str(r["objects"]), f"{r['rra5']:.3f}", f"{r['rra15']:.3f}",
                      f"{r['cca10']:.3f}", f"{r['median_deg']:.4f}", f"{r['mean_deg']:.3f}",
                      f"{r['time_per_object_s']:.2f}")
    console.print(table)
    console.print(f"rendering the {args.objects} sequences took {t_render:.1f} s "
                  "(not in the per-object time)")
    if args.co3d:
        if not (CO3D_APPLE / "gt_cameras.npz").is_file():
            console.print(f"CO3D apple not found at {CO3D_APPLE}: check skipped")
        else:
            from pose.camera.sparp.co3d_check import run_co3d_check

            check = run_co3d_check(CO3D_APPLE)
            results["co3d_apple"] = {k: v for k, v in check.__dict__.items() if k != "result"}
            console.print(
                f"CO3D apple ({check.views} GT cameras, NOCS maps rendered at "
                f"{check.image_size[0]}x{check.image_size[1]}): median rotation error "
                f"{check.rot_err_median_deg:.3f} deg, relative {check.rel_rot_err_median_deg:.3f}"
                f" deg, RRA@5 {check.rra5:.3f}, CCA@10 {check.cca10:.3f} "
                f"(render {check.render_s:.1f} s, solve {check.solve_s:.1f} s)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"exact_median_deg={results['exact/all']['median_deg']:.6f} "
          f"noisy_median_deg={results['noisy/all']['median_deg']:.4f}")


if __name__ == "__main__":
    main()
