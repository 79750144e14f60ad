"""The viewer in a real browser: headless Chromium (software WebGL) draws the splats.

The test starts the viewer on a tiny scene (400 green splats away from the origin, three
cameras), loads the page, waits until the scene is drawn and checks the pixels: the canvas
region differs from the background and its dominant colour is the scene's. It then hides
the splats and checks that the same test fails on what is left (so a page that draws
nothing cannot pass), flies to a camera as a frustum click does, and presses "Render this
view" to download the PNG rendered by our rasterizer.

Set SPARSEVIEW_VIEWER_SCREENSHOT=docs/viewer.png to keep the screenshot (the README's).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest

from viewer.browser import (
    HeadlessBrowser,
    dominant_color,
    find_chromium,
    pixel_shares,
    scene_region,
)

BROWSER = find_chromium()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="headless Chromium not available (apt-get install chromium "
    "chromium-driver; pip install selenium)")

BACKGROUND = (25, 25, 60)
SCENE_RGB = (0.25, 0.8, 0.3)
SCENE_COLOR = tuple(round(255 * c) for c in SCENE_RGB)


def _drawn(image: np.ndarray) -> bool:
    shares = pixel_shares(scene_region(image), BACKGROUND, SCENE_COLOR)
    return shares.background > 0.05 and shares.matching > 0.03


def _wait(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_splats_are_drawn_in_headless_chromium(helpers, tmp_path):
    from PIL import Image

    from viewer.data import ViewerScene
    from viewer.render import render_rgb
    from viewer.server import SceneViewer, browser_view_to_camera, start_server

    centre = (5.0, -3.0, 12.0)
    splats = helpers.make_splats(400, centre=centre, spread=0.25, color=SCENE_RGB,
                                 sigma=0.04, opacity=0.9)
    cams = helpers.ring_cameras(3, centre=centre, radius=1.5, arc_deg=60.0, start_deg=-30.0)
    server = start_server(port=0)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    try:
        viewer = SceneViewer(server, ViewerScene("browser test", splats=splats, cameras=cams),
                             background=BACKGROUND, render_height=96)
        with HeadlessBrowser(1024, 768, BROWSER, download_dir=downloads) as browser:
            browser.open(f"http://127.0.0.1:{server.get_port()}")
            image, drawn = browser.wait_for(_drawn, timeout_s=45.0)
            keep = os.environ.get("SPARSEVIEW_VIEWER_SCREENSHOT")
            if keep:  # for the README: without the software-WebGL notification
                browser.dismiss_notifications()
                time.sleep(0.5)
                Image.fromarray(browser.screenshot()).save(keep)
            shares = pixel_shares(scene_region(image), BACKGROUND, SCENE_COLOR)
            assert drawn, f"the splats were not drawn within 45 s: {shares}"
            # most drawn pixels are the scene's colour blended over the background (the
            # rest: thin orange frustum lines), and the strongest are the colour itself
            assert shares.matching > 0.6 * shares.drawn, shares
            dominant = dominant_color(scene_region(image), BACKGROUND)
            assert np.abs(dominant - np.array(SCENE_COLOR)).max() < 40, dominant
            assert browser.console_errors() == []

            # a frustum click flies the browser into that camera
            client = next(iter(server.get_clients().values()))
            viewer.fly_to_camera(client, 1)
            T = cams.T_world_cam[1].numpy()
            assert _wait(lambda: np.linalg.norm(client.camera.position - T[:3, 3]) < 1e-3)
            R_browser = viewer_rotation(client.camera.wxyz)
            assert float(R_browser[:, 2] @ T[:3, 2]) > 0.9999  # looking the same way
            assert float(R_browser[:, 1] @ T[:3, 1]) > 0.9999  # same roll
            fov = 2 * math.atan(0.5 * 48 / float(cams.K[1, 1, 1]))
            assert client.camera.fov == pytest.approx(fov, abs=1e-4)
            image, drawn = browser.wait_for(_drawn, timeout_s=20.0)
            assert drawn

            # "Render this view": the browser downloads our rasterizer's render of its view
            browser.click_button("Render this view")
            png = downloads / "render.png"
            assert _wait(lambda: png.is_file() and png.stat().st_size > 0, timeout=60)
            time.sleep(0.5)  # let Chromium finish renaming its .crdownload
            rendered = np.asarray(Image.open(png).convert("RGB"))
            cam = client.camera
            T_b, K_b, w, h = browser_view_to_camera(cam.wxyz, cam.position, cam.fov, cam.aspect,
                                                    96)
            expected = render_rgb(splats, T_b, K_b, w, h, tuple(c / 255 for c in BACKGROUND))
            assert rendered.shape == expected.shape == (96, w, 3)
            assert np.abs(rendered.astype(int) - expected.astype(int)).mean() < 2.0

            # the same pixel test fails once the splats are hidden: it tells a drawn scene
            # from an empty one
            viewer.gui_show_splats.value = False
            time.sleep(2.0)
            empty = browser.screenshot()
            assert not _drawn(empty), pixel_shares(scene_region(empty), BACKGROUND,
                                                   SCENE_COLOR)
    finally:
        server.stop()


def viewer_rotation(wxyz) -> np.ndarray:
    from viewer.server import wxyz_to_rotation

    return wxyz_to_rotation(np.asarray(wxyz))

