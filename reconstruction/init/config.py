"""Options of the coarse initialisers (light: imported by the CLI for --help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: Names of the initialisers in :data:`reconstruction.init.registry.INITIALISERS`.
InitName = Literal["sfm", "sfm-sparse"]


@dataclass
class SfmConfig:
    """Options of the sparse SfM stage."""

    match_max_size: int | None = 1600
    """Longest side (pixels) of the photos SIFT extraction and matching see: each photo is
    read again from its file at this size (or its own size, if smaller), whatever size the
    optimisation uses (--max-size), and the cameras and tracks are rescaled
    once to the optimisation size; a wide baseline that matches at 800 px does not at
    200 px. None: match the optimisation-sized images themselves."""
    retry: bool = True
    """When views stay unregistered, extract again with twice the features and a lower
    contrast threshold, match with a relaxed ratio test (0.9) and solve again."""
    mapper: Literal["auto", "incremental", "two-view"] = "auto"
    """Pose solver: COLMAP's incremental mapper, the two-view fallback, or the first then
    the second where the first registers too few views."""
    max_features: int = 8192
    """Most SIFT features per image."""
    affine_features: bool = True
    """Affine-adapted SIFT with domain-size pooling: slower, far more robust to wide baselines."""
    max_ratio: float = 0.85
    """Lowe's ratio test threshold of the matcher."""
    shared_intrinsics: Literal["auto", "yes", "no"] = "auto"
    """One camera for all views: auto = when all images have the same size and EXIF camera."""
    refine_focal: Literal["auto", "always", "never"] = "auto"
    """Bundle adjustment refines the focal length: auto = only when some photo has no EXIF
    focal (a few views at low resolution pull a good EXIF prior off by ~10 %)."""
    max_reprojection_error: float = 4.0
    """Pixels; observations further from their point's projection are dropped."""
    min_inliers: int = 15
    """Fewest verified matches that link two views."""
    threads: int = 2
    """CPU threads of COLMAP's feature extraction and matching (recon fit sets it from
    --threads). The photos are numbered in order before the extraction, so the result
    does not depend on it."""
    mapper_threads: int = 1
    """CPU threads of COLMAP's mapper (bundle adjustment). 1: the same cameras on every
    run; with more, its bundle adjustment gives slightly different cameras from run to
    run, and from DTU's three photos that decided between a 0.7 and a 137 degree fit for
    one seed. Mapping is a small share of the SfM time."""
    verbose: bool = False
    """Show COLMAP's log."""


@dataclass
class StereoConfig:
    """Options of the dense stereo stage."""

    neighbours: int = 2
    """Stereo partners per view (the best-overlapping registered views)."""
    min_shared_points: int = 10
    """Fewest sparse points two views must share to be paired."""
    block_size: int = 5
    """SGBM matching block (odd, pixels)."""
    max_disparities: int = 384
    """Widest disparity search (pixels); the range comes from the sparse points."""
    min_texture: float = 2.0
    """Grey-level standard deviation (of 255) a matching block needs."""
    lr_tolerance: float = 1.0
    """Pixels between the left and right disparity of a match."""
    depth_tolerance: float = 0.03
    """Relative depth difference under which two views see the same surface (stereo depth
    error grows with depth: a quarter pixel at 10 px disparity is already 2.5 %)."""
    depth_range_margin: float = 1.5
    """Depths beyond [z_near / m, z_far * m] of a pair's shared sparse points are dropped."""
    min_views: int = 2
    """Views whose depth maps must agree on a point (itself included)."""
    fill_stride: int = 4
    """Pixels that no fused point covers get a guessed point (the nearest covered depth) on
    a grid of this stride, so that textureless areas have splats to start from (0: off)."""
    fill_consistent: bool = True
    """Each guessed point then moves back along its ray to the depth the other views agree
    with best: no view may observe a surface behind it, and the views that see it should
    show its colour (reconstruction.init.stereo.consistent_depths). On DTU scan 24 (3 views,
    25 test views) held-out PSNR 14.08 -> 14.52 dB (the generated textureless scene: 27.64
    -> 27.61 dB); off, a black backdrop guessed at the building's depth floats over the
    table in other views."""
    fill_depth_range: tuple[float, float] = (1.0, 1.5)
    """Factors of the guessed depth tried (the guess is the nearest measured depth): only
    behind it (on DTU scan 24, trying nearer depths too cost 1.4 dB of held-out PSNR:
    white table guesses then float in front of the building in other views; up to 2x and
    4x: no better there, 0.3 dB worse on the generated textureless scene)."""
    fill_margin: float = 0.1
    """Relative depth tolerance of that check (in front of / behind an observed surface)."""
    fill_unseen_cost: float = 0.1
    """Cost (mean colour difference, RGB in [0, 1]) of a depth no other view sees ..."""
    fill_depth_prior: float = 0.03
    """... plus this per unit of |log(depth / guess)| (the guess wins ties) ..."""
    fill_window: int = 5
    """... the costs averaged over this many neighbouring guesses square (one pixel's
    colour alone matches many depths)."""
    max_points: int = 24_000
    """The fused cloud is voxel-averaged down to at most this many points ..."""
    points_per_pixel: float = 0.1
    """... and to at most this many per input pixel (CPU time grows with the count)."""


