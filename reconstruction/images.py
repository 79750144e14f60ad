"""The one image loader of the reconstruction pipeline.

Loads a folder of photos as float RGB in [0, 1] (``[H, W, 3]``), the way a user expects them
to look: EXIF orientation applied, transparency composited on a background colour,
greyscale and 16-bit images expanded to 8-bit-range RGB, each image at its own size
(optionally shrunk so that its longest side is at most ``max_size`` pixels). Files that are
not images are skipped with one warning; an image that cannot be decoded is an error.

Where the EXIF data gives it, the focal length becomes a pixel-focal prior for the
camera intrinsics (see :func:`exif_focal_px`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geometry.errors import UserError

#: File suffixes read as images (case-insensitive). Other files are skipped with a warning.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: Diagonal of a 35 mm film frame (36 x 24 mm), the reference of "35 mm equivalent" focals.
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)

_RESOLUTION_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}  # EXIF FocalPlaneResolutionUnit

#: Most pixels a photo may have (PIL's own decompression-bomb threshold, ~89 MP, so PIL never
#: warns): a larger file is refused from its header, before gigabytes are spent decoding it
#: (a 12000x12000 photo needs 1.7 GB as float RGB; SfM and the fit shrink it anyway).
MAX_PIXELS = 89_478_485


@dataclass
class LoadedImage:
    """One photo as the pipeline sees it."""

    path: Path
    """The file it came from."""
    rgb: Tensor  # [H, W, 3] float32 in [0, 1]
    """Colours, after orientation, compositing and resizing."""
    focal_px: float | None
    """Pixel focal length from EXIF at this (resized) resolution, or None without EXIF."""
    camera_key: tuple
    """Equal for images that come from one camera (EXIF make, model, focal; original size)."""
    had_alpha: bool = False
    """Whether the file had transparency (composited on the background)."""
    source_size: tuple[int, int] | None = None
    """``(width, height)`` of the file itself (after EXIF orientation), before any shrinking;
    None for an image that does not come from a file. SfM reloads the photo at its own
    matching resolution from it (see :mod:`reconstruction.init.sfm`)."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """The colour transparency was composited on."""

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def warn(message: str) -> None:
    """Print one warning line on stderr (rich, like the rest of the CLI's output)."""
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[yellow]warning:[/yellow] {message}")


def list_image_files(directory: str | os.PathLike,
                     min_images: int = 2) -> list[Path]:
    """The image files of ``directory`` in name order; other files are skipped with one warning.

    Hidden files (``.DS_Store``) and sub-folders are ignored silently. Raises
    :class:`UserError` when the folder is missing, empty, or has fewer than ``min_images``.
    """
    directory = Path(directory)
    if not directory.exists():
        raise UserError(f"image folder {directory} does not exist; "
                        "give --images a folder of JPEG/PNG photos.")
    if not directory.is_dir():
        raise UserError(f"{directory} is not a folder; give --images a folder of JPEG/PNG photos.")
    entries = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        what = "is empty" if not files else f"has no JPEG/PNG images ({len(files)} other files)"
        raise UserError(f"image folder {directory} {what}; put at least {min_images} "
                        "overlapping photos of the scene in it.")
    if skipped:
        names = ", ".join(p.name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warn(f"skipping {len(skipped)} non-image file(s) in {directory}: {names}")
    if len(images) < min_images:
        raise UserError(f"image folder {directory} has {len(images)} image(s) but at least "
                        f"{min_images} overlapping photos of the scene are needed.")
    return images


def _exif_tags(img) -> dict[int, object]:
    from PIL import ExifTags

    exif = img.getexif()
    tags = dict(exif.items())
    try:
        tags.update(exif.get_ifd(ExifTags.IFD.Exif).items())
    except (KeyError, ValueError, TypeError, OSError):
        pass
    return tags


def exif_focal_px(tags: dict[int, object], width: int, height: int) -> float | None:
    """Pixel focal length of a ``width`` x ``height`` image from its EXIF tags, or None.

    Uses ``FocalLengthIn35mmFilm`` (defined on the frame diagonal: ``f_px = f35 * diag_px /
    43.27 mm``), else ``FocalLength`` with ``FocalPlaneXResolution`` (pixels per unit on the
    sensor, rescaled from ``ExifImageWidth`` to ``width``). The diagonal makes the result
    independent of the EXIF rotation.
    """
    from PIL import ExifTags

    def number(tag: int) -> float | None:
        value = tags.get(tag)
        try:
            value = float(value)  # IFDRational and ints
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        return value if math.isfinite(value) and value > 0 else None

    f35 = number(ExifTags.Base.FocalLengthIn35mmFilm)
    if f35 is not None:
        return f35 * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM
    focal_mm = number(ExifTags.Base.FocalLength)
    px_per_unit = number(ExifTags.Base.FocalPlaneXResolution)
    unit = tags.get(ExifTags.Base.FocalPlaneResolutionUnit, 2)
    exif_width = number(ExifTags.Base.ExifImageWidth)
    exif_height = number(ExifTags.Base.ExifImageHeight)
    if focal_mm is None or px_per_unit is None or unit not in _RESOLUTION_UNIT_MM:
        return None
    focal_px = focal_mm * px_per_unit / _RESOLUTION_UNIT_MM[unit]
    if exif_width is not None and exif_height is not None:
        # Longest sides correspond whatever the rotation.
        focal_px *= max(width, height) / max(exif_width, exif_height)
    return focal_px


def _to_rgb_array(img, background: Sequence[float]) -> tuple[np.ndarray, bool]:
    """``[H, W, 3]`` float32 in [0, 1] from any PIL mode; transparency goes on ``background``."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(img, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") or grey.max() > 255 else 255.0
        grey = np.clip(grey / top, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2), False
    if mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2), False
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:4]
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        return rgba[..., :3] * alpha + bg * (1.0 - alpha), bool((alpha < 1).any())
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0, False


def _open_checked(path: Path):
    """``PIL.Image.open`` (lazy: only the header is read) with the size checked first.

    PIL's own :class:`DecompressionBombWarning` (printed raw on stderr) is silenced: the
    :data:`MAX_PIXELS` check replaces it with one sentence, before anything is decoded.
    """
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise UserError(f"image {path} is {width}x{height} pixels ({width * height / 1e6:.0f} "
                        f"megapixels), more than the {MAX_PIXELS / 1e6:.0f} megapixels this "
                        "loader decodes; shrink it first (e.g. to 4000 pixels on its longest "
                        "side).")
    return img


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header alone (EXIF orientation
    applied); a file that cannot be read or is too large (:data:`MAX_PIXELS`) is a
    UserError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with _open_checked(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)  # EXIF Orientation
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {path} ({err}); "
                        "replace or remove the corrupt file.") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def load_image(path: str | os.PathLike, max_size: int | None = None,
               background: Sequence[float] = (1.0, 1.0, 1.0)) -> LoadedImage:
    """Load one photo (see the module doc); a file that cannot be decoded, or one with more
    than :data:`MAX_PIXELS` pixels (refused from its header), is a UserError."""
    from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with _open_checked(path) as img:
            img.load()
            tags = _exif_tags(img)
            img = ImageOps.exif_transpose(img)
            original_w, original_h = img.size
            rgb, had_alpha = _to_rgb_array(img, background)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {path} ({err}); "
                        "replace or remove the corrupt file.") from None
    if rgb.shape[0] < 8 or rgb.shape[1] < 8:
        raise UserError(f"image {path} is only {rgb.shape[1]}x{rgb.shape[0]} pixels; "
                        "remove it or use photos at least 8 pixels wide.")
    scale = 1.0
    if max_size is not None and max(original_w, original_h) > max_size:
        scale = max_size / max(original_w, original_h)
        new_w = max(1, round(original_w * scale))
        new_h = max(1, round(original_h * scale))
        # Resize the composited float image so that edges against the background match;
        # area averaging is the alias-free choice for shrinking.
        import cv2

        rgb = np.clip(cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA), 0.0, 1.0)
        scale = new_w / original_w
    focal = exif_focal_px(tags, original_w, original_h)
    key = (tags.get(ExifTags.Base.Make), tags.get(ExifTags.Base.Model),
           tags.get(ExifTags.Base.FocalLength), tags.get(ExifTags.Base.FocalLengthIn35mmFilm),
           (original_w, original_h))
    return LoadedImage(
        path=path,
        rgb=torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)),
        focal_px=None if focal is None else focal * scale,
        camera_key=tuple(str(v) if v is not None else None for v in key),
        had_alpha=had_alpha,
        source_size=(original_w, original_h),
        background=(float(background[0]), float(background[1]), float(background[2])),
    )


def load_images(directory: str | os.PathLike, max_size: int | None = None,
                background: Sequence[float] = (1.0, 1.0, 1.0),
                min_images: int = 2) -> list[LoadedImage]:
    """Load every photo of ``directory`` in name order (see :func:`list_image_files`)."""
    if max_size is not None and max_size < 16:
        raise UserError(f"--max-size {max_size} is too small; use at least 16 pixels.")
    return [load_image(p, max_size, background) for p in list_image_files(directory, min_images)]


def shared_camera(images: Sequence[LoadedImage]) -> bool:
    """Whether all images seem to come from one camera (same EXIF camera and original size)."""
    return len({im.camera_key for im in images}) == 1



def camera_rows(cameras, images: Sequence[LoadedImage], source: Path) -> list[int | None]:
    """For each photo, the row of ``cameras`` (a :class:`~geometry.cameras.Cameras` read from
    ``source``) whose image name matches its file name, else its stem; None where none does.

    Raises:
        UserError: the cameras carry no image names to match.
    """
    names = cameras.names or [str(p) for p in (cameras.image_paths or [])]
    if len(names) != len(cameras):
        raise UserError(f"the cameras in {source} have no image names; use a COLMAP model or "
                        "transforms.json that names its photos.")
    by_name = {Path(n).name: i for i, n in enumerate(names)}
    by_stem = {Path(n).stem: i for i, n in enumerate(names)}
    return [by_name.get(im.path.name, by_stem.get(im.path.stem)) for im in images]


def output_names(images: Sequence[LoadedImage]) -> list[str]:
    """PNG names for OUT/images: the photo's stem with whitespace as ``_`` (COLMAP's text
    model cannot hold spaces), made unique (a.jpg and a.png both exist)."""
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


def files_per_photo(folder: Path, images: Sequence[LoadedImage], suffixes: Sequence[str],
                    what: str, option: str) -> list[Path]:
    """The file of every photo in ``folder`` (same stem, one of ``suffixes``), in the
    photos' order: per-photo masks, NOCS maps and the like (``what``: "mask", "NOCS map").

    Raises:
        UserError: no such folder, a file without a photo, a photo without a file.
    """
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist; give {option} a folder with "
                        f"one {what} per photo, named like the photo.")
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
            files.setdefault(p.stem, p)
    stems = {im.path.stem for im in images}
    extra = sorted(s for s in files if s not in stems)
    if extra:
        raise UserError(f"{folder} has {what}s for photos that are not in the image folder "
                        f"({', '.join(extra[:3])}); {what}s must match the photos one to one.")
    paths = []
    for im in images:
        path = files.get(im.path.stem)
        if path is None:
            raise UserError(f"{folder} has no {what} for the photo {im.path.name}; give one "
                            f"{what} per photo with the photo's name ({', '.join(suffixes)}).")
        paths.append(path)
    return paths
