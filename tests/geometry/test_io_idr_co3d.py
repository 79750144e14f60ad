"""IDR cameras.npz and CO3D gt_cameras.npz readers on synthetic files, and read_cameras."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geometry import conventions, se3, so3
from geometry.cameras import Cameras, intrinsics_matrix
from geometry.errors import UserError
from geometry.io import detect_camera_format, read_cameras
from geometry.io.co3d import read_co3d
from geometry.io.colmap import write_colmap_model
from geometry.io.idr import (
    ImageTransform,
    decompose_projection_matrix,
    dtu_image_transform,
    read_idr,
    write_idr,
)
from geometry.io.llff import write_llff
from geometry.io.transforms_json import write_transforms_json

F64 = torch.float64


def _cameras(n: int, width: int, height: int, seed: int = 0) -> Cameras:
    gen = torch.Generator().manual_seed(seed)
    R = so3.random_rotation((n,), generator=gen, dtype=F64)
    K = intrinsics_matrix(torch.tensor(1000.0, dtype=F64), 990.0, width / 2 + 13.0,
                          height / 2 - 7.0)
    K[0, 1] = 0.5  # a small skew, as decomposed DTU matrices have
    return Cameras(K=K, T_world_cam=se3.make_T(R, torch.randn(n, 3, generator=gen, dtype=F64)),
                   width=width, height=height)


def _save_images(folder: Path, names: list[str], size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", size).save(folder / name)


def test_decompose_projection_matrix_any_scale_and_sign() -> None:
    cam = _cameras(1, 1600, 1200)
    P = (cam.K[0] @ cam.T_cam_world[0, :3]).numpy()
    for factor in (1.0, 3.7, -0.02):
        K, T = decompose_projection_matrix(factor * P)
        np.testing.assert_allclose(K, cam.K[0].numpy(), rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(T, cam.T_world_cam[0].numpy(), atol=1e-9)


def test_idr_round_trip_and_normalized_frame(tmp_path: Path) -> None:
    cams = _cameras(3, 64, 48)
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    scale[:3, 3] = [0.5, -1.0, 3.0]
    write_idr(tmp_path, cams, scale)
    _save_images(tmp_path / "image", ["000.png", "001.png", "002.png"], (64, 48))
    masks = tmp_path / "mask"
    masks.mkdir()
    for i in range(3):
        mask = np.zeros((48, 64), np.uint8)
        mask[10:20, 5 + i:30] = 255
        Image.fromarray(mask).save(masks / f"{i:03d}.png")
    data = read_idr(tmp_path, dtype=F64)
    np.testing.assert_allclose(data.cameras.K.numpy(), cams.K.numpy(), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(data.cameras.T_world_cam.numpy(), cams.T_world_cam.numpy(),
                               atol=1e-9)
    assert data.cameras.names == ["000.png", "001.png", "002.png"]
    assert data.masks.shape == (3, 48, 64) and data.masks[2, 10, 7] and not data.masks[2, 10, 6]
    norm = data.normalized_cameras()
    pts_norm = torch.randn(5, 3, dtype=F64)
    pts_world = pts_norm * 2 + torch.tensor([0.5, -1.0, 3.0], dtype=F64)
    uv_world, d_world = data.cameras.project(pts_world)
    uv_norm, d_norm = norm.project(pts_norm)
    np.testing.assert_allclose(uv_norm.numpy(), uv_world.numpy(), atol=1e-8)
    np.testing.assert_allclose(d_norm.numpy(), d_world.numpy() / 2, atol=1e-10)


def test_dtu_image_transform_preset(tmp_path: Path) -> None:
    cams = _cameras(2, 1600, 1200)
    write_idr(tmp_path, cams)
    _save_images(tmp_path, ["000000_rgb.png", "000001_rgb.png"], (384, 384))
    data = read_idr(tmp_path, dtype=F64)  # "auto" recognises the DTU preprocessing
    s = 384 / 1200
    expected = cams.K[0].clone()
    expected[0, 2] -= 200
    expected[:2] *= s
    np.testing.assert_allclose(data.cameras.K[0].numpy(), expected.numpy(), rtol=1e-10)
    assert (data.cameras.width[0].item(), data.cameras.height[0].item()) == (384, 384)
    same = read_idr(tmp_path, image_transform=dtu_image_transform(), dtype=F64)
    np.testing.assert_array_equal(same.cameras.K.numpy(), data.cameras.K.numpy())
    with pytest.raises(UserError, match="pass the image_transform"):
        read_idr(tmp_path, image_transform=ImageTransform(0, 0, 1600, 1200, 0.5))


def test_idr_bad_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "cameras.npz", world_mat_0=np.full((4, 4), np.nan))
    with pytest.raises(UserError, match="cameras.npz: world_mat_0 .*NaN"):
        read_idr(tmp_path, image_size=(10, 10))
    np.savez(tmp_path / "cameras.npz", something=np.eye(4))
    with pytest.raises(UserError, match="not an IDR cameras.npz"):
        read_idr(tmp_path)
    (tmp_path / "cameras.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable"):
        read_idr(tmp_path)


def _write_co3d(folder: Path, cams: Cameras) -> None:
    image_size = torch.stack([cams.height, cams.width], -1)
    R, T, focal, pp = conventions.opencv_to_pytorch3d(cams.K, cams.T_world_cam, image_size)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "gt_cameras.npz", gtR=R.float().numpy(), gtT=T.float().numpy(),
             gtFL=focal.float().numpy())


def test_co3d_reader(tmp_path: Path) -> None:
    cams = _cameras(3, 106, 190)
    cams.K[:, 0, 1] = 0.0
    cams.K[:, :2, 2] = torch.tensor([53.0, 95.0], dtype=F64)  # no gtPP: centred
    _write_co3d(tmp_path, cams)
    _save_images(tmp_path, [f"frame{i:06d}.jpg" for i in (7, 12, 3)], (106, 190))
    back = read_co3d(tmp_path, dtype=F64)
    assert back.names == ["frame000003.jpg", "frame000007.jpg", "frame000012.jpg"]
    np.testing.assert_allclose(back.K.numpy(), cams.K.numpy(), rtol=1e-6)
    np.testing.assert_allclose(back.T_world_cam.numpy(), cams.T_world_cam.numpy(), atol=1e-5)
    with pytest.raises(UserError, match="holds 4 images for 3 cameras"):
        _save_images(tmp_path, ["frame000099.jpg"], (106, 190))
        read_co3d(tmp_path)
    np.savez(tmp_path / "gt_cameras.npz", gtR=np.zeros((2, 3, 3)), gtT=np.zeros((3, 3)),
             gtFL=np.ones((2, 2)))
    with pytest.raises(UserError, match="inconsistent shapes"):
        read_co3d(tmp_path / "gt_cameras.npz", image_size=(10, 10))


def test_read_cameras_detects_every_format(tmp_path: Path) -> None:
    cams = _cameras(2, 64, 48)
    cams.K[:, 0, 1] = 0.0
    names = ["a.png", "b.png"]
    cams.names = names
    write_colmap_model(tmp_path / "colmap" / "sparse" / "0", cams)
    _save_images(tmp_path / "colmap" / "images", names, (64, 48))
    write_transforms_json(tmp_path / "ns" / "transforms.json", cams, file_paths=names)
    _save_images(tmp_path / "ns", names, (64, 48))
    cams_centred = Cameras(K=intrinsics_matrix(torch.tensor(50.0, dtype=F64), 50.0, 32.0, 24.0),
                           T_world_cam=cams.T_world_cam, width=64, height=48)
    write_llff(tmp_path / "llff", cams_centred, torch.ones(2, 2))
    write_idr(tmp_path / "idr", cams)
    _save_images(tmp_path / "idr" / "image", names, (64, 48))
    _write_co3d(tmp_path / "co3d", cams_centred)
    _save_images(tmp_path / "co3d", names, (64, 48))
    expected = {"colmap": cams, "ns": cams, "llff": cams_centred, "idr": cams,
                "co3d": cams_centred}
    formats = {"colmap": "colmap", "ns": "transforms", "llff": "llff", "idr": "idr",
               "co3d": "co3d"}
    for folder, fmt in formats.items():
        assert detect_camera_format(tmp_path / folder) == fmt
        got = read_cameras(tmp_path / folder, dtype=F64)
        np.testing.assert_allclose(got.T_world_cam.numpy(), expected[folder].T_world_cam.numpy(),
                                   atol=1e-5, err_msg=folder)
        np.testing.assert_allclose(got.K.numpy(), expected[folder].K.numpy(), rtol=1e-5,
                                   atol=1e-9, err_msg=folder)
    assert read_cameras(tmp_path / "colmap").image_paths == [
        str(tmp_path / "colmap" / "images" / n) for n in names]
    assert detect_camera_format(tmp_path / "co3d" / "gt_cameras.npz") == "co3d"
    assert detect_camera_format(tmp_path / "idr" / "cameras.npz") == "idr"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="found no cameras at .*looked for transforms.json"):
        read_cameras(tmp_path / "empty")
    assert json.loads((tmp_path / "ns" / "transforms.json").read_text())["frames"]
