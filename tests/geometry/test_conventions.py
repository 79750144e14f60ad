"""Convention tests: round trips and one hand-checked example per convention."""

from __future__ import annotations

import numpy as np
import torch

from geometry import conventions, se3, so3
from geometry.cameras import Cameras

F64 = torch.float64


def _poses(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    R = so3.random_rotation((n,), generator=gen, dtype=F64)
    return se3.make_T(R, torch.randn(n, 3, generator=gen, dtype=F64))


def test_opengl_round_trip_and_hand_example() -> None:
    T = _poses(5, 0)
    np.testing.assert_array_equal(
        conventions.opengl_to_opencv(conventions.opencv_to_opengl(T)).numpy(), T.numpy())
    # A NeRF/Blender camera at (0, 0, 4) with identity rotation looks down -z (towards the
    # origin) with y up. In OpenCV the same camera has z = -world z and y = -world y.
    T_gl = torch.eye(4, dtype=F64)
    T_gl[2, 3] = 4.0
    T_cv = conventions.opengl_to_opencv(T_gl)
    np.testing.assert_array_equal(T_cv[:3, :3].numpy(), np.diag([1.0, -1.0, -1.0]))
    np.testing.assert_array_equal(T_cv[:3, 3].numpy(), [0, 0, 4])
    cam = Cameras(K=torch.tensor([[100.0, 0, 50], [0, 100, 50], [0, 0, 1]], dtype=F64),
                  T_world_cam=T_cv, width=100, height=100)
    uv, depth = cam.project(torch.tensor([[0.0, 0, 0], [0, 1, 0]], dtype=F64))
    assert depth.tolist() == [4.0, 4.0]  # the origin is in front of the camera
    assert uv[0].tolist() == [50.0, 50.0]
    assert uv[1, 1].item() < 50.0  # world +y (up for this camera) is up in the image


def test_llff_round_trip_and_hand_example() -> None:
    T = _poses(5, 1)
    llff = conventions.opencv_to_llff(T)
    assert llff.shape == (5, 3, 4)
    np.testing.assert_allclose(conventions.llff_to_opencv(llff).numpy(), T.numpy(), atol=0)
    # LLFF columns are (down, right, back): a camera whose down is world -y, right world +x
    # and back world +z is the OpenGL identity camera, i.e. OpenCV diag(1, -1, -1).
    pose = torch.tensor([[0.0, 1, 0, 1, 480], [-1, 0, 0, 2, 640], [0, 0, 1, 3, 500]], dtype=F64)
    T_cv = conventions.llff_to_opencv(pose)
    np.testing.assert_array_equal(T_cv[:3, :3].numpy(), np.diag([1.0, -1.0, -1.0]))
    np.testing.assert_array_equal(T_cv[:3, 3].numpy(), [1, 2, 3])


def _pytorch3d_project(R, T, focal, pp, image_size, pts):
    """PyTorch3D's own pipeline written out: row-vector view transform, NDC, NDC->screen."""
    pts_cam = pts @ R + T  # X left, Y up, Z forward
    x_ndc = focal[0] * pts_cam[:, 0] / pts_cam[:, 2] + pp[0]
    y_ndc = focal[1] * pts_cam[:, 1] / pts_cam[:, 2] + pp[1]
    H, W = image_size
    s = min(H, W) / 2
    return torch.stack([W / 2 - s * x_ndc, H / 2 - s * y_ndc], -1), pts_cam[:, 2]


def test_pytorch3d_matches_its_projection_pipeline() -> None:
    gen = torch.Generator().manual_seed(2)
    R = so3.random_rotation((), generator=gen, dtype=F64)
    T = torch.tensor([0.1, -0.2, 6.0], dtype=F64)
    focal = torch.tensor([3.5, 3.2], dtype=F64)
    pp = torch.tensor([0.05, -0.1], dtype=F64)
    image_size = (1896, 1066)  # (H, W): portrait, the shorter side is the width
    pts = torch.randn(20, 3, generator=gen, dtype=F64)
    K, T_world_cam = conventions.pytorch3d_to_opencv(R, T, focal, pp, torch.tensor(image_size))
    cam = Cameras(K=K, T_world_cam=T_world_cam, width=image_size[1], height=image_size[0])
    uv, depth = cam.project(pts)
    uv_ref, depth_ref = _pytorch3d_project(R, T, focal, pp, image_size, pts)
    np.testing.assert_allclose(uv.numpy(), uv_ref.numpy(), atol=1e-9)
    np.testing.assert_allclose(depth.numpy(), depth_ref.numpy(), atol=1e-12)
    back = conventions.opencv_to_pytorch3d(K, T_world_cam, torch.tensor(image_size))
    for got, want in zip(back, (R, T, focal, pp), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-12)


def test_pytorch3d_hand_example() -> None:
    # Identity PyTorch3D camera 5 units from the origin, 200x100 (W x H) image, fl = 2 NDC,
    # principal point (0.5, 0) NDC. NDC scale = min(H, W) / 2 = 50 px, so fx = 100 px and
    # cx = W/2 - 0.5 * 50 = 75. World +X is camera-left, so it lands LEFT of cx.
    K, T_world_cam = conventions.pytorch3d_to_opencv(
        torch.eye(3, dtype=F64), torch.tensor([0.0, 0, 5], dtype=F64),
        torch.tensor([2.0, 2.0], dtype=F64), torch.tensor([0.5, 0.0], dtype=F64),
        torch.tensor([100, 200]))
    np.testing.assert_allclose(K.numpy(), [[100, 0, 75], [0, 100, 50], [0, 0, 1]])
    np.testing.assert_allclose(T_world_cam.numpy(),
                               [[-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, -5], [0, 0, 0, 1]])
    cam = Cameras(K=K, T_world_cam=T_world_cam, width=200, height=100)
    uv, _ = cam.project(torch.tensor([[1.0, 0, 0], [0, 1, 0]], dtype=F64))
    np.testing.assert_allclose(uv.numpy(), [[55.0, 50.0], [75.0, 30.0]])  # left; up


def test_pytorch3d_scalar_focal_batched() -> None:
    R = so3.random_rotation((3,), generator=torch.Generator().manual_seed(3), dtype=F64)
    K, _ = conventions.pytorch3d_to_opencv(R, torch.zeros(3, 3, dtype=F64),
                                           torch.tensor([1.0, 2.0, 3.0], dtype=F64),
                                           torch.zeros(3, 2, dtype=F64), torch.tensor([10, 20]))
    np.testing.assert_allclose(K[:, 0, 0].numpy(), [5.0, 10.0, 15.0])
    np.testing.assert_allclose(K[:, 1, 1].numpy(), [5.0, 10.0, 15.0])
