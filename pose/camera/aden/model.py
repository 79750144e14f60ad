"""The ADen network: image encoder, view fusion, generator and discriminator.

- **Encoder**: a small ResNet (GroupNorm, stride-2 stem, one stride-2 stage per width)
  from scratch, or initialised from a local weights file; its last feature map is pooled
  to 2x2 and projected to a ``d_model`` token per view.
- **Fusion**: a transformer encoder over the view tokens, with a learned embedding for the
  first view (the reference frame) and another for every other view.
- **Generator**: ``M`` learnable queries, each plus projected Gaussian noise, combined with
  the (view, first view) token pair through an MLP into one relative pose hypothesis
  (6D rotation + translation in the first camera's frame, scaled by the first camera's
  distance to the object).
- **Discriminator**: an MLP scoring a (view, first view, Fourier-encoded pose) triple.

Inference (:meth:`AdenNet.predict`): ``hypotheses`` poses per non-first view (the queries
repeated with fresh noise), the discriminator's argmax wins. Regression mode returns the
generator's single output; grid mode scores a fixed uniform rotation grid.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from geometry.so3 import random_rotation, rot6d_to_matrix
from pose.camera.aden.config import AdenConfig

__all__ = ["AdenNet", "BasicBlock", "ResNetEncoder", "rotation_grid"]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions, GroupNorm, projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _norm(cout)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout)))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """Images ``[N, 3, S, S]`` in [0, 1] -> tokens ``[N, d_model]``."""

    def __init__(self, widths: tuple[int, ...], blocks: int, d_model: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
                                  _norm(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.proj = nn.Linear(cin * 4, d_model)

    def forward(self, images: Tensor) -> Tensor:
        x = self.stages(self.stem(images * 2.0 - 1.0))
        return self.proj(self.pool(x).flatten(1))


def _mlp(din: int, hidden: int, dout: int, layers: int = 3) -> nn.Sequential:
    mods: list[nn.Module] = []
    for k in range(layers - 1):
        mods += [nn.Linear(din if k == 0 else hidden, hidden), nn.ReLU()]
    mods.append(nn.Linear(hidden if layers > 1 else din, dout))
    return nn.Sequential(*mods)


def rotation_grid(n: int, seed: int = 0, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` rotations spread uniformly over SO(3) (Haar samples from a fixed seed; the
    RelPose grid), ``[n, 3, 3]``."""
    gen = torch.Generator().manual_seed(seed)
    return random_rotation((n,), generator=gen, dtype=torch.float64).to(device, dtype)


