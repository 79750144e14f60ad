"""The coarse initialisation of a fit from ONE photo, where SfM has nothing to match.

The camera is the identity (its focal from EXIF, else COLMAP's guess of 1.2 x the longer
side) or the one given (``--poses``). The cloud is the photo's pixels unprojected at a
monocular depth guess without learned weights:

- a photo of an object on a plain background (the border pixels nearly one colour, as
  masked object photos): the foreground pixels on a dome over the object's silhouette, its
  rim at the object's distance and its middle ``relief`` of that distance nearer, the
  profile ``sqrt(1 - (1 - t)^2)`` of the normalised distance ``t`` to the silhouette's edge
  (a sphere's cross-section); background pixels are left to the background colour;
- any other photo: every pixel on a fronto-parallel plane.

The object's distance is 1 (the engine normalises the world to a mean camera distance of 1)
or, with a given camera, the distance from it to the world origin when that is in front of
it. The sparse model holds one point, the centre, so the engine's normalisation keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reconstruction.images import LoadedImage
from reconstruction.init.base import InitResult, SparseModel

#: Default focal without EXIF, times the longer image side (COLMAP's prior).
DEFAULT_FOCAL_FACTOR = 1.2
#: Border pixels whose colours spread less than this (max abs deviation from their median,
#: 90th percentile) make a plain background.
PLAIN_BORDER_SPREAD = 0.06
#: A pixel further than this from the background colour (max over channels) is foreground.
FOREGROUND_THRESHOLD = 0.08


def single_view_intrinsics(image: LoadedImage) -> np.ndarray:
    """``[3, 3]`` pinhole intrinsics: EXIF focal, else :data:`DEFAULT_FOCAL_FACTOR`."""
    w, h = image.width, image.height
    f = float(image.focal_px) if image.focal_px is not None else DEFAULT_FOCAL_FACTOR * max(w, h)
    return np.array([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]])


def foreground_mask(rgb: np.ndarray) -> np.ndarray | None:
    """``[H, W]`` bool foreground of a photo on a plain background, None when the border is
    not plain (module doc)."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    colour = np.median(border, axis=0)
    if np.quantile(np.abs(border - colour).max(-1), 0.9) > PLAIN_BORDER_SPREAD:
        return None
    mask = np.abs(rgb - colour).max(-1) > FOREGROUND_THRESHOLD
    return mask if mask.sum() >= 16 else None


def dome_depth(mask: np.ndarray, distance: float, relief: float) -> np.ndarray:
    """``[H, W]`` depth over the silhouette (module doc): ``distance`` at the rim,
    ``distance * (1 - relief)`` at the point furthest from the rim."""
    import cv2

    dt = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5).astype(np.float64)
    t = (dt - 1.0).clip(0.0) / max(float(dt.max()) - 1.0, 1e-9)  # 0 on the rim pixels
    return distance * (1.0 - relief * np.sqrt(np.clip(1.0 - (1.0 - t) ** 2, 0.0, 1.0)))


def single_view_init(images: Sequence[LoadedImage], work_dir: Path, config, seed: int,
                     cameras: tuple[np.ndarray, np.ndarray] | None = None,
                     relief: float = 0.3, max_points: int = 40_000) -> InitResult:
    """The :class:`~reconstruction.init.registry.Initialiser` of one photo (module doc)."""
    import time

    t0 = time.perf_counter()
    (image,) = images
    rgb = image.rgb.numpy().astype(np.float64)
    h, w = rgb.shape[:2]
    if cameras is not None:
        K = np.asarray(cameras[0], dtype=np.float64).reshape(3, 3)
        T_cam_world = np.asarray(cameras[1], dtype=np.float64).reshape(4, 4)
        origin_cam = T_cam_world[:3, 3]  # the world origin in the camera
        distance = float(origin_cam[2]) if origin_cam[2] > 1e-6 else 1.0
    else:
        K = single_view_intrinsics(image)
        T_cam_world = np.eye(4)
        distance = 1.0
    mask = foreground_mask(rgb)
    if mask is None:
        keep = np.ones((h, w), bool)
        depth = np.full((h, w), distance)
        kind = "plane"
    else:
        keep = mask
        depth = dome_depth(mask, distance, relief)
        kind = "silhouette dome"
    v, u = np.nonzero(keep)
    if len(u) > max_points:
        pick = np.random.default_rng(seed).choice(len(u), max_points, replace=False)
        u, v = u[pick], v[pick]
    z = depth[v, u]
    x = (u + 0.5 - K[0, 2]) / K[0, 0] * z
    y = (v + 0.5 - K[1, 2]) / K[1, 1] * z
    pts_cam = np.stack((x, y, z), -1)
    T_world_cam = np.linalg.inv(T_cam_world)
    pts = pts_cam @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
    centre_cam = np.array([0.0, 0.0, distance])
    centre = centre_cam @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
    model = SparseModel(
        names=[image.path.name], sizes=np.array([[w, h]]), Ks=K[None],
        T_cam_world=T_cam_world[None], registered=np.ones(1, bool), points_world=centre[None],
        colors=np.full((1, 3), 0.5), obs_point=np.zeros(0, np.int64),
        obs_view=np.zeros(0, np.int64), obs_xy=np.zeros((0, 2)), mapper="single-view")
    return InitResult(model=model, points_world=pts, colors=rgb[v, u],
                      timings={"single_view": time.perf_counter() - t0},
                      stats={"initialiser": "single-view", "depth": kind,
                             "points": int(len(pts))})
