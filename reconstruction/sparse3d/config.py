"""Options of ``recon fit --method sparse3d`` (``--sparse3d.*``), of the controller's architecture
and of ``recon sparse3d train``. Light: imported for --help."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class Sparse3DConfig:
    """Sparse3D: score distillation from a diffusion model steered by epipolar features of
    the 2-3 posed input views (needs --poses), plus the reconstruction loss on the inputs."""

    diffusion: Path | None = None
    """Stable Diffusion 1.x: a local diffusers folder or one official .safetensors/.ckpt
    file. None: the controller checkpoint's built-in tiny model (CPU demonstration)."""
    controller: Path | None = None
    """Controller trained by `recon sparse3d train` (a folder). None with --diffusion: a
    fresh zero-initialised controller (the model then ignores the inputs); None without
    --diffusion: no distillation at all, the input views only (said in the log)."""
    prompt: str = ""
    """Category prompt for the model (e.g. "a photo of a hydrant"; needs the diffusers
    folder's tokenizer); C-SDS distils its direction against the empty prompt."""
    mode: Literal["sds", "csds"] = "sds"
    """sds (score distillation with guidance) or csds (category score distillation: the
    prompt's direction only, sharper detail)."""
    weight: float = 1e-4
    """Weight of the distillation loss (summed over the latent) against the photometric
    loss of the input view."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale over the prompt."""
    every: int = 1
    """Distil on every this-many optimisation steps."""
    start_fraction: float = 0.1
    """Share of the iterations fitted to the inputs alone before distillation starts."""
    render_size: int = 64
    """Side of the square novel-view render (512 for Stable Diffusion on a GPU)."""
    batch_size: int = 1
    """Novel views per distillation step."""
    elevation_margin_deg: float = 30.0
    """Novel views lie up to this many degrees above / below the inputs."""
    t_min: float = 0.02
    """Smallest diffusion time, as a share of the steps."""
    t_max: float = 0.98
    """Largest diffusion time, as a share of the steps."""
    anneal: bool = True
    """Lower the diffusion time with progress (high noise first)."""
    trust_checkpoint: bool = False
    """Allow a .ckpt that stores Python objects besides the weights (runs code from it)."""


@dataclass
class Sparse3DArchitecture:
    """Sizes of the controller."""

    feature_dim: int = 32
    """Channels of the input-view features."""
    control_channels: int = 32
    """Channels of the aggregated epipolar features (the ControlNet's conditioning)."""
    num_depths: int = 32
    """Depth bins per target ray."""
    depth_range: float = 0.6
    """Depth bins span ``r (1 - f)`` to ``r (1 + f)``, ``r`` the camera distance to the
    object centre and ``f`` this."""
    backbone: str = "tiny"
    """``tiny`` (built-in random pixel-space UNet, stored in the checkpoint) or
    ``external`` (a Stable Diffusion given with --diffusion)."""
    tiny_seed: int = 0
    """Seed of the tiny backbone."""


@dataclass
class SyntheticObjects:
    """Generated object scenes for training (orbit layout)."""

    num_scenes: int = 8
    views: int = 8
    """Views per scene (around an arc of ``arc_deg``)."""
    arc_deg: float = 120.0
    size: int = 32
    """Image side (square); the tiny backbone works in pixel space at this size."""
    num_objects: int = 3
    radius: float = 3.5
    elevation_deg: float = 30.0
    seed: int = 0
    """Seed of the first scene (scene k has seed + k)."""


@dataclass
class Sparse3DTrainOptions:
    """Optimisation options of the controller."""

    steps: int = 2000
    lr: float = 1e-3
    """Peak learning rate (AdamW; 1e-5 is ControlNet's for a real Stable Diffusion)."""
    inputs: int = 2
    """Input views per sample."""
    targets: int = 2
    """Target views per step (one scene per step)."""
    prompt: str = ""
    """Prompt of every sample (the category; empty: unconditional)."""
    log_every: int = 20
    seed: int = 0
