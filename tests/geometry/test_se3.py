"""SE(3) tests: closed forms, scipy/matrix-exponential references and float64 gradchecks."""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

from geometry import se3, so3

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_T(n: int, seed: int) -> torch.Tensor:
    gen = _gen(seed)
    R = so3.random_rotation((n,), generator=gen, dtype=F64)
    t = torch.randn(n, 3, generator=gen, dtype=F64) * 3
    return se3.make_T(R, t)


def _twist_matrix(xi: np.ndarray) -> np.ndarray:
    out = np.zeros((4, 4))
    out[:3, :3] = so3.hat(torch.from_numpy(xi[3:])).numpy()
    out[:3, 3] = xi[:3]
    return out


def test_make_T_layout() -> None:
    R = so3.random_rotation((2, 3), generator=_gen(), dtype=F64)
    t = torch.randn(2, 3, 3, generator=_gen(1), dtype=F64)
    T = se3.make_T(R, t)
    assert T.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(T[..., :3, :3].numpy(), R.numpy())
    np.testing.assert_array_equal(T[..., :3, 3].numpy(), t.numpy())
    np.testing.assert_array_equal(T[..., 3, :].numpy(), np.tile([0, 0, 0, 1.0], (2, 3, 1)))
    np.testing.assert_array_equal(se3.identity_T((2,)).numpy(), np.tile(np.eye(4), (2, 1, 1)))


def test_invert_and_compose() -> None:
    T_a_b = _random_T(10, 2)
    T_b_c = _random_T(10, 3)
    np.testing.assert_allclose(se3.invert_T(T_a_b).numpy(), np.linalg.inv(T_a_b.numpy()),
                               atol=1e-13)
    np.testing.assert_allclose(se3.compose(T_a_b, se3.invert_T(T_a_b)).numpy(),
                               np.tile(np.eye(4), (10, 1, 1)), atol=1e-13)
    pts_c = torch.randn(10, 5, 3, generator=_gen(4), dtype=F64)
    via_b = se3.transform_points(T_a_b, se3.transform_points(T_b_c, pts_c))
    direct = se3.transform_points(se3.compose(T_a_b, T_b_c), pts_c)
    np.testing.assert_allclose(via_b.numpy(), direct.numpy(), atol=1e-12)


def test_transform_points_hand_example_and_broadcasting() -> None:
    # 90 degrees about z, then shift by (1, 2, 3): x -> y.
    R = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=F64)
    T = se3.make_T(R, torch.tensor([1.0, 2, 3], dtype=F64))
    pts = torch.tensor([[1.0, 0, 0], [0, 0, 1]], dtype=F64)
    np.testing.assert_array_equal(se3.transform_points(T, pts).numpy(), [[1, 3, 3], [1, 2, 4]])
    np.testing.assert_array_equal(se3.transform_directions(T, pts).numpy(),
                                  [[0, 1, 0], [0, 0, 1]])
    # One transform per batch entry, broadcast over N points; and one T for a batch of sets.
    Ts = _random_T(4, 5)
    pts = torch.randn(4, 6, 3, generator=_gen(6), dtype=F64)
    out = se3.transform_points(Ts, pts)
    homog = torch.cat([pts, torch.ones(4, 6, 1, dtype=F64)], -1)
    ref = (Ts[:, None] @ homog[..., None])[..., :3, 0]
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-13)
    out2 = se3.transform_points(Ts[0], pts)
    np.testing.assert_allclose(out2[2].numpy(), se3.transform_points(Ts[0], pts[2]).numpy(),
                               atol=1e-15)


def test_se3_exp_matches_matrix_exponential() -> None:
    gen = _gen(7)
    xi = torch.randn(20, 6, generator=gen, dtype=F64)
    xi[:5, 3:] *= 1e-6  # inside the Taylor branch
    xi[5:10, 3:] *= 0.1  # around the switch
    T = se3.se3_exp(xi)
    for i in range(20):
        ref = scipy.linalg.expm(_twist_matrix(xi[i].numpy()))
        np.testing.assert_allclose(T[i].numpy(), ref, atol=1e-12)


