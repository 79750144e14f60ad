"""Forward kinematics against hand-computed joint positions, and the SMPL-H joint path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geometry.se3 import make_T
from geometry.so3 import axis_angle_to_matrix, random_rotation
from pose.body.egoposer.skeleton import (
    DEFAULT_OFFSETS,
    DEFAULT_STATURE_M,
    NUM_JOINTS,
    PARENTS,
    body_scale,
    default_rest_joints,
    forward_kinematics,
    scale_from_height,
    scaled_default_skeleton,
    smplh_rest_joints,
)

F64 = torch.float64


def _rot(axis: int, deg: float) -> torch.Tensor:
    aa = torch.zeros(3, dtype=F64)
    aa[axis] = math.radians(deg)
    return axis_angle_to_matrix(aa)


def test_fk_rest_pose_is_rest_joints_shifted() -> None:
    rest = default_rest_joints(F64)
    rots = torch.eye(3, dtype=F64).repeat(NUM_JOINTS, 1, 1)
    root = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    _, joints = forward_kinematics(rots, root, rest)
    np.testing.assert_allclose(joints.numpy(), (rest - rest[0] + root).numpy(), atol=1e-15)


def test_fk_shoulder_raised_matches_hand_computation() -> None:
    """Identity pose except the left shoulder turned 90 degrees about z (arm points up).

    Left shoulder = pelvis + spine1 + spine2 + spine3 + collar + shoulder offsets
    = (0.194, 0.462, -0.020); R_z(90) maps (x, y, z) to (-y, x, z), so the elbow adds
    (0.013, 0.254, -0.026) and the wrist (-0.008, 0.265, -0.006).
    """
    rest = default_rest_joints(F64)
    rots = torch.eye(3, dtype=F64).repeat(NUM_JOINTS, 1, 1)
    rots[16] = _rot(2, 90.0)
    root = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    global_rots, joints = forward_kinematics(rots, root, rest)
    np.testing.assert_allclose(joints[16].numpy(), [1.194, 2.462, 2.980], atol=1e-12)
    np.testing.assert_allclose(joints[18].numpy(), [1.207, 2.716, 2.954], atol=1e-12)
    np.testing.assert_allclose(joints[20].numpy(), [1.199, 2.981, 2.948], atol=1e-12)
    np.testing.assert_allclose(global_rots[20].numpy(), _rot(2, 90.0).numpy(), atol=1e-15)
    # The right arm is untouched: right wrist = root + (-0.713, 0.457, -0.052).
    np.testing.assert_allclose(joints[21].numpy(), [1.0 - 0.713, 2.457, 2.948], atol=1e-12)


def test_fk_root_rotation_model_to_world() -> None:
    """+90 degrees about x takes model y (up) to world z: the head rises 0.601 m and its
    0.023 m forward offset (model z) becomes -y."""
    rest = default_rest_joints(F64)
    rots = torch.eye(3, dtype=F64).repeat(NUM_JOINTS, 1, 1)
    rots[0] = _rot(0, 90.0)
    _, joints = forward_kinematics(rots, torch.zeros(3, dtype=F64), rest)
    np.testing.assert_allclose(joints[15].numpy(), [0.0, -0.023, 0.601], atol=1e-12)


def test_fk_matches_homogeneous_chain_product() -> None:
    """Oracle: the product of 4x4 joint transforms along the chain (geometry.se3)."""
    gen = torch.Generator().manual_seed(0)
    rest = default_rest_joints(F64)
    rots = random_rotation((5, NUM_JOINTS), generator=gen, dtype=F64)
    root = torch.randn(5, 3, generator=gen, dtype=F64)
    global_rots, joints = forward_kinematics(rots, root, rest)
    offsets = [rest[0]] + [rest[j] - rest[PARENTS[j]] for j in range(1, NUM_JOINTS)]
    for b in range(5):
        T = [make_T(rots[b, 0], root[b])]
        for j in range(1, NUM_JOINTS):
            T.append(T[PARENTS[j]] @ make_T(rots[b, j], offsets[j]))
        np.testing.assert_allclose(joints[b].numpy(), torch.stack([t[:3, 3] for t in T]).numpy(),
                                   atol=1e-12)
        np.testing.assert_allclose(global_rots[b].numpy(),
                                   torch.stack([t[:3, :3] for t in T]).numpy(), atol=1e-12)


def test_default_proportions_and_scale() -> None:
    rest = default_rest_joints(F64)
    # Hand-summed: head joint y = -0.223 + 0.112 + 0.135 + 0.053 + 0.213 + 0.088 = 0.378,
    # ankle y = -0.223 - 0.091 - 0.385 - 0.400 = -1.099; stature adds 0.075 + 0.150.
    assert rest[15, 1].item() == pytest.approx(0.378, abs=1e-12)
    assert rest[7, 1].item() == pytest.approx(-1.099, abs=1e-12)
    assert DEFAULT_STATURE_M == pytest.approx(0.378 + 1.099 + 0.225, abs=1e-12)
    assert float(body_scale(rest)) == pytest.approx(1.0, abs=1e-12)
    assert float(body_scale(scaled_default_skeleton(1.1, F64))) == pytest.approx(1.1, abs=1e-12)
    assert scale_from_height(DEFAULT_STATURE_M * 0.9) == pytest.approx(0.9)
    # Left and right are mirror images.
    off = np.array(DEFAULT_OFFSETS)
    for left, right in ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19),
                        (20, 21)):
        np.testing.assert_allclose(off[left] * [-1, 1, 1], off[right])


def test_smplh_rest_joints_from_model_file(tmp_path) -> None:
    """J = J_regressor @ (v_template + shapedirs @ betas), computed here with numpy."""
    rng = np.random.default_rng(0)
    v = 40
    v_template = rng.normal(size=(v, 3))
    shapedirs = rng.normal(size=(v, 3, 10)) * 0.01
    j_reg = rng.uniform(size=(52, v))
    j_reg /= j_reg.sum(1, keepdims=True)
    np.savez(tmp_path / "model.npz", v_template=v_template, shapedirs=shapedirs,
             J_regressor=j_reg, kintree_table=np.zeros((2, 52), dtype=np.int64))
    betas = rng.normal(size=16)  # longer than the model's 10: truncated
    joints = smplh_rest_joints(tmp_path / "model.npz", betas, dtype=F64)
    expected = j_reg[:22] @ (v_template + shapedirs @ betas[:10])
    np.testing.assert_allclose(joints.numpy(), expected, atol=1e-12)
