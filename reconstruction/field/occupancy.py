"""An occupancy grid over an axis-aligned box: skip empty space when marching rays.

Instant-NGP's scheme: a density grid ``[R, R, R]`` refreshed by an exponential moving
maximum (``grid = max(decay * grid, density(cell centre + jitter))``) and a binary grid of
the cells whose density exceeds ``min(threshold, mean)``. :meth:`OccupancyGrid.march`
steps along rays at a fixed step and keeps the steps whose midpoints fall in occupied cells,
as packed samples (ray index, start, end) for
:func:`~reconstruction.field.render.render_weights_packed`.

The marching runs on the sparse-voxel kernel of ``geometry.ops`` (:func:`march_native`: the
C++/OpenMP or CUDA ``ray_march``, its PyTorch reference where neither is built);
:func:`march_reference` is this module's own oracle, and tests compare the two.
:func:`set_march_impl` swaps in another implementation of the same signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from reconstruction.field.rays import intersect_aabb


@dataclass
class MarchSamples:
    """Packed samples of ``num_rays`` rays, sorted by ray then distance."""

    ray_indices: Tensor  # [M] int64
    t_starts: Tensor  # [M]
    t_ends: Tensor  # [M]
    num_rays: int

    @property
    def t_mid(self) -> Tensor:
        return 0.5 * (self.t_starts + self.t_ends)


#: ``(origins [N, 3], dirs [N, 3], t_min [N], t_max [N], binary [R, R, R] bool, lo [3],
#: hi [3], step) -> (ray_indices [M], t_starts [M], t_ends [M])``.
MarchFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, float],
                   tuple[Tensor, Tensor, Tensor]]

_MARCH_IMPL: MarchFn | None = None


def set_march_impl(fn: MarchFn | None) -> None:
    """Use ``fn`` for :meth:`OccupancyGrid.march`; None: :func:`march_native`."""
    global _MARCH_IMPL
    _MARCH_IMPL = fn


def cell_index(points: Tensor, lo: Tensor, hi: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """``[..., 3]`` int64 cell of each point (clamped) and ``[...]`` bool: inside the box."""
    f = (points - lo) / (hi - lo) * resolution
    inside = ((f >= 0) & (f < resolution)).all(-1)
    return f.floor().long().clamp(0, resolution - 1), inside


def march_reference(origins: Tensor, dirs: Tensor, t_min: Tensor, t_max: Tensor,
                    binary: Tensor, lo: Tensor, hi: Tensor, step: float,
                    chunk: int = 1 << 22) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed-step marching through occupied cells (pure PyTorch, the oracle).

    Each ray's interval ``[t_min, t_max]`` is clipped to the box; steps
    ``[a + k step, a + (k + 1) step]`` (the last one shortened to the exit) are kept where
    their midpoint lies in an occupied cell.

    Args:
        origins, dirs: ``[N, 3]`` rays (dirs unit); t_min, t_max: ``[N]``.
        binary: ``[R, R, R]`` bool occupancy, indexed ``[x, y, z]``.
        lo, hi: ``[3]`` the box; step: the step length (> 0).

    Returns:
        ``ray_indices [M]`` int64, ``t_starts [M]``, ``t_ends [M]``, sorted by ray, then t.
    """
    resolution = binary.shape[0]
    t_in, t_out = intersect_aabb(origins, dirs, lo, hi)
    a = torch.maximum(t_in, t_min)
    b = torch.minimum(t_out, t_max)
    steps = ((b - a) / step).ceil().clamp_min(0).long()
    n = len(origins)
    empty = (torch.zeros(0, dtype=torch.long, device=origins.device),
             origins.new_zeros(0), origins.new_zeros(0))
    if n == 0 or int(steps.max()) == 0:
        return empty
    rays, starts, ends = [], [], []
    # All (ray, k) pairs, by ray: repeat_interleave keeps the order.
    total = int(steps.sum())
    for begin in range(0, total, chunk):
        flat = torch.arange(begin, min(total, begin + chunk), device=origins.device)
        offsets = steps.cumsum(0) - steps
        ray = torch.searchsorted(steps.cumsum(0), flat, right=True)
        k = flat - offsets[ray]
        t0 = a[ray] + k.to(a.dtype) * step
        t1 = torch.minimum(t0 + step, b[ray])
        mid = origins[ray] + (0.5 * (t0 + t1))[:, None] * dirs[ray]
        cell, inside = cell_index(mid, lo, hi, resolution)
        keep = inside & binary[cell[:, 0], cell[:, 1], cell[:, 2]]
        rays.append(ray[keep])
        starts.append(t0[keep])
        ends.append(t1[keep])
    return torch.cat(rays), torch.cat(starts), torch.cat(ends)


