"""Training and evaluation data of UpSRT: object sequences (photos around one object with
known cameras) and the batches drawn from them.

Sources:

- :func:`synthetic_sequences`: generated objects (the procedural ray caster: a small
  cluster of textured spheres and boxes, composited on white with its object mask, as
  UpFusion's masked inputs), cameras on a ring around it at varying elevation;
- :func:`co3d_sequences`: CO3D-style folders (``gt_cameras.npz`` + frames, read by
  :func:`geometry.io.co3d.read_co3d`), centre-cropped to a square and resized.

A batch (:func:`sample_batch`) holds ``B`` view sets of ``V`` inputs each (``V`` one value
per batch, as the official variable-view training), their reference frames (the first
input is the reference view, scale from its distance to the object centre) and ``N`` query
rays per set with their colours, drawn from all views of the sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geometry.cameras import Cameras
from geometry.errors import UserError
from reconstruction.upfusion import rays as R

BACKGROUND = 1.0  # white, as UpFusion's masked photos


@dataclass
class ObjectSequence:
    """Photos of one object with their cameras."""

    images: Tensor  # [N, H, W, 3] float32 in [0, 1]
    cameras: Cameras  # [N] OpenCV, world frame
    centre: Tensor  # [3] float64 object centre (world)
    masks: Tensor | None = None  # [N, H, W] bool
    world: object | None = None
    """The procedural world (synthetic sequences), for oracle renders."""

    def __len__(self) -> int:
        return len(self.images)


# ---------------------------------------------------------------------------- synthetic


def object_cluster_world(seed: int):
    """A reproducible cluster of 1-3 textured solids near the origin (``ObjectWorld``)."""
    from reconstruction.procedural.raycast import Solid
    from reconstruction.procedural.worlds import ObjectWorld

    rng = np.random.default_rng(seed)
    solids = []
    count = int(rng.integers(1, 4))
    for i in range(count):
        tint = tuple(float(v) for v in rng.uniform(0.3, 1.0, size=3))
        freq = float(rng.uniform(2.0, 6.0))
        x, y = (rng.uniform(-0.35, 0.35, size=2) if i else (0.0, 0.0))
        if rng.random() < 0.5:
            r = float(rng.uniform(0.25, 0.5))
            solids.append(Solid("sphere", (float(x), float(y), r), (r, r, r), tint=tint,
                                texture_freq=freq))
        else:
            half = tuple(float(v) for v in rng.uniform(0.15, 0.45, size=3))
            solids.append(Solid("box", (float(x), float(y), half[2]), half,
                                yaw=float(rng.uniform(0, math.pi)), tint=tint,
                                texture_freq=freq))
    light = np.array([0.4, -0.5, 0.8]) + rng.normal(0, 0.15, 3)
    light = tuple(float(v) for v in light / np.linalg.norm(light))
    return ObjectWorld(solids=solids, light_dir=light, texture_seed=seed)


def ring_cameras(num_views: int, size: int, seed: int, radius: float = 2.6,
                 centre: tuple[float, float, float] = (0.0, 0.0, 0.35),
                 fov_deg: float = 45.0, elevation_deg: tuple[float, float] = (10.0, 45.0)
                 ) -> Cameras:
    """``[num_views]`` cameras evenly around ``centre`` (random start azimuth), elevation
    varying smoothly within ``elevation_deg``, square ``size`` images."""
    from geometry.se3 import look_at

    rng = np.random.default_rng(seed + 7919)
    start = rng.uniform(0, 2 * math.pi)
    phase = rng.uniform(0, 2 * math.pi)
    lo, hi = elevation_deg
    poses = []
    for k in range(num_views):
        azimuth = start + 2 * math.pi * k / num_views
        elevation = math.radians(lo + (hi - lo) * 0.5 * (1 + math.sin(phase + 3 * azimuth)))
        eye = np.asarray(centre) + radius * np.array([
            math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation)])
        poses.append(look_at(eye, np.asarray(centre)))
    f = 0.5 * size / math.tan(0.5 * math.radians(fov_deg))
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float64)
    return Cameras(K=K.expand(num_views, 3, 3), T_world_cam=torch.from_numpy(np.stack(poses)),
                   width=size, height=size)


def render_sequence(world, cameras: Cameras, supersample: int = 2) -> tuple[Tensor, Tensor]:
    """Photos ``[N, H, W, 3]`` (objects on white) and masks ``[N, H, W]`` of a world."""
    from reconstruction.procedural.scene import render_view

    images, masks = [], []
    for k in range(len(cameras)):
        view = render_view(world, cameras.K[k].numpy(), cameras.T_world_cam[k].numpy(),
                           int(cameras.width[k]), int(cameras.height[k]), supersample)
        # coverage of the object id map over the sub-pixel rays would need the raw rays;
        # the >= half mask is sharp enough at these sizes
        mask = view.mask
        rgb = np.where(mask[..., None], view.rgb, BACKGROUND)
        images.append(torch.from_numpy(rgb.astype(np.float32)))
        masks.append(torch.from_numpy(mask))
    return torch.stack(images), torch.stack(masks)


def synthetic_sequence(seed: int, num_views: int = 24, size: int = 64,
                       supersample: int = 2) -> ObjectSequence:
    """One generated object sequence (see the module doc)."""
    world = object_cluster_world(seed)
    centre = (0.0, 0.0, 0.3)
    cameras = ring_cameras(num_views, size, seed, centre=centre)
    images, masks = render_sequence(world, cameras, supersample)
    return ObjectSequence(images=images, cameras=cameras,
                          centre=torch.tensor(centre, dtype=torch.float64), masks=masks,
                          world=world)


def synthetic_sequences(seeds: range | list[int], num_views: int = 24, size: int = 64,
                        supersample: int = 2, quiet: bool = True) -> list[ObjectSequence]:
    """Generated object sequences, one per seed."""
    from geometry.progress import progress_bar

    out = []
    with progress_bar("generating object sequences", quiet=quiet) as bar:
        task = bar.add_task("generating object sequences", total=len(seeds))
        for seed in seeds:
            out.append(synthetic_sequence(int(seed), num_views, size, supersample))
            bar.advance(task)
    return out


# ---------------------------------------------------------------------------- CO3D


def _square(image: np.ndarray, K: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crop to a square and resize to ``size``; the intrinsics follow."""
    import cv2

    h, w = image.shape[:2]
    side = min(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    crop = image[y0:y0 + side, x0:x0 + side]
    scale = size / side
    out = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    K = K.copy()
    K[0, 2] -= x0
    K[1, 2] -= y0
    K[:2] *= scale
    return out, K


def co3d_sequences(root: Path, size: int = 64, max_frames: int = 24,
                   max_sequences: int | None = None) -> list[ObjectSequence]:
    """Every CO3D-style sequence under ``root`` (folders holding ``gt_cameras.npz`` and
    their frames), ``max_frames`` frames each (evenly spaced), square ``size`` photos. The
    object centre is the point nearest to every optical axis."""
    from PIL import Image

    from geometry.io.co3d import read_co3d
    from reconstruction.generative.cameras import axes_centre

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--co3d {root} is not a folder; give a folder of CO3D sequences "
                        "(each with gt_cameras.npz and its frames).")
    folders = sorted(p.parent for p in root.rglob("gt_cameras.npz"))
    if max_sequences is not None:
        folders = folders[:max_sequences]
    if not folders:
        raise UserError(f"{root} holds no CO3D sequence (no gt_cameras.npz below it); give "
                        "the folder of the sequences.")
    out = []
    for folder in folders:
        cams = read_co3d(folder, dtype=torch.float64)
        if not cams.image_paths:
            raise UserError(f"{folder} has cameras but no frames; put the frames next to "
                            "gt_cameras.npz.")
        index = np.linspace(0, len(cams) - 1, min(max_frames, len(cams))).round().astype(int)
        images, Ks = [], []
        for i in index:
            with Image.open(cams.image_paths[i]) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            img, K = _square(rgb, cams.K[i].numpy(), size)
            images.append(torch.from_numpy(img))
            Ks.append(torch.from_numpy(K))
        T = cams.T_world_cam[torch.as_tensor(index)]
        cameras = Cameras(K=torch.stack(Ks), T_world_cam=T, width=size, height=size)
        centre = axes_centre(torch.linalg.inv(T))
        out.append(ObjectSequence(images=torch.stack(images), cameras=cameras, centre=centre))
    return out


