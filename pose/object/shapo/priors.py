"""ShAPO's learned priors: a DeepSDF shape decoder and an appearance decoder, auto-decoded.

- **Shape**: ``f(z_s, x) -> sdf`` (Park et al. 2019, DeepSDF): an MLP on the shape code and
  the point (with a few Fourier features of the point), the input concatenated again
  halfway (DeepSDF's skip), ``tanh`` output; trained with the L1 loss on SDF values clamped
  to ``[-clamp, clamp]`` and an L2 penalty on the codes (DeepSDF's ``1e-4``).
- **Appearance**: ``g(z_a, z_s, x) -> rgb`` (ShAPO's texture field, conditioned on both
  codes), sigmoid output, L1 on the surface colours.
- **Auto-decoder**: one shape and one appearance code per training instance, optimised
  with the decoders (codes start at ``N(0, 1/dim)``).

Everything lives in the NOCS-normalised object frame (``x = p / diag``, SDF in units of
the box diagonal). Training data: random instances of the six generated categories
(:mod:`pose.object.shapo.shapes`): SDF samples near the surface (two noise scales) and in
the box, and the albedo at surface points.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from pose.object.shapo.shapes import CATEGORIES, Shape, random_shape

KIND = "shapo_priors"

__all__ = ["KIND", "PriorConfig", "PriorData", "PriorModel", "PriorTrainConfig",
           "make_prior_data", "prior_shapes", "surface_points"]


@dataclass
class PriorConfig:
    """Architecture of the shape and appearance decoders."""

    shape_dim: int = 32
    """Shape code size."""
    appearance_dim: int = 32
    """Appearance code size."""
    hidden: int = 128
    """Width of the hidden layers."""
    layers: int = 6
    """Hidden layers of the shape decoder (the input joins again after half of them)."""
    appearance_layers: int = 4
    """Hidden layers of the appearance decoder."""
    fourier: int = 2
    """Octaves of sin/cos features of the point (0: the raw point only, as DeepSDF)."""
    clamp: float = 0.1
    """SDF clamp of the loss (NOCS units, DeepSDF's delta)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PriorTrainConfig:
    """Data and optimisation of 'pose shapo train-priors'."""

    instances_per_category: int = 24
    """Random instances of each of the six categories (one code pair each)."""
    sdf_samples: int = 4096
    """SDF samples per instance (precomputed)."""
    color_samples: int = 1024
    """Surface colour samples per instance (precomputed)."""
    batch_instances: int = 16
    """Instances per step (per rank)."""
    points: int = 512
    """SDF (and half as many colour) samples per instance and step."""
    steps: int = 4000
    """Optimiser steps."""
    lr: float = 1e-3
    """Peak learning rate of the decoders."""
    code_lr: float = 2e-3
    """Peak learning rate of the codes."""
    code_reg: float = 1e-4
    """L2 penalty on the codes."""
    warmup_steps: int = 100
    """Linear warm-up of the learning rate."""
    log_every: int = 50
    """Log the losses every this many steps."""
    checkpoint_every_s: float = 300.0
    """Checkpoint at least this often (seconds)."""
    seed: int = 0
    """Seed of the instances, samples and initial weights."""


def _fourier(x: Tensor, octaves: int) -> Tensor:
    if octaves == 0:
        return x
    freqs = (2.0 ** torch.arange(octaves, dtype=x.dtype, device=x.device)) * math.pi
    xf = x[..., None] * freqs  # [..., 3, F]
    return torch.cat([x, xf.sin().flatten(-2), xf.cos().flatten(-2)], -1)


class _MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, layers: int, d_out: int, skip: int | None):
        super().__init__()
        self.skip = skip
        dims = []
        for i in range(layers):
            d = d_in if i == 0 else hidden
            if skip is not None and i == skip:
                d = hidden + d_in
            dims.append(nn.Linear(d, hidden))
        self.hidden = nn.ModuleList(dims)
        self.out = nn.Linear(hidden, d_out)

    def forward(self, inp: Tensor) -> Tensor:
        h = inp
        for i, layer in enumerate(self.hidden):
            if self.skip is not None and i == self.skip:
                h = torch.cat([h, inp], -1)
            h = torch.relu(layer(h))
        return self.out(h)


