"""The ``pose`` command line: ``pose egoposer train|predict|eval|simulate``,
``pose sparseags`` (camera-pose refinement, :mod:`pose.camera.sparseags`) and
``pose aden train|predict|eval`` (camera poses from scratch, :mod:`pose.camera.aden`).

Subcommands are dataclasses turned into a CLI by tyro; torch and the models are imported
inside ``run`` so that ``pose --help`` stays fast. Errors a user can cause end in one line
and exit code 2 (:func:`geometry.errors.run_cli`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Union

import tyro

from geometry.threads import set_threads
from pose.body.egoposer.config import (
    FovConfig,
    ModelConfig,
    SynthConfig,
    TrainConfig,
    VisibilityMode,
)
from pose.camera.aden.cli import AdenCommand
from pose.camera.sparp.cli import SpaRPCommand, SpaRPTrain
from pose.camera.sparseags.cli import SparseAGSCommand
from pose.object.shapo.cli import ShapoCommand


@dataclass
class EgoTrain:
    """Train EgoPoser on AMASS or synthesised motion; writes a checkpoint folder (resumable,
    stops at --max-minutes with a checkpoint, data-parallel under torchrun)."""

    out: Path
    """Checkpoint folder to write (config.json, model.safetensors, trainer state, loss.png)."""
    amass: Path | None = None
    """Folder of AMASS SMPL-H .npz files (searched recursively)."""
    synthetic: bool = False
    """Train on synthesised motion instead of AMASS."""
    synthetic_sequences: int = 200
    """Number of synthesised training sequences."""
    smplh_dir: Path | None = None
    """Folder of SMPL-H model.npz files (exact SMPL-H joints); default skeleton otherwise."""
    resume: bool = False
    """Continue the checkpoint in --out."""
    overwrite: bool = False
    """Replace an existing checkpoint in --out."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    quiet: bool = False
    """No progress output."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: Annotated[TrainConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=TrainConfig)
    fov: FovConfig = field(default_factory=FovConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)

    def run(self) -> None:
        from pose.body.egoposer.commands import run_train

        set_threads(self.threads)
        run_train(self.out, self.amass, self.synthetic, self.model, self.train, self.fov,
                  self.synth, num_synthetic=self.synthetic_sequences, smplh_dir=self.smplh_dir,
                  resume=self.resume, overwrite=self.overwrite, quiet=self.quiet,
                  device=self.device)


@dataclass
class EgoPredict:
    """Predict full-body poses from a tracking file (head and wrist poses, hand visibility)."""

    checkpoint: Path
    """Checkpoint folder written by 'pose egoposer train'."""
    tracking: Path
    """Tracking .npz: head, left_wrist, right_wrist [T,4,4], left/right_visible [T], fps."""
    out: Path | None = None
    """Output .npz (default: <tracking>_pose.npz)."""
    height_m: float | None = None
    """The user's stature in metres (default: the file's height_m, else 1.70 m)."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    threads: int | None = None
    """CPU threads (default: all cores)."""

    def run(self) -> None:
        from pose.body.egoposer.commands import run_predict

        set_threads(self.threads)
        run_predict(self.checkpoint, self.tracking, self.out, self.height_m,
                    device=self.device)


@dataclass
class EgoEval:
    """Evaluate a checkpoint: MPJPE, MPJRE, MPJVE, jitter and hand error by hand visibility."""

    checkpoint: Path
    """Checkpoint folder written by 'pose egoposer train'."""
    amass: Path | None = None
    """Folder (or one file) of held-out AMASS .npz files."""
    synthetic: bool = False
    """Evaluate on held-out synthesised motion."""
    out: Path = Path("metrics.json")
    """Where to write the metrics (JSON)."""
    visibility: VisibilityMode = "fov"
    """Hand visibility: fov (frustum + dropouts), all (100%), half (~50%), none (0%)."""
    baselines: bool = True
    """Also evaluate the 'stand still under the head' baseline."""
    synthetic_sequences: int = 20
    """Number of synthesised evaluation sequences."""
    seed: int | None = None
    """Seed of the synthetic data and visibility (default: training seed + 1000)."""
    smplh_dir: Path | None = None
    """Folder of SMPL-H model.npz files (exact SMPL-H joints)."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    synth: SynthConfig = field(default_factory=SynthConfig)

    def run(self) -> None:
        from pose.body.egoposer.commands import run_eval

        set_threads(self.threads)
        run_eval(self.checkpoint, self.amass, self.synthetic, self.out, self.visibility,
                 self.baselines, self.synth, self.synthetic_sequences, self.seed,
                 self.smplh_dir, device=self.device)


@dataclass
class EgoSimulate:
    """Write the tracking file a headset would record for one AMASS file or synthetic motion."""

    out: Path
    """Tracking .npz to write."""
    amass: Path | None = None
    """One AMASS .npz file."""
    synthetic: bool = False
    """Synthesise one sequence instead."""
    visibility: VisibilityMode = "fov"
    """Hand visibility: fov (frustum + dropouts), all, half or none."""
    seed: int = 0
    """Seed of the synthetic motion and of the dropouts."""
    gt_out: Path | None = None
    """Also write the motion itself (AMASS format plus its joints) here."""
    smplh_dir: Path | None = None
    """Folder of SMPL-H model.npz files."""
    fov: FovConfig = field(default_factory=FovConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)

    def run(self) -> None:
        from pose.body.egoposer.commands import run_simulate

        run_simulate(self.out, self.amass, self.synthetic, self.visibility, self.fov,
                     self.synth, self.seed, self.gt_out, self.smplh_dir)


EgoPoserCommand = Union[  # noqa: UP007 (tyro reads the Union of annotated subcommands)
    Annotated[EgoTrain, tyro.conf.subcommand("train")],
    Annotated[EgoPredict, tyro.conf.subcommand("predict")],
    Annotated[EgoEval, tyro.conf.subcommand("eval")],
    Annotated[EgoSimulate, tyro.conf.subcommand("simulate")],
]

@dataclass
class EgoPoser:
    """EgoPoser: full-body pose from head and hand tracking (train, predict, eval,
    simulate)."""

    command: tyro.conf.OmitSubcommandPrefixes[EgoPoserCommand]

    def run(self) -> None:
        self.command.run()


COMMANDS = {
    "egoposer": EgoPoser,
    "sparseags": SparseAGSCommand,
    "sparp": SpaRPCommand,
    "sparp-train": SpaRPTrain,
    "aden": AdenCommand,
    "shapo": ShapoCommand,
}


def main(args: list[str] | None = None) -> None:
    from geometry.version import run_subcommands

    run_subcommands(COMMANDS, "pose",
                    "Pose from sparse observations (EgoPoser: full body from head and hand "
                    "tracking; SparseAGS, ADen, SpaRP: camera poses of a few photos; ShAPO: "
                    "object shape priors and pose refinement).", args)


if __name__ == "__main__":
    main()
