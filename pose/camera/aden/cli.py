"""``pose aden train|predict|eval``: the command dataclasses (tyro). Heavy modules are
imported inside ``run`` so that ``pose --help`` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Union

import tyro

from geometry.threads import set_threads
from pose.camera.aden.config import AdenConfig, AdenTrainConfig, Selection, SynthData


@dataclass
class AdenTrain:
    """Train ADen (or a baseline: --model.mode regression|grid) on synthetic object sequences
    or CO3D; writes a checkpoint folder. Under torchrun every process trains on its own
    batches (DDP)."""

    out: Path
    """Checkpoint folder (model.safetensors, config.json, trainer_state.pt, history.json,
    loss.png)."""
    synthetic: bool = False
    """Train on procedural object sequences."""
    co3d: Path | None = None
    """A CO3D sequence folder (images + gt_cameras.npz) or a folder of them."""
    max_minutes: float | None = None
    """Stop after this many minutes (with a checkpoint)."""
    resume: bool = False
    """Continue the checkpoint in --out (same options)."""
    overwrite: bool = False
    """Replace a checkpoint already in --out."""
    device: str = "cpu"
    """cpu, cuda or cuda:N (under torchrun: one process per GPU)."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    quiet: bool = False
    """No progress output."""
    model: AdenConfig = field(default_factory=AdenConfig)
    train: Annotated[AdenTrainConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=AdenTrainConfig)
    synth: SynthData = field(default_factory=SynthData)

    def run(self) -> None:
        from pose.camera.aden.train import run_train

        set_threads(self.threads)
        run_train(self.out, self.synthetic, self.co3d, self.model, self.train, self.synth,
                  max_minutes=self.max_minutes, resume=self.resume,
                  overwrite=self.overwrite, quiet=self.quiet, device=self.device)


@dataclass
class AdenPredict:
    """Estimate the cameras of 2-8 photos of one object: writes OUT/transforms.json,
    OUT/sparse/0/ (COLMAP text) and OUT/scores.json."""

    checkpoint: Path
    """Checkpoint folder written by 'pose aden train'."""
    images: Path
    """Folder of the photos (all of one size)."""
    out: Path
    """Output folder."""
    seed: int = 0
    """Seed of the hypotheses' noise."""
    select: Selection = "argmax"
    """How ADen picks each view's pose among its hypotheses: argmax (the paper's: the one the
    discriminator scores highest) or mean (their chordal mean: the centre of the generated
    density, without the discriminator)."""
    mirror_views: bool = False
    """Also estimate from the photos mirrored left-right and average the two estimates
    (twice the inference time; +2 to +3 points Acc@15 on held-out generated objects)."""
    overwrite: bool = False
    """Replace a non-empty --out that an earlier 'pose aden predict' did not write."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    quiet: bool = False
    """No progress output."""

    def run(self) -> None:
        from pose.camera.aden.predict import run_predict

        set_threads(self.threads)
        run_predict(self.checkpoint, self.images, self.out, self.seed, quiet=self.quiet,
                    overwrite=self.overwrite, device=self.device, select=self.select,
                    mirror_views=self.mirror_views)


@dataclass
class AdenEval:
    """Evaluate a checkpoint (RelPose++ protocol): RRA@5/15/30 and CC@10 per view count,
    written to OUT/metrics.json and printed."""

    checkpoint: Path
    """Checkpoint folder written by 'pose aden train'."""
    out: Path
    """Output folder (metrics.json)."""
    synthetic: bool = False
    """Evaluate on held-out procedural object sequences (--seed)."""
    co3d: Path | None = None
    """A CO3D sequence folder or a folder of them."""
    seed: int = 1000
    """Seed of the synthetic sequences and of the view orders."""
    sequences: int = 100
    """Synthetic sequences."""
    frames: int = 8
    """Views per synthetic sequence (at least the largest view count)."""
    view_counts: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    """View counts to evaluate."""
    supersample: int = 1
    """Colour rays per pixel along each axis of the synthetic views."""
    cache: str | None = None
    """Folder caching the rendered evaluation sequences."""
    workers: int = 0
    """Rendering processes (0: this one)."""
    background: bool = True
    """Textured ground and sky behind the synthetic objects (else a plain backdrop)."""
    sets_per_sequence: int = 1
    """View sets drawn from each sequence (random orders of its frames): more pairs from a
    few long CO3D sequences."""
    select: Selection = "argmax"
    """How ADen picks each view's pose among its hypotheses: argmax (the paper's: the one the
    discriminator scores highest) or mean (their chordal mean: the centre of the generated
    density, without the discriminator)."""
    mirror_views: bool = False
    """Also estimate from the views mirrored left-right and average the two estimates
    (twice the inference time; +2 to +3 points Acc@15 on held-out generated objects)."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    threads: int | None = None
    """CPU threads (default: all cores)."""

    def run(self) -> None:
        from pose.camera.aden.evaluate import run_eval

        set_threads(self.threads)
        run_eval(self.checkpoint, self.synthetic, self.co3d, self.out, self.seed,
                 self.sequences, self.frames, self.view_counts, self.supersample, self.cache,
                 self.workers, self.background, self.sets_per_sequence, device=self.device,
                 select=self.select, mirror_views=self.mirror_views)


AdenSubcommand = Union[  # noqa: UP007 (tyro reads the Union of annotated subcommands)
    Annotated[AdenTrain, tyro.conf.subcommand("train")],
    Annotated[AdenPredict, tyro.conf.subcommand("predict")],
    Annotated[AdenEval, tyro.conf.subcommand("eval")],
]


@dataclass
class AdenCommand:
    """ADen: camera poses of 2-8 photos of an object from a generator of pose hypotheses
    and a discriminator that scores them (train, predict, eval)."""

    command: tyro.conf.OmitSubcommandPrefixes[AdenSubcommand]

    def run(self) -> None:
        self.command.run()
