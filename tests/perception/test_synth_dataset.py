"""The generated dataset is nuScenes to the letter: the devkit loads it unmodified, the
tables are consistent, the files are where and what they should be, and the point
counts and velocities in the annotations agree with the sensor data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.splits import create_splits_scenes
from PIL import Image

from perception.constants import CAMERA_CHANNELS, DETECTION_CLASSES
from perception.data import NuScenesDataset
from perception.synth import scene_names

TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
          "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility")


def test_scene_names_follow_the_official_mini_splits() -> None:
    splits = create_splits_scenes()
    assert scene_names(1) == ["scene-0103"]
    assert scene_names(4) == ["scene-0103", "scene-0916", "scene-0061", "scene-0553"]
    names = scene_names(10)
    assert sorted(names) == sorted(splits["mini_val"] + splits["mini_train"])
    assert names[:2] == splits["mini_val"]


def test_devkit_loads_all_13_tables(synth_root: Path, nusc, tiny_spec) -> None:
    for table in TABLES:
        assert (synth_root / "v1.0-mini" / f"{table}.json").is_file()
    assert len(nusc.scene) == tiny_spec.scenes
    assert len(nusc.sample) == tiny_spec.scenes * tiny_spec.samples_per_scene
    assert [s["name"] for s in nusc.scene] == ["scene-0103", "scene-0061"]
    # The devkit's own reverse indexing attached every channel to every sample.
    for sample in nusc.sample:
        assert set(sample["data"]) == {"LIDAR_TOP", *CAMERA_CHANNELS}
        assert len(sample["anns"]) > 30
    # Every map record has a loadable (placeholder) raster.
    for record in nusc.map:
        assert record["mask"].mask().ndim == 2


def test_sample_chains_and_timestamps(nusc, tiny_spec) -> None:
    for scene in nusc.scene:
        token, times = scene["first_sample_token"], []
        while token:
            sample = nusc.get("sample", token)
            times.append(sample["timestamp"])
            lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
            assert lidar["timestamp"] == sample["timestamp"]
            for channel in CAMERA_CHANNELS:
                cam = nusc.get("sample_data", sample["data"][channel])
                # Cameras fire while the LiDAR sweeps past them: within 50 ms before it.
                assert -50_000 < cam["timestamp"] - sample["timestamp"] <= 0
                ego = nusc.get("ego_pose", cam["ego_pose_token"])
                assert ego["timestamp"] == cam["timestamp"]
            token = sample["next"]
        assert len(times) == scene["nbr_samples"] == tiny_spec.samples_per_scene
        np.testing.assert_array_equal(np.diff(times), 500_000)  # 2 Hz keyframes


def test_lidar_sweep_chain(nusc, tiny_spec) -> None:
    """Between keyframes there are sweeps_per_sample sweeps, 1/(2*(S+1)) s apart."""
    sample = nusc.get("sample", nusc.scene[0]["last_sample_token"])
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    chain = [sd]
    while sd["prev"]:
        sd = nusc.get("sample_data", sd["prev"])
        chain.append(sd)
    n_expected = tiny_spec.sweeps_per_sample + (tiny_spec.samples_per_scene - 1) * (
        tiny_spec.sweeps_per_sample + 1) + 1
    assert len(chain) == n_expected
    keys = [s["is_key_frame"] for s in chain]
    assert sum(keys) == tiny_spec.samples_per_scene
    step = 500_000 // (tiny_spec.sweeps_per_sample + 1)
    assert all(abs(-d - step) <= 1 for d in np.diff([s["timestamp"] for s in chain]))
    for s in chain:
        assert s["filename"].startswith("samples/" if s["is_key_frame"] else "sweeps/")


def test_files_have_the_nuscenes_formats(synth_root: Path, nusc, tiny_spec) -> None:
    sample = nusc.sample[1]
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    path = synth_root / lidar["filename"]
    assert path.name.endswith(".pcd.bin") and path.stat().st_size % 20 == 0
    points = np.fromfile(path, np.float32).reshape(-1, 5)
    assert 10_000 < len(points) < 40_000
    ring = points[:, 4]
    np.testing.assert_array_equal(ring, np.round(ring))
    assert set(np.unique(ring).astype(int)) <= set(range(32)) and np.unique(ring).size > 20
    assert 0 <= points[:, 3].min() and points[:, 3].max() <= 255
    # The devkit's own reader agrees (it drops the ring column).
    pc = LidarPointCloud.from_file(str(path))
    np.testing.assert_array_equal(pc.points.T, points[:, :4])
    # Ground returns sit at the LiDAR height below it (1.84 m in the nuScenes rig).
    assert np.percentile(points[:, 2], 5) == pytest.approx(-1.84, abs=0.05)
    cam = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
    with Image.open(synth_root / cam["filename"]) as image:
        assert image.format == "JPEG"
        assert image.size == (cam["width"], cam["height"]) == (tiny_spec.image_width,
                                                               tiny_spec.image_height)


def test_all_detection_classes_with_points_in_mini_val(synth_root: Path) -> None:
    dataset = NuScenesDataset(synth_root, "v1.0-mini", "mini_val", load_points=False,
                              load_images=False)
    seen = Counter()
    for i in range(len(dataset)):
        gt = dataset[i].gt
        for label in gt.labels[gt.num_lidar_pts > 0]:
            seen[DETECTION_CLASSES[label]] += 1
    assert set(seen) == set(DETECTION_CLASSES)


def test_num_lidar_pts_counts_the_keyframe_points_in_the_box(synth_root: Path) -> None:
    """num_lidar_pts agrees with the points actually in each box of the keyframe scan:
    every box holds (up to range noise, 1.5 cm) the points it claims, and a box with no
    points has no non-ground point in it."""
    dataset = NuScenesDataset(synth_root, "v1.0-mini", "mini_val", sweeps=1, load_images=False)
    checked = 0
    for i in range(len(dataset)):
        sample = dataset[i]
        pts = sample.points
        T = sample.T_global_lidar
        z_global = pts[:, :3] @ T[2, :3] + T[2, 3]
        above_ground = pts[z_global > 0.05]
        loose = sample.gt.points_in_boxes(pts, margin=0.1).sum(0)
        tight = sample.gt.points_in_boxes(above_ground).sum(0)
        claimed = sample.gt.num_lidar_pts
        assert np.all(loose >= 0.9 * claimed - 1)
        assert np.all(tight <= claimed + 1)
        assert np.all(tight[claimed == 0] == 0)
        checked += int((claimed > 0).sum())
    assert checked > 50


def test_velocities_match_the_simulated_motion(nusc) -> None:
    """The devkit's box_velocity (centred differences of the annotations) is the
    simulated constant velocity: moving objects move, parked ones do not."""
    attribute = {a["token"]: a["name"] for a in nusc.attribute}
    moving = parked = 0
    for ann in nusc.sample_annotation:
        velocity = nusc.box_velocity(ann["token"])
        assert np.all(np.isfinite(velocity))
        assert velocity[2] == pytest.approx(0.0, abs=1e-9)
        names = [attribute[t] for t in ann["attribute_tokens"]]
        if names and names[0] in ("vehicle.moving", "pedestrian.moving", "cycle.with_rider"):
            speed = float(np.hypot(*velocity[:2]))
            if names[0] == "pedestrian.moving":
                assert 0.9 < speed < 1.7
            elif names[0] == "vehicle.moving":
                assert speed > 3.9
            moving += 1
        elif names and names[0] in ("vehicle.parked", "pedestrian.standing"):
            np.testing.assert_allclose(velocity[:2], 0.0, atol=1e-9)
            parked += 1
        # Heading of moving vehicles is along their velocity.
        if names == ["vehicle.moving"]:
            w, x, y, z = ann["rotation"]
            yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
            assert np.cos(yaw - np.arctan2(velocity[1], velocity[0])) > 0.9999
    assert moving > 10 and parked > 10


def test_the_same_seed_writes_the_same_tables(synth_root: Path, tmp_path: Path, tiny_spec) -> None:
    from dataclasses import replace

    from perception.synth import write_dataset

    spec = replace(tiny_spec, scenes=1, samples_per_scene=1, sweeps_per_sample=0,
                   image_width=96, image_height=54)
    write_dataset(spec, tmp_path / "a")
    write_dataset(spec, tmp_path / "b")
    for table in ("sample_annotation", "sample_data", "ego_pose", "scene"):
        a = json.loads((tmp_path / "a" / "v1.0-mini" / f"{table}.json").read_text())
        b = json.loads((tmp_path / "b" / "v1.0-mini" / f"{table}.json").read_text())
        assert a == b
    lidar_a = sorted((tmp_path / "a" / "samples" / "LIDAR_TOP").iterdir())[0].read_bytes()
    lidar_b = sorted((tmp_path / "b" / "samples" / "LIDAR_TOP").iterdir())[0].read_bytes()
    assert lidar_a == lidar_b
