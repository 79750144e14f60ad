"""LLFF ``poses_bounds.npy``: ``[N, 17]`` = a ``3x5`` matrix per image, then near/far depths.

The ``3x5`` block is ``[R | t | hwf]``: a camera-to-world matrix whose rotation columns
are the camera's (down, right, back) axes (see :mod:`geometry.conventions`), then the
column ``(H, W, focal)`` of the FULL-resolution images. The principal point is not
stored: it is the image centre. Images are the sorted files of ``images/`` or, for
downsampled copies, ``images_<factor>/`` (as in LLFF's ``load_llff_data``: focal divided
by the factor, size taken from the downsampled files).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geometry.cameras import Cameras, intrinsics_matrix
from geometry.conventions import llff_to_opencv, opencv_to_llff
from geometry.errors import UserError
from geometry.io.atomic import atomic_path

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class LlffData:
    """Cameras and per-image depth bounds of an LLFF scene."""

    cameras: Cameras
    bounds: torch.Tensor  # [N, 2] (near, far) depths along the optical axis, world units


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


def read_llff(
    path: str | os.PathLike,
    factor: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> LlffData:
    """Read ``poses_bounds.npy`` and link the images.

    Args:
        path: the scene folder or the ``.npy`` file itself.
        factor: downsampling factor of the images to use (``images_4`` for 4); ``None``
            or 1 uses ``images/`` at full resolution.
        dtype: float dtype of the tensors.

    Returns:
        :class:`LlffData`; ``image_paths`` are set when the image folder exists.

    Raises:
        UserError: unreadable file, wrong shape, NaNs, or an image folder whose image
            count differs from the number of poses.
    """
    path = Path(path)
    file = path if path.suffix == ".npy" else path / "poses_bounds.npy"
    try:
        array = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{file} does not exist; point to an LLFF scene folder") from None
    except (ValueError, OSError) as err:
        raise UserError(f"{file} is not a readable .npy file ({err}); regenerate it") from None
    if array.ndim != 2 or array.shape[1] != 17 or len(array) == 0:
        raise UserError(f"{file} has shape {array.shape}, not [N, 17] (3x5 pose + near/far); "
                        "it is not an LLFF poses_bounds.npy")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise UserError(f"{file} contains NaN/inf values; regenerate it")
    poses = torch.from_numpy(array[:, :15].reshape(-1, 3, 5))
    from geometry.io.transforms_json import check_rotations

    # the 3x3 block is a camera-to-world rotation (LLFF axes: down, right, back)
    check_rotations(poses[:, :, :3].numpy(), f"the poses in {file}")
    bounds = torch.from_numpy(array[:, 15:17])
    height, width, focal = poses[:, 0, 4], poses[:, 1, 4], poses[:, 2, 4]
    factor = 1 if factor is None else int(factor)
    if factor < 1:
        raise UserError(f"the LLFF downsampling factor must be >= 1, got {factor}")
    folder = file.parent / ("images" if factor == 1 else f"images_{factor}")
    image_paths = None
    if folder.is_dir():
        images = _list_images(folder)
        if len(images) != len(poses):
            raise UserError(f"{folder} holds {len(images)} images but {file} has {len(poses)} "
                            "poses; use the matching image folder or regenerate the poses")
        from PIL import Image

        with Image.open(images[0]) as first:
            w_img, h_img = first.size
        width = torch.full_like(width, w_img)
        height = torch.full_like(height, h_img)
        image_paths = [str(p) for p in images]
    else:
        width, height = torch.round(width / factor), torch.round(height / factor)
    focal = focal / factor
    K = intrinsics_matrix(focal, focal, width / 2.0, height / 2.0)
    cameras = Cameras(
        K=K.to(dtype),
        T_world_cam=llff_to_opencv(poses).to(dtype),
        width=width.round().to(torch.int64),
        height=height.round().to(torch.int64),
        image_paths=image_paths,
        names=None if image_paths is None else [Path(p).name for p in image_paths],
    )
    return LlffData(cameras=cameras, bounds=bounds.to(dtype))


def write_llff(
    path: str | os.PathLike, cameras: Cameras, bounds: torch.Tensor | np.ndarray
) -> Path:
    """Write ``poses_bounds.npy`` (atomically).

    LLFF stores one focal length and no principal point or distortion: ``fy`` and
    ``(cx, cy)`` are dropped with a warning if they differ from ``fx`` and the image centre
    by more than 1e-6 relative; non-zero distortion raises :class:`UserError`.

    Args:
        path: the scene folder or the ``.npy`` file.
        cameras: ``[N]`` cameras at the resolution of ``images/``.
        bounds: ``[N, 2]`` near/far depths.

    Returns:
        The written file.
    """
    path = Path(path)
    file = path if path.suffix == ".npy" else path / "poses_bounds.npy"
    if len(cameras.shape) != 1:
        raise ValueError(f"write_llff needs a 1-D batch of cameras, got {cameras.shape}")
    if cameras.has_distortion:
        raise UserError("LLFF cannot store lens distortion; undistort the images first or "
                        "write COLMAP / transforms.json instead")
    bounds = torch.as_tensor(bounds, dtype=torch.float64).cpu()
    if bounds.shape != (len(cameras), 2):
        raise ValueError(f"bounds must be [{len(cameras)}, 2], got {tuple(bounds.shape)}")
    K = cameras.K.detach().cpu().double()
    w = cameras.width.cpu().double()
    h = cameras.height.cpu().double()
    fx = K[:, 0, 0]
    deviation = torch.stack([(K[:, 1, 1] - fx) / fx, (K[:, 0, 2] - w / 2) / w,
                             (K[:, 1, 2] - h / 2) / h, K[:, 0, 1] / fx]).abs().max().item()
    if deviation > 1e-6:
        warnings.warn(f"LLFF stores only fx and a centred principal point: dropping fy/cx/cy/"
                      f"skew (relative deviation up to {deviation:.2e})", stacklevel=2)
    llff = opencv_to_llff(cameras.T_world_cam.detach().cpu().double())  # [N, 3, 4]
    hwf = torch.stack([h, w, fx], -1)[..., None]  # [N, 3, 1]
    array = torch.cat([torch.cat([llff, hwf], -1).reshape(-1, 15), bounds], -1).numpy()
    with atomic_path(file) as tmp:
        np.save(tmp, array)
    return file
