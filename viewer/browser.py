"""Look at the viewer in a real browser: headless Chromium with software WebGL.

Used by the browser test and by ``python -m viewer.browser`` (the README screenshot).
Debian's ``chromium`` + ``chromium-driver`` draw viser's splats through SwiftShader; no
GPU, display or browser download is needed. selenium drives the browser.

:func:`pixel_shares` is the pixel check: the share of a screenshot region whose colour
differs from the background and points from the background towards the scene's colour
(splats are alpha-blended over the background, so their pixels lie on that segment).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--use-gl=angle",
    "--enable-unsafe-swiftshader", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
)
HARMLESS_CONSOLE_ERRORS = ("computeBoundingSphere",)  # viser logs it for splats


@dataclass(frozen=True)
class BrowserPaths:
    binary: str
    driver: str


def find_chromium() -> BrowserPaths | None:
    """Chromium and its driver (Debian paths first, then ``PATH``), or ``None``."""
    binary = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "",
                               shutil.which("chromium-browser") or "")
                   if p and os.access(p, os.X_OK)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        return None
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    return BrowserPaths(binary, driver)


class HeadlessBrowser:
    """A headless Chromium page (use as a context manager)."""

    def __init__(self, width: int = 1024, height: int = 768,
                 paths: BrowserPaths | None = None,
                 download_dir: str | os.PathLike | None = None) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        paths = paths or find_chromium()
        if paths is None:
            raise RuntimeError("headless Chromium is not available (apt-get install chromium "
                               "chromium-driver; pip install selenium)")
        self._profile = tempfile.mkdtemp(prefix="sparseview-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = paths.binary
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self._profile}")
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        if download_dir is not None:
            options.add_experimental_option("prefs", {
                "download.default_directory": str(Path(download_dir).resolve()),
                "download.prompt_for_download": False})
        self.driver = webdriver.Chrome(service=Service(paths.driver), options=options)
        if download_dir is not None:
            self.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {
                "behavior": "allow", "downloadPath": str(Path(download_dir).resolve())})
        self.driver.set_page_load_timeout(60)
        # --window-size sizes the window, not the page: make the page itself W x H
        inner = self.driver.execute_script("return [window.innerWidth, window.innerHeight];")
        self.driver.set_window_size(width + (width - inner[0]), height + (height - inner[1]))

    def __enter__(self) -> HeadlessBrowser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def screenshot(self) -> np.ndarray:
        """The page as ``[H, W, 3]`` uint8."""
        import io

        from PIL import Image

        png = self.driver.get_screenshot_as_png()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def wait_for(self, ready: Callable[[np.ndarray], bool], timeout_s: float = 45.0,
                 interval_s: float = 0.5) -> tuple[np.ndarray, bool]:
        """Screenshot every ``interval_s`` until ``ready(image)``; ``(last image, ready)``."""
        deadline = time.monotonic() + timeout_s
        while True:
            image = self.screenshot()
            if ready(image):
                return image, True
            if time.monotonic() > deadline:
                return image, False
            time.sleep(interval_s)

    def dismiss_notifications(self) -> None:
        """Close viser's notifications (the software-WebGL warning) on the page."""
        self.driver.execute_script(
            "document.querySelectorAll('.mantine-Notification-closeButton')"
            ".forEach(b => b.click());")

    def click_button(self, label: str) -> None:
        """Click the GUI button whose text is ``label``."""
        from selenium.webdriver.common.by import By

        button = self.driver.find_element(
            By.XPATH, f"//button[.//text()[normalize-space()='{label}']]")
        button.click()

    def console_errors(self) -> list[str]:
        """SEVERE console messages, without the ones viser always logs."""
        return [entry["message"] for entry in self.driver.get_log("browser")
                if entry["level"] == "SEVERE"
                and not any(h in entry["message"] for h in HARMLESS_CONSOLE_ERRORS)]


