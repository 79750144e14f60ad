"""Projection of 3D Gaussians to 2D screen-space Gaussians.

:func:`project_gaussians` is written in PyTorch, so that autograd gives gradients for
every Gaussian parameter and for the cameras (``viewmats``, ``Ks``) with no hand-written
backward: it is the reference. With ``native=True`` it runs the fused CPU op
(:mod:`geometry.ops.projection`, hand-written backward) instead, which the splatting API
uses in production: a few hundred elementwise ops and their autograd nodes per step cost
more than the compositing of small scenes. The maths is gsplat's
``fully_fused_projection`` (EWA splatting with the Jacobian evaluated at a frustum-clamped
mean, a 0.3 px low-pass ``eps2d``, opacity-aware 2D extents).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from geometry.ops.rasterize import ALPHA_THRESHOLD
from geometry.so3 import quat_to_matrix

# gsplat's cap on the extent in standard deviations; opacity <= 1 never reaches it.
MAX_EXTENT_SIGMAS = 3.33


@dataclass
class Projected:
    """Screen-space Gaussians for C cameras. Culled entries have ``radii == 0``."""

    means2d: Tensor  # [C, N, 2] pixels (x right, y down; pixel (i, j) is centred at j+.5, i+.5)
    conics: Tensor  # [C, N, 3] (a, b, c) of the inverse 2D covariance [[a, b], [b, c]]
    depths: Tensor  # [C, N] z in the camera frame, metres
    radii: Tensor  # [C, N, 2] int32 half-extents of the screen-space bounding box, pixels
    opacities: Tensor  # [C, N] effective opacity (times the compensation if antialiased)
    compensations: Tensor  # [C, N] sqrt(det(cov2d) / det(cov2d + eps2d I))


def covariance_entries(quats: Tensor, scales: Tensor) -> tuple[Tensor, ...]:
    """The six unique entries of the world-space covariances ``R S S^T R^T``.

    Args:
        quats: ``[N, 4]`` wxyz (normalised here).
        scales: ``[N, 3]`` standard deviations along the Gaussian's axes, metres.

    Returns:
        ``(xx, xy, xz, yy, yz, zz)``, each ``[N]``.
    """
    M = quat_to_matrix(quats) * scales[..., None, :]  # [N, 3, 3], rows i of R S
    rows = M.unbind(-2)
    return tuple(
        (rows[i] * rows[j]).sum(-1) for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    )


def covariances_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space covariances ``R S S^T R^T``.

    Args:
        quats: ``[N, 4]`` wxyz (normalised here).
        scales: ``[N, 3]`` standard deviations along the Gaussian's axes, metres.

    Returns:
        ``[N, 3, 3]``.
    """
    xx, xy, xz, yy, yz, zz = covariance_entries(quats, scales)
    return torch.stack(
        (torch.stack((xx, xy, xz), -1), torch.stack((xy, yy, yz), -1),
         torch.stack((xz, yz, zz), -1)),
        -2,
    )


