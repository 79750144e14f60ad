"""Image and pose metrics of the sparse-view protocol.

Image metrics take images ``[H, W, 3]`` (or batches ``[..., H, W, 3]``) with values in
[0, 1]. SSIM is the one SSIM of the suite (Wang et al. 2004, 11x11 Gaussian window,
sigma 1.5, 'valid' region), shared with InstantSplat's D-SSIM loss.

Masked metrics follow RegNeRF's DTU evaluation (the pixelNeRF/RegNeRF protocol): masked
PSNR is the PSNR of the object pixels only; masked SSIM and LPIPS compare both images
composited on a white background outside the object mask.

Pose metrics compare estimated camera-to-world poses with ground truth after the
similarity (Umeyama Sim(3) on the camera centres) that best maps one onto the other; when
the true centres are nearly collinear (two views, a short arc) Umeyama's rotation about
their line is ill-conditioned, and the rotation comes from the camera orientations instead
(:func:`centres_well_spread`):

- ATE: root-mean-square distance between aligned and true camera centres (GT units);
- RPE: the error of the relative motion between consecutive views (translation RMSE in
  GT units, mean rotation angle in degrees), as in the TUM RGB-D benchmark;
- rotation error: the angle of ``R_gt^T R_aligned`` per view, with its mean, median and the
  share of views under 5 and 15 degrees; the same shares over all view pairs of the
  relative rotations (RRA@5/15 of the pose-estimation literature) need no alignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from geometry.se3 import invert_T
from geometry.sim3 import align_poses, apply_sim3_to_poses
from reconstruction.instantsplat.losses import ssim

__all__ = [
    "PoseMetrics",
    "centres_well_spread",
    "composite_on_white",
    "depth_absrel",
    "pose_metrics",
    "psnr",
    "psnr_from_mse",
    "rotation_angle_deg",
    "ssim",
    "ssim_masked",
]


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error for a peak of 1 (``inf`` for ``mse == 0``)."""
    if mse <= 0.0:
        return math.inf
    return -10.0 * math.log10(mse)


def psnr(image: Tensor, reference: Tensor, mask: Tensor | None = None) -> float:
    """Peak signal-to-noise ratio in dB (peak 1); ``inf`` for identical images.

    Args:
        image: ``[..., H, W, C]`` in [0, 1] (clamped first, like a saved render).
        reference: ``[..., H, W, C]`` ground truth.
        mask: optional ``[..., H, W]`` bool; the MSE is taken over the masked pixels only
            (all channels), as RegNeRF's masked PSNR.

    Returns:
        PSNR in dB (a Python float).
    """
    diff2 = (image.clamp(0, 1).double() - reference.double()) ** 2
    if mask is None:
        return psnr_from_mse(float(diff2.mean()))
    mask = mask.to(torch.bool)
    if not bool(mask.any()):
        return math.nan
    return psnr_from_mse(float(diff2[mask].mean()))


def depth_absrel(depth: Tensor, reference: Tensor, mask: Tensor | None = None) -> float:
    """Mean absolute relative depth error ``mean(|d - d*| / d*)`` (AbsRel).

    Args:
        depth: ``[..., H, W]`` estimated z-depth, already in the reference's units.
        reference: ``[..., H, W]`` ground-truth z-depth; pixels ``<= 0`` (nothing hit) or not
            finite are ignored.
        mask: optional ``[..., H, W]`` bool of pixels to use (e.g. where the render has
            coverage).

    Returns:
        AbsRel (a Python float); NaN when no pixel is valid.
    """
    d, ref = depth.double(), reference.double()
    valid = (ref > 0) & torch.isfinite(ref) & torch.isfinite(d)
    if mask is not None:
        valid &= mask.to(torch.bool)
    if not bool(valid.any()):
        return math.nan
    return float(((d[valid] - ref[valid]).abs() / ref[valid]).mean())


def composite_on_white(image: Tensor, mask: Tensor) -> Tensor:
    """``image * mask + (1 - mask)``: the object on white, ``[..., H, W, C]``."""
    m = mask.to(image.dtype)[..., None]
    return image * m + (1.0 - m)


def ssim_masked(image: Tensor, reference: Tensor, mask: Tensor) -> float:
    """SSIM of both images composited on white outside ``mask [..., H, W]`` (RegNeRF)."""
    return float(ssim(composite_on_white(image.clamp(0, 1), mask),
                      composite_on_white(reference, mask)))


