"""COLMAP model I/O: text/binary round trips, cross-checks against pycolmap, bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry import se3, so3
from geometry.cameras import Cameras, intrinsics_matrix
from geometry.errors import UserError
from geometry.io.colmap import (
    ColmapCamera,
    ColmapImage,
    ColmapModel,
    ColmapPoints3D,
    read_colmap_model,
    write_colmap_model,
)

F64 = torch.float64


def _model(seed: int = 0) -> ColmapModel:
    """A small but complete model: 3 camera models, keypoints, tracks, an invalid point id."""
    rng = np.random.default_rng(seed)
    cameras = {
        1: ColmapCamera(1, "PINHOLE", 640, 480, np.array([500.5, 510.25, 320.0, 241.5])),
        2: ColmapCamera(2, "OPENCV", 800, 600,
                        np.array([600.0, 601.0, 400.5, 300.25, -0.1, 0.02, 1e-3, -2e-4])),
        7: ColmapCamera(7, "SIMPLE_RADIAL", 1024, 768, np.array([700.0, 512.0, 384.0, 0.05])),
    }
    R = so3.random_rotation((4,), generator=torch.Generator().manual_seed(seed), dtype=F64)
    q = so3.matrix_to_quat(R).numpy()
    images = {}
    for i, (image_id, camera_id) in enumerate([(1, 1), (2, 2), (5, 7), (9, 1)]):
        n_kp = 0 if image_id == 9 else 6  # one image with an empty POINTS2D line
        ids = np.full(n_kp, -1, np.int64)  # filled from the tracks below
        images[image_id] = ColmapImage(image_id, q[i], rng.normal(size=3), camera_id,
                                       f"frame_{image_id:03d}.jpg", rng.uniform(0, 600, (n_kp, 2)),
                                       ids)
    points = ColmapPoints3D(
        ids=np.array([1, 2, 3, 4], np.int64),
        xyz=rng.normal(size=(4, 3)),
        rgb=rng.integers(0, 256, (4, 3)).astype(np.uint8),
        error=rng.uniform(0, 2, 4),
        track_offsets=np.array([0, 2, 3, 3, 6]),
        track_image_ids=np.array([1, 2, 5, 1, 2, 5], np.int64),
        track_point2D_idxs=np.array([0, 3, 1, 4, 2, 5], np.int64),
    )
    for i, point_id in enumerate(points.ids):
        for image_id, idx in zip(*points.track(i), strict=True):
            images[int(image_id)].point3D_ids[idx] = point_id
    return ColmapModel(cameras, images, points)


def _assert_models_equal(a: ColmapModel, b: ColmapModel) -> None:
    assert a.cameras.keys() == b.cameras.keys() and a.images.keys() == b.images.keys()
    for cid, cam in a.cameras.items():
        other = b.cameras[cid]
        assert (cam.model, cam.width, cam.height) == (other.model, other.width, other.height)
        np.testing.assert_array_equal(cam.params, other.params)
    for iid, im in a.images.items():
        other = b.images[iid]
        assert (im.name, im.camera_id) == (other.name, other.camera_id)
        np.testing.assert_array_equal(im.qvec, other.qvec)
        np.testing.assert_array_equal(im.tvec, other.tvec)
        np.testing.assert_array_equal(im.xys.reshape(-1, 2), other.xys.reshape(-1, 2))
        np.testing.assert_array_equal(im.point3D_ids, other.point3D_ids)
    for name in ("ids", "xyz", "rgb", "error", "track_offsets", "track_image_ids",
                 "track_point2D_idxs"):
        np.testing.assert_array_equal(getattr(a.points3D, name), getattr(b.points3D, name))


@pytest.mark.parametrize("binary", [False, True])
def test_write_read_round_trip_is_exact(tmp_path: Path, binary: bool) -> None:
    model = _model()
    write_colmap_model(tmp_path / "m", model, binary=binary)
    ext = ".bin" if binary else ".txt"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        f"{n}{ext}" for n in ("cameras", "images", "points3D"))
    _assert_models_equal(model, read_colmap_model(tmp_path / "m"))


def test_text_and_binary_give_the_same_model(tmp_path: Path) -> None:
    model = _model(1)
    write_colmap_model(tmp_path / "txt", model)
    write_colmap_model(tmp_path / "bin", model, binary=True)
    _assert_models_equal(read_colmap_model(tmp_path / "txt"), read_colmap_model(tmp_path / "bin"))
    # Switching format in place leaves only the new files.
    write_colmap_model(tmp_path / "txt", model, binary=True)
    assert not (tmp_path / "txt" / "cameras.txt").exists()


def test_text_layout_matches_colmap_docs(tmp_path: Path) -> None:
    model = ColmapModel(
        {1: ColmapCamera(1, "PINHOLE", 640, 480, np.array([500.0, 500.0, 320.0, 240.0]))},
        {1: ColmapImage(1, np.array([1.0, 0, 0, 0]), np.array([0.5, 0, 2]), 1, "a.png",
                        np.array([[10.5, 20.0]]), np.array([-1]))},
        ColmapPoints3D.from_arrays(np.array([[1.0, 2.0, 3.0]]), np.array([[255, 0, 10]])),
    )
    write_colmap_model(tmp_path, model)
    cameras = (tmp_path / "cameras.txt").read_text().splitlines()
    assert cameras[-1] == "1 PINHOLE 640 480 500 500 320 240"
    images = (tmp_path / "images.txt").read_text().splitlines()
    assert images[-2:] == ["1 1 0 0 0 0.5 0 2 1 a.png", "10.5 20 -1"]
    assert (tmp_path / "points3D.txt").read_text().splitlines()[-1] == "1 1 2 3 255 0 10 0"


def test_pycolmap_reads_our_files_and_we_read_pycolmaps(tmp_path: Path) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    model = _model(2)
    for binary in (False, True):
        ours = tmp_path / f"ours_{binary}"
        write_colmap_model(ours, model, binary=binary)
        rec = pycolmap.Reconstruction(str(ours))
        assert rec.num_images() == 4 and rec.num_points3D() == 4
        for iid, im in model.images.items():
            T = rec.image(iid).cam_from_world().matrix()
            np.testing.assert_allclose(T, im.T_cam_world[:3], atol=1e-15)
            assert rec.image(iid).name == im.name
        for cid, cam in model.cameras.items():
            assert rec.camera(cid).model.name == cam.model
            np.testing.assert_array_equal(rec.camera(cid).params, cam.params)
        np.testing.assert_array_equal(rec.point3D(3).xyz, model.points3D.xyz[2])
        track = sorted((e.image_id, e.point2D_idx) for e in rec.point3D(4).track.elements)
        assert track == [(1, 4), (2, 2), (5, 5)]
        # And back: pycolmap writes, we read the same values.
        theirs = tmp_path / f"theirs_{binary}"
        theirs.mkdir()
        (rec.write_binary if binary else rec.write_text)(str(theirs))
        back = read_colmap_model(theirs)
        for iid, im in model.images.items():
            np.testing.assert_allclose(back.images[iid].T_cam_world, im.T_cam_world, atol=1e-15)
            np.testing.assert_array_equal(back.images[iid].point3D_ids, im.point3D_ids)
        np.testing.assert_array_equal(back.points3D.xyz[np.argsort(back.points3D.ids)],
                                      model.points3D.xyz)


def test_to_cameras_projects_like_pycolmap() -> None:
    pycolmap = pytest.importorskip("pycolmap")
    model = _model(3)
    cams = model.to_cameras(dtype=F64, image_dir="/data/images")
    assert cams.names == sorted(im.name for im in model.images.values())
    assert cams.image_paths[0] == "/data/images/frame_001.jpg"
    by_name = {im.name: im for im in model.images.values()}
    pts_cam = torch.tensor([[0.3, -0.2, 2.0], [-0.5, 0.4, 3.0]], dtype=F64)
    for i, name in enumerate(cams.names):
        image = by_name[name]
        cam = model.cameras[image.camera_id]
        ref = pycolmap.Camera.create_from_model_name(cam.camera_id, cam.model, 1.0, cam.width,
                                                     cam.height)
        ref.params = cam.params
        expected = ref.img_from_cam(pts_cam.numpy())
        pts_world = se3.transform_points(cams.T_world_cam[i], pts_cam)
        uv, depth = cams[i].project(pts_world)
        np.testing.assert_allclose(uv.numpy(), expected, atol=1e-9)
        np.testing.assert_allclose(depth.numpy(), [2.0, 3.0], atol=1e-12)


def test_from_cameras_round_trip(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(4)
    R = so3.random_rotation((3,), generator=gen, dtype=F64)
    cams = Cameras(
        K=intrinsics_matrix(torch.tensor([500.0, 510, 400], dtype=F64), 505.0, 320.0, 240.0),
        T_world_cam=se3.make_T(R, torch.randn(3, 3, generator=gen, dtype=F64)),
        width=640, height=480,
        dist=torch.tensor([[0.0] * 5, [0.0] * 5, [0.1, -0.01, 0.001, 0.002, 0.0]], dtype=F64),
        names=["b.png", "c.png", "d.png"],
    )
    model = ColmapModel.from_cameras(cams, points_xyz=torch.zeros(2, 3),
                                     points_rgb=torch.tensor([[1.0, 0.5, 0.0]] * 2))
    assert [c.model for c in model.cameras.values()] == ["PINHOLE", "PINHOLE", "OPENCV"]
    assert len(model.cameras) == 3  # fx differs between the first two
    assert model.points3D.rgb[0].tolist() == [255, 128, 0]
    for binary in (False, True):
        write_colmap_model(tmp_path / str(binary), model, binary=binary)
        back = read_colmap_model(tmp_path / str(binary)).to_cameras(dtype=F64)
        np.testing.assert_allclose(back.T_world_cam.numpy(), cams.T_world_cam.numpy(), atol=1e-14)
        np.testing.assert_array_equal(back.K.numpy(), cams.K.numpy())
        np.testing.assert_array_equal(back.dist.numpy(), cams.dist.numpy())
        assert back.names == cams.names
    shared = ColmapModel.from_cameras(Cameras(K=cams.K[0], T_world_cam=cams.T_world_cam,
                                              width=640, height=480))
    assert len(shared.cameras) == 1  # identical intrinsics share one COLMAP camera


def test_finds_sparse_0_and_prefers_binary(tmp_path: Path) -> None:
    write_colmap_model(tmp_path / "sparse" / "0", _model(), binary=True)
    assert len(read_colmap_model(tmp_path).images) == 4


def test_bad_files_raise_user_error_naming_the_file(tmp_path: Path) -> None:
    write_colmap_model(tmp_path / "bin", _model(), binary=True)
    data = (tmp_path / "bin" / "images.bin").read_bytes()
    (tmp_path / "bin" / "images.bin").write_bytes(data[:-7])
    with pytest.raises(UserError, match=r"images\.bin.*truncated"):
        read_colmap_model(tmp_path / "bin")

    write_colmap_model(tmp_path / "txt", _model())
    cams = tmp_path / "txt" / "cameras.txt"
    cams.write_text(cams.read_text().replace("PINHOLE 640 480 500.5", "PINHOLE 640 480"))
    with pytest.raises(UserError, match=r"cameras\.txt.*needs 4 parameters"):
        read_colmap_model(tmp_path / "txt")

    write_colmap_model(tmp_path / "nan", _model())
    pts = tmp_path / "nan" / "points3D.txt"
    lines = pts.read_text().splitlines()
    fields = lines[-1].split()
    fields[1] = "nan"
    pts.write_text("\n".join(lines[:-1] + [" ".join(fields)]) + "\n")
    with pytest.raises(UserError, match="NaN"):
        read_colmap_model(tmp_path / "nan")

    with pytest.raises(UserError, match="no COLMAP model"):
        read_colmap_model(tmp_path / "missing")


def test_unsupported_model_is_a_user_error() -> None:
    model = _model()
    model.cameras[1] = ColmapCamera(1, "OPENCV_FISHEYE", 640, 480, np.ones(8))
    with pytest.raises(UserError, match="OPENCV_FISHEYE"):
        model.to_cameras()


def test_write_failure_keeps_previous_model(tmp_path: Path) -> None:
    write_colmap_model(tmp_path, _model())
    before = (tmp_path / "images.txt").read_text()
    bad = _model()
    bad.images[1].name = " leading space.png"
    with pytest.raises(UserError):
        write_colmap_model(tmp_path, bad)
    assert (tmp_path / "images.txt").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cameras.txt", "images.txt",
                                                         "points3D.txt"]
    shutil.rmtree(tmp_path)
