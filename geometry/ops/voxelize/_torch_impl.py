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


def grid_size(voxel_size: Sequence[float], point_range: Sequence[float]) -> tuple[int, int, int]:
    """``(X, Y, Z)`` voxel counts of the grid (``round((max - min) / size)`` per axis)."""
    return tuple(int(round((point_range[d + 3] - point_range[d]) / voxel_size[d]))
                 for d in range(3))  # type: ignore[return-value]


def voxelize_torch(
    points: Tensor,  # [N, C] x, y, z first
    voxel_size: Sequence[float],  # (x, y, z) metres
    point_range: Sequence[float],  # (x0, y0, z0, x1, y1, z1) metres
    max_points: int,
    max_voxels: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hard voxelization, vectorised.

    Returns:
        voxels ``[M, max_points, C]`` (zero padded), coords ``[M, 3]`` int32 ``(z, y, x)``,
        num_points ``[M]`` int32.
    """
    n, c = points.shape
    gx, gy, gz = grid_size(voxel_size, point_range)
    device = points.device
    empty = (points.new_zeros((0, max_points, c)), torch.zeros((0, 3), dtype=torch.int32,
             device=device), torch.zeros(0, dtype=torch.int32, device=device))
    if n == 0 or max_voxels == 0:
        return empty
    size = torch.tensor(list(voxel_size), dtype=points.dtype, device=device)
    low = torch.tensor(list(point_range[:3]), dtype=points.dtype, device=device)
    q = torch.floor((points[:, :3] - low) / size)
    grid = torch.tensor([gx, gy, gz], dtype=points.dtype, device=device)
    inside = torch.isfinite(q).all(1) & (q >= 0).all(1) & (q < grid).all(1)
    index = torch.nonzero(inside).squeeze(1)  # kept points, in input order
    if index.numel() == 0:
        return empty
    cell = q[index].long()
    linear = (cell[:, 2] * gy + cell[:, 1]) * gx + cell[:, 0]
    unique, inverse = torch.unique(linear, return_inverse=True)
    order = torch.arange(index.numel(), device=device)
    first = torch.full((unique.numel(),), index.numel(), dtype=torch.long, device=device)
    first = first.scatter_reduce(0, inverse, order, reduce="amin")
    # Voxel number = rank of the voxel's first point among all first points.
    voxel_order = torch.argsort(first)
    rank_of_unique = torch.empty_like(voxel_order)
    rank_of_unique[voxel_order] = torch.arange(unique.numel(), device=device)
    voxel_id = rank_of_unique[inverse]  # [K] voxel number of each kept point
    keep = voxel_id < max_voxels
    voxel_id, index, order = voxel_id[keep], index[keep], order[keep]
    if voxel_id.numel() == 0:
        return empty
    # Rank of each point within its voxel (points come in input order).
    sort = torch.argsort(voxel_id * (n + 1) + order)
    sorted_voxel = voxel_id[sort]
    start = torch.searchsorted(sorted_voxel, sorted_voxel, right=False)
    rank = torch.empty_like(sort)
    rank[sort] = torch.arange(sort.numel(), device=device) - start
    keep = rank < max_points
    voxel_id, index, rank = voxel_id[keep], index[keep], rank[keep]
    m = int(voxel_id.max().item()) + 1
    voxels = points.new_zeros((m, max_points, c))
    voxels[voxel_id, rank] = points[index]
    num_points = torch.bincount(voxel_id, minlength=m).to(torch.int32)
    lin = unique[voxel_order[:m]]
    coords = torch.stack([lin // (gx * gy), (lin // gx) % gy, lin % gx], dim=1).to(torch.int32)
    return voxels, coords, num_points
