"""The views' match graph: work-folder image names, keypoints and verified matches.

:mod:`reconstruction.init.sfm` writes the views under :func:`image_file_name` and fills a
COLMAP database; :func:`read_match_graph` reads it back for the fallback solver
:mod:`reconstruction.init.two_view`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# TwoViewGeometry.config values (colmap/estimators/two_view_geometry.h) whose matches carry
# usable epipolar geometry: CALIBRATED, UNCALIBRATED, PLANAR, PANORAMIC, PLANAR_OR_PANORAMIC.
_USABLE_TWO_VIEW_CONFIGS = (2, 3, 4, 5, 6)


def image_file_name(index: int) -> str:
    """The work-folder file name of view ``index`` (ASCII, unique, sorts in input order)."""
    return f"{index:04d}.png"


@dataclass
class MatchGraph:
    """Keypoints and verified matches of all views, read back from the COLMAP database."""

    keypoints: list[np.ndarray]  # per view [K_i, 2] pixels
    matches: dict[tuple[int, int], np.ndarray]  # (i, j), i < j -> [M, 2] keypoint indices
    Ks: np.ndarray  # [V, 3, 3] initial intrinsics (EXIF prior or COLMAP's default)
    camera_ids: np.ndarray  # [V] COLMAP camera of each view (equal ids share intrinsics)
    sizes: np.ndarray  # [V, 2]


def read_match_graph(database: Path, num_views: int, min_inliers: int) -> MatchGraph:
    """The match graph of ``num_views`` views named by :func:`image_file_name` in ``database``.

    Keeps the pairs whose two-view geometry is usable and has at least ``min_inliers``
    verified matches.
    """
    import pycolmap

    db = pycolmap.Database.open(database)
    try:
        cameras = {c.camera_id: c for c in db.read_all_cameras()}
        view_of_image, keypoints = {}, [np.zeros((0, 2))] * num_views
        Ks = np.tile(np.eye(3), (num_views, 1, 1))
        camera_ids = np.zeros(num_views, dtype=np.int64)
        sizes = np.zeros((num_views, 2), dtype=np.int64)
        for image in db.read_all_images():
            view = int(Path(image.name).stem)
            view_of_image[image.image_id] = view
            keypoints[view] = np.asarray(db.read_keypoints(image.image_id))[:, :2].astype(
                np.float64)
            camera = cameras[image.camera_id]
            Ks[view] = camera.calibration_matrix()
            camera_ids[view] = image.camera_id
            sizes[view] = (camera.width, camera.height)
        matches = {}
        ids = sorted(view_of_image)
        for a_index, a in enumerate(ids):
            for b in ids[a_index + 1:]:
                geometry = db.read_two_view_geometry(a, b)
                inliers = np.asarray(geometry.inlier_matches, dtype=np.int64).reshape(-1, 2)
                if int(geometry.config) not in _USABLE_TWO_VIEW_CONFIGS:
                    continue
                if len(inliers) < min_inliers:
                    continue
                i, j = view_of_image[a], view_of_image[b]
                matches[(i, j) if i < j else (j, i)] = inliers if i < j else inliers[:, ::-1]
    finally:
        db.close()
    return MatchGraph(keypoints, matches, Ks, camera_ids, sizes)
