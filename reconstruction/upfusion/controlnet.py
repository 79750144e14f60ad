"""UpFusion's DF+SLT ControlNet on diffusers, and the denoiser it gives the distillation.

The official model (``control_net/cldm/cldm_dfslt.py``, ``models/cldm_v15_dfslt.yaml``) is
Stable Diffusion 1.5 with a ControlNet whose

- **DF** input is UpSRT's dense query features at the latent resolution (32 x 32 for 256 px
  renders): the decoder output before ``rgb_mlp`` (768) concatenated with the query rays'
  Plücker coordinates (6), 774 channels, through ONE zero-initialised 3x3 convolution
  (``input_hint_block.0``) added after ``conv_in``;
- **SLT** path replaces every cross-attention transformer of the ControlNet by an
  ``SLTQueryTransformer``: the group-normed features concatenated with the query camera's
  Plücker rays at that resolution (6 more channels into ``proj_in``) cross-attend to
  UpSRT's set-latent tokens instead of the text (``context_dim`` 768).

The ControlNet's 13 residuals go into the UNet's skip connections and middle block, as any
ControlNet (diffusers' ``down_block_additional_residuals``). We build it as a diffusers
``ControlNetModel`` (so diffusers' blocks and LDM key conversion serve) with two swaps:
``controlnet_cond_embedding`` becomes :class:`HintConv` and every ``proj_in`` of its
transformers a :class:`RayConcatConv` (parameters named as before, ``in_channels + 6``).

Classifier-free guidance is the official "F1": the conditional branch has the fixed prompt
``"a high quality image with a white background"`` and the view condition; the
unconditional one the empty prompt and zeros for the DF, the SLT and the rays.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from geometry.cameras import Cameras
from geometry.errors import UserError
from reconstruction.upfusion import rays as R

#: The fixed prompt of UpFusion (``control_net_prompt_color: white``, type ``default``).
PROMPT = "a high quality image with a white background"
#: The ControlNet of ``cldm_v15_dfslt.yaml`` in diffusers' terms (SD 1.5's layout).
SD15_CONTROLNET = dict(
    in_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32)
#: Hint channels: UpSRT's DF (768) + Plücker rays (6).
HINT_CHANNELS = 774
#: Latent side of the official renders (256 px / 8).
LATENT_SIDE = 32


class HintConv(nn.Module):
    """``input_hint_block``: one zero-initialised 3x3 conv from the DF to the first width."""

    def __init__(self, hint_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(hint_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, hint: Tensor) -> Tensor:  # [B, 774, h, w] -> [B, C, h, w]
        return self.conv(hint)


class RayState:
    """The query rays of the current ControlNet call, per feature-map size."""

    def __init__(self) -> None:
        self.rays: dict[tuple[int, int], Tensor] = {}


class RayConcatConv(nn.Conv2d):
    """``proj_in`` of an SLT query transformer: ``conv(cat(features, rays))`` (1x1)."""

    def __init__(self, in_channels: int, out_channels: int, state: RayState) -> None:
        super().__init__(in_channels + 6, out_channels, 1)
        self._state = [state]  # a list: not a submodule, not in the state dict

    def forward(self, x: Tensor) -> Tensor:  # [B, C, h, w]
        rays = self._state[0].rays.get(tuple(x.shape[-2:]))
        if rays is None:
            rays = torch.zeros(x.shape[0], 6, *x.shape[-2:], dtype=x.dtype, device=x.device)
        return super().forward(torch.cat((x, rays.to(x)), 1))


def build_slt_controlnet(hint_channels: int = HINT_CHANNELS, **config):
    """A diffusers ``ControlNetModel`` turned into UpFusion's DF+SLT ControlNet.

    Args:
        hint_channels: width of the DF input.
        config: ``ControlNetModel`` arguments (default :data:`SD15_CONTROLNET`); tests pass
            a tiny layout.

    Returns:
        the model; its :class:`RayState` is ``model.ray_state``.
    """
    from diffusers import ControlNetModel

    cfg = {**SD15_CONTROLNET, **config}
    net = ControlNetModel(conditioning_channels=hint_channels, **cfg)
    net.controlnet_cond_embedding = HintConv(hint_channels, cfg["block_out_channels"][0])
    state = RayState()
    for block in [*net.down_blocks, net.mid_block]:
        for attention in getattr(block, "attentions", []):
            old = attention.proj_in
            if not isinstance(old, nn.Conv2d):
                raise ValueError("the SLT ControlNet expects 1x1 conv projections (SD 1.5)")
            new = RayConcatConv(old.in_channels, old.out_channels, state)
            attention.proj_in = new
    net.ray_state = state
    return net


def plucker_maps(cameras: Cameras, T_ref_world: Tensor, side: int, levels: int
                 ) -> dict[tuple[int, int], Tensor]:
    """``{(h, w): [B, 6, h, w]}`` Plücker rays of the query cameras (reference frame) at the
    ControlNet's resolutions ``side / 2^k`` (the official grid: NDC corners to corners)."""
    out = {}
    width = int(cameras.width.reshape(-1)[0])
    height = int(cameras.height.reshape(-1)[0])
    for k in range(levels):
        s = max(1, side // 2 ** k)
        u = torch.linspace(0, width, s, dtype=torch.float64)
        v = torch.linspace(0, height, s, dtype=torch.float64)
        vv, uu = torch.meshgrid(v, u, indexing="ij")
        uv = torch.stack((uu, vv), -1).reshape(-1, 2)
        rays = R.query_rays(cameras, T_ref_world, uv).float()  # [B, s*s, 6]
        out[(s, s)] = rays.reshape(len(rays), s, s, 6).permute(0, 3, 1, 2)
    return out


@dataclass
class UpFusionCondition:
    """The view condition of one batch of query cameras."""

    hint: Tensor  # [B, 774, h, w] DF + rays
    slt: Tensor  # [B, T, D]
    rays: dict[tuple[int, int], Tensor]

    def zeros(self) -> UpFusionCondition:
        """The unconditional branch's condition (F1: everything zero)."""
        return UpFusionCondition(torch.zeros_like(self.hint), torch.zeros_like(self.slt),
                                 {k: torch.zeros_like(v) for k, v in self.rays.items()})


@torch.no_grad()
def upsrt_condition(upsrt, views, cameras: Cameras, side: int = LATENT_SIDE,
                    levels: int = 4, slt: Tensor | None = None) -> UpFusionCondition:
    """UpSRT's DF+SLT condition for query ``cameras`` (official ``_prepare_condition``)."""
    slt = upsrt.encode_views(views) if slt is None else slt
    width = int(cameras.width.reshape(-1)[0])
    u = torch.linspace(0, width, side, dtype=torch.float64)
    vv, uu = torch.meshgrid(u * int(cameras.height.reshape(-1)[0]) / width, u, indexing="ij")
    uv = torch.stack((uu, vv), -1).reshape(-1, 2)
    rays = R.query_rays(cameras, views.T_ref_world, uv)  # [B, s*s, 6]
    feats = torch.cat([upsrt.decode(slt, rays[k:k + 1], "features") for k in range(len(rays))])
    hint = torch.cat((feats, rays.float().to(feats.device)), -1)
    hint = hint.reshape(len(rays), side, side, -1).permute(0, 3, 1, 2)
    return UpFusionCondition(hint, slt.expand(len(rays), -1, -1),
                             plucker_maps(cameras, views.T_ref_world, side, levels))


class UpFusionDiffusion:
    """UNet + DF+SLT ControlNet + VAE + text embeddings: a
    :class:`~reconstruction.generative.distill.LatentDiffusionModel` for the distillation.

    Args:
        unet: diffusers ``UNet2DConditionModel`` (UpFusion's fine-tuned SD 1.5 UNet).
        controlnet: :func:`build_slt_controlnet`'s model.
        vae: diffusers ``AutoencoderKL``.
        prompt_embeds: ``[2, 77, 768]`` CLIP embeddings of ``("", PROMPT)``.
        upsrt, views: the conditioning UpSRT and its inputs.
        T_ref_trainer: the reference frame in the trainer's world.
    """

    scaling = 0.18215

    def __init__(self, unet, controlnet, vae, prompt_embeds: Tensor, upsrt, views,
                 T_ref_trainer: Tensor) -> None:
        from reconstruction.generative.schedule import scaled_linear_alphas_cumprod

        self.unet, self.controlnet, self.vae = unet, controlnet, vae
        self.prompt_embeds = prompt_embeds
        self.upsrt = upsrt
        self.views = replace(views, T_ref_world=T_ref_trainer.double())
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        self._slt = None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def encode(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).to(self.device) * 2.0 - 1.0
        return self.vae.encode(x).latent_dist.mean * self.scaling

    def decode(self, latents: Tensor) -> Tensor:
        x = self.vae.decode(latents / self.scaling).sample
        return ((x + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1)

    def condition(self, cameras) -> UpFusionCondition:
        if self._slt is None:
            self._slt = self.upsrt.encode_views(self.views)
        T_world_cam = torch.linalg.inv(cameras.T_cam_world.double().cpu())
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)  # 8 for SD's VAE
        side = cameras.width // factor
        scale = torch.tensor([[1 / factor], [1 / factor], [1.0]], dtype=torch.float64)
        cams = Cameras(K=cameras.K.double().cpu() * scale, T_world_cam=T_world_cam,
                       width=side, height=side)
        levels = len(self.controlnet.down_blocks)
        return upsrt_condition(self.upsrt, self.views, cams, side, levels, self._slt)

    def eps(self, x: Tensor, t: Tensor, text: Tensor, cond: UpFusionCondition) -> Tensor:
        self.controlnet.ray_state.rays = {k: v.to(x) for k, v in cond.rays.items()}
        down, mid = self.controlnet(x, t, encoder_hidden_states=cond.slt.to(x),
                                    controlnet_cond=cond.hint.to(x), return_dict=False)
        self.controlnet.ray_state.rays = {}
        return self.unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample

    @torch.no_grad()
    def predict_noise(self, noisy: Tensor, t: Tensor, cameras):
        from reconstruction.generative.sds import NoisePrediction

        cond = self.condition(cameras)
        b = len(noisy)
        uncond_text = self.prompt_embeds[0:1].expand(b, -1, -1).to(noisy)
        cond_text = self.prompt_embeds[1:2].expand(b, -1, -1).to(noisy)
        return NoisePrediction(cond=self.eps(noisy, t, cond_text, cond),
                               uncond=self.eps(noisy, t, uncond_text, cond.zeros()))


# ---------------------------------------------------------------------- official weights


def split_upfusion2d(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """``upfusion2d.pt``'s ``model_state_dict`` (an LDM ``ControlLDM``) split by part:
    ``control_model``, ``unet`` (``model.diffusion_model``), ``vae``
    (``first_stage_model``), ``text`` (``cond_stage_model``), ``other``."""
    from reconstruction.upfusion.official import unwrap_state_dict

    prefixes = {"control_model.": "control_model", "model.diffusion_model.": "unet",
                "first_stage_model.": "vae", "cond_stage_model.": "text"}
    parts: dict[str, dict[str, Tensor]] = {name: {} for name in [*prefixes.values(), "other"]}
    for key, value in unwrap_state_dict(state).items():
        for prefix, name in prefixes.items():
            if key.startswith(prefix):
                parts[name][key[len(prefix):]] = value
                break
        else:
            parts["other"][key] = value
    return parts


def convert_slt_controlnet(control: dict[str, Tensor], net) -> dict[str, Tensor]:
    """The official ``control_model.*`` tensors (prefix removed) -> the state dict of
    :func:`build_slt_controlnet`'s model: the hint conv by hand, the rest by diffusers' LDM
    ControlNet converter (the SLT ``proj_in`` keep their names; only their width differs)."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    control = dict(control)
    hint_w = control.pop("input_hint_block.0.weight")
    hint_b = control.pop("input_hint_block.0.bias")
    # diffusers' converter reads the standard 8-conv hint block: give it placeholders of
    # the right names and drop what it makes of them
    placeholder = {f"input_hint_block.{i}.{p}": torch.zeros(1) for i in range(0, 15, 2)
                   for p in ("weight", "bias")}
    wrapped = {f"control_model.{k}": v for k, v in {**control, **placeholder}.items()}
    converted = convert_controlnet_checkpoint(wrapped, dict(net.config))
    converted = {k: v for k, v in converted.items()
                 if not k.startswith("controlnet_cond_embedding.")}
    converted["controlnet_cond_embedding.conv.weight"] = hint_w
    converted["controlnet_cond_embedding.conv.bias"] = hint_b
    return converted


def check_diffusion_path(options) -> None:
    """One sentence when ``--upfusion.diffusion`` / ``--upfusion.sd`` are not usable."""
    path = Path(options.diffusion)
    if not path.is_file():
        raise UserError(f"--upfusion.diffusion {path} is not a file; give UpFusion's "
                        "upfusion2d.pt (the ControlNet and its Stable Diffusion UNet).")
    if options.sd is None:
        raise UserError("--upfusion.diffusion needs --upfusion.sd, a local Stable Diffusion "
                        "1.5 diffusers folder (its VAE, text encoder and tokenizer).")
    sd = Path(options.sd)
    missing = [p for p in ("vae", "text_encoder", "tokenizer", "unet")
               if not (sd / p).is_dir()]
    if missing:
        raise UserError(f"--upfusion.sd {sd} is not a diffusers Stable Diffusion folder: it "
                        f"lacks {', '.join(p + '/' for p in missing)}.")


def load_upfusion_denoiser(options, upsrt, views, T_ref_trainer: Tensor, device: str = "cpu"):
    """The distillation's denoiser with UpFusion's diffusion weights (see the module doc)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from transformers import CLIPTextModel, CLIPTokenizer

    from geometry.io.checkpoints import torch_load_weights_only
    from reconstruction.generative.distill import DiffusionImageDenoiser
    from reconstruction.upfusion.official import check_and_load

    check_diffusion_path(options)
    sd = Path(options.sd)
    state = torch_load_weights_only(options.diffusion, "UpFusion's upfusion2d.pt",
                                    "give the upfusion2d.pt of the UpFusion release")
    parts = split_upfusion2d(state)
    unet = UNet2DConditionModel.from_pretrained(sd / "unet", local_files_only=True)
    unet_state = convert_ldm_unet_checkpoint(
        {f"model.diffusion_model.{k}": v for k, v in parts["unet"].items()}, dict(unet.config))
    check_and_load(unet, unet_state, f"{options.diffusion} (UNet)")
    net = build_slt_controlnet()
    check_and_load(net, convert_slt_controlnet(parts["control_model"], net),
                   f"{options.diffusion} (ControlNet)")
    vae = AutoencoderKL.from_pretrained(sd / "vae", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(sd / "tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(sd / "text_encoder", local_files_only=True)
    with torch.no_grad():
        tokens = tokenizer(["", PROMPT], padding="max_length", max_length=77,
                           return_tensors="pt").input_ids
        embeds = text_encoder(tokens).last_hidden_state
    model = UpFusionDiffusion(unet.to(device).eval(), net.to(device).eval(),
                              vae.to(device).eval(), embeds.to(device), upsrt, views,
                              T_ref_trainer)
    return ScheduleDenoiser(DiffusionImageDenoiser(model, guidance_scale=options.guidance_scale),
                            options.ddim_steps)


class ScheduleDenoiser:
    """DDIM back from noise level ``k / ddim_steps`` in ``k`` steps (the official sampler walks
    the remaining steps of its 30-step schedule), around the core's denoiser."""

    def __init__(self, denoiser, ddim_steps: int) -> None:
        self.denoiser = denoiser
        self.ddim_steps = ddim_steps

    def __call__(self, images, cameras, strength, generator):
        self.denoiser.steps = max(1, round(float(strength.max()) * self.ddim_steps))
        return self.denoiser(images, cameras, strength, generator)



def official_control_model_shapes(hint_channels: int = HINT_CHANNELS) -> dict[str, tuple]:
    """Keys and shapes of ``control_model.*`` in ``upfusion2d.pt``, from the published module
    structure (``cldm_dfslt.ControlNetSLT`` with ``cldm_v15_dfslt.yaml``): ControlNet for
    SD 1.5 (the generative core's generator of the ``cldm_v15`` keys) with its two changes:
    the hint block is ONE 3x3 conv from 774 channels, and every transformer's ``proj_in``
    takes 6 more channels (the rays)."""
    from reconstruction.generative.ldm import SD15_LDM_CONFIG, controlnet_state_dict_shapes

    control = {**SD15_LDM_CONFIG["unet"], "hint_channels": hint_channels}
    out = {}
    for key, shape in controlnet_state_dict_shapes(control).items():
        if key.startswith("control_model.input_hint_block."):
            if key.startswith("control_model.input_hint_block.0."):
                out[key] = ((control["model_channels"], hint_channels, 3, 3)
                            if key.endswith("weight") else (control["model_channels"],))
            continue
        if key.endswith(".proj_in.weight"):
            shape = (shape[0], shape[1] + 6, *shape[2:])
        out[key] = tuple(shape)
    return out


def write_key_list() -> Path:
    """Write ``keys/upfusion2d_control_model.txt`` (see :func:`official_control_model_shapes`)."""
    from reconstruction.upfusion.official import KEYS_DIR

    path = KEYS_DIR / "upfusion2d_control_model.txt"
    lines = ["# upfusion2d.pt['model_state_dict'] control_model.* of UpFusion, name shape",
             "# written from control_net/cldm/cldm_dfslt.py (ControlNetSLT, SLTQueryTransformer)"
             " and control_net/models/cldm_v15_dfslt.yaml; the rest of upfusion2d.pt is SD 1.5"
             " (reconstruction/generative/sd15_keys.txt)"]
    lines += [f"{k} {','.join(map(str, s))}" for k, s in official_control_model_shapes().items()]
    path.write_text("\n".join(lines) + "\n")
    return path
