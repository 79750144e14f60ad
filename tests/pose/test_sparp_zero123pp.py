"""Zero123++ v1.2 on diffusers (pose.camera.sparp.zero123pp): the published architecture's
weights (names, shapes, the published parameter count), reference attention, the domain
switcher, the 3x2 tiling, and loading a Zero123++ folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from geometry.errors import UserError
from pose.camera.sparp.zero123pp import (
    CONTEXT_TOKENS,
    ZERO123PP_V12_UNET_CONFIG,
    ZERO123PP_V12_UNET_PARAMETERS,
    Zero123PP,
    Zero123PPConfig,
    load_zero123pp,
    tile_inputs,
    tile_views,
    tiny_unet_config,
    unet_state_dict_keys,
    untile_views,
    with_domain_switcher,
)


def test_published_v12_config_gives_the_published_unet():
    """Built on the meta device: 686 tensors and exactly the 865,910,724 parameters of the
    published v1.2 UNet (an independent number: the model card's component table)."""
    keys = unet_state_dict_keys(ZERO123PP_V12_UNET_CONFIG)
    assert sum(math.prod(s) for s in keys.values()) == ZERO123PP_V12_UNET_PARAMETERS
    assert len(keys) == 686
    assert keys["conv_in.weight"] == (320, 4, 3, 3)
    # SD 2: linear projections in the transformers, a 1024-wide (OpenCLIP ViT-H) context.
    assert keys["down_blocks.0.attentions.0.proj_in.weight"] == (320, 320)
    assert keys["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"] == (320, 1024)
    assert keys["mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"] == (1280, 1280)
    assert keys["up_blocks.3.attentions.2.proj_out.weight"] == (320, 320)
    assert "class_embedding.linear_1.weight" not in keys


def test_the_domain_switcher_adds_only_the_class_embedding():
    base = unet_state_dict_keys(ZERO123PP_V12_UNET_CONFIG)
    sparp = unet_state_dict_keys(with_domain_switcher(ZERO123PP_V12_UNET_CONFIG))
    assert {k: v for k, v in sparp.items() if k in base} == base
    assert {k: v for k, v in sparp.items() if k not in base} == {
        "class_embedding.linear_1.weight": (1280, 4), "class_embedding.linear_1.bias": (1280,),
        "class_embedding.linear_2.weight": (1280, 1280),
        "class_embedding.linear_2.bias": (1280,)}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Zero123PP(Zero123PPConfig(unet=tiny_unet_config())).eval()


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 12, 8, generator=g)
    cond = torch.randn(2, 4, 12, 8, generator=g)
    ctx = torch.randn(2, CONTEXT_TOKENS, 16, generator=g)
    return sample, cond, ctx


def test_reference_attention_against_its_definition(tiny):
    """When the noised condition latent IS the sample, attending to [x, x] equals attending
    to x (duplicated keys leave softmax averages unchanged): the output equals the plain
    UNet's. Another condition latent changes it."""
    sample_clean, cond, ctx = _inputs()
    t = torch.tensor([100, 700])
    noise = torch.randn_like(cond)
    sample = tiny.scheduler.add_noise(cond, noise, t)
    domain = torch.tensor([0, 1])
    with torch.no_grad():
        ref = tiny(sample, t, cond, ctx, domain, noise=noise)
        from pose.camera.sparp.zero123pp import domain_code

        plain = tiny.unet(sample, t, encoder_hidden_states=ctx,
                          class_labels=domain_code(domain)).sample
        other = tiny(sample, t, sample_clean, ctx, domain, noise=noise)
    assert torch.allclose(ref, plain, atol=1e-5)
    assert (other - plain).abs().max() > 1e-3


