"""Options of RDG-GS (light: imported for ``recon fit --help``).

The paper (Zhan et al., "RDG-GS: Relative Depth Guidance with Gaussian Splatting for
Real-time Sparse-View 3D Rendering", arXiv 2501.11102) does not give every weight and
patch size in what we could read of it; the values below are ours, chosen on the
procedural and synthetic scenes (not on the evaluation views) and documented per field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class RDGGSConfig:
    """RDG-GS options; each component has a switch for ablations."""

    depth_prior: Literal["auto", "init", "stereo", "fused", "mono", "files"] = "auto"
    """Source of the per-view depth priors: the coarse initialisation's cloud (init), two-view
    stereo between neighbouring views (stereo), stereo completed by the cloud (fused), a
    monocular network from --rdggs.mono-checkpoint (mono), depth maps from --rdggs.prior-dir
    (files); auto: mono when a checkpoint is given, else stereo."""
    # auto prefers stereo to the cloud: on the synthetic orbit scene stereo depths are 2-4.5 %
    # off after median scaling, the projected cloud's 7-15 % (it holds guessed fill points)
    prior_min_views: int = 2
    """Stereo priors keep a pixel only where at least this many training views' stereo
    depths agree with it (the multi-view check of MVS fusion; 1 keeps every two-view depth)."""
    # on the forward-facing development scene (seed 1) 2 takes the prior's AbsRel on the
    # pixels it keeps from 6-11 % to 3-6 % (coverage 53-80 % -> 49-74 %)
    prior_dir: Path | None = None
    """Folder of per-photo depth maps for --rdggs.depth-prior files: <photo stem>.npy,
    float [H, W] z-depth up to a scale and shift per view (a depth sensor's, or a depth
    network's run elsewhere), 0 or non-finite where unknown; resized to the photo if needed."""
    mono_checkpoint: Path | None = None
    """Local Depth-Anything/DPT state_dict (safetensors or .pth); never downloaded."""
    refine_prior: bool = True
    """Refine the coarse priors (scale/shift to sparse metric depth, global/local fill)."""
    relative_depth: bool = True
    """The patch-wise relative depth guidance losses."""
    adaptive_sampling: bool = True
    """Adaptive sampling that densifies sparse, slowly converging regions."""

    # ---------------------------------------------------------------- relative depth guidance
    patch_size: int = 16
    """Side of the square patches (pixels at full resolution, halved on the coarse level)
    over which rendered and prior depth are correlated."""
    local_weight: float = 0.02
    """Weight of the local term: mean over patches of 1 - Pearson(render, prior)."""
    # on a development scene (synthetic orbit, seed 3, not a benchmark scene) 0.1 / 0.05 /
    # 0.02 for the three terms cost 0.1 dB of held-out PSNR against these values for the
    # same depth error
    global_weight: float = 0.01
    """Weight of the global term: 1 - Pearson over all valid pixels of the view."""
    image_weight: float = 0.004
    """Weight of the depth-image patch term: depth gradients, divided by the patch's mean
    depth (scale-free), where the image patch is smooth (edge-aware)."""
    image_edge_gamma: float = 10.0
    """Sharpness of the image-gradient weight exp(-gamma |grad I|)."""
    min_valid_fraction: float = 0.5
    """Patches with fewer valid prior pixels than this share are skipped."""
    depth_decay: float = 0.5
    """The depth weights fall linearly to this share of their value by the last step (the
    prior matters most while the geometry forms)."""

    # ---------------------------------------------------------------- prior refinement
    local_sigma: float = 0.1
    """Width (share of the image diagonal) of the Gaussian that spreads the sparse-depth
    residuals into the local correction map."""
    max_local_correction: float = 0.2
    """The local correction changes a prior depth by at most this share."""
    fill_radius: int = 0
    """The depth losses use filled pixels only this close (pixels) to a measured one
    (-1: all); sampling may place Gaussians on any filled depth."""
    splat_radius: int = 1
    """Cloud points cover (2r + 1)^2 pixels when projected (closes gaps through which
    occluded points would show)."""
    visibility_tolerance: float = 0.05
    """SfM points more than this share behind the projected cloud are hidden in the view."""
    min_sparse_points: int = 8
    """Fewest sparse depths in a view for the scale/shift fit (else the prior is kept)."""

    # ---------------------------------------------------------------- adaptive sampling
    sample_tile: int = 16
    """Side of the tiles (full-resolution pixels) whose coverage and error are tracked."""
    sparse_alpha: float = 0.7
    """Tiles whose mean rendered opacity is below this are sparse."""
    slow_tiles: bool = False
    """Also sample tiles that converge slowly (below)."""
    # off by default: on the development scene they cost 0.15 dB of held-out PSNR for no
    # lower depth error
    slow_error_ratio: float = 2.0
    """Tiles whose L1 error is above this times the view's median tile error ..."""
    slow_progress: float = 0.9
    """... and fell by less than 1 - this since the last round converge slowly."""
    samples_per_tile: int = 4
    """New Gaussians per selected tile (on a regular grid inside it)."""
    max_sample_fraction: float = 0.03
    """At most this share of the current Gaussian count is added per round."""
    sample_opacity: float = 0.3
    """Opacity of the sampled Gaussians."""
