"""The camera sampler around an object: novel views for distillation.

From the input cameras (OpenCV ``T_cam_world``) it derives an *orbit band*: the object
centre (the point nearest to every optical axis, least squares), the up axis (normal to
the cameras' level x axes, :func:`level_up`), the radius (mean camera distance to the centre) and
the elevation range of the inputs widened by a margin (clipped to a limit). Novel cameras
lie on that sphere at a uniform random azimuth (the full circle) and an elevation uniform
within the band, looking at the centre with image-up along the up axis::

            up
            |    . novel camera (elevation e, azimuth a, radius r)
            |  /
            | /  e
     centre o------ reference direction (azimuth 0: the first input camera)

Their intrinsics keep the inputs' field of view (median focal over image side) at a square
render size, principal point at the centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class OrbitBand:
    """Where :func:`sample_orbit_cameras` puts cameras (float64, world frame)."""

    centre: Tensor  # [3] the object centre
    up: Tensor  # [3] unit up axis
    axis_a: Tensor  # [3] unit, perpendicular to up: azimuth 0
    axis_b: Tensor  # [3] unit, up x axis_a: azimuth 90 deg
    radius: float
    """Camera distance to the centre (mean of the inputs')."""
    elevation_min: float
    """Lowest elevation (radians, above the plane perpendicular to ``up``)."""
    elevation_max: float
    focal_fraction: float
    """Median input focal length divided by its image width (keeps the field of view)."""


def look_at(position: Tensor, up: Tensor, centre: Tensor | None = None) -> Tensor:
    """``T_cam_world [B, 4, 4]`` (OpenCV) of cameras at ``position [B, 3]`` looking at
    ``centre [3]`` (default the origin) with image-up along ``up [3]``."""
    target = torch.zeros_like(position[0]) if centre is None else centre.to(position)
    z = target - position
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.linalg.cross(-up.to(position).expand_as(z), z, dim=-1)
    bad = x.norm(dim=-1) < 1e-9  # looking along the up axis: any perpendicular will do
    if bool(bad.any()):
        other = torch.tensor([1.0, 0.0, 0.0], dtype=position.dtype, device=position.device)
        x[bad] = torch.linalg.cross(other.expand_as(z[bad]), z[bad], dim=-1)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], -2)
    T = torch.eye(4, dtype=position.dtype, device=position.device).repeat(len(position), 1, 1)
    T[:, :3, :3] = R
    T[:, :3, 3] = -(R @ position[..., None])[..., 0]
    return T


def axes_centre(T_cam_world: Tensor) -> Tensor:
    """``[3]`` the point nearest to every camera's optical axis (least squares,
    :func:`geometry.se3.optical_axes_point`); the mean camera centre pushed one mean
    distance forward when the axes are (nearly) parallel."""
    from geometry.se3 import invert_T, optical_axes_point

    T_world_cam = invert_T(T_cam_world.double())
    point = optical_axes_point(T_world_cam)
    if point is not None:
        return point
    centres, dirs = T_world_cam[:, :3, 3], T_world_cam[:, :3, 2]
    distance = float(centres.norm(dim=-1).mean()) or 1.0
    return centres.mean(0) + distance * dirs.mean(0)


def level_up(R_cam_world: Tensor) -> Tensor:
    """``[3]`` unit up axis of cameras ``R_cam_world [V, 3, 3]``: the direction
    perpendicular to every camera's x axis (exact for cameras without roll, whose x axes
    are level), signed like their image-up axes; minus the mean image-down axis where the
    x axes do not span a plane (one camera, or all at one azimuth)."""
    R = R_cam_world.double()
    fallback = -R[:, 1, :].mean(0)
    fallback = fallback / fallback.norm()
    if len(R) < 2:
        return fallback
    _, S, Vh = torch.linalg.svd(R[:, 0, :], full_matrices=True)
    if float(S[1]) < 0.1 * float(S[0]):
        return fallback
    up = Vh[-1]
    return up if float(up @ fallback) >= 0 else -up


