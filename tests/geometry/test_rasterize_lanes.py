"""The compositing kernel's SIMD paths (cuda/rasterize/rasterize_cpu.cpp): 16-lane chunks of
tile rows, 8-lane chunks anchored at a narrow footprint's first column (moved left at the
end of a padded row), several chunks per row for tiles wider than 16, row-wise early
termination, and the radix depth sort of the binning. Each must give the PyTorch
reference's renders and gradients, on float32 and float64."""

from __future__ import annotations

import pytest
import torch

from geometry.ops.rasterize import rasterize_to_pixels_native, rasterize_to_pixels_torch

KEYS = ("means2d", "conics", "colors", "opacities")


def _scene(n, width, height, seed, dtype, depths=None):
    """Axis-aligned and rotated Gaussians from 0.4 px (narrow footprints) to 12 px (several
    tiles), opaque enough that many pixels terminate early."""
    gen = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    means = torch.rand(n, 2, generator=gen, **f64) * torch.tensor([width, height], **f64)
    sx = torch.exp(torch.rand(n, generator=gen, **f64) * 3.4 - 0.9)
    sy = torch.exp(torch.rand(n, generator=gen, **f64) * 3.4 - 0.9)
    rho = (torch.rand(n, generator=gen, **f64) - 0.5) * 1.2
    cxx, cyy, cxy = sx**2 + 0.3, sy**2 + 0.3, rho * sx * sy
    det = cxx * cyy - cxy**2
    opac = torch.rand(n, generator=gen, **f64) * 0.9 + 0.09
    extent = torch.sqrt(2 * torch.log(opac * 255)).clamp(max=3.33)
    radii = torch.stack((torch.ceil(extent * cxx.sqrt()), torch.ceil(extent * cyy.sqrt())), -1)
    if depths is None:
        depths = torch.rand(n, generator=gen, **f64) * 4 - 1
    return dict(
        means2d=means[None].to(dtype),
        conics=torch.stack((cyy / det, -cxy / det, cxx / det), -1)[None].to(dtype),
        colors=torch.rand(1, n, 3, generator=gen, **f64).to(dtype),
        opacities=opac[None].to(dtype), depths=depths[None].to(dtype), radii=radii[None].int(),
    )


def _render_and_grads(fn, scene, width, height, tile_size):
    inputs = {k: v.clone().requires_grad_() if k in KEYS else v for k, v in scene.items()}
    img, alpha = fn(**inputs, width=width, height=height, tile_size=tile_size)
    weight = torch.randn(img.shape, generator=torch.Generator().manual_seed(2), dtype=img.dtype)
    grads = torch.autograd.grad((img * weight).sum() + alpha.sum(), [inputs[k] for k in KEYS])
    return img.detach(), alpha.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tile_size", [16, 24, 40])
def test_lane_paths_match_reference(tile_size, dtype):
    width, height = 70, 45
    scene = _scene(120, width, height, seed=tile_size, dtype=dtype)
    img_n, alpha_n, grads_n = _render_and_grads(rasterize_to_pixels_native, scene, width, height,
                                                tile_size)
    img_r, alpha_r, grads_r = _render_and_grads(rasterize_to_pixels_torch, scene, width, height,
                                                tile_size)
    # float32: the kernel's exp is within ~1 ulp of torch's and the sums run in another
    # order (a dropped or extra pixel would be off by >= 1/255 of its colour); float64: the
    # kernel uses std::exp.
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    assert alpha_n.amax() > 0.99  # opaque enough that pixels terminate early
    assert (img_n - img_r).abs().max() < tol
    assert (alpha_n - alpha_r).abs().max() < tol
    for g_n, g_r in zip(grads_n, grads_r, strict=True):
        assert (g_n - g_r).abs().max() <= 10 * tol * (g_r.abs().max() + 1.0)


def test_depth_ties_and_signed_zeros_keep_index_order():
    """The radix sort is stable and orders like `<`: equal depths (and -0 / +0) keep index
    order, negative depths come first."""
    width, height = 40, 30
    depths = torch.tensor([0.5, -0.0, 0.0, 0.5, -2.0, 0.0, -0.0, 0.5, 1e-30, -1e-30] * 6,
                          dtype=torch.float64)
    scene = _scene(60, width, height, seed=5, dtype=torch.float32, depths=depths)
    out_n = _render_and_grads(rasterize_to_pixels_native, scene, width, height, 16)
    out_r = _render_and_grads(rasterize_to_pixels_torch, scene, width, height, 16)
    assert (out_n[0] - out_r[0]).abs().max() < 1e-5
    for g_n, g_r in zip(out_n[2], out_r[2], strict=True):
        assert (g_n - g_r).abs().max() <= 1e-4 * (g_r.abs().max() + 1.0)


def test_results_do_not_depend_on_the_thread_count():
    width, height = 70, 45
    scene = _scene(150, width, height, seed=7, dtype=torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n_threads in (1, 3):
            torch.set_num_threads(n_threads)
            results.append(_render_and_grads(rasterize_to_pixels_native, scene, width, height, 24))
    finally:
        torch.set_num_threads(threads)
    (img_a, alpha_a, grads_a), (img_b, alpha_b, grads_b) = results
    assert torch.equal(img_a, img_b) and torch.equal(alpha_a, alpha_b)
    for g_a, g_b in zip(grads_a, grads_b, strict=True):
        assert torch.equal(g_a, g_b)
