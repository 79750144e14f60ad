"""Relative depth guidance: scale-free patch similarities between rendered depth, prior
depth and the image.

- :func:`patch_pearson_loss`: ``1 - Pearson`` correlation between the rendered and the prior
  depth over square patches (and, with one patch, over the whole view). It is zero exactly
  when, inside each patch, the prior is a positive scale and a shift of the render, so a
  prior whose scale is wrong or differs between views (monocular depth) does not pull the
  geometry: only its relative shape does.
- :func:`depth_image_loss`: the depth-image term. Rendered depth gradients divided by the
  patch's mean depth (scale-free), weighted by ``exp(-gamma |grad I|)``: depth may only
  change sharply where the image patch has an edge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _tiles(x: Tensor, size: int, offset: tuple[int, int]) -> Tensor:
    """``[n, size * size]`` non-overlapping tiles of ``x [H, W]`` starting at ``offset``."""
    oy, ox = offset
    x = x[oy:, ox:]
    h, w = (x.shape[0] // size) * size, (x.shape[1] // size) * size
    x = x[:h, :w]
    return x.reshape(h // size, size, w // size, size).permute(0, 2, 1, 3).reshape(-1, size * size)


def patch_pearson_loss(render: Tensor, prior: Tensor, valid: Tensor, size: int,
                       offset: tuple[int, int] = (0, 0),
                       min_valid_fraction: float = 0.5) -> tuple[Tensor, int]:
    """Mean over patches of ``1 - Pearson(render, prior)`` on the valid pixels.

    Args:
        render: ``[H, W]`` rendered depth (differentiable).
        prior: ``[H, W]`` prior depth (any scale and shift).
        valid: ``[H, W]`` bool, pixels where both are meaningful.
        size: patch side in pixels; ``size >= max(H, W)`` gives one global patch.
        offset: ``(row, col)`` of the first patch's corner (random per step in training, so
            that patch borders move).
        min_valid_fraction: patches with fewer valid pixels are skipped, as are patches
            whose prior is flat (no relative information).

    Returns:
        ``(loss, patches)``: the scalar loss (0 with a gradient path when no patch counts)
        and the number of patches used.
    """
    if size >= max(render.shape):
        tiles_r = render[valid][None]
        tiles_p = prior[valid][None].to(render.dtype)
        mask = torch.ones_like(tiles_r, dtype=torch.bool)
        count = mask.sum(1).to(render.dtype)
        enough = count >= 16
    else:
        tiles_r = _tiles(render, size, offset)
        tiles_p = _tiles(prior.to(render.dtype), size, offset)
        mask = _tiles(valid, size, offset)
        count = mask.sum(1).to(render.dtype)
        enough = count >= min_valid_fraction * size * size
    if tiles_r.shape[0] == 0 or not bool(enough.any()):
        return render.sum() * 0.0, 0
    tiles_r, tiles_p, mask, count = tiles_r[enough], tiles_p[enough], mask[enough], count[enough]
    m = mask.to(render.dtype)
    mean_r = (tiles_r * m).sum(1, keepdim=True) / count[:, None]
    mean_p = (tiles_p * m).sum(1, keepdim=True) / count[:, None]
    dr = (tiles_r - mean_r) * m
    dp = (tiles_p - mean_p) * m
    var_p = (dp * dp).sum(1)
    # A flat prior patch says nothing about relative depth (relative std under 1e-4).
    informative = var_p > (1e-4 * mean_p[:, 0].abs()) ** 2 * count
    if not bool(informative.any()):
        return render.sum() * 0.0, 0
    dr, dp, var_p = dr[informative], dp[informative], var_p[informative]
    mean_r = mean_r[informative]
    var_r = (dr * dr).sum(1)
    eps = (1e-6 * mean_r[:, 0].detach().abs()) ** 2 + 1e-20
    corr = (dr * dp).sum(1) / torch.sqrt((var_r + eps) * var_p)
    return (1.0 - corr).mean(), int(informative.sum())


def image_gradient(image: Tensor) -> tuple[Tensor, Tensor]:
    """Mean absolute RGB differences ``([H, W-1], [H-1, W])`` along x and y of ``[H, W, 3]``."""
    gx = (image[:, 1:] - image[:, :-1]).abs().mean(-1)
    gy = (image[1:] - image[:-1]).abs().mean(-1)
    return gx, gy


def depth_image_loss(render: Tensor, image: Tensor, valid: Tensor, size: int,
                     gamma: float) -> Tensor:
    """Edge-aware, scale-free smoothness of the rendered depth.

    Args:
        render: ``[H, W]`` rendered depth.
        image: ``[H, W, 3]`` the target image in [0, 1].
        valid: ``[H, W]`` bool, pixels the render covers.
        size: patch side for the normalising mean depth.
        gamma: sharpness of the edge weight ``exp(-gamma |grad I|)``.

    Returns:
        Mean of ``|grad d| / mean_patch(d) * exp(-gamma |grad I|)`` over valid neighbours
        (unchanged when the depth is scaled).
    """
    with torch.no_grad():
        k = max(1, min(size, *render.shape))
        m = valid.to(render.dtype)[None, None]
        local = F.avg_pool2d(render.detach()[None, None] * m, k, stride=1, padding=k // 2,
                             count_include_pad=False)
        weight = F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False)
        local = (local / weight.clamp_min(1e-6))[0, 0, :render.shape[0], :render.shape[1]]
        norm = local.clamp_min(1e-6)
        gx_i, gy_i = image_gradient(image)
    dx = (render[:, 1:] - render[:, :-1]).abs() / norm[:, 1:]
    dy = (render[1:] - render[:-1]).abs() / norm[1:]
    vx = valid[:, 1:] & valid[:, :-1]
    vy = valid[1:] & valid[:-1]
    terms = torch.cat([(dx * torch.exp(-gamma * gx_i))[vx], (dy * torch.exp(-gamma * gy_i))[vy]])
    if terms.numel() == 0:
        return render.sum() * 0.0
    return terms.mean()
