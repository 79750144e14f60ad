"""SparseAGS end to end: joint refinement, outlier detection, correction, final rebuild.

:func:`run_sparseags` takes photos (optionally object masks) and initial cameras in any frame
and returns refined cameras in that frame, the final Gaussians and a per-view report.
Internally the world is normalised (the point nearest to the cameras' optical axes at the
origin, mean camera distance 1) and photos with masks are composited on black (the
Gaussians' background). Stages:

1. ``joint.rounds`` joint fits of all the views (:func:`~.joint.fit_joint`), each from
   scratch with the previous round's poses;
2. outlier detection (:func:`~.outliers.detect_outliers`);
3. each flagged view: the hypothesis search of :func:`~.correction.correct_outlier` against
   the inliers' 3D, then a brief refinement and its held-out score again; it is *corrected*
   when that score improved, and rejoins the reconstruction when it is also within
   ``accept_factor`` of the inliers' median held-out score;
4. ``final_rounds`` joint fits of the inliers and the rejoined views.

With feature matches (``matches``, :mod:`~.matches`), every fit adds the epipolar term, every
view score its epipolar cost, the correction ranks hypotheses by it too and also proposes
the matches' own best pose, and after the final fit every pose is polished on the matches
alone and the Gaussians are fitted again at those poses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pose.camera import CameraPoseResult
from pose.camera.sparseags.config import SparseAGSConfig
from pose.camera.sparseags.joint import Views, fit_joint
from pose.camera.sparseags.outliers import ViewScorer, detect_outliers, held_out_score

__all__ = ["SparseAGSRefiner", "SparseAGSResult", "ViewReport", "normalisation",
           "run_sparseags"]


@dataclass
class ViewReport:
    """What happened to one view (outliers.json)."""

    name: str
    score: float | None
    """Held-out score (lower is better; None: detection off)."""
    flagged: bool
    corrected: bool
    correction_deg: float
    """Rotation between the view's pose before and after the correction (0 if none)."""
    used_in_final: bool
    """Whether the final reconstruction used the view."""
    final_score: float
    """Score of the view rendered by the final reconstruction at its final pose."""
    rotation_change_deg: float
    """Rotation between the initial and the final pose."""
    score_after_correction: float | None = None

    def to_json(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v)
                for k, v in self.__dict__.items()}


@dataclass
class SparseAGSResult:
    """Refined cameras (the input frame), the final Gaussians and the reports."""

    cameras: object  # Cameras [V]
    scene: object  # GaussianScene in the input frame
    views: list[ViewReport]
    perceptual_kind: str
    """``lpips`` or ``1-ssim`` (no LPIPS weights given)."""
    timings_s: dict[str, float] = field(default_factory=dict)
    detection_rounds: list[dict] = field(default_factory=list)
    normalisation: dict = field(default_factory=dict)


def normalisation(T_world_cam: Tensor) -> tuple[Tensor, float]:
    """``(centre [3], scale)``: the point nearest (least squares) to the cameras' optical
    axes and one over the mean camera distance to it (normalised = scale * (x - centre))."""
    T = T_world_cam.double().cpu()
    centres, axes = T[:, :3, 3], T[:, :3, 2]
    eye = torch.eye(3, dtype=torch.float64)
    P = eye - axes[:, :, None] * axes[:, None, :]
    A, b = P.sum(0), (P @ centres[:, :, None]).sum(0)[:, 0]
    if len(T) < 2 or abs(float(torch.linalg.det(A))) < 1e-9:
        centre = centres.mean(0) + axes.mean(0)
    else:
        centre = torch.linalg.solve(A, b)
    distance = float((centres - centre).norm(dim=1).mean())
    return centre, 1.0 / distance if math.isfinite(distance) and distance > 0 else 1.0


def _to_normalised(T_world_cam: Tensor, centre: Tensor, scale: float) -> Tensor:
    T = T_world_cam.double().cpu().clone()
    T[:, :3, 3] = scale * (T[:, :3, 3] - centre)
    return T


