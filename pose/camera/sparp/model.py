"""SpaRP's diffusion model at small resolution: the Zero123++ UNet (:mod:`.zero123pp`) with a
pixel-space codec and a small learned image encoder, trained and sampled on the CPU.

Zero123++ runs in Stable Diffusion's VAE latent space with a CLIP image embedding for the
global conditioning. The small model keeps the architecture (reference attention on the
noised condition, the ramped global context, v-prediction, the 3x2 tiling, the domain
switcher) and replaces the two pretrained encoders, which a CPU budget cannot train nor
run, by:

- a pixel codec: the 4 "latent" channels of a tile are its RGB and an object mask, each
  mapped to ``[-1, 1]`` (a NOCS map's RGB are its coordinates, background black, mask =
  the object; a photo's mask channel is +1 on every tile holding a photo, -1 on empty
  tiles);
- a small convolutional image encoder (the condition image -> one ``[D]`` embedding, the
  CLIP ``image_embeds``' role) and a learned ``[77, D]`` "empty prompt" embedding.

Two objectives (:attr:`SparpModelConfig.objective`), on the same UNet and weights layout:

- ``v-ddim``: Zero123++'s own (v-prediction at random timesteps, DDIM sampling);
- ``x0-single-step``: deterministic single-step fine-tuning of the diffusion UNet (Garcia et
  al. 2024, "Fine-tuning image-conditional diffusion models is easier than you think";
  Lotus, He et al. 2024; GenPercept, Xu et al. 2024): one UNet pass at the fixed timestep
  :attr:`SparpModelConfig.timestep` with no noise predicts the output tiles directly (x0),
  trained with a direct loss: for NOCS, L1 on the coordinates over the object's pixels plus
  L2 on the mask channel; for the views, L1 on all channels. Zero123++ feeds the
  condition only through reference attention (its latent noised to the same timestep); here
  the noise is zero, the reference pass sees the clean condition image, and the sample the
  UNet denoises is the condition image itself (the deterministic counterpart of Garcia et
  al.'s zero-noise input: the NOCS map of input k lies in input k's tile, so the pass is
  pixel-aligned with its inputs). Sampling is that one pass.

Domains (:data:`~pose.camera.sparp.zero123pp.DOMAINS`): ``nocs`` (1) predicts the NOCS map of
every input view in the input's own tile; ``views`` (0) six novel views at the fixed poses of
:func:`novel_view_poses` around the first input (Zero123++ v1.2's: azimuths 30..330 deg in
steps of 60 relative to the first view, elevations 20 / -10 deg alternating, the first
view's distance to the object, the same field of view).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from pose.camera.sparp.zero123pp import (
    CONTEXT_TOKENS,
    TILE_COLS,
    TILE_ROWS,
    Zero123PP,
    Zero123PPConfig,
    tile_views,
    tiny_unet_config,
    untile_views,
)

__all__ = [
    "NOVEL_AZIMUTHS_DEG",
    "NOVEL_ELEVATIONS_DEG",
    "SparpModel",
    "SparpModelConfig",
    "decode_tiles",
    "encode_tiles",
    "novel_view_poses",
    "OBJECTIVES",
    "small_unet_config",
]

NUM_TILES = TILE_ROWS * TILE_COLS
OBJECTIVES = ("v-ddim", "x0-single-step")
#: Zero123++ v1.2's output views: azimuths relative to the first input, absolute elevations.
NOVEL_AZIMUTHS_DEG = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
NOVEL_ELEVATIONS_DEG = (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)


def small_unet_config(width: int = 32, levels: int = 3) -> dict:
    """The CPU-trainable configuration, with the (reference) attention at the lowest level
    and the middle block only.

    ``levels`` 3: ``width``, 2x, 2x channels (at 32 px tiles the upper levels have 6144 and
    1536 tokens: attention there dominated the CPU step time, 60 % at the middle level
    alone). ``levels`` 4: ``width``, 2x, 2x, 4x channels, the attention at 1/8 of the
    resolution (96 tokens per pass at 32 px tiles): 1.65x faster per training step than 3
    levels at width 16 (measured in one process), and a receptive field that spans a tile.
    """
    if levels == 3:
        channels = [width, 2 * width, 2 * width]
    elif levels == 4:
        channels = [width, 2 * width, 2 * width, 4 * width]
    else:
        raise ValueError(f"levels must be 3 or 4, got {levels}")
    return {
        **tiny_unet_config(),
        "attention_head_dim": [2] + [4] * (levels - 1),
        "block_out_channels": channels,
        "cross_attention_dim": channels[-1],
        "down_block_types": ["DownBlock2D"] * (levels - 1) + ["CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D"] + ["UpBlock2D"] * (levels - 1),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 32,
    }


def _domain_terms(per_item: Tensor, domain: Tensor) -> dict[str, Tensor]:
    """The training terms of per-item losses: ``loss`` (their mean, differentiable) and,
    for logging, the mean over the ``views`` (domain 0) and ``nocs`` (domain 1) items."""
    terms = {"loss": per_item.mean()}
    for name, d in (("views", 0), ("nocs", 1)):
        sel = domain == d
        if bool(sel.any()):
            terms[name] = per_item[sel].mean().detach()
    return terms


@dataclass
class SparpModelConfig:
    """The small SpaRP model (everything that rebuilds it from a checkpoint)."""

    tile: int = 32
    """Tile side in pixels (the condition and output images are 3 x 2 tiles)."""
    unet: dict = field(default_factory=small_unet_config)
    """The diffusers UNet config (Zero123++'s architecture at another size)."""
    encoder_width: int = 32
    """Channels of the image encoder's first layer (doubled twice)."""
    objective: str = "v-ddim"
    """``v-ddim`` (v-prediction, DDIM sampling) or ``x0-single-step`` (one deterministic
    pass at :attr:`timestep` predicts the tiles; see the module doc)."""
    timestep: int = 999
    """The fixed timestep of ``x0-single-step``."""

    @property
    def embed_dim(self) -> int:
        return int(self.unet["cross_attention_dim"])

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> SparpModelConfig:
        objective = str(d.get("objective", "v-ddim"))
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective}")
        return SparpModelConfig(tile=int(d["tile"]), unet=dict(d["unet"]),
                                encoder_width=int(d.get("encoder_width", 32)),
                                objective=objective, timestep=int(d.get("timestep", 999)))

    @staticmethod
    def tiny(tile: int = 16, objective: str = "v-ddim") -> SparpModelConfig:
        """A tiny random configuration (tests)."""
        return SparpModelConfig(tile=tile, unet=tiny_unet_config(), encoder_width=4,
                                objective=objective)


