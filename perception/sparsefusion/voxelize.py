"""Hard voxelization of LiDAR points: the native op ``sparseview::voxelize`` and its
Python front end.

The op is declared in ``cuda/registry.cpp`` and implemented for the CPU in
``cuda/voxelize/voxelize_cpu.cpp`` (compiled on first use by :mod:`geometry.native`).
On a CUDA device the vectorised PyTorch version (:mod:`._voxelize_torch`, also the test
oracle) runs on the GPU: it is the same algorithm in sorting form, and there is no
hand-written CUDA kernel (it could not be tested where this was written).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from perception.sparsefusion._voxelize_torch import grid_size, voxelize_torch

__all__ = ["grid_size", "voxelize", "voxelize_native", "voxelize_torch"]


def voxelize_native(
    points: Tensor,  # [N, C] on the CPU
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    max_points: int,
    max_voxels: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The native CPU kernel (see :func:`voxelize`)."""
    from geometry.native import load_ops

    load_ops()
    return torch.ops.sparseview.voxelize(
        points, [float(v) for v in voxel_size], [float(v) for v in point_range],
        int(max_points), int(max_voxels),
    )


def voxelize(
    points: Tensor,  # [N, C] x, y, z (metres, LiDAR frame) first
    voxel_size: Sequence[float],  # (x, y, z) metres
    point_range: Sequence[float],  # (x0, y0, z0, x1, y1, z1) metres
    max_points: int,
    max_voxels: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Group points into voxels of a regular grid (no gradient: it selects, not computes).

    Returns:
        voxels ``[M, max_points, C]`` (zero padded), coords ``[M, 3]`` int32 ``(z, y, x)``
        voxel indices, num_points ``[M]`` int32; voxels are ordered by their first point.
    """
    with torch.no_grad():
        if points.device.type == "cpu":
            return voxelize_native(points, voxel_size, point_range, max_points, max_voxels)
        return voxelize_torch(points, voxel_size, point_range, max_points, max_voxels)
