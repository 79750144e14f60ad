"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

Each query looks at ``num_points`` learned sampling locations per head and per feature
level around its reference point, bilinearly sampled with ``grid_sample`` (so it runs on
the CPU and on any GPU without a custom op), and mixes them with softmax weights.
:func:`ms_deform_attn_naive` is the loop-over-everything oracle of the tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ms_deform_attn(
    value: Tensor,  # [N, S, nH, Dh], S = sum of H_l * W_l
    spatial_shapes: list[tuple[int, int]],  # [(H_l, W_l)] per level
    sampling_locations: Tensor,  # [N, Lq, nH, nL, nP, 2] (x, y) in [0, 1]
    attention_weights: Tensor,  # [N, Lq, nH, nL, nP]
) -> Tensor:
    """Sample and mix; returns ``[N, Lq, nH * Dh]``.

    Locations are normalised image coordinates (0 = left/top edge, 1 = right/bottom edge
    of the map, pixel centres at ``(i + 0.5) / W``), sampled bilinearly with zero padding
    (``align_corners=False``).
    """
    n, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    sizes = [h * w for h, w in spatial_shapes]
    values = value.split(sizes, dim=1)
    grids = 2.0 * sampling_locations - 1.0
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        # [N, H*W, nH, Dh] -> [N*nH, Dh, H, W]
        v = values[level].flatten(2).transpose(1, 2).reshape(n * n_heads, head_dim, h, w)
        # [N, Lq, nH, nP, 2] -> [N*nH, Lq, nP, 2]
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # [N*nH, Dh, Lq, nP]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [N*nH, Dh, Lq, nL*nP]
    weights = attention_weights.transpose(1, 2).reshape(n * n_heads, 1, n_queries,
                                                         n_levels * n_points)
    out = (stacked * weights).sum(-1).view(n, n_heads * head_dim, n_queries)
    return out.transpose(1, 2).contiguous()


def ms_deform_attn_naive(value: Tensor, spatial_shapes: list[tuple[int, int]],
                         sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Reference of :func:`ms_deform_attn`: explicit bilinear interpolation, one sample at a
    time (slow; tests only)."""
    n, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    starts = [0]
    for h, w in spatial_shapes:
        starts.append(starts[-1] + h * w)
    out = value.new_zeros((n, n_queries, n_heads, head_dim))
    for b in range(n):
        for q in range(n_queries):
            for head in range(n_heads):
                for level, (h, w) in enumerate(spatial_shapes):
                    for p in range(n_points):
                        x = float(sampling_locations[b, q, head, level, p, 0]) * w - 0.5
                        y = float(sampling_locations[b, q, head, level, p, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        acc = value.new_zeros(head_dim)
                        for yy, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                                if 0 <= xx < w and 0 <= yy < h:
                                    acc = acc + wx * wy * value[b, starts[level] + yy * w + xx,
                                                                head]
                        out[b, q, head] += attention_weights[b, q, head, level, p] * acc
    return out.reshape(n, n_queries, n_heads * head_dim)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable DETR's ``MSDeformAttn``)."""

    def __init__(self, dim: int, n_heads: int, n_levels: int, n_points: int) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by {n_heads} heads")
        self.dim, self.n_heads, self.n_levels, self.n_points = dim, n_heads, n_levels, n_points
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        # Initial offsets point in n_heads directions, growing with the point index.
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,  # [N, Lq, C]
        reference_points: Tensor,  # [N, Lq, 2] normalised (x, y) in [0, 1]
        value: Tensor,  # [N, S, C] flattened levels
        spatial_shapes: list[tuple[int, int]],
        value_padding_mask: Tensor | None = None,  # [N, S] True = ignore
    ) -> Tensor:
        """Returns ``[N, Lq, C]``."""
        n, n_queries, _ = query.shape
        v = self.value_proj(value)
        if value_padding_mask is not None:
            v = v.masked_fill(value_padding_mask[..., None], 0.0)
        v = v.view(n, -1, self.n_heads, self.dim // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, n_queries, self.n_heads, self.n_levels,
                                                    self.n_points, 2)
        weights = self.attention_weights(query).view(n, n_queries, self.n_heads,
                                                     self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, n_queries, self.n_heads, self.n_levels,
                                           self.n_points)
        normaliser = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype,
                                  device=query.device)
        locations = (reference_points[:, :, None, None, None, :]
                     + offsets / normaliser[None, None, None, :, None, :])
        out = ms_deform_attn(v, spatial_shapes, locations, weights)
        return self.output_proj(out)
