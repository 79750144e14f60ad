"""A nuScenes sample for the viewer: LiDAR points, the six cameras, ground-truth boxes and
detections from a results JSON, read with perception's nuScenes data layer
(:func:`perception.data.open_nuscenes`, the LiDAR file reader, :mod:`perception.frames`,
the results file reader) over the official devkit.

Everything is shown in the EGO frame of the LiDAR sweep (its ``ego_pose``), which keeps
coordinates small (global nuScenes coordinates run to thousands of metres)::

              z (up)
              |   x (forward)
              |  /
              | /
    y (left) -o

- points: ``LIDAR_TOP`` (or another channel) in its sensor frame, moved by its
  ``calibrated_sensor`` into the ego frame; coloured by height;
- ground truth: every ``sample_annotation`` box (global) moved into the ego frame, with its
  full rotation and category name (not only perception's 10 upright detection classes);
- detections: the results JSON (``meta`` + ``results``, boxes in the global frame) boxes of
  this sample with a score of at least ``score_threshold`` (any class name: only the keys
  drawn are checked, so other datasets' results show too);
- cameras: every ``CAM_*`` of the sample, OpenCV frame (nuScenes cameras already are),
  each at its own timestamp's ego pose, with the photo where the file exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from geometry.errors import UserError
from perception import frames
from perception.data.nuscenes import find_versions
from viewer.data import Boxes3D, ViewerScene

GT_COLOR = (40, 200, 60)
DETECTION_COLOR = (230, 40, 40)


def is_nuscenes_root(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a nuScenes table folder (a subfolder with ``sample.json``)."""
    return bool(find_versions(path))


