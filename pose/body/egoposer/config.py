"""Configuration dataclasses of EgoPoser (no torch import, so the CLI starts fast).

Each becomes a group of options in the ``pose egoposer`` CLI (tyro) and is stored in the
checkpoint's ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

VisibilityMode = Literal["fov", "all", "half", "none"]
"""How hand visibility is simulated: ``fov`` frustum and random dropouts; ``all`` always
visible (100%); ``half`` alternating visible/invisible stretches of 0.5-2 s, regardless of
the frustum (about 50%); ``none`` never visible (0%)."""


@dataclass
class FovConfig:
    """The headset's hand-tracking field of view and its tracking dropouts."""

    h_fov_deg: float = 120.0
    """Horizontal field of view (degrees)."""
    v_fov_deg: float = 90.0
    """Vertical field of view (degrees)."""
    pitch_down_deg: float = 15.0
    """The cameras look this far below the head's forward axis (degrees)."""
    min_depth_m: float = 0.10
    """Hands closer than this along the viewing axis are not tracked (metres)."""
    max_range_m: float = 1.2
    """Hands farther than this from the head are not tracked (metres)."""
    dropout_per_s: float = 0.1
    """Mean number of random tracking dropouts per second and hand."""
    dropout_s: tuple[float, float] = (0.2, 1.0)
    """Range of dropout durations (seconds, uniform)."""


@dataclass
class ModelConfig:
    """Architecture of the EgoPoser network (or of the per-frame MLP baseline)."""

    kind: Literal["egoposer", "mlp"] = "egoposer"
    """egoposer: the SlowFast transformer; mlp: the per-frame MLP baseline."""
    fps: float = 30.0
    """Frame rate the model works at (inputs are resampled to it)."""
    tokens: int = 20
    """Tokens per window (frames in the fast stream and in the slow stream)."""
    slow_stride: int = 4
    """Frame stride of the slow stream: the window spans tokens * slow-stride frames."""
    d_model: int = 64
    """Transformer width (half from each stream)."""
    layers: int = 2
    """Transformer encoder layers."""
    heads: int = 4
    """Attention heads."""
    ff_dim: int = 128
    """Feed-forward width of the transformer."""
    head_dim: int = 128
    """Hidden width of the output heads."""
    mlp_hidden: int = 256
    """Hidden width of the per-frame MLP baseline."""
    mlp_layers: int = 3
    """Hidden layers of the per-frame MLP baseline."""

    def frame_offsets(self) -> tuple[int, ...]:
        """Frames the network reads, relative to the current frame (ascending, ending at 0):
        the union of the slow stream (every ``slow_stride``-th frame) and the fast stream
        (the last ``tokens`` frames); the per-frame MLP reads the last two frames."""
        if self.kind == "mlp":
            return (-1, 0)
        slow = {-self.slow_stride * k for k in range(self.tokens)}
        fast = {-k for k in range(self.tokens)}
        return tuple(sorted(slow | fast))


@dataclass
class LossWeights:
    """Weights of the loss terms."""

    w_rot: float = 1.0
    """Local joint rotations (6D, L1)."""
    w_root: float = 1.0
    """Pelvis orientation in the canonical frame (6D, L1)."""
    w_trans: float = 1.0
    """Pelvis position in the canonical frame / body scale (L1)."""
    w_fk: float = 5.0
    """Joint positions from forward kinematics (metres, L1)."""
    w_track: float = 5.0
    """Head and wrist positions (metres, L1): the hand alignment term."""
    w_vel: float = 2.0
    """Joint velocities between the last two frames (m/s, L1)."""


@dataclass
class VisibilityMix:
    """Probabilities of the hand-visibility regimes drawn per training window."""

    p_fov: float = 0.55
    """Frustum visibility with short random dropouts."""
    p_all: float = 0.15
    """Hands always visible."""
    p_half: float = 0.15
    """Random on/off stretches (about half visible), regardless of the frustum."""
    p_none: float = 0.15
    """Hands never visible."""


@dataclass
class TrainConfig:
    """Optimisation settings."""

    steps: int = 20000
    """Maximum optimiser steps."""
    max_minutes: float | None = None
    """Stop after this many minutes of training (the learning-rate schedule follows
    whichever of steps and time runs out first)."""
    batch_size: int = 128
    """Windows per step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, linear warm-up, cosine decay)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_steps: int = 200
    """Linear learning-rate warm-up steps."""
    grad_clip: float = 1.0
    """Gradient norm clipping."""
    seed: int = 0
    """Seed of the synthetic training data and of the batches."""
    checkpoint_every_s: float = 120.0
    """Save a resumable checkpoint this often (seconds)."""
    loss: LossWeights = field(default_factory=LossWeights)
    visibility: VisibilityMix = field(default_factory=VisibilityMix)


@dataclass
class SynthConfig:
    """Parameters of the motion synthesiser."""

    seconds: float = 20.0
    """Length of each sequence (seconds)."""
    fps: float = 30.0
    """Frame rate."""
    scale_range: tuple[float, float] = (0.85, 1.15)
    """Range of body scales (uniform)."""
    proportion_jitter: float = 0.05
    """Relative jitter of segment groups (legs, spine, arms, widths)."""
    transition_s: float = 0.15
    """Standard deviation (seconds) of the Gaussian that joins activities."""
