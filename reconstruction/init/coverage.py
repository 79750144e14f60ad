"""Dense coverage of the training views: every pixel starts with a Gaussian at a plausible depth.

SfM and block stereo find no points on textureless surfaces (a white table, a plain wall),
so the initial cloud leaves holes in the training views, and 3DGS's densification only
splits Gaussians that exist: the holes stay black in held-out views. A learned point-map
initialiser (MASt3R, InstantSplat's) gives every pixel a point; without one we fill the
holes ourselves (:func:`fill_coverage`):

1. **coverage**: the initial Gaussians (isotropic, kNN-sized as
   :meth:`~reconstruction.gaussians.GaussianScene.from_points` makes them, but at most a
   seed's size: ``fill_scale`` blocks of ``fill_stride`` pixels) are rendered at full
   opacity into every training view; a pixel is *covered* where the alpha reaches
   ``coverage_alpha`` (a point projects within about a block of it), and its *observed
   depth* is the rendered expected depth there; pixels of the background colour (a black
   backdrop) need no Gaussian and count as covered;
2. **completion** (:func:`complete_depth`): the observed depth is propagated into the
   uncovered pixels, edge-aware and guided by the photo: a multi-scale push-pull in inverse
   depth (planes stay planes under it) whose upsampling is a joint-bilateral filter: a pixel
   takes the depth of the coarser cells whose *depth samples* have its colour;
3. **seeding**: the uncovered pixels are grouped in blocks of ``stride`` pixels (the stride
   grows so that at most ``max_points`` are seeded); each block gets one Gaussian at the mean
   of its uncovered pixels (position, completed depth, colour), its size the block's
   footprint, its opacity lower than the measured points';
4. **multi-view check** (:func:`free_space_violations`): a seeded point that another training
   view sees *in front of* what that view observes (by more than ``margin``) would hide an
   observed surface: it is pushed back along its ray until no view objects (the nearest
   depth consistent with every view's free space), or dropped.

Views are filled in order, each one seeing the seeds of the views before it as coverage, so
a hole seen by several views is filled once. Everything is deterministic (no random draws).
Pixel coordinates are gsplat's/COLMAP's: the first pixel's centre is ``(0.5, 0.5)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from reconstruction.init.config import InitConfig

#: Depth factors tried, in order, for a seed that violates another view's free space.
PUSH_BACK = (1.0, 1.1, 1.25, 1.5, 2.0, 3.0)


@dataclass
class CoverageFill:
    """Seeded Gaussians for the uncovered pixels, and the coverage before and after."""

    points: Tensor  # [F, 3] world
    colors: Tensor  # [F, 3] in [0, 1]
    scales: Tensor  # [F] isotropic standard deviations, world units
    coverage_before: list[float]  # V shares of covered pixels (initial cloud)
    coverage_after: list[float]  # V shares (initial cloud + seeds)
    stats: dict = field(default_factory=dict)
    scale_cap: Tensor | None = None
    """``[P]`` the largest standard deviation (world units) of each cloud point's Gaussian:
    a seed's size at the point's mean depth in the views (isolated points' kNN sizes would
    otherwise blur over the seeds). None: no cap."""


# ---------------------------------------------------------------------- rendering coverage


def render_coverage(means: Tensor, scales: Tensor, K: Tensor, T_cam_world: Tensor,
                    width: int, height: int) -> tuple[Tensor, Tensor]:
    """Isotropic Gaussians rendered at full opacity into one camera.

    Args:
        means: ``[N, 3]`` world centres.
        scales: ``[N]`` standard deviations (world units).
        K: ``[3, 3]`` intrinsics (pixels, corner at 0); ``T_cam_world``: ``[4, 4]``.

    Returns:
        ``alpha [H, W]`` and expected camera z ``[H, W]`` (0 where alpha is 0).
    """
    from reconstruction.splatting import rasterization

    if len(means) == 0:
        return torch.zeros(height, width), torch.zeros(height, width)
    n = len(means)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    depth, alpha, _ = rasterization(
        means.float().contiguous(), quats, scales.float()[:, None].expand(n, 3).contiguous(),
        torch.ones(n), torch.zeros(n, 1), T_cam_world.float()[None], K.float()[None],
        width, height, render_mode="ED")
    alpha = alpha[0, ..., 0]
    return alpha, torch.where(alpha > 0, depth[0, ..., 0], 0.0)


def knn_scales(points: Tensor) -> Tensor:
    """``[N]`` the standard deviations :meth:`GaussianScene.from_points` gives ``[N, 3]``
    points (RMS distance to the 3 nearest neighbours, clipped)."""
    from reconstruction.gaussians import GaussianScene

    if len(points) == 0:
        return torch.zeros(0)
    scene = GaussianScene.from_points(points.double(), torch.zeros(len(points), 3),
                                      sh_degree=0)
    return torch.exp(scene.log_scales[:, 0]).float()


# ---------------------------------------------------------------------- depth completion


def _pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 2, ceil_mode=True)


def complete_depth(depth: Tensor, known: Tensor, guide: Tensor, sigma_colour: float = 0.08,
                   sigma_space: float = 0.75, colour_floor: float = 1e-3) -> Tensor:
    """Edge-aware depth completion guided by an image.

    A push-pull pyramid in inverse depth (an affine function of the pixel on a plane): going
    down, each level averages the known inverse depths and the colours *of the pixels that
    have them*; going up, every pixel takes the weighted mean of the 3x3 coarser cells
    around it, weighted by distance (``sigma_space``, coarse cells) and by how close its
    colour is to each cell's depth samples' colour (``sigma_colour``, colour units), so depth
    spreads along surfaces of one colour rather than across edges. Cells that have depth
    samples of their own keep them in proportion to their share of known pixels.

    Args:
        depth: ``[H, W]`` camera z (read where ``known``).
        known: ``[H, W]`` bool.
        guide: ``[H, W, 3]`` image in [0, 1].

    Returns:
        ``[H, W]`` depth, equal to ``depth`` where known, filled elsewhere (zeros where
        nothing is known).
    """
    if not bool(known.any()):
        return torch.zeros_like(depth)
    if bool(known.all()):
        return depth.clone()
    m = known.double()[None, None]
    inv = torch.where(known, 1.0 / depth.double().clamp_min(1e-12), 0.0)[None, None]
    image = guide.double().permute(2, 0, 1)[None]
    # level l: (mean of q*m, mean of m, mean of colour*m, mean colour)
    levels = [(inv, m, image * m, image)]
    while True:
        q, w, c, g = levels[-1]
        if bool((w > 0).all()) or min(q.shape[-2:]) <= 1:
            break
        levels.append((_pool(q), _pool(w), _pool(c), _pool(g)))
    q, w, c, _ = levels[-1]
    some = w > 0
    mean_q = float(q.sum() / w.sum())
    mean_c = (c.sum((2, 3), keepdim=True) / w.sum()).expand_as(c)
    filled_q = torch.where(some, q / w.clamp_min(1e-12), mean_q)
    filled_c = torch.where(some, c / w.clamp_min(1e-12), mean_c)
    for q, w, c, g in reversed(levels[:-1]):
        up_q, up_c = _joint_bilateral_up(filled_q, filled_c, g, sigma_colour, sigma_space,
                                         colour_floor)
        own = w > 0
        blend = w.clamp(0, 1)
        own_q = torch.where(own, q / w.clamp_min(1e-12), 0.0)
        own_c = torch.where(own, c / w.clamp_min(1e-12), 0.0)
        filled_q = blend * own_q + (1 - blend) * up_q
        filled_c = blend * own_c + (1 - blend) * up_c
    out = 1.0 / filled_q[0, 0].clamp_min(1e-12)
    return torch.where(known, depth.double(), out).to(depth.dtype)


def _joint_bilateral_up(q: Tensor, c: Tensor, guide: Tensor, sigma_colour: float,
                        sigma_space: float, floor: float) -> tuple[Tensor, Tensor]:
    """Upsample coarse ``q [1, 1, h, w]`` and support colours ``c [1, 3, h, w]`` to the size
    of ``guide [1, 3, H, W]`` (``H = 2h`` or ``2h - 1``) with 3x3 joint-bilateral weights."""
    H, W = guide.shape[-2:]
    h, w = q.shape[-2:]
    qp = F.pad(q, (1, 1, 1, 1), mode="replicate")
    cp = F.pad(c, (1, 1, 1, 1), mode="replicate")
    ys = torch.arange(H, dtype=torch.float64)
    xs = torch.arange(W, dtype=torch.float64)
    py = torch.div(ys, 2, rounding_mode="floor").clamp_max(h - 1)
    px = torch.div(xs, 2, rounding_mode="floor").clamp_max(w - 1)
    fy, fx = (ys + 0.5) / 2 - 0.5, (xs + 0.5) / 2 - 0.5  # centres in coarse units
    num_q = torch.zeros(1, 1, H, W, dtype=torch.float64)
    num_c = torch.zeros(1, 3, H, W, dtype=torch.float64)
    den = torch.zeros(1, 1, H, W, dtype=torch.float64)
    for dy in (-1, 0, 1):
        ny = (py + dy).long() + 1
        wy = torch.exp(-((fy - (py + dy)) ** 2) / (2 * sigma_space**2))
        for dx in (-1, 0, 1):
            nx = (px + dx).long() + 1
            wx = torch.exp(-((fx - (px + dx)) ** 2) / (2 * sigma_space**2))
            qn = qp[:, :, ny[:, None], nx[None, :]]
            cn = cp[:, :, ny[:, None], nx[None, :]]
            d2 = ((guide - cn) ** 2).sum(1, keepdim=True)
            weight = (wy[:, None] * wx[None, :]) * (torch.exp(-d2 / (2 * sigma_colour**2))
                                                    + floor)
            num_q += weight * qn
            num_c += weight * cn
            den += weight
    return num_q / den, num_c / den


# ---------------------------------------------------------------------- multi-view check


def free_space_violations(points: Tensor, view: int, Ks: Tensor, T_cam_world: Tensor,
                          observed: Sequence[Tensor], margin: float) -> Tensor:
    """Which world points lie in another view's observed free space.

    Args:
        points: ``[P, 3]`` world points seeded from ``view``.
        Ks: ``[V, 3, 3]``; ``T_cam_world``: ``[V, 4, 4]``.
        observed: V x ``[H, W]`` observed camera z of each view (0: not observed).
        margin: relative depth tolerance.

    Returns:
        ``[P]`` bool: the point projects into some other view ``k`` in front of it, where
        ``k`` observes a surface, at a depth below ``(1 - margin)`` times that surface's.
    """
    bad = torch.zeros(len(points), dtype=torch.bool)
    pts = points.double()
    for k, depth_k in enumerate(observed):
        if k == view or not bool((depth_k > 0).any()):
            continue
        T = T_cam_world[k].double()
        cam = pts @ T[:3, :3].T + T[:3, 3]
        z = cam[:, 2]
        front = z > 1e-9
        K = Ks[k].double()
        u = cam[:, 0] / z.clamp_min(1e-9) * K[0, 0] + K[0, 2]
        v = cam[:, 1] / z.clamp_min(1e-9) * K[1, 1] + K[1, 2]
        h, w = depth_k.shape
        col, row = torch.floor(u).long(), torch.floor(v).long()
        inside = front & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        seen = torch.zeros(len(pts), dtype=torch.float64)
        seen[inside] = depth_k[row[inside], col[inside]].double()
        bad |= inside & (seen > 0) & (z < (1.0 - margin) * seen)
    return bad


# ---------------------------------------------------------------------- seeding


def _back_project(u: Tensor, v: Tensor, z: Tensor, K: Tensor, T_cam_world: Tensor) -> Tensor:
    """``[P, 3]`` world points of pixel positions ``u, v`` (corner at 0) at camera z."""
    K, T = K.double(), T_cam_world.double()
    pts_cam = torch.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)
    return (pts_cam - T[:3, 3]) @ T[:3, :3]  # R^T (p - t), row vectors


def _block_seeds(uncovered: Tensor, depth: Tensor, image: Tensor, stride: int
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One seed per ``stride`` block holding uncovered pixels: mean position ``u, v`` (pixel
    units, corner at 0), camera z (from the mean inverse depth) and colour ``[S, 3]``."""
    h, w = uncovered.shape
    m = uncovered.double()[None, None]
    us = (torch.arange(w, dtype=torch.float64) + 0.5)[None].expand(h, w)
    vs = (torch.arange(h, dtype=torch.float64) + 0.5)[:, None].expand(h, w)
    inv = 1.0 / depth.double().clamp_min(1e-12)
    stack = torch.stack([m[0, 0], us * m[0, 0], vs * m[0, 0], inv * m[0, 0],
                         *(image.double().permute(2, 0, 1) * m[0, 0])])[None]
    pooled = F.avg_pool2d(stack, stride, ceil_mode=True)[0]  # [7, bh, bw]
    frac = pooled[0]
    sel = frac > 0
    mean = pooled[:, sel] / frac[sel]
    return mean[1], mean[2], 1.0 / mean[3].clamp_min(1e-12), mean[4:].T.clamp(0, 1)


