"""Offline renders: the single-view render against a closed form, and ``render`` writing a
decodable mp4 with the right frames, atomically, with a progress bar; CLI errors exit 2."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.errors import UserError
from geometry.se3 import look_at
from reconstruction.gaussians import GaussianScene
from viewer.cli import Render
from viewer.render import read_video_frames, render_rgb, write_video
from viewer.server import browser_view_to_camera, rotation_to_wxyz

REPO = Path(__file__).resolve().parents[2]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_render_of_one_gaussian_matches_the_closed_form():
    """A Gaussian on the optical axis: the centre pixel is o*c + (1 - o)*bg (alpha at the
    peak is the opacity: the 2D Gaussian is evaluated at its own centre); far pixels are
    the background. The camera sits at an arbitrary pose."""
    target = np.array([3.0, -1.0, 2.0])
    T = look_at(target + np.array([0.0, 0.0, -4.0]), target, np.array([0.0, -1.0, 0.0]))
    opacity, color, bg = 0.6, np.array([0.2, 0.9, 0.4]), (0.1, 0.1, 0.5)
    scene = GaussianScene(
        means=torch.tensor(target[None], dtype=torch.float32), quats=torch.tensor([[1.0, 0, 0, 0]]),
        log_scales=torch.full((1, 3), math.log(0.2)),
        logit_opacities=torch.tensor([math.log(opacity / (1 - opacity))]),
        sh0=((torch.tensor(color[None], dtype=torch.float32) - 0.5) / 0.28209479177387814)[:, None],
        shN=torch.zeros(1, 0, 3))
    # 41x41 with the principal point at the centre of pixel (20, 20)
    K = np.array([[50.0, 0, 20.5], [0, 50.0, 20.5], [0, 0, 1]])
    rgb = render_rgb(scene, T, K, 41, 41, bg)
    expected = opacity * color + (1 - opacity) * np.asarray(bg)
    np.testing.assert_allclose(rgb[20, 20] / 255.0, expected, atol=1.0 / 255 + 1e-3)
    np.testing.assert_allclose(rgb[0, 0] / 255.0, bg, atol=1.0 / 255)
    # symmetric about the centre
    np.testing.assert_array_equal(rgb[20, 15], rgb[20, 25])


def test_browser_view_round_trip(helpers):
    """viser's camera (wxyz, position, fov, aspect) back to T_world_cam and K."""
    cams = helpers.ring_cameras(3)
    T = cams.T_world_cam[1].numpy()
    wxyz = rotation_to_wxyz(T[:3, :3])
    fov = 2 * math.atan(24 / 51.2)
    T2, K, w, h = browser_view_to_camera(wxyz, T[:3, 3], fov, 64 / 48, 48)
    np.testing.assert_allclose(T2, T, atol=1e-12)
    assert (w, h) == (64, 48)
    np.testing.assert_allclose(K, cams.K[1].numpy(), atol=1e-9)


def test_write_video_is_atomic(tmp_path):
    out = tmp_path / "v.mp4"

    def frames(i: int) -> np.ndarray:
        if i == 3:
            raise RuntimeError("renderer failed")
        return np.zeros((16, 16, 3), np.uint8)

    with pytest.raises(RuntimeError):
        write_video(out, frames, 5, 16, 16)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("trajectory", ["orbit", "interpolate"])
def test_render_writes_an_mp4_with_the_right_frames(out_dir, tmp_path, trajectory, capsys):
    out = tmp_path / f"{trajectory}.mp4"
    cmd = Render(out_dir, trajectory=trajectory, frames=11, out=out, fps=10)
    assert cmd.run() == out
    video, fps = read_video_frames(out)
    assert video.shape == (11, 48, 64, 3) and fps == pytest.approx(10.0)
    err = capsys.readouterr().err
    assert f"render {trajectory}" in err and "11/11" in err  # the progress bar
    from viewer.data import load_scene

    scene = load_scene(out_dir)
    if trajectory == "interpolate":
        # keyframes are the input cameras: frame 0 is camera 0, frame 10 camera 5; compare
        # with the photos that were rendered from those poses (white background there)
        white = Render(out_dir, trajectory=trajectory, frames=11, out=tmp_path / "w.mp4",
                       background=(1.0, 1.0, 1.0), quiet=True)
        white.run()
        video, _ = read_video_frames(tmp_path / "w.mp4")
        from PIL import Image

        for frame, cam in ((0, 0), (10, 5)):
            photo = np.asarray(Image.open(out_dir / "images" / f"view_{cam:02d}.png"))
            assert _psnr(video[frame], photo) > 30.0  # H.264 at quality 8 on a 64x48 frame
    else:
        # frame 0 is at the first camera's azimuth: the render there equals a direct one
        from viewer.framing import estimate_up, scene_sphere
        from viewer.trajectories import orbit

        cams = scene.cameras
        T = cams.T_world_cam.double().numpy()
        sphere = scene_sphere(scene.content_points())
        path = orbit(sphere, estimate_up(T), 11, T, cams.K.double().numpy(),
                     cams.width.numpy(), cams.height.numpy())
        direct = render_rgb(scene.splats, path.T_world_cam[4], path.Ks(64, 48)[4], 64, 48)
        assert _psnr(video[4], direct) > 30.0


