"""What ``pose sparp`` does: check the inputs, get the NOCS maps (given with ``--nocs``, or
sampled from a ``pose sparp-train`` model with ``--checkpoint``), solve the poses, write
the outputs (with a model also the six generated views and the splats of the 3D stage).

Every input problem a user can cause is found before any output is written and raised as a
one-sentence :class:`~geometry.errors.UserError` (exit 2): a missing NOCS folder or
checkpoint, a photo without a map or a map without a photo, an unreadable map or photo, a
map of another aspect ratio than its photo, a map without enough object pixels, no pose
fitting a map, more than 6 photos for the model. Outputs (the folder appears complete or
not at all)::

    OUT/transforms.json   solved cameras (nerfstudio; file paths into OUT/images)
    OUT/cameras/          the same cameras as a COLMAP text model (no points)
    OUT/images/           the photos
    OUT/nocs/             the NOCS maps as PNG images (RGB = NOCS * 255, black: background;
                          the model's at its tile size)
    OUT/generated/        (--checkpoint) the six novel views (PNG with the object mask as
                          alpha) and their cameras (transforms.json, the output's frame)
    OUT/splats.ply        (--checkpoint) splats fitted to the inputs at their solved poses
                          and the generated views at theirs (:mod:`.splats`)
    OUT/poses.json        per view: inliers, reprojection error, symmetry hypothesis,
                          T_world_cam and T_obj_cam; the frame, units and options; the
                          model, generated views, SparseAGS refinement and splats records
    OUT/.pose-sparp       the marker of an output of this command
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geometry.errors import UserError

if TYPE_CHECKING:
    from pose.camera.sparp.cli import SpaRPCommand
    from reconstruction.images import LoadedImage

#: The file in every output of ``pose sparp`` that marks it as one.
OUTPUT_MARKER = ".pose-sparp"
NOCS_SUFFIXES = (".png", ".npy", ".exr", ".tif", ".tiff")


def read_nocs_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One NOCS map: ``nocs [H, W, 3]`` float64 in [0, 1] and ``mask [H, W]`` bool.

    PNG/TIFF (8 or 16 bit): RGB = NOCS * (2^bits - 1), black (or alpha 0) = background.
    ``.npy`` / ``.exr``: float ``[H, W, 3]`` (EXR channels as RGB), zeros or NaN =
    background.

    Raises:
        UserError: an unreadable file, another shape, values outside [0, 1].
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
            import cv2

            array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if array is None:
                raise ValueError("not an image OpenCV can decode")
    except (ValueError, OSError) as err:
        raise UserError(f"cannot read the NOCS map {path} ({err}); give a PNG (RGB = NOCS * "
                        "255) or a .npy float [H, W, 3] map.") from None
    if array.ndim != 3 or array.shape[2] not in ((3,) if suffix == ".npy" else (3, 4)):
        raise UserError(f"the NOCS map {path} has shape {list(array.shape)}, not an "
                        "[H, W, 3] colour image; give one 3-channel map per photo.")
    mask = None
    if suffix != ".npy":
        if array.shape[2] == 4:
            mask = array[..., 3] > 0
        array = array[..., 2::-1]  # OpenCV's BGR(A) -> RGB
        if np.issubdtype(array.dtype, np.integer):
            array = array.astype(np.float64) / float(np.iinfo(array.dtype).max)
    nocs = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(nocs).all(-1)
    nocs = np.where(finite[..., None], nocs, 0.0)
    valid = finite & (nocs > 0).any(-1)
    mask = valid if mask is None else (mask & finite)
    if bool(((nocs[mask] < -0.01) | (nocs[mask] > 1.01)).any()):
        raise UserError(f"the NOCS map {path} holds values outside [0, 1]; NOCS coordinates "
                        "lie in the unit cube.")
    return np.clip(nocs, 0.0, 1.0), mask


def find_nocs_maps(folder: Path, images: list[LoadedImage]) -> list[Path]:
    """The NOCS map of every photo (same stem), in the photos' order.

    Raises:
        UserError: no such folder, a photo without a map, maps without a photo.
    """
    from reconstruction.images import files_per_photo

    return files_per_photo(folder, images, NOCS_SUFFIXES, "NOCS map", "--nocs")


def _intrinsics(cmd: SpaRPCommand, images: list[LoadedImage]) -> np.ndarray:
    """``[V, 3, 3]`` intrinsics of the photos at their loaded sizes."""
    import torch

    from pose.camera.sparp.solver import intrinsics_from_fov

    if cmd.intrinsics is None:
        return np.stack([intrinsics_from_fov(im.width, im.height, cmd.fov_deg)
                         for im in images])
    from geometry.io import read_cameras
    from pose.camera.sparseags.run import match_cameras

    if not cmd.intrinsics.exists():
        raise UserError(f"--intrinsics {cmd.intrinsics} does not exist; give a transforms.json "
                        "or COLMAP model of the photos.")
    cams = match_cameras(read_cameras(cmd.intrinsics, dtype=torch.float64,
                                      require_images=False), images, cmd.intrinsics)
    if cams.dist is not None and bool((cams.dist != 0).any()):
        raise UserError(f"--intrinsics {cmd.intrinsics} has lens distortion; undistort the "
                        "photos and NOCS maps first (the solver assumes pinhole cameras).")
    return cams.K.numpy()


def _resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    img = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR)) / 255.0


def load_views(cmd: SpaRPCommand, images: list[LoadedImage]):
    """The :class:`~pose.camera.sparp.solver.NocsView` of every photo (maps checked)."""
    from pose.camera.sparp.solver import NocsView

    assert cmd.nocs is not None
    paths = find_nocs_maps(cmd.nocs, images)
    Ks = _intrinsics(cmd, images)
    views = []
    min_points = max(cmd.solver.min_points, 6)
    for im, path, K in zip(images, paths, Ks, strict=True):
        nocs, mask = read_nocs_map(path)
        h, w = mask.shape
        if abs(w / h - im.width / im.height) > 0.01 * im.width / im.height:
            raise UserError(f"the NOCS map {path.name} is {w}x{h} but its photo "
                            f"{im.path.name} is {im.width}x{im.height} (another aspect "
                            "ratio); give maps of the photos' size.")
        if int(mask.sum()) < min_points:
            raise UserError(f"the NOCS map {path.name} has {int(mask.sum())} object pixels; "
                            f"at least {min_points} are needed to solve its camera.")
        scale = np.diag([w / im.width, h / im.height, 1.0])
        rgb = _resize_rgb(im.rgb.numpy().astype(np.float64), w, h)
        views.append(NocsView(nocs=nocs, mask=mask, K=scale @ K, rgb=rgb))
    return views, paths, Ks


def _check_options(cmd: SpaRPCommand) -> None:
    from geometry.device import check_device
    from geometry.io.atomic import check_output_folder, check_replaceable
    from pose.camera.sparp.solver import Symmetry

    check_device(cmd.device)
    if cmd.nocs is None:
        if cmd.checkpoint is None:
            raise UserError("predicting NOCS maps needs SpaRP's diffusion model: pass its "
                            "--checkpoint, or give the NOCS maps with --nocs DIR.")
        if not cmd.checkpoint.exists():
            raise UserError(f"--checkpoint {cmd.checkpoint} does not exist; give the folder "
                            "written by 'pose sparp-train'.")
    if cmd.steps < 1:
        raise UserError(f"--steps {cmd.steps} must be at least 1.")
    check_output_folder(cmd.out)
    check_replaceable(cmd.out, OUTPUT_MARKER, cmd.overwrite)
    out = cmd.out.resolve()
    folders = [("image", cmd.images)] + ([("NOCS", cmd.nocs)] if cmd.nocs is not None else [])
    for option, folder in folders:
        src = folder.resolve()
        if out == src or src in out.parents or out in src.parents:
            raise UserError(f"--out {cmd.out} overlaps the {option} folder {folder}; write "
                            "the outputs somewhere else.")
    Symmetry.from_tag(cmd.symmetry)


def _predict(cmd: SpaRPCommand, images: list[LoadedImage]):
    """The model's NOCS maps (and novel views) of the photos, and the photos' intrinsics."""
    from geometry.progress import log_stage
    from pose.camera.sparp.predict import predict
    from pose.camera.sparp.train import load_model

    if len(images) > 6:
        raise UserError(f"{cmd.images} has {len(images)} photos; SpaRP's model takes 2 to 6 "
                        "(or give NOCS maps with --nocs).")
    Ks = _intrinsics(cmd, images)
    model, _ = load_model(cmd.checkpoint, cmd.device)
    log_stage(f"sampling the NOCS maps{' and six novel views' if cmd.novel_views else ''} "
              f"({cmd.steps} DDIM steps, {model.config.tile} px tiles)…", cmd.quiet)
    prediction = predict(model, [im.rgb.numpy() for im in images], Ks, steps=cmd.steps,
                         seed=cmd.seed, novel_views=cmd.novel_views)
    return prediction, Ks


def _refine(cmd: SpaRPCommand, prediction, views, T_world_cam: np.ndarray,
            T_world_novel: np.ndarray | None):
    """SparseAGS on the input tiles (with their predicted masks) and the generated views:
    the refined input and generated cameras (re-anchored on the first input with --frame
    first) and what poses.json records."""
    import torch

    from geometry.cameras import Cameras
    from geometry.pose_metrics import rotation_angle_deg
    from geometry.progress import log_stage
    from pose.camera.sparseags import SparseAGSConfig, SparseAGSRefiner

    rgbs = [v.rgb for v in views]
    masks = [v.mask for v in views]
    Ks = [v.K for v in views]
    Ts = list(T_world_cam)
    if T_world_novel is not None:
        rgbs += list(prediction.generated)
        masks += list(prediction.generated_masks)
        Ks += [views[0].K] * len(T_world_novel)
        Ts += list(T_world_novel)
    if len(rgbs) < 3:
        raise UserError("--refine needs at least 3 views (SparseAGS); give 3 or more photos "
                        "or keep --novel-views.")
    log_stage(f"refining {len(rgbs)} cameras with SparseAGS…", cmd.quiet)
    initial = Cameras(K=torch.from_numpy(np.stack(Ks)), T_world_cam=torch.from_numpy(np.stack(Ts)),
                      width=torch.tensor([r.shape[1] for r in rgbs]),
                      height=torch.tensor([r.shape[0] for r in rgbs]))
    refiner = SparseAGSRefiner(SparseAGSConfig(seed=cmd.seed), device=cmd.device)
    result = refiner.estimate([torch.from_numpy(np.asarray(r, np.float32)) for r in rgbs],
                              masks=[torch.from_numpy(m) for m in masks], initial=initial)
    T = result.cameras.T_world_cam.detach().double().cpu().numpy()
    if cmd.frame == "first":
        T = np.linalg.inv(T[0]) @ T
    k = len(views)
    change = rotation_angle_deg(torch.from_numpy(T[:k, :3, :3]),
                                torch.from_numpy(np.stack(Ts)[:k, :3, :3]))
    record = {"method": "SparseAGS", "views": len(rgbs),
              "input_rotation_change_deg": [round(float(c), 4) for c in change],
              "confidence": [round(float(c), 4) for c in result.confidence]}
    return T[:k], (T[k:] if T_world_novel is not None else None), record


def _write_generated(tmp: Path, prediction, T_world_novel: np.ndarray, K_tile: np.ndarray,
                     record: dict) -> None:
    """OUT/generated/: the six novel views (PNG, object masks as alpha) and their cameras
    (transforms.json in the output's world frame)."""
    import torch

    from geometry.cameras import Cameras
    from geometry.io.images import write_png
    from geometry.io.transforms_json import write_transforms_json

    folder = tmp / "generated"
    folder.mkdir()
    names = [f"view_{k}.png" for k in range(len(T_world_novel))]
    for name, rgb, mask in zip(names, prediction.generated, prediction.generated_masks,
                               strict=True):
        rgba = np.concatenate((rgb, mask[..., None].astype(rgb.dtype)), -1)
        write_png(folder / name, torch.from_numpy(rgba))
    t = int(prediction.generated.shape[1])
    cams = Cameras(K=torch.from_numpy(np.broadcast_to(K_tile, (6, 3, 3)).copy()),
                   T_world_cam=torch.from_numpy(T_world_novel), width=t, height=t,
                   names=list(names))
    write_transforms_json(folder / "transforms.json", cams, file_paths=names)
    record["generated"] = [{"image": f"generated/{n}", "T_world_cam": T.tolist()}
                           for n, T in zip(names, T_world_novel, strict=True)]


def _fit_splats(cmd: SpaRPCommand, tmp: Path, prediction, views, T_world_cam: np.ndarray,
                T_world_obj: np.ndarray, T_world_novel: np.ndarray | None,
                record: dict) -> None:
    """OUT/splats.ply (and OUT/splats_fit/metrics.json): SpaRP's 3D stage."""
    import shutil

    from geometry.progress import log_stage
    from pose.camera.sparp.splats import fit_object_splats

    log_stage(f"fitting splats to {len(views)} inputs"
              f"{' + 6 generated views' if T_world_novel is not None else ''} "
              f"({cmd.splat_iterations} steps)…", cmd.quiet)
    fit_out = tmp / ".splats_fit"
    metrics = fit_object_splats(
        fit_out, views, T_world_cam, T_world_obj, prediction.generated,
        prediction.generated_masks, T_world_novel, views[0].K, cmd.splat_iterations,
        quiet=True, seed=cmd.seed, device=cmd.device)
    shutil.move(str(fit_out / "splats.ply"), str(tmp / "splats.ply"))
    shutil.rmtree(fit_out, ignore_errors=True)
    record["splats"] = {"file": "splats.ply", "iterations": cmd.splat_iterations,
                        "gaussians": metrics.get("num_gaussians"),
                        "train_psnr_db": metrics.get("training_psnr_db")}


def run_command(cmd: SpaRPCommand) -> dict:
    """``pose sparp`` (see the module doc); returns what poses.json holds."""
    import torch

    from geometry.cameras import Cameras
    from geometry.io.atomic import atomic_directory, atomic_write_text, output_lock
    from geometry.io.colmap import ColmapModel, write_colmap_model
    from geometry.io.images import write_png
    from geometry.io.transforms_json import write_transforms_json
    from geometry.progress import log_stage
    from pose.camera.sparp.solver import Symmetry, solve_views
    from reconstruction.images import load_images

    t_start = time.perf_counter()
    _check_options(cmd)
    symmetry = Symmetry.from_tag(cmd.symmetry)
    images = load_images(cmd.images, None, background=(0.0, 0.0, 0.0), min_images=2)
    prediction = None
    if cmd.nocs is not None:
        views, paths, Ks = load_views(cmd, images)
        map_names = [p.name for p in paths]
    else:
        prediction, Ks = _predict(cmd, images)
        views = prediction.views
        map_names = [f"{im.path.stem}.png" for im in images]
    with output_lock(cmd.out):
        log_stage(f"solving {len(views)} cameras from NOCS maps…", cmd.quiet)
        result = solve_views(views, symmetry, cmd.solver, names=map_names)
        T_world_cam = result.T_cam0_cam if cmd.frame == "first" else result.T_obj_cam
        T_world_obj = T_world_cam[0] @ np.linalg.inv(result.T_obj_cam[0])
        T_world_novel = None
        if prediction is not None and prediction.generated is not None:
            from pose.camera.sparp.model import novel_view_poses

            T_world_novel = T_world_obj @ novel_view_poses(result.T_obj_cam[0])
        refined = None
        if prediction is not None and cmd.refine:
            T_world_cam, T_world_novel, refined = _refine(cmd, prediction, views, T_world_cam,
                                                          T_world_novel)
        from reconstruction.images import output_names

        names = output_names(images)
        cams = Cameras(K=torch.from_numpy(Ks), T_world_cam=torch.from_numpy(T_world_cam),
                       width=torch.tensor([im.width for im in images]),
                       height=torch.tensor([im.height for im in images]),
                       names=list(names))
        record = {
            "frame": cmd.frame,
            "units": "NOCS units: the object's bounding-box diagonal is 1",
            "symmetry": cmd.symmetry,
            "intrinsics": (str(cmd.intrinsics) if cmd.intrinsics is not None
                           else f"field of view {cmd.fov_deg} deg across the longer side"),
            "views": [{
                "image": im.path.name, "nocs": map_name, "output": name,
                "valid_pixels": int(view.mask.sum()), "points_used": pose.num_points,
                "inliers": pose.num_inliers, "rms_px": round(pose.rms_px, 4),
                "symmetry_index": pose.symmetry_index,
                "T_world_cam": T_world_cam[k].tolist(), "T_obj_cam": pose.T_obj_cam.tolist(),
            } for k, (im, map_name, name, view, pose) in enumerate(
                zip(images, map_names, names, views, result.views, strict=True))],
        }
        if prediction is not None:
            record["model"] = {"checkpoint": str(cmd.checkpoint), "ddim_steps": cmd.steps,
                               "seed": cmd.seed, "tile_px": int(views[0].width),
                               "device": cmd.device}
        if refined is not None:
            record["refine"] = refined
        with atomic_directory(cmd.out) as tmp:
            (tmp / "images").mkdir()
            (tmp / "nocs").mkdir()
            for name, im, view in zip(names, images, views, strict=True):
                write_png(tmp / "images" / name, im.rgb)
                write_png(tmp / "nocs" / name, view.nocs * view.mask[..., None])
            if T_world_novel is not None:
                _write_generated(tmp, prediction, T_world_novel, views[0].K, record)
            if prediction is not None and cmd.splats:
                _fit_splats(cmd, tmp, prediction, views, T_world_cam, T_world_obj,
                            T_world_novel, record)
            write_colmap_model(tmp / "cameras", ColmapModel.from_cameras(cams))
            write_transforms_json(tmp / "transforms.json", cams,
                                  file_paths=[f"images/{n}" for n in names])
            record["time_s"] = round(time.perf_counter() - t_start, 3)
            atomic_write_text(tmp / "poses.json", json.dumps(record, indent=2) + "\n")
            (tmp / OUTPUT_MARKER).write_text(json.dumps({"written_by": "pose sparp"}) + "\n",
                                             encoding="utf-8")
    inl = ", ".join(f"{v.num_inliers}/{v.num_points}" for v in result.views)
    log_stage(f"wrote {cmd.out}: {len(views)} cameras (inliers {inl}; "
              f"{record['time_s']:.1f} s)", cmd.quiet)
    return record