# ---------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """A training batch of ``B`` view sets with ``V`` inputs and ``N`` query rays each."""

    images: Tensor  # [B, V, H, W, 3]
    K: Tensor  # [B, V, 3, 3]
    T_world_cam: Tensor  # [B, V, 4, 4] (only for input_rays="relative")
    T_ref_world: Tensor  # [B, 4, 4]
    image_size: tuple[int, int]  # (width, height)
    rays: Tensor  # [B, N, 6] Plücker query rays in each set's reference frame
    colours: Tensor  # [B, N, 3] their colours

    def to(self, device) -> Batch:
        return Batch(self.images.to(device), self.K.to(device), self.T_world_cam.to(device),
                     self.T_ref_world.to(device), self.image_size, self.rays.to(device),
                     self.colours.to(device))


def view_set(sequence: ObjectSequence, index: list[int] | Tensor):
    """The :class:`~.upsrt.ViewSet` of some views of a sequence (first = reference)."""
    from reconstruction.upfusion.upsrt import ViewSet

    index = torch.as_tensor(index)
    cams = sequence.cameras[index]
    return ViewSet(images=sequence.images[index], cameras=cams,
                   T_ref_world=R.reference_frame(cams[0:1], sequence.centre))


def sample_batch(sequences: list[ObjectSequence], batch_size: int, num_views: int,
                 num_queries: int, generator: torch.Generator,
                 foreground_fraction: float = 0.0) -> Batch:
    """``batch_size`` random view sets of ``num_views`` inputs and ``num_queries`` random
    query pixels (any view of the sequence, inputs included); with masks, a
    ``foreground_fraction`` of them on the object (the rest uniform: the white background
    is most of a photo and easy to learn, the object is what the extra views inform)."""
    images, Ks, Ts, refs, rays, colours = [], [], [], [], [], []
    size = None
    for _ in range(batch_size):
        seq = sequences[int(torch.randint(len(sequences), (1,), generator=generator))]
        n = len(seq)
        if num_views > n:
            raise UserError(f"a sequence has {n} views, fewer than the {num_views} inputs "
                            "asked for; lower --views.")
        index = torch.randperm(n, generator=generator)[:num_views]
        cams = seq.cameras[index]
        T_ref_world = R.reference_frame(cams[0:1], seq.centre)
        h, w = seq.images.shape[1:3]
        size = (w, h)
        q_view = torch.randint(n, (num_queries,), generator=generator)
        q_u = torch.randint(w, (num_queries,), generator=generator)
        q_v = torch.randint(h, (num_queries,), generator=generator)
        n_fg = int(round(foreground_fraction * num_queries)) if seq.masks is not None else 0
        if n_fg:
            fg = seq.masks[q_view[:n_fg]].reshape(n_fg, -1).float()  # [n_fg, H*W]
            empty = fg.sum(-1) == 0
            fg[empty] = 1.0  # a view without object: uniform
            pick = torch.multinomial(fg, 1, generator=generator)[:, 0]
            q_v[:n_fg], q_u[:n_fg] = pick // w, pick % w
        uv = torch.stack((q_u, q_v), -1).double() + 0.5
        ray = torch.empty(num_queries, 6, dtype=torch.float64)
        for view in q_view.unique():
            sel = q_view == view
            ray[sel] = R.query_rays(seq.cameras[view.reshape(1)], T_ref_world, uv[sel])[0]
        images.append(seq.images[index])
        Ks.append(cams.K)
        Ts.append(cams.T_world_cam)
        refs.append(T_ref_world)
        rays.append(ray.float())
        colours.append(seq.images[q_view, q_v, q_u])
    return Batch(torch.stack(images), torch.stack(Ks).float(), torch.stack(Ts).float(),
                 torch.stack(refs), size, torch.stack(rays), torch.stack(colours))
