"""The DDPM noise schedule, timestep sampling for distillation and partial DDIM.

Stable Diffusion's schedule ("scaled linear"): ``beta_t = (sqrt(b0) + (sqrt(b1) - sqrt(b0))
t / (T - 1))^2`` with ``b0 = 0.00085``, ``b1 = 0.012``, ``T = 1000``; ``alpha_bar_t =
prod(1 - beta)``. The forward process: ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t)
eps``. DDIM (eta 0) steps ``x_t -> x_s`` with the predicted ``x_0``.

Timesteps for distillation (:class:`TimestepSampler`): uniform in ``[t_min, t_max] T``, or
annealed with training progress ``p``: ``t = t_max - (t_max - t_min) p`` (DreamTime /
UpFusion's "high noise levels first"), optionally with a little jitter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Weighting = Literal["sds", "uniform", "snr"]


def scaled_linear_alphas_cumprod(linear_start: float = 0.00085, linear_end: float = 0.012,
                                 timesteps: int = 1000) -> Tensor:
    """``[T]`` float32 ``alpha_bar_t`` of the LDM / Stable Diffusion schedule."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps,
                           dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def sds_weight(alphas_cumprod: Tensor, t: Tensor, weighting: Weighting = "sds") -> Tensor:
    """``[B]`` weight ``w(t)`` of the score residual: ``sds`` = ``1 - alpha_bar_t``
    (DreamFusion), ``uniform`` = 1, ``snr`` = ``sqrt(alpha_bar_t) sqrt(1 - alpha_bar_t)``
    (the ``x_0`` scale of the residual)."""
    a = alphas_cumprod.to(t.device)[t]
    if weighting == "sds":
        return 1.0 - a
    if weighting == "uniform":
        return torch.ones_like(a)
    if weighting == "snr":
        return a.sqrt() * (1.0 - a).sqrt()
    raise ValueError(f"unknown SDS weighting {weighting!r}")


@dataclass
class TimestepSampler:
    """Diffusion times for distillation (see the module doc)."""

    t_min: float = 0.02
    """Smallest time, as a share of the training steps."""
    t_max: float = 0.98
    """Largest time, as a share of the training steps."""
    anneal: bool = True
    """Lower the time with training progress (high noise first) instead of uniform draws."""
    jitter: float = 0.05
    """With ``anneal``: uniform jitter of this share of the range about the annealed time."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.t_min <= self.t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min <= t_max <= 1, not {self.t_min}, {self.t_max}")

    def fraction(self, batch: int, progress: float, generator: torch.Generator) -> Tensor:
        """``[batch]`` float64 times in ``[t_min, t_max]`` (shares of the steps)."""
        span = self.t_max - self.t_min
        if not self.anneal:
            return self.t_min + span * torch.rand(batch, generator=generator,
                                                  dtype=torch.float64)
        p = min(max(progress, 0.0), 1.0)
        centre = self.t_max - span * p
        noise = (2.0 * torch.rand(batch, generator=generator, dtype=torch.float64) - 1.0)
        return (centre + self.jitter * span * noise).clamp(self.t_min, self.t_max)

    def steps(self, batch: int, progress: float, generator: torch.Generator,
              num_timesteps: int = 1000) -> Tensor:
        """``[batch]`` integer steps in ``[0, num_timesteps - 1]``."""
        t = self.fraction(batch, progress, generator) * num_timesteps
        return t.round().long().clamp(0, num_timesteps - 1)


def add_noise(x0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise`` for ``x0 [B, ...]`` at steps ``t [B]``."""
    a = alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def predicted_x0(x_t: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """``x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``."""
    a = alphas_cumprod.to(x_t.device)[t].view(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def ddim_timesteps(t_start: int, steps: int) -> list[int]:
    """Descending integer steps from ``t_start`` towards 0 (``steps`` of them, no repeats)."""
    steps = max(1, min(steps, t_start + 1))
    values = torch.linspace(t_start, 0, steps + 1)[:-1].round().long().tolist()
    out: list[int] = []
    for v in values:
        if not out or v < out[-1]:
            out.append(int(v))
    return out


def partial_ddim(x0: Tensor, predict_noise: Callable[[Tensor, Tensor], Tensor],
                 t_start: int, steps: int, alphas_cumprod: Tensor,
                 generator: torch.Generator) -> Tensor:
    """Noise ``x0 [B, ...]`` to step ``t_start``, then run ``steps`` DDIM (eta 0) steps back
    to ``x_0`` with ``predict_noise(x_t, t [B]) -> eps``; returns the denoised ``x_0``
    (no gradient). UpFusion's / SparseFusion's image-space distillation target."""
    with torch.no_grad():
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0)
        b = x0.shape[0]
        schedule = ddim_timesteps(t_start, steps)
        x = add_noise(x0, noise, torch.full((b,), schedule[0], device=x0.device),
                      alphas_cumprod)
        for k, t in enumerate(schedule):
            t_vec = torch.full((b,), t, device=x0.device, dtype=torch.long)
            eps = predict_noise(x, t_vec)
            x0_hat = predicted_x0(x, eps, t_vec, alphas_cumprod)
            if k + 1 == len(schedule):
                return x0_hat
            s = torch.full((b,), schedule[k + 1], device=x0.device, dtype=torch.long)
            x = add_noise(x0_hat, eps, s, alphas_cumprod)  # DDIM, eta 0: reuse eps
    return x0_hat
