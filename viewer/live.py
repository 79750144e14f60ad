"""The live view of a running optimisation (``recon fit ... --view``).

The trainer calls :meth:`LiveTrainingViewer.update` every iteration. Only every ``every``
iterations (and at most once per ``min_interval_s``) it copies the splats and cameras,
which takes milliseconds; converting them and sending them to the browsers happens in a
background thread, which always takes the newest copy and drops older ones, so a slow
browser never holds the optimisation back. ``tests/benchmarks/bench_viewer_live.py``
measures the slowdown of a training loop that calls ``rasterization``.

Usage in a trainer::

    viewer = LiveTrainingViewer(port=8080, every=100) if config.view else None
    for step in range(iterations):
        ...  # optimisation step
        if viewer is not None and viewer.due(step):
            viewer.update(step, scene, current_cameras())
    if viewer is not None:
        viewer.keep_open()  # or close()
"""

from __future__ import annotations

import dataclasses
import threading
import time

from rich.console import Console

from viewer.data import ViewerScene


def _snapshot_splats(scene):
    """A detached CPU copy of a GaussianScene (the optimiser changes it in place)."""
    from reconstruction.gaussians import GaussianScene

    return GaussianScene(**{
        f.name: getattr(scene, f.name).detach().to("cpu", copy=True)
        for f in dataclasses.fields(scene)
    })


def _snapshot_cameras(cameras):
    if cameras is None:
        return None
    from geometry.cameras import Cameras

    return Cameras(
        K=cameras.K.detach().to("cpu", copy=True),
        T_world_cam=cameras.T_world_cam.detach().to("cpu", copy=True),
        width=cameras.width.detach().to("cpu", copy=True),
        height=cameras.height.detach().to("cpu", copy=True),
        dist=None if cameras.dist is None else cameras.dist.detach().to("cpu", copy=True),
        image_paths=None if cameras.image_paths is None else list(cameras.image_paths),
        names=None if cameras.names is None else list(cameras.names),
    )


class LiveTrainingViewer:
    """A browser view of splats and cameras that a training loop refreshes.

    Args:
        port: port of the viewer (0: any free port; see :attr:`port`).
        host: address to serve on (``0.0.0.0`` to reach it from other machines).
        every: refresh every ``every`` steps (step 0 is always shown).
        min_interval_s: and at most once per this many seconds.
        title: shown in the panel.
        verbose: print the URL once.

    Raises:
        UserError: the port is busy (see :func:`viewer.server.start_server`).
    """

    def __init__(self, port: int = 8080, host: str = "127.0.0.1", every: int = 100,
                 min_interval_s: float = 1.0, title: str = "recon fit (live)",
                 verbose: bool = True) -> None:
        from viewer.server import start_server

        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = int(every)
        self.min_interval_s = float(min_interval_s)
        self.title = title
        self.server = start_server(host, port, title=title)
        self.port = self.server.get_port()
        self.viewer = None  # viewer.server.SceneViewer, built on the first update
        self.updates_sent = 0
        self.error: BaseException | None = None
        self._pending = None
        self._last_submit = -float("inf")
        self._closed = False
        self._cond = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._worker, name="sparseview-live-viewer",
                                        daemon=True)
        self._thread.start()
        if verbose:
            url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            Console(stderr=True, highlight=False).print(
                f"[bold]live viewer[/bold]: http://{url_host}:{self.port}")

    def due(self, step: int) -> bool:
        """Whether :meth:`update` would take ``step`` (so callers can skip building its
        arguments, e.g. the current cameras, on the other steps)."""
        return (not self._closed and step % self.every == 0
                and time.monotonic() - self._last_submit >= self.min_interval_s)

    def update(self, step: int, scene, cameras=None, force: bool = False) -> bool:
        """Offer the current state; returns whether it was taken (due and not too soon,
        or ``force``: the final state).

        Args:
            step: the iteration number.
            scene: the :class:`~reconstruction.gaussians.GaussianScene` being optimised
                (any device; copied to the CPU).
            cameras: the current :class:`~geometry.cameras.Cameras` (1-D batch) or
                ``None``; their ``image_paths`` become the frustums' photos.
        """
        if self._closed or not (force or self.due(step)):
            return False
        self._last_submit = time.monotonic()
        snapshot = (int(step), _snapshot_splats(scene), _snapshot_cameras(cameras))
        with self._cond:
            self._pending = snapshot
            self._idle.clear()
            self._cond.notify()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the last offered state is on the server (tests, final frame)."""
        return self._idle.wait(timeout)

    def _worker(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None and self._closed:
                    return
                step, splats, cameras = self._pending
                self._pending = None
            try:
                self._show(step, splats, cameras)
            except Exception as err:  # a viewer error must not kill the training
                self.error = err
            finally:
                self.updates_sent += 1
                with self._cond:
                    if self._pending is None:
                        self._idle.set()

    def _show(self, step: int, splats, cameras) -> None:
        from viewer.server import SceneViewer

        if self.viewer is None:
            scene = ViewerScene(title=self.title, splats=splats, cameras=cameras,
                                stats={"iteration": str(step)})
            self.viewer = SceneViewer(self.server, scene)
            return
        self.viewer.scene.stats["iteration"] = str(step)
        if cameras is not None:
            self.viewer.set_cameras(cameras)
        self.viewer.set_splats(splats)

    def keep_open(self, seconds: float | None = None) -> None:
        """Keep serving the last state until Ctrl-C (or for ``seconds``), then close.

        For the end of ``recon fit --view``: the outputs are written, the user looks on.
        """
        self.wait(timeout=30.0)
        Console(stderr=True, highlight=False).print(
            f"[bold]live viewer[/bold]: training done; still serving on port {self.port} "
            "(Ctrl-C to quit)")
        from viewer.server import wait_for_ctrl_c

        try:
            wait_for_ctrl_c(seconds)
        finally:
            self.close()

    def close(self) -> None:
        """Show the last offered state, then stop the server."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30.0)
        self.server.stop()
