"""``recon view`` of an mmdet3d info keyframe: LiDAR points, ground-truth boxes, cameras
(and detections), all in the ego frame of the keyframe LiDAR, checked against the values in
the info file with plain numpy.

Two sources: a tiny info pickle each test writes (always runs), and the real nuScenes
fixture in ../shared/datasets (skips where it is absent)."""

from __future__ import annotations

import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from geometry.errors import UserError

FIXTURE = (Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
           / "nuscenes_fixture").resolve()
LIDAR_NAME = "n015-2018-08-02-17-16-37+0800__LIDAR_TOP__1533201470948018.pcd.bin"


def _Rz(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _T(R: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def _apply(T: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ T[:3, :3].T + T[:3, 3]


# --------------------------------------------------------------------- a tiny info file

# LiDAR -> ego as in nuScenes (x of the LiDAR points right: a quarter turn), ego -> global
T_EGO_LIDAR = _T(_Rz(math.pi / 2), [0.94, 0.0, 1.84])
T_GLOBAL_EGO = _T(_Rz(0.7), [400.0, 1100.0, 0.0])
# OpenCV camera looking along the LiDAR's -y (the ego's +x: forward), y down
R_LIDAR_CAM_FRONT = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]])
T_LIDAR_CAMS = {
    "CAM_FRONT": _T(R_LIDAR_CAM_FRONT, [0.0, -0.8, -0.3]),
    "CAM_BACK": _T(_Rz(math.pi) @ R_LIDAR_CAM_FRONT, [0.0, 1.0, -0.3]),
}
K_CAMS = {"CAM_FRONT": [[500.0, 0.0, 30.0], [0.0, 500.0, 20.0], [0.0, 0.0, 1.0]],
          "CAM_BACK": [[400.0, 0.0, 800.0], [0.0, 400.0, 450.0], [0.0, 0.0, 1.0]]}
# the front camera's mount on the car (cam2ego): 0.2 m from where lidar2cam puts it, as
# the ego moves between the LiDAR and the camera timestamps
T_EGO_CAM_FRONT = _T(_Rz(math.pi / 2), [0.2, 0.0, 0.0]) @ T_LIDAR_CAMS["CAM_FRONT"]
# mmdet3d >= 1.0 boxes: (x, y, z, l, w, h, yaw) in the LiDAR frame, gravity centre
BOXES = np.array([[5.0, 2.0, -1.0, 4.5, 1.9, 1.6, 0.3],      # car
                  [-3.0, 4.0, -0.8, 0.7, 0.6, 1.8, -1.2]])   # pedestrian
LABELS = [1, 0]  # categories below: pedestrian 0, car 1 (not the nuScenes order)
TOKENS = ["tok-first", "tok-second"]


def _write_tiny(root: Path) -> tuple[Path, np.ndarray]:
    """A data root with one LiDAR file (12 known points), the CAM_FRONT photo (64x48), and
    an mmdet3d >= 1.1 info file of two samples in ``root/infos/``; returns the info path
    and the points ``[12, 3]`` (LiDAR frame)."""
    from PIL import Image

    rng = np.random.default_rng(3)
    points = np.zeros((12, 5), np.float32)
    points[:, :3] = rng.uniform(-30, 30, size=(12, 3))
    points[:, 3] = rng.uniform(0, 255, 12)
    lidar = root / "samples" / "LIDAR_TOP" / "kf.pcd.bin"
    lidar.parent.mkdir(parents=True)
    points.tofile(lidar)
    photo = root / "samples" / "CAM_FRONT" / "front.jpg"
    photo.parent.mkdir(parents=True)
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(photo)

    def entry(token: str, index: int) -> dict:
        images = {}
        for channel, T_lidar_cam in T_LIDAR_CAMS.items():
            images[channel] = {
                # paths as mmdet3d writes them: relative to where the converter ran
                "img_path": f"data/nuscenes/samples/{channel}/"
                            + ("front.jpg" if channel == "CAM_FRONT" else "back.jpg"),
                "cam2img": K_CAMS[channel],
                "lidar2cam": np.linalg.inv(T_lidar_cam).tolist(),
                "timestamp": 10.0 + index,
            }
            if channel == "CAM_FRONT":
                images[channel]["cam2ego"] = T_EGO_CAM_FRONT.tolist()
        return {
            "token": token, "sample_idx": index, "timestamp": 10.0 + index,
            "ego2global": T_GLOBAL_EGO.tolist(),
            "lidar_points": {"lidar_path": "data/nuscenes/samples/LIDAR_TOP/kf.pcd.bin",
                             "lidar2ego": T_EGO_LIDAR.tolist(), "num_pts_feats": 5},
            "images": images,
            "instances": [{"bbox_3d": BOXES[i].tolist(), "bbox_label_3d": LABELS[i],
                           "velocity": [0.0, 0.0], "num_lidar_pts": 5}
                          for i in range(len(BOXES))],
        }

    info = {"metainfo": {"categories": {"pedestrian": 0, "car": 1}, "version": "v1.0-mini"},
            "data_list": [entry(t, i) for i, t in enumerate(TOKENS)]}
    path = root / "infos" / "tiny_infos_val.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps(info, protocol=4))
    return path, points[:, :3].astype(np.float64)


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, np.ndarray]:
    return _write_tiny(tmp_path / "nuscenes")


