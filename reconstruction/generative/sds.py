"""Score distillation on any latent (or pixel) diffusion model: SDS, multi-view SDS, C-SDS.

A model plugs in as a :class:`ScoreModel`: it encodes rendered images to (scaled) latents
and predicts the noise of noisy latents at novel cameras, conditional and unconditional
(for classifier-free guidance). The losses here are written so that ``dL/dlatents`` is
exactly the distillation gradient (``L = 0.5 sum (z - sg(z - g))^2``), and only the render
(through the encoder) receives a gradient:

- **SDS** (DreamFusion): ``g = w(t) (eps_hat - eps)`` with the guided prediction
  ``eps_hat = eps_u + s (eps_c - eps_u)`` and the injected noise ``eps``.
- **Multi-view-conditioned SDS** (Zero123-style priors, SparseAGS, UpFusion with several
  inputs): the guided prediction is averaged over the conditioning views
  (:func:`average_over_views`), then as SDS.
- **C-SDS** (Sparse3D's category score distillation, as we read it): only the classifier
  (category) part of the score, ``g = w(t) s (eps(x_t; y_category, c) - eps(x_t; y_empty,
  c))`` with the view condition ``c`` (the epipolar controller) in both terms and no noise
  residual: the ``eps_hat - eps`` term of SDS is what blurs (its mean over noise draws is
  the mode-averaging direction), while the category direction sharpens detail.

Weighting ``w(t)`` and timestep annealing come from :mod:`.schedule`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from reconstruction.generative.schedule import Weighting, add_noise, sds_weight

Mode = Literal["sds", "csds"]


@dataclass
class NovelCameras:
    """Cameras of rendered novel views (float32, the trainer's world frame)."""

    T_cam_world: Tensor  # [B, 4, 4] OpenCV
    K: Tensor  # [B, 3, 3] pixels of the render
    width: int
    height: int


@dataclass
class NoisePrediction:
    """Conditional and unconditional noise predictions ``[B, C, h, w]``."""

    cond: Tensor
    uncond: Tensor

    def guided(self, scale: float) -> Tensor:
        """Classifier-free guidance ``eps_u + s (eps_c - eps_u)``."""
        return self.uncond + scale * (self.cond - self.uncond)


class ScoreModel(Protocol):
    """What score distillation needs from a diffusion model."""

    alphas_cumprod: Tensor
    """``[T]`` the training schedule's ``alpha_bar``."""

    def encode(self, images: Tensor) -> Tensor:
        """Scaled latents ``[B, C, h, w]`` of ``images [B, H, W, 3]`` in [0, 1]
        (differentiable: the distillation gradient flows through it)."""
        ...

    def predict_noise(self, noisy: Tensor, t: Tensor, cameras: NovelCameras) -> NoisePrediction:
        """Noise of ``noisy [B, C, h, w]`` at steps ``t [B]`` for views at ``cameras``."""
        ...


def distillation_loss(latents: Tensor, grad: Tensor, reduction: str = "sum") -> Tensor:
    """``0.5 * sum((z - sg(z - g))^2)`` (``mean``: divided by the batch size): its gradient
    with respect to ``latents`` is ``grad`` (times ``1 / B`` for ``mean``)."""
    target = (latents - torch.nan_to_num(grad)).detach()
    loss = 0.5 * ((latents.float() - target.float()) ** 2).sum()
    return loss / latents.shape[0] if reduction == "mean" else loss


def score_gradient(prediction: NoisePrediction, noise: Tensor, weight: Tensor,
                   guidance_scale: float, mode: Mode = "sds") -> Tensor:
    """The distillation gradient ``[B, C, h, w]`` (see the module doc) with ``weight [B]``."""
    w = weight.view(-1, *([1] * (noise.dim() - 1))).to(noise)
    if mode == "sds":
        return w * (prediction.guided(guidance_scale) - noise)
    if mode == "csds":
        return w * guidance_scale * (prediction.cond - prediction.uncond)
    raise ValueError(f"unknown score distillation mode {mode!r}")


def score_distillation(model: ScoreModel, images: Tensor, cameras: NovelCameras, t: Tensor,
                       generator: torch.Generator, guidance_scale: float = 7.5,
                       mode: Mode = "sds", weighting: Weighting = "sds",
                       reduction: str = "sum") -> Tensor:
    """SDS or C-SDS loss (a scalar) of renders ``images [B, H, W, 3]`` in [0, 1] at
    ``cameras``, diffusion steps ``t [B]``; only ``images`` receives a gradient."""
    latents = model.encode(images)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    t = t.to(latents.device)
    with torch.no_grad():
        noisy = add_noise(latents.detach(), noise, t, model.alphas_cumprod)
        prediction = model.predict_noise(noisy, t, cameras)
        grad = score_gradient(prediction, noise, sds_weight(model.alphas_cumprod, t, weighting),
                              guidance_scale, mode)
    return distillation_loss(latents, grad, reduction)


def average_over_views(predict_view: Callable[[Tensor, Tensor, NovelCameras, int],
                                              NoisePrediction],
                       views: int) -> Callable[[Tensor, Tensor, NovelCameras], NoisePrediction]:
    """Multi-view conditioning: a ``predict_noise`` that averages ``predict_view(noisy, t,
    cameras, v)`` (the prediction conditioned on input view ``v``) over ``v < views``."""

    def predict(noisy: Tensor, t: Tensor, cameras: NovelCameras) -> NoisePrediction:
        cond, uncond = None, None
        for v in range(views):
            p = predict_view(noisy, t, cameras, v)
            cond = p.cond if cond is None else cond + p.cond
            uncond = p.uncond if uncond is None else uncond + p.uncond
        return NoisePrediction(cond / views, uncond / views)

    return predict
