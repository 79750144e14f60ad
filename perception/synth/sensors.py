"""The simulated sensors: a 32-beam spinning LiDAR and six pinhole cameras on the ego
vehicle, with the nuScenes rig layout (LiDAR rotated -90 deg about z, so its x points to
the right of the car and its y forward; cameras in the OpenCV convention)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from perception import frames
from perception.boxes import clipped_boxes_2d
from perception.synth import world
from perception.synth.raycast import (
    GROUND,
    NOTHING,
    Placement,
    PrimitiveTable,
    RayHits,
    Rect,
    cast,
)

# ----------------------------------------------------------------------------- rig

LIDAR_TRANSLATION = (0.943713, 0.0, 1.84023)  # metres in the ego frame (nuScenes values)
LIDAR_YAW = -math.pi / 2  # LIDAR_TOP x axis = ego -y (right), y axis = ego +x (forward)


@dataclass(frozen=True)
class CameraSpec:
    """A camera of the rig: pose in the ego frame and intrinsics for a 1600x900 image."""

    channel: str
    yaw: float  # heading of the optical axis in the ego frame, radians
    translation: tuple[float, float, float]  # metres in the ego frame
    focal: float  # pixels at 1600x900
    cx: float
    cy: float
    time_offset: float  # seconds relative to the LiDAR keyframe (they fire as it sweeps)

    def K(self, width: int, height: int) -> np.ndarray:
        """``[3, 3]`` intrinsics for a ``width`` x ``height`` image."""
        sx, sy = width / 1600.0, height / 900.0
        return np.array([[self.focal * sx, 0.0, self.cx * sx],
                         [0.0, self.focal * sy, self.cy * sy],
                         [0.0, 0.0, 1.0]])

    def T_ego_cam(self) -> np.ndarray:
        """``[4, 4]`` camera-to-ego transform (camera: x right, y down, z along the axis)."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        forward = np.array([c, s, 0.0])
        right = np.array([s, -c, 0.0])
        down = np.array([0.0, 0.0, -1.0])
        return frames.make_T(np.stack([right, down, forward], axis=1), self.translation)


# Layout, focal lengths and firing offsets follow the nuScenes rig (the offsets are those
# of the real sample in ../shared/datasets/nuscenes_fixture, relative to its LiDAR time).
CAMERAS: tuple[CameraSpec, ...] = (
    CameraSpec("CAM_FRONT", 0.0, (1.70079, 0.0159, 1.51095), 1266.42, 816.27, 491.51, -0.0362),
    CameraSpec("CAM_FRONT_RIGHT", math.radians(-55.0), (1.55085, -0.4934, 1.49575), 1260.85,
               807.97, 495.33, -0.0284),
    CameraSpec("CAM_FRONT_LEFT", math.radians(55.0), (1.52387, 0.49463, 1.50932), 1272.60,
               826.62, 479.75, -0.0438),
    CameraSpec("CAM_BACK", math.pi, (0.02832, 0.00345, 1.57910), 809.22, 829.22, 481.77,
               -0.0112),
    CameraSpec("CAM_BACK_LEFT", math.radians(110.0), (1.03569, 0.48471, 1.59097), 1256.74,
               792.11, 492.78, -0.0013),
    CameraSpec("CAM_BACK_RIGHT", math.radians(-110.0), (1.0148, -0.48057, 1.56239), 1259.51,
               807.25, 501.20, -0.0208),
)


def T_ego_lidar() -> np.ndarray:
    """``[4, 4]`` LIDAR_TOP-to-ego transform."""
    return frames.make_T(frames.quat_to_matrix(frames.yaw_to_quat(LIDAR_YAW)), LIDAR_TRANSLATION)


def T_global_ego(translation: np.ndarray, yaw: float) -> np.ndarray:
    """``[4, 4]`` ego-to-global transform of an upright pose."""
    return frames.make_T(frames.quat_to_matrix(frames.yaw_to_quat(yaw)), translation)


