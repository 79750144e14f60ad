"""The motion synthesiser: reproducible, feet on the floor, joint conventions by hand."""

from __future__ import annotations

import math

import numpy as np
import torch

from pose.body.egoposer.config import SynthConfig
from pose.body.egoposer.skeleton import default_rest_joints, forward_kinematics
from pose.body.egoposer.synth import (
    _REST,
    CHANNELS,
    channels_to_local_rots,
    synthesize_dataset,
    synthesize_sequence,
)

F64 = torch.float64


def _channels(n: int = 1, **values: float) -> dict[str, np.ndarray]:
    return {c: np.full(n, values.get(c, _REST.get(c, 0.0))) for c in CHANNELS}


def test_reproducible_and_seed_dependent() -> None:
    a = synthesize_dataset(2, seed=7, cfg=SynthConfig(seconds=3.0))
    b = synthesize_dataset(2, seed=7, cfg=SynthConfig(seconds=3.0))
    c = synthesize_dataset(2, seed=8, cfg=SynthConfig(seconds=3.0))
    assert torch.equal(a[1].local_rots, b[1].local_rots)
    assert torch.equal(a[1].root_pos, b[1].root_pos)
    assert not torch.allclose(a[1].root_pos, c[1].root_pos)
    assert a[0].num_frames == 90


def test_feet_on_the_floor_and_subject_sizes() -> None:
    """In every frame the lowest foot joint touches its clearance (ankle 7.5 cm, toe
    2 cm, times the body scale) and none is below it."""
    for seed in range(3):
        seq = synthesize_sequence(np.random.default_rng(seed), SynthConfig(seconds=10.0))
        _, joints = forward_kinematics(seq.local_rots.double(), seq.root_pos.double(),
                                       seq.rest_joints.double())
        clearance = torch.tensor([0.075, 0.075, 0.02, 0.02], dtype=F64) * seq.scale
        gap = joints[:, [7, 8, 10, 11], 2] - clearance
        np.testing.assert_allclose(gap.amin(-1).numpy(), 0.0, atol=1e-5)
        assert 0.85 * 0.95 <= seq.scale <= 1.15 * 1.05


def test_heading_convention() -> None:
    """Yaw psi turns the body's forward axis (model z) to (sin psi, -cos psi, 0)."""
    R = channels_to_local_rots(_channels(), np.array([0.3]))
    np.testing.assert_allclose(R[0, 0, :, 2].numpy(), [math.sin(0.3), -math.cos(0.3), 0],
                               atol=1e-12)
    np.testing.assert_allclose(R[0, 0, :, 1].numpy(), [0, 0, 1.0], atol=1e-12)


def test_sitting_thighs_horizontal_and_forward() -> None:
    """Hips flexed 90 degrees: R_x(-90) maps the thigh offset (x, y, z) to (x, z, -y), so
    the knee is 0.385 m ahead of the hip and 0.008 m lower; with the knee also flexed 90
    degrees the shank keeps its rest direction (the ankle 0.400 m below the knee)."""
    rest = default_rest_joints(F64)
    ch = _channels(hip_flex_l=math.pi / 2, knee_l=math.pi / 2)
    R = channels_to_local_rots(ch, np.array([0.0]))
    _, j = forward_kinematics(R, torch.zeros(1, 3, dtype=F64), rest)
    forward = torch.tensor([0.0, -1.0, 0.0], dtype=F64)
    hip_to_knee = j[0, 4] - j[0, 1]
    np.testing.assert_allclose(hip_to_knee @ forward, 0.385, atol=1e-12)
    np.testing.assert_allclose(hip_to_knee[2], -0.008, atol=1e-12)
    # Shank: hip and knee flexions cancel, so it keeps its rest direction (0.4 m down).
    knee_to_ankle = j[0, 7] - j[0, 4]
    np.testing.assert_allclose(knee_to_ankle[2], -0.400, atol=1e-12)
    # The foot stays flat: the toe joint is as high above the ankle as in the rest pose.
    np.testing.assert_allclose((j[0, 10] - j[0, 7])[2], rest[10, 1] - rest[7, 1], atol=1e-12)
