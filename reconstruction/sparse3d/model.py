"""Sparse3D's controller on a frozen diffusion UNet, and its score model for distillation.

::

    input photos [V, H, W, 3] --ImageEncoder--> features [V, C, h, w]   (latent resolution)
                                                   |
    target camera --rays, D depth bins--> EpipolarAggregator (epipolar.py)
                                                   |  [B, C_ctl, h, w]
    noisy target latent, t, text context --> ControlNet (a trainable copy of the UNet's
        encoder, zero-initialised output convolutions) --> residuals (down, mid)
                                                   |
    frozen UNet (noisy, t, context, + residuals) --> eps

The controller is ControlNet-style (:meth:`diffusers.ControlNetModel.from_unet`): its
encoder starts as a copy of the UNet's, its conditioning embedding and every output
convolution start at zero, so before training the UNet's output is bit-for-bit unchanged
(tested). Only the image encoder, the aggregator and the ControlNet train
(``recon sparse3d train``); the UNet stays frozen.

Checkpoints (``kind="sparse3d"``, :mod:`geometry.training`): ``config.json`` holds the
:class:`Sparse3DArchitecture` and the backbone it was trained on: ``"tiny"`` (the built-in
random pixel-space UNet, whose weights are then part of ``model.safetensors``, so the
checkpoint alone is a complete denoiser) or ``"external"`` (the user's Stable Diffusion,
given again with ``--diffusion``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geometry.errors import UserError
from reconstruction.generative.model import DiffusionBackbone
from reconstruction.generative.sds import NoisePrediction, NovelCameras
from reconstruction.sparse3d.config import Sparse3DArchitecture
from reconstruction.sparse3d.epipolar import EpipolarAggregator

KIND = "sparse3d"


class ImageEncoder(nn.Module):
    """Photos ``[V, H, W, 3]`` -> features ``[V, C, H / s, W / s]`` (``s`` the backbone's
    latent downsampling, a power of two)."""

    def __init__(self, channels: int, downsample: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.SiLU()]
        s = downsample
        while s > 1:
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.SiLU()]
            s //= 2
        layers += [nn.Conv2d(channels, channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.permute(0, 3, 1, 2) * 2.0 - 1.0)


class Sparse3DController(nn.Module):
    """Image encoder + epipolar aggregator + zero-initialised ControlNet (module doc).

    Args:
        unet: the frozen UNet to control (its encoder is copied).
        arch: sizes.
        downsample: image pixels per latent pixel of the backbone.
    """

    def __init__(self, unet: nn.Module, arch: Sparse3DArchitecture, downsample: int) -> None:
        super().__init__()
        from diffusers import ControlNetModel

        self.arch = arch
        self.downsample = downsample
        self.encoder = ImageEncoder(arch.feature_dim, downsample)
        self.aggregator = EpipolarAggregator(arch.feature_dim, arch.control_channels,
                                             arch.num_depths)
        self.controlnet = ControlNetModel.from_unet(
            unet, conditioning_channels=arch.control_channels,
            conditioning_embedding_out_channels=(16,))  # features are at latent resolution

    def epipolar(self, features: Tensor, T_cam_world_in: Tensor, K_in: Tensor,
                 T_cam_world: Tensor, K: Tensor, height: int, width: int,
                 centre: Tensor) -> Tensor:
        """``[B, C_ctl, h, w]`` epipolar features of target cameras ``T_cam_world [B, 4, 4]``
        (``K [B, 3, 3]`` of the ``h x w`` latent grid) from input ``features [V, C, hf,
        wf]`` (cameras ``T_cam_world_in [V, 4, 4]``, ``K_in`` of the feature maps), depth
        bins about ``centre [3]``."""
        cam_centres = -(T_cam_world[:, :3, :3].transpose(1, 2) @ T_cam_world[:, :3, 3:])[..., 0]
        r = float((cam_centres - centre.to(cam_centres)).norm(dim=-1).mean())
        f = self.arch.depth_range
        out, _ = self.aggregator(features, T_cam_world_in, K_in, T_cam_world, K, height, width,
                                 max(1e-3, r * (1 - f)), r * (1 + f))
        return out

    def forward(self, noisy: Tensor, t: Tensor, context: Tensor, control: Tensor
                ) -> tuple[list[Tensor], Tensor]:
        """ControlNet residuals ``(down, mid)`` for the UNet given epipolar ``control``."""
        if context.shape[0] != noisy.shape[0]:
            context = context.expand(noisy.shape[0], *context.shape[1:])
        out = self.controlnet(noisy, t, encoder_hidden_states=context,
                              controlnet_cond=control.to(noisy.dtype), return_dict=False)
        return list(out[0]), out[1]


class Sparse3DModel(nn.Module):
    """What ``recon sparse3d train`` trains and saves: the controller, plus the tiny
    backbone when the architecture says ``tiny`` (an external backbone is held outside the
    module tree, so it is neither trained nor saved)."""

    def __init__(self, arch: Sparse3DArchitecture, backbone: DiffusionBackbone | None = None
                 ) -> None:
        super().__init__()
        if arch.backbone == "tiny":
            backbone = DiffusionBackbone.tiny(pixel_space=True, seed=arch.tiny_seed)
            self.tiny_backbone = backbone
        elif backbone is None:
            raise UserError("this Sparse3D controller was trained on an external Stable "
                            "Diffusion; give the same model with --diffusion.")
        self._backbone = [backbone]  # not a submodule
        self.arch = arch
        self.controller = Sparse3DController(backbone.unet, arch, backbone.downsample)

    @property
    def backbone(self) -> DiffusionBackbone:
        return self._backbone[0]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.controller.parameters())

    def eps(self, noisy: Tensor, t: Tensor, context: Tensor, features: Tensor,
            T_cam_world_in: Tensor, K_in: Tensor, T_cam_world: Tensor, K: Tensor,
            centre: Tensor) -> Tensor:
        """Controlled noise prediction ``[B, C, h, w]`` (``K`` of the latent grid)."""
        h, w = noisy.shape[-2:]
        control = self.controller.epipolar(features, T_cam_world_in, K_in, T_cam_world, K, h, w,
                                           centre)
        residuals = self.controller(noisy, t, context, control)
        return self.backbone.eps(noisy, t, context, residuals)


def scale_intrinsics(K: Tensor, factor: float) -> Tensor:
    """``K`` of an image resized by ``factor`` (pixel-corner convention: centres at +0.5)."""
    K = K.clone()
    K[..., 0, :] = K[..., 0, :] * factor
    K[..., 1, :] = K[..., 1, :] * factor
    K[..., 2, :] = torch.tensor([0.0, 0.0, 1.0], dtype=K.dtype, device=K.device)
    return K


def resize_views(images: list[Tensor], Ks: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Photos (one size) resized so the longer side is ``size``: ``[V, h, w, 3]`` and their
    ``K [V, 3, 3]``."""
    h, w = images[0].shape[:2]
    factor = size / max(h, w)
    h2, w2 = max(8, round(h * factor / 8) * 8), max(8, round(w * factor / 8) * 8)
    out = torch.stack([F.interpolate(im.permute(2, 0, 1)[None].float(), size=(h2, w2),
                                     mode="bilinear", antialias=True, align_corners=False)[0]
                       .permute(1, 2, 0) for im in images])
    K = Ks.clone().float()
    K[:, 0] *= w2 / w
    K[:, 1] *= h2 / h
    return out.clamp(0, 1), K