def placements_at(scene: world.SynthScene, t: float) -> list[Placement]:
    """All objects of ``scene`` posed at scene time ``t``."""
    return [Placement(obj.position(t), obj.yaw) for obj in scene.objects]


# ----------------------------------------------------------------------------- appearance


# Ground bands by distance from the road's centre line: road, bike lane, parking strip,
# sidewalk, grass (colours, and LiDAR reflectance on the nuScenes 0-255 scale).
_GROUND_EDGES = np.array([world.BIKE_LANE[0], world.PARKING[0], world.SIDEWALK[0],
                          world.SIDEWALK[1]], np.float32)
_GROUND_RGB = np.array([(0.33, 0.33, 0.34), (0.45, 0.3, 0.27), (0.27, 0.27, 0.28),
                        (0.62, 0.6, 0.57), (0.26, 0.42, 0.17)], np.float32)
_GROUND_REFLECTANCE = np.array([6.0, 8.0, 6.0, 18.0, 10.0], np.float32)
_WHITE = np.array([0.88, 0.88, 0.86], np.float32)
_YELLOW = np.array([0.85, 0.68, 0.1], np.float32)


def _frac(x: np.ndarray) -> np.ndarray:
    """``x - floor(x)`` (``np.mod`` is several times slower on floats)."""
    return x - np.floor(x)


