"""NOCS maps (and novel views) of a few photos from a trained SpaRP model, and their poses.

The photos are centre-cropped to squares and resized to the model's tile size (their
intrinsics follow: :func:`tile_intrinsics`), tiled into the 3x2 condition image; the model
samples (DDIM, few steps) the NOCS domain — one map per input, in the input's tile — and,
when asked, the views domain (six novel views around the first input,
:func:`~pose.camera.sparp.model.novel_view_poses`). The maps' poses come from
:func:`~pose.camera.sparp.solver.solve_views`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geometry.errors import UserError
from pose.camera.sparp.model import SparpModel, decode_tiles
from pose.camera.sparp.solver import NocsView

__all__ = ["Prediction", "predict", "square_crop", "tile_intrinsics"]


def square_crop(rgb: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The centred square of ``rgb [H, W, 3]`` and its top-left corner ``(x0, y0)``."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    return rgb[y0:y0 + side, x0:x0 + side], x0, y0


def tile_intrinsics(K: np.ndarray, width: int, height: int, tile: int) -> np.ndarray:
    """``[3, 3]`` intrinsics of the centred square crop of a ``width x height`` photo with
    intrinsics ``K``, resized to ``tile x tile`` (pixel centres at +0.5 throughout)."""
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    Kt = np.array(K, dtype=np.float64, copy=True)
    Kt[0, 2] -= x0
    Kt[1, 2] -= y0
    Kt[:2] *= tile / side
    return Kt


@dataclass
class Prediction:
    """What the model gave for the photos (numpy, tile px)."""

    views: list[NocsView]
    """Per photo: the predicted NOCS map and mask, the tile intrinsics, the tile colours."""
    generated: np.ndarray | None
    """``[6, t, t, 3]`` the six novel views (None unless asked)."""
    generated_masks: np.ndarray | None
    """``[6, t, t]`` their object masks."""


def prepare_inputs(photos: list[np.ndarray], tile: int) -> torch.Tensor:
    """``[k, t, t, 3]`` float32 tiles of the photos ``[H, W, 3]`` (centre squares, resized
    with antialiasing)."""
    from pose.camera.sparp.data import resize_square

    return torch.from_numpy(np.stack([resize_square(square_crop(p)[0][None], tile)[0]
                                      for p in photos]))


def predict(model: SparpModel, photos: list[np.ndarray], Ks: np.ndarray, steps: int = 10,
            seed: int = 0, novel_views: bool = False) -> Prediction:
    """Sample the NOCS maps (and the novel views) of 1-6 photos on the model's device (the
    results are numpy arrays, on the CPU).

    Args:
        model: a trained :class:`SparpModel` (eval mode).
        photos: ``[H, W, 3]`` float colours in [0, 1], any sizes.
        Ks: ``[k, 3, 3]`` their intrinsics at their sizes.
        steps: DDIM steps.
        novel_views: also sample the views domain.

    Raises:
        UserError: more than 6 photos.
    """
    from pose.camera.sparp.data import condition_tiles

    if not 1 <= len(photos) <= 6:
        raise UserError(f"the SpaRP model takes 1 to 6 photos, got {len(photos)}.")
    tile = model.config.tile
    tiles = prepare_inputs(photos, tile)
    device = next(model.parameters()).device
    cond = condition_tiles(tiles[None]).to(device)
    domains = [1, 0] if novel_views else [1]
    out = model.sample(cond.expand(len(domains), -1, -1, -1),
                       torch.tensor(domains, device=device), steps=steps, seed=seed)
    rgb, mask = decode_tiles(out.cpu())
    views = []
    for k, (photo, K) in enumerate(zip(photos, Ks, strict=True)):
        h, w = photo.shape[:2]
        m = mask[0, k].numpy()
        nocs = np.where(m[..., None], rgb[0, k].numpy().astype(np.float64), 0.0)
        views.append(NocsView(nocs=nocs, mask=m, K=tile_intrinsics(K, w, h, tile),
                              rgb=tiles[k].numpy().astype(np.float64)))
    generated = rgb[1].numpy() if novel_views else None
    generated_masks = mask[1].numpy() if novel_views else None
    return Prediction(views=views, generated=generated, generated_masks=generated_masks)
