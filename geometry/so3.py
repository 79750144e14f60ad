"""Rotations: unit quaternions (wxyz), rotation matrices, axis-angle vectors and the 6D form.

Conventions
-----------
- Quaternions are ``(w, x, y, z)`` with the Hamilton product, and represent the rotation
  ``v -> q v q*``. :func:`matrix_to_quat` returns the representative with ``w >= 0``.
- Rotation matrices act on column vectors: ``v' = R @ v``.
- Axis-angle ``aa = theta * axis`` (radians), ``theta`` in ``[0, pi]`` from the logs.
- 6D (Zhou et al., CVPR 2019) follows pytorch3d: the FIRST TWO ROWS of ``R`` flattened,
  ``d6 = R[..., :2, :].reshape(..., 6)``; Gram-Schmidt on the two rows maps back.

Every function is batched over leading dimensions ``...``, works on any float dtype and
device, and is differentiable (the small-angle cases use Taylor series chosen so that
gradients at exactly zero rotation are finite and correct).
"""

from __future__ import annotations

import torch
from torch import Tensor

from geometry.shapes import broadcast_shapes

# Below this theta^2 the trigonometric ratios use their Taylor series. With terms up to
# theta^8 the truncation error at theta^2 = 0.05 is < 1e-16 relative, and the closed forms
# above it lose at most ~1e-13 (float64) / ~1e-5 (float32) to cancellation.
_SMALL_ANGLE_SQ = 0.05


def _series(x: Tensor, coefficients: tuple[float, ...]) -> Tensor:
    """Evaluate ``sum_k c_k x^k`` with Horner's rule."""
    out = torch.full_like(x, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * x + c
    return out


def _split_small(theta_sq: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(small, theta_sq_safe)``: a mask and theta^2 with the small entries set to 1.

    The closed forms are evaluated on ``theta_sq_safe`` so that their (discarded) values at
    zero angle are finite and ``torch.where`` does not leak NaN gradients.
    """
    small = theta_sq < _SMALL_ANGLE_SQ
    return small, torch.where(small, torch.ones_like(theta_sq), theta_sq)


def rotation_coefficients(theta_sq: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The Rodrigues coefficients as functions of ``theta^2``.

    Args:
        theta_sq: ``[...]`` squared rotation angle.

    Returns:
        ``(A, B, C)``, each ``[...]``: ``A = sin(t)/t``, ``B = (1 - cos(t))/t^2``,
        ``C = (t - sin(t))/t^3``. ``exp(hat(w)) = I + A W + B W^2`` and the SE(3) left
        Jacobian is ``V = I + B W + C W^2``.
    """
    small, ts = _split_small(theta_sq)
    theta = torch.sqrt(ts)
    a_exact = torch.sin(theta) / theta
    # 2 sin^2(t/2) / t^2 avoids the cancellation of 1 - cos(t).
    b_exact = 2.0 * torch.sin(0.5 * theta) ** 2 / ts
    c_exact = (theta - torch.sin(theta)) / (ts * theta)
    a_series = _series(theta_sq, (1.0, -1 / 6, 1 / 120, -1 / 5040, 1 / 362880))
    b_series = _series(theta_sq, (1 / 2, -1 / 24, 1 / 720, -1 / 40320, 1 / 3628800))
    c_series = _series(theta_sq, (1 / 6, -1 / 120, 1 / 5040, -1 / 362880, 1 / 39916800))
    return (
        torch.where(small, a_series, a_exact),
        torch.where(small, b_series, b_exact),
        torch.where(small, c_series, c_exact),
    )


def hat(v: Tensor) -> Tensor:
    """Skew-symmetric matrix of ``v``: ``hat(v) @ u == cross(v, u)``.

    Args:
        v: ``[..., 3]``.

    Returns:
        ``[..., 3, 3]``.
    """
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack(
        (
            torch.stack((zero, -z, y), -1),
            torch.stack((z, zero, -x), -1),
            torch.stack((-y, x, zero), -1),
        ),
        -2,
    )


def vee(W: Tensor) -> Tensor:
    """Inverse of :func:`hat`: the vector of a skew-symmetric matrix.

    Args:
        W: ``[..., 3, 3]`` (only its antisymmetric part is used).

    Returns:
        ``[..., 3]``.
    """
    return 0.5 * torch.stack(
        (W[..., 2, 1] - W[..., 1, 2], W[..., 0, 2] - W[..., 2, 0], W[..., 1, 0] - W[..., 0, 1]),
        -1,
    )


# ----------------------------------------------------------------------------- quaternions


def quat_normalize(q: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale quaternions to unit norm.

    Args:
        q: ``[..., 4]`` wxyz.

    Returns:
        ``[..., 4]`` unit quaternions (a zero quaternion stays zero instead of NaN).
    """
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(eps)


def quat_multiply(q1: Tensor, q2: Tensor) -> Tensor:
    """Hamilton product ``q1 * q2`` (rotate by ``q2`` first, then by ``q1``).

    Args:
        q1: ``[..., 4]`` wxyz.
        q2: ``[..., 4]`` wxyz (broadcast against ``q1``).

    Returns:
        ``[..., 4]`` wxyz.
    """
    w1, x1, y1, z1 = q1.unbind(-1)
    w2, x2, y2, z2 = q2.unbind(-1)
    return torch.stack(
        (
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ),
        -1,
    )


def quat_conjugate(q: Tensor) -> Tensor:
    """Conjugate ``(w, -x, -y, -z)``: the inverse rotation of a unit quaternion.

    Args:
        q: ``[..., 4]`` wxyz.

    Returns:
        ``[..., 4]`` wxyz.
    """
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quat_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrix of a quaternion (normalised first, so any non-zero ``q`` works).

    Args:
        q: ``[..., 4]`` wxyz.

    Returns:
        ``[..., 3, 3]`` rotation matrix ``R`` with ``R @ v == quat_rotate(q, v)``.
    """
    w, x, y, z = quat_normalize(q).unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    return torch.stack(
        (
            torch.stack((1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy)), -1),
            torch.stack((2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx)), -1),
            torch.stack((2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy)), -1),
        ),
        -2,
    )


