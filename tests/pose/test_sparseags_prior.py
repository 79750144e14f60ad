"""The 6-DoF Zero123 prior of SparseAGS: key mapping of the official checkpoint, SDS on a
tiny model of the same layout (gradient only to the render; toward the target with an
oracle denoiser), the relative camera embedding, and one-sentence errors for bad
checkpoints.

The official key list (pose/camera/sparseags/zero123_6dof_keys.txt) is generated here by
:func:`ldm_state_dict_shapes`, which rebuilds the module names and shapes of the original
code from the published config (cvlab-columbia/zero123,
zero123/configs/sd-objaverse-finetune-c_concat-256.yaml): ``ldm.models.diffusion.ddpm.
LatentDiffusion`` (schedule buffers, then ``model.diffusion_model`` =
``ldm.modules.diffusionmodules.openaimodel.UNetModel``, ``first_stage_model`` =
``ldm.models.autoencoder.AutoencoderKL``, ``cond_stage_model`` = FrozenCLIPImageEmbedder
holding OpenAI CLIP ViT-L/14 without its text transformer, and Zero123's
``cc_projection``, ``nn.Linear(768 + 18, 768)`` in SparseAGS's 6-DoF fine-tune, whose
loader reads ``state_dict['cc_projection.weight']`` [768, 786]). EMA copies
(``model_ema.*``) are left out. Regenerate with
``python tests/pose/test_sparseags_prior.py --write``.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from geometry.errors import UserError  # noqa: E402
from pose.camera.sparseags import zero123 as z  # noqa: E402
from reconstruction.generative import ldm  # noqa: E402

# ---------------------------------------------------------------------- the original layout
# The UNet and VAE of Zero123 are Stable Diffusion 1.x's (ldm's openaimodel.UNetModel with
# 8 input channels, AutoencoderKL): their key builders live with the SD 1.5 mapping in
# reconstruction.generative.ldm. Only the image CLIP tower is Zero123's own.


def _clip_keys(p: dict, add) -> None:
    """OpenAI CLIP (clip.model.CLIP) without ``transformer`` (the text tower)."""
    w, out = p["width"], p["output_dim"]
    add("positional_embedding", (77, 768))  # text side (ViT-L/14: context 77, width 768)
    add("text_projection", (768, out))
    add("logit_scale", ())
    add("visual.class_embedding", (w,))
    add("visual.positional_embedding", ((p["image_size"] // p["patch_size"]) ** 2 + 1, w))
    add("visual.proj", (w, out))
    add("visual.conv1.weight", (w, 3, p["patch_size"], p["patch_size"]))
    add("visual.ln_pre.weight", (w,))
    add("visual.ln_pre.bias", (w,))
    for i in range(p["layers"]):
        b = f"visual.transformer.resblocks.{i}"
        add(f"{b}.attn.in_proj_weight", (3 * w, w))
        add(f"{b}.attn.in_proj_bias", (3 * w,))
        add(f"{b}.attn.out_proj.weight", (w, w))
        add(f"{b}.attn.out_proj.bias", (w,))
        add(f"{b}.ln_1.weight", (w,))
        add(f"{b}.ln_1.bias", (w,))
        add(f"{b}.mlp.c_fc.weight", (4 * w, w))
        add(f"{b}.mlp.c_fc.bias", (4 * w,))
        add(f"{b}.mlp.c_proj.weight", (w, 4 * w))
        add(f"{b}.mlp.c_proj.bias", (w,))
        add(f"{b}.ln_2.weight", (w,))
        add(f"{b}.ln_2.bias", (w,))
    add("visual.ln_post.weight", (w,))
    add("visual.ln_post.bias", (w,))
    add("token_embedding.weight", (49408, 768))
    add("ln_final.weight", (768,))
    add("ln_final.bias", (768,))


def ldm_state_dict_shapes(config: dict, camera_dim: int = 18) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the LatentDiffusion state dict of a Zero123 config (see the
    module doc), in the original registration order."""
    out: dict[str, tuple[int, ...]] = {}

    for name in ldm.SCHEDULE_KEYS:  # DDPM.register_schedule (lvlb_weights is not persistent)
        out[name] = (config["timesteps"],)
    ldm.ldm_unet_keys(config["unet"], ldm.key_adder(out, "model.diffusion_model."))
    ldm.ldm_vae_keys(config["vae"], ldm.key_adder(out, "first_stage_model."))
    _clip_keys(config["clip"], ldm.key_adder(out, "cond_stage_model.model."))
    out["cc_projection.weight"] = (config["unet"]["context_dim"],
                                   config["clip"]["output_dim"] + camera_dim)
    out["cc_projection.bias"] = (config["unet"]["context_dim"],)
    return out


