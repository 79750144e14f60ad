"""What a detector gets per sample: points, six cameras, ground truth — every pose named by
its frames (``T_a_b`` maps points in ``b`` to ``a``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perception.boxes import CameraBoxes, LidarBoxes

POINT_COLUMNS = ("x", "y", "z", "intensity", "time_lag")
"""Columns of :attr:`NuScenesSample.points`: metres in the keyframe LiDAR frame, the raw
intensity (0-255), and the sweep's age in seconds (0 for the keyframe)."""


@dataclass
class CameraData:
    """One camera of a sample.

    The camera fires at its own timestamp, a few tens of milliseconds away from the
    LiDAR keyframe; ``T_cam_lidar`` goes through the ego poses at both times, so it maps
    the sample's LiDAR points to where the camera saw that place of the world.
    """

    channel: str
    image_path: Path
    image_size: tuple[int, int]  # (width, height) pixels
    K: np.ndarray  # [3, 3] intrinsics
    T_cam_lidar: np.ndarray  # [4, 4] keyframe LiDAR (at the LiDAR time) -> camera
    timestamp: float  # seconds
    T_ego_cam: np.ndarray | None = None  # [4, 4] camera -> ego (at the camera time)
    T_global_ego: np.ndarray | None = None  # [4, 4] ego pose at the camera time
    image: np.ndarray | None = None  # [H, W, 3] float32 in [0, 1] (None: not loaded)
    instances: CameraBoxes | None = None  # ground truth in this camera's frame

    def project(self, pts_lidar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project LiDAR-frame points into this image.

        Args:
            pts_lidar: ``[N, 3+]`` (extra columns ignored).

        Returns:
            ``([N, 2] pixel coordinates (u right, v down), [N] depth in metres)``; points
            behind the camera have depth <= 0 and meaningless pixels.
        """
        pts = np.asarray(pts_lidar, dtype=np.float64)[:, :3]
        pts_cam = pts @ self.T_cam_lidar[:3, :3].T + self.T_cam_lidar[:3, 3]
        depth = pts_cam[:, 2]
        uvw = pts_cam @ self.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = uvw[:, :2] / uvw[:, 2:3]
        return uv, depth


@dataclass
class NuScenesSample:
    """One annotated keyframe."""

    token: str
    timestamp: float  # seconds, the LiDAR keyframe's
    T_ego_lidar: np.ndarray  # [4, 4] LiDAR -> ego
    T_global_ego: np.ndarray  # [4, 4] ego -> global at the LiDAR time
    gt: LidarBoxes  # ground truth in the keyframe LiDAR frame
    points: np.ndarray | None = None  # [N, 5] see POINT_COLUMNS (None: not loaded)
    cameras: dict[str, CameraData] = field(default_factory=dict)
    scene_name: str = ""

    @property
    def T_global_lidar(self) -> np.ndarray:
        """``[4, 4]`` keyframe LiDAR -> global."""
        return self.T_global_ego @ self.T_ego_lidar
