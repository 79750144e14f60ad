"""ShAPO's test-time optimisation: pose, scale, shape and appearance codes of one object,
refined against its masked depth points and colours.

Per iteration (Adam, one learning rate per group of unknowns):

- **surface points**: octree points of the current shape (:func:`octree_surface_points`,
  re-extracted every ``reextract_every`` iterations, no gradient) moved onto the surface by
  one Newton step ``x - f(z, x) n`` whose ``f`` carries the gradient to the shape code,
  then posed into the camera (``s R x + t``);
- **depth term** (ShAPO's): every observed point's distance to its nearest surface point,
  truncated at ``inlier_m`` (points farther away, e.g. a wrong mask, do not pull);
- **SDF term**: ``|f(z, x_obs)|`` at the observed points mapped into the object frame,
  truncated likewise (a dense gradient for pose and shape);
- **colour term**: L1 between the observed colours and the appearance decoder at the
  observed points that lie on the surface;
- **silhouette term** (our addition, when the frame's mask and depth are given,
  :class:`ImageEvidence`): the posed surface points are projected into the image and each
  one that falls outside the object's mask, and is not hidden behind an observed surface,
  is pulled back by its distance (pixels, bilinear in a distance transform of the mask,
  truncated at ``silhouette_cap_px``). The depth terms only see the camera-facing side:
  without this, a shape too wide (or too deep) explains the visible points as well as the
  right one, and the box grows;
- **coverage term** (ours, with the silhouette term): each mask pixel's distance to the
  nearest projected surface point, truncated likewise: the shape must also fill its mask
  (the mask's edge pixels often have no depth, so the depth terms cannot hold the width
  against the silhouette term);
- **code prior**: ``|z - z_init|^2`` keeps the codes near where they started.

The pose is ``R = R_init exp(omega)``, ``t``, scale ``s = diag`` (metres, in log space).
The box size is ``s`` times the extent of the final surface points (0.5-99.5 %
quantiles per axis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from pose.object.shapo.surface import octree_surface_points

SIZE_DEPTH = 3
"""Octree depth of the surface points whose extent gives the box size (64^3 cells: the
extent within ~1 % of a 256^3 extraction, 15x faster)."""

__all__ = ["ImageEvidence", "ObjectState", "RefineConfig", "best_yaw", "depth_to_surface",
           "fit_cost", "masked_points", "refine_object", "sdf_distance", "shape_size"]


@dataclass
class RefineConfig:
    """Test-time optimisation of one object."""

    iterations: int = 60
    """Adam iterations."""
    lr_rotation: float = 0.01
    """Learning rate of the rotation increment (radians)."""
    lr_translation: float = 0.002
    """Learning rate of the translation (metres)."""
    lr_scale: float = 0.01
    """Learning rate of the log scale."""
    lr_shape: float = 0.01
    """Learning rate of the shape code."""
    lr_appearance: float = 0.02
    """Learning rate of the appearance code."""
    inlier_m: float = 0.02
    """Truncation of the depth and SDF residuals (metres)."""
    depth_weight: float = 1.0
    """Weight of the nearest-surface-point term."""
    sdf_weight: float = 1.0
    """Weight of the SDF-at-observations term."""
    color_weight: float = 0.02
    """Weight of the colour term."""
    code_weight: float = 1e-4
    """Weight of the code prior (per code, squared distance to the start)."""
    silhouette_weight: float = 1.0
    """Weight of the silhouette term (needs the object's mask; 0: off)."""
    coverage_weight: float = 0.0
    """Weight of the coverage term: each mask pixel's distance to the nearest projected
    surface point (needs the object's mask; 0: off)."""
    silhouette_cap_px: float = 3.0
    """Truncation of a surface point's distance outside the mask (pixels)."""
    silhouette_slack_px: float = 0.5
    """Distance outside the mask that costs nothing (the mask's own error, pixels)."""
    occlusion_m: float = 0.02
    """A surface point counts as hidden when the observed depth at its pixel is this much
    closer to the camera (an occluder): no silhouette cost."""
    max_points: int = 800
    """Observed points used (a fixed random subset)."""
    surface_points: int = 1500
    """Octree surface points used per iteration."""
    octree_depth: int = 4
    """Octree subdivisions of the surface extraction (8^3 cells first)."""
    reextract_every: int = 10
    """Iterations between two octree extractions."""
    seed: int = 0
    """Seed of the point subsets."""
    yaw_hypotheses: int = 12
    """For categories without a symmetry axis (mug, laptop, camera): also refine from the best
    of this many equally spaced headings about the start's y axis (by the fit cost: the
    truncated SDF distance of the observed points, plus the silhouette cost when the mask
    is given) and keep the better of the two results (our addition to ShAPO's
    optimisation, which is local; 0 or 1: off)."""


@dataclass
class ObjectState:
    """One object's unknowns (object-to-camera pose, scale = box diagonal in metres)."""

    R: Tensor  # [3, 3]
    t: Tensor  # [3]
    scale: float
    z_shape: Tensor  # [Ds]
    z_app: Tensor  # [Da]
    size: Tensor | None = None
    """``[3]`` box extents (metres), when known."""
    history: list[float] = field(default_factory=list)

    def T_cam_obj(self) -> Tensor:
        T = torch.eye(4, dtype=self.R.dtype, device=self.R.device)
        T[:3, :3], T[:3, 3] = self.R, self.t
        return T

    def to(self, device: torch.device | str) -> ObjectState:
        """This state with its tensors on ``device``."""
        return ObjectState(R=self.R.to(device), t=self.t.to(device), scale=self.scale,
                           z_shape=self.z_shape.to(device), z_app=self.z_app.to(device),
                           size=self.size.to(device) if self.size is not None else None,
                           history=list(self.history))


@dataclass
class ImageEvidence:
    """One object's view for the silhouette term: its mask and the frame's depth (the
    costs are computed on the device of ``K``)."""

    K: Tensor
    """``[3, 3]`` intrinsics (pixel centres at +0.5)."""
    mask: Tensor
    """``[H, W]`` bool: the object's pixels."""
    depth: Tensor
    """``[H, W]`` metres (0: unknown)."""
    outside_px: Tensor = field(init=False)
    """``[1, 1, H, W]`` distance of each pixel to the nearest mask pixel (0 inside)."""
    mask_uv: Tensor = field(init=False)
    """``[M, 2]`` centres of (at most 400 of) the mask's pixels."""

    def __post_init__(self) -> None:
        from scipy.ndimage import distance_transform_edt

        device = self.K.device
        mask = self.mask.bool().cpu().numpy()
        dt = distance_transform_edt(~mask) if mask.any() else \
            np.full(mask.shape, float(max(mask.shape)))
        self.outside_px = torch.from_numpy(dt).float()[None, None].to(device)
        self.K, self.depth = self.K.float(), self.depth.float().to(device)
        v, u = torch.nonzero(self.mask.bool().cpu(), as_tuple=True)
        uv = torch.stack([u, v], -1).float() + 0.5
        if len(uv) > 400:
            uv = uv[torch.randperm(len(uv), generator=torch.Generator().manual_seed(0))[:400]]
        self.mask_uv = uv.to(device)

    def _project(self, cam: Tensor) -> Tensor:
        z = cam[:, 2].clamp_min(1e-3)
        return torch.stack([self.K[0, 0] * cam[:, 0] / z + self.K[0, 2],
                            self.K[1, 1] * cam[:, 1] / z + self.K[1, 2]], -1)

    def coverage_cost(self, cam: Tensor, config: RefineConfig) -> Tensor:
        """``[M]`` truncated distance (pixels) of each mask pixel to the nearest projection
        of camera-frame points ``cam [N, 3]`` (differentiable in ``cam``): the shape must
        cover its mask, as the silhouette term keeps it inside."""
        if len(cam) == 0 or len(self.mask_uv) == 0:
            return cam.new_zeros(len(self.mask_uv))
        d = torch.cdist(self.mask_uv, self._project(cam)).min(1).values
        return (d - config.silhouette_slack_px).clamp(min=0, max=config.silhouette_cap_px)

    def silhouette_cost(self, cam: Tensor, config: RefineConfig) -> Tensor:
        """``[N]`` truncated distance (pixels) outside the mask of camera-frame points
        ``cam [N, 3]`` (differentiable in ``cam``; 0 for points hidden by an occluder)."""
        H, W = self.depth.shape
        z = cam[:, 2].clamp_min(1e-3)
        u, v = self._project(cam).unbind(-1)
        grid = torch.stack([2 * u / W - 1, 2 * v / H - 1], -1)[None, None]
        d = torch.nn.functional.grid_sample(self.outside_px, grid, mode="bilinear",
                                            padding_mode="border", align_corners=False)
        d = d.reshape(-1)
        with torch.no_grad():
            ui = u.detach().floor().long().clamp(0, W - 1)
            vi = v.detach().floor().long().clamp(0, H - 1)
            seen = self.depth[vi, ui]
            hidden = (seen > 0) & (seen < z.detach() - config.occlusion_m)
        cost = (d - config.silhouette_slack_px).clamp(min=0, max=config.silhouette_cap_px)
        return torch.where(hidden, torch.zeros_like(cost), cost)


def _nn_truncated(obs: Tensor, surf: Tensor, cap: float) -> Tensor:
    """``[N]`` distance of each observed point to its nearest surface point, capped."""
    d = torch.cdist(obs, surf).min(1).values
    return d.clamp(max=cap)


@torch.no_grad()
def depth_to_surface(priors, state: ObjectState, points: Tensor, cap: float = 0.02,
                     depth: int = 5) -> float:
    """Mean distance (metres, each capped at ``cap``) of observed points ``[N, 3]``
    (camera frame) to the object's posed surface (octree points)."""
    fn = _sdf_fn(priors, state.z_shape)
    surf = octree_surface_points(fn, depth=depth, max_cells=50000,
                                 device=state.z_shape.device)
    if len(surf) == 0:
        return cap
    from scipy.spatial import cKDTree

    posed = (state.scale * surf @ state.R.T + state.t).double().cpu().numpy()
    d, _ = cKDTree(posed).query(points.double().cpu().numpy(), k=1)
    return float(d.clip(max=cap).mean())


@torch.no_grad()
def sdf_distance(priors, state: ObjectState, points: Tensor, cap: float = 0.02) -> float:
    """Mean distance (metres, each capped at ``cap``) of observed points ``[N, 3]``
    (camera frame) to the object's posed surface, read from the SDF: ``s |f(z, x)|`` at
    the points mapped into the NOCS frame (exact for a true SDF; far cheaper than
    :func:`depth_to_surface`'s dense surface points)."""
    if len(points) == 0:
        return cap
    x = ((points.float() - state.t.float()) @ state.R.float()) / state.scale
    f = priors.sdf(state.z_shape.float(), x)
    return float((f.abs() * state.scale).clamp(max=cap).mean())


def _sdf_fn(priors, z: Tensor):
    return lambda x: priors.sdf(z, x)


@torch.no_grad()
def fit_cost(priors, state: ObjectState, points: Tensor, config: RefineConfig,
             evidence: ImageEvidence | None = None, surface: Tensor | None = None) -> float:
    """How badly ``state`` explains the view: :func:`sdf_distance` of ``points`` over
    ``inlier_m``, plus (with ``evidence``) ``silhouette_weight`` times the mean silhouette
    cost of its surface points over ``silhouette_cap_px`` (the two terms of the
    optimisation's loss). ``surface``: the shape's surface points (NOCS frame), when
    already extracted."""
    cost = sdf_distance(priors, state, points, config.inlier_m) / config.inlier_m
    if evidence is not None and config.silhouette_weight > 0:
        if surface is None:
            surface = _silhouette_points(priors, state.z_shape, config)
        if len(surface):
            cam = state.scale * surface @ state.R.float().T + state.t.float()
            sil = evidence.silhouette_cost(cam, config).mean() / config.silhouette_cap_px
            cost += config.silhouette_weight * float(sil)
    return cost


def _silhouette_points(priors, z_shape: Tensor, config: RefineConfig) -> Tensor:
    return octree_surface_points(_sdf_fn(priors, z_shape.float()), depth=SIZE_DEPTH,
                                 max_points=config.surface_points,
                                 generator=torch.Generator().manual_seed(config.seed),
                                 max_cells=50000, device=z_shape.device)


def best_yaw(priors, points: Tensor, init: ObjectState, hypotheses: int,
             cap: float = 0.02, evidence: ImageEvidence | None = None,
             config: RefineConfig | None = None) -> ObjectState:
    """``init`` turned about its own y axis by the best of ``hypotheses`` equally spaced
    angles (lowest :func:`sdf_distance` of ``points``, or with ``evidence`` lowest
    :func:`fit_cost`; ties keep the first, i.e. no turn)."""
    from geometry.so3 import so3_exp

    config = config or RefineConfig(inlier_m=cap)
    surface = (_silhouette_points(priors, init.z_shape, config)
               if evidence is not None and config.silhouette_weight > 0 else None)
    best, best_d = init, math.inf
    for k in range(max(1, hypotheses)):
        angle = 2 * math.pi * k / max(1, hypotheses)
        R = init.R.float() @ so3_exp(torch.tensor([0.0, angle, 0.0], device=init.R.device))
        cand = ObjectState(R=R, t=init.t, scale=init.scale, z_shape=init.z_shape,
                           z_app=init.z_app, size=init.size)
        d = (fit_cost(priors, cand, points, config, evidence, surface) if evidence is not None
             else sdf_distance(priors, cand, points, cap))
        if d < best_d - 1e-9:
            best, best_d = cand, d
    return best


def refine_object(priors, points: Tensor, colors: Tensor | None, init: ObjectState,
                  config: RefineConfig | None = None, yaw_search: bool = False,
                  evidence: ImageEvidence | None = None) -> ObjectState:
    """Refine one object's pose, scale and codes (see the module docstring).

    Args:
        priors: a :class:`~pose.object.shapo.priors.PriorModel` (or any object with
            ``sdf(z, x)`` and ``color(z_app, z_shape, x)``); its weights stay fixed.
        points: ``[N, 3]`` observed points of the object (camera frame, metres).
        colors: ``[N, 3]`` their colours in [0, 1], or None.
        init: the starting state (e.g. the single-shot prediction).
        yaw_search: also refine from the best of ``config.yaw_hypotheses`` headings about
            the object's y axis (for categories that have no symmetry axis) and keep the
            result whose observed points lie closer to its surface (:func:`sdf_distance`).
        evidence: the object's mask and the frame's depth, for the silhouette term (None:
            no silhouette term).
    """

    config = config or RefineConfig()
    g = torch.Generator().manual_seed(config.seed)
    if len(points) > config.max_points:
        pick = torch.randperm(len(points), generator=g)[:config.max_points].to(points.device)
        points = points[pick]
        colors = colors[pick] if colors is not None else None
    points = points.float()
    starts = [init]
    if yaw_search and config.yaw_hypotheses > 1:
        turned = best_yaw(priors, points, init, config.yaw_hypotheses, config.inlier_m,
                          evidence, config)
        if turned is not init:
            starts.append(turned)
    frozen = [(p, p.requires_grad) for p in priors.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        best, best_d = None, math.inf
        for start in starts:
            state = _refine_from(priors, points, colors, start, config,
                                 torch.Generator().manual_seed(config.seed), evidence)
            d = (fit_cost(priors, state, points, config, evidence) if len(starts) > 1
                 else 0.0)
            if d < best_d:
                best, best_d = state, d
        return best
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)


def _refine_from(priors, points: Tensor, colors: Tensor | None, init: ObjectState,
                 config: RefineConfig, g: torch.Generator,
                 evidence: ImageEvidence | None = None) -> ObjectState:
    device = points.device
    R0 = init.R.float().to(device)
    omega = torch.zeros(3, device=device, requires_grad=True)
    t = init.t.float().to(device).clone().requires_grad_(True)
    log_s = torch.tensor(math.log(init.scale), device=device, requires_grad=True)
    zs0 = init.z_shape.float().detach().to(device)
    za0 = init.z_app.float().detach().to(device)
    zs, za = zs0.clone().requires_grad_(True), za0.clone().requires_grad_(True)
    groups = [{"params": [omega], "lr": config.lr_rotation},
              {"params": [t], "lr": config.lr_translation},
              {"params": [log_s], "lr": config.lr_scale},
              {"params": [zs], "lr": config.lr_shape}]
    if colors is not None:
        groups.append({"params": [za], "lr": config.lr_appearance})
    opt = torch.optim.Adam(groups)
    return _optimise(priors, points, colors, init, config, g, opt, R0, omega, t, log_s,
                     zs, za, zs0, za0, evidence)


def _optimise(priors, points, colors, init, config, g, opt, R0, omega, t, log_s, zs, za,
              zs0, za0, evidence=None) -> ObjectState:
    from geometry.so3 import so3_exp

    device = points.device
    surf = torch.zeros(0, 3, device=device)
    history = []
    for it in range(config.iterations):
        if it % config.reextract_every == 0:
            surf = octree_surface_points(_sdf_fn(priors, zs.detach()),
                                         depth=config.octree_depth, newton=1,
                                         max_points=config.surface_points, generator=g,
                                         max_cells=4 * config.surface_points, device=device)
        R = R0 @ so3_exp(omega)
        s = log_s.exp()
        loss = zs.new_zeros(())
        x_obs = ((points - t) @ R) / s
        f_obs = priors.sdf(zs, x_obs)
        cap = config.inlier_m
        if config.sdf_weight > 0:
            loss = loss + config.sdf_weight * (f_obs.abs() * s).clamp(max=cap).mean() / cap
        silhouette = evidence is not None and config.silhouette_weight > 0
        if (config.depth_weight > 0 or silhouette) and len(surf):
            with torch.enable_grad():
                xs = surf.detach().requires_grad_(True)
                fs = priors.sdf(zs.detach(), xs)
                (n,) = torch.autograd.grad(fs.sum(), xs)
            n = n / n.pow(2).sum(-1, keepdim=True).clamp_min(1e-8)
            on = surf - priors.sdf(zs, surf)[:, None] * n  # differentiable in zs
            posed = s * on @ R.T + t
            if config.depth_weight > 0:
                loss = loss + config.depth_weight * _nn_truncated(points, posed,
                                                                  cap).mean() / cap
            if silhouette:
                loss = loss + config.silhouette_weight * (
                    evidence.silhouette_cost(posed, config).mean() / config.silhouette_cap_px)
                if config.coverage_weight > 0:
                    loss = loss + config.coverage_weight * (
                        evidence.coverage_cost(posed, config).mean()
                        / config.silhouette_cap_px)
        if colors is not None and config.color_weight > 0:
            inl = (f_obs.detach().abs() * s.detach()) < 0.25 * cap
            if bool(inl.any()):
                rgb = priors.color(za, zs, x_obs[inl])
                loss = loss + config.color_weight * (rgb - colors[inl]).abs().mean()
        loss = loss + config.code_weight * ((zs - zs0).pow(2).sum() + (za - za0).pow(2).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    with torch.no_grad():
        R = R0 @ so3_exp(omega)
        s = float(log_s.exp())
        final = octree_surface_points(_sdf_fn(priors, zs.detach()), depth=SIZE_DEPTH,
                                      max_cells=50000, device=device)
        size = s * _extent(final) if len(final) else init.size
    return ObjectState(R=R.detach(), t=t.detach(), scale=s, z_shape=zs.detach(),
                       z_app=za.detach(), size=size, history=history)


def masked_points(depth: Tensor, rgb: Tensor | None, K: Tensor, mask: Tensor
                  ) -> tuple[Tensor, Tensor | None]:
    """Camera-frame points ``[N, 3]`` (and colours ``[N, 3]``) of the valid depth pixels
    inside ``mask [H, W]`` (pixel centres at ``+0.5``)."""
    sel = mask & (depth > 0)
    v, u = torch.nonzero(sel, as_tuple=True)
    z = depth[v, u].float()
    x = (u.float() + 0.5 - K[0, 2]) / K[0, 0] * z
    y = (v.float() + 0.5 - K[1, 2]) / K[1, 1] * z
    return torch.stack([x, y, z], -1), (rgb[v, u].float() if rgb is not None else None)


@torch.no_grad()
def shape_size(priors, z_shape: Tensor, scale: float, depth: int = 3) -> Tensor:
    """``[3]`` box extents (metres) of the decoded shape at ``scale``."""
    pts = octree_surface_points(_sdf_fn(priors, z_shape), depth=depth, max_cells=50000,
                                device=z_shape.device)
    if len(pts) == 0:
        return torch.zeros(3, device=z_shape.device)
    return scale * _extent(pts)


def _extent(pts: Tensor) -> Tensor:
    """``[3]`` extent of surface points between their 0.5 % and 99.5 % quantiles per axis
    (small stray blobs of a learned SDF do not inflate the box)."""
    pick = torch.randperm(len(pts))[:100000].to(pts.device)
    q = torch.quantile(pts[pick].float(), torch.tensor([0.005, 0.995], device=pts.device),
                       dim=0)
    return q[1] - q[0]
