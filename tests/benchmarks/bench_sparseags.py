"""SparseAGS pose refinement: pose accuracy before and after, with and without outlier
correction, from perturbed ground truth and from our SfM initialiser.

    python tests/benchmarks/bench_sparseags.py [--datasets co3d_apple dtu_scan24 generated]
        [--rows sparseags no-correction joint-only sfm aden polish-study] [--views 8]
        [--max-size 128] [--threads 2] [--rotation-noise 10] [--turn 90] [--turned-view 3]
        [--seed 0] [--lpips PATH --lpips-backbone PATH] [--co3d-masks DIR] [--no-matches]
        [--no-polish] [--landscape] [--aden-checkpoint CK] [--aden-select argmax|mean]
        [--out DIR]

Cases (each skipped when its data is absent):

- ``co3d_apple`` (../shared/datasets/co3d_apple: 20 photos, CO3D ground-truth cameras, no
  masks; ``--co3d-masks DIR`` gives object masks named like the photos, e.g. CO3D's own):
  ``--views`` frames evenly spaced over the sequence;
- ``dtu_scan24`` (../shared/datasets/dtu_scan24: 49 photos, IDR cameras, no masks):
  ``--views`` photos evenly spaced over the 49;
- ``generated``: a procedural orbit scene (objects on a ground plane, masks of the objects),
  ``--views`` cameras over 300 degrees.

Rows:

- ``sparseags``: every camera's rotation perturbed by ``--rotation-noise`` degrees about a
  random axis (seeded), and view ``--turned-view`` orbited by ``--turn`` degrees about the
  object (about the scene's up through the point nearest to the optical axes), then
  :func:`pose.camera.sparseags.run_sparseags` with the default options;
- ``no-correction``: the same start, outlier detection on but correction off (the paper's
  ablation: flagged views are left out of the final reconstruction and keep their poses);
- ``joint-only``: the same start, joint refinement only (no outlier detection): the
  Gaussian trainer's joint optimisation that ``recon fit`` runs, for the issue's
  comparison (a view turned by 90 degrees stays far off);
- ``sfm``: starting from our SfM initialiser (``sfm-sparse``) on the same photos.
- ``aden``: starting from ADen's cameras of the same photos (``--aden-checkpoint CK``, a
  ``pose aden train`` checkpoint; its assumed intrinsics, as ``pose aden predict`` writes
  them); also prints ADen's time for the set.
- ``polish-study``: no SparseAGS run; the final polish on the matches alone, from SfM's
  cameras and from the true ones, with SfM's intrinsics and with the true ones, then
  untrimmed, on an oracle's matches and trimmed: where the matches' optimum lies.

Every row adds the photos' feature matches (the epipolar terms, see
:mod:`pose.camera.sparseags.matches`; matched once per case, the matching time added to each
row's) unless ``--no-matches`` (render-and-compare only, as the paper).

Printed per row: relative rotation accuracy at 5 and 15 degrees (RRA, all view pairs),
camera-centre accuracy at 0.1 of the true centres' diameter (CCA, after a similarity
alignment), the mean rotation error after that alignment, the turned view's rotation error
(after alignment), before -> after, the views flagged and corrected, and wall time. Nothing
is written unless ``--out`` is given (one JSON file of all rows).

``--landscape`` prints, per case and before the rows, what analysis by synthesis can see: the
Gaussians fitted to every view but ``--turned-view`` at the true poses (poses fixed), then the
held-out view's score (the one outlier detection and correction rank by) at its true pose
turned by -20 ... 20 degrees about three random axes. Render-and-compare can only find the
true pose where the minimum sits at 0 degrees.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------- cases


def _evenly_spaced(cams, views: int, max_size: int):
    """``(loaded photos, cameras_gt)`` of ``views`` of the cameras ``cams`` (with image
    files) evenly spaced over them, photos at most ``max_size`` pixels, intrinsics scaled
    to them."""
    import torch

    from geometry.cameras import Cameras
    from reconstruction.images import load_image

    rows = np.linspace(0, len(cams) - 1, views).round().astype(int).tolist()
    loaded = [load_image(cams.image_paths[k], max_size, background=(0.0, 0.0, 0.0))
              for k in rows]
    K = cams.K[rows].clone()
    for i, (k, im) in enumerate(zip(rows, loaded, strict=True)):
        K[i, 0] *= im.width / int(cams.width[k])
        K[i, 1] *= im.height / int(cams.height[k])
    gt = Cameras(K=K, T_world_cam=cams.T_world_cam[rows],
                 width=torch.tensor([im.width for im in loaded]),
                 height=torch.tensor([im.height for im in loaded]),
                 names=[cams.names[k] for k in rows])
    return loaded, gt


def co3d_case(views: int, max_size: int, masks_dir: Path | None = None):
    """``(images, masks, cameras_gt, loaded)`` of ``views`` CO3D apple frames evenly spaced
    over the sequence (None when the data is absent); masks from ``masks_dir`` (the file
    with each photo's stem), else None."""
    import torch

    from geometry.io.co3d import read_co3d

    folder = DATASETS / "co3d_apple"
    if not (folder / "gt_cameras.npz").is_file():
        return None
    cams = read_co3d(folder, dtype=torch.float64)
    loaded, gt = _evenly_spaced(cams, views, max_size)
    masks = None
    if masks_dir is not None:
        from pose.camera.sparseags.run import _MASK_SUFFIXES, load_masks

        with tempfile.TemporaryDirectory(prefix="bench-sparseags-masks-") as tmp:
            for im in loaded:  # the chosen frames' masks only (load_masks wants one per photo)
                found = [masks_dir / f"{im.path.stem}{suffix}" for suffix in _MASK_SUFFIXES
                         if (masks_dir / f"{im.path.stem}{suffix}").is_file()]
                if found:
                    (Path(tmp) / found[0].name).symlink_to(found[0].resolve())
            masks = load_masks(Path(tmp), loaded)
    return [im.rgb for im in loaded], masks, gt, loaded


def dtu_case(views: int, max_size: int):
    """``(images, None, cameras_gt, loaded)`` of ``views`` DTU scan 24 photos evenly spaced
    over its 49 (None when the data is absent)."""
    import torch

    from geometry.io.idr import read_idr

    folder = DATASETS / "dtu_scan24"
    if not (folder / "cameras.npz").is_file():
        return None
    loaded, gt = _evenly_spaced(read_idr(folder, dtype=torch.float64).cameras, views,
                                max_size)
    return [im.rgb for im in loaded], None, gt, loaded


def generated_case(views: int, max_size: int, seed: int):
    """A procedural orbit scene: ``(images, masks, cameras_gt, None)``."""
    import torch

    from reconstruction.procedural import SceneConfig, render

    width = max_size
    height = round(max_size * 0.75)
    scene = render(SceneConfig(kind="orbit", num_views=views, width=width, height=height,
                               arc_deg=300.0, seed=seed, supersample=2))
    images = [torch.from_numpy(im).float() / 255.0 for im in scene.images]
    masks = [torch.from_numpy(m).float() for m in scene.masks]
    from geometry.cameras import Cameras

    c = scene.cameras
    cams = Cameras(K=c.K, T_world_cam=c.T_world_cam, width=c.width, height=c.height,
                   names=[f"{k:03d}.png" for k in range(views)])
    return images, masks, cams, None


# ---------------------------------------------------------------------------- start poses


def perturbed(cameras, rotation_noise_deg: float, turn_deg: float, turned: int, seed: int):
    """Cameras with every rotation turned by ``rotation_noise_deg`` about a random axis
    (about its own centre) and view ``turned`` orbited by ``turn_deg`` about the object."""
    import torch

    from geometry.cameras import Cameras
    from geometry.so3 import axis_angle_to_matrix
    from pose.camera.sparseags.correction import up_direction
    from pose.camera.sparseags.pipeline import normalisation

    T = cameras.T_world_cam.detach().double().clone()
    gen = torch.Generator().manual_seed(seed)
    axes = torch.nn.functional.normalize(torch.randn(len(T), 3, generator=gen,
                                                     dtype=torch.float64), dim=-1)
    R_noise = axis_angle_to_matrix(axes * math.radians(rotation_noise_deg))
    T[:, :3, :3] = R_noise @ T[:, :3, :3]
    if turn_deg:
        centre, _ = normalisation(cameras.T_world_cam)
        up = up_direction(cameras)
        R_turn = axis_angle_to_matrix(up * math.radians(turn_deg))
        T[turned, :3, :3] = R_turn @ T[turned, :3, :3]
        T[turned, :3, 3] = centre + R_turn @ (T[turned, :3, 3] - centre)
    return Cameras(K=cameras.K, T_world_cam=T, width=cameras.width, height=cameras.height,
                   names=cameras.names)


def landscape(images, masks, gt, held_out: int, seed: int, lpips=None,
              degrees=(-20, -10, -5, -2, 0, 2, 5, 10, 20)) -> list[list[float]]:
    """Score of view ``held_out`` at its true pose turned by ``degrees`` about three random
    axes, rendered by Gaussians fitted to the other views at their true poses."""
    import torch

    from geometry.so3 import axis_angle_to_matrix
    from pose.camera.sparseags import SparseAGSConfig
    from pose.camera.sparseags.joint import Views, fit_joint
    from pose.camera.sparseags.outliers import ViewScorer
    from pose.camera.sparseags.pipeline import _to_normalised, normalisation

    config = SparseAGSConfig(seed=seed)
    centre, scale = normalisation(gt.T_world_cam)
    T = _to_normalised(gt.T_world_cam, centre, scale)
    photos = [im.float() if masks is None else im.float() * m[..., None]
              for im, m in zip(images, masks or [None] * len(images), strict=True)]
    views = Views(images=photos, masks=masks, Ks=gt.K.double(), names=list(gt.names))
    rows = [k for k in range(len(views)) if k != held_out]
    model = fit_joint(views, T, config.joint, seed=seed, rows=rows,
                      optimise_poses=False).model(views)
    scorer = ViewScorer(config.outliers, lpips)
    gen = torch.Generator().manual_seed(seed + 17)
    table = []
    for _ in range(3):
        axis = torch.nn.functional.normalize(torch.randn(3, generator=gen,
                                                         dtype=torch.float64), dim=0)
        row = []
        for deg in degrees:
            T_k = T[held_out].clone()
            T_k[:3, :3] = axis_angle_to_matrix(axis * math.radians(deg)) @ T_k[:3, :3]
            row.append(scorer.render_and_score(model, views, held_out, T_k)["score"])
        table.append(row)
    return table


def print_landscape(case: str, table: list[list[float]], held_out: int,
                    degrees=(-20, -10, -5, -2, 0, 2, 5, 10, 20)) -> int:
    """Print the table; returns on how many axes the minimum is at 0 degrees."""
    print(f"{case}: score of view {held_out} (held out) at its true pose turned about three "
          "random axes, Gaussians fitted to the other views at their true poses:")
    print("  degrees " + " ".join(f"{d:>6d}" for d in degrees))
    centred = 0
    for i, row in enumerate(table):
        best = degrees[min(range(len(row)), key=row.__getitem__)]
        centred += best == 0
        print(f"  axis {i}  " + " ".join(f"{v:6.3f}" for v in row) + f"   minimum at {best} deg")
    print(f"{case}: minimum at the true pose on {centred} of {len(table)} axes", flush=True)
    return centred


def sfm_start(loaded, cameras_gt, seed: int):
    """Our SfM initialiser's cameras of the photos (None where it fails)."""
    import tempfile

    import torch

    from geometry.cameras import Cameras
    from geometry.errors import UserError
    from geometry.se3 import invert_T
    from reconstruction.init.config import InitConfig
    from reconstruction.init.registry import INITIALISERS

    with tempfile.TemporaryDirectory(prefix="bench-sparseags-sfm-") as work:
        try:
            model = INITIALISERS["sfm-sparse"](loaded, Path(work), InitConfig(), seed).model
        except UserError as err:
            print(f"  SfM failed: {err}")
            return None
    return Cameras(K=torch.from_numpy(model.Ks).double(),
                   T_world_cam=invert_T(torch.from_numpy(model.T_cam_world).double()),
                   width=cameras_gt.width, height=cameras_gt.height, names=cameras_gt.names)


def aden_start(images, cameras_gt, estimator):
    """``(cameras, seconds)``: the cameras of the photos by ``estimator`` (an
    :class:`~pose.camera.aden.predict.AdenEstimator`: what ``pose aden predict`` writes)
    and the time it took."""
    from geometry.cameras import Cameras

    estimator.estimate(images[:2])  # warm up
    t0 = time.perf_counter()
    cams = estimator.estimate(images).cameras
    seconds = time.perf_counter() - t0
    return Cameras(K=cams.K.clone(), T_world_cam=cams.T_world_cam, width=cams.width,
                   height=cams.height, names=cameras_gt.names), seconds


# ---------------------------------------------------------------------------- metrics


def measure(T_est, T_gt, turned: int | None) -> dict:
    """RRA@5/15, CCA@0.1, mean aligned rotation error and the turned view's."""
    from geometry.pose_metrics import camera_centre_accuracy, pose_metrics

    m = pose_metrics(T_est, T_gt)
    out = {"rra5": m.rel_rot_under_5, "rra15": m.rel_rot_under_15,
           "cca10": float(camera_centre_accuracy(T_est, T_gt, (0.1,))[0]),
           "rot_mean": m.rot_err_mean_deg, "rot_per_view": [round(float(v), 2)
                                                            for v in m.rot_err_deg]}
    if turned is not None:
        out["turned"] = float(m.rot_err_deg[turned])
    return out


def case_matches(images, loaded, config, threads: int):
    """``(matches, seconds)``: the photos' feature matches (``loaded`` reloads them at the
    matching size; without files the images themselves are matched)."""
    from pose.camera.sparseags.matches import find_matches
    from reconstruction.images import LoadedImage

    if loaded is None:
        loaded = [LoadedImage(path=Path(f"{k:03d}.png"), rgb=im.float(), focal_px=None,
                              camera_key=()) for k, im in enumerate(images)]
    t0 = time.perf_counter()
    matches = find_matches(loaded, config, threads=threads)
    return matches, time.perf_counter() - t0


def run_row(name: str, images, masks, start, gt, turned, config, lpips,
            matches=None, match_seconds: float = 0.0) -> dict:
    from pose.camera.sparseags import run_sparseags

    before = measure(start.T_world_cam, gt.T_world_cam, turned)
    t0 = time.perf_counter()
    result = run_sparseags(images, start, config, masks=masks, lpips=lpips,
                           log=lambda line: print(f"    {line}", flush=True), matches=matches)
    seconds = time.perf_counter() - t0 + match_seconds
    after = measure(result.cameras.T_world_cam, gt.T_world_cam, turned)
    flagged = [k for k, v in enumerate(result.views) if v.flagged]
    corrected = [k for k, v in enumerate(result.views) if v.corrected]
    return {"row": name, "before": before, "after": after, "flagged": flagged,
            "corrected": corrected, "seconds": seconds, "timings_s": result.timings_s,
            "perceptual": result.perceptual_kind}


def polish_study(case: str, matches, sfm, gt) -> None:
    """Where the matches' optimum lies. Prints the mean rotation error after the final
    polish on the matches alone (as SparseAGS runs it: trimmed) from SfM's and the true
    cameras, each with SfM's and the true intrinsics, and the matches' cost there; then,
    from SfM's cameras with SfM's intrinsics, the polish untrimmed on all the matches, on
    only those under 0.5 px at the true cameras (an oracle), and trimmed; and how many
    matches lie under 0.5 px at the true cameras and at the untrimmed polish's poses."""
    from geometry.se3 import invert_T
    from pose.camera.sparseags import SparseAGSConfig
    from pose.camera.sparseags.matches import _pairs_cost, _within, polish_poses

    if sfm is None:
        return
    sigma_scale = SparseAGSConfig().joint.epipolar_sigma
    rows = list(range(len(gt.names)))
    pairs = matches.subset(rows)
    for start_name, start in (("SfM", sfm), ("true", gt)):
        start_rot = measure(start.T_world_cam, gt.T_world_cam, None)["rot_mean"]
        for k_name, K in (("SfM", sfm.K), ("true", gt.K)):
            T = polish_poses(matches, K, start.T_world_cam, rows, sigma_scale)
            cost = float(_pairs_cost(pairs, K.double(), invert_T(T), matches.sigma_px(sigma_scale)))
            m = measure(T, gt.T_world_cam, None)
            print(f"{case:11s} polish from {start_name:4s} cameras, {k_name:4s} intrinsics: "
                  f"rot {start_rot:5.2f} -> {m['rot_mean']:5.2f} deg, matches' cost "
                  f"{cost:.4f}", flush=True)
    K = sfm.K

    def under(T_world_cam, pixels: float, intrinsics=K):
        return _within(matches, intrinsics.double(), invert_T(T_world_cam.double()), pixels)

    converged = polish_poses(matches, K, sfm.T_world_cam, rows, sigma_scale, trim=())
    oracle = under(gt.T_world_cam, 0.5, gt.K)
    clean = polish_poses(oracle, K, sfm.T_world_cam, rows, sigma_scale, trim=())
    trimmed = polish_poses(matches, K, sfm.T_world_cam, rows, sigma_scale)
    sfm_rot = measure(sfm.T_world_cam, gt.T_world_cam, None)["rot_mean"]
    for name, T in (("all matches, untrimmed", converged),
                    ("matches under 0.5 px at the truth, untrimmed", clean),
                    ("trimmed (the default)", trimmed)):
        m = measure(T, gt.T_world_cam, None)
        print(f"{case:11s} polish from SfM cameras, {name}: rot {sfm_rot:5.2f} -> "
              f"{m['rot_mean']:5.2f} deg, per view {m['rot_per_view']}", flush=True)
    print(f"{case:11s} matches under 0.5 px: {len(oracle)} of {len(matches)} at the true "
          f"cameras, {len(under(converged, 0.5))} at the untrimmed polish's poses",
          flush=True)


def print_row(case: str, r: dict) -> None:
    b, a = r["before"], r["after"]

    def pct(key: str) -> str:
        return f"{100 * b[key]:5.1f} -> {100 * a[key]:5.1f}"

    turned = f"{b['turned']:6.1f} -> {a['turned']:6.1f}" if "turned" in b else "      -"
    print(f"{case:11s} {r['row']:14s} RRA@5 {pct('rra5')}  RRA@15 {pct('rra15')}  "
          f"CCA@0.1 {pct('cca10')}  rot {b['rot_mean']:6.2f} -> {a['rot_mean']:6.2f} deg  "
          f"turned {turned} deg  flagged {r['flagged']} corrected {r['corrected']}  "
          f"{r['seconds']:6.0f} s", flush=True)
    print(f"{'':11s} {'':14s} per-view rotation error after: {a['rot_per_view']}", flush=True)


def main() -> None:
    from pose.camera.aden.model import SELECTIONS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["co3d_apple", "generated"],
                        choices=["co3d_apple", "dtu_scan24", "generated"])
    parser.add_argument("--rows", nargs="*", default=["sparseags", "no-correction", "sfm"],
                        choices=["sparseags", "no-correction", "joint-only", "sfm", "aden",
                                 "polish-study"])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--max-size", type=int, default=128,
                        help="longest image side in pixels")
    parser.add_argument("--rotation-noise", type=float, default=10.0)
    parser.add_argument("--turn", type=float, default=90.0)
    parser.add_argument("--turned-view", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lpips", type=Path, default=None,
                        help="LPIPS weights (else 1 - SSIM ranks and scores)")
    parser.add_argument("--lpips-backbone", type=Path, default=None)
    parser.add_argument("--co3d-masks", type=Path, default=None,
                        help="object masks of the CO3D photos (named like them)")
    parser.add_argument("--no-matches", action="store_true",
                        help="render-and-compare only (no feature matches, as the paper)")
    parser.add_argument("--no-polish", action="store_true",
                        help="skip the final polish of the poses on the matches")
    parser.add_argument("--landscape", action="store_true",
                        help="print the held-out view's score around its true pose first")
    parser.add_argument("--aden-checkpoint", type=Path, default=None,
                        help="a pose aden train checkpoint: the aden row starts from its "
                             "cameras")
    parser.add_argument("--aden-select", choices=SELECTIONS, default="argmax",
                        help="how ADen picks its pose (pose aden predict --select)")
    parser.add_argument("--out", type=Path, default=None, help="write all rows as JSON here")
    args = parser.parse_args()
    if "aden" in args.rows and args.aden_checkpoint is None:
        parser.exit(2, "error: the aden row needs --aden-checkpoint CK\n")

    import torch

    aden = None
    if "aden" in args.rows:  # loaded once for every case
        from pose.camera.aden.predict import AdenEstimator

        aden = AdenEstimator(args.aden_checkpoint, seed=args.seed, select=args.aden_select)

    from pose.camera.sparseags import SparseAGSConfig

    torch.set_num_threads(args.threads)
    lpips = None
    if args.lpips is not None:
        from reconstruction.eval.lpips import load_lpips

        lpips = load_lpips(args.lpips, args.lpips_backbone)
    print(f"SparseAGS benchmark: {args.views} views, max size {args.max_size} px, "
          f"{args.threads} threads, rotation noise {args.rotation_noise} deg, view "
          f"{args.turned_view} turned {args.turn} deg, seed {args.seed}", flush=True)
    rows = []
    t_all = time.perf_counter()
    for case_name in args.datasets:
        if case_name == "co3d_apple":
            case = co3d_case(args.views, args.max_size, args.co3d_masks)
        elif case_name == "dtu_scan24":
            case = dtu_case(args.views, args.max_size)
        else:
            case = generated_case(args.views, args.max_size, args.seed)
        if case is None:
            print(f"{case_name}: skipped ({DATASETS / case_name} is absent)")
            continue
        images, masks, gt, loaded = case
        if args.landscape:
            table = landscape(images, masks, gt, args.turned_view, args.seed, lpips)
            rows.append({"case": case_name, "row": "landscape", "scores": table,
                         "centred_axes": print_landscape(case_name, table, args.turned_view)})
        start = perturbed(gt, args.rotation_noise, args.turn, args.turned_view, args.seed)
        matches, match_seconds = None, 0.0
        if not args.no_matches:
            matches, match_seconds = case_matches(images, loaded, SparseAGSConfig().matching,
                                                  args.threads)
            print(f"{case_name}: {len(matches)} feature matches over {len(matches.pairs)} "
                  f"view pairs in {match_seconds:.0f} s (counted in every row's time)",
                  flush=True)
            if not matches.pairs:
                matches = None
        # Our SfM initialiser's cameras, run once for every row that starts from them.
        sfm = (sfm_start(loaded, gt, args.seed)
               if loaded is not None and {"sfm", "polish-study"} & set(args.rows) else None)
        for row in args.rows:
            config = SparseAGSConfig(seed=args.seed)
            if args.no_polish:
                config.matching.polish_iterations = 0
            initial, turned = start, args.turned_view
            if row == "no-correction":
                config.outliers.correct = False
            elif row == "joint-only":
                config.outliers.detect = False
            elif row == "sfm":
                if loaded is None:
                    print(f"{case_name:11s} sfm: skipped (no photo files to run SfM on)")
                    continue
                initial, turned = sfm, None
                if initial is None:
                    continue
            elif row == "aden":
                initial, aden_seconds = aden_start(images, gt, aden)
                turned = None
                print(f"{case_name:11s} aden: {len(images)} cameras in {aden_seconds:.2f} s "
                      f"(--select {args.aden_select})", flush=True)
            if row == "polish-study":
                if loaded is None or matches is None:
                    print(f"{case_name:11s} polish-study: skipped (needs photo files and matches)")
                    continue
                polish_study(case_name, matches, sfm, gt)
                continue
            print(f"{case_name}: {row} ...", flush=True)
            result = run_row(row, images, masks, initial, gt, turned, config, lpips,
                             matches, match_seconds)
            result["case"] = case_name
            rows.append(result)
            print_row(case_name, result)
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_sparseags.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
