"""Python front end of the native sparse-voxel ops (``torch.ops.sparseview.ray_march``,
``voxel_hash``, ``voxel_reduce``, ``sparse_trilinear_fwd``).

The ops are declared in ``cuda/registry.cpp`` and implemented in
``cuda/sparse_voxel/sparse_voxel_cpu.cpp`` (CPU) and ``cuda/sparse_voxel/sparse_voxel_cuda.cu``
+ ``sparse_voxel_cuda.cpp`` (CUDA, built only where a CUDA device exists); here
``voxel_reduce`` and ``sparse_trilinear_fwd`` get their autograd formulas (the native
backward ops) with ``torch.library.register_autograd``. Kernels compile on the first call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from geometry.ops.loader import load_ops_with_autograd
from geometry.ops.sparse_voxel._torch_impl import RayMarchSamples


def _reduce_setup_context(ctx, inputs, output) -> None:
    features, inverse, counts = inputs
    _, mx = output
    ctx.save_for_backward(features, inverse, counts, mx)


def _reduce_backward(ctx, grad_mean, grad_max):
    features, inverse, counts, mx = ctx.saved_tensors
    grad = torch.ops.sparseview.voxel_reduce_bwd(
        None if grad_mean is None else grad_mean.contiguous(),
        None if grad_max is None else grad_max.contiguous(), features, inverse, counts, mx)
    return grad, None, None


def _trilinear_setup_context(ctx, inputs, output) -> None:
    _points, _coords, features, _size, _origin, _corners = inputs
    _, rows, weights = output
    ctx.save_for_backward(rows, weights)
    ctx.num_rows = features.shape[0]


def _trilinear_backward(ctx, grad_out, _grad_rows, _grad_weights):
    rows, weights = ctx.saved_tensors
    grad = None
    if grad_out is not None:
        if grad_out.shape[0] and not rows.shape[0]:
            raise RuntimeError("sparse_trilinear_fwd ran with corners=False: it keeps nothing "
                               "to differentiate (call it with corners=True)")
        grad = torch.ops.sparseview.sparse_trilinear_bwd(grad_out.contiguous(), rows, weights,
                                                         ctx.num_rows)
    return None, None, grad, None, None, None


def _ensure_registered() -> None:
    load_ops_with_autograd({
        "sparseview::voxel_reduce": (_reduce_backward, _reduce_setup_context),
        "sparseview::sparse_trilinear_fwd": (_trilinear_backward, _trilinear_setup_context),
    })


def has_native(op: str, device: torch.device | str) -> bool:
    """Whether ``sparseview::<op>`` has a native kernel for ``device``'s type (builds the ops;
    on a CUDA machine the build includes the CUDA sources)."""
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):
        return False
    _ensure_registered()
    key = "CPU" if device_type == "cpu" else "CUDA"
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"sparseview::{op}", key)


def ray_march_native(
    origins: Tensor,  # [R, 3] float32
    dirs: Tensor,  # [R, 3] float32
    near: Tensor,  # [R] float32
    far: Tensor,  # [R] float32
    occupancy: Tensor,  # [L, X, Y, Z] bool / uint8
    bounds: Tensor,  # [L, 6] float32
    step: float,
) -> RayMarchSamples:
    """The native kernel of :func:`geometry.ops.sparse_voxel.ray_march` (no gradient)."""
    _ensure_registered()
    return RayMarchSamples(*torch.ops.sparseview.ray_march(
        origins, dirs, near, far, occupancy, bounds, float(step)))


def voxel_hash_native(
    points: Tensor,  # [N, >=3]
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    max_points: int = -1,
    max_voxels: int = -1,
) -> tuple[Tensor, Tensor, Tensor]:
    """The native kernel of :func:`geometry.ops.sparse_voxel.voxel_hash`."""
    _ensure_registered()
    return torch.ops.sparseview.voxel_hash(
        points, [float(v) for v in voxel_size], [float(v) for v in point_range],
        int(max_points), int(max_voxels))


def voxel_reduce_native(features: Tensor, inverse: Tensor, counts: Tensor
                        ) -> tuple[Tensor, Tensor]:
    """The native kernel of :func:`geometry.ops.sparse_voxel.voxel_reduce` (differentiable
    w.r.t. ``features``)."""
    _ensure_registered()
    return torch.ops.sparseview.voxel_reduce(features.contiguous(), inverse.contiguous(),
                                             counts.contiguous())


def sparse_trilinear_native(
    points: Tensor,  # [Q, 3]
    coords: Tensor,  # [M, 3] int
    features: Tensor,  # [M, C]
    voxel_size: Sequence[float],
    origin: Sequence[float],
    return_corners: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """The native kernel of :func:`geometry.ops.sparse_voxel.sparse_trilinear`
    (differentiable w.r.t. ``features``). The corner rows and weights ``[Q, 8]`` the
    backward needs are computed only when they are returned or ``features`` needs a
    gradient (inference writes only the output)."""
    _ensure_registered()
    corners = return_corners or (features.requires_grad and torch.is_grad_enabled())
    out, rows, weights = torch.ops.sparseview.sparse_trilinear_fwd(
        points.detach().contiguous(), coords.contiguous(), features.contiguous(),
        [float(v) for v in voxel_size], [float(v) for v in origin], corners)
    return (out, rows, weights) if return_corners else out
