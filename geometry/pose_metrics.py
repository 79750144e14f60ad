"""Camera-pose metrics, shared by ``recon eval`` and the pose estimators of ``pose/``.

Estimated camera-to-world poses are compared with ground truth, either after the similarity
that best maps one onto the other (:func:`geometry.sim3.align_poses` with ``mode="auto"``:
Umeyama Sim(3) on the camera centres, or the rotation from the camera orientations when
the true centres are nearly collinear, :func:`geometry.sim3.centres_well_spread`), or
through quantities a similarity does not change (relative rotations and relative
translation directions of view pairs):

- ATE: root-mean-square distance between aligned and true camera centres (GT units);
- RPE (:func:`relative_pose_errors`): the error of the relative motion between consecutive
  views (translation RMSE in GT units, mean rotation angle in degrees), as in the TUM RGB-D
  benchmark;
- rotation error: the angle of ``R_gt^T R_aligned`` per view;
- relative rotation accuracy RRA@thr (RelPose++, PoseDiffusion): over all pairs ``i < j``,
  the share whose relative rotations differ by less than ``thr`` degrees
  (:func:`relative_rotation_errors`);
- relative translation accuracy RTA@thr (PoseDiffusion): the same share for the angle
  between the relative translation directions (:func:`relative_translation_errors`);
- camera-centre accuracy CCA@thr (RelPose++): the share of aligned centres within
  ``thr`` times the scene extent of the true ones (:func:`camera_centre_accuracy`).

The RelPose++ evaluation protocol (:func:`relpose_metrics`: ``rra5, rra15, rra30, cc10``)
fixes the choices: RRA over all UNORDERED pairs ``i < j``; CC after the least-squares
similarity of the centres (Umeyama, exact for 2 views and collinear centres), with the
scene scale = the largest distance of a true centre from their centroid, threshold 10 %.
Estimates are usually expressed relative to the first view (:func:`first_view_relative`);
both metrics are invariant to that choice of frame.

Every angle is :func:`geometry.so3.rotation_angle` (atan2-based, exact near 0 and 180 deg).
Frames: poses are OpenCV camera-to-world ``T_world_cam [M, 4, 4]``, same order in both sets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from geometry.se3 import invert_T
from geometry.sim3 import AlignMode, align_poses, alignment_mode, apply_sim3_to_poses
from geometry.so3 import rotation_angle

__all__ = [
    "PoseMetrics",
    "accuracy_under",
    "average_relpose_metrics",
    "camera_centre_accuracy",
    "first_view_relative",
    "pose_metrics",
    "relative_pose_errors",
    "relpose_centre_errors",
    "relpose_metrics",
    "relative_rotation_errors",
    "relative_translation_errors",
    "rotation_angle_deg",
]


def rotation_angle_deg(R_a: Tensor, R_b: Tensor) -> Tensor:
    """Angle of the rotation ``R_a^T R_b`` in degrees, ``[...]`` (float64 for float inputs
    up to float64; :func:`geometry.so3.rotation_angle` in degrees).

    Args:
        R_a: ``[..., 3, 3]``.
        R_b: ``[..., 3, 3]`` (batch dims broadcast).
    """
    return torch.rad2deg(rotation_angle(R_a.double(), R_b.double()))


def accuracy_under(errors: Tensor, thresholds: Sequence[float]) -> Tensor:
    """Share of ``errors [N]`` strictly under each threshold, ``[len(thresholds)]`` float64
    (NaN for ``N = 0``)."""
    thr = torch.as_tensor(list(thresholds), dtype=torch.float64)
    if errors.numel() == 0:
        return torch.full_like(thr, math.nan)
    return (errors.double().reshape(-1, 1).cpu() < thr).double().mean(0)


def _pairs(m: int) -> tuple[Tensor, Tensor]:
    """Indices ``i [P], j [P]`` of all pairs ``i < j`` of ``m`` views (row-major order)."""
    return torch.triu_indices(m, m, offset=1).unbind(0)


def relative_rotation_errors(T_world_cam_est: Tensor, T_world_cam_gt: Tensor) -> Tensor:
    """``[P]`` degrees between estimated and true relative rotations of every pair ``i < j``
    (``P = M (M - 1) / 2``, row-major pair order); invariant to any similarity of either
    world, so no alignment is needed.

    Args:
        T_world_cam_est: ``[M, 4, 4]`` estimated camera-to-world poses.
        T_world_cam_gt: ``[M, 4, 4]`` ground truth.
    """
    i, j = _pairs(T_world_cam_est.shape[0])
    R_est = T_world_cam_est[:, :3, :3].double()
    R_gt = T_world_cam_gt[:, :3, :3].double()
    R_rel_est = R_est[i].transpose(-1, -2) @ R_est[j]
    R_rel_gt = R_gt[i].transpose(-1, -2) @ R_gt[j]
    return rotation_angle_deg(R_rel_gt, R_rel_est)


def relative_translation_errors(T_world_cam_est: Tensor, T_world_cam_gt: Tensor) -> Tensor:
    """``[P]`` degrees between estimated and true relative translation directions of every
    pair ``i < j`` (row-major pair order), in ``[0, 180]``.

    The relative translation is PoseDiffusion's: of the world-to-camera motion
    ``T_cam_j_cam_i = T_cam_j_world T_world_cam_i``, i.e. the direction from camera ``j``'s
    centre to camera ``i``'s in camera ``j``'s frame, ``R_j^T (c_i - c_j)``. Invariant to any
    similarity of either world. PoseDiffusion folds the sign (``min(a, 180 - a)``, for
    translations known only up to sign); this does not, full poses fix the sign. A pair
    with coincident centres (no direction) gives NaN.

    Args:
        T_world_cam_est: ``[M, 4, 4]`` estimated camera-to-world poses.
        T_world_cam_gt: ``[M, 4, 4]`` ground truth.
    """
    i, j = _pairs(T_world_cam_est.shape[0])

    def directions(T: Tensor) -> Tensor:
        T = T.double()
        baseline = T[i, :3, 3] - T[j, :3, 3]  # [P, 3] world
        return (T[j, :3, :3].transpose(-1, -2) @ baseline[..., None])[..., 0]

    d_est, d_gt = directions(T_world_cam_est), directions(T_world_cam_gt)
    cross = torch.linalg.cross(d_est, d_gt).norm(dim=-1)
    dot = (d_est * d_gt).sum(-1)
    angle = torch.rad2deg(torch.atan2(cross, dot))
    degenerate = (d_est.norm(dim=-1) == 0) | (d_gt.norm(dim=-1) == 0)
    return torch.where(degenerate, torch.full_like(angle, math.nan), angle)


def relative_pose_errors(T_world_cam_aligned: Tensor,
                         T_world_cam_gt: Tensor) -> tuple[Tensor, Tensor]:
    """RPE of consecutive views: ``E = (T_gt_i^-1 T_gt_j)^-1 (T_al_i^-1 T_al_j)``, ``j = i+1``.

    Args:
        T_world_cam_aligned: ``[M, 4, 4]`` estimates already aligned to the ground truth
            (its scale matters: the translation error is in GT units).
        T_world_cam_gt: ``[M, 4, 4]`` ground truth.

    Returns:
        ``trans [M - 1]`` (GT units) and ``rot_deg [M - 1]`` (degrees), float64.
    """
    T_al, T_gt = T_world_cam_aligned.double(), T_world_cam_gt.double()
    rel_gt = invert_T(T_gt[:-1]) @ T_gt[1:]
    rel_est = invert_T(T_al[:-1]) @ T_al[1:]
    E = invert_T(rel_gt) @ rel_est
    eye = torch.eye(3, dtype=E.dtype, device=E.device).expand_as(E[:, :3, :3])
    return E[:, :3, 3].norm(dim=-1), rotation_angle_deg(eye, E[:, :3, :3])


def _diameter(points: Tensor) -> float:
    return float(torch.cdist(points, points).max()) if points.shape[0] else 0.0


def camera_centre_accuracy(T_world_cam_est: Tensor, T_world_cam_gt: Tensor,
                           thresholds: Sequence[float] = (0.1,),
                           extent: float | None = None, with_scale: bool = True,
                           mode: AlignMode = "auto") -> Tensor:
    """CCA@thr: share of camera centres within ``thr * extent`` of the true ones after the
    similarity alignment (:func:`geometry.sim3.align_poses` with ``mode``).

    Args:
        T_world_cam_est: ``[M, 4, 4]`` estimated camera-to-world poses (any frame and scale).
        T_world_cam_gt: ``[M, 4, 4]`` ground truth.
        thresholds: shares of the extent (RelPose++ reports 0.1).
        extent: scene extent in GT units; default the diameter of the true centres
            (RelPose++ uses the largest distance from their centroid: pass it to match).
        with_scale: estimate the scale of the alignment.
        mode: alignment mode.

    Returns:
        ``[len(thresholds)]`` float64 shares.
    """
    T_est = T_world_cam_est.detach().double().cpu()
    T_gt = T_world_cam_gt.detach().double().cpu()
    s, R, t = align_poses(T_est, T_gt, with_scale=with_scale, mode=mode)
    aligned = apply_sim3_to_poses(s, R, t, T_est)
    err = (aligned[:, :3, 3] - T_gt[:, :3, 3]).norm(dim=-1)
    scale = _diameter(T_gt[:, :3, 3]) if extent is None else float(extent)
    return accuracy_under(err / scale, thresholds)


@dataclass
class PoseMetrics:
    """Pose errors of M estimated cameras against ground truth (see the module doc)."""

    scale: float
    """Scale of the alignment ``c_gt ~ s R c_est + t``."""
    R: Tensor  # [3, 3]
    t: Tensor  # [3]
    T_world_cam_aligned: Tensor  # [M, 4, 4] estimates moved into the ground-truth frame
    trans_err: Tensor  # [M] centre distance after alignment, GT units
    rot_err_deg: Tensor  # [M] angle of R_gt^T R_aligned
    rel_rot_err_deg: Tensor  # [P] relative-rotation errors of all pairs i < j
    rel_trans_err_deg: Tensor  # [P] relative-translation-direction errors of those pairs
    ate_rmse: float
    rpe_trans_rmse: float
    rpe_rot_mean_deg: float
    rot_err_mean_deg: float
    rot_err_median_deg: float
    rot_under_5: float
    """Share of views whose rotation error is under 5 degrees."""
    rot_under_15: float
    rel_rot_under_5: float
    """Share of view pairs whose relative rotation is within 5 degrees (RRA@5)."""
    rel_rot_under_15: float
    rel_trans_under_5: float
    """Share of view pairs whose relative translation direction is within 5 degrees
    (RTA@5)."""
    rel_trans_under_15: float
    centre_under_10pct: float
    """Share of aligned centres within 10 % of the true centres' diameter (CCA@0.1)."""
    alignment: str
    """How the similarity was found: ``centres`` (Umeyama) or ``orientations``."""

    def summary(self) -> dict[str, float | str]:
        """The scalar metrics ``recon eval`` writes into eval.json."""
        return {
            "ate_rmse": self.ate_rmse, "rpe_trans_rmse": self.rpe_trans_rmse,
            "rpe_rot_mean_deg": self.rpe_rot_mean_deg,
            "rot_err_mean_deg": self.rot_err_mean_deg,
            "rot_err_median_deg": self.rot_err_median_deg,
            "rot_under_5": self.rot_under_5, "rot_under_15": self.rot_under_15,
            "rel_rot_under_5": self.rel_rot_under_5, "rel_rot_under_15": self.rel_rot_under_15,
            "rel_trans_under_5": self.rel_trans_under_5,
            "rel_trans_under_15": self.rel_trans_under_15,
            "centre_under_10pct": self.centre_under_10pct,
            "alignment_scale": self.scale, "alignment": self.alignment,
        }