def write_key_list(path: Path) -> None:
    shapes = ldm_state_dict_shapes(z.ZERO123_LDM_CONFIG)
    lines = ["# State-dict keys of the 6-DoF Zero123 checkpoint of SparseAGS (LDM layout), one",
             "# 'key shape' per line; generated from the published Zero123 config by",
             "# tests/pose/test_sparseags_prior.py (ldm_state_dict_shapes). model_ema.* copies",
             "# are not listed."]
    lines += [f"{k} {','.join(map(str, s)) if s else '-'}" for k, s in shapes.items()]
    path.write_text("\n".join(lines) + "\n")


TINY_LDM = {
    "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
    "image_size": 16,
    "unet": {"in_channels": 8, "out_channels": 4, "model_channels": 16,
             "attention_resolutions": [1], "num_res_blocks": 1, "channel_mult": [1, 2],
             "num_heads": 2, "transformer_depth": 1, "context_dim": 16},
    "vae": {"embed_dim": 4, "double_z": True, "z_channels": 4, "resolution": 16,
            "in_channels": 3, "out_ch": 3, "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1,
            "attn_resolutions": []},
    "clip": {"width": 16, "layers": 1, "heads": 2, "patch_size": 4, "image_size": 16,
             "output_dim": 16},
}


def _tiny_arch() -> z.Zero123Architecture:
    """The tiny layout that TINY_LDM describes (GroupNorm groups shrunk to fit)."""
    return z.Zero123Architecture.tiny()


# ---------------------------------------------------------------------- key mapping


def test_key_list_is_generated_from_the_published_config():
    expected = ldm_state_dict_shapes(z.ZERO123_LDM_CONFIG)
    stored = z.official_keys()
    assert list(stored) == list(expected)
    assert stored == expected
    # Sanity figures of the published model: the UNet has 686 tensors and 859.5 M weights
    # (diffusers' SD 1.x UNet with 8 input channels), the projection takes 768 + 18 numbers.
    unet = {k: s for k, s in stored.items() if k.startswith("model.diffusion_model.")}
    assert len(unet) == 686
    assert sum(math.prod(s) for s in unet.values()) == 859_532_484
    assert stored["cc_projection.weight"] == (768, 786)


def test_unet_and_vae_configs_match_diffusers_translation():
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    c = z.ZERO123_LDM_CONFIG
    original = {"model": {"params": {
        "scale_factor": c["scale_factor"],
        "unet_config": {"params": {**c["unet"], "use_checkpoint": True, "legacy": False,
                                   "use_spatial_transformer": True, "image_size": 32}},
        "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": c["vae"]}}}}}
    arch = z.Zero123Architecture.zero123()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet = create_unet_diffusers_config_from_ldm(original, {}, image_size=256)
        vae = create_vae_diffusers_config_from_ldm(original, {}, image_size=256)
    assert {k: v for k, v in unet.items() if v is not None} == arch.unet
    assert vae == arch.vae


def _mapping_report(shapes: dict, arch: z.Zero123Architecture):
    with torch.device("meta"):
        modules = z.build_modules(arch)
    ours = {f"{n}.{k}": tuple(v.shape) for n, m in modules.items()
            for k, v in m.state_dict().items() if not k.endswith("position_ids")}
    mapping = z.ldm_mapping(shapes, arch)
    return ours, mapping


