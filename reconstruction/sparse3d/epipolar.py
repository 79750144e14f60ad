"""Sparse3D's epipolar feature aggregator.

For every pixel of the target view's feature grid, ``D`` points are placed along its ray
at depths evenly spaced in inverse depth between ``near`` and ``far``; each point is
projected into every input view and the input's feature map is sampled there (bilinear):
the features *along the pixel's epipolar line* in that view. Attention over the depth bins
picks where the views agree::

    target pixel ray:  o----x1----x2----x3----...----xD      (depth bins)
                            |     |     |
    input view v:        f_v(x1) f_v(x2) f_v(x3) ...        (sampled on the epipolar line)

    logit_k = -tau * mean_c Var_v[W f_v(x_k)]  +  g([mean_v W f_v(x_k), Var_v ...])
    a_k     = softmax_k(logit_k)
    out     = Linear( sum_k a_k [mean_v W f_v(x_k), depth embedding(x_k)] )

The first logit term is a multi-view-stereo matching cost (the views agree at the surface);
``g`` (an MLP, zero-initialised) learns corrections. Samples outside an input image or
behind its camera do not count; a bin seen by fewer than ``min_views`` views gets a large
negative logit. With *oracle* features (each input pixel's feature a code of the 3D point
it sees) the attention peaks at the true depth bin (tested).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Logit of a depth bin too few views see.
UNSEEN_LOGIT = -1e4


def ray_grid(T_cam_world: Tensor, K: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """World-frame ray origins ``[B, 3]`` and directions ``[B, h, w, 3]`` (unit z in the
    camera frame: a point at camera depth ``d`` is ``o + d * dir``) of the pixel centres of
    an ``h x w`` grid with intrinsics ``K [B, 3, 3]`` (of that grid)."""
    device, dtype = T_cam_world.device, T_cam_world.dtype
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype) + 0.5,
                          torch.arange(width, device=device, dtype=dtype) + 0.5, indexing="ij")
    x = (u[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (v[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], -1)  # [B, h, w, 3]
    T_world_cam = torch.linalg.inv(T_cam_world)
    R = T_world_cam[:, :3, :3]
    dirs = torch.einsum("bij,bhwj->bhwi", R, dirs_cam)
    return T_world_cam[:, :3, 3], dirs


def depth_bins(near: float, far: float, count: int, device=None) -> Tensor:
    """``[count]`` depths evenly spaced in inverse depth from ``near`` to ``far``."""
    inv = torch.linspace(1.0 / near, 1.0 / far, count, device=device, dtype=torch.float64)
    return (1.0 / inv).float()


def sample_epipolar(features: Tensor, T_cam_world_in: Tensor, K_in: Tensor,
                    points: Tensor) -> tuple[Tensor, Tensor]:
    """Input features at world ``points [B, h, w, D, 3]``: ``([B, V, h, w, D, C],
    valid [B, V, h, w, D])`` from ``features [V, C, Hf, Wf]`` with the inputs' cameras
    ``T_cam_world_in [V, 4, 4]``, ``K_in [V, 3, 3]`` (pixels of the feature maps)."""
    b, h, w, d, _ = points.shape
    v, c, hf, wf = features.shape
    pts = points.reshape(1, -1, 3)
    R, t = T_cam_world_in[:, :3, :3], T_cam_world_in[:, :3, 3]
    cam = torch.einsum("vij,vnj->vni", R, pts.expand(v, -1, -1)) + t[:, None]  # [V, N, 3]
    z = cam[..., 2]
    front = z > 1e-6
    zs = torch.where(front, z, torch.ones_like(z))
    px = K_in[:, 0, 0, None] * cam[..., 0] / zs + K_in[:, 0, 2, None]
    py = K_in[:, 1, 1, None] * cam[..., 1] / zs + K_in[:, 1, 2, None]
    inside = front & (px >= 0) & (px <= wf) & (py >= 0) & (py <= hf)
    grid = torch.stack([2.0 * px / wf - 1.0, 2.0 * py / hf - 1.0], -1)  # align_corners=False
    sampled = F.grid_sample(features, grid[:, None], mode="bilinear", padding_mode="border",
                            align_corners=False)[:, :, 0]  # [V, C, N]
    sampled = sampled.permute(0, 2, 1).reshape(v, b, h, w, d, c).transpose(0, 1)
    return sampled, inside.reshape(v, b, h, w, d).transpose(0, 1)


class EpipolarAggregator(nn.Module):
    """See the module doc.

    Args:
        feature_dim: channels ``C`` of the input feature maps.
        out_dim: channels of the aggregated target features.
        num_depths: depth bins ``D`` per ray.
        temperature: initial ``tau`` of the matching cost (learned, log-parametrised).
        min_views: views that must see a bin for it to count.
    """

    def __init__(self, feature_dim: int, out_dim: int, num_depths: int = 32,
                 temperature: float = 10.0, min_views: int = 2) -> None:
        super().__init__()
        self.num_depths = num_depths
        self.min_views = min_views
        self.key = nn.Linear(feature_dim, feature_dim, bias=False)
        nn.init.eye_(self.key.weight)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.refine = nn.Sequential(nn.Linear(2 * feature_dim, feature_dim), nn.SiLU(),
                                    nn.Linear(feature_dim, 1))
        nn.init.zeros_(self.refine[2].weight)
        nn.init.zeros_(self.refine[2].bias)
        self.depth_embed = nn.Linear(1, feature_dim)
        self.out = nn.Linear(2 * feature_dim, out_dim)

    def forward(self, features: Tensor, T_cam_world_in: Tensor, K_in: Tensor,
                T_cam_world: Tensor, K: Tensor, height: int, width: int, near: float,
                far: float) -> tuple[Tensor, Tensor]:
        """Aggregated features ``[B, out_dim, h, w]`` and the attention ``[B, h, w, D]``.

        Args:
            features: ``[V, C, Hf, Wf]`` input-view feature maps.
            T_cam_world_in: ``[V, 4, 4]`` input cameras; ``K_in [V, 3, 3]`` for the
                feature maps' pixels.
            T_cam_world: ``[B, 4, 4]`` target cameras; ``K [B, 3, 3]`` for the ``height x
                width`` target grid.
            near, far: depth range of the bins (target camera depth, world units).
        """
        origins, dirs = ray_grid(T_cam_world.float(), K.float(), height, width)
        depths = depth_bins(near, far, self.num_depths, features.device)  # [D]
        points = origins[:, None, None, None] + dirs[..., None, :] * depths[:, None]
        sampled, valid = sample_epipolar(features, T_cam_world_in.float(), K_in.float(), points)
        keys = self.key(sampled)  # [B, V, h, w, D, C]
        weight = valid[..., None].to(keys.dtype)
        count = weight.sum(1)  # [B, h, w, D, 1]
        mean = (keys * weight).sum(1) / count.clamp_min(1.0)
        var = (((keys - mean[:, None]) ** 2) * weight).sum(1) / count.clamp_min(1.0)
        cost = var.mean(-1)  # [B, h, w, D]
        logits = -torch.exp(self.log_temperature) * cost
        logits = logits + self.refine(torch.cat([mean, var], -1))[..., 0]
        seen = count[..., 0] >= self.min_views
        logits = torch.where(seen, logits, torch.full_like(logits, UNSEEN_LOGIT))
        attention = torch.softmax(logits, -1)
        embed = self.depth_embed((depths / far)[:, None])  # [D, C]
        pooled = torch.einsum("bhwd,bhwdc->bhwc", attention, mean)
        pooled_depth = torch.einsum("bhwd,dc->bhwc", attention, embed)
        out = self.out(torch.cat([pooled, pooled_depth], -1))
        return out.permute(0, 3, 1, 2).contiguous(), attention
