"""Losses and the Hungarian assignment (scipy's ``linear_sum_assignment``).

Classification: sigmoid focal loss; regression: L1 on box codes with per-entry weights;
heatmaps: CenterNet's Gaussian focal loss. Set predictions are matched one to one to the
ground truth by a cost of focal classification plus L1 distance of the centres (TransFusion
and SparseFusion), with an optional extra cost (e.g. forbidding matches across views).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> Tensor:
    """Summed focal loss; ``logits`` and one-hot ``targets`` of the same shape."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * loss).sum()


def gaussian_focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0,
                        gamma: float = 4.0) -> Tensor:
    """CenterNet heatmap loss, normalised by the number of peaks (target == 1)."""
    p = logits.sigmoid().clamp(1e-6, 1 - 1e-6)
    pos = target.eq(1).to(p.dtype)
    pos_loss = -(p.log() * (1 - p) ** alpha * pos).sum()
    neg_loss = -((1 - p).log() * p ** alpha * (1 - target) ** gamma * (1 - pos)).sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1.0)


def focal_cost(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0
               ) -> Tensor:
    """``[Q, K]`` logits, ``[M]`` labels -> ``[Q, M]`` classification cost."""
    p = logits.sigmoid()
    neg = -(1 - p + 1e-12).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + 1e-12).log() * alpha * (1 - p).pow(gamma)
    return pos[:, labels] - neg[:, labels]


def hungarian_match(
    cls_logits: Tensor,  # [Q, K]
    pred_centers: Tensor,  # [Q, 2] normalised
    gt_labels: Tensor,  # [M]
    gt_centers: Tensor,  # [M, 2] normalised
    cls_weight: float,
    center_weight: float,
    extra_cost: Tensor | None = None,  # [Q, M]
) -> tuple[Tensor, Tensor]:
    """One-to-one assignment minimising the matching cost.

    Returns:
        ``(pred_index [K], gt_index [K])`` int64, ``K = min(Q, M)``.
    """
    q, m = cls_logits.shape[0], gt_labels.shape[0]
    if q == 0 or m == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cls_logits.device)
        return empty, empty
    from scipy.optimize import linear_sum_assignment

    with torch.no_grad():
        cost = cls_weight * focal_cost(cls_logits.float(), gt_labels)
        cost = cost + center_weight * torch.cdist(pred_centers.float(), gt_centers.float(), p=1)
        if extra_cost is not None:
            cost = cost + extra_cost
        cost = torch.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=-1e6)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    device = cls_logits.device
    return (torch.as_tensor(rows, dtype=torch.long, device=device),
            torch.as_tensor(cols, dtype=torch.long, device=device))


def set_loss(
    cls_logits: Tensor,  # [Q, K]
    codes: Tensor,  # [Q, 10]
    pred_centers: Tensor,  # [Q, 2] normalised (matching)
    gt_labels: Tensor,  # [M]
    gt_codes: Tensor,  # [M, 10]
    gt_centers: Tensor,  # [M, 2] normalised (matching)
    code_weights: Tensor,  # [10]
    gt_code_mask: Tensor | None = None,  # [M, 10] 0 where a target is unknown (velocity)
    extra_cost: Tensor | None = None,
    cls_weight: float = 1.0,
    bbox_weight: float = 0.25,
    match_cls_weight: float = 0.15,
    match_center_weight: float = 0.25,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """Hungarian-matched focal classification + weighted L1 regression.

    Both are normalised by ``max(M, 1)``; unmatched predictions learn "no object".

    Returns:
        ``(classification loss, regression loss)`` scalars.
    """
    pred_idx, gt_idx = hungarian_match(cls_logits, pred_centers, gt_labels, gt_centers,
                                       match_cls_weight, match_center_weight, extra_cost)
    targets = torch.zeros_like(cls_logits)
    targets[pred_idx, gt_labels[gt_idx]] = 1.0
    normaliser = max(int(gt_labels.shape[0]), 1)
    cls_loss = sigmoid_focal_loss(cls_logits, targets, alpha, gamma) / normaliser
    if pred_idx.numel() == 0:
        return cls_weight * cls_loss, codes.sum() * 0.0
    diff = (codes[pred_idx] - gt_codes[gt_idx]).abs() * code_weights
    if gt_code_mask is not None:
        diff = diff * gt_code_mask[gt_idx]
    box_loss = diff.sum() / normaliser
    return cls_weight * cls_loss, bbox_weight * box_loss


def gaussian_radius(height: float, width: float, min_overlap: float = 0.1) -> float:
    """CenterNet's radius of a Gaussian peak for a box of ``height`` x ``width`` cells."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: np.ndarray, cx: float, cy: float, radius: int) -> None:
    """Max-splat a Gaussian peak (value 1 at the integer cell of ``(cx, cy)``) in place.

    Args:
        heatmap: ``[H, W]`` float32.
    """
    h, w = heatmap.shape
    x, y = int(cx), int(cy)
    if not (0 <= x < w and 0 <= y < h):
        return
    sigma = (2 * radius + 1) / 6.0
    ys, xs = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    gauss = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma)).astype(np.float32)
    left, right = min(x, radius), min(w - x, radius + 1)
    top, bottom = min(y, radius), min(h - y, radius + 1)
    region = heatmap[y - top:y + bottom, x - left:x + right]
    patch = gauss[radius - top:radius + bottom, radius - left:radius + right]
    np.maximum(region, patch, out=region)
