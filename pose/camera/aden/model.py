"""The ADen network: image encoder, view fusion, generator and discriminator.

- **Encoder**: a small ResNet (GroupNorm, stride-2 stem, one stride-2 stage per width)
  from scratch, or initialised from a local weights file; its last feature map is pooled
  to 2x2 and projected to a ``d_model`` token per view.
- **Fusion**: a transformer encoder over the view tokens, with a learned embedding for the
  first view (the reference frame) and another for every other view; with
  ``patch_tokens = P`` each view also brings ``P x P`` tokens of its feature map (learned
  position embeddings), so that attention can compare image regions across views.
- **View frames** (``view_frames``): every fused token also gives its camera in a learned
  frame of the sequence (rotation ``F_i``, centre ``c_i``); a pair's *composed* pose is
  ``R = F_0^T F_j``, ``t = F_0^T (c_j - c_0)``. Rotations compose by construction, so the
  network only has to find per-view cues (gravity, shadow, the object's front) instead of
  learning the composition of two views inside an MLP; trained on all view pairs at once.
- **Generator**: ``M`` learnable queries, each plus projected Gaussian noise, combined with
  the (view, first view) token pair through an MLP into one relative pose hypothesis
  (6D rotation + translation in the first camera's frame, scaled by the first camera's
  distance to the object). With view frames the MLP outputs a residual ``D`` applied in the
  learned frame, ``R = F_0^T D F_j``, ``t = t_composed + dt`` (so the hypotheses spread
  around the composed pose: e.g. along the ambiguity of a symmetric object).
- **Discriminator**: an MLP scoring a (view, first view, Fourier-encoded pose) triple; with
  view frames it also reads the pose's residual w.r.t. the composed pose
  (``F_0 R F_j^T``, ``t - t_composed``).

Inference (:meth:`AdenNet.predict`): ``hypotheses`` poses per non-first view (the queries
repeated with fresh noise), the discriminator's argmax wins. Regression mode returns the
generator's single output; grid mode scores a fixed uniform rotation grid.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from geometry.se3 import mirror_x
from geometry.so3 import chordal_mean, random_rotation, rot6d_to_matrix, rotation_angle
from pose.camera.aden.config import SELECTIONS, AdenConfig

__all__ = ["SELECTIONS", "AdenNet", "BasicBlock", "ResNetEncoder", "rotation_grid"]


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

    def feature_map(self, images: Tensor) -> Tensor:
        """Images ``[N, 3, S, S]`` -> the last stage's map ``[N, widths[-1], s, s]``."""
        return self.stages(self.stem(images * 2.0 - 1.0))

    def forward(self, images: Tensor) -> Tensor:
        return self.tokens(self.feature_map(images))

    def tokens(self, fmap: Tensor) -> Tensor:
        """The view token ``[N, d_model]`` of a feature map."""
        return self.proj(self.pool(fmap).flatten(1))


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
        if c.patch_tokens:
            self.patch_proj = nn.Linear(c.widths[-1], c.d_model)
            self.patch_pos = nn.Parameter(torch.randn(c.patch_tokens ** 2, c.d_model) * 0.02)
        # generator: first layer split into context (view pair) and query (+ noise) parts
        self.queries = nn.Parameter(torch.randn(c.queries, c.hidden) * 0.5)
        self.noise_proj = nn.Linear(c.noise_dim, c.hidden) if c.noise_dim > 0 else None
        self.gen_context = nn.Linear(2 * c.d_model, c.hidden)
        self.gen_head = _mlp(c.hidden, c.hidden, 9, layers=3)
        with torch.no_grad():  # start near the identity rotation and the first camera
            last = self.gen_head[-1]
            last.weight.mul_(0.1)
            last.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0, 0]))
        if c.view_frames:  # per view: 6D rotation + centre in the learned sequence frame
            self.frame_head = _mlp(c.d_model, c.hidden, 9, layers=2)
        if c.mode != "regression":
            pose_dim = 12 * (1 + 2 * c.pose_frequencies) * (2 if c.view_frames else 1)
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
        fmap = self.encoder.feature_map(images.flatten(0, 1))
        tokens = self.encoder.tokens(fmap).view(B, V, -1)
        kind = torch.cat([self.first_embed[None], self.other_embed[None].expand(V - 1, -1)])
        tokens = tokens + kind[None]
        P = self.config.patch_tokens
        if not P:
            return self.fusion_norm(self.fusion(tokens))
        patches = nn.functional.adaptive_avg_pool2d(fmap, P).flatten(2).transpose(1, 2)
        patches = self.patch_proj(patches).view(B, V, P * P, -1) + self.patch_pos
        patches = patches + kind[None, :, None]
        seq = torch.cat([tokens[:, :, None], patches], 2).flatten(1, 2)  # [B, V (1+P^2), d]
        fused = self.fusion(seq).view(B, V, 1 + P * P, -1)[:, :, 0]
        return self.fusion_norm(fused)

    def frames(self, fused: Tensor) -> tuple[Tensor, Tensor]:
        """Every view's camera in the learned sequence frame: rotation ``F [B, V, 3, 3]``
        and centre ``c [B, V, 3]`` (``view_frames`` only)."""
        out = self.frame_head(fused)
        return rot6d_to_matrix(out[..., :6]), out[..., 6:]

    def composed(self, fused: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The composed pose of every non-first view relative to the first:
        ``R [B, V-1, 3, 3] = F_0^T F_j``, ``t [B, V-1, 3] = F_0^T (c_j - c_0)``, and the
        frames ``F [B, V, 3, 3]``."""
        F, c = self.frames(fused)
        F0t = F[:, :1].transpose(-1, -2)
        R = F0t @ F[:, 1:]
        t = (F0t @ (c[:, 1:] - c[:, :1])[..., None])[..., 0]
        return R, t, F

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
        R, t = rot6d_to_matrix(out[..., :6]), out[..., 6:]
        if self.config.view_frames:  # residual in the learned frame around the composed pose
            _, t_c, F = self.composed(fused)
            if self.config.frame_weight > 0:  # the frames learn from their own loss only
                t_c, F = t_c.detach(), F.detach()
            F0t = F[:, :1, None].transpose(-1, -2)  # [B, 1, 1, 3, 3]
            R = F0t @ R @ F[:, 1:, None]
            t = t + t_c[:, :, None]
        return R, t

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
                                   self.disc_pose(self.pose_features(fused, R, t)))

    def pose_features(self, fused: Tensor, R: Tensor, t: Tensor,
                      composed: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """What the discriminator reads of hypotheses ``R [B, V-1, H, 3, 3]``,
        ``t [B, V-1, H, 3]`` (or ``[H, ...]``, shared by all pairs): the Fourier features of
        the pose and, with view frames, of its residual ``(F_0 R F_j^T, t - t_composed)``
        (zero translations in grid mode)."""
        enc = self.encode_pose(R, t)
        if not self.config.view_frames:
            return enc
        _, t_c, F = composed if composed is not None else self.composed(fused)
        if self.config.frame_weight > 0:
            t_c, F = t_c.detach(), F.detach()
        E = F[:, :1, None] @ R @ F[:, 1:, None].transpose(-1, -2)
        dt = (t - t_c[:, :, None]) if self.config.mode != "grid" else torch.zeros_like(E[..., 0])
        return torch.cat([enc.expand(*E.shape[:3], -1), self.encode_pose(E, dt)], -1)

    def score_features(self, context: Tensor, pose: Tensor) -> Tensor:
        """Scores from the discriminator's first-layer parts: ``context [B, V-1, hidden]``
        (of the view pairs) and ``pose [..., H, hidden]`` (of the hypotheses; broadcast, so a
        grid shared by all views is encoded once) -> ``[B, V-1, H]``."""
        return self.disc_head(torch.relu(context[:, :, None] + pose))[..., 0]

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, images: Tensor, seed: int = 0, chunk: int = 4096,
                select: str = "argmax", mirror_views: bool = False
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Relative poses of every view in the first view's frame.

        Args:
            images: ``[B, V, 3, S, S]`` in [0, 1].
            seed: seed of the generator's noise (or of the rotation grid).
            chunk: hypotheses scored at once (bounds the memory in grid mode).
            select: ADen mode only: ``argmax`` (the paper's: the hypothesis the
                discriminator scores highest) or ``mean`` (the chordal mean of the
                generator's hypotheses and their mean translation: the centre of the
                generated density, without the discriminator).
            mirror_views: also estimate from the views mirrored left-right (the same noise)
                and average the two: chordal mean of the rotations (the mirrored ones
                conjugated back by diag(-1, 1, 1)), mean of the translations and scores.
                Twice the inference time; the result is mirror-equivariant.

        Returns:
            ``R [B, V, 3, 3]`` (view 0: identity), ``t [B, V, 3]`` (view 0: zero; units of
            the first camera's distance to the object) and ``score [B, V]`` (``argmax``:
            softmax probability of the chosen hypothesis among all scored; ``mean``: the
            share of hypotheses within 15 degrees of the mean; view 0 and regression: 1).
        """
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
        if mirror_views:
            R1, t1, p1 = self.predict(images, seed, chunk, select)
            R2, t2, p2 = self.predict(images.flip(-1), seed, chunk, select)
            R2, t2 = mirror_x(R2, t2)
            return chordal_mean(torch.stack([R1, R2], 2), dim=2), (t1 + t2) / 2, (p1 + p2) / 2
        c = self.config
        fused = self.encode(images)
        B, V = images.shape[:2]
        gen = torch.Generator().manual_seed(seed)
        if c.mode == "regression":
            R, t = self.generate(fused, 1)
            R, t = R[:, :, 0], t[:, :, 0]
            prob = torch.ones(B, V - 1, device=images.device)
        elif c.mode == "aden" and select == "mean":
            R_h, t_h = self.generate(fused, c.hypotheses, generator=gen)
            R = chordal_mean(R_h, dim=2)
            t = t_h.mean(2)
            near = rotation_angle(R[:, :, None], R_h) < math.radians(15.0)
            prob = near.float().mean(-1)
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
            comp = self.composed(fused) if c.view_frames else None
            if c.view_frames:  # the residual features are per pair: bound the rows per chunk
                chunk = max(1, min(chunk, 65536 // max(1, B * (V - 1))))
            scores = []
            for k in range(0, len(grid), chunk):
                g = grid[k:k + chunk]
                feats = self.pose_features(fused, g, torch.zeros(len(g), 3).to(g), comp)
                scores.append(self.score_features(context, self.disc_pose(feats)))
            s = torch.cat(scores, -1)
            best = s.argmax(-1)
            prob = torch.softmax(s, -1).gather(-1, best[..., None])[..., 0]
            R = grid[best]
        eye = torch.eye(3, device=R.device, dtype=R.dtype).expand(B, 1, 3, 3)
        R = torch.cat([eye, R], 1)
        t = torch.cat([torch.zeros(B, 1, 3, device=t.device, dtype=t.dtype), t], 1)
        prob = torch.cat([torch.ones(B, 1, device=prob.device), prob.float()], 1)
        return R, t, prob
