"""A frozen diffusion backbone as a denoiser: encode / decode, prompts, noise prediction.

:class:`DiffusionBackbone` wraps a diffusers ``UNet2DConditionModel`` with its VAE (latent
diffusion, Stable Diffusion) or without one (pixel space: the UNet sees ``2 x - 1`` of the
image; the tiny CPU models), the training schedule and, when loaded, the text encoder and
tokenizer. Conditioning adapters (Sparse3D's epipolar controller, UpFusion's DF/SLT
ControlNet) pass ControlNet-style residuals to :meth:`DiffusionBackbone.eps`.

Without a tokenizer and text encoder (tiny models, or a single checkpoint loaded without
its text side), :meth:`DiffusionBackbone.prompt_embedding` returns a fixed pseudo-random
embedding per prompt (the empty prompt: zeros), so category-conditioned losses still run.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from geometry.errors import UserError


class DiffusionBackbone(torch.nn.Module):
    """See the module doc. All parameters are frozen.

    Args:
        unet: the noise predictor (diffusers ``UNet2DConditionModel``).
        vae: diffusers ``AutoencoderKL`` or None (pixel space).
        alphas_cumprod: ``[T]`` training schedule.
        scaling_factor: latent scale of the VAE.
        text_encoder, tokenizer: transformers CLIP text model and tokenizer, or None.
    """

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module | None,
                 alphas_cumprod: Tensor, scaling_factor: float = 0.18215,
                 text_encoder: torch.nn.Module | None = None, tokenizer=None) -> None:
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scaling_factor = scaling_factor
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.requires_grad_(False)
        self.eval()
        self._prompts: dict[str, Tensor] = {}

    @classmethod
    def from_stable_diffusion(cls, sd) -> DiffusionBackbone:
        """From :func:`~reconstruction.generative.loading.load_stable_diffusion`'s result."""
        return cls(sd.unet, sd.vae, sd.alphas_cumprod, sd.scaling_factor, sd.text_encoder,
                   sd.tokenizer)

    @classmethod
    def tiny(cls, pixel_space: bool = True, context_dim: int = 16, seed: int = 0
             ) -> DiffusionBackbone:
        """A randomly initialised few-thousand-parameter model of SD's UNet layout (tests,
        CPU runs without weights); ``pixel_space``: no VAE, 3-channel UNet."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from reconstruction.generative import ldm
        from reconstruction.generative.schedule import scaled_linear_alphas_cumprod

        config = ldm.tiny_sd_config(context_dim=context_dim)
        configs = ldm.diffusers_configs(config)
        unet_cfg = dict(configs["unet"])
        if pixel_space:
            unet_cfg.update(in_channels=3, out_channels=3)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**unet_cfg)
            vae = None if pixel_space else AutoencoderKL(**configs["vae"])
        return cls(unet, vae, scaled_linear_alphas_cumprod(), config["scale_factor"])

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def context_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def downsample(self) -> int:
        """Image pixels per latent pixel."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, images: Tensor) -> Tensor:
        """Scaled latents ``[B, C, h, w]`` of ``images [B, H, W, 3]`` in [0, 1] (the VAE
        posterior mean; differentiable)."""
        x = images.permute(0, 3, 1, 2).to(self.device, self.unet.dtype) * 2.0 - 1.0
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Images ``[B, H, W, 3]`` in [0, 1] of scaled latents ``[B, C, h, w]``."""
        x = latents if self.vae is None else self.vae.decode(latents / self.scaling_factor).sample
        return ((x.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1)

    @torch.no_grad()
    def prompt_embedding(self, prompt: str) -> Tensor:
        """``[1, L, D]`` text context of ``prompt`` (cached; see the module doc without a
        text encoder)."""
        if prompt in self._prompts:
            return self._prompts[prompt]
        if self.text_encoder is not None and self.tokenizer is not None:
            tokens = self.tokenizer([prompt], padding="max_length", truncation=True,
                                    max_length=self.tokenizer.model_max_length,
                                    return_tensors="pt").input_ids.to(self.device)
            context = self.text_encoder(tokens)[0]
        elif self.text_encoder is not None and not prompt:
            # CLIP's empty prompt: the start token, then end tokens as padding (SD 1.x)
            cfg = self.text_encoder.config
            tokens = torch.full((1, cfg.max_position_embeddings), cfg.eos_token_id,
                                device=self.device)
            tokens[0, 0] = cfg.bos_token_id
            context = self.text_encoder(tokens)[0]
        elif self.text_encoder is not None:
            raise UserError(f"the prompt {prompt!r} needs a tokenizer, which a single "
                            "checkpoint file lacks; use a diffusers folder with tokenizer/ "
                            "(CLIP's vocab.json and merges.txt) or an empty prompt.")
        elif not prompt:
            context = torch.zeros(1, 1, self.context_dim, device=self.device)
        else:
            seed = int.from_bytes(hashlib.sha1(prompt.encode()).digest()[:8], "little")
            g = torch.Generator().manual_seed(seed)
            context = torch.randn(1, 1, self.context_dim, generator=g).to(self.device)
        self._prompts[prompt] = context.to(self.unet.dtype)
        return self._prompts[prompt]

    def eps(self, noisy: Tensor, t: Tensor, context: Tensor,
            control: tuple[list[Tensor], Tensor] | None = None) -> Tensor:
        """Noise ``[B, C, h, w]`` of ``noisy`` at steps ``t [B]`` with text ``context [B, L,
        D]`` (or ``[1, L, D]``) and optional ControlNet residuals ``(down, mid)``."""
        if context.shape[0] != noisy.shape[0]:
            context = context.expand(noisy.shape[0], *context.shape[1:])
        kwargs = {}
        if control is not None:
            kwargs = {"down_block_additional_residuals": control[0],
                      "mid_block_additional_residual": control[1]}
        return self.unet(noisy.to(self.unet.dtype), t, encoder_hidden_states=context,
                         **kwargs).sample.float()
