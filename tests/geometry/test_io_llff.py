"""LLFF poses_bounds.npy I/O: round trip, the NeRF loader's conversion, downsampled images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geometry import conventions, se3, so3
from geometry.cameras import Cameras, intrinsics_matrix
from geometry.errors import UserError
from geometry.io.llff import read_llff, write_llff

F64 = torch.float64


def _cameras(n: int = 4) -> Cameras:
    gen = torch.Generator().manual_seed(0)
    R = so3.random_rotation((n,), generator=gen, dtype=F64)
    return Cameras(K=intrinsics_matrix(torch.tensor(400.0, dtype=F64), 400.0, 252.0, 189.0),
                   T_world_cam=se3.make_T(R, torch.randn(n, 3, generator=gen, dtype=F64)),
                   width=504, height=378)


def test_round_trip(tmp_path: Path) -> None:
    cams = _cameras()
    bounds = torch.rand(4, 2, dtype=F64) + torch.tensor([1.0, 10.0], dtype=F64)
    file = write_llff(tmp_path, cams, bounds)
    array = np.load(file)
    assert array.shape == (4, 17)
    np.testing.assert_array_equal(array[:, 4:15:5], np.tile([378, 504, 400], (4, 1)))  # hwf
    data = read_llff(tmp_path, dtype=F64)
    np.testing.assert_allclose(data.cameras.T_world_cam.numpy(), cams.T_world_cam.numpy(),
                               atol=1e-15)
    np.testing.assert_array_equal(data.cameras.K.numpy(), cams.K.numpy())
    np.testing.assert_array_equal(data.bounds.numpy(), bounds.numpy())


def test_matches_nerf_loader_convention(tmp_path: Path) -> None:
    """NeRF's load_llff_data turns (down, right, back) into (right, up, back) = OpenGL."""
    rng = np.random.default_rng(1)
    R = so3.random_rotation((3,), generator=torch.Generator().manual_seed(2), dtype=F64).numpy()
    poses = np.concatenate([R, rng.normal(size=(3, 3, 1)), np.tile([[[378], [504], [400]]],
                                                                  (3, 1, 1))], -1)
    np.save(tmp_path / "poses_bounds.npy",
            np.concatenate([poses.reshape(3, 15), np.tile([1.0, 20.0], (3, 1))], 1))
    gl = np.concatenate([poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:4]], 2)  # NeRF code
    T_gl = np.concatenate([gl, np.tile([[[0, 0, 0, 1.0]]], (3, 1, 1))], 1)
    expected = conventions.opengl_to_opencv(torch.from_numpy(T_gl))
    got = read_llff(tmp_path, dtype=F64).cameras.T_world_cam
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-15)


def test_downsampled_images(tmp_path: Path) -> None:
    cams = _cameras(2)
    write_llff(tmp_path, cams, torch.ones(2, 2))
    (tmp_path / "images_4").mkdir()
    for name in ("b.png", "a.png"):
        Image.new("RGB", (126, 95)).save(tmp_path / "images_4" / name)
    data = read_llff(tmp_path, factor=4, dtype=F64)
    assert data.cameras.names == ["a.png", "b.png"]
    assert (data.cameras.width[0].item(), data.cameras.height[0].item()) == (126, 95)
    np.testing.assert_allclose(data.cameras.K[0].numpy(),
                               [[100, 0, 63], [0, 100, 47.5], [0, 0, 1]])
    no_images = read_llff(tmp_path, factor=2)
    assert no_images.cameras.image_paths is None and no_images.cameras.width[0].item() == 252
    Image.new("RGB", (126, 95)).save(tmp_path / "images_4" / "c.png")
    with pytest.raises(UserError, match="holds 3 images but"):
        read_llff(tmp_path, factor=4)


def test_write_warns_on_what_llff_cannot_hold(tmp_path: Path) -> None:
    cams = _cameras(1)
    cams.K[0, 0, 2] = 260.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_llff(tmp_path, cams, torch.ones(1, 2))
    assert len(caught) == 1 and "centred principal point" in str(caught[0].message)
    distorted = Cameras(K=cams.K, T_world_cam=cams.T_world_cam, width=504, height=378,
                        dist=torch.tensor([0.1]))
    with pytest.raises(UserError, match="distortion"):
        write_llff(tmp_path, distorted, torch.ones(1, 2))


def test_bad_files(tmp_path: Path) -> None:
    np.save(tmp_path / "poses_bounds.npy", np.zeros((3, 15)))
    with pytest.raises(UserError, match=r"poses_bounds\.npy has shape \(3, 15\)"):
        read_llff(tmp_path)
    array = np.zeros((2, 17))
    array[1, 3] = np.nan
    np.save(tmp_path / "poses_bounds.npy", array)
    with pytest.raises(UserError, match="NaN"):
        read_llff(tmp_path)
    (tmp_path / "poses_bounds.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UserError, match="not a readable"):
        read_llff(tmp_path)