class ImageEncoder(nn.Module):
    """Condition image ``[B, 4, H, W]`` -> global embedding ``[B, D]`` (CLIP's role)."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(4, w, 3, 2, 1), nn.SiLU(), nn.Conv2d(w, 2 * w, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.SiLU())
        self.out = nn.Linear(8 * w, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.net(x)
        return self.out(torch.cat((h.mean((2, 3)), h.amax((2, 3))), -1))


def encode_tiles(rgb: Tensor, mask: Tensor) -> Tensor:
    """``[B, 6, h, w, 3]`` colours in [0, 1] and ``[B, 6, h, w]`` masks -> the tiled 4-channel
    codec image ``[B, 4, 3h, 2w]`` in [-1, 1]."""
    x = torch.cat((rgb * 2 - 1, mask[..., None].to(rgb.dtype) * 2 - 1), -1)
    return tile_views(x.permute(0, 1, 4, 2, 3))


def decode_tiles(x: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`encode_tiles`: ``[B, 4, 3h, 2w]`` -> colours ``[B, 6, h, w, 3]`` in
    [0, 1] and masks ``[B, 6, h, w]`` (mask channel > 0)."""
    tiles = untile_views(x).permute(0, 1, 3, 4, 2)
    rgb = ((tiles[..., :3] + 1) / 2).clamp(0, 1)
    return rgb, tiles[..., 3] > 0


