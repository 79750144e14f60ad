"""Rigid transforms as 4x4 homogeneous matrices: the one pose representation of sparseview.

A transform is named by the frames it maps between: ``T_a_b`` takes points expressed in
frame ``b`` to frame ``a`` (``pts_a = R_a_b @ pts_b + t_a_b``), so names chain:
``compose(T_a_b, T_b_c) -> T_a_c``. A camera's pose is ``T_world_cam`` (camera-to-world);
its inverse ``T_cam_world`` is gsplat's ``viewmats``.

The tangent vector is ``xi = (rho, omega)`` (translation part first, then rotation), with
``se3_exp(xi) = [[exp(hat(omega)), V(omega) @ rho], [0, 1]]`` and ``V`` the left Jacobian
of SO(3). A pure translation ``xi = (rho, 0)`` therefore gives exactly translation ``rho``.

All functions are batched over leading dimensions ``...`` and differentiable.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from geometry.shapes import broadcast_shapes
from geometry.so3 import _series, _split_small, hat, rotation_coefficients, so3_log


def make_T(R: Tensor, t: Tensor) -> Tensor:
    """Assemble homogeneous transforms.

    Args:
        R: ``[..., 3, 3]`` rotation (or any 3x3 linear part).
        t: ``[..., 3]`` translation (batch dims broadcast against ``R``'s).

    Returns:
        ``[..., 4, 4]`` with last row ``(0, 0, 0, 1)``.
    """
    batch = broadcast_shapes(R.shape[:-2], t.shape[:-1])
    dtype = torch.promote_types(R.dtype, t.dtype)
    top = torch.cat((R.expand(*batch, 3, 3), t.expand(*batch, 3)[..., None]), -1).to(dtype)
    bottom = torch.zeros((*batch, 1, 4), dtype=dtype, device=R.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat((top, bottom), -2)


def identity_T(
    shape: tuple[int, ...] | torch.Size = (),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Identity transforms, ``[*shape, 4, 4]``."""
    return torch.eye(4, dtype=dtype, device=device).expand(*shape, 4, 4).clone()


def invert_T(T_a_b: Tensor) -> Tensor:
    """Inverse of a rigid transform in closed form (``R^T``, ``-R^T t``).

    Args:
        T_a_b: ``[..., 4, 4]`` rigid transform (the rotation part must be orthonormal).

    Returns:
        ``[..., 4, 4]`` ``T_b_a``.
    """
    R_b_a = T_a_b[..., :3, :3].transpose(-1, -2)
    t_b_a = -(R_b_a @ T_a_b[..., :3, 3:4])[..., 0]
    return make_T(R_b_a, t_b_a)


def mirror_x(R: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """A pose ``(R [..., 3, 3], t [..., 3])`` conjugated by the reflection
    ``S = diag(-1, 1, 1)``: ``(S R S, S t)``.

    For camera-to-world poses, the cameras of the scene mirrored in world x whose images
    are the originals flipped left-right (principal point at the image centre; shading and
    shadows mirror with the scene). For poses relative to a camera, the relative poses of
    those flipped views. Its own inverse; rotations stay proper (det +1).
    """
    s = torch.tensor([-1.0, 1.0, 1.0], dtype=R.dtype, device=R.device)
    return R * s[:, None] * s[None, :], t * s.to(t.dtype)


def compose(T_a_b: Tensor, T_b_c: Tensor) -> Tensor:
    """Chain transforms: ``T_a_c = T_a_b @ T_b_c``.

    Args:
        T_a_b: ``[..., 4, 4]``.
        T_b_c: ``[..., 4, 4]`` (batch dims broadcast).

    Returns:
        ``[..., 4, 4]`` ``T_a_c``.
    """
    return T_a_b @ T_b_c


def transform_points(T_a_b: Tensor, pts_b: Tensor) -> Tensor:
    """Apply transforms to point sets.

    Args:
        T_a_b: ``[..., 4, 4]``.
        pts_b: ``[..., N, 3]`` points in frame ``b``; ``T_a_b``'s batch dims broadcast
            against ``pts_b``'s leading dims (one transform per point set).

    Returns:
        ``[..., N, 3]`` points in frame ``a``.
    """
    R = T_a_b[..., :3, :3]
    t = T_a_b[..., None, :3, 3]
    return pts_b @ R.transpose(-1, -2) + t


def transform_directions(T_a_b: Tensor, dirs_b: Tensor) -> Tensor:
    """Rotate direction vectors (no translation).

    Args:
        T_a_b: ``[..., 4, 4]``.
        dirs_b: ``[..., N, 3]``.

    Returns:
        ``[..., N, 3]``.
    """
    return dirs_b @ T_a_b[..., :3, :3].transpose(-1, -2)


def _inverse_left_jacobian_coefficient(theta_sq: Tensor) -> Tensor:
    """``D = (1 - A / (2B)) / theta^2`` so that ``V^-1 = I - W/2 + D W^2``."""
    small, ts = _split_small(theta_sq)
    half = 0.5 * torch.sqrt(ts)
    d_exact = (1.0 - half * torch.cos(half) / torch.sin(half)) / ts
    d_series = _series(theta_sq, (1 / 12, 1 / 720, 1 / 30240, 1 / 1209600, 1 / 47900160))
    return torch.where(small, d_series, d_exact)


def se3_exp(xi: Tensor) -> Tensor:
    """Exponential map of se(3).

    Args:
        xi: ``[..., 6]`` twist ``(rho[3], omega[3])``: translation part, then rotation part
            (radians).

    Returns:
        ``[..., 4, 4]`` rigid transform. Finite, correct gradients at ``xi = 0``, so
        ``se3_exp(delta) @ T`` is the usual pose-update parametrisation.
    """
    rho, omega = xi[..., :3], xi[..., 3:]
    theta_sq = (omega * omega).sum(-1)
    a, b, c = rotation_coefficients(theta_sq)
    W = hat(omega)
    W2 = W @ W
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    R = eye + a[..., None, None] * W + b[..., None, None] * W2
    V = eye + b[..., None, None] * W + c[..., None, None] * W2
    t = (V @ rho[..., None])[..., 0]
    return make_T(R, t)


def se3_log(T: Tensor) -> Tensor:
    """Logarithm map of SE(3), inverse of :func:`se3_exp` (rotation angle in ``[0, pi]``).

    Args:
        T: ``[..., 4, 4]`` rigid transform.

    Returns:
        ``[..., 6]`` twist ``(rho, omega)``.
    """
    omega = so3_log(T[..., :3, :3])
    theta_sq = (omega * omega).sum(-1)
    d = _inverse_left_jacobian_coefficient(theta_sq)
    W = hat(omega)
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    V_inv = eye - 0.5 * W + d[..., None, None] * (W @ W)
    rho = (V_inv @ T[..., :3, 3:4])[..., 0]
    return torch.cat((rho, omega), -1)


def look_at(eye: np.ndarray, target: np.ndarray,
            up: np.ndarray | tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """``T_world_cam [4, 4]`` (OpenCV: x right, y down, z forward) of a camera at ``eye``
    looking at ``target``, float64 numpy.

    The image's up (``-y``) is as close to ``up`` as possible (default world z up: the
    camera's x axis is level with the ground). When the view is parallel to ``up``,
    another perpendicular is used, so the result is always a rotation.

    Args:
        eye: ``[3]`` camera centre in the world frame.
        target: ``[3]`` point the optical axis passes through.
        up: ``[3]`` world direction that should appear up in the image.
    """
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    norm = float(np.linalg.norm(forward))
    if norm == 0.0:
        raise ValueError("look_at: eye and target coincide")
    z = forward / norm
    up = np.asarray(up, dtype=np.float64)
    y = -(up - float(up @ z) * z)
    if float(np.linalg.norm(y)) < 1e-9 * max(1.0, float(np.linalg.norm(up))):
        # Looking along ``up``: any perpendicular will do; take the axis least aligned.
        axis = np.zeros(3)
        axis[int(np.argmin(np.abs(z)))] = 1.0
        y = axis - float(axis @ z) * z
    y = y / np.linalg.norm(y)
    x = np.cross(y, z)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


def optical_axes_point(T_world_cam: Tensor, rcond: float = 1e-3) -> Tensor | None:
    """The point nearest (least squares) to every camera's optical axis, ``[3]`` float64 on
    the CPU; ``None`` when it is not determined: fewer than two cameras, or axes (nearly)
    parallel (the normal matrix's smallest eigenvalue under ``rcond`` times its largest).

    This is the centre an orbit of photos looks at. What to do when there is none is the
    caller's choice (a point in front of the cameras, or an error).

    Args:
        T_world_cam: ``[N, 4, 4]`` camera-to-world poses (OpenCV: z is the optical axis).
        rcond: relative eigenvalue threshold.
    """
    T = T_world_cam.detach().double().cpu()
    if T.shape[0] < 2:
        return None
    centres, axes = T[:, :3, 3], T[:, :3, 2]
    axes = axes / axes.norm(dim=-1, keepdim=True)
    P = torch.eye(3, dtype=torch.float64) - axes[:, :, None] * axes[:, None, :]
    A, b = P.sum(0), (P @ centres[..., None]).sum(0)[:, 0]
    eig = torch.linalg.eigvalsh(A)
    if not float(eig[0]) > rcond * float(eig[-1]):
        return None
    return torch.linalg.solve(A, b)
