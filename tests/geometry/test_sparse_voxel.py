"""Sparse-voxel kernels (cuda/sparse_voxel/) against their PyTorch references
(geometry/ops/sparse_voxel/_torch_impl.py) and hand-computed values: occupancy-grid ray
marching, voxel hashing with mean/max scatter, trilinear sampling of sparse voxel features.

Discrete outputs (sample bounds, voxel ids, corner rows) must be identical; sums agree to the
rounding of a different summation order (tolerances: torch.testing's defaults per dtype).
Tests marked ``cuda`` run the CUDA kernels against the same references on a GPU.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from geometry.ops import sparse_voxel as sv

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _assert_equal(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, y.dtype, x.shape, y.shape)
        assert torch.equal(x.cpu(), y.cpu())


# ------------------------------------------------------------------------- ray marching
def _rays(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    origins = torch.randn(n, 3, generator=g) * 2.0
    targets = torch.rand(n, 3, generator=g) * 2.4 - 1.2
    dirs = targets - origins
    # Axis-aligned rays (zero direction components), zero directions, rays pointing away.
    dirs[: n // 10, 1:] = 0
    dirs[n // 10: n // 5, :2] = 0
    dirs[n // 5: n // 5 + 5] = 0
    dirs[n // 5 + 5: n // 5 + 40] = -dirs[n // 5 + 5: n // 5 + 40]
    origins[n // 5 + 40: n // 5 + 60] += torch.tensor([8.0, 0.0, 0.0])  # far beside the grid
    return origins, dirs


def _occupancy(levels: int, res: tuple[int, int, int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand((levels, *res), generator=g) < 0.08
    x, y, z = res
    occ[:, x // 4: x // 2 + 1, y // 4: 3 * y // 4, z // 3: 2 * z // 3 + 1] = True  # full blocks
    occ[:, :, : y // 5] = False  # empty slabs
    return occ


MARCH_CASES = [  # levels, resolution, near, far, step
    (1, (40, 36, 33), 0.0, math.inf, 0.013),
    (1, (16, 12, 10), 0.3, 4.0, 0.037),
    (3, (13, 10, 7), 0.0, 9.0, 0.021),
    (2, (24, 24, 24), -2.0, math.inf, 0.008),
]


@pytest.mark.parametrize("levels,res,near,far,step", MARCH_CASES)
def test_ray_march_matches_reference(levels, res, near, far, step):
    origins, dirs = _rays(1200, seed=levels + res[0])
    occ = _occupancy(levels, res, seed=res[1])
    bounds = sv.cascade_bounds([-1.0, -0.8, -0.9, 1.1, 1.0, 0.7], levels)
    near_t = torch.full((1200,), near)
    near_t[::7] += 0.5  # per-ray near / far
    far_t = torch.full((1200,), far)
    far_t[::5] = 2.5
    args = (origins, dirs, near_t, far_t, occ, bounds, step)
    native = sv.ray_march_native(*args)
    reference = sv.ray_march_torch(*args)
    _assert_equal(native, reference)
    counts = native.offsets.diff()
    assert native.t_starts.numel() > 500 and (counts == 0).sum() > 20  # hits and misses
    assert torch.equal(native.ray_indices, torch.repeat_interleave(torch.arange(1200), counts))
    assert (native.t_ends > native.t_starts).all() and (native.t_starts >= near_t[
        native.ray_indices]).all()


def test_ray_march_hand_computed():
    occ = torch.zeros(4, 4, 4, dtype=torch.bool)
    occ[1, 1, 1] = True  # the cell [0.25, 0.5)^3 of the unit box
    origins = torch.tensor([[-0.5, 0.375, 0.375], [-0.5, 2.0, 0.375], [-0.5, 0.375, 0.375]])
    dirs = torch.tensor([[1.0, 0.0, 0.0]] * 3)
    far = torch.tensor([10.0, 10.0, 0.87])
    for fn in (sv.ray_march_native, sv.ray_march_torch):
        out = fn(origins, dirs, torch.zeros(3), far, occ[None], sv.cascade_bounds(
            [0, 0, 0, 1, 1, 1]), 0.05)
        # Ray 0: midpoints 0.05 k + 0.025 in [0.75, 1.0) -> k = 15..19. Ray 1 misses the box.
        # Ray 2 stops at far = 0.87: its last sample is cut to [0.85, 0.87).
        assert out.offsets.tolist() == [0, 5, 5, 8]
        assert out.ray_indices.tolist() == [0] * 5 + [2] * 3
        assert_close(out.t_starts, torch.tensor([0.75, 0.8, 0.85, 0.9, 0.95, 0.75, 0.8, 0.85]))
        assert_close(out.t_ends, torch.tensor([0.8, 0.85, 0.9, 0.95, 1.0, 0.8, 0.85, 0.87]))


def test_ray_march_cascade_finest_level_decides():
    # Level 0: [-1, 1]^3 (2^3 cells, all empty); level 1: [-2, 2]^3, only cell (1, 1, 1) =
    # [0, 2)^3 occupied. Along x at y = z = 0.5, only x in [1, 2) samples: in [0, 1) the point
    # is inside level 0, whose empty cell decides.
    occ = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    occ[1, 1, 1, 1] = True
    origin = torch.tensor([[-3.0, 0.5, 0.5]])
    direction = torch.tensor([[1.0, 0.0, 0.0]])
    bounds = sv.cascade_bounds([-1, -1, -1, 1, 1, 1], 2)
    for fn in (sv.ray_march_native, sv.ray_march_torch):
        out = fn(origin, direction, torch.zeros(1), torch.full((1,), math.inf), occ, bounds, 0.1)
        mid = (out.t_starts + out.t_ends) / 2 - 3.0  # x of the midpoints
        assert out.t_starts.numel() == 10
        assert (mid >= 1.0).all() and (mid < 2.0).all()


def test_ray_march_empty_and_full_grids():
    origins, dirs = _rays(300, seed=3)
    bounds = torch.tensor([[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]])
    near, far = torch.zeros(300), torch.full((300,), math.inf)
    none = sv.ray_march(origins[:0], dirs[:0], near[:0], far[:0], torch.ones(1, 4, 4, 4), bounds,
                        0.1)
    assert none.offsets.tolist() == [0] and none.t_starts.numel() == 0
    empty = sv.ray_march(origins, dirs, near, far, torch.zeros(1, 8, 8, 8), bounds, 0.05)
    assert empty.t_starts.numel() == 0 and empty.offsets.tolist() == [0] * 301
    full = sv.ray_march_native(origins, dirs, near, far, torch.ones(1, 8, 8, 8, dtype=torch.bool),
                               bounds, 0.05)
    _assert_equal(full, sv.ray_march_torch(origins, dirs, near, far,
                                           torch.ones(1, 8, 8, 8, dtype=torch.bool), bounds, 0.05))
    # In a full grid every ray's samples are consecutive lattice intervals.
    same_ray = full.ray_indices[1:] == full.ray_indices[:-1]
    assert torch.equal(full.t_ends[:-1][same_ray], full.t_starts[1:][same_ray])
    miss = origins + torch.tensor([10.0, 0.0, 0.0])
    away = sv.ray_march(miss, torch.tensor([[1.0, 0.0, 0.0]]).expand(300, 3), 0.0, math.inf,
                        torch.ones(8, 8, 8), bounds, 0.05)
    assert away.t_starts.numel() == 0


def test_ray_march_same_for_any_thread_count():
    origins, dirs = _rays(2000, seed=5)
    occ = _occupancy(1, (20, 20, 20), seed=1)
    args = (origins, dirs, torch.zeros(2000), torch.full((2000,), 6.0), occ,
            sv.cascade_bounds([-1, -1, -1, 1, 1, 1]), 0.02)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sv.ray_march_native(*args)
        torch.set_num_threads(2)
        two = sv.ray_march_native(*args)
    finally:
        torch.set_num_threads(threads)
    _assert_equal(one, two)


def test_ray_march_argument_errors():
    o = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="step"):
        sv.ray_march(o, o, 0.0, 1.0, torch.ones(2, 2, 2), [0, 0, 0, 1, 1, 1], 0.0)
    with pytest.raises(ValueError, match="level boxes"):
        sv.ray_march(o, o, 0.0, 1.0, torch.ones(2, 2, 2, 2), [0, 0, 0, 1, 1, 1], 0.1)
    with pytest.raises(RuntimeError, match="positive size"):
        sv.ray_march(o, o, 0.0, 1.0, torch.ones(2, 2, 2), [0, 0, 0, 1, 0, 1], 0.1)


def test_cascade_bounds():
    b = sv.cascade_bounds([0, 0, 0, 2, 4, 6], 3)
    assert b.tolist() == [[0, 0, 0, 2, 4, 6], [-1, -2, -3, 3, 6, 9], [-3, -6, -9, 5, 10, 15]]


# ----------------------------------------------------------------------- voxel scatter
SIZE = (0.5, 0.5, 1.0)
RANGE = (-4.0, -4.0, -2.0, 4.0, 4.0, 2.0)


def _cloud(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=g, dtype=dtype) * torch.tensor([10.0, 10.0, 5.0],
                                                                     dtype=dtype) - 5.0
    points = torch.cat([xyz, torch.randn(n, 2, generator=g, dtype=dtype)], dim=1)
    points = torch.cat([points, points[: n // 4], points[: n // 10]])  # duplicate points
    points[5] = float("nan")
    points[6, 0] = float("inf")
    return points


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_points,max_voxels", [(-1, -1), (3, -1), (-1, 40), (2, 40),
                                                   (1, -1), (1, 0)])
def test_voxel_scatter_matches_reference(dtype, max_points, max_voxels):
    points = _cloud(3000, seed=max_points + 7 * max_voxels, dtype=dtype)
    native = sv.voxel_hash_native(points, SIZE, RANGE, max_points, max_voxels)
    reference = sv.voxel_hash_torch(points, SIZE, RANGE, max_points, max_voxels)
    _assert_equal(native, reference)
    coords, inverse, counts = native
    if max_voxels >= 0:
        assert coords.shape[0] <= max_voxels
    if max_points >= 0:
        assert counts.numel() == 0 or int(counts.max()) <= max_points
    assert torch.equal(torch.bincount(inverse[inverse >= 0], minlength=coords.shape[0]), counts)
    mean, mx = sv.voxel_reduce_native(points, inverse, counts)
    mean_ref, mx_ref = sv.voxel_reduce_torch(points, inverse, counts)
    assert_close(mean, mean_ref)
    assert torch.equal(mx, mx_ref)


def test_voxel_hash_fine_grid_matches_reference():
    # 8e5 voxels per axis: the voxel keys take 60 bits, too many to pack with the voxel ids
    # into one table word, so the native kernel uses its wide table.
    points = _cloud(3000, seed=11)
    size = (1e-5, 1e-5, 5e-6)
    for max_points, max_voxels in ((-1, -1), (2, 500)):
        native = sv.voxel_hash_native(points, size, RANGE, max_points, max_voxels)
        _assert_equal(native, sv.voxel_hash_torch(points, size, RANGE, max_points, max_voxels))
        assert native[0].shape[0] > 100


def test_voxel_hash_medium_grid_matches_reference():
    # 2000 x 2000 x 8 voxels: too many for the native kernel's dense key bitmap with 3000
    # points, few enough to pack keys and voxel ids into one hash-table word.
    points = _cloud(3000, seed=13)
    size = (0.004, 0.004, 0.5)
    for max_points, max_voxels in ((-1, -1), (2, 500)):
        native = sv.voxel_hash_native(points, size, RANGE, max_points, max_voxels)
        _assert_equal(native, sv.voxel_hash_torch(points, size, RANGE, max_points, max_voxels))
        assert native[0].shape[0] > 100


@pytest.mark.parametrize("dtype,channels", [(torch.float32, 16), (torch.float32, 35),
                                            (torch.float64, 8), (torch.float64, 13)])
def test_voxel_reduce_wide_features_match_reference(dtype, channels):
    # Whole cache lines of channels (16 float32 / 8 float64) are reduced in registers, the
    # rest channel by channel: both, with NaN, inf and ties in the features.
    points = _cloud(3000, seed=14, dtype=dtype)
    _, inverse, counts = sv.voxel_hash(points, SIZE, RANGE)
    g = torch.Generator().manual_seed(15)
    features = torch.randn(points.shape[0], channels, generator=g, dtype=dtype)
    kept = torch.nonzero(inverse >= 0)[:, 0]
    features[kept[0], 3] = float("nan")
    features[kept[1], channels - 1] = float("inf")
    features[12:40:3] = features[13:41:3].round()
    mean, mx = sv.voxel_reduce_native(features, inverse, counts)
    mean_ref, mx_ref = sv.voxel_reduce_torch(features, inverse, counts)
    assert_close(mean, mean_ref, equal_nan=True)
    assert torch.equal(mx.nan_to_num(7.0), mx_ref.nan_to_num(7.0))
    assert mx.isnan().any() and mx.isinf().any()


@pytest.mark.parametrize("change", ["more", "fewer", "zero"])
def test_voxel_reduce_counts_unlike_inverse_match_reference(change):
    # counts need not be the number of points per voxel (the mean divides by counts): the
    # native grouped kernel handles fewer points than counts, and falls back to its two-pass
    # kernel when a voxel has more or the counts add up to more than the points.
    points = _cloud(800, seed=12)
    _, inverse, counts = sv.voxel_hash(points, SIZE, RANGE)
    counts = counts.clone()
    counts[::3] += {"more": 2, "fewer": -1, "zero": 0}[change]
    if change == "zero":
        counts[::5] = 0
    counts = torch.cat([counts, torch.tensor([4, 0])])  # voxels without points
    mean, mx = sv.voxel_reduce_native(points, inverse, counts)
    mean_ref, mx_ref = sv.voxel_reduce_torch(points, inverse, counts)
    assert_close(mean, mean_ref)
    assert torch.equal(mx, mx_ref)


def test_voxel_scatter_hand_computed():
    points = torch.tensor([
        [0.1, 0.1, 0.1],    # voxel (x8, y8, z2)
        [0.2, 0.3, 0.9],    # same voxel
        [-3.9, 3.9, -1.5],  # voxel (x0, y15, z0)
        [4.0, 0.0, 0.0],    # x == range max: outside
        [0.4, 0.4, 0.5],    # first voxel again
        [0.1, 0.1, 0.1],    # duplicate of the first point
    ])
    features = torch.tensor([[1.0, 2.0], [3.0, -1.0], [5.0, 5.0], [9.0, 9.0], [2.0, 7.0],
                             [1.0, 2.0]])
    for out in (sv.voxel_scatter(points, features, SIZE, RANGE),
                sv.voxel_scatter_torch(points, features, SIZE, RANGE)):
        assert out.coords.tolist() == [[8, 8, 2], [0, 15, 0]]  # (x, y, z), first-come
        assert out.inverse.tolist() == [0, 0, 1, -1, 0, 0]
        assert out.counts.tolist() == [4, 1]
        assert_close(out.mean, torch.tensor([[7 / 4, 10 / 4], [5.0, 5.0]]))
        assert out.max.tolist() == [[3.0, 7.0], [5.0, 5.0]]
    capped = sv.voxel_hash(points, SIZE, RANGE, max_points=2, max_voxels=1)
    assert capped[1].tolist() == [0, 0, -1, -1, -1, -1] and capped[2].tolist() == [2]
    with pytest.raises(ValueError, match="max_points"):
        sv.voxel_hash(points, SIZE, RANGE, max_points=0)


def test_voxel_reduce_gradients_match_reference():
    points = _cloud(600, seed=1)
    coords, inverse, counts = sv.voxel_hash(points, SIZE, RANGE)
    g = torch.Generator().manual_seed(0)
    features = torch.randn(points.shape[0], 4, generator=g)
    features[600:] = features[: 600 // 4 + 600 // 10]  # duplicates tie for the max
    features.requires_grad_(True)
    m = coords.shape[0]
    v_mean, v_max = torch.randn(m, 4, generator=g), torch.randn(m, 4, generator=g)
    for use_mean, use_max in [(True, True), (True, False), (False, True)]:
        grads = []
        for fn in (sv.voxel_reduce_native, sv.voxel_reduce_torch):
            mean, mx = fn(features, inverse, counts)
            loss = (mean * v_mean).sum() * use_mean + (mx * v_max).sum() * use_max
            grads.append(torch.autograd.grad(loss, features)[0])
        assert_close(grads[0], grads[1])
        assert grads[0][inverse < 0].abs().sum() == 0  # dropped points get no gradient
    # Tied maxima share the gradient equally.
    x = torch.tensor([[1.0], [1.0], [0.0]], requires_grad=True)
    _, mx = sv.voxel_reduce_native(x, torch.tensor([0, 0, 0]), torch.tensor([3]))
    assert torch.autograd.grad(mx.sum(), x)[0].flatten().tolist() == [0.5, 0.5, 0.0]


def test_voxel_reduce_gradcheck():
    g = torch.Generator().manual_seed(2)
    features = torch.randn(40, 3, generator=g, dtype=torch.float64, requires_grad=True)
    inverse = torch.randint(-1, 9, (40,), generator=g)
    counts = torch.bincount(inverse[inverse >= 0], minlength=9)
    assert torch.autograd.gradcheck(
        lambda f: sv.voxel_reduce_native(f, inverse, counts), (features,))


def test_voxel_scatter_empty_inputs():
    for fn in (sv.voxel_scatter, sv.voxel_scatter_torch):
        out = fn(torch.zeros(0, 4), torch.zeros(0, 3), SIZE, RANGE)
        assert out.coords.shape == (0, 3) and out.inverse.shape == (0,)
        assert out.mean.shape == (0, 3) and out.max.shape == (0, 3)
        outside = fn(torch.full((5, 3), 100.0), torch.ones(5, 2), SIZE, RANGE)
        assert outside.inverse.tolist() == [-1] * 5 and outside.mean.shape == (0, 2)


def test_voxel_hash_agrees_with_hard_voxelization():
    from geometry.ops.voxelize import voxelize

    points = _cloud(2000, seed=4)
    voxels, vcoords, num = voxelize(points, SIZE, RANGE, 3, 60)
    coords, inverse, counts = sv.voxel_hash(points, SIZE, RANGE, 3, 60)
    assert torch.equal(coords.flip(1), vcoords)  # voxelize: (z, y, x)
    assert torch.equal(counts.int(), num)
    mean, _ = sv.voxel_reduce(points, inverse, counts)
    assert_close(mean, voxels.sum(1) / num[:, None].float())


def test_voxel_hash_same_for_any_thread_count():
    points = _cloud(20000, seed=9)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sv.voxel_scatter(points, None, SIZE, RANGE)
        torch.set_num_threads(2)
        two = sv.voxel_scatter(points, None, SIZE, RANGE)
    finally:
        torch.set_num_threads(threads)
    _assert_equal(one, two)


# ------------------------------------------------------------------- sparse trilinear
def _sparse_field(m: int, c: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    coords = torch.unique(torch.randint(-6, 6, (m, 3), generator=g), dim=0)
    coords = coords[torch.randperm(coords.shape[0], generator=g)]
    coords = torch.cat([coords, coords[:5]])  # duplicates: the first row must win
    features = torch.randn(coords.shape[0], c, generator=g, dtype=dtype)
    queries = torch.rand(700, 3, generator=g, dtype=dtype) * 5.6 - 2.8
    queries[:3] = torch.tensor([[1e9, 0, 0], [float("nan"), 0, 0], [0, float("-inf"), 0]],
                               dtype=dtype)
    return coords.int(), features, queries


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spread", [1, 300, 50000])
def test_trilinear_matches_reference(dtype, spread):
    # spread 1: a compact block of voxels (the native kernel's dense occupancy index);
    # spread 300 / 50000: voxels scattered over a box far too large for it (its hash table,
    # packed / wide slots).
    coords, features, queries = _sparse_field(500, 6, seed=3, dtype=dtype)
    coords[5: coords.shape[0] // 6] *= spread  # (the last 5 rows repeat the first 5)
    features.requires_grad_(True)
    size, origin = (0.45, 0.5, 0.55), (-0.1, 0.2, 0.0)
    native = sv.sparse_trilinear_native(queries, coords, features, size, origin, True)
    reference = sv.sparse_trilinear_torch(queries, coords, features, size, origin, True)
    assert torch.equal(native[1], reference[1]) and torch.equal(native[2], reference[2])
    assert_close(native[0], reference[0])
    assert (native[1] >= 0).float().mean() > 0.15 and (native[1] < 0).any()
    assert (native[1] < features.shape[0] - 5).all()  # duplicate coords: the first row
    assert native[0][:3].abs().sum() == 0  # not finite / out of range: zero
    cotangent = torch.randn_like(native[0])
    grad_native = torch.autograd.grad((native[0] * cotangent).sum(), features)[0]
    grad_reference = torch.autograd.grad((reference[0] * cotangent).sum(), features)[0]
    assert_close(grad_native, grad_reference)


@pytest.mark.parametrize("dtype,channels", [(torch.float32, 16), (torch.float32, 21),
                                            (torch.float64, 8)])
def test_trilinear_wide_features_match_reference(dtype, channels):
    # Whole cache lines of channels are summed in registers (missing corners read a zero row):
    # the same sums as the reference, also with inf and NaN features.
    coords, _, queries = _sparse_field(500, 1, seed=4, dtype=dtype)
    g = torch.Generator().manual_seed(5)
    features = torch.randn(coords.shape[0], channels, generator=g, dtype=dtype)
    features[7, 2] = float("inf")
    features[8, channels - 1] = float("nan")
    size, origin = (0.45, 0.5, 0.55), (-0.1, 0.2, 0.0)
    native = sv.sparse_trilinear_native(queries, coords, features, size, origin, True)
    reference = sv.sparse_trilinear_torch(queries, coords, features, size, origin, True)
    assert torch.equal(native[1], reference[1]) and torch.equal(native[2], reference[2])
    assert_close(native[0], reference[0], equal_nan=True)
    assert (native[1] == 7).any() and (native[1] == 8).any()


@pytest.mark.parametrize("dtype,spread", [(torch.float32, 1), (torch.float32, 300),
                                          (torch.float64, 1)])
def test_trilinear_inference_skips_the_corners(dtype, spread):
    # Without a gradient to keep (and return_corners off) the native op neither writes nor
    # returns the [Q, 8] corner rows and weights: the same output, bit for bit, through
    # per-thread chunks of 2048 queries (5000 queries: several chunks).
    coords, features, _ = _sparse_field(500, 6, seed=6, dtype=dtype)
    coords[5: coords.shape[0] // 6] *= spread  # dense occupancy index / hash table
    queries = torch.rand(5000, 3, generator=torch.Generator().manual_seed(7),
                         dtype=dtype) * 5.6 - 2.8
    size, origin = (0.45, 0.5, 0.55), (-0.1, 0.2, 0.0)
    full = sv.sparse_trilinear_native(queries, coords, features, size, origin, True)
    raw = torch.ops.sparseview.sparse_trilinear_fwd(queries, coords, features, list(size),
                                                    list(origin), False)
    assert raw[1].shape == (0, 8) and raw[2].shape == (0, 8)
    assert torch.equal(raw[0], full[0])
    assert torch.equal(sv.sparse_trilinear_native(queries, coords, features, size, origin),
                       full[0])
    assert_close(raw[0], sv.sparse_trilinear_torch(queries, coords, features, size, origin))
    # a gradient to keep: the wrapper asks for the corners, and the backward matches
    f = features.clone().requires_grad_(True)
    grad = torch.autograd.grad(sv.sparse_trilinear_native(queries, coords, f, size,
                                                          origin).sum(), f)[0]
    expected = torch.autograd.grad(sv.sparse_trilinear_torch(queries, coords, f, size,
                                                             origin).sum(), f)[0]
    assert_close(grad, expected)
    # the raw op without corners has nothing to differentiate with: it says so
    out = torch.ops.sparseview.sparse_trilinear_fwd(queries, coords, f, list(size),
                                                    list(origin), False)[0]
    with pytest.raises(RuntimeError, match="corners=False"):
        out.sum().backward()


def test_trilinear_hand_computed():
    size, origin = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    coords = torch.tensor([[0, 0, 0]], dtype=torch.int32)
    queries = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.5, 0.5], [0.25, 0.5, 0.5]])
    one = sv.sparse_trilinear(queries, coords, torch.tensor([[2.0]]), size, origin)
    # At the centre: the value; halfway to the missing neighbour (1, 0, 0): half of it; a
    # quarter voxel towards the missing (-1, 0, 0): three quarters.
    assert_close(one.flatten(), torch.tensor([2.0, 1.0, 1.5]))
    two = sv.sparse_trilinear(queries, torch.tensor([[0, 0, 0], [1, 0, 0]]),
                              torch.tensor([[2.0], [4.0]]), size, origin)
    assert_close(two.flatten(), torch.tensor([2.0, 3.0, 1.5]))
    # A constant field on a full 4^3 block is reproduced inside it (weights sum to one).
    block = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    inside = torch.rand(50, 3, generator=torch.Generator().manual_seed(0)) * 3 + 0.5
    const = sv.sparse_trilinear(inside, block, torch.full((64, 2), 5.0), size, origin)
    assert_close(const, torch.full((50, 2), 5.0))


def test_trilinear_gradcheck():
    coords, features, queries = _sparse_field(80, 2, seed=5, dtype=torch.float64)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda f: sv.sparse_trilinear_native(queries[3:60], coords, f, (0.5, 0.5, 0.5),
                                             (0.0, 0.0, 0.0)), (features,))


def test_trilinear_empty_inputs():
    for fn in (sv.sparse_trilinear_native, sv.sparse_trilinear_torch):
        out = fn(torch.rand(4, 3), torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, 5),
                 (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        assert out.shape == (4, 5) and out.abs().sum() == 0
        none = fn(torch.zeros(0, 3), torch.zeros(2, 3, dtype=torch.int32), torch.ones(2, 5),
                  (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        assert none.shape == (0, 5)


def test_importing_sparse_voxel_compiles_nothing():
    code = (
        "import geometry.ops.sparse_voxel\n"
        "from geometry.ops import loader\n"
        "assert loader._LOADED is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[2])


# ------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@needs_gpu
def test_cuda_ray_march_matches_reference():
    assert sv.has_native("ray_march", "cuda"), "the CUDA kernels were not built"
    for levels, res, near, far, step in MARCH_CASES:
        origins, dirs = _rays(1200, seed=levels)
        occ = _occupancy(levels, res, seed=2)
        bounds = sv.cascade_bounds([-1.0, -0.8, -0.9, 1.1, 1.0, 0.7], levels)
        near_t, far_t = torch.full((1200,), near), torch.full((1200,), far)
        reference = sv.ray_march_torch(origins, dirs, near_t, far_t, occ, bounds, step)
        on_gpu = sv.ray_march(origins.cuda(), dirs.cuda(), near_t.cuda(), far_t.cuda(),
                              occ.cuda(), bounds, step)
        _assert_equal(on_gpu, reference)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("max_points,max_voxels", [(-1, -1), (3, 40)])
def test_cuda_voxel_scatter_matches_reference(max_points, max_voxels):
    assert sv.has_native("voxel_hash", "cuda"), "the CUDA kernels were not built"
    points = _cloud(5000, seed=2)
    features = torch.randn(points.shape[0], 4, dtype=torch.float64)
    features[5000:] = features[: 5000 // 4 + 5000 // 10]
    reference = sv.voxel_hash_torch(points, SIZE, RANGE, max_points, max_voxels)
    on_gpu = sv.voxel_hash(points.cuda(), SIZE, RANGE, max_points, max_voxels)
    _assert_equal(on_gpu, reference)
    f_cpu = features.clone().requires_grad_(True)
    f_gpu = features.cuda().requires_grad_(True)
    mean_r, max_r = sv.voxel_reduce_torch(f_cpu, *reference[1:])
    mean_g, max_g = sv.voxel_reduce(f_gpu, *on_gpu[1:])
    assert_close(mean_g.cpu(), mean_r)
    assert torch.equal(max_g.cpu(), max_r)
    v_mean, v_max = torch.randn_like(mean_r), torch.randn_like(max_r)
    g_r = torch.autograd.grad((mean_r * v_mean).sum() + (max_r * v_max).sum(), f_cpu)[0]
    g_g = torch.autograd.grad((mean_g * v_mean.cuda()).sum() + (max_g * v_max.cuda()).sum(),
                              f_gpu)[0]
    assert_close(g_g.cpu(), g_r)


@pytest.mark.cuda
@needs_gpu
def test_cuda_trilinear_matches_reference():
    assert sv.has_native("sparse_trilinear_fwd", "cuda"), "the CUDA kernels were not built"
    coords, features, queries = _sparse_field(500, 6, seed=3, dtype=torch.float64)
    size, origin = (0.45, 0.5, 0.55), (-0.1, 0.2, 0.0)
    f_cpu = features.clone().requires_grad_(True)
    f_gpu = features.cuda().requires_grad_(True)
    reference = sv.sparse_trilinear_torch(queries, coords, f_cpu, size, origin, True)
    on_gpu = sv.sparse_trilinear_native(queries.cuda(), coords.cuda(), f_gpu, size, origin, True)
    assert torch.equal(on_gpu[1].cpu(), reference[1])
    assert torch.equal(on_gpu[2].cpu(), reference[2])
    assert_close(on_gpu[0].cpu(), reference[0])
    cotangent = torch.randn_like(reference[0])
    g_r = torch.autograd.grad((reference[0] * cotangent).sum(), f_cpu)[0]
    g_g = torch.autograd.grad((on_gpu[0] * cotangent.cuda()).sum(), f_gpu)[0]
    assert_close(g_g.cpu(), g_r)
