"""What recon fit writes must read back in the tools users take it to: COLMAP models with
tracks and names COLMAP can parse (checked with pycolmap), nerfstudio's coloured point cloud,
and camera readers that refuse poses that are not rigid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.cameras import Cameras, intrinsics_matrix
from geometry.errors import UserError
from geometry.io.colmap import ColmapModel, colmap_safe_name, read_colmap_model, write_colmap_model
from geometry.io.transforms_json import (
    read_transforms_json,
    write_point_cloud_ply,
    write_transforms_json,
)
from geometry.se3 import look_at


def _scene(names: list[str]) -> tuple[Cameras, np.ndarray, tuple[np.ndarray, ...]]:
    """Three cameras looking at 20 points, and every point observed (exactly) in each.

    (IDR/DTU cameras need no such check: a projection matrix is defined up to scale and
    sign, and its RQ decomposition is a rotation by construction.)"""
    eyes = torch.tensor([[0.0, 0.0, -4.0], [1.0, 0.0, -4.0], [0.0, 1.0, -4.0]],
                        dtype=torch.float64)
    T = torch.from_numpy(np.stack([look_at(e.numpy(), np.zeros(3), (0.0, -1.0, 0.0))
                                   for e in eyes]))
    K = intrinsics_matrix(torch.tensor(100.0, dtype=torch.float64), 100.0, 64.0, 48.0)
    cams = Cameras(K=K.expand(3, 3, 3), T_world_cam=T, width=128, height=96, names=names)
    pts = np.random.default_rng(0).uniform(-0.5, 0.5, (20, 3))
    point, view, xy = [], [], []
    for v in range(3):
        Tcw = torch.linalg.inv(T[v]).numpy()
        cam = pts @ Tcw[:3, :3].T + Tcw[:3, 3]
        uv = cam @ K.numpy().T
        xy.append(uv[:, :2] / uv[:, 2:])
        point.append(np.arange(20))
        view.append(np.full(20, v))
    xy = np.concatenate(xy)
    xy[0] += 2.0  # point 0 is seen 2*sqrt(2) px off in view 0
    return cams, pts, (np.concatenate(point), np.concatenate(view), xy)


def test_colmap_model_has_tracks_pycolmap_reads(tmp_path: Path):
    pycolmap = pytest.importorskip("pycolmap")
    cams, pts, obs = _scene(["a.png", "b.png", "c.png"])
    rgb = np.tile(np.array([[10, 200, 30]], np.uint8), (20, 1))
    model = ColmapModel.from_cameras(cams, pts, rgb, observations=obs)
    write_colmap_model(tmp_path / "sparse" / "0", model)

    ours = read_colmap_model(tmp_path / "sparse" / "0")
    assert ours.points3D.track_offsets[-1] == 60
    rec = pycolmap.Reconstruction(str(tmp_path / "sparse" / "0"))
    assert sorted(im.name for im in rec.images.values()) == ["a.png", "b.png", "c.png"]
    assert rec.num_points3D() == 20
    for pid, point in rec.points3D.items():
        assert point.track.length() == 3
        for element in point.track.elements:
            image = rec.images[element.image_id]
            view = "abc".index(image.name[0])
            k = int(pid) - 1
            expected = obs[2][(obs[0] == k) & (obs[1] == view)][0]
            np.testing.assert_allclose(image.points2D[element.point2D_idx].xy, expected,
                                       atol=1e-9)
    errors = {int(pid): p.error for pid, p in rec.points3D.items()}
    assert errors[1] == pytest.approx(2 * np.sqrt(2) / 3, abs=1e-6)  # mean over 3 views
    assert max(e for pid, e in errors.items() if pid != 1) < 1e-6


def test_names_with_spaces(tmp_path: Path):
    cams, pts, _ = _scene(["ph oto a.png", "b.png", "c.png"])
    with pytest.raises(UserError, match="whitespace"):
        write_colmap_model(tmp_path / "m", ColmapModel.from_cameras(cams))
    assert colmap_safe_name("ph oto\tx") == "ph_oto_x"
    cams.names = [colmap_safe_name(n) for n in cams.names]
    write_colmap_model(tmp_path / "m", ColmapModel.from_cameras(cams))
    pycolmap = pytest.importorskip("pycolmap")
    names = sorted(im.name for im in pycolmap.Reconstruction(str(tmp_path / "m")).images.values())
    assert names == ["b.png", "c.png", "ph_oto_a.png"]


def test_point_cloud_ply_for_nerfstudio(tmp_path: Path):
    from plyfile import PlyData

    xyz = np.array([[0.5, -1.25, 3.0], [1e-3, 2.0, -7.5]])
    rgb = np.array([[1.0, 0.5, 0.0], [0.2, 0.4, 0.6]])
    write_point_cloud_ply(tmp_path / "sparse_pc.ply", xyz, rgb)
    vertex = PlyData.read(str(tmp_path / "sparse_pc.ply"))["vertex"]
    assert [p.name for p in vertex.properties] == ["x", "y", "z", "red", "green", "blue"]
    np.testing.assert_allclose(np.stack([vertex[k] for k in "xyz"], 1), xyz, rtol=1e-6)
    assert np.stack([vertex[k] for k in ("red", "green", "blue")], 1).tolist() == [
        [255, 128, 0], [51, 102, 153]]


def _transforms_with(tmp_path: Path, matrix: list[list[float]]) -> Path:
    cams, _, _ = _scene(["a.png", "b.png", "c.png"])
    path = write_transforms_json(tmp_path / "transforms.json", cams)
    meta = json.loads(path.read_text())
    meta["frames"][1]["transform_matrix"] = matrix
    path.write_text(json.dumps(meta))
    return path


def test_transforms_json_refuses_non_rigid_poses(tmp_path: Path):
    scaled = np.eye(4)
    scaled[0, 0] = 5.0  # the defect: accepted, and det(R) = 4.9 came out
    with pytest.raises(UserError, match="not rigid transforms"):
        read_transforms_json(_transforms_with(tmp_path, scaled.tolist()),
                             require_images=False)
    mirrored = np.diag([1.0, 1.0, -1.0, 1.0])
    with pytest.raises(UserError, match="not rigid transforms"):
        read_transforms_json(_transforms_with(tmp_path, mirrored.tolist()),
                             require_images=False)
    # printed to 7 digits is still a rotation
    R = np.round(np.array([[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]]), 7)
    ok = np.eye(4)
    ok[:3, :3] = R
    cams = read_transforms_json(_transforms_with(tmp_path, ok.tolist()),
                                require_images=False).cameras
    assert abs(float(torch.linalg.det(cams.T_world_cam[1, :3, :3])) - 1.0) < 1e-6


def test_llff_refuses_scaled_rotations(tmp_path: Path):
    from geometry.io.llff import read_llff

    poses = np.zeros((2, 3, 5))
    poses[:, :, :3] = np.eye(3)
    poses[:, :, 4] = [48.0, 64.0, 50.0]
    poses[1, :, :3] *= 2.0
    np.save(tmp_path / "poses_bounds.npy",
            np.concatenate([poses.reshape(2, 15), np.ones((2, 2))], 1))
    with pytest.raises(UserError, match="not rigid transforms"):
        read_llff(tmp_path)