def rotation_angle_deg(R_a: Tensor, R_b: Tensor) -> Tensor:
    """Angle of the rotation ``R_a^T R_b`` in degrees, ``[...]``.

    Uses ``atan2(|sin|, cos)`` from the skew and trace parts, accurate near 0 and 180 deg.

    Args:
        R_a: ``[..., 3, 3]``.
        R_b: ``[..., 3, 3]``.
    """
    R = R_a.transpose(-1, -2).double() @ R_b.double()
    cos = (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    skew = torch.stack((R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                        R[..., 1, 0] - R[..., 0, 1]), -1)
    sin = skew.norm(dim=-1) / 2.0
    return torch.rad2deg(torch.atan2(sin, cos))


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
    alignment: str
    """How the similarity was found: ``centres`` (Umeyama) or ``orientations``."""

    def summary(self) -> dict[str, float | str]:
        """The scalar metrics, for eval.json."""
        return {
            "ate_rmse": self.ate_rmse, "rpe_trans_rmse": self.rpe_trans_rmse,
            "rpe_rot_mean_deg": self.rpe_rot_mean_deg,
            "rot_err_mean_deg": self.rot_err_mean_deg,
            "rot_err_median_deg": self.rot_err_median_deg,
            "rot_under_5": self.rot_under_5, "rot_under_15": self.rot_under_15,
            "rel_rot_under_5": self.rel_rot_under_5, "rel_rot_under_15": self.rel_rot_under_15,
            "alignment_scale": self.scale, "alignment": self.alignment,
        }


def _relative_rotation_errors(T_est: Tensor, T_gt: Tensor) -> Tensor:
    """``[P]`` angle between estimated and true relative rotations of every pair i < j."""
    m = T_est.shape[0]
    i, j = torch.triu_indices(m, m, offset=1)
    R_rel_est = T_est[i, :3, :3].transpose(-1, -2) @ T_est[j, :3, :3]
    R_rel_gt = T_gt[i, :3, :3].transpose(-1, -2) @ T_gt[j, :3, :3]
    return rotation_angle_deg(R_rel_gt, R_rel_est)


#: Ratio of the second to the first singular value of the centred camera centres below
#: which they count as (nearly) collinear: Umeyama's rotation about their line is then
#: ill-conditioned (a small centre error tilts it by degrees), so the rotation of the
#: alignment is taken from the camera orientations instead.
SPREAD_RATIO = 0.1


def centres_well_spread(centres: Tensor) -> bool:
    """Whether ``[M, 3]`` camera centres fix a rotation well (3+, not nearly collinear)."""
    if centres.shape[0] < 3:
        return False
    sv = torch.linalg.svdvals(centres.double() - centres.double().mean(0))
    return bool(sv[0] > 0 and sv[1] >= SPREAD_RATIO * sv[0])


def pose_metrics(T_world_cam_est: Tensor, T_world_cam_gt: Tensor,
                 with_scale: bool = True) -> PoseMetrics:
    """Align estimated poses to ground truth and measure the errors.

    Args:
        T_world_cam_est: ``[M, 4, 4]`` estimated camera-to-world poses (any frame and scale).
        T_world_cam_gt: ``[M, 4, 4]`` ground truth, same order.
        with_scale: estimate the scale of the alignment (pose-free methods have none).

    Returns:
        :class:`PoseMetrics`. With 3 or more cameras whose true centres are well spread
        (:func:`centres_well_spread`) the similarity is Umeyama's on the centres (the
        standard ATE alignment); otherwise (2 views, nearly collinear centres) its rotation
        comes from the orientations (:func:`geometry.sim3.align_poses`).
    """
    T_est = T_world_cam_est.detach().double().cpu()
    T_gt = T_world_cam_gt.detach().double().cpu()
    m = T_est.shape[0]
    if centres_well_spread(T_gt[:, :3, 3]):
        s, R, t = align_poses(T_est, T_gt, with_scale=with_scale)
        alignment = "centres"
    else:
        s, R, t = align_poses(T_est, T_gt, with_scale=with_scale, use_orientations=True)
        alignment = "orientations"
    T_aligned = apply_sim3_to_poses(s, R, t, T_est)
    trans_err = (T_aligned[:, :3, 3] - T_gt[:, :3, 3]).norm(dim=-1)
    rot_err = rotation_angle_deg(T_gt[:, :3, :3], T_aligned[:, :3, :3])
    if m >= 2:
        # Relative motion of consecutive views: E = (T_gt_i^-1 T_gt_j)^-1 (T_al_i^-1 T_al_j).
        rel_gt = invert_T(T_gt[:-1]) @ T_gt[1:]
        rel_est = invert_T(T_aligned[:-1]) @ T_aligned[1:]
        E = invert_T(rel_gt) @ rel_est
        rpe_trans = float(E[:, :3, 3].norm(dim=-1).square().mean().sqrt())
        rpe_rot = float(rotation_angle_deg(torch.eye(3, dtype=E.dtype).expand_as(E[:, :3, :3]),
                                           E[:, :3, :3]).mean())
        rel_rot = _relative_rotation_errors(T_est, T_gt)
        rel5, rel15 = float((rel_rot < 5).double().mean()), float((rel_rot < 15).double().mean())
    else:
        rpe_trans = rpe_rot = rel5 = rel15 = math.nan
    return PoseMetrics(
        scale=float(s), R=R, t=t, T_world_cam_aligned=T_aligned, trans_err=trans_err,
        rot_err_deg=rot_err,
        ate_rmse=float(trans_err.square().mean().sqrt()),
        rpe_trans_rmse=rpe_trans, rpe_rot_mean_deg=rpe_rot,
        rot_err_mean_deg=float(rot_err.mean()), rot_err_median_deg=float(rot_err.quantile(0.5)),
        rot_under_5=float((rot_err < 5).double().mean()),
        rot_under_15=float((rot_err < 15).double().mean()),
        rel_rot_under_5=rel5, rel_rot_under_15=rel15, alignment=alignment,
    )
