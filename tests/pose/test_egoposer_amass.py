"""AMASS loading: round trip, resampling against analytic rotations, malformed files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.errors import UserError
from geometry.so3 import matrix_to_axis_angle
from pose.body.egoposer.amass import find_amass_files, load_amass_npz, save_amass_npz
from pose.body.egoposer.skeleton import default_rest_joints, smplh_rest_joints
from pose.body.egoposer.synth import synthesize_sequence
from pose.cli import main as pose_main

F64 = torch.float64


def _amass_arrays(n: int = 10, fps: float = 60.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"poses": rng.normal(size=(n, 156)) * 0.3, "trans": rng.normal(size=(n, 3)),
            "betas": rng.normal(size=16), "gender": np.array("female"),
            "mocap_framerate": np.array(fps), "dmpls": np.zeros((n, 8))}


def test_round_trip_through_amass_format(tmp_path: Path) -> None:
    seq = synthesize_sequence(np.random.default_rng(1))
    save_amass_npz(seq, tmp_path / "a.npz")
    back = load_amass_npz(tmp_path / "a.npz", fps=seq.fps)
    np.testing.assert_allclose(back.local_rots.numpy(), seq.local_rots.numpy(), atol=2e-6)
    np.testing.assert_allclose(back.root_pos.numpy(), seq.root_pos.numpy(), atol=1e-6)


def test_trans_is_pelvis_minus_rest_pelvis(tmp_path: Path) -> None:
    arrays = _amass_arrays(fps=30.0)
    np.savez(tmp_path / "s.npz", **arrays)
    seq = load_amass_npz(tmp_path / "s.npz", fps=30.0)
    expected = arrays["trans"] + default_rest_joints(F64)[0].numpy()
    np.testing.assert_allclose(seq.root_pos.numpy(), expected, atol=1e-6)
    pose_aa = matrix_to_axis_angle(seq.local_rots.double()).reshape(10, -1).numpy()
    np.testing.assert_allclose(pose_aa, arrays["poses"][:, :66], atol=1e-5)


@pytest.mark.parametrize("fps_src", [60.0, 100.0, 120.0, 50.0])
def test_resampling_matches_analytic_rotation(tmp_path: Path, fps_src: float) -> None:
    """Constant angular velocity about a fixed axis and constant linear velocity: slerp and
    lerp are exact, so output frame k must equal the analytic pose at time k / 30."""
    n = int(fps_src * 2) + 1  # 2 seconds
    t = np.arange(n) / fps_src
    axis = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    omega, vel = 1.3, np.array([0.4, -0.2, 0.1])
    poses = np.zeros((n, 156))
    poses[:, 3:6] = (omega * t)[:, None] * axis  # left hip
    poses[:, 0:3] = [math.pi / 2, 0, 0]
    np.savez(tmp_path / "r.npz", poses=poses, trans=t[:, None] * vel, betas=np.zeros(16),
             gender=np.array("male"), mocap_framerate=np.array(fps_src))
    seq = load_amass_npz(tmp_path / "r.npz", fps=30.0)
    assert seq.num_frames == 61
    t_out = np.arange(61) / 30.0
    aa = matrix_to_axis_angle(seq.local_rots[:, 1].double()).numpy()
    np.testing.assert_allclose(aa, (omega * t_out)[:, None] * axis, atol=2e-6)
    expected_root = t_out[:, None] * vel + default_rest_joints(F64)[0].numpy()
    np.testing.assert_allclose(seq.root_pos.numpy(), expected_root, atol=1e-6)


def test_gender_as_bytes_and_smplh_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    v = 30
    model = {"v_template": rng.normal(size=(v, 3)), "shapedirs": rng.normal(size=(v, 3, 16)),
             "J_regressor": rng.dirichlet(np.ones(v), size=52)}
    (tmp_path / "models" / "female").mkdir(parents=True)
    np.savez(tmp_path / "models" / "female" / "model.npz", **model)
    arrays = _amass_arrays(fps=30.0)
    arrays["gender"] = np.array(b"female")
    np.savez(tmp_path / "g.npz", **arrays)
    seq = load_amass_npz(tmp_path / "g.npz", fps=30.0, smplh_dir=tmp_path / "models")
    rest = smplh_rest_joints(tmp_path / "models" / "female" / "model.npz", arrays["betas"], F64)
    np.testing.assert_allclose(seq.rest_joints.numpy(), rest.numpy(), atol=1e-6)
    np.testing.assert_allclose(seq.root_pos.numpy(), arrays["trans"] + rest[0].numpy(),
                               atol=1e-5)


def test_directory_skips_shape_files(tmp_path: Path) -> None:
    (tmp_path / "subject").mkdir()
    np.savez(tmp_path / "subject" / "shape.npz", betas=np.zeros(16), gender=np.array("male"))
    np.savez(tmp_path / "subject" / "walk_poses.npz", **_amass_arrays())
    assert [p.name for p in find_amass_files(tmp_path)] == ["walk_poses.npz"]


def _malformed(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}

    def write(name: str, match: str, **arrays: np.ndarray) -> None:
        np.savez(tmp_path / f"{name}.npz", **arrays)
        cases[name] = (tmp_path / f"{name}.npz", match)

    good = _amass_arrays()
    write("missing_trans", "lacks trans", **{k: v for k, v in good.items() if k != "trans"})
    write("poses_1d", r"'poses' has shape \(1560,\)", **{**good, "poses": good["poses"].ravel()})
    write("poses_72", r"'poses' has shape \(10, 72\)", **{**good, "poses": good["poses"][:, :72]})
    write("trans_short", r"'trans' has shape \(9, 3\)", **{**good, "trans": good["trans"][:9]})
    nan_poses = good["poses"].copy()
    nan_poses[3, 7] = np.nan
    write("nan_poses", "'poses' contains NaN", **{**good, "poses": nan_poses})
    write("bad_rate", "positive frame rate", **{**good, "mocap_framerate": np.array(-5.0)})
    write("nan_betas", "'betas' contains NaN", **{**good, "betas": np.full(16, np.nan)})
    obj = np.empty(2, dtype=object)
    obj[:] = [1, "x"]
    write("pickled", "cannot read", **{**good, "trans": obj})
    (tmp_path / "text.npz").write_text("not a zip archive")
    cases["text"] = (tmp_path / "text.npz", "cannot read")
    return cases


def test_malformed_files_raise_one_line_user_errors(tmp_path: Path) -> None:
    for name, (path, match) in _malformed(tmp_path).items():
        with pytest.raises(UserError, match=match) as info:
            load_amass_npz(path)
        assert "\n" not in str(info.value), name
        assert str(path) in str(info.value), name


def test_cli_exits_2_on_malformed_amass(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "amass"
    data.mkdir()
    np.savez(data / "broken.npz", poses=np.zeros((5, 10)), trans=np.zeros((5, 3)),
             mocap_framerate=np.array(30.0))
    with pytest.raises(SystemExit) as info:
        pose_main(["egoposer", "train", "--amass", str(data), "--out", str(tmp_path / "ck"),
                   "--steps", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pose: error: ") and "broken.npz" in err and "\n" not in err
    assert not (tmp_path / "ck").exists()


def test_npy_renamed_and_truncated_archives_are_user_errors(tmp_path: Path) -> None:
    """A bare .npy under an .npz name (was a TypeError) and a truncated .npz (BadZipFile)."""
    good = _amass_arrays()
    with open(tmp_path / "array.npz", "wb") as f:
        np.save(f, good["poses"])
    with pytest.raises(UserError, match="is a bare .npy array, not an AMASS .npz"):
        load_amass_npz(tmp_path / "array.npz")
    np.savez(tmp_path / "whole.npz", **good)
    data = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="damaged or truncated") as info:
        load_amass_npz(tmp_path / "cut.npz")
    assert "\n" not in str(info.value) and str(tmp_path / "cut.npz") in str(info.value)


@pytest.mark.parametrize("rate", [1e-6, 0.5, 1e9])
def test_implausible_mocap_framerates_are_refused(tmp_path: Path, rate: float) -> None:
    """1e-6 Hz made resampling to 30 fps allocate terabytes; 1e9 Hz collapsed the clip."""
    np.savez(tmp_path / "clip.npz", **_amass_arrays(fps=rate))
    with pytest.raises(UserError, match="outside the 1-1000 Hz") as info:
        load_amass_npz(tmp_path / "clip.npz")
    assert "'mocap_framerate'" in str(info.value)
    np.savez(tmp_path / "ok.npz", **_amass_arrays(n=10, fps=1000.0))
    with pytest.raises(UserError, match="less than one frame at 30 fps"):
        load_amass_npz(tmp_path / "ok.npz")  # 9 ms of motion: nothing left at 30 fps
    assert load_amass_npz(tmp_path / "ok.npz", fps=1000.0).num_frames == 10
    with pytest.raises(UserError, match="the target frame rate is 1e-09"):
        load_amass_npz(tmp_path / "ok.npz", fps=1e-9)
