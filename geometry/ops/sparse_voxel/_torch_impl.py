"""Pure-PyTorch references of the sparse-voxel ops: the test oracles of
``cuda/sparse_voxel/`` (CPU and CUDA), and the implementation on devices without a native
backend.

Every expression that decides a discrete outcome (a point's voxel, a sample's interval, the
cell a sample tests) is the one written in ``cuda/sparse_voxel/sparse_voxel.h``, in the same
order and dtype, so native and reference agree exactly on indices and sample bounds.
Gradients come from autograd through ``index_add`` / ``scatter_reduce(amax)`` / indexing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

MAX_LEVELS = 16
MAX_STEPS = 1 << 24  # sample numbers k stay below 2^24 (float(k) exact)
COORD_OFFSET = 1 << 20  # sparse voxel coordinates lie in [-2^20, 2^20)


class RayMarchSamples(NamedTuple):
    """Packed ray samples: the samples of ray ``r`` are ``offsets[r]:offsets[r + 1]``."""

    offsets: Tensor  # [R + 1] int64
    ray_indices: Tensor  # [S] int64, non-decreasing
    t_starts: Tensor  # [S] float32
    t_ends: Tensor  # [S] float32


class VoxelScatter(NamedTuple):
    """Points grouped into voxels, with the mean and max of their features per voxel."""

    coords: Tensor  # [M, 3] int32 (x, y, z) voxel indices, ordered by first point
    inverse: Tensor  # [N] int64 voxel of each point, -1: dropped (outside or over a cap)
    counts: Tensor  # [M] int64 points per voxel (after the caps)
    mean: Tensor  # [M, C]
    max: Tensor  # [M, C]


def grid_size(voxel_size: Sequence[float], point_range: Sequence[float]) -> tuple[int, int, int]:
    """``(X, Y, Z)`` voxel counts of the grid (``round((max - min) / size)`` per axis)."""
    return tuple(int(round((point_range[d + 3] - point_range[d]) / voxel_size[d]))
                 for d in range(3))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------
# Occupancy-grid ray marching
# ------------------------------------------------------------------------------------------
def _ray_box(origins: Tensor, dirs: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor,
                                                                               Tensor]:
    """Slab test against ``[lo, hi)``: ``(tmin, tmax, hit)`` per ray (``ray_box`` in C++)."""
    r = origins.shape[0]
    tmin = torch.full((r,), float("-inf"), dtype=torch.float32, device=origins.device)
    tmax = torch.full((r,), float("inf"), dtype=torch.float32, device=origins.device)
    ok = torch.ones(r, dtype=torch.bool, device=origins.device)
    for a in range(3):
        o, d = origins[:, a], dirs[:, a]
        zero = d == 0
        ok &= ~zero | ~((o < lo[a]) | (o >= hi[a]))
        ta = (lo[a] - o) / d
        tb = (hi[a] - o) / d
        less = ta < tb
        near_t = torch.where(less, ta, tb)
        far_t = torch.where(less, tb, ta)
        tmin = torch.where(zero, tmin, torch.where(near_t > tmin, near_t, tmin))
        tmax = torch.where(zero, tmax, torch.where(far_t < tmax, far_t, tmax))
    return tmin, tmax, ok & (tmin <= tmax)


def ray_march_torch(
    origins: Tensor,  # [R, 3] float32
    dirs: Tensor,  # [R, 3] float32 (any length: t is in units of |dir|)
    near: Tensor,  # [R] float32
    far: Tensor,  # [R] float32 (may be inf)
    occupancy: Tensor,  # [L, X, Y, Z] bool
    bounds: Tensor,  # [L, 6] float32 box of each level
    step: float,
) -> RayMarchSamples:
    """March rays through an occupancy grid on a lattice of step ``step`` anchored at
    ``near``; keep the samples whose midpoint lies in an occupied cell (see
    ``cuda/sparse_voxel/sparse_voxel.h`` for the exact rule). Vectorised over rays, looping
    over blocks of steps."""
    device = origins.device
    f32 = dict(dtype=torch.float32, device=device)
    r = origins.shape[0]
    occ = occupancy != 0
    levels = occ.shape[0]
    res = torch.tensor(occ.shape[1:], **f32)
    res_long = torch.tensor(occ.shape[1:], dtype=torch.long, device=device)
    lo, hi = bounds[:, :3], bounds[:, 3:]
    scale = res / (hi - lo)  # [L, 3]
    step_t = torch.tensor(step, **f32)
    max_steps_f = torch.tensor(float(MAX_STEPS), **f32)
    empty = RayMarchSamples(torch.zeros(r + 1, dtype=torch.long, device=device),
                            torch.zeros(0, dtype=torch.long, device=device),
                            torch.zeros(0, **f32), torch.zeros(0, **f32))
    if r == 0:
        return empty

    tmin, tmax, hit = _ray_box(origins, dirs, lo.min(0).values, hi.max(0).values)
    valid = hit & ~(dirs == 0).all(1) & torch.isfinite(near)
    t_lo = torch.where(tmin > near, tmin, near)
    t_hi = tmax + step_t
    kf = torch.floor((t_lo - near) / step_t) - 1.0
    kf = torch.where(kf < max_steps_f, kf, max_steps_f)
    k_lo = torch.where(kf > 0, kf, torch.zeros_like(kf))
    k_lo = torch.where(valid, k_lo, torch.zeros_like(k_lo)).long()

    rays = torch.nonzero(valid).squeeze(1)
    k = k_lo[rays]
    found_ray, found_k, found_t0, found_t1 = [], [], [], []
    while rays.numel():
        block = max(16, min(1024, (1 << 21) // rays.numel()))
        kk = k[:, None] + torch.arange(block, device=device)  # [A, J]
        near_a, far_a = near[rays, None], far[rays, None]
        t0 = near_a + kk.float() * step_t
        t1 = near_a + (kk + 1).float() * step_t
        t1 = torch.where(t1 > far_a, far_a, t1)
        # The C++ loop stops at the first failing k: keep the prefix.
        alive = (kk < MAX_STEPS) & (t0 < far_a) & ~(t0 > t_hi[rays, None])
        alive = alive.cumprod(1).bool()
        tm = (t0 + t1) * 0.5
        x = origins[rays, None, :] + tm[..., None] * dirs[rays, None, :]  # [A, J, 3]
        level = torch.full(tm.shape, -1, dtype=torch.long, device=device)
        for lv in reversed(range(levels)):  # the first level holding the point wins
            inside = ((x >= lo[lv]) & (x < hi[lv])).all(-1)
            level = torch.where(inside, torch.full_like(level, lv), level)
        has_level = level >= 0
        lv = level.clamp(min=0)
        cell = torch.floor((x - lo[lv]) * scale[lv])
        cell = torch.where(has_level[..., None], cell, torch.zeros_like(cell)).long()
        cell = torch.minimum(cell.clamp(min=0), res_long - 1)
        occupied = occ[lv, cell[..., 0], cell[..., 1], cell[..., 2]]
        keep = alive & has_level & occupied
        a_idx, j_idx = torch.nonzero(keep, as_tuple=True)
        found_ray.append(rays[a_idx])
        found_k.append(kk[a_idx, j_idx])
        found_t0.append(t0[a_idx, j_idx])
        found_t1.append(t1[a_idx, j_idx])
        more = alive[:, -1]
        rays, k = rays[more], k[more] + block
    if not found_ray:
        return empty
    ray_idx = torch.cat(found_ray)
    order = torch.argsort(ray_idx * (1 << 26) + torch.cat(found_k))
    ray_idx = ray_idx[order]
    counts = torch.bincount(ray_idx, minlength=r)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long, device=device), counts.cumsum(0)])
    return RayMarchSamples(offsets, ray_idx, torch.cat(found_t0)[order],
                           torch.cat(found_t1)[order])


# ------------------------------------------------------------------------------------------
# Point -> voxel hashing and reductions
# ------------------------------------------------------------------------------------------
def voxel_hash_torch(
    points: Tensor,  # [N, C>=3] x, y, z first
    voxel_size: Sequence[float],  # (x, y, z)
    point_range: Sequence[float],  # (x0, y0, z0, x1, y1, z1)
    max_points: int = -1,
    max_voxels: int = -1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Unique voxels of the points (first-come order), by sorting.

    Returns:
        coords ``[M, 3]`` int32 ``(x, y, z)``, inverse ``[N]`` int64 (-1: outside the range,
        or over ``max_points`` per voxel / ``max_voxels`` voxels; a cap < 0 is no cap),
        counts ``[M]`` int64.
    """
    if max_points == 0:
        raise ValueError("max_points must be >= 1 (or < 0: no cap)")
    n = points.shape[0]
    gx, gy, gz = grid_size(voxel_size, point_range)
    device = points.device
    inverse = torch.full((n,), -1, dtype=torch.long, device=device)
    empty = (torch.zeros((0, 3), dtype=torch.int32, device=device), inverse,
             torch.zeros(0, dtype=torch.long, device=device))
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
    unique, inv = torch.unique(linear, return_inverse=True)
    order = torch.arange(index.numel(), device=device)
    first = torch.full((unique.numel(),), index.numel(), dtype=torch.long, device=device)
    first = first.scatter_reduce(0, inv, order, reduce="amin")
    voxel_order = torch.argsort(first)  # unique ids by first point
    rank_of_unique = torch.empty_like(voxel_order)
    rank_of_unique[voxel_order] = torch.arange(unique.numel(), device=device)
    voxel_id = rank_of_unique[inv]
    if max_voxels >= 0:
        keep = voxel_id < max_voxels
        voxel_id, index, order = voxel_id[keep], index[keep], order[keep]
    if max_points >= 0 and voxel_id.numel():
        sort = torch.argsort(voxel_id * (n + 1) + order)
        sorted_voxel = voxel_id[sort]
        start = torch.searchsorted(sorted_voxel, sorted_voxel, right=False)
        rank = torch.empty_like(sort)
        rank[sort] = torch.arange(sort.numel(), device=device) - start
        keep = rank < max_points
        voxel_id, index = voxel_id[keep], index[keep]
    if voxel_id.numel() == 0:
        return empty
    m = int(voxel_id.max().item()) + 1
    inverse[index] = voxel_id
    counts = torch.bincount(voxel_id, minlength=m)
    lin = unique[voxel_order[:m]]
    coords = torch.stack([lin % gx, (lin // gx) % gy, lin // (gx * gy)], dim=1).to(torch.int32)
    return coords, inverse, counts


def voxel_reduce_torch(
    features: Tensor,  # [N, C]
    inverse: Tensor,  # [N] int64, -1: ignored
    counts: Tensor,  # [M] int64
) -> tuple[Tensor, Tensor]:
    """Mean and max of the features of each voxel (differentiable by autograd; a max tied
    between points sends each an equal share of the gradient)."""
    m, c = counts.shape[0], features.shape[1]
    kept = inverse >= 0
    idx = inverse[kept]
    feats = features[kept]
    total = features.new_zeros((m, c)).index_add(0, idx, feats)
    mean = total / counts.clamp(min=1).to(features.dtype)[:, None]
    mx = features.new_full((m, c), float("-inf")).scatter_reduce(
        0, idx[:, None].expand(-1, c), feats, reduce="amax", include_self=False)
    return mean, mx


def voxel_scatter_torch(
    points: Tensor,  # [N, >=3]
    features: Tensor,  # [N, C]
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    max_points: int = -1,
    max_voxels: int = -1,
) -> VoxelScatter:
    """:func:`voxel_hash_torch` then :func:`voxel_reduce_torch`."""
    coords, inverse, counts = voxel_hash_torch(points, voxel_size, point_range, max_points,
                                               max_voxels)
    mean, mx = voxel_reduce_torch(features, inverse, counts)
    return VoxelScatter(coords, inverse, counts, mean, mx)


# ------------------------------------------------------------------------------------------
# Trilinear sampling of sparse voxel features
# ------------------------------------------------------------------------------------------
def coord_keys(coords: Tensor) -> Tensor:
    """63-bit keys of int voxel coordinates ``[..., 3]``; -1 outside ``[-2^20, 2^20)``."""
    c = coords.long()
    ok = ((c >= -COORD_OFFSET) & (c < COORD_OFFSET)).all(-1)
    c = c + COORD_OFFSET
    key = (c[..., 0] << 42) | (c[..., 1] << 21) | c[..., 2]
    return torch.where(ok, key, torch.full_like(key, -1))


def sparse_trilinear_torch(
    points: Tensor,  # [Q, 3]
    coords: Tensor,  # [M, 3] int voxel indices
    features: Tensor,  # [M, C] feature of voxel c at origin + (c + 0.5) * voxel_size
    voxel_size: Sequence[float],
    origin: Sequence[float],
    return_corners: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Trilinear interpolation of the features of a sparse set of voxels at ``points``;
    corners that are not in ``coords`` count as zero; duplicate coords: the first row.

    Returns ``[Q, C]`` (differentiable w.r.t. ``features``); with ``return_corners`` also
    rows ``[Q, 8]`` int64 (-1: missing) and weights ``[Q, 8]`` of the 8 corners
    (corner ``k``: x + ``k & 1``, y + ``k >> 1 & 1``, z + ``k >> 2 & 1``).
    """
    dtype, device = points.dtype, points.device
    q, m, c = points.shape[0], coords.shape[0], features.shape[1]
    size = torch.tensor(list(voxel_size), dtype=dtype, device=device)
    org = torch.tensor(list(origin), dtype=dtype, device=device)
    u = (points - org) / size - 0.5
    bound = COORD_OFFSET + 2
    ok = ((u > -bound) & (u < bound)).all(1)
    u = torch.where(ok[:, None], u, torch.zeros_like(u))
    base = torch.floor(u)
    frac = u - base
    base = base.long()
    table = coord_keys(coords)
    if bool((table < 0).any()):
        raise ValueError("voxel coordinates must lie in [-2^20, 2^20)")
    sorted_keys, perm = torch.sort(table, stable=True)
    padded = torch.cat([features, features.new_zeros((1, c))])
    out = features.new_zeros((q, c))
    rows, weights = [], []
    for k in range(8):
        bits = (k & 1, (k >> 1) & 1, (k >> 2) & 1)
        w = [frac[:, a] if bits[a] else 1 - frac[:, a] for a in range(3)]
        weight = (w[0] * w[1]) * w[2]
        corner = base + torch.tensor(bits, dtype=torch.long, device=device)
        key = coord_keys(corner)
        if m:
            pos = torch.searchsorted(sorted_keys, key).clamp(max=m - 1)
            found = ok & (key >= 0) & (sorted_keys[pos] == key)
            row = torch.where(found, perm[pos], torch.full_like(pos, -1))
        else:
            row = torch.full_like(key, -1)
        out = out + weight[:, None] * padded[torch.where(row >= 0, row, m)]
        rows.append(row)
        weights.append(torch.where(ok, weight, torch.zeros_like(weight)))
    if return_corners:
        return out, torch.stack(rows, 1), torch.stack(weights, 1)
    return out