def pose_metrics(T_world_cam_est: Tensor, T_world_cam_gt: Tensor,
                 with_scale: bool = True) -> PoseMetrics:
    """Align estimated poses to ground truth and measure the errors.

    Args:
        T_world_cam_est: ``[M, 4, 4]`` estimated camera-to-world poses (any frame and scale).
        T_world_cam_gt: ``[M, 4, 4]`` ground truth, same order.
        with_scale: estimate the scale of the alignment (pose-free methods have none).

    Returns:
        :class:`PoseMetrics` (tensors float64 on the CPU). The similarity is
        ``align_poses(mode="auto")``: Umeyama's on the centres with 3 or more well-spread
        true centres (the standard ATE alignment), otherwise (2 views, nearly collinear
        centres) its rotation comes from the orientations.
    """
    T_est = T_world_cam_est.detach().double().cpu()
    T_gt = T_world_cam_gt.detach().double().cpu()
    m = T_est.shape[0]
    alignment = alignment_mode(T_gt, "auto")
    s, R, t = align_poses(T_est, T_gt, with_scale=with_scale, mode=alignment)
    T_aligned = apply_sim3_to_poses(s, R, t, T_est)
    trans_err = (T_aligned[:, :3, 3] - T_gt[:, :3, 3]).norm(dim=-1)
    rot_err = rotation_angle_deg(T_gt[:, :3, :3], T_aligned[:, :3, :3])
    rel_rot = relative_rotation_errors(T_est, T_gt)
    rel_trans = relative_translation_errors(T_est, T_gt)
    if m >= 2:
        rpe_t, rpe_r = relative_pose_errors(T_aligned, T_gt)
        rpe_trans = float(rpe_t.square().mean().sqrt())
        rpe_rot = float(rpe_r.mean())
        rel5, rel15 = (float(v) for v in accuracy_under(rel_rot, (5.0, 15.0)))
        rta5, rta15 = (float(v) for v in accuracy_under(rel_trans, (5.0, 15.0)))
    else:
        rpe_trans = rpe_rot = rel5 = rel15 = rta5 = rta15 = math.nan
    diameter = _diameter(T_gt[:, :3, 3])
    cca = float((trans_err < 0.1 * diameter).double().mean()) if diameter > 0 else math.nan
    return PoseMetrics(
        scale=float(s), R=R, t=t, T_world_cam_aligned=T_aligned, trans_err=trans_err,
        rot_err_deg=rot_err, rel_rot_err_deg=rel_rot, rel_trans_err_deg=rel_trans,
        ate_rmse=float(trans_err.square().mean().sqrt()),
        rpe_trans_rmse=rpe_trans, rpe_rot_mean_deg=rpe_rot,
        rot_err_mean_deg=float(rot_err.mean()), rot_err_median_deg=float(rot_err.quantile(0.5)),
        rot_under_5=float((rot_err < 5).double().mean()),
        rot_under_15=float((rot_err < 15).double().mean()),
        rel_rot_under_5=rel5, rel_rot_under_15=rel15,
        rel_trans_under_5=rta5, rel_trans_under_15=rta15, centre_under_10pct=cca,
        alignment=alignment,
    )


