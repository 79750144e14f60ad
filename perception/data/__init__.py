"""The nuScenes data layer: the devkit-backed dataset, mmdet3d info pickles, file readers."""

from perception.data.io import load_image, load_lidar_points
from perception.data.mmdet3d_info import InfoDataset, read_info_file, restricted_load
from perception.data.nuscenes import (
    NuScenesDataset,
    find_versions,
    open_nuscenes,
    split_sample_tokens,
    split_scene_names,
)
from perception.data.sample import POINT_COLUMNS, CameraData, NuScenesSample

__all__ = [
    "POINT_COLUMNS",
    "CameraData",
    "InfoDataset",
    "NuScenesDataset",
    "NuScenesSample",
    "find_versions",
    "load_image",
    "load_lidar_points",
    "open_nuscenes",
    "read_info_file",
    "restricted_load",
    "split_sample_tokens",
    "split_scene_names",
]