def fill_coverage(points: Tensor, images: Sequence[Tensor], Ks: Tensor, T_cam_world: Tensor,
                  config: InitConfig, seed_fill: bool = True,
                  background: Sequence[float] | None = None) -> CoverageFill:
    """Seed Gaussians where the initial cloud leaves training pixels uncovered (module doc).

    Args:
        points: ``[P, 3]`` the initial cloud (world).
        images: V x ``[H, W, 3]`` training photos in [0, 1].
        Ks: ``[V, 3, 3]`` (pixels, corner at 0); ``T_cam_world``: ``[V, 4, 4]``.
        config: ``fill_*`` and ``coverage_alpha`` options.
        seed_fill: False: only measure the coverage (no seeds).
        background: the colour rendered where there are no Gaussians: uncovered pixels
            within ``fill_background_tolerance`` of it (a black backdrop) need no seed and
            count as covered (None: every pixel needs a Gaussian).

    Returns:
        The seeds and the coverage of every view before and after them.
    """
    t0 = time.perf_counter()
    scales = knn_scales(points)
    V = len(images)
    alphas, observed, footprints = [], [], []
    for k, image in enumerate(images):
        h, w = image.shape[:2]
        # A point covers about a block around its pixel, however large its Gaussian (an
        # isolated point's kNN size spans tens of pixels: a blur, not a surface).
        z = points.double() @ T_cam_world[k, 2, :3].double() + float(T_cam_world[k, 2, 3])
        focal = float(Ks[k][0, 0] + Ks[k][1, 1]) / 2
        footprint = config.fill_scale * config.fill_stride * z.abs().float() / focal
        footprints.append(footprint)
        alpha, depth = render_coverage(points, torch.minimum(scales, footprint), Ks[k],
                                       T_cam_world[k], w, h)
        alphas.append(alpha)
        observed.append(torch.where(alpha >= config.coverage_alpha, depth, 0.0))
    explained = [torch.zeros(im.shape[:2], dtype=torch.bool) for im in images]
    if background is not None:
        colour = torch.tensor(list(background), dtype=torch.float32)
        explained = [(im.float() - colour).abs().max(-1).values
                     <= config.fill_background_tolerance for im in images]
    alphas = [torch.where(e, 1.0, a) for a, e in zip(alphas, explained, strict=True)]
    before = [float((a >= config.coverage_alpha).float().mean()) for a in alphas]
    empty = CoverageFill(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0), before,
                         list(before), {"fill_points": 0, "fill_rejected": 0,
                                        "fill_pushed_back": 0, "fill_stride": 0})
    cap = torch.stack(footprints).mean(0) if footprints else None
    empty.scale_cap = cap
    uncovered_total = sum(int((a < config.coverage_alpha).sum()) for a in alphas)
    if not seed_fill or uncovered_total == 0 or config.fill_max_points <= 0:
        empty.stats["fill_seconds"] = round(time.perf_counter() - t0, 3)
        return empty
    # The stride grows with the holes so that at most fill_max_points are seeded.
    stride = max(config.fill_stride,
                 math.ceil(math.sqrt(uncovered_total / config.fill_max_points)))
    seeds: list[tuple[Tensor, Tensor, Tensor]] = []
    rejected = pushed = 0
    for k, image in enumerate(images):
        h, w = image.shape[:2]
        alpha = alphas[k]
        if seeds:  # the seeds of earlier views cover part of this one
            prev = torch.cat([s[0] for s in seeds])
            prev_scales = torch.cat([s[2] for s in seeds])
            seed_alpha, _ = render_coverage(prev, prev_scales, Ks[k], T_cam_world[k], w, h)
            alpha = 1 - (1 - alpha) * (1 - seed_alpha)
        uncovered = alpha < config.coverage_alpha
        known = observed[k] > 0
        if not bool(uncovered.any()) or not bool(known.any()):
            continue
        depth = complete_depth(observed[k], known, image, config.fill_sigma_colour)
        u, v, z, colour = _block_seeds(uncovered, depth, image, stride)
        z_ok = torch.zeros(len(z), dtype=torch.float64)
        for factor in PUSH_BACK:  # the nearest depth no view's free space objects to
            todo = z_ok == 0
            if not bool(todo.any()):
                break
            idx = torch.nonzero(todo)[:, 0]
            pts = _back_project(u[idx], v[idx], z[idx] * factor, Ks[k], T_cam_world[k])
            ok = ~free_space_violations(pts, k, Ks, T_cam_world, observed,
                                        config.fill_margin)
            z_ok[idx[ok]] = z[idx[ok]] * factor
        keep = z_ok > 0
        pushed += int((keep & (z_ok > z * 1.0001)).sum())
        rejected += int((~keep).sum())
        if not bool(keep.any()):
            continue
        pts = _back_project(u[keep], v[keep], z_ok[keep], Ks[k], T_cam_world[k])
        # Footprint: fill_scale times the block size at the seed's depth.
        focal = float(Ks[k][0, 0] + Ks[k][1, 1]) / 2
        sigma = config.fill_scale * stride * z_ok[keep] / focal
        seeds.append((pts.float(), colour[keep].float(), sigma.float()))
    if not seeds:
        empty.stats.update(fill_rejected=rejected, fill_stride=stride,
                           fill_seconds=round(time.perf_counter() - t0, 3))
        return empty
    fill_points = torch.cat([s[0] for s in seeds])
    fill_colors = torch.cat([s[1] for s in seeds])
    fill_scales = torch.cat([s[2] for s in seeds])
    after = []
    for k, image in enumerate(images):
        h, w = image.shape[:2]
        seed_alpha, _ = render_coverage(fill_points, fill_scales, Ks[k], T_cam_world[k], w, h)
        alpha = 1 - (1 - alphas[k]) * (1 - seed_alpha)
        after.append(float((alpha >= config.coverage_alpha).float().mean()))
    stats = {"fill_points": int(len(fill_points)), "fill_rejected": rejected,
             "fill_pushed_back": pushed, "fill_stride": stride,
             "fill_seconds": round(time.perf_counter() - t0, 3)}
    assert len(after) == V
    return CoverageFill(fill_points, fill_colors, fill_scales, before, after, stats, cap)


