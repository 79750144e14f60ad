"""The native SH colour op ``sparseview::sh_to_color`` (cuda/rasterize/sh_cpu.cpp) against
the PyTorch reference reconstruction.splatting.sh.sh_to_color: values, gradients to the
coefficients and to the directions, float64 gradcheck, determinism across threads."""

from __future__ import annotations

import pytest
import torch

from geometry.ops.rasterize import sh_to_color_native
from reconstruction.splatting.sh import sh_to_color


def _inputs(degree, dtype, C=3, N=40, K=16, seed=0):
    gen = torch.Generator().manual_seed(seed + degree)
    dirs = torch.randn(C, N, 3, generator=gen, dtype=dtype) * 2.0
    coeffs = torch.randn(N, K, 3, generator=gen, dtype=dtype) * 2.0
    return dirs, coeffs


def _grads(out, dirs, coeffs, weight):
    grads = torch.autograd.grad((out * weight).sum(), [dirs, coeffs], allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip((dirs, coeffs), grads,
                                                                     strict=True)]


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_native_matches_reference(degree, dtype, tol):
    dirs, coeffs = _inputs(degree, dtype)
    C, N, K, _ = *dirs.shape[:2], *coeffs.shape[1:]
    weight = torch.randn(C, N, 3, generator=torch.Generator().manual_seed(9), dtype=dtype)
    results = []
    for fn in (lambda d, q: sh_to_color_native(degree, d, q),
               lambda d, q: sh_to_color(degree, d, q[None].expand(C, N, K, 3))):
        d, q = dirs.clone().requires_grad_(), coeffs.clone().requires_grad_()
        out = fn(d, q)
        results.append((out.detach(), *_grads(out, d, q, weight)))
    native, ref = results
    # Some colours are clamped at 0: both sides must agree on which.
    assert (ref[0] == 0).any() and (ref[0] > 0).any()
    for a, b in zip(native, ref, strict=True):
        assert a.shape == b.shape
        scale = b.abs().max().item() + 1e-6
        assert (a - b).abs().max().item() <= tol * scale
    # Coefficients beyond the degree get no gradient.
    assert native[2][:, (degree + 1) ** 2:].abs().sum() == 0


def test_gradcheck_float64():
    dirs, coeffs = _inputs(3, torch.float64, C=2, N=6)
    inputs = (dirs.requires_grad_(), coeffs.requires_grad_())
    assert torch.autograd.gradcheck(lambda d, q: sh_to_color_native(3, d, q), inputs,
                                    eps=1e-6, atol=1e-6)


def test_deterministic_across_threads():
    dirs, coeffs = _inputs(3, torch.float32, C=4, N=3000)
    weight = torch.randn(4, 3000, 3, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            d, q = dirs.clone().requires_grad_(), coeffs.clone().requires_grad_()
            out = sh_to_color_native(3, d, q)
            results.append((out.detach(), *_grads(out, d, q, weight)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_rejects_bad_shapes():
    dirs, coeffs = _inputs(3, torch.float32)
    with pytest.raises(RuntimeError, match="too few SH coefficients"):
        sh_to_color_native(3, dirs, coeffs[:, :9])
    with pytest.raises(RuntimeError, match="coeffs must be"):
        sh_to_color_native(1, dirs, coeffs[:5])
