"""``pose shapo train-priors|mesh``: the command dataclasses (tyro). Heavy modules are imported
inside ``run`` so that ``pose --help`` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Union

import tyro

from geometry.threads import set_threads
from pose.object.shapo.priors import PriorConfig, PriorTrainConfig


@dataclass
class ShapoTrainPriors:
    """Train ShAPO's shape (DeepSDF) and appearance priors as auto-decoders on generated
    instances of the six NOCS categories; writes a checkpoint folder. Under torchrun every
    process trains on its own batches (DDP)."""

    out: Path
    """Checkpoint folder (model.safetensors with the decoders and the instances' codes,
    config.json, trainer_state.pt, history.json, loss.png)."""
    synthetic: bool = False
    """Train on the generated categories (bottle, bowl, camera, can, laptop, mug)."""
    max_minutes: float | None = None
    """Stop after this many minutes (with a checkpoint)."""
    resume: bool = False
    """Continue the checkpoint in --out (same options)."""
    overwrite: bool = False
    """Replace a checkpoint already in --out."""
    quiet: bool = False
    """No progress bar or stage lines."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    model: PriorConfig = field(default_factory=PriorConfig)
    train: Annotated[PriorTrainConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=PriorTrainConfig)

    def run(self) -> None:
        from pose.object.shapo.train import run_train_priors

        set_threads(self.threads)
        result = run_train_priors(self.out, self.synthetic, self.model, self.train,
                                  max_minutes=self.max_minutes, resume=self.resume,
                                  overwrite=self.overwrite, quiet=self.quiet)
        last = result.history[-1] if result.history else {}
        print(f"priors: {result.step} steps ({result.stopped_by}), sdf L1 "
              f"{last.get('sdf', float('nan')):.4f}, colour L1 "
              f"{last.get('color', float('nan')):.4f} -> {self.out}")


@dataclass
class ShapoMesh:
    """Meshes of trained priors (marching cubes of the SDF, vertex colours from the
    appearance decoder): each category's mean codes and some training instances."""

    priors: Path
    """Checkpoint folder written by 'pose shapo train-priors'."""
    out: Path
    """Output folder: <category>_mean.ply, instance_<k>_<category>.ply, meshes.json."""
    resolution: int = 64
    """Grid cells per side of the marching cubes."""
    instances: int = 0
    """Also mesh the first this many training instances."""
    overwrite: bool = False
    """Replace --out even when it is a non-empty folder this command did not write."""
    quiet: bool = False
    """No progress bar."""
    threads: int | None = None
    """CPU threads (default: all cores)."""

    def run(self) -> None:
        from pose.object.shapo.export import run_mesh

        set_threads(self.threads)
        record = run_mesh(self.priors, self.out, self.resolution, self.instances,
                          self.overwrite, self.quiet)
        made = sum(1 for m in record["meshes"].values() if m["faces"])
        print(f"{made} of {len(record['meshes'])} meshes -> {self.out}")


ShapoSubcommand = Union[  # noqa: UP007 (tyro reads the Union of annotated subcommands)
    Annotated[ShapoTrainPriors, tyro.conf.subcommand("train-priors")],
    Annotated[ShapoMesh, tyro.conf.subcommand("mesh")],
]


@dataclass
class ShapoCommand:
    """ShAPO: category-level object pose, size, shape and appearance from one RGB-D image
    (so far: training the shape/appearance priors and meshing them)."""

    command: tyro.conf.OmitSubcommandPrefixes[ShapoSubcommand]

    def run(self) -> None:
        self.command.run()
