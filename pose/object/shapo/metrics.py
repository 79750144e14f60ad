"""The NOCS benchmark metrics (Wang et al. 2019), as its evaluation code computes them.

Follows ``utils.py`` of the NOCS release (``compute_3d_iou_new``,
``compute_RT_degree_cm_symmetry``, ``compute_3d_matches``, ``compute_match_from_degree_cm``,
``compute_ap_from_matches_scores`` and ``compute_degree_cm_mAP``) step for step:

- **3D IoU**: the eight corners of each size box are moved by its pose and the IoU of the
  two corner sets' axis-aligned bounds in the camera frame is taken. For bottle, bowl and
  can (and a mug whose handle is invisible) the prediction is turned about its y axis in 20
  steps of 18 degrees and the largest IoU is kept. The NOCS release takes the bounds with
  ``np.amax(..., axis=0)`` over a ``[3, 8]`` array (over the coordinates of each corner, a
  known bug); we take them over the corners (``axis=1``), as the corrected evaluation of
  CenterSnap/ShAPO and later work does.
- **Pose error**: rotation error in degrees (bottle, bowl, can, and mug with invisible
  handle: the angle between the two y axes only) and translation error in centimetres.
  A uniform scale inside the 4x4 matrices is divided out (``R / cbrt(det R)``).
- **Matching**, per class, predictions by descending score: for IoU, each prediction takes
  the unmatched ground truth of highest IoU if that IoU is strictly above the threshold;
  for pose, predictions and ground truths first keep only those matched at IoU > 0.1,
  then each prediction takes the unmatched ground truth of smallest ``degrees + cm`` whose
  errors are within both thresholds (inclusive). As in NOCS, the pose APs' recall counts
  only the ground truths matched at IoU > 0.1 (a missed object does not lower them).
- **AP**: VOC-style all-point interpolation; mAP is the mean over classes.

One deviation: NOCS averages over all six classes; we average over the classes with at
least one ground-truth object in the evaluated frames (the same when every class occurs).
All values are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SYMMETRIC_CLASSES = ("bottle", "bowl", "can")
"""Classes symmetric about their y axis (a mug too, when its handle is invisible)."""

IOU_THRESHOLDS = {"iou25": 0.25, "iou50": 0.5}
POSE_THRESHOLDS = {"5deg2cm": (5.0, 2.0), "5deg5cm": (5.0, 5.0), "10deg5cm": (10.0, 5.0),
                   "10deg10cm": (10.0, 10.0)}
METRIC_NAMES = tuple(IOU_THRESHOLDS) + tuple(POSE_THRESHOLDS)
POSE_MATCH_IOU = 0.1
"""NOCS's ``iou_pose_thres``: pose errors are matched among pairs with IoU above this."""

__all__ = ["FrameDetections", "METRIC_NAMES", "compute_ap", "iou_3d", "nocs_map",
           "pose_error", "is_symmetric"]


def is_symmetric(class_name: str, handle_visible: bool = True) -> bool:
    """Whether NOCS treats the class as symmetric about its y axis."""
    return class_name in SYMMETRIC_CLASSES or (class_name == "mug" and not handle_visible)


def box_corners(size: np.ndarray) -> np.ndarray:
    """``[8, 3]`` corners of a box of extents ``size [3]`` centred on the origin."""
    signs = np.array([[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)],
                     np.float64)
    return 0.5 * signs * np.asarray(size, np.float64)


def _aabb_iou(RT_1: np.ndarray, RT_2: np.ndarray, size_1: np.ndarray,
              size_2: np.ndarray) -> float:
    c1 = box_corners(size_1) @ RT_1[:3, :3].T + RT_1[:3, 3]
    c2 = box_corners(size_2) @ RT_2[:3, :3].T + RT_2[:3, 3]
    lo1, hi1, lo2, hi2 = c1.min(0), c1.max(0), c2.min(0), c2.max(0)
    overlap = np.minimum(hi1, hi2) - np.maximum(lo1, lo2)
    inter = 0.0 if overlap.min() < 0 else float(np.prod(overlap))
    union = float(np.prod(hi1 - lo1) + np.prod(hi2 - lo2)) - inter
    return inter / union


