"""Rays of :class:`~geometry.cameras.Cameras` and their intersections with spheres and boxes.

Pixels follow the project's convention (:mod:`geometry.cameras`): pixel ``(row i, col j)``
has its centre at ``(u, v) = (j + 0.5, i + 0.5)``; cameras are OpenCV (z forward). Ray
directions are unit vectors in the world frame, so a distance ``t`` along a ray is in scene
units; ``z_per_t`` converts it to the camera z-depth that scene models report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from geometry.cameras import Cameras


@dataclass
class Rays:
    """A batch of rays, any leading shape ``...``."""

    origins: Tensor  # [..., 3] world frame
    directions: Tensor  # [..., 3] unit, world frame
    z_per_t: Tensor  # [...] camera z-depth per unit distance along the ray (cos to the axis)

    def reshape(self, *shape: int) -> Rays:
        """The same rays with leading shape ``shape``."""
        return Rays(self.origins.reshape(*shape, 3), self.directions.reshape(*shape, 3),
                    self.z_per_t.reshape(*shape))

    def __getitem__(self, index) -> Rays:
        return Rays(self.origins[index], self.directions[index], self.z_per_t[index])

    def __len__(self) -> int:
        return len(self.origins)

    def to(self, device=None, dtype=None) -> Rays:
        return Rays(self.origins.to(device, dtype), self.directions.to(device, dtype),
                    self.z_per_t.to(device, dtype))

    def points(self, t: Tensor) -> Tensor:
        """``[..., S, 3]`` points at distances ``t [..., S]``."""
        return self.origins[..., None, :] + t[..., None] * self.directions[..., None, :]


def camera_rays(cameras: Cameras, uv: Tensor | None = None) -> Rays:
    """Rays of ``cameras``.

    Args:
        cameras: ``[C]`` cameras; without ``uv`` they must share one image size.
        uv: ``[C, N, 2]`` pixel coordinates (``+0.5`` at pixel centres); None: every pixel
            centre, giving rays of shape ``[C, H, W]``.

    Returns:
        :class:`Rays` ``[C, N]`` or ``[C, H, W]`` (distortion honoured, see
        :meth:`Cameras.rays`).
    """
    shape = None
    if uv is None:
        w, h = int(cameras.width.reshape(-1)[0]), int(cameras.height.reshape(-1)[0])
        if bool((cameras.width != w).any()) or bool((cameras.height != h).any()):
            raise ValueError("camera_rays without uv needs cameras of one image size")
        uv = cameras[0].pixel_centers().reshape(1, -1, 2).expand(len(cameras), -1, 2)
        shape = (len(cameras), h, w)
    origins, dirs = cameras.rays(uv.to(cameras.K))
    z_per_t = (dirs * cameras.T_world_cam[:, None, :3, 2]).sum(-1)
    rays = Rays(origins, dirs, z_per_t)
    return rays.reshape(*shape) if shape is not None else rays


def intersect_sphere(origins: Tensor, dirs: Tensor, radius: float | Tensor = 1.0,
                     centre: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of unit-direction rays through a sphere.

    Args:
        origins, dirs: ``[..., 3]``; ``dirs`` unit.
        radius: sphere radius; centre: ``[3]`` (default the origin).

    Returns:
        ``t_in [...]``, ``t_out [...]``; rays that miss get ``t_in = t_out =`` the distance
        of their closest approach (an empty interval). From inside, ``t_in < 0``.
    """
    o = origins if centre is None else origins - centre
    b = (o * dirs).sum(-1)
    c = (o * o).sum(-1) - radius * radius
    disc = b * b - c
    sq = disc.clamp_min(0.0).sqrt()
    hit = disc > 0
    return torch.where(hit, -b - sq, -b), torch.where(hit, -b + sq, -b)


def intersect_aabb(origins: Tensor, dirs: Tensor, lo: Tensor, hi: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """Slab test: entry and exit distances ``[...]`` of rays ``[..., 3]`` through the box
    ``[lo, hi]`` (``[3]`` each); a miss has ``t_out < t_in``."""
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    inv = 1.0 / safe
    t1, t2 = (lo - origins) * inv, (hi - origins) * inv
    return torch.minimum(t1, t2).amax(-1), torch.maximum(t1, t2).amin(-1)
