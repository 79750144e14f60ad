"""Real spherical harmonics up to degree 3, in the basis and sign convention of the original
3DGS code and gsplat (so SH coefficients in a standard 3DGS PLY mean the same here)."""

from __future__ import annotations

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients of a degree: ``(degree + 1) ** 2``."""
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis functions evaluated at unit directions.

    Args:
        degree: 0..3.
        dirs: ``[..., 3]`` unit vectors.

    Returns:
        ``[..., (degree + 1) ** 2]``.
    """
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    x, y, z = dirs.unbind(-1)
    bases = [torch.full_like(x, SH_C0)]
    if degree > 0:
        bases += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree > 1:
        xx, yy, zz = x * x, y * y, z * z
        bases += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree > 2:
        bases += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(bases, -1)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH colours (without the +0.5 offset; see :func:`sh_to_color`).

    Args:
        degree: SH degree to use, 0..3; only the first ``(degree + 1) ** 2`` coefficients
            of ``coeffs`` are read, so the active degree can be raised during training.
        dirs: ``[..., 3]`` viewing directions (need not be normalised).
        coeffs: ``[..., K, 3]`` with ``K >= (degree + 1) ** 2``.

    Returns:
        ``[..., 3]``.
    """
    k = num_sh_bases(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"sh_degree {degree} needs {k} SH coefficients, got {coeffs.shape[-2]}")
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    basis = sh_basis(degree, dirs)  # [..., k]
    return (basis.unsqueeze(-1) * coeffs[..., :k, :]).sum(-2)


def sh_to_color(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colour as 3DGS renders it: ``max(SH(dirs) + 0.5, 0)``.

    Shapes as :func:`spherical_harmonics`.
    """
    return torch.clamp_min(spherical_harmonics(degree, dirs, coeffs) + 0.5, 0.0)


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """DC coefficient that renders as ``rgb`` (inverse of the degree-0 colour)."""
    return (rgb - 0.5) / SH_C0
