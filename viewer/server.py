"""The viser scene and its GUI: splats, camera frustums with photos, points, boxes.

:class:`SceneViewer` fills a :class:`viser.ViserServer` with the layers of a
:class:`~viewer.data.ViewerScene` and a control panel:

- Scene: statistics (Gaussians, SH degree, extent, cameras, points, boxes, metrics).
- Layers: show/hide splats, cameras, photos on the frustums, points, each box layer.
- Appearance: splat scale (3DGS "scaling modifier"), point size, background colour.
- Render: "Render this view" renders the browser's current view with sparseview's
  rasterizer (full SH colour) and sends the PNG to that browser as a download.

Clicking a frustum flies that browser's camera into the photo's pose and field of view.
The first view frames the whole scene (:mod:`viewer.framing`), whatever its position and
scale; near/far planes and zoom limits follow the scene's size.

viser follows the OpenCV camera convention like the rest of sparseview, so poses go in
unchanged (``T_world_cam``: rotation as ``wxyz``, centre as ``position``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from geometry.errors import UserError
from viewer.data import BOX_EDGES, ViewerScene, load_thumbnail
from viewer.framing import (
    SceneSphere,
    clip_planes,
    estimate_up,
    initial_view,
    scene_sphere,
)
from viewer.ports import check_port_free

if TYPE_CHECKING:
    import viser

INITIAL_FOV_Y = math.radians(60.0)
CAMERA_COLOR = (255, 140, 0)
SPLAT_OPACITY_FLOOR = 1.0 / 255.0  # viser stores opacity in 8 bits


# ------------------------------------------------------------------------------ conversions


def splats_for_viser(splats, scale_modifier: float = 1.0) -> dict[str, np.ndarray]:
    """Arrays for ``viser.SceneApi.add_gaussian_splats``.

    Returns:
        ``centers [N, 3]``, ``covariances [N, 3, 3]`` (``R diag(s^2) R^T`` with the scales
        times ``scale_modifier``), ``rgbs [N, 3]`` (the degree-0 SH colour, as the browser
        draws no view dependence) and ``opacities [N, 1]``, all float32.
    """
    from geometry.so3 import quat_normalize, quat_to_matrix
    from reconstruction.splatting.sh import SH_C0

    with torch.no_grad():
        means = splats.means.detach().cpu().float()
        R = quat_to_matrix(quat_normalize(splats.quats.detach().cpu().float()))  # [N, 3, 3]
        scales = splats.scales.detach().cpu().float() * float(scale_modifier)
        M = R * scales[:, None, :]
        cov = M @ M.transpose(1, 2)
        rgb = (0.5 + SH_C0 * splats.sh0.detach().cpu().float()[:, 0, :]).clamp(0.0, 1.0)
        opacity = splats.opacities.detach().cpu().float()[:, None]
    return {"centers": means.numpy(), "covariances": cov.numpy(), "rgbs": rgb.numpy(),
            "opacities": opacity.numpy()}


def rotation_to_wxyz(R: np.ndarray) -> np.ndarray:
    """``wxyz [..., 4]`` of rotation matrices ``R [..., 3, 3]``."""
    from geometry.so3 import matrix_to_quat

    return matrix_to_quat(torch.as_tensor(np.asarray(R, dtype=np.float64))).numpy()


def wxyz_to_rotation(wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` of unit quaternions ``wxyz [..., 4]``."""
    from geometry.so3 import quat_normalize, quat_to_matrix

    q = torch.as_tensor(np.asarray(wxyz, dtype=np.float64))
    return quat_to_matrix(quat_normalize(q)).numpy()


def browser_view_to_camera(wxyz: np.ndarray, position: np.ndarray, fov_y: float,
                           aspect: float, height: int) -> tuple[np.ndarray, np.ndarray, int,
                                                                int]:
    """A browser camera (viser: OpenCV ``wxyz``/``position``, vertical ``fov_y``, ``aspect``
    = W/H) as ``(T_world_cam [4, 4], K [3, 3], width, height)`` at ``height`` pixels."""
    height = int(height)
    width = max(2, int(round(height * float(aspect))))
    T = np.eye(4)
    T[:3, :3] = wxyz_to_rotation(wxyz)
    T[:3, 3] = np.asarray(position, dtype=np.float64)
    fy = 0.5 * height / math.tan(0.5 * float(fov_y))
    K = np.array([[fy, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]])
    return T, K, width, height


