"""The dataset against the devkit's own functions (the reference for the nuScenes format):
multi-sweep points, boxes in the LiDAR and camera frames, camera transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility, transform_matrix
from pyquaternion import Quaternion

from geometry.errors import UserError
from perception.constants import CAMERA_CHANNELS
from perception.data import POINT_COLUMNS, NuScenesDataset


@pytest.fixture(scope="module")
def dataset(synth_root: Path) -> NuScenesDataset:
    return NuScenesDataset(synth_root, "v1.0-mini", "mini_val", sweeps=10)


def test_split_selects_the_official_scenes(synth_root: Path, dataset: NuScenesDataset,
                                           tiny_spec) -> None:
    assert len(dataset) == tiny_spec.samples_per_scene  # scene-0103 only
    train = NuScenesDataset(synth_root, "v1.0-mini", "mini_train", load_points=False,
                            load_images=False)
    assert len(train) == tiny_spec.samples_per_scene  # scene-0061
    assert not set(train.sample_tokens) & set(dataset.sample_tokens)
    assert dataset[0].scene_name == "scene-0103"


@pytest.mark.parametrize(
    ("split", "message"),
    [("val", "trainval"), ("no_such_split", "unknown split"), ("test", "test")],
)
def test_bad_splits_are_user_errors(synth_root: Path, split: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        len(NuScenesDataset(synth_root, "v1.0-mini", split))


def test_bad_dataroot_and_version_are_user_errors(synth_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a folder"):
        len(NuScenesDataset(tmp_path / "missing"))
    with pytest.raises(UserError, match="found: v1.0-mini"):
        len(NuScenesDataset(synth_root, version="v1.0-trainval"))


def test_multisweep_points_match_the_devkit(dataset: NuScenesDataset, tiny_spec) -> None:
    token = dataset.sample_tokens[-1]  # has earlier keyframes and sweeps behind it
    points = dataset.lidar_points(token)
    sample = dataset.nusc.get("sample", token)
    pc, times = LidarPointCloud.from_file_multisweep(dataset.nusc, sample, "LIDAR_TOP",
                                                     "LIDAR_TOP", nsweeps=10)
    assert POINT_COLUMNS == ("x", "y", "z", "intensity", "time_lag")
    assert points.shape == (pc.points.shape[1], 5)
    np.testing.assert_allclose(points[:, :4], pc.points.T, atol=2e-4)  # float32 metres
    np.testing.assert_allclose(points[:, 4], times[0], atol=1e-6)
    lags = np.unique(np.round(points[:, 4], 4))
    # Keyframe 2 has the scene's whole sweep chain behind it (fewer than 10 sweeps).
    n_chain = tiny_spec.sweeps_per_sample + 2 * (tiny_spec.sweeps_per_sample + 1) + 1
    assert len(lags) == min(10, n_chain) and lags[0] == 0.0
    np.testing.assert_allclose(np.diff(lags), 0.5 / 3, atol=1e-4)  # 2 sweeps between keys


def test_ground_truth_matches_devkit_boxes_in_the_lidar_frame(dataset: NuScenesDataset) -> None:
    token = dataset.sample_tokens[1]
    sample = dataset.nusc.get("sample", token)
    gt = dataset.ground_truth(token)
    _, boxes, _ = dataset.nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
    by_token = {b.token: b for b in boxes}
    assert len(gt) == len(boxes) > 30
    lidar_sd = dataset.nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    cs = dataset.nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
    pose = dataset.nusc.get("ego_pose", lidar_sd["ego_pose_token"])
    R_lidar_global = (Quaternion(cs["rotation"]).inverse * Quaternion(pose["rotation"]).inverse
                      ).rotation_matrix
    for i, ann_token in enumerate(gt.tokens):
        box = by_token[ann_token]
        np.testing.assert_allclose(gt.centers[i], box.center, atol=1e-9)
        np.testing.assert_allclose(gt.sizes[i], box.wlh)
        heading = box.rotation_matrix[:2, 0]
        np.testing.assert_allclose([np.cos(gt.yaws[i]), np.sin(gt.yaws[i])],
                                   heading / np.linalg.norm(heading), atol=1e-9)
        velocity = R_lidar_global @ dataset.nusc.box_velocity(ann_token)
        np.testing.assert_allclose(gt.velocities[i], velocity[:2], atol=1e-9)


def test_cameras_match_devkit_transforms_and_boxes(dataset: NuScenesDataset) -> None:
    item = dataset[1]
    nusc = dataset.nusc
    sample = nusc.get("sample", item.token)
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    lidar_cs = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
    lidar_pose = nusc.get("ego_pose", lidar_sd["ego_pose_token"])
    assert list(item.cameras) == list(CAMERA_CHANNELS)
    for channel, cam in item.cameras.items():
        sd = nusc.get("sample_data", sample["data"][channel])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        # The devkit's map_pointcloud_to_image chain, with pyquaternion.
        expected = (
            transform_matrix(cs["translation"], Quaternion(cs["rotation"]), inverse=True)
            @ transform_matrix(pose["translation"], Quaternion(pose["rotation"]), inverse=True)
            @ transform_matrix(lidar_pose["translation"], Quaternion(lidar_pose["rotation"]))
            @ transform_matrix(lidar_cs["translation"], Quaternion(lidar_cs["rotation"]))
        )
        np.testing.assert_allclose(cam.T_cam_lidar, expected, atol=1e-9)
        np.testing.assert_allclose(cam.K, cs["camera_intrinsic"])
        assert cam.image.shape == (cam.image_size[1], cam.image_size[0], 3)
        assert cam.image.dtype == np.float32 and 0 <= cam.image.min() and cam.image.max() <= 1
        # Camera-frame instances: the devkit's boxes in this camera, same centres and sizes.
        _, boxes, _ = nusc.get_sample_data(sd["token"], box_vis_level=BoxVisibility.ANY)
        ours = {item.gt.tokens[i]: k for k, i in enumerate(cam.instances.box_index)}
        matched = 0
        for box in boxes:
            if box.center[2] <= 0.1:
                continue
            assert box.token in ours, f"{channel}: a box the devkit sees is missing"
            k = ours[box.token]
            np.testing.assert_allclose(cam.instances.centers[k], box.center, atol=1e-6)
            np.testing.assert_allclose(cam.instances.sizes[k], box.wlh)
            matched += 1
        assert matched >= 1
