"""A per-scene triplane field for unbounded scenes: the core's pieces composed.

Points are contracted (mip-NeRF 360, radius 2), read from learnable triplanes at
``contract(x) / 2`` and decoded by a small MLP into density and colour. Each ray is sampled
uniformly in disparity from ``near`` to ``far``, then resampled once from the weights
(importance edges, the same field evaluated twice). ``render_rays`` also returns the bins
and weights of the last pass (``"edges"``, ``"weights"``) for the distortion loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reconstruction.field.contraction import contract
from reconstruction.field.rays import Rays
from reconstruction.field.render import composite, render_weights
from reconstruction.field.sampling import importance_edges, midpoints, stratified
from reconstruction.field.triplane import Triplane


@dataclass
class TriplaneFieldConfig:
    """Sizes and sampling of :class:`TriplaneField`."""

    channels: int = 16
    resolution: int = 64
    hidden: int = 64
    num_coarse: int = 48
    num_fine: int = 48
    near: float = 0.05
    far: float = 1000.0


class TriplaneField(nn.Module):
    """Triplane + MLP density/colour field (see the module doc)."""

    def __init__(self, config: TriplaneFieldConfig) -> None:
        super().__init__()
        self.config = config
        self.planes = Triplane(config.channels, config.resolution)
        self.mlp = nn.Sequential(nn.Linear(config.channels, config.hidden), nn.ReLU(),
                                 nn.Linear(config.hidden, 4))

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """``[..., 3]`` field-frame points -> density ``[...]``, colour ``[..., 3]``."""
        shape = points.shape[:-1]
        feats = self.planes(contract(points.reshape(-1, 3)) / 2.0)
        out = self.mlp(feats)
        sigma = F.softplus(out[:, 0] - 1.0)
        rgb = torch.sigmoid(out[:, 1:])
        return sigma.reshape(shape), rgb.reshape(*shape, 3)

    def density(self, points: Tensor) -> Tensor:
        return self.query(points)[0]

    def _pass(self, rays: Rays, edges: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        sigma, rgb = self.query(rays.points(midpoints(edges)))
        weights, _ = render_weights(sigma, edges[..., 1:] - edges[..., :-1])
        return weights, composite(weights, rgb, midpoints(edges))

    def render_rays(self, rays: Rays, perturb: bool = False,
                    generator: torch.Generator | None = None) -> dict[str, Tensor]:
        c = self.config
        near = torch.full_like(rays.z_per_t, c.near)
        far = torch.full_like(rays.z_per_t, c.far)
        edges = stratified(near, far, c.num_coarse, perturb, "inverse", generator)
        weights, _ = self._pass(rays, edges)
        fine = importance_edges(edges, weights, c.num_fine, perturb, generator)
        weights, out = self._pass(rays, fine)
        out["edges"], out["weights"] = fine, weights
        return out


def build_triplane_field(config: dict) -> TriplaneField:
    """The builder registered for the ``triplane`` field kind."""
    return TriplaneField(TriplaneFieldConfig(**config))


def field_config(field: TriplaneField) -> dict:
    return asdict(field.config)
