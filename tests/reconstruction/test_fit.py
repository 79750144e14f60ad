"""``recon fit`` end to end on a tiny generated scene, Ctrl-C + --resume, and every bad
input of the issue (one sentence on stderr, exit code 2, nothing written)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData

from geometry.io.colmap import read_colmap_model
from geometry.io.transforms_json import read_transforms_json
from geometry.sim3 import align_poses, apply_sim3_to_poses
from reconstruction.engine.config import FitConfig
from reconstruction.gaussians import ply_property_names, read_ply
from reconstruction.methods import fit
from reconstruction.procedural import SceneConfig, render, write_photos

ROOT = Path(__file__).resolve().parents[2]
# One thread: the tensors are small, and the test machine's cores are shared.
FAST = ["--max-size", "160", "--train.checkpoint-every", "0", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit")
    generated = render(SceneConfig(kind="arc", num_views=3, width=160, height=120, seed=2))
    write_photos(generated, folder / "images")
    return folder / "images", generated


def _assert_user_error(code: int, err: str, out: Path, pattern: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("recon: error: "), err
    assert pattern in lines[-1], err
    assert "Traceback" not in err
    assert not out.exists()
    assert not [p for p in out.parent.glob(f".{out.name}*")], "temporary output left behind"


def test_fit_end_to_end(scene, tmp_path, run_recon):
    images, generated = scene
    (images / "notes.txt").write_text("not a photo")
    out = tmp_path / "out"
    try:
        code, err = run_recon("fit", "--images", str(images), "--out",
                             str(out), "--iterations", "40", *FAST)
    finally:
        (images / "notes.txt").unlink()
    assert code == 0, err
    assert "skipping 1 non-image file" in err and "notes.txt" in err

    # splats.ply: the standard 3DGS layout, readable by plyfile.
    ply = PlyData.read(str(out / "splats.ply"))
    assert [p.name for p in ply["vertex"].properties] == ply_property_names(3)
    scene_out = read_ply(out / "splats.ply")
    metrics = json.loads((out / "metrics.json").read_text())
    assert scene_out.num_gaussians == metrics["num_gaussians"] > 3000

    # The cameras read back through our COLMAP and transforms.json readers, and agree.
    model = read_colmap_model(out / "sparse" / "0")
    colmap = model.to_cameras(torch.float64)
    # the SfM points keep their tracks (COLMAP can continue from the model), which reproject
    # onto their observations; transforms.json's ply_file_path is the coloured SfM cloud
    assert model.points3D.track_offsets[-1] >= 2 * len(model.points3D) > 0
    assert float(np.median(model.points3D.error)) < 2.0
    assert json.loads((out / "transforms.json").read_text())["ply_file_path"] == "sparse_pc.ply"
    cloud = PlyData.read(str(out / "sparse_pc.ply"))["vertex"]
    np.testing.assert_allclose(np.stack([cloud[k] for k in "xyz"], 1), model.points3D.xyz,
                               rtol=1e-5, atol=1e-5)
    transforms = read_transforms_json(out / "transforms.json", dtype=torch.float64).cameras
    assert [Path(n).name for n in colmap.names] == ["view_00.png", "view_01.png", "view_02.png"]
    assert [Path(p).name for p in transforms.image_paths] == [Path(n).name for n in colmap.names]
    # Both are text: COLMAP stores a quaternion, transforms.json the matrix; 1e-6 covers
    # the printed digits (measured 7e-8).
    torch.testing.assert_close(colmap.K, transforms.K, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(colmap.T_world_cam, transforms.T_world_cam, rtol=1e-6,
                               atol=1e-6)
    assert colmap.width.tolist() == [160] * 3 and colmap.height.tolist() == [120] * 3

    # The poses match the generator's cameras up to a similarity.
    T_gt = generated.cameras.T_world_cam.double()
    s, R, t = align_poses(colmap.T_world_cam, T_gt)
    aligned = apply_sim3_to_poses(s, R, t, colmap.T_world_cam)
    spread = float((T_gt[:, :3, 3] - T_gt[:, :3, 3].mean(0)).norm(dim=1).mean())
    centre_errors = (aligned[:, :3, 3] - T_gt[:, :3, 3]).norm(dim=1) / spread
    assert float(centre_errors.max()) < 0.06, centre_errors  # measured 1.4-3 %

    # Metrics: every stage timed, a training PSNR well above the initial blur, pose moves.
    assert {"load_images", "init_features", "init_matching", "init_mapping", "init_stereo",
            "train", "write", "total"} <= set(metrics["timings_s"])
    # 40 steps on 160 px photos: measured 14.5 -> 16.9 dB.
    assert metrics["training_psnr_db"] > metrics["initial_psnr_db"] + 2.0, metrics
    assert [p["image"] for p in metrics["pose_change"]] == ["view_00.png", "view_01.png",
                                                            "view_02.png"]
    assert metrics["pose_change"][0]["rotation_deg"] == 0.0  # the gauge view
    assert all(np.isfinite(p["centre_shift"]) for p in metrics["pose_change"])
    assert not (tmp_path / ".out.resume").exists()


def _recon(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # SIGINT back to its default in the child: a test run started in the background (nohup,
    # `cmd &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    return subprocess.Popen([sys.executable, "-m", "sparseview.cli.recon", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **kwargs)


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(scene, tmp_path):
    images, _ = scene
    args = ["fit", "--images", str(images), "--iterations", "24", "--max-size", "160",
            "--train.checkpoint-every", "6", "--quiet", "--seed", "4", "--threads", "1"]
    # The uninterrupted reference runs in-process (cheaper), with the same options.
    config = FitConfig(images=images, out=tmp_path / "a", iterations=24, max_size=160,
                       quiet=True, seed=4, threads=1)
    config.train.checkpoint_every = 6
    fit(config)

    out = tmp_path / "b"
    interrupted = _recon(*args, "--out", str(out))
    checkpoint = tmp_path / ".b.resume" / "state.json"
    deadline = time.time() + 600
    while not checkpoint.exists() and interrupted.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    # the run holds the lock of OUT, with its PID (a second run would be refused)
    holder = (tmp_path / ".b.lock").read_text().strip()
    interrupted.send_signal(signal.SIGINT)
    _, err = interrupted.communicate(timeout=600)
    assert holder == str(interrupted.pid)
    assert interrupted.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert not out.exists() and checkpoint.exists()
    assert not (tmp_path / ".b.lock").exists()

    resumed = _recon(*args, "--out", str(out), "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert (out / "splats.ply").read_bytes() == (tmp_path / "a" / "splats.ply").read_bytes()
    for name in ("cameras.txt", "images.txt"):
        assert (out / "sparse" / "0" / name).read_text() == (
            tmp_path / "a" / "sparse" / "0" / name).read_text()
    assert not checkpoint.parent.exists()


@pytest.mark.parametrize("case", ["missing", "empty", "single", "corrupt", "no-images"])
def test_bad_image_folders(case, tmp_path, run_recon, scene):
    images_src, _ = scene
    folder = tmp_path / "photos"
    expected = {
        "missing": "does not exist",
        "empty": "is empty",
        "single": "has 1 image(s)",
        "corrupt": "cannot read image",
        "no-images": "has no JPEG/PNG images",
    }[case]
    if case != "missing":
        folder.mkdir()
    if case == "single":
        (folder / "a.png").write_bytes((images_src / "view_00.png").read_bytes())
    if case == "corrupt":
        for name in ("view_00.png", "view_01.png"):
            (folder / name).write_bytes((images_src / name).read_bytes())
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    if case == "no-images":
        (folder / "readme.md").write_text("x")
    out = tmp_path / "out"
    # InstantSplat fits one photo (tests/reconstruction/test_single_view.py); RDG-GS needs 2
    method = ["--method", "rdggs"] if case == "single" else []
    code, err = run_recon("fit", "--images", str(folder), "--out",
                         str(out), *method, *FAST)
    _assert_user_error(code, err, out, expected)
    if case == "corrupt":
        assert "broken.jpg" in err


def test_unregistrable_view_is_an_error(scene, tmp_path, run_recon):
    images_src, _ = scene
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted(images_src.glob("*.png")):
        (folder / path.name).write_bytes(path.read_bytes())
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((120, 160, 3)) * 255).astype(np.uint8)).save(
        folder / "noise.png")
    out = tmp_path / "out"
    code, err = run_recon("fit", "--images", str(folder), "--out",
                         str(out), *FAST)
    _assert_user_error(code, err, out, "could not register noise.png")


def test_other_bad_arguments(scene, tmp_path, run_recon):
    images, _ = scene
    out = tmp_path / "out"
    code, err = run_recon("fit", "--images", str(images), "--out",
                         str(out), "--resume", *FAST)
    _assert_user_error(code, err, out, "no checkpoint to resume")
    code, err = run_recon("fit", "--images", str(images), "--out",
                         str(images / "sub"), *FAST)
    assert code == 2 and "overlaps the image folder" in err
    code, err = run_recon("fit", "--images", str(images), "--out",
                         str(out), "--iterations", "0", *FAST)
    _assert_user_error(code, err, out, "--iterations 0")


def test_nan_that_does_not_go_away_stops_cleanly(scene, tmp_path, monkeypatch, run_recon):
    from reconstruction.engine import losses as losses_module

    monkeypatch.setattr(losses_module, "photometric_loss",
                        lambda image, target, weight: (image - target).abs().mean() * np.nan)
    images, _ = scene
    out = tmp_path / "out"
    code, err = run_recon("fit", "--images", str(images), "--out",
                         str(out), "--iterations", "10", *FAST)
    _assert_user_error(code, err, out, "diverged")
    assert err.count("rolled back") == 3  # each roll-back said so, then the stop


def _write_poses(generated, path: Path, names: list[str]) -> None:
    from geometry.io.transforms_json import write_transforms_json

    write_transforms_json(path, generated.cameras, file_paths=[f"images/{n}" for n in names])


def test_known_poses_keep_the_given_frame(scene, tmp_path, run_recon):
    """--poses: the cameras come out exactly as given (at the photos' resolution) and the
    splats sit in the given frame, where the cameras look at them."""
    images, generated = scene
    poses = tmp_path / "given" / "transforms.json"
    poses.parent.mkdir()
    _write_poses(generated, poses, ["view_00.png", "view_01.png", "view_02.png"])
    out = tmp_path / "out"
    code, err = run_recon("fit", "--images", str(images), "--out",
                         str(out), "--poses", str(poses), "--iterations", "30", *FAST)
    assert code == 0, err
    given = generated.cameras.to(dtype=torch.float64)
    written = read_transforms_json(out / "transforms.json", dtype=torch.float64).cameras
    torch.testing.assert_close(written.T_world_cam, given.T_world_cam, rtol=0, atol=1e-6)
    torch.testing.assert_close(written.K, given.K, rtol=1e-6, atol=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["known_poses"] is True
    assert all(p["rotation_deg"] == 0.0 and p["centre_shift"] < 1e-5
               for p in metrics["pose_change"])
    # The splats project into every view (they would not if left in the normalised frame:
    # the generator's cameras are ~3 units from the origin, not 1).
    means = read_ply(out / "splats.ply").means.double()
    uv, depth = given.project(means.median(0).values[None].expand(len(given), 1, 3))
    assert bool((depth > 0).all()), depth
    assert bool(((uv[..., 0] > 0) & (uv[..., 0] < 160) & (uv[..., 1] > 0)
                 & (uv[..., 1] < 120)).all()), uv
    assert metrics["training_psnr_db"] > metrics["initial_psnr_db"] + 1.0, metrics


def test_known_poses_errors(scene, tmp_path, run_recon):
    images, generated = scene
    out = tmp_path / "out"
    poses = tmp_path / "given" / "transforms.json"
    poses.parent.mkdir()
    _write_poses(generated, poses, ["view_00.png", "view_01.png", "other.png"])
    code, err = run_recon("fit", "--images", str(images), "--out",
                         str(out), "--poses", str(poses), *FAST)
    _assert_user_error(code, err, out, "has no camera for view_02.png")
    code, err = run_recon("fit", "--images", str(images), "--out",
                         str(out), "--poses", str(tmp_path / "nothing"), *FAST)
    _assert_user_error(code, err, out, "found no cameras")


def test_fit_with_live_view(scene, tmp_path, monkeypatch, run_recon):
    """--view: the live viewer gets the state every --view-every steps and the final one,
    which is what the outputs hold; the server is closed afterwards."""
    import viewer.live

    created = []

    class Recording(viewer.live.LiveTrainingViewer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs, min_interval_s=0.0)
            self.shown = []
            created.append(self)

        def update(self, step, scene, cameras=None, force=False):
            taken = super().update(step, scene, cameras, force)
            if taken:
                self.shown.append((step, scene.means.clone(), cameras))
            return taken

    monkeypatch.setattr(viewer.live, "LiveTrainingViewer", Recording)
    out = tmp_path / "out"
    code, err = run_recon("fit", "--images", str(scene[0]),
                         "--out", str(out), "--iterations", "25", "--view", "--view-port", "0",
                         "--view-every", "10", "--no-view-keep-open", *FAST)
    assert code == 0, err
    assert "live viewer" in err
    (live,) = created
    assert [step for step, _, _ in live.shown] == [10, 20, 25]
    assert live.updates_sent >= 1 and live.error is None
    final_means = live.shown[-1][1]
    torch.testing.assert_close(final_means, read_ply(out / "splats.ply").means)
    written = read_transforms_json(out / "transforms.json", dtype=torch.float64).cameras
    torch.testing.assert_close(live.shown[-1][2].T_world_cam.double(), written.T_world_cam,
                               rtol=0, atol=1e-5)
    assert live.viewer is not None and live.viewer.scene.stats["iteration"] == "25"
    assert live._closed


def test_live_view_on_a_busy_port_writes_nothing(scene, tmp_path, run_recon):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = tmp_path / "out"
        code, err = run_recon("fit", "--images", str(scene[0]), "--out",
                             str(out), "--view", "--view-port", str(port), *FAST)
    _assert_user_error(code, err, out, str(port))


# ---------------------------------------------------------------- output safety (issue 21)

def test_a_folder_recon_fit_did_not_write_is_not_replaced(scene, tmp_path, run_recon):
    """Before: notes.txt vanished and the run exited 0. An earlier recon fit output (it holds
    the marker) is still replaced by default, anything else only with --overwrite."""
    images, _ = scene
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = run_recon("fit", "--images", str(images), "--out", str(out),
                          "--iterations", "2", *FAST)
    assert code == 2 and "pass --overwrite" in err.strip().splitlines()[-1], err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no lock or temp left
    code, err = run_recon("fit", "--images", str(images), "--out", str(out),
                          "--iterations", "2", "--overwrite", *FAST)
    assert code == 0, err
    assert not (out / "notes.txt").exists()
    assert json.loads((out / ".recon-fit").read_text())["written_by"] == "recon fit"
    code, err = run_recon("fit", "--images", str(images), "--out", str(out),
                          "--iterations", "3", *FAST)  # its own output: replaced
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unwritable_or_nameless_out_fails_before_any_work(scene, tmp_path, run_recon,
                                                          monkeypatch):
    """Before: a PermissionError or ValueError traceback after the whole fit. Root writes
    anywhere, so 'cannot write' is simulated with os.access and a path under a file."""
    import geometry.io.atomic as atomic
    import reconstruction.engine.fit as engine_fit

    images, _ = scene

    def no_work(*args, **kwargs):
        raise AssertionError("the photos were loaded before the --out check")

    monkeypatch.setattr(engine_fit, "load_images", no_work)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run_recon("fit", "--images", str(images), "--out", ".", *FAST)
    _assert_user_error(code, err, tmp_path / "missing", "--out . names no new folder")
    code, err = run_recon("fit", "--images", str(images), "--out",
                          str(blocker / "out"), *FAST)
    _assert_user_error(code, err, tmp_path / "missing", "which is a file")
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: Path(path) != locked)
    code, err = run_recon("fit", "--images", str(images), "--out", str(locked / "out"),
                          *FAST)
    _assert_user_error(code, err, locked / "out", "cannot be written (no write permission")
    assert list(locked.iterdir()) == []


def test_a_second_run_on_the_same_out_is_refused(scene, tmp_path, run_recon):
    """Before: both runs shared .OUT.resume (FileNotFoundError, or the last writer won)."""
    from geometry.io.atomic import output_lock

    images, _ = scene
    out = tmp_path / "out"
    with output_lock(out):  # as a running recon fit holds it
        code, err = run_recon("fit", "--images", str(images), "--out", str(out), *FAST)
    assert code == 2, err
    assert f"another run (process {os.getpid()}) is writing --out {out}" in err
    assert not out.exists() and not (tmp_path / ".out.lock").exists()


@pytest.fixture(scope="module")
def checkpoint(scene, tmp_path_factory):
    """A real checkpoint at iteration 6 of a 24-iteration run (stopped by Ctrl-C at 7)."""
    images, _ = scene
    folder = tmp_path_factory.mktemp("checkpoint")
    config = FitConfig(images=images, out=folder / "out", iterations=24, max_size=160,
                       quiet=True, seed=4, threads=1)
    config.train.checkpoint_every = 6

    def stop(trainer, _images):
        if trainer.iteration == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config, callbacks=[stop])
    saved = folder / ".out.resume"
    assert json.loads((saved / "state.json").read_text())["trainer"]["iteration"] == 6
    return saved


RESUME = ["--iterations", "24", "--max-size", "160", "--quiet", "--seed", "4", "--threads",
          "1", "--resume"]


def _damage(path: Path, case: str) -> None:
    from safetensors.torch import load_file, save_file

    meta = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "state.safetensors"))
    if case == "not-an-object":
        meta = [meta]
    elif case == "no-init":
        del meta["init"]
    elif case == "iteration":
        meta["trainer"]["iteration"] = 6.5
    elif case == "no-means":
        del tensors["param.means"]
    elif case == "no-init-points":
        del tensors["init.points"]
    elif case == "nan-means":
        tensors["param.means"][0, 0] = float("nan")
    (path / "state.json").write_text(json.dumps(meta))
    save_file(tensors, str(path / "state.safetensors"))


@pytest.mark.parametrize("case, expected", [
    ("not-an-object", "state.json is not a JSON object"),
    ("no-init", "state.json has no dict 'init'"),
    ("iteration", "its iteration 6.5 is not a non-negative integer"),
    ("no-means", "the tensor param.means is missing"),
    ("no-init-points", "the tensor init.points is missing"),
    ("nan-means", "the tensor param.means holds NaN"),
])
def test_a_damaged_checkpoint_is_one_sentence(case, expected, checkpoint, scene, tmp_path,
                                              run_recon):
    """Before: AttributeError / KeyError / ValueError tracebacks."""
    import shutil

    images, _ = scene
    shutil.copytree(checkpoint, tmp_path / ".out.resume")
    _damage(tmp_path / ".out.resume", case)
    code, err = run_recon("fit", "--images", str(images), "--out", str(tmp_path / "out"),
                          *RESUME)
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("recon: error: the checkpoint in ") and expected in last, err
    assert "is damaged" in last and last.endswith("run without --resume.")
    assert not (tmp_path / "out").exists()


def test_resume_names_the_options_that_differ(checkpoint, scene, tmp_path, run_recon):
    """Before: "made with other options" without saying which, and a different
    --train.checkpoint-every (which changes no result) was refused."""
    import shutil

    images, _ = scene
    out = tmp_path / "out"
    shutil.copytree(checkpoint, tmp_path / ".out.resume")
    args = ["fit", "--images", str(images), "--out", str(out), *RESUME]
    code, err = run_recon(*args[:-len(RESUME)], "--iterations", "30", "--max-size", "160",
                          "--quiet", "--seed", "5", "--threads", "1", "--resume")
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert "(--iterations 30 (checkpoint: 24); --seed 5 (checkpoint: 4))" in last, err
    code, err = run_recon("fit", "--images", str(images), "--out", str(out), *RESUME,
                          "--train.lr-quats", "0.5")
    assert code == 2 and "--train.lr-quats 0.5 (checkpoint: 0.001)" in err, err
    code, err = run_recon(*args, "--train.checkpoint-every", "5")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 24
    assert not (tmp_path / ".out.resume").exists()


# ---------------------------------------------------------------- feedback (issue 21)

def test_a_fit_into_a_log_says_what_it_does(scene, tmp_path, run_recon):
    """Before: nothing on a non-terminal stderr until the end (the bar is drawn only on a
    terminal), and silence through SfM. Now stage lines, and a line every 10 %."""
    images, _ = scene
    out = tmp_path / "out"
    fast = [a for a in FAST if a != "--quiet"]
    code, err = run_recon("fit", "--images", str(images), "--out", str(out),
                          "--iterations", "20", *fast)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert lines[0] == "loaded 3 photos (160x120 px)"
    assert lines[1].startswith("initialising (--init sfm): feature extraction, matching, "
                               "mapping (SfM), then dense stereo")
    assert lines[2].startswith("initialised in ") and "3/3 photos registered" in lines[2]
    for name in ("features", "matching", "mapping", "stereo"):
        assert f" {name} " in lines[2]
    progress = [line.split(":")[0] for line in lines if line.startswith("fit ")]
    assert progress == [f"fit {i}/20 ({5 * i} %)" for i in range(2, 21, 2)]
    assert lines[-1].startswith(f"wrote {out}")
    code, err = run_recon("fit", "--images", str(images), "--out", str(out),
                          "--iterations", "4", *FAST)  # --quiet: only the final line
    assert code == 0 and err.strip().splitlines()[-1].startswith("wrote") \
        and len(err.strip().splitlines()) == 1, err


def test_a_kernel_build_says_so_only_when_it_compiles(tmp_path, monkeypatch, capsys):
    """Before: ~30 s of silence on the first run (or recon build-ops) while compiling."""
    import torch.utils.cpp_extension

    from geometry.ops import loader

    built = []

    def fake_load(name, build_directory, **kwargs):
        built.append(name)
        (Path(build_directory) / f"{name}.so").write_bytes(b"")

    monkeypatch.setenv("SPARSEVIEW_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    monkeypatch.setattr(loader, "_LOADED", None)
    loader.build_ops()
    assert "compiling native kernels (once" in capsys.readouterr().err and len(built) == 1
    monkeypatch.setattr(loader, "_LOADED", None)
    loader.build_ops()  # built already: torch only loads it, silently
    assert capsys.readouterr().err == "" and len(built) == 2


def test_recon_eval_does_not_replace_a_folder_it_did_not_write(tmp_path):
    """The same rule for recon eval --out (before: replaced whatever the folder held)."""
    from geometry.errors import UserError
    from reconstruction.eval.config import EvalConfig
    from reconstruction.eval.protocol import EVAL_MARKER, _check_options

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    config = EvalConfig(dataset=tmp_path / "dataset", out=out)
    with pytest.raises(UserError, match="pass --overwrite to replace it"):
        _check_options(config)
    config.overwrite = True
    _check_options(config)
    config.overwrite = False
    (out / EVAL_MARKER).write_text("{}")  # an earlier recon eval output
    _check_options(config)
    with pytest.raises(UserError, match="names no new folder"):
        _check_options(EvalConfig(dataset=tmp_path / "dataset", out=Path(".")))