def camera_fov_y(K: np.ndarray, height: float) -> float:
    """Vertical field of view (radians) of intrinsics ``K [3, 3]`` for an image ``height``."""
    return 2.0 * math.atan(0.5 * float(height) / float(K[1, 1]))


# ------------------------------------------------------------------------------- the server

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def _split_host_port(authority: str) -> tuple[str, int | None]:
    """``("host", port)`` of a Host header or an origin's authority (``[v6]:port`` too);
    the port is ``None`` when absent or not a number."""
    authority = authority.strip().lower()
    if authority.startswith("["):  # [::1]:8080
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = authority.rpartition(":") if authority.count(":") == 1 else (
            authority, "", "")
    return host, (int(port) if port.isdigit() else None)


def allowed_request(host_header: str | None, origin: str | None, bound_host: str,
                    local_address: tuple[str, int]) -> bool:
    """Whether a request to the viewer comes from the viewer's own pages.

    A web page on another origin may open a WebSocket to 127.0.0.1 (browsers do not
    apply the same-origin policy to WebSockets), and a DNS name rebound to 127.0.0.1
    looks local; so both the ``Host`` header and, when a browser sends one, the
    ``Origin`` must name this server: a loopback name (any port, so SSH tunnels work),
    or the bound host (for a wildcard bind: the address the client connected to, or this
    machine's host name) with the served port.

    Args:
        host_header: the request's ``Host`` header.
        origin: the request's ``Origin`` header (``scheme://host[:port]``), if any.
        bound_host: the ``--host`` the server was started with.
        local_address: ``(ip, port)`` of the server side of the connection.
    """
    import socket

    local_ip, local_port = str(local_address[0]).lower(), int(local_address[1])
    own = {bound_host.lower(), local_ip} - set(WILDCARD_HOSTS)
    if bound_host in WILDCARD_HOSTS:
        own |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def ok(authority: str, default_port: int | None) -> bool:
        host, port = _split_host_port(authority)
        if host in LOOPBACK_NAMES:
            return True
        return host in own and (port if port is not None else default_port) == local_port

    if host_header is None or not ok(host_header, 80):
        return False
    if origin is None:  # not a browser (browsers always send Origin with a WebSocket)
        return True
    scheme, sep, authority = origin.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return False  # "null" (a sandboxed or file:// page) included
    return ok(authority.rstrip("/"), 443 if scheme.lower() == "https" else 80)


