"""Sim(3) tests: recover known random similarities exactly, with noise, and degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geometry import se3, sim3, so3

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_sim3(seed: int, batch: tuple[int, ...] = ()):
    gen = _gen(seed)
    s = torch.rand(batch, generator=gen, dtype=F64) * 4 + 0.25
    R = so3.random_rotation(batch, generator=gen, dtype=F64)
    t = torch.randn((*batch, 3), generator=gen, dtype=F64) * 5
    return s, R, t


@pytest.mark.parametrize("with_scale", [True, False])
def test_umeyama_recovers_exact_similarity(with_scale: bool) -> None:
    s, R, t = _random_sim3(0, (4,))
    if not with_scale:
        s = torch.ones_like(s)
    src = torch.randn(4, 20, 3, generator=_gen(1), dtype=F64)
    dst = sim3.sim3_apply(s, R, t, src)
    s_est, R_est, t_est = sim3.umeyama(src, dst, with_scale=with_scale)
    np.testing.assert_allclose(s_est.numpy(), s.numpy(), rtol=1e-12)
    np.testing.assert_allclose(R_est.numpy(), R.numpy(), atol=1e-12)
    np.testing.assert_allclose(t_est.numpy(), t.numpy(), atol=1e-11)


def test_umeyama_with_noise_matches_scipy_least_squares() -> None:
    """Noisy data: the closed form must equal a numerical minimiser of the same objective."""
    from scipy.optimize import least_squares

    s, R, t = _random_sim3(2)
    src = torch.randn(50, 3, generator=_gen(3), dtype=F64)
    dst = sim3.sim3_apply(s, R, t, src) + 0.05 * torch.randn(50, 3, generator=_gen(4), dtype=F64)
    weights = torch.rand(50, generator=_gen(5), dtype=F64) + 0.1
    s_est, R_est, t_est = sim3.umeyama(src, dst, weights=weights)

    def residual(p: np.ndarray) -> np.ndarray:
        Rp = so3.so3_exp(torch.from_numpy(p[1:4])).numpy()
        pred = np.exp(p[0]) * src.numpy() @ Rp.T + p[4:]
        return ((pred - dst.numpy()) * np.sqrt(weights.numpy())[:, None]).ravel()

    p0 = np.concatenate([[0.0], np.zeros(3), np.zeros(3)])
    p0[1:4] = so3.so3_log(R).numpy() + 0.1  # start near, not at, the answer
    sol = least_squares(residual, p0, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    np.testing.assert_allclose(s_est.item(), np.exp(sol.x[0]), rtol=1e-7)
    np.testing.assert_allclose(R_est.numpy(), so3.so3_exp(torch.from_numpy(sol.x[1:4])).numpy(),
                               atol=1e-7)
    np.testing.assert_allclose(t_est.numpy(), sol.x[4:], atol=1e-6)
    # And it is close to the truth (noise 0.05 over 50 points).
    assert abs(s_est.item() - s.item()) < 0.05 * s.item()


def test_umeyama_reflection_case_returns_rotation() -> None:
    src = torch.randn(10, 3, generator=_gen(6), dtype=F64)
    dst = src * torch.tensor([1.0, 1.0, -1.0], dtype=F64)  # a mirror image
    _, R, _ = sim3.umeyama(src, dst)
    assert torch.linalg.det(R).item() == pytest.approx(1.0, abs=1e-12)


def test_umeyama_degenerate_raises() -> None:
    line = torch.linspace(0, 1, 10, dtype=F64)[:, None] * torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    with pytest.raises(ValueError, match="collinear"):
        sim3.umeyama(line, line + 1)
    with pytest.raises(ValueError, match="collinear"):
        sim3.umeyama(torch.ones(5, 3, dtype=F64), torch.ones(5, 3, dtype=F64))
    with pytest.raises(ValueError, match="at least 3"):
        sim3.umeyama(torch.zeros(2, 3), torch.zeros(2, 3))


def _random_poses(m: int, seed: int) -> torch.Tensor:
    gen = _gen(seed)
    R = so3.random_rotation((m,), generator=gen, dtype=F64)
    return se3.make_T(R, torch.randn(m, 3, generator=gen, dtype=F64) * 2)


def test_apply_sim3_to_poses_and_align_poses() -> None:
    T_gt = _random_poses(6, 7)
    s, R, t = _random_sim3(8)
    T_est = sim3.apply_sim3_to_poses(s, R, t, T_gt)  # est = sim(gt)
    Rs = T_est[:, :3, :3]
    np.testing.assert_allclose((Rs @ Rs.mT).numpy(), np.tile(np.eye(3), (6, 1, 1)), atol=1e-13)
    np.testing.assert_allclose(T_est[:, :3, 3].numpy(),
                               sim3.sim3_apply(s, R, t, T_gt[:, :3, 3]).numpy(), atol=1e-13)
    # Points seen from a camera keep their camera-frame direction and scale with s.
    pts_cam = torch.randn(6, 4, 3, generator=_gen(9), dtype=F64)
    pts_world_gt = se3.transform_points(T_gt, pts_cam)
    np.testing.assert_allclose(
        se3.transform_points(T_est, s * pts_cam).numpy(),
        sim3.sim3_apply(s, R, t, pts_world_gt).numpy(), atol=1e-12)
    for mode in ("centres", "orientations", "auto"):
        s2, R2, t2 = sim3.align_poses(T_est, T_gt, mode=mode)
        aligned = sim3.apply_sim3_to_poses(s2, R2, t2, T_est)
        np.testing.assert_allclose(aligned.numpy(), T_gt.numpy(), atol=1e-11)
    np.testing.assert_allclose(sim3.sim3_to_matrix(s, R, t)[:3, :3].numpy(), (s * R).numpy())


def test_align_poses_few_or_collinear_cameras() -> None:
    T_gt = _random_poses(3, 10)
    T_gt[:, :3, 3] = torch.tensor([[0.0, 0, 0], [1, 1, 1], [2, 2, 2]], dtype=F64)
    s, R, t = _random_sim3(11)
    T_est = sim3.apply_sim3_to_poses(s, R, t, T_gt)
    with pytest.raises(ValueError, match="collinear"):
        sim3.align_poses(T_est, T_gt)
    with pytest.raises(ValueError, match="at least 3 cameras"):
        sim3.align_poses(T_est[:2], T_gt[:2])
    for m in (2, 3):
        s2, R2, t2 = sim3.align_poses(T_est[:m], T_gt[:m], mode="orientations")
        np.testing.assert_allclose(s2.item(), 1 / s.item(), rtol=1e-12)
        aligned = sim3.apply_sim3_to_poses(s2, R2, t2, T_est[:m])
        np.testing.assert_allclose(aligned.numpy(), T_gt[:m].numpy(), atol=1e-11)
    with pytest.raises(ValueError, match="at least 2"):
        sim3.align_poses(T_est[:1], T_gt[:1], mode="orientations")
    # auto takes the orientations for collinear (or too few) centres.
    assert sim3.alignment_mode(T_gt) == "orientations"
    s2, R2, t2 = sim3.align_poses(T_est, T_gt, mode="auto")
    np.testing.assert_allclose(s2.item(), 1 / s.item(), rtol=1e-12)
    with pytest.raises(ValueError, match="unknown alignment mode"):
        sim3.align_poses(T_est, T_gt, mode="sim3")


def test_alignment_mode_well_spread_rule() -> None:
    # Second singular value of the centred centres at exactly SPREAD_RATIO of the first:
    # centres (-1, 0, 0), (1, 0, 0), (0, +-h, 0) have singular values sqrt 2 and h sqrt 2.
    def poses(h: float) -> torch.Tensor:
        c = torch.tensor([[-1.0, 0, 0], [1.0, 0, 0], [0, h, 0], [0, -h, 0]], dtype=F64)
        return se3.make_T(torch.eye(3, dtype=F64).expand(4, 3, 3), c)

    assert sim3.alignment_mode(poses(0.11)) == "centres"
    assert sim3.alignment_mode(poses(0.09)) == "orientations"
    assert sim3.alignment_mode(poses(0.09)[:2], "centres") == "centres"
    assert not sim3.centres_well_spread(poses(1.0)[:2, :3, 3])


def test_sim3_inverse_composes_to_identity() -> None:
    s, R, t = _random_sim3(12, (3,))
    s_inv, R_inv, t_inv = sim3.sim3_inverse(s, R, t)
    pts = torch.randn(3, 5, 3, generator=_gen(13), dtype=F64)
    there = sim3.sim3_apply(s, R, t, pts)
    np.testing.assert_allclose(sim3.sim3_apply(s_inv, R_inv, t_inv, there).numpy(),
                               pts.numpy(), atol=1e-12)
    np.testing.assert_allclose(
        (sim3.sim3_to_matrix(s, R, t) @ sim3.sim3_to_matrix(s_inv, R_inv, t_inv)).numpy(),
        np.tile(np.eye(4), (3, 1, 1)), atol=1e-12)
    # A float scale works as well (recon eval passes the alignment's Python float).
    s0, _, t0 = sim3.sim3_inverse(2.0, R[0], t[0])
    assert float(s0) == 0.5
    np.testing.assert_allclose(t0.numpy(), (-(R[0].T @ t[0]) / 2.0).numpy(), atol=1e-15)
