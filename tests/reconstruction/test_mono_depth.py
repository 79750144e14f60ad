"""Depth-Anything-V2: official key names/shapes, checkpoint round trips, preprocessing, errors.

References used here:
- the official key list, written out from the official module tree (depth_anything_v2/dpt.py,
  dinov2.py, util/blocks.py of github.com/DepthAnything/Depth-Anything-V2; the same list
  HuggingFace's convert_depth_anything_to_hf.py renames one by one);
- the official Resize rule (util/transform.py) and its published output size: a 640x480
  COCO image becomes a 518x686 network input (convert_depth_anything_to_hf.py);
- cv2.INTER_CUBIC, the official resize, for the preprocessing;
- a NumPy bicubic resampler for DINOv2's offset positional-embedding interpolation;
- HuggingFace transformers' independent DepthAnything implementation, when installed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geometry.errors import UserError
from reconstruction.depth import load_mono_depth, save_mono_depth
from reconstruction.depth.depth_anything import (
    DEPTH_ANYTHING_PRESETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DepthAnythingV2,
    preset_config,
)
from reconstruction.depth.mono import MonoDepth, expected_shapes, network_input_size

TINY = DEPTH_ANYTHING_PRESETS["tiny"]


def official_keys(depth: int) -> set[str]:
    """Every key of an official depth_anything_v2_vit*.pth, written out from the official code."""
    keys = {"pretrained.cls_token", "pretrained.mask_token", "pretrained.pos_embed",
            "pretrained.patch_embed.proj.weight", "pretrained.patch_embed.proj.bias",
            "pretrained.norm.weight", "pretrained.norm.bias"}
    for block in range(depth):
        for name in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                     "attn.proj.weight", "attn.proj.bias", "ls1.gamma", "norm2.weight",
                     "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                     "mlp.fc2.bias", "ls2.gamma"):
            keys.add(f"pretrained.blocks.{block}.{name}")
    for index in range(4):
        keys |= {f"depth_head.projects.{index}.weight", f"depth_head.projects.{index}.bias"}
        if index != 2:  # resize_layers[2] is an Identity
            keys |= {f"depth_head.resize_layers.{index}.weight",
                     f"depth_head.resize_layers.{index}.bias"}
        keys.add(f"depth_head.scratch.layer{index + 1}_rn.weight")  # bias=False
        refine = f"depth_head.scratch.refinenet{index + 1}"
        keys |= {f"{refine}.out_conv.weight", f"{refine}.out_conv.bias"}
        for unit in ("resConfUnit1", "resConfUnit2"):
            for conv in ("conv1", "conv2"):
                keys |= {f"{refine}.{unit}.{conv}.weight", f"{refine}.{unit}.{conv}.bias"}
    for conv in ("output_conv1", "output_conv2.0", "output_conv2.2"):
        keys |= {f"depth_head.scratch.{conv}.weight", f"depth_head.scratch.{conv}.bias"}
    return keys


# (preset, number of keys, exact shapes of a few tensors) from the official code and configs.
OFFICIAL_SHAPES = {
    "vits": (239, {
        "pretrained.pos_embed": (1, 1370, 384),
        "pretrained.cls_token": (1, 1, 384),
        "pretrained.mask_token": (1, 384),
        "pretrained.patch_embed.proj.weight": (384, 3, 14, 14),
        "pretrained.blocks.0.attn.qkv.weight": (1152, 384),
        "pretrained.blocks.11.mlp.fc1.weight": (1536, 384),
        "pretrained.blocks.11.ls2.gamma": (384,),
        "depth_head.projects.0.weight": (48, 384, 1, 1),
        "depth_head.resize_layers.0.weight": (48, 48, 4, 4),  # ConvTranspose2d: [in, out, k, k]
        "depth_head.resize_layers.1.weight": (96, 96, 2, 2),
        "depth_head.resize_layers.3.weight": (384, 384, 3, 3),
        "depth_head.scratch.layer1_rn.weight": (64, 48, 3, 3),
        "depth_head.scratch.layer4_rn.weight": (64, 384, 3, 3),
        "depth_head.scratch.refinenet1.out_conv.weight": (64, 64, 1, 1),
        "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight": (64, 64, 3, 3),
        "depth_head.scratch.output_conv1.weight": (32, 64, 3, 3),
        "depth_head.scratch.output_conv2.0.weight": (32, 32, 3, 3),
        "depth_head.scratch.output_conv2.2.weight": (1, 32, 1, 1),
    }),
    "vitb": (239, {
        "pretrained.pos_embed": (1, 1370, 768),
        "pretrained.blocks.11.attn.qkv.weight": (2304, 768),
        "depth_head.projects.3.weight": (768, 768, 1, 1),
        "depth_head.scratch.layer4_rn.weight": (128, 768, 3, 3),
        "depth_head.scratch.output_conv1.weight": (64, 128, 3, 3),
        "depth_head.scratch.output_conv2.0.weight": (32, 64, 3, 3),
    }),
    "vitl": (407, {
        "pretrained.pos_embed": (1, 1370, 1024),
        "pretrained.blocks.23.mlp.fc2.weight": (1024, 4096),
        "depth_head.projects.0.weight": (256, 1024, 1, 1),
        "depth_head.resize_layers.0.weight": (256, 256, 4, 4),
        "depth_head.scratch.layer1_rn.weight": (256, 256, 3, 3),
        "depth_head.scratch.output_conv1.weight": (128, 256, 3, 3),
        "depth_head.scratch.output_conv2.2.bias": (1,),
    }),
}


@pytest.mark.parametrize("name", ["vits", "vitb", "vitl"])
def test_preset_keys_and_shapes_match_official(name: str) -> None:
    config = DEPTH_ANYTHING_PRESETS[name]
    with torch.device("meta"):
        model = DepthAnythingV2(config)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    count, some_shapes = OFFICIAL_SHAPES[name]
    assert len(shapes) == count
    assert set(shapes) == official_keys(config.depth)
    for key, shape in some_shapes.items():
        assert shapes[key] == shape, key
    assert expected_shapes(config) == shapes
    # The official intermediate_layer_idx table in dpt.py.
    assert config.intermediate_layers == {"vits": (2, 5, 8, 11), "vitb": (2, 5, 8, 11),
                                          "vitl": (4, 11, 17, 23)}[name]


def _random_tiny(seed: int = 0, **overrides) -> DepthAnythingV2:
    torch.manual_seed(seed)
    model = DepthAnythingV2(preset_config("tiny", **overrides)).eval()
    with torch.no_grad():  # perturb everything: LayerScale 1.0 and zero biases hide mistakes
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def _image(height: int, width: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width),
                            indexing="ij")
    smooth = torch.stack([xs, ys, 0.5 * (xs + ys)], dim=-1)
    return (0.8 * smooth + 0.2 * torch.rand(height, width, 3, generator=gen)).clamp(0, 1)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_round_trip_gives_identical_output(tmp_path: Path, suffix: str) -> None:
    model = _random_tiny()
    path = save_mono_depth(model, tmp_path / f"tiny{suffix}")
    loaded = load_mono_depth(path, input_size=42)  # tiny is found by its shapes for .pth
    assert loaded.config == TINY
    image = _image(45, 61)
    expected = MonoDepth(model, input_size=42).predict(image)
    assert torch.equal(loaded.predict(image), expected)
    network_input = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        assert torch.equal(loaded.model(network_input), model(network_input))


def test_safetensors_metadata_carries_a_non_preset_architecture(tmp_path: Path) -> None:
    model = _random_tiny(depth=5, intermediate_layers=(0, 2, 3, 4))
    loaded = load_mono_depth(save_mono_depth(model, tmp_path / "custom.safetensors"))
    assert loaded.config == model.config
    network_input = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        assert torch.equal(loaded.model(network_input), model(network_input))
    # The same weights as a bare .pth match no preset: the error names the closest one.
    with pytest.raises(UserError, match=r"closest preset tiny: 14 unexpected keys "
                                        r"\(pretrained\.blocks\.4\.attn\.proj\.bias"):
        load_mono_depth(save_mono_depth(model, tmp_path / "custom.pth"))


def test_network_input_size_follows_the_official_resize() -> None:
    assert network_input_size(480, 640) == (518, 686)  # published for the COCO cats image
    assert network_input_size(518, 518) == (518, 518)
    assert network_input_size(1000, 300) == (1722, 518)  # 1726.7 -> 123 * 14
    assert network_input_size(518, 539) == (518, 532)  # 38.5 patches: round half to even
    assert network_input_size(518, 525) == (518, 532)  # 37.5 patches: round half to even
    assert network_input_size(20, 30, input_size=42) == (42, 56)  # 63 = 4.5 patches -> 4
    assert network_input_size(100, 103, input_size=518) == (518, 532)  # 38.1 patches
    # A side that rounds down below input_size is rounded up instead (32 -> 28 < 32 -> 42).
    assert network_input_size(20, 30, input_size=32) == (42, 42)


def test_preprocessing_matches_official_cv2_pipeline() -> None:
    cv2 = pytest.importorskip("cv2")
    image = _image(57, 83)
    mono = MonoDepth(_random_tiny(), input_size=70)
    net_h, net_w = network_input_size(57, 83, 70)
    # Official image2tensor on an RGB float64 image (cv2.INTER_CUBIC, then normalise).
    resized = cv2.resize(image.double().numpy(), (net_w, net_h), interpolation=cv2.INTER_CUBIC)
    normalised = (resized - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    reference = torch.from_numpy(normalised.transpose(2, 0, 1)[None]).float()
    ours = mono.preprocess(image)
    assert ours.shape == (1, 3, net_h, net_w) == reference.shape
    # cv2 and PyTorch bicubic differ by <1e-4 on [0, 1] images (cv2's coefficient tables);
    # over std 0.225 that is <5e-4.
    assert torch.allclose(ours, reference, atol=5e-4, rtol=0)


def _bicubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic-convolution weights of the 4 taps at offsets -1, 0, 1, 2: ``[..., 4]``."""
    dist = np.abs(np.stack([t + 1, t, 1 - t, 2 - t], axis=-1))
    near = ((a + 2) * dist - (a + 3)) * dist**2 + 1
    far = ((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a
    return np.where(dist <= 1, near, far)


def _resample_axis(grid: np.ndarray, axis: int, out_size: int, scale: float) -> np.ndarray:
    """1-D bicubic resampling where output pixel i samples input ``(i + 0.5) / scale - 0.5``."""
    moved = np.moveaxis(grid, axis, 0)
    src = (np.arange(out_size) + 0.5) / scale - 0.5
    base = np.floor(src).astype(int)
    weights = _bicubic_weights(src - base)
    taps = np.clip(base[:, None] + np.arange(-1, 3)[None], 0, moved.shape[0] - 1)
    out = np.einsum("ok,ok...->o...", weights, moved[taps])
    return np.moveaxis(out, 0, axis)


def test_pos_embed_interpolation_uses_dinov2_offset_scale() -> None:
    model = _random_tiny()
    encoder = model.pretrained
    side = 7  # tiny: img_size 98 = 7 patches
    height, width = 10 * 14, 5 * 14  # non-square: rows and columns must not be swapped
    result = encoder.interpolate_pos_encoding(height, width)
    assert result.shape == (1, 1 + 10 * 5, TINY.embed_dim)
    pos = encoder.pos_embed.detach().double().numpy()[0]
    grid = pos[1:].reshape(side, side, -1)
    # Official: scale_factor = (grid + 0.1) / sqrt(N); the scale sets the sample positions.
    expected = _resample_axis(grid, 0, 10, (10 + 0.1) / side)
    expected = _resample_axis(expected, 1, 5, (5 + 0.1) / side).reshape(50, -1)
    got = result.detach().double().numpy()[0]
    np.testing.assert_allclose(got[0], pos[0], atol=0)  # the class position is kept
    np.testing.assert_allclose(got[1:], expected, atol=2e-6)  # float32 vs float64
    # Resampling to the size instead (no offset) would be visibly different.
    by_size = _resample_axis(_resample_axis(grid, 0, 10, 10 / side), 1, 5, 5 / side)
    assert np.abs(by_size.reshape(50, -1) - expected).max() > 1e-3
    # The training grid itself is used as is.
    assert encoder.interpolate_pos_encoding(98, 98) is encoder.pos_embed


@pytest.mark.parametrize(("height", "width"), [(37, 53), (101, 67), (14, 15)])
def test_predict_at_odd_sizes_matches_manual_pipeline(height: int, width: int) -> None:
    model = _random_tiny()
    mono = MonoDepth(model, input_size=42)
    image = _image(height, width)
    disparity = mono.predict(image)
    assert disparity.shape == (height, width)
    assert disparity.dtype == torch.float32
    assert torch.isfinite(disparity).all() and (disparity >= 0).all()
    # infer_image: network on the resized image, bilinear (align_corners) back to H x W.
    net_h, net_w = network_input_size(height, width, 42)
    pixels = F.interpolate(image.permute(2, 0, 1)[None], (net_h, net_w), mode="bicubic",
                           align_corners=False)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    normalised = (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        raw = model(normalised)
    expected = F.interpolate(raw[:, None], (height, width), mode="bilinear",
                             align_corners=True)[0, 0]
    assert torch.allclose(disparity, expected, atol=1e-6, rtol=1e-5)
    assert disparity.std() > 0  # a real map, not a constant


def test_predict_batches_and_keeps_network_size_inputs_exact() -> None:
    model = _random_tiny()
    mono = MonoDepth(model, input_size=42)
    images = torch.stack([_image(42, 56, seed=s) for s in range(3)]).reshape(3, 1, 42, 56, 3)
    batch = mono.predict(images)
    assert batch.shape == (3, 1, 42, 56)
    # At the network size both resizes are the identity: the raw network output.
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    with torch.no_grad():
        raw = model(((images[:, 0] - mean) / std).permute(0, 3, 1, 2))
    assert torch.allclose(batch[:, 0], raw, atol=1e-6, rtol=0)


def test_matches_huggingface_depth_anything() -> None:
    """Compare with transformers' independent implementation (same weights, renamed)."""
    transformers = pytest.importorskip("transformers")
    model = _random_tiny(seed=3)
    config = model.config
    backbone = transformers.Dinov2Config(
        hidden_size=config.embed_dim, num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads, image_size=config.img_size, patch_size=14,
        out_indices=[layer + 1 for layer in config.intermediate_layers],  # 0 = embeddings
        apply_layernorm=True, reshape_hidden_states=False)
    hf_config = transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=config.embed_dim, patch_size=14,
        fusion_hidden_size=config.features, neck_hidden_sizes=list(config.out_channels),
        depth_estimation_type="relative")
    hf_model = transformers.DepthAnythingForDepthEstimation(hf_config).eval()
    hf_keys = set(hf_model.state_dict())
    # Attention names changed in transformers 5 (q_proj/o_proj); accept both spellings.
    new_names = "backbone.encoder.layer.0.attention.q_proj.weight" in hf_keys
    qkv_names = (["q_proj", "k_proj", "v_proj"] if new_names else
                 ["attention.query", "attention.key", "attention.value"])
    out_name = "o_proj" if new_names else "output.dense"
    dim = config.embed_dim
    renamed = {}
    fixed = {"pretrained.cls_token": "backbone.embeddings.cls_token",
             "pretrained.mask_token": "backbone.embeddings.mask_token",
             "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
             "pretrained.patch_embed.proj.weight":
                 "backbone.embeddings.patch_embeddings.projection.weight",
             "pretrained.patch_embed.proj.bias":
                 "backbone.embeddings.patch_embeddings.projection.bias",
             "pretrained.norm.weight": "backbone.layernorm.weight",
             "pretrained.norm.bias": "backbone.layernorm.bias",
             "depth_head.scratch.output_conv1.weight": "head.conv1.weight",
             "depth_head.scratch.output_conv1.bias": "head.conv1.bias",
             "depth_head.scratch.output_conv2.0.weight": "head.conv2.weight",
             "depth_head.scratch.output_conv2.0.bias": "head.conv2.bias",
             "depth_head.scratch.output_conv2.2.weight": "head.conv3.weight",
             "depth_head.scratch.output_conv2.2.bias": "head.conv3.bias"}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if key in fixed:
            renamed[fixed[key]] = value
        elif key.startswith("pretrained.blocks."):
            layer, rest = parts[2], ".".join(parts[3:])
            prefix = f"backbone.encoder.layer.{layer}."
            if rest.startswith("attn.qkv."):
                for chunk, name in enumerate(qkv_names):
                    renamed[f"{prefix}attention.{name}.{parts[-1]}"] = \
                        value[chunk * dim:(chunk + 1) * dim]
            else:
                rest = (rest.replace("ls1.gamma", "layer_scale1.lambda1")
                        .replace("ls2.gamma", "layer_scale2.lambda1")
                        .replace("attn.proj", f"attention.{out_name}"))
                renamed[prefix + rest] = value
        elif key.startswith("depth_head.projects."):
            renamed[f"neck.reassemble_stage.layers.{parts[2]}.projection.{parts[3]}"] = value
        elif key.startswith("depth_head.resize_layers."):
            renamed[f"neck.reassemble_stage.layers.{parts[2]}.resize.{parts[3]}"] = value
        elif key.startswith("depth_head.scratch.layer"):
            renamed[f"neck.convs.{int(parts[2][5]) - 1}.weight"] = value
        else:  # refinenet{i} -> fusion_stage.layers.{4 - i}
            index = 4 - int(parts[2][len("refinenet"):])
            rest = (".".join(parts[3:]).replace("out_conv", "projection")
                    .replace("resConfUnit", "residual_layer").replace("conv1", "convolution1")
                    .replace("conv2", "convolution2"))
            renamed[f"neck.fusion_stage.layers.{index}.{rest}"] = value
    hf_model.load_state_dict(renamed, strict=True)
    # Square input at the training grid: both use the stored positions as they are
    # (transformers resamples other sizes to the size, without DINOv2's 0.1 offset).
    image = torch.randn(2, 3, 98, 98, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model(image)
        theirs = hf_model(pixel_values=image).predicted_depth
    assert ours.shape == theirs.shape == (2, 98, 98)
    assert ours.std() > 1e-3
    # float32, same operations in a different order (fused attention): ~1e-7 measured.
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_bad_files_give_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_mono_depth(tmp_path / "missing.pth")
    with pytest.raises(UserError, match="is not a file"):
        load_mono_depth(tmp_path)
    with pytest.raises(UserError, match="Cannot read .* as a PyTorch checkpoint"):
        load_mono_depth(_bytes(tmp_path / "garbage.pth", b"not a checkpoint at all"))
    with pytest.raises(UserError, match="Cannot read .* as safetensors"):
        load_mono_depth(_bytes(tmp_path / "garbage.safetensors", b"\x10\x00" + b"x" * 40))
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(UserError, match="holds a list, not a state_dict"):
        load_mono_depth(tmp_path / "list.pth")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"is not a Depth-Anything-V2 state_dict \(closest "
                                        r"preset .*unexpected keys \(encoder\.weight\)"):
        load_mono_depth(tmp_path / "other.pth")
    torch.save({"backbone.embeddings.cls_token": torch.zeros(1, 1, 384),
                "head.conv1.weight": torch.zeros(32, 64, 3, 3)}, tmp_path / "hf.pth")
    with pytest.raises(UserError, match="is a HuggingFace transformers checkpoint"):
        load_mono_depth(tmp_path / "hf.pth")


def test_incomplete_or_mismatched_state_dicts_name_the_keys(tmp_path: Path) -> None:
    state = _random_tiny().state_dict()
    incomplete = {key: value for key, value in state.items()
                  if key != "depth_head.scratch.output_conv2.2.weight"}
    incomplete["depth_head.readout_projects.0.0.weight"] = torch.zeros(64, 128)
    torch.save(incomplete, tmp_path / "incomplete.pth")
    with pytest.raises(UserError, match=r"closest preset tiny: 1 keys missing \(depth_head\."
                                        r"scratch\.output_conv2\.2\.weight\), 1 unexpected"):
        load_mono_depth(tmp_path / "incomplete.pth")
    torch.save(state, tmp_path / "tiny.pth")
    with pytest.raises(UserError, match=r"not a Depth-Anything-V2 vits state_dict: .*"
                                        r"pretrained\.pos_embed: \[1, 50, 64\] instead of "
                                        r"\[1, 1370, 384\]"):
        load_mono_depth(tmp_path / "tiny.pth", encoder="vits")
    with pytest.raises(UserError, match="Unknown Depth-Anything encoder 'vitg'"):
        load_mono_depth(tmp_path / "tiny.pth", encoder="vitg")
    # Wrapped and DDP-prefixed state_dicts are unwrapped.
    torch.save({"model": {f"module.{key}": value for key, value in state.items()}},
               tmp_path / "wrapped.pth")
    loaded = load_mono_depth(tmp_path / "wrapped.pth", encoder="tiny")
    assert torch.equal(loaded.model.pretrained.pos_embed, state["pretrained.pos_embed"])


def test_half_precision_checkpoint_runs_in_float32(tmp_path: Path) -> None:
    model = _random_tiny()
    torch.save({key: value.half() for key, value in model.state_dict().items()},
               tmp_path / "half.pth")
    loaded = load_mono_depth(tmp_path / "half.pth")
    assert loaded.model.pretrained.pos_embed.dtype == torch.float32
    network_input = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        reference, ours = model(network_input), loaded.model(network_input)
    # Weights rounded to float16 (rel. 2^-11 ~ 5e-4), through a 4-block network.
    assert torch.allclose(ours, reference, atol=5e-3 * reference.abs().max().item())
    assert not math.isnan(ours.sum().item())


def test_rdggs_mono_prior_runs_a_real_checkpoint(tmp_path: Path) -> None:
    """The RDG-GS prior path end to end with a real (tiny, random) checkpoint file."""
    priors = pytest.importorskip("reconstruction.rdggs.priors",
                                 reason="RDG-GS priors are not in this tree")
    if not hasattr(priors, "mono_inverse_depths"):
        pytest.skip("reconstruction.rdggs.priors has no mono_inverse_depths")
    model = _random_tiny(seed=5)
    path = save_mono_depth(model, tmp_path / "depth_anything_v2_tiny.pth")
    image = _image(33, 29, seed=6)
    (inverse,) = priors.mono_inverse_depths([image], path)
    # The default 518 px input, as RDG-GS loads it.
    assert torch.equal(inverse, MonoDepth(model).predict(image))
