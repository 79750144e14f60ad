"""Outlier detection: which views does the 3D built from the others fail to explain?

A view's *score* compares a render with its photo: a perceptual distance (LPIPS from local
weights, else ``1 - SSIM``, :class:`ViewScorer`) plus the mean absolute colour error over
the object (the mask and the rendered silhouette; the whole image without masks) plus, with
masks, the silhouette error ``mean |alpha - mask|``, plus, where the photos were matched, the
view's epipolar cost against the fit's other views (:func:`~.matches.view_residual`). Lower
is better.

:func:`detect_outliers` follows SparseAGS's rule. Starting with all the views ``S``: fit the
3D on ``S`` and take the mean score of its views; for each view ``i`` of ``S``, fit the 3D on
``S - {i}``, refine ``i``'s pose briefly against it and score ``i`` there (its *held-out
score*). The view with the worst held-out score is dropped when leaving it out lowers the
mean score of the remaining views by more than ``threshold`` (relative); then the search
repeats on the rest, up to ``max_rounds`` views and never below ``min_views``. With feature
matches, views whose held-out epipolar cost is under ``epipolar_consistent`` are never
dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pose.camera.sparseags.config import JointConfig, OutlierConfig
from pose.camera.sparseags.joint import FitResult, Views, fit_joint

__all__ = ["DetectionResult", "ViewScorer", "detect_outliers", "fit_scores", "held_out_score"]

#: Rendered opacity above which a pixel counts as the object's.
_ALPHA_OBJECT = 0.5


class ViewScorer:
    """Scores renders against photos (see the module doc).

    Args:
        config: the weights of the terms.
        lpips: an LPIPS network (:func:`reconstruction.eval.lpips.load_lpips`); None: the
            perceptual term is ``1 - SSIM`` (no weights are downloaded).
    """

    def __init__(self, config: OutlierConfig, lpips: torch.nn.Module | None = None,
                 epipolar_sigma: float = 0.0025) -> None:
        self.config, self.lpips, self.epipolar_sigma = config, lpips, epipolar_sigma

    @property
    def perceptual_kind(self) -> str:
        return "lpips" if self.lpips is not None else "1-ssim"

    @torch.no_grad()
    def __call__(self, rgb: Tensor, alpha: Tensor, photo: Tensor,
                 mask: Tensor | None) -> dict[str, float]:
        """The score of one render (``rgb [H, W, 3]``, ``alpha [H, W]``) of the view whose
        photo and mask are ``photo [H, W, 3]`` and ``mask [H, W]`` (or None)."""
        from reconstruction.engine.losses import ssim

        c = self.config
        rgb, photo = rgb.float().cpu().clamp(0, 1), photo.float().cpu()
        if self.lpips is not None:
            device = next(self.lpips.parameters()).device
            perceptual = float(self.lpips(rgb.to(device), photo.to(device)))
        else:
            perceptual = 1.0 - float(ssim(rgb, photo))
        error = (rgb - photo).abs().mean(-1)
        silhouette = 0.0
        if mask is not None:
            mask = mask.float().cpu()
            alpha = alpha.float().cpu()
            region = (mask > 0.5) | (alpha > _ALPHA_OBJECT)
            photometric = float(error[region].mean()) if bool(region.any()) else 0.0
            silhouette = float((alpha - mask).abs().mean())
        else:
            photometric = float(error.mean())
        score = c.lpips_weight * perceptual + c.photometric_weight * photometric \
            + c.silhouette_weight * silhouette
        return {"score": score, "perceptual": perceptual, "photometric": photometric,
                "silhouette": silhouette}

    def render_and_score(self, model, views: Views, k: int,
                         T_world_cam: Tensor) -> dict[str, float]:
        """Score view ``k`` rendered by ``model`` at ``T_world_cam [4, 4]``."""
        poses = torch.eye(4, dtype=torch.float64).repeat(len(views), 1, 1)
        poses[k] = T_world_cam.double().cpu()
        with torch.no_grad():
            out = model.render(views.cameras(poses, [k]), ("rgb", "alpha"))
        return self(out.rgb[0], out.alpha[0], views.images[k],
                    None if views.masks is None else views.masks[k])

    def score_in_fit(self, model, views: Views, k: int, T_k: Tensor, others: list[int],
                     T_world_cam: Tensor) -> dict[str, float]:
        """:meth:`render_and_score` of view ``k`` at ``T_k [4, 4]`` plus its epipolar cost
        against the views ``others`` at ``T_world_cam [V, 4, 4]`` (term ``epipolar``,
        weighted into the score) when the views were matched and share matches."""
        terms = self.render_and_score(model, views, k, T_k)
        if views.matches is None or self.config.epipolar_weight <= 0:
            return terms
        from pose.camera.sparseags.matches import view_residual

        cost = float(view_residual(views.matches, k, others, views.Ks, T_world_cam, T_k,
                                   self.epipolar_sigma))
        if not math.isfinite(cost):
            return terms
        return {**terms, "epipolar": cost,
                "score": terms["score"] + self.config.epipolar_weight * cost}


def fit_scores(fit: FitResult, views: Views, scorer: ViewScorer) -> dict[int, float]:
    """Score of every view a fit used, rendered at its refined pose (with its epipolar cost
    against the fit's other views, where the views were matched)."""
    model = fit.model(views)
    return {k: scorer.score_in_fit(model, views, k, fit.T_world_cam[k], fit.rows,
                                   fit.T_world_cam)["score"] for k in fit.rows}


def held_out_score(fit: FitResult, views: Views, k: int, T_world_cam: Tensor,
                   scorer: ViewScorer, config: OutlierConfig, mask_weight: float,
                   on_step: Callable[[], None] | None = None
                   ) -> tuple[dict[str, float], Tensor]:
    """Score of view ``k`` (not used by ``fit``) after refining its pose ``T_world_cam
    [4, 4]`` against the fit's 3D; ``(score terms, refined pose [4, 4] float64)``. With
    feature matches the score includes the epipolar cost, the pose is also refined on the
    matches alone, and the best-scoring of the unrefined and the two refined poses is
    kept."""
    from reconstruction.pose_opt import PoseOptConfig, optimise_poses

    model = fit.model(views)
    T = T_world_cam.double().cpu()
    if config.refine_iterations > 0:
        poses = torch.eye(4, dtype=torch.float64).repeat(len(views), 1, 1)
        poses[k] = T
        mask = None if views.masks is None else views.masks[k][None]
        result = optimise_poses(
            model, views.cameras(poses, [k]), views.images[k][None],
            PoseOptConfig(iterations=config.refine_iterations, lr_rotation=1e-2,
                          lr_translation=5e-3, coarse_fraction=0.5,
                          mask_weight=mask_weight if mask is not None else 0.0),
            scene_scale=1.0, masks=mask,
            on_step=None if on_step is None else (lambda step: on_step()))
        T = result.T_world_cam[0].double()
    terms = scorer.score_in_fit(model, views, k, T, fit.rows, fit.T_world_cam)
    if "epipolar" in terms:
        # The photometric refinement can leave the matches' geometry (on real photos it
        # moves a view a few degrees): the pose is also refined on the matches alone, from
        # where it started, and the best-scoring of the three poses is kept.
        from pose.camera.sparseags.matches import epipolar_search

        T0 = T_world_cam.double().cpu()
        T_epi, _ = epipolar_search(views.matches, k, fit.rows, views.Ks, fit.T_world_cam,
                                   T0[None], scorer.epipolar_sigma, keep=1,
                                   steps=config.refine_iterations * 3)
        for T_other in (T0, T_epi):
            other = scorer.score_in_fit(model, views, k, T_other, fit.rows, fit.T_world_cam)
            if other["score"] < terms["score"]:
                terms, T = other, T_other
    return terms, T


@dataclass
class RoundReport:
    """One detection round: the held-out scores and the decision."""

    views: list[int]
    held_out: dict[int, float]
    worst: int
    mean_before: float
    mean_without_worst: float
    improvement: float
    """Relative decrease of the mean score when the worst view is left out."""
    dropped: bool


@dataclass
class DetectionResult:
    """The outcome of :func:`detect_outliers`."""

    inliers: list[int]
    flagged: list[int]
    """Dropped views, in the order they were dropped."""
    held_out: dict[int, dict[str, float]]
    """Each view's held-out score terms from the first round (dropped views: from the round
    that dropped them)."""
    held_out_poses: dict[int, Tensor]
    """Each view's pose refined against the others' 3D (same round as ``held_out``)."""
    inlier_fit: FitResult
    """The 3D of the inliers (with their refined poses)."""
    rounds: list[RoundReport] = field(default_factory=list)


def detect_outliers(views: Views, T_world_cam: Tensor, joint: JointConfig,
                    config: OutlierConfig, scorer: ViewScorer, seed: int = 0,
                    device: str | torch.device = "cpu",
                    on_step: Callable[[], None] | None = None,
                    log: Callable[[str], None] | None = None) -> DetectionResult:
    """Leave-one-out detection (see the module doc).

    Args:
        views: the photos (normalised world); T_world_cam: ``[V, 4, 4]`` current poses.
        joint: options of the fits (their length is ``config.iterations``).
        config: the rule's threshold and limits, the pose refinement of held-out views.
        scorer: how renders are scored.
        seed: seed of the fits; device: where they run.
        on_step: called after every optimisation step; log: stage lines.
    """
    current = list(range(len(views)))
    T = T_world_cam.detach().double().cpu().clone()
    fit = fit_joint(views, T, joint, seed=seed, iterations=config.iterations, device=device,
                    on_step=on_step)
    mean_before = _mean(fit_scores(fit, views, scorer))
    held_out: dict[int, dict[str, float]] = {}
    poses: dict[int, Tensor] = {}
    flagged: list[int] = []
    rounds: list[RoundReport] = []
    for _ in range(config.max_rounds):
        if len(current) - 1 < max(config.min_views, 1):
            break
        results = {}
        for k in current:
            rest = [j for j in current if j != k]
            loo = fit_joint(views, fit.T_world_cam, joint, seed=seed, rows=rest,
                            iterations=config.iterations, device=device, on_step=on_step)
            terms, T_k = held_out_score(loo, views, k, fit.T_world_cam[k], scorer, config,
                                        joint.mask_weight, on_step)
            results[k] = (terms, T_k, loo, _mean(fit_scores(loo, views, scorer)))
        scores = {k: r[0]["score"] for k, r in results.items()}
        # Views whose matches agree with the others' poses are not candidates.
        candidates = {k: s for k, s in scores.items()
                      if results[k][0].get("epipolar", math.inf) >= config.epipolar_consistent}
        if not candidates:
            if log is not None:
                log("held-out scores: every view's feature matches agree with the others' "
                    "poses -> no outlier")
            break
        worst = max(candidates, key=candidates.get)
        mean_without = results[worst][3]
        improvement = (mean_before - mean_without) / mean_before if mean_before > 0 else 0.0
        dropped = improvement > config.threshold
        rounds.append(RoundReport(views=list(current), held_out=scores, worst=worst,
                                  mean_before=mean_before, mean_without_worst=mean_without,
                                  improvement=improvement, dropped=dropped))
        for k, r in results.items():
            if k not in held_out or (dropped and k == worst):
                held_out[k], poses[k] = r[0], r[1]
        if log is not None:
            listing = ", ".join(f"{views.names[k]} {s:.3f}" for k, s in scores.items())
            log(f"held-out scores: {listing}; leaving out {views.names[worst]} changes the "
                f"mean score of the others by {-100 * improvement:+.1f} % -> "
                + ("flagged" if dropped else "no outlier"))
        if not dropped:
            break
        flagged.append(worst)
        current = [j for j in current if j != worst]
        fit, mean_before = results[worst][2], mean_without
    return DetectionResult(inliers=current, flagged=flagged, held_out=held_out,
                           held_out_poses=poses, inlier_fit=fit, rounds=rounds)


def _mean(values: dict[int, float]) -> float:
    finite = [v for v in values.values() if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.inf
