"""SpaRP's pose stage on held-out generated objects: poses from exact and from noisy NOCS maps.

For ``--objects`` object sequences of an unseen seed (reconstruction.procedural.objects,
``--views`` views, ``--image-size`` px), solves the cameras from (a) the exact NOCS maps and
(b) the maps with Gaussian noise (sigma ``--sigma`` NOCS units) and ``--outliers`` of the
object pixels replaced by uniform random coordinates; reports RRA@5/15 (relative rotation
accuracy over all view pairs), CCA@10 (camera centres within 10 % of the scene extent after
the similarity alignment), the median relative rotation error and the solver's time per
object, per category group. ``--co3d`` adds the real-camera convention check on a
synthetic star-shaped object in the CO3D apple's camera rig (its cameras -> NOCS maps
rendered by our rasterizer -> the solver); ``--co3d-splats`` the issue's real-data check
(splats fitted to the apple photos with all ground-truth cameras -> NOCS maps from the
splats -> the solver: :mod:`pose.camera.sparp.co3d_splats`, a few minutes).

``--checkpoint PATH`` (a ``pose sparp-train`` folder) compares, on ``--sets`` 3-view sets of
unseen objects (``--set-seed`` on, plain backdrop), the poses from the model's NOCS maps
(its tile size; DDIM ``--ddim-steps``) with our SfM initialiser's
(:func:`reconstruction.init.sfm.run_sfm`, what ``recon fit`` runs, on the same photos at
``--sfm-size`` px; orbits over ``--span`` degrees of azimuth): the share of sets where SfM
registers all three views, the median relative rotation error of both on those sets, and
the model's where SfM fails (with the share of those sets it solves within 15 and 30
degrees), and the model's median on objects not symmetric about their axis and on those
that are (whose photos cannot fix the cameras' relative azimuths). Symmetric (``axis``)
objects are solved with the symmetry hypotheses. A model trained with the x0-single-step
objective makes one deterministic pass (``--ddim-steps`` is then unused).

Writes results.json under --out when given. The last line is
``exact_median_deg=X noisy_median_deg=Y``.

    .venv/bin/python tests/benchmarks/sparp_bench.py --seed 5000
    .venv/bin/python tests/benchmarks/sparp_bench.py --objects 10 --co3d --co3d-splats
    .venv/bin/python tests/benchmarks/sparp_bench.py --objects 4 --checkpoint CKPT --sets 30
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


def _sfm_poses(photos: np.ndarray, work: Path, seed: int) -> np.ndarray | None:
    """``[V, 4, 4]`` T_world_cam from our SfM initialiser, or None unless all register."""
    from geometry.io.images import write_png
    from reconstruction.images import load_images
    from reconstruction.init.config import SfmConfig
    from reconstruction.init.sfm import run_sfm

    folder = work / "images"
    folder.mkdir(parents=True)
    for k, im in enumerate(photos):
        write_png(folder / f"view_{k}.png", torch.from_numpy(im))
    images = load_images(folder, None)
    try:
        model, _ = run_sfm(images, work / "sfm", SfmConfig(threads=1), seed)
    except Exception as err:  # noqa: BLE001 (any failure is "does not register")
        print(f"  SfM failed: {type(err).__name__}: {str(err)[:80]}")
        return None
    return model.T_world_cam if bool(model.registered.all()) else None


def model_vs_sfm(args, console: Console) -> dict:
    """The trained model against the SfM initialiser on 3-view sets (see the module doc)."""
    import tempfile

    from pose.camera.sparp.data import render_example
    from pose.camera.sparp.predict import predict
    from pose.camera.sparp.train import load_model

    model, record = load_model(args.checkpoint)
    tile = model.config.tile
    # the objects framed as in the model's training data
    distance_range = tuple(record["config"]["data"].get("distance_range", (1.0, 1.4)))
    rows = []
    t_model, t_sfm = [], []
    for k in range(args.sets):
        seed = args.set_seed + k
        ex = render_example(seed, tile, frames=3, image_size=args.sfm_size,
                            azimuth_span_deg=args.span, distance_range=distance_range)
        T_gt = torch.from_numpy(ex.T_world_cam)
        photos = [im.astype(np.float64) for im in ex.images]
        Ks = np.broadcast_to(ex.K, (3, 3, 3))
        t0 = time.perf_counter()
        err_model = float("nan")
        try:
            pred = predict(model, photos, Ks, steps=args.ddim_steps, seed=seed)
            sym = Symmetry.from_tag("axis" if ex.symmetry == "axis" else "none")
            res = solve_views(pred.views, sym, SolverConfig(seed=seed))
            m = pose_metrics(torch.from_numpy(res.T_obj_cam), T_gt)
            err_model = float(m.rel_rot_err_deg.median())
        except Exception as err:  # noqa: BLE001 (a map without a pose counts as failed)
            print(f"  set {seed}: model failed ({str(err)[:80]})")
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="sparp-sfm-") as work:
            T_sfm = _sfm_poses(ex.images, Path(work), seed)
        t2 = time.perf_counter()
        t_model.append(t1 - t0)
        t_sfm.append(t2 - t1)
        err_sfm = float("nan")
        if T_sfm is not None:
            err_sfm = float(pose_metrics(torch.from_numpy(T_sfm), T_gt)
                            .rel_rot_err_deg.median())
        rows.append({"seed": seed, "category": ex.category, "symmetry": ex.symmetry,
                     "sfm_registered": T_sfm is not None, "model_deg": err_model,
                     "sfm_deg": err_sfm})
        sfm_text = f"{err_sfm:.1f} deg" if T_sfm is not None else "not registered"
        print(f"  set {seed} ({ex.category}): model {err_model:.1f} deg, SfM {sfm_text}")

    def med(values: list[float]) -> float:
        v = [x if np.isfinite(x) else 180.0 for x in values]  # failures count as 180 deg
        return float(np.median(v)) if v else float("nan")

    def share_under(values: list[float], deg: float) -> float:
        return float(np.mean([x < deg for x in values])) if values else float("nan")

    reg = [r for r in rows if r["sfm_registered"]]
    failed = [r for r in rows if not r["sfm_registered"]]
    not_axis = [r for r in rows if r["symmetry"] != "axis"]
    out = {
        "checkpoint": str(args.checkpoint), "trained_steps": record.get("step"),
        "trained_minutes": round(float(record.get("elapsed_s", 0.0)) / 60, 2),
        "tile_px": tile, "sfm_px": args.sfm_size, "span_deg": args.span, "sets": len(rows),
        "sfm_registered_share": len(reg) / max(len(rows), 1),
        "sfm_median_deg_where_registered": med([r["sfm_deg"] for r in reg]),
        "model_median_deg_where_sfm_registered": med([r["model_deg"] for r in reg]),
        "model_median_deg_where_sfm_fails": med([r["model_deg"] for r in failed]),
        "model_median_deg_all": med([r["model_deg"] for r in rows]),
        "model_rra15_all": float(np.mean([r["model_deg"] < 15 for r in rows])),
        "model_rra30_all": float(np.mean([r["model_deg"] < 30 for r in rows])),
        # where SfM fails: the share of sets the model solves within 15 / 30 degrees
        "model_rra15_where_sfm_fails": share_under([r["model_deg"] for r in failed], 15),
        "model_rra30_where_sfm_fails": share_under([r["model_deg"] for r in failed], 30),
        # objects symmetric about their axis in shape and texture: the photos do not fix
        # the cameras' relative azimuths (for any method); the others:
        "sets_not_axis": len(not_axis),
        "model_median_deg_not_axis": med([r["model_deg"] for r in not_axis]),
        "model_median_deg_axis": med([r["model_deg"] for r in rows
                                      if r["symmetry"] == "axis"]),
        "model_s_per_set": float(np.mean(t_model)), "sfm_s_per_set": float(np.mean(t_sfm)),
        "rows": rows,
    }
    console.print(
        f"model ({args.checkpoint.name}: {out['trained_steps']} steps, "
        f"{out['trained_minutes']} min, {tile} px tiles) vs SfM ({args.sfm_size} px) on "
        f"{len(rows)} 3-view sets (seeds {args.set_seed}..): SfM registers "
        f"{out['sfm_registered_share']:.0%}; where it does, median relative rotation error "
        f"SfM {out['sfm_median_deg_where_registered']:.2f} deg vs model "
        f"{out['model_median_deg_where_sfm_registered']:.2f} deg; where SfM fails, model "
        f"{out['model_median_deg_where_sfm_fails']:.2f} deg (within 15 deg on "
        f"{out['model_rra15_where_sfm_fails']:.0%} of those sets, within 30 deg on "
        f"{out['model_rra30_where_sfm_fails']:.0%}); model over all "
        f"{out['model_median_deg_all']:.2f} deg (RRA@15 {out['model_rra15_all']:.2f}, RRA@30 "
        f"{out['model_rra30_all']:.2f}; {out['model_median_deg_not_axis']:.2f} deg on the "
        f"{out['sets_not_axis']} sets of objects not symmetric about their axis, "
        f"{out['model_median_deg_axis']:.2f} deg on the others); "
        f"{out['model_s_per_set']:.1f} s model, "
        f"{out['sfm_s_per_set']:.1f} s SfM per set (failed poses count as 180 deg)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=5000, help="first object seed (unseen)")
    parser.add_argument("--objects", type=int, default=24)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--sigma", type=float, default=0.03)
    parser.add_argument("--outliers", type=float, default=0.3)
    parser.add_argument("--co3d", action="store_true",
                        help="add the synthetic-object check in the CO3D apple's camera rig")
    parser.add_argument("--co3d-splats", action="store_true",
                        help="add the CO3D apple check from splats fitted to its photos")
    parser.add_argument("--splat-size", type=int, default=256)
    parser.add_argument("--splat-iterations", type=int, default=500)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a pose sparp-train checkpoint: compare with SfM")
    parser.add_argument("--sets", type=int, default=20)
    parser.add_argument("--set-seed", type=int, default=7000)
    parser.add_argument("--sfm-size", type=int, default=256)
    parser.add_argument("--span", type=float, default=120.0,
                        help="azimuth range of a 3-view set's orbit (degrees)")
    parser.add_argument("--ddim-steps", type=int, default=10)
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
    if args.co3d_splats:
        if not (CO3D_APPLE / "gt_cameras.npz").is_file():
            console.print(f"CO3D apple not found at {CO3D_APPLE}: splat check skipped")
        else:
            from pose.camera.sparp.co3d_splats import run_co3d_splats_check

            check = run_co3d_splats_check(CO3D_APPLE, args.splat_size, args.splat_iterations)
            results["co3d_apple_splats"] = {k: v for k, v in check.__dict__.items()
                                            if k != "result"}
            console.print(
                f"CO3D apple from fitted splats ({check.views} GT cameras fixed, "
                f"{check.image_size[0]}x{check.image_size[1]} px, {check.gaussians} splats, "
                f"{check.foreground_gaussians} in the NOCS box, median "
                f"{check.object_pixels_median:.0f} object px/view): median rotation error "
                f"{check.rot_err_median_deg:.3f} deg, relative "
                f"{check.rel_rot_err_median_deg:.3f} deg, RRA@5 {check.rra5:.3f}, CCA@10 "
                f"{check.cca10:.3f} (fit {check.fit_s:.0f} s, render {check.render_s:.1f} s, "
                f"solve {check.solve_s:.1f} s)")
    if args.checkpoint is not None:
        results["model_vs_sfm"] = model_vs_sfm(args, console)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"exact_median_deg={results['exact/all']['median_deg']:.6f} "
          f"noisy_median_deg={results['noisy/all']['median_deg']:.4f}")


if __name__ == "__main__":
    main()
