"""The ``perception`` command line: ``synth``, ``train``, ``detect`` and ``eval``.

    perception synth --out DIR [--scenes N] [--samples-per-scene M] [--seed S]
    perception train --dataroot D --out CKPT [--preset small|paper] [--modality fusion]
    perception detect --dataroot D --version V --split S --detector oracle --out results.json
    perception detect --dataroot D --detector sparsefusion --checkpoint CKPT --out results.json
    perception eval --dataroot D --version V --split S --results results.json --out DIR

Subcommands are dataclasses turned into a CLI by tyro; heavy modules (the devkit,
matplotlib, the generator) are imported inside ``run`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from geometry.errors import UserError
from perception.cli_common import Detect
from perception.sparsefusion.cli import Train


@dataclass
class Synth:
    """Write a synthetic dataset in the nuScenes format (version v1.0-mini, splits
    mini_val and mini_train by the official scene names)."""

    out: Path
    """Folder to create (it must not exist or be empty, unless --overwrite)."""
    scenes: int = 4
    """Number of scenes, 1-10 (the first ceil(N/2), at most 2, form mini_val)."""
    samples_per_scene: int = 10
    """Annotated keyframes per scene (2 Hz)."""
    seed: int = 0
    """Random seed; the same seed gives the same dataset."""
    sweeps_per_sample: int = 9
    """LiDAR sweeps between keyframes (9: a 20 Hz LiDAR, as in nuScenes)."""
    image_width: int = 640
    """Camera image width in pixels."""
    image_height: int = 360
    """Camera image height in pixels."""
    workers: int = 2
    """Processes generating scenes in parallel."""
    overwrite: bool = False
    """Replace --out if it holds something."""

    def run(self) -> None:
        from geometry.io.atomic import atomic_directory
        from geometry.progress import progress_bar
        from perception.synth import SynthSpec, write_dataset
        from perception.synth.writer import MAX_SCENES

        if not 1 <= self.scenes <= MAX_SCENES:
            raise UserError(f"--scenes must be between 1 and {MAX_SCENES} (the official mini "
                            f"scene names), got {self.scenes}.")
        for name, value in (("--samples-per-scene", self.samples_per_scene),
                            ("--workers", self.workers)):
            if value < 1:
                raise UserError(f"{name} must be at least 1, got {value}.")
        if self.sweeps_per_sample < 0:
            raise UserError(f"--sweeps-per-sample must be >= 0, got {self.sweeps_per_sample}.")
        if self.image_width < 16 or self.image_height < 16:
            raise UserError("--image-width and --image-height must be at least 16 pixels.")
        if self.out.exists() and not self.overwrite and (
            not self.out.is_dir() or any(self.out.iterdir())
        ):
            raise UserError(f"{self.out} exists and is not empty; pass --overwrite to replace "
                            "it or choose another --out.")
        spec = SynthSpec(scenes=self.scenes, samples_per_scene=self.samples_per_scene,
                         sweeps_per_sample=self.sweeps_per_sample, seed=self.seed,
                         image_width=self.image_width, image_height=self.image_height)
        with atomic_directory(self.out) as tmp, progress_bar("synth") as progress:
            task = progress.add_task("synth", total=self.scenes * self.samples_per_scene)
            summary = write_dataset(spec, tmp, workers=self.workers,
                                    on_sample=lambda done, total: progress.update(task,
                                                                                  completed=done))
        print(f"wrote {self.out}: {len(summary.scenes)} scenes ({', '.join(summary.scenes)}), "
              f"{summary.samples} samples, {summary.sweeps} sweeps, {summary.images} images, "
              f"{summary.annotations} annotations in {summary.seconds:.1f} s "
              f"({summary.cpu_seconds:.1f} s CPU in the scene jobs)")
        print("annotations with LiDAR points per class: " + ", ".join(
            f"{k} {v}" for k, v in summary.annotations_with_points.items()))


@dataclass
class Eval:
    """Check a results JSON, then score it with the official nuScenes devkit."""

    dataroot: Path
    """Folder with the version's tables, samples/ and sweeps/."""
    results: Path
    """The results JSON to evaluate."""
    out: Path
    """Folder for metrics.json, the devkit's summaries and plots (replaced as a whole)."""
    version: str = "v1.0-mini"
    split: str = "mini_val"
    plots: bool = True
    """Render the devkit's PR and TP curves into OUT/plots."""
    config: str = "detection_cvpr_2019"
    """The devkit's evaluation config."""

    def run(self) -> None:
        from perception.evaluation import evaluate, format_metrics, plot_files

        os.environ.setdefault("MPLBACKEND", "Agg")
        summary = evaluate(self.dataroot, self.version, self.split, self.results, self.out,
                           plots=self.plots, config_name=self.config)
        print(format_metrics(summary))
        print(f"\nwrote {self.out / 'metrics.json'}")
        pngs = plot_files(self.out)
        if pngs:
            print(f"plots: {pngs[0]} (mAP and TP errors per class) and {len(pngs) - 1} more "
                  f"PR/TP curves in {self.out / 'plots'} (PNG, and PDF beside each)")


COMMANDS = {
    "synth": Synth,
    "train": Train,
    "detect": Detect,
    "eval": Eval,
}


def main(argv: list[str] | None = None) -> None:
    from geometry.version import run_subcommands

    run_subcommands(COMMANDS, "perception",
                    "3D boxes from LiDAR and cameras on nuScenes-format data.", argv)


if __name__ == "__main__":
    main()