class _QuietHandshakeFilter(logging.Filter):
    """Drop websockets' traceback for a client that closed before sending a request (a
    port probe, a health check, a browser's speculative connect); keep every other error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() != "opening handshake failed" or not record.exc_info:
            return True
        exc = record.exc_info[1]
        while exc is not None:
            if isinstance(exc, (EOFError, ConnectionResetError)):
                return False
            exc = exc.__cause__
        return True


_WS_LOGGER = logging.getLogger("viewer.websockets")
_WS_LOGGER.addFilter(_QuietHandshakeFilter())


class _Namespace:
    """A module stand-in: the given attributes, everything else from ``module``."""

    def __init__(self, module, **overrides) -> None:
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def _guard_viser_websockets(bound_host: str) -> None:
    """Make the next viser server check the Origin/Host of every request (403 otherwise)
    and log through a logger that keeps bare connect/close quiet.

    viser 1.1 starts its server with ``websockets.asyncio.server.serve(...,
    process_request=...)`` and does neither check; this swaps the ``websockets`` name its
    server module sees for one whose ``serve`` wraps ``process_request``, leaving the real
    ``websockets`` module (and every other user of it) untouched.
    """
    import http

    import websockets
    import websockets.asyncio.server as ws_server
    from viser.infra import _infra

    real_serve = ws_server.serve

    def serve(handler, host, port, *args, process_request=None, **kwargs):
        def guarded(connection, request):
            hosts = request.headers.get_all("Host")
            origins = request.headers.get_all("Origin")
            if len(hosts) != 1 or len(origins) > 1 or not allowed_request(
                    hosts[0], origins[0] if origins else None, bound_host,
                    connection.local_address[:2]):
                return connection.respond(http.HTTPStatus.FORBIDDEN,
                                          "sparseview viewer: foreign origin refused\n")
            return None if process_request is None else process_request(connection, request)

        kwargs.setdefault("logger", _WS_LOGGER)
        return real_serve(handler, host, port, *args, process_request=guarded, **kwargs)

    server_ns = _Namespace(ws_server, serve=serve)
    _infra.websockets = _Namespace(websockets,
                                   asyncio=_Namespace(websockets.asyncio, server=server_ns))


def start_server(host: str = "127.0.0.1", port: int = 8080, title: str = "sparseview",
                 verbose: bool = False) -> viser.ViserServer:
    """A viser server on exactly ``host:port`` (``port=0``: any free port).

    Raises:
        UserError: the port is busy or the host is not an address of this machine.
    """
    import viser

    check_port_free(host, port)
    _guard_viser_websockets(host)
    try:
        server = viser.ViserServer(host=host, port=port, label=title, verbose=verbose)
    except OSError as err:
        raise UserError(f"cannot serve on {host}:{port} ({err}); pass another --host or "
                        "--port.") from None
    if port != 0 and server.get_port() != port:  # lost a race for the port
        server.stop()
        raise UserError(f"port {port} on {host} is busy; stop the other viewer or pass "
                        "--port with a free port.")
    server.gui.configure_theme(show_share_button=False, control_width="medium")
    return server


# ----------------------------------------------------------------------------- the viewer


def _fmt_count(n: int) -> str:
    return f"{n:,}"


class SceneViewer:
    """The layers of a :class:`ViewerScene` and their GUI on a viser server.

    Args:
        server: from :func:`start_server`.
        scene: what to show.
        up: world up ``[3]``; default: ``scene.up``, else estimated from the cameras
            (-y without cameras, the COLMAP/3DGS convention).
        render_height: default height in pixels of "Render this view".
        background: initial background colour, RGB 0-255.

    Updates (:meth:`set_splats`, :meth:`set_cameras`) may come from another thread.
    """

    def __init__(self, server: viser.ViserServer, scene: ViewerScene,
                 up: np.ndarray | None = None, render_height: int = 720,
                 background: tuple[int, int, int] = (255, 255, 255)) -> None:
        self.server = server
        self.scene = scene
        self._lock = threading.RLock()
        self._thumbnails: dict[str, np.ndarray | None] = {}
        self._camera_handles: list = []
        self._splat_handle = None
        self._points_handle = None
        self._box_handles: dict[str, object] = {}
        self.last_render: np.ndarray | None = None
        if up is None:
            up = scene.up
        if up is None:
            T = None if scene.cameras is None else scene.cameras.T_world_cam.detach().cpu()
            up = estimate_up(None if T is None else T.double().numpy())
        self.up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
        self.sphere = self._compute_sphere()

        server.scene.set_up_direction(tuple(self.up))
        server.scene.world_axes.visible = False
        self._build_gui(render_height, background)
        self._draw_splats()
        self._draw_cameras()
        self._draw_points()
        self._draw_boxes()
        self._update_stats()
        self.frame_scene()
        server.on_client_connect(self._on_connect)

    # ------------------------------------------------------------------------- framing

    def _camera_centres(self) -> np.ndarray | None:
        if self.scene.cameras is None:
            return None
        return self.scene.cameras.T_world_cam.detach().cpu().double().numpy()[:, :3, 3]

    def _compute_sphere(self) -> SceneSphere:
        return scene_sphere(self.scene.content_points(), self._camera_centres())

    def initial_pose(self) -> np.ndarray:
        """``T_world_cam [4, 4]`` of the first view (frames the scene sphere)."""
        return initial_view(self.sphere, self.up, INITIAL_FOV_Y, self._camera_centres(),
                            aspect=1.0)

    def frame_scene(self) -> None:
        """Set the initial (and "reset view") camera so the whole scene is in view."""
        T = self.initial_pose()
        eye = T[:3, 3]
        near, far = clip_planes(self.sphere, eye)
        cam = self.server.initial_camera
        cam.fov = INITIAL_FOV_Y
        cam.near = near
        cam.far = far
        cam.position = tuple(eye)
        cam.look_at = tuple(self.sphere.centre)
        cam.up = tuple(self.up)

    def _on_connect(self, client) -> None:
        # zoom limits are per browser; fit them to the scene's size
        r = self.sphere.radius
        try:
            client.camera.max_orbit_distance = max(100.0 * r, 1.0)
            client.camera.min_orbit_distance = min(1e-3 * r, 0.01)
        except (AssertionError, ValueError):
            pass

    # ----------------------------------------------------------------------------- GUI

    def _build_gui(self, render_height: int, background: tuple[int, int, int]) -> None:
        gui = self.server.gui
        with gui.add_folder("Scene"):
            self.gui_stats = gui.add_markdown("")
        with gui.add_folder("Layers"):
            self.gui_show_splats = gui.add_checkbox("Splats", True,
                                                    disabled=self.scene.splats is None)
            self.gui_show_cameras = gui.add_checkbox("Cameras", True,
                                                     disabled=self.scene.cameras is None)
            self.gui_show_photos = gui.add_checkbox("Photos on cameras", True,
                                                    disabled=self.scene.cameras is None)
            has_points = self.scene.points_world is not None
            self.gui_show_points = gui.add_checkbox(
                "Points", has_points and self.scene.splats is None, disabled=not has_points)
            self.gui_show_boxes = {
                boxes.name: gui.add_checkbox(f"Boxes: {boxes.name}", True)
                for boxes in self.scene.boxes
            }
        with gui.add_folder("Appearance"):
            self.gui_splat_scale = gui.add_slider("Splat scale", min=0.05, max=2.0, step=0.05,
                                                  initial_value=1.0)
            self.gui_point_size = gui.add_slider("Point size", min=0.1, max=5.0, step=0.1,
                                                 initial_value=1.0)
            self.gui_background = gui.add_rgb("Background", tuple(background))
        with gui.add_folder("Render"):
            self.gui_render_height = gui.add_number("Height (px)", render_height, min=16,
                                                    max=4320, step=1)
            self.gui_render = gui.add_button("Render this view",
                                             disabled=self.scene.splats is None)

        self.gui_show_splats.on_update(lambda _: self._set_visible(self._splat_handle,
                                                                   self.gui_show_splats.value))
        self.gui_show_cameras.on_update(lambda _: self._draw_cameras())
        self.gui_show_photos.on_update(lambda _: self._draw_cameras())
        self.gui_show_points.on_update(lambda _: self._set_visible(self._points_handle,
                                                                   self.gui_show_points.value))
        for name, box in self.gui_show_boxes.items():
            box.on_update(lambda _, name=name, box=box: self._set_visible(
                self._box_handles.get(name), box.value))
        self.gui_splat_scale.on_update(lambda _: self._draw_splats())
        self.gui_point_size.on_update(lambda _: self._draw_points())
        self.gui_background.on_update(lambda _: self._draw_background())
        self.gui_render.on_click(self._on_render_click)
        self._draw_background()

    @staticmethod
    def _set_visible(handle, visible: bool) -> None:
        if handle is not None:
            handle.visible = bool(visible)

    def _draw_background(self) -> None:
        colour = np.asarray(self.gui_background.value, dtype=np.uint8)
        self.server.scene.set_background_image(np.broadcast_to(colour, (4, 4, 3)).copy(),
                                               format="png")

    def background_float(self) -> tuple[float, float, float]:
        """The background colour in [0, 1] (for renders)."""
        r, g, b = self.gui_background.value
        return (r / 255.0, g / 255.0, b / 255.0)

    def _update_stats(self) -> None:
        s = self.scene
        rows: list[tuple[str, str]] = []
        if s.splats is not None:
            rows.append(("Gaussians", _fmt_count(s.splats.num_gaussians)))
            rows.append(("SH degree", str(s.splats.sh_degree)))
        if s.cameras is not None:
            rows.append(("cameras", str(len(s.cameras))))
        if s.points_world is not None:
            rows.append(("points", _fmt_count(len(s.points_world))))
        for boxes in s.boxes:
            rows.append((f"boxes ({boxes.name})", str(len(boxes))))
        content = s.content_points()
        if content is not None:
            from viewer.framing import robust_bounds

            lo, hi = robust_bounds(content)
            ext = hi - lo
            rows.append(("extent", f"{ext[0]:.3g} x {ext[1]:.3g} x {ext[2]:.3g}"))
            rows.append(("centre", ", ".join(f"{v:.3g}" for v in 0.5 * (lo + hi))))
        rows.extend(s.stats.items())
        table = "\n".join(f"| {k} | {v} |" for k, v in rows)
        self.gui_stats.content = f"**{s.title}**\n\n| | |\n|---|---|\n{table}\n"

    # -------------------------------------------------------------------------- layers

    def _draw_splats(self) -> None:
        with self._lock:
            splats = self.scene.splats
            if splats is None or splats.num_gaussians == 0:
                if self._splat_handle is not None:
                    self._splat_handle.remove()
                    self._splat_handle = None
                return
            arrays = splats_for_viser(splats, self.gui_splat_scale.value)
            self._splat_handle = self.server.scene.add_gaussian_splats(
                "/splats", **arrays, visible=self.gui_show_splats.value)

    def _frustum_scale(self) -> float:
        centres = self._camera_centres()
        r = self.sphere.radius
        if centres is None or len(centres) < 2:
            return 0.1 * r
        d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        spacing = float(np.median(d.min(axis=1)))
        return float(np.clip(0.5 * spacing, 0.02 * r, 0.15 * r))

    def _thumbnail(self, path: str | None) -> np.ndarray | None:
        if path is None:
            return None
        if path not in self._thumbnails:
            self._thumbnails[path] = load_thumbnail(path)
        return self._thumbnails[path]

    def _draw_cameras(self) -> None:
        with self._lock:
            for handle in self._camera_handles:
                handle.remove()
            self._camera_handles = []
            cams = self.scene.cameras
            if cams is None or not self.gui_show_cameras.value:
                return
            T = cams.T_world_cam.detach().cpu().double().numpy()
            K = cams.K.detach().cpu().double().numpy()
            widths = cams.width.cpu().numpy()
            heights = cams.height.cpu().numpy()
            wxyz = rotation_to_wxyz(T[:, :3, :3])
            scale = self._frustum_scale()
            paths = cams.image_paths or [None] * len(cams)
            for i in range(len(cams)):
                image = self._thumbnail(paths[i]) if self.gui_show_photos.value else None
                handle = self.server.scene.add_camera_frustum(
                    f"/cameras/{i:04d}",
                    fov=camera_fov_y(K[i], heights[i]),
                    aspect=float(widths[i]) / float(heights[i]),
                    scale=scale,
                    thickness=0.03 * scale,
                    color=CAMERA_COLOR,
                    image=image,
                    wxyz=wxyz[i],
                    position=T[i, :3, 3],
                )
                handle.on_click(lambda event, i=i: self.fly_to_camera(event.client, i))
                self._camera_handles.append(handle)

    def fly_to_camera(self, client, index: int) -> None:
        """Move ``client``'s view into camera ``index``: its centre, direction, roll, fov."""
        cams = self.scene.cameras
        if cams is None or not 0 <= index < len(cams):
            return
        T = cams.T_world_cam[index].detach().cpu().double().numpy()
        K = cams.K[index].detach().cpu().double().numpy()
        height = float(cams.height[index])
        centre, forward, down = T[:3, 3], T[:3, 2], T[:3, 1]
        depth = max(float((self.sphere.centre - centre) @ forward), 0.1 * self.sphere.radius)
        with client.atomic():
            client.camera.fov = camera_fov_y(K, height)
            client.camera.position = tuple(centre)
            client.camera.look_at = tuple(centre + depth * forward)
            client.camera.up_direction = tuple(-down)

    def _draw_points(self) -> None:
        with self._lock:
            pts = self.scene.points_world
            if pts is None or len(pts) == 0:
                return
            colors = self.scene.point_colors
            if colors is None:
                colors = np.full((len(pts), 3), 160, np.uint8)
            size = 0.004 * self.sphere.radius * self.gui_point_size.value
            self._points_handle = self.server.scene.add_point_cloud(
                "/points", points=np.asarray(pts, dtype=np.float32),
                colors=np.asarray(colors, dtype=np.uint8), point_size=size,
                precision="float32", visible=self.gui_show_points.value)

    def _draw_boxes(self) -> None:
        with self._lock:
            for boxes in self.scene.boxes:
                if len(boxes) == 0:
                    continue
                corners = boxes.corners()  # [B, 8, 3]
                segments = corners[:, BOX_EDGES].reshape(-1, 2, 3)
                self._box_handles[boxes.name] = self.server.scene.add_line_segments(
                    f"/boxes/{boxes.name.replace(' ', '_')}", points=segments.astype(np.float32),
                    colors=boxes.color, thickness=2.0, thickness_units="screen",
                    visible=self.gui_show_boxes[boxes.name].value)

    # ------------------------------------------------------------------------- updates

    def set_splats(self, splats) -> None:
        """Replace the splats (e.g. from a running optimisation) and redraw them."""
        with self._lock:
            self.scene.splats = splats
            self.gui_render.disabled = splats is None
            self._draw_splats()
            self._update_stats()

    def set_cameras(self, cameras) -> None:
        """Replace the cameras and redraw them; when only the poses changed (a running
        optimisation), the frustums are moved instead of re-sent with their photos."""
        with self._lock:
            old = self.scene.cameras
            self.scene.cameras = cameras
            same = (old is not None and cameras is not None and len(old) == len(cameras)
                    and len(self._camera_handles) == len(cameras)
                    and old.image_paths == cameras.image_paths
                    and torch.equal(old.K.cpu(), cameras.K.cpu()))
            if not same:
                self._draw_cameras()
                self._update_stats()
                return
            T = cameras.T_world_cam.detach().cpu().double().numpy()
            wxyz = rotation_to_wxyz(T[:, :3, :3])
            for i, handle in enumerate(self._camera_handles):
                handle.wxyz = wxyz[i]
                handle.position = T[i, :3, 3]

    def reframe(self) -> None:
        """Recompute the scene sphere and the initial view from the current content."""
        with self._lock:
            self.sphere = self._compute_sphere()
            self.frame_scene()

    # -------------------------------------------------------------------------- render

    def render_browser_view(self, wxyz: np.ndarray, position: np.ndarray, fov_y: float,
                            aspect: float, height: int | None = None) -> np.ndarray:
        """Render what a browser camera sees with the full rasterizer: ``[H, W, 3]`` uint8."""
        from viewer.render import render_rgb

        with self._lock:
            splats = self.scene.splats
            scale = self.gui_splat_scale.value
        if splats is None:
            raise UserError("there are no splats to render in this view.")
        height = int(self.gui_render_height.value if height is None else height)
        T, K, width, height = browser_view_to_camera(wxyz, position, fov_y, aspect, height)
        rgb = render_rgb(splats, T, K, width, height, self.background_float(), scale)
        self.last_render = rgb
        return rgb

    def _on_render_click(self, event) -> None:
        from geometry.io.images import encode_png

        client = event.client
        if client is None:
            return
        cam = client.camera
        note = client.add_notification("Rendering", "sparseview rasterizer, full SH colour",
                                       loading=True, with_close_button=False)
        self.gui_render.disabled = True
        try:
            t0 = time.perf_counter()
            rgb = self.render_browser_view(cam.wxyz, cam.position, cam.fov, cam.aspect)
            seconds = time.perf_counter() - t0
            client.send_file_download("render.png", encode_png(rgb), save_immediately=True)
            note.title = "Rendered"
            note.body = f"{rgb.shape[1]}x{rgb.shape[0]} in {seconds:.1f} s: render.png"
        except UserError as err:
            note.title = "Cannot render"
            note.body = str(err)
        finally:
            note.loading = False
            note.with_close_button = True
            self.gui_render.disabled = self.scene.splats is None


def wait_for_ctrl_c(seconds: float | None = None) -> None:
    """Block until Ctrl-C (or for ``seconds``); the interrupt is swallowed."""
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass


def serve(scene: ViewerScene, host: str = "127.0.0.1", port: int = 8080,
          up: np.ndarray | None = None, seconds: float | None = None,
          background: tuple[int, int, int] = (255, 255, 255), verbose: bool = True) -> None:
    """Show ``scene`` at ``http://host:port`` until Ctrl-C (or for ``seconds``)."""
    from rich.console import Console

    server = start_server(host, port, title=scene.title, verbose=False)
    SceneViewer(server, scene, up=up, background=background)
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if verbose:
        Console(stderr=True, highlight=False).print(
            f"[bold]sparseview viewer[/bold]: open http://{url_host}:{server.get_port()} in a "
            "browser (Ctrl-C stops)")
    try:
        wait_for_ctrl_c(seconds)
    finally:
        server.stop()
