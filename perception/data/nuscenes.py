"""A dataset over a nuScenes-format folder, read through the official ``nuscenes-devkit``.

Works unchanged on a real nuScenes download (``v1.0-mini``/``v1.0-trainval``/
``v1.0-test``) and on what ``perception synth`` writes: only ``dataroot`` and ``version``
differ.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from geometry.errors import UserError
from perception import frames
from perception.boxes import GlobalBoxes, LidarBoxes
from perception.constants import ATTRIBUTES, CAMERA_CHANNELS, DETECTION_CLASSES, LIDAR_CHANNEL
from perception.data.io import load_image, load_lidar_points
from perception.data.sample import CameraData, NuScenesSample

TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
          "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility")


def find_versions(dataroot: str | os.PathLike) -> list[str]:
    """Names of the table folders of a dataroot (subfolders holding ``sample.json``), sorted;
    empty when ``dataroot`` is not a folder."""
    root = Path(dataroot)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "sample.json").is_file())


def open_nuscenes(dataroot: str | os.PathLike, version: str, verbose: bool = False):
    """``NuScenes(version, dataroot)`` with the user errors a wrong path deserves.

    Returns:
        a ``nuscenes.nuscenes.NuScenes``.
    """
    from nuscenes.nuscenes import NuScenes

    root = Path(dataroot)
    if not root.is_dir():
        raise UserError(f"dataroot {root} is not a folder; pass the folder that holds "
                        f"{version}/, samples/ and sweeps/.")
    table_root = root / version
    if not table_root.is_dir():
        found = find_versions(root)
        hint = f" (found: {', '.join(found)})" if found else ""
        raise UserError(f"no table folder {table_root}{hint}; pass --version with one of the "
                        "versions in the dataroot.")
    missing = [t for t in TABLES if not (table_root / f"{t}.json").is_file()]
    if missing:
        raise UserError(f"{table_root} lacks {', '.join(t + '.json' for t in missing)}; the "
                        "dataset is incomplete (re-extract or regenerate it).")
    quiet = contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext()
    with quiet:
        return NuScenes(version=version, dataroot=str(root), verbose=verbose)


def split_scene_names(nusc, split: str) -> list[str]:
    """Names of the scenes of ``split``: a devkit split (``mini_val``, ``val``, ...) or one
    from ``{dataroot}/{version}/splits.json``.

    The version checks are the devkit's (``load_gt``), raised as user errors up front.
    """
    from nuscenes.utils.splits import create_splits_scenes, get_scenes_of_custom_split

    version = nusc.version
    predefined = create_splits_scenes()
    if split in predefined:
        required = {"train": "trainval", "val": "trainval", "train_detect": "trainval",
                    "train_track": "trainval", "mini_train": "mini", "mini_val": "mini",
                    "test": "test"}[split]
        if not version.endswith(required):
            raise UserError(f"split '{split}' belongs to a *-{required} version, not {version}; "
                            f"use a {required} dataroot or another --split.")
        return list(predefined[split])
    splits_file = Path(nusc.dataroot) / version / "splits.json"
    if not splits_file.is_file():
        raise UserError(f"unknown split '{split}': it is not a devkit split and there is no "
                        f"{splits_file}; use e.g. mini_val, val or test.")
    try:
        return list(get_scenes_of_custom_split(split, nusc))
    except (ValueError, AssertionError) as err:
        raise UserError(f"split '{split}' is not usable from {splits_file}: {err}") from None


def split_sample_tokens(nusc, split: str) -> list[str]:
    """Tokens of the samples of ``split`` present in the dataset, in scene and time order.

    Raises a :class:`UserError` when none of the split's scenes is in the dataset.
    """
    names = set(split_scene_names(nusc, split))
    # Like the devkit's load_gt: every sample whose scene is in the split (rather than
    # walking the scenes' sample chains, which trimmed tables may leave dangling).
    scene_order = {scene["token"]: i for i, scene in enumerate(nusc.scene)
                   if scene["name"] in names}
    kept = [s for s in nusc.sample if s["scene_token"] in scene_order]
    kept.sort(key=lambda s: (scene_order[s["scene_token"]], s["timestamp"]))
    tokens = [s["token"] for s in kept]
    if not tokens:
        raise UserError(f"none of the {len(names)} scenes of split '{split}' is in "
                        f"{nusc.dataroot}/{nusc.version}; pick the split that matches the data.")
    return tokens


@dataclass
class NuScenesDataset:
    """Samples of one split of a nuScenes-format dataset.

    ``dataset[i]`` is a :class:`NuScenesSample` with LiDAR points (keyframe plus
    ``sweeps - 1`` earlier sweeps, motion-compensated into the keyframe LiDAR frame with
    a per-point time lag, as the devkit's ``LidarPointCloud.from_file_multisweep``), the
    six cameras (image, ``K``, ``T_cam_lidar`` through the ego poses at each sensor's own
    timestamp), and the ground truth of the 10 detection classes in the LiDAR frame,
    also per camera in the camera frame.
    """

    dataroot: Path
    version: str = "v1.0-mini"
    split: str = "mini_val"
    sweeps: int = 10
    """LiDAR sweeps per sample, the keyframe included (nuScenes detectors use 10)."""
    load_points: bool = True
    load_images: bool = True
    min_distance: float = 1.0
    """Drop points within this radius of the sensor (the devkit's ``remove_close``)."""

    def __post_init__(self) -> None:
        self.dataroot = Path(self.dataroot)
        if self.sweeps < 1:
            raise UserError(f"sweeps must be at least 1 (the keyframe), got {self.sweeps}.")

    @cached_property
    def nusc(self):
        """The devkit's ``NuScenes`` object (loaded on first use)."""
        return open_nuscenes(self.dataroot, self.version)

    @cached_property
    def sample_tokens(self) -> list[str]:
        """Tokens of the split's samples, in scene and time order."""
        return split_sample_tokens(self.nusc, self.split)

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def __getitem__(self, index: int) -> NuScenesSample:
        return self.get(self.sample_tokens[index])

    def get(self, sample_token: str) -> NuScenesSample:
        """The sample with this token."""
        nusc = self.nusc
        sample = nusc.get("sample", sample_token)
        lidar_sd = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
        T_ego_lidar = self._T_ego_sensor(lidar_sd)
        T_global_ego = self._T_global_ego(lidar_sd)
        T_lidar_global = frames.invert_T(T_global_ego @ T_ego_lidar)
        gt = self.ground_truth(sample_token, T_lidar_global)
        cameras = {}
        for channel in CAMERA_CHANNELS:
            if channel not in sample["data"]:
                continue
            cam_sd = nusc.get("sample_data", sample["data"][channel])
            calib = nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])
            T_ego_cam = self._T_ego_sensor(cam_sd)
            T_global_ego_cam = self._T_global_ego(cam_sd)
            T_cam_lidar = frames.compose(
                frames.invert_T(T_ego_cam), frames.invert_T(T_global_ego_cam), T_global_ego,
                T_ego_lidar,
            )
            K = np.asarray(calib["camera_intrinsic"], dtype=np.float64)
            size = (int(cam_sd["width"]), int(cam_sd["height"]))
            path = self.dataroot / cam_sd["filename"]
            cameras[channel] = CameraData(
                channel=channel, image_path=path, image_size=size, K=K,
                T_cam_lidar=T_cam_lidar, timestamp=cam_sd["timestamp"] * 1e-6,
                T_ego_cam=T_ego_cam, T_global_ego=T_global_ego_cam,
                image=load_image(path) if self.load_images else None,
                instances=gt.to_camera(T_cam_lidar, K, size),
            )
        scene = nusc.get("scene", sample["scene_token"])
        return NuScenesSample(
            token=sample_token,
            timestamp=lidar_sd["timestamp"] * 1e-6,
            T_ego_lidar=T_ego_lidar,
            T_global_ego=T_global_ego,
            gt=gt,
            points=self.lidar_points(sample_token) if self.load_points else None,
            cameras=cameras,
            scene_name=scene["name"],
        )

    # ------------------------------------------------------------------ pieces

    def _T_ego_sensor(self, sample_data: dict) -> np.ndarray:
        calib = self.nusc.get("calibrated_sensor", sample_data["calibrated_sensor_token"])
        return frames.pose_to_T(calib["rotation"], calib["translation"])

    def _T_global_ego(self, sample_data: dict) -> np.ndarray:
        pose = self.nusc.get("ego_pose", sample_data["ego_pose_token"])
        return frames.pose_to_T(pose["rotation"], pose["translation"])

    def T_global_lidar(self, sample_token: str) -> np.ndarray:
        """``[4, 4]`` keyframe LiDAR -> global of a sample."""
        sample = self.nusc.get("sample", sample_token)
        lidar_sd = self.nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
        return self._T_global_ego(lidar_sd) @ self._T_ego_sensor(lidar_sd)

    def lidar_points(self, sample_token: str) -> np.ndarray:
        """Keyframe plus earlier sweeps in the keyframe LiDAR frame.

        Follows ``LidarPointCloud.from_file_multisweep`` (same sweeps, same close-point
        removal, same transforms), without its float32 round trips in the transforms.

        Returns:
            ``[N, 5]`` float32: x, y, z (m), intensity, time lag (s, >= 0).
        """
        nusc = self.nusc
        sample = nusc.get("sample", sample_token)
        ref_sd = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
        T_lidar_global = frames.invert_T(self._T_global_ego(ref_sd) @ self._T_ego_sensor(ref_sd))
        ref_time = ref_sd["timestamp"] * 1e-6
        chunks = []
        sd = ref_sd
        for _ in range(self.sweeps):
            raw = load_lidar_points(self.dataroot / sd["filename"])
            radius = self.min_distance
            raw = raw[~((np.abs(raw[:, 0]) < radius) & (np.abs(raw[:, 1]) < radius))]
            T_ref_sweep = T_lidar_global @ self._T_global_ego(sd) @ self._T_ego_sensor(sd)
            xyz = frames.transform_points(T_ref_sweep, raw[:, :3].astype(np.float64))
            lag = np.full((raw.shape[0], 1), ref_time - sd["timestamp"] * 1e-6)
            chunks.append(np.concatenate([xyz, raw[:, 3:4], lag], axis=1).astype(np.float32))
            if not sd["prev"]:
                break
            sd = nusc.get("sample_data", sd["prev"])
        return np.concatenate(chunks, axis=0)

    def ground_truth(self, sample_token: str, T_lidar_global: np.ndarray | None = None
                     ) -> LidarBoxes:
        """Annotations of the 10 detection classes in the keyframe LiDAR frame.

        Velocities are the devkit's ``box_velocity`` (NaN where an instance has a single
        annotation); attributes and point counts come from the annotation records.
        """
        from nuscenes.eval.detection.utils import category_to_detection_name

        nusc = self.nusc
        if T_lidar_global is None:
            T_lidar_global = frames.invert_T(self.T_global_lidar(sample_token))
        attribute_names = {a["token"]: a["name"] for a in nusc.attribute}
        records, velocities, labels, attributes, tokens = [], [], [], [], []
        lidar_pts, radar_pts = [], []
        for token in nusc.get("sample", sample_token)["anns"]:
            ann = nusc.get("sample_annotation", token)
            name = category_to_detection_name(ann["category_name"])
            if name is None:
                continue
            records.append(ann)
            velocities.append(nusc.box_velocity(token)[:2])
            labels.append(DETECTION_CLASSES.index(name))
            attr = ann["attribute_tokens"]
            attributes.append(ATTRIBUTES.index(attribute_names[attr[0]] if attr else ""))
            lidar_pts.append(ann["num_lidar_pts"])
            radar_pts.append(ann["num_radar_pts"])
            tokens.append(token)
        boxes = GlobalBoxes(
            translations=np.array([r["translation"] for r in records], np.float64).reshape(-1, 3),
            sizes=np.array([r["size"] for r in records], np.float64).reshape(-1, 3),
            rotations=np.array([r["rotation"] for r in records], np.float64).reshape(-1, 4),
            velocities=np.array(velocities, np.float64).reshape(-1, 2),
            labels=np.array(labels, np.int64),
            attributes=np.array(attributes, np.int64),
        )
        return boxes.to_lidar(T_lidar_global, num_lidar_pts=np.array(lidar_pts, np.int64),
                              num_radar_pts=np.array(radar_pts, np.int64), tokens=tokens)
