"""LiDAR branch: voxel features, the sparse 3D encoder (spconv), the BEV neck.

The encoder follows mmdet3d's ``SparseEncoder`` (SECOND/CenterPoint/TransFusion): a
submanifold input convolution, stages of submanifold convolutions separated by strided
sparse convolutions (each halving x, y and z), and a last sparse convolution that halves
z; the result is made dense and z is folded into channels: a BEV map at stride
``2 ** (stages - 1)`` voxels. The neck is SECOND + SECONDFPN (two blocks at strides 1 and
2 of the BEV map, upsampled back and concatenated).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from geometry.ops.sparse_voxel import voxel_scatter
from geometry.ops.voxelize import grid_size
from perception.sparsefusion.config import SparseFusionConfig


@functools.cache
def spconv_module():
    """``spconv.pytorch``, patched for CPU-only torch builds.

    spconv 2.3.x asks ``torch.cuda.current_stream()`` in the backward pass of sparse
    convolutions even for CPU tensors, which fails on a CPU-only torch ("Torch not
    compiled with CUDA enabled"); the stream is unused on the CPU path, so a 0 stands in.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import spconv.pytorch as spconv
        from spconv.pytorch import ops
    # spconv's dense() indexes with a list (deprecated in torch 2.9, still correct here).
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence",
                            category=UserWarning)

    original = ops.get_current_stream
    if not getattr(original, "_sparseview_patched", False):
        def get_current_stream() -> int:
            return original() if torch.cuda.is_available() else 0

        get_current_stream._sparseview_patched = True  # type: ignore[attr-defined]
        ops.get_current_stream = get_current_stream
    return spconv


def voxelize_batch(points: list[Tensor], config: SparseFusionConfig
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Voxelize each sample and average the points of each voxel (the sparse-voxel scatter
    op: the first ``max_points`` points of each of the first ``max_voxels`` voxels, as mmcv's
    hard voxelization keeps them, then their mean).

    Args:
        points: per sample ``[N_i, C]`` (x, y, z, intensity, time lag) in the LiDAR frame.

    Returns:
        features ``[M, C]`` (mean of each voxel's points), coords ``[M, 4]`` int32
        ``(batch, z, y, x)``, and the number of voxels per sample ``[B]``.
    """
    vc = config.voxel
    feats, coords, counts = [], [], []
    for b, pts in enumerate(points):
        scatter = voxel_scatter(pts, None, vc.voxel_size, vc.point_range, vc.max_points,
                                vc.max_voxels)
        coord = scatter.coords.flip(1)  # (x, y, z) -> spconv's (z, y, x)
        feats.append(scatter.mean)
        batch_column = torch.full((coord.shape[0], 1), b, dtype=torch.int32, device=coord.device)
        coords.append(torch.cat([batch_column, coord], dim=1))
        counts.append(coord.shape[0])
    return (torch.cat(feats), torch.cat(coords),
            torch.tensor(counts, device=points[0].device if points else None))


class SparseEncoder(nn.Module):
    """Sparse 3D convolutions over voxels -> dense BEV map ``[B, out * D', H, W]``."""

    def __init__(self, config: SparseFusionConfig, in_channels: int = 5) -> None:
        super().__init__()
        spconv = spconv_module()
        lc = config.lidar
        gx, gy, gz = grid_size(config.voxel.voxel_size, config.voxel.point_range)
        self.sparse_shape = [gz, gy, gx]

        def block(cin: int, cout: int, conv: nn.Module) -> nn.Module:
            return spconv.SparseSequential(conv, nn.BatchNorm1d(cout, eps=1e-3, momentum=0.01),
                                           nn.ReLU())

        channels = lc.encoder_channels
        layers = [block(in_channels, channels[0],
                        spconv.SubMConv3d(in_channels, channels[0], 3, padding=1, bias=False,
                                          indice_key="subm0"))]
        prev = channels[0]
        z = gz
        for stage, ch in enumerate(channels):
            if stage > 0:
                layers.append(block(prev, ch, spconv.SparseConv3d(
                    prev, ch, 3, stride=2, padding=1, bias=False, indice_key=f"down{stage}")))
                z = (z + 2 - 3) // 2 + 1
            for _ in range(lc.encoder_blocks):
                layers.append(block(ch, ch, spconv.SubMConv3d(
                    ch, ch, 3, padding=1, bias=False, indice_key=f"subm{stage}")))
            prev = ch
        layers.append(block(prev, lc.encoder_out, spconv.SparseConv3d(
            prev, lc.encoder_out, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False,
            indice_key="out")))
        self.net = spconv.SparseSequential(*layers)
        self.out_depth = (z - 3) // 2 + 1
        if self.out_depth < 1:
            raise ValueError("the z range holds too few voxels for the encoder's strides")
        self.out_channels = lc.encoder_out * self.out_depth

    def forward(self, features: Tensor, coords: Tensor, batch_size: int) -> Tensor:
        spconv = spconv_module()
        x = spconv.SparseConvTensor(features, coords.int(), self.sparse_shape, batch_size)
        dense = self.net(x).dense()  # [B, C, D, H, W]
        b, c, d, h, w = dense.shape
        return dense.reshape(b, c * d, h, w)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)]


class BEVNeck(nn.Module):
    """SECOND backbone (two blocks, strides 1 and 2) + SECONDFPN (upsample, concatenate)."""

    def __init__(self, in_channels: int, config: SparseFusionConfig) -> None:
        super().__init__()
        lc = config.lidar
        c1, c2 = lc.neck_channels
        l1, l2 = lc.neck_layers
        block1 = _conv_bn(in_channels, c1)
        for _ in range(l1):
            block1 += _conv_bn(c1, c1)
        block2 = _conv_bn(c1, c2, stride=2)
        for _ in range(l2):
            block2 += _conv_bn(c2, c2)
        self.block1, self.block2 = nn.Sequential(*block1), nn.Sequential(*block2)
        self.up1 = nn.Sequential(nn.Conv2d(c1, lc.neck_out, 1, bias=False),
                                 nn.BatchNorm2d(lc.neck_out, eps=1e-3, momentum=0.01),
                                 nn.ReLU(inplace=True))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(c2, lc.neck_out, 2, 2, bias=False),
                                 nn.BatchNorm2d(lc.neck_out, eps=1e-3, momentum=0.01),
                                 nn.ReLU(inplace=True))
        self.out_channels = 2 * lc.neck_out

    def forward(self, bev: Tensor) -> Tensor:
        x1 = self.block1(bev)
        x2 = self.block2(x1)
        up2 = self.up2(x2)[..., : x1.shape[-2], : x1.shape[-1]]
        if up2.shape[-2:] != x1.shape[-2:]:  # odd sizes: pad the upsampled map
            up2 = nn.functional.pad(up2, (0, x1.shape[-1] - up2.shape[-1], 0,
                                          x1.shape[-2] - up2.shape[-2]))
        return torch.cat([self.up1(x1), up2], dim=1)