def orbit_band(T_cam_world: Tensor, Ks: Tensor, widths: Tensor | list[int],
               centre: Tensor | None = None, elevation_margin_deg: float = 30.0,
               elevation_limit_deg: float = 80.0) -> OrbitBand:
    """The orbit band of input cameras ``T_cam_world [V, 4, 4]`` with intrinsics
    ``Ks [V, 3, 3]`` of images ``widths [V]`` pixels wide (see the module doc).

    Args:
        centre: ``[3]`` object centre (default: :func:`axes_centre`).
        elevation_margin_deg: widen the inputs' elevation range by this much each way.
        elevation_limit_deg: never steeper than this above or below the horizon.
    """
    T = T_cam_world.detach().double().cpu()
    R, t = T[:, :3, :3], T[:, :3, 3]
    centres = -(R.transpose(1, 2) @ t[..., None])[..., 0]
    centre = axes_centre(T) if centre is None else centre.detach().double().cpu()
    up = level_up(R)
    offsets = centres - centre
    radius = offsets.norm(dim=-1)
    dirs = offsets / radius[:, None].clamp_min(1e-12)
    elevations = torch.asin((dirs @ up).clamp(-1, 1))
    margin, limit = math.radians(elevation_margin_deg), math.radians(elevation_limit_deg)
    lo = max(float(elevations.min()) - margin, -limit)
    hi = min(float(elevations.max()) + margin, limit)
    ref = dirs[0] - (dirs[0] @ up) * up
    if float(ref.norm()) < 1e-6:  # the first camera looks along the up axis
        ref = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0], dtype=up.dtype))
        if float(ref.norm()) < 1e-6:
            ref = torch.linalg.cross(up, torch.tensor([0.0, 1.0, 0.0], dtype=up.dtype))
    a = ref / ref.norm()
    b = torch.linalg.cross(up, a)
    widths_t = torch.as_tensor(widths, dtype=torch.float64)
    focal_fraction = float((Ks.detach().double().cpu()[:, 0, 0] / widths_t).median())
    return OrbitBand(centre=centre, up=up, axis_a=a, axis_b=b, radius=float(radius.mean()),
                     elevation_min=lo, elevation_max=hi, focal_fraction=focal_fraction)


def sample_orbit_cameras(band: OrbitBand, count: int, generator: torch.Generator,
                         radius_jitter: float = 0.0) -> Tensor:
    """``[count, 4, 4]`` float64 ``T_cam_world`` on the band: azimuth uniform over the full
    circle, elevation uniform in the band, radius ``band.radius`` times a factor uniform in
    ``[1 - radius_jitter, 1 + radius_jitter]``, all looking at the centre."""
    u = torch.rand(count, 3, generator=generator, dtype=torch.float64)
    elevation = band.elevation_min + (band.elevation_max - band.elevation_min) * u[:, 0]
    azimuth = 2.0 * math.pi * u[:, 1]
    radius = band.radius * (1.0 + radius_jitter * (2.0 * u[:, 2] - 1.0))
    direction = (torch.cos(elevation)[:, None] * (torch.cos(azimuth)[:, None] * band.axis_a
                                                  + torch.sin(azimuth)[:, None] * band.axis_b)
                 + torch.sin(elevation)[:, None] * band.up)
    return look_at(band.centre + direction * radius[:, None], band.up, band.centre)


def square_intrinsics(band: OrbitBand, size: int, count: int = 1) -> Tensor:
    """``[count, 3, 3]`` float64 ``K`` of a ``size x size`` render with the inputs' field of
    view, principal point at the image centre."""
    K = torch.zeros(count, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = K[:, 1, 1] = band.focal_fraction * size
    K[:, 0, 2] = K[:, 1, 2] = size / 2.0
    K[:, 2, 2] = 1.0
    return K
