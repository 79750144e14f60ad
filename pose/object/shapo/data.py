"""Generated tabletop RGB-D scenes with NOCS-style ground truth, deterministic by seed.

A scene: a textured table (a :class:`~reconstruction.procedural.raycast.Quad`) over a
floor, 2-5 objects of the six categories of :mod:`pose.object.shapo.shapes` standing on it
at random places and headings, and small clutter (spheres and boxes, the procedural
world's :class:`~reconstruction.procedural.raycast.Solid`), seen by one camera from above
the table's edge. Objects are sphere-traced through their exact SDFs; table, floor and
clutter are cast analytically by :func:`~reconstruction.procedural.raycast.cast_rays`.

Per pixel: colour (solid-noise albedo attached to each object, Lambert + ambient shading),
clean z-depth and a sensor-like noisy depth (see :func:`sensor_depth`), instance ids
(0: not an object of the benchmark), NOCS maps (``p / diag + 0.5``); per object: class,
``T_cam_obj`` (rigid, OpenCV camera), box ``size`` (metres) and, for mugs, whether the
handle is visible. Pixel ``(u, v)`` is the ray through ``(u + 0.5, v + 0.5)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pose.object.shapo.shapes import CATEGORIES, Shape, random_shape

__all__ = ["SceneConfig", "ObjectGT", "TabletopScene", "render_scene", "sensor_depth"]


@dataclass(frozen=True)
class SceneConfig:
    """How to generate tabletop scenes."""

    width: int = 96
    """Image width (pixels)."""
    height: int = 96
    """Image height (pixels)."""
    fov_x_deg: float = 50.0
    """Horizontal field of view (degrees)."""
    min_objects: int = 2
    """Fewest benchmark objects per scene."""
    max_objects: int = 4
    """Most benchmark objects per scene."""
    clutter: int = 2
    """Clutter solids (spheres/boxes, not benchmark objects) per scene."""
    distance: tuple[float, float] = (0.55, 0.8)
    """Camera distance from the table centre (metres)."""
    elevation_deg: tuple[float, float] = (35.0, 65.0)
    """Camera elevation above the table plane (degrees)."""
    noise: bool = True
    """Sensor noise and dropout on the depth (:func:`sensor_depth`)."""
    categories: tuple[str, ...] = CATEGORIES
    """Categories to draw from."""


@dataclass
class ObjectGT:
    """Ground truth of one benchmark object."""

    class_name: str
    class_id: int
    """1-based index into :data:`~pose.object.shapo.shapes.CATEGORIES`."""
    T_cam_obj: np.ndarray  # [4, 4] rigid
    size: np.ndarray  # [3] metres
    handle_visible: bool
    """Mugs: whether any handle pixel is seen (NOCS's ``handle_visibility``); True else."""
    shape: Shape
    pixels: int
    """Visible pixels of the object."""
    instance_index: int = -1
    """Index into the ``pool`` the shape came from (-1: a new random instance)."""


@dataclass
class TabletopScene:
    """One generated RGB-D frame and its ground truth."""

    rgb: np.ndarray  # [H, W, 3] float32 in [0, 1]
    depth: np.ndarray  # [H, W] float32 metres, 0 where unknown (noisy when noise is on)
    depth_clean: np.ndarray  # [H, W] float32
    instance: np.ndarray  # [H, W] int32: 0 background, i + 1 object i
    nocs: np.ndarray  # [H, W, 3] float32 in [0, 1] on objects, 0 elsewhere
    K: np.ndarray  # [3, 3]
    T_world_cam: np.ndarray  # [4, 4]
    objects: list[ObjectGT] = field(default_factory=list)

    @property
    def semantic(self) -> np.ndarray:
        """``[H, W]`` int: class id per pixel (0: background)."""
        ids = np.array([0] + [o.class_id for o in self.objects], np.int32)
        return ids[self.instance]


def sensor_depth(depth: np.ndarray, normal_dot: np.ndarray, rng: np.random.Generator
                 ) -> np.ndarray:
    """A structured-light sensor's view of a clean z-depth ``[H, W]`` (0: no return).

    Axial noise with the Kinect model of Nguyen et al. (2012),
    ``sigma = 1.2 mm + 1.9 mm * (z - 0.4 m)^2 / 1 m^2``, correlated with the upper and left
    neighbours (the sensor's correlation window; the std stays sigma); quantisation to
    1 mm (the 16-bit millimetre files); no return at grazing angles (``|n . v| < 0.15``,
    ``normal_dot``) and, with probability 0.5, at pixels on a depth edge (a jump above
    2 cm to a neighbour).
    """
    z = depth.astype(np.float64)
    valid = z > 0
    sigma = 0.0012 + 0.0019 * (z - 0.4) ** 2
    noise = rng.standard_normal(z.shape)
    noise = (noise + 0.5 * np.roll(noise, 1, 0) + 0.5 * np.roll(noise, 1, 1)) / math.sqrt(1.5)
    out = np.round((z + sigma * noise) * 1000.0) / 1000.0
    jump = np.zeros_like(valid)
    for axis in (0, 1):
        d = np.abs(np.diff(z, axis=axis)) > 0.02
        pad = [(0, 0), (0, 0)]
        pad[axis] = (0, 1)
        jump |= np.pad(d, pad)
        pad[axis] = (1, 0)
        jump |= np.pad(d, pad)
    drop = (np.abs(normal_dot) < 0.15) | (jump & (rng.random(z.shape) < 0.5))
    return np.where(valid & ~drop, out, 0.0).astype(np.float32)


def _sphere_trace(shape: Shape, origin: np.ndarray, dirs: np.ndarray, t0: np.ndarray,
                  t1: np.ndarray, steps: int = 96) -> np.ndarray:
    """``t [N]`` of the first surface hit of object-frame rays from ``origin [3]`` within
    ``[t0, t1]`` (inf: none)."""
    t = t0.copy()
    active = np.arange(len(t))
    hit = np.full(len(t), np.inf)
    for _ in range(steps):
        if len(active) == 0:
            break
        d = shape.sdf(origin + t[active, None] * dirs[active])
        done = d < 2e-4
        hit[active[done]] = t[active[done]]
        t[active] += np.maximum(d, 1e-4)
        active = active[~done & (t[active] < t1[active])]
    return hit


def _place_objects(rng: np.random.Generator, shapes: list[Shape], extent: float
                   ) -> list[tuple[float, float, float]]:
    """``(x, y, yaw)`` on the table for each shape without overlaps (fewer if no room)."""
    placed: list[tuple[float, float, float]] = []
    radii: list[float] = []
    for shape in shapes:
        r = 0.5 * math.hypot(shape.size[0], shape.size[2]) + 0.01
        for _ in range(50):
            x, y = rng.uniform(-extent, extent, 2)
            if all(math.hypot(x - px, y - py) > r + pr for (px, py, _), pr in
                   zip(placed, radii, strict=True)):
                placed.append((float(x), float(y), float(rng.uniform(0, 2 * math.pi))))
                radii.append(r)
                break
        else:
            placed.append((math.nan, math.nan, 0.0))
            radii.append(0.0)
    return placed


def _R_world_obj(yaw: float) -> np.ndarray:
    """Object y (up) to world z, then a turn ``yaw`` about world z."""
    c, s = math.cos(yaw), math.sin(yaw)
    Rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    Rx = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # +90 deg about x: y -> z
    return Rz @ Rx


def render_scene(seed: int, config: SceneConfig | None = None,
                 pool: Sequence[Shape] | None = None) -> TabletopScene:
    """One tabletop scene; the same ``seed``, ``config`` and ``pool`` give the same arrays.

    ``pool``: instances to place (e.g. the priors' training shapes,
    :func:`~pose.object.shapo.priors.prior_shapes`) instead of new random ones; a category
    missing from the pool gets a random instance. :attr:`ObjectGT.instance_index` tells
    which.
    """
    from geometry.se3 import look_at
    from reconstruction.procedural.raycast import Quad, Solid, cast_rays
    from reconstruction.procedural.textures import solid_albedo

    config = config or SceneConfig()
    rng = np.random.default_rng(seed)
    W, H = config.width, config.height
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    cats = [config.categories[int(i)] for i in rng.integers(0, len(config.categories), count)]
    if pool is None:
        shapes = [random_shape(c, rng) for c in cats]
        pool_index = [-1] * len(shapes)
    else:
        shapes, pool_index = [], []
        for c in cats:
            choices = [k for k, s in enumerate(pool) if s.category == c]
            if choices:
                pool_index.append(choices[int(rng.integers(len(choices)))])
                shapes.append(pool[pool_index[-1]])
            else:
                pool_index.append(-1)
                shapes.append(random_shape(c, rng))
    places = _place_objects(rng, shapes, 0.2)
    keep = [i for i, p in enumerate(places) if not math.isnan(p[0])]
    shapes, places = [shapes[i] for i in keep], [places[i] for i in keep]
    pool_index = [pool_index[i] for i in keep]

    # clutter: small solids in free places
    clutter: list[Solid] = []
    for _ in range(config.clutter):
        half = rng.uniform(0.012, 0.03, 3)
        x, y = rng.uniform(-0.3, 0.3, 2)
        if any(math.hypot(x - px, y - py) < 0.5 * math.hypot(s.size[0], s.size[2]) + 0.05
               for s, (px, py, _) in zip(shapes, places, strict=True)):
            continue
        if rng.random() < 0.5:
            clutter.append(Solid("sphere", (x, y, half[0]), (half[0],) * 3,
                                 tint=tuple(rng.random(3)), texture_freq=30.0))
        else:
            clutter.append(Solid("box", (x, y, half[2]), tuple(half),
                                 yaw=float(rng.uniform(0, math.pi)),
                                 tint=tuple(rng.random(3)), texture_freq=30.0))
    table = Quad(np.array([-0.45, -0.35, 0.0]), np.array([0.9, 0.0, 0.0]),
                 np.array([0.0, 0.7, 0.0]))
    floor = Quad(np.array([-3.0, -3.0, -0.72]), np.array([6.0, 0.0, 0.0]),
                 np.array([0.0, 6.0, 0.0]))
    table_tint, floor_tint = 0.4 + 0.5 * rng.random(3), 0.3 + 0.4 * rng.random(3)

    # camera
    dist = rng.uniform(*config.distance)
    elev = math.radians(rng.uniform(*config.elevation_deg))
    azim = rng.uniform(0, 2 * math.pi)
    eye = dist * np.array([math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim),
                           math.sin(elev)])
    target = np.array([*rng.uniform(-0.05, 0.05, 2), 0.03])
    T_world_cam = look_at(eye, target)
    fx = 0.5 * W / math.tan(0.5 * math.radians(config.fov_x_deg))
    K = np.array([[fx, 0, W / 2], [0, fx, H / 2], [0, 0, 1.0]])
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    d_cam = np.stack([(u - W / 2) / fx, (v - H / 2) / fx, np.ones_like(u)], -1).reshape(-1, 3)
    z_per_t = 1.0 / np.linalg.norm(d_cam, axis=-1)  # z-depth per metre along the ray
    d_cam = d_cam * z_per_t[:, None]
    R_wc, eye = T_world_cam[:3, :3], T_world_cam[:3, 3]
    dirs = d_cam @ R_wc.T

    # background primitives
    prims = [table, floor, *clutter]
    t_best, index, normal = cast_rays(prims, eye, dirs)
    owner = np.full(len(dirs), -1)  # -1 background; i: object i
    normal = normal.copy()

    T_world_objs = []
    for i, (shape, (x, y, yaw)) in enumerate(zip(shapes, places, strict=True)):
        T = np.eye(4)
        T[:3, :3] = _R_world_obj(yaw)
        T[:3, 3] = (x, y, 0.5 * shape.size[1])
        T_world_objs.append(T)
        R = T[:3, :3]
        o_obj = (eye - T[:3, 3]) @ R
        d_obj = dirs @ R
        # rays through the bounding sphere
        rad = 0.5 * shape.diag + 1e-3
        b = d_obj @ o_obj
        disc = b * b - (o_obj @ o_obj - rad * rad)
        near = np.nonzero(disc > 0)[0]
        sq = np.sqrt(disc[near])
        t0, t1 = np.maximum(-b[near] - sq, 0.0), -b[near] + sq
        t = _sphere_trace(shape, o_obj, d_obj[near], t0, t1)
        closer = t < t_best[near]
        idx = near[closer]
        t_best[idx], owner[idx] = t[closer], i
        p = o_obj + t[closer, None] * d_obj[idx]
        eps = 2e-4
        grad = np.stack([shape.sdf(p + e) - shape.sdf(p - e)
                         for e in np.eye(3) * eps], -1)
        n_obj = grad / np.maximum(np.linalg.norm(grad, axis=-1, keepdims=True), 1e-12)
        normal[idx] = n_obj @ R.T

    hitpts = eye + np.where(np.isfinite(t_best), t_best, 0.0)[:, None] * dirs
    albedo = np.full((len(dirs), 3), 0.5)
    tinted = [0.2 + 0.8 * table_tint, floor_tint]
    for k, tint in enumerate(tinted):
        sel = (owner < 0) & (index == k)
        albedo[sel] = solid_albedo(hitpts[sel], 6.0 + 4 * k, np.asarray(tint), 11 + k + seed)
    for k, solid in enumerate(clutter, start=2):
        sel = (owner < 0) & (index == k)
        albedo[sel] = solid_albedo(hitpts[sel], solid.texture_freq, np.asarray(solid.tint),
                                   101 + k + seed)
    nocs = np.zeros((len(dirs), 3))
    objects = []
    T_cam_world = np.linalg.inv(T_world_cam)
    for i, shape in enumerate(shapes):
        sel = owner == i
        T = T_world_objs[i]
        p_obj = (hitpts[sel] - T[:3, 3]) @ T[:3, :3]
        albedo[sel] = shape.albedo(p_obj)
        nocs[sel] = np.clip(p_obj / shape.diag + 0.5, 0.0, 1.0)
        visible = True
        if shape.category == "mug":
            visible = bool(shape.on_handle(p_obj, tol=1e-3).sum() >= 3)
        objects.append(ObjectGT(shape.category, CATEGORIES.index(shape.category) + 1,
                                T_cam_world @ T, shape.size.copy(), visible, shape,
                                int(sel.sum()), pool_index[i]))
    # shading: a light near the camera, above
    light = eye + np.array([0.0, 0.0, 0.6])
    to_light = light - hitpts
    to_light /= np.maximum(np.linalg.norm(to_light, axis=-1, keepdims=True), 1e-9)
    normal = np.where((normal * dirs).sum(-1, keepdims=True) > 0, -normal, normal)
    lambert = np.clip((normal * to_light).sum(-1), 0.0, 1.0)
    rgb = albedo * (0.35 + 0.65 * lambert)[:, None]
    miss = ~np.isfinite(t_best)
    rgb[miss] = 0.15
    depth = np.where(miss, 0.0, t_best * z_per_t)
    normal_dot = -(normal * dirs).sum(-1)
    clean = depth.reshape(H, W).astype(np.float32)
    noisy = (sensor_depth(clean, normal_dot.reshape(H, W), np.random.default_rng(seed + 7))
             if config.noise else clean.copy())
    # objects out of sight are not in the ground truth; ids count the visible ones
    seen = [i for i, o in enumerate(objects) if o.pixels > 0]
    remap = np.zeros(len(objects) + 1, np.int32)
    remap[[i + 1 for i in seen]] = np.arange(1, len(seen) + 1)
    return TabletopScene(
        rgb=np.clip(rgb, 0, 1).reshape(H, W, 3).astype(np.float32), depth=noisy,
        depth_clean=clean, instance=remap[(owner + 1).reshape(H, W)],
        nocs=nocs.reshape(H, W, 3).astype(np.float32), K=K, T_world_cam=T_world_cam,
        objects=[objects[i] for i in seen])