def test_every_official_key_maps_onto_one_of_our_parameters_with_its_shape():
    shapes = z.official_keys()
    arch = z.Zero123Architecture.zero123()
    ours, mapping = _mapping_report(shapes, arch)
    # Every one of our weights has exactly one official source, of the right size.
    assert set(mapping) == set(ours), (sorted(set(ours) - set(mapping))[:5],
                                       sorted(set(mapping) - set(ours))[:5])
    for key, (src, how) in mapping.items():
        n = math.prod(shapes[src]) // (3 if how in "qkv" else 1)
        assert n == math.prod(ours[key]), (key, src)
        if how == "copy":
            assert shapes[src] == ours[key], (key, src)
        if how == "T":
            assert shapes[src][::-1] == ours[key]
    # Every official key is used, except the documented ones (schedule, CLIP text side).
    used = {src for src, _ in mapping.values()}
    unused = set(shapes) - used
    assert unused == set(z.IGNORED_KEYS)
    # The attention q/k/v split covers in_proj exactly once per part.
    in_proj = [how for src, how in mapping.values()
               if src.endswith("resblocks.0.attn.in_proj_weight")]
    assert sorted(in_proj) == ["k", "q", "v"]


def test_published_checkpoint_converts_onto_our_modules():
    # The loader's own path at full size, on meta tensors (no memory): completeness check,
    # then every one of our tensors receives a tensor of its shape.
    shapes = z.official_keys()
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    arch = z.Zero123Architecture.zero123()
    z._check_complete(state, arch, Path("official.ckpt"), tuple(z.PREFIXES))
    with torch.device("meta"):
        modules = z.build_modules(arch)
    converted = z._convert(state, arch, Path("official.ckpt"), modules)
    for name, module in modules.items():
        expected = {k: v.shape for k, v in module.state_dict().items()
                    if not k.endswith("position_ids")}
        assert {k: v.shape for k, v in converted[name].items()} == expected
    wrong = dict(state)
    wrong["cc_projection.weight"] = torch.empty(768, 772, device="meta")  # original Zero123
    with pytest.raises(UserError, match=r"is not the 6-DoF Zero123: cc_projection.weight"):
        z._check_complete(wrong, arch, Path("zero123-xl.ckpt"), tuple(z.PREFIXES))


def test_released_sparseags_name_mapping_agrees_with_ours():
    # SparseAGS's own loader renames only the transformer blocks (name_mapping in
    # sparseags/guidance_utils/zero123_6d_utils.py); ours must agree on those.
    released = {
        "input_blocks.1.1.": "down_blocks.0.attentions.0.",
        "input_blocks.2.1.": "down_blocks.0.attentions.1.",
        "input_blocks.4.1.": "down_blocks.1.attentions.0.",
        "input_blocks.5.1.": "down_blocks.1.attentions.1.",
        "input_blocks.7.1.": "down_blocks.2.attentions.0.",
        "input_blocks.8.1.": "down_blocks.2.attentions.1.",
        "middle_block.1.": "mid_block.attentions.0.",
        "output_blocks.3.1.": "up_blocks.1.attentions.0.",
        "output_blocks.4.1.": "up_blocks.1.attentions.1.",
        "output_blocks.5.1.": "up_blocks.1.attentions.2.",
        "output_blocks.6.1.": "up_blocks.2.attentions.0.",
        "output_blocks.7.1.": "up_blocks.2.attentions.1.",
        "output_blocks.8.1.": "up_blocks.2.attentions.2.",
        "output_blocks.9.1.": "up_blocks.3.attentions.0.",
        "output_blocks.10.1.": "up_blocks.3.attentions.1.",
        "output_blocks.11.1.": "up_blocks.3.attentions.2.",
    }
    mapping = z.ldm_mapping(z.official_keys(), z.Zero123Architecture.zero123())
    inverse = {src: ours for ours, (src, _) in mapping.items()}
    checked = 0
    for src, ours in inverse.items():
        for old, new in released.items():
            if src.startswith("model.diffusion_model." + old):
                assert ours == "unet." + src.replace("model.diffusion_model." + old, new)
                checked += 1
    assert checked == 16 * 26  # 26 tensors per transformer block