class Appearance:
    """Colours and LiDAR reflectances of a scene's ground and objects."""

    def __init__(self, scene: world.SynthScene, seed: int) -> None:
        self.scene = scene
        self.table = PrimitiveTable(scene.objects)
        rng = np.random.default_rng(seed)
        self.noise = rng.random((256, 256)).astype(np.float32)
        self.axis_u, self.axis_v = scene.road_axes
        rows = [p.material for p in self.table.primitives]
        self.color = np.array([m.color for m in rows], np.float32)
        self.color2 = np.array([m.color2 for m in rows], np.float32)
        self.pattern = np.array([m.pattern for m in rows])
        self.p0 = np.array([m.p0 for m in rows])
        self.p1 = np.array([m.p1 for m in rows])
        self.scale = np.array([m.scale for m in rows], np.float32)
        self.p0 = self.p0.astype(np.float32)
        self.p1 = self.p1.astype(np.float32)
        self.reflectance = np.array([m.reflectance for m in rows], np.float32)
        self.corners_local = np.stack([obj.corners_local for obj in scene.objects])
        self._noise_rng = rng
        self._pixel_noise = np.zeros(0, np.float32)

    def pixel_noise(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """``[size]`` Gaussian sensor noise, sigma 0.012: a random window of a sequence
        drawn once (twice as long as one image) instead of fresh noise per image."""
        if self._pixel_noise.size < 2 * size:
            self._pixel_noise = 0.012 * self._noise_rng.standard_normal(2 * size, np.float32)
        start = int(rng.integers(0, self._pixel_noise.size - size))
        return self._pixel_noise[start:start + size]

    def road_coords(self, pts_global: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rx = pts_global[:, 0] - self.scene.origin[0]
        ry = pts_global[:, 1] - self.scene.origin[1]
        return (rx * self.axis_u[0] + ry * self.axis_u[1],
                rx * self.axis_v[0] + ry * self.axis_v[1])

    def ground(self, pts_global: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[N, 3]`` ground points -> ``([N, 3] rgb, [N] reflectance)``, float32."""
        u, v = self.road_coords(pts_global)
        av = np.abs(v)
        grain = self.noise[np.floor(u / 0.07).astype(np.int64) & 255,
                           np.floor(v / 0.07).astype(np.int64) & 255]
        band = np.searchsorted(_GROUND_EDGES, av, side="right")
        rgb = _GROUND_RGB[band]
        refl = _GROUND_REFLECTANCE[band]
        walk = band == 3
        joints = walk & ((_frac(u / 1.2) < 0.04 / 1.2)
                         | (_frac((av - world.SIDEWALK[0]) / 1.2) < 0.04 / 1.2))
        dashed = (np.abs(av - world.LANE_WIDTH) < 0.08) & (_frac(u / 9.0) < 3.5 / 9.0)
        white = dashed | (np.abs(av - world.BIKE_LANE[0]) < 0.1)
        yellow = (av > 0.05) & (av < 0.17)
        shade = (0.8 + 0.35 * grain) * np.where(joints, np.float32(0.7), np.float32(1.0))
        rgb[white] = _WHITE
        rgb[yellow] = _YELLOW
        refl[white | yellow] = 45.0
        return rgb * shade[:, None], refl

    def object_colors(self, hits: RayHits) -> np.ndarray:
        """``[M, 3]`` float32 base colour at the object hits ``hits.rows``."""
        mat = hits.prim[hits.rows]
        x, y, z = hits.local.T
        pattern = self.pattern[mat]
        mix = np.zeros(mat.size, bool)
        for kind in (world.STRIPES, world.BAND, world.WINDOWS, world.PANELS, world.CHECKER):
            idx = np.flatnonzero(pattern == kind)
            if idx.size == 0:
                continue
            m = mat[idx]
            px, py, pz, scale = x[idx], y[idx], z[idx], self.scale[m]
            if kind == world.STRIPES:
                mix[idx] = _frac((px + py + pz) / scale) < 0.5
            elif kind == world.BAND:
                mix[idx] = (pz >= self.p0[m]) & (pz <= self.p1[m])
            elif kind == world.WINDOWS:
                mix[idx] = ((pz >= self.p0[m]) & (pz <= self.p1[m])
                            & (_frac((px + py) / scale) < 0.75))
            elif kind == world.PANELS:
                mix[idx] = _frac((px + py) / scale) < 0.08
            else:
                mix[idx] = (np.floor(px / scale) + np.floor(py / scale)
                            + np.floor(pz / scale)) % 2 == 1
        return np.where(mix[:, None], self.color2[mat], self.color[mat])


# ----------------------------------------------------------------------------- LiDAR


@dataclass(frozen=True)
class LidarSpec:
    """A 32-beam spinning LiDAR (HDL-32E-like, as on the nuScenes car)."""

    beams: int = 32
    elevation_min_deg: float = -30.67
    elevation_max_deg: float = 10.67
    azimuth_step_deg: float = 0.33
    max_range: float = 70.0
    range_noise: float = 0.015  # metres (1 sigma)
    dropout: float = 0.03  # share of returns lost

    @property
    def columns(self) -> int:
        return int(round(360.0 / self.azimuth_step_deg))

    def elevations(self) -> np.ndarray:
        """``[beams]`` radians, ring 0 lowest."""
        return np.radians(np.linspace(self.elevation_min_deg, self.elevation_max_deg, self.beams))

    def directions(self) -> np.ndarray:
        """``[columns * beams, 3]`` float32 unit directions in the LiDAR frame, column-major
        (ray ``c * beams + b`` is column ``c``, ring ``b``); azimuth from +x towards +y."""
        az = np.arange(self.columns) * (2 * math.pi / self.columns)
        el = self.elevations()
        ce = np.cos(el)
        d = np.stack(
            [np.cos(az)[:, None] * ce[None], np.sin(az)[:, None] * ce[None],
             np.broadcast_to(np.sin(el)[None], (az.size, el.size))],
            axis=-1,
        )
        return d.reshape(-1, 3).astype(np.float32)


@dataclass
class LidarScan:
    """One sweep: points in the LiDAR frame and which object each point hit."""

    points: np.ndarray  # [N, 5] float32 x, y, z, intensity (0-255), ring
    hit_object: np.ndarray  # [N] int64 scene object index, GROUND or NOTHING


def scan_lidar(
    spec: LidarSpec,
    directions_lidar: np.ndarray,
    T_global_lidar: np.ndarray,
    placements: list[Placement],
    appearance: Appearance,
    rng: np.random.Generator,
) -> LidarScan:
    """Cast one LiDAR sweep (all rays at one instant) and turn the hits into points.

    Args:
        directions_lidar: ``spec.directions()``, ``[columns * beams, 3]``.
        T_global_lidar: ``[4, 4]`` LiDAR pose at the sweep time.
    """
    origin = T_global_lidar[:3, 3]
    R = T_global_lidar[:3, :3]
    columns, beams = spec.columns, spec.beams
    dirs = (directions_lidar @ R.T.astype(np.float32)).reshape(columns, beams, 3)
    lidar_yaw = math.atan2(R[1, 0], R[0, 0])
    elevations = spec.elevations()
    step = 2 * math.pi / columns
    rects = [
        _lidar_rects(obj, placement, origin, lidar_yaw, step, columns, elevations,
                     spec.max_range)
        for obj, placement in zip(appearance.scene.objects, placements, strict=True)
    ]
    hits = cast(origin, dirs, appearance.table, placements, rects)
    dirs = dirs.reshape(-1, 3)
    t = hits.t
    keep = np.isfinite(t) & (t <= spec.max_range) & (rng.random(t.size) >= spec.dropout)
    rows = np.flatnonzero(keep)
    ranges = t[rows] + rng.normal(0.0, spec.range_noise, rows.size)
    pts_lidar = directions_lidar[rows] * ranges[:, None]
    reflect = np.empty(rows.size, np.float32)
    cos_incidence = np.abs(dirs[rows, 2])  # ground: normal +z
    on_ground = hits.obj[rows] == GROUND
    if on_ground.any():
        ground_rows = rows[on_ground]
        ground_pts = origin + dirs[ground_rows] * t[ground_rows, None]
        reflect[on_ground] = appearance.ground(ground_pts)[1]
    on_obj = ~on_ground
    if on_obj.any():
        obj_rows = rows[on_obj]
        reflect[on_obj] = appearance.reflectance[hits.prim[obj_rows]]
        # Surface normals are kept for the object hits only, in hits.rows order.
        where = np.searchsorted(hits.rows, obj_rows)
        cos_incidence[on_obj] = np.abs(np.einsum("ij,ij->i", hits.normal[where], dirs[obj_rows]))
    intensity = reflect * (0.3 + 0.7 * cos_incidence) * rng.uniform(0.85, 1.15, rows.size)
    ring = rows % beams
    points = np.concatenate(
        [pts_lidar, np.clip(np.round(intensity), 0, 255)[:, None], ring[:, None]], axis=1
    ).astype(np.float32)
    return LidarScan(points, hits.obj[rows])


def _lidar_rects(obj: world.SynthObject, placement: Placement, origin: np.ndarray,
                 lidar_yaw: float, step: float, columns: int, elevations: np.ndarray,
                 max_range: float) -> list[Rect]:
    """Grid rectangles (column range x ring range) of the rays that can hit an object."""
    radius = obj.radius + 0.05
    height = float(obj.size_wlh[2])
    rel = placement.xy - origin[:2]
    dist = float(np.hypot(*rel))
    if dist - radius > max_range:
        return []
    if dist <= radius + 0.3:
        return [(slice(0, columns), slice(0, elevations.size))]
    half_angle = math.asin(min(1.0, radius / dist))
    center = (math.atan2(rel[1], rel[0]) - lidar_yaw) % (2 * math.pi)
    c0 = int(math.floor((center - half_angle) / step)) - 1
    c1 = int(math.ceil((center + half_angle) / step)) + 2
    near, far = dist - radius, dist + radius
    z = origin[2]
    el_lo = math.atan2(-z, near) - 0.01
    el_hi = max(math.atan2(height - z, near), math.atan2(height - z, far)) + 0.01
    b0 = int(np.searchsorted(elevations, el_lo))
    b1 = int(np.searchsorted(elevations, el_hi, side="right"))
    if b1 <= b0:
        return []
    beams = slice(b0, b1)
    if c0 < 0:
        return [(slice(0, c1), beams), (slice(columns + c0, columns), beams)]
    if c1 > columns:
        return [(slice(c0, columns), beams), (slice(0, c1 - columns), beams)]
    return [(slice(c0, c1), beams)]


# ----------------------------------------------------------------------------- cameras


_HORIZON = np.array([0.78, 0.82, 0.86], np.float32)
_ZENITH = np.array([0.42, 0.58, 0.85], np.float32)


@dataclass
class CameraRender:
    """One rendered image with its per-pixel object index (for tests and visibility)."""

    rgb: np.ndarray  # [H, W, 3] uint8
    object_index: np.ndarray  # [H, W] int64 scene object index, GROUND or NOTHING
    depth: np.ndarray  # [H, W] float distance along the ray (inf for sky)


def pixel_directions(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[H * W, 3]`` unit ray directions in the camera frame through pixel centres."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
    d = pix @ np.linalg.inv(K).T
    return (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)


def render_camera(
    T_global_cam: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    directions_cam: np.ndarray,
    placements: list[Placement],
    scene: world.SynthScene,
    appearance: Appearance,
    rng: np.random.Generator,
    hit_counts: np.ndarray | None = None,
) -> CameraRender:
    """Render one camera by casting one ray per pixel (objects culled by their 2D box).

    Args:
        T_global_cam: ``[4, 4]`` camera pose at the camera's own timestamp.
        directions_cam: ``pixel_directions(K, width, height)``.
        hit_counts: optional ``[n_objects]``; unoccluded pixel counts are added to it.
    """
    origin = T_global_cam[:3, 3]
    dirs = directions_cam @ T_global_cam[:3, :3].T.astype(np.float32)
    dirs = dirs.reshape(height, width, 3)
    T_cam_global = frames.invert_T(T_global_cam)
    xy = np.array([p.xy for p in placements])
    yaw = np.array([p.yaw for p in placements])
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    local = appearance.corners_local  # [n_objects, 8, 3]
    corners = np.stack([c * local[..., 0] - s * local[..., 1] + xy[:, :1],
                        s * local[..., 0] + c * local[..., 1] + xy[:, 1:], local[..., 2]], -1)
    corners_cam = corners @ T_cam_global[:3, :3].T + T_cam_global[:3, 3]
    boxes = clipped_boxes_2d(corners_cam, K, width, height, 0.05)
    x0, y0 = np.floor(boxes[:, 0]).astype(int), np.floor(boxes[:, 1]).astype(int)
    x1 = np.minimum(np.ceil(boxes[:, 2]).astype(int), width)
    y1 = np.minimum(np.ceil(boxes[:, 3]).astype(int), height)
    rects: list[list[Rect]] = [
        [(slice(y0[i], y1[i]), slice(x0[i], x1[i]))] if x1[i] > x0[i] and y1[i] > y0[i] else []
        for i in range(len(placements))
    ]
    hits = cast(origin, dirs, appearance.table, placements, rects, hit_counts=hit_counts)
    dirs = dirs.reshape(-1, 3)

    rgb = np.empty((dirs.shape[0], 3), np.float32)
    sky = np.flatnonzero(hits.obj == NOTHING)
    elevation = np.clip(dirs[sky, 2], 0.0, 1.0)[:, None]
    rgb[sky] = (1 - elevation) * _HORIZON + elevation * _ZENITH
    sun = scene.sun.astype(np.float32)
    ground_rows = np.flatnonzero(hits.obj == GROUND)
    ground_pts = origin.astype(np.float32) + dirs[ground_rows] * hits.t[ground_rows, None]
    rgb[ground_rows] = appearance.ground(ground_pts)[0] * np.float32(0.55 + 0.45 * sun[2])
    if hits.rows.size:
        lambert = np.clip(hits.normal @ sun, 0.0, 1.0)
        rgb[hits.rows] = appearance.object_colors(hits) * (0.45 + 0.55 * lambert)[:, None]
    rgb = rgb.ravel()
    rgb += appearance.pixel_noise(rgb.size, rng)
    np.clip(rgb, 0.0, 1.0, out=rgb)
    image = (rgb * 255.0 + 0.5).astype(np.uint8).reshape(height, width, 3)
    return CameraRender(image, hits.obj.reshape(height, width), hits.t.reshape(height, width))
