"""The compositing op ``sparseview::rasterize_to_pixels`` (cuda/rasterize/rasterize_cpu.cpp)
against its pure-PyTorch reference, on screen-space inputs. The splatting API around it is
tested in tests/reconstruction/test_splatting.py."""

from __future__ import annotations

import pytest
import torch

from geometry.ops.rasterize import (
    rasterize_to_pixels,
    rasterize_to_pixels_native,
    rasterize_to_pixels_torch,
)


def test_gradcheck_compositing_float64():
    torch.manual_seed(0)
    C, N, W, H = 1, 4, 7, 5
    means2d = torch.tensor([[[2.0, 2.0], [4.5, 2.5], [3.2, 3.9], [5.5, 1.2]]], dtype=torch.float64)
    conics = torch.tensor([[[0.4, 0.05, 0.3], [0.25, -0.1, 0.5], [0.6, 0.0, 0.6],
                            [0.3, 0.1, 0.2]]], dtype=torch.float64)
    colors = torch.rand(C, N, 3, dtype=torch.float64)
    opacities = torch.tensor([[0.7, 0.5, 0.9, 0.6]], dtype=torch.float64)
    depths = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    radii = torch.full((C, N, 2), 6, dtype=torch.int32)

    def fn(m, c, col, o):
        return rasterize_to_pixels_native(m, c, col, o, depths, radii, W, H, 4)

    inputs = tuple(t.clone().requires_grad_() for t in (means2d, conics, colors, opacities))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)
    # And the reference agrees with the native op on the same tiny input.
    ref = rasterize_to_pixels_torch(means2d, conics, colors, opacities, depths, radii, W, H, 4)
    nat = fn(means2d, conics, colors, opacities)
    assert torch.allclose(nat[0], ref[0], atol=1e-12) and torch.allclose(nat[1], ref[1], atol=1e-12)
    # The dispatching entry point runs the native op on the CPU: the very same values.
    disp = rasterize_to_pixels(means2d, conics, colors, opacities, depths, radii, W, H, 4)
    assert torch.equal(disp[0], nat[0]) and torch.equal(disp[1], nat[1])


def test_dispatch_refuses_devices_without_a_native_backend():
    meta = dict(device="meta")
    args = (torch.zeros(1, 2, 2, **meta), torch.zeros(1, 2, 3, **meta),
            torch.zeros(1, 2, 3, **meta), torch.zeros(1, 2, **meta), torch.zeros(1, 2, **meta),
            torch.zeros(1, 2, 2, dtype=torch.int32, **meta))
    with pytest.raises(ValueError, match="no native backend for meta"):
        rasterize_to_pixels(*args, 8, 8)
