"""Image metrics of the sparse-view protocol.

Image metrics take images ``[H, W, 3]`` (or batches ``[..., H, W, 3]``) with values in
[0, 1]. SSIM is the one SSIM of the suite (Wang et al. 2004, 11x11 Gaussian window,
sigma 1.5, 'valid' region), shared with InstantSplat's D-SSIM loss.

Masked metrics follow RegNeRF's DTU evaluation (the pixelNeRF/RegNeRF protocol): masked
PSNR is the PSNR of the object pixels only; masked SSIM and LPIPS compare both images
composited on a white background outside the object mask.

Pose metrics (ATE, RPE, rotation errors, RRA/RTA/CCA) are :mod:`geometry.pose_metrics`,
shared with the pose estimators of ``pose/``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reconstruction.engine.losses import ssim

__all__ = [
    "composite_on_white",
    "depth_absrel",
    "psnr",
    "psnr_from_mse",
    "ssim",
    "ssim_masked",
]


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error for a peak of 1 (``inf`` for ``mse == 0``)."""
    if mse <= 0.0:
        return math.inf
    return -10.0 * math.log10(mse)


def psnr(image: Tensor, reference: Tensor, mask: Tensor | None = None) -> float:
    """Peak signal-to-noise ratio in dB (peak 1); ``inf`` for identical images.

    Args:
        image: ``[..., H, W, C]`` in [0, 1] (clamped first, like a saved render).
        reference: ``[..., H, W, C]`` ground truth.
        mask: optional ``[..., H, W]`` bool; the MSE is taken over the masked pixels only
            (all channels), as RegNeRF's masked PSNR.

    Returns:
        PSNR in dB (a Python float).
    """
    diff2 = (image.clamp(0, 1).double() - reference.double()) ** 2
    if mask is None:
        return psnr_from_mse(float(diff2.mean()))
    mask = mask.to(torch.bool)
    if not bool(mask.any()):
        return math.nan
    return psnr_from_mse(float(diff2[mask].mean()))


def depth_absrel(depth: Tensor, reference: Tensor, mask: Tensor | None = None) -> float:
    """Mean absolute relative depth error ``mean(|d - d*| / d*)`` (AbsRel).

    Args:
        depth: ``[..., H, W]`` estimated z-depth, already in the reference's units.
        reference: ``[..., H, W]`` ground-truth z-depth; pixels ``<= 0`` (nothing hit) or not
            finite are ignored.
        mask: optional ``[..., H, W]`` bool of pixels to use (e.g. where the render has
            coverage).

    Returns:
        AbsRel (a Python float); NaN when no pixel is valid.
    """
    d, ref = depth.double(), reference.double()
    valid = (ref > 0) & torch.isfinite(ref) & torch.isfinite(d)
    if mask is not None:
        valid &= mask.to(torch.bool)
    if not bool(valid.any()):
        return math.nan
    return float(((d[valid] - ref[valid]).abs() / ref[valid]).mean())


def composite_on_white(image: Tensor, mask: Tensor) -> Tensor:
    """``image * mask + (1 - mask)``: the object on white, ``[..., H, W, C]``."""
    m = mask.to(image.dtype)[..., None]
    return image * m + (1.0 - m)


def ssim_masked(image: Tensor, reference: Tensor, mask: Tensor) -> float:
    """SSIM of both images composited on white outside ``mask [..., H, W]`` (RegNeRF)."""
    return float(ssim(composite_on_white(image.clamp(0, 1), mask),
                      composite_on_white(reference, mask)))