class PriorModel(nn.Module):
    """The two decoders and the training instances' codes (auto-decoder)."""

    def __init__(self, config: PriorConfig, instance_class: Tensor):
        super().__init__()
        self.config = config
        d_x = 3 * (1 + 2 * config.fourier)
        self.shape_net = _MLP(config.shape_dim + d_x, config.hidden, config.layers, 1,
                              skip=config.layers // 2)
        self.app_net = _MLP(config.appearance_dim + config.shape_dim + d_x, config.hidden,
                            config.appearance_layers, 3, skip=None)
        n = len(instance_class)
        self.shape_codes = nn.Embedding(n, config.shape_dim)
        self.app_codes = nn.Embedding(n, config.appearance_dim)
        nn.init.normal_(self.shape_codes.weight, 0.0, 1.0 / math.sqrt(config.shape_dim))
        nn.init.normal_(self.app_codes.weight, 0.0, 1.0 / math.sqrt(config.appearance_dim))
        self.register_buffer("instance_class", instance_class.long().clone())

    def sdf(self, z_shape: Tensor, x: Tensor) -> Tensor:
        """SDF ``[..., N]`` (NOCS units) at points ``x [..., N, 3]`` for codes
        ``[..., D]``."""
        z = z_shape[..., None, :].expand(*x.shape[:-1], z_shape.shape[-1])
        return torch.tanh(self.shape_net(torch.cat([z, _fourier(x, self.config.fourier)],
                                                   -1)))[..., 0]

    def color(self, z_app: Tensor, z_shape: Tensor, x: Tensor) -> Tensor:
        """RGB ``[..., N, 3]`` in [0, 1] at points ``x [..., N, 3]``."""
        za = z_app[..., None, :].expand(*x.shape[:-1], z_app.shape[-1])
        zs = z_shape[..., None, :].expand(*x.shape[:-1], z_shape.shape[-1])
        return torch.sigmoid(self.app_net(torch.cat([za, zs, _fourier(x, self.config.fourier)],
                                                    -1)))

    def mean_codes(self, class_name: str) -> tuple[Tensor, Tensor]:
        """The mean shape and appearance codes of a category's training instances (the
        starting point of a fit); all instances' means for a category not trained."""
        sel = self.instance_class == CATEGORIES.index(class_name) + 1
        if not bool(sel.any()):
            sel = torch.ones_like(sel)
        return self.shape_codes.weight[sel].mean(0), self.app_codes.weight[sel].mean(0)

    def losses(self, batch: dict[str, Tensor], code_reg: float) -> dict[str, Tensor]:
        """``loss`` (total), ``sdf``, ``color``, ``code`` of a training batch."""
        idx = batch["index"]
        zs, za = self.shape_codes(idx), self.app_codes(idx)
        c = self.config.clamp
        pred = self.sdf(zs, batch["points"])
        sdf = (pred.clamp(-c, c) - batch["sdf"].clamp(-c, c)).abs().mean()
        rgb = self.color(za, zs, batch["color_points"])
        color = (rgb - batch["colors"]).abs().mean()
        code = (zs.pow(2).sum(-1).mean() + za.pow(2).sum(-1).mean())
        return {"loss": sdf + 0.1 * color + code_reg * code, "sdf": sdf, "color": color,
                "code": code}


def _sdf_grad(shape: Shape, x: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    grad = np.stack([shape.sdf_unit(x + e) - shape.sdf_unit(x - e) for e in np.eye(3) * eps],
                    -1) / (2 * eps)
    return grad / np.maximum(np.linalg.norm(grad, axis=-1, keepdims=True), 1e-12)


def surface_points(shape: Shape, n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, 3]`` points on the surface, NOCS-normalised frame (projections of random
    points in the box along the SDF gradient)."""
    out: list[np.ndarray] = []
    half = shape.size / shape.diag / 2
    while sum(len(o) for o in out) < n:
        x = rng.uniform(-half * 1.05, half * 1.05, (2 * n, 3))
        for _ in range(4):
            x = x - shape.sdf_unit(x)[:, None] * _sdf_grad(shape, x)
        out.append(x[np.abs(shape.sdf_unit(x)) < 1e-4])
    return np.concatenate(out)[:n]


@dataclass
class PriorData:
    """Precomputed samples of the training instances (NOCS-normalised frame)."""

    points: np.ndarray  # [M, S, 3]
    sdf: np.ndarray  # [M, S]
    color_points: np.ndarray  # [M, C, 3]
    colors: np.ndarray  # [M, C, 3]
    instance_class: np.ndarray  # [M] 1-based class ids
    shapes: list[Shape]


def sample_shape(shape: Shape, n_sdf: int, n_color: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """SDF samples (40 % within 0.0025, 40 % within 0.025 of the surface, 10 % in the box
    grown by 10 %, 10 % in the cube ``[-0.6, 0.6]^3``) and surface colours of one
    instance."""
    n_far = n_sdf // 5
    n_near = n_sdf - n_far
    surf = surface_points(shape, n_near + n_color, rng)
    near = surf[:n_near] + rng.standard_normal((n_near, 3)) * np.where(
        np.arange(n_near)[:, None] % 2 == 0, 0.0025, 0.025)
    half = shape.size / shape.diag / 2
    n_box = n_far // 2
    box = rng.uniform(-half * 1.1 - 0.02, half * 1.1 + 0.02, (n_box, 3))
    cube = rng.uniform(-0.6, 0.6, (n_far - n_box, 3))  # the whole space a sampler searches
    pts = np.concatenate([near, box, cube])
    cpts = surf[n_near:]
    colors = shape.albedo(cpts * shape.diag)
    return pts, shape.sdf_unit(pts), cpts, colors


def _draw_shapes(config: PriorTrainConfig, categories: tuple[str, ...],
                 rng: np.random.Generator) -> list[Shape]:
    return [random_shape(c, rng) for c in categories
            for _ in range(config.instances_per_category)]


def prior_shapes(config: PriorTrainConfig, categories: tuple[str, ...] = CATEGORIES
                 ) -> list[Shape]:
    """The training instances of priors trained with ``config``, in code order (the same
    shapes :func:`make_prior_data` samples, without the sampling): scenes built from them
    have known codes, the targets of the single-shot network."""
    return _draw_shapes(config, categories, np.random.default_rng(config.seed))


def make_prior_data(config: PriorTrainConfig, categories: tuple[str, ...] = CATEGORIES,
                    quiet: bool = True) -> PriorData:
    """Random instances of ``categories`` and their samples (deterministic by seed)."""
    from geometry.progress import progress_bar

    rng = np.random.default_rng(config.seed)
    shapes = _draw_shapes(config, categories, rng)
    pts, sdf, cpts, cols = [], [], [], []
    with progress_bar("sampling shapes", quiet=quiet) as bar:
        task = bar.add_task("", total=len(shapes))
        for shape in shapes:
            p, s, cp, c = sample_shape(shape, config.sdf_samples, config.color_samples, rng)
            pts.append(p)
            sdf.append(s)
            cpts.append(cp)
            cols.append(c)
            bar.advance(task)
    return PriorData(np.stack(pts).astype(np.float32), np.stack(sdf).astype(np.float32),
                     np.stack(cpts).astype(np.float32), np.stack(cols).astype(np.float32),
                     np.array([CATEGORIES.index(s.category) + 1 for s in shapes]), shapes)


def make_batch_fn(data: PriorData, config: PriorTrainConfig, device: torch.device):
    """``batch_fn(step, rank, world_size)``: each rank draws its own instances and points."""
    pts, sdf = torch.from_numpy(data.points), torch.from_numpy(data.sdf)
    cpts, cols = torch.from_numpy(data.color_points), torch.from_numpy(data.colors)
    M, S, C = pts.shape[0], pts.shape[1], cpts.shape[1]

    def batch_fn(step: int, rank: int, world_size: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 1009 + rank)
        idx = torch.randint(0, M, (config.batch_instances,), generator=g)
        p = torch.randint(0, S, (config.batch_instances, config.points), generator=g)
        c = torch.randint(0, C, (config.batch_instances, max(1, config.points // 2)),
                          generator=g)
        rows = idx[:, None]
        return {"index": idx.to(device), "points": pts[rows, p].to(device),
                "sdf": sdf[rows, p].to(device), "color_points": cpts[rows, c].to(device),
                "colors": cols[rows, c].to(device)}

    return batch_fn


def build_model(config: PriorConfig, instance_class: np.ndarray | Tensor, seed: int = 0
                ) -> PriorModel:
    """A fresh model (deterministic by seed)."""
    torch.manual_seed(seed)
    return PriorModel(config, torch.as_tensor(np.asarray(instance_class)))
