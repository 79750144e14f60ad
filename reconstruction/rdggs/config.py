"""Options of RDG-GS (light: imported for ``recon fit --help``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class RDGGSConfig:
    """RDG-GS options; each component has a switch for ablations."""

    depth_prior: Literal["auto", "init", "stereo", "mono"] = "auto"
    """Source of the per-view depth priors: the coarse initialisation's cloud (init), two-view
    stereo between neighbouring views (stereo), a monocular network from --mono-checkpoint
    (mono); auto: mono when a checkpoint is given, else init and stereo fused."""
    mono_checkpoint: Path | None = None
    """Local Depth-Anything/DPT state_dict (safetensors or .pth); never downloaded."""
    refine_prior: bool = True
    """Refine the coarse priors (scale/shift to sparse metric depth, global/local fill)."""
    relative_depth: bool = True
    """The patch-wise relative depth guidance losses."""
    adaptive_sampling: bool = True
    """Adaptive sampling that densifies sparse, slowly converging regions."""
