"""nerfstudio / instant-ngp / Blender (NeRF synthetic) ``transforms.json``.

Each frame has ``file_path`` (relative to the JSON file's folder) and ``transform_matrix``,
a camera-to-world matrix in the OpenGL/NeRF convention (x right, y up, z back; see
:mod:`geometry.conventions`), converted to OpenCV on reading and back on writing.
Intrinsics are per frame or global (a per-frame key wins): ``fl_x, fl_y, cx, cy, w, h``
and distortion ``k1, k2, k3, p1, p2`` (nerfstudio's ``OPENCV``/``PINHOLE`` camera
models). Blender-style files give only ``camera_angle_x`` (horizontal field of view);
the image size then comes from the image file and the principal point is the image centre.

Top-level keys that are not intrinsics (``aabb_scale``, ``applied_transform``,
``ply_file_path``, ...) are kept in :attr:`TransformsJson.extra` unchanged; poses are NOT
moved by ``applied_transform`` (nerfstudio's dataparser frame is the file's frame).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geometry.cameras import Cameras
from geometry.conventions import opencv_to_opengl, opengl_to_opencv
from geometry.errors import UserError
from geometry.io.atomic import atomic_write_text

_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2",
                   "camera_angle_x", "camera_angle_y", "camera_model")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".PNG", ".exr")
_SUPPORTED_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")


@dataclass
class TransformsJson:
    """What a ``transforms.json`` holds besides the cameras."""

    cameras: Cameras  # image_paths absolute, names = file_path as written in the file
    mask_paths: list[str] | None = None  # per frame, when every kept frame has mask_path
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level keys


def _resolve_image(base: Path, file_path: str) -> Path | None:
    path = base / file_path
    if path.is_file():
        return path
    if path.suffix.lower() not in {s.lower() for s in _IMAGE_SUFFIXES}:
        for suffix in _IMAGE_SUFFIXES:  # Blender files omit the extension
            candidate = path.with_name(path.name + suffix)
            if candidate.is_file():
                return candidate
    return None


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def read_transforms_json(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    require_images: bool = True,
) -> TransformsJson:
    """Read a ``transforms.json`` (nerfstudio, instant-ngp or Blender flavour).

    Args:
        path: the JSON file, or a folder holding ``transforms.json``.
        dtype: float dtype of the camera tensors.
        require_images: skip frames whose image file is missing (one warning naming how
            many and the first few; :class:`UserError` if none remain). With ``False`` all
            frames are kept and image files are only opened when the size must come from
            them.

    Returns:
        :class:`TransformsJson` with OpenCV cameras in the file's world frame.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; point to a transforms.json file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); fix or regenerate it") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise UserError(f"{path} has no 'frames' list; it is not a transforms.json file")
    base = path.parent
    kept: list[tuple[dict, Path]] = []
    missing: list[str] = []
    for frame in meta["frames"]:
        if not isinstance(frame, dict) or "file_path" not in frame:
            raise UserError(f"{path} has a frame without 'file_path'; fix the file")
        image = _resolve_image(base, str(frame["file_path"]))
        if image is None and require_images:
            missing.append(str(frame["file_path"]))
            continue
        kept.append((frame, image if image is not None else base / str(frame["file_path"])))
    if missing:
        warnings.warn(f"{path}: skipping {len(missing)} of {len(meta['frames'])} frames whose "
                      f"image is missing (first: {', '.join(missing[:3])})", stacklevel=2)
    if not kept:
        raise UserError(f"{path} lists no frame with an existing image; check that the images "
                        "sit next to it as its file_path entries say")
    try:
        cameras = _frames_to_cameras(meta, kept, dtype)
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"{path} has an invalid frame ({err}); fix the file") from None
    mask_paths = None
    if all("mask_path" in frame for frame, _ in kept):
        mask_paths = [str(base / frame["mask_path"]) for frame, _ in kept]
    extra = {k: v for k, v in meta.items() if k != "frames" and k not in _INTRINSIC_KEYS}
    return TransformsJson(cameras=cameras, mask_paths=mask_paths, extra=extra)


#: Largest ``|R R^T - I|`` entry a file's rotation may have (pose's tracking reader uses the
#: same): text files print ~7 significant digits, a scaled or sheared matrix is far off.
ROTATION_TOLERANCE = 1e-3


