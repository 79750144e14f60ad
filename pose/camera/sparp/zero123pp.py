"""The Zero123++ architecture on diffusers with SpaRP's domain switcher (architecture and
weight loading; the small trainable model, its training and sampling: :mod:`.model`,
:mod:`.train`).

Zero123++ (Shi et al. 2023, v1.2 weights ``sudo-ai/zero123plus-v1.2``) is Stable Diffusion
2's UNet (v-prediction) fine-tuned to draw six views of an object, tiled 3 rows x 2 columns
into one 640 x 960 image, from one condition image::

    condition image ──VAE──> cond_lat ──(noised to the same t)──> UNet pass "write":
                                            every self-attention (attn1) stores its input
    noisy 3x2 tiled latent ───────────────────────────────────> UNet pass "read": every
                                            attn1 attends to [its own tokens, the stored ones]
                                            (reference attention: local conditioning)
    condition image ──CLIP vision (image_embeds [1024])──┐
    empty prompt ──CLIP text [77, 1024]──────────────────┴─> text + ramp[77, 1] * image_embeds
                                            (the cross-attention context: global conditioning)

SpaRP (Xu et al. ECCV 2024) tiles the 1-6 input photos into the 3x2 condition image and adds
a domain switcher: a learned embedding, added to the UNet's time embedding, that selects
the output domain (the six novel views, or one NOCS map per input view). Here it is the
UNet's projection class embedding (``class_embedding.linear_1/2``) of a sin/cos code of the
domain; ``linear_2`` starts at zero so that loaded Zero123++ v1.2 weights behave exactly as
published until fine-tuned.

Latents and images use Zero123++'s rescaling (``scale_latents``: ``(z - 0.22) * 0.75``
after the VAE's 0.18215; ``scale_image``: ``x * 0.5 / 0.8``).

Checkpoint layout (a Zero123++ diffusers folder): ``unet/config.json`` +
``unet/diffusion_pytorch_model.safetensors`` (plain ``UNet2DConditionModel`` keys: the
reference attention adds no weights), ``model_index.json`` with ``ramping_coefficients``
(77 numbers). A SpaRP checkpoint is the same layout whose UNet also holds
``class_embedding.*``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from geometry.errors import UserError

#: Zero123++ v1.2's ``unet/config.json`` (Stable Diffusion 2's UNet): the entries that fix
#: the weights' names and shapes, and the attention behaviour.
ZERO123PP_V12_UNET_CONFIG: dict = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 96,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
    "upcast_attention": True,
    "use_linear_projection": True,
}

#: Parameters of Zero123++ v1.2's UNet as published (the model card's component table:
#: 865,910,724) - an independent check of the config above.
ZERO123PP_V12_UNET_PARAMETERS = 865_910_724

#: Tokens of the CLIP text context (the ramp has one coefficient per token).
CONTEXT_TOKENS = 77
DOMAINS = ("views", "nocs")
#: Sin/cos code of the domain index: 2 frequencies -> 4 numbers.
DOMAIN_CODE_DIM = 4
TILE_ROWS, TILE_COLS = 3, 2


def tiny_unet_config() -> dict:
    """A tiny random configuration of the same architecture (tests: 16-32 px latents)."""
    return {
        **ZERO123PP_V12_UNET_CONFIG,
        "attention_head_dim": [2, 4],
        "block_out_channels": [8, 16],
        "cross_attention_dim": 16,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "sample_size": 16,
        "upcast_attention": False,
    }


def with_domain_switcher(unet_config: dict) -> dict:
    """The UNet config plus SpaRP's domain switcher (a projection class embedding)."""
    return {**unet_config, "class_embed_type": "projection",
            "projection_class_embeddings_input_dim": DOMAIN_CODE_DIM}


def domain_code(domain: Tensor) -> Tensor:
    """``[B]`` domain indices (0: views, 1: NOCS) -> ``[B, 4]`` sin/cos code."""
    d = domain.float()[:, None]
    freqs = torch.tensor([1.0, 2.0], device=domain.device) * math.pi / 2
    return torch.cat((torch.sin(d * freqs), torch.cos(d * freqs)), -1)


def scale_latents(latents: Tensor) -> Tensor:
    """Zero123++'s latent rescaling (after the VAE's scaling factor)."""
    return (latents - 0.22) * 0.75


