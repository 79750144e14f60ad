"""Scene configuration, camera layouts and rendering of views with their ground truth.

Cameras are OpenCV (x right, y down, z forward), principal point at the image centre,
square pixels. Four layouts (``SceneConfig.kind``), each with its world:

- ``arc`` (quad world, the shipped sample): cameras on an arc in front of the scene
  (``arc_deg`` wide, radius ``radius``, about ``camera_height`` high), looking at the scene
  centre with small seeded variations of height and aim (cameras on one circle all looking
  at one point are a critical motion for focal self-calibration)::

                 back wall
        +---------------------------+
        |     [box]      [box]      |
        +---------------------------+
              \\      |      /
               cam0  cam1  cam2        (arc of radius ~3.2 m, 1.6 m high)

- ``orbit`` (object world): cameras on an arc around the objects (``arc_deg`` wide, gently
  varying elevation about ``elevation_deg``), all looking at the scene centre;
- ``forward`` (object world with a back wall): LLFF-like forward-facing cameras on a small
  grid, looking along +y at the objects;
- ``outdoor`` (:mod:`.outdoor`: objects on a wide ground, distant buildings, sky): a
  360-degree rig around the objects (``arc_deg`` 360, radius varying by 8 %).

Every pixel's colour averages ``supersample^2`` rays (anti-aliasing). Depth, object ids and
object coordinates come from ONE ray per pixel: the sub-pixel ray nearest the pixel centre
(exactly the centre for odd ``supersample``; for even ones it sits ``0.5 / supersample`` px
right of and below it). Masks mark pixels whose rays hit an object at least half the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from geometry.cameras import Cameras
from reconstruction.procedural.worlds import ObjectWorld, QuadWorld, object_world, quad_world

Kind = Literal["arc", "orbit", "forward", "outdoor"]

#: What a ``None`` field of :class:`SceneConfig` means for each kind.
KIND_DEFAULTS: dict[str, dict[str, float | int]] = {
    "arc": {"fov_x_deg": 55.0, "supersample": 2, "arc_deg": 30.0, "radius": 3.2},
    "orbit": {"fov_x_deg": 60.0, "supersample": 3, "arc_deg": 150.0, "radius": 4.0},
    "forward": {"fov_x_deg": 60.0, "supersample": 3, "arc_deg": 150.0, "radius": 4.0},
    "outdoor": {"fov_x_deg": 60.0, "supersample": 2, "arc_deg": 360.0, "radius": 4.0},
}


@dataclass(frozen=True)
class SceneConfig:
    """Options of a procedural scene (everything follows from them, bit for bit)."""

    kind: Kind = "orbit"
    """Camera layout and world: ``arc`` (quad world), ``orbit``, ``forward`` (object world)."""
    num_views: int = 25
    """Number of cameras."""
    width: int = 200
    height: int = 150
    seed: int = 0
    """Seed of the layout, the textures and the small camera variations."""
    fov_x_deg: float | None = None
    """Horizontal field of view; None: 55 for arc, 60 otherwise."""
    supersample: int | None = None
    """Rays per pixel along each axis (anti-aliasing); None: 2 for arc, 3 otherwise."""
    arc_deg: float | None = None
    """arc and orbit: angular span of the cameras; None: 30 for arc, 150 for orbit."""
    radius: float | None = None
    """arc and orbit: camera distance to the scene centre; None: 3.2 for arc, 4 for orbit."""
    camera_height: float = 1.6
    """arc: mean camera height above the floor (metres)."""
    elevation_deg: float = 28.0
    """orbit: mean camera elevation above the ground."""
    num_objects: int = 5
    """orbit and forward: objects on the ground (spheres and boxes alternate)."""
    textureless: float = 0.0
    """Share of the objects (the largest first; at least one when above 0) painted one
    uniform colour instead of a texture, against the textured floor and walls: surfaces
    where feature matching and block stereo find no points. Their pixels vary only with the
    lighting. 0: every object textured (the scene is then exactly what it was without this
    option)."""

    def resolved(self) -> SceneConfig:
        """A copy with every None replaced by the kind's default (:data:`KIND_DEFAULTS`)."""
        if self.kind not in KIND_DEFAULTS:
            raise ValueError(f"unknown scene kind {self.kind!r}; use one of {list(KIND_DEFAULTS)}")
        defaults = KIND_DEFAULTS[self.kind]
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


def make_world(config: SceneConfig) -> QuadWorld | ObjectWorld:
    """The world (scene content) of a config: the quad world for ``arc``, else objects."""
    if config.kind == "arc":
        return quad_world(config.seed, config.textureless)
    if config.kind == "outdoor":
        from reconstruction.procedural.outdoor import outdoor_world

        return outdoor_world(config.num_objects, config.seed, config.textureless)
    return object_world(config.kind, config.num_objects, config.seed, config.textureless)


