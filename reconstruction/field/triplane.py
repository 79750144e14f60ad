"""Triplanes: three axis-aligned feature planes (xy, xz, yz) read by bilinear sampling.

A point ``(x, y, z)`` in ``[-1, 1]^3`` reads plane ``xy`` at ``(x, y)``, ``xz`` at
``(x, z)`` and ``yz`` at ``(y, z)``; the first coordinate runs along the plane's width
(last axis), the second along its height. ``align_corners=True``: the plane's corner texels
sit exactly at ``+-1``, so a plane of resolution ``R`` has texels every ``2 / (R - 1)``.
Outside ``[-1, 1]`` features are zero. The three reads are summed (EG3D), averaged,
multiplied (K-planes) or concatenated.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Reduce = Literal["sum", "mean", "product", "concat"]

#: The coordinate pairs ``(width axis, height axis)`` of the planes, in order.
PLANE_AXES = ((0, 1), (0, 2), (1, 2))


def sample_triplanes(planes: Tensor, points: Tensor, reduce: Reduce = "sum") -> Tensor:
    """Features of points on triplanes.

    Args:
        planes: ``[B, 3, C, R, R]`` the xy, xz, yz planes (height, width).
        points: ``[B, N, 3]`` in ``[-1, 1]^3``.
        reduce: how the three reads combine.

    Returns:
        ``[B, N, C]`` (``[B, N, 3C]`` for ``concat``).
    """
    B, P, C, H, W = planes.shape
    if P != 3:
        raise ValueError(f"triplanes need 3 planes, got {P}")
    coords = torch.stack([points[..., list(axes)] for axes in PLANE_AXES], 1)  # [B, 3, N, 2]
    grid = coords.reshape(B * 3, 1, -1, 2).to(planes.dtype)
    feats = F.grid_sample(planes.reshape(B * 3, C, H, W), grid, mode="bilinear",
                          padding_mode="zeros", align_corners=True)  # [B*3, C, 1, N]
    feats = feats.reshape(B, 3, C, -1).permute(0, 1, 3, 2)  # [B, 3, N, C]
    if reduce == "sum":
        return feats.sum(1)
    if reduce == "mean":
        return feats.mean(1)
    if reduce == "product":
        return feats.prod(1)
    if reduce == "concat":
        return torch.cat(feats.unbind(1), -1)
    raise ValueError(f"unknown triplane reduction {reduce!r}")


class Triplane(nn.Module):
    """Learnable triplanes ``[1, 3, C, R, R]`` (per-scene fields)."""

    def __init__(self, channels: int, resolution: int, init_scale: float = 0.1,
                 reduce: Reduce = "sum") -> None:
        super().__init__()
        self.planes = nn.Parameter(torch.randn(1, 3, channels, resolution, resolution)
                                   * init_scale)
        self.reduce = reduce

    def forward(self, points: Tensor) -> Tensor:
        """``[N, 3]`` points in ``[-1, 1]^3`` -> ``[N, C]`` (``[N, 3C]`` for concat)."""
        return sample_triplanes(self.planes, points[None], self.reduce)[0]
