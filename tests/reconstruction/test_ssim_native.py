"""The native SSIM + L1 op (geometry.ops.ssim) against the PyTorch reference
(``losses.ssim`` and ``(x - y).abs().mean()``): values, gradients to both images, float64
gradcheck, determinism across thread counts, and photometric_loss built on it."""

from __future__ import annotations

import pytest
import torch

from reconstruction.engine.losses import _window_for, photometric_loss, ssim, ssim_and_l1


def _images(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=dtype)
    y = (x + 0.1 * torch.randn(shape, generator=gen, dtype=dtype)).clamp(0, 1)
    return x, y


# float64: ~1e-15 measured (another summation order); float32: ~1e-6 relative measured.
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", [(30, 41, 3), (2, 17, 12, 2), (7, 9, 3)])
def test_native_matches_reference(dtype, rtol, shape):
    x, y = _images(shape, dtype)
    weights = torch.tensor([0.7, -1.3], dtype=dtype)
    results = []
    for native in (False, True):
        xi, yi = x.clone().requires_grad_(), y.clone().requires_grad_()
        if native:
            value, l1 = ssim_and_l1(xi, yi)
        else:
            value, l1 = ssim(xi, yi), (xi - yi).abs().mean()
        grads = torch.autograd.grad(weights[0] * value + weights[1] * l1, [xi, yi])
        results.append((value.detach(), l1.detach(), grads))
    (ref_s, ref_l1, ref_g), (s, l1, g) = results
    torch.testing.assert_close(s, ref_s, rtol=rtol, atol=rtol)
    torch.testing.assert_close(l1, ref_l1, rtol=rtol, atol=rtol)
    for got, expected in zip(g, ref_g, strict=True):
        torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * expected.abs().max())


def test_native_gradcheck_float64():
    from geometry.ops.ssim import ssim_l1_native

    x, y = _images((1, 9, 12, 2), torch.float64, seed=1)
    window = _window_for(9, 12, 11, 1.5, torch.float64, x.device)
    inputs = (x.requires_grad_(), y.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: ssim_l1_native(a, b, window), inputs)


def test_identical_images_and_the_photometric_loss():
    x, y = _images((24, 30, 3), torch.float64, seed=2)
    value, l1 = ssim_and_l1(x, x)
    assert float(value) == pytest.approx(1.0, abs=1e-12) and float(l1) == 0.0
    expected = 0.8 * (x - y).abs().mean() + 0.2 * (1 - ssim(x, y))
    assert float(photometric_loss(x, y)) == pytest.approx(float(expected), rel=1e-12)


def test_native_is_deterministic_across_threads():
    x, y = _images((120, 160, 3), torch.float32, seed=3)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            xi = x.clone().requires_grad_()
            value, l1 = ssim_and_l1(xi, y)
            (grad,) = torch.autograd.grad(value - l1, [xi])
            runs.append((value, l1, grad))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0], strict=True))
