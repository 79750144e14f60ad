"""Synthetic scenes with exact ground truth: poses, intrinsics, depth and object masks.

A scene is a few textured objects (spheres and oriented boxes) on a textured ground
square, lit by one directional light with hard shadows, rendered by a small analytic
ray caster written here in numpy: independent of the splatting code it is used to test.
Textures are solid (3D) value noise in world coordinates, so every surface point has one
colour whatever the view (Lambertian, no view-dependent effects) and the images carry the
non-repeating texture feature matchers need. Every pixel averages ``supersample^2`` rays
(anti-aliasing); depth and masks come from the ray through the pixel centre.

World frame: z up, the objects stand on ``z = 0`` around the origin; metres.

Two camera layouts:

- ``orbit``: cameras on an arc around the objects (``arc_deg`` wide, gently varying
  elevation), all looking at the scene centre;
- ``forward``: LLFF-like forward-facing cameras on a small grid, looking along +y at the
  objects in front of a textured back wall.

Output (the folder appears complete or not at all)::

    OUT/transforms.json    nerfstudio cameras; frames also carry depth_file_path, mask_path
    OUT/images/NNN.png     8-bit sRGB-free linear colours in [0, 1]
    OUT/depth/NNN.npy      float32 [H, W] camera z-depth in metres (0 where nothing is hit)
    OUT/masks/NNN.png      255 on the objects (not the ground or wall), 0 elsewhere

``transforms.json`` also holds ``sparseview_synthetic``: the generator settings and the
scene (objects, light) and ``scene_extent``, the diameter of the scene's bounding sphere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

_EPS = 1e-6
GROUND_HALF = 3.0  # the ground square is [-3, 3]^2 at z = 0
WALL_Y = 2.5  # forward scenes: the back wall plane y = WALL_Y


@dataclass
class SyntheticConfig:
    """Options of a generated scene."""

    out: Path
    """Output folder (replaced atomically)."""
    kind: Literal["orbit", "forward"] = "orbit"
    """Camera layout: an arc around the objects, or forward-facing (LLFF-like)."""
    num_views: int = 25
    """Number of cameras."""
    width: int = 200
    height: int = 150
    fov_x_deg: float = 60.0
    """Horizontal field of view."""
    seed: int = 0
    """Seed of the scene layout and textures."""
    supersample: int = 3
    """Rays per pixel along each axis (anti-aliasing); odd keeps one ray at the centre."""
    arc_deg: float = 150.0
    """orbit: angular span of the camera arc."""
    radius: float = 4.0
    """orbit: camera distance to the scene centre."""
    elevation_deg: float = 28.0
    """orbit: mean camera elevation above the ground."""
    num_objects: int = 5
    """Objects on the ground (spheres and boxes)."""


@dataclass
class Primitive:
    """A sphere (``half = (r, r, r)``) or an oriented box, world frame."""

    kind: Literal["sphere", "box"]
    center: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float = 0.0  # rotation about world z (boxes)
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    texture_freq: float = 4.0


@dataclass
class Scene:
    primitives: list[Primitive]
    light_dir: tuple[float, float, float]  # unit, pointing from the surface to the light
    wall: bool = False
    texture_seed: int = 0
    ground_tint: tuple[float, float, float] = (0.9, 0.85, 0.75)
    wall_tint: tuple[float, float, float] = (0.7, 0.8, 0.95)

    def extent(self) -> float:
        """Diameter of a sphere about the origin holding the objects (metres)."""
        radius = 0.0
        for p in self.primitives:
            radius = max(radius, float(np.linalg.norm(p.center)) + float(np.linalg.norm(p.half)))
        return 2.0 * radius


# ------------------------------------------------------------------ scene layout


def make_scene(kind: str, num_objects: int, seed: int) -> Scene:
    """A random but reproducible arrangement of textured spheres and boxes."""
    rng = np.random.default_rng(seed)
    prims: list[Primitive] = []
    placed: list[tuple[float, float, float]] = []  # (x, y, footprint radius)
    spread = 1.1 if kind == "orbit" else 1.3
    for i in range(num_objects):
        for _ in range(200):
            size = float(rng.uniform(0.25, 0.5))
            x, y = rng.uniform(-spread, spread, size=2)
            if kind == "forward":
                y = float(rng.uniform(-0.5, 1.5))
            if all(math.hypot(x - px, y - py) > size + pr + 0.05 for px, py, pr in placed):
                break
        tint = tuple(float(v) for v in rng.uniform(0.35, 1.0, size=3))
        freq = float(rng.uniform(3.0, 6.0))
        if i % 2 == 0:
            prims.append(Primitive("sphere", (float(x), float(y), size), (size,) * 3,
                                   tint=tint, texture_freq=freq))
            placed.append((float(x), float(y), size))
        else:
            half = tuple(float(v) for v in rng.uniform(0.2, 0.45, size=3))
            prims.append(Primitive("box", (float(x), float(y), half[2]), half,
                                   yaw=float(rng.uniform(0, math.pi)), tint=tint,
                                   texture_freq=freq))
            placed.append((float(x), float(y), math.hypot(half[0], half[1])))
    light = np.array([0.45, -0.35, 0.82])
    light /= np.linalg.norm(light)
    return Scene(prims, tuple(float(v) for v in light), wall=kind == "forward",
                 texture_seed=seed)


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``T_world_cam [4, 4]`` (OpenCV: x right, y down, z forward) of a camera at ``eye``
    looking at ``target``, its x axis level with the ground (world z up)."""
    up = np.array([0.0, 0.0, 1.0])
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, down, forward, eye
    return T


