"""Training and evaluation scenes for NeO 360: outdoor procedural scenes, 360-degree rigs.

Scenes come from the one procedural generator (``SceneConfig(kind="outdoor")``: objects on
a wide ground, buildings 8-14 m away, sky), rendered in memory, and are moved into the
model's field frame: ``x_field = (x_world - target) * scale`` with the rig's target as the
centre and ``scale = camera_radius / rig radius`` (cameras about ``camera_radius`` from the
centre, the objects inside the unit sphere, the buildings beyond it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from geometry.cameras import Cameras
from geometry.se3 import make_T, mirror_x
from geometry.so3 import axis_angle_to_matrix
from reconstruction.field.rays import Rays, camera_rays

#: The outdoor rig looks at this point (``reconstruction.procedural.scene``).
RIG_TARGET = (0.0, 0.0, 0.35)


@dataclass
class SceneViews:
    """One scene's views in the field frame."""

    images: Tensor  # [V, H, W, 3] float32 in [0, 1]
    cameras: Cameras  # [V] float32, field frame
    name: str = ""
    depth: Tensor | None = None
    """``[V, H, W]`` camera z-depth in field units, 0 where nothing is hit (sky); known for
    generated scenes, for :func:`pixel_regions`."""

    def rays(self, index: int) -> Rays:
        """``[H, W]`` rays of view ``index``."""
        return camera_rays(self.cameras[[index]]).reshape(*self.images.shape[1:3])


#: The names of :func:`pixel_regions`' labels 0, 1, 2.
REGIONS = ("sky", "foreground", "background")


def pixel_regions(scene: SceneViews, index: int) -> Tensor:
    """``[H, W]`` label of each pixel of view ``index`` by what it sees (needs
    ``scene.depth``): 0 nothing (sky), 1 a surface inside the unit sphere (NeO 360's
    foreground decoders), 2 a surface beyond it (the background decoders)."""
    if scene.depth is None:
        raise ValueError(f"scene {scene.name!r} has no depth maps")
    rays = scene.rays(index)
    z = scene.depth[index].to(rays.origins)
    hit = rays.origins + (z / rays.z_per_t)[..., None] * rays.directions
    inside = hit.norm(dim=-1) < 1.0
    return torch.where(z > 0, torch.where(inside, 1, 2), 0)


def to_field_frame(cameras: Cameras, centre: Tensor, scale: float) -> Cameras:
    """``cameras`` with ``T_world_cam`` moved into the field frame (intrinsics unchanged)."""
    T = cameras.T_world_cam.clone()
    T[..., :3, 3] = (T[..., :3, 3] - centre.to(T)) * scale
    return Cameras(K=cameras.K, T_world_cam=T, width=cameras.width, height=cameras.height,
                   names=cameras.names)


@dataclass
class SyntheticScenes:
    """Options of the generated outdoor scenes."""

    num_scenes: int = 24
    """Scenes to generate."""
    views: int = 12
    """Views per scene (a full circle)."""
    size: int = 64
    """Image width and height (pixels)."""
    seed: int = 0
    """First scene seed (scene k uses seed + k)."""
    elevation_deg: float = 20.0
    """Mean camera elevation of the rigs."""
    supersample: int = 2
    """Anti-aliasing rays per pixel along each axis."""


def generate_scenes(options: SyntheticScenes, camera_radius: float = 2.0,
                    quiet: bool = True) -> list[SceneViews]:
    """Render ``options.num_scenes`` outdoor scenes into the field frame."""
    from geometry.progress import progress_bar
    from reconstruction.procedural.scene import SceneConfig, render

    scenes = []
    with progress_bar("generating outdoor scenes", quiet=quiet) as bar:
        task = bar.add_task("scenes", total=options.num_scenes)
        for k in range(options.num_scenes):
            config = SceneConfig(kind="outdoor", num_views=options.views, width=options.size,
                                 height=options.size, seed=options.seed + k,
                                 elevation_deg=options.elevation_deg,
                                 supersample=options.supersample)
            scene = render(config)
            scale = camera_radius / scene.config.radius
            cams = to_field_frame(scene.cameras.to(dtype=torch.float32),
                                  torch.tensor(RIG_TARGET), scale)
            images = torch.from_numpy(scene.images).float() / 255.0
            depth = torch.from_numpy(scene.depth).float() * scale
            scenes.append(SceneViews(images, cams, f"outdoor-{options.seed + k}", depth))
            bar.update(task, advance=1)
    return scenes