class AdenNet(nn.Module):
    """ADen (or one of its baselines, :attr:`AdenConfig.mode`); see the module doc."""

    def __init__(self, config: AdenConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = ResNetEncoder(c.widths, c.blocks, c.d_model)
        self.first_embed = nn.Parameter(torch.randn(c.d_model) * 0.02)
        self.other_embed = nn.Parameter(torch.randn(c.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(c.d_model, c.heads, 2 * c.d_model, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.fusion_norm = nn.LayerNorm(c.d_model)
        # generator: first layer split into context (view pair) and query (+ noise) parts
        self.queries = nn.Parameter(torch.randn(c.queries, c.hidden) * 0.5)
        self.noise_proj = nn.Linear(c.noise_dim, c.hidden) if c.noise_dim > 0 else None
        self.gen_context = nn.Linear(2 * c.d_model, c.hidden)
        self.gen_head = _mlp(c.hidden, c.hidden, 9, layers=3)
        with torch.no_grad():  # start near the identity rotation and the first camera
            last = self.gen_head[-1]
            last.weight.mul_(0.1)
            last.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0, 0]))
        if c.mode != "regression":
            pose_dim = 12 * (1 + 2 * c.pose_frequencies)
            self.disc_context = nn.Linear(2 * c.d_model, c.hidden)
            self.disc_pose = nn.Linear(pose_dim, c.hidden)
            self.disc_head = _mlp(c.hidden, c.hidden, 1, layers=3)
        if c.backbone_weights:
            self.load_backbone(c.backbone_weights)

    def load_backbone(self, path: str) -> None:
        """Initialise the encoder from a local .safetensors file (keys ``encoder.*`` or
        the encoder's own); UserError when it does not fit."""
        from geometry.errors import UserError
        from geometry.io.checkpoints import load_safetensors

        state = load_safetensors(path, "an ADen encoder weights file")
        state = {k.removeprefix("encoder."): v for k, v in state.items()}
        own = self.encoder.state_dict()
        bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
        if bad or not state:
            raise UserError(f"{path} does not fit the ADen encoder ({len(bad)} of "
                            f"{len(state)} tensors unknown or of another shape); give weights "
                            "saved from an encoder with the same --model.widths.")
        self.encoder.load_state_dict(state, strict=False)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """The training losses of a batch (:func:`pose.camera.aden.losses.aden_loss`)."""
        from pose.camera.aden.losses import aden_loss

        return aden_loss(self, batch)

    # ------------------------------------------------------------------ features

    def encode(self, images: Tensor) -> Tensor:
        """Images ``[B, V, 3, S, S]`` -> fused view tokens ``[B, V, d_model]``."""
        B, V = images.shape[:2]
        tokens = self.encoder(images.flatten(0, 1)).view(B, V, -1)
        kind = torch.cat([self.first_embed[None], self.other_embed[None].expand(V - 1, -1)])
        return self.fusion_norm(self.fusion(tokens + kind[None]))

    @staticmethod
    def pair_features(fused: Tensor) -> Tensor:
        """``[B, V, d]`` -> ``[B, V - 1, 2 d]``: each non-first view's token with the first's."""
        first = fused[:, :1].expand(-1, fused.shape[1] - 1, -1)
        return torch.cat([fused[:, 1:], first], -1)

    # ------------------------------------------------------------------ generator

    def generate(self, fused: Tensor, num: int | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Pose hypotheses of every non-first view relative to the first.

        Args:
            fused: ``[B, V, d]`` from :meth:`encode`.
            num: hypotheses per view (default: the M queries, one noise draw each; more
                repeats the queries with fresh noise).
            generator: torch generator of the noise (deterministic inference).

        Returns:
            ``R [B, V-1, H, 3, 3]`` and ``t [B, V-1, H, 3]``.
        """
        c = self.config
        num = c.queries if num is None else num
        reps = math.ceil(num / c.queries)
        q = self.queries.repeat(reps, 1)[:num]  # [H, hidden]
        if self.noise_proj is not None:
            z = torch.randn(num, c.noise_dim, generator=generator,
                            device="cpu" if generator is not None else q.device)
            q = q + self.noise_proj(z.to(q.device, q.dtype))
        ctx = self.gen_context(self.pair_features(fused))  # [B, V-1, hidden]
        out = self.gen_head(torch.relu(ctx[:, :, None] + q[None, None]))
        return rot6d_to_matrix(out[..., :6]), out[..., 6:]

    # ------------------------------------------------------------------ discriminator

    def encode_pose(self, R: Tensor, t: Tensor) -> Tensor:
        """Fourier features of a pose ``R [..., 3, 3], t [..., 3]`` -> ``[..., 12 (1+2F)]``."""
        x = torch.cat([R.flatten(-2), t], -1)
        freqs = 2.0 ** torch.arange(self.config.pose_frequencies, device=x.device,
                                    dtype=x.dtype) * math.pi
        ang = x[..., None] * freqs
        return torch.cat([x, torch.sin(ang).flatten(-2), torch.cos(ang).flatten(-2)], -1)

    def score(self, fused: Tensor, R: Tensor, t: Tensor) -> Tensor:
        """Discriminator scores of hypotheses ``R [B, V-1, H, 3, 3], t [B, V-1, H, 3]`` given
        ``fused [B, V, d]`` -> ``[B, V-1, H]`` (higher: more likely)."""
        if self.config.mode == "grid":
            t = torch.zeros_like(t)
        return self.score_features(self.disc_context(self.pair_features(fused)),
                                   self.disc_pose(self.encode_pose(R, t)))

    def score_features(self, context: Tensor, pose: Tensor) -> Tensor:
        """Scores from the discriminator's first-layer parts: ``context [B, V-1, hidden]``
        (of the view pairs) and ``pose [..., H, hidden]`` (of the hypotheses; broadcast, so a
        grid shared by all views is encoded once) -> ``[B, V-1, H]``."""
        return self.disc_head(torch.relu(context[:, :, None] + pose))[..., 0]

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, images: Tensor, seed: int = 0,
                chunk: int = 4096) -> tuple[Tensor, Tensor, Tensor]:
        """Relative poses of every view in the first view's frame.

        Args:
            images: ``[B, V, 3, S, S]`` in [0, 1].
            seed: seed of the generator's noise (or of the rotation grid).
            chunk: hypotheses scored at once (bounds the memory in grid mode).

        Returns:
            ``R [B, V, 3, 3]`` (view 0: identity), ``t [B, V, 3]`` (view 0: zero; units of
            the first camera's distance to the object) and ``score [B, V]`` (softmax
            probability of the chosen hypothesis among all scored; view 0 and regression: 1).
        """
        c = self.config
        fused = self.encode(images)
        B, V = images.shape[:2]
        gen = torch.Generator().manual_seed(seed)
        if c.mode == "regression":
            R, t = self.generate(fused, 1)
            R, t = R[:, :, 0], t[:, :, 0]
            prob = torch.ones(B, V - 1, device=images.device)
        elif c.mode == "aden":
            R_h, t_h = self.generate(fused, c.hypotheses, generator=gen)
            s = self.score(fused, R_h, t_h)
            best = s.argmax(-1)
            prob = torch.softmax(s, -1).gather(-1, best[..., None])[..., 0]
            idx = best[..., None]  # [B, V-1, 1]
            R = R_h.gather(2, idx[..., None, None].expand(-1, -1, 1, 3, 3))[:, :, 0]
            t = t_h.gather(2, idx[..., None].expand(-1, -1, 1, 3))[:, :, 0]
        else:
            _, t_reg = self.generate(fused, 1)
            t = t_reg[:, :, 0]
            grid = rotation_grid(c.grid_size, seed, images.device, images.dtype)
            context = self.disc_context(self.pair_features(fused))
            scores = []
            for k in range(0, len(grid), chunk):
                g = grid[k:k + chunk]
                pose = self.disc_pose(self.encode_pose(g, torch.zeros(len(g), 3).to(g)))
                scores.append(self.score_features(context, pose))
            s = torch.cat(scores, -1)
            best = s.argmax(-1)
            prob = torch.softmax(s, -1).gather(-1, best[..., None])[..., 0]
            R = grid[best]
        eye = torch.eye(3, device=R.device, dtype=R.dtype).expand(B, 1, 3, 3)
        R = torch.cat([eye, R], 1)
        t = torch.cat([torch.zeros(B, 1, 3, device=t.device, dtype=t.dtype), t], 1)
        prob = torch.cat([torch.ones(B, 1, device=prob.device), prob.float()], 1)
        return R, t, prob
