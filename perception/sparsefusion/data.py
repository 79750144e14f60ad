"""From :class:`~perception.data.sample.NuScenesSample` to network inputs and targets.

Per sample: the LiDAR points in the point range (x, y, z, intensity / 255, time lag); the
six images resized to the configured network size (ImageNet-normalised) with their
intrinsics scaled to match; ``T_cam_lidar`` per view; the ground truth in the LiDAR frame
(boxes in range with at least one LiDAR or radar point, as the devkit's evaluation keeps)
and, per view, the same boxes in the camera frame. Missing cameras (e.g. the one-camera
fixture) get a zero image and ``view_mask = False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perception.constants import CAMERA_CHANNELS
from perception.data.sample import NuScenesSample
from perception.sparsefusion.config import SparseFusionConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Batch:
    """Network inputs and targets of ``B`` samples (``V = 6`` views)."""

    points: list[Tensor]  # B x [N_i, 5] LiDAR frame
    images: Tensor  # [B, V, 3, H, W] normalised
    K: Tensor  # [B, V, 3, 3] intrinsics of the network images
    T_cam_lidar: Tensor  # [B, V, 4, 4]
    view_mask: Tensor  # [B, V] bool
    image_size: tuple[int, int]  # (W, H) of the network images
    gt: list[dict[str, Tensor]] = field(default_factory=list)
    """Per sample, LiDAR frame: centers [M, 3], sizes [M, 3], yaws [M], velocities [M, 2],
    labels [M], code_mask [M, 10] (0 for unknown velocities)."""
    camera_gt: list[dict[str, Tensor]] = field(default_factory=list)
    """Per sample, camera frames: view [Mc], centers_2d [Mc, 2] (network pixels), depths,
    sizes [Mc, 3], yaws [Mc], velocities [Mc, 2] (vx, vz), labels, bboxes_2d [Mc, 4],
    code_mask [Mc, 10]."""
    tokens: list[str] = field(default_factory=list)
    T_global_lidar: list[np.ndarray] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Batch:
        def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device) for k, v in d.items()}

        return Batch([p.to(device) for p in self.points], self.images.to(device),
                     self.K.to(device), self.T_cam_lidar.to(device), self.view_mask.to(device),
                     self.image_size, [move(g) for g in self.gt],
                     [move(g) for g in self.camera_gt], self.tokens, self.T_global_lidar)


@dataclass
class PreparedSample:
    """One sample's tensors (see :class:`Batch`)."""

    token: str
    points: Tensor
    images: Tensor
    K: Tensor
    T_cam_lidar: Tensor
    view_mask: Tensor
    gt: dict[str, Tensor]
    camera_gt: dict[str, Tensor]
    T_global_lidar: np.ndarray


def _in_range(xy: np.ndarray, point_range: tuple[float, ...]) -> np.ndarray:
    return ((xy[:, 0] >= point_range[0]) & (xy[:, 0] < point_range[3])
            & (xy[:, 1] >= point_range[1]) & (xy[:, 1] < point_range[4]))