def march_native(origins: Tensor, dirs: Tensor, t_min: Tensor, t_max: Tensor,
                 binary: Tensor, lo: Tensor, hi: Tensor, step: float
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`march_reference`'s rule on ``geometry.ops.sparse_voxel.ray_march``.

    The kernel's lattice starts at its ``near``: each ray's interval is clipped to the box
    first, so the steps start where :func:`march_reference`'s do (at
    ``max(t_min, box entry)``, the last one shortened to ``min(t_max, box exit)``). Samples
    agree with the reference up to float32 rounding of a midpoint that lies on a cell face.
    """
    from geometry.ops.sparse_voxel import ray_march

    t_in, t_out = intersect_aabb(origins, dirs, lo, hi)
    a = torch.maximum(t_in, t_min)
    b = torch.minimum(t_out, t_max)
    bounds = torch.cat([lo, hi]).to(torch.float32)
    out = ray_march(origins, dirs, a, b, binary, bounds, float(step))
    dtype = origins.dtype
    return out.ray_indices, out.t_starts.to(dtype), out.t_ends.to(dtype)


class OccupancyGrid:
    """Density EMA and occupancy over the box ``[lo, hi]`` at ``resolution^3`` cells."""

    def __init__(self, lo: Tensor | tuple, hi: Tensor | tuple, resolution: int = 64,
                 device: str | torch.device = "cpu") -> None:
        self.lo = torch.as_tensor(lo, dtype=torch.float32, device=device)
        self.hi = torch.as_tensor(hi, dtype=torch.float32, device=device)
        self.resolution = int(resolution)
        r = self.resolution
        self.density = torch.zeros(r, r, r, device=device)
        self.binary = torch.ones(r, r, r, dtype=torch.bool, device=device)

    @property
    def cell_size(self) -> Tensor:
        return (self.hi - self.lo) / self.resolution

    def cell_centres(self) -> Tensor:
        """``[R, R, R, 3]`` world positions of the cell centres."""
        r = self.resolution
        idx = torch.arange(r, dtype=torch.float32, device=self.lo.device) + 0.5
        grid = torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"), -1)
        return self.lo + grid / r * (self.hi - self.lo)

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], decay: float = 0.95,
               threshold: float = 0.01, jitter: bool = True,
               generator: torch.Generator | None = None, chunk: int = 1 << 16) -> None:
        """Refresh the grid: ``density = max(decay * density, density_fn(points))`` at one
        point per cell (the centre, jittered within the cell), then ``binary = density >
        min(threshold, mean density)``.

        Args:
            density_fn: ``[P, 3]`` world points -> ``[P]`` densities.
        """
        pts = self.cell_centres().reshape(-1, 3)
        if jitter:
            r = torch.rand(pts.shape, generator=generator).to(pts) - 0.5
            pts = pts + r * self.cell_size
        new = torch.cat([density_fn(pts[i:i + chunk]).reshape(-1).float()
                         for i in range(0, len(pts), chunk)])
        self.density = torch.maximum(self.density * decay, new.reshape(self.density.shape))
        self.binary = self.density > min(threshold, float(self.density.mean()))

    def occupied(self, points: Tensor) -> Tensor:
        """``[...]`` bool: the point lies in the box, in an occupied cell."""
        cell, inside = cell_index(points.to(self.lo), self.lo, self.hi, self.resolution)
        return inside & self.binary[cell[..., 0], cell[..., 1], cell[..., 2]]

    def march(self, origins: Tensor, dirs: Tensor, t_min: Tensor, t_max: Tensor,
              step: float) -> MarchSamples:
        """Packed samples in occupied cells (the rule of :func:`march_reference`, computed by
        :func:`march_native` unless :func:`set_march_impl` set another implementation)."""
        fn = _MARCH_IMPL or march_native
        ray, t0, t1 = fn(origins, dirs, t_min, t_max, self.binary, self.lo.to(origins),
                         self.hi.to(origins), float(step))
        return MarchSamples(ray, t0, t1, len(origins))

    def state_dict(self) -> dict[str, Tensor]:
        return {"lo": self.lo, "hi": self.hi, "density": self.density, "binary": self.binary}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> OccupancyGrid:
        grid = cls(state["lo"], state["hi"], state["density"].shape[0],
                   device=state["density"].device)
        grid.density = state["density"].float()
        grid.binary = state["binary"].bool()
        return grid