def matrix_to_quat(R: Tensor) -> Tensor:
    """Unit quaternion of a rotation matrix, with ``w >= 0``.

    Computes the four candidate quaternions (each divided by a different component) and
    keeps, per matrix, the one whose divisor is largest, so the result is accurate for
    every rotation, including angles near pi where ``w`` vanishes.

    Args:
        R: ``[..., 3, 3]`` rotation matrix.

    Returns:
        ``[..., 4]`` wxyz, unit norm, ``w >= 0``.
    """
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4 * (w^2, x^2, y^2, z^2); clamped because rounding can make them slightly negative.
    four_sq = torch.stack(
        (
            1 + m00 + m11 + m22,
            1 + m00 - m11 - m22,
            1 - m00 + m11 - m22,
            1 - m00 - m11 + m22,
        ),
        -1,
    )
    # Row i holds 4 * q_i * q (the quaternion scaled by 4 q_i).
    scaled = torch.stack(
        (
            torch.stack((four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01), -1),
            torch.stack((m21 - m12, four_sq[..., 1], m10 + m01, m02 + m20), -1),
            torch.stack((m02 - m20, m10 + m01, four_sq[..., 2], m12 + m21), -1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, four_sq[..., 3]), -1),
        ),
        -2,
    )
    best = four_sq.argmax(-1)  # the largest |q_i| is >= 1/2, far from zero
    index = best[..., None, None].expand(*best.shape, 1, 4)
    chosen = torch.gather(scaled, -2, index).squeeze(-2)
    divisor = torch.gather(four_sq, -1, best[..., None]).clamp_min(0.25)
    q = chosen / (2.0 * torch.sqrt(divisor))
    q = torch.where(q[..., :1] < 0, -q, q)
    return quat_normalize(q)


def quat_rotate(q: Tensor, v: Tensor) -> Tensor:
    """Rotate vectors by quaternions (``q`` is normalised first).

    Args:
        q: ``[..., 4]`` wxyz.
        v: ``[..., 3]`` (broadcast against ``q``'s batch dims).

    Returns:
        ``[..., 3]`` rotated vectors ``q v q*``.
    """
    batch = broadcast_shapes(q.shape[:-1], v.shape[:-1])
    q = quat_normalize(q).expand(*batch, 4)
    v = v.expand(*batch, 3)
    w, u = q[..., :1], q[..., 1:]
    uv = torch.linalg.cross(u, v, dim=-1)
    return v + 2.0 * (w * uv + torch.linalg.cross(u, uv, dim=-1))


