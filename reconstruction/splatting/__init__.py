"""Differentiable Gaussian splatting: :func:`rasterization` (gsplat's API; native CPU
kernel or gsplat on CUDA), the screen-space projection and SH colours. The compositing op
(native kernel and pure-PyTorch reference) lives in :mod:`geometry.ops.rasterize`."""

from reconstruction.splatting.rasterization import RENDER_MODES, rasterization
from reconstruction.splatting.sh import num_sh_bases, rgb_to_sh, sh_to_color, spherical_harmonics

__all__ = [
    "RENDER_MODES",
    "num_sh_bases",
    "rasterization",
    "rgb_to_sh",
    "sh_to_color",
    "spherical_harmonics",
]
