"""Similarity transforms (scale, rotation, translation): Umeyama alignment and pose alignment.

A similarity is kept as the triple ``(s, R, t)`` acting as ``x -> s * R @ x + t``. Aligning
an estimated trajectory to ground truth (pose evaluation, putting a reconstruction into
a reference frame) is :func:`align_poses` followed by :func:`apply_sim3_to_poses`; the one
rule for when camera centres are too close to a line to fix the rotation is
:func:`centres_well_spread` (``align_poses(mode="auto")``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from geometry.se3 import make_T
from geometry.so3 import chordal_mean

# Relative size of the second singular value of the cross-covariance below which the point
# sets are called collinear: the rotation about their common line is then undetermined.
_COLLINEAR_RTOL = 1e-6


def umeyama(
    src: Tensor,
    dst: Tensor,
    with_scale: bool = True,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares similarity (Umeyama 1991) with ``dst ~ s * R @ src + t``.

    Minimises ``sum_i w_i |dst_i - (s R src_i + t)|^2`` with ``R`` a proper rotation
    (``det R = +1``; the reflection case is handled by the sign correction of the SVD).

    Args:
        src: ``[..., N, 3]`` source points.
        dst: ``[..., N, 3]`` target points (same ``N``; batch dims broadcast).
        with_scale: estimate ``s``; otherwise ``s = 1`` (rigid alignment).
        weights: optional ``[..., N]`` non-negative weights.

    Returns:
        ``s [...]``, ``R [..., 3, 3]``, ``t [..., 3]``.

    Raises:
        ValueError: fewer than 3 points, or a degenerate configuration (all points
            coincident or collinear in either set, or zero total weight), where the
            rotation is not determined.
    """
    if src.shape[-1] != 3 or dst.shape[-1] != 3 or src.shape[-2] != dst.shape[-2]:
        raise ValueError(f"umeyama needs [..., N, 3] point sets, got {src.shape} and {dst.shape}")
    n = src.shape[-2]
    if n < 3:
        raise ValueError(f"umeyama needs at least 3 point pairs to fix a rotation, got {n}")
    if weights is None:
        weights = torch.ones(src.shape[:-1], dtype=src.dtype, device=src.device)
    weights = weights.to(src.dtype)
    if (weights < 0).any():
        raise ValueError("umeyama weights must be non-negative")
    w_sum = weights.sum(-1, keepdim=True)  # [..., 1]
    if (w_sum <= 0).any():
        raise ValueError("umeyama weights sum to zero")
    w = (weights / w_sum)[..., None]  # [..., N, 1]
    mu_src = (w * src).sum(-2)  # [..., 3]
    mu_dst = (w * dst).sum(-2)
    src_c = src - mu_src[..., None, :]
    dst_c = dst - mu_dst[..., None, :]
    cov = (w * dst_c).transpose(-1, -2) @ src_c  # [..., 3, 3] = sum w dst_c src_c^T
    U, D, Vh = torch.linalg.svd(cov)
    scale_ref = D[..., 0]
    if (scale_ref <= torch.finfo(src.dtype).tiny).any() or (
        D[..., 1] <= _COLLINEAR_RTOL * scale_ref
    ).any():
        raise ValueError(
            "umeyama got degenerate points (coincident or collinear): the rotation is "
            "undetermined; use at least 3 non-collinear points"
        )
    sign = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    S = torch.ones_like(D)
    S[..., 2] = sign
    R = U @ (S[..., :, None] * Vh)
    if with_scale:
        var_src = (w[..., 0] * (src_c * src_c).sum(-1)).sum(-1)  # [...]
        s = (D * S).sum(-1) / var_src
    else:
        s = torch.ones(R.shape[:-2], dtype=R.dtype, device=R.device)
    t = mu_dst - s[..., None] * (R @ mu_src[..., None])[..., 0]
    return s, R, t


