"""What a headset reports: head and wrist 6-DoF trajectories, and when the hands are seen.

The three trackers are the SMPL-H head joint (15) and the wrists (20, 21); their poses are
the joints' global rotations (joint frame: x to the subject's left, y up, z forward) and
positions, in the AMASS world (z up).

Hands are observed only inside a frustum attached to the head (the headset's hand-tracking
cameras), plus random tracking dropouts. The camera frame follows the OpenCV convention
and is the head frame turned to look ``pitch_down_deg`` below the head's forward axis::

    head joint frame            camera frame (OpenCV)
        y up                        z forward (pitched down)
        |                          /
        |___ x (left)             /___ x (right)
       /                          |
      z forward                   y down

A hand is visible when its wrist is in front of the camera (depth > ``min_depth_m``),
within ``max_range_m`` and inside the horizontal and vertical fields of view.

A tracking file (``.npz``) has ``head``, ``left_wrist``, ``right_wrist`` ``[T, 4, 4]``
(``T_world_joint``), ``left_visible``, ``right_visible`` ``[T]`` bool (optional; default
all visible), ``fps`` and optionally ``height_m`` (stature). A hand's pose is ignored where
it is not visible, and may be NaN there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geometry.errors import UserError
from geometry.se3 import make_T
from geometry.so3 import axis_angle_to_matrix
from pose.body.egoposer.amass import check_fps, open_npz, read_npz_array
from pose.body.egoposer.config import FovConfig, VisibilityMode
from pose.body.egoposer.skeleton import TRACKED_JOINTS


def R_head_cam(pitch_down_deg: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """Rotation from the OpenCV camera frame to the head joint frame. ``[3, 3]``."""
    flip = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
    pitch = axis_angle_to_matrix(torch.tensor([-math.radians(pitch_down_deg), 0.0, 0.0],
                                              dtype=torch.float64))
    return (flip @ pitch).to(dtype)


def tracker_trajectories(global_rots: Tensor, joints: Tensor) -> tuple[Tensor, Tensor]:
    """Head and wrist poses from forward kinematics.

    Args:
        global_rots: ``[..., 22, 3, 3]`` world rotations of the joints.
        joints: ``[..., 22, 3]`` world joint positions.

    Returns:
        ``(trk_rot [..., 3, 3, 3], trk_pos [..., 3, 3])`` for (head, left wrist, right wrist).
    """
    idx = list(TRACKED_JOINTS)
    return global_rots[..., idx, :, :], joints[..., idx, :]


def fov_visibility(head_rot: Tensor, head_pos: Tensor, hand_pos: Tensor,
                   cfg: FovConfig) -> Tensor:
    """Whether each hand lies inside the head-attached frustum.

    Args:
        head_rot: ``[..., 3, 3]`` ``R_world_head``.
        head_pos: ``[..., 3]`` head joint position (world).
        hand_pos: ``[..., 2, 3]`` wrist positions (world).

    Returns:
        ``[..., 2]`` bool.
    """
    R_world_cam = head_rot @ R_head_cam(cfg.pitch_down_deg, head_rot.dtype)
    # p_cam = R_world_cam^T (p_world - head_pos), in row-vector form.
    pts_cam = (hand_pos - head_pos[..., None, :]) @ R_world_cam
    x, y, z = pts_cam.unbind(-1)
    z_safe = z.clamp(min=1e-9)
    inside = ((z > cfg.min_depth_m)
              & ((x / z_safe).abs() <= math.tan(math.radians(cfg.h_fov_deg) / 2))
              & ((y / z_safe).abs() <= math.tan(math.radians(cfg.v_fov_deg) / 2))
              & (pts_cam.norm(dim=-1) <= cfg.max_range_m))
    return inside


def _alternating(rng: np.random.Generator, n: int, fps: float, on_s: tuple[float, float],
                 off_s: tuple[float, float], start_on: bool) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    i, on = 0, start_on
    while i < n:
        lo, hi = on_s if on else off_s
        m = max(1, int(round(rng.uniform(lo, hi) * fps)))
        out[i: i + m] = on
        i, on = i + m, not on
    return out


def random_dropouts(rng: np.random.Generator, num_frames: int, fps: float,
                    cfg: FovConfig) -> np.ndarray:
    """Keep-masks with random tracking dropouts (Poisson onsets, uniform durations).

    Returns:
        ``[T, 2]`` bool, False during a dropout.
    """
    keep = np.ones((num_frames, 2), dtype=bool)
    for h in range(2):
        onsets = np.flatnonzero(rng.uniform(size=num_frames) < cfg.dropout_per_s / fps)
        for t0 in onsets:
            keep[t0: t0 + int(round(rng.uniform(*cfg.dropout_s) * fps)), h] = False
    return keep


def simulate_visibility(rng: np.random.Generator, head_rot: Tensor, head_pos: Tensor,
                        hand_pos: Tensor, fps: float, mode: VisibilityMode,
                        cfg: FovConfig) -> Tensor:
    """Per-frame hand visibility of one sequence under a :data:`VisibilityMode`.

    Args:
        head_rot: ``[T, 3, 3]``; head_pos: ``[T, 3]``; hand_pos: ``[T, 2, 3]`` (world).

    Returns:
        ``[T, 2]`` bool (left, right).
    """
    n = head_pos.shape[0]
    if mode == "all":
        return torch.ones(n, 2, dtype=torch.bool)
    if mode == "none":
        return torch.zeros(n, 2, dtype=torch.bool)
    if mode == "half":
        cols = [_alternating(rng, n, fps, (0.5, 2.0), (0.5, 2.0), bool(rng.integers(2)))
                for _ in range(2)]
        return torch.from_numpy(np.stack(cols, -1))
    if mode == "fov":
        vis = fov_visibility(head_rot, head_pos, hand_pos, cfg)
        return vis & torch.from_numpy(random_dropouts(rng, n, fps, cfg))
    raise ValueError(f"unknown visibility mode {mode}")


# ----------------------------------------------------------------------------- files


@dataclass
class Tracking:
    """Headset observations of one recording."""

    fps: float
    trk_rot: Tensor  # [T, 3, 3, 3] head, left wrist, right wrist rotations (world)
    trk_pos: Tensor  # [T, 3, 3] positions (world, metres)
    visible: Tensor  # [T, 2] bool, left and right hand
    height_m: float | None = None

    @property
    def num_frames(self) -> int:
        return int(self.trk_pos.shape[0])


_KEYS = ("head", "left_wrist", "right_wrist")


def save_tracking(path: str | Path, tracking: Tracking) -> None:
    """Write a tracking file atomically; hand poses are NaN where the hand is not visible."""
    from geometry.io.atomic import atomic_path

    T = make_T(tracking.trk_rot.double(), tracking.trk_pos.double()).numpy().copy()
    vis = tracking.visible.numpy().astype(bool)
    for h in range(2):
        T[~vis[:, h], h + 1] = np.nan
    arrays = {k: T[:, i] for i, k in enumerate(_KEYS)}
    arrays.update(left_visible=vis[:, 0], right_visible=vis[:, 1],
                  fps=np.array(float(tracking.fps)))
    if tracking.height_m is not None:
        arrays["height_m"] = np.array(float(tracking.height_m))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_tracking(path: str | Path) -> Tracking:
    """Read and check a tracking file (see the module docstring).

    Raises:
        UserError: unreadable file, missing keys, wrong shapes, non-finite head poses,
            non-rigid transforms.
    """
    path = Path(path)
    data = open_npz(path, "a tracking file", "give an .npz with head, left_wrist, right_wrist "
                    "and fps.")
    with data:
        missing = [k for k in (*_KEYS, "fps") if k not in data]
        if missing:
            raise UserError(f"tracking file {path} lacks {', '.join(missing)}; give head, "
                            "left_wrist, right_wrist ([T, 4, 4]) and fps.")
        mats = [read_npz_array(data, k, path) for k in _KEYS]
        for k, m in zip(_KEYS, mats, strict=True):
            if not np.issubdtype(m.dtype, np.number):
                raise UserError(f"tracking file {path}: '{k}' is not numeric; give [T, 4, 4] "
                                "float poses.")
        mats = [m.astype(np.float64) for m in mats]
        n = mats[0].shape[0] if mats[0].ndim == 3 else -1
        for k, m in zip(_KEYS, mats, strict=True):
            if m.ndim != 3 or m.shape[1:] != (4, 4) or m.shape[0] != n or n < 1:
                raise UserError(f"tracking file {path}: '{k}' has shape {m.shape}, expected "
                                "(T, 4, 4) with the same T for all trackers.")
        fps_arr = read_npz_array(data, "fps", path)
        numeric = fps_arr.size == 1 and np.issubdtype(fps_arr.dtype, np.number)
        fps = float(fps_arr.reshape(-1)[0]) if numeric else float("nan")
        if not (math.isfinite(fps) and fps > 0):
            raise UserError(f"tracking file {path}: 'fps' must be one positive number.")
        check_fps(fps, f"tracking file {path}: 'fps'")
        visible = np.ones((n, 2), dtype=bool)
        for h, k in enumerate(("left_visible", "right_visible")):
            if k in data:
                v = read_npz_array(data, k, path).reshape(-1)
                if v.shape != (n,):
                    raise UserError(f"tracking file {path}: '{k}' has {v.size} entries, "
                                    f"expected {n}.")
                visible[:, h] = v.astype(bool)
        height = None
        if "height_m" in data:
            h = read_npz_array(data, "height_m", path).reshape(-1)
            if h.size != 1 or not np.issubdtype(h.dtype, np.number):
                raise UserError(f"tracking file {path}: 'height_m' must be one number.")
            height = float(h[0])
    if not np.isfinite(mats[0]).all():
        raise UserError(f"tracking file {path}: the head pose has NaN or infinite values; "
                        "the head must be tracked in every frame.")
    for h in range(2):
        visible[:, h] &= np.isfinite(mats[h + 1]).all(axis=(1, 2))
    stack = np.stack(mats, 1)  # [T, 3, 4, 4]
    stack = np.where(np.isfinite(stack), stack, 0.0)
    stack[~visible[:, 0], 1] = np.eye(4)
    stack[~visible[:, 1], 2] = np.eye(4)
    R = stack[..., :3, :3]
    err = np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(3)).max()
    if err > 1e-3 or not np.allclose(stack[..., 3, :], [0, 0, 0, 1], atol=1e-6):
        raise UserError(f"tracking file {path}: the poses are not rigid transforms "
                        f"(rotation error {err:.2g}); give orthonormal rotations.")
    return Tracking(fps=fps, trk_rot=torch.from_numpy(R).float(),
                    trk_pos=torch.from_numpy(stack[..., :3, 3]).float(),
                    visible=torch.from_numpy(visible), height_m=height)