def spread_views(num_views: int, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` source views spread around a circle of ``num_views`` (random start, about
    evenly spaced, jittered by one view)."""
    start = int(rng.integers(num_views))
    out = []
    for i in range(count):
        k = (start + round(i * num_views / count) + int(rng.integers(-1, 2))) % num_views
        while k in out:
            k = (k + 1) % num_views
        out.append(k)
    return out


@dataclass
class Batch:
    """One training step: a scene's source views and target rays."""

    images: Tensor  # [S, H, W, 3]
    K: Tensor  # [S, 3, 3]
    T_world_cam: Tensor  # [S, 4, 4] field frame
    rays: Rays  # [N] field frame
    rgb: Tensor  # [N, 3] target colours
    patch: int = 0
    """> 0: the rays are whole ``patch x patch`` image patches, row-major, one after the
    other (``rgb.reshape(-1, patch, patch, 3)`` are the patches; for LPIPS)."""


def pixel_rays(cameras: Cameras, rows: Tensor, cols: Tensor) -> Rays:
    """:func:`~reconstruction.field.rays.camera_rays` through the pixel centres
    ``(rows, cols) [N]``, one pixel of each of ``cameras [N]``, as rays ``[N]``."""
    uv = torch.stack((cols + 0.5, rows + 0.5), -1)[:, None]
    return camera_rays(cameras, uv).reshape(-1)


def _sources(scene: SceneViews, rng: np.random.Generator, num_sources: int
             ) -> tuple[list[int], list[int]]:
    """``num_sources`` spread views of ``scene`` and the other views (the targets; the
    sources themselves when there is no other)."""
    V = len(scene.images)
    src = spread_views(V, num_sources, rng)
    return src, [k for k in range(V) if k not in src] or src


def _batch(scene: SceneViews, src: list[int], views: np.ndarray, rows: np.ndarray,
           cols: np.ndarray, device: str | torch.device, patch: int = 0) -> Batch:
    rows_t, cols_t = torch.from_numpy(rows), torch.from_numpy(cols)
    views_t = torch.from_numpy(views)
    rays = pixel_rays(scene.cameras[views_t], rows_t.float(), cols_t.float()).to(device)
    rgb = scene.images[views_t, rows_t, cols_t]
    s = scene.cameras[src]
    return Batch(scene.images[src].to(device), s.K.to(device), s.T_world_cam.to(device),
                 rays, rgb.to(device), patch)


def augment_scene(scene: SceneViews, rng: np.random.Generator) -> SceneViews:
    """The same scene in another field frame: turned by a random yaw about the up axis
    (z), and with probability 1/2 mirrored left-right (world x and every view's image
    columns, so camera-to-world ``F T S`` with ``F = S = diag(-1, 1, 1)``; the images stay
    consistent, shading and shadows included, for a principal point at the image centre).
    Gives the triplanes other layouts of the same scenes (the ground plane stays xy)."""
    yaw = float(rng.uniform(0.0, 2.0 * np.pi))
    mirror = bool(rng.random() < 0.5)
    cams = scene.cameras
    T = cams.T_world_cam
    R, t = T[..., :3, :3], T[..., :3, 3]
    if mirror:
        R, t = mirror_x(R, t)
    Rz = axis_angle_to_matrix(torch.tensor([0.0, 0.0, yaw], dtype=T.dtype, device=T.device))
    moved = Cameras(K=cams.K, T_world_cam=make_T(Rz @ R, t @ Rz.T), width=cams.width,
                    height=cams.height, names=cams.names)
    if not mirror:
        return SceneViews(scene.images, moved, scene.name, scene.depth)
    depth = None if scene.depth is None else scene.depth.flip(2)
    return SceneViews(scene.images.flip(2), moved, scene.name, depth)


def make_batch(scenes: list[SceneViews], rng: np.random.Generator, num_sources: int,
               num_rays: int, device: str | torch.device = "cpu", augment: bool = False
               ) -> Batch:
    """A random scene, ``num_sources`` spread views, and ``num_rays`` random pixels of the
    other views (targets never include the sources); with ``augment``, the scene in a
    random field frame (:func:`augment_scene`)."""
    scene = scenes[int(rng.integers(len(scenes)))]
    if augment:
        scene = augment_scene(scene, rng)
    _, H, W, _ = scene.images.shape
    src, others = _sources(scene, rng, num_sources)
    views = rng.choice(others, size=num_rays)
    pix = rng.integers(0, H * W, size=num_rays)
    return _batch(scene, src, views, pix // W, pix % W, device)


def make_patch_batch(scenes: list[SceneViews], rng: np.random.Generator, num_sources: int,
                     patches: int, patch: int, device: str | torch.device = "cpu",
                     augment: bool = False) -> Batch:
    """Like :func:`make_batch`, but the targets are ``patches`` whole ``patch x patch``
    patches (random views among the others, random places), for a patch loss (LPIPS)."""
    scene = scenes[int(rng.integers(len(scenes)))]
    if augment:
        scene = augment_scene(scene, rng)
    _, H, W, _ = scene.images.shape
    if patch > min(H, W):
        raise ValueError(f"a {patch} px patch does not fit {W}x{H} images")
    src, others = _sources(scene, rng, num_sources)
    views = rng.choice(others, size=patches)
    top = rng.integers(0, H - patch + 1, size=patches)
    left = rng.integers(0, W - patch + 1, size=patches)
    r, c = np.meshgrid(np.arange(patch), np.arange(patch), indexing="ij")
    rows = (top[:, None, None] + r).reshape(-1)
    cols = (left[:, None, None] + c).reshape(-1)
    return _batch(scene, src, np.repeat(views, patch * patch), rows, cols, device, patch)
