"""``recon upsrt train|eval``: the command dataclasses (tyro). Heavy modules are imported
inside ``run`` so that ``recon --help`` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

import tyro

from reconstruction.upfusion.train import UpSRTTrainOptions


@dataclass
class UpSRTTrain:
    """Train UpSRT (UpFusion's unposed scene transformer) on generated object sequences or
    CO3D; writes a checkpoint folder. Under torchrun every process trains on its own batches
    (DDP)."""

    out: Path
    """Checkpoint folder (model.safetensors, config.json, trainer_state.pt, history.json,
    loss.png)."""
    synthetic: bool = False
    """Train on generated object sequences."""
    co3d: Path | None = None
    """A folder of CO3D sequences (each with gt_cameras.npz and its frames)."""
    preset: Literal["tiny", "official", "test"] = "tiny"
    """Architecture: tiny (CPU, 64 px photos read at 32 px, encoder trained too, posed input
    rays), official (the released
    model's: DINOv2 ViT-B/14 keys, 768-wide, 8+4 layers), test (unit tests)."""
    input_rays: Literal["identity", "relative"] | None = None
    """identity: UpFusion's unposed setting (input patch rays from identity cameras; the
    official preset's); relative: a posed variant (input rays from the known cameras, in the
    first view's frame; the tiny preset's, see reconstruction/upfusion/upsrt.py); None: the
    preset's."""
    max_minutes: float | None = None
    """Stop after this many minutes (with a checkpoint)."""
    resume: bool = False
    """Continue the checkpoint in --out (same options)."""
    overwrite: bool = False
    """Replace a checkpoint already in --out."""
    device: str = "cpu"
    """cpu or cuda (under torchrun: one process per GPU)."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    quiet: bool = False
    train: Annotated[UpSRTTrainOptions, tyro.conf.OmitArgPrefixes] = field(
        default_factory=UpSRTTrainOptions)

    def run(self) -> None:
        from geometry.progress import log_stage
        from geometry.threads import set_threads
        from reconstruction.upfusion.train import run_train
        from reconstruction.upfusion.upsrt import preset

        set_threads(self.threads)
        overrides = {} if self.input_rays is None else {"input_rays": self.input_rays}
        config = preset(self.preset, **overrides)
        _, result = run_train(self.out, self.synthetic, self.co3d, config, self.train,
                              self.max_minutes, self.resume, self.overwrite, self.device,
                              self.quiet)
        last = result.history[-1] if result.history else {}
        log_stage(f"wrote {self.out}: step {result.step}, training PSNR "
                  f"{last.get('psnr', float('nan')):.2f} dB ({result.elapsed_s / 60:.1f} min, "
                  f"stopped by {result.stopped_by})", self.quiet)


@dataclass
class UpSRTEval:
    """Held-out PSNR of an UpSRT checkpoint from 1, 3 and 6 input views (unseen generated
    sequences or CO3D); printed and written to OUT/metrics.json."""

    checkpoint: Path
    """Checkpoint folder written by 'recon upsrt train'."""
    synthetic: bool = False
    """Evaluate on generated object sequences (seeds from --seed)."""
    co3d: Path | None = None
    """A folder of CO3D sequences."""
    out: Path | None = None
    """Folder for metrics.json (None: print only)."""
    seed: int = 100_000
    """First seed of the generated sequences (training uses 0..scenes-1)."""
    sequences: int = 20
    size: int = 64
    frames: int = 24
    threads: int | None = None

    def run(self) -> None:
        from geometry.threads import set_threads
        from reconstruction.upfusion.train import run_eval

        set_threads(self.threads)
        metrics = run_eval(self.checkpoint, self.synthetic, self.co3d, self.seed,
                           self.sequences, self.size, self.frames, self.out)
        print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in metrics.items()))


UpSRTSubcommand = Union[  # noqa: UP007 (tyro reads the Union of annotated subcommands)
    Annotated[UpSRTTrain, tyro.conf.subcommand("train")],
    Annotated[UpSRTEval, tyro.conf.subcommand("eval")],
]


@dataclass
class UpSRTCommand:
    """UpSRT, UpFusion's scene transformer for unposed photos (train, eval)."""

    command: tyro.conf.OmitSubcommandPrefixes[UpSRTSubcommand]

    def run(self) -> None:
        self.command.run()
