"""Camera paths for offline renders: ``auto``, ``orbit``, ``arc``, ``spiral``, ``interpolate``.

A :class:`Trajectory` holds F poses ``T_world_cam`` (OpenCV: x right, y down, z forward)
and resolution-free intrinsics, so one path renders at any output size:

- ``orbit``: a full circle around the scene's up axis through its centre, at the cameras'
  mean distance and height, starting at the first camera's side, always looking at the
  centre. Without cameras, at the distance that frames the scene, 25 degrees up.
- ``spiral``: the LLFF/NeRF forward-facing spiral (``render_path_spiral``): two turns of
  an ellipse in the plane of the average camera, radii from the cameras' spread, every
  frame looking at the focus point in front of the average camera.
- ``interpolate``: through the input cameras in order, Catmull-Rom for the centres and
  slerp for the rotations, with every input pose hit EXACTLY at its keyframe.
- ``arc``: the orbit's circle, but only over the cameras' azimuth range around the centre
  (plus a margin), swinging there and back so that the video loops.
- ``auto`` (:func:`choose_trajectory`): what the cameras saw. A full orbit shows mostly
  empty space behind a capture that only saw one side, so: orbit without cameras or when
  they spread over at least :data:`ORBIT_MIN_SPREAD_DEG` around the centre; the spiral
  for a forward-facing capture (optical axes within :data:`FORWARD_MAX_AXIS_DEG` of their
  mean); else the arc.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from geometry.errors import UserError
from geometry.se3 import look_at
from viewer.framing import SceneSphere, framing_distance

TrajectoryKind = Literal["auto", "orbit", "arc", "spiral", "interpolate"]
DEFAULT_FOV_Y = math.radians(50.0)
#: Cameras spread this far around the centre (azimuth, degrees) get the full orbit.
ORBIT_MIN_SPREAD_DEG = 120.0
#: Optical axes all within this of their mean (degrees): a forward-facing capture.
FORWARD_MAX_AXIS_DEG = 20.0
#: The arc goes this share of the cameras' spread beyond it on each side (at least 5 deg).
ARC_MARGIN = 0.15


@dataclass
class Trajectory:
    """F camera poses and their intrinsics in image-size-free units.

    Attributes:
        T_world_cam: ``[F, 4, 4]`` camera-to-world, OpenCV axes, float64.
        focal: ``[F, 2]`` ``(fx, fy)`` divided by the image HEIGHT (so the vertical field
            of view is kept whatever the output aspect).
        principal: ``[F, 2]`` ``(cx / W, cy / H)``.
        keyframes: frame index of each input camera for ``interpolate`` (else empty).
    """

    T_world_cam: np.ndarray
    focal: np.ndarray
    principal: np.ndarray
    keyframes: np.ndarray

    def __len__(self) -> int:
        return int(self.T_world_cam.shape[0])

    def Ks(self, width: int, height: int) -> np.ndarray:
        """Intrinsics ``[F, 3, 3]`` for output images of ``width x height`` pixels."""
        K = np.zeros((len(self), 3, 3))
        K[:, 0, 0] = self.focal[:, 0] * height
        K[:, 1, 1] = self.focal[:, 1] * height
        K[:, 0, 2] = self.principal[:, 0] * width
        K[:, 1, 2] = self.principal[:, 1] * height
        K[:, 2, 2] = 1.0
        return K


def normalized_intrinsics(K: np.ndarray, width: np.ndarray,
                          height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(focal [C, 2], principal [C, 2])`` of ``K [C, 3, 3]`` for images ``W x H [C]``."""
    K = np.asarray(K, dtype=np.float64).reshape(-1, 3, 3)
    width = np.asarray(width, dtype=np.float64).reshape(-1)
    height = np.asarray(height, dtype=np.float64).reshape(-1)
    focal = np.stack([K[:, 0, 0] / height, K[:, 1, 1] / height], axis=1)
    principal = np.stack([K[:, 0, 2] / width, K[:, 1, 2] / height], axis=1)
    return focal, principal


