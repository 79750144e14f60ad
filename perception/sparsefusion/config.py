"""Typed configuration of SparseFusion, and the two presets.

``paper_preset()`` follows the released ResNet-50 nuScenes configuration of SparseFusion
(ICCV 2023): 200 LiDAR + 200 camera queries, hidden size 128, 8 heads, one decoder layer
per branch and one fusion layer, voxels of 0.075 m over +-54 m and z in [-5, 3] m,
ResNet-50 + FPN on six 900x1600 images. ``small_preset()`` keeps every component and
shrinks the sizes so that it trains on two CPU cores on the synthetic dataset in minutes.

Everything here is plain data (no torch import) so the CLI's ``--help`` stays fast and a
checkpoint's JSON config is just ``dataclasses.asdict`` of :class:`SparseFusionConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Modality = Literal["lidar", "camera", "fusion"]


@dataclass
class VoxelConfig:
    """LiDAR input: sweeps, range and voxel grid (metres, LiDAR frame)."""

    voxel_size: tuple[float, float, float] = (0.075, 0.075, 0.2)
    """Voxel edge along x, y, z."""
    point_range: tuple[float, float, float, float, float, float] = (-54.0, -54.0, -5.0,
                                                                    54.0, 54.0, 3.0)
    """(x0, y0, z0, x1, y1, z1): points outside are dropped; boxes outside are ignored."""
    max_points: int = 10
    """Points kept per voxel (their mean is the voxel feature)."""
    max_voxels: int = 120000
    """Voxels kept per sample (first come)."""
    sweeps: int = 10
    """LiDAR sweeps per sample, the keyframe included."""


@dataclass
class LidarConfig:
    """Sparse 3D encoder (spconv), BEV neck and TransFusion-L query initialisation."""

    encoder_channels: tuple[int, ...] = (16, 32, 64, 128)
    """Channels of the sparse stages; each stage after the first halves x, y and z."""
    encoder_blocks: int = 2
    """Submanifold convolutions per stage."""
    encoder_out: int = 128
    """Channels of the last sparse convolution (which also halves z) before BEV."""
    neck_channels: tuple[int, int] = (128, 256)
    """Channels of the two SECOND blocks (stride 1 and 2 on the BEV map)."""
    neck_layers: tuple[int, int] = (5, 5)
    """3x3 convolutions per neck block."""
    neck_out: int = 256
    """Channels of each upsampled neck output (the BEV map has twice as many)."""
    num_queries: int = 200
    """LiDAR candidates (top-k of the BEV heatmap)."""
    nms_kernel: int = 3
    """Local-maximum window of the heatmap (1: none)."""


@dataclass
class CameraConfig:
    """Image backbone + FPN and the per-view deformable-attention decoder."""

    image_size: tuple[int, int] = (1600, 900)
    """(width, height) the images are resized to before the backbone."""
    resnet_depth: Literal[18, 34, 50, 101] = 50
    """ResNet architecture (torchvision layout and key names)."""
    resnet_width: int = 64
    """Channels of the ResNet stem (64 is torchvision's; smaller widths are for CPU)."""
    norm_eval: bool = False
    """Keep the backbone's batch norms frozen (statistics and affine), as with pretrained
    weights."""
    checkpoint_backbone: bool = False
    """Recompute backbone activations in backward (torch.utils.checkpoint, block by block)
    to save memory."""
    frozen_stages: int = -1
    """Backbone stages without training (mmdet's meaning: -1 none, 0 the stem, k the stem
    and layers 1..k)."""
    num_levels: int = 4
    """Feature levels of the FPN (strides 8, 16, 32 and, with 4, an extra stride 64)."""
    num_points: int = 4
    """Sampling points per head and level of the deformable attention."""
    num_queries: int = 200
    """Camera candidates over all views (top-k of the per-view heatmaps)."""
    max_depth: float = 60.0
    """Depths are predicted in (0, max_depth] metres."""
    backbone_weights: str | None = None
    """torchvision ResNet checkpoint (.pth/.safetensors) to initialise from; random if None."""


@dataclass
class TransferConfig:
    """The two transfer modules."""

    semantic: bool = True
    """Semantic transfer: BEV cells attend to image features at their projections."""
    geometric: bool = True
    """Geometric transfer: LiDAR depth projected into each view, fused into image features."""
    semantic_heights: tuple[float, ...] = (-1.5, -0.5, 0.5)
    """Heights (LiDAR z, metres) of the points sampled above each BEV cell."""


@dataclass
class LossConfig:
    """Loss weights (TransFusion/SparseFusion defaults)."""

    cls_weight: float = 1.0
    bbox_weight: float = 0.25
    heatmap_weight: float = 1.0
    camera_weight: float = 1.0
    """Weight of the camera branch's own losses (camera-frame candidates)."""
    code_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
    """Per entry of the box code (x, y, z, log w, log l, log h, sin, cos, vx, vy)."""
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    match_cls_weight: float = 0.15
    match_center_weight: float = 0.25


@dataclass
class SparseFusionConfig:
    """The whole model."""

    modality: Modality = "fusion"
    """lidar: LiDAR branch only; camera: camera branch only; fusion: both."""
    hidden: int = 128
    heads: int = 8
    ffn: int = 256
    dropout: float = 0.1
    num_classes: int = 10
    voxel: VoxelConfig = field(default_factory=VoxelConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    score_threshold: float = 0.0
    """Detections below this score are not reported."""
    max_detections: int = 300

    @property
    def use_lidar(self) -> bool:
        return self.modality in ("lidar", "fusion")

    @property
    def use_camera(self) -> bool:
        return self.modality in ("camera", "fusion")

    @property
    def bev_stride(self) -> int:
        """Voxels per BEV cell along x and y."""
        return 2 ** (len(self.lidar.encoder_channels) - 1)

    @property
    def bev_shape(self) -> tuple[int, int]:
        """``(H, W)`` = cells along (y, x) of the BEV map."""
        from geometry.ops.voxelize import grid_size

        gx, gy, _ = grid_size(self.voxel.voxel_size, self.voxel.point_range)
        stride = self.bev_stride
        return -(-gy // stride), -(-gx // stride)


def paper_preset(modality: Modality = "fusion") -> SparseFusionConfig:
    """The released nuScenes ResNet-50 configuration (sizes as in the paper), with mmdet's
    usual ResNet-50 training settings (frozen stem and first stage, frozen batch norms:
    applied when pretrained weights are given) and block-wise recomputation so one
    six-camera sample trains within 24 GB on a CPU."""
    config = SparseFusionConfig(modality=modality)
    config.camera.norm_eval = True
    config.camera.frozen_stages = 1
    config.camera.checkpoint_backbone = True
    return config


def small_preset(modality: Modality = "fusion") -> SparseFusionConfig:
    """Every component, small enough to train on two (shared) CPU cores on the synthetic
    dataset: 0.8 m voxels over +-48 m (a 60x60 BEV map of 1.6 m cells), 3 sweeps,
    a quarter-width ResNet-18 on 256x144 images, 60 + 40 queries, hidden size 64."""
    return SparseFusionConfig(
        modality=modality,
        hidden=64,
        heads=4,
        ffn=128,
        dropout=0.0,
        voxel=VoxelConfig(voxel_size=(0.8, 0.8, 0.5),
                          point_range=(-48.0, -48.0, -4.0, 48.0, 48.0, 2.0),
                          max_points=5, max_voxels=30000, sweeps=3),
        lidar=LidarConfig(encoder_channels=(16, 32), encoder_blocks=1, encoder_out=32,
                          neck_channels=(64, 96), neck_layers=(1, 1), neck_out=48,
                          num_queries=60, nms_kernel=3),
        camera=CameraConfig(image_size=(256, 144), resnet_depth=18, resnet_width=16,
                            num_levels=3, num_points=4, num_queries=40),
        transfer=TransferConfig(),
    )


PRESETS = {"paper": paper_preset, "small": small_preset}


def config_to_dict(config: SparseFusionConfig) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists)."""
    return dataclasses.asdict(config)


def _build(cls: type, data: dict[str, Any]) -> Any:
    kwargs = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    for name, value in data.items():
        default = getattr(cls(), name) if name not in ("voxel", "lidar", "camera", "transfer",
                                                       "loss") else None
        sub = {"voxel": VoxelConfig, "lidar": LidarConfig, "camera": CameraConfig,
               "transfer": TransferConfig, "loss": LossConfig}.get(name)
        if sub is not None and cls is SparseFusionConfig:
            kwargs[name] = _build(sub, value)
        elif isinstance(default, tuple) or isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> SparseFusionConfig:
    """Inverse of :func:`config_to_dict` (a checkpoint's JSON; nothing is evaluated)."""
    return _build(SparseFusionConfig, data)