def scene_region(image: np.ndarray) -> np.ndarray:
    """The part of a viewer screenshot that only the 3D canvas covers.

    viser puts its control panel on the right (about 320 px), notifications top-left and
    the axes gizmo bottom-left; the region keeps x in [10%, W - 360 px] and y in
    [25%, 92%] of the page.
    """
    h, w = image.shape[:2]
    x0, x1 = int(0.10 * w), max(int(0.10 * w) + 1, w - 360)
    y0, y1 = int(0.25 * h), int(0.92 * h)
    return image[y0:y1, x0:x1]


@dataclass(frozen=True)
class PixelShares:
    """Shares of a region's pixels: ``background`` (within ``tolerance`` of the
    background colour), ``drawn`` (farther than ``min_distance`` from it) and ``matching``
    (drawn, and offset from the background towards the scene's colour)."""

    background: float
    drawn: float
    matching: float


def pixel_shares(region: np.ndarray, background: tuple[int, int, int],
                 scene_color: tuple[int, int, int], tolerance: float = 12.0,
                 min_distance: float = 30.0, min_cosine: float = 0.9) -> PixelShares:
    """Classify the pixels of ``region [h, w, 3]`` (see :class:`PixelShares`).

    Splats are alpha-blended over the background, so their pixels lie on the segment from
    the background to the scene colour: the cosine between ``pixel - background`` and
    ``scene_color - background`` is near 1 whatever the opacity.
    """
    pixels = region.reshape(-1, 3).astype(np.float64)
    offset = pixels - np.asarray(background, dtype=np.float64)
    distance = np.linalg.norm(offset, axis=1)
    drawn = distance > min_distance
    target = np.asarray(scene_color, dtype=np.float64) - np.asarray(background, np.float64)
    target /= np.linalg.norm(target)
    cosine = (offset @ target) / np.maximum(distance, 1e-9)
    return PixelShares(background=float((distance <= tolerance).mean()),
                       drawn=float(drawn.mean()),
                       matching=float((drawn & (cosine > min_cosine)).mean()))


def dominant_color(region: np.ndarray, background: tuple[int, int, int],
                   min_distance: float = 30.0) -> np.ndarray | None:
    """Median colour ``[3]`` of the pixels that differ most from the background (the top
    quarter by distance among those farther than ``min_distance``), or ``None``."""
    pixels = region.reshape(-1, 3).astype(np.float64)
    distance = np.linalg.norm(pixels - np.asarray(background, np.float64), axis=1)
    drawn = pixels[distance > min_distance]
    if len(drawn) == 0:
        return None
    d = distance[distance > min_distance]
    strongest = drawn[d >= np.quantile(d, 0.75)]
    return np.median(strongest, axis=0)


def main() -> None:
    """``python -m viewer.browser PATH --out docs/viewer.png``: screenshot the viewer."""
    import argparse

    from geometry.errors import run_cli

    parser = argparse.ArgumentParser(prog="python -m viewer.browser",
                                     description="Screenshot the viewer in headless Chromium.")
    parser.add_argument("path", type=Path,
                        help="OUT folder of recon fit, a 3DGS .ply or a nuScenes dataroot")
    parser.add_argument("--out", type=Path, default=Path("docs/viewer.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--wait", type=float, default=8.0,
                        help="seconds to let the page draw after it loads")
    args = parser.parse_args()

    def _main() -> None:
        from PIL import Image

        from geometry.io.atomic import atomic_path
        from viewer.cli import View
        from viewer.server import SceneViewer, start_server

        scene = View(args.path).load()  # OUT folder, PLY, or nuScenes dataroot
        server = start_server(port=0, title=scene.title)
        try:
            SceneViewer(server, scene)
            with HeadlessBrowser(args.width, args.height) as browser:
                browser.open(f"http://127.0.0.1:{server.get_port()}")
                time.sleep(args.wait)
                browser.dismiss_notifications()
                time.sleep(0.5)
                image = browser.screenshot()
        finally:
            server.stop()
        with atomic_path(args.out) as tmp:
            Image.fromarray(image).save(tmp)
        print(f"wrote {args.out}")

    run_cli(_main, prog="python -m viewer.browser")


if __name__ == "__main__":
    main()