# ------------------------------------------------------------------ RelPose++ protocol

RELPOSE_RRA_DEG = (5.0, 15.0, 30.0)
"""The relative-rotation thresholds of :func:`relpose_metrics` (degrees)."""
RELPOSE_CC = 0.1
"""The camera-centre threshold of :func:`relpose_metrics` (share of the scene scale)."""


def first_view_relative(T_world_cam: Tensor) -> Tensor:
    """Poses in the first camera's frame: ``T_cam0_cam_i = T_world_cam_0^-1 T_world_cam_i``
    (``[M, 4, 4]``; the first is the identity), the frame relative pose estimators predict in.

    Args:
        T_world_cam: ``[M, 4, 4]`` camera-to-world poses.
    """
    return invert_T(T_world_cam[:1]) @ T_world_cam


def _similarity_centres(src: Tensor, dst: Tensor) -> Tensor:
    """``src [M, 3]`` moved by the least-squares similarity onto ``dst`` (Umeyama, as
    RelPose++'s ``compute_optimal_alignment``: no rank check, so 2 points and collinear
    points align exactly where they can; a single or all-coincident ``src`` only
    translates)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    var = a.square().sum()
    if float(var) == 0.0:
        return src - mu_s + mu_d
    U, S, Vh = torch.linalg.svd(b.T @ a)
    D = torch.ones(3, dtype=src.dtype)
    D[2] = torch.sign(torch.linalg.det(U @ Vh)) or 1.0
    R = U @ torch.diag(D) @ Vh
    scale = (S * D).sum() / var
    return scale * a @ R.T + mu_d


def relpose_centre_errors(T_world_cam_est: Tensor, T_world_cam_gt: Tensor) -> Tensor:
    """``[M]`` RelPose++ camera-centre errors: the distance between the similarity-aligned
    estimated centres and the true ones, divided by the scene scale (the largest distance
    of a true centre from their centroid); NaN when all true centres coincide.

    Args:
        T_world_cam_est: ``[M, 4, 4]`` estimated poses (any frame and scale).
        T_world_cam_gt: ``[M, 4, 4]`` ground truth.
    """
    c_est = T_world_cam_est.detach().double().cpu()[:, :3, 3]
    c_gt = T_world_cam_gt.detach().double().cpu()[:, :3, 3]
    scale = float((c_gt - c_gt.mean(0)).norm(dim=-1).max())
    if scale == 0.0:
        return torch.full((c_gt.shape[0],), math.nan, dtype=torch.float64)
    return (_similarity_centres(c_est, c_gt) - c_gt).norm(dim=-1) / scale


def relpose_metrics(T_world_cam_est: Tensor, T_world_cam_gt: Tensor) -> dict[str, float]:
    """The RelPose++ evaluation of one set of M views: ``{"rra5", "rra15", "rra30",
    "cc10"}``, fractions in ``[0, 1]``.

    ``rraX``: share of the ``M (M - 1) / 2`` unordered pairs ``i < j`` whose relative
    rotation is off by less than X degrees (:func:`relative_rotation_errors`).
    ``cc10``: share of cameras whose centre lies within 10 % of the scene scale of the true
    one after the similarity alignment (:func:`relpose_centre_errors`; 1 for 2 views).
    Both are invariant to a similarity of either world, so the estimates may be in the
    first view's frame (:func:`first_view_relative`) or any other. NaN for ``M < 2``.

    Args:
        T_world_cam_est: ``[M, 4, 4]`` estimated camera-to-world poses (OpenCV).
        T_world_cam_gt: ``[M, 4, 4]`` ground truth, same order.
    """
    if T_world_cam_est.shape != T_world_cam_gt.shape or T_world_cam_est.dim() != 3:
        raise ValueError("relpose_metrics needs two [M, 4, 4] pose stacks of the same "
                         f"length, got {tuple(T_world_cam_est.shape)} and "
                         f"{tuple(T_world_cam_gt.shape)}")
    T_est = T_world_cam_est.detach().double().cpu()
    T_gt = T_world_cam_gt.detach().double().cpu()
    keys = [f"rra{int(t)}" for t in RELPOSE_RRA_DEG] + ["cc10"]
    if T_est.shape[0] < 2:
        return dict.fromkeys(keys, math.nan)
    rra = accuracy_under(relative_rotation_errors(T_est, T_gt), RELPOSE_RRA_DEG)
    err = relpose_centre_errors(T_est, T_gt)
    cc = float((err < RELPOSE_CC).double().mean()) if not torch.isnan(err).any() else math.nan
    return dict(zip(keys, [float(v) for v in rra] + [cc], strict=True))


def average_relpose_metrics(per_set: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of :func:`relpose_metrics` over sets of the same view count (each set
    weighs the same, as RelPose++ averages over sequences), ignoring NaN; NaN when empty."""
    keys = [f"rra{int(t)}" for t in RELPOSE_RRA_DEG] + ["cc10"]
    out = {}
    for k in keys:
        values = [m[k] for m in per_set if not math.isnan(m[k])]
        out[k] = sum(values) / len(values) if values else math.nan
    return out