def _y_rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, 0, s, 0], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1]], np.float64)


def iou_3d(RT_pred: np.ndarray, RT_gt: np.ndarray, size_pred: np.ndarray, size_gt: np.ndarray,
           class_pred: str, class_gt: str, handle_visible: bool = True) -> float:
    """NOCS 3D IoU of two posed size boxes (``RT [4, 4]`` object-to-camera, ``size [3]``).

    Symmetric classes (same class on both sides): the largest IoU over 20 turns of the
    prediction about its y axis.
    """
    RT_pred, RT_gt = np.asarray(RT_pred, np.float64), np.asarray(RT_gt, np.float64)
    if class_pred == class_gt and is_symmetric(class_gt, handle_visible):
        return max(_aabb_iou(RT_pred @ _y_rotation(2 * math.pi * i / 20), RT_gt, size_pred,
                             size_gt) for i in range(20))
    return _aabb_iou(RT_pred, RT_gt, size_pred, size_gt)


def pose_error(RT_pred: np.ndarray, RT_gt: np.ndarray, class_name: str,
               handle_visible: bool = True) -> tuple[float, float]:
    """``(degrees, cm)``: NOCS rotation error (symmetry-aware) and translation error."""
    RT_pred, RT_gt = np.asarray(RT_pred, np.float64), np.asarray(RT_gt, np.float64)
    R1 = RT_pred[:3, :3] / np.cbrt(np.linalg.det(RT_pred[:3, :3]))
    R2 = RT_gt[:3, :3] / np.cbrt(np.linalg.det(RT_gt[:3, :3]))
    if is_symmetric(class_name, handle_visible):
        y1, y2 = R1[:, 1], R2[:, 1]
        cos = y1 @ y2 / (np.linalg.norm(y1) * np.linalg.norm(y2))
    else:
        cos = (np.trace(R1 @ R2.T) - 1) / 2
    theta = math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))
    return theta, float(np.linalg.norm(RT_pred[:3, 3] - RT_gt[:3, 3]) * 100)


def compute_ap(pred_match: np.ndarray, pred_scores: np.ndarray, num_gt: int) -> float:
    """VOC all-point AP of predictions (``pred_match >= 0``: a true positive) by score."""
    order = np.argsort(-np.asarray(pred_scores, np.float64), kind="stable")
    hits = (np.asarray(pred_match)[order] > -1).astype(np.float64)
    tp = np.cumsum(hits)
    precisions = np.concatenate([[0.0], tp / (np.arange(len(hits)) + 1), [0.0]])
    recalls = np.concatenate([[0.0], tp / max(num_gt, 1), [1.0]])
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = max(precisions[i], precisions[i + 1])
    idx = np.nonzero(recalls[:-1] != recalls[1:])[0] + 1
    return float(np.sum((recalls[idx] - recalls[idx - 1]) * precisions[idx]))


@dataclass
class FrameDetections:
    """Ground truth and predictions of one frame (poses object-to-camera, metres)."""

    gt_classes: Sequence[str]
    gt_RTs: np.ndarray  # [G, 4, 4]
    gt_sizes: np.ndarray  # [G, 3]
    pred_classes: Sequence[str]
    pred_scores: np.ndarray  # [P]
    pred_RTs: np.ndarray  # [P, 4, 4]
    pred_sizes: np.ndarray  # [P, 3]
    gt_handle_visible: Sequence[bool] | None = None
    """Per ground-truth object; only mugs use it (default: visible)."""


