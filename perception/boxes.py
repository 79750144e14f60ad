"""3D boxes that carry their frame: LiDAR-frame boxes and camera-frame boxes.

Box size is nuScenes' ``(w, l, h)``: ``l`` along the box's heading, ``w`` across it, ``h``
up. Centres are gravity centres (the middle of the box, not the bottom face). Conversion
to and from the nuScenes results format (global frame, ``wxyz`` rotation) goes through
``T_global_lidar`` of the sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from perception import frames
from perception.constants import ATTRIBUTES, DETECTION_CLASSES

# Corner order of the devkit's ``Box.corners``: the first four face forward (+l/2), the
# last four backward; within each, (left/right, top/bottom) as the devkit lists them.
_CORNER_SIGNS = np.array(
    [
        [1, 1, 1], [1, -1, 1], [1, -1, -1], [1, 1, -1],
        [-1, 1, 1], [-1, -1, 1], [-1, -1, -1], [-1, 1, -1],
    ],
    dtype=np.float64,
)  # (along l, along w, along h)
_EDGES = np.array(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4],
     [0, 4], [1, 5], [2, 6], [3, 7]]
)


def _column(values: Any, n: int, dtype: Any, width: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    shape = (n,) if width is None else (n, width)
    if array.size == 0:
        return np.zeros(shape, dtype=dtype)
    return array.reshape(shape)


@dataclass
class LidarBoxes:
    """Boxes in the LiDAR frame of a sample (nuScenes ``LIDAR_TOP``).

    .. code-block:: none

                     z up   y front (yaw = pi/2)
                        ^   ^
                        |  /
                        | /
                        0 ------> x right of the car (yaw = 0)

    Right-handed: x to the right of the vehicle, y forward, z up. ``yaw`` is the heading
    of the box's length axis, from +x towards +y (counter-clockwise seen from above).

    All arrays share the first dimension ``N``. ``scores`` is ``None`` for ground truth;
    ``num_lidar_pts``/``num_radar_pts`` are ``None`` for detections.
    """

    centers: np.ndarray  # [N, 3] gravity centre, metres
    sizes: np.ndarray  # [N, 3] (w, l, h), metres
    yaws: np.ndarray  # [N] radians, heading of the length axis from +x towards +y
    velocities: np.ndarray  # [N, 2] (vx, vy) m/s in this frame; NaN where unknown
    labels: np.ndarray  # [N] int64 index into DETECTION_CLASSES
    attributes: np.ndarray  # [N] int64 index into ATTRIBUTES ("" is the last)
    scores: np.ndarray | None = None  # [N] detection confidence in [0, 1]
    num_lidar_pts: np.ndarray | None = None  # [N] int64, ground truth only
    num_radar_pts: np.ndarray | None = None  # [N] int64, ground truth only
    tokens: list[str] = field(default_factory=list)  # [N] annotation tokens (or empty)

    def __post_init__(self) -> None:
        n = int(np.asarray(self.yaws).size)
        self.centers = _column(self.centers, n, np.float64, 3)
        self.sizes = _column(self.sizes, n, np.float64, 3)
        self.yaws = _column(self.yaws, n, np.float64)
        self.velocities = _column(self.velocities, n, np.float64, 2)
        self.labels = _column(self.labels, n, np.int64)
        self.attributes = _column(self.attributes, n, np.int64)
        if self.scores is not None:
            self.scores = _column(self.scores, n, np.float64)
        if self.num_lidar_pts is not None:
            self.num_lidar_pts = _column(self.num_lidar_pts, n, np.int64)
        if self.num_radar_pts is not None:
            self.num_radar_pts = _column(self.num_radar_pts, n, np.int64)
        if self.tokens and len(self.tokens) != n:
            raise ValueError(f"{len(self.tokens)} tokens for {n} boxes")

    def __len__(self) -> int:
        return int(self.yaws.shape[0])

    @classmethod
    def empty(cls, with_scores: bool = False) -> LidarBoxes:
        """No boxes (with an empty ``scores`` array when ``with_scores``)."""
        return cls(
            centers=np.zeros((0, 3)), sizes=np.zeros((0, 3)), yaws=np.zeros(0),
            velocities=np.zeros((0, 2)), labels=np.zeros(0, np.int64),
            attributes=np.zeros(0, np.int64), scores=np.zeros(0) if with_scores else None,
        )

    @property
    def class_names(self) -> list[str]:
        """``[N]`` detection class names."""
        return [DETECTION_CLASSES[i] for i in self.labels]

    @property
    def attribute_names(self) -> list[str]:
        """``[N]`` attribute names (``""`` for none)."""
        return [ATTRIBUTES[i] for i in self.attributes]

    def select(self, index: np.ndarray | Sequence[int] | slice) -> LidarBoxes:
        """The boxes picked by a boolean mask, an index array or a slice."""
        index = np.asarray(index) if not isinstance(index, slice) else index
        positions = np.arange(len(self))[index]
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "tokens":
                out[f.name] = [value[i] for i in positions] if value else []
            elif value is None:
                out[f.name] = None
            else:
                out[f.name] = value[positions]
        return LidarBoxes(**out)

    def rotation_matrices(self) -> np.ndarray:
        """``[N, 3, 3]`` box-to-LiDAR rotations (upright: about +z by ``yaw``)."""
        c, s = np.cos(self.yaws), np.sin(self.yaws)
        R = np.zeros((len(self), 3, 3))
        R[:, 0, 0], R[:, 0, 1], R[:, 1, 0], R[:, 1, 1], R[:, 2, 2] = c, -s, s, c, 1.0
        return R

    def corners(self) -> np.ndarray:
        """``[N, 8, 3]`` corners in the LiDAR frame, in the devkit's ``Box.corners`` order."""
        half_lwh = self.sizes[:, [1, 0, 2]] / 2.0  # local x = length, y = width, z = height
        local = _CORNER_SIGNS[None] * half_lwh[:, None, :]
        return np.einsum("nij,nkj->nki", self.rotation_matrices(), local) + self.centers[:, None]

    def points_in_boxes(self, pts_lidar: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Which points lie inside which box (the devkit's ``points_in_box`` test).

        Args:
            pts_lidar: ``[M, 3+]`` points in the LiDAR frame (extra columns ignored).
            margin: grow every box by this many metres on each side.

        Returns:
            ``[M, N]`` bool.
        """
        pts = np.asarray(pts_lidar, dtype=np.float64)[:, :3]
        rel = pts[:, None, :] - self.centers[None]  # [M, N, 3]
        c, s = np.cos(self.yaws), np.sin(self.yaws)
        along_l = rel[..., 0] * c + rel[..., 1] * s
        along_w = -rel[..., 0] * s + rel[..., 1] * c
        half = self.sizes / 2.0 + margin
        return (
            (np.abs(along_l) <= half[:, 1])
            & (np.abs(along_w) <= half[:, 0])
            & (np.abs(rel[..., 2]) <= half[:, 2])
        )

    # ------------------------------------------------------------------ global frame

    def to_global(self, T_global_lidar: np.ndarray) -> GlobalBoxes:
        """The same boxes in the nuScenes global frame.

        Args:
            T_global_lidar: ``[4, 4]`` LiDAR-to-global transform at the sample's LiDAR time.
        """
        R_global_box = np.einsum("ij,njk->nik", T_global_lidar[:3, :3], self.rotation_matrices())
        vel_lidar = np.concatenate([self.velocities, np.zeros((len(self), 1))], axis=1)
        return GlobalBoxes(
            translations=frames.transform_points(T_global_lidar, self.centers),
            sizes=self.sizes.copy(),
            rotations=frames.matrix_to_quat(R_global_box) if len(self) else np.zeros((0, 4)),
            velocities=frames.rotate_vectors(T_global_lidar, vel_lidar)[:, :2],
            labels=self.labels.copy(),
            attributes=self.attributes.copy(),
            scores=None if self.scores is None else self.scores.copy(),
        )

    def to_results(self, sample_token: str, T_global_lidar: np.ndarray) -> list[dict]:
        """Entries of the nuScenes results file (``results[sample_token]``) for these boxes.

        Boxes without scores (ground truth) get score 1.0.
        """
        return self.to_global(T_global_lidar).to_results(sample_token)

    # ------------------------------------------------------------------ camera frame

    def to_camera(
        self,
        T_cam_lidar: np.ndarray,
        K: np.ndarray,
        image_size: tuple[int, int],
        min_depth: float = 0.1,
    ) -> CameraBoxes:
        """The boxes that appear in one camera, in that camera's frame.

        A box is kept when its centre is in front of the camera (depth > ``min_depth``)
        and the part of it in front of the near plane projects into the image.

        Args:
            T_cam_lidar: ``[4, 4]`` LiDAR-to-camera transform (camera at its own time).
            K: ``[3, 3]`` intrinsics.
            image_size: ``(width, height)`` in pixels.
        """
        width, height = image_size
        n = len(self)
        R_cam_lidar = T_cam_lidar[:3, :3]
        centers_cam = frames.transform_points(T_cam_lidar, self.centers) if n else np.zeros((0, 3))
        heading_lidar = np.stack([np.cos(self.yaws), np.sin(self.yaws), np.zeros(n)], axis=1)
        heading_cam = heading_lidar @ R_cam_lidar.T
        yaws_cam = np.arctan2(-heading_cam[:, 2], heading_cam[:, 0])
        vel_lidar = np.concatenate([self.velocities, np.zeros((n, 1))], axis=1)
        vel_cam = vel_lidar @ R_cam_lidar.T
        corners_cam = (
            frames.transform_points(T_cam_lidar, self.corners().reshape(-1, 3)).reshape(n, 8, 3)
            if n else np.zeros((0, 8, 3))
        )
        bboxes = clipped_boxes_2d(corners_cam, K, width, height, min_depth)
        centers_2d = _project(centers_cam, K)
        keep = (
            (centers_cam[:, 2] > min_depth)
            & (bboxes[:, 2] > bboxes[:, 0])
            & (bboxes[:, 3] > bboxes[:, 1])
        )
        index = np.nonzero(keep)[0]
        return CameraBoxes(
            centers=centers_cam[index],
            sizes=self.sizes[index],
            yaws=yaws_cam[index],
            velocities=vel_cam[index][:, [0, 2]],
            labels=self.labels[index],
            attributes=self.attributes[index],
            bboxes_2d=bboxes[index],
            centers_2d=centers_2d[index],
            box_index=index,
        )


@dataclass
class CameraBoxes:
    """Boxes in one camera's frame (OpenCV: x right, y down, z forward), mmdet3d style.

    .. code-block:: none

                z front (yaw = -pi/2)
               /
              /
             0 ------> x right (yaw = 0)
             |
             v
             y down

    ``yaw`` rotates about +y (down): the box's length axis points along
    ``(cos(yaw), 0, -sin(yaw))``. ``box_index`` says which of the sample's
    :class:`LidarBoxes` each one is.
    """

    centers: np.ndarray  # [N, 3] gravity centre in the camera frame, metres
    sizes: np.ndarray  # [N, 3] (w, l, h), metres
    yaws: np.ndarray  # [N] radians about the camera's +y axis
    velocities: np.ndarray  # [N, 2] (vx, vz) m/s in the camera frame
    labels: np.ndarray  # [N] int64 index into DETECTION_CLASSES
    attributes: np.ndarray  # [N] int64 index into ATTRIBUTES
    bboxes_2d: np.ndarray  # [N, 4] (x1, y1, x2, y2) pixels, clipped to the image
    centers_2d: np.ndarray  # [N, 2] projection of the 3D centre, pixels (may lie outside)
    box_index: np.ndarray  # [N] int64 index into the sample's LidarBoxes

    def __len__(self) -> int:
        return int(self.yaws.shape[0])

    @property
    def depths(self) -> np.ndarray:
        """``[N]`` depth (camera z) of the centres, metres."""
        return self.centers[:, 2]


@dataclass
class GlobalBoxes:
    """Boxes in the nuScenes global frame (map frame: x east, y north, z up), as in the
    ``sample_annotation`` table and the results file: ``rotation`` is ``wxyz`` and
    ``velocity`` is ``(vx, vy)`` in m/s."""

    translations: np.ndarray  # [N, 3] gravity centre, metres
    sizes: np.ndarray  # [N, 3] (w, l, h), metres
    rotations: np.ndarray  # [N, 4] wxyz
    velocities: np.ndarray  # [N, 2] m/s
    labels: np.ndarray  # [N] int64 index into DETECTION_CLASSES
    attributes: np.ndarray  # [N] int64 index into ATTRIBUTES
    scores: np.ndarray | None = None  # [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to_lidar(
        self,
        T_lidar_global: np.ndarray,
        num_lidar_pts: np.ndarray | None = None,
        num_radar_pts: np.ndarray | None = None,
        tokens: list[str] | None = None,
    ) -> LidarBoxes:
        """The same boxes in a LiDAR frame (``T_lidar_global``: ``[4, 4]`` global-to-LiDAR)."""
        n = len(self)
        if n == 0:
            boxes = LidarBoxes.empty(with_scores=self.scores is not None)
            return replace(
                boxes,
                num_lidar_pts=None if num_lidar_pts is None else np.zeros(0, np.int64),
                num_radar_pts=None if num_radar_pts is None else np.zeros(0, np.int64),
            )
        R_lidar_box = np.einsum(
            "ij,njk->nik", T_lidar_global[:3, :3], frames.quat_to_matrix(self.rotations)
        )
        vel_global = np.concatenate([self.velocities, np.zeros((n, 1))], axis=1)
        return LidarBoxes(
            centers=frames.transform_points(T_lidar_global, self.translations),
            sizes=self.sizes.copy(),
            yaws=frames.yaw_of_matrix(R_lidar_box),
            velocities=frames.rotate_vectors(T_lidar_global, vel_global)[:, :2],
            labels=self.labels.copy(),
            attributes=self.attributes.copy(),
            scores=None if self.scores is None else self.scores.copy(),
            num_lidar_pts=num_lidar_pts,
            num_radar_pts=num_radar_pts,
            tokens=list(tokens) if tokens else [],
        )

    def to_results(self, sample_token: str) -> list[dict]:
        """Entries of the nuScenes results file for one sample (plain Python floats)."""
        scores = np.ones(len(self)) if self.scores is None else self.scores
        out = []
        for i in range(len(self)):
            out.append(
                {
                    "sample_token": sample_token,
                    "translation": [float(v) for v in self.translations[i]],
                    "size": [float(v) for v in self.sizes[i]],
                    "rotation": [float(v) for v in self.rotations[i]],
                    "velocity": [float(v) for v in self.velocities[i]],
                    "detection_name": DETECTION_CLASSES[self.labels[i]],
                    "detection_score": float(scores[i]),
                    "attribute_name": ATTRIBUTES[self.attributes[i]],
                }
            )
        return out

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> GlobalBoxes:
        """Boxes from results entries (``detection_name``/``attribute_name``/
        ``detection_score``) — the inverse of :meth:`to_results`."""
        records = list(records)
        return cls(
            translations=np.array([r["translation"] for r in records], np.float64).reshape(-1, 3),
            sizes=np.array([r["size"] for r in records], np.float64).reshape(-1, 3),
            rotations=np.array([r["rotation"] for r in records], np.float64).reshape(-1, 4),
            velocities=np.array([r["velocity"] for r in records], np.float64).reshape(-1, 2),
            labels=np.array(
                [DETECTION_CLASSES.index(r["detection_name"]) for r in records], np.int64
            ),
            attributes=np.array(
                [ATTRIBUTES.index(r.get("attribute_name", "")) for r in records], np.int64
            ),
            scores=np.array([r["detection_score"] for r in records], np.float64),
        )


def _project(pts_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """``[N, 3]`` camera-frame points -> ``[N, 2]`` pixels (no depth check)."""
    uvw = pts_cam @ K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return uvw[:, :2] / uvw[:, 2:3]


def clipped_boxes_2d(
    corners_cam: np.ndarray, K: np.ndarray, width: int, height: int, min_depth: float
) -> np.ndarray:
    """2D boxes of the parts of 3D boxes in front of the plane ``z = min_depth``.

    Every edge is clipped against that plane before projecting, so boxes that straddle
    the camera get the right extent (projecting corners behind the camera would flip).

    Args:
        corners_cam: ``[N, 8, 3]``.

    Returns:
        ``[N, 4]`` (x1, y1, x2, y2) clipped to the image; empty boxes have x2 <= x1.
    """
    n = corners_cam.shape[0]
    if n == 0:
        return np.zeros((0, 4))
    a = corners_cam[:, _EDGES[:, 0]]  # [N, 12, 3]
    b = corners_cam[:, _EDGES[:, 1]]
    za, zb = a[..., 2:3], b[..., 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (min_depth - za) / (zb - za)
    crossing = np.clip(np.nan_to_num(s), 0.0, 1.0)
    a_clipped = np.where(za < min_depth, a + crossing * (b - a), a)
    b_clipped = np.where(zb < min_depth, a + crossing * (b - a), b)
    segment_valid = ~((za < min_depth) & (zb < min_depth))[..., 0]  # [N, 12]
    pts = np.concatenate([a_clipped, b_clipped], axis=1)  # [N, 24, 3]
    valid = np.concatenate([segment_valid, segment_valid], axis=1)
    z = np.maximum(pts[..., 2], min_depth)
    uv = np.einsum("ij,nkj->nki", K[:2], pts) / z[..., None]
    big = np.inf
    x1 = np.where(valid, uv[..., 0], big).min(1)
    y1 = np.where(valid, uv[..., 1], big).min(1)
    x2 = np.where(valid, uv[..., 0], -big).max(1)
    y2 = np.where(valid, uv[..., 1], -big).max(1)
    out = np.stack(
        [np.clip(x1, 0, width), np.clip(y1, 0, height), np.clip(x2, 0, width),
         np.clip(y2, 0, height)],
        axis=1,
    )
    out[~valid.any(1)] = 0.0
    return out
