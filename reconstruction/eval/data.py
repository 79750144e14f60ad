"""A dataset with ground truth for evaluation, read through :mod:`geometry.io`.

Supported: ``transforms`` (nerfstudio / Blender / our synthetic scenes), ``colmap``,
``llff`` (``poses_bounds.npy``, with ``images_<factor>``), ``dtu`` (IDR ``cameras.npz``
with the DTU 384px preset) and ``co3d``. Views are in sorted image-name order, the order
the literature's splits index.

Object masks (for the masked metrics of the DTU literature) come from the format where it
stores them (IDR ``mask/``, transforms.json ``mask_path``) or from ``--masks DIR``, matched
per view by image stem (``stem.png``, ``stem_mask.png``) or by index (``NNN.png``, as in
RegNeRF's DTU masks); views without a mask get no masked metrics.

Resolution (:func:`load_dataset` with ``protocol_size``; ``--factor``/``--max-size``
override): the sparse-view literature (RegNeRF, FSGS, DNGaussian) evaluates LLFF at
``images_8`` (504x378 from 4032x3024) and DTU at 400x300 (4x downsampling of 1600x1200).
So an LLFF scene uses ``images_8/`` where it exists, else its full-size photos shrunk to
504 px on the longest side; an IDR/DTU scan is shrunk to 400 px on the longest side; photos
already smaller than the protocol's size keep their own (``dtu_scan24``'s 384x384 central
crops are DTU at 384/1200, they are not shrunk again). Any other dataset keeps its size,
unless its photos exceed :data:`LARGE_PHOTO_PIXELS`: then :data:`DEFAULT_MAX_SIZE` (``recon
fit``'s default), and :class:`Resolution` says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geometry.cameras import Cameras
from geometry.errors import UserError
from reconstruction.eval.config import DatasetFormat

_MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

#: LLFF protocol: the ``images_<factor>`` folder used ...
LLFF_PROTOCOL_FACTOR = 8
#: ... or, without it, the longest side of the shrunk full-size photos (504x378 from
#: LLFF's 4032x3024, the size of images_8).
LLFF_PROTOCOL_MAX_SIZE = 504
#: DTU protocol: longest side (400x300 from DTU's 1600x1200, 4x downsampling).
DTU_PROTOCOL_MAX_SIZE = 400
#: Photos with more pixels than this and no size option are shrunk to ...
LARGE_PHOTO_PIXELS = 2_000_000
#: ... this longest side, ``recon fit``'s default (``FitConfig.max_size``): fitting a
#: 12-megapixel photo takes tens of minutes on a CPU.
DEFAULT_MAX_SIZE = 512


@dataclass
class Resolution:
    """The image size evaluation runs at, and why."""

    factor: int | None
    """LLFF ``images_<factor>`` folder read (None: ``images/``)."""
    max_size: int | None
    """Longest side the images are shrunk to (None: kept)."""
    rule: str
    """Why, in words (printed and written to eval.json)."""
    default: bool
    """Chosen by eval (no --factor or --max-size given)."""
    width: int = 0
    height: int = 0
    """Size of the largest view as evaluated (pixels)."""
    mixed_sizes: bool = False
    """Whether the views differ in size."""

    def describe(self) -> str:
        """``"504x378 (LLFF protocol: images_8)"``."""
        size = f"{'up to ' if self.mixed_sizes else ''}{self.width}x{self.height}"
        return f"{size} ({self.rule})"

    def as_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "mixed_sizes": self.mixed_sizes,
                "factor": self.factor, "max_size": self.max_size, "rule": self.rule,
                "chosen_by": "protocol default" if self.default else "option"}


@dataclass
class EvalDataset:
    """Ground-truth cameras, images and optional masks of one scene."""

    path: Path
    format: str
    """The format read (``dtu`` for IDR files)."""
    cameras: Cameras  # [N] float64, OpenCV camera-to-world, image_paths set
    mask_paths: list[Path | None]
    """Per view, the object mask file or None."""
    max_size: int | None = None
    """Images are shrunk so that their longest side is at most this (cameras already are)."""
    resolution: Resolution | None = None
    """The size chosen and why (see the module doc)."""
    depth_paths: list[Path | None] | None = None
    """Per view, a ground-truth z-depth map (``.npy`` float ``[H, W]`` in the cameras'
    units, 0 where nothing is hit; transforms.json ``depth_file_path``) or None."""

    @property
    def has_depth(self) -> bool:
        return self.depth_paths is not None and any(p is not None for p in self.depth_paths)

    def load_depth(self, index: int) -> Tensor | None:
        """View ``index``'s ground-truth z-depth ``[H, W]`` float32 at the camera's size
        (nearest resampling when the images were shrunk), or None."""
        if self.depth_paths is None or self.depth_paths[index] is None:
            return None
        from geometry.io.depth import read_depth_npy

        return read_depth_npy(self.depth_paths[index], int(self.cameras.width[index]),
                              int(self.cameras.height[index]),
                              "regenerate it or remove depth_file_path from the dataset")

    @property
    def num_views(self) -> int:
        return len(self.cameras)

    @property
    def image_paths(self) -> list[Path]:
        return [Path(p) for p in self.cameras.image_paths]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.image_paths]

    @property
    def has_masks(self) -> bool:
        return any(m is not None for m in self.mask_paths)

    def load_image(self, index: int) -> Tensor:
        """View ``index`` as ``[H, W, 3]`` float32 in [0, 1], checked against its camera."""
        from reconstruction.images import load_image

        image = load_image(self.image_paths[index], self.max_size).rgb
        w, h = int(self.cameras.width[index]), int(self.cameras.height[index])
        if image.shape[:2] != (h, w):
            raise UserError(f"image {self.image_paths[index]} is {image.shape[1]}x"
                            f"{image.shape[0]} but its camera says {w}x{h}; use the image "
                            "folder that matches the cameras (for LLFF pass --factor).")
        return image

    def load_mask(self, index: int) -> Tensor | None:
        """View ``index``'s object mask ``[H, W]`` bool (True on the object), or None."""
        path = self.mask_paths[index]
        if path is None:
            return None
        from PIL import Image

        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) > 127
        w, h = int(self.cameras.width[index]), int(self.cameras.height[index])
        if mask.shape != (h, w):
            from PIL import Image as PILImage

            resized = PILImage.fromarray(mask.astype(np.uint8) * 255).resize(
                (w, h), PILImage.NEAREST)
            mask = np.asarray(resized) > 127
        return torch.from_numpy(mask)


