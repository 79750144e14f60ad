"""Official LDM checkpoints (Stable Diffusion 1.5, ControlNet 1.x) and diffusers' modules.

Published configurations (the parts that fix the weights):

- Stable Diffusion 1.5: ``CompVis/stable-diffusion``'s ``configs/stable-diffusion/
  v1-inference.yaml`` (``ldm.models.diffusion.ddpm.LatentDiffusion``: an
  ``openaimodel.UNetModel`` with 320 channels, mult 1-2-4-4, attention at 4-2-1, context
  768; the KL autoencoder with 128 channels; ``FrozenCLIPEmbedder`` = transformers'
  ``CLIPTextModel`` of OpenAI CLIP ViT-L/14);
- ControlNet for SD 1.5: ``lllyasviel/ControlNet``'s ``models/cldm_v15.yaml``
  (``cldm.cldm.ControlNet``: the UNet's encoder half, ``hint_channels`` 3, the 8-layer
  ``input_hint_block``, one zero 1x1 conv per encoder output, ``middle_block_out``).

Official key names (``model.diffusion_model.input_blocks...``, ``first_stage_model...``,
``cond_stage_model.transformer...``, ``control_model...``) are generated from those configs
by :func:`sd_state_dict_shapes` / :func:`controlnet_state_dict_shapes` (the original
modules' registration order) and stored as key lists beside this file
(``sd15_keys.txt``, ``controlnet_sd15_keys.txt``; regenerate with
``python -m reconstruction.generative.ldm --write``). Mapping onto diffusers' names uses
diffusers' own converters (``diffusers.loaders.single_file_utils``), *traced* on meta
tensors (:func:`trace_converter`): every diffusers key is known to come from one official
key, so tests can check that every key is used and every parameter filled.

Tiny configurations of the same layouts (:func:`tiny_sd_config`) build models of a few
thousand parameters for tests.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

KEY_DIR = Path(__file__).parent
SD15_KEY_LIST = KEY_DIR / "sd15_keys.txt"
CONTROLNET_KEY_LIST = KEY_DIR / "controlnet_sd15_keys.txt"

#: Stable Diffusion 1.5 (v1-inference.yaml), the parts that fix the weights.
SD15_LDM_CONFIG: dict = {
    "linear_start": 0.00085, "linear_end": 0.0120, "timesteps": 1000, "scale_factor": 0.18215,
    "image_size": 512,
    "unet": {"in_channels": 4, "out_channels": 4, "model_channels": 320,
             "attention_resolutions": [4, 2, 1], "num_res_blocks": 2,
             "channel_mult": [1, 2, 4, 4], "num_heads": 8, "transformer_depth": 1,
             "context_dim": 768},
    "vae": {"embed_dim": 4, "double_z": True, "z_channels": 4, "resolution": 256,
            "in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4],
            "num_res_blocks": 2, "attn_resolutions": []},
    # FrozenCLIPEmbedder: transformers CLIPTextModel of openai/clip-vit-large-patch14.
    "text": {"vocab_size": 49408, "width": 768, "layers": 12, "heads": 12,
             "context_length": 77, "intermediate": 3072},
}

#: ControlNet for SD 1.5 (cldm_v15.yaml control_stage_config): the UNet's encoder settings
#: plus the hint (conditioning image) channels.
CONTROLNET_SD15_LDM_CONFIG: dict = {**SD15_LDM_CONFIG["unet"], "hint_channels": 3}

#: Channels of ControlNet's input_hint_block (hint -> 16 -> 16 -> 32 -> 32 -> 96 -> 96 ->
#: 256 -> model_channels, stride 2 at the 3rd, 5th and 7th conv).
HINT_CHANNELS = (16, 32, 96, 256)

#: Official keys that have no diffusers parameter: the noise schedule (rebuilt from the
#: config) and CLIP's constant position ids (a buffer diffusers/transformers rebuild).
SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                 "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                 "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2")
SD_IGNORED_KEYS = frozenset(
    {*SCHEDULE_KEYS, "cond_stage_model.transformer.text_model.embeddings.position_ids"})

#: LDM prefix of each Stable Diffusion component (our names: diffusers' pipeline folders).
SD_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
               "text_encoder": "cond_stage_model.transformer."}
CONTROLNET_PREFIX = "control_model."


# ---------------------------------------------------------------------- configs


def unet_config_from_ldm(unet: dict, image_size: int, vae_levels: int) -> dict:
    """diffusers ``UNet2DConditionModel`` config of an LDM ``openaimodel.UNetModel`` (SD 1.x
    layout; the translation of diffusers' ``create_unet_diffusers_config_from_ldm``)."""
    block_out = [unet["model_channels"] * m for m in unet["channel_mult"]]
    down, up = [], []
    resolution = 1
    for i in range(len(block_out)):
        attn = resolution in unet["attention_resolutions"]
        down.append("CrossAttnDownBlock2D" if attn else "DownBlock2D")
        if i != len(block_out) - 1:
            resolution *= 2
    for _ in range(len(block_out)):
        attn = resolution in unet["attention_resolutions"]
        up.append("CrossAttnUpBlock2D" if attn else "UpBlock2D")
        resolution //= 2
    config = {
        "sample_size": image_size // 2 ** (vae_levels - 1),
        "in_channels": unet["in_channels"], "out_channels": unet["out_channels"],
        "down_block_types": down, "up_block_types": up, "block_out_channels": block_out,
        "layers_per_block": unet["num_res_blocks"], "cross_attention_dim": unet["context_dim"],
        "attention_head_dim": unet["num_heads"], "use_linear_projection": False,
        "transformer_layers_per_block": unet["transformer_depth"],
    }
    if "norm_num_groups" in unet:  # tiny layouts (the LDM code fixes 32 groups)
        config["norm_num_groups"] = unet["norm_num_groups"]
    return config


def vae_config_from_ldm(vae: dict, scale_factor: float) -> dict:
    """diffusers ``AutoencoderKL`` config of an LDM ``AutoencoderKL``."""
    block_out = [vae["ch"] * m for m in vae["ch_mult"]]
    config = {
        "sample_size": vae["resolution"], "in_channels": vae["in_channels"],
        "out_channels": vae["out_ch"], "down_block_types": ["DownEncoderBlock2D"] * len(block_out),
        "up_block_types": ["UpDecoderBlock2D"] * len(block_out), "block_out_channels": block_out,
        "latent_channels": vae["z_channels"], "layers_per_block": vae["num_res_blocks"],
        "scaling_factor": scale_factor,
    }
    if "norm_num_groups" in vae:
        config["norm_num_groups"] = vae["norm_num_groups"]
    return config


def controlnet_config_from_ldm(control: dict, image_size: int, vae_levels: int,
                               hint_channels: tuple[int, ...] = HINT_CHANNELS) -> dict:
    """diffusers ``ControlNetModel`` config of a ``cldm.cldm.ControlNet`` (as diffusers'
    ``create_controlnet_diffusers_config_from_ldm``)."""
    unet = unet_config_from_ldm(control, image_size, vae_levels)
    config = {k: unet[k] for k in ("in_channels", "down_block_types", "block_out_channels",
                                   "layers_per_block", "cross_attention_dim",
                                   "attention_head_dim", "use_linear_projection",
                                   "transformer_layers_per_block")}
    config["conditioning_channels"] = control["hint_channels"]
    config["conditioning_embedding_out_channels"] = list(hint_channels)
    if "norm_num_groups" in control:
        config["norm_num_groups"] = control["norm_num_groups"]
    return config


def clip_text_config(text: dict) -> dict:
    """transformers ``CLIPTextConfig`` of SD 1.x's text encoder (QuickGELU)."""
    return {"vocab_size": text["vocab_size"], "hidden_size": text["width"],
            "intermediate_size": text["intermediate"], "num_hidden_layers": text["layers"],
            "num_attention_heads": text["heads"], "max_position_embeddings": text["context_length"],
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": text["width"],
            # CLIP's start/end tokens are the last two of the vocabulary (49406, 49407)
            "bos_token_id": text["vocab_size"] - 2, "eos_token_id": text["vocab_size"] - 1}


@functools.lru_cache(maxsize=1)
def text_model_prefix() -> str:
    """``"text_model."`` where transformers' ``CLIPTextModel`` keys carry it (before
    transformers 5), else ``""``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(vocab_size=8, hidden_size=4, intermediate_size=8,
                                             num_hidden_layers=1, num_attention_heads=1,
                                             max_position_embeddings=4, bos_token_id=6,
                                             eos_token_id=7, pad_token_id=1))
    return "text_model." if any(k.startswith("text_model.") for k in model.state_dict()) else ""


def tiny_sd_config(in_channels: int = 4, context_dim: int = 16) -> dict:
    """A Stable-Diffusion-layout config with a few thousand parameters (tests): two UNet
    levels (attention at the first), a two-level VAE, a one-layer text encoder."""
    config = copy.deepcopy(SD15_LDM_CONFIG)
    config["image_size"] = 16
    config["unet"] = {"in_channels": in_channels, "out_channels": 4, "model_channels": 16,
                      "attention_resolutions": [1], "num_res_blocks": 1, "channel_mult": [1, 2],
                      "num_heads": 2, "transformer_depth": 1, "context_dim": context_dim,
                      "norm_num_groups": 8}
    config["vae"] = {"embed_dim": 4, "double_z": True, "z_channels": 4, "resolution": 16,
                     "in_channels": 3, "out_ch": 3, "ch": 8, "ch_mult": [1, 2],
                     "num_res_blocks": 1, "attn_resolutions": [], "norm_num_groups": 4}
    config["text"] = {"vocab_size": 64, "width": context_dim, "layers": 1, "heads": 2,
                      "context_length": 8, "intermediate": 4 * context_dim}
    return config


def diffusers_configs(config: dict) -> dict[str, dict]:
    """``{"unet", "vae", "text_encoder"}`` diffusers / transformers configs of an LDM config."""
    levels = len(config["vae"]["ch_mult"])
    return {"unet": unet_config_from_ldm(config["unet"], config["image_size"], levels),
            "vae": vae_config_from_ldm(config["vae"], config["scale_factor"]),
            "text_encoder": clip_text_config(config["text"])}


def build_sd_modules(config: dict, components: tuple[str, ...] = tuple(SD_PREFIXES)
                     ) -> dict[str, torch.nn.Module]:
    """Randomly initialised diffusers / transformers modules of an LDM config (under the
    caller's default device: ``torch.device("meta")`` builds them without memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = diffusers_configs(config)
    builders = {"unet": lambda: UNet2DConditionModel(**configs["unet"]),
                "vae": lambda: AutoencoderKL(**configs["vae"]),
                "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))}
    return {name: builders[name]() for name in components}


def build_controlnet(config: dict, control: dict | None = None) -> torch.nn.Module:
    """A randomly initialised diffusers ``ControlNetModel`` of an LDM config's UNet (with
    ``control``'s ``hint_channels``; default 3)."""
    from diffusers import ControlNetModel

    control = {**config["unet"], "hint_channels": 3} if control is None else control
    return ControlNetModel(**controlnet_config_from_ldm(
        control, config["image_size"], len(config["vae"]["ch_mult"])))


# ---------------------------------------------------------------------- official key names


def _layers(add: Callable[[str, tuple[int, ...]], None]):
    def lin(name, o, i, bias=True):
        add(f"{name}.weight", (o, i))
        if bias:
            add(f"{name}.bias", (o,))

    def conv(name, o, i, k):
        add(f"{name}.weight", (o, i, k, k))
        add(f"{name}.bias", (o,))

    def norm(name, c):
        add(f"{name}.weight", (c,))
        add(f"{name}.bias", (c,))

    return lin, conv, norm


def ldm_unet_keys(p: dict, add: Callable[[str, tuple[int, ...]], None],
                  encoder_only: bool = False,
                  zero_conv: Callable[[int], None] | None = None) -> None:
    """``openaimodel.UNetModel`` (use_spatial_transformer, legacy False: SD 1.x) keys and
    shapes through ``add``, in registration order. ``encoder_only`` (ControlNet): time
    embedding, input blocks and middle block; ``zero_conv(channels)`` is called after each
    input block (ControlNet's zero convolutions)."""
    lin, conv, norm = _layers(add)
    mc, ted, ctx = p["model_channels"], p["model_channels"] * 4, p["context_dim"]

    def res(pre, cin, cout):
        norm(f"{pre}.in_layers.0", cin)
        conv(f"{pre}.in_layers.2", cout, cin, 3)
        lin(f"{pre}.emb_layers.1", cout, ted)
        norm(f"{pre}.out_layers.0", cout)
        conv(f"{pre}.out_layers.3", cout, cout, 3)
        if cin != cout:
            conv(f"{pre}.skip_connection", cout, cin, 1)

    def transformer(pre, c):
        norm(f"{pre}.norm", c)
        conv(f"{pre}.proj_in", c, c, 1)
        for d in range(p["transformer_depth"]):
            b = f"{pre}.transformer_blocks.{d}"
            for attn, kv in (("attn1", c), ("attn2", ctx)):
                if attn == "attn2":  # registration order: attn1, ff, attn2, norms
                    lin(f"{b}.ff.net.0.proj", 8 * c, c)
                    lin(f"{b}.ff.net.2", c, 4 * c)
                lin(f"{b}.{attn}.to_q", c, c, bias=False)
                lin(f"{b}.{attn}.to_k", c, kv, bias=False)
                lin(f"{b}.{attn}.to_v", c, kv, bias=False)
                lin(f"{b}.{attn}.to_out.0", c, c)
            for n in (1, 2, 3):
                norm(f"{b}.norm{n}", c)
        conv(f"{pre}.proj_out", c, c, 1)

    lin("time_embed.0", ted, mc)
    lin("time_embed.2", ted, ted)
    conv("input_blocks.0.0", mc, p["in_channels"], 3)
    if zero_conv:
        zero_conv(mc)
    chans, ch, ds, idx = [mc], mc, 1, 1
    mult = p["channel_mult"]
    for level, m in enumerate(mult):
        for _ in range(p["num_res_blocks"]):
            res(f"input_blocks.{idx}.0", ch, m * mc)
            ch = m * mc
            if ds in p["attention_resolutions"]:
                transformer(f"input_blocks.{idx}.1", ch)
            chans.append(ch)
            if zero_conv:
                zero_conv(ch)
            idx += 1
        if level != len(mult) - 1:
            conv(f"input_blocks.{idx}.0.op", ch, ch, 3)
            chans.append(ch)
            if zero_conv:
                zero_conv(ch)
            ds *= 2
            idx += 1
    res("middle_block.0", ch, ch)
    transformer("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    if encoder_only:
        return
    idx = 0
    for level, m in reversed(list(enumerate(mult))):
        for i in range(p["num_res_blocks"] + 1):
            res(f"output_blocks.{idx}.0", ch + chans.pop(), m * mc)
            ch, layer = m * mc, 1
            if ds in p["attention_resolutions"]:
                transformer(f"output_blocks.{idx}.1", ch)
                layer = 2
            if level and i == p["num_res_blocks"]:
                conv(f"output_blocks.{idx}.{layer}.conv", ch, ch, 3)
                ds //= 2
            idx += 1
    norm("out.0", ch)
    conv("out.2", p["out_channels"], mc, 3)


def ldm_vae_keys(p: dict, add: Callable[[str, tuple[int, ...]], None]) -> None:
    """``ldm.models.autoencoder.AutoencoderKL`` (Encoder, Decoder, quant convs) keys."""
    _, conv, norm = _layers(add)

    def res(pre, cin, cout, out=None):
        target = add if out is None else (lambda k, s: out.append((k, s)))
        _, c2, n2 = _layers(target)
        n2(f"{pre}.norm1", cin)
        c2(f"{pre}.conv1", cout, cin, 3)
        n2(f"{pre}.norm2", cout)
        c2(f"{pre}.conv2", cout, cout, 3)
        if cin != cout:
            c2(f"{pre}.nin_shortcut", cout, cin, 1)

    def attn(pre, c):
        norm(f"{pre}.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{pre}.{n}", c, c, 1)

    ch, mult, nrb, z_ch = p["ch"], p["ch_mult"], p["num_res_blocks"], p["z_channels"]
    conv("encoder.conv_in", ch, p["in_channels"], 3)
    block_in = ch
    for i, m in enumerate(mult):
        block_in = ch * ((1,) + tuple(mult))[i]
        for j in range(nrb):
            res(f"encoder.down.{i}.block.{j}", block_in, ch * m)
            block_in = ch * m
        if i != len(mult) - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    res("encoder.mid.block_1", block_in, block_in)
    attn("encoder.mid.attn_1", block_in)
    res("encoder.mid.block_2", block_in, block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", 2 * z_ch if p["double_z"] else z_ch, block_in, 3)
    block_in = ch * mult[-1]
    conv("decoder.conv_in", block_in, z_ch, 3)
    res("decoder.mid.block_1", block_in, block_in)
    attn("decoder.mid.attn_1", block_in)
    res("decoder.mid.block_2", block_in, block_in)
    ups: dict[int, list] = {}
    for i in reversed(range(len(mult))):
        keys: list = []
        for j in range(nrb + 1):
            res(f"decoder.up.{i}.block.{j}", block_in, ch * mult[i], keys)
            block_in = ch * mult[i]
        if i != 0:
            keys += [(f"decoder.up.{i}.upsample.conv.weight", (block_in, block_in, 3, 3)),
                     (f"decoder.up.{i}.upsample.conv.bias", (block_in,))]
        ups[i] = keys
    for i in range(len(mult)):  # nn.ModuleList order: up.0 first
        for k, s in ups[i]:
            add(k, s)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", p["out_ch"], block_in, 3)
    e = p["embed_dim"]
    conv("quant_conv", 2 * e, 2 * z_ch, 1)
    conv("post_quant_conv", z_ch, e, 1)


def clip_text_keys(p: dict, add: Callable[[str, tuple[int, ...]], None]) -> None:
    """transformers ``CLIPTextModel`` keys as SD 1.x checkpoints store them (with the
    ``embeddings.position_ids`` buffer of the transformers versions of the time)."""
    lin, _, norm = _layers(add)
    w, n = p["width"], p["context_length"]
    add("text_model.embeddings.token_embedding.weight", (p["vocab_size"], w))
    add("text_model.embeddings.position_embedding.weight", (n, w))
    add("text_model.embeddings.position_ids", (1, n))
    for i in range(p["layers"]):
        b = f"text_model.encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            lin(f"{b}.self_attn.{proj}", w, w)
        norm(f"{b}.layer_norm1", w)
        lin(f"{b}.mlp.fc1", p["intermediate"], w)
        lin(f"{b}.mlp.fc2", w, p["intermediate"])
        norm(f"{b}.layer_norm2", w)
    norm("text_model.final_layer_norm", w)


def key_adder(out: dict, prefix: str) -> Callable[[str, tuple[int, ...]], None]:
    """An ``add(key, shape)`` for the key builders above that records ``prefix + key`` in
    ``out`` and refuses a key twice."""
    def add(key: str, shape: tuple[int, ...]) -> None:
        if prefix + key in out:
            raise ValueError(f"duplicate key {prefix + key}")
        out[prefix + key] = tuple(shape)

    return add


def sd_state_dict_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a Stable Diffusion 1.x ``LatentDiffusion`` state dict (EMA copies
    left out), in registration order."""
    out: dict[str, tuple[int, ...]] = {}
    for name in SCHEDULE_KEYS:  # DDPM.register_schedule (lvlb_weights is not persistent)
        out[name] = (config["timesteps"],)
    ldm_unet_keys(config["unet"], key_adder(out, SD_PREFIXES["unet"]))
    ldm_vae_keys(config["vae"], key_adder(out, SD_PREFIXES["vae"]))
    clip_text_keys(config["text"], key_adder(out, SD_PREFIXES["text_encoder"]))
    return out


def controlnet_state_dict_shapes(control: dict, prefix: str = CONTROLNET_PREFIX,
                                 hint_channels: tuple[int, ...] = HINT_CHANNELS
                                 ) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of ``cldm.cldm.ControlNet`` (``control_model.*`` in the released
    files), in registration order: time embedding, input blocks, zero convs, hint block,
    middle block, middle_block_out."""
    blocks: dict[str, tuple[int, ...]] = {}
    zero: dict[str, tuple[int, ...]] = {}
    count = [0]

    def zero_conv(c: int) -> None:
        _, conv, _ = _layers(key_adder(zero, prefix))
        conv(f"zero_convs.{count[0]}.0", c, c, 1)
        count[0] += 1

    ldm_unet_keys(control, key_adder(blocks, prefix), encoder_only=True, zero_conv=zero_conv)
    hint: dict[str, tuple[int, ...]] = {}
    _, conv, _ = _layers(key_adder(hint, prefix))
    chans = [control["hint_channels"]]
    for c in hint_channels:
        chans += [c, c]
    chans = chans[:-1]  # hint, 16, 16, 32, 32, 96, 96, 256
    for k in range(len(chans) - 1):
        conv(f"input_hint_block.{2 * k}", chans[k + 1], chans[k], 3)
    conv(f"input_hint_block.{2 * (len(chans) - 1)}", control["model_channels"], chans[-1], 3)
    middle_at = next(i for i, k in enumerate(blocks) if k.startswith(prefix + "middle_block"))
    items = list(blocks.items())
    ch = control["model_channels"] * control["channel_mult"][-1]
    out = dict(items[:middle_at])
    out.update(zero)
    out.update(hint)
    out.update(items[middle_at:])
    _, conv, _ = _layers(key_adder(out, prefix))
    conv("middle_block_out.0", ch, ch, 1)
    return out


def write_key_list(path: Path, shapes: dict[str, tuple[int, ...]], title: str) -> None:
    """Write ``key shape`` lines (``-`` for a scalar) under a comment header."""
    lines = [f"# {title}", "# one 'key shape' per line; generated by reconstruction/generative/"
             "ldm.py from the published config (EMA copies not listed)."]
    lines += [f"{k} {','.join(map(str, s)) if s else '-'}" for k, s in shapes.items()]
    path.write_text("\n".join(lines) + "\n")


@functools.lru_cache(maxsize=8)
def _read_key_list(path: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, shape = line.split()
        rows.append((name, () if shape == "-" else tuple(int(s) for s in shape.split(","))))
    return tuple(rows)


def read_key_list(path: Path) -> dict[str, tuple[int, ...]]:
    """``{official key: shape}`` of a key list written by :func:`write_key_list`."""
    return dict(_read_key_list(str(path)))


# ---------------------------------------------------------------------- mapping


def trace_converter(convert: Callable[[dict], dict], shapes: dict[str, tuple[int, ...]]
                    ) -> dict[str, tuple[str, str]]:
    """Run a state-dict converter on meta tensors and read back which source key each
    output came from: ``{output key: (source key, "copy" | "reshape")}``."""
    src = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    ids = {id(t): k for k, t in src.items()}
    out = {}
    for key, t in convert(src).items():
        if t is None:
            continue
        base = t if id(t) in ids else t._base
        if base is None or id(base) not in ids:
            raise RuntimeError(f"cannot trace {key} to a source key")  # a converter change
        out[key] = (ids[id(base)], "copy" if base is t else "reshape")
    return out


def sd_mapping(shapes: dict[str, tuple[int, ...]], config: dict
               ) -> dict[str, tuple[str, str]]:
    """``{our key: (official key, how)}`` for the official keys in ``shapes``; ours are
    prefixed by the component (``unet.``, ``vae.``, ``text_encoder.``)."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    configs = diffusers_configs(config)
    mapping: dict[str, tuple[str, str]] = {}
    parts = {name: {k: s for k, s in shapes.items() if k.startswith(p)}
             for name, p in SD_PREFIXES.items()}
    if parts["unet"]:
        for k, v in trace_converter(lambda sd: convert_ldm_unet_checkpoint(sd, configs["unet"]),
                                    parts["unet"]).items():
            mapping["unet." + k] = v
    if parts["vae"]:
        for k, v in trace_converter(lambda sd: convert_ldm_vae_checkpoint(sd, configs["vae"]),
                                    parts["vae"]).items():
            mapping["vae." + k] = v
    prefix = SD_PREFIXES["text_encoder"] + "text_model."
    ours = "text_encoder." + text_model_prefix()
    for k in parts["text_encoder"]:
        if k not in SD_IGNORED_KEYS and k.startswith(prefix):
            mapping[ours + k[len(prefix):]] = (k, "copy")
    return mapping


def controlnet_mapping(shapes: dict[str, tuple[int, ...]], config: dict,
                       control: dict | None = None) -> dict[str, tuple[str, str]]:
    """``{ControlNetModel key: (official key, how)}`` for a ControlNet's official keys
    (with or without the ``control_model.`` prefix)."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    control = {**config["unet"], "hint_channels": 3} if control is None else control
    cfg = controlnet_config_from_ldm(control, config["image_size"], len(config["vae"]["ch_mult"]))
    keys = {k: s for k, s in shapes.items()
            if k.startswith(CONTROLNET_PREFIX) or not k.startswith(
                ("model.", "first_stage_model.", "cond_stage_model.", *SCHEDULE_KEYS))}
    return trace_converter(lambda sd: convert_controlnet_checkpoint(sd, cfg), keys)


def convert_state(state: dict[str, Tensor], mapping: dict[str, tuple[str, str]],
                  module: torch.nn.Module, prefix: str = "") -> tuple[dict[str, Tensor], list[str]]:
    """``module``'s state dict from official ``state`` through ``mapping`` (keys
    ``prefix + module key``): ``(converted, missing module keys)``. Raises ValueError naming
    an official tensor whose size does not fit."""
    converted, missing = {}, []
    for key, param in module.state_dict().items():
        full = prefix + key
        if full not in mapping:
            if not key.endswith("position_ids"):  # a constant buffer
                missing.append(full)
            continue
        src, how = mapping[full]
        tensor = state[src]
        if tensor.numel() != param.numel() or (how == "copy" and tensor.shape != param.shape):
            raise ValueError(f"{src} has shape {tuple(tensor.shape)} for {full} of shape "
                             f"{tuple(param.shape)}")
        converted[key] = tensor.reshape(param.shape).to(param.dtype).contiguous()
    return converted, missing


def materialise(module: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Load ``state`` into a module built on the meta device (constant ``position_ids``
    buffers are rebuilt); RuntimeError if a parameter is left unfilled."""
    module.load_state_dict(state, strict=False, assign=True)
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            if not name.endswith("position_ids"):
                raise RuntimeError(f"buffer {name} was not loaded")
            owner = module.get_submodule(name.rsplit(".", 1)[0])
            owner.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand(1, -1),
                                  persistent=False)
    left = [n for n, p in module.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"parameter {left[0]} was not loaded")


def write_key_lists() -> None:
    """Regenerate the key lists beside this file from the published configs."""
    write_key_list(SD15_KEY_LIST, sd_state_dict_shapes(SD15_LDM_CONFIG),
                   "State-dict keys of Stable Diffusion 1.5 (v1-inference.yaml, LDM names)")
    write_key_list(CONTROLNET_KEY_LIST, controlnet_state_dict_shapes(CONTROLNET_SD15_LDM_CONFIG),
                   "State-dict keys of ControlNet for SD 1.5 (cldm_v15.yaml, control_model.*)")


if __name__ == "__main__" and "--write" in sys.argv:
    write_key_lists()
    print(f"wrote {SD15_KEY_LIST} and {CONTROLNET_KEY_LIST}")
