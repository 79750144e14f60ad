"""``pose sparseags``: refine the cameras of a few photos by SparseAGS (light: for --help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pose.camera.sparseags.config import (
    CorrectionConfig,
    JointConfig,
    MatchConfig,
    OutlierConfig,
    PriorConfig,
    SparseAGSConfig,
)


@dataclass
class SparseAGSCommand:
    """Refine the camera poses of 3-12 photos of an object by analysis-by-synthesis
    (SparseAGS): joint 3D Gaussians + poses, outlier views detected and corrected.

    Writes OUT/transforms.json and OUT/cameras/ (COLMAP text model) with the refined cameras,
    OUT/images/ (the photos as the cameras see them), OUT/splats.ply, OUT/outliers.json
    (per view: score, flagged, corrected, correction in degrees) and OUT/metrics.json.
    """

    images: Path
    """Folder of the photos (JPEG/PNG)."""
    out: Path
    """Output folder (replaced atomically when the run succeeds)."""
    init_poses: Path | None = None
    """Initial cameras: a transforms.json or COLMAP model naming the photos (matched by file
    name, then stem)."""
    init: Literal["sfm"] | None = None
    """Start from our SfM initialiser instead of --init-poses."""
    masks: Path | None = None
    """Folder of object masks, one per photo with the photo's stem (white: object)."""
    max_size: int = 192
    """Shrink photos so their longest side is at most this many pixels."""
    prior: Path | None = None
    """6-DoF Zero123 checkpoint (file or diffusers folder): adds score distillation (slow on
    the CPU; off by default)."""
    lpips: Path | None = None
    """LPIPS weights (.pth/.safetensors, the full network) for the view scores; without it
    1 - SSIM is used (and outputs say so)."""
    lpips_backbone: Path | None = None
    """torchvision's AlexNet/VGG ImageNet weights, when --lpips holds only the linear heads."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    quiet: bool = False
    """No progress bar or stage lines."""
    overwrite: bool = False
    """Replace --out even when it is a non-empty folder this command did not write."""
    seed: int = 0
    """Seed of every random choice (runs are deterministic on the CPU for a thread count)."""
    final_rounds: int = 1
    """Fits with all the (corrected) views after the correction."""
    joint: JointConfig = field(default_factory=JointConfig)
    outliers: OutlierConfig = field(default_factory=OutlierConfig)
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    matching: MatchConfig = field(default_factory=MatchConfig)
    sds: PriorConfig = field(default_factory=PriorConfig)

    @property
    def config(self) -> SparseAGSConfig:
        """The options as one :class:`SparseAGSConfig`."""
        return SparseAGSConfig(joint=self.joint, outliers=self.outliers,
                               correction=self.correction, matching=self.matching,
                               sds=self.sds,
                               final_rounds=self.final_rounds, seed=self.seed)

    def run(self) -> None:
        from pose.camera.sparseags.run import run_command

        run_command(self)
