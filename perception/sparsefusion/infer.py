"""Inference: the ``sparsefusion`` detector of ``perception detect``.

Implements :class:`perception.detectors.Detector`: a sample in, boxes with scores in the
sample's LiDAR frame out. Uses as many LiDAR sweeps as the model was trained with (the
newest ones, told apart by their time lag), whatever the data loader gives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from perception.boxes import LidarBoxes
from perception.data.sample import NuScenesSample
from perception.results import ResultsMeta


def limit_sweeps(points: np.ndarray, sweeps: int) -> np.ndarray:
    """Keep the points of the ``sweeps`` newest sweeps (smallest time lags); ``[N, 5]``."""
    if points.shape[0] == 0:
        return points
    lags = np.unique(points[:, 4])
    if lags.size <= sweeps:
        return points
    return points[points[:, 4] <= lags[sweeps - 1]]


@dataclass
class SparseFusionDetector:
    """Runs a trained SparseFusion checkpoint on samples."""

    checkpoint: Path
    device: str = "cpu"
    meta: ResultsMeta = field(init=False)
    needs_points: bool = field(init=False)
    needs_images: bool = field(init=False)

    def __post_init__(self) -> None:
        from perception.sparsefusion.checkpoint import load_model

        self.model = load_model(self.checkpoint, self.device)
        config = self.model.config
        self.config = config
        self.needs_points = config.use_lidar or config.modality == "fusion"
        self.needs_images = config.use_camera
        self.meta = ResultsMeta(use_lidar=config.use_lidar, use_camera=config.use_camera)

    @torch.no_grad()
    def __call__(self, sample: NuScenesSample) -> LidarBoxes:
        from perception.sparsefusion.data import collate, prepare_sample

        if sample.points is not None:
            sample = replace(sample, points=limit_sweeps(np.asarray(sample.points),
                                                         self.config.voxel.sweeps))
        batch = collate([prepare_sample(sample, self.config)], self.config).to(self.device)
        return self.model.predict(self.model(batch))[0]


def load_detector(checkpoint: str | os.PathLike, device: str = "cpu") -> SparseFusionDetector:
    return SparseFusionDetector(Path(checkpoint), device)
