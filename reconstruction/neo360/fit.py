"""Few-view inference: ``recon fit --method neo360 --images DIR --poses FILE
--neo360.checkpoint CKPT`` (optionally fine-tuned on the photos).

The photos' cameras (``--poses``, OpenCV convention after the readers' conversion) are
moved into the model's field frame: the centre is the point closest to the cameras' optical
axes, the scale puts the cameras at the training rigs' distance (``camera_radius``). The
output folder is a :class:`~reconstruction.field.scene_model.FieldSceneModel` (network,
source views, cameras), which ``recon eval`` and ``recon view`` render.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from geometry.errors import UserError
from reconstruction.neo360.config import NeO360Options
from reconstruction.neo360.train import FinetuneOptions


def check_inputs(options: NeO360Options, images: list) -> None:
    if options is None or options.checkpoint is None:
        raise UserError("--method neo360 needs --neo360.checkpoint CKPT (a folder written by "
                        "'recon neo360 train').")
    if options.finetune_steps < 0:
        raise UserError(f"--neo360.finetune-steps {options.finetune_steps} must be 0 or more.")


def normalisation(cameras, camera_radius: float) -> tuple[torch.Tensor, float]:
    """``centre [3]`` (float64; closest point to the optical axes) and the scale that puts
    the cameras ``camera_radius`` from it on average."""
    from geometry.se3 import optical_axes_point

    T = cameras.T_world_cam.double().cpu()
    centres = T[:, :3, 3]
    centre = optical_axes_point(T)
    if centre is None:
        raise UserError("the cameras' optical axes do not converge (parallel or a single "
                        "camera); NeO 360 needs photos looking at a common centre.")
    dist = float((centres - centre).norm(dim=-1).mean())
    if dist < 1e-9:
        raise UserError("the cameras all sit at the scene centre; give cameras around it.")
    return centre, camera_radius / dist


def fit(config, cameras, callbacks) -> dict:
    """The ``fit`` of the method record."""
    from geometry.io.atomic import atomic_directory, check_replaceable, output_lock
    from reconstruction.engine.fit import check_fit_paths, known_cameras
    from reconstruction.field.scene_model import FieldSceneModel
    from reconstruction.images import load_images
    from reconstruction.neo360.data import to_field_frame
    from reconstruction.neo360.field import NeO360Field
    from reconstruction.neo360.train import finetune, load_model, psnr

    options: NeO360Options = config.options
    start = time.monotonic()
    check_fit_paths(config)
    images = load_images(config.images, config.max_size, min_images=1)
    check_inputs(options, images)
    known = known_cameras(config, images, cameras)
    if known is None:
        raise UserError("--method neo360 needs the photos' cameras: give --poses FILE "
                        "(COLMAP, transforms.json, poses_bounds.npy or cameras.npz).")
    if len({(im.width, im.height) for im in images}) != 1:
        raise UserError("NeO 360 takes photos of one size; resize them alike.")
    check_replaceable(config.out, "scene_model.json", config.overwrite)
    torch.manual_seed(config.seed)
    model = load_model(options.checkpoint, config.device)
    centre, scale = normalisation(known, model.config.camera_radius)
    cams = to_field_frame(known.to(dtype=torch.float32), centre.float(), scale)
    rgb = torch.stack([im.rgb for im in images]).to(config.device)
    K, T = cams.K.to(config.device), cams.T_world_cam.to(config.device)
    history = []
    if options.finetune_steps > 0:
        history = finetune(model, rgb, K, T, FinetuneOptions(
            options.finetune_steps, options.finetune_lr, options.finetune_rays, config.seed),
            quiet=config.quiet)
    model.eval()
    field = NeO360Field(model, rgb, K, T).eval()
    scene = FieldSceneModel(field, known, "neo360", field.config_dict(),
                            centre=centre.tolist(), scale=scale)
    metrics = {"method": "neo360", "num_views": len(images),
               "checkpoint": str(options.checkpoint),
               "finetune_steps": options.finetune_steps}
    if images[0].width * images[0].height * len(images) <= 256 * 256 * 4:
        with torch.no_grad():
            rendered = scene.render(known.to(config.device), ("rgb",)).rgb
        metrics["training_psnr_db"] = psnr(rendered.cpu(), rgb.cpu())
    if history:
        metrics["finetune_history"] = history
    metrics["timings_s"] = {"total": time.monotonic() - start}
    with output_lock(config.out), atomic_directory(config.out) as tmp:
        scene.save(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n",
                                          encoding="utf-8")
    return metrics


def load(folder: Path, device: str = "cpu"):
    from reconstruction.field.scene_model import FieldSceneModel

    return FieldSceneModel.load(Path(folder), device)


