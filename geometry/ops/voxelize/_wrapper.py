"""Python front end of the native op ``sparseview::voxelize``.

The op is declared in ``cuda/registry.cpp`` and implemented for the CPU in
``cuda/voxelize/voxelize_cpu.cpp`` (compiled on first use by :mod:`geometry.ops.loader`).
It has no gradient: it selects points, it does not compute with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from geometry.ops.loader import load_ops


def voxelize_native(
    points: Tensor,  # [N, C] on the CPU
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    max_points: int,
    max_voxels: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The native CPU kernel (see :func:`geometry.ops.voxelize.voxelize`)."""
    load_ops()
    return torch.ops.sparseview.voxelize(
        points, [float(v) for v in voxel_size], [float(v) for v in point_range],
        int(max_points), int(max_voxels),
    )