def test_tiny_info_keyframe_in_the_ego_frame(tiny, tmp_path):
    from viewer.cli import View

    info, pts_lidar = tiny
    # the .pkl sits in infos/: its paths resolve under its parent, the data root
    scene = View(info, sample="tok-second").load()
    assert scene.title.startswith("tiny_infos_val.pkl sample 1")
    np.testing.assert_allclose(scene.up, [0.0, 0.0, 1.0])
    assert scene.stats["data root"] == str(info.parent.parent)

    # points: every point of the file, LiDAR -> ego by lidar2ego
    np.testing.assert_allclose(scene.points_world, _apply(T_EGO_LIDAR, pts_lidar), atol=1e-5)
    assert scene.point_colors.shape == (12, 3) and scene.point_colors.dtype == np.uint8

    # boxes: named through metainfo['categories'], centre and heading moved to ego,
    # sizes (w, l, h)
    (gt,) = scene.boxes
    assert gt.name == "ground truth" and len(gt) == 2 and gt.scores is None
    assert gt.labels == ["car", "pedestrian"]
    np.testing.assert_allclose(gt.centres, _apply(T_EGO_LIDAR, BOXES[:, :3]), atol=1e-9)
    np.testing.assert_allclose(gt.sizes_wlh, BOXES[:, [4, 3, 5]])
    corners = gt.corners()
    for i, box in enumerate(BOXES):
        heading = T_EGO_LIDAR[:3, :3] @ np.array([math.cos(box[6]), math.sin(box[6]), 0.0])
        front = corners[i, [0, 3, 4, 7]].mean(axis=0)  # the front face (+length)
        np.testing.assert_allclose(front - gt.centres[i], heading * box[3] / 2, atol=1e-6)

    # cameras: the info's intrinsics; placed by cam2ego, else lidar2ego @ inv(lidar2cam)
    cams = scene.cameras
    assert cams.names == ["CAM_BACK", "CAM_FRONT"]
    for i, channel in enumerate(cams.names):
        np.testing.assert_allclose(cams.K[i].numpy(), K_CAMS[channel])
    np.testing.assert_allclose(cams.T_world_cam[0].numpy(),
                               T_EGO_LIDAR @ T_LIDAR_CAMS["CAM_BACK"], atol=1e-12)
    np.testing.assert_allclose(cams.T_world_cam[1].numpy(), T_EGO_CAM_FRONT, atol=1e-12)
    # the front camera looks forward (+x of the ego frame), its y axis down
    R = cams.T_world_cam[1, :3, :3].numpy()
    assert R[0, 2] > 0.99 and R[2, 1] < -0.99
    # the photo that exists gives its size and thumbnail; the missing one: 2x the centre
    assert (int(cams.width[1]), int(cams.height[1])) == (64, 48)
    assert (int(cams.width[0]), int(cams.height[0])) == (1600, 900)
    root = info.parent.parent
    assert cams.image_paths[1] == str(root / "samples" / "CAM_FRONT" / "front.jpg")
    from viewer.data import load_thumbnail

    assert load_thumbnail(cams.image_paths[1]).shape == (48, 64, 3)
    assert load_thumbnail(cams.image_paths[0]) is None


