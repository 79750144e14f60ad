"""Sparse-voxel kernels: occupancy-grid ray marching, point-to-voxel scatter with voxel
hashing, and trilinear sampling of sparse voxel features.

Each op has a native CPU kernel (``cuda/sparse_voxel/sparse_voxel_cpu.cpp``, OpenMP), a CUDA
kernel (``cuda/sparse_voxel/sparse_voxel_cuda.cu``, built where a CUDA device exists) and a
pure-PyTorch reference (``_torch_impl.py``, the test oracle and the fallback elsewhere). The
entry points below pick the backend by device:

- :func:`ray_march`: rays through a (cascaded, instant-NGP style) occupancy grid ->
  packed samples ``(offsets [R+1], ray_indices, t_starts, t_ends)``; :func:`cascade_bounds`
  makes the level boxes;
- :func:`voxel_hash` / :func:`voxel_reduce` / :func:`voxel_scatter`: points -> unique voxels
  (first-come order), inverse index and counts; mean and max of features per voxel
  (differentiable);
- :func:`sparse_trilinear`: trilinear interpolation of features stored per voxel in a hash
  table (missing corners are zero; differentiable w.r.t. the features).

Native and reference agree exactly on every discrete outcome (voxel ids, sample bounds,
corner rows) and to rounding on sums (see ``tests/geometry/test_sparse_voxel.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from geometry.ops.sparse_voxel._torch_impl import (
    MAX_LEVELS,
    RayMarchSamples,
    VoxelScatter,
    grid_size,
    ray_march_torch,
    sparse_trilinear_torch,
    voxel_hash_torch,
    voxel_reduce_torch,
    voxel_scatter_torch,
)
from geometry.ops.sparse_voxel._wrapper import (
    has_native,
    ray_march_native,
    sparse_trilinear_native,
    voxel_hash_native,
    voxel_reduce_native,
)

__all__ = [
    "RayMarchSamples", "VoxelScatter", "cascade_bounds", "grid_size", "has_native",
    "ray_march", "ray_march_native", "ray_march_torch", "sparse_trilinear",
    "sparse_trilinear_native", "sparse_trilinear_torch", "voxel_hash", "voxel_hash_native",
    "voxel_hash_torch", "voxel_reduce", "voxel_reduce_native", "voxel_reduce_torch",
    "voxel_scatter", "voxel_scatter_torch",
]


def _use_native(op: str, device: torch.device) -> bool:
    return device.type == "cpu" or (device.type == "cuda" and has_native(op, device))


def cascade_bounds(aabb: Sequence[float], levels: int = 1) -> Tensor:
    """Boxes ``[levels, 6]`` float32 of instant-NGP's cascaded occupancy grid: level ``l``
    is ``aabb`` = (x0, y0, z0, x1, y1, z1) scaled by ``2**l`` about its centre."""
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must be 1..{MAX_LEVELS}, got {levels}")
    box = torch.tensor(list(aabb), dtype=torch.float64)
    center, half = (box[:3] + box[3:]) / 2, (box[3:] - box[:3]) / 2
    scales = 2.0 ** torch.arange(levels, dtype=torch.float64)[:, None]
    return torch.cat([center - half * scales, center + half * scales], 1).float()


def ray_march(
    origins: Tensor,  # [R, 3]
    dirs: Tensor,  # [R, 3] (need not be unit: t is in units of |dir|)
    near: Tensor | float,  # [R] or scalar
    far: Tensor | float,  # [R] or scalar (inf: up to the grid's exit)
    occupancy: Tensor,  # [L, X, Y, Z] or [X, Y, Z] bool / uint8
    bounds: Tensor | Sequence[float],  # [L, 6] level boxes (see cascade_bounds) or one [6]
    step: float,
) -> RayMarchSamples:
    """March rays through an occupancy grid and keep the samples in occupied cells.

    Samples lie on the lattice ``t = near + k * step`` (``k = 0, 1, ...``), each spanning
    ``[t_k, min(t_{k+1}, far))``; a sample is kept when ``t_k < far`` and the cell holding its
    midpoint is occupied, at the finest level whose box holds the midpoint. Computed in
    float32; not differentiable (it selects intervals). See ``cuda/sparse_voxel/
    sparse_voxel.h`` for the exact rule.

    Returns:
        :class:`RayMarchSamples` ``(offsets [R+1], ray_indices [S], t_starts [S],
        t_ends [S])``: the samples of ray ``r`` are ``offsets[r]:offsets[r+1]``, by t.
    """
    device = origins.device
    origins = origins.detach().to(torch.float32).contiguous()
    dirs = dirs.detach().to(torch.float32).contiguous()
    r = origins.shape[0]
    if origins.shape != (r, 3) or dirs.shape != (r, 3):
        raise ValueError(f"origins and dirs must be [R, 3], got {tuple(origins.shape)} and "
                         f"{tuple(dirs.shape)}")
    near_t = torch.as_tensor(near, dtype=torch.float32, device=device).detach()
    far_t = torch.as_tensor(far, dtype=torch.float32, device=device).detach()
    near_t = near_t.expand(r).contiguous()
    far_t = far_t.expand(r).contiguous()
    if occupancy.dim() == 3:
        occupancy = occupancy[None]
    if occupancy.dim() != 4:
        raise ValueError(f"occupancy must be [L, X, Y, Z], got {tuple(occupancy.shape)}")
    if occupancy.dtype not in (torch.bool, torch.uint8):
        occupancy = occupancy != 0
    bounds_t = torch.as_tensor(bounds, dtype=torch.float32, device=device).reshape(-1, 6)
    if bounds_t.shape[0] != occupancy.shape[0]:
        raise ValueError(f"{bounds_t.shape[0]} level boxes for {occupancy.shape[0]} levels")
    if not (step > 0 and step < float("inf")):
        raise ValueError(f"step must be positive, got {step}")
    args = (origins, dirs, near_t, far_t, occupancy.contiguous(), bounds_t.contiguous(),
            float(step))
    if _use_native("ray_march", device):
        return ray_march_native(*args)
    return ray_march_torch(*args)


def voxel_hash(
    points: Tensor,  # [N, >=3] x, y, z first
    voxel_size: Sequence[float],  # (x, y, z)
    point_range: Sequence[float],  # (x0, y0, z0, x1, y1, z1)
    max_points: int = -1,
    max_voxels: int = -1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Voxel of each point by hashing: ``c = floor((p - range_min) / voxel_size)`` in the
    points' dtype (the rule of :func:`geometry.ops.voxelize.voxelize`); points outside the
    range are dropped; voxels are numbered in the order of their first point; at most
    ``max_voxels`` voxels and ``max_points`` (>= 1) points per voxel (the first ones; < 0: no
    cap).

    Returns:
        coords ``[M, 3]`` int32 ``(x, y, z)``, inverse ``[N]`` int64 (-1: dropped),
        counts ``[M]`` int64.
    """
    if max_points == 0:
        raise ValueError("max_points must be >= 1 (or < 0: no cap)")
    with torch.no_grad():
        if _use_native("voxel_hash", points.device):
            return voxel_hash_native(points, voxel_size, point_range, max_points, max_voxels)
        return voxel_hash_torch(points, voxel_size, point_range, max_points, max_voxels)


