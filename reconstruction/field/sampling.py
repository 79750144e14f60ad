"""Samples along rays: stratified bins and importance (inverse-CDF) resampling.

Samples are bins: ``edges [..., S + 1]`` ascending distances, sample ``k`` covering
``[edges[k], edges[k + 1]]`` (density is evaluated at its midpoint, :func:`midpoints`), the
representation of mip-NeRF 360 that volume rendering and the distortion loss share.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Spacing = Literal["linear", "inverse"]


def _unit_edges(shape: tuple[int, ...], num: int, perturb: bool,
                generator: torch.Generator | None, like: Tensor) -> Tensor:
    """``[*shape, num + 1]`` ascending in [0, 1] starting at 0 and ending at 1: uniform, or
    each interior edge jittered uniformly between its neighbours' midpoints."""
    u = torch.linspace(0.0, 1.0, num + 1, dtype=like.dtype, device=like.device)
    u = u.expand(*shape, num + 1)
    if not perturb or num < 1:
        return u.contiguous()
    mids = 0.5 * (u[..., 1:] + u[..., :-1])
    lower, upper = mids[..., :-1], mids[..., 1:]  # the interior edges' ranges
    r = torch.rand(lower.shape, generator=generator, dtype=like.dtype, device="cpu")
    inner = lower + (upper - lower) * r.to(like.device)
    return torch.cat((u[..., :1], inner, u[..., -1:]), -1)


def stratified(near: Tensor, far: Tensor, num: int, perturb: bool = False,
               spacing: Spacing = "linear", generator: torch.Generator | None = None) -> Tensor:
    """``edges [..., num + 1]`` between ``near [...]`` and ``far [...]``.

    ``linear``: uniform in distance; ``inverse``: uniform in disparity ``1/t`` (needs
    ``near > 0``; far may be ``inf``). ``perturb``: jittered (training), one generator draw.
    """
    s = _unit_edges(tuple(near.shape), num, perturb, generator, near)
    near, far = near[..., None], far[..., None]
    if spacing == "linear":
        return near + (far - near) * s
    inv_near, inv_far = 1.0 / near, 1.0 / far
    return 1.0 / (inv_near + (inv_far - inv_near) * s)


def midpoints(edges: Tensor) -> Tensor:
    """``[..., S]`` bin centres of ``edges [..., S + 1]``."""
    return 0.5 * (edges[..., 1:] + edges[..., :-1])


def sample_pdf(edges: Tensor, weights: Tensor, u: Tensor, eps: float = 1e-5) -> Tensor:
    """Inverse-CDF samples of the piecewise-constant density ``weights`` over the bins.

    Args:
        edges: ``[..., S + 1]`` ascending bin edges.
        weights: ``[..., S]`` non-negative bin masses (normalised here; ``eps`` is added to
            each so that an all-zero ray samples uniformly).
        u: ``[..., K]`` ascending numbers in [0, 1].

    Returns:
        ``[..., K]`` ascending distances: the ``u``-quantiles of the density.
    """
    weights = weights.detach() + eps
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat((torch.zeros_like(pdf[..., :1]), pdf.cumsum(-1).clamp_max(1.0)), -1)
    cdf[..., -1] = 1.0
    u = u.contiguous()
    idx = torch.searchsorted(cdf.contiguous(), u, right=True)
    below = (idx - 1).clamp(0, cdf.shape[-1] - 2)
    above = below + 1
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    t_lo, t_hi = edges.gather(-1, below), edges.gather(-1, above)
    frac = ((u - cdf_lo) / (cdf_hi - cdf_lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    return (t_lo + frac * (t_hi - t_lo)).detach()


def importance_edges(edges: Tensor, weights: Tensor, num: int, perturb: bool = False,
                     generator: torch.Generator | None = None) -> Tensor:
    """``[..., num + 1]`` new bin edges concentrated where ``weights`` is (mip-NeRF 360's
    resampling: the quantiles of ``u`` = stratified edges in [0, 1]); they span the same
    range as ``edges``."""
    u = _unit_edges(tuple(edges.shape[:-1]), num, perturb, generator, edges)
    return sample_pdf(edges, weights, u)


def importance_samples(edges: Tensor, weights: Tensor, num: int, perturb: bool = False,
                       generator: torch.Generator | None = None) -> Tensor:
    """NeRF's hierarchical sampling: ``num`` distances ``[..., num]`` drawn from the
    coarse weights (sorted; deterministic bin-centre quantiles unless ``perturb``)."""
    shape = tuple(edges.shape[:-1])
    if perturb:
        u = torch.rand((*shape, num), generator=generator, dtype=edges.dtype)
        u = u.to(edges.device).sort(-1).values
    else:
        u = ((torch.arange(num, dtype=edges.dtype, device=edges.device) + 0.5) / num)
        u = u.expand(*shape, num)
    return sample_pdf(edges, weights, u)


def merge_edges(edges: Tensor, samples: Tensor) -> Tensor:
    """Sorted union ``[..., S + 1 + K]`` of bin edges and extra distances (NeRF's fine pass
    evaluates the coarse and the importance samples together)."""
    return torch.cat((edges, samples), -1).sort(-1).values
