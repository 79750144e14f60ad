"""``pose sparp``: camera poses of a few photos of an object from NOCS maps (light: for --help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from pose.camera.sparp.config import SparpData, SparpTrainConfig
from pose.camera.sparp.solver import SolverConfig


@dataclass
class SpaRPCommand:
    """Camera poses of 2-12 photos of one object from per-view NOCS maps (SpaRP's pose stage:
    PnP + RANSAC per view, robust refinement, symmetry hypotheses chosen across views).

    The NOCS maps are given (from a sensor pipeline or another network), or sampled for 2-6
    photos by a SpaRP model trained with 'pose sparp-train', which also generates six novel
    views around the first photo and fits splats to all views (SpaRP's 3D stage, optionally
    after a SparseAGS refinement of the cameras). Writes OUT/transforms.json and
    OUT/cameras/ (COLMAP text model), OUT/images/ (the photos), OUT/nocs/ (the NOCS maps as
    images, RGB = NOCS * 255), OUT/poses.json (per view: inliers, reprojection error,
    symmetry hypothesis, poses) and with a model OUT/generated/ and OUT/splats.ply.
    Translations are in NOCS units (the object's bounding-box diagonal = 1).
    """

    images: Path
    """Folder of the photos (JPEG/PNG), one per view."""
    out: Path
    """Output folder (replaced atomically when the run succeeds)."""
    nocs: Path | None = None
    """Folder of NOCS maps named like the photos: PNG (RGB = NOCS * 255, black =
    background) or .npy float [H, W, 3] in [0, 1] (zeros or NaN = background)."""
    checkpoint: Path | None = None
    """SpaRP model checkpoint written by 'pose sparp-train' (predicts the NOCS maps of 2-6 photos
    when --nocs is not given)."""
    steps: int = 10
    """DDIM steps of the model's sampling (models trained with the v-ddim objective; an
    x0-single-step model makes one deterministic pass)."""
    seed: int = 0
    """Seed of the sampling noise."""
    novel_views: bool = True
    """With --checkpoint: also generate the six novel views around the first photo (OUT/generated/,
    with their cameras)."""
    splats: bool = True
    """With --checkpoint: fit Gaussian splats to the inputs at their solved poses and the generated
    views at theirs (OUT/splats.ply, in the output's world frame)."""
    splat_iterations: int = 300
    """Optimisation steps of the splat fit."""
    refine: bool = False
    """With --checkpoint: refine the cameras of the inputs and generated views with SparseAGS
    (analysis by synthesis on the model's tiles) before the splat fit."""
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
    device: str = "cpu"
    """cpu, cuda or cuda:N (the model's sampling, the SparseAGS refinement and the splat
    fit)."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    quiet: bool = False
    """No stage lines."""
    solver: SolverConfig = field(default_factory=SolverConfig)

    def run(self) -> None:
        from geometry.threads import set_threads
        from pose.camera.sparp.run import run_command

        set_threads(self.threads)
        run_command(self)


@dataclass
class SpaRPTrain:
    """Fine-tune the small SpaRP model (Zero123++'s architecture with the domain switcher, in
    pixel space) on generated object sequences: NOCS maps of the input photos and six novel
    views around the first. The default objective, x0-single-step, trains the UNet to
    predict the tiles in one deterministic pass (single-step fine-tuning as in Garcia et al.
    2024 / Lotus); v-ddim is Zero123++'s v-prediction with DDIM sampling. Writes a
    checkpoint folder (model.safetensors, config.json, trainer_state.pt, history.json,
    loss.png) for 'pose sparp'. Under torchrun every process trains on its own batches
    (DDP: gloo on the CPU, NCCL on GPUs)."""

    out: Path
    """Checkpoint folder."""
    max_minutes: float | None = None
    """Stop after this many minutes of training (with a checkpoint)."""
    resume: bool = False
    """Continue the checkpoint in --out (same options)."""
    overwrite: bool = False
    """Replace a checkpoint already in --out."""
    tile: int = 32
    """Tile side in pixels (the model's inputs and outputs are 3 x 2 tiles)."""
    width: int = 16
    """Channels of the UNet's first level (doubled at the next two, quadrupled at a
    fourth)."""
    levels: Literal[3, 4] = 4
    """UNet levels; the attention sits at the lowest (1/4 or 1/8 of the resolution)."""
    objective: Literal["x0-single-step", "v-ddim"] = "x0-single-step"
    """x0-single-step: one deterministic UNet pass predicts the tiles (direct L1 loss on
    the NOCS maps, masked by the object, plus the mask); v-ddim: v-prediction at random
    timesteps, DDIM sampling."""
    device: str = "cpu"
    """cpu, cuda or cuda:N (under torchrun: one process per GPU)."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    quiet: bool = False
    """No progress bar or stage lines."""
    cache: Path | None = None
    """An .npz file that keeps the rendered objects (reused when the options match)."""
    train: Annotated[SparpTrainConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=SparpTrainConfig)
    data: SparpData = field(default_factory=SparpData)

    def run(self) -> None:
        from geometry.threads import set_threads
        from pose.camera.sparp.model import SparpModelConfig, small_unet_config
        from pose.camera.sparp.train import run_train

        set_threads(self.threads)
        model = SparpModelConfig(tile=self.tile, unet=small_unet_config(self.width, self.levels),
                                 encoder_width=self.width, objective=self.objective)
        run_train(self.out, model, self.train, self.data, max_minutes=self.max_minutes,
                  resume=self.resume, overwrite=self.overwrite, quiet=self.quiet,
                  cache=self.cache, device=self.device)
