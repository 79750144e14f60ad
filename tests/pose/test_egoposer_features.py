"""Global motion decomposition: invariance, round trips, masking."""

from __future__ import annotations

import math

import numpy as np
import torch

from geometry.so3 import axis_angle_to_matrix, random_rotation
from pose.body.egoposer.config import ModelConfig
from pose.body.egoposer.data import window_indices
from pose.body.egoposer.features import (
    NUM_FEATURES,
    canonical_frame,
    decode_outputs,
    encode_targets,
    heading_rotation,
    restore_global,
    window_features,
)
from pose.body.egoposer.model import build_model
from pose.body.egoposer.synth import synthesize_sequence
from pose.body.egoposer.tracking import tracker_trajectories

F64 = torch.float64


def _rz(angle: float) -> torch.Tensor:
    return axis_angle_to_matrix(torch.tensor([0.0, 0.0, angle], dtype=F64))


def _windows(seed: int = 0, n_windows: int = 6):
    """Tracker windows of a synthetic sequence: ``[B, K, 2, ...]`` as the model reads them."""
    seq = synthesize_sequence(np.random.default_rng(seed))
    g, j = seq.fk()
    rot, pos = tracker_trajectories(g.double(), j.double())
    t = torch.linspace(5, seq.num_frames - 1, n_windows).long()
    idx = window_indices(t, torch.zeros_like(t), ModelConfig().frame_offsets())
    vis = torch.rand(seq.num_frames, 2, generator=torch.Generator().manual_seed(seed)) > 0.4
    return rot[idx], pos[idx], vis[idx], seq, idx


def test_heading_of_level_and_pitched_heads() -> None:
    """The heading of a head facing world -y is -y, also when looking straight down/up."""
    base = axis_angle_to_matrix(torch.tensor([math.pi / 2, 0.0, 0.0], dtype=F64))
    for pitch_deg in (0.0, 45.0, 89.0, 90.0, -90.0, -60.0):
        # Pitch about the head's own x axis (nodding).
        R = base @ axis_angle_to_matrix(torch.tensor([math.radians(pitch_deg), 0, 0],
                                                     dtype=F64))
        H = heading_rotation(R)
        np.testing.assert_allclose(H[:, 0].numpy(), [0.0, -1.0, 0.0], atol=1e-12)
        np.testing.assert_allclose(H[:, 2].numpy(), [0.0, 0.0, 1.0], atol=0)
    yaw = 0.7
    np.testing.assert_allclose(heading_rotation(_rz(yaw) @ base).numpy(),
                               (_rz(yaw) @ heading_rotation(base)).numpy(), atol=1e-12)


def test_features_and_prediction_invariant_to_horizontal_motion_and_yaw() -> None:
    """Rotating the whole recording about the vertical axis and shifting it horizontally
    leaves the features and the network's local outputs unchanged (float64: to 1e-10), and
    the restored world pose moves with the recording."""
    rot, pos, vis, _, _ = _windows()
    b = rot.shape[0]
    scale = torch.full((b,), 1.07, dtype=F64)
    feats, R_wc, origin = window_features(rot, pos, vis, scale, 30.0)
    R_g, t_g = _rz(2.1), torch.tensor([3.5, -7.25, 0.0], dtype=F64)
    feats2, R_wc2, origin2 = window_features(R_g @ rot, pos @ R_g.T + t_g, vis, scale, 30.0)
    assert not torch.allclose(pos @ R_g.T + t_g, pos)
    np.testing.assert_allclose(feats2.numpy(), feats.numpy(), atol=1e-10)

    torch.manual_seed(0)
    model = build_model(ModelConfig()).double().eval()
    for p in model.parameters():  # make the outputs depend strongly on the inputs
        p.data.normal_(0, 0.2)
    with torch.no_grad():
        out, out2 = model(feats), model(feats2)
    np.testing.assert_allclose(out2.numpy(), out.numpy(), atol=1e-10)
    rots_c, root_c = decode_outputs(out[:, -1])
    rots, root = restore_global(rots_c, root_c, R_wc, origin, scale)
    rots2, root2 = restore_global(rots_c, root_c, R_wc2, origin2, scale)
    np.testing.assert_allclose(rots2[:, 1:].numpy(), rots[:, 1:].numpy(), atol=1e-12)
    np.testing.assert_allclose(rots2[:, 0].numpy(), (R_g @ rots[:, 0]).numpy(), atol=1e-10)
    np.testing.assert_allclose(root2.numpy(), (root @ R_g.T + t_g).numpy(), atol=1e-10)


