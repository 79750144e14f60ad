"""Options of SparseAGS (light: imported for ``pose sparseags --help``).

:class:`SparseAGSConfig` groups the joint reconstruction (:class:`JointConfig`), the outlier
detection (:class:`OutlierConfig`), the outlier correction
(:class:`~pose.camera.sparseags.correction.CorrectionConfig`) and the optional generative
prior (:class:`~pose.camera.sparseags.prior.PriorConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pose.camera.sparseags.correction import CorrectionConfig
from pose.camera.sparseags.prior import PriorConfig

__all__ = ["CorrectionConfig", "JointConfig", "MatchConfig", "OutlierConfig", "PriorConfig",
           "SparseAGSConfig"]


@dataclass
class JointConfig:
    """Joint reconstruction of Gaussians and camera poses (one fit; each outer round rebuilds
    the Gaussians from scratch and keeps the refined poses)."""

    iterations: int = 320
    """Optimisation steps of one fit (one view each)."""
    rounds: int = 2
    """Outer rounds before outlier detection (each a fit from scratch)."""
    num_points: int = 4000
    """Initial Gaussians, drawn in a ball about the scene centre (carved by the masks)."""
    sh_degree: int = 1
    """Highest SH degree of the Gaussians."""
    max_gaussians: int = 20_000
    """Densification stops growing the scene beyond this count."""
    lr_means: float = 1.6e-4
    """Adam step of the Gaussian centres at the start (times the mean camera distance),
    decayed to a hundredth."""
    lr_pose_rotation: float = 4e-3
    """Adam step of the pose rotations (radians)."""
    lr_pose_translation: float = 2e-3
    """Adam step of the pose translations, times the mean camera distance."""
    pose_reg_weight: float = 1e-3
    """Weight of the regulariser toward the round's initial poses."""
    rgb_weight: float = 1.0
    """Weight of the photometric loss (0.8 L1 + 0.2 (1 - SSIM)) at full strength."""
    mask_weight: float = 1.0
    """Weight of the silhouette loss mean |alpha - mask| at full strength (with masks)."""
    ramp_start: float = 0.2
    """Share of the full loss weights at the first step; they rise linearly ..."""
    ramp_fraction: float = 0.5
    """... to full strength at this share of the iterations (the paper's warm-up)."""
    pose_warmup: float = 0.3
    """Share of the iterations with the poses frozen (the Gaussians take shape first)."""
    ball_radius: float = 0.5
    """Radius of the initial ball, in units of the mean camera distance, before the field of
    view caps it."""
    background_share: float = 0.5
    """Without masks: share of the initial Gaussians drawn on the photos' rays at random
    depths (the background must be modelled too)."""
    ray_near: float = 0.4
    """Nearest depth of those, in units of the mean camera distance ..."""
    ray_far: float = 3.0
    """... and the farthest."""
    epipolar_weight: float = 1.0
    """Weight of the epipolar term of the feature matches (:mod:`~.matches`; used only when
    the photos were matched)."""
    epipolar_sigma: float = 0.0025
    """Scale of its robust (Cauchy) cost, as a share of the longest image side (0.3 pixels
    at 128: a degree of rotation moves points by about a pixel there)."""
    epipolar_anneal: float = 1.0
    """The scale starts this many times larger in each fit and shrinks to its value."""


@dataclass
class OutlierConfig:
    """Outlier detection: each view is scored by how well the 3D built from the others
    explains it (after a brief pose refinement against it)."""

    detect: bool = True
    """Look for outlier views (off: joint refinement only)."""
    correct: bool = True
    """Correct the flagged views by the hypothesis search (off: the paper's ablation,
    flagged views are left out of the final reconstruction)."""
    iterations: int = 240
    """Steps of each leave-one-out fit."""
    refine_iterations: int = 40
    """Pose-refinement steps of the held-out view against the others' 3D."""
    threshold: float = 0.05
    """A view is dropped when leaving it out lowers the mean score of the remaining views
    by more than this share."""
    max_rounds: int = 2
    """At most this many views are dropped (one per round)."""
    min_views: int = 3
    """Never drop below this many views."""
    accept_factor: float = 1.5
    """A corrected view rejoins the reconstruction when its held-out score is at most this
    times the inliers' median held-out score."""
    lpips_weight: float = 1.0
    """Weight of LPIPS (or 1 - SSIM without LPIPS weights) in a view's score."""
    photometric_weight: float = 1.0
    """Weight of the masked mean absolute colour error in a view's score."""
    silhouette_weight: float = 1.0
    """Weight of mean |alpha - mask| in a view's score (with masks)."""
    epipolar_weight: float = 0.3
    """Weight of the view's epipolar cost against the other views of the fit in its score
    (with feature matches; the cost is about 0.2 for a view within a degree, 3-7 for one
    far off): on real photos it decides more reliably than the photometric terms."""
    epipolar_consistent: float = 1.0
    """With feature matches, a view whose held-out epipolar cost is below this is never
    dropped: its matches agree with the others' poses (a typical match within about 1.3
    sigma), whatever the photometric terms say (views that overlap little with the others
    are explained poorly by them; every view dropped also makes the rest easier to fit)."""


@dataclass
class MatchConfig:
    """Feature matching between the views (for the epipolar terms)."""

    enabled: bool = True
    """Match the photos and add the epipolar terms (off: render-and-compare only, as the
    paper). Real photos without masks need it (see the README)."""
    max_size: int = 1600
    """Longest side the photos are matched at (never above their own size)."""
    affine: bool = True
    """Affine-covariant SIFT (more matches across wide baselines and slanted surfaces)."""
    min_inliers: int = 15
    """Pairs with fewer verified matches are ignored."""
    polish_iterations: int = 300
    """L-BFGS iterations per round of the final pose polish on the matches alone (then the
    Gaussians are fitted again at the polished poses); 0: none."""
    polish_trim: tuple[float, ...] = (3.0, 1.5)
    """After the first round of the polish, one more per entry, each on only the matches
    whose Sampson distance is under that many sigmas (``joint.epipolar_sigma``) at the poses
    reached: wrong but verified matches otherwise set the optimum."""


@dataclass
class SparseAGSConfig:
    """Options of SparseAGS (joint reconstruction, outlier detection and correction)."""

    joint: JointConfig = field(default_factory=JointConfig)
    outliers: OutlierConfig = field(default_factory=OutlierConfig)
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    matching: MatchConfig = field(default_factory=MatchConfig)
    """Feature matches between the photos (the epipolar terms)."""
    sds: PriorConfig = field(default_factory=PriorConfig)
    """The generative prior (score distillation; used only with a prior checkpoint)."""
    final_rounds: int = 1
    """Fits with all (corrected) views after the correction."""
    seed: int = 0
    """Seed of every random choice (runs are deterministic on the CPU)."""
