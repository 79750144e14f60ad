"""The RelPose++ evaluation protocol (relpose_metrics): hand-computed relative rotation
accuracies over the unordered pairs and camera-centre accuracies after the similarity
alignment, invariance to the estimate's frame (first-view-relative or any similarity)."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.pose_metrics import (
    average_relpose_metrics,
    first_view_relative,
    relpose_centre_errors,
    relpose_metrics,
)
from geometry.se3 import make_T
from geometry.so3 import axis_angle_to_matrix

F64 = torch.float64


def _rot(axis, deg: float) -> torch.Tensor:
    a = torch.tensor(axis, dtype=F64)
    return axis_angle_to_matrix(a / a.norm() * math.radians(deg))


def _square(offset_x: float = 0.0) -> torch.Tensor:
    """Four cameras at (+-(1 + offset_x), 0, 0), (0, +-1, 0), each with its own rotation."""
    centres = torch.tensor([[1 + offset_x, 0, 0], [-1 - offset_x, 0, 0], [0, 1, 0], [0, -1, 0]],
                           dtype=F64)
    Rs = torch.stack([_rot([0.2, 1, 0.1 * k], 40 * k) for k in range(4)])
    return make_T(Rs, centres)


def _similarity(T: torch.Tensor, s: float, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    out = T.clone()
    out[:, :3, :3] = R @ T[:, :3, :3]
    out[:, :3, 3] = s * T[:, :3, 3] @ R.T + t
    return out


@pytest.mark.parametrize(("deg", "expected"), [(0.0, (1, 1, 1)), (10.0, (1 / 3, 1, 1)),
                                               (20.0, (1 / 3, 1 / 3, 1)),
                                               (40.0, (1 / 3, 1 / 3, 1 / 3))])
def test_rra_one_turned_camera_of_three(deg, expected):
    gt = _square()[:3]
    est = gt.clone()
    # turning camera 2 by `deg` (about its own optical axis) changes pairs (0, 2) and
    # (1, 2) by `deg`, leaves (0, 1): 1 of 3 unordered pairs stays exact
    est[2, :3, :3] = est[2, :3, :3] @ _rot([0, 0, 1], deg)
    m = relpose_metrics(est, gt)
    assert (m["rra5"], m["rra15"], m["rra30"]) == pytest.approx(expected)
    assert set(m) == {"rra5", "rra15", "rra30", "cc10"}


@pytest.mark.parametrize(("offset", "errors", "cc10"),
                         [(0.1, (0.045249, 0.049774), 1.0), (0.25, (0.097561, 0.121951), 0.5),
                          (0.5, (0.153846, 0.230769), 0.0)])
def test_cc10_of_a_stretched_square(offset, errors, cc10):
    # Estimated x-cameras at +-(1 + a): by symmetry the alignment has R = I, t = 0 and
    # s = (2 (1 + a) + 2) / (2 (1 + a)^2 + 2); scene scale (largest distance from the
    # centroid) = 1. Errors: x-cameras |s (1 + a) - 1|, y-cameras |s - 1|.
    gt, est = _square(), _square(offset)
    a = offset
    s = (2 * (1 + a) + 2) / (2 * (1 + a) ** 2 + 2)
    assert abs(s * (1 + a) - 1) == pytest.approx(errors[0], abs=1e-6)
    assert abs(s - 1) == pytest.approx(errors[1], abs=1e-6)
    err = relpose_centre_errors(est, gt)
    assert err.tolist() == pytest.approx([errors[0]] * 2 + [errors[1]] * 2, abs=1e-6)
    assert relpose_metrics(est, gt)["cc10"] == cc10
    # any similarity of the estimate's world changes nothing
    moved = _similarity(est, 3.7, _rot([1, -2, 0.5], 77), torch.tensor([5.0, -1, 2], dtype=F64))
    assert relpose_metrics(moved, gt) == pytest.approx(relpose_metrics(est, gt))
    assert relpose_metrics(first_view_relative(est), gt) == pytest.approx(
        relpose_metrics(est, gt))


def test_two_views_and_collinear_centres_align_exactly():
    gt = _square()[:2]
    est = _similarity(gt, 0.3, _rot([0, 1, 1], 50), torch.zeros(3, dtype=F64))
    est[1, :3, 3] += torch.tensor([0.0, 0.5, 0.0], dtype=F64)  # any 2 centres align exactly
    assert relpose_metrics(est, gt)["cc10"] == 1.0
    line = make_T(torch.eye(3, dtype=F64).expand(3, 3, 3),
                  torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=F64))
    assert relpose_centre_errors(line, line).max() < 1e-12
    assert math.isnan(relpose_metrics(gt[:1], gt[:1])["rra15"])


def test_first_view_relative():
    T = _square()
    rel = first_view_relative(T)
    assert torch.allclose(rel[0], torch.eye(4, dtype=F64), atol=1e-12)
    assert torch.allclose(T[0] @ rel[3], T[3], atol=1e-12)


def test_average():
    avg = average_relpose_metrics([{"rra5": 1.0, "rra15": 1.0, "rra30": 1.0, "cc10": 0.5},
                                   {"rra5": 0.0, "rra15": 0.5, "rra30": 1.0,
                                    "cc10": math.nan}])
    assert avg == {"rra5": 0.5, "rra15": 0.75, "rra30": 1.0, "cc10": 0.5}
