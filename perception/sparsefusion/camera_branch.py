"""Camera branch: ResNet + FPN, per-view heatmap query initialisation and a multi-scale
deformable-attention decoder that predicts camera-frame instance candidates.

Queries start at the top-k peaks of per-view class heatmaps (of the projected 3D centres)
on the stride-8 level, over all views together. Each query attends (deformable attention)
only to the feature maps of its own view, around its reference point, and predicts its
class, the projected centre (an offset from the reference point), depth, size, yaw and
velocity in its camera's frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perception.sparsefusion.config import SparseFusionConfig
from perception.sparsefusion.deformable_attention import MSDeformAttn
from perception.sparsefusion.heads import (
    FFN,
    PositionEmbedding,
    PredictionHead,
    SelfAttentionLayer,
    heatmap_peaks,
    top_queries,
)
from perception.sparsefusion.resnet import FPN, ResNet, load_resnet_weights

NUM_VIEWS = 6
DEPTH_PRIOR = math.log(15.0)  # initial depth of the camera head: 15 m


class CameraBranch(nn.Module):
    def __init__(self, config: SparseFusionConfig) -> None:
        super().__init__()
        cc, dim = config.camera, config.hidden
        self.config = config
        # Frozen batch norms and stages only make sense for pretrained weights: with a
        # random init, frozen (identity) statistics would let activations grow unchecked.
        pretrained = bool(cc.backbone_weights)
        self.backbone = ResNet(cc.resnet_depth, cc.resnet_width, cc.norm_eval and pretrained,
                               cc.checkpoint_backbone, cc.frozen_stages if pretrained else -1)
        if pretrained:
            load_resnet_weights(self.backbone, cc.backbone_weights)
        self.fpn = FPN(self.backbone.out_channels, dim, cc.num_levels)
        self.heatmap = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(inplace=True),
                                     nn.Conv2d(dim, config.num_classes, 3, padding=1))
        nn.init.constant_(self.heatmap[-1].bias, -2.19)
        self.class_embed = nn.Linear(config.num_classes, dim)
        self.pos_embed = PositionEmbedding(2, dim)
        self.view_embed = nn.Embedding(NUM_VIEWS, dim)
        self.level_embed = nn.Parameter(torch.zeros(cc.num_levels, dim))
        self.self_attn = SelfAttentionLayer(dim, config.heads, config.dropout)
        self.cross_attn = MSDeformAttn(dim, config.heads, cc.num_levels, cc.num_points)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_drop = nn.Dropout(config.dropout)
        self.ffn = FFN(dim, config.ffn, config.dropout)
        self.head = PredictionHead(dim, config.num_classes)

    def extract(self, images: Tensor) -> list[Tensor]:
        """``[B, V, 3, H, W]`` -> FPN levels ``[B*V, C, h_l, w_l]``."""
        feats = self.backbone(images.flatten(0, 1))
        return self.fpn(feats)

    def forward(self, features: list[Tensor], view_mask: Tensor,
                image_size: tuple[int, int]) -> dict[str, Tensor]:
        """Decode camera candidates.

        Args:
            features: FPN levels ``[B*V, C, h_l, w_l]``.
            view_mask: ``[B, V]`` bool, False for missing cameras.
            image_size: ``(W, H)`` of the network images.

        Returns:
            ``heatmap`` ``[B*V, K, h0, w0]`` logits; ``view`` ``[B, Q]``; ``logits``
            ``[B, Q, K]``; ``code`` ``[B, Q, 10]`` camera code (see box_coder);
            ``features`` ``[B, Q, C]``.
        """
        cc = self.config.camera
        b, v = view_mask.shape
        level0 = features[0]
        c, h0, w0 = level0.shape[1:]
        heatmap = self.heatmap(level0)  # [B*V, K, h0, w0]
        with torch.no_grad():
            scores = heatmap_peaks(heatmap.sigmoid(), 3)
            scores = scores.masked_fill(~view_mask.reshape(b * v, 1, 1, 1), -1.0)
            k = scores.shape[1]
            # [B, K, V*h0*w0] over all views of a sample
            per_sample = scores.reshape(b, v, k, h0 * w0).permute(0, 2, 1, 3).reshape(b, k, -1)
            position, labels, _ = top_queries(per_sample, cc.num_queries)
        view = position // (h0 * w0)
        cell = position % (h0 * w0)
        row, col = cell // w0, cell % w0
        reference = torch.stack([(col.to(level0.dtype) + 0.5) / w0,
                                 (row.to(level0.dtype) + 0.5) / h0], dim=-1)  # [B, Q, 2]
        flat_maps = level0.reshape(b, v, c, h0 * w0)
        batch_index = torch.arange(b, device=view.device)[:, None].expand_as(view)
        query = flat_maps[batch_index, view, :, cell]  # [B, Q, C]
        one_hot = F.one_hot(labels, self.config.num_classes).to(query.dtype)
        query = query + self.class_embed(one_hot)
        pos = self.pos_embed(reference) + self.view_embed(view)
        query = self.self_attn(query, pos)
        query = self._cross(query + pos, query, reference, view, features, b, v)
        query = self.ffn(query)
        logits, delta = self.head(query)
        center = reference + delta[..., :2] / torch.tensor([w0, h0], dtype=query.dtype,
                                                           device=query.device)
        code = torch.cat([center, delta[..., 2:3] + DEPTH_PRIOR, delta[..., 3:]], dim=-1)
        return {"heatmap": heatmap, "view": view, "labels": labels, "logits": logits,
                "code": code, "features": query, "reference": reference}

    def _cross(self, query_pos: Tensor, query: Tensor, reference: Tensor, view: Tensor,
               features: list[Tensor], b: int, v: int) -> Tensor:
        """Deformable attention of each query into its own view's levels."""
        shapes = [(f.shape[-2], f.shape[-1]) for f in features]
        value = torch.cat([(f.flatten(2) + self.level_embed[i][:, None]).transpose(1, 2)
                           for i, f in enumerate(features)], dim=1)  # [B*V, S, C]
        q = query.shape[1]
        flat_view = (torch.arange(b, device=view.device)[:, None] * v + view).reshape(-1)
        order = torch.argsort(flat_view, stable=True)
        sorted_view = flat_view[order]
        start = torch.searchsorted(sorted_view, sorted_view)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device) - start
        slots = int(rank.max().item()) + 1 if rank.numel() else 1
        dim = query.shape[-1]
        padded = query.new_zeros((b * v, slots, dim))
        padded_ref = query.new_full((b * v, slots, 2), 0.5)
        padded[flat_view, rank] = query_pos.reshape(b * q, dim)
        padded_ref[flat_view, rank] = reference.reshape(b * q, 2)
        out = self.cross_attn(padded, padded_ref, value, shapes)
        out = out[flat_view, rank].reshape(b, q, dim)
        return self.cross_norm(query + self.cross_drop(out))
