"""Depth-Anything-V2: a DINOv2 ViT encoder with a DPT head, in plain PyTorch.

The module tree, parameter names and shapes follow the official implementation
(github.com/DepthAnything/Depth-Anything-V2: ``depth_anything_v2/dpt.py``,
``depth_anything_v2/dinov2.py``, ``depth_anything_v2/dinov2_layers/{block,attention,
patch_embed,mlp,layer_scale}.py`` and ``depth_anything_v2/util/blocks.py``), so the official
checkpoints ``depth_anything_v2_vit{s,b,l}.pth`` (top-level keys ``pretrained.*`` and
``depth_head.*``) load with ``load_state_dict(strict=True)``. The numerics follow it too:
the positional-embedding interpolation with DINOv2's ``+0.1`` offset, pre-activation
residual units, bilinear ``align_corners=True`` upsampling in the fusion blocks and head.

What is left out: xFormers nested-tensor batching, stochastic depth and masking (inference
only; ``mask_token`` is kept because the checkpoints carry it), and the ``vitg`` encoder
(SwiGLU FFN; its weights were not released with the others).

Depth-Anything V1 checkpoints have the same keys and shapes but read different encoder
blocks (the last four); they load, but predict poorly with the V2 layer choice.

Output: relative inverse depth (disparity-like, larger = nearer), unknown scale and shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DepthAnythingConfig:
    """Architecture of one Depth-Anything-V2 model (encoder size and DPT head widths)."""

    encoder: str = "vits"
    """Preset name this configuration came from (``vits``, ``vitb``, ``vitl``, ``tiny``)."""
    embed_dim: int = 384
    """Token width of the ViT encoder."""
    depth: int = 12
    """Number of transformer blocks."""
    num_heads: int = 6
    """Attention heads (DINOv2 uses 64 channels per head at every size)."""
    mlp_ratio: float = 4.0
    """Hidden width of each block's MLP, relative to ``embed_dim``."""
    patch_size: int = 14
    """Side of a square patch, pixels."""
    img_size: int = 518
    """Training resolution; fixes ``pos_embed`` at ``(img_size // patch_size) ** 2 + 1`` tokens."""
    intermediate_layers: tuple[int, ...] = (2, 5, 8, 11)
    """Encoder blocks (0-based) whose normalised tokens feed the four DPT branches."""
    features: int = 64
    """Channels of the DPT fusion path (``scratch.layerN_rn`` outputs, refinenets)."""
    out_channels: tuple[int, ...] = (48, 96, 192, 384)
    """Channels of the four reassembled feature maps (``projects``)."""
    use_bn: bool = False
    """BatchNorm inside the residual conv units (off in every released model)."""
    use_clstoken: bool = False
    """Concatenate the class token into each branch (off in every released model)."""
    layerscale_init: float = 1.0
    """Initial LayerScale value (``init_values`` in DINOv2); overwritten by checkpoints."""
    interpolate_offset: float = 0.1
    """DINOv2's offset added to the patch grid when interpolating ``pos_embed``."""

    def __post_init__(self) -> None:
        if len(self.out_channels) != 4 or len(self.intermediate_layers) != 4:
            raise ValueError("Depth-Anything uses exactly four encoder layers and DPT branches")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by {self.num_heads} heads")
        if list(self.intermediate_layers) != sorted(set(self.intermediate_layers)):
            raise ValueError(f"intermediate_layers {self.intermediate_layers} must increase")
        if not all(0 <= i < self.depth for i in self.intermediate_layers):
            raise ValueError(f"intermediate_layers {self.intermediate_layers} "
                             f"outside 0..{self.depth - 1}")


