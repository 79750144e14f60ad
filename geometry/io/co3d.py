"""CO3D ground-truth cameras stored as ``gt_cameras.npz`` (PyTorch3D NDC convention).

The file holds ``gtR`` ``[N, 3, 3]``, ``gtT`` ``[N, 3]`` and ``gtFL`` ``[N, 2]`` of
PyTorch3D ``PerspectiveCameras`` (row-vector ``X_cam = X_world @ R + T``, X left, Y up,
isotropic NDC where the shorter image side spans ``[-1, 1]``: CO3D v2's
``ndc_isotropic``); an optional ``gtPP`` ``[N, 2]`` gives the principal point in NDC,
else it is 0 (the image centre). Frames are the folder's images in sorted order
(``frame000007.jpg``, ...), whose sizes complete the NDC-to-pixel conversion
(:func:`geometry.conventions.pytorch3d_to_opencv`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from geometry.cameras import Cameras
from geometry.conventions import pytorch3d_to_opencv
from geometry.errors import UserError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_co3d(
    path: str | os.PathLike,
    image_size: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """Read ``gt_cameras.npz`` and the images next to it.

    Args:
        path: the sequence folder or the ``.npz`` file.
        image_size: ``(width, height)`` for every frame when the folder has no images.
        dtype: float dtype of the tensors.

    Returns:
        OpenCV :class:`Cameras` in CO3D's world frame, with ``image_paths`` when the images
        are present.
    """
    from PIL import Image

    path = Path(path)
    file = path if path.suffix == ".npz" else path / "gt_cameras.npz"
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k], dtype=np.float64) for k in npz.files}
    except FileNotFoundError:
        raise UserError(f"{file} does not exist; point to a CO3D sequence folder") from None
    except (ValueError, OSError) as err:
        raise UserError(f"{file} is not a readable .npz file ({err}); regenerate it") from None
    missing = [k for k in ("gtR", "gtT", "gtFL") if k not in arrays]
    if missing:
        raise UserError(f"{file} lacks {', '.join(missing)}; it is not a CO3D gt_cameras.npz")
    R, T, focal = arrays["gtR"], arrays["gtT"], arrays["gtFL"]
    n = len(R)
    pp = arrays.get("gtPP", np.zeros((n, 2)))
    if (R.shape != (n, 3, 3) or T.shape != (n, 3) or focal.shape not in ((n, 2), (n,))
            or pp.shape != (n, 2)):
        raise UserError(f"{file} has inconsistent shapes gtR {R.shape}, gtT {T.shape}, gtFL "
                        f"{focal.shape}; expected [N, 3, 3], [N, 3], [N, 2]")
    if not all(np.all(np.isfinite(a)) for a in (R, T, focal, pp)):
        raise UserError(f"{file} contains NaN/inf values; regenerate it")
    images = sorted(p for p in file.parent.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if images and len(images) != n:
        raise UserError(f"{file.parent} holds {len(images)} images for {n} cameras; keep only "
                        "the frames of gt_cameras.npz")
    if images:
        sizes = []
        for p in images:
            with Image.open(p) as image:
                sizes.append(image.size)
        wh = np.array(sizes, dtype=np.float64)
    elif image_size is not None:
        wh = np.tile(np.asarray(image_size, dtype=np.float64), (n, 1))
    else:
        raise UserError(f"no images next to {file} to read the image sizes from; pass "
                        "image_size=(width, height)")
    K, T_world_cam = pytorch3d_to_opencv(
        torch.from_numpy(R), torch.from_numpy(T), torch.from_numpy(focal),
        torch.from_numpy(pp), torch.from_numpy(wh[:, ::-1].copy()),  # PyTorch3D wants (H, W)
    )
    return Cameras(
        K=K.to(dtype), T_world_cam=T_world_cam.to(dtype),
        width=torch.from_numpy(wh[:, 0]).long(), height=torch.from_numpy(wh[:, 1]).long(),
        image_paths=[str(p) for p in images] if images else None,
        names=[p.name for p in images] if images else None,
    )