# ----------------------------------------------------------------------------- axis-angle


def quat_slerp(q0: Tensor, q1: Tensor, alpha: Tensor) -> Tensor:
    """Spherical linear interpolation of unit quaternions (shortest arc).

    ``alpha = 0`` gives ``q0``, ``1`` gives ``q1`` (up to sign); in between, the rotation
    moves at constant angular speed about one axis. Nearly equal inputs fall back to a
    normalised linear blend.

    Args:
        q0, q1: ``[..., 4]`` wxyz.
        alpha: ``[...]`` in ``[0, 1]``.

    Returns:
        ``[..., 4]`` unit quaternions.
    """
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    alpha = alpha[..., None]
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    near = sin_theta < 1e-6
    safe = torch.where(near, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(near, 1 - alpha, torch.sin((1 - alpha) * theta) / safe)
    w1 = torch.where(near, alpha, torch.sin(alpha * theta) / safe)
    q = w0 * q0 + w1 * q1
    return q / q.norm(dim=-1, keepdim=True)


def axis_angle_to_matrix(aa: Tensor) -> Tensor:
    """Rodrigues' formula: rotation by ``|aa|`` radians about ``aa / |aa|``.

    Args:
        aa: ``[..., 3]`` axis-angle (radians).

    Returns:
        ``[..., 3, 3]`` rotation matrix. Exact and differentiable at ``aa = 0``.
    """
    theta_sq = (aa * aa).sum(-1)
    a, b, _ = rotation_coefficients(theta_sq)
    W = hat(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    return eye + a[..., None, None] * W + b[..., None, None] * (W @ W)


def axis_angle_to_quat(aa: Tensor) -> Tensor:
    """Quaternion of an axis-angle vector.

    Args:
        aa: ``[..., 3]`` axis-angle (radians).

    Returns:
        ``[..., 4]`` wxyz unit quaternion (``w >= 0`` when ``|aa| <= pi``).
    """
    half_sq = 0.25 * (aa * aa).sum(-1)  # (theta/2)^2
    # sin(theta/2) / theta = 0.5 * A(theta/2): reuse the sinc series.
    sinc_half, _, _ = rotation_coefficients(half_sq)
    small, hs = _split_small(half_sq)
    cos_half = torch.where(
        small,
        _series(half_sq, (1.0, -1 / 2, 1 / 24, -1 / 720, 1 / 40320)),
        torch.cos(torch.sqrt(hs)),
    )
    return torch.cat((cos_half[..., None], 0.5 * sinc_half[..., None] * aa), -1)


def quat_to_axis_angle(q: Tensor) -> Tensor:
    """Axis-angle vector of a quaternion (normalised first).

    ``q`` and ``-q`` give the same result: the angle returned is in ``[0, pi]``.

    Args:
        q: ``[..., 4]`` wxyz.

    Returns:
        ``[..., 3]`` axis-angle (radians).
    """
    q = quat_normalize(q)
    q = torch.where(q[..., :1] < 0, -q, q)
    w, v = q[..., 0], q[..., 1:]
    n_sq = (v * v).sum(-1)
    # theta / |v| = 2 atan2(|v|, w) / |v|. Near |v| = 0 (then w ~ 1) use the series of
    # atan(x)/x in x^2 = |v|^2 / w^2, so the gradient at the identity is finite.
    small = n_sq < 1e-4
    n_safe = torch.sqrt(torch.where(small, torch.ones_like(n_sq), n_sq))
    w_safe = torch.where(small, w, torch.ones_like(w))
    x_sq = n_sq / (w_safe * w_safe)
    ratio_small = (2.0 / w_safe) * _series(x_sq, (1.0, -1 / 3, 1 / 5, -1 / 7, 1 / 9))
    ratio_exact = 2.0 * torch.atan2(n_safe, w) / n_safe
    return torch.where(small, ratio_small, ratio_exact)[..., None] * v


def matrix_to_axis_angle(R: Tensor) -> Tensor:
    """Axis-angle vector of a rotation matrix, accurate near 0 and near pi.

    Goes through :func:`matrix_to_quat` (robust branch choice) and ``atan2``, which keeps
    full precision at both ends where ``arccos((tr R - 1) / 2)`` would not.

    Args:
        R: ``[..., 3, 3]`` rotation matrix.

    Returns:
        ``[..., 3]`` axis-angle, angle in ``[0, pi]``.
    """
    return quat_to_axis_angle(matrix_to_quat(R))


def so3_exp(omega: Tensor) -> Tensor:
    """Exponential map of so(3): the same as :func:`axis_angle_to_matrix`.

    Args:
        omega: ``[..., 3]`` tangent vector (radians).

    Returns:
        ``[..., 3, 3]``.
    """
    return axis_angle_to_matrix(omega)


def so3_log(R: Tensor) -> Tensor:
    """Logarithm map of SO(3): the same as :func:`matrix_to_axis_angle`.

    Args:
        R: ``[..., 3, 3]``.

    Returns:
        ``[..., 3]`` tangent vector, norm in ``[0, pi]``.
    """
    return matrix_to_axis_angle(R)


# ----------------------------------------------------------------------------- 6D form


def rot6d_to_matrix(d6: Tensor) -> Tensor:
    """Rotation matrix from the 6D form (pytorch3d convention: the first two ROWS of R).

    The two 3-vectors are orthonormalised with Gram-Schmidt; the third row is their
    cross product.

    Args:
        d6: ``[..., 6]``.

    Returns:
        ``[..., 3, 3]``.
    """
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = torch.nn.functional.normalize(b2, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), -2)


def matrix_to_rot6d(R: Tensor) -> Tensor:
    """6D form of a rotation matrix: its first two rows, ``R[..., :2, :]`` flattened.

    Args:
        R: ``[..., 3, 3]``.

    Returns:
        ``[..., 6]``.
    """
    return R[..., :2, :].reshape(*R.shape[:-2], 6)


# ----------------------------------------------------------------------------- sampling


def random_quat(
    shape: tuple[int, ...] | torch.Size = (),
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Quaternions uniformly distributed on SO(3) (normalised Gaussian 4-vectors), ``w >= 0``.

    Returns:
        ``[*shape, 4]`` wxyz.
    """
    q = torch.randn((*shape, 4), generator=generator, dtype=dtype, device=device)
    q = quat_normalize(q)
    return torch.where(q[..., :1] < 0, -q, q)


def random_rotation(
    shape: tuple[int, ...] | torch.Size = (),
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Rotation matrices uniformly distributed on SO(3) (Haar measure).

    Args:
        shape: batch shape.
        generator: optional ``torch.Generator`` for reproducibility (on ``device``).

    Returns:
        ``[*shape, 3, 3]``.
    """
    return quat_to_matrix(random_quat(shape, generator=generator, dtype=dtype, device=device))


def chordal_mean(R: Tensor, dim: int = -3) -> Tensor:
    """The chordal L2 mean of rotations: the mean of ``R [..., M, ..., 3, 3]`` over ``dim``
    projected onto SO(3) (SVD, the determinant fixed to +1)."""
    U, _, Vh = torch.linalg.svd(R.mean(dim))
    S = torch.ones(U.shape[:-1], dtype=R.dtype, device=R.device)
    S[..., 2] = torch.sign(torch.linalg.det(U @ Vh))
    return U @ (S[..., :, None] * Vh)


def rotation_angle(R_a: Tensor, R_b: Tensor) -> Tensor:
    """Angle (radians) of the relative rotation ``R_a^T R_b``, ``[...]``, in ``[0, pi]``.

    ``atan2(|sin|, cos)`` from the skew and trace parts: accurate near 0 and near pi, where
    ``acos`` of the trace loses small angles to rounding (in float32 ``acos`` returns 0 for
    anything under ~0.03 deg). Computed in float64 when the input is float32 or float64,
    returned in that dtype.

    Args:
        R_a: ``[..., 3, 3]`` rotation matrices.
        R_b: ``[..., 3, 3]`` rotation matrices (batch dims broadcast against ``R_a``'s).
    """
    dtype = torch.promote_types(R_a.dtype, R_b.dtype)
    R = R_a.transpose(-1, -2).double() @ R_b.double()
    cos = (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    skew = torch.stack((R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                        R[..., 1, 0] - R[..., 0, 1]), -1)
    sin = skew.norm(dim=-1) / 2.0
    return torch.atan2(sin, cos).to(dtype)
