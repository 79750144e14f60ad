"""The compositing op lists a Gaussian only in the tiles, and walks only the pixels, that its
alpha-cut ellipse can reach (cuda/rasterize/rasterize_cpu.cpp, Ellipse): the pixels it
leaves out must be exactly ones the kernel skips anyway (alpha < 1/255), so the native op
still matches the PyTorch reference, which tests every pixel of every bounding box tile."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.ops.rasterize import rasterize_to_pixels_native, rasterize_to_pixels_torch


def _scene(n, width, height, seed, near_cut):
    """Rotated, often very thin Gaussians; with near_cut, each one's opacity puts a chosen
    pixel just above the alpha cut (alpha = 1/255 * (1 + 1e-5)), at its footprint's edge."""
    gen = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    means = torch.rand(n, 2, generator=gen, **f64) * torch.tensor([width, height], **f64)
    angle = torch.rand(n, generator=gen, **f64) * math.pi
    s1 = torch.exp(torch.rand(n, generator=gen, **f64) * 3.5 - 0.5)  # 0.6 .. 20 px
    s2 = torch.where(torch.rand(n, generator=gen) < 0.5, s1 * 0.02,
                     torch.exp(torch.rand(n, generator=gen, **f64) * 3 - 1))
    cs, sn = torch.cos(angle), torch.sin(angle)
    cxx = cs**2 * s1**2 + sn**2 * s2**2 + 0.3
    cyy = sn**2 * s1**2 + cs**2 * s2**2 + 0.3
    cxy = cs * sn * (s1**2 - s2**2)
    det = cxx * cyy - cxy**2
    a, b, c = cyy / det, -cxy / det, cxx / det
    if near_cut:
        # A pixel centre about 2 standard deviations out along the long axis.
        px = torch.floor(means[:, 0] + 2.0 * s1 * cs) + 0.5
        py = torch.floor(means[:, 1] + 2.0 * s1 * sn) + 0.5
        dx, dy = means[:, 0] - px, means[:, 1] - py
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        opac = (torch.exp(sigma) / 255.0 * (1 + 1e-5)).clamp(max=0.99)
    else:
        opac = torch.rand(n, generator=gen, **f64) * 0.9 + 0.05
    extent = torch.sqrt(2 * torch.log((opac * 255).clamp(min=1.0))).clamp(max=3.33)
    radii = torch.stack((torch.ceil(extent * cxx.sqrt()), torch.ceil(extent * cyy.sqrt())), -1)
    radii = torch.where((opac * 255 >= 1)[:, None], radii, torch.zeros_like(radii))
    f32 = dict(dtype=torch.float32)
    return dict(
        means2d=means[None].to(**f32), conics=torch.stack((a, b, c), -1)[None].to(**f32),
        colors=torch.rand(1, n, 3, generator=gen, **f32), opacities=opac[None].to(**f32),
        depths=torch.rand(1, n, generator=gen, **f32), radii=radii[None].int(),
    )


@pytest.mark.parametrize("near_cut", [False, True])
@pytest.mark.parametrize("tile_size", [16, 5])
def test_footprint_culling_matches_reference(near_cut, tile_size):
    width, height = 48, 36
    scene = _scene(60, width, height, seed=3 + tile_size, near_cut=near_cut)
    keys = ("means2d", "conics", "colors", "opacities")
    gen = torch.Generator().manual_seed(1)
    results = []
    for fn in (rasterize_to_pixels_native, rasterize_to_pixels_torch):
        inputs = {k: v.clone().requires_grad_() if k in keys else v for k, v in scene.items()}
        img, alpha = fn(**inputs, width=width, height=height, tile_size=tile_size)
        weight = torch.randn(img.shape, generator=gen)
        grads = torch.autograd.grad((img * weight).sum() + alpha.sum(), [inputs[k] for k in keys])
        results.append((img.detach(), alpha.detach(), grads))
        gen = torch.Generator().manual_seed(1)
    (img_n, alpha_n, grads_n), (img_r, alpha_r, grads_r) = results
    # A pixel dropped wrongly would be off by about 1/255 of its colour.
    assert (img_n - img_r).abs().max() < 1e-5
    assert (alpha_n - alpha_r).abs().max() < 1e-5
    for g_n, g_r in zip(grads_n, grads_r, strict=True):
        assert (g_n - g_r).abs().max() <= 1e-4 * (g_r.abs().max() + 1e-6) + 1e-6


def test_fewer_tiles_listed_than_bounding_boxes():
    """The culling is active: thin diagonal Gaussians skip many of their boxes' tiles."""
    width, height = 64, 64
    scene = _scene(80, width, height, seed=11, near_cut=False)
    out = torch.ops.sparseview.rasterize_to_pixels_fwd(
        *(scene[k] for k in ("means2d", "conics", "colors", "opacities", "depths", "radii")),
        width, height, 8)
    m, r = scene["means2d"][0].double(), scene["radii"][0].double()
    tx = (torch.ceil((m[:, 0] + r[:, 0]) / 8).clamp(0, 8) -
          torch.floor((m[:, 0] - r[:, 0]) / 8).clamp(0, 8))
    ty = (torch.ceil((m[:, 1] + r[:, 1]) / 8).clamp(0, 8) -
          torch.floor((m[:, 1] - r[:, 1]) / 8).clamp(0, 8))
    in_boxes = int((tx * ty)[(scene["radii"][0] > 0).all(-1)].sum())
    assert out[4].numel() < 0.9 * in_boxes
