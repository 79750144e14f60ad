"""Cameras tests: projection against OpenCV, round trips, image edits, batching."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from geometry import se3, so3
from geometry.cameras import Cameras, intrinsics_matrix

F64 = torch.float64
DIST = [-0.28, 0.07, 1e-3, -5e-4, 0.01]  # a strong but invertible wide-angle distortion


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cameras(n: int = 3, dist: list[float] | None = DIST, seed: int = 0) -> Cameras:
    gen = _gen(seed)
    R = so3.random_rotation((n,), generator=gen, dtype=F64)
    t = torch.randn(n, 3, generator=gen, dtype=F64)
    K = intrinsics_matrix(torch.tensor([500.0, 520, 610][:n], dtype=F64), 505.0, 320.5, 239.0)
    return Cameras(K=K, T_world_cam=se3.make_T(R, t), width=640, height=480,
                   dist=None if dist is None else torch.tensor(dist, dtype=F64),
                   names=[f"img{i}.png" for i in range(n)])


def _points_in_front(cams: Cameras, n: int, seed: int) -> torch.Tensor:
    """[B, n, 3] world points inside each camera's view, 1-6 m in front."""
    gen = _gen(seed)
    xy = (torch.rand(len(cams), n, 2, generator=gen, dtype=F64) - 0.5) * torch.tensor([1.0, 0.75])
    z = torch.rand(len(cams), n, 1, generator=gen, dtype=F64) * 5 + 1
    pts_cam = torch.cat([xy * z, z], -1)
    return se3.transform_points(cams.T_world_cam, pts_cam)


def test_fields_are_normalised() -> None:
    cams = _cameras()
    assert cams.shape == (3,)
    assert cams.width.tolist() == [640] * 3 and cams.width.dtype == torch.int64
    assert cams.dist.shape == (3, 5)
    short = Cameras(K=cams.K, T_world_cam=cams.T_world_cam, width=640, height=480,
                    dist=torch.tensor([0.1, 0.2]))
    assert short.dist[0].tolist() == pytest.approx([0.1, 0.2, 0, 0, 0])
    with pytest.raises(ValueError, match="one entry per camera"):
        Cameras(K=cams.K, T_world_cam=cams.T_world_cam, width=1, height=1, names=["a"])


def test_project_matches_opencv() -> None:
    cams = _cameras()
    pts = _points_in_front(cams, 50, 1)
    uv, depth = cams.project(pts)
    for i in range(3):
        T_cw = cams.T_cam_world[i].numpy()
        rvec, _ = cv2.Rodrigues(T_cw[:3, :3])
        ref, _ = cv2.projectPoints(pts[i].numpy(), rvec, T_cw[:3, 3], cams.K[i].numpy(),
                                   np.array(DIST))
        np.testing.assert_allclose(uv[i].numpy(), ref[:, 0], atol=1e-9)
        pts_cam = se3.transform_points(cams.T_cam_world[i], pts[i])
        np.testing.assert_allclose(depth[i].numpy(), pts_cam[:, 2].numpy(), atol=1e-12)


def test_project_hand_example() -> None:
    K = intrinsics_matrix(torch.tensor(100.0), 200.0, 50.0, 40.0)
    cam = Cameras(K=K, T_world_cam=torch.eye(4), width=100, height=80)
    uv, depth = cam.project(torch.tensor([[0.0, 0.0, 2.0], [1.0, -1.0, 2.0]]))
    assert uv.tolist() == [[50.0, 40.0], [100.0, -60.0]]  # x right, y down
    assert depth.tolist() == [2.0, 2.0]


def test_undistort_inverts_distort_and_matches_opencv() -> None:
    cams = _cameras(1)
    xy = (torch.rand(1, 200, 2, generator=_gen(2), dtype=F64) - 0.5) * torch.tensor([1.2, 0.9])
    xy_d = cams.distort(xy)
    np.testing.assert_allclose(cams.undistort(xy_d).numpy(), xy.numpy(), atol=1e-12)
    ref = cv2.undistortPointsIter(
        xy_d[0, :, None].numpy(), np.eye(3), np.array(DIST), None, None,
        (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14))
    np.testing.assert_allclose(cams.undistort(xy_d)[0].numpy(), ref[:, 0], atol=1e-9)


def test_unproject_round_trip_and_rays() -> None:
    cams = _cameras()
    pts = _points_in_front(cams, 40, 3)
    uv, depth = cams.project(pts)
    np.testing.assert_allclose(cams.unproject(uv, depth).numpy(), pts.numpy(), atol=1e-9)
    origins, dirs = cams.rays(uv)
    np.testing.assert_allclose(dirs.norm(dim=-1).numpy(), 1.0, atol=1e-12)
    to_pts = torch.nn.functional.normalize(pts - origins, dim=-1)
    np.testing.assert_allclose(dirs.numpy(), to_pts.numpy(), atol=1e-10)
    # One point set seen by all cameras broadcasts to [B, N, ...].
    uv_all, depth_all = cams.project(pts[0])
    assert uv_all.shape == (3, 40, 2)
    np.testing.assert_allclose(uv_all[0].numpy(), uv[0].numpy())


