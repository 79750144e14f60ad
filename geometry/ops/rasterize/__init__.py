"""Compositing of projected 2D Gaussians: the op ``sparseview::rasterize_to_pixels_{fwd,bwd}``.

Tile binning, depth sort and front-to-back alpha blending with early termination, forward
and backward. The Gaussian-splatting API built on it is
:func:`reconstruction.splatting.rasterization` (projection in PyTorch, then this op on the
CPU; on CUDA it calls gsplat instead).

- :func:`rasterize_to_pixels`: the entry point, dispatching by device;
- :func:`rasterize_to_pixels_native` (``_wrapper.py``): the native op with its autograd
  (``cuda/rasterize/rasterize_cpu.cpp``, compiled on first use);
- :func:`rasterize_to_pixels_torch` (``_torch_impl.py``): the pure-PyTorch reference, the
  test oracle (never a silent fallback);
- :func:`sh_to_color_native` (``_sh.py``): 3DGS's SH colours for C cameras sharing the
  coefficients, native forward and backward (``cuda/rasterize/sh_cpu.cpp``); the PyTorch
  reference is :func:`reconstruction.splatting.sh.sh_to_color`.
"""

from __future__ import annotations

from torch import Tensor

from geometry.ops.rasterize._sh import sh_to_color_native
from geometry.ops.rasterize._torch_impl import (
    ALPHA_THRESHOLD,
    MAX_ALPHA,
    TRANSMITTANCE_EPS,
    rasterize_to_pixels_torch,
    tile_ranges,
)
from geometry.ops.rasterize._wrapper import rasterize_to_pixels_native

__all__ = [
    "ALPHA_THRESHOLD",
    "MAX_ALPHA",
    "TRANSMITTANCE_EPS",
    "rasterize_to_pixels",
    "rasterize_to_pixels_native",
    "rasterize_to_pixels_torch",
    "sh_to_color_native",
    "tile_ranges",
]


def rasterize_to_pixels(
    means2d: Tensor,  # [C, N, 2] pixels
    conics: Tensor,  # [C, N, 3] (a, b, c) of the inverse 2D covariance
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N] in [0, 1]
    depths: Tensor,  # [C, N] sort key (camera z, metres)
    radii: Tensor,  # [C, N, 2] int32 (0 = culled)
    width: int,
    height: int,
    tile_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Composite screen-space Gaussians front to back with the native kernel (differentiable).

    Runs where the op has a native backend: the CPU (there is no CUDA kernel yet; on CUDA
    the splatting API uses gsplat).

    Returns:
        render_colors ``[C, H, W, D]`` and render_alphas ``[C, H, W, 1]`` (no background).

    Raises:
        ValueError: for tensors on a device without a native backend.
    """
    if means2d.device.type != "cpu":
        raise ValueError(
            f"rasterize_to_pixels has no native backend for {means2d.device}; move the "
            "tensors to the CPU (on CUDA, reconstruction.splatting.rasterization uses gsplat)"
        )
    return rasterize_to_pixels_native(means2d, conics, colors, opacities, depths, radii, width,
                                      height, tile_size)
