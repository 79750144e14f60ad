"""Native hard voxelization (cuda/voxelize/voxelize_cpu.cpp) against the PyTorch reference
and against hand-computed grids."""

from __future__ import annotations

import pytest
import torch

from geometry.ops.voxelize import grid_size, voxelize, voxelize_native, voxelize_torch

SIZE = (0.5, 0.5, 1.0)
RANGE = (-4.0, -4.0, -2.0, 4.0, 4.0, 2.0)


def _assert_same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x, y)


def _cloud(n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=g, dtype=dtype) * torch.tensor([10.0, 10.0, 5.0],
                                                                     dtype=dtype) - 5.0
    return torch.cat([xyz, torch.rand(n, 2, generator=g, dtype=dtype)], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_points,max_voxels", [(1, 10_000), (3, 10_000), (5, 50), (32, 1)])
def test_native_matches_reference(dtype, max_points, max_voxels):
    points = _cloud(3000, seed=max_points + max_voxels, dtype=dtype)
    # Duplicates make voxels with many points.
    points = torch.cat([points, points[:500], points[:100]])
    native = voxelize_native(points, SIZE, RANGE, max_points, max_voxels)
    reference = voxelize_torch(points, SIZE, RANGE, max_points, max_voxels)
    _assert_same(native, reference)
    assert native[0].shape[0] == min(max_voxels, native[0].shape[0])
    assert int(native[2].max()) <= max_points


def test_hand_computed_grid():
    points = torch.tensor([
        [0.1, 0.1, 0.1, 1.0],    # voxel (x8, y8, z2)
        [0.2, 0.3, 0.9, 2.0],    # same voxel
        [-3.9, 3.9, -1.5, 3.0],  # voxel (x0, y15, z0)
        [4.0, 0.0, 0.0, 4.0],    # x == range max: outside
        [0.0, 0.0, -2.5, 5.0],   # below the range
        [0.4, 0.4, 0.5, 6.0],    # first voxel again
    ])
    voxels, coords, num = voxelize_native(points, SIZE, RANGE, 2, 10)
    assert grid_size(SIZE, RANGE) == (16, 16, 4)
    assert coords.tolist() == [[2, 8, 8], [0, 15, 0]]  # (z, y, x), first-come order
    assert num.tolist() == [2, 1]  # the third point of voxel 0 is over max_points
    assert torch.equal(voxels[0], points[[0, 1]])
    assert torch.equal(voxels[1, 0], points[2]) and torch.equal(voxels[1, 1], torch.zeros(4))


def test_empty_and_outside():
    empty = torch.zeros(0, 5)
    for fn in (voxelize_native, voxelize_torch):
        voxels, coords, num = fn(empty, SIZE, RANGE, 4, 100)
        assert voxels.shape == (0, 4, 5) and coords.shape == (0, 3) and num.shape == (0,)
        outside = torch.tensor([[10.0, 0.0, 0.0, 1.0, 0.0], [float("nan"), 0, 0, 0, 0]])
        voxels, coords, num = fn(outside, SIZE, RANGE, 4, 100)
        assert voxels.shape[0] == 0 and coords.dtype == torch.int32
        voxels, _, _ = fn(_cloud(10), SIZE, RANGE, 4, 0)
        assert voxels.shape[0] == 0


def test_max_voxels_keeps_first_voxels_and_their_points():
    points = _cloud(2000, seed=3)
    full = voxelize_native(points, SIZE, RANGE, 4, 100_000)
    cut = voxelize_native(points, SIZE, RANGE, 4, 25)
    assert cut[0].shape[0] == 25
    for a, b in zip(cut, full, strict=True):
        assert torch.equal(a, b[:25])


def test_deterministic_across_threads():
    points = _cloud(20_000, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = voxelize_native(points, SIZE, RANGE, 3, 5000)
        torch.set_num_threads(max(2, threads))
        many = voxelize_native(points, SIZE, RANGE, 3, 5000)
    finally:
        torch.set_num_threads(threads)
    _assert_same(one, many)
    _assert_same(one, voxelize_native(points, SIZE, RANGE, 3, 5000))


def test_bad_arguments_raise():
    with pytest.raises(RuntimeError):
        voxelize_native(torch.zeros(3, 2), SIZE, RANGE, 1, 1)
    with pytest.raises(RuntimeError):
        voxelize_native(torch.zeros(3, 3), (0.5, 0.5), RANGE, 1, 1)


def test_dispatch_runs_the_native_kernel_on_cpu():
    points = _cloud(500, seed=7)
    _assert_same(voxelize(points, SIZE, RANGE, 3, 200),
                 voxelize_native(points, SIZE, RANGE, 3, 200))


@pytest.mark.cuda
def test_dispatch_on_cuda_matches_native_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    points = _cloud(3000, seed=8)
    on_gpu = voxelize(points.cuda(), SIZE, RANGE, 3, 500)
    _assert_same(tuple(t.cpu() for t in on_gpu), voxelize_native(points, SIZE, RANGE, 3, 500))
