"""``recon neo360 train`` and ``recon neo360 eval``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Union

import tyro

from geometry.threads import set_threads
from reconstruction.neo360.config import NeO360Config
from reconstruction.neo360.data import SyntheticScenes
from reconstruction.neo360.train import TrainOptions

#: Seeds of held-out scenes start here (training scenes use small seeds).
HELD_OUT_SEED = 1_000_000


@dataclass
class NeO360Train:
    """Train NeO 360 across generated outdoor scenes (360-degree rigs); resumable, stops at
    --max-minutes with a checkpoint, data-parallel under torchrun."""

    out: Path
    """Checkpoint folder to write (model.safetensors, config.json, history, loss.png)."""
    synthetic: bool = False
    """Train on generated outdoor scenes (see --data.*)."""
    nerds360: Path | None = None
    """Train on a NeRDS360 folder instead (scene folders with train/rgb and train/pose;
    photos resized to --data.size, at most --data.views views per scene)."""
    max_minutes: float | None = None
    """Stop after this much training time (a checkpoint is written)."""
    resume: bool = False
    """Continue the checkpoint in --out."""
    overwrite: bool = False
    """Replace a non-empty --out that is not a NeO 360 checkpoint."""
    backbone_weights: Path | None = None
    """A local torchvision ImageNet ResNet checkpoint for the encoder (with --model.backbone
    resnet18/resnet34)."""
    eval_scenes: int = 0
    """After training, the PSNR on this many held-out generated scenes."""
    device: str = "cpu"
    """cpu, cuda or cuda:N (under torchrun: one process per GPU)."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    quiet: bool = False
    """No progress output."""
    model: NeO360Config = field(default_factory=NeO360Config)
    train: TrainOptions = field(default_factory=TrainOptions)
    data: SyntheticScenes = field(default_factory=SyntheticScenes)

    def run(self) -> dict:
        from geometry.device import check_device
        from geometry.errors import UserError
        from geometry.io.atomic import check_output_folder, check_replaceable
        from reconstruction.neo360.data import generate_scenes
        from reconstruction.neo360.train import evaluate, load_stage_lpips, train

        set_threads(self.threads)
        check_device(self.device)
        if self.synthetic == (self.nerds360 is not None):
            raise UserError("give the training data: --synthetic (generated outdoor scenes) "
                            "or --nerds360 DIR, one of them.")
        if self.data.num_scenes < 1 or self.data.views < self.train.num_sources + 1:
            raise UserError("--data.num-scenes must be at least 1 and --data.views above "
                            "--train.num-sources.")
        check_output_folder(self.out)
        if not self.resume:
            check_replaceable(self.out, "config.json", self.overwrite)
        lpips = load_stage_lpips(self.train, (self.data.size, self.data.size))
        if self.nerds360 is not None:
            scenes = _nerds360_scenes(self.nerds360, self.data, self.model.camera_radius)
            info = {"nerds360": str(self.nerds360), "size": self.data.size,
                    "views": self.data.views}
        else:
            scenes = generate_scenes(self.data, self.model.camera_radius, quiet=self.quiet)
            info = {"synthetic": self.data.__dict__}
        model, result = train(scenes, self.model, self.train, self.out, self.max_minutes,
                              self.resume, self.backbone_weights, self.quiet, info,
                              device=self.device, lpips=lpips)
        report = {"steps": result.step, "stopped_by": result.stopped_by,
                  "elapsed_s": result.elapsed_s}
        if self.eval_scenes > 0:
            held = generate_scenes(SyntheticScenes(
                self.eval_scenes, self.data.views, self.data.size, HELD_OUT_SEED,
                self.data.elevation_deg, self.data.supersample), self.model.camera_radius)
            report["held_out"] = evaluate(model, held, self.train.num_sources)
        print(f"saved checkpoint {self.out} at step {result.step}"
              + (f"; held-out PSNR {report['held_out']['psnr']:.2f} dB"
                 if "held_out" in report else ""))
        return report


def _nerds360_scenes(root: Path, data: SyntheticScenes, camera_radius: float) -> list:
    from reconstruction.neo360.nerds360 import list_scenes, load_scene_views

    return [load_scene_views(scene, data.size, data.views, camera_radius)
            for scene in list_scenes(root)]


@dataclass
class NeO360Eval:
    """PSNR of a NeO 360 checkpoint on held-out scenes: generated outdoor scenes, or the
    scenes of a NeRDS360 folder (their train/ views: sources and targets)."""

    checkpoint: Path
    """A folder written by 'recon neo360 train'."""
    scenes: int = 5
    """Generated scenes to score (without --nerds360)."""
    num_sources: int = 3
    nerds360: Path | None = None
    """Score the scenes of this NeRDS360 folder instead (views resized to --data.size, at
    most --data.views per scene)."""
    data: SyntheticScenes = field(default_factory=lambda: SyntheticScenes(seed=HELD_OUT_SEED))
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    threads: int | None = None
    """CPU threads (default: all cores)."""

    def run(self) -> dict:
        from geometry.device import check_device
        from reconstruction.neo360.data import generate_scenes
        from reconstruction.neo360.train import evaluate, format_regions, load_model

        set_threads(self.threads)
        model = load_model(self.checkpoint, check_device(self.device))
        if self.nerds360 is not None:
            held = _nerds360_scenes(self.nerds360, self.data, model.config.camera_radius)
        else:
            self.data.num_scenes = self.scenes
            held = generate_scenes(self.data, model.config.camera_radius)
        result = evaluate(model, held, self.num_sources)
        print(f"held-out PSNR {result['psnr']:.2f} dB over {result['views']} views")
        if "regions" in result:
            print(f"by region: {format_regions(result['regions'])}")
        return result


NeO360Subcommand = Union[  # noqa: UP007 (tyro reads the Union of annotated subcommands)
    Annotated[NeO360Train, tyro.conf.subcommand("train")],
    Annotated[NeO360Eval, tyro.conf.subcommand("eval")],
]


@dataclass
class NeO360Command:
    """NeO 360: train the few-view 360-degree scene model, score it (few-view inference is
    'recon fit --method neo360')."""

    command: tyro.conf.OmitSubcommandPrefixes[NeO360Subcommand]

    def run(self):
        return self.command.run()
