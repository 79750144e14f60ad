"""transforms.json I/O: round trips, Blender flavour, missing images, bad files."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geometry import se3, so3
from geometry.cameras import Cameras, intrinsics_matrix
from geometry.errors import UserError
from geometry.io.transforms_json import read_transforms_json, write_transforms_json

F64 = torch.float64


def _cameras(tmp_path: Path, n: int = 3, dist: bool = True) -> Cameras:
    gen = torch.Generator().manual_seed(0)
    R = so3.random_rotation((n,), generator=gen, dtype=F64)
    (tmp_path / "images").mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(str(tmp_path / "images" / f"{i:03d}.png"))
        Image.new("RGB", (64, 48)).save(paths[-1])
    return Cameras(
        K=intrinsics_matrix(torch.tensor([50.0, 52.0, 54.0][:n], dtype=F64), 51.0, 32.5, 24.0),
        T_world_cam=se3.make_T(R, torch.randn(n, 3, generator=gen, dtype=F64)),
        width=64, height=48,
        dist=torch.tensor([0.1, -0.02, 1e-3, 2e-3, 0.005], dtype=F64) if dist else None,
        image_paths=paths,
    )


@pytest.mark.parametrize("dist", [True, False])
def test_round_trip(tmp_path: Path, dist: bool) -> None:
    cams = _cameras(tmp_path, dist=dist)
    out = write_transforms_json(tmp_path, cams, extra={"aabb_scale": 16})
    meta = json.loads(out.read_text())
    assert meta["camera_model"] == ("OPENCV" if dist else "PINHOLE")
    assert meta["fl_y"] == 51.0 and "fl_x" in meta["frames"][0]  # shared vs per-frame
    assert meta["frames"][0]["file_path"] == "images/000.png"
    data = read_transforms_json(out, dtype=F64)
    back = data.cameras
    np.testing.assert_allclose(back.T_world_cam.numpy(), cams.T_world_cam.numpy(), atol=1e-15)
    np.testing.assert_array_equal(back.K.numpy(), cams.K.numpy())
    if dist:
        np.testing.assert_array_equal(back.dist.numpy(), cams.dist.numpy())
    else:
        assert back.dist is None
    assert back.image_paths == cams.image_paths
    assert data.extra == {"aabb_scale": 16}


def test_matrix_is_opengl(tmp_path: Path) -> None:
    """Hand check: an OpenCV camera looking down world -z is the OpenGL identity."""
    cams = _cameras(tmp_path, n=1, dist=False)
    cams.T_world_cam[0] = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64))
    out = write_transforms_json(tmp_path / "t.json", cams)
    assert json.loads(out.read_text())["frames"][0]["transform_matrix"] == np.eye(4).tolist()


def test_blender_style_file(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    Image.new("RGBA", (80, 60)).save(tmp_path / "train" / "r_0.png")
    angle = 0.6911112070083618
    matrix = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0], [0, 0, 0, 1]]
    (tmp_path / "transforms_train.json").write_text(json.dumps(
        {"camera_angle_x": angle, "frames": [{"file_path": "./train/r_0", "rotation": 0.0,
                                              "transform_matrix": matrix}]}))
    cams = read_transforms_json(tmp_path / "transforms_train.json").cameras
    f = 0.5 * 80 / math.tan(0.5 * angle)
    np.testing.assert_allclose(cams.K[0].numpy(), [[f, 0, 40], [0, f, 30], [0, 0, 1]], rtol=1e-6)
    assert (cams.width.item(), cams.height.item()) == (80, 60)
    assert cams.image_paths[0].endswith("train/r_0.png")
    # The camera at z = 4 looks at the origin (OpenGL -z forward).
    _, depth = cams.project(torch.zeros(1, 3))
    assert depth.item() == pytest.approx(4.0)


def test_missing_images_one_warning_and_error_when_none_left(tmp_path: Path) -> None:
    cams = _cameras(tmp_path, n=3)
    out = write_transforms_json(tmp_path, cams)
    Path(cams.image_paths[1]).unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_transforms_json(out)
    assert len(caught) == 1 and "skipping 1 of 3" in str(caught[0].message)
    assert "images/001.png" in str(caught[0].message)
    assert len(data.cameras) == 2
    assert len(read_transforms_json(out, require_images=False).cameras) == 3
    for p in cams.image_paths:
        Path(p).unlink(missing_ok=True)
    with pytest.raises(UserError, match="no frame with an existing image"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_transforms_json(out)


def test_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "transforms.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="transforms.json is not valid JSON"):
        read_transforms_json(bad)
    bad.write_text(json.dumps({"frames": "x"}))
    with pytest.raises(UserError, match="no 'frames' list"):
        read_transforms_json(bad)
    cams = _cameras(tmp_path, n=1)
    write_transforms_json(bad, cams)
    meta = json.loads(bad.read_text())
    meta["frames"][0]["transform_matrix"][0][0] = float("nan")
    bad.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="NaN"):
        read_transforms_json(bad)
    meta["frames"][0]["transform_matrix"] = [[1, 0], [0, 1]]
    bad.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="not 4x4"):
        read_transforms_json(bad)
