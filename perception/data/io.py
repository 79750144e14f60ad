"""Readers of the nuScenes sensor files: LiDAR ``.pcd.bin`` point files and camera JPEGs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from geometry.errors import UserError

LIDAR_COLUMNS = 5  # x, y, z, intensity, ring (nuScenes .pcd.bin)


def load_lidar_points(path: str | os.PathLike, columns: int = LIDAR_COLUMNS) -> np.ndarray:
    """Read a nuScenes LiDAR file (float32 records of x, y, z, intensity, ring index).

    Args:
        path: a ``.pcd.bin`` (nuScenes) or ``.bin`` file.
        columns: floats per point (5 for nuScenes and Lyft).

    Returns:
        ``[N, columns]`` float32, coordinates in metres in the sensor frame.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LiDAR file {path} does not exist; check --dataroot (the folder that "
                        "holds samples/ and sweeps/).")
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % columns:
        raise UserError(f"LiDAR file {path} holds {raw.size} floats, not a multiple of {columns}; "
                        "it is truncated or not a nuScenes .pcd.bin file.")
    return raw.reshape(-1, columns)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read a camera image as float RGB.

    Returns:
        ``[H, W, 3]`` float32 in ``[0, 1]``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} does not exist; check --dataroot (the folder that holds "
                        "samples/).")
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"image {path} cannot be read ({err}); replace the file.") from None
    return rgb.astype(np.float32) / 255.0
