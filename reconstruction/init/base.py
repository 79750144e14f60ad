"""What every coarse initialiser returns: cameras, and a coloured point cloud to seed splats."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SparseModel:
    """A calibrated, posed set of views with triangulated points (numpy, float64).

    Pixel coordinates follow COLMAP and gsplat: the top-left image corner is ``(0, 0)`` and
    the first pixel's centre is ``(0.5, 0.5)``. Views are in the input order; a view that
    could not be registered has ``registered[i] == False`` and an identity pose.
    """

    names: list[str]  # [V] image names, for messages
    sizes: np.ndarray  # [V, 2] (width, height) pixels
    Ks: np.ndarray  # [V, 3, 3] pinhole intrinsics, pixels
    T_cam_world: np.ndarray  # [V, 4, 4] world-to-camera (OpenCV axes)
    registered: np.ndarray  # [V] bool
    points_world: np.ndarray  # [P, 3]
    colors: np.ndarray  # [P, 3] in [0, 1]
    obs_point: np.ndarray  # [M] index into points_world of each observation
    obs_view: np.ndarray  # [M] view index of each observation
    obs_xy: np.ndarray  # [M, 2] observed pixel position
    mapper: str = ""
    """Which path produced the model ("incremental" or "two-view")."""
    stats: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    """Unregistered view name -> why it could not be registered (for the error message)."""

    @property
    def num_views(self) -> int:
        return len(self.names)

    @property
    def T_world_cam(self) -> np.ndarray:  # [V, 4, 4]
        return np.linalg.inv(self.T_cam_world)

    def unregistered_names(self) -> list[str]:
        return [n for n, ok in zip(self.names, self.registered, strict=True) if not ok]

    def reprojection_errors(self) -> np.ndarray:
        """Pixel distance between each observation and its point's projection, ``[M]``."""
        if len(self.obs_point) == 0:
            return np.zeros(0)
        pts = self.points_world[self.obs_point]
        T = self.T_cam_world[self.obs_view]
        pts_cam = np.einsum("mij,mj->mi", T[:, :3, :3], pts) + T[:, :3, 3]
        uvw = np.einsum("mij,mj->mi", self.Ks[self.obs_view], pts_cam)
        uv = uvw[:, :2] / uvw[:, 2:3]
        return np.linalg.norm(uv - self.obs_xy, axis=1)


@dataclass
class InitResult:
    """The output of a coarse initialiser (CGI): poses, intrinsics and a coloured cloud."""

    model: SparseModel
    """Cameras and the sparse points they were estimated from."""
    points_world: np.ndarray  # [P, 3] the cloud to seed Gaussians (sparse + dense)
    colors: np.ndarray  # [P, 3] in [0, 1]
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage (feature extraction, matching, mapping, densification ...)."""
    stats: dict[str, float | int | str] = field(default_factory=dict)
