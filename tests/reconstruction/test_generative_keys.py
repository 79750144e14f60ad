"""Official Stable Diffusion 1.5 / ControlNet key names -> diffusers' (reconstruction.generative).

The official side is the key lists beside ``reconstruction/generative/ldm.py``, generated
from the published configs (v1-inference.yaml, cldm_v15.yaml) by ``ldm.sd_state_dict_shapes``
/ ``ldm.controlnet_state_dict_shapes``; the diffusers side is the models instantiated from
the same configs on the meta device (no weights). Every official key must be used (except
the noise schedule and CLIP's position ids) and every diffusers parameter filled, with the
right number of elements. Then a tiny checkpoint of the same layout loads with its values
where they belong, and bad paths and files are one-sentence errors.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from geometry.errors import UserError  # noqa: E402
from reconstruction.generative import ldm, loading  # noqa: E402


def _ours(modules: dict[str, torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    return {f"{n}.{k}": tuple(v.shape) for n, m in modules.items()
            for k, v in m.state_dict().items() if not k.endswith("position_ids")}


def _check(mapping, official, ours, ignored=frozenset()):
    assert set(mapping) == set(ours), (sorted(set(ours) - set(mapping))[:5],
                                       sorted(set(mapping) - set(ours))[:5])
    for key, (src, how) in mapping.items():
        assert math.prod(official[src]) == math.prod(ours[key]), (key, src)
        if how == "copy":
            assert official[src] == ours[key], (key, src)
    used = [src for src, _ in mapping.values()]
    assert len(used) == len(set(used)), "an official key fills two parameters"
    assert set(official) - set(used) == set(ignored)


def test_key_lists_are_generated_from_the_published_configs():
    assert ldm.read_key_list(ldm.SD15_KEY_LIST) == ldm.sd_state_dict_shapes(ldm.SD15_LDM_CONFIG)
    assert list(ldm.read_key_list(ldm.CONTROLNET_KEY_LIST)) == list(
        ldm.controlnet_state_dict_shapes(ldm.CONTROLNET_SD15_LDM_CONFIG))
    sd = ldm.read_key_list(ldm.SD15_KEY_LIST)
    unet = {k: s for k, s in sd.items() if k.startswith("model.diffusion_model.")}
    # Published figures: SD 1.5's UNet has 686 tensors and 859.52 M weights, its text encoder
    # 123.06 M (CLIP ViT-L/14 text tower), the VAE 83.65 M.
    assert len(unet) == 686 and sum(math.prod(s) for s in unet.values()) == 859_520_964
    text = {k: s for k, s in sd.items() if k.startswith("cond_stage_model.")
            and not k.endswith("position_ids")}
    assert sum(math.prod(s) for s in text.values()) == 123_060_480
    vae = {k: s for k, s in sd.items() if k.startswith("first_stage_model.")}
    assert sum(math.prod(s) for s in vae.values()) == 83_653_863
    control = ldm.read_key_list(ldm.CONTROLNET_KEY_LIST)
    assert control["control_model.input_hint_block.0.weight"] == (16, 3, 3, 3)
    assert control["control_model.input_hint_block.14.weight"] == (320, 256, 3, 3)
    assert control["control_model.zero_convs.11.0.weight"] == (1280, 1280, 1, 1)
    assert control["control_model.middle_block_out.0.weight"] == (1280, 1280, 1, 1)


def test_configs_match_diffusers_own_translation():
    import warnings

    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    c = ldm.SD15_LDM_CONFIG
    unet_params = {**c["unet"], "use_checkpoint": True, "legacy": False,
                   "use_spatial_transformer": True, "image_size": 32}
    original = {"model": {"params": {
        "scale_factor": c["scale_factor"], "unet_config": {"params": unet_params},
        "control_stage_config": {"params": {**unet_params, "hint_channels": 3}},
        "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": c["vae"]}}}}}
    ours = ldm.diffusers_configs(c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet = create_unet_diffusers_config_from_ldm(original, {}, image_size=512)
        vae = create_vae_diffusers_config_from_ldm(original, {}, image_size=256)
    assert {k: v for k, v in unet.items() if v is not None} == ours["unet"]
    assert vae == ours["vae"]
    # diffusers' create_controlnet_diffusers_config_from_ldm (0.42) fails on its own call;
    # it copies these UNet fields and takes hint_channels as conditioning_channels.
    mine = ldm.controlnet_config_from_ldm(ldm.CONTROLNET_SD15_LDM_CONFIG, 512, 4)
    assert mine == {**{k: unet[k] for k in (
        "in_channels", "down_block_types", "block_out_channels", "layers_per_block",
        "cross_attention_dim", "attention_head_dim", "use_linear_projection",
        "transformer_layers_per_block")}, "conditioning_channels": 3,
        "conditioning_embedding_out_channels": [16, 32, 96, 256]}


def test_every_sd15_key_maps_and_every_parameter_is_filled():
    official = ldm.read_key_list(ldm.SD15_KEY_LIST)
    with torch.device("meta"):
        ours = _ours(ldm.build_sd_modules(ldm.SD15_LDM_CONFIG))
    _check(ldm.sd_mapping(official, ldm.SD15_LDM_CONFIG), official, ours, ldm.SD_IGNORED_KEYS)


def test_every_controlnet_key_maps_and_every_parameter_is_filled():
    official = ldm.read_key_list(ldm.CONTROLNET_KEY_LIST)
    with torch.device("meta"):
        ours = _ours({"": ldm.build_controlnet(ldm.SD15_LDM_CONFIG)})
    ours = {k[1:]: s for k, s in ours.items()}
    mapping = ldm.controlnet_mapping(official, ldm.SD15_LDM_CONFIG)
    _check(mapping, official, ours)
    assert sum(math.prod(s) for s in ours.values()) == 361_279_120  # ControlNet SD 1.5
    # The released 1.1 files without the control_model. prefix map the same way.
    bare = {k.removeprefix("control_model."): s for k, s in official.items()}
    again = ldm.controlnet_mapping(bare, ldm.SD15_LDM_CONFIG)
    assert {k: ("control_model." + s, h) for k, (s, h) in again.items()} == mapping


# ---------------------------------------------------------------------- loading tiny files


def _tiny_state(seed: int = 0, drop: str | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = ldm.sd_state_dict_shapes(ldm.tiny_sd_config())
    state = {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items() if k != drop}
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = \
        torch.arange(8)[None]
    return state


def test_tiny_single_file_loads_with_official_names(tmp_path):
    from safetensors.torch import save_file

    state = _tiny_state()
    path = tmp_path / "sd-tiny.safetensors"
    save_file(state, str(path))
    sd = loading.load_stable_diffusion(path, config=ldm.tiny_sd_config())
    torch.testing.assert_close(sd.unet.conv_in.weight,
                               state["model.diffusion_model.input_blocks.0.0.weight"])
    torch.testing.assert_close(sd.unet.down_blocks[0].attentions[0].transformer_blocks[0]
                               .attn2.to_k.weight,
                               state["model.diffusion_model.input_blocks.1.1.transformer_blocks."
                                     "0.attn2.to_k.weight"])
    torch.testing.assert_close(sd.vae.encoder.mid_block.attentions[0].to_q.weight,
                               state["first_stage_model.encoder.mid.attn_1.q.weight"][:, :, 0, 0])
    emb = sd.text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(emb, state["cond_stage_model.transformer.text_model.embeddings."
                                          "token_embedding.weight"])
    assert not any(p.requires_grad for p in sd.unet.parameters())
    # The schedule is SD's scaled-linear one (diffusers' DDPMScheduler agrees).
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    torch.testing.assert_close(sd.alphas_cumprod, ref.alphas_cumprod.float())
    # And the diffusers folder written from it loads back equal.
    folder = tmp_path / "sd-tiny-diffusers"
    sd.unet.save_pretrained(folder / "unet")
    sd.vae.save_pretrained(folder / "vae")
    again = loading.load_stable_diffusion(folder, text_encoder=False)
    torch.testing.assert_close(again.unet.conv_in.weight, sd.unet.conv_in.weight)
    assert again.text_encoder is None


def test_tiny_controlnet_file_loads(tmp_path):
    config = ldm.tiny_sd_config()
    shapes = ldm.controlnet_state_dict_shapes({**config["unet"], "hint_channels": 5})
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    torch.save(state, tmp_path / "control.pth")
    model = loading.load_controlnet(tmp_path / "control.pth", config, hint_channels=5)
    torch.testing.assert_close(model.controlnet_cond_embedding.conv_in.weight,
                               state["control_model.input_hint_block.0.weight"])
    torch.testing.assert_close(model.controlnet_mid_block.weight,
                               state["control_model.middle_block_out.0.weight"])
    del state["control_model.zero_convs.1.0.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"lacks 1 ControlNet weights \(first: "
                       r"control_model\.zero_convs\.1\.0\.weight\)"):
        loading.load_controlnet(tmp_path / "partial.pth", config, hint_channels=5)


def _one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith(".") and ". " not in message, message


def test_bad_paths_and_files_are_one_sentence_errors(tmp_path):
    from safetensors.torch import save_file

    cases = []
    cases.append((tmp_path / "missing", "does not exist"))
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", "has no unet/config.json"))
    (tmp_path / "notes.txt").write_text("hello")
    cases.append((tmp_path / "notes.txt", "neither a diffusers folder nor a checkpoint"))
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    cases.append((tmp_path / "garbage.ckpt", "cannot read"))
    save_file({"foo": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    cases.append((tmp_path / "foreign.safetensors", r"has no model\.diffusion_model\.\* weights"))
    save_file(_tiny_state(drop="model.diffusion_model.out.2.weight"),
              str(tmp_path / "partial.safetensors"))
    cases.append((tmp_path / "partial.safetensors",
                  r"lacks 1 weights of the unet \(first: model\.diffusion_model\.out\.2\.weight"))
    for path, text in cases:
        with pytest.raises(UserError, match=text) as info:
            loading.load_stable_diffusion(path, config=ldm.tiny_sd_config())
        _one_sentence(str(info.value))
