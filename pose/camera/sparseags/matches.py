"""Feature correspondences between the views, and the epipolar terms built on them.

Render-and-compare alone does not refine real, unmasked photos of a few views: the
Gaussians fitted to a handful of views bend to explain each view at its wrong pose (on
the CO3D apple, 8 views rotated by 10 degrees stay ~10 degrees off after the joint fits, and
the held-out landscape is nearly flat; see the README). Verified SIFT matches pin the
relative poses without a 3D model, so SparseAGS adds, where the photos match:

- to every joint fit, :class:`EpipolarLoss`: the robust Sampson (first-order geometric)
  distance of every match of every pair of used views under the current poses,
  ``weight * mean(log(1 + d^2 / sigma^2))`` (Cauchy), with ``sigma`` a share of the longest
  image side. Sampson's distance ignores the length of the baseline, so the photometric
  terms still set the scale, and Cauchy's tail keeps a grossly wrong view (a 90-degree
  outlier) from pulling the others (its matches then cost almost the same wherever it is);
- to the outlier scores and the correction's ranking, :func:`view_residual`: the same cost
  of one view's matches to a set of other views.

This follows SPARF (Truong et al., CVPR 2023), which adds a correspondence loss to the
joint pose and radiance-field optimisation of a few views; ours is the epipolar form
(no depth needed, so the sparse Gaussians' geometry cannot mislead it).

Matches come from :func:`find_matches` (COLMAP's SIFT, exhaustive matching and two-view
verification through pycolmap, the same calls as our SfM initialiser), at a larger size than
the optimisation images (keypoints are scaled to the views' pixels).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pose.camera.sparseags.config import MatchConfig
from reconstruction.engine.losses import LossTerm

__all__ = ["EpipolarLoss", "MatchConfig", "Matches", "epipolar_search", "find_matches",
           "orbit_hypotheses", "polish_poses", "sampson_sq", "view_residual"]


@dataclass
class Matches:
    """Verified matches of view pairs, in the views' pixels (corner-at-0 convention)."""

    pairs: list[tuple[int, int, Tensor, Tensor]] = field(default_factory=list)
    """``(i, j, x_i [M, 2], x_j [M, 2])`` float64, ``i < j``."""
    sizes: list[tuple[int, int]] = field(default_factory=list)
    """``(width, height)`` of each view the pixels refer to."""

    def __len__(self) -> int:
        return sum(len(x) for _, _, x, _ in self.pairs)

    def counts(self) -> dict[tuple[int, int], int]:
        return {(i, j): len(x) for i, j, x, _ in self.pairs}

    def subset(self, rows: Sequence[int]) -> list[tuple[int, int, Tensor, Tensor]]:
        """The pairs whose two views are both in ``rows``, renumbered to positions in it."""
        index = {k: n for n, k in enumerate(rows)}
        return [(index[i], index[j], a, b) for i, j, a, b in self.pairs
                if i in index and j in index]

    def sigma_px(self, scale: float) -> float:
        """``scale`` times the longest image side (pixels)."""
        return scale * max(max(w, h) for w, h in self.sizes)


def find_matches(images: Sequence, config: MatchConfig, seed: int = 0, threads: int = 2,
                 sizes: Sequence[tuple[int, int]] | None = None) -> Matches:
    """SIFT matches of every pair of ``images`` (:class:`~reconstruction.images.LoadedImage`,
    reloaded from their files at ``config.max_size`` where they have one), verified by
    two-view geometry, in the pixels of images of ``sizes`` (``(width, height)`` each;
    default the images' own)."""
    from reconstruction.init.config import SfmConfig
    from reconstruction.init.match_graph import read_match_graph
    from reconstruction.init.sfm import extract_and_match, matching_images

    sizes = [(im.width, im.height) for im in images] if sizes is None else list(sizes)
    big = matching_images(images, config.max_size)
    sfm = SfmConfig(match_max_size=config.max_size, affine_features=config.affine,
                    min_inliers=config.min_inliers, threads=threads)
    with tempfile.TemporaryDirectory(prefix="sparseags-matches-") as work:
        database = extract_and_match(big, Path(work), sfm, seed, {})
        graph = read_match_graph(database, len(big), config.min_inliers)
    scales = [np.array([w / b.width, h / b.height]) for (w, h), b in zip(sizes, big, strict=True)]
    pairs = []
    for (i, j), m in sorted(graph.matches.items()):
        # Keypoints are corner-at-0 pixels: they scale exactly with the image.
        pairs.append((i, j, torch.from_numpy(graph.keypoints[i][m[:, 0]] * scales[i]),
                      torch.from_numpy(graph.keypoints[j][m[:, 1]] * scales[j])))
    return Matches(pairs=pairs, sizes=sizes)