class Sparse3DScore:
    """A :class:`~reconstruction.generative.sds.ScoreModel`: the controlled backbone
    conditioned on the input photos (and a category prompt for C-SDS).

    Args:
        model: the trained (or freshly zero-initialised) controller with its backbone.
        images: ``[V, H, W, 3]`` input photos in [0, 1].
        T_cam_world: ``[V, 4, 4]`` their cameras; ``Ks [V, 3, 3]`` for ``images``' pixels.
        centre: ``[3]`` object centre (depth bins).
        prompt: the category prompt (``"a photo of a chair"``); the unconditional branch
            uses the empty prompt.
    """

    def __init__(self, model: Sparse3DModel, images: Tensor, T_cam_world: Tensor, Ks: Tensor,
                 centre: Tensor, prompt: str = "") -> None:
        self.model = model
        backbone = model.backbone
        self.alphas_cumprod = backbone.alphas_cumprod
        device = backbone.device
        with torch.no_grad():
            self.features = model.controller.encoder(images.to(device))
        self.T_in = T_cam_world.float().to(device)
        self.K_in = scale_intrinsics(Ks.float().to(device), 1.0 / model.controller.downsample)
        self.centre = centre.float().to(device)
        self.context_cond = backbone.prompt_embedding(prompt)
        self.context_uncond = backbone.prompt_embedding("")

    def encode(self, images: Tensor) -> Tensor:
        return self.model.backbone.encode(images)

    def decode(self, latents: Tensor) -> Tensor:
        return self.model.backbone.decode(latents)

    @torch.no_grad()
    def predict_noise(self, noisy: Tensor, t: Tensor, cameras: NovelCameras) -> NoisePrediction:
        device = self.model.backbone.device
        K = scale_intrinsics(cameras.K.float().to(device), 1.0 / self.model.controller.downsample)
        T = cameras.T_cam_world.float().to(device)
        noisy, t = noisy.to(device), t.to(device)
        args = (self.features, self.T_in, self.K_in, T, K, self.centre)
        both = torch.cat([noisy, noisy])
        steps = torch.cat([t, t])
        context = torch.cat([self.context_cond.expand(len(noisy), -1, -1),
                             self.context_uncond.expand(len(noisy), -1, -1)])
        features, T_in, K_in, T2, K2, centre = args
        eps = self.model.eps(both, steps, context, features, T_in, K_in,
                             torch.cat([T2, T2]), torch.cat([K2, K2]), centre)
        cond, uncond = eps.chunk(2)
        return NoisePrediction(cond, uncond)


def architecture_dict(arch: Sparse3DArchitecture) -> dict:
    return asdict(arch)


def load_controller(folder: Path, backbone: DiffusionBackbone | None,
                    device: str | torch.device = "cpu") -> Sparse3DModel:
    """A trained Sparse3D model from ``recon sparse3d train``'s folder; ``backbone``: the
    Stable Diffusion given with --diffusion (None: the checkpoint's tiny one)."""
    from geometry.training import load_weights, read_checkpoint_config

    record = read_checkpoint_config(folder, KIND, "recon sparse3d train")
    try:
        arch = Sparse3DArchitecture(**record["config"]["arch"])
    except (KeyError, TypeError):
        raise UserError(f"{folder}/config.json has no Sparse3D architecture; give the folder "
                        "written by 'recon sparse3d train'.") from None
    if arch.backbone == "tiny" and backbone is not None:
        raise UserError(f"the controller {folder} was trained on the built-in tiny backbone, "
                        "not on the --diffusion model; train one on that model or leave out "
                        "--diffusion.")
    model = Sparse3DModel(arch, backbone)
    load_weights(folder, model, KIND, "recon sparse3d train")
    model.requires_grad_(False)
    model.eval()
    return model.to(device)