def test_pinhole_without_dist() -> None:
    cams = _cameras(dist=None)
    pts = _points_in_front(cams, 10, 4)
    uv, depth = cams.project(pts)
    pts_cam = se3.transform_points(cams.T_cam_world, pts)
    ref = (pts_cam / pts_cam[..., 2:]) @ cams.K.transpose(-1, -2)
    np.testing.assert_allclose(uv.numpy(), ref[..., :2].numpy(), atol=1e-10)
    assert not cams.has_distortion and _cameras().has_distortion


def test_rescale_and_crop_follow_the_image() -> None:
    """A point at a pixel corner/centre keeps its place in the resized or cropped image."""
    cam = _cameras(1, dist=None)
    pts = _points_in_front(cam, 5, 5)
    uv, _ = cam.project(pts)
    half = cam.rescale(0.5)
    assert (half.width.item(), half.height.item()) == (320, 240)
    np.testing.assert_allclose(half.project(pts)[0].numpy(), 0.5 * uv.numpy(), atol=1e-10)
    # Pixel centre (0.5, 0.5) of a 2x downsampled image covers the full-res square [0,2)^2,
    # whose centre is (1, 1): consistent with the corner-origin convention.
    corner = cam.unproject(torch.tensor([[[1.0, 1.0]]], dtype=F64), torch.ones(1, 1, dtype=F64))
    np.testing.assert_allclose(half.project(corner)[0].numpy(), [[[0.5, 0.5]]], atol=1e-10)
    resized = cam.resize(100, 50)
    np.testing.assert_allclose(resized.project(pts)[0].numpy(),
                               (uv * torch.tensor([100 / 640, 50 / 480], dtype=F64)).numpy(),
                               atol=1e-10)
    crop = cam.crop(10, 20, 300, 200)
    assert (crop.width.item(), crop.height.item()) == (300, 200)
    np.testing.assert_allclose(crop.project(pts)[0].numpy(),
                               (uv - torch.tensor([10.0, 20.0], dtype=F64)).numpy(), atol=1e-10)


def test_skewed_intrinsics_round_trip() -> None:
    cam = _cameras(1)
    K = cam.K.clone()
    K[..., 0, 1] = 3.5
    cam = Cameras(K=K, T_world_cam=cam.T_world_cam, width=640, height=480, dist=cam.dist)
    pts = _points_in_front(cam, 10, 6)
    uv, depth = cam.project(pts)
    np.testing.assert_allclose(cam.unproject(uv, depth).numpy(), pts.numpy(), atol=1e-9)


def test_indexing_cat_and_to() -> None:
    cams = _cameras(3)
    one = cams[1]
    assert one.shape == () and one.names is None
    np.testing.assert_array_equal(one.K.numpy(), cams.K[1].numpy())
    sub = cams[[2, 0]]
    assert sub.names == ["img2.png", "img0.png"]
    np.testing.assert_array_equal(sub.T_world_cam.numpy(), cams.T_world_cam[[2, 0]].numpy())
    masked = cams[torch.tensor([True, False, True])]
    assert masked.names == ["img0.png", "img2.png"]
    assert cams[1:].names == ["img1.png", "img2.png"] and len(cams[1:]) == 2
    both = Cameras.cat([cams, _cameras(2, dist=None, seed=5)])
    assert len(both) == 5 and both.names is not None and len(both.names) == 5
    np.testing.assert_array_equal(both.dist[3:].numpy(), np.zeros((2, 5)))
    np.testing.assert_array_equal(both.K[:3].numpy(), cams.K.numpy())
    f32 = cams.to(dtype=torch.float32)
    assert f32.K.dtype == torch.float32 and f32.dist.dtype == torch.float32
    assert f32.width.dtype == torch.int64
    np.testing.assert_allclose(cams.T_cam_world.numpy(), np.linalg.inv(cams.T_world_cam.numpy()),
                               atol=1e-12)
    np.testing.assert_array_equal(cams.centers.numpy(), cams.T_world_cam[:, :3, 3].numpy())


def test_pixel_centers() -> None:
    cam = Cameras(K=torch.eye(3), T_world_cam=torch.eye(4), width=3, height=2)
    grid = cam.pixel_centers()
    assert grid.shape == (2, 3, 2)
    assert grid[0, 0].tolist() == [0.5, 0.5] and grid[1, 2].tolist() == [2.5, 1.5]


def test_projection_is_differentiable_in_pose() -> None:
    cams = _cameras(1)
    pts = _points_in_front(cams, 4, 7)

    def uv_of(delta: torch.Tensor) -> torch.Tensor:
        moved = Cameras(K=cams.K, T_world_cam=se3.se3_exp(delta) @ cams.T_world_cam,
                        width=640, height=480, dist=cams.dist)
        return moved.project(pts)[0]

    delta = torch.zeros(6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(uv_of, (delta,))


def test_broadcast_shapes_matches_torch():
    from geometry.shapes import broadcast_shapes

    cases = [((2, 1), (3,)), ((), (4,)), ((5, 1, 3), (1, 2, 1), (3,)), ((0,), (1,))]
    for shapes in cases:
        assert broadcast_shapes(*shapes) == torch.broadcast_shapes(*shapes)
    with pytest.raises(RuntimeError):
        broadcast_shapes((2,), (3,))
