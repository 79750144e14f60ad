"""The SMPL-H body kinematic tree (22 joints), the default skeleton and forward kinematics.

Joint frames follow SMPL's model frame (x to the subject's left, y up, z forward; in the
rest pose every joint frame is aligned with it). A pose is a set of *local* rotations
``R_local[j]`` (joint ``j`` relative to its parent; for the pelvis, relative to the world)
and the pelvis position in the world. Forward kinematics::

    R_global[0] = R_local[0]                       p[0] = root_pos
    R_global[j] = R_global[parent] @ R_local[j]    p[j] = p[parent] + R_global[parent] @ offset[j]

with ``offset[j] = rest[j] - rest[parent]``. This is exactly how SMPL poses its joints (the
pose blend shapes move vertices, never joints), so with the rest joints of a shaped SMPL-H
model (:func:`smplh_rest_joints`) the joints are SMPL-H's exactly. AMASS's ``trans`` is
SMPL's translation, so the pelvis sits at ``trans + rest[0]``.

The default skeleton (:data:`DEFAULT_OFFSETS`) has average adult proportions close to the
SMPL-H neutral mean shape; segment lengths (metres): pelvis-hip 0.11, thigh 0.387,
shank 0.400, ankle-to-toe joint 0.135, pelvis-to-neck 0.513, neck-head 0.101, collar-to-
shoulder 0.129, upper arm 0.256, forearm 0.265; the head joint stands 1.55 m above the
floor and the stature is :data:`DEFAULT_STATURE_M` = 1.70 m. Other body sizes are the
default scaled by ``body_scale`` (the ratio of standing head heights,
:func:`body_scale`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geometry.errors import UserError
from geometry.shapes import broadcast_shapes
from geometry.so3 import axis_angle_to_matrix

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)  # fmt: skip
NUM_JOINTS = 22
PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19,
)  # fmt: skip
PELVIS, HEAD, LEFT_WRIST, RIGHT_WRIST = 0, 15, 20, 21
TRACKED_JOINTS: tuple[int, int, int] = (HEAD, LEFT_WRIST, RIGHT_WRIST)
FOOT_JOINTS: tuple[int, ...] = (7, 8, 10, 11)  # ankles and toe-base joints

# Rest joint positions in the model frame (metres). Row 0 is the pelvis itself (SMPL's
# mean pelvis location relative to the model origin, so AMASS ``trans`` lines up); the
# other rows are offsets from the parent. Left/right are mirror images in x.
DEFAULT_OFFSETS: tuple[tuple[float, float, float], ...] = (
    (0.000, -0.223, 0.028),   # pelvis (absolute)
    (0.070, -0.091, -0.004),  # left_hip
    (-0.070, -0.091, -0.004),  # right_hip
    (0.000, 0.112, -0.002),   # spine1
    (0.035, -0.385, -0.008),  # left_knee
    (-0.035, -0.385, -0.008),  # right_knee
    (0.000, 0.135, 0.000),    # spine2
    (-0.015, -0.400, -0.035),  # left_ankle
    (0.015, -0.400, -0.035),  # right_ankle
    (0.000, 0.053, 0.025),    # spine3
    (0.030, -0.055, 0.120),   # left_foot
    (-0.030, -0.055, 0.120),  # right_foot
    (0.000, 0.213, -0.050),   # neck
    (0.072, 0.120, -0.035),   # left_collar
    (-0.072, 0.120, -0.035),  # right_collar
    (0.000, 0.088, 0.050),    # head
    (0.122, 0.042, -0.008),   # left_shoulder
    (-0.122, 0.042, -0.008),  # right_shoulder
    (0.254, -0.013, -0.026),  # left_elbow
    (-0.254, -0.013, -0.026),  # right_elbow
    (0.265, 0.008, -0.006),   # left_wrist
    (-0.265, 0.008, -0.006),  # right_wrist
)
# Heights above the floor when standing upright: the ankle joint sits this high (scaled
# with the body), the crown this far above the head joint.
ANKLE_HEIGHT_M = 0.075
HEAD_TOP_M = 0.150


def default_rest_joints(dtype: torch.dtype = torch.float32) -> Tensor:
    """Rest joint positions of the default skeleton in the model frame.

    Returns:
        ``[22, 3]`` metres.
    """
    offsets = torch.tensor(DEFAULT_OFFSETS, dtype=torch.float64)
    rest = torch.zeros(NUM_JOINTS, 3, dtype=torch.float64)
    rest[0] = offsets[0]
    for j in range(1, NUM_JOINTS):
        rest[j] = rest[PARENTS[j]] + offsets[j]
    return rest.to(dtype)


def rest_offsets(rest_joints: Tensor) -> Tensor:
    """Bone offsets ``rest[j] - rest[parent(j)]``; row 0 stays the pelvis rest position.

    Args:
        rest_joints: ``[..., 22, 3]``.

    Returns:
        ``[..., 22, 3]``.
    """
    parents = torch.tensor((0, *PARENTS[1:]), device=rest_joints.device)
    offsets = rest_joints - rest_joints[..., parents, :]
    offsets[..., 0, :] = rest_joints[..., 0, :]
    return offsets


def standing_head_height(rest_joints: Tensor) -> Tensor:
    """Height of the head joint above the lowest foot joint in the rest pose (metres).

    Args:
        rest_joints: ``[..., 22, 3]`` model frame (y up).

    Returns:
        ``[...]``.
    """
    feet_y = rest_joints[..., FOOT_JOINTS, 1].amin(-1)
    return rest_joints[..., HEAD, 1] - feet_y


def body_scale(rest_joints: Tensor) -> Tensor:
    """Body scale: standing head height relative to the default skeleton's.

    Args:
        rest_joints: ``[..., 22, 3]``.

    Returns:
        ``[...]`` (1.0 for the default skeleton).
    """
    ref = standing_head_height(default_rest_joints(torch.float64))
    return standing_head_height(rest_joints) / ref.to(rest_joints)


def _default_stature() -> float:
    rest = default_rest_joints(torch.float64)
    ankle_y = rest[list(FOOT_JOINTS[:2]), 1].amin()
    return float(rest[HEAD, 1] - ankle_y + ANKLE_HEIGHT_M + HEAD_TOP_M)


DEFAULT_STATURE_M: float = _default_stature()


def scale_from_height(height_m: float) -> float:
    """Body scale of a person of stature ``height_m`` (metres), for the scaled default."""
    if not (0.8 <= height_m <= 2.5):
        raise UserError(f"height {height_m} m is outside 0.8-2.5 m; give the stature in metres.")
    return height_m / DEFAULT_STATURE_M


def scaled_default_skeleton(scale: Tensor | float, dtype: torch.dtype = torch.float32) -> Tensor:
    """The default skeleton uniformly scaled (about the model origin).

    Args:
        scale: ``[...]`` body scale(s) (a tensor's device is kept).

    Returns:
        ``[..., 22, 3]`` rest joints, on ``scale``'s device.
    """
    scale = torch.as_tensor(scale, dtype=dtype)
    return default_rest_joints(dtype).to(scale.device) * scale[..., None, None]


def forward_kinematics(local_rots: Tensor, root_pos: Tensor, rest_joints: Tensor) -> tuple[
        Tensor, Tensor]:
    """Global joint rotations and positions from local rotations.

    Args:
        local_rots: ``[..., 22, 3, 3]`` local rotations (index 0: pelvis-to-world).
        root_pos: ``[..., 3]`` pelvis position in the world (metres).
        rest_joints: ``[..., 22, 3]`` rest joints in the model frame (broadcasts).

    Returns:
        ``(global_rots [..., 22, 3, 3], joints [..., 22, 3])``, world frame.
    """
    offsets = rest_offsets(rest_joints)
    batch = broadcast_shapes(local_rots.shape[:-3], root_pos.shape[:-1],
                                   offsets.shape[:-2])
    local_rots = local_rots.expand(*batch, NUM_JOINTS, 3, 3)
    offsets = offsets.expand(*batch, NUM_JOINTS, 3)
    rots: list[Tensor] = [local_rots[..., 0, :, :]]
    pos: list[Tensor] = [root_pos.expand(*batch, 3)]
    for j in range(1, NUM_JOINTS):
        p = PARENTS[j]
        rots.append(rots[p] @ local_rots[..., j, :, :])
        pos.append(pos[p] + (rots[p] @ offsets[..., j, :, None])[..., 0])
    return torch.stack(rots, -3), torch.stack(pos, -2)


def root_from_trans(trans: Tensor, rest_joints: Tensor) -> Tensor:
    """Pelvis world position from AMASS/SMPL ``trans``: ``trans + rest[0]``.

    Args:
        trans: ``[..., 3]``.
        rest_joints: ``[..., 22, 3]``.

    Returns:
        ``[..., 3]``.
    """
    return trans + rest_joints[..., 0, :]


def standing_local_rots(dtype: torch.dtype = torch.float32) -> Tensor:
    """A relaxed standing pose: upright, arms hanging 75 degrees down, elbows bent 15 degrees.

    The pelvis rotation is the model-to-world rotation (+90 degrees about x, taking the
    model's y (up) to world z; the body faces world -y).

    Returns:
        ``[22, 3, 3]`` local rotations.
    """
    aa = torch.zeros(NUM_JOINTS, 3, dtype=torch.float64)
    aa[0] = torch.tensor([np.pi / 2, 0.0, 0.0])
    arm_down, elbow = np.deg2rad(75.0), np.deg2rad(15.0)
    aa[16] = torch.tensor([0.0, 0.0, -arm_down])
    aa[17] = torch.tensor([0.0, 0.0, arm_down])
    aa[18] = torch.tensor([0.0, -elbow, 0.0])
    aa[19] = torch.tensor([0.0, elbow, 0.0])
    return axis_angle_to_matrix(aa).to(dtype)


# ----------------------------------------------------------------------------- SMPL-H files


@functools.lru_cache(maxsize=8)
def _load_smplh_arrays(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("v_template", "shapedirs", "J_regressor") if k not in data]
            if missing:
                raise UserError(f"SMPL-H model file {path} lacks {', '.join(missing)}; "
                                "give the AMASS-distributed SMPL-H model.npz files.")
            v_template = np.asarray(data["v_template"], dtype=np.float64)
            shapedirs = np.asarray(data["shapedirs"], dtype=np.float64)
            j_regressor = np.asarray(data["J_regressor"], dtype=np.float64)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read SMPL-H model file {path} ({err}); give an .npz model "
                        "file (pickled .pkl models are not loaded).") from None
    v = v_template.shape[0]
    if (v_template.shape != (v, 3) or shapedirs.ndim != 3 or shapedirs.shape[:2] != (v, 3)
            or j_regressor.ndim != 2 or j_regressor.shape[1] != v
            or j_regressor.shape[0] < NUM_JOINTS):
        raise UserError(f"SMPL-H model file {path} has inconsistent array shapes; give an "
                        "unmodified SMPL-H model.npz.")
    return v_template, shapedirs, j_regressor


def find_smplh_model(model_dir: Path, gender: str) -> Path:
    """The SMPL-H model file for ``gender`` in ``model_dir``.

    Accepts AMASS's layout (``<dir>/<gender>/model.npz``) and flat names
    (``<dir>/SMPLH_<GENDER>.npz``); unknown genders use the neutral model.
    """
    gender = gender if gender in ("male", "female", "neutral") else "neutral"
    candidates = [model_dir / gender / "model.npz", model_dir / f"SMPLH_{gender.upper()}.npz",
                  model_dir / f"smplh_{gender}.npz"]
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(f"no SMPL-H model for gender '{gender}' in {model_dir}; expected "
                    f"{candidates[0]} or {candidates[1]}.")


def smplh_rest_joints(model_path: Path, betas: np.ndarray,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Rest joints of a shaped SMPL-H model: ``J_regressor @ (v_template + shapedirs @ betas)``.

    Args:
        model_path: an SMPL-H ``model.npz`` (arrays ``v_template [V,3]``,
            ``shapedirs [V,3,B]``, ``J_regressor [52,V]``).
        betas: ``[B']`` shape coefficients (truncated or zero-padded to the model's ``B``).

    Returns:
        ``[22, 3]`` body joints in the model frame.
    """
    v_template, shapedirs, j_regressor = _load_smplh_arrays(str(model_path))
    n_betas = shapedirs.shape[2]
    b = np.zeros(n_betas)
    b[: min(n_betas, len(betas))] = np.asarray(betas, dtype=np.float64)[:n_betas]
    v_shaped = v_template + shapedirs @ b
    joints = j_regressor[:NUM_JOINTS] @ v_shaped
    return torch.from_numpy(joints).to(dtype)