def shrunk_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """The size :func:`reconstruction.images.load_image` gives a ``width x height`` image."""
    if max_size is None or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _masks_from_dir(folder: Path, image_paths: list[Path]) -> list[Path | None]:
    if not folder.is_dir():
        raise UserError(f"--masks {folder} is not a folder; give the folder of object masks.")
    files = {p.name.lower(): p for p in folder.iterdir() if p.suffix.lower() in _MASK_SUFFIXES}
    out: list[Path | None] = []
    for index, image in enumerate(image_paths):
        found = None
        for candidate in (image.stem, f"{image.stem}_mask", f"{index:03d}", f"{index:06d}",
                          f"{index}"):
            for suffix in _MASK_SUFFIXES:
                if (candidate + suffix).lower() in files:
                    found = files[(candidate + suffix).lower()]
                    break
            if found is not None:
                break
        out.append(found)
    if all(m is None for m in out):
        raise UserError(f"no file in {folder} matches an image (tried <stem>.png, "
                        "<stem>_mask.png and <index>.png); check the mask folder.")
    return out


def _detect_format(path: Path, format: DatasetFormat) -> str:
    """The reader's name of ``path``'s camera format (``dtu`` is read as ``idr``)."""
    from geometry.io import detect_camera_format

    if not path.exists():
        raise UserError(f"--dataset {path} does not exist; give a scene folder.")
    fmt = {"dtu": "idr"}.get(format, format)
    if fmt == "auto":
        fmt = detect_camera_format(path)
        if fmt is None:
            raise UserError(f"found no cameras at {path} (transforms.json, a COLMAP model, "
                            "poses_bounds.npy, cameras.npz or gt_cameras.npz); give the scene "
                            "folder or --format.")
    return fmt