# ---------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def tiny_prior() -> z.Zero123Prior:
    torch.manual_seed(0)
    arch = _tiny_arch()
    m = z.build_modules(arch)
    return z.Zero123Prior(m["unet"], m["vae"], m["image_encoder"], m["cc_projection"], arch)


def _cond(prior: z.Zero123Prior, v: int = 2) -> z.Zero123Conditioning:
    g = torch.Generator().manual_seed(1)
    photos = torch.rand(v, 16, 16, 3, generator=g)
    return prior.condition(photos, torch.full((v, 2), 1.2))


def _cameras(b: int, v: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.randn(b, v, z.CAMERA_DIM, generator=g) * 0.3


def test_sds_gives_a_finite_gradient_to_the_render_only(tiny_prior):
    cond = _cond(tiny_prior)
    images = torch.rand(2, 24, 24, 3, generator=torch.Generator().manual_seed(3))
    images.requires_grad_(True)
    loss = tiny_prior.sds_loss(images, cond, _cameras(2, 2), torch.Generator().manual_seed(4))
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert torch.isfinite(images.grad).all() and float(images.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny_prior.parameters())
    # Deterministic for a seeded generator; another seed draws another timestep/noise.
    images.grad = None
    again = tiny_prior.sds_loss(images, cond, _cameras(2, 2), torch.Generator().manual_seed(4))
    assert float(again.detach()) == pytest.approx(float(loss.detach()), rel=1e-6)


def test_guidance_and_view_average_of_the_noise_prediction(tiny_prior):
    cond = _cond(tiny_prior, v=2)
    cams = _cameras(1, 2)
    noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([500])
    with torch.no_grad():
        eps1 = tiny_prior.predict_noise(noisy, t, cond, cams, 1.0)
        eps3 = tiny_prior.predict_noise(noisy, t, cond, cams, 3.0)
        # Reference: the UNet called by hand, one photo at a time.
        ref_c, ref_u = [], []
        for v in range(2):
            ctx = tiny_prior.cc_projection(torch.cat([cond.clip[v:v + 1], cams[:, v:v + 1]], -1))
            x_c = torch.cat([noisy, cond.latents[v:v + 1]], 1)
            x_u = torch.cat([noisy, torch.zeros_like(cond.latents[v:v + 1])], 1)
            ref_c.append(tiny_prior.unet(x_c, t, encoder_hidden_states=ctx).sample)
            ref_u.append(tiny_prior.unet(x_u, t, encoder_hidden_states=ctx * 0).sample)
    ref_c, ref_u = torch.stack(ref_c).mean(0), torch.stack(ref_u).mean(0)
    torch.testing.assert_close(eps1, ref_c, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(eps3, ref_u + 3.0 * (ref_c - ref_u), atol=1e-5, rtol=1e-4)


class _OracleUNet(torch.nn.Module):
    """Predicts the exact noise that turns ``target`` latents into the noisy input."""

    def __init__(self, target: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.target, self.alphas_cumprod = target, alphas_cumprod

    def forward(self, sample, timestep, encoder_hidden_states):
        from types import SimpleNamespace

        a = self.alphas_cumprod[timestep].view(-1, 1, 1, 1)
        noisy = sample[:, :4]
        target = self.target.repeat(len(sample) // len(self.target), 1, 1, 1)
        return SimpleNamespace(sample=(noisy - a.sqrt() * target) / (1 - a).sqrt())


def test_sds_gradient_points_to_the_oracle_target(tiny_prior):
    g = torch.Generator().manual_seed(6)
    target = torch.randn(1, 4, 8, 8, generator=g)
    latents = torch.randn(1, 4, 8, 8, generator=g).requires_grad_(True)
    oracle = z.Zero123Prior(_OracleUNet(target, tiny_prior.alphas_cumprod), tiny_prior.vae,
                            tiny_prior.image_encoder, tiny_prior.cc_projection, tiny_prior.arch)
    cond = _cond(tiny_prior, v=1)
    t = torch.tensor([300])
    noise = torch.randn(1, 4, 8, 8, generator=g)
    loss = oracle.sds_latents(latents, t, noise, cond, _cameras(1, 1), guidance_scale=5.0)
    loss.backward()
    # eps_oracle - noise = sqrt(a) (z - z*) / sqrt(1 - a): the gradient is exactly
    # w(t) sqrt(a) / sqrt(1 - a) (z - z*) with w = 1 - a, whatever the guidance scale.
    a = float(tiny_prior.alphas_cumprod[300])
    expected = (1 - a) * math.sqrt(a) / math.sqrt(1 - a) * (latents.detach() - target)
    torch.testing.assert_close(latents.grad, expected, atol=1e-5, rtol=1e-4)
    # Through the (tiny, random) VAE encoder: a small step against the image gradient brings
    # the image's latent closer to the target.
    images = torch.rand(1, 16, 16, 3, generator=g).requires_grad_(True)
    with torch.no_grad():
        target_img = oracle.encode(torch.rand(1, 16, 16, 3, generator=g)) * oracle.scaling_factor
    oracle.unet.target = target_img
    loss = oracle.sds_loss(images, cond, _cameras(1, 1), torch.Generator().manual_seed(7))
    loss.backward()
    with torch.no_grad():
        before = (oracle.encode(images) * oracle.scaling_factor - target_img).norm()
        step = images - 1e-3 * images.grad / images.grad.abs().max()
        after = (oracle.encode(step) * oracle.scaling_factor - target_img).norm()
    assert float(after) < float(before)


def test_relative_camera_embedding():
    # Identity when target == cond; log focal ratio in the last two numbers.
    T = torch.eye(4)[None]
    emb = z.relative_cameras(T, T, torch.tensor([[2.0, 2.0]]), torch.tensor([[1.0, 1.0]]))
    assert emb.shape == (1, 1, 18)
    torch.testing.assert_close(emb[0, 0, :16], torch.eye(4).flatten())
    torch.testing.assert_close(emb[0, 0, 16:], torch.full((2,), math.log(2.0)))
    # A target camera 0.5 further back along its optical axis (OpenCV +z forwards): in
    # OpenGL axes the conditioning camera's origin sits at z = -0.5 of the target frame,
    # times the translation scale; two cameras with rotations: inv(c2w_t) @ c2w_c in GL.
    T_t = torch.eye(4)
    T_t[2, 3] = 0.5
    emb = z.relative_cameras(T_t[None], T, torch.ones(1, 2), torch.ones(1, 2), 2.0)
    assert float(emb[0, 0, 11]) == pytest.approx(-1.0)
    g = torch.Generator().manual_seed(8)
    Ts = []
    for _ in range(2):
        q = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]
        q = q * torch.sign(torch.det(q))
        M = torch.eye(4)
        M[:3, :3], M[:3, 3] = q, torch.randn(3, generator=g)
        Ts.append(M)
    F = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    c2w_gl = [torch.linalg.inv(M) @ F for M in Ts]
    expected = torch.linalg.inv(c2w_gl[0]) @ c2w_gl[1]
    emb = z.relative_cameras(Ts[0][None], Ts[1][None], torch.ones(1, 2), torch.ones(1, 2))
    torch.testing.assert_close(emb[0, 0, :16], expected.flatten(), atol=1e-5, rtol=1e-5)


def test_look_at_cameras_face_the_origin_upright():
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    pos = torch.tensor([[2.0, 0.0, 0.5], [0.0, -1.0, -0.3]], dtype=torch.float64)
    T = z.look_at(pos, up)
    R = T[:, :3, :3]
    eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye)
    assert torch.allclose(torch.det(R), torch.ones(2, dtype=torch.float64))
    origin_cam = T[:, :3, 3]  # origin in the camera frame: straight ahead
    assert torch.allclose(origin_cam[:, :2], torch.zeros(2, 2, dtype=torch.float64), atol=1e-9)
    assert (origin_cam[:, 2] > 0).all()
    assert (R[:, 1] @ up < 0).all()  # image y (down) points against the world's up


# ---------------------------------------------------------------------- loading


def _tiny_ldm_checkpoint(tmp_path: Path, drop: str | None = None) -> Path:
    shapes = ldm_state_dict_shapes(TINY_LDM)
    g = torch.Generator().manual_seed(9)
    state = {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items() if k != drop}
    path = tmp_path / "zero123_tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 23000}, path)
    return path


def test_tiny_ldm_checkpoint_loads_with_the_official_names(tmp_path):
    path = _tiny_ldm_checkpoint(tmp_path)
    prior = z.load_prior(path, arch=_tiny_arch())
    state = torch.load(path, weights_only=True)["state_dict"]
    sd = prior.state_dict()
    torch.testing.assert_close(sd["unet.conv_in.weight"],
                               state["model.diffusion_model.input_blocks.0.0.weight"])
    torch.testing.assert_close(
        sd["unet.down_blocks.0.resnets.0.norm1.weight"],
        state["model.diffusion_model.input_blocks.1.0.in_layers.0.weight"])
    torch.testing.assert_close(sd["vae.encoder.mid_block.attentions.0.to_q.weight"],
                               state["first_stage_model.encoder.mid.attn_1.q.weight"][:, :, 0, 0])
    w = state["cond_stage_model.model.visual.transformer.resblocks.0.attn.in_proj_weight"]
    torch.testing.assert_close(sd["image_encoder.vision_model.encoder.layers.0.self_attn.k_proj.weight"],
                               w[16:32])
    torch.testing.assert_close(sd["image_encoder.visual_projection.weight"],
                               state["cond_stage_model.model.visual.proj"].T)
    torch.testing.assert_close(sd["cc_projection.weight"], state["cc_projection.weight"])
    # The loaded CLIP computes OpenAI CLIP's image embedding: ln_post(cls) @ proj.
    x = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(10))
    emb = prior.clip_embed(x)
    assert emb.shape == (1, 1, 16) and torch.isfinite(emb).all()


def test_missing_and_incomplete_checkpoints_are_one_sentence_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        z.load_prior(tmp_path / "nope.ckpt")
    # The published layout: the official key list names the first missing weight.
    shapes = z.official_keys()
    state = {k: torch.zeros(1).expand(s) if s else torch.zeros(())
             for k, s in list(shapes.items())[:40]}
    partial = tmp_path / "partial.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(partial))
    with pytest.raises(UserError, match=r"lacks \d+ of the \d+ weights .*first: "):
        z.load_prior(partial)
    # A tiny layout with one weight left out.
    path = _tiny_ldm_checkpoint(tmp_path, drop="model.diffusion_model.out.2.weight")
    with pytest.raises(UserError, match="has no weight for unet.conv_out.weight"):
        z.load_prior(path, arch=_tiny_arch())
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        z.load_prior(garbage)
    empty = tmp_path / "folder"
    empty.mkdir()
    with pytest.raises(UserError, match="no unet/config.json"):
        z.load_prior(empty)
    with pytest.raises(UserError) as info:
        z.load_prior(tmp_path / "nope.ckpt")
    msg = str(info.value)  # one sentence: no inner full stop, one line
    assert ". " not in msg and msg.endswith(".") and "\n" not in msg


def test_diffusers_folder_with_the_6dof_checkpoint_inside(tmp_path):
    # The Zero123 diffusers layout with the original 4-number camera projection, then
    # SparseAGS's setup: the same folder plus the 6-DoF LDM checkpoint.
    from safetensors.torch import save_file

    arch = _tiny_arch()
    torch.manual_seed(11)
    modules = z.build_modules(arch)
    folder = tmp_path / "zero123-tiny-diffusers"
    for name in ("unet", "vae", "image_encoder"):
        modules[name].save_pretrained(folder / name)
    (folder / "clip_camera_projection").mkdir()
    proj4 = torch.nn.Linear(16 + 4, 16)
    save_file({f"proj.{k}": v.contiguous() for k, v in proj4.state_dict().items()},
              str(folder / "clip_camera_projection" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(UserError, match="takes 4 camera numbers"):
        z.load_prior(folder, arch=arch)
    ckpt = _tiny_ldm_checkpoint(folder)
    prior = z.load_prior(folder, arch=arch)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.testing.assert_close(prior.cc_projection.weight, state["cc_projection.weight"])
    torch.testing.assert_close(prior.unet.conv_in.weight,
                               state["model.diffusion_model.input_blocks.0.0.weight"])


def _tiny_trainer(masks: bool):
    from geometry.se3 import look_at as look_at_np
    from reconstruction.engine.config import TrainConfig
    from reconstruction.engine.trainer import GaussianTrainer, TrainData
    from reconstruction.gaussians import GaussianScene

    g = torch.Generator().manual_seed(12)
    pts = torch.rand(300, 3, generator=g) - 0.5
    scene = GaussianScene.from_points(pts * 0.4, torch.rand(300, 3, generator=g), sh_degree=1,
                                      initial_opacity=0.8)
    w, h = 24, 20
    K = torch.tensor([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]])
    poses = []
    for k in range(3):
        angle = 0.6 * (k - 1)
        eye = torch.tensor([math.sin(angle), -0.2, -math.cos(angle)], dtype=torch.float64)
        T_world_cam = torch.from_numpy(look_at_np(eye.numpy(), torch.zeros(3).numpy(),
                                                  up=(0.0, -1.0, 0.0)))
        poses.append(torch.linalg.inv(T_world_cam).float())
    images = [torch.rand(h, w, 3, generator=g) for _ in range(3)]
    data = TrainData(images, K.expand(3, 3, 3).clone(), torch.stack(poses), 1.0)
    trainer = GaussianTrainer(data, scene, TrainConfig(iterations=10), seed=0)
    object_masks = ([(torch.rand(h, w, generator=g) > 0.3).float() for _ in range(3)]
                    if masks else None)
    return trainer, images, object_masks


@pytest.mark.parametrize("masks", [False, True])
def test_prior_loss_term_in_the_trainer(tiny_prior, masks):
    from pose.camera.sparseags.prior import PriorConfig, PriorLoss

    trainer, images, object_masks = _tiny_trainer(masks)
    config = PriorConfig(weight=0.5, every=2, render_size=12, batch_size=2)
    term = PriorLoss(tiny_prior, config, images, total_iterations=10, masks=object_masks)
    trainer.iteration = 1
    assert term(trainer, 0, None, None, {}, None) == 0.0  # not a prior step
    trainer.iteration = 2
    loss = term(trainer, 1, None, None, {}, None)
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    p = trainer.params
    assert float(p["means"].grad.abs().sum()) > 0 and float(p["sh0"].grad.abs().sum()) > 0
    # The poses enter only through the (detached) camera embedding.
    assert p["pose_omega"].grad is None or float(p["pose_omega"].grad.abs().sum()) == 0
    assert all(q.grad is None for q in tiny_prior.parameters())
    assert term.metrics()["sparseags_prior_steps"] == 1
    # The novel cameras orbit the origin at the inputs' distance, inside the elevation band.
    T = term.novel_cameras(trainer.viewmats(), 0, torch.Generator().manual_seed(0))
    centres = -(T[:, :3, :3].transpose(1, 2) @ T[:, :3, 3:])[..., 0]
    radius = torch.linalg.inv(trainer.viewmats().double())[:, :3, 3].norm(dim=-1).mean()
    torch.testing.assert_close(centres.norm(dim=-1), radius.expand(2), rtol=1e-6, atol=1e-6)


if __name__ == "__main__" and "--write" in sys.argv:
    write_key_list(z.KEY_LIST)
    print(f"wrote {z.KEY_LIST}")
