"""Options of ``recon fit`` common to every method, and of the Gaussian trainer (F-3DGO's
joint optimisation of Gaussians and poses). Light: imported for ``--help``.

A method's own options are a separate dataclass (its registry entry's ``options``), shown
by ``recon fit --method NAME --help`` as ``--NAME.*`` and handed to the method in
:attr:`FitConfig.options`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tyro

from reconstruction.init.config import InitConfig, InitName


@dataclass
class TrainConfig:
    """Options of the Gaussian trainer: joint Gaussian and pose optimisation (F-3DGO) and
    its densification."""

    iterations: tyro.conf.Suppress[int] = 250
    """Optimisation steps (one view each); set by ``recon fit`` (``--iterations``, else the
    default for the photo count, shortened by ``--time-budget``)."""
    sh_degree: int = 3
    """Highest SH degree, reached in equal steps over the iterations."""
    ssim_weight: float = 0.2
    """Weight of (1 - SSIM) against L1."""
    lr_means: float = 1.6e-4
    """Adam step of the centres at the start, times the scene scale (3DGS's value)."""
    lr_means_final: float = 1.6e-6
    """... decayed exponentially to this at the end."""
    lr_quats: float = 1e-3
    lr_scales: float = 5e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 1.25e-4
    optimise_poses: bool = True
    """Refine the camera poses jointly with the Gaussians."""
    lr_pose_translation: float = 1e-3
    """Adam step of the pose translations, times the scene scale."""
    lr_pose_rotation: float = 1e-3
    """Adam step of the pose rotations (radians)."""
    optimise_focal: bool = False
    """Refine the focal lengths jointly too (one log-scale per camera). Off by default: on
    the procedural scenes it moved a 0.7 % SfM focal error to 2.8 %."""
    lr_focal: float = 1e-3
    """Adam step of the log focal scale."""
    pose_reg_weight: float = 1e-2
    """Weight of the regulariser toward the initial poses."""
    coarse_fraction: float = 0.5
    """Share of the iterations rendered at --train.coarse-scale resolution."""
    coarse_scale: float = 0.5
    coarse_min_size: int = 160
    """No coarse level for photos whose coarse version would be smaller than this (px)."""
    refine_start: float = 0.1
    """Densification runs from this share of the iterations ..."""
    refine_stop: float = 0.6
    """... to this one ..."""
    refine_every: int = 50
    """... every this many iterations."""
    grad_threshold: float = 2e-4
    """Mean screen-space gradient (normalised by half the image size) that densifies."""
    dense_scale: float = 0.01
    """Gaussians larger than this times the scene scale are split, smaller ones cloned."""
    prune_opacity: float = 0.005
    """Gaussians more transparent than this are removed at each refinement."""
    max_gaussians: int = 60_000
    """Densification stops growing the scene beyond this count (CPU time grows with it)."""
    max_densify_fraction: float = 0.05
    """At most this share of the Gaussians is cloned or split in one round."""
    coverage_densify: bool = True
    """Each densification round also adds Gaussians where a training view's rendered alpha
    stays low (gradients only grow Gaussians that exist), at the rendered depth completed
    into the hole (reconstruction.engine.strategy)."""
    coverage_tile: int = 16
    """Side (pixels) of the tiles whose mean alpha is tested ..."""
    coverage_alpha: float = 0.7
    """... tiles whose mean alpha is below this ..."""
    coverage_min_error: float = 0.03
    """... and whose mean L1 error is at least this get new Gaussians (an empty region the
    background colour already matches gets none) ..."""
    coverage_samples_per_tile: int = 4
    """... this many, on a grid, at pixels whose own alpha is low."""
    coverage_max_fraction: float = 0.03
    """At most this share of the Gaussian count is added per round."""
    coverage_opacity: float = 0.3
    """Opacity of the added Gaussians."""
    coverage_margin: float = 0.1
    """A new Gaussian that another view sees more than this share in front of the surface
    it renders there is not added."""
    initial_opacity: float = 0.5
    """Opacity of the initial Gaussians (the dense init already covers the surfaces, so
    they start visible rather than at 3DGS's 0.1)."""
    checkpoint_every: int = 100
    """Write a resumable checkpoint every this many iterations (0: never)."""
    background: tuple[float, float, float] | None = None
    """Colour behind the Gaussians (also the one transparent images are composited on).
    None: the mean colour of the training photos (black where a photo has transparency),
    so that every pixel needs opaque Gaussians: over black, a dark surface can stay
    transparent and open holes in other views. What no photo saw renders as that colour."""
    max_rollbacks: int = 3
    """Non-finite losses tolerated (each halves the learning rates) before stopping."""


@dataclass
class FitConfig:
    """Fit a scene and camera poses to a folder of unposed photos (options of every method)."""

    images: Path
    """Folder of 2-12 overlapping JPEG/PNG photos of one scene."""
    out: Path
    """Output folder (replaced atomically when the run succeeds)."""
    iterations: int | None = None
    """Joint optimisation steps, one photo each (None: 83 per photo, at least 250, rounded
    up to 50: 250 for 2-3 photos, 950 for 11, 1000 for 12)."""
    time_budget: float | None = None
    """Seconds the whole run may take: after a few steps the step time is measured and the
    schedule shortened to fit (None: no limit)."""
    max_size: int | None = 512
    """Shrink photos so their longest side is at most this many pixels (None: keep)."""
    method: str = "instantsplat"
    """Reconstruction method (a name in :mod:`reconstruction.methods`)."""
    poses: Path | None = None
    """Known cameras (COLMAP model or transforms.json naming the photos): the initial cloud
    is triangulated with them, poses stay fixed and the outputs are in their frame. None:
    estimate the poses."""
    init: InitName = "sfm"
    """Coarse initialiser: sfm (SfM poses + stereo cloud) or sfm-sparse (SfM points only)."""
    device: str = "cpu"
    """cpu (the native rasterizer), cuda or cuda:N (gsplat on that GPU; needs the cuda
    extra)."""
    resume: bool = False
    """Continue from the checkpoint a previous interrupted run left beside OUT."""
    seed: int = 0
    """Seed of every random choice (runs are deterministic on CPU)."""
    focal_35mm: float | None = None
    """35 mm-equivalent focal length of the photos, where their EXIF lacks it."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation options."""
    init_options: InitConfig = field(default_factory=InitConfig)
    """Options of the initialisers."""
    threads: int | None = None
    """CPU threads (default: all cores). Results are deterministic for a given seed and
    thread count (large reductions are summed per thread). On a machine that other jobs
    keep busy, use 1: multi-threaded small tensor ops stall waiting for each other."""
    quiet: bool = False
    """No progress bar or stage lines."""
    overwrite: bool = False
    """Replace --out even when it is a non-empty folder that recon fit did not write (an
    earlier recon fit output is replaced without it)."""
    options: tyro.conf.Suppress[Any] = None
    """The method's own options (an instance of its ``options`` class; None: its defaults)."""
