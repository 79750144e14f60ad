"""Python front end of the native compositing op ``sparseview::rasterize_to_pixels_fwd``.

The op is declared in ``cuda/registry.cpp`` and implemented in
``cuda/rasterize/rasterize_cpu.cpp``; here it gets its autograd formula (the native
backward op) with ``torch.library.register_autograd``. The kernels are compiled on the
first call, never at import.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geometry.ops.loader import load_ops_with_autograd


def _setup_context(ctx, inputs, output) -> None:
    means2d, conics, colors, opacities, _depths, radii, width, height, tile_size = inputs
    _, render_alphas, last_ids, tile_offsets, flatten_ids = output
    ctx.save_for_backward(
        means2d, conics, colors, opacities, radii, render_alphas, last_ids, tile_offsets,
        flatten_ids,
    )
    ctx.image_size = (width, height, tile_size)


def _backward(ctx, v_render_colors, v_render_alphas, *_unused):
    (means2d, conics, colors, opacities, radii, render_alphas, last_ids, tile_offsets,
     flatten_ids) = ctx.saved_tensors
    width, height, tile_size = ctx.image_size
    if v_render_colors is None:
        v_render_colors = torch.zeros(
            (*render_alphas.shape[:3], colors.shape[-1]), dtype=colors.dtype
        )
    if v_render_alphas is None:
        v_render_alphas = torch.zeros_like(render_alphas)
    v_means2d, v_conics, v_colors, v_opacities, _v_means2d_abs = (
        torch.ops.sparseview.rasterize_to_pixels_bwd(
            means2d, conics, colors, opacities, radii, render_alphas, last_ids, tile_offsets,
            flatten_ids, v_render_colors, v_render_alphas, width, height, tile_size,
        )
    )
    return v_means2d, v_conics, v_colors, v_opacities, None, None, None, None, None


def _ensure_registered() -> None:
    load_ops_with_autograd({"sparseview::rasterize_to_pixels_fwd": (_backward, _setup_context)})


def rasterize_to_pixels_native(
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
    """Composite screen-space Gaussians with the native CPU kernel (differentiable).

    Returns:
        render_colors ``[C, H, W, D]`` and render_alphas ``[C, H, W, 1]`` (no background).
    """
    _ensure_registered()
    render_colors, render_alphas, *_ = torch.ops.sparseview.rasterize_to_pixels_fwd(
        means2d.contiguous(), conics.contiguous(), colors.contiguous(), opacities.contiguous(),
        depths.detach().contiguous(), radii.contiguous(), width, height, tile_size,
    )
    return render_colors, render_alphas
