"""Where to put the viewer's camera: robust scene bounds, the up direction, the first view.

All poses are ``T_world_cam`` in the OpenCV camera frame (x right, y down, z forward),
the frame of :class:`geometry.cameras.Cameras` and of viser's cameras::

              z (forward, towards the target)
             /
            o ------> x (right)
            |
            v
            y (down)   "up" on screen is -y

Everything here is numpy float64: it runs once per view, not per Gaussian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geometry.se3 import look_at

DEFAULT_UP = np.array([0.0, -1.0, 0.0])
"""Up when nothing says otherwise: -y, the convention of COLMAP/OpenCV scenes and of the
original 3DGS code, whose PLYs live in COLMAP's world frame."""


@dataclass(frozen=True)
class SceneSphere:
    """A sphere that holds the scene: ``centre [3]`` (world, metres) and ``radius``."""

    centre: np.ndarray  # [3]
    radius: float


def robust_bounds(points_world: np.ndarray, quantile: float = 0.005) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Per-axis bounds of ``points_world [N, 3]`` that ignore the ``quantile`` tails.

    Trained splat scenes carry floaters far outside the scene; a plain min/max would frame
    them and shrink the scene to a dot. With fewer than 100 points every point counts.

    Returns:
        ``(lo [3], hi [3])``.
    """
    pts = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) == 0:
        raise ValueError("robust_bounds needs at least one finite point")
    q = quantile if len(pts) >= 100 else 0.0
    return np.quantile(pts, q, axis=0), np.quantile(pts, 1.0 - q, axis=0)


def scene_sphere(points_world: np.ndarray | None, cameras_world: np.ndarray | None = None,
                 quantile: float = 0.005) -> SceneSphere:
    """The sphere around the robust bounds of the content and all camera centres.

    Args:
        points_world: ``[N, 3]`` content (splat means, points) or ``None``.
        cameras_world: ``[C, 3]`` camera centres (all kept, they are few and meaningful).
        quantile: tail fraction of the content ignored per axis and side.

    Returns:
        The sphere through the corners of the bounding box (radius 1 for a single point,
        and a unit sphere at the origin when there is nothing at all).
    """
    boxes = []
    if points_world is not None and len(points_world):
        boxes.append(robust_bounds(points_world, quantile))
    if cameras_world is not None and len(cameras_world):
        cams = np.asarray(cameras_world, dtype=np.float64).reshape(-1, 3)
        boxes.append((cams.min(0), cams.max(0)))
    if not boxes:
        return SceneSphere(np.zeros(3), 1.0)
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    centre = 0.5 * (lo + hi)
    radius = 0.5 * float(np.linalg.norm(hi - lo))
    if radius <= 1e-12 * max(1.0, float(np.linalg.norm(centre))):
        radius = 1.0  # a single point has no size of its own; one metre is as good as any
    return SceneSphere(centre, radius)


def estimate_up(T_world_cam: np.ndarray | None) -> np.ndarray:
    """The world's up direction ``[3]`` from cameras ``[C, 4, 4]`` (OpenCV).

    Photographers hold cameras without roll but tilt them up or down freely, so each
    camera's x axis is horizontal while its -y axis is not: up is the direction most
    perpendicular to all x axes (the smallest eigenvector of ``sum x x^T``), signed to
    agree with the mean -y. When all x axes are parallel (one camera, or a forward-facing
    row) that leaves a plane of candidates; then up is the mean -y made perpendicular to
    x. Falls back to :data:`DEFAULT_UP` without cameras or when they disagree completely.
    """
    if T_world_cam is None or len(T_world_cam) == 0:
        return DEFAULT_UP.copy()
    T = np.asarray(T_world_cam, dtype=np.float64)
    xs = T[:, :3, 0]
    mean_up = -T[:, :3, 1].mean(axis=0)
    if float(np.linalg.norm(mean_up)) < 0.3:
        return DEFAULT_UP.copy()
    scatter = xs.T @ xs / len(xs)
    eigvals, eigvecs = np.linalg.eigh(scatter)  # ascending
    if eigvals[1] > 1e-3:  # the x axes span a plane: its normal is up
        up = eigvecs[:, 0]
    else:
        x = eigvecs[:, 2]
        up = mean_up - float(mean_up @ x) * x
    up = up / np.linalg.norm(up)
    return up if float(up @ mean_up) >= 0 else -up


def _perpendicular(v: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to unit ``v`` (from the world axis least aligned)."""
    axis = np.zeros(3)
    axis[int(np.argmin(np.abs(v)))] = 1.0
    p = axis - float(axis @ v) * v
    return p / np.linalg.norm(p)


def view_direction(sphere: SceneSphere, up: np.ndarray,
                   camera_centres: np.ndarray | None = None,
                   elevation_deg: float = 25.0) -> np.ndarray:
    """Unit direction ``[3]`` from the scene centre towards the initial viewpoint.

    With cameras it is the side they look from (their mean centre); when they surround
    the scene (mean near the centre) the first camera's side. Either way it is lifted to
    at least ``elevation_deg`` above the horizon so the first view looks down a little.
    """
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    direction = None
    if camera_centres is not None and len(camera_centres):
        offsets = np.asarray(camera_centres, dtype=np.float64).reshape(-1, 3) - sphere.centre
        mean = offsets.mean(axis=0)
        if np.linalg.norm(mean) > 0.2 * sphere.radius:
            direction = mean
        elif np.linalg.norm(offsets[0]) > 0:
            direction = offsets[0]
    horizontal = None
    if direction is not None:
        horizontal = direction - float(direction @ up) * up
    if horizontal is None or np.linalg.norm(horizontal) < 1e-9:
        horizontal = _perpendicular(up)
    horizontal = horizontal / np.linalg.norm(horizontal)
    elevation = math.radians(elevation_deg)
    if direction is not None:
        d = direction / np.linalg.norm(direction)
        elevation = max(elevation, math.asin(float(np.clip(d @ up, -1.0, 1.0))))
    return math.cos(elevation) * horizontal + math.sin(elevation) * up


def framing_distance(radius: float, fov_y: float, aspect: float = 1.0,
                     margin: float = 1.1) -> float:
    """Distance from which a sphere of ``radius`` fits a view of vertical ``fov_y``.

    The narrower of the vertical and horizontal field of view (``aspect = W/H``) decides;
    ``margin`` leaves a border.
    """
    fov_x = 2.0 * math.atan(math.tan(fov_y / 2.0) * aspect)
    half = min(fov_y, fov_x) / 2.0
    return margin * radius / math.sin(half)


def initial_view(sphere: SceneSphere, up: np.ndarray, fov_y: float,
                 camera_centres: np.ndarray | None = None, aspect: float = 1.0,
                 margin: float = 1.1) -> np.ndarray:
    """``T_world_cam [4, 4]`` of a view that shows the whole sphere, centred, upright."""
    direction = view_direction(sphere, up, camera_centres)
    distance = framing_distance(sphere.radius, fov_y, aspect, margin)
    eye = sphere.centre + distance * direction
    return look_at(eye, sphere.centre, up)


def clip_planes(sphere: SceneSphere, eye: np.ndarray) -> tuple[float, float]:
    """``(near, far)`` for a viewer at ``eye``: the scene and 10x its surroundings fit.

    Fixed planes (viser's 0.01 and 1000) clip scenes in millimetres or kilometres.
    """
    distance = float(np.linalg.norm(np.asarray(eye) - sphere.centre))
    far = 10.0 * (distance + sphere.radius)
    near = max(far * 1e-6, 1e-3 * sphere.radius)
    return near, far
