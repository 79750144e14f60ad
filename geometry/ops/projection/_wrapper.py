"""Python front end of the native projection op ``sparseview::project_gaussians_fwd``.

The op (schema and CPU kernel in ``cuda/projection/projection_cpu.cpp``) gets its autograd
formula, the native backward op, with ``torch.library.register_autograd``. The kernels
are compiled on the first call, never at import.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geometry.ops.loader import load_ops_with_autograd


def _setup_context(ctx, inputs, output) -> None:
    (means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane,
     eps2d, _radius_clip, antialiased, _alpha_threshold, _max_extent) = inputs
    ctx.save_for_backward(means, quats, scales, opacities, viewmats, Ks)
    ctx.options = (width, height, near_plane, far_plane, eps2d, antialiased)


def _backward(ctx, v_means2d, v_conics, v_depths, _v_radii, v_opacities, v_compensations):
    v_means, v_quats, v_scales, v_opac, v_viewmats, v_Ks = (
        torch.ops.sparseview.project_gaussians_bwd(
            *ctx.saved_tensors, *ctx.options, v_means2d, v_conics, v_depths, v_opacities,
            v_compensations,
        )
    )
    return (v_means, v_quats, v_scales, v_opac, v_viewmats, v_Ks, None, None, None, None,
            None, None, None, None, None)


def _ensure_registered() -> None:
    load_ops_with_autograd({"sparseview::project_gaussians_fwd": (_backward, _setup_context)})


def project_gaussians_native(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4] wxyz (normalised inside)
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4] T_cam_world (OpenCV)
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    eps2d: float,
    radius_clip: float,
    antialiased: bool,
    alpha_threshold: float,
    max_extent: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Project Gaussians with the native CPU kernel (differentiable to every float input).

    Returns:
        ``means2d [C, N, 2]`` px, ``conics [C, N, 3]``, ``depths [C, N]``,
        ``radii [C, N, 2]`` int32 (0 = culled), ``opacities [C, N]`` (times the
        compensation if ``antialiased``) and ``compensations [C, N]``.
    """
    _ensure_registered()
    return torch.ops.sparseview.project_gaussians_fwd(
        means.contiguous(), quats.contiguous(), scales.contiguous(), opacities.contiguous(),
        viewmats.contiguous(), Ks.contiguous(), int(width), int(height), float(near_plane),
        float(far_plane), float(eps2d), float(radius_clip), bool(antialiased),
        float(alpha_threshold), float(max_extent),
    )
