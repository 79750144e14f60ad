"""Camera pose from images: the :class:`CameraPoseEstimator` seam.

A camera-pose estimator takes a few photos of one scene (optionally object masks and
initial cameras) and returns every view's camera with a confidence. Estimators from scratch
(ADen, SpaRP) ignore or use ``initial`` as a hint; refiners (SparseAGS,
:class:`~pose.camera.refine.RenderCompareRefiner`) need it. Any estimator can seed
``recon fit`` through :func:`pose.camera.initialiser.register_camera_estimator`.

Cameras are :class:`geometry.cameras.Cameras` (OpenCV axes, ``T_world_cam``, intrinsics in
pixels of the given images), in the estimator's world frame and scale: compare them with
ground truth through :mod:`geometry.pose_metrics` (which aligns by a similarity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import Tensor

    from geometry.cameras import Cameras

__all__ = ["CameraPoseEstimator", "CameraPoseResult"]


@dataclass
class CameraPoseResult:
    """Cameras of ``V`` views and how much the estimator trusts each."""

    cameras: Cameras  # [V] in the input order, sized like the input images
    confidence: Tensor  # [V] in [0, 1], higher is more trusted (estimator-specific scale)


class CameraPoseEstimator(Protocol):
    """``estimate(images, masks=None, initial=None) -> CameraPoseResult``."""

    def estimate(self, images: list[Tensor], masks: list[Tensor] | None = None,
                 initial: Cameras | None = None) -> CameraPoseResult:
        """Cameras of the views.

        Args:
            images: ``V`` images ``[H_v, W_v, 3]`` float in [0, 1].
            masks: optional ``V`` object masks ``[H_v, W_v]`` (bool or [0, 1]).
            initial: optional ``[V]`` cameras to start from (a refiner needs them).

        Returns:
            :class:`CameraPoseResult` with ``[V]`` cameras and confidences.
        """
        ...