def test_render_size_keeps_the_aspect(out_dir):
    assert Render(out_dir).output_size(None) == (960, 540)
    from viewer.data import load_scene

    cams = load_scene(out_dir).cameras
    assert Render(out_dir).output_size(cams) == (64, 48)
    assert Render(out_dir, width=101).output_size(cams) == (100, 76)  # even, aspect 4:3
    assert Render(out_dir, height=30).output_size(cams) == (40, 30)
    assert Render(out_dir, trajectory="orbit").output_path() == out_dir / "render_orbit.mp4"
    # auto names the file by the path it chose
    assert Render(out_dir).output_path("arc") == out_dir / "render_arc.mp4"
    assert Render(out_dir / "splats.ply", trajectory="spiral").output_path() == \
        out_dir / "splats_spiral.mp4"


def test_render_errors_are_user_errors(out_dir, tmp_path):
    with pytest.raises(UserError, match="must end in .mp4"):
        Render(out_dir, out=tmp_path / "x.gif").run()
    with pytest.raises(UserError, match="at least two cameras"):
        Render(out_dir / "splats.ply", trajectory="interpolate", frames=4,
               out=tmp_path / "y.mp4").run()
    assert not (tmp_path / "y.mp4").exists()


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "viewer.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_render_in_process(out_dir, tmp_path, monkeypatch):
    from viewer.cli import main

    monkeypatch.setattr(sys, "argv", ["recon", "render", str(out_dir), "--frames", "3",
                                      "--out", str(tmp_path / "a.mp4"), "--trajectory",
                                      "spiral", "--quiet"])
    main()
    assert read_video_frames(tmp_path / "a.mp4")[0].shape[0] == 3


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path):
    """Subprocesses: exit status 2, one ``recon: error:`` line, no traceback. These fail
    before torch is imported, so they take about a second each."""
    text = tmp_path / "notes.txt"
    text.write_text("x")
    for args in (("render", str(tmp_path / "missing")), ("view", str(text), "--port", "0"),
                 ("view", str(tmp_path / "missing")),
                 ("render", str(tmp_path), "--out", str(tmp_path / "v.avi"))):
        bad = _cli(*args)
        assert bad.returncode == 2, bad.stderr
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("recon: error: "), bad.stderr
        assert "Traceback" not in bad.stderr


def test_cli_ply_without_3dgs_fields_exits_2(tmp_path, monkeypatch, capsys):
    """In process (the subprocess path is the same run_cli): one line, status 2."""
    from plyfile import PlyData, PlyElement

    from viewer.cli import main

    cloud = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"),
                               ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(cloud, "vertex")]).write(str(tmp_path / "cloud.ply"))
    for command in ("view", "render"):
        monkeypatch.setattr(sys, "argv", ["recon", command, str(tmp_path / "cloud.ply"),
                                          "--port" if command == "view" else "--frames",
                                          "0" if command == "view" else "2"])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "lacks the 3DGS properties" in lines[0], lines


def test_render_auto_names_the_path_it_chose(out_dir, capsys):
    """The default trajectory is chosen from the cameras (a ring all around: orbit), said in
    one line, and the default file is named by it."""
    out = Render(out_dir, frames=2, width=32).run()
    assert out == out_dir / "render_orbit.mp4" and out.is_file()
    err = capsys.readouterr().err
    assert "trajectory: orbit (chosen from the cameras' spread" in err
    out.unlink()
