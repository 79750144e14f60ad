"""Real-data consistency of the DTU (IDR) and CO3D (PyTorch3D NDC) camera decoders.

Each check would fail for a wrong convention (a missing axis flip, a transposed rotation,
the DTU crop left out, image size in the wrong order), as measured while writing them:
leaving out the DTU ``cx -= 200`` crop raises the epipolar median from 0.28 px to 8.5 px
and the third-view median from 0.52 px to 13.5 px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.cameras import Cameras
from geometry.io import read_cameras
from geometry.io.co3d import read_co3d
from geometry.io.idr import read_idr

F64 = torch.float64
DATASETS = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
DTU = DATASETS / "dtu_scan24"
CO3D = DATASETS / "co3d_apple"

needs_dtu = pytest.mark.skipif(not (DTU / "cameras.npz").is_file(),
                               reason=f"DTU scan24 not found at {DTU}")
needs_co3d = pytest.mark.skipif(not (CO3D / "gt_cameras.npz").is_file(),
                                reason=f"CO3D apple not found at {CO3D}")


def _axes_meeting_point(cams: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares point closest to all optical axes, and each axis' angle to it (rad)."""
    centres = cams.centers
    axes = cams.T_world_cam[:, :3, 2]  # OpenCV z: the viewing direction
    P = torch.eye(3, dtype=F64) - axes[:, :, None] * axes[:, None, :]  # projectors off-axis
    point = torch.linalg.solve(P.sum(0), (P @ centres[..., None]).sum(0))[:, 0]
    to_point = torch.nn.functional.normalize(point - centres, dim=-1)
    angle = torch.arccos((to_point * axes).sum(-1).clamp(-1, 1))
    return point, angle


