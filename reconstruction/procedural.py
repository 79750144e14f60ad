"""Procedural textured scenes with exact cameras: the shipped sample and the test scenes.

A scene is a set of textured rectangles (a floor, a back wall and boxes), ray-cast in
numpy with 2x2 supersampling and flat Lambertian shading. Textures are random value
noise under random coloured discs and bars, so SIFT finds plenty of features at any
size. Everything follows from the seed, so the images are reproducible bit for bit; no
third-party data is involved, which keeps the sample license-clean.

World frame: z up, metres. Cameras are OpenCV (x right, y down, z forward) and look at
the scene centre from an arc in front of it::

            back wall (y = 1.6)
        +---------------------------+
        |     [box]      [box]      |     floor z = 0
        +---------------------------+
              \\      |      /
               cam0  cam1  cam2        (arc of radius ~3.2 m, 1.6 m high)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from geometry.cameras import Cameras


@dataclass
class Quad:
    """A textured rectangle ``origin + a * edge_u + b * edge_v``, ``a, b in [0, 1]``."""

    origin: np.ndarray  # [3]
    edge_u: np.ndarray  # [3]
    edge_v: np.ndarray  # [3] orthogonal to edge_u
    texture: int  # index into the scene's textures


@dataclass
class ProceduralScene:
    """Rendered views and their exact cameras."""

    images: list[np.ndarray]  # V x [H, W, 3] uint8
    cameras: Cameras  # V cameras (K, T_world_cam, width, height)


def _texture(rng: np.random.Generator, tint: np.ndarray, size: int = 1024) -> np.ndarray:
    """``[size, size, 3]`` float texture: tinted value noise under discs and bars."""
    import cv2

    tex = np.zeros((size, size, 3), np.float32)
    for octave, weight in ((8, 0.5), (32, 0.3), (128, 0.2)):
        grid = rng.random((octave, octave, 3)).astype(np.float32)
        reps = size // octave
        up = np.kron(grid, np.ones((reps, reps, 1), np.float32))
        k = 2 * max(1, reps // 2) + 1  # blur over about a cell: smooth, not blocky
        tex += weight * cv2.blur(up, (k, k), borderType=cv2.BORDER_REFLECT)
    tex = 0.2 + 0.45 * tex + 0.35 * tint[None, None, :].astype(np.float32)
    tex = np.ascontiguousarray(tex)
    for _ in range(size * size // 2500):  # discs
        centre = tuple(int(c) for c in rng.integers(0, size, 2))
        colour = tuple(float(c) for c in rng.random(3))
        cv2.circle(tex, centre, int(rng.integers(3, 14)), colour, -1, cv2.LINE_AA)
    for _ in range(size // 12):  # bars
        x0, y0 = (int(c) for c in rng.integers(0, size, 2))
        w, h = (int(c) for c in rng.integers(2, 16, 2))
        tex[y0:y0 + h, x0:x0 + w] = rng.random(3)
    return np.clip(tex, 0, 1).astype(np.float64)


def _box(lo: np.ndarray, hi: np.ndarray, texture: int) -> list[Quad]:
    """The five visible faces (no bottom) of an axis-aligned box."""
    x0, y0, z0 = lo
    x1, y1, z1 = hi
    ex, ey, ez = np.array([x1 - x0, 0, 0]), np.array([0, y1 - y0, 0]), np.array([0, 0, z1 - z0])
    return [
        Quad(np.array([x0, y0, z1]), ex, ey, texture),  # top
        Quad(np.array([x0, y0, z0]), ex, ez, texture),  # front (-y)
        Quad(np.array([x0, y1, z0]), ex, ez, texture),  # back (+y)
        Quad(np.array([x0, y0, z0]), ey, ez, texture),  # left (-x)
        Quad(np.array([x1, y0, z0]), ey, ez, texture),  # right (+x)
    ]


def look_at(eye: np.ndarray, target: np.ndarray, up: tuple = (0.0, 0.0, 1.0)) -> np.ndarray:
    """``T_world_cam [4, 4]`` (OpenCV axes) of a camera at ``eye`` looking at ``target``."""
    up = np.asarray(up, dtype=np.float64)
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye
    return T


def default_quads() -> list[Quad]:
    quads = [
        Quad(np.array([-2.5, -2.0, 0.0]), np.array([5.0, 0, 0]), np.array([0, 3.6, 0]), 0),
        Quad(np.array([-2.5, 1.6, 0.0]), np.array([5.0, 0, 0]), np.array([0, 0, 2.2]), 1),
    ]
    quads += _box(np.array([-0.9, -0.35, 0.0]), np.array([-0.25, 0.25, 0.55]), 2)
    quads += _box(np.array([0.15, -0.6, 0.0]), np.array([0.75, -0.05, 0.35]), 3)
    quads += _box(np.array([0.35, 0.6, 0.0]), np.array([0.95, 1.1, 0.8]), 4)
    return quads


def render(quads: list[Quad], textures: list[np.ndarray], K: np.ndarray,
           T_world_cam: np.ndarray, width: int, height: int,
           supersample: int = 2) -> np.ndarray:
    """Ray-cast ``[H, W, 3]`` uint8 (pixel centres at +0.5, averaged over sub-pixels)."""
    s = supersample
    offsets = (np.arange(s) + 0.5) / s
    u = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    v = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
    uu, vv = np.meshgrid(u, v)  # [H*s, W*s]
    dirs_cam = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1],
                         np.ones_like(uu)], -1).reshape(-1, 3)
    dirs = dirs_cam @ T_world_cam[:3, :3].T
    eye = T_world_cam[:3, 3]
    best_t = np.full(len(dirs), np.inf)
    colour = np.zeros((len(dirs), 3))
    # Sky: a vertical gradient, textureless on purpose (no features off the scene).
    sky = np.clip(0.55 + 0.4 * dirs[:, 2:3] / np.linalg.norm(dirs, axis=1, keepdims=True), 0, 1)
    colour[:] = sky * np.array([0.6, 0.75, 0.95])
    light = np.array([0.4, -0.6, 0.7])
    light /= np.linalg.norm(light)
    texel = 1.0 / 200  # metres per texel: a 1024 texture spans 5.1 m, the widest quad
    for index, quad in enumerate(quads):
        normal = np.cross(quad.edge_u, quad.edge_v)
        normal /= np.linalg.norm(normal)
        denom = dirs @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((quad.origin - eye) @ normal) / denom
        p = eye + t[:, None] * dirs
        rel = p - quad.origin
        a = rel @ quad.edge_u / (quad.edge_u @ quad.edge_u)
        b = rel @ quad.edge_v / (quad.edge_v @ quad.edge_v)
        hit = (t > 1e-6) & (t < best_t) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
        if not hit.any():
            continue
        tex = textures[quad.texture]
        size = tex.shape[0]
        # Each face reads its own part of the texture: repeated patterns would give SIFT
        # consistent false matches (measured: 10 % of the verified matches of a pair).
        offset = size * ((0.37 * index) % 1.0), size * ((0.61 * index) % 1.0)
        tx = (a[hit] * np.linalg.norm(quad.edge_u) / texel + offset[0]) % size
        ty = (b[hit] * np.linalg.norm(quad.edge_v) / texel + offset[1]) % size
        x0, y0 = np.floor(tx).astype(int), np.floor(ty).astype(int)
        fx, fy = (tx - x0)[:, None], (ty - y0)[:, None]
        x1, y1 = (x0 + 1) % size, (y0 + 1) % size
        sample = ((1 - fx) * (1 - fy) * tex[y0, x0] + fx * (1 - fy) * tex[y0, x1]
                  + (1 - fx) * fy * tex[y1, x0] + fx * fy * tex[y1, x1])
        shade = 0.55 + 0.45 * abs(float(normal @ light))
        colour[hit] = sample * shade
        best_t[hit] = t[hit]
    img = colour.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_scene(num_views: int = 3, width: int = 320, height: int = 240, seed: int = 0,
               arc_deg: float = 30.0, fov_deg: float = 55.0, radius: float = 3.2,
               camera_height: float = 1.6) -> ProceduralScene:
    """Render the default scene from ``num_views`` cameras spread over ``arc_deg`` degrees."""
    rng = np.random.default_rng(seed)
    tints = np.array([[0.9, 0.8, 0.6], [0.6, 0.7, 0.9], [0.9, 0.4, 0.3], [0.3, 0.8, 0.4],
                      [0.8, 0.7, 0.2]])
    textures = [_texture(rng, tint) for tint in tints]
    quads = default_quads()
    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    centre = np.array([0.0, 0.2, 0.3])
    angles = np.linspace(-arc_deg / 2, arc_deg / 2, num_views) if num_views > 1 else [0.0]
    images, poses = [], []
    for k, angle in enumerate(angles):
        theta = math.radians(angle)
        # Cameras on one circle all looking at one point are a critical motion for focal
        # self-calibration; real hand-held shots are not, so vary heights and aim points.
        wobble = 0.15 * math.sin(1.7 * k + seed)
        eye = np.array([radius * math.sin(theta), -radius * math.cos(theta),
                        camera_height + wobble])
        target = centre + 0.3 * np.array([math.sin(2.3 * k + seed), math.cos(1.1 * k), 0.0])
        T = look_at(eye, target)
        images.append(render(quads, textures, K, T, width, height))
        poses.append(T)
    cameras = Cameras(K=torch.from_numpy(K)[None].expand(num_views, 3, 3),
                      T_world_cam=torch.from_numpy(np.stack(poses)), width=width, height=height)
    return ProceduralScene(images=images, cameras=cameras)


def write_scene(scene: ProceduralScene, folder, prefix: str = "view",
                exif_focal: bool = True) -> list:
    """Save the views as PNGs ``folder/{prefix}_{k:02d}.png``; the paths.

    With ``exif_focal`` each PNG carries an EXIF block like a camera's: make, model and the
    35 mm-equivalent focal length (whole millimetres, as cameras write it, so the prior is
    off by up to ~2 %).
    """
    from pathlib import Path

    from PIL import ExifTags, Image

    from reconstruction.images import FULL_FRAME_DIAGONAL_MM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(scene.images):
        path = folder / f"{prefix}_{k:02d}.png"
        exif = Image.Exif()
        if exif_focal:
            h, w = img.shape[:2]
            f35 = float(scene.cameras.K[k, 0, 0]) * FULL_FRAME_DIAGONAL_MM / math.hypot(w, h)
            exif[ExifTags.Base.Make] = "sparseview"
            exif[ExifTags.Base.Model] = "procedural"
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.FocalLengthIn35mmFilm] = round(f35)
        Image.fromarray(img).save(path, optimize=True, exif=exif)
        paths.append(path)
    return paths