class SparpModel(nn.Module):
    """Zero123++ (:class:`Zero123PP`, with the domain switcher) + the image encoder + the
    learned empty-prompt embedding, in the pixel codec's space."""

    def __init__(self, config: SparpModelConfig) -> None:
        super().__init__()
        self.config = config
        self.core = Zero123PP(Zero123PPConfig(unet=dict(config.unet), domain_switcher=True))
        dim = config.embed_dim
        self.encoder = ImageEncoder(config.encoder_width, dim)
        self.prompt = nn.Parameter(torch.randn(CONTEXT_TOKENS, dim) * 0.02)
        with torch.no_grad():  # Zero123++ v1.2's ramp rises over the tokens
            self.core.ramping.copy_(torch.linspace(0.0, 1.0, CONTEXT_TOKENS))

    @property
    def scheduler(self):
        return self.core.scheduler

    def context(self, cond: Tensor) -> Tensor:
        """``[B, 77, D]`` global context of the condition images ``[B, 4, H, W]``."""
        embeds = self.encoder(cond)
        return self.core.context(self.prompt[None].expand(len(cond), -1, -1), embeds)

    def forward(self, sample: Tensor, timestep: Tensor, cond: Tensor, domain: Tensor,
                noise: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        """``v`` prediction for the noisy tiled sample ``[B, 4, H, W]``."""
        ctx = self.context(cond) if context is None else context
        return self.core(sample, timestep, cond, ctx, domain, noise=noise)

    def predict_x0(self, cond: Tensor, domain: Tensor) -> Tensor:
        """``x0-single-step``: the tiles ``[B, 4, H, W]`` (codec space, unclamped) in one
        deterministic UNet pass (see the module doc)."""
        t = int(self.config.timestep)
        tt = torch.full((len(cond),), t, dtype=torch.long, device=cond.device)
        # zero noise: the reference pass's "noisy" condition sqrt(alpha_bar_t) * c is c
        scale = float(self.scheduler.alphas_cumprod[t]) ** 0.5
        return self(cond, tt, cond / scale, domain, noise=torch.zeros_like(cond))

    def loss(self, cond: Tensor, target: Tensor, domain: Tensor,
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The objective's loss; ``{"loss", "nocs", "views"}`` (the per-domain terms are the
        means over the batch's items of that domain). ``v-ddim``: v-prediction MSE at
        uniformly drawn timesteps; ``x0-single-step``: :meth:`x0_loss`. The timesteps and
        noise come from ``generator`` (a CPU generator: the same draws on every device)."""
        if self.config.objective == "x0-single-step":
            return self.x0_loss(cond, target, domain)
        b = len(target)
        sched = self.scheduler
        device = target.device
        t = torch.randint(0, sched.config.num_train_timesteps, (b,),
                          generator=generator).to(device)
        noise = torch.randn(target.shape, generator=generator).to(device)
        cond_noise = torch.randn(cond.shape, generator=generator).to(device)
        noisy = sched.add_noise(target, noise, t)
        v = sched.get_velocity(target, noise, t)
        pred = self(noisy, t, cond, domain, noise=cond_noise)
        per_item = ((pred - v) ** 2).mean((1, 2, 3))
        return _domain_terms(per_item, domain)

    def x0_loss(self, cond: Tensor, target: Tensor, domain: Tensor) -> dict[str, Tensor]:
        """The direct loss of ``x0-single-step``: NOCS items: mean L1 of the coordinates
        over the target's object pixels + mean squared error of the mask channel; views
        items: mean L1 over all channels."""
        pred = self.predict_x0(cond, domain)
        is_nocs = (domain == 1).to(pred.dtype)
        obj = (target[:, 3] > 0).to(pred.dtype)[:, None]  # [B, 1, H, W]
        l1 = (pred[:, :3] - target[:, :3]).abs()
        nocs_rgb = (l1 * obj).sum((1, 2, 3)) / (3 * obj.sum((1, 2, 3))).clamp(min=1.0)
        nocs_mask = ((pred[:, 3] - target[:, 3]) ** 2).mean((1, 2))
        views = (pred - target).abs().mean((1, 2, 3))
        per_item = is_nocs * (nocs_rgb + nocs_mask) + (1 - is_nocs) * views
        return _domain_terms(per_item, domain)

    @torch.no_grad()
    def sample(self, cond: Tensor, domain: Tensor, steps: int = 10, seed: int = 0) -> Tensor:
        """The output tiles ``[B, 4, H, W]`` (codec image in [-1, 1]): ``x0-single-step``
        makes its one pass (``steps``, ``seed`` unused); ``v-ddim`` samples with DDIM
        (``eta = 0``) in ``steps`` steps, the condition latent noised afresh at every step
        (Zero123++'s pipeline), with noise drawn from ``seed`` on the CPU (deterministic,
        the same draws on every device)."""
        from diffusers import DDIMScheduler

        if self.config.objective == "x0-single-step":
            return self.predict_x0(cond, domain).clamp(-1, 1)

        sched = DDIMScheduler.from_config(self.scheduler.config, timestep_spacing="trailing",
                                          clip_sample=False, set_alpha_to_one=False)
        sched.set_timesteps(steps)
        g = torch.Generator().manual_seed(seed)
        device = cond.device
        x = torch.randn(cond.shape, generator=g).to(device)
        ctx = self.context(cond)
        for t in sched.timesteps:
            tt = torch.full((len(cond),), int(t), dtype=torch.long, device=device)
            v = self(x, tt, cond, domain,
                     noise=torch.randn(cond.shape, generator=g).to(device), context=ctx)
            x = sched.step(v, t, x).prev_sample
        return x.clamp(-1, 1)


def novel_view_poses(T_obj_cam0: np.ndarray) -> np.ndarray:
    """``[6, 4, 4]`` ``T_obj_cam`` of the six novel views around the first input view.

    The object frame has z up (NOCS and :mod:`reconstruction.procedural.objects`): the
    views sit at the first camera's distance from the object origin, at its azimuth plus
    :data:`NOVEL_AZIMUTHS_DEG` and the elevations :data:`NOVEL_ELEVATIONS_DEG`, looking at
    the origin with the image's up along z.

    Args:
        T_obj_cam0: ``[4, 4]`` the first view's camera in the object frame (any units).
    """
    from geometry.se3 import look_at

    centre = T_obj_cam0[:3, 3]
    dist = float(np.linalg.norm(centre))
    az0 = math.atan2(centre[1], centre[0])
    poses = []
    for az, el in zip(NOVEL_AZIMUTHS_DEG, NOVEL_ELEVATIONS_DEG, strict=True):
        a, e = az0 + math.radians(az), math.radians(el)
        eye = dist * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a),
                               math.sin(e)])
        poses.append(look_at(eye, np.zeros(3)))
    return np.stack(poses)