def test_tiny_info_detections_and_folder(tiny, tmp_path):
    """A results JSON (global frame) for the sample's token is drawn in the same ego frame;
    the info's folder is accepted in place of the file, and --data-root is honoured."""
    from viewer.cli import View

    info, pts_lidar = tiny
    T_global_lidar = T_GLOBAL_EGO @ T_EGO_LIDAR
    car_global = _apply(T_global_lidar, BOXES[:1, :3])[0]
    yaw_global = 0.3 + math.pi / 2 + 0.7
    box = {"sample_token": "tok-first", "translation": car_global.tolist(),
           "size": [1.9, 4.5, 1.6], "velocity": [0.0, 0.0],
           "rotation": [math.cos(yaw_global / 2), 0.0, 0.0, math.sin(yaw_global / 2)],
           "detection_name": "car", "detection_score": 0.8, "attribute_name": ""}
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"meta": {"use_lidar": True},
                                   "results": {"tok-first": [box]}}))
    scene = View(info.parent, results=results, data_root=info.parent.parent).load()
    gt, det = scene.boxes
    assert det.name == "detections" and len(det) == 1 and det.labels == ["car"]
    np.testing.assert_allclose(det.centres[0], gt.centres[0], atol=1e-9)
    np.testing.assert_allclose(det.corners()[0], gt.corners()[0], atol=1e-9)
    np.testing.assert_allclose(scene.points_world, _apply(T_EGO_LIDAR, pts_lidar), atol=1e-5)


def _cli(monkeypatch, capsys, *args: str) -> str:
    """``recon view ARGS`` in process: must exit 2 with one ``recon: error:`` line."""
    from viewer.cli import main

    monkeypatch.setattr(sys, "argv", ["recon", "view", *args, "--port", "0",
                                      "--seconds", "0.1"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recon: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_cli_errors_are_one_sentence(tiny, tmp_path, monkeypatch, capsys):
    info, _ = tiny
    assert "--sample 2 is out of range" in _cli(monkeypatch, capsys, str(info), "--sample", "2")
    assert "has 2 samples" in _cli(monkeypatch, capsys, str(info), "--sample", "5")
    assert "there is no sample 'nope'" in _cli(monkeypatch, capsys, str(info), "--sample",
                                               "nope")
    # a data root without the LiDAR file: the file and where it was looked for are named
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    line = _cli(monkeypatch, capsys, str(info), "--data-root", str(elsewhere))
    assert "LiDAR file data/nuscenes/samples/LIDAR_TOP/kf.pcd.bin" in line
    assert str(elsewhere / "samples" / "LIDAR_TOP" / "kf.pcd.bin") in line
    (info.parent.parent / "samples" / "LIDAR_TOP" / "kf.pcd.bin").unlink()
    line = _cli(monkeypatch, capsys, str(info))
    assert "is missing" in line and "pass --data-root" in line
    # pickles that are not info files
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"foo": 1}))
    assert "neither an mmdet3d" in _cli(monkeypatch, capsys, str(other))
    other.write_bytes(pickle.dumps({"data_list": [{"token": "x"}]}))
    assert "not a complete mmdet3d info file" in _cli(monkeypatch, capsys, str(other))
    other.write_bytes(b"not a pickle")
    assert "not a readable info pickle" in _cli(monkeypatch, capsys, str(other))


