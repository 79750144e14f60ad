"""Detectors behind ``perception detect``: the oracle and the noisy oracle, which prove
the chain from the data layer to the official metrics end to end.

A detector maps a :class:`~perception.data.sample.NuScenesSample` to
:class:`~perception.boxes.LidarBoxes` with scores, in the sample's LiDAR frame;
:func:`run_detector` turns those into a results file. Learned detectors (SparseFusion)
implement the same :class:`Detector` protocol and are added to ``DETECTORS``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, get_args

import numpy as np

from perception.boxes import LidarBoxes
from perception.constants import (
    ATTRIBUTES,
    CLASS_ATTRIBUTES,
    DETECTION_CLASSES,
    DetectorName,
    NoiseConfig,
)
from perception.data.sample import NuScenesSample
from perception.results import ResultsMeta


class Detector(Protocol):
    """What ``perception detect`` runs."""

    meta: ResultsMeta  # which inputs the method uses (the results file's "meta")
    needs_points: bool
    needs_images: bool

    def __call__(self, sample: NuScenesSample) -> LidarBoxes:
        """Detections in the sample's LiDAR frame, with ``scores``."""
        ...


def _visible_ground_truth(sample: NuScenesSample) -> LidarBoxes:
    """Ground truth that the evaluation keeps: boxes with at least one LiDAR or radar
    point (the devkit drops the others from the ground truth, so predicting them would
    only add false positives). Unknown velocities become 0."""
    gt = sample.gt
    if gt.num_lidar_pts is not None:
        points = gt.num_lidar_pts + (gt.num_radar_pts if gt.num_radar_pts is not None else 0)
        gt = gt.select(points != 0)
    velocities = np.nan_to_num(gt.velocities, nan=0.0)
    return LidarBoxes(gt.centers, gt.sizes, gt.yaws, velocities, gt.labels, gt.attributes,
                      scores=np.ones(len(gt)), tokens=list(gt.tokens))


@dataclass
class OracleDetector:
    """Returns the ground truth (boxes with points) with score 1: mAP and NDS ~ 1."""

    meta: ResultsMeta = field(default_factory=lambda: ResultsMeta(use_lidar=True,
                                                                  use_camera=True))
    needs_points: bool = False
    needs_images: bool = False

    def __call__(self, sample: NuScenesSample) -> LidarBoxes:
        return _visible_ground_truth(sample)


@dataclass
class NoisyOracleDetector:
    """Ground truth with centre/size/yaw/velocity noise, dropped boxes, false positives
    and scores that rank the better boxes higher: measurably below the oracle."""

    noise: NoiseConfig = field(default_factory=NoiseConfig)
    seed: int = 0
    meta: ResultsMeta = field(default_factory=lambda: ResultsMeta(use_lidar=True,
                                                                  use_camera=True))
    needs_points: bool = False
    needs_images: bool = False

    def __call__(self, sample: NuScenesSample) -> LidarBoxes:
        # One stream per sample: the output does not depend on the order samples come in.
        rng = np.random.default_rng([self.seed, zlib.crc32(sample.token.encode())])
        gt = _visible_ground_truth(sample)
        noise = self.noise
        keep = rng.random(len(gt)) >= noise.drop_rate
        gt = gt.select(keep)
        n = len(gt)
        center_error = rng.normal(0.0, noise.center_std, (n, 3)) * np.array([1.0, 1.0, 1 / 3])
        size_error = rng.normal(0.0, noise.size_std, (n, 3))
        yaw_error = rng.normal(0.0, noise.yaw_std, n)
        attributes = gt.attributes.copy()
        for i in np.nonzero(rng.random(n) < noise.attribute_flip_rate)[0]:
            choices = [a for a in CLASS_ATTRIBUTES[DETECTION_CLASSES[gt.labels[i]]]
                       if a != ATTRIBUTES[attributes[i]]]
            if choices:
                attributes[i] = ATTRIBUTES.index(choices[int(rng.integers(len(choices)))])
        # Better boxes score higher, with enough randomness that the ranking is imperfect.
        quality = np.exp(-np.linalg.norm(center_error[:, :2], axis=1) / 0.5 - np.abs(yaw_error))
        scores = np.clip(0.4 + 0.5 * quality + rng.normal(0.0, 0.1, n), 0.05, 1.0)
        detections = LidarBoxes(
            centers=gt.centers + center_error,
            sizes=gt.sizes * np.exp(size_error),
            yaws=gt.yaws + yaw_error,
            velocities=gt.velocities + rng.normal(0.0, noise.velocity_std, (n, 2)),
            labels=gt.labels,
            attributes=attributes,
            scores=scores,
        )
        return _concat([detections, self._false_positives(sample, rng)])

    def _false_positives(self, sample: NuScenesSample, rng: np.random.Generator) -> LidarBoxes:
        count = int(rng.poisson(self.noise.false_positives))
        gt = sample.gt
        if count == 0 or len(gt) == 0:
            return LidarBoxes.empty(with_scores=True)
        anchors = rng.integers(0, len(gt), count)
        labels = rng.integers(0, len(DETECTION_CLASSES), count)
        attributes = np.array([
            ATTRIBUTES.index(CLASS_ATTRIBUTES[DETECTION_CLASSES[label]][0]) for label in labels
        ])
        angle = rng.uniform(-math.pi, math.pi, count)
        offset = rng.uniform(5.0, 15.0, count)[:, None] * np.stack(
            [np.cos(angle), np.sin(angle), np.zeros(count)], axis=1)
        return LidarBoxes(
            centers=gt.centers[anchors] + offset,
            sizes=gt.sizes[anchors],
            yaws=rng.uniform(-math.pi, math.pi, count),
            velocities=np.zeros((count, 2)),
            labels=labels,
            attributes=attributes,
            scores=rng.uniform(0.05, 0.6, count),
        )


def _concat(parts: list[LidarBoxes]) -> LidarBoxes:
    return LidarBoxes(
        centers=np.concatenate([p.centers for p in parts]),
        sizes=np.concatenate([p.sizes for p in parts]),
        yaws=np.concatenate([p.yaws for p in parts]),
        velocities=np.concatenate([p.velocities for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        attributes=np.concatenate([p.attributes for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
    )


def _sparsefusion(checkpoint, device: str = "cpu") -> Detector:
    """A trained SparseFusion checkpoint folder (torch and the model load only here)."""
    from perception.sparsefusion.infer import SparseFusionDetector

    return SparseFusionDetector(checkpoint, device)


DETECTORS: dict[str, Callable[..., Detector]] = {
    "oracle": OracleDetector,
    "noisy-oracle": NoisyOracleDetector,
    "sparsefusion": _sparsefusion,
}
assert set(DETECTORS) == set(get_args(DetectorName))


def run_detector(
    detector: Detector,
    samples: Iterable[NuScenesSample],
    max_boxes: int = 500,
    on_sample: Callable[[], None] | None = None,
) -> dict[str, list[dict]]:
    """Run ``detector`` on every sample; return the ``results`` block of a results file.

    Keeps the ``max_boxes`` highest-scoring boxes of each sample (the devkit's limit).
    """
    results: dict[str, list[dict]] = {}
    for sample in samples:
        boxes = detector(sample)
        if boxes.scores is None:
            raise ValueError("a detector must return boxes with scores")
        if len(boxes) > max_boxes:
            boxes = boxes.select(np.argsort(-boxes.scores, kind="stable")[:max_boxes])
        results[sample.token] = boxes.to_results(sample.token, sample.T_global_lidar)
        if on_sample is not None:
            on_sample()
    return results