def _read_cameras(path: Path, fmt: str, llff_factor: int | None
                  ) -> tuple[Cameras, list[str] | None, Path]:
    """The dataset's cameras (with their image paths), its mask paths if it names any, and
    the camera file read; refuses datasets eval cannot use."""
    mask_paths: list[str] | None = None
    file = path
    if fmt == "idr":
        from geometry.io.idr import read_idr

        data = read_idr(path, dtype=torch.float64)
        cameras, mask_paths = data.cameras, data.mask_paths
    elif fmt == "transforms":
        from geometry.io.transforms_json import read_transforms_json

        if path.is_dir():
            file = path / "transforms.json"
            if not file.is_file():
                file = path / "transforms_train.json"
        data = read_transforms_json(file, dtype=torch.float64)
        cameras, mask_paths = data.cameras, data.mask_paths
    elif fmt == "llff":
        from geometry.io.llff import read_llff

        cameras = read_llff(path, factor=llff_factor, dtype=torch.float64).cameras
    else:
        from geometry.io import read_cameras

        cameras = read_cameras(path, format=fmt, dtype=torch.float64)
    if cameras.image_paths is None:
        raise UserError(f"the cameras at {path} have no images next to them; put the images "
                        "where the format expects them (e.g. images/).")
    if len(cameras.shape) != 1 or len(cameras) < 2:
        raise UserError(f"{path} has fewer than 2 views; evaluation needs training and test "
                        "views.")
    if cameras.has_distortion:
        raise UserError(f"the cameras at {path} have lens distortion, which the splat renderer "
                        "does not model; undistort the images first (e.g. colmap "
                        "image_undistorter).")
    return cameras, mask_paths, file


def _shrunk_cameras(cameras: Cameras, max_size: int | None) -> Cameras:
    """``cameras`` of images shrunk to at most ``max_size`` pixels on the longest side."""
    if max_size is None:
        return cameras
    if max_size < 16:
        raise UserError(f"--max-size {max_size} is too small; use at least 16 pixels.")
    views = []
    for i in range(len(cameras)):
        w, h = int(cameras.width[i]), int(cameras.height[i])
        views.append(cameras[i:i + 1].resize(*shrunk_size(w, h, max_size)))
    return Cameras.cat(views)


def load_dataset(path: str | os.PathLike, format: DatasetFormat = "auto",
                 masks: str | os.PathLike | None = None,
                 llff_factor: int | None = None, max_size: int | None = None,
                 protocol_size: bool = False) -> EvalDataset:
    """Read a scene's ground truth.

    Args:
        path: the scene folder (or its camera file).
        format: the camera format, or ``auto`` to detect it.
        masks: optional folder of object masks (overrides the dataset's own).
        llff_factor: LLFF image downsampling (``images_<factor>``).
        max_size: shrink images (area resampling) and intrinsics so that the longest side
            is at most this many pixels.
        protocol_size: without ``llff_factor`` and ``max_size``, choose the protocol's
            resolution (see the module doc).

    Raises:
        UserError: nothing readable, no images next to the cameras, or too few views.
    """
    path = Path(path)
    fmt = _detect_format(path, format)
    resolution = None
    given = llff_factor is not None or max_size is not None
    if protocol_size and not given and fmt == "llff" and _has_llff_folder(path):
        llff_factor = LLFF_PROTOCOL_FACTOR
        resolution = Resolution(llff_factor, None, f"LLFF protocol: images_{llff_factor}",
                                default=True)
    cameras, mask_paths, file = _read_cameras(path, fmt, llff_factor)
    order = sorted(range(len(cameras)), key=lambda i: Path(cameras.image_paths[i]).name)
    cameras = cameras[order]
    if resolution is None:
        if protocol_size and not given:
            resolution = _protocol_resolution(fmt, cameras)
            max_size = resolution.max_size
        else:
            parts = ([f"--factor {llff_factor} (images_{llff_factor})"] if llff_factor else []) \
                + ([f"--max-size {max_size}"] if max_size is not None else [])
            resolution = Resolution(llff_factor, max_size,
                                    " and ".join(parts) or "the photos' own size", default=False)
    cameras = _shrunk_cameras(cameras, max_size)
    resolution.width, resolution.height = (int(cameras.width.max()), int(cameras.height.max()))
    resolution.mixed_sizes = bool((cameras.width != cameras.width[0]).any()
                                  or (cameras.height != cameras.height[0]).any())
    masks_list: list[Path | None]
    if masks is not None:
        masks_list = _masks_from_dir(Path(masks), [Path(p) for p in cameras.image_paths])
    elif mask_paths is not None:
        masks_list = [Path(mask_paths[i]) if Path(mask_paths[i]).is_file() else None
                      for i in order]
    else:
        masks_list = [None] * len(cameras)
    depth_paths = (_transforms_depth_paths(file, [Path(p) for p in cameras.image_paths])
                   if fmt == "transforms" else None)
    return EvalDataset(path=path, format="dtu" if fmt == "idr" else fmt,
                       cameras=cameras.to(dtype=torch.float64), mask_paths=masks_list,
                       max_size=max_size, resolution=resolution, depth_paths=depth_paths)


