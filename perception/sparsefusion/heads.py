"""Shared pieces of the decoders: position embeddings, transformer layers, prediction
heads and heatmap top-k query selection (TransFusion)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perception.sparsefusion.box_coder import CODE_SIZE


class PositionEmbedding(nn.Module):
    """Learned position embedding: a 2-layer MLP on coordinates (TransFusion's)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(inplace=True),
                                 nn.Linear(dim, dim))

    def forward(self, coords: Tensor) -> Tensor:
        """``[..., in_dim]`` -> ``[..., dim]``."""
        return self.net(coords)


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.drop(self.net(x)))


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention (+ position embedding on queries and keys)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        q = x + pos
        out = self.attn(q, q, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return self.norm(x + self.drop(out))


class CrossAttentionLayer(nn.Module):
    """Post-norm full cross-attention of queries to a set of keys (e.g. BEV cells)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor, memory: Tensor, memory_pos: Tensor) -> Tensor:
        out = self.attn(x + pos, memory + memory_pos, memory, need_weights=False)[0]
        return self.norm(x + self.drop(out))


class PredictionHead(nn.Module):
    """Per-query class logits and a 10-entry box code (one small MLP per group, as in
    TransFusion's ``SeparateHead``)."""

    GROUPS = (("center", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))

    def __init__(self, dim: int, num_classes: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.branches = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, size))
            for name, size in self.GROUPS
        })
        self.cls = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, num_classes))
        nn.init.constant_(self.cls[-1].bias, -2.19)  # prior probability 0.1

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[..., dim]`` -> logits ``[..., K]``, code deltas ``[..., 10]``."""
        code = torch.cat([self.branches[name](x) for name, _ in self.GROUPS], dim=-1)
        assert code.shape[-1] == CODE_SIZE
        return self.cls(x), code


def heatmap_peaks(heatmap: Tensor, kernel: int, no_nms_classes: tuple[int, ...] = ()) -> Tensor:
    """Keep local maxima of a ``[B, K, H, W]`` probability map (others set to 0)."""
    if kernel <= 1:
        return heatmap
    pooled = F.max_pool2d(heatmap, kernel, stride=1, padding=kernel // 2)
    keep = (heatmap == pooled).to(heatmap.dtype)
    peaks = heatmap * keep
    for k in no_nms_classes:
        peaks[:, k] = heatmap[:, k]
    return peaks


def top_queries(scores: Tensor, num: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``num`` of ``[B, K, N]`` class scores over all classes and positions.

    Returns:
        positions ``[B, num]`` (index into N), labels ``[B, num]``, scores ``[B, num]``.
    """
    b, k, n = scores.shape
    num = min(num, k * n)
    values, index = scores.reshape(b, k * n).topk(num, dim=1)
    return index % n, index // n, values