def _iou_matches(ious: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """NOCS ``compute_3d_matches`` for one class (predictions sorted by score)."""
    num_pred, num_gt = ious.shape
    pred_match, gt_match = -np.ones(num_pred, int), -np.ones(num_gt, int)
    for i in range(num_pred):
        for j in np.argsort(-ious[i], kind="stable"):
            if gt_match[j] > -1:
                continue
            if ious[i, j] < threshold:
                break
            if ious[i, j] > threshold:
                gt_match[j], pred_match[i] = i, j
                break
    return pred_match, gt_match


def _pose_matches(errors: np.ndarray, max_deg: float, max_cm: float) -> np.ndarray:
    """NOCS ``compute_match_from_degree_cm`` for one class: ``pred_match [P]``."""
    num_pred, num_gt = errors.shape[:2]
    pred_match, gt_match = -np.ones(num_pred, int), -np.ones(num_gt, int)
    for i in range(num_pred):
        for j in np.argsort(errors[i].sum(-1), kind="stable"):
            if gt_match[j] > -1 or errors[i, j, 0] > max_deg or errors[i, j, 1] > max_cm:
                continue
            gt_match[j], pred_match[i] = i, j
            break
    return pred_match


def nocs_map(frames: Sequence[FrameDetections]) -> dict[str, dict[str, float] | float]:
    """NOCS mAPs over frames: ``{"iou25": …, "iou50": …, "5deg2cm": …, …, "per_class":
    {class: {metric: AP}}}`` (fractions in [0, 1])."""
    classes = sorted({c for f in frames for c in f.gt_classes})
    matches: dict[str, dict[str, list]] = {c: {m: [] for m in METRIC_NAMES} for c in classes}
    scores: dict[str, dict[str, list]] = {c: {m: [] for m in METRIC_NAMES} for c in classes}
    num_gt: dict[str, dict[str, int]] = {c: dict.fromkeys(METRIC_NAMES, 0) for c in classes}
    for frame in frames:
        visible = (list(frame.gt_handle_visible) if frame.gt_handle_visible is not None
                   else [True] * len(frame.gt_classes))
        for cls in classes:
            gi = [j for j, c in enumerate(frame.gt_classes) if c == cls]
            pi = [i for i, c in enumerate(frame.pred_classes) if c == cls]
            for name in IOU_THRESHOLDS:
                num_gt[cls][name] += len(gi)
            if not pi:
                continue
            pscores = np.asarray(frame.pred_scores, np.float64)[pi]
            order = np.argsort(-pscores, kind="stable")
            pi, pscores = [pi[k] for k in order], pscores[order]
            hv = [visible[j] if cls == "mug" else True for j in gi]
            ious = np.array([[iou_3d(frame.pred_RTs[i], frame.gt_RTs[j], frame.pred_sizes[i],
                                     frame.gt_sizes[j], cls, cls, hv[k])
                              for k, j in enumerate(gi)] for i in pi]).reshape(len(pi), len(gi))
            for name, thr in IOU_THRESHOLDS.items():
                matches[cls][name].append(_iou_matches(ious, thr)[0])
                scores[cls][name].append(pscores)
            p_ok, g_ok = _iou_matches(ious, POSE_MATCH_IOU)
            keep_p = np.nonzero(p_ok > -1)[0]
            keep_g = np.nonzero(g_ok > -1)[0]
            errors = np.array([[pose_error(frame.pred_RTs[pi[i]], frame.gt_RTs[gi[j]], cls,
                                           hv[j]) for j in keep_g] for i in keep_p]
                              ).reshape(len(keep_p), len(keep_g), 2)
            for name, (deg, cm) in POSE_THRESHOLDS.items():
                matches[cls][name].append(_pose_matches(errors, deg, cm))
                scores[cls][name].append(pscores[keep_p])
                num_gt[cls][name] += len(keep_g)
    per_class = {}
    for cls in classes:
        per_class[cls] = {
            name: compute_ap(np.concatenate(matches[cls][name] or [np.zeros(0)]),
                             np.concatenate(scores[cls][name] or [np.zeros(0)]),
                             num_gt[cls][name])
            for name in METRIC_NAMES}
    result: dict = {name: (float(np.mean([per_class[c][name] for c in classes]))
                           if classes else 0.0) for name in METRIC_NAMES}
    result["per_class"] = per_class
    return result
