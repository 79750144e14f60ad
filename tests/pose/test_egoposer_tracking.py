"""Field-of-view geometry, visibility modes and tracking files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.errors import UserError
from geometry.so3 import axis_angle_to_matrix
from pose.body.egoposer.config import FovConfig
from pose.body.egoposer.synth import synthesize_sequence
from pose.body.egoposer.tracking import (
    Tracking,
    fov_visibility,
    load_tracking,
    save_tracking,
    simulate_visibility,
    tracker_trajectories,
)

F64 = torch.float64
# A head facing world -y, upright (the model-to-world rotation, +90 degrees about x).
R_HEAD = axis_angle_to_matrix(torch.tensor([math.pi / 2, 0.0, 0.0], dtype=F64))
HEAD = torch.tensor([0.0, 0.0, 1.6], dtype=F64)


def _hand_at(distance: float, elevation_deg: float, azimuth_deg: float) -> torch.Tensor:
    """A point at ``distance`` from the head, ``elevation`` above the horizontal and
    ``azimuth`` to the subject's left of straight ahead (-y)."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    forward = torch.tensor([0.0, -1.0, 0.0], dtype=F64)
    left = torch.tensor([1.0, 0.0, 0.0], dtype=F64)  # model x (left) stays world x
    d = math.cos(el) * (math.cos(az) * forward + math.sin(az) * left)
    d = d + math.sin(el) * torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    return HEAD + distance * d


def _visible(*points: torch.Tensor, cfg: FovConfig | None = None) -> list[bool]:
    cfg = cfg or FovConfig(h_fov_deg=120, v_fov_deg=90, pitch_down_deg=15, max_range_m=1.2)
    out = []
    for p in points:
        hands = torch.stack([p, p])
        out.append(bool(fov_visibility(R_HEAD, HEAD, hands, cfg)[0]))
    return out


def test_hand_in_front_visible_behind_not() -> None:
    assert _visible(_hand_at(0.5, -20, 0), _hand_at(0.5, -20, 180)) == [True, False]


def test_frustum_edges() -> None:
    """Cameras pitched 15 degrees down with a 90-degree vertical FoV: the lower edge is 60
    degrees and the upper edge 30 degrees from the horizontal (straight ahead; at azimuth 0
    the vertical angle is exact). Horizontally 60 degrees either side of the camera axis."""
    assert _visible(_hand_at(0.5, -58, 0), _hand_at(0.5, -62, 0)) == [True, False]
    assert _visible(_hand_at(0.5, 28, 0), _hand_at(0.5, 32, 0)) == [True, False]
    # At elevation -15 (level with the camera axis), in the camera frame
    # |x / z| = cos15 sin(az) / (cos^2 15 cos(az) + sin^2 15): 1.31 at az = 55 degrees and
    # 1.90 at 65, against tan(60) = 1.73.
    assert _visible(_hand_at(0.5, -15, 55), _hand_at(0.5, -15, 65)) == [True, False]
    assert _visible(_hand_at(0.5, -15, -55), _hand_at(0.5, -15, -65)) == [True, False]


def test_near_and_far_limits() -> None:
    assert _visible(_hand_at(0.05, -15, 0), _hand_at(1.1, -15, 0),
                    _hand_at(1.3, -15, 0)) == [False, True, False]


def test_visibility_follows_head_rotation() -> None:
    """Turning the head 180 degrees about z puts a hand that was behind into view."""
    behind = _hand_at(0.5, -20, 180)
    turn = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi], dtype=F64))
    cfg = FovConfig()
    hands = torch.stack([behind, behind])
    assert not bool(fov_visibility(R_HEAD, HEAD, hands, cfg)[0])
    assert bool(fov_visibility(turn @ R_HEAD, HEAD, hands, cfg)[0])


