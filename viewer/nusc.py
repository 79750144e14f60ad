"""A nuScenes sample for the viewer: LiDAR points, the six cameras, ground-truth boxes and
detections from a results JSON, read with the official devkit.

Everything is shown in the EGO frame of the LiDAR sweep (its ``ego_pose``), which keeps
coordinates small (global nuScenes coordinates run to thousands of metres)::

              z (up)
              |   x (forward)
              |  /
              | /
    y (left) -o

- points: ``LIDAR_TOP`` (or another channel) in its sensor frame, moved by its
  ``calibrated_sensor`` into the ego frame; coloured by height;
- ground truth: ``sample_annotation`` boxes (global) moved into the ego frame;
- detections: the results JSON (``meta`` + ``results``, boxes in the global frame) boxes of
  this sample with a score of at least ``score_threshold``;
- cameras: every ``CAM_*`` of the sample, OpenCV frame (nuScenes cameras already are),
  each at its own timestamp's ego pose, with the photo where the file exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from geometry.errors import UserError
from viewer.data import Boxes3D, ViewerScene

GT_COLOR = (40, 200, 60)
DETECTION_COLOR = (230, 40, 40)


def find_versions(dataroot: str | os.PathLike) -> list[str]:
    """Table folders of a nuScenes dataroot (subfolders holding ``sample.json``)."""
    root = Path(dataroot)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "sample.json").is_file())


def is_nuscenes_root(path: str | os.PathLike) -> bool:
    return bool(find_versions(path))


def _T(rotation_wxyz, translation) -> np.ndarray:
    """4x4 from a nuScenes ``rotation`` (wxyz) and ``translation``."""
    import torch

    from geometry.so3 import quat_normalize, quat_to_matrix

    T = np.eye(4)
    q = torch.tensor(np.asarray(rotation_wxyz, dtype=np.float64))
    T[:3, :3] = quat_to_matrix(quat_normalize(q)).numpy()
    T[:3, 3] = np.asarray(translation, dtype=np.float64)
    return T


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
    """The ``results`` of a nuScenes detection results JSON, checked for the box keys."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; give a nuScenes results JSON.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); give a nuScenes results "
                        "JSON.") from None
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
    import torch

    from geometry.so3 import matrix_to_quat, quat_normalize, quat_to_matrix

    if len(centres) == 0:
        return centres.reshape(0, 3), quats.reshape(0, 4)
    R = quat_to_matrix(quat_normalize(torch.from_numpy(quats))).numpy()
    R_ego = np.einsum("ij,bjk->bik", T_ego_global[:3, :3], R)
    centres_ego = centres @ T_ego_global[:3, :3].T + T_ego_global[:3, 3]
    return centres_ego, matrix_to_quat(torch.from_numpy(R_ego)).numpy()


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
    import torch
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.data_classes import LidarPointCloud

    from geometry.cameras import Cameras
    from reconstruction.images import warn

    root = Path(dataroot)
    versions = find_versions(root)
    if version is None:
        if len(versions) != 1:
            raise UserError(f"{root} holds {len(versions)} nuScenes table folders "
                            f"({', '.join(versions) or 'none'}); pass --version.")
        version = versions[0]
    elif version not in versions:
        raise UserError(f"{root} has no table folder {version!r} (found "
                        f"{', '.join(versions) or 'none'}); pass another --version.")
    try:
        nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    except (AssertionError, FileNotFoundError, KeyError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read the nuScenes tables {root / version} ({err}); check "
                        "that all 13 tables are there.") from None
    if sample.isdigit():
        index = int(sample)
        if index >= len(nusc.sample):
            raise UserError(f"--sample {index} is out of range; {root / version} has "
                            f"{len(nusc.sample)} samples.")
        record = nusc.sample[index]
    else:
        try:
            record = nusc.get("sample", sample)
        except KeyError:
            raise UserError(f"there is no sample {sample!r} in {root / version}; pass a "
                            "sample token or an index.") from None
    if lidar_channel not in record["data"]:
        raise UserError(f"sample {record['token']} has no {lidar_channel}; pass "
                        f"--lidar-channel with one of {', '.join(sorted(record['data']))}.")

    lidar = nusc.get("sample_data", record["data"][lidar_channel])
    ego = nusc.get("ego_pose", lidar["ego_pose_token"])
    T_global_ego = _T(ego["rotation"], ego["translation"])
    T_ego_global = np.linalg.inv(T_global_ego)
    scene = ViewerScene(title=f"nuScenes {version} sample {record['token'][:8]}",
                        up=np.array([0.0, 0.0, 1.0]))

    lidar_path = root / lidar["filename"]
    if lidar_path.is_file():
        calib = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
        pts_lidar = LidarPointCloud.from_file(str(lidar_path)).points[:3].T.astype(np.float64)
        T_ego_lidar = _T(calib["rotation"], calib["translation"])
        pts_ego = pts_lidar @ T_ego_lidar[:3, :3].T + T_ego_lidar[:3, 3]
        scene.points_world = pts_ego
        scene.point_colors = height_colors(pts_ego[:, 2])
    else:
        warn(f"the LiDAR file {lidar_path} is missing; showing the boxes without points")

    anns = [nusc.get("sample_annotation", t) for t in record["anns"]]
    centres = np.array([a["translation"] for a in anns], dtype=np.float64).reshape(-1, 3)
    quats = np.array([a["rotation"] for a in anns], dtype=np.float64).reshape(-1, 4)
    centres, quats = _boxes_to_ego(centres, quats, T_ego_global)
    scene.boxes.append(Boxes3D(
        centres=centres, quats_wxyz=quats,
        sizes_wlh=np.array([a["size"] for a in anns], dtype=np.float64).reshape(-1, 3),
        labels=[a["category_name"] for a in anns], scores=None, name="ground truth",
        color=GT_COLOR))

    if results is not None:
        boxes = read_results(results).get(record["token"], [])
        if not boxes:
            warn(f"{results} has no detections for sample {record['token']}")
        kept = [b for b in boxes if float(b["detection_score"]) >= score_threshold]
        centres = np.array([b["translation"] for b in kept], dtype=np.float64).reshape(-1, 3)
        quats = np.array([b["rotation"] for b in kept], dtype=np.float64).reshape(-1, 4)
        centres, quats = _boxes_to_ego(centres, quats, T_ego_global)
        scene.boxes.append(Boxes3D(
            centres=centres, quats_wxyz=quats,
            sizes_wlh=np.array([b["size"] for b in kept], dtype=np.float64).reshape(-1, 3),
            labels=[str(b["detection_name"]) for b in kept],
            scores=np.array([float(b["detection_score"]) for b in kept]),
            name="detections", color=DETECTION_COLOR))
        scene.stats["score threshold"] = f"{score_threshold:g}"

    channels = sorted(ch for ch in record["data"] if ch.startswith("CAM"))
    Ts, Ks, widths, heights, paths, names = [], [], [], [], [], []
    for channel in channels:
        sd = nusc.get("sample_data", record["data"][channel])
        calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        if not calib.get("camera_intrinsic"):
            continue
        cam_ego = nusc.get("ego_pose", sd["ego_pose_token"])
        T_ego_cam = (T_ego_global @ _T(cam_ego["rotation"], cam_ego["translation"])
                     @ _T(calib["rotation"], calib["translation"]))
        Ts.append(T_ego_cam)
        Ks.append(np.asarray(calib["camera_intrinsic"], dtype=np.float64))
        widths.append(int(sd.get("width") or 1600))
        heights.append(int(sd.get("height") or 900))
        paths.append(str(root / sd["filename"]))
        names.append(channel)
    if Ts:
        scene.cameras = Cameras(
            K=torch.from_numpy(np.stack(Ks)), T_world_cam=torch.from_numpy(np.stack(Ts)),
            width=torch.tensor(widths), height=torch.tensor(heights), image_paths=paths,
            names=names)
    return scene
