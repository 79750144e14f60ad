"""Depth maps stored as numpy ``.npy`` files (``[H, W]`` or ``[H, W, 1]`` z-depths)."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from geometry.errors import UserError


def read_depth_npy(path: str | os.PathLike, width: int, height: int, fix: str) -> Tensor:
    """The depth map in ``path`` as float32 ``[height, width]`` (nearest resampling when the
    file holds another size); values are returned as stored.

    Args:
        fix: what the user should do when the file cannot be read (ends the error message).

    Raises:
        UserError: an unreadable file, or an array that is not a 2-D array of numbers.
    """
    try:
        depth = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"the depth map {path} is unreadable ({err}); {fix}.") from None
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
        raise UserError(f"the depth map {path} has shape {depth.shape} ({depth.dtype}); it "
                        "must be a 2-D array of z-depths.")
    out = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))
    if out.shape != (height, width):
        import torch.nn.functional as F

        out = F.interpolate(out[None, None], size=(height, width), mode="nearest")[0, 0]
    return out
