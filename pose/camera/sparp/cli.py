"""``pose sparp``: camera poses of a few photos of an object from NOCS maps (light: for --help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pose.camera.sparp.solver import SolverConfig


@dataclass
class SpaRPCommand:
    """Camera poses of 2-12 photos of one object from per-view NOCS maps (SpaRP's pose stage:
    PnP + RANSAC per view, robust refinement, symmetry hypotheses chosen across views).

    The NOCS maps are given (from a sensor pipeline or another network); SpaRP's diffusion
    model, which predicts them from the photos, needs its checkpoint. Writes
    OUT/transforms.json and OUT/cameras/ (COLMAP text model), OUT/images/ (the photos),
    OUT/nocs/ (the NOCS maps as images, RGB = NOCS * 255) and OUT/poses.json (per view:
    inliers, reprojection error, symmetry hypothesis, poses). Translations are in NOCS
    units (the object's bounding-box diagonal = 1).
    """

    images: Path
    """Folder of the photos (JPEG/PNG), one per view."""
    out: Path
    """Output folder (replaced atomically when the run succeeds)."""
    nocs: Path | None = None
    """Folder of NOCS maps named like the photos: PNG (RGB = NOCS * 255, black =
    background) or .npy float [H, W, 3] in [0, 1] (zeros or NaN = background)."""
    checkpoint: Path | None = None
    """SpaRP diffusion checkpoint (predicts the NOCS maps when --nocs is not given)."""
    fov_deg: float = 50.0
    """Field of view across the longer image side, when --intrinsics is not given."""
    intrinsics: Path | None = None
    """Intrinsics of the photos: a transforms.json or COLMAP model naming them (their poses
    are ignored)."""
    symmetry: str = "none"
    """The object's rotational symmetry: none, axis (continuous about the NOCS z axis), or
    an axis letter and order such as z2, z4."""
    frame: Literal["first", "object"] = "first"
    """World frame of the outputs: the first photo's camera, or the object (NOCS) frame."""
    overwrite: bool = False
    """Replace --out even when it is a non-empty folder this command did not write."""
    quiet: bool = False
    """No stage lines."""
    solver: SolverConfig = field(default_factory=SolverConfig)

    def run(self) -> None:
        from pose.camera.sparp.run import run_command

        run_command(self)