def height_colors(z: np.ndarray) -> np.ndarray:
    """``[P, 3]`` uint8 colours of heights ``z [P]``: blue (low) - green - red (high),
    over the 2nd-98th percentile."""
    if len(z) == 0:
        return np.zeros((0, 3), np.uint8)
    lo, hi = np.percentile(z, [2, 98])
    t = np.clip((z - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    r = np.clip(2.0 * t - 1.0, 0.0, 1.0)
    b = np.clip(1.0 - 2.0 * t, 0.0, 1.0)
    g = 1.0 - r - b
    return (np.stack([r, g, b], axis=1) * 215 + 40).astype(np.uint8)


def read_results(path: str | os.PathLike) -> dict[str, list[dict]]:
    """The ``results`` of a nuScenes detection results JSON, checked for the keys the viewer
    draws (``perception eval`` checks the whole file against a split)."""
    from perception.results import read_results_json

    data = read_results_json(path)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict):
        raise UserError(f"{path} has no 'results' object; give a nuScenes results JSON "
                        "(meta + results).")
    needed = ("translation", "size", "rotation", "detection_name", "detection_score")
    for token, boxes in results.items():
        if not isinstance(boxes, list):
            raise UserError(f"{path}: results[{token!r}] is not a list of boxes; fix the file.")
        for box in boxes:
            missing = [k for k in needed if not isinstance(box, dict) or k not in box]
            if missing:
                raise UserError(f"{path}: a box of sample {token} lacks {', '.join(missing)}; "
                                "fix the file.")
    return results


def _boxes_to_ego(centres: np.ndarray, quats: np.ndarray,
                  T_ego_global: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global ``centres [B, 3]`` and ``quats [B, 4]`` (wxyz, box-to-global) in the ego frame."""
    if len(centres) == 0:
        return centres.reshape(0, 3), quats.reshape(0, 4)
    R_ego_box = np.einsum("ij,bjk->bik", T_ego_global[:3, :3], frames.quat_to_matrix(quats))
    return frames.transform_points(T_ego_global, centres), frames.matrix_to_quat(R_ego_box)


def load_nuscenes_sample(dataroot: str | os.PathLike, version: str | None = None,
                         sample: str = "0", results: str | os.PathLike | None = None,
                         score_threshold: float = 0.3,
                         lidar_channel: str = "LIDAR_TOP") -> ViewerScene:
    """Read one sample (see the module doc).

    Args:
        dataroot: the folder holding the table folder (``v1.0-mini`` ...) and the sensor
            files.
        version: the table folder's name; default: the only one there.
        sample: a sample token, or its index in the ``sample`` table.
        results: optional results JSON.
        score_threshold: detections below it are not shown.
        lidar_channel: the point cloud to show.

    Raises:
        UserError: no tables, an unknown sample, a bad results JSON.
    """
    from reconstruction.images import warn

    root = Path(dataroot)
    nusc, version = _open_tables(root, version)
    record = _find_sample(nusc, sample, root / version)
    if lidar_channel not in record["data"]:
        raise UserError(f"sample {record['token']} has no {lidar_channel}; pass "
                        f"--lidar-channel with one of {', '.join(sorted(record['data']))}.")

    lidar = nusc.get("sample_data", record["data"][lidar_channel])
    ego = nusc.get("ego_pose", lidar["ego_pose_token"])
    T_ego_global = frames.invert_T(frames.pose_to_T(ego["rotation"], ego["translation"]))
    scene = ViewerScene(title=f"nuScenes {version} sample {record['token'][:8]}",
                        up=np.array([0.0, 0.0, 1.0]))
    lidar_path = root / lidar["filename"]
    if lidar_path.is_file():
        scene.points_world = _points_in_ego(nusc, lidar, lidar_path)
        scene.point_colors = height_colors(scene.points_world[:, 2])
    else:
        warn(f"the LiDAR file {lidar_path} is missing; showing the boxes without points")
    scene.boxes.append(_ground_truth_boxes(nusc, record, T_ego_global))
    if results is not None:
        scene.boxes.append(_detection_boxes(results, record["token"], score_threshold,
                                            T_ego_global))
        scene.stats["score threshold"] = f"{score_threshold:g}"
    scene.cameras = _sample_cameras(nusc, record, T_ego_global, root)
    return scene


def _open_tables(root: Path, version: str | None):
    """The devkit's tables of ``root`` (``version``, default: the only table folder) and
    the version read."""
    from perception.data import open_nuscenes

    versions = find_versions(root)
    if version is None:
        if len(versions) != 1:
            raise UserError(f"{root} holds {len(versions)} nuScenes table folders "
                            f"({', '.join(versions) or 'none'}); pass --version.")
        version = versions[0]
    try:
        return open_nuscenes(root, version), version
    except (AssertionError, FileNotFoundError, KeyError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read the nuScenes tables {root / version} ({err}); the "
                        "tables are malformed: re-extract or regenerate them.") from None


def _find_sample(nusc, sample: str, tables: Path) -> dict:
    """The ``sample`` record of a token, or of an index into the ``sample`` table."""
    if sample.isdigit():
        index = int(sample)
        if index >= len(nusc.sample):
            raise UserError(f"--sample {index} is out of range; {tables} has "
                            f"{len(nusc.sample)} samples.")
        return nusc.sample[index]
    try:
        return nusc.get("sample", sample)
    except KeyError:
        raise UserError(f"there is no sample {sample!r} in {tables}; pass a "
                        "sample token or an index.") from None


def _points_in_ego(nusc, lidar: dict, lidar_path: Path) -> np.ndarray:
    """The sweep's points ``[P, 3]`` (float64) moved by its ``calibrated_sensor`` into the
    ego frame."""
    from perception.data import load_lidar_points

    calib = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
    pts_lidar = load_lidar_points(lidar_path)[:, :3].astype(np.float64)
    T_ego_lidar = frames.pose_to_T(calib["rotation"], calib["translation"])
    return frames.transform_points(T_ego_lidar, pts_lidar)


def _ground_truth_boxes(nusc, record: dict, T_ego_global: np.ndarray) -> Boxes3D:
    """Every ``sample_annotation`` of the sample, in the ego frame."""
    anns = [nusc.get("sample_annotation", t) for t in record["anns"]]
    centres = np.array([a["translation"] for a in anns], dtype=np.float64).reshape(-1, 3)
    quats = np.array([a["rotation"] for a in anns], dtype=np.float64).reshape(-1, 4)
    centres, quats = _boxes_to_ego(centres, quats, T_ego_global)
    return Boxes3D(
        centres=centres, quats_wxyz=quats,
        sizes_wlh=np.array([a["size"] for a in anns], dtype=np.float64).reshape(-1, 3),
        labels=[a["category_name"] for a in anns], scores=None, name="ground truth",
        color=GT_COLOR)


def _detection_boxes(results: str | os.PathLike, sample_token: str, score_threshold: float,
                     T_ego_global: np.ndarray) -> Boxes3D:
    """The results file's boxes of the sample scoring at least ``score_threshold``, in the
    ego frame."""
    from reconstruction.images import warn

    boxes = read_results(results).get(sample_token, [])
    if not boxes:
        warn(f"{results} has no detections for sample {sample_token}")
    kept = [b for b in boxes if float(b["detection_score"]) >= score_threshold]
    centres = np.array([b["translation"] for b in kept], dtype=np.float64).reshape(-1, 3)
    quats = np.array([b["rotation"] for b in kept], dtype=np.float64).reshape(-1, 4)
    centres, quats = _boxes_to_ego(centres, quats, T_ego_global)
    return Boxes3D(
        centres=centres, quats_wxyz=quats,
        sizes_wlh=np.array([b["size"] for b in kept], dtype=np.float64).reshape(-1, 3),
        labels=[str(b["detection_name"]) for b in kept],
        scores=np.array([float(b["detection_score"]) for b in kept]),
        name="detections", color=DETECTION_COLOR)


def _sample_cameras(nusc, record: dict, T_ego_global: np.ndarray, root: Path):
    """The sample's ``CAM_*`` cameras (OpenCV), each at its own timestamp's ego pose, in
    the ego frame of the LiDAR sweep; None when it has none."""
    import torch

    from geometry.cameras import Cameras

    channels = sorted(ch for ch in record["data"] if ch.startswith("CAM"))
    Ts, Ks, widths, heights, paths, names = [], [], [], [], [], []
    for channel in channels:
        sd = nusc.get("sample_data", record["data"][channel])
        calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        if not calib.get("camera_intrinsic"):
            continue
        cam_ego = nusc.get("ego_pose", sd["ego_pose_token"])
        T_ego_cam = frames.compose(T_ego_global,
                                   frames.pose_to_T(cam_ego["rotation"], cam_ego["translation"]),
                                   frames.pose_to_T(calib["rotation"], calib["translation"]))
        Ts.append(T_ego_cam)
        Ks.append(np.asarray(calib["camera_intrinsic"], dtype=np.float64))
        widths.append(int(sd.get("width") or 1600))
        heights.append(int(sd.get("height") or 900))
        paths.append(str(root / sd["filename"]))
        names.append(channel)
    if not Ts:
        return None
    return Cameras(
        K=torch.from_numpy(np.stack(Ks)), T_world_cam=torch.from_numpy(np.stack(Ts)),
        width=torch.tensor(widths), height=torch.tensor(heights), image_paths=paths,
        names=names)