def _from_normalised(T_world_cam: Tensor, centre: Tensor, scale: float) -> Tensor:
    T = T_world_cam.double().cpu().clone()
    T[:, :3, 3] = T[:, :3, 3] / scale + centre
    return T


def _scene_from_normalised(scene, centre: Tensor, scale: float):
    from reconstruction.gaussians import GaussianScene

    return GaussianScene(means=(scene.means.double() / scale + centre).float(),
                         quats=scene.quats, log_scales=scene.log_scales - math.log(scale),
                         logit_opacities=scene.logit_opacities, sh0=scene.sh0, shN=scene.shN)


def _align_gauge(T: Tensor, T_reference: Tensor, rows: list[int], scene):
    """``T [V, 4, 4]`` and the Gaussians moved by the rigid transform that best maps the
    poses of ``rows`` onto ``T_reference`` (rotation: chordal mean of the orientations;
    the view-dependent colour is not rotated: the drift is a few degrees)."""
    from geometry.sim3 import align_poses, apply_sim3_to_poses
    from geometry.so3 import matrix_to_quat, quat_multiply
    from reconstruction.gaussians import GaussianScene

    s, R, t = align_poses(T[rows], T_reference[rows], with_scale=False, mode="orientations")
    T_aligned = apply_sim3_to_poses(s, R, t, T)
    R32, t32 = R.float(), t.float()
    q = matrix_to_quat(R.double()).float().expand_as(scene.quats)
    moved = GaussianScene(means=scene.means @ R32.T + t32, quats=quat_multiply(q, scene.quats),
                          log_scales=scene.log_scales, logit_opacities=scene.logit_opacities,
                          sh0=scene.sh0, shN=scene.shN)
    return T_aligned.double(), moved


def _angle_deg(T_a: Tensor, T_b: Tensor) -> float:
    from geometry.so3 import rotation_angle

    return math.degrees(float(rotation_angle(T_a[:3, :3].double(), T_b[:3, :3].double())))


def _epipolar_cost(views: Views, k: int, inliers: list[int], T_world_cam: Tensor,
                   sigma: float) -> Callable[[Tensor], Tensor] | None:
    """View ``k``'s epipolar cost against the inliers as a function of its poses, or None
    when it shares no match with them."""
    if views.matches is None:
        return None
    from pose.camera.sparseags.matches import view_residual

    def cost(T_k: Tensor) -> Tensor:
        return view_residual(views.matches, k, inliers, views.Ks, T_world_cam, T_k, sigma)

    return cost if math.isfinite(float(cost(T_world_cam[k]))) else None


def _epipolar_proposal(views: Views, k: int, inliers: list[int], inlier_fit, model,
                       T_k: Tensor, config: SparseAGSConfig, scorer: ViewScorer, steps,
                       terms: dict[str, float], T_found: Tensor, say, epipolar_cost):
    """The render-and-compare search's pose and score (``terms``, ``T_found``), or the
    matches' own proposal where it scores better: the inlier cameras orbited about the up
    axis (5 degrees apart) plus the view's pose, ranked by the epipolar cost against the
    inliers and the best polished (:func:`~.matches.epipolar_search`), then held-out scored
    like the search's pose. ``epipolar_cost``: :func:`_epipolar_cost` of the view (None:
    it shares no match with the inliers, and the search's pose stands)."""
    from pose.camera.sparseags.correction import up_direction
    from pose.camera.sparseags.matches import epipolar_search, orbit_hypotheses

    if epipolar_cost is None:
        return terms, T_found
    up = up_direction(views.cameras(inlier_fit.T_world_cam, inliers))
    hypotheses = torch.cat((orbit_hypotheses(inlier_fit.T_world_cam[inliers], up),
                            T_k[None].double()))
    T_epi, cost = epipolar_search(views.matches, k, inliers, views.Ks, inlier_fit.T_world_cam,
                                  hypotheses, config.joint.epipolar_sigma)
    terms_epi, T_epi = held_out_score(inlier_fit, views, k, T_epi, scorer, config.outliers,
                                      config.joint.mask_weight, steps)
    say(f"{views.names[k]}: the matches' best of {len(hypotheses)} hypotheses (epipolar cost "
        f"{cost:.2f}) scores {terms_epi['score']:.3f}, the rendered search's {terms['score']:.3f}")
    if terms_epi["score"] < terms["score"]:
        return terms_epi, T_epi
    return terms, T_found


