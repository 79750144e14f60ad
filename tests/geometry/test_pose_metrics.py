"""Pose metrics against known values: rotation angles, Sim(3) recovery, ATE/RPE/rotation
errors of perturbed pose sets, relative rotation/translation accuracy, camera-centre
accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.pose_metrics import (
    accuracy_under,
    camera_centre_accuracy,
    pose_metrics,
    relative_pose_errors,
    relative_rotation_errors,
    relative_translation_errors,
    rotation_angle_deg,
)
from geometry.se3 import make_T
from geometry.sim3 import apply_sim3_to_poses, sim3_inverse
from geometry.so3 import axis_angle_to_matrix

F64 = torch.float64


@pytest.mark.parametrize("angle_deg", [0.0, 1e-4, 3.0, 90.0, 179.9, 180.0])
def test_rotation_angle(angle_deg):
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    axis = axis / axis.norm()
    R_a = axis_angle_to_matrix(torch.tensor([0.2, 0.1, -0.4], dtype=torch.float64))
    R_b = R_a @ axis_angle_to_matrix(axis * math.radians(angle_deg))
    assert float(rotation_angle_deg(R_a, R_b)) == pytest.approx(angle_deg, abs=1e-6)


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
    T_est = apply_sim3_to_poses(*sim3_inverse(s, R, t), T_gt)
    result = pose_metrics(T_est, T_gt)
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
    result = pose_metrics(T_est, T_gt)
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
    result = pose_metrics(T_est, T_gt, with_scale=False)
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
    T_est = apply_sim3_to_poses(*sim3_inverse(s, R, t), T_gt)
    result = pose_metrics(T_est, T_gt)
    assert result.alignment == "orientations"
    assert result.ate_rmse < 1e-12 and result.rot_err_mean_deg < 1e-6
    assert result.scale == pytest.approx(s, rel=1e-12)


def _triangle_poses() -> torch.Tensor:
    """Three cameras, world-aligned, at (0, 0, 0), (1, 0, 0), (0, 1, 0)."""
    c = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64)
    return make_T(torch.eye(3, dtype=F64).expand(3, 3, 3), c)


def test_relative_translation_errors_are_known_angles_and_similarity_invariant():
    T_gt = _triangle_poses()
    T_est = T_gt.clone()
    a = math.radians(10.0)
    # Camera 1 moves 10 degrees along the unit circle: the baseline 0-1 turns by 10 deg,
    # 0-2 is unchanged, and the chord from (0, 1) to (cos a, sin a) points at (a - 90) / 2
    # = -40 deg instead of -45 deg: 5 deg.
    T_est[1, :3, 3] = torch.tensor([math.cos(a), math.sin(a), 0.0], dtype=F64)
    expected = torch.tensor([10.0, 0.0, 5.0], dtype=F64)
    torch.testing.assert_close(relative_translation_errors(T_est, T_gt), expected,
                               atol=1e-12, rtol=0)
    s, R, t = 3.0, axis_angle_to_matrix(torch.tensor([0.4, -0.2, 1.3], dtype=F64)), \
        torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    moved = apply_sim3_to_poses(s, R, t, T_est)
    torch.testing.assert_close(relative_translation_errors(moved, T_gt), expected,
                               atol=1e-9, rtol=0)
    # RTA at thresholds (strictly under): 0 deg < 4, 5 deg < 6, 10 deg < 11.
    torch.testing.assert_close(accuracy_under(expected, (4.0, 6.0, 11.0)),
                               torch.tensor([1 / 3, 2 / 3, 1.0], dtype=F64))
    # Coincident centres have no direction.
    T_est[1, :3, 3] = T_est[0, :3, 3]
    assert math.isnan(float(relative_translation_errors(T_est, T_gt)[0]))


def test_relative_rotation_errors_of_one_turned_camera():
    T_gt = _triangle_poses()
    T_est = T_gt.clone()
    axis = torch.nn.functional.normalize(torch.tensor([0.2, 1.0, -0.3], dtype=F64), dim=0)
    T_est[2, :3, :3] = T_est[2, :3, :3] @ axis_angle_to_matrix(axis * math.radians(10.0))
    moved = apply_sim3_to_poses(0.5, axis_angle_to_matrix(torch.tensor([1.0, 0.0, 0.2],
                                                                        dtype=F64)),
                                torch.zeros(3, dtype=F64), T_est)
    # Pairs (0, 1), (0, 2), (1, 2): only those with camera 2 are off, by 10 degrees.
    torch.testing.assert_close(relative_rotation_errors(moved, T_gt),
                               torch.tensor([0.0, 10.0, 10.0], dtype=F64), atol=1e-9, rtol=0)
    assert relative_rotation_errors(T_gt[:1], T_gt[:1]).shape == (0,)


def test_relative_pose_errors_of_a_known_drift():
    T_gt = _triangle_poses()
    T_al = T_gt.clone()
    T_al[2, :3, 3] += torch.tensor([0.0, 0.0, 0.3], dtype=F64)  # only the last step is off
    trans, rot = relative_pose_errors(T_al, T_gt)
    torch.testing.assert_close(trans, torch.tensor([0.0, 0.3], dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(rot, torch.zeros(2, dtype=F64), atol=1e-9, rtol=0)


def test_camera_centre_accuracy_of_the_perturbed_cube():
    T_gt = _cube_poses()
    c = T_gt[:, :3, 3]
    eps = 0.05
    d = eps * torch.stack((c[:, 1] * c[:, 2], c[:, 0] * c[:, 2], c[:, 0] * c[:, 1]), -1)
    # As in the ATE test the alignment is aligned = s (c + d), s = 3 / (3 + 3 eps^2), so
    # err^2 = 3 (s-1)^2 + 3 eps^2 s^2 + 2 s (s-1) 3 eps xyz: two values by the sign of xyz,
    # 0.0821 (xyz > 0) and 0.0907 (xyz < 0), i.e. 2.37 % and 2.62 % of the diameter 2 sqrt 3.
    s = 3.0 / (3.0 + 3.0 * eps**2)
    errs = [math.sqrt(3 * (s - 1) ** 2 + 3 * eps**2 * s**2 + 2 * s * (s - 1) * 3 * eps * sign)
            for sign in (1.0, -1.0)]
    diameter = 2 * math.sqrt(3)
    assert errs[0] / diameter == pytest.approx(0.02369, abs=1e-5)
    assert errs[1] / diameter == pytest.approx(0.02619, abs=1e-5)
    T_est = make_T(T_gt[:, :3, :3], c + d)
    cca = camera_centre_accuracy(T_est, T_gt, (0.02, 0.025, 0.03))
    torch.testing.assert_close(cca, torch.tensor([0.0, 0.5, 1.0], dtype=F64))
    # An explicit extent (RelPose++: the largest distance from the centroid, sqrt 3):
    # 4.74 % and 5.24 %.
    cca = camera_centre_accuracy(T_est, T_gt, (0.05, 0.053), extent=math.sqrt(3))
    torch.testing.assert_close(cca, torch.tensor([0.5, 1.0], dtype=F64))
    result = pose_metrics(T_est, T_gt)
    assert result.centre_under_10pct == 1.0
    assert result.rel_trans_err_deg.shape == (28,)


def test_pose_metrics_relative_translation_accuracy():
    T_gt = _triangle_poses()
    T_est = T_gt.clone()
    a = math.radians(20.0)  # relative translation errors 20, 0 and 10 degrees
    T_est[1, :3, 3] = torch.tensor([math.cos(a), math.sin(a), 0.0], dtype=F64)
    result = pose_metrics(T_est, T_gt)
    assert result.alignment == "centres"
    torch.testing.assert_close(result.rel_trans_err_deg,
                               torch.tensor([20.0, 0.0, 10.0], dtype=F64), atol=1e-12, rtol=0)
    assert result.rel_trans_under_5 == pytest.approx(1 / 3)
    assert result.rel_trans_under_15 == pytest.approx(2 / 3)
    assert result.rel_rot_under_5 == 1.0