def camera_poses(config: SyntheticConfig) -> np.ndarray:
    """``[N, 4, 4]`` camera-to-world poses of the layout."""
    n = config.num_views
    poses = []
    if config.kind == "orbit":
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


def intrinsics(config: SyntheticConfig) -> np.ndarray:
    """``K [3, 3]`` (principal point at the image centre, square pixels)."""
    fx = 0.5 * config.width / math.tan(0.5 * math.radians(config.fov_x_deg))
    return np.array([[fx, 0.0, config.width / 2.0], [0.0, fx, config.height / 2.0],
                     [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------ textures


def _hash3(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, salt: int) -> np.ndarray:
    """Three deterministic pseudo-random values in [0, 1) per integer lattice point, ``[N, 3]``."""
    h = (ix.astype(np.uint64) * np.uint64(73856093)) ^ (iy.astype(np.uint64)
                                                         * np.uint64(19349663))
    h ^= iz.astype(np.uint64) * np.uint64(83492791)
    h ^= np.uint64(salt * 2654435761 % (1 << 32))
    # splitmix64 finaliser: decorrelates neighbouring lattice points
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    mask = np.uint64((1 << 21) - 1)
    parts = [(h >> np.uint64(21 * k)) & mask for k in range(3)]  # three 21-bit fields
    return np.stack(parts, -1).astype(np.float64) / float(1 << 21)


def value_noise(pts: np.ndarray, freq: float, salt: int) -> np.ndarray:
    """Smooth 3D value noise ``[N, 3]`` in [0, 1] at ``pts [N, 3]`` (lattice step ``1/freq``)."""
    p = pts * freq + 1000.0  # keep lattice indices positive
    i0 = np.floor(p).astype(np.int64)
    f = p - i0
    w = f * f * (3.0 - 2.0 * f)  # smoothstep weights
    out = np.zeros((len(pts), 3))
    for dx in (0, 1):
        wx = w[:, 0] if dx else 1.0 - w[:, 0]
        for dy in (0, 1):
            wy = w[:, 1] if dy else 1.0 - w[:, 1]
            for dz in (0, 1):
                wz = w[:, 2] if dz else 1.0 - w[:, 2]
                corner = _hash3(i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz, salt)
                out += (wx * wy * wz)[:, None] * corner
    return out


def albedo(pts: np.ndarray, freq: float, tint: np.ndarray, salt: int) -> np.ndarray:
    """Colourful multi-octave solid texture ``[N, 3]`` in [0, 1]."""
    total = np.zeros((len(pts), 3))
    amplitude, norm = 1.0, 0.0
    for octave in range(3):
        total += amplitude * value_noise(pts, freq * 2.0**octave, salt * 7 + octave)
        norm += amplitude
        amplitude *= 0.5
    n = total / norm
    contrast = np.clip(0.5 + 2.2 * (n - 0.5), 0.0, 1.0)  # stretch the noise's narrow range
    return np.clip(0.08 + 0.92 * contrast * tint, 0.0, 1.0)


# ------------------------------------------------------------------ ray casting


def _intersect_sphere(o: np.ndarray, d: np.ndarray, p: Primitive) -> tuple[np.ndarray, ...]:
    c = np.asarray(p.center)
    r = p.half[0]
    oc = o - c
    b = (d * oc).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - r * r)
    sq = np.sqrt(np.maximum(disc, 0.0))
    t = -b - sq
    t = np.where(t > _EPS, t, -b + sq)
    t = np.where((disc > 0) & (t > _EPS), t, np.inf)
    hit = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    normal = (hit - c) / r
    return t, normal


def _box_rotation(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _intersect_box(o: np.ndarray, d: np.ndarray, p: Primitive) -> tuple[np.ndarray, ...]:
    R = _box_rotation(p.yaw)  # box -> world
    h = np.asarray(p.half)
    o_l = (o - np.asarray(p.center)) @ R
    d_l = d @ R
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(np.abs(d_l) < 1e-12, 1e-12, d_l)
        t1, t2 = (-h - o_l) * inv, (h - o_l) * inv
    t_near = np.minimum(t1, t2).max(-1)
    t_far = np.maximum(t1, t2).min(-1)
    t = np.where(t_near > _EPS, t_near, t_far)
    t = np.where((t_far >= t_near) & (t > _EPS), t, np.inf)
    local = o_l + np.where(np.isfinite(t), t, 0.0)[:, None] * d_l
    axis = np.argmax(np.abs(local) / h, -1)
    normal_l = np.zeros_like(local)
    rows = np.arange(len(local))
    normal_l[rows, axis] = np.sign(local[rows, axis])
    return t, normal_l @ R.T


def _intersect_plane(o: np.ndarray, d: np.ndarray, axis: int, value: float,
                     bounds: tuple[tuple[int, float, float], ...]) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (value - o[:, axis]) / d[:, axis]
    t = np.where(np.isfinite(t) & (t > _EPS), t, np.inf)
    hit = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    for ax, lo, hi in bounds:
        t = np.where((hit[:, ax] >= lo) & (hit[:, ax] <= hi), t, np.inf)
    return t


def _surfaces(scene: Scene) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [("ground", None)]
    if scene.wall:
        out.append(("wall", None))
    out += [("object", p) for p in scene.primitives]
    return out


def _nearest(scene: Scene, o: np.ndarray, d: np.ndarray, objects_only: bool = False
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit per ray: ``t [N]`` (inf = miss), surface index ``[N]`` (-1), normal."""
    n = len(d)
    best_t = np.full(n, np.inf)
    best_id = np.full(n, -1)
    best_normal = np.zeros((n, 3))
    for sid, (kind, prim) in enumerate(_surfaces(scene)):
        if kind == "ground":
            if objects_only:
                continue
            t = _intersect_plane(o, d, 2, 0.0, ((0, -GROUND_HALF, GROUND_HALF),
                                                (1, -GROUND_HALF, WALL_Y if scene.wall
                                                 else GROUND_HALF)))
            normal = np.broadcast_to(np.array([0.0, 0.0, 1.0]), (n, 3))
        elif kind == "wall":
            if objects_only:
                continue
            t = _intersect_plane(o, d, 1, WALL_Y, ((0, -GROUND_HALF - 2, GROUND_HALF + 2),
                                                   (2, 0.0, 4.0)))
            normal = np.broadcast_to(np.array([0.0, -1.0, 0.0]), (n, 3))
        elif prim.kind == "sphere":
            t, normal = _intersect_sphere(o, d, prim)
        else:
            # Only rays through the box's bounding sphere can hit it.
            bound = Primitive("sphere", prim.center, (float(np.linalg.norm(prim.half)),) * 3)
            near = np.nonzero(np.isfinite(_intersect_sphere(o, d, bound)[0]))[0]
            t = np.full(n, np.inf)
            normal = np.zeros((n, 3))
            if len(near):
                t[near], normal[near] = _intersect_box(o[near], d[near], prim)
        closer = t < best_t
        best_t = np.where(closer, t, best_t)
        best_id = np.where(closer, sid, best_id)
        best_normal = np.where(closer[:, None], normal, best_normal)
    return best_t, best_id, best_normal


def shade(scene: Scene, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, ...]:
    """Colour ``[N, 3]``, hit distance ``[N]`` and object flag ``[N]`` of unit rays."""
    t, sid, normal = _nearest(scene, o, d)
    hit = np.isfinite(t)
    colour = np.zeros((len(d), 3))
    is_object = np.zeros(len(d), bool)
    if not hit.any():
        return colour, t, is_object
    idx = np.nonzero(hit)[0]
    pts = o[idx] + t[idx, None] * d[idx]
    light = np.asarray(scene.light_dir)
    lambert = np.clip(normal[idx] @ light, 0.0, None)
    # Hard shadows: is the light blocked by an object?
    shadow_t, _, _ = _nearest(scene, pts + 1e-4 * normal[idx],
                              np.broadcast_to(light, pts.shape), objects_only=True)
    lit = np.where(np.isfinite(shadow_t), 0.0, 1.0)
    shading = 0.35 + 0.65 * lambert * lit
    surfaces = _surfaces(scene)
    base = np.zeros((len(idx), 3))
    for s, (kind, prim) in enumerate(surfaces):
        sel = sid[idx] == s
        if not sel.any():
            continue
        if kind == "ground":
            base[sel] = albedo(pts[sel], 2.5, np.asarray(scene.ground_tint),
                               scene.texture_seed * 97 + 1)
        elif kind == "wall":
            base[sel] = albedo(pts[sel], 2.0, np.asarray(scene.wall_tint),
                               scene.texture_seed * 97 + 2)
        else:
            base[sel] = albedo(pts[sel], prim.texture_freq, np.asarray(prim.tint),
                               scene.texture_seed * 97 + 3 + s)
            is_object[idx[sel]] = True
    colour[idx] = base * shading[:, None]
    return colour, t, is_object


def render_view(scene: Scene, K: np.ndarray, T_world_cam: np.ndarray, width: int, height: int,
                supersample: int = 3, chunk: int = 1 << 16) -> tuple[np.ndarray, ...]:
    """Render one camera.

    Returns:
        ``rgb [H, W, 3]`` float in [0, 1] (mean of the ``supersample^2`` rays of each
        pixel), ``depth [H, W]`` camera z-depth of the pixel-centre ray in metres (0 where
        nothing is hit) and ``mask [H, W]`` bool, True where the objects cover at least
        half of the pixel's rays.
    """
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
    obj = np.zeros(len(dirs), bool)
    for start in range(0, len(dirs), chunk):
        sl = slice(start, start + chunk)
        d = dirs[sl]
        colour[sl], dist[sl], obj[sl] = shade(scene, np.broadcast_to(origin, d.shape), d)
    colour = colour.reshape(height, s, width, s, 3)
    rgb = colour.mean((1, 3))
    mask = obj.reshape(height, s, width, s).mean((1, 3)) >= 0.5
    depth_all = np.where(np.isfinite(dist), dist * z_per_t, 0.0).reshape(height, s, width, s)
    centre = s // 2  # the pixel-centre ray for odd s (nearest to it for even s)
    depth = depth_all[:, centre, :, centre]
    return np.clip(rgb, 0.0, 1.0), depth.astype(np.float32), mask


# ------------------------------------------------------------------ writing a dataset


@dataclass
class SyntheticScene:
    """What :func:`generate` wrote."""

    path: Path
    cameras: object  # geometry.cameras.Cameras [N]
    scene: Scene
    extent: float
    meta: dict = field(default_factory=dict)


def generate(config: SyntheticConfig, quiet: bool = True) -> SyntheticScene:
    """Render the scene from every camera and write the dataset (see the module doc)."""
    import torch
    from PIL import Image

    from geometry.cameras import Cameras
    from geometry.errors import UserError
    from geometry.io.atomic import atomic_directory
    from geometry.io.transforms_json import write_transforms_json

    if config.num_views < 2:
        raise UserError(f"--num-views {config.num_views} is too few; generate at least 2 views.")
    if config.width < 16 or config.height < 16:
        raise UserError("synthetic images must be at least 16x16 pixels; raise --width/--height.")
    if config.supersample < 1:
        raise UserError("--supersample must be at least 1.")
    scene = make_scene(config.kind, config.num_objects, config.seed)
    K = intrinsics(config)
    poses = camera_poses(config)
    names = [f"{i:03d}" for i in range(config.num_views)]
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the synthetic scene.")
    with atomic_directory(out) as tmp:
        for sub in ("images", "depth", "masks"):
            (tmp / sub).mkdir()
        from rich.progress import Progress

        with Progress(disable=quiet, transient=True) as progress:
            task = progress.add_task("rendering", total=len(poses))
            for name, T in zip(names, poses, strict=True):
                rgb, depth, mask = render_view(scene, K, T, config.width, config.height,
                                               config.supersample)
                Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8)).save(
                    tmp / "images" / f"{name}.png")
                np.save(tmp / "depth" / f"{name}.npy", depth)
                Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / "masks" / f"{name}.png")
                progress.advance(task)
        cameras = Cameras(K=torch.from_numpy(K), T_world_cam=torch.from_numpy(poses),
                          width=config.width, height=config.height,
                          image_paths=[str(tmp / "images" / f"{n}.png") for n in names])
        meta = {
            "generator": "reconstruction.eval.synthetic",
            "config": {k: (str(v) if isinstance(v, Path) else v)
                       for k, v in asdict(config).items() if k != "out"},
            "scene_extent": scene.extent(),
            "scene": asdict(scene),
            "depth": "z-depth in metres along the camera's optical axis; 0 where nothing is hit",
        }
        file = write_transforms_json(tmp / "transforms.json", cameras,
                                     file_paths=[f"images/{n}.png" for n in names],
                                     extra={"sparseview_synthetic": meta})
        data = json.loads(file.read_text(encoding="utf-8"))
        for frame, name in zip(data["frames"], names, strict=True):
            frame["depth_file_path"] = f"depth/{name}.npy"
            frame["mask_path"] = f"masks/{name}.png"
        file.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    final = Cameras(K=torch.from_numpy(K), T_world_cam=torch.from_numpy(poses),
                    width=config.width, height=config.height,
                    image_paths=[str(out / "images" / f"{n}.png") for n in names])
    return SyntheticScene(path=out, cameras=final, scene=scene, extent=scene.extent(), meta=meta)


def main() -> None:
    """``python -m reconstruction.eval.synthetic --out DIR [--kind orbit|forward] ...``."""
    import tyro

    from geometry.errors import run_cli

    def _main() -> None:
        config = tyro.cli(SyntheticConfig, prog="python -m reconstruction.eval.synthetic",
                          description="Render a synthetic scene with ground-truth cameras, "
                                      "depth and masks (transforms.json layout).")
        result = generate(config, quiet=False)
        print(f"wrote {result.path}: {config.num_views} views {config.width}x{config.height}, "
              f"scene extent {result.extent:.2f} m")

    run_cli(_main, prog="python -m reconstruction.eval.synthetic")


if __name__ == "__main__":
    main()
