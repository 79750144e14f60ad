"""What ``pose sparseags`` does: check the inputs, run SparseAGS, write the outputs.

Every input problem a user can cause is found before any work and raised as a one-sentence
:class:`~geometry.errors.UserError` (exit 2, nothing written): a photo without an initial
pose, poses for photos that are not there, fewer than 3 photos, masks that do not match the
photos. Outputs (the folder appears complete or not at all)::

    OUT/transforms.json   refined cameras (nerfstudio; file paths into OUT/images)
    OUT/cameras/          the same cameras as a COLMAP text model (no points)
    OUT/images/           the photos as the cameras see them (resized; composited on black
                          outside the masks when masks are given)
    OUT/splats.ply        the final Gaussians (3DGS PLY), in the cameras' frame
    OUT/outliers.json     per view: score, flagged, corrected, correction in degrees
    OUT/metrics.json      timings, pose changes, final scores, options
    OUT/.pose-sparseags   the marker of an output of this command
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from geometry.errors import UserError

if TYPE_CHECKING:
    from geometry.cameras import Cameras
    from pose.camera.sparseags.cli import SparseAGSCommand
    from reconstruction.images import LoadedImage

#: The file in every output of ``pose sparseags`` that marks it as one.
OUTPUT_MARKER = ".pose-sparseags"
_MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def match_cameras(cameras: Cameras, images: list[LoadedImage], source: Path) -> Cameras:
    """The cameras of ``images`` (matched by file name, then stem), intrinsics scaled to the
    loaded image sizes.

    Raises:
        UserError: a photo without a camera, cameras for photos that are not there, or a
            camera of another aspect ratio than its photo.
    """
    from geometry.cameras import Cameras
    from reconstruction.images import camera_rows

    names = cameras.names or [str(p) for p in (cameras.image_paths or [])]
    order = camera_rows(cameras, images, source)
    for im, i in zip(images, order, strict=True):
        if i is None:
            raise UserError(f"{source} has no initial pose for the photo {im.path.name}; give "
                            "a camera for every photo (or remove the photo).")
    extra = [Path(names[i]).name for i in range(len(names)) if i not in set(order)]
    if extra:
        listing = ", ".join(extra[:3]) + (" ..." if len(extra) > 3 else "")
        raise UserError(f"{source} has poses for {len(extra)} photo(s) that are not in the "
                        f"image folder ({listing}); add the photos or remove their poses.")
    cams = cameras[order].to(dtype=torch.float64)
    K = cams.K.clone()
    for k, im in enumerate(images):
        w, h = float(cams.width[k]), float(cams.height[k])
        if abs(w / h - im.width / im.height) > 0.01 * im.width / im.height:
            raise UserError(f"the initial camera of {im.path.name} is {w:.0f}x{h:.0f} but the "
                            f"photo is {im.width}x{im.height} (another aspect ratio); give "
                            "the camera of this photo.")
        K[k, 0] *= im.width / w
        K[k, 1] *= im.height / h
    return Cameras(K=K, T_world_cam=cams.T_world_cam,
                   width=torch.tensor([im.width for im in images]),
                   height=torch.tensor([im.height for im in images]),
                   names=[im.path.name for im in images])


def load_masks(folder: Path, images: list[LoadedImage]) -> list[torch.Tensor]:
    """One ``[H, W]`` float mask in {0, 1} per photo (the file with the photo's stem; its
    alpha channel if it has one, else its brightness; resized to the loaded photo).

    Raises:
        UserError: no such folder, a photo without a mask, a mask without a photo, a mask
            of another size than its photo, an unreadable or empty mask.
    """
    from PIL import Image, UnidentifiedImageError

    from reconstruction.images import files_per_photo

    paths = files_per_photo(folder, images, _MASK_SUFFIXES, "mask", "--masks")
    masks = []
    for im, path in zip(images, paths, strict=True):
        try:
            with Image.open(path) as img:
                img.load()
                has_alpha = img.mode in ("RGBA", "LA") or "transparency" in img.info
                gray = img.convert("RGBA").getchannel("A") if has_alpha else img.convert("L")
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise UserError(f"cannot read the mask {path} ({err}); replace it.") from None
        source = im.source_size or (im.width, im.height)
        if gray.size not in (tuple(source), (im.width, im.height)):
            raise UserError(f"the mask {path.name} is {gray.size[0]}x{gray.size[1]} but its "
                            f"photo {im.path.name} is {source[0]}x{source[1]}; masks must "
                            "have their photo's size.")
        if gray.size != (im.width, im.height):
            gray = gray.resize((im.width, im.height), Image.Resampling.BOX)
        mask = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)
        mask = (mask > 0.5).float()
        if not bool(mask.any()):
            raise UserError(f"the mask {path.name} of {im.path.name} is empty (no white "
                            "pixel); give a mask that covers the object.")
        masks.append(mask)
    return masks


def _sfm_cameras(images: list[LoadedImage], seed: int) -> Cameras:
    """Initial cameras from our SfM initialiser (poses of every photo, else a UserError)."""
    import tempfile

    from geometry.cameras import Cameras
    from geometry.se3 import invert_T
    from reconstruction.init.config import InitConfig
    from reconstruction.init.registry import INITIALISERS

    with tempfile.TemporaryDirectory(prefix="sparseview-sparseags-") as work:
        result = INITIALISERS["sfm-sparse"](images, Path(work), InitConfig(), seed)
    model = result.model
    return Cameras(K=torch.from_numpy(model.Ks).double(),
                   T_world_cam=invert_T(torch.from_numpy(model.T_cam_world).double()),
                   width=torch.tensor([im.width for im in images]),
                   height=torch.tensor([im.height for im in images]),
                   names=[im.path.name for im in images])


def _check_options(cmd: SparseAGSCommand) -> None:
    from geometry.device import check_device
    from geometry.io.atomic import check_output_folder, check_replaceable

    if (cmd.init_poses is None) == (cmd.init is None):
        raise UserError("give the initial cameras with either --init-poses FILE or --init sfm "
                        "(exactly one of them).")
    check_output_folder(cmd.out)
    check_replaceable(cmd.out, OUTPUT_MARKER, cmd.overwrite)
    images, out = cmd.images.resolve(), cmd.out.resolve()
    if out == images or images in out.parents or out in images.parents:
        raise UserError(f"--out {cmd.out} overlaps the image folder {cmd.images}; write the "
                        "outputs somewhere else.")
    if cmd.max_size < 32:
        raise UserError(f"--max-size {cmd.max_size} is too small; use at least 32 pixels.")
    if cmd.prior is not None and not cmd.prior.exists():
        raise UserError(f"the prior checkpoint {cmd.prior} does not exist; pass --prior a 6-DoF "
                        "Zero123 checkpoint, or run without --prior.")
    if cmd.lpips is not None and not cmd.lpips.is_file():
        raise UserError(f"the LPIPS weights {cmd.lpips} do not exist; pass the LPIPS .pth, or "
                        "run without --lpips (1 - SSIM is used then).")
    check_device(cmd.device)


def run_command(cmd: SparseAGSCommand) -> None:
    """``pose sparseags`` (see the module doc)."""
    from geometry.io import read_cameras
    from geometry.io.atomic import output_lock
    from geometry.progress import log_stage
    from geometry.threads import set_threads
    from reconstruction.images import load_images

    t_start = time.perf_counter()
    _check_options(cmd)
    threads = set_threads(cmd.threads)
    images = load_images(cmd.images, cmd.max_size, background=(0.0, 0.0, 0.0), min_images=3)
    masks = load_masks(cmd.masks, images) if cmd.masks is not None else None
    if cmd.init_poses is not None:
        if not cmd.init_poses.exists():
            raise UserError(f"--init-poses {cmd.init_poses} does not exist; give a "
                            "transforms.json or COLMAP model of the photos.")
        cameras = match_cameras(read_cameras(cmd.init_poses, dtype=torch.float64,
                                             require_images=False), images, cmd.init_poses)
    else:
        cameras = None
    lpips = None
    if cmd.lpips is not None:
        from reconstruction.eval.lpips import load_lpips

        lpips = load_lpips(cmd.lpips, cmd.lpips_backbone, device=cmd.device)
    prior = None
    if cmd.prior is not None:
        from pose.camera.sparseags.prior import load_prior

        prior = load_prior(cmd.prior, cmd.device, trust=cmd.config.sds.trust_checkpoint)
    with output_lock(cmd.out):
        if cameras is None:
            log_stage("initial cameras from SfM (--init sfm)…", cmd.quiet)
            cameras = _sfm_cameras(images, cmd.config.seed)
        result = _run_with_progress(cmd, images, masks, cameras, lpips, prior)
        metrics = _write_outputs(cmd, images, masks, cameras, result, threads, t_start)
    flagged = [v.name for v in result.views if v.flagged]
    log_stage(f"wrote {cmd.out}: {len(images)} cameras refined"
              + (f"; outliers: {', '.join(flagged)}" if flagged else "; no outlier")
              + f" ({metrics['timings_s']['total']:.0f} s)", cmd.quiet)


def _run_with_progress(cmd: SparseAGSCommand, images, masks, cameras, lpips, prior):
    from geometry.progress import log_stage, progress_bar
    from pose.camera.sparseags.pipeline import planned_steps, run_sparseags

    total = planned_steps(len(images), cmd.config)
    matches = None
    if cmd.config.matching.enabled:
        from pose.camera.sparseags.matches import find_matches

        t0 = time.perf_counter()  # (run_command set torch's threads from --threads)
        matches = find_matches(images, cmd.config.matching, cmd.seed, torch.get_num_threads())
        if matches.pairs:
            log_stage(f"matched the photos: {len(matches)} verified matches over "
                      f"{len(matches.pairs)} view pairs ({time.perf_counter() - t0:.0f} s)",
                      cmd.quiet)
        else:
            log_stage("note: no verified feature matches between the photos; "
                      "render-and-compare only", cmd.quiet)
    with progress_bar("sparseags", ("{task.fields[stage]}",), quiet=cmd.quiet) as bar:
        task = bar.add_task("sparseags", total=total, stage="")
        last = [0.0]

        def progress(done: int, planned: int, stage: str) -> None:
            now = time.perf_counter()
            if now - last[0] > 0.2 or done == planned:
                last[0] = now
                bar.update(task, completed=done, total=planned, stage=stage)

        def log(message: str) -> None:
            if not cmd.quiet:
                bar.console.print(message, markup=False, highlight=False, soft_wrap=True)

        result = run_sparseags([im.rgb for im in images], cameras, cmd.config, masks=masks,
                               lpips=lpips, prior=prior, device=cmd.device, progress=progress,
                               log=log, matches=matches)
        bar.update(task, completed=bar.tasks[0].total, stage="done")
    if result.perceptual_kind != "lpips":
        log_stage("note: no --lpips weights given; view scores use 1 - SSIM instead of LPIPS",
                  cmd.quiet)
    return result


def _write_outputs(cmd: SparseAGSCommand, images, masks, initial: Cameras, result,
                   threads: int, t_start: float) -> dict:
    from geometry.cameras import Cameras
    from geometry.io.atomic import atomic_directory, atomic_write_text
    from geometry.io.colmap import ColmapModel, write_colmap_model
    from geometry.io.images import write_png
    from geometry.io.transforms_json import write_transforms_json
    from reconstruction.gaussians import write_ply
    from reconstruction.images import output_names

    names = output_names(images)
    cams = result.cameras
    score_note = ("LPIPS" if result.perceptual_kind == "lpips" else
                  "1 - SSIM (no --lpips weights given: LPIPS was not used)")
    outliers = {
        "perceptual": result.perceptual_kind,
        "score": f"{score_note} + mean |colour error| over the object"
                 + (" + mean |alpha - mask|" if masks is not None else "")
                 + " of the view rendered by the 3D built from the other views (lower is "
                   "better)",
        "views": [{"image": im.path.name, **v.to_json()}
                  for im, v in zip(images, result.views, strict=True)],
        "detection_rounds": result.detection_rounds,
    }
    metrics = {
        "images": [im.path.name for im in images],
        "initial_cameras": str(cmd.init_poses) if cmd.init_poses is not None else "sfm",
        "masks": masks is not None,
        "prior": str(cmd.prior) if cmd.prior is not None else None,
        "perceptual": result.perceptual_kind,
        "device": cmd.device,
        "threads": threads,
        "max_size": cmd.max_size,
        "flagged": [v.name for v in result.views if v.flagged],
        "corrected": [v.name for v in result.views if v.corrected],
        "rotation_change_deg": {v.name: round(v.rotation_change_deg, 4)
                                for v in result.views},
        "centre_shift": {im.path.name: float((cams.T_world_cam[k, :3, 3].double()
                                              - initial.T_world_cam[k, :3, 3].double()).norm())
                         for k, im in enumerate(images)},
        "final_score": {v.name: round(v.final_score, 6) for v in result.views},
        "num_gaussians": int(result.scene.num_gaussians),
        "normalisation": result.normalisation,
        "config": json.loads(json.dumps(dataclasses.asdict(cmd.config), default=str)),
        "timings_s": dict(result.timings_s),
    }
    out_cams = Cameras(K=cams.K, T_world_cam=cams.T_world_cam, width=cams.width,
                       height=cams.height, names=list(names))
    with atomic_directory(cmd.out) as tmp:
        (tmp / "images").mkdir()
        for k, (name, im) in enumerate(zip(names, images, strict=True)):
            rgb = im.rgb if masks is None else im.rgb * masks[k][..., None]
            write_png(tmp / "images" / name, rgb)
        write_ply(tmp / "splats.ply", result.scene)
        write_colmap_model(tmp / "cameras", ColmapModel.from_cameras(out_cams))
        write_transforms_json(tmp / "transforms.json", out_cams,
                              file_paths=[f"images/{n}" for n in names])
        atomic_write_text(tmp / "outliers.json", json.dumps(outliers, indent=2) + "\n")
        metrics["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"written_by": "pose sparseags"}) + "\n",
                                         encoding="utf-8")
    return metrics