def _has_llff_folder(path: Path) -> bool:
    """Whether the LLFF scene at ``path`` has an ``images_<LLFF_PROTOCOL_FACTOR>`` folder."""
    file = path if path.suffix == ".npy" else path / "poses_bounds.npy"
    return (file.parent / f"images_{LLFF_PROTOCOL_FACTOR}").is_dir()


def _protocol_resolution(fmt: str, cameras: Cameras) -> Resolution:
    """The protocol's size for full-size cameras of format ``fmt`` (see the module doc)."""
    longest = int(torch.maximum(cameras.width, cameras.height).max())
    pixels = int((cameras.width * cameras.height).max())
    if fmt == "llff":
        if longest > LLFF_PROTOCOL_MAX_SIZE:
            return Resolution(None, LLFF_PROTOCOL_MAX_SIZE,
                              f"LLFF protocol: no images_{LLFF_PROTOCOL_FACTOR}/, so the "
                              f"photos shrunk to {LLFF_PROTOCOL_MAX_SIZE} px, the size of "
                              f"images_{LLFF_PROTOCOL_FACTOR}", default=True)
        return Resolution(None, None, "LLFF protocol: the photos' own size (already at most "
                          f"{LLFF_PROTOCOL_MAX_SIZE} px)", default=True)
    if fmt == "idr":
        if longest > DTU_PROTOCOL_MAX_SIZE:
            return Resolution(None, DTU_PROTOCOL_MAX_SIZE,
                              f"DTU protocol: shrunk to {DTU_PROTOCOL_MAX_SIZE} px, 400x300 from "
                              "1600x1200", default=True)
        return Resolution(None, None, "DTU protocol: the photos' own size (already at most "
                          f"{DTU_PROTOCOL_MAX_SIZE} px)", default=True)
    if pixels > LARGE_PHOTO_PIXELS:
        return Resolution(None, DEFAULT_MAX_SIZE,
                          f"photos over {LARGE_PHOTO_PIXELS / 1e6:.0f} megapixels: shrunk to "
                          f"{DEFAULT_MAX_SIZE} px, recon fit's default; pass --max-size to "
                          "choose", default=True)
    return Resolution(None, None, "the photos' own size", default=True)


def _transforms_depth_paths(file: Path, image_paths: list[Path]) -> list[Path | None] | None:
    """The ``depth_file_path`` of each image's frame in a transforms.json (matched by file
    name, then stem), or None when no frame names one."""
    import json

    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    by_name: dict[str, Path] = {}
    by_stem: dict[str, Path] = {}
    for frame in meta.get("frames", []) if isinstance(meta, dict) else []:
        if not isinstance(frame, dict) or "depth_file_path" not in frame \
                or "file_path" not in frame:
            continue
        depth = file.parent / str(frame["depth_file_path"])
        if not depth.is_file():
            continue
        image = Path(str(frame["file_path"]))
        by_name[image.name] = depth
        by_stem[image.stem] = depth
    if not by_name:
        return None
    return [by_name.get(p.name, by_stem.get(p.stem)) for p in image_paths]
