"""Exact NOCS maps of a textured box, ray cast analytically (test and benchmark oracle).

The box is centred at the object origin with half extents ``half``; its NOCS coordinates
are ``p / diagonal + 0.5`` (the tight box's diagonal spans the unit cube's, NOCS's usual
normalisation), so ``p_obj = (nocs - 0.5) * diagonal``. A box with two equal extents has a
4-fold (or, with a non-square cross-section, 2-fold) symmetry about the third axis; the
texture (a function of the object point) can break it in the images. Object frame as
:mod:`reconstruction.procedural.objects`: z up (the symmetry axis of symmetric objects).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from pose.camera.sparp.solver import NocsView, axis_angle

Texture = Callable[[np.ndarray], np.ndarray]  # [N, 3] object points -> [N, 3] colours


def stripes_texture(p: np.ndarray) -> np.ndarray:
    """Colours that differ on every side of the box (no symmetry in the images)."""
    ang = np.arctan2(p[:, 1], p[:, 0])
    return np.stack((0.5 + 0.5 * np.cos(ang), 0.5 + 0.5 * np.sin(2 * ang + 0.3),
                     0.5 + 0.4 * np.sin(9 * p[:, 2] + ang)), -1).clip(0, 1)


def look_at_pose(centre: np.ndarray, target: np.ndarray, roll: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``R_cam_obj [3, 3]``, ``t_cam_obj [3]`` of an OpenCV camera at ``centre`` looking at
    ``target`` (object frame), its image ``y`` axis close to the object's ``-z`` (down),
    rolled by ``roll`` radians about its optical axis."""
    z = target - centre
    z = z / np.linalg.norm(z)
    up = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.95 else np.array([0.0, 1.0, 0.0])
    x = np.cross(-up, z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R_obj_cam = np.stack((x, y, z), -1) @ axis_angle(np.array([0.0, 0.0, roll]))
    R_cam_obj = R_obj_cam.T
    return R_cam_obj, -R_cam_obj @ centre


def random_cameras(num: int, rng: np.random.Generator, distance: tuple[float, float] = (2.0, 3.0),
                   roll_deg: float = 10.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``num`` poses ``(R_cam_obj, t_cam_obj)`` looking at the origin from random directions
    (elevations -30..60 deg above the x-y plane) and distances (NOCS units)."""
    poses = []
    for _ in range(num):
        az = rng.uniform(0, 2 * math.pi)
        el = math.radians(rng.uniform(-30, 60))
        d = rng.uniform(*distance)
        centre = d * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az),
                               math.sin(el)])
        target = rng.normal(0, 0.03, 3)
        poses.append(look_at_pose(centre, target, math.radians(rng.uniform(-roll_deg, roll_deg))))
    return poses


def render_box_nocs(half: np.ndarray, R_cam_obj: np.ndarray, t_cam_obj: np.ndarray,
                    K: np.ndarray, width: int, height: int,
                    texture: Texture = stripes_texture) -> NocsView:
    """Ray cast the box through every pixel centre.

    Args:
        half: ``[3]`` half extents in NOCS units of the object frame before normalisation
            (any scale: the map is normalised by the diagonal).
        R_cam_obj, t_cam_obj: the object's pose in the camera; ``t`` in the same units as
            ``half`` divided by the diagonal (NOCS units).
        K: ``[3, 3]``.

    Returns:
        :class:`NocsView` with the exact map, mask and colours.
    """
    half = np.asarray(half, dtype=np.float64)
    half_n = half / (2 * np.linalg.norm(half))  # NOCS units: diagonal 1
    rows, cols = np.mgrid[0:height, 0:width]
    pix = np.stack((cols + 0.5, rows + 0.5, np.ones_like(cols, dtype=np.float64)), -1)
    dirs_cam = pix.reshape(-1, 3) @ np.linalg.inv(K).T
    dirs = dirs_cam @ R_cam_obj  # object frame (rows: R^T d)
    origin = -R_cam_obj.T @ t_cam_obj
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half_n - origin) / dirs
        t2 = (half_n - origin) / dirs
    t_near = np.nanmax(np.minimum(t1, t2), axis=1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=1)
    hit = (t_near <= t_far) & (t_near > 0)
    pts = origin + np.where(hit, t_near, 0.0)[:, None] * dirs
    pts = np.clip(pts, -half_n, half_n)
    nocs = np.where(hit[:, None], pts + 0.5, 0.0).reshape(height, width, 3)
    rgb = np.where(hit[:, None], texture(pts), 0.0).reshape(height, width, 3)
    return NocsView(nocs=nocs, mask=hit.reshape(height, width), K=K, rgb=rgb)


def corrupt(view: NocsView, sigma: float, outlier_share: float, rng: np.random.Generator
            ) -> NocsView:
    """Gaussian noise ``sigma`` (NOCS units) on every valid pixel and ``outlier_share`` of
    them replaced by uniform random coordinates (a network's gross errors)."""
    nocs = view.nocs.copy()
    rows, cols = np.nonzero(view.mask)
    nocs[rows, cols] += rng.normal(0, sigma, (len(rows), 3))
    bad = rng.random(len(rows)) < outlier_share
    nocs[rows[bad], cols[bad]] = rng.random((int(bad.sum()), 3))
    return NocsView(nocs=nocs, mask=view.mask, K=view.K, rgb=view.rgb)
