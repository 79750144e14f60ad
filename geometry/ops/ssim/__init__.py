"""SSIM and L1 of two images in one native pass: the op ``sparseview::ssim_l1_{fwd,bwd}``
(``cuda/ssim/ssim_cpu.cpp``).

The two terms of 3DGS's photometric loss, forward and backward, on channels-last images
with a separable Gaussian window. The PyTorch reference it is tested against (values,
gradients, float64 gradcheck) is :func:`reconstruction.engine.losses.ssim` with
``(x - y).abs().mean()``; :func:`reconstruction.engine.losses.photometric_loss` uses this
op on the CPU.
"""

from geometry.ops.ssim._wrapper import ssim_l1_native

__all__ = ["ssim_l1_native"]
