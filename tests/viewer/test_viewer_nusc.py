"""A nuScenes sample in the viewer: LiDAR points, ground-truth boxes, detections and the
cameras, in the ego frame, cross-checked against the official devkit's own transforms.

Uses the 13-table fixture in ../shared/datasets (skips where it is absent); the fixture has
no sensor files, so the test writes a LiDAR sweep of known points where the table says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from geometry.errors import UserError

TABLES = (Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
          / "nuscenes_fixture" / "lyft_tables_template" / "v1.01-train")
VERSION = "v1.01-train"
pytestmark = pytest.mark.skipif(not (TABLES / VERSION / "sample.json").is_file(),
                                reason=f"nuScenes fixture tables not found at {TABLES}")


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nusc") / "dataroot"
    shutil.copytree(TABLES, root)  # the tables and the map mask; sensor files come later
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)  # the shared copy is read-only; the test adds a LiDAR file
    return root


@pytest.fixture(scope="module")
def nusc(dataroot):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=VERSION, dataroot=str(dataroot), verbose=False)


def _lidar_points(nusc, dataroot: Path) -> np.ndarray:
    """Write a LIDAR_TOP sweep of 50 known points (sensor frame); return them [50, 3]."""
    sample = nusc.sample[0]
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    rng = np.random.default_rng(0)
    pts = rng.uniform(-20, 20, size=(50, 3)).astype(np.float32)
    cloud = np.zeros((50, 5), np.float32)
    cloud[:, :3] = pts
    path = dataroot / sd["filename"]
    path.parent.mkdir(parents=True, exist_ok=True)
    cloud.tofile(path)
    return pts.astype(np.float64)


def _results(nusc, path: Path) -> None:
    """Two detections on the sample: a copy of the first GT box (score 0.9) and a box that
    the default threshold hides (score 0.1)."""
    sample = nusc.sample[0]
    ann = nusc.get("sample_annotation", sample["anns"][0])
    box = {"sample_token": sample["token"], "translation": ann["translation"],
           "size": ann["size"], "rotation": ann["rotation"], "velocity": [0.0, 0.0],
           "detection_name": "car", "detection_score": 0.9, "attribute_name": ""}
    weak = dict(box, translation=[t + 5.0 for t in ann["translation"]], detection_score=0.1)
    path.write_text(json.dumps({"meta": {"use_lidar": True}, "results":
                                {sample["token"]: [box, weak]}}))


def test_sample_layers_are_in_the_ego_frame(nusc, dataroot, tmp_path):
    from nuscenes.utils.geometry_utils import BoxVisibility
    from pyquaternion import Quaternion

    from viewer.nusc import load_nuscenes_sample

    pts_lidar = _lidar_points(nusc, dataroot)
    _results(nusc, tmp_path / "results.json")
    scene = load_nuscenes_sample(dataroot, sample="0", results=tmp_path / "results.json")
    sample = nusc.sample[0]
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    R_ego_lidar = Quaternion(calib["rotation"]).rotation_matrix
    t_ego_lidar = np.asarray(calib["translation"])

    # points: sensor -> ego by the calibration
    np.testing.assert_allclose(scene.points_world, pts_lidar @ R_ego_lidar.T + t_ego_lidar,
                               atol=1e-4)
    assert scene.point_colors.shape == (50, 3)
    np.testing.assert_allclose(scene.up, [0.0, 0.0, 1.0])

    # ground truth: the devkit gives the boxes in the LiDAR frame; move them to ego
    gt = scene.boxes[0]
    assert gt.name == "ground truth" and len(gt) == len(sample["anns"])
    _, boxes_lidar, _ = nusc.get_sample_data(sd["token"], box_vis_level=BoxVisibility.NONE)
    by_token = {b.token: b for b in boxes_lidar}
    for i, token in enumerate(sample["anns"]):
        b = by_token[token]
        np.testing.assert_allclose(gt.centres[i], R_ego_lidar @ b.center + t_ego_lidar,
                                   atol=1e-6)
        R_box_ego = R_ego_lidar @ b.orientation.rotation_matrix
        q = Quaternion(matrix=R_box_ego, atol=1e-6)
        assert abs(abs(float(np.dot(gt.quats_wxyz[i], q.elements))) - 1.0) < 1e-6
        np.testing.assert_allclose(gt.sizes_wlh[i], b.wlh)
        corners_ego = (R_ego_lidar @ b.corners() + t_ego_lidar[:, None]).T  # [8, 3]
        ours = gt.corners()[i]
        # same 8 corners (orders differ): every devkit corner has one of ours on it
        d = np.linalg.norm(corners_ego[:, None] - ours[None], axis=-1)
        assert d.min(axis=1).max() < 1e-6

    # detections: the score-0.9 copy of GT box 0 is kept, the 0.1 one hidden
    det = scene.boxes[1]
    assert det.name == "detections" and len(det) == 1
    np.testing.assert_allclose(det.centres[0], gt.centres[0], atol=1e-9)
    np.testing.assert_allclose(det.scores, [0.9])

    # cameras: OpenCV frame, at sensor poses; the camera centre is the calibrated
    # translation moved by the difference of the ego poses
    cams = scene.cameras
    assert len(cams) == sum(ch.startswith("CAM") for ch in sample["data"])
    assert cams.names == sorted(ch for ch in sample["data"] if ch.startswith("CAM"))
    front = cams.names.index("CAM_FRONT")
    cam_sd = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
    cam_calib = nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])
    ego_l = nusc.get("ego_pose", sd["ego_pose_token"])
    ego_c = nusc.get("ego_pose", cam_sd["ego_pose_token"])
    centre_global = (Quaternion(ego_c["rotation"]).rotation_matrix
                     @ np.asarray(cam_calib["translation"]) + ego_c["translation"])
    centre_ego = Quaternion(ego_l["rotation"]).rotation_matrix.T @ (
        centre_global - np.asarray(ego_l["translation"]))
    np.testing.assert_allclose(cams.T_world_cam[front, :3, 3].numpy(), centre_ego, atol=1e-6)
    np.testing.assert_allclose(cams.K[front].numpy(), cam_calib["camera_intrinsic"])
    # a front camera looks forward (+x of the ego frame) with its y axis down (-z)
    R = cams.T_world_cam[front, :3, :3].numpy()
    assert R[0, 2] > 0.9 and R[2, 1] < -0.9


def test_viewer_draws_the_sample(nusc, dataroot, tmp_path):
    from viewer.nusc import load_nuscenes_sample
    from viewer.server import SceneViewer, start_server

    _lidar_points(nusc, dataroot)
    _results(nusc, tmp_path / "results.json")
    scene = load_nuscenes_sample(dataroot, results=tmp_path / "results.json")
    server = start_server(port=0)
    try:
        viewer = SceneViewer(server, scene)
        assert set(viewer._box_handles) == {"ground truth", "detections"}
        assert viewer._points_handle.visible  # no splats: the points are on
        np.testing.assert_allclose(viewer.up, [0.0, 0.0, 1.0])
        viewer.gui_show_boxes["detections"].value = False
        assert not viewer._box_handles["detections"].visible
        assert "| boxes (ground truth) | 4 |" in viewer.gui_stats.content
    finally:
        server.stop()


def test_bad_nuscenes_inputs(nusc, dataroot, tmp_path):
    from viewer.nusc import load_nuscenes_sample

    with pytest.raises(UserError, match="out of range"):
        load_nuscenes_sample(dataroot, sample="7")
    with pytest.raises(UserError, match="there is no sample"):
        load_nuscenes_sample(dataroot, sample="abc")
    with pytest.raises(UserError, match="no table folder"):
        load_nuscenes_sample(dataroot, version="v1.0-mini")
    (tmp_path / "bad.json").write_text(json.dumps({"meta": {}}))
    with pytest.raises(UserError, match="no 'results'"):
        load_nuscenes_sample(dataroot, results=tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps(
        {"results": {nusc.sample[0]["token"]: [{"translation": [0, 0, 0]}]}}))
    with pytest.raises(UserError, match="lacks size"):
        load_nuscenes_sample(dataroot, results=tmp_path / "bad2.json")
