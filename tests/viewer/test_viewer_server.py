"""The viser scene and GUI without a browser: layers, toggles, updates, the initial view,
"render this view", busy ports; and the live training viewer."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.errors import UserError
from viewer.data import load_scene
from viewer.ports import check_port_free
from viewer.render import render_rgb
from viewer.server import SceneViewer, rotation_to_wxyz, start_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def busy_port():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    yield listener.getsockname()[1]
    listener.close()


@pytest.fixture
def server():
    srv = start_server(port=0)
    yield srv
    srv.stop()


def test_layers_gui_and_initial_view(out_dir, server):
    scene = load_scene(out_dir)
    viewer = SceneViewer(server, scene, background=(10, 20, 30))
    assert len(viewer._camera_handles) == 6
    assert viewer._splat_handle is not None and viewer._splat_handle.visible
    # the initial point cloud is there but off while splats are shown
    assert viewer._points_handle is not None and not viewer._points_handle.visible
    viewer.gui_show_points.value = True
    assert viewer._points_handle.visible
    viewer.gui_show_splats.value = False
    assert not viewer._splat_handle.visible
    viewer.gui_show_cameras.value = False
    assert viewer._camera_handles == []
    viewer.gui_show_cameras.value = True
    assert len(viewer._camera_handles) == 6
    # frustums sit at the cameras, rotated like them
    T = scene.cameras.T_world_cam.double().numpy()
    for i, handle in enumerate(viewer._camera_handles):
        np.testing.assert_allclose(handle.position, T[i, :3, 3], atol=1e-6)
        q = rotation_to_wxyz(T[i, :3, :3])
        assert abs(abs(float(np.dot(handle.wxyz, q))) - 1.0) < 1e-6
    # the cameras are level with up = -y: that is the up the viewer found
    np.testing.assert_allclose(viewer.up, [0.0, -1.0, 0.0], atol=1e-9)
    init = server.initial_camera
    np.testing.assert_allclose(init.look_at, viewer.sphere.centre)
    np.testing.assert_allclose(init.position, viewer.initial_pose()[:3, 3])
    assert init.near < np.linalg.norm(init.position - viewer.sphere.centre) - \
        viewer.sphere.radius
    assert init.far > np.linalg.norm(init.position - viewer.sphere.centre) + \
        viewer.sphere.radius
    stats = viewer.gui_stats.content
    assert "| Gaussians | 300 |" in stats and "| cameras | 6 |" in stats
    assert "31.25 dB" in stats
    assert viewer.background_float() == (10 / 255, 20 / 255, 30 / 255)


def test_render_this_view_renders_the_browser_camera(out_dir, server):
    """The browser sits exactly in camera 2: the render equals a direct render of it."""
    scene = load_scene(out_dir)
    viewer = SceneViewer(server, scene, background=(255, 255, 255))
    cams = scene.cameras
    T = cams.T_world_cam[2].double().numpy()
    K = cams.K[2].double().numpy()
    fov = 2 * math.atan(24 / K[1, 1])
    rgb = viewer.render_browser_view(rotation_to_wxyz(T[:3, :3]), T[:3, 3], fov, 64 / 48,
                                     height=48)
    direct = render_rgb(scene.splats, T, K, 64, 48, (1.0, 1.0, 1.0))
    assert rgb.shape == (48, 64, 3)
    assert np.abs(rgb.astype(int) - direct.astype(int)).max() <= 1
    # the splat-scale slider is the 3DGS scaling modifier: smaller splats cover less
    viewer.gui_splat_scale.value = 0.3
    small = viewer.render_browser_view(rotation_to_wxyz(T[:3, :3]), T[:3, 3], fov, 64 / 48,
                                       height=48)
    assert (small.min(-1) < 250).sum() < (rgb.min(-1) < 250).sum()


def test_updates_replace_splats_and_move_frustums(out_dir, server, helpers):
    scene = load_scene(out_dir)
    viewer = SceneViewer(server, scene)
    handles = list(viewer._camera_handles)
    moved = scene.cameras[:]
    T = moved.T_world_cam.clone()
    T[:, :3, 3] += torch.tensor([0.1, 0.2, 0.3])
    moved.T_world_cam = T
    viewer.set_cameras(moved)
    assert viewer._camera_handles == handles  # moved in place, not re-sent with photos
    np.testing.assert_allclose(handles[3].position, T[3, :3, 3].numpy(), atol=1e-6)
    viewer.set_splats(helpers.make_splats(42))
    assert "| Gaussians | 42 |" in viewer.gui_stats.content


def test_busy_port_is_a_user_error(busy_port):
    with pytest.raises(UserError, match=f"port {busy_port} on 127.0.0.1 is busy"):
        check_port_free("127.0.0.1", busy_port)
    with pytest.raises(UserError, match="is busy"):
        start_server(port=busy_port)
    with pytest.raises(UserError, match="not a port number"):
        check_port_free("127.0.0.1", 70000)


def test_cli_view_on_a_busy_port_exits_2(out_dir, busy_port):
    result = subprocess.run([sys.executable, "-m", "viewer.cli", "view", str(out_dir),
                             "--port", str(busy_port)], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"recon: error: port {busy_port} on 127.0.0.1 is busy (Address already "
                     "in use); stop the other viewer or pass --port with a free port."]


def test_view_serves_for_the_given_seconds(out_dir):
    from viewer.cli import View

    t0 = time.monotonic()
    View(out_dir, port=0, seconds=1.0).run()
    assert 1.0 <= time.monotonic() - t0 < 30.0


def test_live_viewer_takes_due_steps_and_copies_the_state(helpers):
    from viewer.live import LiveTrainingViewer

    live = LiveTrainingViewer(port=0, every=5, min_interval_s=0.0, verbose=False)
    try:
        splats = helpers.make_splats(30)
        cams = helpers.ring_cameras(3)
        taken = [live.update(step, splats, cams) for step in range(12)]
        assert taken == [s % 5 == 0 for s in range(12)]
        assert live.wait(timeout=30)
        assert live.error is None
        shown = live.viewer.scene.splats
        splats.means += 100.0  # the optimiser changes tensors in place: the view has a copy
        assert float(shown.means.abs().max()) < 10.0
        assert live.viewer.scene.stats["iteration"] == "10"
        assert len(live.viewer._camera_handles) == 3
        # a newer state replaces the shown one (including a grown scene)
        live.update(15, helpers.make_splats(55), cams)
        assert live.wait(timeout=30)
        assert live.viewer.scene.splats.num_gaussians == 55
        assert "| Gaussians | 55 |" in live.viewer.gui_stats.content
    finally:
        live.close()
    assert not live._thread.is_alive()


def test_live_viewer_rate_limit(helpers):
    from viewer.live import LiveTrainingViewer

    live = LiveTrainingViewer(port=0, every=1, min_interval_s=3600.0, verbose=False)
    try:
        splats = helpers.make_splats(10)
        assert live.due(0) and live.update(0, splats) is True
        # due by the step count, but too soon after the last one
        assert not live.due(1) and live.update(1, splats) is False
    finally:
        live.close()
