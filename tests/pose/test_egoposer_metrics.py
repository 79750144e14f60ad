"""Metrics against hand-computed values; the stand-still baseline's head alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geometry.so3 import axis_angle_to_matrix, random_rotation
from pose.body.egoposer.infer import stand_still_baseline
from pose.body.egoposer.metrics import frame_errors, summarize
from pose.body.egoposer.skeleton import HEAD, forward_kinematics, scaled_default_skeleton
from pose.body.egoposer.synth import synthesize_sequence
from pose.body.egoposer.tracking import tracker_trajectories

F64 = torch.float64


def _gt(n: int = 8):
    gen = torch.Generator().manual_seed(0)
    rots = random_rotation((n, 22), generator=gen, dtype=F64)
    joints = torch.randn(n, 22, 3, generator=gen, dtype=F64)
    return rots, joints


def test_constant_offset_and_rotation_error() -> None:
    """Every joint 3 cm off along x and one joint rotated 10 degrees more: MPJPE = H-PE = 3,
    MPJVE = 0 (the offset does not move), MPJRE = 10 / 22 degrees."""
    rots, joints = _gt()
    pred_rots = rots.clone()
    pred_rots[:, 5] = rots[:, 5] @ axis_angle_to_matrix(
        torch.tensor([math.radians(10), 0, 0], dtype=F64))
    pred_joints = joints + torch.tensor([0.03, 0, 0], dtype=F64)
    e = frame_errors(pred_rots, pred_joints, rots, joints, fps=30.0)
    np.testing.assert_allclose(e["mpjpe_cm"].numpy(), 3.0, atol=1e-12)
    np.testing.assert_allclose(e["hand_pe_cm"].numpy(), 3.0, atol=1e-12)
    np.testing.assert_allclose(e["mpjre_deg"].numpy(), 10.0 / 22, atol=1e-9)
    assert math.isnan(e["mpjve_cm_s"][0]) and math.isnan(e["jitter_m_s3"][2])
    np.testing.assert_allclose(e["mpjve_cm_s"][1:].numpy(), 0.0, atol=1e-9)


def test_velocity_error_and_jitter_of_analytic_motion() -> None:
    """Prediction drifts at 0.5 m/s along z while the truth stands still:
    MPJVE = 50 cm/s, MPJPE grows by 0.5/30 m per frame. A cubic trajectory
    p(t) = c t^3 has constant jerk 6c, which third differences reproduce exactly."""
    n, fps = 10, 30.0
    rots, joints = _gt(n)
    joints = joints[:1].expand(n, -1, -1).clone()
    t = torch.arange(n, dtype=F64) / fps
    drift = joints + (0.5 * t)[:, None, None] * torch.tensor([0, 0, 1.0], dtype=F64)
    e = frame_errors(rots, drift, rots, joints, fps)
    np.testing.assert_allclose(e["mpjve_cm_s"][1:].numpy(), 50.0, atol=1e-9)
    np.testing.assert_allclose(e["mpjpe_cm"].numpy(), (50 * t).numpy(), atol=1e-9)
    np.testing.assert_allclose(e["jitter_m_s3"][3:].numpy(), 0.0, atol=1e-6)
    c = 2.0
    cubic = joints + (c * t**3)[:, None, None] * torch.tensor([1.0, 0, 0], dtype=F64)
    e = frame_errors(rots, cubic, rots, joints, fps)
    np.testing.assert_allclose(e["jitter_m_s3"][3:].numpy(), 6 * c, rtol=1e-6)
    np.testing.assert_allclose(e["gt_jitter_m_s3"][3:].numpy(), 0.0, atol=1e-6)


def test_summary_groups_by_hand_visibility() -> None:
    rots, joints = _gt(4)
    pred = joints.clone()
    pred[2:] += torch.tensor([0.1, 0, 0], dtype=F64)  # 10 cm error on frames 2 and 3
    e = frame_errors(rots, pred, rots, joints, 30.0)
    visible = torch.tensor([[True, True], [True, True], [True, False], [False, False]])
    s = summarize([e, e], [visible, visible])
    assert s["all"]["frames"] == 8 and s["hands_visible"]["frames"] == 4
    assert s["all"]["mpjpe_cm"] == pytest.approx(5.0)
    assert s["hands_visible"]["mpjpe_cm"] == pytest.approx(0.0, abs=1e-12)
    assert s["hands_hidden"]["mpjpe_cm"] == pytest.approx(10.0)
    none = summarize([e], [torch.zeros(4, 2, dtype=torch.bool)])
    assert none["hands_visible"]["frames"] == 0 and math.isnan(none["hands_visible"]["mpjpe_cm"])


def test_stand_still_baseline_puts_the_head_on_the_tracked_head() -> None:
    seq = synthesize_sequence(np.random.default_rng(4))
    g, j = seq.fk()
    rot, pos = tracker_trajectories(g, j)
    local, root = stand_still_baseline(rot, pos, torch.ones(seq.num_frames, 2, dtype=torch.bool),
                                       seq.scale)
    gr, joints = forward_kinematics(local, root, scaled_default_skeleton(seq.scale))
    np.testing.assert_allclose(joints[:, HEAD].numpy(), pos[:, 0].numpy(), atol=1e-5)
    # Upright: the pelvis's up axis (model y) is world z; it faces the head's heading.
    np.testing.assert_allclose(gr[:, 0, :, 1].numpy(), np.tile([0, 0, 1.0], (len(root), 1)),
                               atol=1e-6)