class _Steps:
    """Counts optimisation steps for a progress callback ``(done, total, stage)``."""

    def __init__(self, total: int, callback: Callable[[int, int, str], None] | None) -> None:
        self.done, self.total, self.stage, self.callback = 0, total, "", callback

    def set_stage(self, stage: str, extra_total: int = 0) -> None:
        self.stage = stage
        self.total = max(self.total, self.done + extra_total)
        if self.callback is not None:
            self.callback(self.done, self.total, stage)

    def __call__(self) -> None:
        self.done += 1
        self.total = max(self.total, self.done)
        if self.callback is not None:
            self.callback(self.done, self.total, self.stage)


def planned_steps(num_views: int, config: SparseAGSConfig) -> int:
    """An estimate of the optimisation steps of a run (for the progress bar)."""
    j, o = config.joint, config.outliers
    steps = (j.rounds + config.final_rounds) * j.iterations
    if o.detect and num_views - 1 >= o.min_views:
        steps += (1 + num_views) * (o.iterations + 0) + num_views * o.refine_iterations
    return steps


def run_sparseags(images: list[Tensor], cameras, config: SparseAGSConfig,
                  masks: list[Tensor] | None = None, lpips: torch.nn.Module | None = None,
                  prior=None, device: str | torch.device = "cpu",
                  progress: Callable[[int, int, str], None] | None = None,
                  log: Callable[[str], None] | None = None,
                  matches=None) -> SparseAGSResult:
    """Refine the cameras of ``V >= 3`` photos (see the module doc).

    Args:
        images: ``V x [H_v, W_v, 3]`` float in [0, 1].
        cameras: ``[V]`` initial :class:`~geometry.cameras.Cameras` sized like the images.
        config: every option.
        masks: optional ``V x [H_v, W_v]`` object masks (bool or [0, 1]).
        lpips: optional LPIPS network for the scores (else ``1 - SSIM``).
        prior: optional :class:`~pose.camera.sparseags.prior.Zero123Prior` (SDS in the
            joint and final fits).
        device: where the optimisations run.
        progress: called with ``(steps done, steps planned, stage)`` after every step.
        log: called with one line per finished stage.
        matches: optional :class:`~pose.camera.sparseags.matches.Matches` between the
            photos (:func:`~pose.camera.sparseags.matches.find_matches`): adds the epipolar
            terms to the fits, the scores and the correction's ranking.

    Returns:
        :class:`SparseAGSResult`.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    say = log if log is not None else (lambda message: None)
    v = len(images)
    if len(cameras) != v or (masks is not None and len(masks) != v):
        raise ValueError(f"{v} images need as many cameras (got {len(cameras)}) and masks")
    if v < 3:
        raise ValueError(f"SparseAGS needs at least 3 views, got {v}")
    T_input = cameras.T_world_cam.detach().double().cpu()
    centre, scale = normalisation(T_input)
    T = _to_normalised(T_input, centre, scale)
    float_masks = None if masks is None else [m.detach().float().cpu().reshape(
        im.shape[:2]).clamp(0, 1) for m, im in zip(masks, images, strict=True)]
    photos = [im.detach().float().cpu().clamp(0, 1) for im in images]
    if float_masks is not None:
        photos = [im * m[..., None] for im, m in zip(photos, float_masks, strict=True)]
    names = list(cameras.names) if cameras.names else [f"view {k}" for k in range(v)]
    if matches is not None and len(matches.sizes) != v:
        raise ValueError(f"matches are of {len(matches.sizes)} views, not {v}")
    views = Views(images=photos, masks=float_masks, Ks=cameras.K.detach().double().cpu(),
                  names=names, matches=matches if matches is not None and len(matches) else None)
    scorer = ViewScorer(config.outliers, lpips, config.joint.epipolar_sigma)
    steps = _Steps(planned_steps(v, config), progress)

    def prior_terms(rows: list[int], iterations: int) -> list:
        if prior is None:
            return []
        from pose.camera.sparseags.prior import PriorLoss

        return [PriorLoss(prior, config.sds, [views.images[k] for k in rows], iterations,
                          None if views.masks is None else [views.masks[k] for k in rows])]

    # 1. joint refinement of all the views
    t0 = time.perf_counter()
    for r in range(config.joint.rounds):
        steps.set_stage(f"joint round {r + 1}/{config.joint.rounds}", config.joint.iterations)
        fit = fit_joint(views, T, config.joint, seed=config.seed + r, device=device,
                        extra_terms=prior_terms(list(range(v)), config.joint.iterations),
                        on_step=steps)
        T = fit.T_world_cam
    timings["joint"] = time.perf_counter() - t0
    say(f"joint refinement: {config.joint.rounds} round(s) in {timings['joint']:.0f} s")

    # 2. outlier detection
    o = config.outliers
    flagged: list[int] = []
    held: dict[int, dict[str, float]] = {}
    rounds: list[dict] = []
    inliers = list(range(v))
    detection = None
    if o.detect and v - 1 >= o.min_views:
        t0 = time.perf_counter()
        steps.set_stage("outlier detection")
        detection = detect_outliers(views, T, config.joint, o, scorer, seed=config.seed,
                                    device=device, on_step=steps, log=say)
        flagged, held, inliers = detection.flagged, detection.held_out, detection.inliers
        T = T.clone()
        T[inliers] = detection.inlier_fit.T_world_cam[inliers]
        for k in flagged:
            T[k] = detection.held_out_poses[k]
        rounds = [dict(r.__dict__) for r in detection.rounds]
        for r in rounds:
            r["views"] = [names[k] for k in r["views"]]
            r["held_out"] = {names[k]: round(s, 6) for k, s in r["held_out"].items()}
            r["worst"] = names[r["worst"]]
        timings["detection"] = time.perf_counter() - t0

    # 3. correction of the flagged views
    corrected: dict[int, tuple[bool, float, float | None]] = {}
    rejoin: list[int] = []
    if flagged and o.correct:
        from pose.camera.sparseags.correction import correct_outlier

        t0 = time.perf_counter()
        inlier_fit = detection.inlier_fit
        model = inlier_fit.model(views)
        reference = sorted(held[k]["score"] for k in inliers if k in held)
        median = reference[len(reference) // 2] if reference else math.inf
        for k in flagged:
            steps.set_stage(f"correcting {names[k]}")
            w, h = views.size(k)
            epipolar = _epipolar_cost(views, k, inliers, inlier_fit.T_world_cam,
                                      config.joint.epipolar_sigma)
            result = correct_outlier(
                model, views.cameras(inlier_fit.T_world_cam, inliers), views.images[k],
                None if views.masks is None else views.masks[k], views.Ks[k], w, h,
                config.correction, 1.0, initial_T_world_cam=T[k], on_step=steps, lpips=lpips,
                epipolar=epipolar)
            terms, T_k = held_out_score(inlier_fit, views, k, result.T_world_cam, scorer, o,
                                        config.joint.mask_weight, steps)
            terms, T_k = _epipolar_proposal(views, k, inliers, inlier_fit, model, T[k], config,
                                            scorer, steps, terms, T_k, say, epipolar)
            better = terms["score"] < held[k]["score"]
            degrees = _angle_deg(T[k], T_k) if better else 0.0
            corrected[k] = (better, degrees, terms["score"])
            if better:
                T[k] = T_k
                if terms["score"] <= o.accept_factor * median:
                    rejoin.append(k)
            say(f"{names[k]}: {result.hypotheses} hypotheses in {result.seconds:.0f} s; "
                f"held-out score {held[k]['score']:.3f} -> {terms['score']:.3f} "
                + (f"(corrected by {degrees:.1f} degrees"
                   + (")" if k in rejoin else "; still too poor to rejoin)")
                   if better else "(kept its pose)"))
        timings["correction"] = time.perf_counter() - t0

    # 4. final reconstruction with the inliers and the corrected views
    used = sorted(set(inliers) | set(rejoin))
    t0 = time.perf_counter()
    fit = None
    for r in range(max(1, config.final_rounds)):
        steps.set_stage(f"final round {r + 1}", config.joint.iterations)
        fit = fit_joint(views, T, config.joint, seed=config.seed + 100 + r, rows=used,
                        device=device, extra_terms=prior_terms(used, config.joint.iterations),
                        on_step=steps)
        T = fit.T_world_cam
    if views.matches is not None and config.matching.polish_iterations > 0:
        # The matches take the relative rotations the last degrees; the Gaussians follow.
        from pose.camera.sparseags.matches import polish_poses

        steps.set_stage("polishing the poses on the matches", config.joint.iterations)
        T = polish_poses(views.matches, views.Ks, T, list(range(v)),
                         config.joint.epipolar_sigma, config.matching.polish_iterations,
                         config.matching.polish_trim)
        fit = fit_joint(views, T, config.joint, seed=config.seed + 200, rows=used,
                        optimise_poses=False, device=device, on_step=steps)
        say("polished the poses on the feature matches and refitted the Gaussians")
    timings["final"] = time.perf_counter() - t0
    # Every camera is free in the fits (the regulariser alone holds the gauge): undo the
    # rig's common drift, a rotation and shift that best maps the inliers' refined poses
    # onto their initial ones.
    T, scene = _align_gauge(T, _to_normalised(T_input, centre, scale),
                            [k for k in used if k not in flagged] or used, fit.scene)
    fit.scene, fit.T_world_cam = scene, T
    model = fit.model(views)
    reports = []
    for k in range(v):
        final = scorer.render_and_score(model, views, k, T[k])["score"]
        ok, degrees, after = corrected.get(k, (False, 0.0, None))
        reports.append(ViewReport(
            name=names[k], score=held[k]["score"] if k in held else None,
            flagged=k in flagged, corrected=ok, correction_deg=degrees,
            used_in_final=k in used, final_score=final,
            rotation_change_deg=_angle_deg(_to_normalised(T_input, centre, scale)[k], T[k]),
            score_after_correction=after))
    T_out = _from_normalised(T, centre, scale)
    from geometry.cameras import Cameras

    refined = Cameras(K=cameras.K, T_world_cam=T_out.to(cameras.T_world_cam.dtype),
                      width=cameras.width, height=cameras.height, dist=cameras.dist,
                      image_paths=cameras.image_paths, names=cameras.names)
    timings["total"] = time.perf_counter() - t_start
    return SparseAGSResult(
        cameras=refined, scene=_scene_from_normalised(scene, centre, scale),
        views=reports, perceptual_kind=scorer.perceptual_kind,
        timings_s={k: round(s, 3) for k, s in timings.items()}, detection_rounds=rounds,
        normalisation={"centre": centre.tolist(), "scale": scale})


class SparseAGSRefiner:
    """SparseAGS as a :class:`~pose.camera.CameraPoseEstimator` (needs initial cameras).

    The confidence of a view is ``1 - final score`` clamped to [0, 1].
    """

    def __init__(self, config: SparseAGSConfig | None = None,
                 lpips: torch.nn.Module | None = None, prior=None,
                 device: str | torch.device = "cpu") -> None:
        self.config = config if config is not None else SparseAGSConfig()
        self.lpips, self.prior, self.device = lpips, prior, device
        self.last_result: SparseAGSResult | None = None

    def estimate(self, images: list[Tensor], masks: list[Tensor] | None = None,
                 initial=None) -> CameraPoseResult:
        if initial is None:
            raise ValueError("SparseAGS refines cameras: give initial cameras")
        result = run_sparseags(images, initial, self.config, masks=masks, lpips=self.lpips,
                               prior=self.prior, device=self.device)
        self.last_result = result
        confidence = torch.tensor([1.0 - r.final_score for r in result.views],
                                  dtype=torch.float64).clamp(0.0, 1.0)
        return CameraPoseResult(cameras=result.cameras, confidence=confidence)
