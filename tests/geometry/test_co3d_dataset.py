"""The CO3D v2 annotation reader: a fixture written from known OpenCV cameras (both
intrinsics formats, PyTorch3D NDC) reads back to the same cameras; splits, set lists and
bad folders; and the shared CO3D apple cameras agree with the gt_cameras.npz reader."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.cameras import Cameras, intrinsics_matrix
from geometry.errors import UserError
from geometry.io.co3d import (
    co3d_categories,
    read_co3d,
    read_co3d_sequences,
    write_co3d_category,
)
from geometry.se3 import look_at

DATASETS = Path(__file__).parents[2].parent / "shared" / "datasets"
F64 = torch.float64


def _cameras(n: int, width: int, height: int, seed: int) -> Cameras:
    rng = np.random.default_rng(seed)
    poses = []
    for k in range(n):
        angle = 2 * math.pi * k / n + rng.uniform(-0.2, 0.2)
        eye = np.array([3 * math.cos(angle), 3 * math.sin(angle), rng.uniform(0.5, 2.0)])
        poses.append(look_at(eye, rng.uniform(-0.3, 0.3, 3)))
    fx = torch.from_numpy(rng.uniform(0.8, 1.5, n) * width)
    fy = fx * torch.from_numpy(rng.uniform(0.97, 1.03, n))
    cx = torch.from_numpy(width / 2 + rng.uniform(-5, 5, n))
    cy = torch.from_numpy(height / 2 + rng.uniform(-5, 5, n))
    return Cameras(K=intrinsics_matrix(fx, fy, cx, cy),
                   T_world_cam=torch.from_numpy(np.stack(poses)), width=width, height=height)


@pytest.mark.parametrize("fmt", ["ndc_isotropic", "ndc_norm_image_bounds"])
def test_round_trip_both_intrinsics_formats(tmp_path, fmt):
    cams = {"seq_b": _cameras(5, 190, 106, 1), "seq_a": _cameras(3, 80, 120, 2)}
    folder = write_co3d_category(tmp_path, "apple", cams, intrinsics_format=fmt)
    assert folder == tmp_path / "apple"
    frames = json.loads(gzip.decompress((folder / "frame_annotations.jgz").read_bytes()))
    assert frames[0]["viewpoint"]["intrinsics_format"] == fmt
    for root, category in ((tmp_path, "apple"), (folder, None)):
        seqs = read_co3d_sequences(root, category)
        assert list(seqs) == ["seq_a", "seq_b"]
        for name, ref in cams.items():
            got = seqs[name]
            assert got.category == "apple" and got.frame_numbers == list(range(len(ref)))
            assert got.cameras.dtype == F64
            np.testing.assert_allclose(got.cameras.K.numpy(), ref.K.numpy(), atol=1e-5)
            np.testing.assert_allclose(got.cameras.T_world_cam.numpy(),
                                       ref.T_world_cam.numpy(), atol=1e-5)
            assert torch.equal(got.cameras.width, ref.width)
            assert torch.equal(got.cameras.height, ref.height)
            assert got.image_paths[1] == str(tmp_path / "apple" / name / "images"
                                             / "frame000001.jpg")
            assert got.mask_paths[0].endswith(f"apple/{name}/masks/frame000000.png")
            assert got.viewpoint_quality_score == 1.0


def test_hand_computed_ndc_conversion(tmp_path):
    # One frame written by hand: identity PyTorch3D rotation (X left, Y up), T = (0, 0, 2),
    # 200 x 100 (W x H) image, ndc_norm_image_bounds: f_px = f * (W/2, H/2),
    # c_px = (W/2, H/2) - p * (W/2, H/2).
    folder = tmp_path / "cat"
    folder.mkdir()
    frame = {"sequence_name": "s", "frame_number": 4,
             "image": {"path": "cat/s/images/frame000004.jpg", "size": [100, 200]},
             "mask": None, "depth": None,
             "viewpoint": {"R": np.eye(3).tolist(), "T": [0.0, 0.0, 2.0],
                           "focal_length": [2.0, 3.0], "principal_point": [0.1, -0.2],
                           "intrinsics_format": "ndc_norm_image_bounds"}}
    (folder / "frame_annotations.jgz").write_bytes(gzip.compress(json.dumps([frame]).encode()))
    seq = read_co3d_sequences(folder)["s"]
    K = seq.cameras.K[0]
    np.testing.assert_allclose(K.numpy(), [[200.0, 0, 90.0], [0, 150.0, 60.0], [0, 0, 1]],
                               atol=1e-9)
    # PyTorch3D X left, Y up -> OpenCV x right, y down; camera at z = -2 looking along +z.
    np.testing.assert_allclose(seq.cameras.T_world_cam[0].numpy(),
                               [[-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, -2], [0, 0, 0, 1]],
                               atol=1e-12)
    assert seq.mask_paths == [None]
    # isotropic: both axes scale by min(W, H) / 2 = 50
    frame["viewpoint"]["intrinsics_format"] = "ndc_isotropic"
    (folder / "frame_annotations.jgz").write_bytes(gzip.compress(json.dumps([frame]).encode()))
    K = read_co3d_sequences(folder)["s"].cameras.K[0]
    np.testing.assert_allclose(K.numpy(), [[100.0, 0, 95.0], [0, 150.0, 60.0], [0, 0, 1]],
                               atol=1e-9)


def test_splits_and_filters(tmp_path):
    cams = {f"s{k}": _cameras(2 + k, 64, 48, k) for k in range(3)}
    write_co3d_category(tmp_path, "toy", cams,
                        set_lists={"fewview_dev": {"train": ["s0", "s1"], "test": ["s2"]},
                                   "manyview_dev_0": {"train": ["s2"]}})
    assert co3d_categories(tmp_path) == ["toy"]
    assert list(read_co3d_sequences(tmp_path, "toy", split="train")) == ["s0", "s1"]
    test = read_co3d_sequences(tmp_path, "toy", split="test")
    assert list(test) == ["s2"] and len(test["s2"]) == 4
    assert list(read_co3d_sequences(tmp_path, "toy", split="train",
                                    set_list="manyview_dev_0")) == ["s2"]
    assert list(read_co3d_sequences(tmp_path, "toy", min_frames=3)) == ["s1", "s2"]
    assert list(read_co3d_sequences(tmp_path, "toy", sequences=["s1"])) == ["s1"]
    with pytest.raises(UserError, match="no 'val' split"):
        read_co3d_sequences(tmp_path, "toy", split="val")
    with pytest.raises(UserError, match="does not exist"):
        read_co3d_sequences(tmp_path, "toy", split="train", set_list="nope")


def test_folder_without_annotations(tmp_path):
    with pytest.raises(UserError, match=r"has no frame_annotations.jgz") as err:
        read_co3d_sequences(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="has no frame_annotations.jgz"):
        read_co3d_sequences(tmp_path, "apple")
    (tmp_path / "apple").mkdir()
    (tmp_path / "apple" / "frame_annotations.jgz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="not a readable gzipped JSON"):
        read_co3d_sequences(tmp_path, "apple")
    with pytest.raises(UserError, match=r"categories here: apple"):
        read_co3d_sequences(tmp_path)


def test_matches_gt_cameras_reader(tmp_path):
    apple = DATASETS / "co3d_apple"
    if not (apple / "gt_cameras.npz").is_file():
        pytest.skip(f"{apple} is absent (shared CO3D apple sequence)")
    ref = read_co3d(apple, dtype=F64)
    # The same cameras through the v2 annotations (isotropic NDC, as gt_cameras.npz).
    with np.load(apple / "gt_cameras.npz") as npz:
        R, T, fl = npz["gtR"].astype(np.float64), npz["gtT"].astype(np.float64), npz["gtFL"]
    folder = tmp_path / "apple"
    folder.mkdir()
    frames = [{"sequence_name": "apple_seq", "frame_number": k,
               "image": {"path": f"apple/apple_seq/images/{name}",
                         "size": [int(ref.height[k]), int(ref.width[k])]},
               "viewpoint": {"R": R[k].tolist(), "T": T[k].tolist(),
                             "focal_length": np.asarray(fl[k], np.float64).tolist(),
                             "principal_point": [0.0, 0.0],
                             "intrinsics_format": "ndc_isotropic"}}
              for k, name in enumerate(ref.names)]
    (folder / "frame_annotations.jgz").write_bytes(gzip.compress(json.dumps(frames).encode()))
    got = read_co3d_sequences(tmp_path, "apple")["apple_seq"].cameras
    np.testing.assert_allclose(got.K.numpy(), ref.K.numpy(), rtol=1e-9)
    np.testing.assert_allclose(got.T_world_cam.numpy(), ref.T_world_cam.numpy(), atol=1e-9)