def seeded_scene(scene, fill_points: Tensor, fill_colors: Tensor, fill_scales: Tensor,
                 opacity: float, scale_cap: Tensor | None = None):
    """``scene`` (a :class:`~reconstruction.gaussians.GaussianScene`) with isotropic Gaussians
    appended for the seeds (``[F, 3]`` points and colours, ``[F]`` scales) at ``opacity``;
    ``scale_cap`` (``[N]``, world units) bounds the sizes of the scene's own Gaussians."""
    from reconstruction.gaussians import GaussianScene
    from reconstruction.splatting.sh import rgb_to_sh

    if scale_cap is not None and len(scale_cap) == scene.num_gaussians:
        cap = torch.log(scale_cap.to(scene.log_scales.dtype).clamp_min(1e-9))[:, None]
        scene = GaussianScene(means=scene.means, quats=scene.quats,
                              log_scales=torch.minimum(scene.log_scales, cap),
                              logit_opacities=scene.logit_opacities, sh0=scene.sh0,
                              shN=scene.shN)
    n = len(fill_points)
    if n == 0:
        return scene
    dtype = scene.means.dtype
    quats = torch.zeros(n, 4, dtype=dtype)
    quats[:, 0] = 1.0
    logit = math.log(opacity / (1.0 - opacity))
    return GaussianScene(
        means=torch.cat([scene.means, fill_points.to(dtype)]),
        quats=torch.cat([scene.quats, quats]),
        log_scales=torch.cat([scene.log_scales, torch.log(fill_scales.to(dtype).clamp_min(
            1e-9))[:, None].expand(n, 3)]),
        logit_opacities=torch.cat([scene.logit_opacities, torch.full((n,), logit,
                                                                     dtype=dtype)]),
        sh0=torch.cat([scene.sh0, rgb_to_sh(fill_colors.to(dtype).clamp(0, 1))[:, None]]),
        shN=torch.cat([scene.shN, torch.zeros(n, *scene.shN.shape[1:], dtype=dtype)]))
