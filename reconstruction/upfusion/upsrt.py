"""UpSRT: the unposed scene representation transformer of UpFusion (Nagoor Kani et al., 2024).

Inputs: ``V`` photos (1-6) of one object, unposed. Each photo gives ``P`` patch features of a
DINOv2 encoder (the *keys* of one attention layer, as the official ``DINOv2KeyExtractor``);
each patch token is concatenated with the harmonic encoding of its Plücker ray from an
identity camera, of its patch id and of its camera id (first view or another), projected
(``linear_scene``) and encoded jointly by a transformer (``scene_encoder``): the *set-latent
tokens* ``[V*P, D]`` (SLT). A query ray (Plücker, in the first view's reference frame; see
:mod:`.rays`) is encoded and projected (``linear_query_pixel_rays``) and cross-attends to the
SLT through the ``ray_decoder`` (cross-attention and MLP only: query rays are independent);
``rgb_mlp`` maps the result to a colour. The decoder output before ``rgb_mlp`` is the dense
feature (DF) UpFusion's ControlNet is conditioned on.

Parameter names are those of the official ``upsrt/model/model.py`` and
``upsrt/model/transformer.py`` (``attn_type="xformers"``: bias-free ``to_q/k/v/out``), so
the released ``upsrt.pt`` loads through :func:`.official.load_official_upsrt`; the encoder is
``encoder.*`` (the torch-hub DINOv2 names of :mod:`reconstruction.depth.depth_anything`).

Deviations: query rays go through pixel centres (the official grid spans the image's edge
pixels, ``linspace(1, -1, W)`` in NDC: a sub-pixel difference); the ``tiny`` preset trains
its encoder with the rest (the official DINOv2 is frozen and pretrained), reads 32 px photos
(16 patches a view) and is the *posed* variant (``input_rays="relative"``: input patch rays
from the input cameras in the first view's frame, as SRT's). Unposed, a model must learn to
place the other views from their pixels before they can inform a query ray; the tiny
identity-ray model trained 20 CPU-minutes did not (held-out PSNR 16.30 / 16.33 / 16.34 dB
from 1 / 3 / 6 views). ``recon fit --method upfusion`` places unposed photos for a posed
model by its pose search (:func:`~.method.search_poses`, one view after another). Neither
changes a parameter: the official key map is the same for both ray settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geometry.cameras import Cameras
from reconstruction.depth.depth_anything import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DepthAnythingConfig,
    DinoVisionTransformer,
)
from reconstruction.upfusion import rays as R


@dataclass(frozen=True)
class UpSRTConfig:
    """Architecture of an UpSRT (defaults: the official ``configs/inference.yaml``)."""

    encoder_dim: int = 768
    """Width of the DINOv2 encoder (``dinov2_vitb14``: 768); the patch feature width."""
    encoder_depth: int = 12
    """Blocks of the encoder (only those up to ``encoder_layer`` run)."""
    encoder_heads: int = 12
    encoder_patch: int = 14
    encoder_pos_size: int = 518
    """Side (pixels) of the encoder's trained position grid (torch-hub DINOv2: 518)."""
    encoder_layer: int = 8
    """The block whose attention *keys* are the patch features (``blocks.8.attn.qkv``)."""
    encoder_size: int = 224
    """Input photos are resized to this square before the encoder (official: 224, giving
    16 x 16 patches of 14 px)."""
    train_encoder: bool = False
    """Train the encoder with the rest (tiny models from scratch); the official one is a
    frozen pretrained DINOv2."""
    transformer_dim: int = 768
    num_heads: int = 12
    ffn_dim: int = 1024
    """Hidden width of each transformer block's MLP (``dim_feedforward``)."""
    num_encoder_layers: int = 8
    num_decoder_layers: int = 4
    dropout: float = 0.1
    """Dropout of the transformer blocks while training (official: torch's default 0.1)."""
    num_freqs: int = 15
    start_freq: int = -6
    """Harmonic encodings use ``pi * 2^k`` for ``k = start_freq .. start_freq + num_freqs - 1``."""
    rgb_hidden: tuple[int, int] = (256, 64)
    """Widths of ``rgb_mlp``'s two hidden layers."""
    input_rays: Literal["identity", "relative"] = "identity"
    """identity: input patch rays from identity cameras (UpFusion's unposed setting, the
    official one); relative: from the known input cameras in the reference frame (a posed
    variant: the same weights do not carry over)."""
    num_pixel_queries: int = 7168
    """Query rays decoded per chunk when rendering (memory bound)."""

    @property
    def num_patches_side(self) -> int:
        return self.encoder_size // self.encoder_patch

    @property
    def num_patches(self) -> int:
        return self.num_patches_side ** 2

    @property
    def ray_dim(self) -> int:
        """Width of a ray's harmonic encoding: ``2 * F * 6``."""
        return 12 * self.num_freqs

    def __post_init__(self) -> None:
        if self.transformer_dim % self.num_heads:
            raise ValueError(f"transformer_dim {self.transformer_dim} is not divisible by "
                             f"{self.num_heads} heads")
        if self.encoder_dim % self.encoder_heads:
            raise ValueError(f"encoder_dim {self.encoder_dim} is not divisible by "
                             f"{self.encoder_heads} heads")
        if not 0 <= self.encoder_layer < self.encoder_depth:
            raise ValueError(f"encoder_layer {self.encoder_layer} outside "
                             f"0..{self.encoder_depth - 1}")
        if self.encoder_size % self.encoder_patch:
            raise ValueError(f"encoder_size {self.encoder_size} is not a multiple of the patch "
                             f"size {self.encoder_patch}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> UpSRTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "rgb_hidden" in values:
            values["rgb_hidden"] = tuple(values["rgb_hidden"])
        return cls(**values)


#: Presets: ``official`` (the released model's architecture), ``tiny`` (CPU training at
#: 64 px, encoder trained from scratch), ``test`` (unit tests at 16-32 px).
UPSRT_PRESETS: dict[str, UpSRTConfig] = {
    "official": UpSRTConfig(),
    "tiny": UpSRTConfig(encoder_dim=96, encoder_depth=3, encoder_heads=3, encoder_patch=8,
                        encoder_pos_size=32, encoder_layer=2, encoder_size=32,
                        train_encoder=True, transformer_dim=128, num_heads=4, ffn_dim=256,
                        num_encoder_layers=3, num_decoder_layers=2, dropout=0.0,
                        num_freqs=8, start_freq=-3, rgb_hidden=(64, 32),
                        input_rays="relative", num_pixel_queries=4096),
    "test": UpSRTConfig(encoder_dim=32, encoder_depth=2, encoder_heads=2, encoder_patch=8,
                        encoder_pos_size=32, encoder_layer=1, encoder_size=32,
                        train_encoder=True, transformer_dim=32, num_heads=2, ffn_dim=64,
                        num_encoder_layers=2, num_decoder_layers=1, dropout=0.0,
                        num_freqs=4, start_freq=-2, rgb_hidden=(32, 16),
                        num_pixel_queries=1024),
}


def preset(name: str, **overrides) -> UpSRTConfig:
    """The configuration of preset ``name`` (:data:`UPSRT_PRESETS`)."""
    if name not in UPSRT_PRESETS:
        raise KeyError(f"unknown UpSRT preset {name!r}; choose one of {', '.join(UPSRT_PRESETS)}")
    return dataclasses.replace(UPSRT_PRESETS[name], **overrides)


class KeyFeatureEncoder(nn.Module):
    """DINOv2 keys of one block's attention (the official ``DINOv2KeyExtractor``).

    ``forward([B, 3, S, S] normalised images) -> [B, P, encoder_dim]``: blocks before
    ``layer`` run in full; block ``layer``'s ``norm1`` and ``attn.qkv`` give the keys
    (the middle third of ``qkv``), class token dropped.
    """

    def __init__(self, config: UpSRTConfig) -> None:
        super().__init__()
        self.layer = config.encoder_layer
        self.vit = DinoVisionTransformerLite(config)

    def forward(self, images: Tensor) -> Tensor:
        vit = self.vit
        tokens = vit.prepare_tokens(images)
        for block in vit.blocks[:self.layer]:
            tokens = block(tokens)
        block = vit.blocks[self.layer]
        qkv = block.attn.qkv(block.norm1(tokens))
        dim = qkv.shape[-1] // 3
        return qkv[:, 1:, dim:2 * dim]


class DinoVisionTransformerLite(DinoVisionTransformer):
    """The DINOv2 ViT, only the blocks up to the key layer (later ones are never run, so a
    trained-from-scratch encoder has no unused parameters; official weights for the later
    blocks are skipped by the loader)."""

    def __init__(self, config: UpSRTConfig) -> None:
        cfg = DepthAnythingConfig(
            encoder="upsrt", embed_dim=config.encoder_dim, depth=max(4, config.encoder_depth),
            num_heads=config.encoder_heads, patch_size=config.encoder_patch,
            img_size=config.encoder_pos_size, intermediate_layers=(0, 1, 2, 3))
        super().__init__(cfg)
        self.blocks = self.blocks[:config.encoder_layer + 1]
        del self.norm  # the final norm follows the last block: never used for keys
        del self.mask_token
        key_block = self.blocks[config.encoder_layer]  # only norm1 and attn.qkv are read
        for name in ("ls1", "norm2", "mlp", "ls2"):
            delattr(key_block, name)
        del key_block.attn.proj


# ----------------------------------------------------------------------------------------
# Transformer blocks (official upsrt/model/transformer.py, attn_type "xformers")
# ----------------------------------------------------------------------------------------


class _Attention(nn.Module):
    """Bias-free multi-head attention with separate ``to_q/to_k/to_v/to_out``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def attend(self, query: Tensor, memory: Tensor) -> Tensor:
        """``[B, N, D]`` queries attend to ``[B, M, D]`` memory -> ``[B, N, D]``."""
        b, n, d = query.shape
        m = memory.shape[1]
        q = self.to_q(query).reshape(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(memory).reshape(b, m, self.heads, -1).transpose(1, 2)
        v = self.to_v(memory).reshape(b, m, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # xformers' default 1/sqrt(d) scale
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(_Attention):
    """Pre-norm block: attention (self or cross) then a GELU MLP, both residual."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__(dim, heads)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor | None = None) -> Tensor:
        """``x [B, N, D]``; ``memory [B, M, D]`` (decoder: cross-attention) or None (self)."""
        normed = self.norm1(x)
        x = x + self.dropout1(self.attend(normed, normed if memory is None else memory))
        hidden = self.dropout(F.gelu(self.linear1(self.norm2(x))))
        return x + self.dropout2(self.linear2(hidden))


class _Stack(nn.Module):
    def __init__(self, blocks: list[TransformerBlock]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(blocks)


class SceneEncoder(nn.Module):
    """``scene_encoder.transformer_encoder.layers.{i}``: self-attention over all tokens."""

    def __init__(self, config: UpSRTConfig) -> None:
        super().__init__()
        self.transformer_encoder = _Stack([
            TransformerBlock(config.transformer_dim, config.num_heads, config.ffn_dim,
                             config.dropout) for _ in range(config.num_encoder_layers)])

    def forward(self, tokens: Tensor) -> Tensor:  # [B, V*P, D]
        for layer in self.transformer_encoder.layers:
            tokens = layer(tokens)
        return tokens


class RayDecoder(nn.Module):
    """``ray_decoder``: query tokens cross-attend to the set latent, then ``rgb_mlp``."""

    def __init__(self, config: UpSRTConfig) -> None:
        super().__init__()
        self.transformer_decoder = _Stack([
            TransformerBlock(config.transformer_dim, config.num_heads, config.ffn_dim,
                             config.dropout) for _ in range(config.num_decoder_layers)])
        h1, h2 = config.rgb_hidden
        self.rgb_mlp = nn.Sequential(
            nn.Linear(config.transformer_dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
            nn.Linear(h2, 3), nn.Sigmoid())

    def features(self, queries: Tensor, slt: Tensor) -> Tensor:
        """``[B, N, D]`` query tokens -> ``[B, N, D]`` decoded features (the DF)."""
        for layer in self.transformer_decoder.layers:
            queries = layer(queries, slt)
        return queries


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------


@dataclass
class ViewSet:
    """The inputs of one scene: photos and their cameras (first = reference view)."""

    images: Tensor  # [V, H, W, 3] float in [0, 1]
    cameras: Cameras  # [V] OpenCV; only K is used with input_rays="identity"
    T_ref_world: Tensor = field(default_factory=lambda: torch.eye(4, dtype=torch.float64))
    """``[4, 4]`` the reference frame (:func:`.rays.reference_frame`)."""


class UpSRT(nn.Module):
    """Photos -> set-latent tokens -> colours (and DF features) of query rays (module doc)."""

    def __init__(self, config: UpSRTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = KeyFeatureEncoder(c)
        if not c.train_encoder:
            self.encoder.requires_grad_(False)
        self.scene_encoder = SceneEncoder(c)
        self.ray_decoder = RayDecoder(c)
        self.linear_scene = nn.Linear(c.encoder_dim + c.ray_dim + 4 * c.num_freqs,
                                      c.transformer_dim)
        self.linear_query_pixel_rays = nn.Linear(c.ray_dim, c.transformer_dim)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD), persistent=False)

    def train(self, mode: bool = True) -> UpSRT:
        super().train(mode)
        if not self.config.train_encoder:
            self.encoder.eval()  # frozen: no dropout or statistics to update
        return self

    # -------------------------------------------------------------------- encoder side

    def image_features(self, images: Tensor) -> Tensor:
        """``[B, V, H, W, 3]`` in [0, 1] -> ``[B, V, P, encoder_dim]`` patch keys."""
        b, v = images.shape[:2]
        x = images.reshape(b * v, *images.shape[2:]).permute(0, 3, 1, 2).float()
        size = self.config.encoder_size
        if x.shape[-2:] != (size, size):
            # torchvision's Resize(224, BICUBIC) on tensors (no antialias), as the official
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        x = (x - self.pixel_mean[:, None, None]) / self.pixel_std[:, None, None]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.train_encoder):
            feats = self.encoder(x)
        return feats.reshape(b, v, *feats.shape[1:])

    def encode(self, images: Tensor, K: Tensor, image_size: tuple[int, int],
               T_ref_world: Tensor | None = None, T_world_cam: Tensor | None = None) -> Tensor:
        """Set-latent tokens of a batch of view sets.

        Args:
            images: ``[B, V, H, W, 3]`` photos in [0, 1] (any size; resized for the encoder).
            K: ``[B, V, 3, 3]`` intrinsics in pixels of ``image_size``.
            image_size: ``(width, height)`` the intrinsics refer to.
            T_ref_world, T_world_cam: ``[B, 4, 4]`` and ``[B, V, 4, 4]``, only for
                ``input_rays="relative"``.

        Returns:
            ``[B, V*P, transformer_dim]`` the SLT.
        """
        c = self.config
        b, v = images.shape[:2]
        feats = self.image_features(images)
        side = c.num_patches_side
        width, height = image_size
        rays = R.input_patch_rays(K.reshape(b * v, 3, 3).double(), width, height, side, side)
        rays = rays.reshape(b, v, -1, 6)
        if c.input_rays == "relative":
            if T_ref_world is None or T_world_cam is None:
                raise ValueError("input_rays='relative' needs T_ref_world and T_world_cam")
            rays = self._relative_patch_rays(K, image_size, T_ref_world, T_world_cam)
        ray_enc = R.harmonic(rays.float().to(feats.device), c.num_freqs, c.start_freq)
        patch_ids = R.patch_id_encoding(v, c.num_patches, c.num_freqs, c.start_freq)
        camera_ids = R.camera_id_encoding(v, c.num_patches, c.num_freqs, c.start_freq)
        ids = torch.cat((patch_ids, camera_ids), -1).to(feats.device)[None].expand(b, -1, -1, -1)
        tokens = self.linear_scene(torch.cat((feats, ray_enc, ids), -1))  # [B, V, P, D]
        return self.scene_encoder(tokens.reshape(b, v * c.num_patches, -1))

    def _relative_patch_rays(self, K: Tensor, image_size: tuple[int, int], T_ref_world: Tensor,
                             T_world_cam: Tensor) -> Tensor:
        side = self.config.num_patches_side
        width, height = image_size
        uv = R.patch_corner_pixels(width, height, side, side).to(K.device)
        out = []
        for k in range(len(K)):
            cams = Cameras(K=K[k].double(), T_world_cam=T_world_cam[k].double(), width=width,
                           height=height)
            out.append(R.query_rays(cams, T_ref_world[k], uv))
        return torch.stack(out)

    # -------------------------------------------------------------------- decoder side

    def decode(self, slt: Tensor, rays: Tensor, output: Literal["rgb", "features"] = "rgb"
               ) -> Tensor:
        """Query rays -> colours or DF features, in chunks of ``num_pixel_queries``.

        Args:
            slt: ``[B, T, D]`` set-latent tokens.
            rays: ``[B, N, 6]`` Plücker query rays in the reference frame.
            output: ``rgb`` (``[B, N, 3]`` in [0, 1]) or ``features`` (``[B, N, D]``, the
                official ``pre_rgb_mlp_features``).
        """
        c = self.config
        outs = []
        for start in range(0, rays.shape[1], c.num_pixel_queries):
            chunk = rays[:, start:start + c.num_pixel_queries].float().to(slt.device)
            queries = self.linear_query_pixel_rays(R.harmonic(chunk, c.num_freqs, c.start_freq))
            feats = self.ray_decoder.features(queries, slt)
            outs.append(feats if output == "features" else self.ray_decoder.rgb_mlp(feats))
        return torch.cat(outs, 1)

    def forward(self, images: Tensor, K: Tensor, image_size: tuple[int, int], rays: Tensor,
                T_ref_world: Tensor | None = None, T_world_cam: Tensor | None = None
                ) -> Tensor:
        """``[B, N, 3]`` colours of query rays ``[B, N, 6]`` given view sets (see
        :meth:`encode`)."""
        slt = self.encode(images, K, image_size, T_ref_world, T_world_cam)
        return self.decode(slt, rays)

    # -------------------------------------------------------------------- convenience

    def encode_views(self, views: ViewSet) -> Tensor:
        """``[1, V*P, D]`` SLT of one :class:`ViewSet`."""
        device = self.linear_scene.weight.device
        cams = views.cameras
        width, height = int(cams.width.reshape(-1)[0]), int(cams.height.reshape(-1)[0])
        return self.encode(views.images[None].to(device), cams.K[None].to(device),
                           (width, height), views.T_ref_world[None].to(device),
                           cams.T_world_cam[None].to(device))

    @torch.no_grad()
    def render(self, views: ViewSet, cameras: Cameras, output: Literal["rgb", "features"] = "rgb",
               slt: Tensor | None = None) -> Tensor:
        """Images of query ``cameras`` (one image size): ``[C, H, W, 3]`` colours in [0, 1]
        or ``[C, H, W, D]`` DF features."""
        slt = self.encode_views(views) if slt is None else slt
        width, height = int(cameras.width.reshape(-1)[0]), int(cameras.height.reshape(-1)[0])
        rays = R.query_rays(cameras, views.T_ref_world)  # [C, H*W, 6]
        out = [self.decode(slt, rays[k:k + 1], output) for k in range(len(rays))]
        return torch.cat(out).reshape(len(rays), height, width, -1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