def test_vertical_shift_is_not_removed() -> None:
    """Height above the floor carries information (sitting vs standing): it must stay."""
    rot, pos, vis, _, _ = _windows()
    scale = torch.ones(rot.shape[0], dtype=F64)
    feats, _, _ = window_features(rot, pos, vis, scale, 30.0)
    feats2, _, _ = window_features(rot, pos + torch.tensor([0, 0, 0.3], dtype=F64), vis,
                                   scale, 30.0)
    head_z = 12 + 2  # head block: rot6d(6), drot6d(6), pos(3) -> z at 14
    np.testing.assert_allclose((feats2 - feats)[..., head_z].numpy(), 0.3, atol=1e-12)


def test_scale_normalisation() -> None:
    """A uniformly 1.2x larger world with scale 1.2 gives the same features except the
    scale input itself."""
    rot, pos, vis, _, _ = _windows(1)
    b = rot.shape[0]
    f1, _, _ = window_features(rot, pos, vis, torch.ones(b, dtype=F64), 30.0)
    f2, _, _ = window_features(rot, pos * 1.2, vis, torch.full((b,), 1.2, dtype=F64), 30.0)
    np.testing.assert_allclose(f2[..., :-1].numpy(), f1[..., :-1].numpy(), atol=1e-12)
    np.testing.assert_allclose(f2[..., -1].numpy(), 1.2)


def test_feature_layout_and_masking() -> None:
    rot, pos, vis, _, _ = _windows(2)
    b, k = vis.shape[:2]
    vis = vis.clone()
    vis[:, -1, 1, 0] = False  # left hand unseen at the current frame
    vis[:, -1, 0, 1] = False  # right hand unseen at the previous frame only
    vis[:, -1, 1, 1] = True
    scale = torch.ones(b, dtype=F64)
    feats, R_wc, origin = window_features(rot, pos, vis, scale, 30.0)
    assert feats.shape == (b, k, NUM_FEATURES)
    last = feats[:, -1]
    assert (last[:, 18:36] == 0).all()  # left hand: everything zero
    assert (last[:, 54] == 0).all() and (last[:, 55] == 1).all()  # visibility flags
    right = last[:, 36:54]
    assert (right[:, 6:12] == 0).all() and (right[:, 15:18] == 0).all()  # no velocities

    def to_c(p: torch.Tensor) -> torch.Tensor:  # [B, 3] world -> canonical
        return torch.einsum("bi,bij->bj", p - origin, R_wc)

    # The right hand's position in the canonical frame, by hand.
    np.testing.assert_allclose(right[:, 12:15].numpy(), to_c(pos[:, -1, 1, 2]).numpy(),
                               atol=1e-12)
    # The head's current position in C is (0, 0, height).
    np.testing.assert_allclose(last[:, 12:14].numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(last[:, 14].numpy(), pos[:, -1, 1, 0, 2].numpy(), atol=1e-12)
    # Head velocity = finite difference of canonical positions times fps.
    vel = (to_c(pos[:, -1, 1, 0]) - to_c(pos[:, -1, 0, 0])) * 30
    np.testing.assert_allclose(last[:, 15:18].numpy(), vel.numpy(), atol=1e-10)
    # The slow stream's oldest frame is 76 frames back (and its predecessor 77); the
    # first window (t = 5) is clamped at the sequence start.
    seq_idx = _windows(2)[4]
    assert (seq_idx[1:, -1, 1] - seq_idx[1:, 0, 1] == 76).all()
    assert (seq_idx[1:, 0, 1] - seq_idx[1:, 0, 0] == 1).all()
    assert seq_idx[0, -1, 1] == 5 and (seq_idx[0, :-6] == 0).all()


def test_targets_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    b = 4
    local = random_rotation((b, 2, 22), generator=gen, dtype=F64)
    root = torch.randn(b, 2, 3, generator=gen, dtype=F64)
    head_rot = random_rotation((b,), generator=gen, dtype=F64)
    R_wc, origin = canonical_frame(head_rot, torch.randn(b, 3, generator=gen, dtype=F64))
    scale = torch.tensor([0.9, 1.0, 1.1, 1.2], dtype=F64)
    rots_c, root_c = encode_targets(local, root, R_wc, origin, scale)
    back_rots, back_root = restore_global(rots_c, root_c, R_wc, origin, scale)
    np.testing.assert_allclose(back_rots.numpy(), local.numpy(), atol=1e-12)
    np.testing.assert_allclose(back_root.numpy(), root.numpy(), atol=1e-12)
    assert (origin[:, 2] == 0).all()
