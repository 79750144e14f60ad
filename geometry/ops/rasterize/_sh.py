"""Python front end of the native SH colour op ``sparseview::sh_to_color_{fwd,bwd}``.

``max(SH(dirs / |dirs|) . coeffs + 0.5, 0)`` for C cameras sharing one set of coefficients,
in one native pass per Gaussian (``cuda/rasterize/sh_cpu.cpp``) instead of PyTorch's
products over an expanded ``[C, N, K, 3]`` tensor. The PyTorch version,
:func:`reconstruction.splatting.sh.sh_to_color`, is the reference it is tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geometry.ops.loader import load_ops_with_autograd


def _setup_context(ctx, inputs, output) -> None:
    degree, dirs, coeffs = inputs
    ctx.save_for_backward(dirs, coeffs)
    ctx.degree = degree


def _backward(ctx, v_colors):
    dirs, coeffs = ctx.saved_tensors
    v_dirs, v_coeffs = torch.ops.sparseview.sh_to_color_bwd(ctx.degree, dirs, coeffs, v_colors)
    return None, v_dirs, v_coeffs


def _ensure_registered() -> None:
    load_ops_with_autograd({"sparseview::sh_to_color_fwd": (_backward, _setup_context)})


def sh_to_color_native(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """3DGS colours of N Gaussians seen from C cameras with the native CPU kernel.

    Args:
        degree: SH degree, 0..3 (only the first ``(degree + 1) ** 2`` coefficients are read).
        dirs: ``[C, N, 3]`` viewing directions (Gaussian minus camera centre; any length).
        coeffs: ``[N, K, 3]`` SH coefficients shared by the cameras.

    Returns:
        ``[C, N, 3]``, differentiable with respect to ``dirs`` and ``coeffs``.
    """
    _ensure_registered()
    return torch.ops.sparseview.sh_to_color_fwd(int(degree), dirs.contiguous(),
                                                coeffs.contiguous())
