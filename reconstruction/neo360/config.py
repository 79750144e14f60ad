"""Configuration of the NeO 360 model (sizes, sampling, ablation switches)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from geometry.errors import UserError


@dataclass
class NeO360Config:
    """The NeO 360 network (Irshad et al., ICCV 2023) at a chosen size.

    Scene frame of the model (the *field frame*): the foreground lies in the unit sphere,
    the cameras around it (distance about :attr:`camera_radius`), the background beyond.
    """

    backbone: Literal["tiny", "resnet18", "resnet34"] = "tiny"
    """Image encoder: ``resnet18``/``resnet34`` (torchvision layout, so a local ImageNet
    checkpoint loads) or ``tiny`` (a small ResNet for CPU training)."""
    backbone_widths: tuple[int, ...] = (32, 48, 64)
    """tiny: channels of its stages (one basic block each)."""
    feature_dim: int = 64
    """Channels of the pixel-aligned feature maps (the stages upsampled and fused)."""
    grid: int = 24
    """Voxels per side of the feature volume over the contracted scene (``[-2, 2]^3``)."""
    triplane_norm: Literal["l2", "linf"] = "linf"
    """Norm of the scene contraction that places points on the voxel grid and triplanes:
    ``linf`` (Zip-NeRF's box) fills the whole cube, the unit box (foreground) taking the
    inner half of each axis; ``l2`` (mip-NeRF 360's ball) leaves the cube's corners (57 %
    of the voxels) unused and gives the unit sphere only 6 % of the voxels."""
    voxel_dim: int = 32
    """Channels of the voxel and triplane features."""
    mlp_hidden: int = 64
    """Width of the projection, pooling and decoder MLPs."""
    pos_freqs: int = 6
    """Positional-encoding frequencies of positions."""
    dir_freqs: int = 2
    """Positional-encoding frequencies of view directions."""
    refine_layers: int = 2
    """Conv layers refining the triplanes."""
    plane_upsample: int = 1
    """The triplanes are upsampled (bilinear) by this factor before the refining
    convolutions, which can then sharpen them (``grid * plane_upsample`` texels a side)."""
    triplane_reduce: Literal["sum", "concat"] = "sum"
    """How the decoder combines a point's three plane reads: ``sum`` (``voxel_dim``
    features) or ``concat`` (``3 voxel_dim``)."""
    voxel_rgb: bool = False
    """Give the voxel projection MLP the source colour where a voxel projects (with the
    image features)."""
    num_fg: int = 24
    """Coarse samples inside the unit sphere (uniform in distance)."""
    num_bg: int = 16
    """Coarse samples beyond it (uniform in disparity, to :attr:`far`)."""
    num_fine: int = 32
    """Fine (importance) samples; 0: no fine pass."""
    near: float = 0.1
    far: float = 100.0
    camera_radius: float = 2.0
    """Distance of the training cameras from the scene centre in the field frame; user
    scenes are scaled to it."""
    use_triplane: bool = True
    """Ablation switch: read triplane features in the decoder."""
    use_pixel: bool = True
    """Ablation switch: read pixel-aligned image features in the decoder (off with the
    triplanes on: the triplane-only ablation; on with them off: the pixelNeRF-like
    baseline)."""

    def __post_init__(self) -> None:
        self.backbone_widths = tuple(int(w) for w in self.backbone_widths)
        if self.triplane_norm not in ("l2", "linf"):
            raise UserError(f"triplane_norm must be l2 or linf, not {self.triplane_norm!r}.")
        if self.triplane_reduce not in ("sum", "concat"):
            raise UserError("triplane_reduce must be sum or concat, not "
                            f"{self.triplane_reduce!r}.")
        if self.plane_upsample < 1:
            raise UserError(f"plane_upsample must be at least 1, not {self.plane_upsample}.")
        if not (self.use_triplane or self.use_pixel):
            raise UserError("NeO 360 needs triplane or pixel-aligned features (or both).")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["backbone_widths"] = list(self.backbone_widths)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> NeO360Config:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"unknown NeO 360 config entries {sorted(unknown)}; the "
                            "checkpoint comes from another version.")
        return cls(**data)


def tiny_config(**overrides) -> NeO360Config:
    """A very small model for tests."""
    base = dict(backbone_widths=(8, 16), feature_dim=16, grid=8, voxel_dim=8, mlp_hidden=16,
                pos_freqs=2, dir_freqs=1, refine_layers=1, num_fg=8, num_bg=4, num_fine=8)
    base.update(overrides)
    return NeO360Config(**base)




@dataclass
class NeO360Options:
    """Options of ``recon fit --method neo360``."""

    checkpoint: Path | None = None
    """A NeO 360 checkpoint folder (``recon neo360 train --out``); required."""
    finetune_steps: int = 0
    """Fine-tune the network on the photos for this many steps (0: none)."""
    finetune_lr: float = 2e-4
    """Learning rate of the fine-tuning."""
    finetune_rays: int = 512
    """Rays per fine-tuning step."""