def intrinsics(config: SceneConfig) -> np.ndarray:
    """``K [3, 3]`` in pixels (principal point at the image centre, square pixels)."""
    config = config.resolved()
    fx = 0.5 * config.width / math.tan(0.5 * math.radians(config.fov_x_deg))
    return np.array([[fx, 0.0, config.width / 2.0], [0.0, fx, config.height / 2.0],
                     [0.0, 0.0, 1.0]])


def camera_poses(config: SceneConfig) -> np.ndarray:
    """``T_world_cam [N, 4, 4]`` float64 of the layout (see the module docstring)."""
    from geometry.se3 import look_at

    config = config.resolved()
    n = config.num_views
    poses = []
    if config.kind == "arc":
        centre = np.array([0.0, 0.2, 0.3])
        angles = (np.linspace(-config.arc_deg / 2, config.arc_deg / 2, n) if n > 1 else [0.0])
        for k, angle in enumerate(angles):
            theta = math.radians(angle)
            wobble = 0.15 * math.sin(1.7 * k + config.seed)
            eye = np.array([config.radius * math.sin(theta), -config.radius * math.cos(theta),
                            config.camera_height + wobble])
            target = centre + 0.3 * np.array([math.sin(2.3 * k + config.seed),
                                              math.cos(1.1 * k), 0.0])
            poses.append(look_at(eye, target))
    elif config.kind == "orbit":
        target = np.array([0.0, 0.0, 0.35])
        for i in range(n):
            u = i / max(1, n - 1)
            azimuth = math.radians(-90.0 + config.arc_deg * (u - 0.5))
            elevation = math.radians(config.elevation_deg + 6.0 * math.sin(2.0 * math.pi * u))
            eye = target + config.radius * np.array([
                math.cos(elevation) * math.cos(azimuth),
                math.cos(elevation) * math.sin(azimuth),
                math.sin(elevation)])
            poses.append(look_at(eye, target))
    elif config.kind == "outdoor":  # a 360-degree rig (arc_deg 360: a full circle)
        target = np.array([0.0, 0.0, 0.35])
        full = config.arc_deg >= 360.0
        for i in range(n):
            u = i / n if full else i / max(1, n - 1)
            azimuth = math.radians(config.seed * 37.0 + config.arc_deg * u)
            elevation = math.radians(config.elevation_deg + 5.0 * math.sin(3.0 * azimuth))
            radius = config.radius * (1.0 + 0.08 * math.sin(2.0 * azimuth + config.seed))
            eye = target + radius * np.array([math.cos(elevation) * math.cos(azimuth),
                                              math.cos(elevation) * math.sin(azimuth),
                                              math.sin(elevation)])
            poses.append(look_at(eye, target))
    else:
        cols = max(1, int(math.ceil(math.sqrt(n * 1.5))))
        rows = int(math.ceil(n / cols))
        for i in range(n):
            r, c = divmod(i, cols)
            x = -0.6 + 1.2 * c / max(1, cols - 1)
            z = 0.55 + 0.4 * r / max(1, rows - 1)
            eye = np.array([x, -3.2, z])
            target = np.array([0.3 * x, 1.0, 0.35])
            poses.append(look_at(eye, target))
    return np.stack(poses)


@dataclass
class ViewMaps:
    """One rendered view and its per-pixel ground truth (see the module docstring)."""

    rgb: np.ndarray  # [H, W, 3] float64 in [0, 1], mean of the pixel's rays
    depth: np.ndarray  # [H, W] float32 camera z-depth in metres, 0 where nothing is hit
    mask: np.ndarray  # [H, W] bool, objects cover at least half of the pixel's rays
    object_ids: np.ndarray  # [H, W] int32, 1-based index into world.objects, 0 elsewhere
    object_coords: np.ndarray  # [H, W, 3] float32 in [0, 1]^3 on objects, NaN elsewhere

    @property
    def image(self) -> np.ndarray:
        """``[H, W, 3]`` uint8 (rounded)."""
        return (self.rgb * 255.0 + 0.5).astype(np.uint8)


