"""``recon sparse3d train``: train Sparse3D's controller on generated object scenes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Union

import tyro

from reconstruction.sparse3d.config import (
    Sparse3DArchitecture,
    Sparse3DTrainOptions,
    SyntheticObjects,
)

#: Seeds of held-out scenes start here (training scenes use small seeds).
HELD_OUT_SEED = 1_000_000


@dataclass
class Sparse3DTrain:
    """Train the epipolar controller on a frozen diffusion UNet (generated object scenes);
    resumable, stops at --max-minutes with a checkpoint, data-parallel under torchrun.
    Without --diffusion the built-in tiny pixel-space UNet is the backbone (a CPU
    demonstration; its weights are stored with the controller)."""

    out: Path
    """Checkpoint folder to write (model.safetensors, config.json, history, loss.png)."""
    synthetic: bool = False
    """Train on generated object scenes (see --data.*)."""
    diffusion: Path | None = None
    """Stable Diffusion 1.x (local diffusers folder or one official checkpoint) to control;
    None: the built-in tiny backbone."""
    max_minutes: float | None = None
    """Stop after this much training time (a checkpoint is written)."""
    resume: bool = False
    """Continue the checkpoint in --out."""
    overwrite: bool = False
    """Replace a non-empty --out that is not a Sparse3D checkpoint."""
    eval_scenes: int = 4
    """After training: the denoising error on this many held-out scenes, against the same
    backbone with an untrained (zero) controller."""
    threads: int | None = None
    """CPU threads (default: torch's)."""
    device: str = "cpu"
    quiet: bool = False
    arch: Sparse3DArchitecture = field(default_factory=Sparse3DArchitecture)
    train: Sparse3DTrainOptions = field(default_factory=Sparse3DTrainOptions)
    data: SyntheticObjects = field(default_factory=SyntheticObjects)

    def run(self) -> dict:
        import dataclasses

        import torch

        from geometry.errors import UserError
        from geometry.io.atomic import check_output_folder, check_replaceable
        from geometry.training import ddp_cleanup, ddp_setup
        from reconstruction.sparse3d.model import Sparse3DModel
        from reconstruction.sparse3d.train import evaluate, render_scenes, train

        if self.threads is not None:
            torch.set_num_threads(max(1, self.threads))
        if not self.synthetic:
            raise UserError("give the training data: --synthetic (generated object scenes).")
        if self.data.num_scenes < 1 or self.data.views < self.train.inputs + self.train.targets:
            raise UserError("--data.num-scenes must be at least 1 and --data.views at least "
                            "--train.inputs plus --train.targets.")
        check_output_folder(self.out)
        if not self.resume:
            check_replaceable(self.out, "config.json", self.overwrite)
        dist = ddp_setup(self.device)
        backbone = None
        arch = self.arch
        if self.diffusion is not None:
            from reconstruction.generative.loading import load_stable_diffusion
            from reconstruction.generative.model import DiffusionBackbone

            backbone = DiffusionBackbone.from_stable_diffusion(
                load_stable_diffusion(self.diffusion, dist.device))
            arch = dataclasses.replace(arch, backbone="external")
        elif arch.backbone != "tiny":
            raise UserError("--arch.backbone external needs --diffusion PATH.")
        try:
            scenes = render_scenes(self.data)
            model, result = train(scenes, arch, self.train, self.out, self.max_minutes,
                                  self.resume, backbone, self.quiet,
                                  {"synthetic": dataclasses.asdict(self.data)}, dist)
        finally:
            ddp_cleanup()
        report = {"steps": result.step, "stopped_by": result.stopped_by,
                  "elapsed_s": result.elapsed_s}
        if self.eval_scenes > 0 and dist.is_main:
            held = render_scenes(dataclasses.replace(self.data, num_scenes=self.eval_scenes,
                                                     seed=HELD_OUT_SEED))
            torch.manual_seed(self.train.seed)
            untrained = Sparse3DModel(arch, model.backbone if backbone is not None else None)
            report["held_out_mse"] = evaluate(model, held, self.train)
            report["held_out_mse_untrained"] = evaluate(untrained.to(model.backbone.device),
                                                        held, self.train)
        print(f"saved checkpoint {self.out} at step {result.step}"
              + (f"; held-out denoising MSE {report['held_out_mse']:.4f} (untrained "
                 f"controller {report['held_out_mse_untrained']:.4f})"
                 if "held_out_mse" in report else ""))
        return report


@dataclass
class Sparse3DEval:
    """Denoising error of a trained controller on held-out generated object scenes, next to
    the same backbone with an untrained (zero) controller."""

    checkpoint: Path
    """A folder written by 'recon sparse3d train'."""
    diffusion: Path | None = None
    """The Stable Diffusion the controller was trained on (external backbones only)."""
    scenes: int = 4
    threads: int | None = None
    data: SyntheticObjects = field(default_factory=lambda: SyntheticObjects(seed=HELD_OUT_SEED))
    train: Sparse3DTrainOptions = field(default_factory=Sparse3DTrainOptions)

    def run(self) -> dict:
        import dataclasses

        import torch

        from reconstruction.sparse3d.model import Sparse3DModel, load_controller
        from reconstruction.sparse3d.train import evaluate, render_scenes

        if self.threads is not None:
            torch.set_num_threads(max(1, self.threads))
        backbone = None
        if self.diffusion is not None:
            from reconstruction.generative.loading import load_stable_diffusion
            from reconstruction.generative.model import DiffusionBackbone

            backbone = DiffusionBackbone.from_stable_diffusion(
                load_stable_diffusion(self.diffusion))
        model = load_controller(self.checkpoint, backbone)
        held = render_scenes(dataclasses.replace(self.data, num_scenes=self.scenes))
        torch.manual_seed(self.train.seed)
        untrained = Sparse3DModel(model.arch, backbone)
        report = {"held_out_mse": evaluate(model, held, self.train),
                  "held_out_mse_untrained": evaluate(untrained, held, self.train)}
        print(f"held-out denoising MSE {report['held_out_mse']:.4f} (untrained controller "
              f"{report['held_out_mse_untrained']:.4f})")
        return report


Sparse3DSubcommand = Union[  # noqa: UP007 (tyro reads the Union of annotated subcommands)
    Annotated[Sparse3DTrain, tyro.conf.subcommand("train")],
    Annotated[Sparse3DEval, tyro.conf.subcommand("eval")],
]


@dataclass
class Sparse3DCommand:
    """Sparse3D: train the epipolar controller (reconstruction is 'recon fit --method
    sparse3d')."""

    command: tyro.conf.OmitSubcommandPrefixes[Sparse3DSubcommand]

    def run(self):
        return self.command.run()
