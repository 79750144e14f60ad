"""NumPy front end to ``geometry.so3`` / ``geometry.se3`` for the nuScenes data layer.

The data layer works in float64 NumPy (the devkit, the JSON tables and the point files are
NumPy); the math itself is the shared torch implementation, called here in float64 so
nothing is lost on the round trip. Transforms are named ``T_a_b`` (points in ``b`` to
``a``); quaternions are ``wxyz`` like the nuScenes tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from geometry import se3, so3


def _t(array: np.ndarray | Sequence[float]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


def quat_to_matrix(q_wxyz: np.ndarray | Sequence[float]) -> np.ndarray:
    """Rotation matrices of ``wxyz`` quaternions: ``[..., 4] -> [..., 3, 3]``."""
    return so3.quat_to_matrix(_t(q_wxyz)).numpy()


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """``wxyz`` unit quaternions (``w >= 0``) of rotation matrices: ``[..., 3, 3] -> [..., 4]``."""
    return so3.matrix_to_quat(_t(R)).numpy()


def yaw_to_quat(yaw: np.ndarray | float) -> np.ndarray:
    """Quaternions of rotations by ``yaw`` radians about +z: ``[...] -> [..., 4]`` wxyz."""
    yaw = np.asarray(yaw, dtype=np.float64)
    axis_angle = np.stack([np.zeros_like(yaw), np.zeros_like(yaw), yaw], axis=-1)
    return so3.axis_angle_to_quat(_t(axis_angle)).numpy()


def yaw_of_matrix(R: np.ndarray) -> np.ndarray:
    """Heading of the rotated +x axis in the xy plane: ``[..., 3, 3] -> [...]`` radians.

    This is the devkit's ``Quaternion.yaw_pitch_roll[0]`` for boxes that stand upright.
    """
    R = np.asarray(R, dtype=np.float64)
    return np.arctan2(R[..., 1, 0], R[..., 0, 0])


def make_T(R: np.ndarray, t: np.ndarray | Sequence[float]) -> np.ndarray:
    """``[..., 3, 3]`` rotation and ``[..., 3]`` translation -> ``[..., 4, 4]`` transform."""
    return se3.make_T(_t(R), _t(t)).numpy()


def pose_to_T(rotation_wxyz: Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """A nuScenes ``rotation``/``translation`` record as a ``[4, 4]`` transform.

    For a calibrated_sensor record this is ``T_ego_sensor``; for an ego_pose record
    ``T_global_ego``.
    """
    return make_T(quat_to_matrix(rotation_wxyz), translation)


def invert_T(T_a_b: np.ndarray) -> np.ndarray:
    """``[..., 4, 4]`` rigid ``T_a_b`` -> ``T_b_a``."""
    return se3.invert_T(_t(T_a_b)).numpy()


def compose(*transforms: np.ndarray) -> np.ndarray:
    """``compose(T_a_b, T_b_c, T_c_d) -> T_a_d`` (any number of ``[..., 4, 4]`` transforms)."""
    out = _t(transforms[0])
    for T in transforms[1:]:
        out = se3.compose(out, _t(T))
    return out.numpy()


def transform_points(T_a_b: np.ndarray, pts_b: np.ndarray) -> np.ndarray:
    """``[4, 4]`` transform applied to ``[N, 3]`` points in frame ``b`` -> ``[N, 3]`` in ``a``."""
    return se3.transform_points(_t(T_a_b), _t(pts_b)).numpy()


def rotate_vectors(T_a_b: np.ndarray, vec_b: np.ndarray) -> np.ndarray:
    """Rotation part of ``T_a_b`` applied to ``[N, 3]`` directions/velocities -> ``[N, 3]``."""
    return se3.transform_directions(_t(T_a_b), _t(vec_b)).numpy()