def _default_intrinsics(frames: int, K: np.ndarray | None, width: np.ndarray | None,
                        height: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The cameras' mean intrinsics (centred principal point), or a 50 degree view."""
    if K is not None and len(K):
        focal, _ = normalized_intrinsics(K, width, height)
        f = focal.mean(axis=0)
    else:
        fy = 0.5 / math.tan(DEFAULT_FOV_Y / 2.0)
        f = np.array([fy, fy])
    return np.tile(f, (frames, 1)), np.full((frames, 2), 0.5)


def _check_frames(frames: int, minimum: int = 1) -> None:
    if frames < minimum:
        raise UserError(f"--frames {frames} is too few; give at least {minimum}.")


def orbit(sphere: SceneSphere, up: np.ndarray, frames: int,
          T_world_cam: np.ndarray | None = None, K: np.ndarray | None = None,
          width: np.ndarray | None = None, height: np.ndarray | None = None,
          elevation_deg: float = 25.0) -> Trajectory:
    """A full circle around the axis ``up`` through ``sphere.centre`` (see module doc).

    Args:
        sphere: the scene (see :func:`viewer.framing.scene_sphere`).
        up: ``[3]`` world up.
        frames: F; frame ``i`` is at azimuth ``2 pi i / F`` from the start (the last frame
            does not repeat the first, so the video loops).
        T_world_cam, K, width, height: the input cameras ``[C, 4, 4]``, ``[C, 3, 3]``,
            ``[C]``, ``[C]`` or ``None``.
        elevation_deg: height of the circle without cameras.
    """
    _check_frames(frames)
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    centre = sphere.centre
    if T_world_cam is not None and len(T_world_cam):
        offsets = np.asarray(T_world_cam, dtype=np.float64)[:, :3, 3] - centre
        heights = offsets @ up
        horizontal = offsets - heights[:, None] * up
        radius = float(np.linalg.norm(horizontal, axis=1).mean())
        height_up = float(heights.mean())
        start = horizontal[0]
        if radius < 1e-9 * sphere.radius or np.linalg.norm(start) < 1e-12:
            # cameras on the axis: fall back to the framing circle
            radius = framing_distance(sphere.radius, DEFAULT_FOV_Y) * math.cos(
                math.radians(elevation_deg))
            start = np.cross(up, np.eye(3)[int(np.argmin(np.abs(up)))])
    else:
        distance = framing_distance(sphere.radius, DEFAULT_FOV_Y)
        radius = distance * math.cos(math.radians(elevation_deg))
        height_up = distance * math.sin(math.radians(elevation_deg))
        start = np.cross(up, np.eye(3)[int(np.argmin(np.abs(up)))])
    e1 = start / np.linalg.norm(start)
    e2 = np.cross(up, e1)
    poses = []
    for i in range(frames):
        angle = 2.0 * math.pi * i / frames
        eye = centre + height_up * up + radius * (math.cos(angle) * e1 + math.sin(angle) * e2)
        poses.append(look_at(eye, centre, up))
    focal, principal = _default_intrinsics(frames, K, width, height)
    return Trajectory(np.stack(poses), focal, principal, np.zeros(0, dtype=np.int64))


def _ring(sphere: SceneSphere, up: np.ndarray, T_world_cam: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """``(up, e1, azimuths [C] radians in (-pi, pi], radius, height)`` of camera centres
    around the axis ``up`` through the sphere centre, azimuth 0 at the first camera."""
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    offsets = np.asarray(T_world_cam, dtype=np.float64)[:, :3, 3] - sphere.centre
    heights = offsets @ up
    horizontal = offsets - heights[:, None] * up
    e1 = horizontal[0]
    if np.linalg.norm(e1) < 1e-12:
        e1 = np.cross(up, np.eye(3)[int(np.argmin(np.abs(up)))])
    e1 = e1 / np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    azimuths = np.arctan2(horizontal @ e2, horizontal @ e1)
    radius = float(np.linalg.norm(horizontal, axis=1).mean())
    return up, e1, azimuths, radius, float(heights.mean())


def azimuth_spread(sphere: SceneSphere, up: np.ndarray, T_world_cam: np.ndarray
                   ) -> tuple[float, float]:
    """``(start, width)`` in radians: the smallest azimuth interval around ``up`` through
    the centre holding every camera centre (``width`` = 2 pi minus the largest gap),
    azimuths measured from the first camera as in :func:`_ring`."""
    _, _, azimuths, _, _ = _ring(sphere, up, T_world_cam)
    if len(azimuths) < 2:
        return float(azimuths[0]) if len(azimuths) else 0.0, 0.0
    ordered = np.sort(azimuths)
    gaps = np.diff(np.concatenate([ordered, ordered[:1] + 2.0 * math.pi]))
    widest = int(np.argmax(gaps))
    start = float(ordered[(widest + 1) % len(ordered)])
    return start, float(2.0 * math.pi - gaps[widest])


def axis_spread_deg(T_world_cam: np.ndarray) -> float:
    """Largest angle (degrees) between a camera's optical axis and the mean axis."""
    axes = np.asarray(T_world_cam, dtype=np.float64)[:, :3, 2]
    mean = axes.sum(axis=0)
    if np.linalg.norm(mean) < 1e-12:
        return 180.0
    mean = mean / np.linalg.norm(mean)
    return float(np.degrees(np.arccos(np.clip(axes @ mean, -1.0, 1.0))).max())


def arc(sphere: SceneSphere, up: np.ndarray, frames: int, T_world_cam: np.ndarray,
        K: np.ndarray | None = None, width: np.ndarray | None = None,
        height: np.ndarray | None = None, margin: float = ARC_MARGIN) -> Trajectory:
    """The orbit's circle over the cameras' azimuth range only (see module doc).

    Frame ``i`` is at azimuth ``mid + half sin(2 pi i / F)``, where the range ``mid +- half``
    is the cameras' (:func:`azimuth_spread`) widened by ``margin`` of it on each side (at
    least 5 degrees): smooth at the ends, and the last frame leads back to the first.
    """
    _check_frames(frames)
    if T_world_cam is None or len(T_world_cam) == 0:
        raise UserError("the arc trajectory needs cameras; use --trajectory orbit for a "
                        "bare PLY.")
    up, e1, _, radius, height_up = _ring(sphere, up, T_world_cam)
    if radius < 1e-9 * sphere.radius:
        return orbit(sphere, up, frames, T_world_cam, K, width, height)
    e2 = np.cross(up, e1)
    start, spread = azimuth_spread(sphere, up, T_world_cam)
    half = 0.5 * spread + max(margin * spread, math.radians(5.0))
    mid = start + 0.5 * spread
    poses = []
    for i in range(frames):
        angle = mid + half * math.sin(2.0 * math.pi * i / frames)
        eye = sphere.centre + height_up * up + radius * (math.cos(angle) * e1
                                                         + math.sin(angle) * e2)
        poses.append(look_at(eye, sphere.centre, up))
    focal, principal = _default_intrinsics(frames, K, width, height)
    return Trajectory(np.stack(poses), focal, principal, np.zeros(0, dtype=np.int64))


def choose_trajectory(sphere: SceneSphere, up: np.ndarray,
                      T_world_cam: np.ndarray | None) -> TrajectoryKind:
    """``auto``'s choice for these cameras: orbit, spiral or arc (see module doc)."""
    if T_world_cam is None or len(T_world_cam) < 2:
        return "orbit"
    _, spread = azimuth_spread(sphere, up, T_world_cam)
    if math.degrees(spread) >= ORBIT_MIN_SPREAD_DEG:
        return "orbit"
    if axis_spread_deg(T_world_cam) <= FORWARD_MAX_AXIS_DEG:
        return "spiral"
    return "arc"


def _average_pose(T_world_cam: np.ndarray) -> np.ndarray:
    """Mean centre and mean orientation (re-orthonormalised: z, then y, as LLFF's
    ``poses_avg``) of ``[C, 4, 4]`` poses."""
    centre = T_world_cam[:, :3, 3].mean(axis=0)
    z = T_world_cam[:, :3, 2].sum(axis=0)
    y_hint = T_world_cam[:, :3, 1].sum(axis=0)
    T = look_at(centre, centre + z, -y_hint)
    return T


def spiral(sphere: SceneSphere, frames: int, T_world_cam: np.ndarray, K: np.ndarray,
           width: np.ndarray, height: np.ndarray, rotations: float = 2.0,
           radius_percentile: float = 90.0, z_rate: float = 0.5) -> Trajectory:
    """The LLFF/NeRF forward-facing spiral around the average camera (see module doc).

    The focus point is the scene centre's depth in the average camera (at least the
    sphere radius, so it is in front). Radii are the ``radius_percentile`` of the
    cameras' absolute offsets from their mean along the average camera's axes (a tenth
    of the focus depth for one camera).
    """
    _check_frames(frames)
    if T_world_cam is None or len(T_world_cam) == 0:
        raise UserError("the spiral trajectory needs cameras; use --trajectory orbit for a "
                        "bare PLY.")
    T_world_cam = np.asarray(T_world_cam, dtype=np.float64)
    T_avg = _average_pose(T_world_cam)
    R_avg, c_avg = T_avg[:3, :3], T_avg[:3, 3]
    focus_depth = max(float((sphere.centre - c_avg) @ R_avg[:, 2]), 0.5 * sphere.radius)
    offsets_cam = (T_world_cam[:, :3, 3] - c_avg) @ R_avg  # [C, 3] in the average camera
    radii = np.percentile(np.abs(offsets_cam), radius_percentile, axis=0)
    if len(T_world_cam) == 1 or not np.any(radii[:2] > 0):
        radii = np.array([0.1, 0.1, 0.05]) * focus_depth
    focus = c_avg + focus_depth * R_avg[:, 2]
    up = -R_avg[:, 1]
    poses = []
    for i in range(frames):
        theta = 2.0 * math.pi * rotations * i / frames
        offset = np.array([math.cos(theta), -math.sin(theta), -math.sin(theta * z_rate)])
        eye = c_avg + R_avg @ (offset * radii)
        poses.append(look_at(eye, focus, up))
    focal, principal = _default_intrinsics(frames, K, width, height)
    return Trajectory(np.stack(poses), focal, principal, np.zeros(0, dtype=np.int64))


def _catmull_rom(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray,
                 t: float) -> np.ndarray:
    """Uniform Catmull-Rom between ``p1`` (t=0) and ``p2`` (t=1)."""
    t2, t3 = t * t, t * t * t
    return 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)


def keyframe_indices(num_cameras: int, frames: int) -> np.ndarray:
    """Frame index of each of ``num_cameras`` keyframes spread over ``frames`` frames."""
    if num_cameras == 1:
        return np.zeros(1, dtype=np.int64)
    return np.round(np.arange(num_cameras) * (frames - 1) / (num_cameras - 1)).astype(np.int64)


def interpolate(frames: int, T_world_cam: np.ndarray, K: np.ndarray, width: np.ndarray,
                height: np.ndarray) -> Trajectory:
    """A path through the cameras in their order (see module doc).

    Keyframe ``i`` is frame ``round(i (F - 1) / (C - 1))``: the first and last frames are
    the first and last cameras, and every camera's pose and intrinsics are reproduced
    exactly at its keyframe.
    """
    import torch

    from geometry.so3 import matrix_to_quat, quat_slerp, quat_to_matrix

    if T_world_cam is None or len(T_world_cam) < 2:
        raise UserError("the interpolate trajectory needs at least two cameras; use "
                        "--trajectory orbit.")
    T_world_cam = np.asarray(T_world_cam, dtype=np.float64)
    n = len(T_world_cam)
    _check_frames(frames, n)
    quats = matrix_to_quat(torch.from_numpy(T_world_cam[:, :3, :3])).numpy()
    for i in range(1, n):  # the shorter way round between neighbours
        if quats[i] @ quats[i - 1] < 0:
            quats[i] = -quats[i]
    centres = T_world_cam[:, :3, 3]
    padded = np.concatenate([2 * centres[:1] - centres[1:2], centres,
                             2 * centres[-1:] - centres[-2:-1]])
    focal_keys, principal_keys = normalized_intrinsics(K, width, height)
    keys = keyframe_indices(n, frames)
    poses = np.zeros((frames, 4, 4))
    focal = np.zeros((frames, 2))
    principal = np.zeros((frames, 2))
    for seg in range(n - 1):
        a, b = int(keys[seg]), int(keys[seg + 1])
        last = seg == n - 2
        for f in range(a, b + 1 if last else b):
            t = 0.0 if b == a else (f - a) / (b - a)
            if t == 0.0:
                R, c, fo, pr = T_world_cam[seg, :3, :3], centres[seg], focal_keys[seg], \
                    principal_keys[seg]
            elif t == 1.0:
                R, c, fo, pr = T_world_cam[seg + 1, :3, :3], centres[seg + 1], \
                    focal_keys[seg + 1], principal_keys[seg + 1]
            else:
                q = quat_slerp(torch.from_numpy(quats[seg]), torch.from_numpy(quats[seg + 1]),
                               torch.tensor(t, dtype=torch.float64))
                R = quat_to_matrix(q).numpy()
                c = _catmull_rom(*padded[seg:seg + 4], t)
                fo = (1 - t) * focal_keys[seg] + t * focal_keys[seg + 1]
                pr = (1 - t) * principal_keys[seg] + t * principal_keys[seg + 1]
            poses[f, :3, :3], poses[f, :3, 3], poses[f, 3, 3] = R, c, 1.0
            focal[f], principal[f] = fo, pr
    return Trajectory(poses, focal, principal, keys)


def make_trajectory(kind: TrajectoryKind, frames: int, sphere: SceneSphere, up: np.ndarray,
                    T_world_cam: np.ndarray | None, K: np.ndarray | None,
                    width: np.ndarray | None, height: np.ndarray | None) -> Trajectory:
    """Dispatch on ``kind`` (cameras as ``[C, 4, 4]``, ``[C, 3, 3]``, ``[C]``, ``[C]``);
    ``auto`` picks one with :func:`choose_trajectory`."""
    if kind == "auto":
        kind = choose_trajectory(sphere, up, T_world_cam)
    if kind == "arc":
        return arc(sphere, up, frames, T_world_cam, K, width, height)
    if kind == "orbit":
        return orbit(sphere, up, frames, T_world_cam, K, width, height)
    if kind == "spiral":
        return spiral(sphere, frames, T_world_cam, K, width, height)
    if kind == "interpolate":
        return interpolate(frames, T_world_cam, K, width, height)
    raise UserError(f"unknown trajectory {kind!r}; use auto, orbit, arc, spiral or "
                    "interpolate.")