def rotation_error(R: np.ndarray) -> float:
    """How far rotations ``R [..., 3, 3]`` are from proper rotations: the largest entry of
    ``|R R^T - I|``, or ``inf`` where ``det(R) <= 0`` (a reflection)."""
    R = np.asarray(R, dtype=np.float64)
    if R.size == 0:
        return 0.0
    if np.any(np.linalg.det(R) <= 0):
        return math.inf
    return float(np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(3)).max())


def check_rotations(R: np.ndarray, what: str) -> None:
    """Raise ``UserError`` unless every ``R [..., 3, 3]`` is a rotation (orthonormal, det +1,
    within :data:`ROTATION_TOLERANCE`); ``what`` names the poses in the message."""
    err = rotation_error(R)
    if err > ROTATION_TOLERANCE:
        raise UserError(f"{what} are not rigid transforms (rotation error {err:.2g}: scaled, "
                        "sheared or mirrored); give orthonormal rotations with determinant 1")


def _frames_to_cameras(meta: dict, frames: list[tuple[dict, Path]], dtype: torch.dtype) -> Cameras:
    Ks, dists, widths, heights, poses = [], [], [], [], []
    for frame, image in frames:
        def get(key: str, default: Any = None, frame: dict = frame) -> Any:
            return frame.get(key, meta.get(key, default))

        model = get("camera_model", "OPENCV")
        if model not in _SUPPORTED_MODELS:
            raise ValueError(f"camera_model {model} is not supported (use {_SUPPORTED_MODELS})")
        w, h = get("w"), get("h")
        if w is None or h is None:
            w, h = _image_size(image)
        w, h = int(w), int(h)
        fl_x, fl_y = get("fl_x"), get("fl_y")
        if fl_x is None:
            angle_x = get("camera_angle_x")
            if angle_x is None:
                raise KeyError("neither fl_x nor camera_angle_x")
            fl_x = 0.5 * w / math.tan(0.5 * float(angle_x))
            angle_y = get("camera_angle_y")
            if fl_y is None and angle_y is not None:
                fl_y = 0.5 * h / math.tan(0.5 * float(angle_y))
        fl_y = fl_x if fl_y is None else fl_y
        cx, cy = get("cx", w / 2.0), get("cy", h / 2.0)
        if float(get("k4", 0.0)) != 0.0:
            raise ValueError("k4 (fisheye) distortion is not supported")
        dist = [float(get(k, 0.0)) for k in ("k1", "k2", "p1", "p2", "k3")]
        matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if matrix.shape == (3, 4):
            matrix = np.concatenate([matrix, [[0.0, 0.0, 0.0, 1.0]]])
        if matrix.shape != (4, 4):
            raise ValueError(f"transform_matrix of {frame['file_path']} is not 4x4")
        values = np.array([float(fl_x), float(fl_y), float(cx), float(cy), *dist])
        if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(values))):
            raise ValueError(f"NaN/inf values in frame {frame['file_path']}")
        Ks.append([[values[0], 0.0, values[2]], [0.0, values[1], values[3]], [0.0, 0.0, 1.0]])
        dists.append(dist)
        widths.append(w)
        heights.append(h)
        poses.append(matrix)
    # transform_matrix is camera-to-world (OpenGL camera axes: x right, y up, z back)
    check_rotations(np.stack(poses)[:, :3, :3], "the transform_matrix poses")
    if not np.allclose(np.stack(poses)[:, 3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise UserError("the transform_matrix poses have a last row other than 0 0 0 1; give "
                        "rigid camera-to-world matrices")
    T_world_cam = opengl_to_opencv(torch.tensor(np.stack(poses)))
    dist_t = torch.tensor(dists, dtype=torch.float64)
    return Cameras(
        K=torch.tensor(Ks, dtype=torch.float64).to(dtype),
        T_world_cam=T_world_cam.to(dtype),
        width=torch.tensor(widths),
        height=torch.tensor(heights),
        dist=dist_t.to(dtype) if bool((dist_t != 0).any()) else None,
        image_paths=[str(image) for _, image in frames],
        names=[str(frame["file_path"]) for frame, _ in frames],
    )


def write_transforms_json(
    path: str | os.PathLike,
    cameras: Cameras,
    file_paths: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write cameras as a nerfstudio ``transforms.json`` (atomically).

    Intrinsics shared by every camera go to the top level, otherwise into each frame.
    ``camera_model`` is ``OPENCV`` when any distortion is non-zero, else ``PINHOLE``.
    A skew in ``K`` cannot be stored and is dropped with a warning.

    Args:
        path: output JSON file (or a folder: ``folder/transforms.json``).
        cameras: a 1-D batch.
        file_paths: per-frame ``file_path`` values; default: ``cameras.image_paths`` made
            relative to the JSON's folder, else ``cameras.names``.
        extra: more top-level keys (e.g. ``aabb_scale``, ``ply_file_path``).

    Returns:
        The written file.
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path / "transforms.json"
    if len(cameras.shape) != 1:
        raise ValueError(f"write_transforms_json needs a 1-D batch of cameras, got {cameras.shape}")
    n = len(cameras)
    if file_paths is None:
        if cameras.image_paths is not None:
            file_paths = [os.path.relpath(p, path.parent) for p in cameras.image_paths]
        elif cameras.names is not None:
            file_paths = list(cameras.names)
        else:
            raise ValueError("write_transforms_json needs file_paths, image_paths or names")
    if len(file_paths) != n:
        raise ValueError(f"{len(file_paths)} file_paths for {n} cameras")
    K = cameras.K.detach().cpu().double()
    if bool((K[:, 0, 1] != 0).any()):
        warnings.warn("transforms.json cannot store a skewed K: dropping the skew", stacklevel=2)
    dist = (torch.zeros(n, 5, dtype=torch.float64) if cameras.dist is None
            else cameras.dist.detach().cpu().double())
    has_dist = bool((dist != 0).any())
    intrinsics = {
        "fl_x": K[:, 0, 0], "fl_y": K[:, 1, 1], "cx": K[:, 0, 2], "cy": K[:, 1, 2],
        "w": cameras.width.cpu(), "h": cameras.height.cpu(),
    }
    if has_dist:
        intrinsics.update(k1=dist[:, 0], k2=dist[:, 1], p1=dist[:, 2], p2=dist[:, 3],
                          k3=dist[:, 4])
    shared = {k: v for k, v in intrinsics.items() if bool((v == v[0]).all())}
    meta: dict[str, Any] = {"camera_model": "OPENCV" if has_dist else "PINHOLE"}
    meta.update({k: v[0].item() for k, v in shared.items()})
    T_gl = opencv_to_opengl(cameras.T_world_cam.detach().cpu().double())
    frames = []
    for i in range(n):
        frame: dict[str, Any] = {"file_path": file_paths[i]}
        frame.update({k: v[i].item() for k, v in intrinsics.items() if k not in shared})
        frame["transform_matrix"] = T_gl[i].tolist()
        frames.append(frame)
    meta.update(extra or {})
    meta["frames"] = frames
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
    return path


def write_point_cloud_ply(path: str | os.PathLike, xyz: np.ndarray | torch.Tensor,
                          rgb: np.ndarray | torch.Tensor) -> Path:
    """Write a coloured point cloud as nerfstudio's ``sparse_pc.ply`` (atomically).

    nerfstudio reads the PLY that ``transforms.json``'s ``ply_file_path`` names as the
    initial point cloud of splatfacto: binary little-endian vertices with float ``x y z``
    (world frame of the transforms.json) and uchar ``red green blue``.

    Args:
        path: the ``.ply`` file.
        xyz: ``[P, 3]`` points.
        rgb: ``[P, 3]`` colours, uint8 or floats in [0, 1].
    """
    from geometry.io.atomic import atomic_path

    xyz = np.asarray(torch.as_tensor(xyz).detach().cpu(), dtype=np.float64).reshape(-1, 3)
    rgb = np.asarray(torch.as_tensor(rgb).detach().cpu())
    if np.issubdtype(rgb.dtype, np.floating):
        rgb = np.clip(np.round(rgb * 255.0), 0, 255)
    rgb = rgb.astype(np.uint8).reshape(-1, 3)
    if len(rgb) != len(xyz):
        raise ValueError(f"{len(xyz)} points but {len(rgb)} colours")
    vertices = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                         ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for k, name in enumerate("xyz"):
        vertices[name] = xyz[:, k]
    for k, name in enumerate(("red", "green", "blue")):
        vertices[name] = rgb[:, k]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(xyz)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              "end_header\n")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(header.encode("ascii") + vertices.tobytes())
    return path
