"""Pure-PyTorch reference of hard voxelization: the test oracle of ``sparseview::voxelize``
(``cuda/voxelize/voxelize_cpu.cpp``), and the implementation on devices without a native
backend.

Same rules as the kernel: ``c = floor((p - range_min) / voxel_size)`` per axis in the
points' dtype; points outside the grid are dropped; voxels are numbered by their first
point; at most ``max_voxels`` voxels (points of later voxels are dropped) and at most
``max_points`` points per voxel (the first ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from geometry.ops.sparse_voxel._torch_impl import grid_size, voxel_hash_torch

__all__ = ["grid_size", "voxelize_torch"]


def voxelize_torch(
    points: Tensor,  # [N, C] x, y, z first
    voxel_size: Sequence[float],  # (x, y, z) metres
    point_range: Sequence[float],  # (x0, y0, z0, x1, y1, z1) metres
    max_points: int,
    max_voxels: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hard voxelization, vectorised: the voxel hash of
    :func:`~geometry.ops.sparse_voxel._torch_impl.voxel_hash_torch` (same caps, same
    first-come numbering) with each voxel's points gathered in input order.

    Returns:
        voxels ``[M, max_points, C]`` (zero padded), coords ``[M, 3]`` int32 ``(z, y, x)``,
        num_points ``[M]`` int32.
    """
    n, c = points.shape
    device = points.device
    empty = (points.new_zeros((0, max_points, c)), torch.zeros((0, 3), dtype=torch.int32,
             device=device), torch.zeros(0, dtype=torch.int32, device=device))
    if n == 0 or max_voxels == 0:
        return empty
    coords, inverse, counts = voxel_hash_torch(points, voxel_size, point_range, max_points,
                                               max_voxels)
    m = coords.shape[0]
    if m == 0:
        return empty
    index = torch.nonzero(inverse >= 0).squeeze(1)  # kept points, in input order
    voxel_id = inverse[index]
    # Rank of each point within its voxel (points come in input order).
    sort = torch.argsort(voxel_id * (n + 1) + index)
    sorted_voxel = voxel_id[sort]
    start = torch.searchsorted(sorted_voxel, sorted_voxel, right=False)
    rank = torch.empty_like(sort)
    rank[sort] = torch.arange(sort.numel(), device=device) - start
    voxels = points.new_zeros((m, max_points, c))
    voxels[voxel_id, rank] = points[index]
    return voxels, coords.flip(1).contiguous(), counts.to(torch.int32)