def _skew(t: Tensor) -> Tensor:
    zero = torch.zeros_like(t[..., 0])
    return torch.stack([torch.stack([zero, -t[..., 2], t[..., 1]], -1),
                        torch.stack([t[..., 2], zero, -t[..., 0]], -1),
                        torch.stack([-t[..., 1], t[..., 0], zero], -1)], -2)


def sampson_sq(x_i: Tensor, x_j: Tensor, K_i: Tensor, K_j: Tensor, T_cam_world_i: Tensor,
               T_cam_world_j: Tensor) -> Tensor:
    """Squared Sampson distances (pixels^2) of matches ``x_i [..., M, 2]`` <-> ``x_j`` under
    the poses ``T_cam_world [..., 4, 4]`` (leading dimensions broadcast: many poses of view
    ``i`` at once) and intrinsics ``K [3, 3]``; differentiable in the poses."""
    T_ji = T_cam_world_j @ torch.linalg.inv(T_cam_world_i)
    E = _skew(T_ji[..., :3, 3]) @ T_ji[..., :3, :3]
    F = torch.linalg.inv(K_j).transpose(-1, -2) @ E @ torch.linalg.inv(K_i)
    one = torch.ones_like(x_i[..., :1])
    hi, hj = torch.cat([x_i, one], -1), torch.cat([x_j, one], -1)
    # (F x_i) per match: [..., M, 3]; F^T x_j likewise.
    Fx = hi @ F.transpose(-1, -2)
    Ftx = hj @ F
    numerator = (hj * Fx).sum(-1) ** 2
    denominator = Fx[..., 0] ** 2 + Fx[..., 1] ** 2 + Ftx[..., 0] ** 2 + Ftx[..., 1] ** 2
    return numerator / denominator.clamp_min(1e-20)


def _cauchy(d2: Tensor, sigma: float) -> Tensor:
    return torch.log1p(d2 / sigma ** 2)


class EpipolarLoss(LossTerm):
    """``weight * mean Cauchy(Sampson^2 / sigma^2)`` over the matches of the fit's views
    (see the module doc); zero while the poses are frozen. ``rows``: the fit's views (their
    order is the trainer's). ``anneal``: sigma starts this many times larger and shrinks
    geometrically to its value over the fit (a wider basin first, graduated
    non-convexity); the loss is scaled by ``(sigma / sigma_final)^2`` so that it keeps its
    quadratic scale near zero."""

    def __init__(self, matches: Matches, rows: Sequence[int], Ks: Tensor, weight: float,
                 sigma_scale: float, anneal: float = 1.0) -> None:
        self.weight, self.anneal = weight, anneal
        self.sigma = matches.sigma_px(sigma_scale)
        rows = list(rows)
        self.pairs = [(i, j, a.float(), b.float()) for i, j, a, b in matches.subset(rows)]
        self.Ks = Ks[rows].float()
        self.count = sum(len(a) for _, _, a, _ in self.pairs)

    def __call__(self, trainer, view, image, alpha, meta, target) -> Tensor | float:
        if self.weight <= 0 or self.count == 0 or not trainer.config.optimise_poses:
            return 0.0
        T = trainer.viewmats()
        K = self.Ks.to(T.device)
        progress = min(1.0, trainer.iteration / max(1, trainer.config.iterations))
        sigma = self.sigma * self.anneal ** (1.0 - progress)
        # (times sigma^2 / sigma_final^2: the same scale of loss at every sigma)
        return self.weight * _pairs_cost(self.pairs, K, T, sigma) * (sigma / self.sigma) ** 2


