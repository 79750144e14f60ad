"""What ``pose sparp`` does: check the inputs, solve the poses from NOCS maps, write outputs.

Every input problem a user can cause is found before any output is written and raised as a
one-sentence :class:`~geometry.errors.UserError` (exit 2): a missing NOCS folder, a photo
without a map or a map without a photo, an unreadable map, a map of another aspect ratio
than its photo, a map without enough object pixels, no pose fitting a map. Outputs (the
folder appears complete or not at all)::

    OUT/transforms.json   solved cameras (nerfstudio; file paths into OUT/images)
    OUT/cameras/          the same cameras as a COLMAP text model (no points)
    OUT/images/           the photos
    OUT/nocs/             the NOCS maps as PNG images (RGB = NOCS * 255, black: background)
    OUT/poses.json        per view: inliers, reprojection error, symmetry hypothesis,
                          T_world_cam and T_obj_cam; the frame, units and options
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
    if not folder.is_dir():
        raise UserError(f"NOCS folder {folder} does not exist; give --nocs a folder with one "
                        "NOCS map per photo, named like the photo.")
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in NOCS_SUFFIXES and not p.name.startswith("."):
            files.setdefault(p.stem, p)
    stems = {im.path.stem for im in images}
    extra = sorted(s for s in files if s not in stems)
    if extra:
        raise UserError(f"{folder} has NOCS maps for photos that are not in the image folder "
                        f"({', '.join(extra[:3])}); maps must match the photos one to one.")
    paths = []
    for im in images:
        path = files.get(im.path.stem)
        if path is None:
            raise UserError(f"{folder} has no NOCS map for the photo {im.path.name}; give one "
                            "map per photo with the photo's name (.png or .npy).")
        paths.append(path)
    return paths


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
    from geometry.io.atomic import check_output_folder, check_replaceable
    from pose.camera.sparp.solver import Symmetry

    if cmd.nocs is None:
        if cmd.checkpoint is None:
            raise UserError("predicting NOCS maps needs SpaRP's diffusion model: pass its "
                            "--checkpoint, or give the NOCS maps with --nocs DIR.")
        raise UserError(f"--checkpoint {cmd.checkpoint}: SpaRP's diffusion model is not part "
                        "of this version yet; give the NOCS maps with --nocs DIR.")
    check_output_folder(cmd.out)
    check_replaceable(cmd.out, OUTPUT_MARKER, cmd.overwrite)
    out = cmd.out.resolve()
    for option, folder in (("image", cmd.images), ("NOCS", cmd.nocs)):
        src = folder.resolve()
        if out == src or src in out.parents or out in src.parents:
            raise UserError(f"--out {cmd.out} overlaps the {option} folder {folder}; write "
                            "the outputs somewhere else.")
    Symmetry.from_tag(cmd.symmetry)


def _output_names(images: list[LoadedImage]) -> list[str]:
    from geometry.io.colmap import colmap_safe_name

    names, used = [], set()
    for im in images:
        stem = colmap_safe_name(im.path.stem)
        name, k = f"{stem}.png", 1
        while name in used:
            name, k = f"{stem}_{k}.png", k + 1
        used.add(name)
        names.append(name)
    return names


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
    views, paths, Ks = load_views(cmd, images)
    with output_lock(cmd.out):
        log_stage(f"solving {len(views)} cameras from NOCS maps…", cmd.quiet)
        result = solve_views(views, symmetry, cmd.solver, names=[p.name for p in paths])
        T_world_cam = result.T_cam0_cam if cmd.frame == "first" else result.T_obj_cam
        names = _output_names(images)
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
                "image": im.path.name, "nocs": path.name, "output": name,
                "valid_pixels": int(view.mask.sum()), "points_used": pose.num_points,
                "inliers": pose.num_inliers, "rms_px": round(pose.rms_px, 4),
                "symmetry_index": pose.symmetry_index,
                "T_world_cam": T_world_cam[k].tolist(), "T_obj_cam": pose.T_obj_cam.tolist(),
            } for k, (im, path, name, view, pose) in enumerate(
                zip(images, paths, names, views, result.views, strict=True))],
        }
        with atomic_directory(cmd.out) as tmp:
            (tmp / "images").mkdir()
            (tmp / "nocs").mkdir()
            for name, im, view in zip(names, images, views, strict=True):
                write_png(tmp / "images" / name, im.rgb)
                write_png(tmp / "nocs" / name, view.nocs * view.mask[..., None])
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

