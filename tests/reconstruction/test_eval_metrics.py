"""recon eval image metrics against known values: PSNR, SSIM (vs scikit-image), masked
variants, depth AbsRel (the pose metrics are tests/geometry/test_pose_metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reconstruction.eval import metrics as M


def test_psnr_identical_is_infinite_and_constant_offset_is_exact():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(20, 30, 3, generator=gen, dtype=torch.float64) * 0.8
    assert M.psnr(image, image) == math.inf
    # A uniform offset of 0.1 is an MSE of 0.01: exactly 20 dB.
    assert M.psnr(image + 0.1, image) == pytest.approx(20.0, abs=1e-9)
    # Offset 0.5 on a quarter of the pixels: MSE 0.25 / 4, PSNR = -10 log10(1/16).
    other = image.clone()
    other[:10, :15] += 0.5
    other = other.clamp(max=1.0)
    mse = float(((other - image) ** 2).mean())
    assert M.psnr(other, image) == pytest.approx(-10 * math.log10(mse), abs=1e-9)


def test_masked_psnr_uses_only_the_object_pixels():
    reference = torch.full((8, 8, 3), 0.5, dtype=torch.float64)
    image = reference.clone()
    image[:, 4:] = 0.0  # wrong outside the mask only ...
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, :4] = True
    assert M.psnr(image, reference, mask) == math.inf
    image[:, :4] += 0.1  # ... then wrong by 0.1 inside: 20 dB masked
    assert M.psnr(image, reference, mask) == pytest.approx(20.0, abs=1e-9)
    assert math.isnan(M.psnr(image, reference, torch.zeros(8, 8, dtype=torch.bool)))


def test_ssim_is_one_for_identical_images():
    image = torch.rand(40, 50, 3, generator=torch.Generator().manual_seed(1))
    assert float(M.ssim(image, image)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_scikit_image(seed):
    skm = pytest.importorskip("skimage.metrics", reason="scikit-image (dev extra) is needed "
                                                        "for the SSIM reference")
    rng = np.random.default_rng(seed)
    reference = rng.random((48, 64, 3))
    image = np.clip(reference + rng.normal(0, 0.1 * (seed + 1), reference.shape), 0, 1)
    # The Wang et al. parameters: Gaussian window sigma 1.5 (truncate 3.5 -> 11x11),
    # population covariances, K1 = 0.01, K2 = 0.03, data range 1.
    expected = skm.structural_similarity(image, reference, channel_axis=-1, data_range=1.0,
                                         gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
    ours = float(M.ssim(torch.from_numpy(image), torch.from_numpy(reference)))
    assert ours == pytest.approx(expected, abs=1e-9)  # float64 throughout


def test_masked_ssim_composites_on_white_like_regnerf():
    gen = torch.Generator().manual_seed(3)
    reference = torch.rand(32, 32, 3, generator=gen, dtype=torch.float64)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:24, 8:24] = True
    image = torch.rand(32, 32, 3, generator=gen, dtype=torch.float64)
    image[mask] = reference[mask]  # differs only outside the object
    assert M.ssim_masked(image, reference, mask) == pytest.approx(1.0, abs=1e-12)
    image[10, 10] = 1.0 - reference[10, 10]
    m = mask[..., None].double()
    expected = float(M.ssim(image * m + 1 - m, reference * m + 1 - m))
    assert M.ssim_masked(image, reference, mask) == pytest.approx(expected, abs=1e-12)
    assert expected < 1.0


def test_depth_absrel_known_values_and_masks():
    reference = torch.full((4, 5), 2.0, dtype=torch.float64)
    reference[0, 0] = 0.0  # nothing hit: ignored
    depth = torch.full((4, 5), 2.2, dtype=torch.float64)  # 10 % too far everywhere
    # Float64 rounding of 2.2 / 2: exact to ~1e-15.
    assert M.depth_absrel(depth, reference) == pytest.approx(0.1, abs=1e-12)
    depth[1, 1] = 3.0  # one pixel 50 % off, then masked out
    assert M.depth_absrel(depth, reference) == pytest.approx((0.1 * 18 + 0.5) / 19, abs=1e-12)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 1] = False
    assert M.depth_absrel(depth, reference, mask) == pytest.approx(0.1, abs=1e-12)
    assert math.isnan(M.depth_absrel(depth, reference, torch.zeros(4, 5, dtype=torch.bool)))
    depth[2, 2] = float("nan")  # a render without coverage there
    assert M.depth_absrel(depth, reference, mask) == pytest.approx(0.1, abs=1e-12)