@dataclass
class InitConfig:
    """Options of the initialisers (each reads the parts it uses)."""

    sfm: SfmConfig = field(default_factory=SfmConfig)
    stereo: StereoConfig = field(default_factory=StereoConfig)
    fill_coverage: bool = True
    """After the initialiser, seed Gaussians on every training pixel its cloud leaves
    uncovered, at a depth completed from the covered pixels (edge-aware, guided by the
    photo) and checked against the other views (reconstruction.init.coverage);
    metrics.json reports the covered share before and after. The stereo stage's own
    nearest-depth guesses (--init-options.stereo.fill-stride) stay part of the cloud: with
    --init-options.stereo.fill-stride 0 the seeds replace them (on DTU scan 24 and a
    generated scene that lost 0.8 and 0.4 dB of held-out PSNR, so it is not the default)."""
    coverage_alpha: float = 0.5
    """A pixel is covered where the initial Gaussians, rendered at full opacity and at most
    a seed's size (below), reach this alpha (0.5: within about 1.2 standard deviations of a
    Gaussian's centre)."""
    fill_stride: int = 4
    """Side (pixels) of the blocks of uncovered pixels that get one seeded Gaussian each ..."""
    fill_max_points: int = 12_000
    """... grown so that at most this many are seeded over all views (CPU time grows with
    the count; 0: no seeds, the coverage is still measured)."""
    fill_scale: float = 0.6
    """Standard deviation of a seeded Gaussian, in blocks at its depth (0.6: neighbouring
    seeds overlap enough to cover their blocks' corners)."""
    fill_opacity: float = 0.3
    """Initial opacity of the seeded Gaussians (lower than the measured points': they are
    guesses that the optimisation may fade out)."""
    fill_sigma_colour: float = 0.08
    """Colour distance (RGB in [0, 1]) over which the depth completion stops trusting a
    depth sample of another colour (smaller: sharper depth edges at colour edges)."""
    fill_cap_scales: bool = False
    """Also cap the cloud's own Gaussians at a seed's size at their depth, so that isolated
    points' kNN sizes do not blur over the seeds (sharper start; on DTU scan 24 0.1 dB of
    held-out PSNR lower)."""
    fill_background_tolerance: float = 0.08
    """Uncovered pixels whose colour is within this (per channel) of the colour behind the
    Gaussians (--train.background; by default the photos' mean colour) get no seed and
    count as covered: the empty background already renders them."""
    fill_margin: float = 0.1
    """A seed that another view sees more than this share in front of the surface it
    observes there is pushed back along its ray (or dropped)."""
