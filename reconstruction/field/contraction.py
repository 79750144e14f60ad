"""Scene contractions for unbounded scenes.

- mip-NeRF 360 (Barron et al. 2022, eq. 10): ``contract(x) = x`` for ``|x| <= 1``, else
  ``(2 - 1/|x|) x/|x|``: all of space maps into the ball of radius 2 (L2 norm, or the
  L-infinity norm as in Zip-NeRF / nerfstudio's scene box);
- NeRF++ (Zhang et al. 2020): outside the unit sphere a point at radius ``r`` along a ray is
  represented by ``(x/r, 1/r)`` (the inverted sphere), and background samples are drawn
  uniformly in ``1/r``; :func:`inverted_sphere_t` gives the ray distance of a radius.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Norm = Literal["l2", "linf"]


def _norm(x: Tensor, norm: Norm) -> Tensor:
    if norm == "l2":
        return torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x.abs().amax(-1, keepdim=True)


def contract(x: Tensor, norm: Norm = "l2") -> Tensor:
    """mip-NeRF 360 contraction of points ``[..., 3]`` into the ball of radius 2."""
    n = _norm(x, norm).clamp_min(1e-12)
    return torch.where(n <= 1.0, x, (2.0 - 1.0 / n) * (x / n))


def uncontract(y: Tensor, norm: Norm = "l2") -> Tensor:
    """Inverse of :func:`contract` for ``|y| < 2``: ``|x| = 1 / (2 - |y|)`` outside the ball."""
    n = _norm(y, norm).clamp_min(1e-12)
    r = 1.0 / (2.0 - n).clamp_min(1e-12)
    return torch.where(n <= 1.0, y, y / n * r)


def inverted_sphere(x: Tensor) -> Tensor:
    """NeRF++ background coordinates ``[..., 4]`` = ``(x/r, 1/r)`` of points ``[..., 3]``
    with ``r = |x| >= 1`` (unit direction and inverse radius)."""
    r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.cat((x / r, 1.0 / r), -1)


def inverted_sphere_t(origins: Tensor, dirs: Tensor, inv_r: Tensor) -> Tensor:
    """Distances ``t [..., S]`` at which rays (``[..., 3]``, unit directions, origins
    inside the sphere of radius ``1/inv_r``) reach the radii ``1 / inv_r [..., S]``:
    the positive root of ``|o + t d| = r``."""
    b = (origins * dirs).sum(-1, keepdim=True)
    c = (origins * origins).sum(-1, keepdim=True)
    r = 1.0 / inv_r.clamp_min(1e-12)
    return -b + (b * b - c + r * r).clamp_min(0.0).sqrt()
