"""The standard metrics of sparse-tracker body pose estimation, split by hand visibility.

Per frame (then averaged over the frames of a group):

- MPJPE: mean joint position error over the 22 joints, world frame (cm).
- MPJRE: mean joint rotation error, the geodesic angle between predicted and true
  rotations: the pelvis's global orientation and the 21 local joint rotations (degrees).
- MPJVE: mean joint velocity error, ``|v_pred - v_true|`` with ``v = (p_t - p_{t-1}) fps``
  (cm/s; from the second frame on).
- Jitter: mean norm of the predicted joints' jerk ``(p_t - 3 p_{t-1} + 3 p_{t-2} -
  p_{t-3}) fps^3`` (m/s^3; from the fourth frame on). Lower is smoother; the ground
  truth's jitter is reported beside it for reference.
- H-PE: hand (wrist) position error, mean of the two wrists (cm).

Groups: ``all`` frames, ``hands_visible`` (both hands seen by the headset at that frame)
and ``hands_hidden`` (at least one hand not seen).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geometry.so3 import rotation_angle
from pose.body.egoposer.skeleton import LEFT_WRIST, RIGHT_WRIST

METRIC_KEYS: tuple[str, ...] = ("mpjpe_cm", "mpjre_deg", "mpjve_cm_s", "jitter_m_s3",
                                "hand_pe_cm", "gt_jitter_m_s3")
GROUPS: tuple[str, ...] = ("all", "hands_visible", "hands_hidden")


def _jerk(joints: Tensor, fps: float) -> Tensor:
    out = torch.full(joints.shape[:2], math.nan, dtype=joints.dtype)
    if joints.shape[0] >= 4:
        d3 = joints[3:] - 3 * joints[2:-1] + 3 * joints[1:-2] - joints[:-3]
        out[3:] = d3.norm(dim=-1) * fps**3
    return out.mean(-1)


def frame_errors(pred_rots: Tensor, pred_joints: Tensor, gt_rots: Tensor, gt_joints: Tensor,
                 fps: float) -> dict[str, Tensor]:
    """Per-frame errors of one sequence (NaN where a metric is undefined).

    Args:
        pred_rots, gt_rots: ``[T, 22, 3, 3]`` local rotations (index 0: pelvis global).
        pred_joints, gt_joints: ``[T, 22, 3]`` world joint positions (metres).
        fps: frame rate.

    Returns:
        metric name (:data:`METRIC_KEYS`) -> ``[T]`` float64, in the units of the name.
    """
    pred_joints, gt_joints = pred_joints.double(), gt_joints.double()
    n = pred_joints.shape[0]
    err = (pred_joints - gt_joints).norm(dim=-1)  # [T, 22]
    vel_err = torch.full((n,), math.nan, dtype=torch.float64)
    if n >= 2:
        v_pred = (pred_joints[1:] - pred_joints[:-1]) * fps
        v_gt = (gt_joints[1:] - gt_joints[:-1]) * fps
        vel_err[1:] = (v_pred - v_gt).norm(dim=-1).mean(-1)
    return {
        "mpjpe_cm": err.mean(-1) * 100,
        "mpjre_deg": torch.rad2deg(rotation_angle(pred_rots.double(), gt_rots.double())).mean(-1),
        "mpjve_cm_s": vel_err * 100,
        "jitter_m_s3": _jerk(pred_joints, fps),
        "hand_pe_cm": err[:, [LEFT_WRIST, RIGHT_WRIST]].mean(-1) * 100,
        "gt_jitter_m_s3": _jerk(gt_joints, fps),
    }


def summarize(errors: list[dict[str, Tensor]], visible: list[Tensor]) -> dict[str, dict[
        str, float]]:
    """Average per-frame errors over all sequences, per visibility group.

    Args:
        errors: per sequence, the output of :func:`frame_errors`.
        visible: per sequence, ``[T, 2]`` bool hand visibility.

    Returns:
        group -> {metric: mean (NaN if the group is empty), ``frames``: count}.
    """
    cat = {k: torch.cat([e[k] for e in errors]) for k in METRIC_KEYS}
    both = torch.cat([v.all(-1) for v in visible])
    masks = {"all": torch.ones_like(both), "hands_visible": both, "hands_hidden": ~both}
    out: dict[str, dict[str, float]] = {}
    for group, m in masks.items():
        row: dict[str, float] = {"frames": int(m.sum())}
        for k, v in cat.items():
            sel = v[m]
            sel = sel[~torch.isnan(sel)]
            row[k] = float(sel.mean()) if sel.numel() else math.nan
        out[group] = row
    return out