def test_visibility_modes_fractions() -> None:
    seq = synthesize_sequence(np.random.default_rng(0))
    g, j = seq.fk()
    rot, pos = tracker_trajectories(g, j)
    rng = np.random.default_rng(1)
    args = (rot[:, 0], pos[:, 0], pos[:, 1:], seq.fps)
    assert simulate_visibility(rng, *args, "all", FovConfig()).all()
    assert not simulate_visibility(rng, *args, "none", FovConfig()).any()
    half = simulate_visibility(rng, *args, "half", FovConfig()).float().mean()
    assert 0.3 < float(half) < 0.7
    # fov without dropouts is exactly the frustum test; dropouts only remove frames.
    no_drop = FovConfig(dropout_per_s=0.0)
    fov = simulate_visibility(rng, *args, "fov", no_drop)
    assert torch.equal(fov, fov_visibility(rot[:, 0], pos[:, 0], pos[:, 1:], no_drop))
    dropped = simulate_visibility(rng, *args, "fov", FovConfig(dropout_per_s=2.0))
    assert not (dropped & ~fov).any() and dropped.sum() < fov.sum()


def test_tracking_file_round_trip(tmp_path: Path) -> None:
    seq = synthesize_sequence(np.random.default_rng(2))
    g, j = seq.fk()
    rot, pos = tracker_trajectories(g, j)
    vis = torch.rand(seq.num_frames, 2, generator=torch.Generator().manual_seed(0)) > 0.3
    save_tracking(tmp_path / "t.npz", Tracking(30.0, rot, pos, vis, height_m=1.8))
    raw = np.load(tmp_path / "t.npz")
    assert np.isnan(raw["left_wrist"][~vis[:, 0].numpy()]).all()
    back = load_tracking(tmp_path / "t.npz")
    assert torch.equal(back.visible, vis) and back.height_m == 1.8 and back.fps == 30.0
    np.testing.assert_allclose(back.trk_pos[:, 0].numpy(), pos[:, 0].numpy(), atol=1e-6)
    m = vis[:, 1]
    np.testing.assert_allclose(back.trk_rot[m, 2].numpy(), rot[m, 2].numpy(), atol=1e-6)


def test_malformed_tracking_files(tmp_path: Path) -> None:
    eye = np.tile(np.eye(4), (5, 1, 1))
    good = {"head": eye, "left_wrist": eye, "right_wrist": eye, "fps": np.array(30.0)}
    bad_head = eye.copy()
    bad_head[2, 0, 0] = np.nan
    scaled = eye.copy()
    scaled[:, :3, :3] *= 2
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "right_wrist"}, "lacks right_wrist"),
        "shape": ({**good, "head": eye[:, :3]}, r"'head' has shape \(5, 3, 4\)"),
        "length": ({**good, "left_wrist": eye[:4]}, "same T"),
        "nan_head": ({**good, "head": bad_head}, "head must be tracked"),
        "not_rigid": ({**good, "head": scaled}, "not rigid"),
        "fps": ({**good, "fps": np.array("fast")}, "'fps' must be one positive number"),
        "vis_len": ({**good, "left_visible": np.ones(3, bool)}, "'left_visible' has 3"),
    }
    for name, (arrays, match) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(UserError, match=match):
            load_tracking(tmp_path / f"{name}.npz")
    # A NaN hand pose just means "not visible".
    nan_hand = eye.copy()
    nan_hand[1] = np.nan
    np.savez(tmp_path / "nan_hand.npz", **{**good, "left_wrist": nan_hand})
    assert load_tracking(tmp_path / "nan_hand.npz").visible[:, 0].tolist() == [
        True, False, True, True, True]


def test_damaged_tracking_files_and_implausible_rates(tmp_path: Path) -> None:
    eye = np.tile(np.eye(4), (5, 1, 1))
    good = {"head": eye, "left_wrist": eye, "right_wrist": eye, "fps": np.array(30.0)}
    with open(tmp_path / "array.npz", "wb") as f:
        np.save(f, eye)
    with pytest.raises(UserError, match="is a bare .npy array, not a tracking file"):
        load_tracking(tmp_path / "array.npz")
    np.savez(tmp_path / "whole.npz", **good)
    data = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) - 40])
    with pytest.raises(UserError, match="damaged or truncated"):
        load_tracking(tmp_path / "cut.npz")
    for rate in (1e-9, 1e9):
        np.savez(tmp_path / "rate.npz", **{**good, "fps": np.array(rate)})
        with pytest.raises(UserError, match=r"'fps' is \S+ frames per second, outside the "
                                            "1-1000 Hz"):
            load_tracking(tmp_path / "rate.npz")
    np.savez(tmp_path / "rate.npz", **{**good, "fps": np.array(1000.0)})
    assert load_tracking(tmp_path / "rate.npz").fps == 1000.0
