"""Pure-PyTorch reference of the tile rasterizer: the test oracle for the native kernel.

This is the straightforward vectorised version: it bins Gaussians into tiles with the same
bounding boxes, sorts each tile front to back, and for every tile evaluates all its pixels
against all its Gaussians at once (a ``[pixels, gaussians]`` matrix), with autograd giving
the backward pass. Same maths as ``cuda/rasterize/rasterize_cpu.cpp``; it is never used as
a silent fallback.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The kernel's constants (cuda/rasterize/rasterize_cpu.cpp): Gaussians whose alpha at a pixel
# is below ALPHA_THRESHOLD are skipped (the projection also culls with it), alpha is capped at
# MAX_ALPHA, and a pixel stops before its transmittance would reach TRANSMITTANCE_EPS.
ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_EPS = 1e-4


def tile_ranges(means2d: Tensor, radii: Tensor, tile_size: int, tiles_x: int, tiles_y: int):
    """Tile rectangle ``[x0, x1) x [y0, y1)`` touched by each Gaussian's bounding box.

    Args:
        means2d: ``[N, 2]``; radii: ``[N, 2]`` int.

    Returns:
        four ``[N]`` int64 tensors (x0, x1, y0, y1).
    """
    r = radii.to(means2d.dtype)
    x0 = torch.floor((means2d[:, 0] - r[:, 0]) / tile_size).long().clamp(0, tiles_x)
    x1 = torch.ceil((means2d[:, 0] + r[:, 0]) / tile_size).long().clamp(0, tiles_x)
    y0 = torch.floor((means2d[:, 1] - r[:, 1]) / tile_size).long().clamp(0, tiles_y)
    y1 = torch.ceil((means2d[:, 1] + r[:, 1]) / tile_size).long().clamp(0, tiles_y)
    return x0, x1, y0, y1


def rasterize_to_pixels_torch(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    depths: Tensor,  # [C, N]
    radii: Tensor,  # [C, N, 2] int32
    width: int,
    height: int,
    tile_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Composite screen-space Gaussians front to back.

    Returns:
        render_colors ``[C, H, W, D]`` and render_alphas ``[C, H, W, 1]`` (no background).
    """
    C, _, D = colors.shape
    tiles_x = math.ceil(width / tile_size)
    tiles_y = math.ceil(height / tile_size)
    images, alphas = [], []
    for c in range(C):
        visible = (radii[c] > 0).all(-1).nonzero()[:, 0]
        order = visible[torch.argsort(depths[c, visible].detach(), stable=True)]
        x0, x1, y0, y1 = tile_ranges(means2d[c, order].detach(), radii[c, order], tile_size,
                                     tiles_x, tiles_y)
        rows = []
        for ty in range(tiles_y):
            row = []
            for tx in range(tiles_x):
                px0, py0 = tx * tile_size, ty * tile_size
                tw = min(tile_size, width - px0)
                th = min(tile_size, height - py0)
                hit = (x0 <= tx) & (tx < x1) & (y0 <= ty) & (ty < y1)
                ids = order[hit]
                if ids.numel() == 0:
                    row.append(
                        (colors.new_zeros(th, tw, D), colors.new_zeros(th, tw, 1))
                    )
                    continue
                ys = torch.arange(py0, py0 + th, dtype=means2d.dtype) + 0.5
                xs = torch.arange(px0, px0 + tw, dtype=means2d.dtype) + 0.5
                pix_y, pix_x = torch.meshgrid(ys, xs, indexing="ij")
                dx = means2d[c, ids, 0][None] - pix_x.reshape(-1, 1)  # [P, G]
                dy = means2d[c, ids, 1][None] - pix_y.reshape(-1, 1)
                a, b, cc = conics[c, ids].unbind(-1)
                sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
                alpha = torch.clamp_max(opacities[c, ids] * torch.exp(-sigma), MAX_ALPHA)
                alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha,
                                    torch.zeros_like(alpha))
                # A pixel stops before the Gaussian that would take T to <= 1e-4; T only
                # falls, so the kept set is a prefix of the sorted list.
                with torch.no_grad():
                    keep = torch.cumprod(1.0 - alpha, dim=1) > TRANSMITTANCE_EPS
                alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
                one_minus = 1.0 - alpha
                trans = torch.cumprod(
                    torch.cat((torch.ones_like(one_minus[:, :1]), one_minus[:, :-1]), 1), 1
                )
                weights = alpha * trans  # [P, G]
                color = weights @ colors[c, ids]  # [P, D]
                alpha_out = 1.0 - trans[:, -1] * one_minus[:, -1]
                row.append((color.reshape(th, tw, D), alpha_out.reshape(th, tw, 1)))
            rows.append(row)
        images.append(torch.cat([torch.cat([t[0] for t in r], 1) for r in rows], 0))
        alphas.append(torch.cat([torch.cat([t[1] for t in r], 1) for r in rows], 0))
    return torch.stack(images), torch.stack(alphas)

