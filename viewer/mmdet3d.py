"""A keyframe of an mmdetection3d info pickle (``nuscenes_infos_*.pkl``) for the viewer:
LiDAR points, ground-truth boxes, the cameras and optional detections, read with
perception's restricted info reader (:class:`perception.data.InfoDataset`; never plain
``pickle``).

Like :mod:`viewer.nusc`, everything is shown in the EGO frame of the keyframe LiDAR
(``lidar2ego`` of the info; x forward, y left, z up), which keeps coordinates small:

- points: the keyframe's LiDAR file (every point it holds, no sweeps) moved by
  ``lidar2ego``; coloured by height;
- ground truth: the info's boxes (LiDAR frame, gravity centre; either mmdet3d box
  convention, see :mod:`perception.data.mmdet3d_info`) moved by ``lidar2ego``, so a box
  centre is ``T_ego_lidar @ bbox_3d[:3]`` and its sizes are ``(w, l, h)``; the boxes of
  perception's 10 detection classes (what the reader names);
- cameras: every ``CAM_*`` of the info, OpenCV, placed by the info's ``cam2ego``
  (``sensor2ego`` in older files: the calibrated mount on the car), else by
  ``T_ego_lidar @ inv(lidar2cam)``; the info's intrinsics; the photo as a thumbnail where
  the file exists. Unlike the nuScenes path, the ego motion between the LiDAR and the
  camera timestamps (tens of milliseconds: < 1 m) is not applied, because info files do
  not keep the ego pose at the camera time, and ``lidar2cam`` is not used when
  ``cam2ego`` exists, because some converters wrote its translation wrongly (mmdet3d's own
  test info stores ``-t`` for ``-R^T t``: cameras a metre off);
- detections: a nuScenes results JSON (global frame) for the sample's token, as in the
  nuScenes path.

Paths in an info file are relative to a data root (``data/nuscenes`` where it was made):
by default the .pkl's folder, else its parent, else ``--data-root``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geometry.errors import UserError
from perception import frames
from viewer.data import Boxes3D, ViewerScene
from viewer.nusc import GT_COLOR, _detection_boxes, height_colors


def find_info_file(folder: str | os.PathLike) -> Path | None:
    """The info pickle of ``folder``: its only ``.pkl``, or among several the only one with
    ``info`` in its name (mmdet3d's result pickles sit next to the info files); ``None``
    without any ``.pkl``.

    Raises:
        UserError: several ``.pkl`` files and no single info file among them.
    """
    folder = Path(folder)
    pickles = sorted(p for p in folder.glob("*.pkl") if p.is_file())
    if len(pickles) <= 1:
        return pickles[0] if pickles else None
    named = [p for p in pickles if "info" in p.name.lower()]
    if len(named) == 1:
        return named[0]
    raise UserError(f"{folder} holds {len(pickles)} .pkl files "
                    f"({', '.join(p.name for p in pickles)}); give the info file itself, "
                    f"e.g. recon view {pickles[0]}.")


def _open_info(info_path: Path, data_root: Path):
    """perception's :class:`InfoDataset` of the file (boxes and cameras only: the viewer
    reads the keyframe's points itself)."""
    from perception.data import InfoDataset

    try:
        return InfoDataset(info_path, data_root, load_points=False, load_images=False)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        # the reader trusts the layout once the top level matches; a truncated or
        # hand-made file lacks keys deeper down
        raise UserError(f"{info_path} is not a complete mmdet3d info file "
                        f"({type(err).__name__}: {err}); regenerate it with mmdet3d's "
                        "tools/create_data.py.") from None


def _sample_index(samples: list[dict], sample: str, info_path: Path) -> int:
    """The index of ``sample`` (an index into the file, or a sample token)."""
    if sample.isdigit():
        index = int(sample)
        if index >= len(samples):
            raise UserError(f"--sample {index} is out of range; {info_path} has "
                            f"{len(samples)} samples.")
        return index
    for index, record in enumerate(samples):
        if record["token"] == sample:
            return index
    raise UserError(f"there is no sample {sample!r} in {info_path}; pass a sample token or "
                    "an index.")


def _lidar_file(record: dict, info_path: Path, data_root: Path | None) -> tuple[Path, Path]:
    """``(data_root, keyframe LiDAR file)``: ``data_root`` if given, else the first of the
    .pkl's folder and its parent under which the info's LiDAR path exists."""
    from perception.data.mmdet3d_info import resolve_data_path

    roots = [data_root] if data_root is not None else [info_path.parent,
                                                       info_path.parent.parent]
    tried = []
    for root in roots:
        path = resolve_data_path(root, str(record["lidar_path"]), "samples/LIDAR_TOP")
        if path.is_file():
            return root, path
        tried.append(str(path))
    hint = ("check --data-root" if data_root is not None
            else "pass --data-root with the folder the info file's paths are relative to")
    raise UserError(f"the LiDAR file {record['lidar_path']} of sample {record['token']} is "
                    f"missing (looked for {' and '.join(tried)}); {hint}.")


def load_info_sample(info_path: str | os.PathLike, sample: str = "0",
                     data_root: str | os.PathLike | None = None,
                     results: str | os.PathLike | None = None,
                     score_threshold: float = 0.3) -> ViewerScene:
    """Read one keyframe of an mmdet3d info pickle (see the module doc).

    Args:
        info_path: the info ``.pkl`` (either mmdet3d layout).
        sample: an index into the file's samples, or a sample token.
        data_root: the folder the info's file paths are relative to; default: the .pkl's
            folder, else its parent (whichever holds the keyframe's LiDAR file).
        results: optional nuScenes results JSON (boxes in the global frame).
        score_threshold: detections below it are not shown.

    Raises:
        UserError: not an info file, an unknown sample, a missing LiDAR file, a bad
            results JSON.
    """
    from perception.data import load_lidar_points

    info_path = Path(info_path)
    root = Path(data_root) if data_root is not None else info_path.parent
    if data_root is not None and not root.is_dir():
        raise UserError(f"--data-root {root} is not a folder; give the folder the info "
                        "file's paths are relative to.")
    dataset = _open_info(info_path, root)
    index = _sample_index(dataset.info.samples, sample, info_path)
    record = dataset.info.samples[index]
    root, lidar_path = _lidar_file(record, info_path,
                                   None if data_root is None else root)
    dataset.data_root = root  # camera paths resolve under the same root as the LiDAR
    keyframe = dataset[index]

    T_ego_lidar = np.asarray(keyframe.T_ego_lidar, np.float64)
    scene = ViewerScene(title=f"{info_path.name} sample {index} ({keyframe.token[:8]})",
                        up=np.array([0.0, 0.0, 1.0]))
    points = load_lidar_points(lidar_path)[:, :3].astype(np.float64)
    scene.points_world = frames.transform_points(T_ego_lidar, points)
    scene.point_colors = height_colors(scene.points_world[:, 2])
    scene.boxes.append(_ground_truth_boxes(keyframe.gt, T_ego_lidar))
    if results is not None:
        T_ego_global = frames.invert_T(np.asarray(keyframe.T_global_ego, np.float64))
        scene.boxes.append(_detection_boxes(results, keyframe.token, score_threshold,
                                            T_ego_global))
        scene.stats["score threshold"] = f"{score_threshold:g}"
    scene.cameras = _cameras(keyframe.cameras, T_ego_lidar)
    scene.stats["info file"] = f"{info_path.name}: sample {index} of {len(dataset)}"
    scene.stats["data root"] = str(root)
    return scene


def _ground_truth_boxes(gt, T_ego_lidar: np.ndarray) -> Boxes3D:
    """perception's :class:`~perception.boxes.LidarBoxes` (LiDAR frame) in the ego frame."""
    moved = gt.to_global(T_ego_lidar)  # any rigid frame: here LiDAR -> ego
    return Boxes3D(
        centres=np.asarray(moved.translations, np.float64).reshape(-1, 3),
        sizes_wlh=np.asarray(moved.sizes, np.float64).reshape(-1, 3),
        quats_wxyz=np.asarray(moved.rotations, np.float64).reshape(-1, 4),
        labels=list(gt.class_names), scores=None, name="ground truth", color=GT_COLOR)


def _cameras(cameras: dict, T_ego_lidar: np.ndarray):
    """The keyframe's cameras (perception's ``CameraData`` by channel) as OpenCV
    :class:`~geometry.cameras.Cameras` in the ego frame; None when it has none."""
    import torch

    from geometry.cameras import Cameras

    channels = sorted(cameras)
    if not channels:
        return None
    cams = [cameras[c] for c in channels]
    T = np.stack([np.asarray(c.T_ego_cam, np.float64) if c.T_ego_cam is not None
                  else T_ego_lidar @ frames.invert_T(np.asarray(c.T_cam_lidar, np.float64))
                  for c in cams])
    K = np.stack([np.asarray(c.K, np.float64) for c in cams])
    return Cameras(
        K=torch.from_numpy(K), T_world_cam=torch.from_numpy(T),
        width=torch.tensor([int(c.image_size[0]) for c in cams]),
        height=torch.tensor([int(c.image_size[1]) for c in cams]),
        image_paths=[str(c.image_path) for c in cams], names=channels)