def unscale_latents(latents: Tensor) -> Tensor:
    return latents / 0.75 + 0.22


def scale_image(image: Tensor) -> Tensor:
    """Zero123++'s image rescaling of ``[-1, 1]`` images before the VAE."""
    return image * 0.5 / 0.8


def unscale_image(image: Tensor) -> Tensor:
    return image / 0.5 * 0.8


def tile_views(views: Tensor) -> Tensor:
    """``[B, 6, C, h, w]`` -> ``[B, C, 3h, 2w]`` (row-major: view k at row k // 2, column
    k % 2, Zero123++'s layout)."""
    b, n, c, h, w = views.shape
    if n != TILE_ROWS * TILE_COLS:
        raise ValueError(f"tile_views needs {TILE_ROWS * TILE_COLS} views, got {n}")
    grid = views.reshape(b, TILE_ROWS, TILE_COLS, c, h, w)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(b, c, TILE_ROWS * h, TILE_COLS * w)


def untile_views(grid: Tensor) -> Tensor:
    """Inverse of :func:`tile_views`: ``[B, C, 3h, 2w]`` -> ``[B, 6, C, h, w]``."""
    b, c, hh, ww = grid.shape
    h, w = hh // TILE_ROWS, ww // TILE_COLS
    views = grid.reshape(b, c, TILE_ROWS, h, TILE_COLS, w).permute(0, 2, 4, 1, 3, 5)
    return views.reshape(b, TILE_ROWS * TILE_COLS, c, h, w)


def tile_inputs(images: list[Tensor], background: float = 1.0) -> Tensor:
    """SpaRP's condition image: 1-6 input photos ``[C, h, w]`` in the 3x2 grid (row-major),
    the empty tiles filled with ``background`` -> ``[C, 3h, 2w]``."""
    if not 1 <= len(images) <= TILE_ROWS * TILE_COLS:
        raise UserError(f"SpaRP takes 1 to 6 photos, got {len(images)}.")
    c, h, w = images[0].shape
    tiles = torch.full((TILE_ROWS * TILE_COLS, c, h, w), background, dtype=images[0].dtype)
    for k, im in enumerate(images):
        tiles[k] = im
    return tile_views(tiles[None])[0]


class _ReferenceState:
    """What the reference-attention processors share: the mode and the stored tokens."""

    def __init__(self) -> None:
        self.mode: str | None = None  # "write", "read" or None (plain attention)
        self.bank: dict[str, Tensor] = {}


class ReferenceAttnProcessor:
    """Self-attention that stores its input ("write") or also attends to the stored tokens
    of the reference pass ("read"), around diffusers' scaled-dot-product processor."""

    def __init__(self, name: str, state: _ReferenceState, enabled: bool) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.name, self.state, self.enabled = name, state, enabled
        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 *args, **kwargs) -> Tensor:
        if self.enabled and self.state.mode is not None:
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            if self.state.mode == "write":
                self.state.bank[self.name] = context
            elif self.state.mode == "read":
                encoder_hidden_states = torch.cat((context, self.state.bank[self.name]), 1)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


@dataclass
class Zero123PPConfig:
    """The model: a diffusers UNet config (with or without the domain switcher)."""

    unet: dict
    domain_switcher: bool = True
    """Add SpaRP's domain embedding (``class_embedding.*``)."""
    num_train_timesteps: int = 1000