def test_domain_switcher_starts_neutral_and_then_switches(tiny):
    sample, cond, ctx = _inputs(1)
    t = torch.tensor([300, 300])
    noise = torch.randn_like(cond)
    with torch.no_grad():
        views = tiny(sample, t, cond, ctx, torch.tensor([0, 0]), noise=noise)
        nocs = tiny(sample, t, cond, ctx, torch.tensor([1, 1]), noise=noise)
        assert torch.allclose(views, nocs)  # zero-initialised: the published behaviour
        tiny.unet.class_embedding.linear_2.weight.normal_()
        switched = tiny(sample, t, cond, ctx, torch.tensor([1, 1]), noise=noise)
        tiny.unet.class_embedding.linear_2.weight.zero_()
    assert (switched - views).abs().max() > 1e-3


def test_ramped_context():
    model = Zero123PP(Zero123PPConfig(unet=tiny_unet_config(), domain_switcher=False))
    with torch.no_grad():
        model.ramping.copy_(torch.linspace(0, 1, CONTEXT_TOKENS))
    text, image = torch.randn(1, CONTEXT_TOKENS, 16), torch.randn(1, 16)
    ctx = model.context(text, image)
    assert torch.allclose(ctx[0, 0], text[0, 0])
    assert torch.allclose(ctx[0, -1], text[0, -1] + image[0])


def test_tiling_layout_and_round_trip():
    views = torch.arange(6.0)[None, :, None, None, None].expand(1, 6, 1, 2, 3).clone()
    grid = tile_views(views)
    assert grid.shape == (1, 1, 6, 6)
    # view k at row k // 2, column k % 2
    assert grid[0, 0, ::2, ::3].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert torch.equal(untile_views(grid), views)
    cond = tile_inputs([torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)])
    assert cond.shape == (3, 12, 8)
    assert float(cond[:, :4].max()) == 0.0 and float(cond[:, 4:].min()) == 1.0
    with pytest.raises(UserError):
        tile_inputs([torch.zeros(3, 4, 4)] * 7)


def _write_folder(folder: Path, unet, ramping: list[float]) -> None:
    from safetensors.torch import save_file

    (folder / "unet").mkdir(parents=True)
    config = {"_class_name": "UNet2DConditionModel", **tiny_unet_config()}
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()},
              str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    (folder / "model_index.json").write_text(json.dumps({"ramping_coefficients": ramping}))


def test_load_a_zero123pp_folder(tmp_path: Path):
    """A Zero123++ folder (plain UNet weights + ramping_coefficients) loads into the model
    with the domain switcher; the UNet's outputs are the saved UNet's."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    published = UNet2DConditionModel(**tiny_unet_config()).eval()
    ramping = [k / 100 for k in range(CONTEXT_TOKENS)]
    _write_folder(tmp_path / "z", published, ramping)
    model = load_zero123pp(tmp_path / "z").eval()
    assert torch.allclose(model.ramping, torch.tensor(ramping))
    sample, _, ctx = _inputs(2)
    t = torch.tensor([50, 900])
    from pose.camera.sparp.zero123pp import domain_code

    with torch.no_grad():
        ours = model.unet(sample, t, encoder_hidden_states=ctx,
                          class_labels=domain_code(torch.tensor([0, 1]))).sample
        theirs = published(sample, t, encoder_hidden_states=ctx).sample
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_bad_folders_are_user_errors(tmp_path: Path):
    from diffusers import UNet2DConditionModel

    with pytest.raises(UserError, match="is not a Zero123"):
        load_zero123pp(tmp_path)
    other = UNet2DConditionModel(**{**tiny_unet_config(), "block_out_channels": [8, 24],
                                    "attention_head_dim": [2, 6]})
    _write_folder(tmp_path / "w", other, [0.0] * CONTEXT_TOKENS)
    with pytest.raises(UserError, match="do not fit"):
        load_zero123pp(tmp_path / "w")
    _write_folder(tmp_path / "r", UNet2DConditionModel(**tiny_unet_config()), [0.0] * 3)
    with pytest.raises(UserError, match="ramping_coefficients"):
        load_zero123pp(tmp_path / "r")
