"""SparseFusion's voxelization (perception.sparsefusion.lidar_branch.voxelize_batch) on the
sparse-voxel scatter op gives what it gave on hard voxelization + a mean over the padded
voxels: the same voxels in the same order, the same point counts, and means equal up to the
rounding of the summation order (torch's sum over the padded points vs in-order sums)."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from geometry.ops.voxelize import voxelize
from perception.sparsefusion.config import paper_preset, small_preset
from perception.sparsefusion.lidar_branch import voxelize_batch


def _previous_voxelize_batch(points, config):
    """The implementation before the scatter op (hard voxelization, mean of the padded
    points)."""
    vc = config.voxel
    feats, coords, counts = [], [], []
    for b, pts in enumerate(points):
        voxels, coord, num = voxelize(pts, vc.voxel_size, vc.point_range, vc.max_points,
                                      vc.max_voxels)
        feats.append(voxels.sum(1) / num.clamp(min=1)[:, None].to(voxels.dtype))
        batch_column = torch.full((coord.shape[0], 1), b, dtype=torch.int32)
        coords.append(torch.cat([batch_column, coord], dim=1))
        counts.append(coord.shape[0])
    return torch.cat(feats), torch.cat(coords), torch.tensor(counts)


def _sweeps(config, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor(config.voxel.point_range[:3])
    hi = torch.tensor(config.voxel.point_range[3:])
    xyz = lo - 2 + torch.rand(n, 3, generator=g) * (hi - lo + 4)  # some points outside
    # Dense clusters: many points per voxel, so max_points cuts.
    centers = xyz[:50]
    cluster = centers.repeat_interleave(40, 0) + torch.randn(2000, 3, generator=g) * 0.1
    xyz = torch.cat([xyz, cluster])
    extra = torch.rand(xyz.shape[0], 2, generator=g)  # intensity, time lag
    return torch.cat([xyz, extra], 1)[torch.randperm(xyz.shape[0], generator=g)]


def test_voxelize_batch_unchanged_by_the_scatter_op():
    for preset, n, cap in ((small_preset(), 30000, None), (paper_preset(), 40000, 3000)):
        if cap is not None:  # also cut by max_voxels
            preset.voxel.max_voxels = cap
        points = [_sweeps(preset, n, seed) for seed in (0, 1)] + [torch.zeros(0, 5)]
        feats, coords, counts = voxelize_batch(points, preset)
        old_feats, old_coords, old_counts = _previous_voxelize_batch(points, preset)
        assert torch.equal(coords, old_coords) and coords.dtype == torch.int32
        assert torch.equal(counts, old_counts)
        assert_close(feats, old_feats, rtol=1e-6, atol=1e-6)
        if cap is not None:
            assert int(counts[0]) == cap