def test_pure_translation_and_pure_rotation() -> None:
    rho = torch.tensor([0.3, -2.0, 5.0], dtype=F64)
    T = se3.se3_exp(torch.cat([rho, torch.zeros(3, dtype=F64)]))
    np.testing.assert_array_equal(T[:3, 3].numpy(), rho.numpy())
    np.testing.assert_array_equal(T[:3, :3].numpy(), np.eye(3))
    omega = torch.tensor([0.0, 0.0, math.pi / 2], dtype=F64)
    T = se3.se3_exp(torch.cat([torch.zeros(3, dtype=F64), omega]))
    np.testing.assert_allclose(T[:3, :3].numpy(), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_array_equal(T[:3, 3].numpy(), np.zeros(3))


def test_se3_log_round_trip() -> None:
    gen = _gen(8)
    xi = torch.randn(40, 6, generator=gen, dtype=F64)
    xi[:10, 3:] *= 1e-8
    xi[10:20, 3:] *= 0.2
    # Rotation norms must stay below pi for log to return the same twist.
    norms = xi[20:, 3:].norm(dim=-1, keepdim=True)
    xi[20:, 3:] = xi[20:, 3:] / norms * torch.linspace(0.5, math.pi - 1e-6, 20, dtype=F64)[:, None]
    np.testing.assert_allclose(se3.se3_log(se3.se3_exp(xi)).numpy(), xi.numpy(), atol=1e-9)
    np.testing.assert_allclose(se3.se3_log(se3.se3_exp(xi[:30])).numpy(), xi[:30].numpy(),
                               rtol=1e-11, atol=1e-14)
    T = _random_T(30, 9)
    np.testing.assert_allclose(se3.se3_exp(se3.se3_log(T)).numpy(), T.numpy(), atol=1e-12)
    np.testing.assert_array_equal(se3.se3_log(torch.eye(4, dtype=F64)).numpy(), np.zeros(6))


def test_gradcheck_se3_exp_at_zero_and_random() -> None:
    zero = torch.zeros(6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(se3.se3_exp, (zero,))
    assert torch.autograd.gradgradcheck(se3.se3_exp, (zero,))
    xi = torch.randn(3, 6, generator=_gen(10), dtype=F64).requires_grad_(True)
    assert torch.autograd.gradcheck(se3.se3_exp, (xi,))
    # At zero the Jacobian is the se(3) generators: d T / d xi_k = G_k.
    (jac,) = torch.autograd.functional.jacobian(se3.se3_exp, (zero,))
    for k in range(6):
        e = np.zeros(6)
        e[k] = 1.0
        np.testing.assert_allclose(jac[..., k].numpy(), _twist_matrix(e), atol=1e-15)


def test_gradcheck_se3_log() -> None:
    zero = torch.zeros(6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: se3.se3_log(se3.se3_exp(x)), (zero,))
    xi = torch.randn(3, 6, generator=_gen(11), dtype=F64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: se3.se3_log(se3.se3_exp(x)), (xi,))
    T = _random_T(2, 12).requires_grad_(True)
    assert torch.autograd.gradcheck(se3.se3_log, (T,))


def test_pose_update_optimisation_converges() -> None:
    """A left-multiplied se3_exp(delta) update, optimised with autograd, recovers a pose."""
    T_target = _random_T(1, 13)[0]
    pts = torch.randn(8, 3, generator=_gen(14), dtype=F64)
    target = se3.transform_points(T_target, pts)
    T = torch.eye(4, dtype=F64)
    for _ in range(15):  # Gauss-Newton on the twist; exact Jacobian from autograd.
        delta = torch.zeros(6, dtype=F64, requires_grad=True)

        def residual(d: torch.Tensor, T: torch.Tensor = T) -> torch.Tensor:
            return (se3.transform_points(se3.se3_exp(d) @ T, pts) - target).reshape(-1)

        J = torch.autograd.functional.jacobian(residual, delta)
        r = residual(delta).detach()
        step = torch.linalg.lstsq(J, -r[:, None]).solution[:, 0]
        T = se3.se3_exp(step) @ T
    np.testing.assert_allclose(T.numpy(), T_target.numpy(), atol=1e-10)


def test_float32() -> None:
    xi = torch.tensor([0.1, 0.2, 0.3, 1e-4, -2e-4, 3e-4])
    T = se3.se3_exp(xi)
    assert T.dtype == torch.float32
    np.testing.assert_allclose(se3.se3_log(T).numpy(), xi.numpy(), atol=1e-6)


def test_optical_axes_point_is_the_orbit_centre_and_none_when_undetermined():
    from geometry.se3 import look_at, optical_axes_point

    centre = np.array([0.3, -1.2, 0.5])
    eyes = [centre + 4.0 * np.array([np.cos(a), np.sin(a), 0.4]) for a in (0.1, 1.9, 3.7, 5.0)]
    T = torch.as_tensor(np.stack([look_at(e, centre) for e in eyes]))
    assert torch.allclose(optical_axes_point(T), torch.as_tensor(centre), atol=1e-9)
    # a camera whose axis misses by d pulls the point towards itself: least squares, not
    # the mean of the axes' closest points
    off = T.clone()
    off[0, :3, 3] += 0.2 * off[0, :3, 0]  # slide camera 0 sideways by 0.2
    p = optical_axes_point(off)
    assert 0.01 < float((p - torch.as_tensor(centre)).norm()) < 0.2
    assert optical_axes_point(T[:1]) is None  # one camera
    parallel = T[:1].repeat(3, 1, 1).clone()
    parallel[:, :3, 3] += torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]], dtype=T.dtype)
    assert optical_axes_point(parallel) is None


def test_mirror_x_is_the_conjugation_by_the_x_reflection() -> None:
    # (S R S, S t) with S = diag(-1, 1, 1): a proper rotation again, its own inverse, and
    # it maps a mirrored point through the pose to the mirrored image of the point.
    g = torch.Generator().manual_seed(3)
    R = so3.random_rotation((5,), generator=g, dtype=torch.float64)
    t = torch.randn(5, 3, generator=g, dtype=torch.float64)
    Rm, tm = se3.mirror_x(R, t)
    S = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(Rm, S @ R @ S) and torch.allclose(tm, t @ S)
    assert torch.allclose(torch.linalg.det(Rm), torch.ones(5, dtype=torch.float64))
    back = se3.mirror_x(Rm, tm)
    assert torch.equal(back[0], R) and torch.equal(back[1], t)
    p = torch.randn(5, 3, generator=g, dtype=torch.float64)
    moved = (Rm @ (p @ S)[..., None])[..., 0] + tm
    assert torch.allclose(moved, ((R @ p[..., None])[..., 0] + t) @ S)
