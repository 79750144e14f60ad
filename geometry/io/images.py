"""The one PNG writer: 8-bit PNGs from numpy arrays or torch tensors, written atomically.

Float images are taken as values in [0, 1] (the house convention, see DESIGN.md) and become
8-bit by rounding half up after clipping, ``uint8(clip(x, 0, 1) * 255 + 0.5)``, computed in
the image's own float precision (float32 stays float32), so a PNG written here has the same
bytes as one written by the per-package writers this replaces.

=============  ==============================  ==========
shape          meaning                         PNG mode
=============  ==============================  ==========
``[H, W]``     grey                            ``L``
``[H, W, 3]``  RGB                             ``RGB``
``[H, W, 4]``  RGB + straight (not premult.)   ``RGBA``
=============  ==============================  ==========
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geometry.io.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["encode_png", "to_uint8", "write_png"]


def to_uint8(image: np.ndarray | Tensor) -> np.ndarray:
    """``image`` as a uint8 numpy array of the same shape.

    uint8 passes through unchanged; bool becomes 0 / 255; floats (numpy or torch, any
    device, with or without grad) are clipped to [0, 1] and mapped by ``x * 255 + 0.5``
    rounded down, in the input's precision (half precision is widened to float32 first).

    Raises:
        ValueError: any other dtype (16-bit or integer images need an explicit scale).
    """
    if hasattr(image, "detach"):  # a torch tensor, without importing torch for numpy input
        import torch

        image = image.detach().cpu()
        if image.dtype in (torch.float16, torch.bfloat16):
            image = image.float()
        image = image.numpy()
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(array.dtype, np.floating):
        if array.dtype == np.float16:
            array = array.astype(np.float32)
        return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"to_uint8: expected uint8, bool or float values in [0, 1], "
                     f"got dtype {array.dtype}")


def encode_png(image: np.ndarray | Tensor) -> bytes:
    """PNG bytes of ``image`` (``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]``; see
    :func:`to_uint8` for the accepted dtypes), Pillow's default compression.

    Raises:
        ValueError: another shape or dtype.
    """
    from PIL import Image

    array = to_uint8(image)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(f"encode_png: expected an [H, W], [H, W, 3] or [H, W, 4] image, "
                         f"got shape {tuple(array.shape)}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | os.PathLike, image: np.ndarray | Tensor) -> Path:
    """Write ``image`` as an 8-bit PNG at ``path`` and return the path.

    Parent folders are created; the file is written to a temporary sibling and renamed
    into place, so a reader never sees half a PNG. Shapes and dtypes as in
    :func:`encode_png`.
    """
    path = Path(path)
    atomic_write_bytes(path, encode_png(image))
    return path