class Zero123PP(nn.Module):
    """Zero123++'s UNet with reference attention, the ramped global context and (SpaRP) the
    domain switcher. ``forward`` predicts ``v`` for a noisy tiled latent."""

    def __init__(self, config: Zero123PPConfig) -> None:
        super().__init__()
        from diffusers import DDPMScheduler, UNet2DConditionModel

        self.config = config
        unet_config = (with_domain_switcher(config.unet) if config.domain_switcher
                       else dict(config.unet))
        self.unet = UNet2DConditionModel(**unet_config)
        if config.domain_switcher:
            nn.init.zeros_(self.unet.class_embedding.linear_2.weight)
            nn.init.zeros_(self.unet.class_embedding.linear_2.bias)
        self.ramping = nn.Parameter(torch.zeros(CONTEXT_TOKENS))
        # Zero123++ noises the condition latent with SD 2's training schedule.
        self.scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                       beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear",
                                       prediction_type="v_prediction")
        self._state = _ReferenceState()
        self.unet.set_attn_processor({
            name: ReferenceAttnProcessor(name, self._state, name.endswith("attn1.processor"))
            for name in self.unet.attn_processors})

    def context(self, text_embeds: Tensor, image_embeds: Tensor) -> Tensor:
        """``[B, 77, D]`` cross-attention context: the empty prompt's text embeddings plus
        the ramped CLIP image embedding ``[B, D]``."""
        return text_embeds + image_embeds[:, None, :] * self.ramping[None, :, None]

    def forward(self, sample: Tensor, timestep: Tensor, cond_lat: Tensor, context: Tensor,
                domain: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        """``v`` prediction.

        Args:
            sample: ``[B, 4, H, W]`` noisy (scaled) latent of the 3x2 tiled output.
            timestep: ``[B]`` int64.
            cond_lat: ``[B, 4, h, w]`` (scaled) latent of the condition image.
            context: ``[B, 77, D]`` (:meth:`context`).
            domain: ``[B]`` 0 (views) / 1 (NOCS); required with the domain switcher.
            noise: noise for the condition latent (default: fresh Gaussian noise).
        """
        class_labels = None
        if self.config.domain_switcher:
            if domain is None:
                raise ValueError("this model has a domain switcher: pass domain")
            class_labels = domain_code(domain).to(sample.dtype)
        noise = torch.randn_like(cond_lat) if noise is None else noise
        noisy_cond = self.scheduler.add_noise(cond_lat, noise, timestep)
        try:
            self._state.mode, self._state.bank = "write", {}
            self.unet(noisy_cond, timestep, encoder_hidden_states=context,
                      class_labels=class_labels)
            self._state.mode = "read"
            return self.unet(sample, timestep, encoder_hidden_states=context,
                             class_labels=class_labels).sample
        finally:
            self._state.mode, self._state.bank = None, {}


def unet_state_dict_keys(unet_config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a ``UNet2DConditionModel``'s weights, built on the meta device
    (no memory, no weights)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}


def load_zero123pp(folder: str | Path, domain_switcher: bool = True) -> Zero123PP:
    """Zero123++ (or SpaRP) from a local diffusers folder (see the module doc).

    Raises:
        UserError: a missing or unreadable file, weights of another architecture.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    config_file = folder / "unet" / "config.json"
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    index = folder / "model_index.json"
    for path in (config_file, weights, index):
        if not path.is_file():
            raise UserError(f"{folder} is not a Zero123++ folder ({path.relative_to(folder)} is "
                            "missing); give the folder of the zero123plus-v1.2 weights.")
    try:
        unet_config = json.loads(config_file.read_text(encoding="utf-8"))
        ramping = json.loads(index.read_text(encoding="utf-8")).get("ramping_coefficients")
        state = load_file(str(weights))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the Zero123++ weights in {folder} ({err}).") from None
    if not isinstance(ramping, list) or len(ramping) != CONTEXT_TOKENS:
        raise UserError(f"{index} has no list of {CONTEXT_TOKENS} ramping_coefficients; it is "
                        "not a Zero123++ model_index.json.")
    base = {k: v for k, v in unet_config.items() if not k.startswith("_")
            and k not in ("class_embed_type", "projection_class_embeddings_input_dim")}
    model = Zero123PP(Zero123PPConfig(unet=base, domain_switcher=domain_switcher))
    try:
        missing, unexpected = model.unet.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that do not fit the folder's own config
        first = str(err).strip().splitlines()[1:2] or [""]
        raise UserError(f"the UNet weights in {folder} do not fit Zero123++'s architecture "
                        f"as its config.json describes it ({first[0].strip()}).") from None
    allowed_missing = {k for k in model.unet.state_dict() if k.startswith("class_embedding.")}
    bad_missing = sorted(set(missing) - allowed_missing)
    if bad_missing or unexpected:
        what = bad_missing[:3] or unexpected[:3]
        raise UserError(f"the UNet weights in {folder} do not fit Zero123++'s architecture "
                        f"({len(bad_missing)} missing, {len(unexpected)} unexpected, e.g. "
                        f"{', '.join(what)}).")
    with torch.no_grad():
        model.ramping.copy_(torch.tensor(ramping, dtype=model.ramping.dtype))
    return model
