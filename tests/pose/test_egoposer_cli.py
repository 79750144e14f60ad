"""``pose egoposer train -> simulate -> predict -> eval`` on a tiny synthetic set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.so3 import axis_angle_to_matrix
from pose.body.egoposer.amass import load_amass_npz, save_amass_npz
from pose.body.egoposer.config import FovConfig
from pose.body.egoposer.skeleton import (
    DEFAULT_STATURE_M,
    default_rest_joints,
    forward_kinematics,
    scaled_default_skeleton,
)
from pose.body.egoposer.synth import SynthConfig, synthesize_dataset
from pose.body.egoposer.tracking import load_tracking, save_tracking
from pose.cli import main as pose_main

TINY_MODEL = ["--model.d-model", "16", "--model.layers", "1", "--model.heads", "2",
              "--model.ff-dim", "32", "--model.head-dim", "32", "--model.tokens", "6",
              "--model.slow-stride", "2"]
TINY_DATA = ["--synthetic-sequences", "2", "--synth.seconds", "3"]
TRAIN = ["--batch-size", "8", "--threads", "1", "--warmup-steps", "2"]


def _run(args: list[str]) -> None:
    pose_main(["egoposer", *args])


def _user_error(args: list[str], capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        _run(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pose: error: ") and "\n" not in err, err
    return err


def test_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = tmp_path / "ck"
    _run(["train", "--synthetic", "--out", str(ck), "--steps", "6", "--max-minutes", "2",
          *TINY_MODEL, *TINY_DATA, *TRAIN])
    config = json.loads((ck / "config.json").read_text())
    assert config["kind"] == "egoposer" and config["step"] == 6
    assert config["config"]["model"]["d_model"] == 16
    assert {p.name for p in ck.iterdir()} == {"config.json", "model.safetensors",
                                              "trainer_state.pt", "history.json", "loss.png"}
    # An existing checkpoint is neither silently replaced nor resumed.
    err = _user_error(["train", "--synthetic", "--out", str(ck), *TINY_MODEL, *TINY_DATA],
                      capsys)
    assert "--resume" in err
    _run(["train", "--synthetic", "--out", str(ck), "--steps", "9", "--resume", *TINY_MODEL,
          *TINY_DATA, *TRAIN])
    assert json.loads((ck / "config.json").read_text())["step"] == 9

    trk, gt = tmp_path / "trk.npz", tmp_path / "gt.npz"
    _run(["simulate", "--synthetic", "--out", str(trk), "--gt-out", str(gt), "--seed", "3",
          "--synth.seconds", "3", "--visibility", "half"])
    tracking = load_tracking(trk)
    assert tracking.num_frames == 90 and 0 < tracking.visible.float().mean() < 1

    pred = tmp_path / "pred.npz"
    _run(["predict", "--checkpoint", str(ck), "--tracking", str(trk), "--out", str(pred),
          "--height-m", "1.8"])
    out = np.load(pred)
    assert out["poses"].shape == (90, 66) and out["joints"].shape == (90, 22, 3)
    scale = 1.8 / DEFAULT_STATURE_M
    assert float(out["body_scale"]) == pytest.approx(scale)
    # The joints are FK of the written poses and trans (AMASS convention).
    rots = axis_angle_to_matrix(torch.from_numpy(out["poses"]).reshape(90, 22, 3))
    root = torch.from_numpy(out["trans"]) + default_rest_joints(torch.float64)[0]
    _, joints = forward_kinematics(rots, root, scaled_default_skeleton(scale, torch.float64))
    np.testing.assert_allclose(joints.numpy(), out["joints"], atol=1e-5)
    # ... and the file is a valid body-only AMASS file.
    assert load_amass_npz(pred).num_frames == 90

    metrics = tmp_path / "metrics.json"
    _run(["eval", "--checkpoint", str(ck), "--synthetic", "--out", str(metrics), *TINY_DATA,
          "--visibility", "fov"])
    report = json.loads(metrics.read_text())
    assert set(report["methods"]) == {"egoposer", "stand_still"}
    assert report["frames"] == 180 and report["data"]["synthetic"]["seed"] == 1000
    for groups in report["methods"].values():
        assert groups["all"]["frames"] == 180
        assert groups["hands_visible"]["frames"] + groups["hands_hidden"]["frames"] == 180
        assert all(np.isfinite(v) for v in groups["all"].values())
    assert "MPJPE" in capsys.readouterr().out

    # Evaluation on AMASS-format files (here: the simulated ground truth).
    amass_dir = tmp_path / "amass"
    amass_dir.mkdir()
    gt.rename(amass_dir / "gt.npz")
    _run(["eval", "--checkpoint", str(ck), "--amass", str(amass_dir), "--out", str(metrics),
          "--no-baselines"])
    report = json.loads(metrics.read_text())
    assert set(report["methods"]) == {"egoposer"} and report["frames"] == 90


def test_train_on_amass_folder_with_time_cap(tmp_path: Path) -> None:
    data = tmp_path / "amass" / "subject"
    data.mkdir(parents=True)
    for i, seq in enumerate(synthesize_dataset(2, seed=5, cfg=SynthConfig(seconds=3.0))):
        save_amass_npz(seq, data / f"clip{i}_poses.npz")
    ck = tmp_path / "ck"
    _run(["train", "--amass", str(tmp_path / "amass"), "--out", str(ck), "--steps", "100000",
          "--max-minutes", "0.01", *TINY_MODEL, *TRAIN])
    record = json.loads((ck / "config.json").read_text())
    assert 1 <= record["step"] < 100000
    assert record["config"]["data"] == {"amass": str(tmp_path / "amass")}


def test_predict_resamples_60fps_tracking(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    _run(["train", "--synthetic", "--out", str(ck), "--steps", "1", *TINY_MODEL, *TINY_DATA,
          *TRAIN])
    seq = synthesize_dataset(1, seed=8, cfg=SynthConfig(seconds=2.0, fps=60.0))[0]
    g, j = seq.fk()
    from pose.body.egoposer.tracking import Tracking, tracker_trajectories

    rot, pos = tracker_trajectories(g, j)
    save_tracking(tmp_path / "t60.npz", Tracking(60.0, rot, pos,
                                                 torch.ones(seq.num_frames, 2, dtype=bool)))
    _run(["predict", "--checkpoint", str(ck), "--tracking", str(tmp_path / "t60.npz")])
    out = np.load(tmp_path / "t60_pose.npz")
    assert seq.num_frames == 120 and out["poses"].shape == (60, 66)
    assert float(out["mocap_framerate"]) == 30.0


def test_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "exactly one data source" in _user_error(["train", "--out", str(tmp_path / "a")],
                                                    capsys)
    assert "exactly one data source" in _user_error(
        ["train", "--synthetic", "--amass", str(tmp_path), "--out", str(tmp_path / "a")], capsys)
    (tmp_path / "empty").mkdir()
    assert "not an egoposer checkpoint" in _user_error(
        ["eval", "--checkpoint", str(tmp_path / "empty"), "--synthetic"], capsys)
    assert "does not exist" in _user_error(
        ["train", "--amass", str(tmp_path / "nope"), "--out", str(tmp_path / "b")], capsys)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert "not a checkpoint" in _user_error(
        ["train", "--synthetic", "--out", str(tmp_path / "other")], capsys)
    assert (tmp_path / "other" / "notes.txt").read_text() == "x"


def test_console_script_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pose.cli", "egoposer", "predict",
                           "--checkpoint", str(tmp_path), "--tracking", str(tmp_path / "t.npz")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("pose: error: ")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_interrupt_saves_a_resumable_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    import pose.body.egoposer.train as train_module

    real, calls = train_module.sample_batch, {"n": 0}

    def interrupted_at_fourth_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "sample_batch", interrupted_at_fourth_batch)
    ck = tmp_path / "ck"
    with pytest.raises(SystemExit) as info:
        _run(["train", "--synthetic", "--out", str(ck), "--steps", "10", *TINY_MODEL,
              *TINY_DATA, *TRAIN])
    assert info.value.code == 130
    assert json.loads((ck / "config.json").read_text())["step"] == 3
    assert "--resume" in capsys.readouterr().out
    monkeypatch.setattr(train_module, "sample_batch", real)
    _run(["train", "--synthetic", "--out", str(ck), "--steps", "5", "--resume", *TINY_MODEL,
          *TINY_DATA, *TRAIN])
    assert json.loads((ck / "config.json").read_text())["step"] == 5


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ck = tmp_path_factory.mktemp("egoposer") / "ck"
    _run(["train", "--synthetic", "--out", str(ck), "--steps", "2", *TINY_MODEL, *TINY_DATA,
          *TRAIN])
    return ck


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_checkpoint_files_are_one_sentence(tiny_checkpoint: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """A file that is not safetensors under the checkpoint's names (was SafetensorError)."""
    eye = np.tile(np.eye(4), (5, 1, 1))
    trk = tmp_path / "trk.npz"
    np.savez(trk, head=eye, left_wrist=eye, right_wrist=eye, fps=np.array(30.0))
    ck = _copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    (ck / "model.safetensors").write_text("this is not a safetensors file at all")
    err = _user_error(["predict", "--checkpoint", str(ck), "--tracking", str(trk)], capsys)
    assert f"{ck / 'model.safetensors'} is not an egoposer weights file" in err
    assert "retrain" in err and "SafetensorError" not in err
    ck2 = _copy_checkpoint(tiny_checkpoint, tmp_path / "ck2")
    (ck2 / "trainer_state.pt").write_bytes(b"not a torch file")
    err = _user_error(["train", "--synthetic", "--out", str(ck2), "--steps", "3", "--resume",
                       *TINY_MODEL, *TINY_DATA, *TRAIN], capsys)
    assert f"{ck2 / 'trainer_state.pt'} is not an egoposer trainer state file" in err
    assert "without --resume" in err
    (ck2 / "model.safetensors").write_text("garbage")
    err = _user_error(["train", "--synthetic", "--out", str(ck2), "--steps", "3", "--resume",
                       *TINY_MODEL, *TINY_DATA, *TRAIN], capsys)
    assert "is not an egoposer weights file" in err


