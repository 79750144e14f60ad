"""Loss terms of the Gaussian trainer, and 3DGS's photometric losses.

:func:`ssim` (11x11 Gaussian window, sigma 1.5), :func:`photometric_loss` (L1 + D-SSIM) and
:func:`psnr` are the image functions every method and ``recon eval`` share. A
:class:`LossTerm` is one summand of a trainer's loss; the trainer adds its terms in list
order. F-3DGO's loss is ``[PhotometricLoss(), PoseRegulariser()]``
(:func:`default_loss_terms`); a method appends its own (RDG-GS: relative depth guidance).
"""

from __future__ import annotations

import functools
import typing

import torch
from torch import Tensor

from reconstruction.engine.components import TrainerComponent

if typing.TYPE_CHECKING:
    from reconstruction.engine.config import TrainConfig
    from reconstruction.engine.trainer import GaussianTrainer

_C1 = 0.01**2  # SSIM's stabilisers for a dynamic range of 1
_C2 = 0.03**2


@functools.lru_cache(maxsize=8)
def _gaussian_window(size: int, sigma: float, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _blur(x: Tensor, window: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filter of ``x [B, C, H, W]`` per channel."""
    c = x.shape[1]
    k = window.numel()
    x = torch.nn.functional.conv2d(x, window.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return torch.nn.functional.conv2d(x, window.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def _window_for(height: int, width: int, window_size: int, sigma: float, dtype: torch.dtype,
                device: torch.device) -> Tensor:
    # Images smaller than the window (tiny photos at the coarse level) get a smaller one.
    window_size = min(window_size, width, height)
    window_size -= 1 - window_size % 2
    return _gaussian_window(window_size, sigma, dtype).to(device)


def ssim(image: Tensor, reference: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity of ``image`` and ``reference`` (``[..., H, W, C]`` in [0, 1]).

    Wang et al. 2004 with a Gaussian window over the 'valid' region (no padding), the form
    used by most SSIM references (skimage with ``gaussian_weights=True``,
    ``use_sample_covariance=False``). Differentiable; returns a scalar. In PyTorch: the
    reference of the native op that :func:`ssim_and_l1` runs on the CPU.
    """
    x = image.reshape(-1, *image.shape[-3:]).permute(0, 3, 1, 2)
    y = reference.reshape(-1, *reference.shape[-3:]).permute(0, 3, 1, 2)
    window = _window_for(x.shape[-2], x.shape[-1], window_size, sigma, x.dtype, x.device)
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    var_x = _blur(x * x, window) - mu_x**2
    var_y = _blur(y * y, window) - mu_y**2
    cov = _blur(x * y, window) - mu_x * mu_y
    num = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    den = (mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2)
    return (num / den).mean()


def ssim_and_l1(image: Tensor, reference: Tensor, window_size: int = 11,
                sigma: float = 1.5) -> tuple[Tensor, Tensor]:
    """``(ssim(image, reference), mean |image - reference|)``, differentiable.

    On the CPU both come from one native pass (:mod:`geometry.ops.ssim`: no permuted
    copies, five window means in two separable passes, a fused backward); elsewhere from
    PyTorch (:func:`ssim`). The two agree to float rounding.
    """
    if image.device.type != "cpu" or image.dtype not in (torch.float32, torch.float64) \
            or reference.dtype != image.dtype or reference.device != image.device:
        return ssim(image, reference, window_size, sigma), (image - reference).abs().mean()
    from geometry.ops.ssim import ssim_l1_native

    x = image.reshape(-1, *image.shape[-3:])
    window = _window_for(x.shape[-3], x.shape[-2], window_size, sigma, x.dtype, x.device)
    return ssim_l1_native(x, reference.reshape(x.shape), window)


def photometric_loss(image: Tensor, reference: Tensor, ssim_weight: float = 0.2) -> Tensor:
    """3DGS's loss ``(1 - w) * L1 + w * (1 - SSIM)`` (``w = 0.2``), ``[H, W, 3]`` each."""
    value, l1 = ssim_and_l1(image, reference)
    return (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - value)


def psnr(image: Tensor, reference: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (``inf`` when identical)."""
    mse = ((image.clamp(0, 1) - reference) ** 2).mean()
    return -10.0 * torch.log10(mse)


class LossTerm(TrainerComponent):
    """One summand of the training loss of a rendered view."""

    needs_depth: bool = False
    """The term reads ``meta["depth"]`` (the trainer then renders expected depth)."""

    def __call__(self, trainer: GaussianTrainer, view: int, image: Tensor, alpha: Tensor,
                 meta: dict, target: Tensor) -> Tensor:
        """The weighted term (a scalar) for ``image [h, w, 3]`` / ``alpha [h, w, 1]`` of
        ``view`` rendered at ``meta["scale"]`` against ``target [h, w, 3]``."""
        raise NotImplementedError


class PhotometricLoss(LossTerm):
    """3DGS's ``(1 - w) L1 + w (1 - SSIM)``."""

    def __init__(self, ssim_weight: float = 0.2) -> None:
        self.ssim_weight = ssim_weight

    def __call__(self, trainer, view, image, alpha, meta, target) -> Tensor:
        return photometric_loss(image, target, self.ssim_weight)


class PoseRegulariser(LossTerm):
    """InstantSplat's prior that keeps poses near their initialisation:
    ``w * sum_v(|rho_v|^2 / s^2 + |omega_v|^2) / (V - 1)`` (view 0 is fixed), ``s`` the scene
    scale; zero when poses are not optimised."""

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, trainer, view, image, alpha, meta, target) -> Tensor | float:
        c, data = trainer.config, trainer.data
        if not (c.optimise_poses and self.weight > 0 and data.num_views > 1):
            return 0.0
        twists = trainer.pose_twists()
        reg = ((twists[:, :3] / data.scene_scale) ** 2).sum(1) + (twists[:, 3:] ** 2).sum(1)
        return self.weight * reg.sum() / (data.num_views - 1)


def default_loss_terms(config: TrainConfig) -> list[LossTerm]:
    """F-3DGO's loss: photometric + pose regulariser."""
    return [PhotometricLoss(config.ssim_weight), PoseRegulariser(config.pose_reg_weight)]
