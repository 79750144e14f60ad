"""Command-line entries of SparseFusion: ``train`` and ``detect`` (import-light: torch and
the model are imported inside ``run``).

    python -m perception.sparsefusion.cli train --dataroot D --out ckpt/ --preset small
    python -m perception.sparsefusion.cli detect --dataroot D --checkpoint ckpt/ --out r.json

``Train`` is the dataclass that ``perception train`` uses; ``Detect`` is the shared
:class:`perception.cli_common.Detect` (``perception detect``) with ``--detector sparsefusion``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from geometry.errors import UserError, run_cli
from perception.cli_common import Detect as PerceptionDetect


@dataclass
class Train:
    """Train SparseFusion on a nuScenes-format dataset (several processes: torchrun)."""

    dataroot: Path
    """Folder with the version's tables, samples/ and sweeps/."""
    out: Path
    """Checkpoint folder to write (model.safetensors, config.json, train_state.pt)."""
    version: str = "v1.0-mini"
    split: str = "mini_train"
    preset: Literal["small", "paper"] = "small"
    """small: trains on a CPU; paper: the released ResNet-50 nuScenes configuration."""
    modality: Literal["lidar", "camera", "fusion"] = "fusion"
    semantic_transfer: bool = True
    """Camera -> LiDAR semantic transfer (fusion only)."""
    geometric_transfer: bool = True
    """LiDAR -> camera geometric transfer (fusion only)."""
    image_backbone_weights: Path | None = None
    """Local torchvision ResNet checkpoint for the image backbone (random init if unset)."""
    epochs: int = 20
    max_minutes: float = 30.0
    """Stop (and save) after this many minutes even if epochs remain."""
    batch_size: int = 1
    lr: float = 1e-3
    seed: int = 0
    threads: int | None = None
    """CPU threads (default: all cores)."""
    device: str = "cpu"
    """cpu, cuda or cuda:N (under torchrun each rank takes its LOCAL_RANK GPU)."""
    cache_dir: Path | None = None
    """Folder to cache prepared samples in (shared between runs on the same data)."""
    limit: int = 0
    """Use only the first N samples of the split (0: all)."""
    resume: bool = False
    """Continue from the training state in --out."""
    init_from: tuple[Path, ...] = ()
    """Checkpoint folders to initialise matching weights from (later ones win), e.g. the
    LiDAR-only and camera-only models before fusion training, as in the paper."""

    def run(self) -> dict:
        from geometry.threads import set_threads
        from perception.sparsefusion.config import PRESETS
        from perception.sparsefusion.train import TrainSettings, load_samples, train

        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("--epochs and --batch-size must be at least 1.")
        from geometry.device import check_device

        check_device(self.device)
        config = PRESETS[self.preset](self.modality)
        config.transfer.semantic = self.semantic_transfer
        config.transfer.geometric = self.geometric_transfer
        if self.image_backbone_weights is not None:
            config.camera.backbone_weights = str(self.image_backbone_weights)
        threads = set_threads(self.threads)
        samples = load_samples(self.dataroot, self.version, self.split, config, self.cache_dir,
                               self.limit)
        settings = TrainSettings(epochs=self.epochs, max_minutes=self.max_minutes,
                                 batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                                 threads=threads, device=self.device)
        summary = train(config, samples, self.out, settings, resume=self.resume,
                        init_from=list(self.init_from))
        if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports
            return summary
        if self.init_from:
            print(f"initialised {summary['initialised_tensors']} tensors from "
                  f"{', '.join(str(p) for p in self.init_from)}")
        print(f"trained {config.modality} for {summary['steps']} steps "
              f"({summary['epochs']} epochs) in {summary['minutes']:.1f} min; "
              f"checkpoint in {self.out}")
        return summary


@dataclass
class Detect:
    """Run a SparseFusion checkpoint on a split and write a nuScenes results JSON."""

    dataroot: Path
    checkpoint: Path
    """Folder written by train (config.json + model.safetensors)."""
    out: Path
    """Results file to write."""
    version: str = "v1.0-mini"
    split: str = "mini_val"
    device: str = "cpu"

    def run(self) -> None:
        PerceptionDetect(dataroot=self.dataroot, out=self.out, version=self.version,
                         split=self.split, detector="sparsefusion", checkpoint=self.checkpoint,
                         device=self.device).run()


COMMANDS = {"train": Train, "detect": Detect}


def main(argv: list[str] | None = None) -> None:
    def _main() -> None:
        cmd = tyro.extras.subcommand_cli_from_dict(COMMANDS, prog="sparsefusion", args=argv)
        cmd.run()

    run_cli(_main, prog="sparsefusion")


if __name__ == "__main__":
    main()
