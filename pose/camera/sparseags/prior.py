"""The optional generative prior of SparseAGS: score distillation from a 6-DoF Zero123.

SparseAGS (Zhao et al., NeurIPS 2024) adds score distillation sampling (SDS) from a Zero123
fine-tuned on relative 6-DoF cameras: random novel views of the Gaussians are rendered,
each is scored by the diffusion model conditioned on every input photo and on the camera
transform from that photo to the novel view, and the denoiser's correction flows back into
the Gaussians. The model, its checkpoint loader (the original LDM key names mapped onto
diffusers modules) and the loss live in :mod:`pose.camera.sparseags.zero123`; this module
holds the options (light to import, for the command line's help) and re-exports
:func:`load_prior`, :class:`Zero123Prior` and :class:`PriorLoss` lazily.

The prior is off by default (``pose sparseags --prior PATH`` turns it on). On the CPU a
full-size Zero123 costs seconds per SDS step; tests use a tiny model of the same layout.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

if typing.TYPE_CHECKING:
    from pose.camera.sparseags.zero123 import PriorLoss, Zero123Prior, load_prior

__all__ = ["PriorConfig", "PriorLoss", "Zero123Prior", "load_prior"]


@dataclass
class PriorConfig:
    """Score distillation from the 6-DoF Zero123 (used only with --prior PATH)."""

    weight: float = 1e-4
    """Weight of the distillation loss (summed over the latent, as the paper) relative to the
    photometric loss; the paper weighs it 1 to 10000 against its colour error."""
    guidance_scale: float = 5.0
    """Classifier-free guidance scale (the released code's 5)."""
    t_min: float = 0.02
    """Smallest diffusion time drawn, as a share of the 1000 training steps."""
    t_max: float = 0.98
    """Largest diffusion time drawn, as a share of the 1000 training steps."""
    anneal_timestep: bool = False
    """Lower the diffusion time with training progress instead of drawing it at random."""
    every: int = 1
    """Apply the prior on every this-many optimisation steps (it is slow on the CPU)."""
    start_fraction: float = 0.0
    """Share of the iterations before the prior starts."""
    batch_size: int = 1
    """Novel views rendered per application."""
    render_size: int = 128
    """Side of the square novel-view render in pixels (resized to the model's 256)."""
    elevation_margin: float = 60.0
    """Novel views lie up to this many degrees above the highest and below the lowest input
    view."""
    elevation_limit: float = 80.0
    """Novel views never go steeper than this many degrees above or below the horizon."""
    translation_scale: float = 1.85
    """Camera distance to the object the model was trained at (the paper's normalisation);
    the scene is scaled to it for the camera transform."""
    white_background: bool = True
    """Composite masked photos and renders on white, as the model was trained (needs masks;
    without masks the photos are used as they are)."""
    trust_checkpoint: bool = False
    """Allow a .ckpt file that stores Python objects besides the weights (reading it runs
    code from the file: only for files you trust)."""


def __getattr__(name: str):
    # The model code needs torch and diffusers; import it only when asked for.
    if name in ("PriorLoss", "Zero123Prior", "load_prior"):
        from pose.camera.sparseags import zero123

        return getattr(zero123, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