def _pairs_cost(pairs, K: Tensor, T_cam_world: Tensor, sigma: float) -> Tensor:
    """Mean Cauchy cost of the matches of ``pairs`` (``(i, j, x_i, x_j)``, indices into
    ``K [V, 3, 3]`` and ``T_cam_world [V, 4, 4]``)."""
    total, count = 0.0, 0
    for i, j, a, b in pairs:
        d2 = sampson_sq(a.to(T_cam_world), b.to(T_cam_world), K[i], K[j], T_cam_world[i],
                        T_cam_world[j])
        total = total + _cauchy(d2, sigma).sum()
        count += len(a)
    return total / max(1, count)


def _within(matches: Matches, K: Tensor, T_cam_world: Tensor, pixels: float) -> Matches:
    """The matches whose Sampson distance at the views' ``T_cam_world [V, 4, 4]`` and
    ``K [V, 3, 3]`` is under ``pixels``."""
    pairs = []
    with torch.no_grad():
        for i, j, a, b in matches.pairs:
            keep = sampson_sq(a, b, K[i], K[j], T_cam_world[i], T_cam_world[j]) < pixels ** 2
            pairs.append((i, j, a[keep], b[keep]))
    return Matches(pairs=pairs, sizes=matches.sizes)


def _lbfgs_poses(pairs, K: Tensor, T_cam_world: Tensor, sigma: float,
                 iterations: int) -> Tensor:
    """``T_cam_world [N, 4, 4]`` (but the first) moved to the minimum of the mean Cauchy
    cost of ``pairs``: L-BFGS (strong Wolfe line search) on an SE(3) correction per view."""
    from geometry.se3 import se3_exp

    twist = torch.zeros(len(T_cam_world), 6, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([twist], lr=1.0, max_iter=iterations,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                                  tolerance_change=1e-15)

    def closure():
        optimiser.zero_grad()
        cost = _pairs_cost(pairs, K, se3_exp(twist) @ T_cam_world, sigma)
        cost.backward()
        twist.grad[0] = 0.0
        return cost

    optimiser.step(closure)
    with torch.no_grad():
        return se3_exp(twist) @ T_cam_world


def polish_poses(matches: Matches, Ks: Tensor, T_world_cam: Tensor, rows: Sequence[int],
                 sigma_scale: float, iterations: int = MatchConfig.polish_iterations,
                 trim: Sequence[float] = MatchConfig.polish_trim) -> Tensor:
    """``T_world_cam [V, 4, 4]`` with the poses of views ``rows`` (but the first, which
    holds the gauge) moved to the minimum of the epipolar cost of their matches: L-BFGS on
    an SE(3) correction per view, no rendering, ``iterations`` at most per round. Then one
    more round per entry of ``trim``, each on only the matches whose Sampson distance at the
    poses reached is under that many sigmas, as bundle adjustment drops observations that
    reproject far off.

    The joint fits' poses stop a few degrees short on real photos (the Gaussians of a few
    views bend to explain each view at its pose, so the photometric terms resist the last
    degrees); the matches take the relative rotations the rest of the way (CO3D apple:
    RRA@5 61-75 % -> 100 %). Run to convergence, all matches included, the wrong but
    verified ones set the optimum (DTU scan 24 from SfM: 1.62 -> 1.57 degrees); trimmed, it
    comes closer to the optimum of the right matches alone (1.19; 0.91 with an oracle's
    choice)."""
    from geometry.se3 import invert_T

    rows = list(rows)
    out = T_world_cam.detach().double().cpu().clone()
    local = Matches(pairs=[(i, j, a.double(), b.double()) for i, j, a, b
                           in matches.subset(rows)],
                    sizes=[matches.sizes[k] for k in rows])
    if len(rows) < 2 or iterations <= 0 or not local.pairs:
        return out
    T_cw = invert_T(out[rows])
    K = Ks[rows].double()
    sigma = matches.sigma_px(sigma_scale)
    for bound in (None, *trim):
        used = local if bound is None else _within(local, K, T_cw, bound * sigma)
        if not any(len(a) for _, _, a, _ in used.pairs):
            break
        T_cw = _lbfgs_poses(used.pairs, K, T_cw, sigma, iterations)
    out[rows] = invert_T(T_cw)
    return out


def view_residual(matches: Matches, k: int, others: Sequence[int], Ks: Tensor,
                  T_world_cam: Tensor, T_k: Tensor, sigma_scale: float) -> Tensor:
    """Mean Cauchy cost of view ``k``'s matches to the views ``others`` at poses
    ``T_world_cam [V, 4, 4]``, for each of the poses ``T_k [..., 4, 4]`` of view ``k``
    (``[...]``; NaN where view ``k`` has no match to any of ``others``); differentiable in
    ``T_k``."""
    from geometry.se3 import invert_T

    sigma = matches.sigma_px(sigma_scale)
    others = set(others) - {k}
    T_k = T_k.double()
    T_cw_k = invert_T(T_k)
    total = torch.zeros(T_k.shape[:-2], dtype=torch.float64)
    count = 0
    for i, j, a, b in matches.pairs:
        if i == k and j in others:
            d2 = sampson_sq(a, b, Ks[k].double(), Ks[j].double(), T_cw_k,
                            invert_T(T_world_cam[j].double()))
        elif j == k and i in others:
            d2 = sampson_sq(a, b, Ks[i].double(), Ks[k].double(),
                            invert_T(T_world_cam[i].double()), T_cw_k)
        else:
            continue
        total = total + _cauchy(d2, sigma).sum(-1)
        count += len(a)
    if count == 0:
        return torch.full(T_k.shape[:-2], float("nan"), dtype=torch.float64)
    return total / count


def epipolar_search(matches: Matches, k: int, others: Sequence[int], Ks: Tensor,
                    T_world_cam: Tensor, hypotheses: Tensor, sigma_scale: float,
                    keep: int = 3, steps: int = 200, lr: float = 2e-3) -> tuple[Tensor, float]:
    """The pose of view ``k`` that best fits its matches to the views ``others`` (fixed at
    ``T_world_cam [V, 4, 4]``), searched from ``hypotheses [N, 4, 4]`` (camera-to-world):
    the ``keep`` lowest-cost hypotheses are each polished by Adam on an SE(3) correction
    (``steps`` steps, no rendering) and the lowest cost seen wins; ``(pose [4, 4], cost)``.
    Cheap next to a render-and-compare search (the cost of 1,000 hypotheses is one batched
    evaluation), but it only sees the views ``k`` shares matches with."""
    from geometry.se3 import invert_T, se3_exp

    with torch.no_grad():
        costs = view_residual(matches, k, others, Ks, T_world_cam, hypotheses.double(),
                              sigma_scale)
    if not bool(torch.isfinite(costs).any()):
        raise ValueError(f"view {k} shares no match with the views {sorted(others)}")
    order = torch.argsort(torch.nan_to_num(costs, nan=math.inf))[:keep]
    best_T, best = hypotheses[order[0]].double().clone(), float(costs[order[0]])
    for index in order.tolist():
        T_cw0 = invert_T(hypotheses[index].double())
        twist = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.Adam([twist], lr=lr)
        for _ in range(steps):
            T = invert_T(se3_exp(twist) @ T_cw0)
            cost = view_residual(matches, k, others, Ks, T_world_cam, T, sigma_scale)
            if float(cost.detach()) < best:
                best, best_T = float(cost.detach()), T.detach().clone()
            optimiser.zero_grad()
            cost.backward()
            optimiser.step()
    return best_T, best


def orbit_hypotheses(T_world_cam: Tensor, up: Tensor, step_deg: float = 5.0) -> Tensor:
    """``[N * (A - 1), 4, 4]``: every pose of ``T_world_cam [N, 4, 4]`` (camera-to-world)
    orbited about the axis ``up [3]`` through the origin by each multiple of ``step_deg``
    but 0 (a copy of a partner's pose has no baseline, where every match fits). In the
    normalised world the origin is the point the cameras look at, so the hypotheses keep
    real elevations, rolls and aims, unlike look-at ones."""
    from geometry.so3 import axis_angle_to_matrix

    count = max(2, round(360.0 / step_deg))
    angles = torch.arange(1, count, dtype=torch.float64) * (2 * math.pi / count)
    R = axis_angle_to_matrix(up.double()[None] * angles[:, None])[:, None]  # [A, 1, 3, 3]
    T = T_world_cam.double()
    orbited = T[None].repeat(len(angles), 1, 1, 1)
    orbited[..., :3, :3] = R @ T[None, :, :3, :3]
    orbited[..., :3, 3] = (R @ T[None, :, :3, 3, None])[..., 0]
    return orbited.reshape(-1, 4, 4)
