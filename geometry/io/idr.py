"""IDR / NeuS / DTU ``cameras.npz``: projection matrices ``world_mat_i`` and ``scale_mat_i``.

``world_mat_i`` is a ``4x4`` whose top ``3x4`` is ``P = K [R | t]`` (world to pixels, up to
scale) for the ORIGINAL images. ``scale_mat_i`` maps the normalised frame, in which the
object lies inside the unit sphere, to the world: ``x_world = scale_mat @ x_norm``.
Cameras are returned in the ORIGINAL world frame; :meth:`IdrData.normalized_cameras`
expresses them in the unit-sphere frame.

When the images were preprocessed (cropped/resized) after calibration, an
:class:`ImageTransform` maps the intrinsics to the preprocessed images. The DTU copies
used by pixelNeRF/RegNeRF-style sparse-view work are 1600x1200 photos cropped to the
central 1200x1200 (``cx -= 200``) and resized to 384x384: :func:`dtu_image_transform`.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from geometry.cameras import Cameras
from geometry.errors import UserError
from geometry.sim3 import apply_sim3_to_poses, sim3_inverse

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class ImageTransform:
    """Crop ``[x0, x0 + crop_width) x [y0, y0 + crop_height)``, then resize by ``scale``.

    Pixel convention as in :mod:`geometry.cameras` (image corner at 0): the crop shifts
    the principal point by ``(-x0, -y0)`` and the resize multiplies ``K``'s first two rows
    by ``scale``. The output size is ``round(crop_width * scale) x round(crop_height * scale)``.
    """

    x0: int
    y0: int
    crop_width: int
    crop_height: int
    scale: float

    def apply(self, cameras: Cameras) -> Cameras:
        """Intrinsics (and size) of the transformed images."""
        return cameras.crop(self.x0, self.y0, self.crop_width, self.crop_height).rescale(
            self.scale)


def dtu_image_transform(size: int = 384) -> ImageTransform:
    """DTU preset: 1600x1200 -> central 1200x1200 crop (``cx -= 200``) -> ``size x size``."""
    return ImageTransform(x0=200, y0=0, crop_width=1200, crop_height=1200, scale=size / 1200)


@dataclass
class IdrData:
    """Cameras (original world frame), scale matrices and optional object masks."""

    cameras: Cameras
    scale_mats: torch.Tensor  # [N, 4, 4] x_world = scale_mat @ x_norm
    mask_paths: list[str] | None = None
    masks: torch.Tensor | None = None  # [N, H, W] bool, True on the object

    def normalized_cameras(self) -> Cameras:
        """The cameras in the unit-sphere frame of ``scale_mats[0]``."""
        return cameras_to_normalized_frame(self.cameras, self.scale_mats[0])


def cameras_to_normalized_frame(cameras: Cameras, scale_mat: torch.Tensor) -> Cameras:
    """Express cameras in the frame ``x_norm = scale_mat^-1 @ x_world``.

    Args:
        cameras: cameras in the world frame.
        scale_mat: ``[4, 4]`` similarity ``[[s R, c], [0, 1]]`` (IDR's is ``s I``).

    Returns:
        Cameras with centres ``R^T (C - c) / s`` and rotated orientations; intrinsics
        unchanged.
    """
    S = torch.as_tensor(scale_mat, dtype=torch.float64)
    A = S[:3, :3]
    s = torch.linalg.det(A).abs() ** (1.0 / 3.0)
    R = A / s
    if not torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-6):
        raise ValueError("scale_mat is not a similarity (uniform scale, rotation, translation)")
    c = S[:3, 3]
    T = apply_sim3_to_poses(*sim3_inverse(s, R, c), cameras.T_world_cam.double())
    return Cameras(K=cameras.K, T_world_cam=T.to(cameras.dtype), width=cameras.width,
                   height=cameras.height, dist=cameras.dist, image_paths=cameras.image_paths,
                   names=cameras.names)


def decompose_projection_matrix(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``P = lambda K [R | t]`` into ``K`` (``K[2, 2] = 1``, positive focal lengths)
    and the OpenCV camera-to-world ``T_world_cam``.

    Args:
        P: ``[3, 4]`` (or ``[4, 4]``; the top rows are used) projection matrix.

    Returns:
        ``K [3, 3]`` and ``T_world_cam [4, 4]`` (float64).
    """
    import cv2

    P = np.asarray(P, dtype=np.float64)[:3, :4]
    if np.linalg.det(P[:3, :3]) < 0:  # P is defined up to scale, including its sign
        P = -P
    K, R, C_h = cv2.decomposeProjectionMatrix(P)[:3]
    # RQ is unique only up to the signs of K's diagonal: make it positive (K D D R = K R);
    # with det(P[:, :3]) > 0 this leaves a proper rotation whose z row points forward.
    signs = np.where(np.diag(K) < 0, -1.0, 1.0)
    K, R = K * signs[None, :], signs[:, None] * R
    K = K / K[2, 2]
    T = np.eye(4)
    T[:3, :3] = R.T
    T[:3, 3] = C_h[:3, 0] / C_h[3, 0]
    return K, T


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


def _find_images(folder: Path) -> list[Path]:
    for sub in ("image", "images", "rgb"):
        if (folder / sub).is_dir():
            return _image_files(folder / sub)
    files = _image_files(folder)
    rgb = [p for p in files if p.stem.endswith("_rgb")]
    return rgb if rgb else [p for p in files if "mask" not in p.stem]


def _find_masks(folder: Path) -> list[Path]:
    for sub in ("mask", "masks"):
        if (folder / sub).is_dir():
            return _image_files(folder / sub)
    return [p for p in _image_files(folder) if p.stem.endswith("_mask")]


def _load_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 127


def read_idr(
    path: str | os.PathLike,
    image_transform: ImageTransform | Literal["auto"] | None = "auto",
    image_size: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> IdrData:
    """Read an IDR/NeuS/DTU scene folder (``cameras.npz`` + images + optional masks).

    Images are ``image/``, ``images/`` or ``rgb/`` inside the folder, else the folder's own
    ``*_rgb.png`` files (our DTU copy) or other images; masks are ``mask/``/``masks/`` or
    ``*_mask.png``. Both are matched to ``world_mat_i`` by sorted order.

    Args:
        path: the scene folder or the ``.npz`` file.
        image_transform: maps the calibration to the stored images. ``"auto"`` applies
            :func:`dtu_image_transform` when the images are 384x384 and the decoded
            principal points lie outside them (the DTU preprocessing), and nothing otherwise.
        image_size: ``(width, height)`` of the calibrated images when there are no image
            files to read it from (before ``image_transform``).
        dtype: float dtype of the tensors.

    Returns:
        :class:`IdrData` in the original world frame.
    """
    path = Path(path)
    file = path if path.suffix == ".npz" else path / "cameras.npz"
    folder = file.parent
    Ks, poses, scale_mats = _decode_cameras_npz(file)
    n = len(Ks)
    images = _find_images(folder) if folder.is_dir() else []
    if images and len(images) != n:
        raise UserError(f"{folder} holds {len(images)} images for {n} cameras in {file}; "
                        "remove extra images or use the matching cameras.npz")
    cameras = _calibrated_cameras(file, images, torch.from_numpy(np.stack(Ks)),
                                  torch.from_numpy(np.stack(poses)), image_transform, image_size)
    mask_paths, masks = _read_masks(folder, n, cameras)
    return IdrData(cameras=cameras.to(dtype=dtype),
                   scale_mats=torch.from_numpy(np.stack(scale_mats)).to(dtype),
                   mask_paths=mask_paths, masks=masks)


def _decode_cameras_npz(file: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """``K [3, 3]``, ``T_world_cam [4, 4]`` and ``scale_mat [4, 4]`` of every camera of an
    IDR ``cameras.npz`` (float64, in ``world_mat_i`` order); a missing scale is identity."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k], dtype=np.float64) for k in npz.files}
    except FileNotFoundError:
        raise UserError(f"{file} does not exist; point to an IDR/DTU scene folder") from None
    except (ValueError, OSError) as err:
        raise UserError(f"{file} is not a readable .npz file ({err}); regenerate it") from None
    indices = sorted(int(m.group(1)) for k in arrays if (m := re.fullmatch(r"world_mat_(\d+)", k)))
    if not indices or indices != list(range(len(indices))):
        raise UserError(f"{file} has no world_mat_0..world_mat_N-1 entries; it is not an "
                        "IDR cameras.npz")
    Ks, poses, scale_mats = [], [], []
    for i in indices:
        P = arrays[f"world_mat_{i}"]
        S = arrays.get(f"scale_mat_{i}", np.eye(4))
        if P.shape not in ((3, 4), (4, 4)) or S.shape != (4, 4):
            raise UserError(f"{file}: world_mat_{i} or scale_mat_{i} has the wrong shape "
                            f"{P.shape}/{S.shape}; regenerate the file")
        if not (np.all(np.isfinite(P)) and np.all(np.isfinite(S))):
            raise UserError(f"{file}: world_mat_{i} or scale_mat_{i} holds NaN/inf values; "
                            "regenerate the file")
        if np.linalg.matrix_rank(P[:3, :3]) < 3:
            raise UserError(f"{file}: world_mat_{i} is singular, not a camera projection; "
                            "regenerate the file")
        K, T = decompose_projection_matrix(P)  # R is a rotation by construction (RQ)
        Ks.append(K)
        poses.append(T)
        scale_mats.append(S)
    return Ks, poses, scale_mats


def _calibrated_cameras(file: Path, images: list[Path], K: torch.Tensor,
                        T_world_cam: torch.Tensor,
                        image_transform: ImageTransform | Literal["auto"] | None,
                        image_size: tuple[int, int] | None) -> Cameras:
    """The cameras ``K [N, 3, 3]``, ``T_world_cam [N, 4, 4]`` of ``file`` at the size of the
    stored ``images`` (see :func:`read_idr` for ``image_transform`` and ``image_size``)."""
    from PIL import Image

    stored_size = None
    if images:
        with Image.open(images[0]) as first:
            stored_size = first.size
    if image_transform == "auto":
        image_transform = None
        if stored_size == (384, 384) and bool((K[:, 0, 2] > 384).all()):
            image_transform = dtu_image_transform(384)
    if image_transform is not None:
        source = image_size or (image_transform.x0 + image_transform.crop_width,
                                image_transform.y0 + image_transform.crop_height)
    else:
        source = stored_size or image_size
    if source is None:
        raise UserError(f"no images next to {file} to read the image size from; pass "
                        "image_size=(width, height)")
    cameras = Cameras(K=K, T_world_cam=T_world_cam, width=source[0], height=source[1],
                      image_paths=[str(p) for p in images] if images else None,
                      names=[p.name for p in images] if images else None)
    if image_transform is not None:
        cameras = image_transform.apply(cameras)
    if stored_size is not None and stored_size != (int(cameras.width[0]), int(cameras.height[0])):
        raise UserError(f"the images in {file.parent} are {stored_size[0]}x{stored_size[1]} "
                        f"but the cameras describe {int(cameras.width[0])}x"
                        f"{int(cameras.height[0])}; pass the image_transform that produced "
                        "the images")
    return cameras


def _read_masks(folder: Path, n: int, cameras: Cameras
                ) -> tuple[list[str] | None, torch.Tensor | None]:
    """Paths of the ``n`` masks in ``folder`` and the masks (bool ``[N, H, W]``) when they
    have the cameras' size; ``(None, None)`` without masks."""
    mask_files = _find_masks(folder) if folder.is_dir() else []
    if not mask_files:
        return None, None
    if len(mask_files) != n:
        raise UserError(f"{folder} holds {len(mask_files)} masks for {n} cameras; remove "
                        "extra masks or add the missing ones")
    mask_paths = [str(p) for p in mask_files]
    loaded = [_load_mask(p) for p in mask_files]
    expected = (int(cameras.height[0]), int(cameras.width[0]))
    if all(m.shape == expected for m in loaded):
        return mask_paths, torch.from_numpy(np.stack(loaded))
    # stacklevel 3: the warning points at read_idr's caller.
    warnings.warn(f"masks in {folder} are not {expected[1]}x{expected[0]} like the "
                  "cameras: returning their paths only", stacklevel=3)
    return mask_paths, None


def write_idr(path: str | os.PathLike, cameras: Cameras,
              scale_mats: torch.Tensor | np.ndarray | None = None) -> Path:
    """Write ``cameras.npz`` with ``world_mat_i = K [R | t]`` (4x4) and ``scale_mat_i``.

    Distortion cannot be stored and raises :class:`UserError`.

    Args:
        path: the scene folder or the ``.npz`` file.
        cameras: ``[N]`` cameras of the images stored next to the file.
        scale_mats: ``[N, 4, 4]`` or ``[4, 4]``; identity by default.
    """
    from geometry.io.atomic import atomic_path

    path = Path(path)
    file = path if path.suffix == ".npz" else path / "cameras.npz"
    if cameras.has_distortion:
        raise UserError("IDR cameras.npz cannot store lens distortion; undistort the images")
    n = len(cameras)
    S = np.eye(4) if scale_mats is None else np.asarray(torch.as_tensor(scale_mats).cpu(),
                                                        dtype=np.float64)
    S = np.broadcast_to(S, (n, 4, 4))
    K = cameras.K.detach().cpu().double().numpy()
    T_cw = cameras.T_cam_world.detach().cpu().double().numpy()
    arrays = {}
    for i in range(n):
        P = np.eye(4)
        P[:3, :4] = K[i] @ T_cw[i, :3, :4]
        arrays[f"world_mat_{i}"] = P
        arrays[f"scale_mat_{i}"] = np.array(S[i])
    with atomic_path(file) as tmp:
        np.savez(tmp, **arrays)
    return file
