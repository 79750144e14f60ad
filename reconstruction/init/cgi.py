"""Coarse geometric initialisation (CGI) without learned weights: SfM poses + stereo cloud.

With known cameras (``cameras=(Ks, T_cam_world)``, from ``recon fit --poses``) SfM still
matches the photos, but its tracks are triangulated again with the given cameras and the
stereo runs on them: the cloud is then where the given cameras see it. (Moving the SfM cloud
by a similarity instead would keep SfM's own focal length in its shape; on the synthetic
orbit scene that put the depths 5-7 % too close.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from geometry.errors import UserError
from reconstruction.images import LoadedImage
from reconstruction.init.base import InitResult, SparseModel
from reconstruction.init.config import InitConfig
from reconstruction.init.sfm import run_sfm
from reconstruction.init.stereo import densify


def check_registered(model: SparseModel) -> None:
    """Raise a UserError naming the views SfM could not register, and why."""
    missing = model.unregistered_names()
    if not missing:
        return
    retried = (" even after retrying with more features and a relaxed ratio test"
               if model.stats.get("retried") else "")
    if len(missing) == model.num_views:
        raise UserError(f"no two photos could be registered (too few feature matches between "
                        f"them{retried}); use photos of one scene with more overlap and "
                        "texture.")
    default = "too few feature matches with the other photos"
    named = ", ".join(f"{name} ({model.failures.get(name, default)})" for name in missing)
    raise UserError(f"could not register {named}{retried}; remove them or add photos that "
                    "overlap them.")


#: Known cameras: fewest share of the SfM tracks that must fit them (else they are not
#: these photos' cameras, or not in the convention they claim).
MIN_CONSISTENT_TRACKS = 0.5


class CamerasDoNotFit(UserError):
    """Given cameras that too few of the photos' matched points fit (see
    :func:`retriangulate`); ``detail`` says how many did."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def retriangulate(model: SparseModel, Ks: np.ndarray, T_cam_world: np.ndarray,
                  max_error: float) -> SparseModel:
    """The model's tracks triangulated again with given cameras (multi-view DLT).

    Args:
        model: an SfM model; only its observations (view, pixel, track) are used.
        Ks: ``[V, 3, 3]`` given intrinsics (pixels, the model's convention).
        T_cam_world: ``[V, 4, 4]`` given world-to-camera poses.
        max_error: pixels; a track whose point reprojects further than this in any of its
            views, or lies behind one of them, is dropped.

    Returns:
        A model with the given cameras (every view registered) and the kept points, their
        colours and observations.

    Raises:
        CamerasDoNotFit: fewer than :data:`MIN_CONSISTENT_TRACKS` of the tracks fit the
            cameras.
    """
    from reconstruction.init.two_view import triangulate

    order = np.argsort(model.obs_point, kind="stable")
    point, view, xy = model.obs_point[order], model.obs_view[order], model.obs_xy[order]
    starts = np.flatnonzero(np.r_[True, point[1:] != point[:-1]])
    ends = np.r_[starts[1:], len(point)]
    rays = np.empty_like(xy)
    for v in np.unique(view):
        sel = view == v
        K = Ks[v]
        rays[sel] = (xy[sel] - K[:2, 2]) / np.array([K[0, 0], K[1, 1]])
    kept, obs_keep = [], np.zeros(len(point), dtype=bool)
    points = []
    for a, b in zip(starts, ends, strict=True):
        if b - a < 2:
            continue
        X = triangulate(T_cam_world[view[a:b]], rays[a:b])
        if not np.all(np.isfinite(X)):
            continue
        cam = np.einsum("kij,j->ki", T_cam_world[view[a:b], :3, :3], X) \
            + T_cam_world[view[a:b], :3, 3]
        if np.any(cam[:, 2] <= 1e-9):
            continue
        uv = np.einsum("kij,kj->ki", Ks[view[a:b]], cam)
        error = np.linalg.norm(uv[:, :2] / uv[:, 2:3] - xy[a:b], axis=1)
        if error.max() > max_error:
            continue
        kept.append(point[a])
        points.append(X)
        obs_keep[a:b] = True
    tracks = len(starts)
    if len(kept) < max(4, MIN_CONSISTENT_TRACKS * tracks):
        detail = (f"{len(kept)} of {tracks} matched points reproject within "
                  f"{max_error:.1f} px")
        raise CamerasDoNotFit(f"the given cameras do not fit the photos: {detail}; check "
                              "that the poses belong to these photos and use the "
                              "OpenCV/COLMAP or transforms.json convention they claim.", detail)
    kept = np.asarray(kept)
    remap = np.full(len(model.points_world), -1)
    remap[kept] = np.arange(len(kept))
    return replace(model, Ks=np.asarray(Ks, np.float64).copy(),
                   T_cam_world=np.asarray(T_cam_world, np.float64).copy(),
                   registered=np.ones(model.num_views, dtype=bool),
                   points_world=np.stack(points), colors=model.colors[kept],
                   obs_point=remap[point[obs_keep]], obs_view=view[obs_keep],
                   obs_xy=xy[obs_keep], stats={**model.stats,
                                               "retriangulated_points": int(len(kept)),
                                               "sfm_tracks": int(tracks)})


def initialise_sfm_sparse(images: Sequence[LoadedImage], work_dir: Path, config: InitConfig,
                          seed: int, cameras: tuple[np.ndarray, np.ndarray] | None = None
                          ) -> InitResult:
    """SfM poses and intrinsics; the splats start on the sparse SfM points only.

    ``cameras``: known ``(Ks [V, 3, 3], T_cam_world [V, 4, 4])``; the SfM tracks are then
    triangulated with them (:func:`retriangulate`) and the model carries them.
    """
    model, timings = run_sfm(images, work_dir, config.sfm, seed)
    check_registered(model)
    if cameras is not None:
        diagonal = float(np.hypot(*model.sizes.max(0)))
        model = retriangulate(model, cameras[0], cameras[1],
                              max(config.sfm.max_reprojection_error, 0.005 * diagonal))
    if len(model.points_world) < 4:
        raise UserError("the photos share too few features to triangulate the scene; use "
                        "photos with more overlap and texture.")
    return InitResult(model=model, points_world=model.points_world, colors=model.colors,
                      timings=timings, stats={**model.stats, "mapper": model.mapper})


def initialise_sfm(images: Sequence[LoadedImage], work_dir: Path, config: InitConfig,
                   seed: int, cameras: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> InitResult:
    """SfM poses and intrinsics, and the sparse points plus a fused stereo cloud
    (``cameras``: known cameras, as :func:`initialise_sfm_sparse`; the stereo uses them)."""
    result = initialise_sfm_sparse(images, work_dir, config, seed, cameras)
    t0 = time.perf_counter()
    dense, dense_colors, stats = densify(result.model, images, config.stereo)
    result.timings["stereo"] = time.perf_counter() - t0
    result.points_world = np.concatenate([result.model.points_world, dense])
    result.colors = np.concatenate([result.model.colors, dense_colors])
    result.stats.update(stats)
    return result