def test_folders_say_what_they_need(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _cli(monkeypatch, capsys, str(empty))
    assert "found nothing to show" in line
    assert "v1.0-*/ tables" in line and "mmdet3d info .pkl" in line
    # sensor files of a nuScenes dataroot without its tables
    sensors = tmp_path / "nuscenes"
    (sensors / "samples" / "LIDAR_TOP").mkdir(parents=True)
    line = _cli(monkeypatch, capsys, str(sensors))
    assert "no table folder" in line and "v1.0-*/ tables" in line
    # several pickles, none named as an info file
    for name in ("a.pkl", "b.pkl"):
        (sensors / name).write_bytes(pickle.dumps({}))
    assert "give the info file itself" in _cli(monkeypatch, capsys, str(sensors))
    with pytest.raises(UserError, match="not a .ply file"):
        from viewer.data import load_scene

        load_scene(sensors / "a.pkl")


# -------------------------------------------------------------- the real nuScenes fixture

needs_fixture = pytest.mark.skipif(not (FIXTURE / "nus_info.pkl").is_file(),
                                   reason=f"real nuScenes fixture not found at {FIXTURE} "
                                          "(../shared/datasets)")


@needs_fixture
@pytest.mark.parametrize("given", ["file", "folder"])
def test_real_fixture_keyframe(given):
    """nus_info.pkl (mmdet3d < 1.0 boxes: (x, y, z, w, l, h, -yaw - pi/2)) and its LiDAR
    file of 100 points; the folder also holds a result pickle, which is not picked."""
    from perception.data.mmdet3d_info import restricted_load
    from viewer.cli import View

    raw = restricted_load(FIXTURE / "nus_info.pkl")
    entry = raw["data_list"][0]
    path = FIXTURE / "nus_info.pkl" if given == "file" else FIXTURE
    scene = View(path, sample="0").load()

    T_ego_lidar = np.asarray(entry["lidar_points"]["lidar2ego"], np.float64)
    cloud = np.fromfile(FIXTURE / "samples" / "LIDAR_TOP" / LIDAR_NAME, np.float32)
    cloud = cloud.reshape(-1, 5)
    assert len(cloud) == 100 and scene.points_world.shape == (100, 3)
    np.testing.assert_allclose(scene.points_world,
                               _apply(T_ego_lidar, cloud[:, :3].astype(np.float64)), atol=1e-4)

    (gt,) = scene.boxes
    instances = entry["instances"]
    assert len(gt) == len(instances) == 37
    boxes = np.array([inst["bbox_3d"] for inst in instances], np.float64)
    classes = raw["metainfo"]["CLASSES"]
    assert gt.labels == [classes[inst["bbox_label_3d"]] for inst in instances]
    np.testing.assert_allclose(gt.centres, _apply(T_ego_lidar, boxes[:, :3]), atol=1e-9)
    np.testing.assert_allclose(gt.sizes_wlh, boxes[:, 3:6])
    # the heading (the length axis) is yaw = -r - pi/2 in the LiDAR frame
    corners = gt.corners()
    for i, box in enumerate(boxes):
        yaw = -box[6] - math.pi / 2
        heading = T_ego_lidar[:3, :3] @ np.array([math.cos(yaw), math.sin(yaw), 0.0])
        front = corners[i, [0, 3, 4, 7]].mean(axis=0)
        np.testing.assert_allclose(front - gt.centres[i], heading * box[4] / 2, atol=1e-6)

    cams = scene.cameras
    assert len(cams) == 6 and cams.names == sorted(entry["images"])
    for i, channel in enumerate(cams.names):
        cam = entry["images"][channel]
        np.testing.assert_allclose(cams.K[i].numpy(), cam["cam2img"])
        # placed by cam2ego (this file's lidar2cam translations are mmdet3d's legacy -t)
        T = cams.T_world_cam[i].numpy()
        np.testing.assert_allclose(T, np.asarray(cam["cam2ego"], np.float64), atol=1e-12)
        # lidar2cam's rotation agrees up to the ego's turn between the two timestamps
        R = T_ego_lidar[:3, :3] @ np.asarray(cam["lidar2cam"], np.float64)[:3, :3].T
        np.testing.assert_allclose(T[:3, :3], R, atol=1e-3)
        assert cams.image_paths[i] == str(FIXTURE / "samples" / channel / cam["img_path"])


@needs_fixture
def test_real_fixture_is_drawn():
    from viewer.cli import View
    from viewer.server import SceneViewer, start_server

    scene = View(FIXTURE / "nus_info.pkl", sample="6eb8a3ff0abf4f3a9380a48f2a0b87ef").load()
    assert scene.title.startswith("nus_info.pkl sample 1")
    server = start_server(port=0)
    try:
        viewer = SceneViewer(server, scene)
        assert set(viewer._box_handles) == {"ground truth"}
        assert viewer._points_handle.visible
        assert len(viewer._camera_handles) == 6
        np.testing.assert_allclose(viewer.up, [0.0, 0.0, 1.0])
        assert "| boxes (ground truth) | 38 |" in viewer.gui_stats.content
    finally:
        server.stop()
