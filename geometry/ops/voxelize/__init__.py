"""Hard voxelization of LiDAR points: the op ``sparseview::voxelize``.

- :func:`voxelize`: the entry point, dispatching by device;
- :func:`voxelize_native` (``_wrapper.py``): the native CPU kernel
  (``cuda/voxelize/voxelize_cpu.cpp``, compiled on first use by :mod:`geometry.ops.loader`);
- :func:`voxelize_torch` (``_torch_impl.py``): the vectorised PyTorch version, the test
  oracle. On a CUDA device it runs on the GPU: it is the same algorithm in sorting form,
  and there is no hand-written CUDA kernel (it could not be tested where this was written).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from geometry.ops.voxelize._torch_impl import grid_size, voxelize_torch
from geometry.ops.voxelize._wrapper import voxelize_native

__all__ = ["grid_size", "voxelize", "voxelize_native", "voxelize_torch"]


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