def voxel_reduce(features: Tensor, inverse: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and max ``[M, C]`` of the features ``[N, C]`` of each voxel (``inverse``,
    ``counts`` from :func:`voxel_hash`; points with inverse -1 are ignored). Differentiable
    w.r.t. ``features``: the max's gradient is shared equally by tied points."""
    if _use_native("voxel_reduce", features.device):
        return voxel_reduce_native(features, inverse, counts)
    return voxel_reduce_torch(features, inverse, counts)


def voxel_scatter(
    points: Tensor,  # [N, >=3]
    features: Tensor | None,  # [N, C]; None: the points' own columns
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    max_points: int = -1,
    max_voxels: int = -1,
) -> VoxelScatter:
    """Points -> unique voxels with the mean and max of their features:
    :func:`voxel_hash` then :func:`voxel_reduce`."""
    coords, inverse, counts = voxel_hash(points, voxel_size, point_range, max_points,
                                         max_voxels)
    mean, mx = voxel_reduce(points if features is None else features, inverse, counts)
    return VoxelScatter(coords, inverse, counts, mean, mx)


def sparse_trilinear(
    points: Tensor,  # [Q, 3]
    coords: Tensor,  # [M, 3] int voxel indices in [-2^20, 2^20)
    features: Tensor,  # [M, C]
    voxel_size: Sequence[float],
    origin: Sequence[float],
) -> Tensor:
    """Trilinear interpolation ``[Q, C]`` of sparse voxel features at ``points``.

    The feature of voxel ``c`` sits at its centre ``origin + (c + 0.5) * voxel_size`` (with
    :func:`voxel_hash`'s coords, ``origin`` is the range's min corner); corners absent from
    ``coords`` count as zero; duplicate coords: the first row. Differentiable w.r.t.
    ``features`` (not ``points``).
    """
    if _use_native("sparse_trilinear_fwd", points.device):
        return sparse_trilinear_native(points, coords, features, voxel_size, origin)
    return sparse_trilinear_torch(points, coords, features, voxel_size, origin)
