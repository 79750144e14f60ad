"""Surfaces of a learned SDF: octree surface points (ShAPO's sampler) and meshes.

:func:`octree_surface_points` is ShAPO's octree-based extraction, vectorised in PyTorch:
start from a coarse grid of cells over the NOCS box, keep the cells whose centre's SDF is
within the cell's half-diagonal (the surface may cross them; exact for a true SDF, a
heuristic for a learned one), split them into eight, repeat, and finally move the
surviving centres onto the surface by Newton steps ``x - f(x) * grad f / |grad f|^2``.
Only cells near the surface are evaluated, ``O(4^depth)`` points instead of a dense grid's
``O(8^depth)``; :func:`dense_surface_points` is the dense reference.

:func:`mesh_from_sdf` runs marching cubes (scikit-image) on a grid of the SDF.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

SdfFn = Callable[[Tensor], Tensor]
"""``x [N, 3] -> sdf [N]`` in the NOCS-normalised frame."""

BOUND = 0.55
"""Half-size of the cube searched (NOCS units: the box is within ``[-0.5, 0.5]``)."""

__all__ = ["BOUND", "dense_surface_points", "mesh_from_sdf", "octree_surface_points",
           "project_to_surface", "write_mesh_ply"]


def _chunked(fn: SdfFn, x: Tensor, chunk: int = 65536) -> Tensor:
    return torch.cat([fn(x[i:i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else \
        x.new_zeros(0)


def project_to_surface(fn: SdfFn, x: Tensor, steps: int = 2) -> Tensor:
    """Newton steps onto the zero level set (no graph kept)."""
    for _ in range(steps):
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            f = fn(xr)
            (g,) = torch.autograd.grad(f.sum(), xr)
        x = (xr - (f / g.pow(2).sum(-1).clamp_min(1e-8))[:, None] * g).detach()
    return x


def _grid_centres(res: int, bound: float, device=None) -> Tensor:
    step = 2 * bound / res
    c = -bound + step * (torch.arange(res, dtype=torch.float32, device=device) + 0.5)
    return torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)


@torch.no_grad()
def octree_surface_points(fn: SdfFn, depth: int = 6, base: int = 8, bound: float = BOUND,
                          newton: int = 2, max_points: int | None = None,
                          generator: torch.Generator | None = None,
                          max_cells: int | None = None,
                          device: torch.device | str | None = None) -> Tensor:
    """``[N, 3]`` surface points of the SDF (cells of size ``2 bound / (base 2^depth)``),
    on ``device`` (where ``fn`` evaluates; default the CPU).

    Args:
        fn: the SDF (NOCS frame).
        depth: subdivisions after the ``base^3`` grid.
        base: cells per side of the starting grid.
        newton: Newton steps that move the final centres onto the surface.
        max_points: keep a random subset of at most this many.
        max_cells: split at most this many cells per level (a random subset): bounds the
            cost for an SDF whose zero set is not a thin surface (an untrained decoder).
        generator: a CPU generator of the random subsets (the same draws on every device).
    """
    size = 2 * bound / base
    centres = _grid_centres(base, bound, device)
    offsets = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1)
                            for sz in (-1, 1)], dtype=torch.float32, device=device) * 0.25
    for level in range(depth + 1):
        f = _chunked(fn, centres)
        keep = f.abs() <= size * (0.5 * 3 ** 0.5) * 1.05
        centres = centres[keep]
        if level == depth or len(centres) == 0:
            break
        if max_cells is not None and len(centres) > max_cells:
            pick = torch.randperm(len(centres), generator=generator)[:max_cells]
            centres = centres[pick.to(centres.device)]
        centres = (centres[:, None, :] + offsets * size).reshape(-1, 3)
        size /= 2
    if max_points is not None and len(centres) > max_points:
        pick = torch.randperm(len(centres), generator=generator)[:max_points]
        centres = centres[pick.to(centres.device)]
    if newton:
        centres = project_to_surface(fn, centres, newton)
    return centres


@torch.no_grad()
def dense_surface_points(fn: SdfFn, res: int, bound: float = BOUND, newton: int = 2,
                         device: torch.device | str | None = None) -> Tensor:
    """The dense reference: every cell of a ``res^3`` grid that the surface may cross."""
    centres = _grid_centres(res, bound, device)
    f = _chunked(fn, centres)
    centres = centres[f.abs() <= (2 * bound / res) * (0.5 * 3 ** 0.5) * 1.05]
    return project_to_surface(fn, centres, newton) if newton else centres


@torch.no_grad()
def mesh_from_sdf(fn: SdfFn, res: int = 64, bound: float = BOUND,
                  device: torch.device | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the SDF (evaluated on ``device``) on a ``res^3`` grid of
    ``[-bound, bound]^3``: vertices ``[V, 3]`` (NOCS frame) and faces ``[F, 3]``; empty
    arrays when the level set does not cross the grid."""
    from skimage.measure import marching_cubes

    c = torch.linspace(-bound, bound, res, device=device)
    grid = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    vol = _chunked(fn, grid).reshape(res, res, res).cpu().numpy()
    if not (vol.min() < 0 < vol.max()):
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    spacing = 2 * bound / (res - 1)
    verts, faces, _, _ = marching_cubes(vol, level=0.0, spacing=(spacing,) * 3)
    return verts - bound, faces.astype(np.int64)


def write_mesh_ply(path, verts: np.ndarray, faces: np.ndarray,
                   colors: np.ndarray | None = None) -> None:
    """A binary PLY mesh (vertex colours in [0, 1] optional), written atomically."""
    import trimesh

    from geometry.io.atomic import atomic_write_bytes

    vc = None if colors is None else np.clip(np.round(colors * 255), 0, 255).astype(np.uint8)
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, vertex_colors=vc, process=False)
    atomic_write_bytes(path, mesh.export(file_type="ply"))