def project_gaussians(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4] T_cam_world
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    antialiased: bool = False,
    native: bool = False,
) -> Projected:
    """Project 3D Gaussians into C pinhole cameras (OpenCV convention: z forward).

    ``native``: the fused CPU kernel (CPU tensors only) instead of the PyTorch reference.
    """
    if native:
        from geometry.ops.projection import project_gaussians_native

        means2d, conics, depths, radii, opac, compensations = project_gaussians_native(
            means, quats, scales, opacities, viewmats, Ks, width, height, near_plane,
            far_plane, eps2d, radius_clip, antialiased, ALPHA_THRESHOLD, MAX_EXTENT_SIGMAS)
        return Projected(means2d=means2d, conics=conics, depths=depths, radii=radii,
                         opacities=opac, compensations=compensations)
    R_cam_world = viewmats[:, :3, :3]  # [C, 3, 3]
    t_cam_world = viewmats[:, :3, 3]  # [C, 3]
    means_cam = torch.einsum("cij,nj->cni", R_cam_world, means) + t_cam_world[:, None, :]

    x, y, z = means_cam.unbind(-1)  # [C, N]
    in_depth = (z > near_plane) & (z < far_plane)
    # Culled Gaussians get a harmless depth so that no inf/NaN enters autograd.
    z_safe = torch.where(in_depth, z, torch.ones_like(z))

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Evaluate the Jacobian at the mean clamped to 1.3x the field of view (as 3DGS/gsplat):
    # far off-screen Gaussians otherwise get huge, unstable 2D covariances.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx = z_safe * torch.minimum(torch.maximum(x / z_safe, -lim_x_neg), lim_x_pos)
    ty = z_safe * torch.minimum(torch.maximum(y / z_safe, -lim_y_neg), lim_y_pos)
    # cov2d = J W Σ W^T J^T with W = R_cam_world and the 2x3 Jacobian J = [[j00, 0, j02],
    # [0, j11, j12]], written out on [C, N] component tensors: a few dozen large elementwise
    # ops (and their autograd) instead of many tiny batched 3x3 matmuls, which dominated
    # the cost on CPU. T = J W first (2x3), then U = Σ T^T (Σ symmetric: 6 unique
    # entries), then the 3 unique entries of T U.
    j00, j11 = fx / z_safe, fy / z_safe
    j02, j12 = -fx * tx / z_safe**2, -fy * ty / z_safe**2
    w = [[R_cam_world[:, i, k, None] for k in range(3)] for i in range(3)]  # [C, 1] each
    T0 = [j00 * w[0][k] + j02 * w[2][k] for k in range(3)]  # [C, N] each
    T1 = [j11 * w[1][k] + j12 * w[2][k] for k in range(3)]
    xx, xy, xz, yy, yz, zz = covariance_entries(quats, scales)  # [N] each
    sigma = ((xx, xy, xz), (xy, yy, yz), (xz, yz, zz))

    def sigma_times(t: list[Tensor]) -> list[Tensor]:  # Σ t for a row t of T
        return [sigma[i][0] * t[0] + sigma[i][1] * t[1] + sigma[i][2] * t[2] for i in range(3)]

    U0, U1 = sigma_times(T0), sigma_times(T1)
    a = T0[0] * U0[0] + T0[1] * U0[1] + T0[2] * U0[2]  # cov2d[0, 0]
    b = T0[0] * U1[0] + T0[1] * U1[1] + T0[2] * U1[2]  # cov2d[0, 1]
    c = T1[0] * U1[0] + T1[1] * U1[1] + T1[2] * U1[2]  # cov2d[1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack((c / det_safe, -b / det_safe, a / det_safe), -1)
    compensations = torch.sqrt(torch.clamp(det_orig / det_safe, min=0.0))

    means2d = torch.stack((fx * x / z_safe + cx, fy * y / z_safe + cy), -1)  # [C, N, 2]
    opac = opacities[None].expand_as(z)
    if antialiased:
        opac = opac * compensations

    with torch.no_grad():
        visible = valid & (opac >= ALPHA_THRESHOLD)
        extent = torch.sqrt(
            2.0 * torch.log(torch.clamp(opac / ALPHA_THRESHOLD, min=1.0))
        ).clamp(max=MAX_EXTENT_SIGMAS)
        rx = torch.ceil(extent * torch.sqrt(torch.clamp(a, min=0.0)))
        ry = torch.ceil(extent * torch.sqrt(torch.clamp(c, min=0.0)))
        visible &= ~((rx <= radius_clip) & (ry <= radius_clip))
        visible &= (rx > 0) & (ry > 0)
        mx, my = means2d[..., 0], means2d[..., 1]
        visible &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        visible &= torch.isfinite(mx) & torch.isfinite(my)
        radii = torch.stack((rx, ry), -1)
        radii = torch.where(visible[..., None], radii, torch.zeros_like(radii))
        radii = radii.clamp(max=float(2**30)).to(torch.int32)

    return Projected(
        means2d=means2d,
        conics=conics,
        depths=z,
        radii=radii,
        opacities=opac,
        compensations=compensations,
    )


def camera_centers(viewmats: Tensor) -> Tensor:
    """Camera centres in world coordinates, ``-R^T t``. ``[C, 4, 4] -> [C, 3]``."""
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]

