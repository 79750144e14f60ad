"""Body pose from sparse trackers: the :class:`BodyPoseEstimator` seam.

A body-pose estimator turns head and wrist tracking into a full-body pose per frame.
Methods live in sub-folders (:mod:`pose.body.egoposer`); each provides a callable that
satisfies :class:`BodyPoseEstimator` (EgoPoser: :func:`pose.body.egoposer.infer.model_predictor`
for a trained network, :func:`pose.body.egoposer.infer.stand_still_baseline` without one).

Frames and units are EgoPoser's (AMASS world, z up, metres; SMPL-H joint tree of 22 joints).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import Tensor


class BodyPoseEstimator(Protocol):
    """``(trk_rot, trk_pos, visible, scale) -> (local_rots, root_pos)`` over a recording."""

    def __call__(self, trk_rot: Tensor, trk_pos: Tensor, visible: Tensor,
                 scale: float) -> tuple[Tensor, Tensor]:
        """Full-body pose of every frame of a recording.

        Args:
            trk_rot: ``[T, 3, 3, 3]`` head / left wrist / right wrist rotations (world).
            trk_pos: ``[T, 3, 3]`` their positions (world, metres).
            visible: ``[T, 2]`` bool hand visibility (left, right).
            scale: body scale (the user's height over the default skeleton's).

        Returns:
            ``(local_rots [T, 22, 3, 3], root_pos [T, 3])``: joint rotations relative to
            their parents (the root's in the world) and the root position (world, metres).
        """
        ...