def sim3_apply(s: Tensor, R: Tensor, t: Tensor, pts: Tensor) -> Tensor:
    """Apply ``x -> s R x + t`` to point sets.

    Args:
        s: ``[...]`` scale.
        R: ``[..., 3, 3]`` rotation.
        t: ``[..., 3]`` translation.
        pts: ``[..., N, 3]``.

    Returns:
        ``[..., N, 3]``.
    """
    s = torch.as_tensor(s, dtype=pts.dtype, device=pts.device)
    return s[..., None, None] * (pts @ R.transpose(-1, -2)) + t[..., None, :]


def sim3_inverse(s: Tensor | float, R: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The inverse similarity ``x -> (1/s) R^T x - (1/s) R^T t`` of ``x -> s R x + t``.

    Args:
        s: ``[...]`` scale (a float or a tensor).
        R: ``[..., 3, 3]`` rotation.
        t: ``[..., 3]`` translation.

    Returns:
        ``s_inv [...]``, ``R_inv [..., 3, 3]``, ``t_inv [..., 3]`` (R's dtype and device).
    """
    s = torch.as_tensor(s, dtype=R.dtype, device=R.device)
    R_inv = R.transpose(-1, -2)
    t_inv = -(R_inv @ t.to(R.dtype)[..., None])[..., 0] / s[..., None]
    return 1.0 / s, R_inv, t_inv


def sim3_to_matrix(s: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """The 4x4 matrix ``[[s R, t], [0, 1]]`` of a similarity.

    Returns:
        ``[..., 4, 4]``.
    """
    s = torch.as_tensor(s, dtype=R.dtype, device=R.device)
    return make_T(s[..., None, None] * R, t)


def apply_sim3_to_poses(s: Tensor, R: Tensor, t: Tensor, T_world_cam: Tensor) -> Tensor:
    """Move camera poses by a similarity of the world: ``T_world'_cam``.

    The camera centre ``c`` goes to ``s R c + t`` and the orientation to ``R R_world_cam``;
    the rotation part stays orthonormal (the scale only moves centres, so the result is
    again a rigid camera pose).

    Args:
        s: ``[...]`` scale (a float or a 0-d tensor for one similarity).
        R: ``[..., 3, 3]``.
        t: ``[..., 3]``.
        T_world_cam: ``[..., M, 4, 4]`` or ``[..., 4, 4]`` (batch dims broadcast).

    Returns:
        ``[..., M, 4, 4]`` poses in the new world frame.
    """
    s = torch.as_tensor(s, dtype=T_world_cam.dtype, device=T_world_cam.device)
    R = R.to(T_world_cam.dtype)
    t = t.to(T_world_cam.dtype)
    extra = T_world_cam.dim() - R.dim()  # pose batch dims beyond the similarity's
    R_b = R.reshape(*R.shape[:-2], *([1] * extra), 3, 3)
    t_b = t.reshape(*t.shape[:-1], *([1] * extra), 3)
    s_b = s.reshape(*s.shape, *([1] * extra))
    R_new = R_b @ T_world_cam[..., :3, :3]
    c_new = s_b[..., None] * (R_b @ T_world_cam[..., :3, 3:4])[..., 0] + t_b
    return make_T(R_new, c_new)


#: How :func:`align_poses` finds the rotation of the similarity: ``centres`` (Umeyama on the
#: camera centres, the standard ATE alignment), ``orientations`` (from the camera orientations)
#: or ``auto`` (``centres`` when the reference centres are well spread, see
#: :func:`centres_well_spread`, ``orientations`` otherwise).
AlignMode = Literal["auto", "centres", "orientations"]

#: Ratio of the second to the first singular value of the centred camera centres below
#: which they count as (nearly) collinear: Umeyama's rotation about their line is then
#: ill-conditioned (a small centre error tilts it by degrees), so ``mode="auto"`` takes the
#: rotation of the alignment from the camera orientations instead.
SPREAD_RATIO = 0.1


def centres_well_spread(centres: Tensor) -> bool:
    """Whether ``[M, 3]`` camera centres fix a rotation well (3+, not nearly collinear)."""
    if centres.shape[0] < 3:
        return False
    sv = torch.linalg.svdvals(centres.double() - centres.double().mean(0))
    return bool(sv[0] > 0 and sv[1] >= SPREAD_RATIO * sv[0])


def alignment_mode(T_world_cam_ref: Tensor, mode: AlignMode = "auto") -> str:
    """The alignment :func:`align_poses` uses for reference poses ``[M, 4, 4]``:
    ``mode`` itself, or for ``auto`` ``centres`` when the reference centres are well
    spread (:func:`centres_well_spread`) and ``orientations`` otherwise."""
    if mode not in ("auto", "centres", "orientations"):
        raise ValueError(f"unknown alignment mode {mode!r}; use auto, centres or orientations")
    if mode != "auto":
        return mode
    return "centres" if centres_well_spread(T_world_cam_ref[:, :3, 3]) else "orientations"


def align_poses(
    T_world_cam_est: Tensor,
    T_world_cam_gt: Tensor,
    with_scale: bool = True,
    mode: AlignMode = "centres",
) -> tuple[Tensor, Tensor, Tensor]:
    """Similarity that best maps estimated camera centres onto ground-truth ones.

    With ``mode="centres"`` (the standard ATE alignment) this is :func:`umeyama` on the
    camera centres, which needs at least 3 cameras with non-collinear centres.
    With ``mode="orientations"`` the rotation comes from the camera orientations instead
    (chordal mean of ``R_gt R_est^T``), the scale from the centres' spread about their
    mean and the translation from the means: this works for 2 cameras (1 without scale)
    and for collinear centres, as in a forward-moving or two-view setup.
    ``mode="auto"`` picks one of the two by :func:`alignment_mode` (pose metrics use it).

    Args:
        T_world_cam_est: ``[M, 4, 4]`` estimated poses (camera-to-world, OpenCV).
        T_world_cam_gt: ``[M, 4, 4]`` reference poses.
        with_scale: estimate the scale (monocular/sparse-view estimates have none).
        mode: see above.

    Returns:
        ``s []``, ``R [3, 3]``, ``t [3]`` with ``c_gt ~ s R c_est + t``; use
        :func:`apply_sim3_to_poses` to move the estimates.

    Raises:
        ValueError: too few cameras or a degenerate configuration, with the reason.
    """
    if T_world_cam_est.shape != T_world_cam_gt.shape or T_world_cam_est.dim() != 3:
        raise ValueError(
            "align_poses needs two [M, 4, 4] pose stacks of the same length, got "
            f"{tuple(T_world_cam_est.shape)} and {tuple(T_world_cam_gt.shape)}"
        )
    mode = alignment_mode(T_world_cam_gt, mode)
    m = T_world_cam_est.shape[0]
    c_est = T_world_cam_est[:, :3, 3]
    c_gt = T_world_cam_gt[:, :3, 3]
    if mode == "centres":
        if m < 3:
            raise ValueError(
                f"align_poses needs at least 3 cameras to align by centres, got {m}; "
                "pass mode='orientations' to take the rotation from the camera orientations"
            )
        try:
            return umeyama(c_est, c_gt, with_scale=with_scale)
        except ValueError as err:
            raise ValueError(
                "align_poses: the camera centres are collinear or coincident, so the "
                "rotation about their line is undetermined; pass mode='orientations'"
            ) from err
    min_cams = 2 if with_scale else 1
    if m < min_cams:
        raise ValueError(f"align_poses needs at least {min_cams} camera(s), got {m}")
    R = chordal_mean(T_world_cam_gt[:, :3, :3] @ T_world_cam_est[:, :3, :3].mT)
    mu_est, mu_gt = c_est.mean(0), c_gt.mean(0)
    if with_scale:
        spread_est = (c_est - mu_est).square().sum(-1).mean().sqrt()
        spread_gt = (c_gt - mu_gt).square().sum(-1).mean().sqrt()
        if spread_est <= torch.finfo(c_est.dtype).eps * (1.0 + mu_est.abs().max()):
            raise ValueError("align_poses: the estimated camera centres coincide; no scale")
        s = spread_gt / spread_est
    else:
        s = torch.ones((), dtype=c_est.dtype, device=c_est.device)
    t = mu_gt - s * (R @ mu_est)
    return s, R, t
