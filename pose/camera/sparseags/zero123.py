"""The 6-DoF-conditioned Zero123 of SparseAGS on diffusers, its checkpoint loader and SDS.

Model (Zero123, Liu et al. 2023, as fine-tuned by SparseAGS on relative 6-DoF cameras)::

    photo (cond) ──CLIP ViT-L/14──> image embedding [1, 768] ─┐
    relative camera [18] ─────────────────────────────────────┴─cat─> cc_projection ─> [1, 768]
                                                                 (Linear 786 -> 768; the
                                                                  UNet's cross-attention context)
    photo (cond) ──VAE encoder (mode, unscaled)──> c_concat [4, 32, 32] ─┐
    noisy latent of the novel view [4, 32, 32] ──────────────────────────┴─cat─> UNet (8 in)

The relative camera is the released code's ``get_cam_embeddings_6D``: the 4x4
``inv(c2w_target) @ c2w_cond`` (the transform from the conditioning camera's frame to the
target camera's frame) in OpenGL camera axes (x right, y up, z backwards), flattened row by
row, followed by ``log(focal_target / focal_cond)`` for x and y. Our cameras use OpenCV
axes (x right, y down, z forwards), so with ``F = diag(1, -1, -1, 1)``::

    T_rel = F @ T_cam_world_target @ inv(T_cam_world_cond) @ F

with the translation scaled from our normalised world (mean camera distance 1) to the
paper's (distance 1.85, ``normalize_cameras_with_up_axis``). Unconditional inputs (for
classifier-free guidance) are zeros for both the projected context and ``c_concat``, as in
the released code.

SDS (DreamFusion's, as the released ``batch_train_step``): for each novel view the noise
prediction is guided (``eps_u + s (eps_c - eps_u)``) per input photo and averaged over the
photos; ``grad = w(t) (eps - noise)`` with ``w(t) = 1 - alpha_bar_t``, ``t`` uniform in
``[0.02, 0.98] * 1000`` (or annealed with training progress), and the loss
``0.5 * sum((z - sg(z - grad))^2)`` so that ``dL/dz = grad`` and only the rendered image
(through the VAE encoder) receives a gradient.

Checkpoints: a single ``.ckpt``/``.safetensors`` file with the original LDM key names
(``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.model.visual.*``,
``cc_projection.*``), or a diffusers folder (``unet/``, ``vae/``, ``image_encoder/`` and
``clip_camera_projection/`` as in the Zero123 diffusers ports), optionally with one LDM
file inside whose components replace the folder's (SparseAGS's own setup: zero123-xl
diffusers weights plus its fine-tuned ``zero123_23k.ckpt``). The LDM names of the published
layout are listed in ``zero123_6dof_keys.txt`` beside this file; UNet and VAE keys are
mapped with diffusers' own converters (``diffusers.loaders.single_file_utils``), CLIP's
OpenAI-format visual tower by :func:`clip_visual_mapping`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from geometry.errors import UserError
from reconstruction.engine.losses import LossTerm
from reconstruction.generative.cameras import look_at
from reconstruction.generative.ldm import (
    materialise,
    read_key_list,
    trace_converter,
    unet_config_from_ldm,
    vae_config_from_ldm,
)
from reconstruction.generative.schedule import sds_weight
from reconstruction.generative.sds import distillation_loss

if typing.TYPE_CHECKING:  # prior.py re-exports this module lazily: no runtime import back
    from pose.camera.sparseags.prior import PriorConfig

#: The published Zero123 LDM config (cvlab-columbia/zero123,
#: zero123/configs/sd-objaverse-finetune-c_concat-256.yaml), the parts that fix the weights.
ZERO123_LDM_CONFIG: dict = {
    "linear_start": 0.00085,
    "linear_end": 0.0120,
    "timesteps": 1000,
    "scale_factor": 0.18215,
    "image_size": 256,
    "unet": {
        "in_channels": 8, "out_channels": 4, "model_channels": 320,
        "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
        "num_heads": 8, "transformer_depth": 1, "context_dim": 768,
    },
    "vae": {
        "embed_dim": 4, "double_z": True, "z_channels": 4, "resolution": 256,
        "in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
        "attn_resolutions": [],
    },
    # ldm.modules.encoders.modules.FrozenCLIPImageEmbedder: OpenAI CLIP "ViT-L/14".
    "clip": {"width": 1024, "layers": 24, "heads": 16, "patch_size": 14, "image_size": 224,
             "output_dim": 768},
}

#: Numbers describing the relative camera: a 4x4 transform and two log focal ratios.
CAMERA_DIM = 18

KEY_LIST = Path(__file__).with_name("zero123_6dof_keys.txt")

#: LDM prefix of each of our components.
PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "image_encoder": "cond_stage_model.model.visual.",
    "cc_projection": "cc_projection.",
}

#: Official keys we do not load: the noise schedule (rebuilt from the config) and the text
#: side of OpenAI CLIP that FrozenCLIPImageEmbedder keeps after deleting the text
#: transformer. EMA copies (``model_ema.*``) are skipped as well (the non-EMA weights are
#: the ones the released code loads).
IGNORED_KEYS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "cond_stage_model.model.positional_embedding", "cond_stage_model.model.text_projection",
    "cond_stage_model.model.logit_scale", "cond_stage_model.model.token_embedding.weight",
    "cond_stage_model.model.ln_final.weight", "cond_stage_model.model.ln_final.bias",
})

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------- architecture


def clip_config_from_openai(clip: dict) -> dict:
    """transformers ``CLIPVisionConfig`` of an OpenAI CLIP visual tower (QuickGELU)."""
    return {
        "hidden_size": clip["width"], "intermediate_size": 4 * clip["width"],
        "num_hidden_layers": clip["layers"], "num_attention_heads": clip["heads"],
        "patch_size": clip["patch_size"], "image_size": clip["image_size"],
        "projection_dim": clip["output_dim"], "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }


@dataclass
class Zero123Architecture:
    """Sizes of the prior's modules (diffusers / transformers configs)."""

    unet: dict
    vae: dict
    clip: dict
    image_size: int = 256
    """Side of the square images the model sees."""
    linear_start: float = 0.00085
    linear_end: float = 0.0120
    timesteps: int = 1000
    camera_dim: int = CAMERA_DIM
    published: bool = False
    """The published layout (its LDM key list applies)."""

    @classmethod
    def zero123(cls) -> Zero123Architecture:
        """The published Zero123 (SD 1.x UNet with 8 input channels, SD VAE, CLIP ViT-L/14)."""
        c = ZERO123_LDM_CONFIG
        return cls(unet=unet_config_from_ldm(c["unet"], c["image_size"], len(c["vae"]["ch_mult"])),
                   vae=vae_config_from_ldm(c["vae"], c["scale_factor"]),
                   clip=clip_config_from_openai(c["clip"]), image_size=c["image_size"],
                   linear_start=c["linear_start"], linear_end=c["linear_end"],
                   timesteps=c["timesteps"], published=True)

    @classmethod
    def tiny(cls) -> Zero123Architecture:
        """A few-thousand-parameter model of the same layout (tests)."""
        unet = {
            "sample_size": 8, "in_channels": 8, "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [16, 32], "layers_per_block": 1, "cross_attention_dim": 16,
            "attention_head_dim": 2, "use_linear_projection": False,
            "transformer_layers_per_block": 1, "norm_num_groups": 8,
        }
        vae = {
            "sample_size": 16, "in_channels": 3, "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": [8, 16],
            "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 4,
            "scaling_factor": 0.18215,
        }
        clip = {"hidden_size": 16, "intermediate_size": 64, "num_hidden_layers": 1,
                "num_attention_heads": 2, "patch_size": 4, "image_size": 16,
                "projection_dim": 16, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
        return cls(unet=unet, vae=vae, clip=clip, image_size=16)


def build_modules(arch: Zero123Architecture) -> dict[str, torch.nn.Module]:
    """Randomly initialised ``unet``, ``vae``, ``image_encoder`` and ``cc_projection``
    (built under the caller's default device, e.g. ``torch.device("meta")``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    context = arch.unet["cross_attention_dim"]
    return {
        "unet": UNet2DConditionModel(**arch.unet),
        "vae": AutoencoderKL(**arch.vae),
        "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**arch.clip)),
        "cc_projection": torch.nn.Linear(arch.clip["projection_dim"] + arch.camera_dim, context),
    }


# ---------------------------------------------------------------------- the model


@dataclass
class Zero123Conditioning:
    """Per input photo: CLIP embedding ``[V, 1, D]``, VAE latent ``[V, 4, h, w]`` (the
    posterior mode, unscaled: Zero123's ``c_concat``) and normalised focal ``[V, 2]``."""

    clip: Tensor
    latents: Tensor
    focal: Tensor


class Zero123Prior(torch.nn.Module):
    """The frozen 6-DoF Zero123: conditioning, guided noise prediction and the SDS loss."""

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module,
                 image_encoder: torch.nn.Module, cc_projection: torch.nn.Linear,
                 arch: Zero123Architecture) -> None:
        super().__init__()
        self.unet, self.vae = unet, vae
        self.image_encoder, self.cc_projection = image_encoder, cc_projection
        self.arch = arch
        self.image_size = arch.image_size
        self.scaling_factor = float(vae.config.scaling_factor)
        # LDM's "linear" schedule = diffusers' "scaled_linear": linear in sqrt(beta).
        device = cc_projection.weight.device
        betas = torch.linspace(arch.linear_start**0.5, arch.linear_end**0.5, arch.timesteps,
                               dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod",
                             torch.cumprod(1.0 - betas, 0).float().to(device), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def device(self) -> torch.device:
        return self.cc_projection.weight.device

    def _square(self, images: Tensor, size: int, antialias: bool) -> Tensor:
        """``[B, H, W, 3]`` -> ``[B, 3, size, size]`` (bilinear/bicubic as the original)."""
        x = images.permute(0, 3, 1, 2).to(self.device, torch.float32)
        if x.shape[-2:] == (size, size):
            return x
        mode = "bicubic" if antialias else "bilinear"
        return torch.nn.functional.interpolate(x, (size, size), mode=mode, align_corners=False,
                                               antialias=antialias)

    @torch.no_grad()
    def clip_embed(self, images: Tensor) -> Tensor:
        """CLIP image embedding ``[V, 1, D]`` of ``images [V, H, W, 3]`` in [0, 1]
        (FrozenCLIPImageEmbedder: bicubic resize to 224 with antialiasing, CLIP's mean/std)."""
        size = int(self.image_encoder.config.image_size)
        x = self._square(images, size, antialias=True)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return self.image_encoder(pixel_values=(x - mean) / std).image_embeds[:, None]

    def encode(self, images: Tensor) -> Tensor:
        """Unscaled VAE latent (posterior mode) ``[B, 4, h, w]`` of ``images [B, H, W, 3]`` in
        [0, 1], resized (bilinear) to the model's square size; differentiable."""
        x = self._square(images, self.image_size, antialias=False) * 2.0 - 1.0
        return self.vae.encode(x).latent_dist.mode()

    @torch.no_grad()
    def condition(self, images: Tensor, focal: Tensor) -> Zero123Conditioning:
        """Conditioning of the input photos ``[V, H, W, 3]`` (square, object-centred) with
        their focal lengths ``[V, 2]`` divided by the image side."""
        return Zero123Conditioning(self.clip_embed(images), self.encode(images),
                                   focal.to(self.device, torch.float32))

    def predict_noise(self, noisy: Tensor, t: Tensor, cond: Zero123Conditioning,
                      cameras: Tensor, guidance_scale: float) -> Tensor:
        """Guided noise ``[B, 4, h, w]`` of ``noisy [B, 4, h, w]`` at steps ``t [B]``, averaged
        over the ``V`` photos of ``cond``; ``cameras [B, V, 18]`` from :func:`relative_cameras`."""
        b, v = cameras.shape[:2]
        clip = cond.clip[None].expand(b, v, *cond.clip.shape[1:])  # [B, V, 1, D]
        context = self.cc_projection(torch.cat([clip, cameras[:, :, None].to(clip)], -1))
        context = context.reshape(b * v, 1, -1)
        concat = cond.latents[None].expand(b, v, *cond.latents.shape[1:]).reshape(
            b * v, *cond.latents.shape[1:])
        x = noisy[:, None].expand(b, v, *noisy.shape[1:]).reshape(b * v, *noisy.shape[1:])
        steps = t[:, None].expand(b, v).reshape(b * v)
        # Conditional half, then unconditional (zero context and zero c_concat).
        sample = torch.cat([torch.cat([x, concat], 1),
                            torch.cat([x, torch.zeros_like(concat)], 1)])
        context = torch.cat([context, torch.zeros_like(context)])
        eps = self.unet(sample, torch.cat([steps, steps]), encoder_hidden_states=context).sample
        eps_c, eps_u = eps.chunk(2)
        guided = eps_u + guidance_scale * (eps_c - eps_u)
        return guided.reshape(b, v, *guided.shape[1:]).mean(1)

    def sample_timesteps(self, batch: int, generator: torch.Generator, t_min: float,
                         t_max: float, step_ratio: float | None = None) -> Tensor:
        """``[batch]`` integer steps: uniform in ``[t_min, t_max] * T`` or, with
        ``step_ratio``, ``round((1 - step_ratio) * T)`` clipped to that range."""
        n = self.num_timesteps
        lo, hi = int(n * t_min), int(n * t_max)
        if step_ratio is not None:
            t = torch.full((batch,), min(max(round((1 - step_ratio) * n), lo), hi))
        else:
            t = torch.randint(lo, hi + 1, (batch,), generator=generator)
        return t.to(self.device)

    def sds_latents(self, latents: Tensor, t: Tensor, noise: Tensor,
                    cond: Zero123Conditioning, cameras: Tensor,
                    guidance_scale: float) -> Tensor:
        """SDS loss of scaled latents ``[B, 4, h, w]``: ``dL/dlatents = w(t) (eps - noise)``."""
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        with torch.no_grad():
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            eps = self.predict_noise(noisy, t, cond, cameras, guidance_scale)
            grad = sds_weight(self.alphas_cumprod, t).view(-1, 1, 1, 1) * (eps - noise)
        return distillation_loss(latents, grad)

    def sds_loss(self, images: Tensor, cond: Zero123Conditioning, cameras: Tensor,
                 generator: torch.Generator, guidance_scale: float = 5.0, t_min: float = 0.02,
                 t_max: float = 0.98, step_ratio: float | None = None) -> Tensor:
        """SDS loss (a scalar) of rendered novel views ``images [B, H, W, 3]`` in [0, 1] at
        relative cameras ``[B, V, 18]``; only ``images`` receives a gradient."""
        latents = self.encode(images) * self.scaling_factor
        t = self.sample_timesteps(latents.shape[0], generator, t_min, t_max, step_ratio)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        return self.sds_latents(latents, t, noise, cond, cameras, guidance_scale)


# ---------------------------------------------------------------------- cameras

_GL_FROM_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def relative_cameras(T_cam_world_target: Tensor, T_cam_world_cond: Tensor,
                     focal_target: Tensor, focal_cond: Tensor,
                     translation_scale: float = 1.0) -> Tensor:
    """The 6-DoF camera embedding ``[B, V, 18]`` of each target ``[B, 4, 4]`` relative to
    each conditioning camera ``[V, 4, 4]`` (OpenCV ``T_cam_world``; translations multiplied
    by ``translation_scale``), with normalised focal lengths ``[B, 2]`` / ``[V, 2]``."""
    dtype = T_cam_world_target.dtype
    T_target = T_cam_world_target.double()
    T_cond_inv = torch.linalg.inv(T_cam_world_cond.double())
    T_rel = T_target[:, None] @ T_cond_inv[None]  # [B, V, 4, 4] cond camera -> target camera
    T_rel[..., :3, 3] *= translation_scale
    F = _GL_FROM_CV.to(T_rel.device)
    T_rel = F @ T_rel @ F
    log_focal = torch.log(focal_target.double()[:, None] / focal_cond.double()[None])
    return torch.cat([T_rel.flatten(-2), log_focal], -1).to(dtype)


# ---------------------------------------------------------------------- key mapping


def official_keys() -> dict[str, tuple[int, ...]]:
    """The published 6-DoF Zero123 checkpoint's state-dict keys and shapes (EMA copies
    left out), from ``zero123_6dof_keys.txt``."""
    return read_key_list(KEY_LIST)


def clip_visual_mapping(num_layers: int) -> dict[str, tuple[str, str]]:
    """``{transformers key: (OpenAI CLIP visual key, how)}`` for CLIPVisionModelWithProjection;
    ``how`` is ``copy``, ``T`` (transpose) or ``q``/``k``/``v`` (a third of ``in_proj``)."""
    m = {
        "vision_model.embeddings.class_embedding": ("class_embedding", "copy"),
        "vision_model.embeddings.patch_embedding.weight": ("conv1.weight", "copy"),
        "vision_model.embeddings.position_embedding.weight": ("positional_embedding", "copy"),
        "vision_model.pre_layrnorm.weight": ("ln_pre.weight", "copy"),
        "vision_model.pre_layrnorm.bias": ("ln_pre.bias", "copy"),
        "vision_model.post_layernorm.weight": ("ln_post.weight", "copy"),
        "vision_model.post_layernorm.bias": ("ln_post.bias", "copy"),
        "visual_projection.weight": ("proj", "T"),
    }
    for i in range(num_layers):
        ours, theirs = f"vision_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for j, name in enumerate("qkv"):
            m[f"{ours}self_attn.{name}_proj.weight"] = (f"{theirs}attn.in_proj_weight", "qkv"[j])
            m[f"{ours}self_attn.{name}_proj.bias"] = (f"{theirs}attn.in_proj_bias", "qkv"[j])
        for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"), ("layer_norm2", "ln_2")):
            for p in ("weight", "bias"):
                m[f"{ours}{a}.{p}"] = (f"{theirs}{b}.{p}", "copy")
    return m


_trace = trace_converter  # the generic tracer (reconstruction.generative.ldm)


def ldm_mapping(shapes: dict[str, tuple[int, ...]],
                arch: Zero123Architecture) -> dict[str, tuple[str, str]]:
    """``{our key: (LDM key, how)}`` for the LDM keys in ``shapes`` (ours are prefixed by the
    component: ``unet.``, ``vae.``, ``image_encoder.``, ``cc_projection.``)."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    mapping: dict[str, tuple[str, str]] = {}
    parts = {name: {k: s for k, s in shapes.items() if k.startswith(p)}
             for name, p in PREFIXES.items()}
    if parts["unet"]:
        for k, v in _trace(lambda sd: convert_ldm_unet_checkpoint(sd, arch.unet),
                           parts["unet"]).items():
            mapping["unet." + k] = v
    if parts["vae"]:
        for k, v in _trace(lambda sd: convert_ldm_vae_checkpoint(sd, arch.vae),
                           parts["vae"]).items():
            mapping["vae." + k] = v
    if parts["image_encoder"]:
        prefix = PREFIXES["image_encoder"]
        for k, (src, how) in clip_visual_mapping(arch.clip["num_hidden_layers"]).items():
            if prefix + src in shapes:
                mapping["image_encoder." + k] = (prefix + src, how)
    for p in ("weight", "bias"):
        if f"cc_projection.{p}" in shapes:
            mapping[f"cc_projection.{p}"] = (f"cc_projection.{p}", "copy")
    return mapping


# ---------------------------------------------------------------------- loading


def _read_state_dict(path: Path, trust: bool) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # a truncated or foreign file
            raise UserError(f"cannot read the prior checkpoint {path} ({exc}); pass a complete "
                            "6-DoF Zero123 .safetensors or .ckpt file.") from None
    else:
        import pickle

        try:
            state = torch.load(path, map_location="cpu", weights_only=not trust)
        except pickle.UnpicklingError as exc:
            if "Unsupported global" not in str(exc):  # garbage, not Python objects
                raise UserError(f"cannot read the prior checkpoint {path} ({exc}); pass a "
                                "complete 6-DoF Zero123 .safetensors or .ckpt file.") from None
            raise UserError(f"the prior checkpoint {path} stores Python objects besides the "
                            "weights; rerun with --prior.trust-checkpoint if you trust the "
                            "file, or save its state_dict as .safetensors.") from None
        except Exception as exc:
            raise UserError(f"cannot read the prior checkpoint {path} ({exc}); pass a complete "
                            "6-DoF Zero123 .safetensors or .ckpt file.") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"the prior checkpoint {path} holds no state dict; pass a 6-DoF Zero123 "
                        ".ckpt or .safetensors file.")
    return {k: v for k, v in state.items()
            if isinstance(v, Tensor) and not k.startswith("model_ema.")}


def _check_complete(state: dict[str, Tensor], arch: Zero123Architecture, path: Path,
                    components: tuple[str, ...]) -> None:
    """UserError unless ``state`` has every official key of ``components`` at its shape
    (published layout only; other layouts are checked after the mapping)."""
    if not arch.published:
        return
    prefixes = tuple(PREFIXES[c] for c in components)
    required = {k: s for k, s in official_keys().items()
                if k.startswith(prefixes) and k not in IGNORED_KEYS}
    missing = [k for k in required if k not in state]
    if missing:
        raise UserError(f"the prior checkpoint {path} lacks {len(missing)} of the "
                        f"{len(required)} weights of the 6-DoF Zero123 (first: {missing[0]}); "
                        "pass the complete checkpoint.")
    wrong = [k for k, s in required.items() if tuple(state[k].shape) != s]
    if wrong:
        k = wrong[0]
        raise UserError(f"the prior checkpoint {path} is not the 6-DoF Zero123: {k} has shape "
                        f"{tuple(state[k].shape)} instead of {required[k]}; pass the SparseAGS "
                        "checkpoint.")


def _convert(state: dict[str, Tensor], arch: Zero123Architecture, path: Path,
             targets: dict[str, torch.nn.Module]) -> dict[str, dict[str, Tensor]]:
    """Per component in ``targets``, its state dict from the LDM ``state``."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        mapping = ldm_mapping(shapes, arch)
    except (KeyError, AttributeError, RuntimeError) as exc:
        raise UserError(f"the prior checkpoint {path} does not have the Zero123 layout "
                        f"({exc}); pass the 6-DoF Zero123 checkpoint.") from None
    out: dict[str, dict[str, Tensor]] = {}
    for name, module in targets.items():
        converted = {}
        for key, param in module.state_dict().items():
            full = f"{name}.{key}"
            if full not in mapping:
                if key.endswith("position_ids"):
                    continue  # a constant buffer
                raise UserError(f"the prior checkpoint {path} has no weight for {full}; pass "
                                "the complete 6-DoF Zero123 checkpoint.")
            src, how = mapping[full]
            tensor = state[src]
            if how in ("q", "k", "v"):
                tensor = tensor.chunk(3, 0)["qkv".index(how)]
            elif how == "T":
                tensor = tensor.T
            if tensor.numel() != param.numel() or (
                    how == "copy" and tuple(tensor.shape) != tuple(param.shape)):
                raise UserError(f"the prior checkpoint {path} does not fit the model: {src} has "
                                f"shape {tuple(state[src].shape)} for {full} of shape "
                                f"{tuple(param.shape)}; pass the 6-DoF Zero123 checkpoint.")
            converted[key] = tensor.reshape(param.shape).contiguous()
        out[name] = converted
    return out


_materialise = materialise  # reconstruction.generative.ldm


def _load_diffusers_folder(path: Path) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    modules: dict[str, torch.nn.Module] = {}
    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL),
                      ("image_encoder", CLIPVisionModelWithProjection)):
        if not (path / name / "config.json").is_file():
            raise UserError(f"the prior folder {path} has no {name}/config.json; pass a diffusers "
                            "Zero123 folder or a single 6-DoF Zero123 checkpoint file.")
        try:
            modules[name] = cls.from_pretrained(path / name, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load {path / name} ({exc}); pass a complete diffusers "
                            "Zero123 folder.") from None
    folder = next((path / n for n in ("clip_camera_projection", "cc_projection")
                   if (path / n).is_dir()), None)
    files = ([] if folder is None else
             sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")))
    if not files:
        raise UserError(f"the prior folder {path} has no clip_camera_projection/ weights; pass a "
                        "diffusers Zero123 folder.")
    state = (_read_state_dict(files[0], trust=False) if files[0].suffix != ".bin"
             else torch.load(files[0], map_location="cpu", weights_only=True))
    state = {k.removeprefix("proj."): v for k, v in state.items()}
    if set(state) != {"weight", "bias"}:
        raise UserError(f"{files[0]} is not a camera projection (weight and bias of one linear "
                        "layer); pass a diffusers Zero123 folder.")
    proj = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    proj.load_state_dict(state)
    modules["cc_projection"] = proj
    return modules


def load_prior(path: Path, device: str | torch.device = "cpu",
               arch: Zero123Architecture | None = None, trust: bool = False) -> Zero123Prior:
    """The frozen prior from ``path``: one LDM ``.ckpt``/``.safetensors`` file, or a
    diffusers folder (optionally with one LDM file in it whose components replace the
    folder's). ``arch`` defaults to the published Zero123; UserError (one sentence) for a
    missing, unreadable or incomplete checkpoint and for a 4-number (not 6-DoF) projection."""
    path = Path(path)
    arch = Zero123Architecture.zero123() if arch is None else arch
    if not path.exists():
        raise UserError(f"the prior checkpoint {path} does not exist; pass --prior a 6-DoF "
                        "Zero123 checkpoint file (.ckpt or .safetensors) or a diffusers folder.")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise UserError("the generative prior needs the diffusers package; install it with "
                        "pip install diffusers, or run without --prior.") from None
    if path.is_dir():
        modules = _load_diffusers_folder(path)
        overlays = sorted(p for p in path.iterdir()
                          if p.is_file() and p.suffix in (".ckpt", ".safetensors"))
        if len(overlays) > 1:
            raise UserError(f"the prior folder {path} holds several checkpoint files; keep the "
                            "one 6-DoF Zero123 checkpoint there.")
        state = _read_state_dict(overlays[0], trust) if overlays else {}
        components = tuple(c for c, p in PREFIXES.items()
                           if any(k.startswith(p) for k in state))
        if overlays and not components:
            raise UserError(f"{overlays[0]} has no Zero123 weights; pass the 6-DoF Zero123 "
                            "checkpoint.")
        _check_complete(state, arch, overlays[0] if overlays else path, components)
        if components:
            with torch.device("meta"):
                fresh = build_modules(arch)
            converted = _convert(state, arch, overlays[0], {c: fresh[c] for c in components})
            for c in components:
                _materialise(fresh[c], converted[c])
                modules[c] = fresh[c]
    else:
        state = _read_state_dict(path, trust)
        _check_complete(state, arch, path, tuple(PREFIXES))
        with torch.device("meta"):
            modules = build_modules(arch)
        converted = _convert(state, arch, path, modules)
        for name, module in modules.items():
            _materialise(module, converted[name])
    proj = modules["cc_projection"]
    embed = int(modules["image_encoder"].config.projection_dim)
    if proj.in_features != embed + CAMERA_DIM:
        raise UserError(f"the camera projection in {path} takes {proj.in_features - embed} camera "
                        f"numbers, not the 6-DoF model's {CAMERA_DIM}; add SparseAGS's 6-DoF "
                        "checkpoint (zero123_23k.ckpt) to the folder.")
    arch = Zero123Architecture(unet=dict(modules["unet"].config), vae=dict(modules["vae"].config),
                               clip=modules["image_encoder"].config.to_dict(),
                               image_size=arch.image_size, linear_start=arch.linear_start,
                               linear_end=arch.linear_end, timesteps=arch.timesteps,
                               published=arch.published)
    prior = Zero123Prior(modules["unet"], modules["vae"], modules["image_encoder"],
                         modules["cc_projection"], arch)
    return prior.to(device)


# ---------------------------------------------------------------------- the loss term


def _square_crop(image: Tensor, mask: Tensor | None) -> tuple[Tensor, int]:
    """A square crop ``[S, S, 3]`` of ``image [H, W, 3]`` about the mask's centre (the image
    centre without a mask), and its side ``S``."""
    h, w = image.shape[:2]
    side = min(h, w)
    if mask is not None and float(mask.sum()) > 0:
        ys, xs = torch.nonzero(mask.reshape(h, w) > 0.5, as_tuple=True)
        cy, cx = float(ys.float().mean()), float(xs.float().mean())
    else:
        cy, cx = h / 2, w / 2
    y0 = int(min(max(round(cy - side / 2), 0), h - side))
    x0 = int(min(max(round(cx - side / 2), 0), w - side))
    return image[y0:y0 + side, x0:x0 + side], side


@dataclass
class _Stats:
    applied: int = 0
    loss_sum: float = 0.0


class PriorLoss(LossTerm):
    """SparseAGS's SDS term for :class:`~reconstruction.engine.trainer.GaussianTrainer`.

    On the steps it applies, it renders ``config.batch_size`` random novel views of the
    Gaussians (elevation within the inputs' band widened by ``elevation_margin``, any
    azimuth about the scene's up axis, the inputs' mean distance to the origin, their
    field of view, centred on the origin) and returns ``weight * SDS`` conditioned on every
    input photo with the cameras' current (detached) poses.

    Args:
        prior: the frozen model (:func:`load_prior`).
        config: options.
        images: ``V x [H, W, 3]`` input photos in [0, 1] (on the trainer's background).
        total_iterations: the trainer's iterations (for the start and the annealing).
        masks: ``V x [H, W]`` object masks, or None (then no white compositing).
    """

    def __init__(self, prior: Zero123Prior, config: PriorConfig, images: list[Tensor],
                 total_iterations: int, masks: list[Tensor] | None = None) -> None:
        self.prior = prior
        self.config = config
        self.images = images
        self.masks = masks
        self.total_iterations = max(1, total_iterations)
        self.stats = _Stats()
        self._crops: tuple[Tensor, Tensor] | None = None  # photos [V, S, S, 3], sides [V]
        self._clip: Tensor | None = None
        self._latents: Tensor | None = None

    def _white(self) -> bool:
        return self.config.white_background and self.masks is not None

    def _prepare(self) -> None:
        crops, sides = [], []
        size = self.prior.image_size
        for v, image in enumerate(self.images):
            image = image.float()
            mask = None if self.masks is None else self.masks[v].float().reshape(image.shape[:2])
            if self._white() and mask is not None:
                image = image * mask[..., None] + (1.0 - mask[..., None])
            crop, side = _square_crop(image, mask)
            crop = torch.nn.functional.interpolate(
                crop.permute(2, 0, 1)[None].to(self.prior.device), (size, size), mode="bilinear",
                align_corners=False, antialias=True)[0].permute(1, 2, 0)
            crops.append(crop)
            sides.append(side)
        photos = torch.stack(crops)
        self._crops = (photos, torch.tensor(sides, dtype=torch.float32))
        with torch.no_grad():
            self._clip = self.prior.clip_embed(photos)
            self._latents = self.prior.encode(photos)

    def applies(self, iteration: int) -> bool:
        c = self.config
        return (c.weight > 0 and iteration >= c.start_fraction * self.total_iterations
                and iteration % max(1, c.every) == 0)

    def novel_cameras(self, T_cam_world: Tensor, view: int,
                      generator: torch.Generator) -> Tensor:
        """``[B, 4, 4]`` random novel ``T_cam_world`` about the origin (see the class doc)."""
        c = self.config
        T = T_cam_world.detach().double().cpu()
        R, t = T[:, :3, :3], T[:, :3, 3]
        centres = -(R.transpose(1, 2) @ t[..., None])[..., 0]  # [V, 3]
        up = -R[:, 1, :].mean(0)  # OpenCV's y points down the image
        up = up / up.norm()
        radius = centres.norm(dim=-1)
        dirs = centres / radius[:, None]
        elevations = torch.rad2deg(torch.asin((dirs @ up).clamp(-1, 1)))
        lo = max(float(elevations.min()) - c.elevation_margin, -c.elevation_limit)
        hi = min(float(elevations.max()) + c.elevation_margin, c.elevation_limit)
        ref = dirs[view] - (dirs[view] @ up) * up
        if float(ref.norm()) < 1e-6:  # the reference looks straight down the up axis
            ref = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0], dtype=up.dtype))
        a = ref / ref.norm()
        b = torch.linalg.cross(up, a)
        n = c.batch_size
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        elevation = torch.deg2rad(lo + (hi - lo) * u[:, 0])
        azimuth = torch.deg2rad(-180.0 + 360.0 * u[:, 1])
        direction = (torch.cos(elevation)[:, None] * (torch.cos(azimuth)[:, None] * a
                                                      + torch.sin(azimuth)[:, None] * b)
                     + torch.sin(elevation)[:, None] * up)
        return look_at(direction * radius.mean(), up)

    def __call__(self, trainer, view, image, alpha, meta, target) -> Tensor | float:
        from reconstruction.splatting import rasterization

        c = self.config
        it = trainer.iteration
        if not self.applies(it):
            return 0.0
        if self._crops is None:
            self._prepare()
        device = trainer.device
        generator = torch.Generator().manual_seed(trainer.seed * 1_000_003 + it + 17)
        T_cam_world = trainer.viewmats().detach()
        novel = self.novel_cameras(T_cam_world, view, generator).float().to(device)
        Ks = trainer.intrinsics().detach()
        sides = self._crops[1].to(Ks)
        focal_cond = torch.stack([Ks[:, 0, 0], Ks[:, 1, 1]], -1) / sides[:, None]
        # The novel views keep the inputs' field of view (as a share of the crop side).
        focal_novel = focal_cond.median(0).values.expand(len(novel), 2)
        s = c.render_size
        K = torch.zeros(len(novel), 3, 3, device=device)
        K[:, 0, 0], K[:, 1, 1] = focal_novel[:, 0] * s, focal_novel[:, 1] * s
        K[:, 0, 2] = K[:, 1, 2] = s / 2
        K[:, 2, 2] = 1
        p = trainer.params
        colors, alphas, _ = rasterization(
            p["means"], p["quats"], torch.exp(p["log_scales"]), torch.sigmoid(p["logit_opacities"]),
            torch.cat([p["sh0"], p["shN"]], 1), novel, K, s, s,
            sh_degree=trainer.sh_degree_at(it),
            backgrounds=trainer.background[None].expand(len(novel), -1))
        if self._white():
            colors = colors + (1.0 - alphas) * (1.0 - trainer.background)
        cond = Zero123Conditioning(self._clip, self._latents, focal_cond.to(self.prior.device))
        cameras = relative_cameras(novel.to(self.prior.device), T_cam_world.to(self.prior.device),
                                   focal_novel.to(self.prior.device), cond.focal,
                                   c.translation_scale / trainer.data.scene_scale)
        step_ratio = min(1.0, it / self.total_iterations) if c.anneal_timestep else None
        loss = self.prior.sds_loss(colors.to(self.prior.device), cond, cameras, generator,
                                   c.guidance_scale, c.t_min, c.t_max, step_ratio)
        self.stats.applied += 1
        self.stats.loss_sum += float(loss.detach())
        return c.weight * loss.to(device)

    def metrics(self) -> dict:
        s = self.stats
        return {"sparseags_prior_steps": s.applied,
                "sparseags_prior_mean_sds": s.loss_sum / s.applied if s.applied else None}