def test_tracking_rate_that_leaves_one_frame_is_refused(tiny_checkpoint: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """5 frames at 1000 Hz are 4 ms: at the model's 30 fps that used to be one silent frame."""
    eye = np.tile(np.eye(4), (5, 1, 1))
    trk = tmp_path / "fast.npz"
    np.savez(trk, head=eye, left_wrist=eye, right_wrist=eye, fps=np.array(1000.0))
    err = _user_error(["predict", "--checkpoint", str(tiny_checkpoint), "--tracking", str(trk)],
                      capsys)
    assert "less than one frame at 30 fps" in err
    assert not (tmp_path / "fast_pose.npz").exists()
    np.savez(trk, head=eye, left_wrist=eye, right_wrist=eye, fps=np.array(1e9))
    assert "outside the 1-1000 Hz" in _user_error(
        ["predict", "--checkpoint", str(tiny_checkpoint), "--tracking", str(trk)], capsys)
    assert "outside the 1-1000 Hz" in _user_error(
        ["train", "--synthetic", "--out", str(tmp_path / "x"), "--model.fps", "1e-9",
         *TINY_DATA], capsys)


def test_eval_metrics_json_is_standard_json(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """All hands visible: the hands-hidden group has no frames, its metrics are undefined
    (NaN), written as null (bare NaN is not JSON)."""
    metrics = tmp_path / "metrics.json"
    _run(["eval", "--checkpoint", str(tiny_checkpoint), "--synthetic", "--out", str(metrics),
          *TINY_DATA, "--visibility", "all", "--no-baselines"])

    def refuse(constant: str):
        raise AssertionError(f"metrics.json holds {constant}")

    report = json.loads(metrics.read_text(), parse_constant=refuse)
    hidden = report["methods"]["egoposer"]["hands_hidden"]
    assert hidden["frames"] == 0 and hidden["mpjpe_cm"] is None
    visible = report["methods"]["egoposer"]["hands_visible"]
    assert visible["frames"] == 180 and visible["mpjpe_cm"] > 0
    assert report["fov"]["h_fov_deg"] == FovConfig().h_fov_deg
