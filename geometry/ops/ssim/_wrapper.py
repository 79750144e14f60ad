"""Python front end of the native op ``sparseview::ssim_l1_fwd`` (schema and CPU kernel in
``cuda/ssim/ssim_cpu.cpp``), with its native backward attached by
``torch.library.register_autograd``. The kernels are compiled on the first call."""

from __future__ import annotations

import torch
from torch import Tensor

from geometry.ops.loader import load_ops_with_autograd


def _setup_context(ctx, inputs, output) -> None:
    x, y, window = inputs
    ctx.save_for_backward(x, y, window, output[2])
    ctx.mark_non_differentiable(output[2])


def _backward(ctx, v_ssim, v_l1, _v_stats):
    x, y, window, stats = ctx.saved_tensors
    zero = torch.zeros((), dtype=x.dtype)
    v_x, v_y = torch.ops.sparseview.ssim_l1_bwd(
        x, y, window, stats, zero if v_ssim is None else v_ssim,
        zero if v_l1 is None else v_l1, bool(ctx.needs_input_grad[1]))
    return v_x, (v_y if ctx.needs_input_grad[1] else None), None


def _ensure_registered() -> None:
    load_ops_with_autograd({"sparseview::ssim_l1_fwd": (_backward, _setup_context)})


def ssim_l1_native(x: Tensor, y: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
    """Mean SSIM and mean absolute difference of ``x`` and ``y`` (``[B, H, W, C]``, CPU).

    Args:
        x, y: images, channels last.
        window: ``[k]`` taps of the separable window (``k <= H, W``; 'valid' positions).

    Returns:
        ``(ssim, l1)``, scalars, differentiable to ``x`` and ``y``.
    """
    _ensure_registered()
    ssim, l1, _stats = torch.ops.sparseview.ssim_l1_fwd(x.contiguous(), y.contiguous(),
                                                        window.contiguous())
    return ssim, l1
