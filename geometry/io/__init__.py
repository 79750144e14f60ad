"""Readers and writers of camera formats, all speaking :class:`geometry.cameras.Cameras`.

=================  ==============================================  =========================
format             files                                           module
=================  ==============================================  =========================
``colmap``         ``cameras/images/points3D`` ``.txt`` or ``.bin``  :mod:`.colmap`
``transforms``     nerfstudio / instant-ngp / Blender JSON          :mod:`.transforms_json`
``llff``           ``poses_bounds.npy``                             :mod:`.llff`
``idr``            IDR / NeuS / DTU ``cameras.npz``                 :mod:`.idr`
``co3d``           CO3D ``gt_cameras.npz`` (PyTorch3D NDC)          :mod:`.co3d`
=================  ==============================================  =========================

:func:`read_cameras` picks the format from the files present. The format modules give
what else each format carries (COLMAP points and tracks, LLFF bounds, IDR scale matrices
and masks). Submodules are imported on use, so ``import geometry.io.atomic`` stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

    from geometry.cameras import Cameras

CameraFormat = Literal["auto", "colmap", "transforms", "llff", "idr", "co3d"]


def detect_camera_format(path: str | os.PathLike) -> CameraFormat | None:
    """The camera format found at ``path`` (a file or a folder), or ``None``.

    Folders are checked in this order: ``transforms.json`` (also ``transforms_train.json``),
    a COLMAP model (in the folder, ``sparse/0`` or ``sparse``), ``poses_bounds.npy``,
    ``cameras.npz`` (IDR), ``gt_cameras.npz`` (CO3D).
    """
    from geometry.io.colmap import find_colmap_model

    path = Path(path)
    if path.is_file():
        if path.suffix == ".json":
            return "transforms"
        if path.suffix == ".npy":
            return "llff"
        if path.suffix == ".npz":
            import numpy as np

            try:
                with np.load(path, allow_pickle=False) as npz:
                    keys = set(npz.files)
            except (ValueError, OSError):
                return None
            if "world_mat_0" in keys:
                return "idr"
            if "gtR" in keys:
                return "co3d"
        if path.parent != path and path.suffix in (".bin", ".txt"):
            return "colmap" if find_colmap_model(path.parent) else None
        return None
    if not path.is_dir():
        return None
    if (path / "transforms.json").is_file() or (path / "transforms_train.json").is_file():
        return "transforms"
    if find_colmap_model(path) is not None:
        return "colmap"
    if (path / "poses_bounds.npy").is_file():
        return "llff"
    if (path / "cameras.npz").is_file():
        return "idr"
    if (path / "gt_cameras.npz").is_file():
        return "co3d"
    return None


def read_cameras(
    path: str | os.PathLike,
    format: CameraFormat = "auto",
    dtype: torch.dtype | None = None,
    require_images: bool = True,
) -> Cameras:
    """Read the cameras of a scene in any supported format.

    Args:
        path: a scene folder or a camera file.
        format: one of ``colmap, transforms, llff, idr, co3d``, or ``auto`` to detect it
            (see :func:`detect_camera_format`).
        dtype: float dtype of the tensors (default ``torch.float32``).
        require_images: transforms.json: skip frames whose image is missing (with a
            warning); False keeps them all (cameras for photos kept elsewhere).

    Returns:
        OpenCV :class:`Cameras`; ``image_paths`` set where the images were found.

    Raises:
        UserError: nothing recognisable at ``path``, or a bad file (naming it).
    """
    import torch

    from geometry.errors import UserError

    dtype = torch.float32 if dtype is None else dtype
    path = Path(path)
    if format == "auto":
        detected = detect_camera_format(path)
        if detected is None:
            raise UserError(
                f"found no cameras at {path}: looked for transforms.json, a COLMAP model "
                "(cameras and images .bin/.txt, also under sparse/0), poses_bounds.npy, an "
                "IDR cameras.npz and a CO3D gt_cameras.npz; pass the folder that holds one"
            )
        format = detected
    if format == "colmap":
        from geometry.io.colmap import find_colmap_model, read_colmap_model

        base = path.parent if path.is_file() else path
        found = find_colmap_model(base)
        image_dir = None
        if found is not None:
            for candidate in (base / "images", found[0].parent.parent / "images"):
                if candidate.is_dir():
                    image_dir = candidate
                    break
        return read_colmap_model(base).to_cameras(dtype=dtype, image_dir=image_dir)
    if format == "transforms":
        from geometry.io.transforms_json import read_transforms_json

        if path.is_dir() and not (path / "transforms.json").is_file():
            path = path / "transforms_train.json"
        return read_transforms_json(path, dtype=dtype, require_images=require_images).cameras
    if format == "llff":
        from geometry.io.llff import read_llff

        return read_llff(path, dtype=dtype).cameras
    if format == "idr":
        from geometry.io.idr import read_idr

        return read_idr(path, dtype=dtype).cameras
    if format == "co3d":
        from geometry.io.co3d import read_co3d

        return read_co3d(path, dtype=dtype)
    raise UserError(f"unknown camera format {format!r}; use one of auto, colmap, transforms, "
                    "llff, idr, co3d")
