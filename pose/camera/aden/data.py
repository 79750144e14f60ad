"""Sequences ADen trains and evaluates on, and the batches made of them.

A :class:`PoseSequence` is one object seen from ``N`` cameras: images already cropped to a
centred square and resized to the model's input size (uint8, so that thousands fit in
memory), camera-to-world poses (OpenCV) and the object's category. They come from the
procedural object generator (:func:`synthetic_sequences`), from CO3D-format folders
(:func:`co3d_sequences`) or from a folder of photos without cameras (:func:`load_photos`).

Relative poses (:func:`relative_poses`): every view's camera in the first camera's frame,
``T_cam0_camj = T_world_cam0^-1 T_world_camj``, the translation divided by the first
camera's distance to the point the optical axes pass closest to (the object), so that
sequences of any scale look alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geometry.errors import UserError
from geometry.se3 import mirror_x

__all__ = ["PoseSequence", "batch_from", "co3d_sequences", "load_photos", "look_at_point",
           "prepare_images", "relative_poses", "synthetic_sequences"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class PoseSequence:
    """One object seen from ``N`` cameras."""

    images: Tensor  # [N, 3, S, S] uint8
    T_world_cam: Tensor  # [N, 4, 4] float64, OpenCV camera-to-world
    name: str
    category: str = "unknown"
    symmetry: str = "unknown"
    """``axis`` (rotationally symmetric), ``near``, ``none`` or ``unknown``."""


def prepare_images(images: list[Tensor] | Tensor, size: int) -> Tensor:
    """Centre-crop to a square and resize (area) ``[H, W, 3]`` images in [0, 1] (or uint8)
    to ``[N, 3, size, size]`` uint8."""
    out = []
    for im in images:
        x = torch.as_tensor(im)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        h, w = x.shape[:2]
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        x = x[y0:y0 + s, x0:x0 + s].permute(2, 0, 1)[None]
        if s != size:
            mode = "area" if s > size else "bilinear"
            x = torch.nn.functional.interpolate(x, size=(size, size), mode=mode)
        out.append((x[0].clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.stack(out)


def look_at_point(T_world_cam: Tensor) -> Tensor:
    """The point nearest (least squares) to every camera's optical axis
    (:func:`geometry.se3.optical_axes_point`), ``[3]`` float64; for (nearly) parallel axes,
    or a point behind camera 0, the point one mean camera spacing in front of camera 0."""
    from geometry.se3 import optical_axes_point

    T = T_world_cam.double()
    c, d = T[:, :3, 3], T[:, :3, 2]
    d = d / d.norm(dim=-1, keepdim=True)
    p = optical_axes_point(T)
    if p is not None and float(((p - c[0]) * d[0]).sum()) > 0:  # in front of camera 0
        return p
    spread = float((c - c.mean(0)).norm(dim=-1).mean()) if T.shape[0] > 1 else 0.0
    return c[0] + d[0] * max(spread, 1e-6)


def relative_poses(T_world_cam: Tensor) -> tuple[Tensor, Tensor, float]:
    """Every other view relative to the first (see the module doc).

    Args:
        T_world_cam: ``[V, 4, 4]`` camera-to-world.

    Returns:
        ``R [V-1, 3, 3]``, ``t [V-1, 3]`` (float64, in units of the scale) and the scale
        (the first camera's distance to :func:`look_at_point`).
    """
    T = T_world_cam.double()
    rel = torch.linalg.inv(T[:1]) @ T[1:]
    scale = float((look_at_point(T) - T[0, :3, 3]).norm())
    return rel[:, :3, :3], rel[:, :3, 3] / scale, scale


def poses_from_relative(R: Tensor, t: Tensor) -> Tensor:
    """Camera-to-world poses ``[V, 4, 4]`` from first-view-relative ``R [V, 3, 3]``,
    ``t [V, 3]`` (view 0 the identity), in a world whose origin is the object: the first
    camera at ``(0, 0, -1)`` looking along ``+z``."""
    V = R.shape[0]
    T = torch.eye(4, dtype=torch.float64).repeat(V, 1, 1)
    T[:, :3, :3] = R.double()
    T[:, :3, 3] = t.double()
    T[:, 2, 3] -= 1.0
    return T


def batch_from(sequences: list[PoseSequence], batch: int, views: int,
               rng: np.random.Generator, mirror: bool = False) -> dict:
    """``batch`` sequences with ``views`` random views each, the first view random too;
    with ``mirror``, each sequence is mirrored left-right with probability 1/2 (its views
    flipped, its relative poses by :func:`geometry.se3.mirror_x`).

    Returns ``images [B, V, 3, S, S]`` float in [0, 1], ``R_rel [B, V-1, 3, 3]``,
    ``t_rel [B, V-1, 3]`` (float32) and ``seed`` (for the negatives' sampling).
    """
    images, Rs, ts = [], [], []
    for i in rng.integers(0, len(sequences), batch):
        seq = sequences[int(i)]
        pick = torch.from_numpy(rng.choice(len(seq.images), views, replace=False))
        R, t, _ = relative_poses(seq.T_world_cam[pick])
        if mirror and rng.random() < 0.5:
            images.append(seq.images[pick].flip(-1))
            R, t = mirror_x(R, t)
        else:
            images.append(seq.images[pick])
        Rs.append(R)
        ts.append(t)
    return {"images": torch.stack(images).float() / 255.0,
            "R_rel": torch.stack(Rs).float(), "t_rel": torch.stack(ts).float(),
            "seed": int(rng.integers(0, 2**31 - 1))}


# ----------------------------------------------------------------------------- sources


def synthetic_sequences(count: int, frames: int, size: int, seed: int,
                        render_size: int | None = None, supersample: int = 1,
                        cache: str | os.PathLike | None = None, workers: int = 0,
                        background: bool = True, quiet: bool = True) -> list[PoseSequence]:
    """``count`` procedural object sequences (:mod:`reconstruction.procedural.objects`, seeds
    ``seed * 100000 + k``) of ``frames`` views, rendered at ``render_size`` (default
    ``size``) and resized to ``size``.

    Args:
        cache: a folder of rendered sequences (:func:`~reconstruction.procedural.objects.
            write_object_dataset`): read when it holds these sequences, else written.
        workers: rendering processes (0: this one).
        background: textured ground and sky (else a plain backdrop).
    """
    from geometry.progress import progress_bar
    from reconstruction.procedural.objects import (
        ObjectSequenceConfig,
        object_sequences,
        read_object_dataset,
        write_object_dataset,
    )

    config = ObjectSequenceConfig(image_size=render_size or size, views=frames,
                                  supersample=supersample, background=background)
    first = seed * 100_000
    source = None
    if cache is not None:
        cache = Path(cache)
        dataset = None
        if (cache / "meta.json").is_file():
            dataset = read_object_dataset(cache)
            if (dataset.first_seed, len(dataset), dataset.config) != (first, count, config):
                dataset = None
        if dataset is None:
            write_object_dataset(cache, first, count, config, workers=workers, quiet=quiet)
            dataset = read_object_dataset(cache)
        source = iter(dataset)
    out = []
    with progress_bar("object sequences", quiet=quiet, transient=True) as bar:
        task = bar.add_task("render", total=count)
        for seq in source or object_sequences(first, count, config, workers=workers):
            out.append(PoseSequence(
                images=prepare_images(list(seq.images), size),
                T_world_cam=seq.cameras.T_world_cam.double(),
                name=f"synthetic-{seq.seed}", category=seq.category, symmetry=seq.symmetry))
            bar.advance(task)
    return out


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path, min_side: int | None = None) -> Tensor:
    """``[H, W, 3]`` float in [0, 1]; UserError for an unreadable file.

    Args:
        min_side: shrink by a whole factor (JPEGs decoded at that scale: fast) as long as
            the shorter side stays at least this (None: full size).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if min_side is not None:
                factor = max(1, min(im.size) // min_side)
                if factor > 1:
                    im.draft("RGB", (im.size[0] // factor, im.size[1] // factor))
                    factor = max(1, min(im.size) // min_side)
                    im = im.convert("RGB").reduce(factor) if factor > 1 else im
            return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path} is not a readable image ({err}); remove or replace it.") \
            from None


def load_photos(folder: str | os.PathLike, min_views: int = 2
                ) -> tuple[list[Path], list[Tensor]]:
    """The photos of a folder (sorted by name): paths and ``[H, W, 3]`` images.

    Raises:
        UserError: not a folder, fewer than ``min_views`` photos, or photos of different
            sizes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give a folder of 2-8 photos of one object.")
    files = _image_files(folder)
    if len(files) < min_views:
        raise UserError(f"{folder} holds {len(files)} photo(s); ADen needs at least "
                        f"{min_views} views of the object.")
    images = [read_image(p) for p in files]
    sizes = {(im.shape[1], im.shape[0]) for im in images}
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise UserError(f"the photos in {folder} have different sizes ({listed}); give photos "
                        "of one camera at one size.")
    return files, images


def _co3d_folders(root: Path) -> list[Path]:
    if (root / "gt_cameras.npz").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("gt_cameras.npz"))


def co3d_sequences(root: str | os.PathLike, size: int, min_views: int = 2
                   ) -> list[PoseSequence]:
    """CO3D-format sequences under ``root`` (the folder itself or its sub-folders, each
    with its images and ``gt_cameras.npz``, read by :func:`geometry.io.co3d.read_co3d`).

    Raises:
        UserError: ``root`` is not a folder or holds no annotated sequence.
    """
    from geometry.io.co3d import read_co3d

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--co3d {root} is not a folder; give a CO3D sequence folder or a "
                        "folder of them.")
    folders = _co3d_folders(root)
    if not folders:
        raise UserError(f"--co3d {root} holds no camera annotations (gt_cameras.npz); give "
                        "CO3D sequence folders with their annotations.")
    out = []
    for folder in folders:
        cams = read_co3d(folder)
        if cams.image_paths is None or len(cams.image_paths) < min_views:
            raise UserError(f"{folder} has fewer than {min_views} annotated images; give "
                            "CO3D sequences with their frames.")
        images = [read_image(Path(p), min_side=2 * size) for p in cams.image_paths]
        category = folder.parent.name if folder != root else folder.name
        out.append(PoseSequence(images=prepare_images(images, size),
                                T_world_cam=cams.T_world_cam.double(), name=folder.name,
                                category=category))
    return out
