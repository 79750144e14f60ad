"""Prediction over whole recordings, the 'stand still under the head' baseline, evaluation.

Prediction is online: the pose of frame ``t`` uses frames up to ``t`` only (one window per
frame, the first frame repeated before the recording starts). Joint positions come from
FK of the default skeleton scaled to the user's body scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geometry.device import module_device
from pose.body import BodyPoseEstimator
from pose.body.egoposer.config import ModelConfig
from pose.body.egoposer.data import EvalSequence, window_indices
from pose.body.egoposer.features import (
    decode_outputs,
    heading_rotation,
    restore_global,
    window_features,
)
from pose.body.egoposer.metrics import frame_errors, summarize
from pose.body.egoposer.skeleton import (
    HEAD,
    forward_kinematics,
    scaled_default_skeleton,
    standing_local_rots,
)


@torch.inference_mode()
def predict_sequence(model: nn.Module, cfg: ModelConfig, trk_rot: Tensor, trk_pos: Tensor,
                     visible: Tensor, scale: float, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """Full-body pose of every frame of a recording.

    Args:
        model: an :class:`~pose.body.egoposer.model.EgoPoserNet` or ``FrameMLP`` in eval mode.
        cfg: its configuration.
        trk_rot: ``[T, 3, 3, 3]`` head / left wrist / right wrist rotations (world).
        trk_pos: ``[T, 3, 3]`` their positions (world, metres).
        visible: ``[T, 2]`` bool hand visibility.
        scale: body scale.
        chunk: windows per forward pass.

    Returns:
        ``(local_rots [T, 22, 3, 3], root_pos [T, 3])`` in the world, on the CPU. Each
        chunk's windows go to the model's device (features, network and the world pose run
        there); the inputs may be on the CPU.
    """
    device = module_device(model)
    n = trk_pos.shape[0]
    rots_out, root_out = [], []
    zero = torch.zeros(1, dtype=torch.long)
    for t0 in range(0, n, chunk):
        t = torch.arange(t0, min(n, t0 + chunk))
        idx = window_indices(t, zero.expand_as(t), cfg.frame_offsets())
        s = torch.full((len(t),), float(scale), device=device)
        feats, R_wc, origin = window_features(trk_rot[idx].float().to(device),
                                              trk_pos[idx].float().to(device),
                                              visible[idx].to(device), s, cfg.fps)
        rots_c, root_c = decode_outputs(model(feats)[:, -1])
        rots, root = restore_global(rots_c, root_c, R_wc, origin, s)
        rots_out.append(rots.cpu())
        root_out.append(root.cpu())
    return torch.cat(rots_out), torch.cat(root_out)


class _OnlineStep(nn.Module):
    """features -> network -> world pose for one batch of windows (traceable as a whole)."""

    def __init__(self, model: nn.Module, fps: float) -> None:
        super().__init__()
        self.model = model
        self.fps = fps

    def forward(self, rot: Tensor, pos: Tensor, vis: Tensor, scale: Tensor) -> tuple[
            Tensor, Tensor]:
        feats, R_wc, origin = window_features(rot, pos, vis, scale, self.fps)
        rots_c, root_c = decode_outputs(self.model(feats)[:, -1])
        return restore_global(rots_c, root_c, R_wc, origin, scale)


class StreamingPredictor:
    """Online prediction, one frame at a time (batch 1), as a headset runtime would call it.

    Keeps the last frames in a ring buffer; each :meth:`push` of the newest tracker poses
    returns the body pose of that frame. With ``trace=True`` the whole step (features,
    network, restoring the global pose) is traced and frozen with TorchScript: the same
    numbers with far less per-operation overhead.
    """

    def __init__(self, model: nn.Module, cfg: ModelConfig, scale: float = 1.0,
                 trace: bool = False) -> None:
        import warnings

        self.cfg = cfg
        offsets = cfg.frame_offsets()
        self.size = -offsets[0] + 2
        offs = torch.tensor(offsets)
        self.pairs = torch.stack((offs - 1, offs), -1)  # [K, 2]
        self.rot = torch.zeros(self.size, 3, 3, 3)
        self.pos = torch.zeros(self.size, 3, 3)
        self.vis = torch.zeros(self.size, 2, dtype=torch.bool)
        self.count = 0
        self.scale = torch.tensor([float(scale)])
        model.eval()
        step: nn.Module = _OnlineStep(model, cfg.fps).eval()
        if trace:
            k = len(offsets)
            example = (torch.eye(3).expand(1, k, 2, 3, 3, 3).contiguous(),
                       torch.zeros(1, k, 2, 3, 3), torch.ones(1, k, 2, 2, dtype=torch.bool),
                       self.scale)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                step = torch.jit.freeze(torch.jit.trace(step, example))
        self.step = step

    @torch.inference_mode()
    def push(self, trk_rot: Tensor, trk_pos: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
        """Add the newest frame and predict its pose.

        Args:
            trk_rot: ``[3, 3, 3]`` head / left wrist / right wrist rotations (world).
            trk_pos: ``[3, 3]`` positions (world).
            visible: ``[2]`` bool hand visibility.

        Returns:
            ``(local_rots [22, 3, 3], root_pos [3])`` in the world.
        """
        slot = self.count % self.size
        self.rot[slot] = trk_rot
        self.pos[slot] = trk_pos
        self.vis[slot] = visible
        idx = (self.pairs + self.count).clamp(min=0) % self.size
        self.count += 1
        rots, root = self.step(self.rot[idx][None], self.pos[idx][None], self.vis[idx][None],
                               self.scale)
        return rots[0], root[0]


# Pelvis orientation facing C's +x with model y up: model x (left) -> +y, y -> +z, z -> +x.
_R_C_MODEL = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def stand_still_baseline(trk_rot: Tensor, trk_pos: Tensor, visible: Tensor,
                         scale: float) -> tuple[Tensor, Tensor]:
    """A relaxed standing body hanging from the tracked head, facing the head's heading.

    Same signature as :func:`predict_sequence` without the model; ignores the hands.
    """
    n = trk_pos.shape[0]
    local = standing_local_rots(torch.float32).expand(n, -1, -1, -1).clone()
    local[:, 0] = heading_rotation(trk_rot[:, 0].float()) @ _R_C_MODEL
    rest = scaled_default_skeleton(scale)
    _, joints = forward_kinematics(local, torch.zeros(n, 3), rest)
    root = trk_pos[:, 0].float() - joints[:, HEAD]
    return local, root


def model_predictor(model: nn.Module, cfg: ModelConfig) -> BodyPoseEstimator:
    """Wrap a network as a :class:`~pose.body.BodyPoseEstimator`."""
    model.eval()

    def predict(trk_rot: Tensor, trk_pos: Tensor, visible: Tensor,
                scale: float) -> tuple[Tensor, Tensor]:
        return predict_sequence(model, cfg, trk_rot, trk_pos, visible, scale)

    return predict


def evaluate(predictor: BodyPoseEstimator, seqs: list[EvalSequence]) -> dict[str, dict[str, float]]:
    """Metrics of a predictor on held-out sequences (see :mod:`pose.body.egoposer.metrics`)."""
    errors, visible = [], []
    for seq in seqs:
        rots, root = predictor(seq.trk_rot, seq.trk_pos, seq.visible, seq.scale)
        _, joints = forward_kinematics(rots, root, scaled_default_skeleton(seq.scale))
        errors.append(frame_errors(rots, joints, seq.gt_rots, seq.gt_joints, seq.fps))
        visible.append(seq.visible)
    return summarize(errors, visible)
