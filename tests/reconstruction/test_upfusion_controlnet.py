"""UpFusion's DF+SLT ControlNet: the official key mapping (every key used, every parameter
filled), zero initialisation, the rays and the SLT reaching the residuals, F1 guidance."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")

from geometry.cameras import Cameras  # noqa: E402
from reconstruction.upfusion import controlnet as C  # noqa: E402

torch.set_num_threads(1)


def test_official_control_model_keys_map_onto_the_slt_controlnet():
    from reconstruction.generative.ldm import read_key_list as read_ldm
    from reconstruction.generative.ldm import trace_converter
    from reconstruction.upfusion.official import KEYS_DIR, read_key_list

    with torch.device("meta"):
        net = C.build_slt_controlnet()
    listed = read_key_list("upfusion2d_control_model")
    # the key list is the module structure's: it equals what the generator gives
    assert listed == C.official_control_model_shapes()
    assert listed["control_model.input_hint_block.0.weight"] == (320, 774, 3, 3)
    assert listed["control_model.middle_block.1.proj_in.weight"] == (1280, 1286, 1, 1)
    assert not any(k.startswith("control_model.input_hint_block.2") for k in listed)
    stripped = {k[len("control_model."):]: s for k, s in listed.items()}
    mapping = trace_converter(lambda sd: C.convert_slt_controlnet(sd, net), stripped)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert set(mapping) == set(ours)  # every parameter filled
    assert {src for src, _ in mapping.values()} == set(stripped)  # every key used
    for key, (src, how) in mapping.items():
        assert math.prod(stripped[src]) == math.prod(ours[key]), key
        if how == "copy":
            assert stripped[src] == ours[key], key
    # the rest of upfusion2d.pt is Stable Diffusion 1.5's layout (the core's key list):
    # split by part, nothing but the noise schedule is left over
    from reconstruction.generative.ldm import SCHEDULE_KEYS, SD15_KEY_LIST

    full = {**read_ldm(SD15_KEY_LIST), **listed}
    parts = C.split_upfusion2d({"model_state_dict": {k: torch.empty(s, device="meta")
                                                     for k, s in full.items()}})
    assert set(parts["other"]) == set(SCHEDULE_KEYS)
    assert len(parts["control_model"]) == len(listed)
    assert "input_blocks.0.0.weight" in parts["unet"] and parts["vae"] and parts["text"]
    assert (KEYS_DIR / "upfusion2d_control_model.txt").is_file()


def _tiny():
    from reconstruction.generative.ldm import (
        build_sd_modules,
        controlnet_config_from_ldm,
        tiny_sd_config,
    )
    from reconstruction.upfusion.upsrt import UpSRT, preset

    torch.manual_seed(0)
    config = tiny_sd_config(context_dim=16)
    modules = build_sd_modules(config, ("unet", "vae"))
    upsrt = UpSRT(preset("test")).eval()
    d = upsrt.config.transformer_dim
    cfg = controlnet_config_from_ldm({**config["unet"], "hint_channels": d + 6},
                                     config["image_size"], len(config["vae"]["ch_mult"]))
    for k in ("conditioning_channels", "conditioning_embedding_out_channels"):
        cfg.pop(k)
    cfg["cross_attention_dim"] = d  # the SLT, not the text
    net = C.build_slt_controlnet(hint_channels=d + 6, **cfg).eval()
    return modules["unet"].eval(), modules["vae"].eval(), net, upsrt


def _views(upsrt):
    from reconstruction.upfusion.data import synthetic_sequence, view_set

    seq = synthetic_sequence(seed=4, num_views=6, size=16, supersample=1)
    return seq, view_set(seq, [0, 3])


def test_zero_initialised_controlnet_leaves_the_unet_unchanged_and_rays_matter():
    from reconstruction.generative.sds import NovelCameras

    unet, vae, net, upsrt = _tiny()
    seq, views = _views(upsrt)
    embeds = torch.randn(2, 8, 16)
    model = C.UpFusionDiffusion(unet, net, vae, embeds, upsrt, views, views.T_ref_world)
    cams = seq.cameras[[1, 2]]
    novel = NovelCameras(torch.linalg.inv(cams.T_world_cam).float(), cams.K.float(), 16, 16)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=embeds[1:2].expand(2, -1, -1)).sample
        pred = model.predict_noise(x, t, novel)
    assert torch.equal(pred.cond, plain)  # zero hint conv and zero convs: bit for bit
    # the condition reaches the residuals once the zero convs are trained
    with torch.no_grad():
        for p in [*net.controlnet_down_blocks.parameters(),
                  *net.controlnet_mid_block.parameters(),
                  *net.controlnet_cond_embedding.parameters()]:
            p.normal_(0, 0.1)
        cond = model.condition(novel)
        a = model.eps(x, t, embeds[1:2].expand(2, -1, -1), cond)
        no_rays = C.UpFusionCondition(cond.hint, cond.slt,
                                      {k: torch.zeros_like(v) for k, v in cond.rays.items()})
        b = model.eps(x, t, embeds[1:2].expand(2, -1, -1), no_rays)
        c = model.eps(x, t, embeds[1:2].expand(2, -1, -1), cond.zeros())
    assert (a - b).abs().max() > 1e-4  # the SLT transformers read the rays
    assert (a - c).abs().max() > 1e-4
    # the hint is UpSRT's DF at the latent grid plus the query rays
    assert cond.hint.shape == (2, upsrt.config.transformer_dim + 6, 8, 8)
    assert sorted(cond.rays) == [(4, 4), (8, 8)]
    # F1 guidance: unconditional = empty prompt and all-zero view condition
    with torch.no_grad():
        pred = model.predict_noise(x, t, novel)
        assert torch.allclose(pred.uncond, model.eps(x, t, embeds[0:1].expand(2, -1, -1),
                                                     cond.zeros()), atol=1e-6)


def test_plucker_maps_match_the_query_rays():
    from reconstruction.upfusion.rays import query_rays

    K = torch.tensor([[[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]]], dtype=torch.float64)
    T = torch.eye(4, dtype=torch.float64)[None]
    cams = Cameras(K=K, T_world_cam=T, width=8, height=8)
    maps = C.plucker_maps(cams, torch.eye(4, dtype=torch.float64), 8, 2)
    corner = query_rays(cams, torch.eye(4, dtype=torch.float64),
                        torch.tensor([[8.0, 0.0]], dtype=torch.float64))[0, 0].float()
    assert torch.allclose(maps[(8, 8)][0, :, 0, 7], corner)  # row 0, last column: (W, 0)
    assert maps[(4, 4)].shape == (1, 6, 4, 4)


def test_bad_diffusion_paths_are_one_sentence(tmp_path):
    from geometry.errors import UserError
    from reconstruction.upfusion.config import UpFusionOptions

    with pytest.raises(UserError, match="is not a file"):
        C.check_diffusion_path(UpFusionOptions(diffusion=tmp_path))
    weights = tmp_path / "upfusion2d.pt"
    weights.write_bytes(b"x")
    with pytest.raises(UserError, match="needs --upfusion.sd"):
        C.check_diffusion_path(UpFusionOptions(diffusion=weights))
    (tmp_path / "sd" / "vae").mkdir(parents=True)
    with pytest.raises(UserError, match="lacks text_encoder/, tokenizer/, unet/"):
        C.check_diffusion_path(UpFusionOptions(diffusion=weights, sd=tmp_path / "sd"))


def test_diffusion_denoiser_walks_the_remaining_schedule():
    from reconstruction.generative.distill import DiffusionImageDenoiser
    from reconstruction.generative.sds import NovelCameras

    unet, vae, net, upsrt = _tiny()
    seq, views = _views(upsrt)
    model = C.UpFusionDiffusion(unet, net, vae, torch.randn(2, 8, 16), upsrt, views,
                                views.T_ref_world)
    denoiser = C.ScheduleDenoiser(DiffusionImageDenoiser(model, guidance_scale=9.0), 30)
    cams = seq.cameras[[1]]
    novel = NovelCameras(torch.linalg.inv(cams.T_world_cam).float(), cams.K.float(), 16, 16)
    calls = []
    original = model.predict_noise

    def counted(x, t, c):
        calls.append(int(t[0]))
        return original(x, t, c)

    model.predict_noise = counted
    with torch.no_grad():
        out = denoiser(seq.images[[1]], novel, torch.tensor([4 / 30]), torch.Generator())
    assert out.shape == (1, 16, 16, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert len(calls) == 4 and calls[0] == round(4 / 30 * 999)  # 4 DDIM steps from step 133
    assert calls == sorted(calls, reverse=True)