def _two_view_and_third_view_errors(cams: Cameras, views: tuple[int, int, int],
                                    scale: float) -> tuple[np.ndarray, np.ndarray]:
    """SIFT matches a-b and a-c on real images (resized by ``scale``).

    Returns the point-to-epipolar-line distances of the a-b matches under the decoded
    cameras, and for keypoints of ``a`` matched in both ``b`` and ``c`` the distance between
    their match in ``c`` and the projection into ``c`` of the point triangulated from a-b.
    """
    cv2 = pytest.importorskip("cv2")
    cams = cams.rescale(scale)
    sift = cv2.SIFT_create(3000)
    matcher = cv2.BFMatcher()

    def features(i: int):
        image = cv2.imread(cams.image_paths[i], cv2.IMREAD_GRAYSCALE)
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        if scale != 1:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        keypoints, descriptors = sift.detectAndCompute(image, None)
        # OpenCV puts pixel centres at integers; Cameras puts them at +0.5.
        return np.array([k.pt for k in keypoints]) + 0.5, descriptors

    def match(f1, f2) -> dict[int, int]:
        pairs = matcher.knnMatch(f1[1], f2[1], k=2)
        return {m.queryIdx: m.trainIdx for m, n in pairs if m.distance < 0.75 * n.distance}

    a, b, c = views
    fa, fb, fc = features(a), features(b), features(c)
    ab, ac = match(fa, fb), match(fa, fc)
    ka = np.array(list(ab))
    ua, ub = fa[0][ka], fb[0][[ab[k] for k in ka]]
    # Fundamental matrix of the decoded cameras: x_b^T F x_a = 0.
    T_b_a = (cams.T_cam_world[b] @ cams.T_world_cam[a]).numpy()
    t = T_b_a[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = np.linalg.inv(cams.K[b].numpy()).T @ tx @ T_b_a[:3, :3] @ np.linalg.inv(cams.K[a].numpy())
    lines = np.c_[ua, np.ones(len(ua))] @ F.T
    epipolar = np.abs((lines * np.c_[ub, np.ones(len(ub))]).sum(1)) / np.linalg.norm(
        lines[:, :2], axis=1)
    common = [k for k in ab if k in ac]
    if len(common) < 10:
        pytest.fail(f"only {len(common)} three-view SIFT matches: the check is inconclusive")
    P = [(cams.K[i] @ cams.T_cam_world[i, :3]).numpy() for i in (a, b)]
    X_h = cv2.triangulatePoints(P[0], P[1], fa[0][common].T, fb[0][[ab[k] for k in common]].T)
    X = torch.from_numpy((X_h[:3] / X_h[3]).T)
    uv_c, depth_c = cams[c].project(X)
    assert bool((depth_c > 0).all()) or float((depth_c > 0).double().mean()) > 0.9
    third = np.linalg.norm(uv_c.numpy() - fc[0][[ac[k] for k in common]], axis=1)
    return epipolar, third


def _assert_multiview_consistent(epipolar: np.ndarray, third: np.ndarray) -> None:
    # SIFT keypoints are good to ~0.3 px; ratio-test matches still hold some outliers, so
    # medians (robust to < 50 % outliers) are compared, with ~3x margin over the measured
    # values (0.28-0.32 px epipolar, 0.44-0.52 px third view). A wrong convention gives
    # errors of several to hundreds of pixels.
    assert np.median(epipolar) < 1.0, f"epipolar median {np.median(epipolar):.2f} px"
    assert np.median(third) < 1.5, f"third-view median {np.median(third):.2f} px"
    assert (third < 3.0).mean() > 0.5


@needs_dtu
def test_dtu_cameras_decode_consistently() -> None:
    data = read_idr(DTU, dtype=F64)  # "auto" applies the 1600x1200 -> 384x384 preset
    cams = data.cameras
    assert len(cams) == 49 and cams.width.unique().tolist() == [384]
    # (a) The DTU robot aims every camera at one point: the axes meet within 1 degree
    # (measured 0.14 deg); the meeting point is in front of all cameras.
    point, angle = _axes_meeting_point(cams)
    assert torch.rad2deg(angle).max() < 1.0
    _, depth = cams.project(point[None])
    assert bool((depth > 0).all())
    # (c) The scene centre (scale_mat translation, the centre of the object's bounding
    # sphere) projects near the image centre in every view (measured <= 9 px off), and on
    # the object where masks exist.
    centre = data.scale_mats[0, :3, 3]
    uv, depth = cams.project(centre[None])
    uv = uv[:, 0]  # [49, 2]
    assert bool((depth > 0).all())
    assert (uv - 192).abs().max() < 384 / 6
    if data.masks is not None:
        cols, rows = uv[:, 0].long(), uv[:, 1].long()
        assert bool(data.masks[torch.arange(len(cams)), rows, cols].all())
    # The cameras are outside the object's unit sphere in the normalised frame.
    assert bool((data.normalized_cameras().centers.norm(dim=-1) > 1.5).all())
    # (b) Real images agree with the decoded geometry (neighbouring views 25, 24, 26).
    _assert_multiview_consistent(*_two_view_and_third_view_errors(cams, (25, 24, 26), 1.0))


@needs_co3d
def test_co3d_cameras_decode_consistently() -> None:
    cams = read_co3d(CO3D, dtype=F64)
    assert len(cams) == 20
    assert (cams.width[0].item(), cams.height[0].item()) == (1066, 1896)
    # (a) A hand-held orbit around the apple: axes pass near one point, less tightly than a
    # robot's (measured max 9.0 deg, mean 4.4 deg); 15 deg is within the 16 deg half field
    # of view of the short side, so the point must also project inside every image.
    point, angle = _axes_meeting_point(cams)
    assert torch.rad2deg(angle).max() < 15.0
    uv, depth = cams.project(point[None])
    assert bool((depth > 0).all())
    assert bool((uv[:, 0, 0] > 0).all() and (uv[:, 0, 0] < 1066).all())
    assert bool((uv[:, 0, 1] > 0).all() and (uv[:, 0, 1] < 1896).all())
    # (b) Real images at quarter resolution (also exercises Cameras.rescale).
    _assert_multiview_consistent(*_two_view_and_third_view_errors(cams, (1, 2, 3), 0.25))


@needs_dtu
def test_read_cameras_auto_on_real_folders() -> None:
    cams = read_cameras(DTU)
    assert len(cams) == 49 and cams.dtype == torch.float32
    if (CO3D / "gt_cameras.npz").is_file():
        assert len(read_cameras(CO3D)) == 20
