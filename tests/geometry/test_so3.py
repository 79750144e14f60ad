"""SO(3) tests: references are scipy's Rotation (independent implementation) and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from geometry import so3

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _scipy_quat_wxyz(R: torch.Tensor) -> np.ndarray:
    q = Rotation.from_matrix(R.reshape(-1, 3, 3).numpy()).as_quat()  # xyzw
    q = np.concatenate([q[:, 3:], q[:, :3]], 1)
    return np.where(q[:, :1] < 0, -q, q)


def _near_pi_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=F64), dim=-1)
    angle = math.pi - torch.logspace(-12, -1, n, dtype=F64)
    angle[0] = math.pi
    return axis * angle[:, None]


def test_quat_to_matrix_matches_scipy() -> None:
    q = so3.random_quat((50,), generator=_gen(), dtype=F64)
    R = so3.quat_to_matrix(q)
    ref = Rotation.from_quat(torch.cat([q[:, 1:], q[:, :1]], 1).numpy()).as_matrix()
    np.testing.assert_allclose(R.numpy(), ref, atol=1e-14)
    # Non-unit input is normalised first.
    np.testing.assert_allclose(so3.quat_to_matrix(3.5 * q).numpy(), ref, atol=1e-14)


def test_matrix_to_quat_matches_scipy_and_w_nonnegative() -> None:
    R = so3.random_rotation((200,), generator=_gen(1), dtype=F64)
    q = so3.matrix_to_quat(R)
    assert (q[:, 0] >= 0).all()
    np.testing.assert_allclose(q.numpy(), _scipy_quat_wxyz(R), atol=1e-14)


def test_matrix_to_quat_robust_at_pi_and_identity() -> None:
    gen = _gen(2)
    aa = torch.cat([_near_pi_rotations(20, gen), torch.zeros(1, 3, dtype=F64)])
    R = so3.axis_angle_to_matrix(aa)
    q = so3.matrix_to_quat(R)
    np.testing.assert_allclose(so3.quat_to_matrix(q).numpy(), R.numpy(), atol=1e-14)
    # 180 degrees about x: q = (0, 1, 0, 0) up to sign.
    Rx = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64))
    np.testing.assert_allclose(so3.matrix_to_quat(Rx).abs().numpy(), [0, 1, 0, 0], atol=1e-15)


def test_quat_multiply_is_matrix_product() -> None:
    q1 = so3.random_quat((30,), generator=_gen(3), dtype=F64)
    q2 = so3.random_quat((30,), generator=_gen(4), dtype=F64)
    lhs = so3.quat_to_matrix(so3.quat_multiply(q1, q2))
    rhs = so3.quat_to_matrix(q1) @ so3.quat_to_matrix(q2)
    np.testing.assert_allclose(lhs.numpy(), rhs.numpy(), atol=1e-14)
    # Hand-checked: i * j = k.
    i, j = torch.tensor([0.0, 1, 0, 0]), torch.tensor([0.0, 0, 1, 0])
    assert so3.quat_multiply(i, j).tolist() == [0.0, 0.0, 0.0, 1.0]
    ident = so3.quat_multiply(q1, so3.quat_conjugate(q1))
    np.testing.assert_allclose(ident.numpy(), np.tile([1.0, 0, 0, 0], (30, 1)), atol=1e-15)


def test_quat_rotate_matches_matrix_and_broadcasts() -> None:
    q = so3.random_quat((5, 1), generator=_gen(5), dtype=F64)
    v = torch.randn(5, 7, 3, generator=_gen(6), dtype=F64)
    out = so3.quat_rotate(q, v)
    ref = (so3.quat_to_matrix(q) @ v[..., None])[..., 0]
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-14)
    # 90 degrees about z maps x to y.
    qz = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=F64)
    np.testing.assert_allclose(
        so3.quat_rotate(qz, torch.tensor([1.0, 0, 0], dtype=F64)).numpy(), [0, 1, 0], atol=1e-15
    )


def test_axis_angle_to_matrix_matches_scipy_including_small_angles() -> None:
    gen = _gen(7)
    axis = torch.nn.functional.normalize(torch.randn(40, 3, generator=gen, dtype=F64), dim=-1)
    # Angles on both sides of the Taylor switch (theta^2 = 0.05) and up to pi.
    angle = torch.cat([torch.logspace(-9, 0, 30, dtype=F64), torch.linspace(1, math.pi, 10)])
    aa = axis * angle[:, None]
    ref = Rotation.from_rotvec(aa.numpy()).as_matrix()
    np.testing.assert_allclose(so3.axis_angle_to_matrix(aa).numpy(), ref, atol=1e-15)
    np.testing.assert_allclose(so3.so3_exp(aa).numpy(), ref, atol=1e-15)
    assert torch.equal(so3.axis_angle_to_matrix(torch.zeros(3, dtype=F64)), torch.eye(3, dtype=F64))


def test_matrix_to_axis_angle_round_trip_near_zero_and_pi() -> None:
    gen = _gen(8)
    axis = torch.nn.functional.normalize(torch.randn(30, 3, generator=gen, dtype=F64), dim=-1)
    small = axis * torch.logspace(-10, -0.5, 30, dtype=F64)[:, None]
    generic = axis * torch.linspace(0.5, 3.0, 30, dtype=F64)[:, None]
    for aa in (small, generic):
        back = so3.matrix_to_axis_angle(so3.axis_angle_to_matrix(aa))
        np.testing.assert_allclose(back.numpy(), aa.numpy(), rtol=1e-12, atol=1e-15)
    # Near pi the axis sign is ambiguous only at exactly pi; compare rotations and angles.
    near_pi = _near_pi_rotations(12, gen)
    R = so3.axis_angle_to_matrix(near_pi)
    back = so3.so3_log(R)
    np.testing.assert_allclose(back.norm(dim=-1).numpy(), near_pi.norm(dim=-1).numpy(),
                               atol=1e-12)
    np.testing.assert_allclose(so3.so3_exp(back).numpy(), R.numpy(), atol=1e-13)
    ref = Rotation.from_matrix(R[1:].numpy()).as_rotvec()
    np.testing.assert_allclose(back[1:].numpy(), ref, atol=1e-9)


def test_axis_angle_quat_round_trip() -> None:
    aa = so3.matrix_to_axis_angle(so3.random_rotation((100,), generator=_gen(9), dtype=F64))
    aa = torch.cat([aa, 1e-9 * aa[:5], torch.zeros(1, 3, dtype=F64)])
    q = so3.axis_angle_to_quat(aa)
    ref = Rotation.from_rotvec(aa.numpy()).as_quat()
    ref = np.concatenate([ref[:, 3:], ref[:, :3]], 1)
    np.testing.assert_allclose(q.numpy(), ref, atol=1e-15)
    np.testing.assert_allclose(so3.quat_to_axis_angle(q).numpy(), aa.numpy(), atol=1e-14)
    # -q is the same rotation.
    np.testing.assert_allclose(so3.quat_to_axis_angle(-q).numpy(), aa.numpy(), atol=1e-14)


def test_rot6d_round_trip_and_rows_convention() -> None:
    R = so3.random_rotation((20,), generator=_gen(10), dtype=F64)
    d6 = so3.matrix_to_rot6d(R)
    np.testing.assert_array_equal(d6[:, :3].numpy(), R[:, 0, :].numpy())  # first row
    np.testing.assert_array_equal(d6[:, 3:].numpy(), R[:, 1, :].numpy())  # second row
    np.testing.assert_allclose(so3.rot6d_to_matrix(d6).numpy(), R.numpy(), atol=1e-14)
    # Arbitrary 6-vectors map to proper rotations, and scaling the rows changes nothing.
    d6 = torch.randn(20, 6, generator=_gen(11), dtype=F64)
    R2 = so3.rot6d_to_matrix(d6)
    np.testing.assert_allclose((R2 @ R2.transpose(-1, -2)).numpy(), np.tile(np.eye(3), (20, 1, 1)),
                               atol=1e-14)
    np.testing.assert_allclose(torch.linalg.det(R2).numpy(), np.ones(20), atol=1e-14)
    scaled = torch.cat([3 * d6[:, :3], 0.2 * d6[:, 3:]], -1)
    np.testing.assert_allclose(so3.rot6d_to_matrix(scaled).numpy(), R2.numpy(), atol=1e-14)


def test_hat_vee() -> None:
    v = torch.randn(10, 3, generator=_gen(12), dtype=F64)
    u = torch.randn(10, 3, generator=_gen(13), dtype=F64)
    np.testing.assert_allclose((so3.hat(v) @ u[..., None])[..., 0].numpy(),
                               torch.linalg.cross(v, u).numpy(), atol=1e-15)
    np.testing.assert_array_equal(so3.vee(so3.hat(v)).numpy(), v.numpy())


def test_random_rotation_is_uniform() -> None:
    R = so3.random_rotation((20000,), generator=_gen(14), dtype=F64)
    np.testing.assert_allclose(torch.linalg.det(R).numpy(), 1.0, atol=1e-12)
    # Haar measure: E[R] = 0 and the angle has density (1 - cos t) / pi, mean pi/2 + 2/pi.
    # Standard errors with 20000 samples are ~0.004 (entries) and ~0.005 (angle): 5 sigma.
    assert R.mean(0).abs().max() < 0.02
    angle = so3.so3_log(R).norm(dim=-1)
    assert abs(angle.mean().item() - (math.pi / 2 + 2 / math.pi)) < 0.025
    same = so3.random_rotation((20000,), generator=_gen(14), dtype=F64)
    np.testing.assert_array_equal(same.numpy(), R.numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_preserved(dtype: torch.dtype) -> None:
    aa = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0]], dtype=dtype)
    R = so3.so3_exp(aa)
    assert R.dtype == dtype
    assert so3.so3_log(R).dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    np.testing.assert_allclose(so3.so3_log(R).numpy(), aa.numpy(), atol=tol)


def test_gradients_finite_at_identity() -> None:
    aa = torch.zeros(3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(so3.axis_angle_to_matrix, (aa,))
    assert torch.autograd.gradcheck(so3.axis_angle_to_quat, (aa,))
    R = torch.eye(3, dtype=F64, requires_grad=True)
    # d log(R) / dR at the identity is the vee operator.
    (jac,) = torch.autograd.functional.jacobian(so3.so3_log, (R,))
    assert torch.isfinite(jac).all()
    delta = torch.randn(3, 3, generator=_gen(15), dtype=F64)
    np.testing.assert_allclose(torch.einsum("ijk,jk->i", jac, delta).numpy(),
                               so3.vee(delta).numpy(), atol=1e-12)


def test_gradcheck_generic_points() -> None:
    aa = torch.tensor([[0.3, -0.5, 1.1], [0.1, 0.05, -0.15]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(so3.axis_angle_to_matrix, (aa,))
    assert torch.autograd.gradcheck(lambda a: so3.so3_log(so3.so3_exp(a)), (aa,))
    d6 = torch.randn(2, 6, generator=_gen(16), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(so3.rot6d_to_matrix, (d6,))
    q = torch.randn(2, 4, generator=_gen(17), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(so3.quat_to_matrix, (q,))


def test_quat_slerp_is_constant_speed_about_one_axis():
    """slerp(q0, q1, a) = q0 * exp(a * log(q0^-1 q1)), checked through matrices; endpoints
    exact, shortest arc for a sign-flipped q1, and the near-identical fallback stays unit."""
    from geometry.so3 import (
        axis_angle_to_matrix,
        matrix_to_axis_angle,
        matrix_to_quat,
        quat_slerp,
        quat_to_matrix,
    )

    g = torch.Generator().manual_seed(3)
    R0 = axis_angle_to_matrix(torch.randn(5, 3, generator=g, dtype=torch.float64))
    R1 = axis_angle_to_matrix(torch.randn(5, 3, generator=g, dtype=torch.float64))
    q0, q1 = matrix_to_quat(R0), matrix_to_quat(R1)
    delta = matrix_to_axis_angle(R0.transpose(-1, -2) @ R1)
    for a in (0.0, 0.25, 0.5, 0.9, 1.0):
        alpha = torch.full((5,), a, dtype=torch.float64)
        expected = R0 @ axis_angle_to_matrix(a * delta)
        for q_end in (q1, -q1):
            got = quat_to_matrix(quat_slerp(q0, q_end, alpha))
            torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    near = quat_slerp(q0, q0 + 1e-9, torch.full((5,), 0.3, dtype=torch.float64))
    torch.testing.assert_close(near.norm(dim=-1), torch.ones(5, dtype=torch.float64))
