"""Training and evaluation data: motion sequences -> tracker streams, windows and targets.

All frames of all sequences are concatenated; a training window ending at frame ``t``
reads the frames ``t + offset`` (``ModelConfig.frame_offsets``) and the frame before each
(for velocities), clamped at the start of ``t``'s sequence (the first frame repeats, as an
online system would pad).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pose.body.egoposer.amass import MotionSequence
from pose.body.egoposer.config import FovConfig, VisibilityMix, VisibilityMode
from pose.body.egoposer.features import encode_targets, window_features
from pose.body.egoposer.tracking import (
    fov_visibility,
    simulate_visibility,
    tracker_trajectories,
)


@dataclass
class PreparedData:
    """Per-frame arrays of many sequences, concatenated (``N`` frames in all)."""

    fps: float
    trk_rot: Tensor  # [N, 3, 3, 3] head, left wrist, right wrist rotations (world)
    trk_pos: Tensor  # [N, 3, 3] their positions
    fov_visible: Tensor  # [N, 2] bool: hands inside the frustum
    local_rots: Tensor  # [N, 22, 3, 3] ground-truth local rotations
    root_pos: Tensor  # [N, 3] ground-truth pelvis positions
    joints: Tensor  # [N, 22, 3] ground-truth joints (the subject's own skeleton)
    scale: Tensor  # [N] body scale of the frame's subject
    seq_start: Tensor  # [N] long, index of the first frame of the frame's sequence

    @property
    def num_frames(self) -> int:
        return int(self.scale.shape[0])


def prepare_sequences(seqs: list[MotionSequence], fov: FovConfig) -> PreparedData:
    """Run FK on every sequence and stack the per-frame quantities (float32)."""
    if not seqs:
        raise ValueError("no sequences")
    fps = seqs[0].fps
    parts: dict[str, list[Tensor]] = {k: [] for k in (
        "trk_rot", "trk_pos", "fov_visible", "local_rots", "root_pos", "joints", "scale",
        "seq_start")}
    start = 0
    for seq in seqs:
        if abs(seq.fps - fps) > 1e-6:
            raise ValueError("all sequences must share one frame rate")
        g, j = seq.fk()
        trk_rot, trk_pos = tracker_trajectories(g, j)
        n = seq.num_frames
        parts["trk_rot"].append(trk_rot)
        parts["trk_pos"].append(trk_pos)
        parts["fov_visible"].append(fov_visibility(trk_rot[:, 0], trk_pos[:, 0], trk_pos[:, 1:],
                                                   fov))
        parts["local_rots"].append(seq.local_rots)
        parts["root_pos"].append(seq.root_pos)
        parts["joints"].append(j)
        parts["scale"].append(torch.full((n,), seq.scale))
        parts["seq_start"].append(torch.full((n,), start, dtype=torch.long))
        start += n
    cat = {k: torch.cat(v) for k, v in parts.items()}
    for k in ("trk_rot", "trk_pos", "local_rots", "root_pos", "joints", "scale"):
        cat[k] = cat[k].float()
    return PreparedData(fps=fps, **cat)


def _cell_masks(b: int, times: Tensor, cell: int, p_on: float,
                gen: torch.Generator) -> Tensor:
    """Random on/off masks made of ``cell``-frame stretches with a random phase.

    Args:
        times: ``[...]`` non-negative frame times within the window.

    Returns:
        ``[b, ..., 2]`` bool (one mask per hand).
    """
    n_cells = int(times.max()) // cell + 2
    on = torch.rand(b, n_cells, 2, generator=gen) < p_on
    shift = torch.randint(0, cell, (b,), generator=gen)
    ci = (times[None] + shift.reshape(b, *([1] * times.dim()))) // cell  # [b, ...]
    return on[torch.arange(b).reshape(b, *([1] * times.dim())), ci]


def training_visibility(fov_visible: Tensor, times: Tensor, mix: VisibilityMix,
                        gen: torch.Generator) -> Tensor:
    """Hand visibility of training windows under a random regime per window.

    Args:
        fov_visible: ``[B, K, 2, 2]`` frustum visibility of the window's frames.
        times: ``[K, 2]`` the frames' times in the window (non-negative frame numbers).

    Returns:
        ``[B, K, 2, 2]`` bool.
    """
    b = fov_visible.shape[0]
    probs = torch.tensor([mix.p_fov, mix.p_all, mix.p_half, mix.p_none], dtype=torch.float64)
    regime = torch.multinomial(probs / probs.sum(), b, replacement=True, generator=gen)
    dropout_keep = _cell_masks(b, times, 6, 0.95, gen)
    half = _cell_masks(b, times, 15, 0.5, gen)
    r = regime[:, None, None, None]
    return torch.where(r == 0, fov_visible & dropout_keep,
                       torch.where(r == 1, torch.ones_like(half),
                                   torch.where(r == 2, half, torch.zeros_like(half))))


def window_indices(t: Tensor, seq_start: Tensor, offsets: tuple[int, ...]) -> Tensor:
    """Frame indices of windows ending at ``t``, each frame paired with its predecessor.

    Args:
        t: ``[B]`` current frames; seq_start: ``[B]`` first frame of their sequences.
        offsets: frame offsets (ascending, ending at 0), e.g. ``ModelConfig.frame_offsets()``.

    Returns:
        ``[B, K, 2]`` (previous frame, frame), clamped at the sequence start.
    """
    offs = torch.tensor(offsets, device=t.device)
    cur = t[:, None] + offs
    idx = torch.stack((cur - 1, cur), -1)
    return torch.maximum(idx, seq_start[:, None, None])


def sample_batch(data: PreparedData, batch_size: int, offsets: tuple[int, ...],
                 mix: VisibilityMix, gen: torch.Generator) -> dict[str, Tensor]:
    """A random batch of training windows with inputs and canonical-frame targets.

    Returns:
        ``features [B, K, 57]``, ``rots_c [B, 2, 22, 3, 3]``, ``root_c [B, 2, 3]``,
        ``joints_c [B, 2, 22, 3]`` (metres, canonical frame), ``scale [B]``; the targets are
        for the previous and the current frame of each window.
    """
    t = torch.randint(0, data.num_frames, (batch_size,), generator=gen)
    idx = window_indices(t, data.seq_start[t], offsets)
    offs = torch.tensor(offsets)
    times = torch.stack((offs - 1, offs), -1) - (offsets[0] - 1)
    vis = training_visibility(data.fov_visible[idx], times, mix, gen)
    scale = data.scale[t]
    feats, R_wc, origin = window_features(data.trk_rot[idx], data.trk_pos[idx], vis, scale,
                                          data.fps)
    last2 = idx[:, -2:, 1]
    rots_c, root_c = encode_targets(data.local_rots[last2], data.root_pos[last2], R_wc, origin,
                                    scale)
    joints_c = (data.joints[last2] - origin[:, None, None]) @ R_wc[:, None]
    return {"features": feats, "rots_c": rots_c, "root_c": root_c, "joints_c": joints_c,
            "scale": scale}


@dataclass
class EvalSequence:
    """One held-out sequence with simulated headset observations."""

    name: str
    fps: float
    trk_rot: Tensor  # [T, 3, 3, 3]
    trk_pos: Tensor  # [T, 3, 3]
    visible: Tensor  # [T, 2] bool
    scale: float
    gt_rots: Tensor  # [T, 22, 3, 3]
    gt_joints: Tensor  # [T, 22, 3]


def make_eval_sequences(seqs: list[MotionSequence], mode: VisibilityMode, fov: FovConfig,
                        seed: int = 0) -> list[EvalSequence]:
    """Headset observations of held-out sequences under one visibility mode (reproducible)."""
    out = []
    for i, seq in enumerate(seqs):
        rng = np.random.default_rng([seed, i])
        g, j = seq.fk()
        trk_rot, trk_pos = tracker_trajectories(g, j)
        vis = simulate_visibility(rng, trk_rot[:, 0], trk_pos[:, 0], trk_pos[:, 1:], seq.fps,
                                  mode, fov)
        out.append(EvalSequence(name=seq.name, fps=seq.fps, trk_rot=trk_rot.float(),
                                trk_pos=trk_pos.float(), visible=vis, scale=seq.scale,
                                gt_rots=seq.local_rots.float(), gt_joints=j.float()))
    return out