def render_view(world: QuadWorld | ObjectWorld, K: np.ndarray, T_world_cam: np.ndarray,
                width: int, height: int, supersample: int = 3,
                chunk: int = 1 << 16) -> ViewMaps:
    """Ray-cast one camera (``K [3, 3]`` pixels, ``T_world_cam [4, 4]``; pixel centres at
    +0.5) with its depth, object mask, object ids and object coordinates."""
    s = supersample
    offsets = (np.arange(s) + 0.5) / s  # sub-pixel positions within [0, 1)
    u = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)  # [W*s]
    v = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)  # [H*s]
    uu, vv = np.meshgrid(u, v)  # [H*s, W*s]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    dirs_cam = np.stack(((uu - cx) / fx, (vv - cy) / fy, np.ones_like(uu)), -1).reshape(-1, 3)
    z_per_t = 1.0 / np.linalg.norm(dirs_cam, axis=-1)  # z-depth per unit distance
    dirs_cam = dirs_cam * z_per_t[:, None]
    dirs = dirs_cam @ T_world_cam[:3, :3].T
    origin = T_world_cam[:3, 3]
    colour = np.zeros((len(dirs), 3))
    dist = np.zeros(len(dirs))
    prim = np.zeros(len(dirs), np.int64)
    for start in range(0, len(dirs), chunk):
        sl = slice(start, start + chunk)
        colour[sl], dist[sl], prim[sl] = world.shade(origin, dirs[sl])
    object_of = np.concatenate([world.primitive_objects(), [0]])  # index -1: a miss
    obj = object_of[prim].reshape(height, s, width, s)
    rgb = colour.reshape(height, s, width, s, 3).mean((1, 3))
    mask = (obj > 0).mean((1, 3)) >= 0.5
    centre = s // 2  # the pixel-centre ray for odd s (nearest to it for even s)
    depth_all = np.where(np.isfinite(dist), dist * z_per_t, 0.0).reshape(height, s, width, s)
    depth = depth_all[:, centre, :, centre]
    ids = obj[:, centre, :, centre].astype(np.int32)
    coords = np.full((height, width, 3), np.nan, np.float32)
    dist_c = dist.reshape(height, s, width, s)[:, centre, :, centre]
    dirs_c = dirs.reshape(height, s, width, s, 3)[:, centre, :, centre]
    for k, scene_object in enumerate(world.objects, start=1):
        on = ids == k
        if on.any():
            pts = origin + dist_c[on][:, None] * dirs_c[on]
            coords[on] = scene_object.object_coords(pts)
    return ViewMaps(np.clip(rgb, 0.0, 1.0), depth.astype(np.float32), mask, ids, coords)


@dataclass
class ProceduralScene:
    """A rendered scene in memory: V views with their cameras and ground truth."""

    config: SceneConfig  # resolved
    world: QuadWorld | ObjectWorld
    cameras: Cameras  # [V], float64
    images: np.ndarray  # [V, H, W, 3] uint8
    depth: np.ndarray  # [V, H, W] float32 camera z-depth (metres), 0 where nothing is hit
    masks: np.ndarray  # [V, H, W] bool object masks
    object_ids: np.ndarray  # [V, H, W] int32, 1-based index into world.objects, 0 elsewhere
    object_coords: np.ndarray  # [V, H, W, 3] float32 object coordinates, NaN off objects

    @property
    def extent(self) -> float:
        """Diameter of a sphere about the world origin holding the objects (metres)."""
        return self.world.extent()


def check_config(config: SceneConfig, min_views: int = 1) -> SceneConfig:
    """The resolved config, or a :class:`~geometry.errors.UserError` naming the bad option."""
    from geometry.errors import UserError

    try:
        config = config.resolved()
    except ValueError as error:
        raise UserError(str(error)) from None
    if config.num_views < min_views:
        raise UserError(f"--num-views {config.num_views} is too few; generate at least "
                        f"{min_views} views.")
    if config.width < 16 or config.height < 16:
        raise UserError("procedural images must be at least 16x16 pixels; raise --width/--height.")
    if config.supersample < 1:
        raise UserError("--supersample must be at least 1.")
    if not 0.0 <= config.textureless <= 1.0:
        raise UserError(f"--textureless {config.textureless} is not a share; give a value "
                        "from 0 (all objects textured) to 1 (all uniform-coloured).")
    return config


def make_cameras(config: SceneConfig, image_paths: list[str] | None = None) -> Cameras:
    """The layout's ``geometry.cameras.Cameras [V]`` (float64)."""
    import torch

    config = config.resolved()
    K = torch.from_numpy(intrinsics(config))
    return Cameras(K=K[None].expand(config.num_views, 3, 3),
                   T_world_cam=torch.from_numpy(camera_poses(config)), width=config.width,
                   height=config.height, image_paths=image_paths)


def render(config: SceneConfig) -> ProceduralScene:
    """Render every view of a scene in memory (:func:`~.dataset.generate` writes a dataset
    folder view by view instead)."""
    config = check_config(config)
    world = make_world(config)
    K = intrinsics(config)
    views = [render_view(world, K, T, config.width, config.height, config.supersample)
             for T in camera_poses(config)]
    return ProceduralScene(
        config=config, world=world, cameras=make_cameras(config),
        images=np.stack([v.image for v in views]), depth=np.stack([v.depth for v in views]),
        masks=np.stack([v.mask for v in views]), object_ids=np.stack([v.object_ids for v in views]),
        object_coords=np.stack([v.object_coords for v in views]))
