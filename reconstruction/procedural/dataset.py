"""Writing procedural scenes: the dataset folder ``recon eval`` reads, and plain photos.

Dataset folder (:func:`generate`; it appears complete or not at all)::

    OUT/transforms.json        nerfstudio cameras; every frame also names its ground truth:
                               depth_file_path, mask_path, object_coords_path, object_id_path
    OUT/images/NNN.png         8-bit colours (linear, no sRGB curve)
    OUT/depth/NNN.npy          float32 [H, W] camera z-depth in metres (0 where nothing is hit)
    OUT/masks/NNN.png          255 on the objects (not the floor, ground or walls), 0 elsewhere
    OUT/object_ids/NNN.png     8-bit object id: 1-based index into ``objects`` below, 0 elsewhere
    OUT/object_coords/NNN.npy  float32 [H, W, 3] object coordinates in [0, 1]^3, NaN off objects
    OUT/textureless_masks/NNN.png  only with --textureless above 0: 255 on the uniform-coloured
                               objects (pixel-centre ray), 0 elsewhere; ``recon eval --masks
                               OUT/textureless_masks`` measures the held-out views there

``transforms.json`` also holds ``sparseview_synthetic``: the generator settings, the world,
``scene_extent`` (the diameter of the objects' bounding sphere about the origin) and
``objects`` (each object's ``kind``, ``T_world_obj``, bounding-box ``size``: the frame
the object coordinates are in, see :class:`~reconstruction.procedural.worlds.SceneObject`;
and ``textureless``: whether it is painted one colour).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from geometry.cameras import Cameras
from reconstruction.procedural.scene import (
    SceneConfig,
    camera_poses,
    check_config,
    intrinsics,
    make_cameras,
    make_world,
    render_view,
)
from reconstruction.procedural.worlds import ObjectWorld, QuadWorld

OBJECT_COORDS = ("object coordinates: p_obj / size + 0.5 with p_obj = T_obj_world p_world, "
                 "T_world_obj and size from 'objects' (the bounding box maps onto [0, 1]^3, "
                 "each axis on its own); from the pixel-centre ray; NaN off the objects")
_DEFAULT_CONFIG = SceneConfig()  # frozen: safe as a shared default


@dataclass
class ProceduralDataset:
    """What :func:`generate` wrote."""

    path: Path
    cameras: Cameras  # [V], float64, with image_paths in path/images
    world: QuadWorld | ObjectWorld
    extent: float
    meta: dict = field(default_factory=dict)


def generate(config: SceneConfig, out: str | Path, quiet: bool = True) -> ProceduralDataset:
    """Render every view and write the dataset folder ``out`` (see the module docstring).

    Views are rendered and written one at a time, so memory does not grow with their number.
    """
    from PIL import Image

    from geometry.errors import UserError
    from geometry.io.atomic import atomic_directory
    from geometry.io.transforms_json import write_transforms_json
    from geometry.progress import progress_bar

    config = check_config(config, min_views=2)
    world = make_world(config)
    if len(world.objects) > 255:
        raise UserError(f"{len(world.objects)} objects do not fit 8-bit id maps; use at most 255.")
    K = intrinsics(config)
    cameras = make_cameras(config)
    poses = camera_poses(config)
    names = [f"{i:03d}" for i in range(config.num_views)]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the procedural scene.")
    folders = {"images": "images", "depth": "depth", "masks": "masks",
               "ids": "object_ids", "coords": "object_coords"}
    plain = [k for k, obj in enumerate(world.objects, start=1) if obj.textureless]
    if plain:
        folders["textureless"] = "textureless_masks"
    with atomic_directory(out) as tmp:
        for sub in folders.values():
            (tmp / sub).mkdir()
        with progress_bar("rendering", quiet=quiet, transient=True) as progress:
            task = progress.add_task("rendering", total=len(poses))
            for name, T in zip(names, poses, strict=True):
                view = render_view(world, K, T, config.width, config.height, config.supersample)
                Image.fromarray(view.image).save(tmp / "images" / f"{name}.png")
                np.save(tmp / "depth" / f"{name}.npy", view.depth)
                Image.fromarray(view.mask.astype(np.uint8) * 255).save(
                    tmp / "masks" / f"{name}.png")
                Image.fromarray(view.object_ids.astype(np.uint8)).save(
                    tmp / "object_ids" / f"{name}.png")
                np.save(tmp / "object_coords" / f"{name}.npy", view.object_coords)
                if plain:
                    Image.fromarray(np.isin(view.object_ids, plain).astype(np.uint8) * 255
                                    ).save(tmp / "textureless_masks" / f"{name}.png")
                progress.advance(task)
        meta = {
            "generator": "reconstruction.procedural",
            "config": asdict(config),
            "scene_extent": world.extent(),
            "scene": world.describe(),
            "objects": [obj.describe() for obj in world.objects],
            "depth": "z-depth in metres along the camera's optical axis; 0 where nothing is hit",
            "object_coords": OBJECT_COORDS,
        }
        file = write_transforms_json(tmp / "transforms.json", cameras,
                                     file_paths=[f"images/{n}.png" for n in names],
                                     extra={"sparseview_synthetic": meta})
        data = json.loads(file.read_text(encoding="utf-8"))
        for frame, name in zip(data["frames"], names, strict=True):
            frame["depth_file_path"] = f"depth/{name}.npy"
            frame["mask_path"] = f"masks/{name}.png"
            frame["object_coords_path"] = f"object_coords/{name}.npy"
            frame["object_id_path"] = f"object_ids/{name}.png"
        file.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    final = make_cameras(config, image_paths=[str(out / "images" / f"{n}.png") for n in names])
    return ProceduralDataset(path=out, cameras=final, world=world, extent=world.extent(),
                             meta=meta)


def write_photos(scene, folder: str | Path, prefix: str = "view",
                 exif_focal: bool = True) -> list[Path]:
    """Save a :class:`~reconstruction.procedural.scene.ProceduralScene`'s views as PNGs
    ``folder/{prefix}_{k:02d}.png`` (photos only, as a user would give them); the paths.

    With ``exif_focal`` each PNG carries an EXIF block like a camera's: make, model and the
    35 mm-equivalent focal length (whole millimetres, as cameras write it, so the prior is
    off by up to ~2 %).
    """
    from PIL import ExifTags, Image

    from reconstruction.images import FULL_FRAME_DIAGONAL_MM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(scene.images):
        path = folder / f"{prefix}_{k:02d}.png"
        exif = Image.Exif()
        if exif_focal:
            h, w = img.shape[:2]
            f35 = float(scene.cameras.K[k, 0, 0]) * FULL_FRAME_DIAGONAL_MM / math.hypot(w, h)
            exif[ExifTags.Base.Make] = "sparseview"
            exif[ExifTags.Base.Model] = "procedural"
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.FocalLengthIn35mmFilm] = round(f35)
        Image.fromarray(img).save(path, optimize=True, exif=exif)
        paths.append(path)
    return paths


def _generate_command(out: Path, config: SceneConfig = _DEFAULT_CONFIG) -> None:
    """Render a procedural scene with ground-truth cameras, depth, masks and object
    coordinates (transforms.json layout).

    Args:
        out: Output folder (replaced atomically).
        config: The scene.
    """
    result = generate(config, out, quiet=False)
    c = result.meta["config"]
    plain = sum(obj["textureless"] for obj in result.meta["objects"])
    note = (f"; {plain} of {len(result.meta['objects'])} objects textureless (masks in "
            f"{result.path / 'textureless_masks'})" if plain else "")
    print(f"wrote {result.path}: {c['num_views']} {c['kind']} views "
          f"{c['width']}x{c['height']}, scene extent {result.extent:.2f} m{note}")


def main() -> None:
    """``python -m reconstruction.procedural --out DIR [--kind arc|orbit|forward]
    [--textureless SHARE] ...``."""
    import tyro

    from geometry.errors import run_cli

    prog = "python -m reconstruction.procedural"
    run_cli(lambda: tyro.cli(_generate_command, prog=prog,
                             config=(tyro.conf.OmitArgPrefixes,)), prog=prog)
