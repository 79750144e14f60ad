"""recon eval metrics against known values: PSNR, SSIM (vs scikit-image), masked variants,
rotation angles, Sim(3) recovery and ATE/RPE/rotation errors of perturbed pose sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geometry.se3 import make_T
from geometry.sim3 import apply_sim3_to_poses
from geometry.so3 import axis_angle_to_matrix
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


@pytest.mark.parametrize("angle_deg", [0.0, 1e-4, 3.0, 90.0, 179.9, 180.0])
def test_rotation_angle(angle_deg):
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    axis = axis / axis.norm()
    R_a = axis_angle_to_matrix(torch.tensor([0.2, 0.1, -0.4], dtype=torch.float64))
    R_b = R_a @ axis_angle_to_matrix(axis * math.radians(angle_deg))
    assert float(M.rotation_angle_deg(R_a, R_b)) == pytest.approx(angle_deg, abs=1e-6)


def _cube_poses() -> torch.Tensor:
    """Cameras at the 8 cube vertices (+-1, +-1, +-1) with distinct orientations."""
    corners = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0)
                            for z in (-1.0, 1.0)], dtype=torch.float64)
    aa = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(8, 3)
    return make_T(axis_angle_to_matrix(aa), corners)


def test_known_sim3_is_recovered_exactly():
    T_gt = _cube_poses()
    s, R, t = 2.5, axis_angle_to_matrix(torch.tensor([0.3, -1.1, 0.7], dtype=torch.float64)), \
        torch.tensor([4.0, -2.0, 0.5], dtype=torch.float64)
    # The estimate lives in another frame: T_est = Sim3^-1 (T_gt).
    T_est = apply_sim3_to_poses(1 / s, R.T, -(R.T @ t) / s, T_gt)
    result = M.pose_metrics(T_est, T_gt)
    assert result.alignment == "centres"
    assert result.scale == pytest.approx(s, rel=1e-12)
    torch.testing.assert_close(result.R, R, atol=1e-12, rtol=0)
    torch.testing.assert_close(result.t, t, atol=1e-12, rtol=0)
    assert result.ate_rmse < 1e-12
    assert result.rot_err_mean_deg < 1e-6 and result.rpe_rot_mean_deg < 1e-6
    assert result.rpe_trans_rmse < 1e-12
    assert result.rot_under_5 == 1.0 and result.rel_rot_under_5 == 1.0


def test_perturbed_poses_give_the_expected_ate_and_rotation_errors():
    T_gt = _cube_poses()
    c = T_gt[:, :3, 3]
    # Offsets n_i = (y z, x z, x y) have zero mean and sum_i n_i c_i^T = 0 over the cube, so
    # the optimal rotation stays I, the translation 0 and the scale var(c)/(var(c)+var(d)):
    # aligned = s (c + d), error (s - 1) c + s d, ATE^2 = (s-1)^2 var(c) + s^2 var(d).
    eps = 0.05
    d = eps * torch.stack((c[:, 1] * c[:, 2], c[:, 0] * c[:, 2], c[:, 0] * c[:, 1]), -1)
    var_c, var_d = 3.0, 3.0 * eps**2
    s = var_c / (var_c + var_d)
    expected_ate = math.sqrt((s - 1) ** 2 * var_c + s**2 * var_d)
    angles = torch.tensor([0.0, 1.0, 2.0, 4.0, 6.0, 10.0, 20.0, 30.0], dtype=torch.float64)
    axes = torch.nn.functional.normalize(torch.randn(8, 3, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(5)),
                                         dim=-1)
    # Rotate each camera about its own centre (right-multiplied: a camera-frame rotation);
    # an orientation change does not move the centres, so the alignment is unchanged.
    R_est = T_gt[:, :3, :3] @ axis_angle_to_matrix(axes * torch.deg2rad(angles)[:, None])
    T_est = make_T(R_est, c + d)
    result = M.pose_metrics(T_est, T_gt)
    assert result.scale == pytest.approx(s, rel=1e-12)
    torch.testing.assert_close(result.R, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert result.ate_rmse == pytest.approx(expected_ate, rel=1e-10)
    torch.testing.assert_close(result.rot_err_deg, angles, atol=1e-9, rtol=0)
    assert result.rot_err_mean_deg == pytest.approx(float(angles.mean()), abs=1e-9)
    assert result.rot_err_median_deg == pytest.approx(5.0, abs=1e-9)  # mean of 4 and 6
    assert result.rot_under_5 == pytest.approx(4 / 8)
    assert result.rot_under_15 == pytest.approx(6 / 8)


def test_two_view_rpe_and_ate_are_analytic():
    # Two cameras with one orientation; the estimate's second centre is off by 0.2 along y.
    # Rigid alignment by orientations (2 views) keeps R = I and matches the means, so the
    # aligned centres are (0, -0.1, 0), (1, 0.1, 0): ATE = 0.1; the relative motion is off
    # by (0, 0.2, 0): RPE = 0.2, no rotation error.
    eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    T_gt = make_T(eye, torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64))
    T_est = make_T(eye, torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.2, 0.0]], dtype=torch.float64))
    result = M.pose_metrics(T_est, T_gt, with_scale=False)
    assert result.alignment == "orientations"
    assert result.ate_rmse == pytest.approx(0.1, abs=1e-12)
    assert result.rpe_trans_rmse == pytest.approx(0.2, abs=1e-12)
    assert result.rpe_rot_mean_deg == pytest.approx(0.0, abs=1e-9)
    assert result.rel_rot_under_5 == 1.0


def test_nearly_collinear_centres_align_by_orientation():
    # Three cameras almost on a line: Umeyama's rotation about the line is ill-conditioned,
    # so the rotation of the alignment comes from the orientations; a known similarity is
    # still recovered exactly (noise-free).
    c = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.01, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    R_cams = axis_angle_to_matrix(torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.5, 0.1],
                                                [-0.3, 0.2, 0.0]], dtype=torch.float64))
    T_gt = make_T(R_cams, c)
    s, R, t = 0.5, axis_angle_to_matrix(torch.tensor([1.0, 0.2, -0.4], dtype=torch.float64)), \
        torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    T_est = apply_sim3_to_poses(1 / s, R.T, -(R.T @ t) / s, T_gt)
    result = M.pose_metrics(T_est, T_gt)
    assert result.alignment == "orientations"
    assert result.ate_rmse < 1e-12 and result.rot_err_mean_deg < 1e-6
    assert result.scale == pytest.approx(s, rel=1e-12)


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