# The official model_configs in run.py and the intermediate_layer_idx table in dpt.py.
DEPTH_ANYTHING_PRESETS: dict[str, DepthAnythingConfig] = {
    "vits": DepthAnythingConfig(
        encoder="vits", embed_dim=384, depth=12, num_heads=6,
        intermediate_layers=(2, 5, 8, 11), features=64, out_channels=(48, 96, 192, 384)),
    "vitb": DepthAnythingConfig(
        encoder="vitb", embed_dim=768, depth=12, num_heads=12,
        intermediate_layers=(2, 5, 8, 11), features=128, out_channels=(96, 192, 384, 768)),
    "vitl": DepthAnythingConfig(
        encoder="vitl", embed_dim=1024, depth=24, num_heads=16,
        intermediate_layers=(4, 11, 17, 23), features=256, out_channels=(256, 512, 1024, 1024)),
    # Not released: a small random model of the same architecture, for tests.
    "tiny": DepthAnythingConfig(
        encoder="tiny", embed_dim=64, depth=4, num_heads=2, img_size=98,
        intermediate_layers=(0, 1, 2, 3), features=16, out_channels=(8, 16, 32, 32)),
}


def preset_config(name: str, **overrides) -> DepthAnythingConfig:
    """The configuration of preset ``name`` (``vits``, ``vitb``, ``vitl``, ``tiny``)."""
    if name not in DEPTH_ANYTHING_PRESETS:
        raise KeyError(f"unknown Depth-Anything preset {name!r}; "
                       f"choose one of {', '.join(DEPTH_ANYTHING_PRESETS)}")
    return replace(DEPTH_ANYTHING_PRESETS[name], **overrides)


# ----------------------------------------------------------------------------------------
# DINOv2 encoder (depth_anything_v2/dinov2.py and dinov2_layers/)
# ----------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """``[B, 3, H, W]`` image -> ``[B, (H/p)*(W/p), D]`` tokens (dinov2_layers/patch_embed.py)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, image: Tensor) -> Tensor:  # [B, 3, H, W] -> [B, N, D]
        return self.proj(image).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (dinov2_layers/attention.py)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, tokens: Tensor) -> Tensor:  # [B, N, D] -> [B, N, D]
        batch, num_tokens, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, num_tokens, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, D/heads]
        # Same maths as the official q*scale @ k^T -> softmax -> @ v, in PyTorch's fused kernel.
        out = F.scaled_dot_product_attention(query, key, value)
        return self.proj(out.transpose(1, 2).reshape(batch, num_tokens, dim))


