"""The geometry core on a CUDA device gives the CPU's results (run with ``-m cuda``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geometry import se3, sim3, so3
from geometry.cameras import Cameras, intrinsics_matrix


def _compare_devices(device: str) -> None:
    gen = torch.Generator().manual_seed(0)
    xi = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    xi[:2, 3:] *= 1e-6
    T = se3.se3_exp(xi)
    pts = torch.randn(8, 5, 3, generator=gen, dtype=torch.float64)
    cams = Cameras(K=intrinsics_matrix(torch.tensor(500.0, dtype=torch.float64), 500.0, 320.0,
                                       240.0),
                   T_world_cam=T, width=640, height=480,
                   dist=torch.tensor([-0.2, 0.05, 1e-3, -1e-3, 0.0], dtype=torch.float64))
    pts_front = se3.transform_points(T, pts.abs() + torch.tensor([0.0, 0.0, 2.0],
                                                                 dtype=torch.float64))
    moved = cams.to(device)
    assert moved.K.device.type == torch.device(device).type
    outputs = {
        "exp": (se3.se3_exp, xi),
        "log": (se3.se3_log, T),
        "quat": (so3.matrix_to_quat, T[:, :3, :3]),
        "aa": (so3.so3_log, T[:, :3, :3]),
        "6d": (so3.rot6d_to_matrix, so3.matrix_to_rot6d(T[:, :3, :3])),
    }
    for name, (fn, arg) in outputs.items():
        np.testing.assert_allclose(fn(arg.to(device)).cpu().numpy(), fn(arg).numpy(),
                                   atol=1e-12, err_msg=name)
    uv, depth = cams.project(pts_front)
    uv_d, depth_d = moved.project(pts_front.to(device))
    np.testing.assert_allclose(uv_d.cpu().numpy(), uv.numpy(), atol=1e-9)
    np.testing.assert_allclose(moved.unproject(uv_d, depth_d).cpu().numpy(), pts_front.numpy(),
                               atol=1e-8)
    s, R, t = sim3.umeyama(pts[0].to(device), pts_front[0].to(device))
    s_ref, R_ref, t_ref = sim3.umeyama(pts[0], pts_front[0])
    np.testing.assert_allclose(R.cpu().numpy(), R_ref.numpy(), atol=1e-10)
    q = so3.random_quat((4,), generator=torch.Generator(device).manual_seed(1), device=device)
    assert q.device.type == torch.device(device).type


def test_helper_on_cpu() -> None:
    _compare_devices("cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    _compare_devices("cuda")