def prepare_sample(sample: NuScenesSample, config: SparseFusionConfig) -> PreparedSample:
    """Tensors of one sample (CPU, float32)."""
    vc = config.voxel
    width, height = config.camera.image_size
    if sample.points is not None:
        pts = np.asarray(sample.points, np.float32)[:, :5].copy()
        pts = pts[_in_range(pts, vc.point_range) & (pts[:, 2] >= vc.point_range[2])
                  & (pts[:, 2] < vc.point_range[5])]
        pts[:, 3] /= 255.0
    else:
        pts = np.zeros((0, 5), np.float32)
    v = len(CAMERA_CHANNELS)
    images = torch.zeros(v, 3, height, width)
    K = torch.eye(3).repeat(v, 1, 1)
    T = torch.eye(4).repeat(v, 1, 1)
    mask = torch.zeros(v, dtype=torch.bool)
    gt = sample.gt
    keep = _in_range(gt.centers, vc.point_range)
    if gt.num_lidar_pts is not None:
        counted = gt.num_lidar_pts + (gt.num_radar_pts if gt.num_radar_pts is not None else 0)
        keep &= (counted != 0)  # -1 (unknown, info files) is kept
    kept = np.nonzero(keep)[0]
    lookup = {int(j): i for i, j in enumerate(kept)}
    cam = {k: [] for k in ("view", "centers_2d", "depths", "sizes", "yaws", "velocities",
                           "labels", "bboxes_2d")}
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    for view, channel in enumerate(CAMERA_CHANNELS):
        data = sample.cameras.get(channel)
        if data is None:
            continue
        w0, h0 = data.image_size
        sx, sy = width / w0, height / h0
        scale = np.diag([sx, sy, 1.0])
        K[view] = torch.from_numpy(scale @ data.K).float()
        T[view] = torch.from_numpy(np.asarray(data.T_cam_lidar)).float()
        mask[view] = True
        if data.image is not None:
            img = torch.from_numpy(np.ascontiguousarray(data.image)).permute(2, 0, 1)[None]
            img = F.interpolate(img, size=(height, width), mode="bilinear", antialias=True,
                                align_corners=False)[0]
            images[view] = (img - mean) / std
        inst = data.instances
        if inst is None:
            continue
        for j in range(len(inst)):
            if int(inst.box_index[j]) not in lookup:
                continue
            cam["view"].append(view)
            cam["centers_2d"].append(inst.centers_2d[j] * [sx, sy])
            cam["depths"].append(inst.centers[j, 2])
            cam["sizes"].append(inst.sizes[j])
            cam["yaws"].append(inst.yaws[j])
            cam["velocities"].append(inst.velocities[j])
            cam["labels"].append(inst.labels[j])
            cam["bboxes_2d"].append(inst.bboxes_2d[j] * [sx, sy, sx, sy])
    widths = {"centers_2d": 2, "sizes": 3, "velocities": 2, "bboxes_2d": 4}
    camera_gt = {}
    for key, values in cam.items():
        dtype = torch.long if key in ("view", "labels") else torch.float32
        shape = (len(values), widths[key]) if key in widths else (len(values),)
        camera_gt[key] = torch.as_tensor(np.asarray(values, np.float64).reshape(shape),
                                         dtype=dtype)
    camera_gt["code_mask"] = _code_mask(camera_gt["velocities"])
    camera_gt["velocities"] = torch.nan_to_num(camera_gt["velocities"], nan=0.0)
    velocities = torch.from_numpy(gt.velocities[kept]).float()
    lidar_gt = {
        "centers": torch.from_numpy(gt.centers[kept]).float(),
        "sizes": torch.from_numpy(gt.sizes[kept]).float(),
        "yaws": torch.from_numpy(gt.yaws[kept]).float(),
        "velocities": torch.nan_to_num(velocities, nan=0.0),
        "labels": torch.from_numpy(gt.labels[kept]).long(),
        "code_mask": _code_mask(velocities),
    }
    return PreparedSample(sample.token, torch.from_numpy(pts), images, K, T, mask, lidar_gt,
                          camera_gt, sample.T_global_lidar)


def _code_mask(velocities: Tensor) -> Tensor:
    mask = torch.ones(velocities.shape[0], 10)
    mask[:, 8:10] = (~torch.isnan(velocities)).float()
    return mask


def collate(samples: list[PreparedSample], config: SparseFusionConfig) -> Batch:
    """Stack prepared samples into a :class:`Batch`."""
    return Batch(
        points=[s.points for s in samples],
        images=torch.stack([s.images for s in samples]),
        K=torch.stack([s.K for s in samples]),
        T_cam_lidar=torch.stack([s.T_cam_lidar for s in samples]),
        view_mask=torch.stack([s.view_mask for s in samples]),
        image_size=tuple(config.camera.image_size),
        gt=[s.gt for s in samples],
        camera_gt=[s.camera_gt for s in samples],
        tokens=[s.token for s in samples],
        T_global_lidar=[s.T_global_lidar for s in samples],
    )