class LayerScale(nn.Module):
    """Per-channel residual scale ``gamma`` (dinov2_layers/layer_scale.py)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, tokens: Tensor) -> Tensor:  # [B, N, D]
        return tokens * self.gamma


class Mlp(nn.Module):
    """``fc1`` -> GELU -> ``fc2`` (dinov2_layers/mlp.py)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:  # [B, N, D]
        return self.fc2(self.act(self.fc1(tokens)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale (dinov2_layers/block.py, eval path)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, init_values: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, tokens: Tensor) -> Tensor:  # [B, N, D]
        tokens = tokens + self.ls1(self.attn(self.norm1(tokens)))
        return tokens + self.ls2(self.mlp(self.norm2(tokens)))


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT with a class token and interpolated absolute positions (dinov2.py).

    ``block_chunks=0`` in the official ``DINOv2()`` factory, so blocks are a flat
    ``blocks.{i}`` list; no register tokens.
    """

    def __init__(self, config: DepthAnythingConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.embed_dim = dim
        self.patch_size = config.patch_size
        self.interpolate_offset = config.interpolate_offset
        grid = config.img_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, 3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio, config.layerscale_init)
            for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        # Unused at inference (masked-image pretraining); part of every checkpoint.
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self._init_weights()

    def _init_weights(self) -> None:
        # The official init (timm ViT): only matters for the random models of the tests.
        if self.pos_embed.device.type == "meta":
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, height: int, width: int) -> Tensor:
        """Positional embeddings for a ``height`` x ``width`` pixel input: ``[1, 1 + h*w, D]``.

        Bicubic resampling of the trained ``sqrt(N)`` x ``sqrt(N)`` grid with DINOv2's
        ``scale_factor = (grid + 0.1) / sqrt(N)``: the scale, not the output size, sets
        the sampling positions, exactly as the official ``interpolate_pos_encoding``.
        """
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        num_trained = self.pos_embed.shape[1] - 1
        if grid_h * grid_w == num_trained and grid_h == grid_w:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
        side = math.sqrt(num_trained)
        scale_h = (grid_h + self.interpolate_offset) / side
        scale_w = (grid_w + self.interpolate_offset) / side
        patch_pos = patch_pos.reshape(1, int(side), int(side), self.embed_dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, scale_factor=(scale_h, scale_w), mode="bicubic",
                                  antialias=False)
        if patch_pos.shape[-2:] != (grid_h, grid_w):  # the official code asserts this too
            raise RuntimeError(f"pos_embed interpolation gave {tuple(patch_pos.shape[-2:])}, "
                               f"expected {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, self.embed_dim)
        return torch.cat((cls_pos, patch_pos), dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, image: Tensor) -> Tensor:
        """``[B, 3, H, W]`` normalised image -> ``[B, 1 + N, D]`` tokens with positions added."""
        height, width = image.shape[-2:]
        tokens = self.patch_embed(image)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        return tokens + self.interpolate_pos_encoding(height, width).to(tokens.dtype)

    def get_intermediate_layers(self, image: Tensor,
                                layers: tuple[int, ...]) -> list[tuple[Tensor, Tensor]]:
        """Normalised outputs of the given blocks: ``[(patch_tokens [B, N, D], cls [B, D])]``.

        The official call is ``get_intermediate_layers(x, idx, return_class_token=True)``
        with ``norm=True``: the final ``norm`` is applied to each taken block's output.
        """
        tokens = self.prepare_tokens(image)
        outputs = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in layers:
                normed = self.norm(tokens)
                outputs.append((normed[:, 1:], normed[:, 0]))
            if index >= max(layers):
                break  # later blocks are never read
        return outputs


# ----------------------------------------------------------------------------------------
# DPT head (depth_anything_v2/dpt.py and util/blocks.py)
# ----------------------------------------------------------------------------------------


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: ``x + conv2(relu(conv1(relu(x))))`` (util/blocks.py)."""

    def __init__(self, features: int, use_bn: bool) -> None:
        super().__init__()
        self.use_bn = use_bn
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        if use_bn:
            self.bn1 = nn.BatchNorm2d(features)
            self.bn2 = nn.BatchNorm2d(features)

    def forward(self, feat: Tensor) -> Tensor:  # [B, C, h, w]
        out = self.conv1(F.relu(feat))
        if self.use_bn:
            out = self.bn1(out)
        out = self.conv2(F.relu(out))
        if self.use_bn:
            out = self.bn2(out)
        return out + feat


class FeatureFusionBlock(nn.Module):
    """RefineNet-style fusion: add a skip through ``resConfUnit1``, refine, upsample, project."""

    def __init__(self, features: int, use_bn: bool) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, stride=1, padding=0, bias=True)
        self.resConfUnit1 = ResidualConvUnit(features, use_bn)  # noqa: N815 (official name)
        self.resConfUnit2 = ResidualConvUnit(features, use_bn)  # noqa: N815 (official name)

    def forward(self, path: Tensor, skip: Tensor | None = None,
                size: tuple[int, int] | None = None) -> Tensor:
        """``[B, C, h, w]`` (+ skip of the same shape) -> ``[B, C, *size]`` (default ``2h, 2w``)."""
        if skip is not None:
            path = path + self.resConfUnit1(skip)
        path = self.resConfUnit2(path)
        if size is None:
            path = F.interpolate(path, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            path = F.interpolate(path, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(path)


class DPTHead(nn.Module):
    """Reassemble four token maps at 1/4..1/32 scale, fuse them, regress one channel."""

    def __init__(self, config: DepthAnythingConfig) -> None:
        super().__init__()
        in_channels, features, out_channels = config.embed_dim, config.features, config.out_channels
        self.use_clstoken = config.use_clstoken
        self.patch_size = config.patch_size
        self.projects = nn.ModuleList(
            nn.Conv2d(in_channels, channels, kernel_size=1, stride=1, padding=0)
            for channels in out_channels)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
        ])
        if self.use_clstoken:
            self.readout_projects = nn.ModuleList(
                nn.Sequential(nn.Linear(2 * in_channels, in_channels), nn.GELU())
                for _ in out_channels)
        # `scratch` is a plain container in the official code (_make_scratch).
        self.scratch = nn.Module()
        for index, channels in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{index}_rn", nn.Conv2d(
                channels, features, kernel_size=3, stride=1, padding=1, bias=False))
        for index in range(1, 5):
            setattr(self.scratch, f"refinenet{index}", FeatureFusionBlock(features, config.use_bn))
        head_features_2 = 32  # fixed in the official head
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, stride=1,
                                              padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, head_features_2, kernel_size=3, stride=1, padding=1),
            nn.ReLU(True),
            nn.Conv2d(head_features_2, 1, kernel_size=1, stride=1, padding=0),
            nn.ReLU(True),
            nn.Identity(),
        )

    def forward(self, layer_tokens: list[tuple[Tensor, Tensor]], patch_h: int,
                patch_w: int) -> Tensor:
        """Four ``(tokens [B, h*w, D], cls [B, D])`` -> ``[B, 1, p*h, p*w]`` non-negative."""
        scratch = self.scratch
        maps = []
        for index, (tokens, cls_token) in enumerate(layer_tokens):
            if self.use_clstoken:
                readout = cls_token.unsqueeze(1).expand_as(tokens)
                tokens = self.readout_projects[index](torch.cat((tokens, readout), -1))
            batch, _, dim = tokens.shape
            feat = tokens.permute(0, 2, 1).reshape(batch, dim, patch_h, patch_w)
            maps.append(self.resize_layers[index](self.projects[index](feat)))
        layer_1 = scratch.layer1_rn(maps[0])
        layer_2 = scratch.layer2_rn(maps[1])
        layer_3 = scratch.layer3_rn(maps[2])
        layer_4 = scratch.layer4_rn(maps[3])
        path_4 = scratch.refinenet4(layer_4, size=layer_3.shape[2:])
        path_3 = scratch.refinenet3(path_4, layer_3, size=layer_2.shape[2:])
        path_2 = scratch.refinenet2(path_3, layer_2, size=layer_1.shape[2:])
        path_1 = scratch.refinenet1(path_2, layer_1)
        out = scratch.output_conv1(path_1)
        out_size = (patch_h * self.patch_size, patch_w * self.patch_size)
        out = F.interpolate(out, out_size, mode="bilinear", align_corners=True)
        return scratch.output_conv2(out)


class DepthAnythingV2(nn.Module):
    """The whole network: ``pretrained`` (DINOv2) + ``depth_head`` (DPT), official key names."""

    def __init__(self, config: DepthAnythingConfig) -> None:
        super().__init__()
        self.config = config
        self.pretrained = DinoVisionTransformer(config)
        self.depth_head = DPTHead(config)

    def forward(self, image: Tensor) -> Tensor:
        """Relative inverse depth of a normalised image.

        Args:
            image: ``[B, 3, H, W]`` ImageNet-normalised RGB; ``H`` and ``W`` multiples of 14.

        Returns:
            ``[B, H, W]`` non-negative relative inverse depth (larger = nearer).
        """
        height, width = image.shape[-2:]
        patch = self.config.patch_size
        if height % patch or width % patch:
            raise ValueError(f"input {height}x{width} is not a multiple of the patch size {patch}")
        layer_tokens = self.pretrained.get_intermediate_layers(
            image, self.config.intermediate_layers)
        disparity = self.depth_head(layer_tokens, height // patch, width // patch)
        return F.relu(disparity).squeeze(1)
