"""The EgoPoser network (SlowFast transformer) and the per-frame MLP baseline.

SlowFast (as in the paper): one window covers the last ``tokens * slow_stride`` frames.
The *slow* stream samples it sparsely (every ``slow_stride``-th frame, ending at the
current frame), the *fast* stream takes the last ``tokens`` frames densely. Each stream
has its own linear embedding (``d_model / 2`` channels); token ``k`` concatenates slow
frame ``k`` and fast frame ``k`` along channels, so the transformer sees a long horizon at
the cost of a short one. A learned positional embedding is added, a transformer encoder
mixes the tokens, and two MLP heads read the last two tokens (current and previous frame):
one for the pelvis (6D orientation in the canonical frame and its position), one for the
21 local joint rotations (6D). Predicting the previous frame too gives the velocity loss
something to compare; at inference only the current frame is used.

Deviation from the paper: the body shape is an input (the body scale, which a headset
knows from the user's height) rather than SMPL betas regressed by an extra head, because
the default skeleton has no betas; positions are computed by FK of the scaled default
skeleton.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pose.body.egoposer.config import ModelConfig
from pose.body.egoposer.features import NUM_FEATURES, NUM_OUTPUTS
from pose.body.egoposer.skeleton import NUM_JOINTS


class EgoPoserNet(nn.Module):
    """SlowFast transformer: window features -> pose of the last two frames."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.d_model % 2 or cfg.d_model % cfg.heads:
            raise ValueError("d_model must be even and divisible by heads")
        self.cfg = cfg
        offsets = cfg.frame_offsets()
        pos = {o: i for i, o in enumerate(offsets)}
        slow = [pos[-cfg.slow_stride * k] for k in reversed(range(cfg.tokens))]
        fast = [pos[-k] for k in reversed(range(cfg.tokens))]
        self.register_buffer("slow_index", torch.tensor(slow), persistent=False)
        self.register_buffer("fast_index", torch.tensor(fast), persistent=False)
        half = cfg.d_model // 2
        self.slow_embed = nn.Linear(NUM_FEATURES, half)
        self.fast_embed = nn.Linear(NUM_FEATURES, half)
        self.pos_embed = nn.Parameter(torch.randn(cfg.tokens, cfg.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.ff_dim, dropout=0.0,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        # Causal attention: token k sees only frames up to its own, so the previous-frame
        # output (token K-2) is a genuine online prediction made without the current frame,
        # and the velocity loss between the last two outputs penalises the frame-to-frame
        # jumps an online system shows (e.g. when a hand enters the field of view).
        self.register_buffer("causal_mask",
                             nn.Transformer.generate_square_subsequent_mask(cfg.tokens),
                             persistent=False)
        self.root_head = nn.Sequential(nn.Linear(cfg.d_model, cfg.head_dim), nn.GELU(),
                                       nn.Linear(cfg.head_dim, 6 + 3))
        self.joint_head = nn.Sequential(nn.Linear(cfg.d_model, cfg.head_dim), nn.GELU(),
                                        nn.Linear(cfg.head_dim, (NUM_JOINTS - 1) * 6))
        self._init_identity()

    def _init_identity(self) -> None:
        # Start every rotation at the identity (6D rows (1,0,0), (0,1,0)) so that early
        # training refines a plausible pose instead of unscrambling random ones.
        ident = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        for head, n in ((self.root_head, 1), (self.joint_head, NUM_JOINTS - 1)):
            last = head[-1]
            nn.init.normal_(last.weight, std=1e-3)
            with torch.no_grad():
                last.bias.zero_()
                last.bias[: 6 * n] = ident.repeat(n)

    def forward(self, features: Tensor) -> Tensor:
        """Pose of the last two frames of each window.

        Args:
            features: ``[B, K, 57]`` features of the frames ``cfg.frame_offsets()``.

        Returns:
            ``[B, 2, 135]`` (previous frame, current frame): pelvis 6D in C, 21 local 6D
            rotations, pelvis position in C / scale.
        """
        slow = features[:, self.slow_index]
        fast = features[:, self.fast_index]
        x = torch.cat((self.slow_embed(slow), self.fast_embed(fast)), -1) + self.pos_embed
        x = self.encoder(x, mask=self.causal_mask, is_causal=True)[:, -2:]
        root = self.root_head(x)
        return torch.cat((root[..., :6], self.joint_head(x), root[..., 6:]), -1)


class FrameMLP(nn.Module):
    """Per-frame MLP baseline: the current frame's features only, no temporal window."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = NUM_FEATURES
        for _ in range(cfg.mlp_layers):
            layers += [nn.Linear(width, cfg.mlp_hidden), nn.GELU()]
            width = cfg.mlp_hidden
        layers.append(nn.Linear(width, NUM_OUTPUTS))
        self.net = nn.Sequential(*layers)
        last = self.net[-1]
        nn.init.normal_(last.weight, std=1e-3)
        with torch.no_grad():
            last.bias.zero_()
            last.bias[: 6 * NUM_JOINTS] = torch.tensor([1.0, 0, 0, 0, 1.0, 0]).repeat(NUM_JOINTS)

    def forward(self, features: Tensor) -> Tensor:
        """``[B, K, 57]`` -> ``[B, 2, 135]`` from the last two frames, each on its own."""
        return self.net(features[:, -2:])


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network described by ``cfg``."""
    if cfg.kind == "egoposer":
        return EgoPoserNet(cfg)
    if cfg.kind == "mlp":
        return FrameMLP(cfg)
    raise ValueError(f"unknown model kind {cfg.kind}")
