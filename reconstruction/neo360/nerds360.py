"""Reader of the NeRDS360 layout (NeO 360's dataset), its pose convention converted once here.

Layout of one scene (``SCENE/``)::

    SCENE/train/rgb/<name>.png        photos (the source/training views)
    SCENE/train/pose/pose.json        {"focal": f (pixels at img_size), "img_size": [W, H],
                                       "obj_location": [x, y, z],
                                       "transform": {"<name>": 4x4 camera-to-world}, ...}
    SCENE/val/rgb/, SCENE/val/pose/pose.json     the held-out views, same format

Poses are Parallel Domain camera-to-world matrices whose camera axes are x right, y forward,
z up. NeO 360's loader turns them into NeRF/OpenGL axes with ``c2w @ flip`` (``flip``: x, z,
-y) and casts rays with ``(i - W/2, -(j - H/2), -f)``; here they become OpenCV axes directly:
``R_cv = R_pd @ [[1, 0, 0], [0, 0, 1], [0, -1, 0]]`` (x right, y = -z_pd down, z = y_pd
forward). The principal point is the image centre in our corner convention (``cx = W/2``;
NeO 360's loader omits the half-pixel, a 0.5 px shift its authors accept). ``obj_location``
is the scene centre (what NeO 360 subtracts before scaling the poses).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geometry.cameras import Cameras
from geometry.errors import UserError

#: Parallel Domain camera axes -> OpenCV camera axes (right-multiplied onto R_world_cam).
PD_TO_OPENCV = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@dataclass
class NeRDS360Split:
    """One split of a NeRDS360 scene: photos, OpenCV cameras (world frame, metres)."""

    image_paths: list[Path]
    cameras: Cameras  # [V] float64, at the file's img_size
    centre: np.ndarray  # [3] obj_location


def read_split(scene: str | Path, split: str = "train") -> NeRDS360Split:
    """Read ``scene/split`` (``train`` or ``val``)."""
    folder = Path(scene) / split
    pose_file = folder / "pose" / "pose.json"
    if not pose_file.is_file():
        raise UserError(f"{folder} has no pose/pose.json; give a NeRDS360 scene folder "
                        "(with train/ and val/).")
    try:
        data = json.loads(pose_file.read_text("utf-8"))
        focal = float(data["focal"])
        width, height = (int(v) for v in data["img_size"])
        centre = np.asarray(data["obj_location"], float).reshape(3)
        transforms = {str(k): np.asarray(v, float).reshape(4, 4)
                      for k, v in data["transform"].items()}
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{pose_file} is not a NeRDS360 pose file ({err}).") from None
    images = sorted(p for p in (folder / "rgb").glob("*") if p.suffix.lower() in
                    (".png", ".jpg", ".jpeg"))
    if not images:
        raise UserError(f"{folder / 'rgb'} holds no photos.")
    poses = []
    for path in images:
        if path.stem not in transforms:
            raise UserError(f"{pose_file} has no pose for {path.name}.")
        T = transforms[path.stem].copy()
        T[:3, :3] = T[:3, :3] @ PD_TO_OPENCV
        poses.append(T)
    K = torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0, 0, 1.0]],
                     dtype=torch.float64)
    cameras = Cameras(K=K[None].expand(len(images), 3, 3),
                      T_world_cam=torch.from_numpy(np.stack(poses)), width=width,
                      height=height, names=[p.name for p in images])
    return NeRDS360Split(images, cameras, centre)


def load_scene_views(scene: str | Path, size: int, max_views: int | None = None,
                     camera_radius: float = 2.0, split: str = "train"):
    """A NeRDS360 split as :class:`~reconstruction.neo360.data.SceneViews` (photos resized
    to ``size`` x ``size``·H/W, at most ``max_views`` evenly spaced views), in the field
    frame: centred on ``obj_location``, scaled so the cameras are ``camera_radius`` away."""
    from PIL import Image

    from reconstruction.neo360.data import SceneViews, to_field_frame

    s = read_split(scene, split)
    idx = np.arange(len(s.image_paths))
    if max_views is not None and len(idx) > max_views:
        idx = np.linspace(0, len(idx) - 1, max_views).round().astype(int)
    cams = s.cameras[torch.from_numpy(idx)]
    w0, h0 = int(cams.width[0]), int(cams.height[0])
    w, h = size, max(1, round(size * h0 / w0))
    cams = cams.resize(w, h)
    images = []
    for i in idx:
        with Image.open(s.image_paths[i]) as im:
            rgb = np.asarray(im.convert("RGB").resize((w, h), Image.LANCZOS), np.float32)
        images.append(torch.from_numpy(rgb / 255.0))
    centre = torch.from_numpy(s.centre)
    dist = float((cams.T_world_cam[:, :3, 3] - centre).norm(dim=-1).mean())
    field = to_field_frame(cams.to(dtype=torch.float32), centre.float(), camera_radius / dist)
    return SceneViews(torch.stack(images), field, Path(scene).name)


def list_scenes(root: str | Path) -> list[Path]:
    """The scene folders under ``root`` (those with ``train/pose/pose.json``), sorted."""
    root = Path(root)
    if (root / "train" / "pose" / "pose.json").is_file():
        return [root]
    scenes = sorted(p for p in root.iterdir() if (p / "train" / "pose" / "pose.json").is_file()) \
        if root.is_dir() else []
    if not scenes:
        raise UserError(f"{root} holds no NeRDS360 scene (SCENE/train/pose/pose.json).")
    return scenes
