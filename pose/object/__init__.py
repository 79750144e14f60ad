"""Object pose from RGB-D: the :class:`ObjectPoseEstimator` seam (ShAPO and later methods).

An object-pose estimator takes one RGB-D frame with its intrinsics and returns the objects
it finds, each with its class, pose, size and (where the method reconstructs it) shape.

Object frame: the object's canonical frame of its class (centred on the object's bounding
box, axes of the class's canonical orientation), so that ``T_cam_obj`` maps object points
to camera points (OpenCV axes: x right, y down, z forward) and ``scale`` gives the box's
extent along the object's axes, in metres.

ShAPO lives in :mod:`pose.object.shapo`: the NOCS metrics, generated tabletop RGB-D scenes,
the NOCS REAL275/CAMERA reader, the shape/appearance priors and the test-time refinement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["ObjectPose", "ObjectPoseEstimator"]


@dataclass
class ObjectPose:
    """One detected object."""

    class_name: str
    T_cam_obj: Tensor  # [4, 4] object-to-camera, rigid
    scale: Tensor  # [3] bounding-box size along the object's x, y, z (metres)
    shape: Tensor | None
    """Method-specific shape: a latent code, or points ``[N, 3]`` in the object frame
    (unit-scaled); None when the method gives none."""
    score: float
    """Detection confidence in [0, 1]."""


class ObjectPoseEstimator(Protocol):
    """``estimate(rgb, depth, K) -> list[ObjectPose]``."""

    def estimate(self, rgb: Tensor, depth: Tensor, K: Tensor) -> list[ObjectPose]:
        """Objects in one RGB-D frame.

        Args:
            rgb: ``[H, W, 3]`` float in [0, 1].
            depth: ``[H, W]`` camera z-depth in metres (0 where unknown).
            K: ``[3, 3]`` intrinsics in pixels.

        Returns:
            The detected objects, highest score first.
        """
        ...
