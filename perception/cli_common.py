"""Pieces shared by the ``perception`` CLI and ``python -m perception.sparsefusion.cli``: the
``detect`` command (run a detector on a split, write a results JSON).

Import-light like the CLIs: the devkit, torch and the detectors are imported inside ``run``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from geometry.errors import UserError
from perception.constants import DetectorName, NoiseConfig


@dataclass
class Detect:
    """Run a detector on a split and write a nuScenes results JSON."""

    dataroot: Path
    """Folder with the version's tables, samples/ and sweeps/."""
    out: Path
    """Results file to write."""
    version: str = "v1.0-mini"
    split: str = "mini_val"
    detector: DetectorName = "oracle"
    """oracle: the ground truth; noisy-oracle: the ground truth with noise; sparsefusion: a
    checkpoint written by 'perception train' (--checkpoint)."""
    checkpoint: Path | None = None
    """Checkpoint folder of a learned detector (config.json + model.safetensors)."""
    device: str = "cpu"
    """Device of a learned detector: cpu, cuda or cuda:N."""
    seed: int = 0
    """Seed of the noisy oracle."""
    sweeps: int | None = None
    """LiDAR sweeps per sample for detectors that read points (default: the checkpoint's
    setting for sparsefusion, 10 otherwise)."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """Noise of the noisy oracle."""

    def _detector(self):
        from dataclasses import replace

        from perception.detectors import DETECTORS

        if self.detector == "sparsefusion":
            if self.checkpoint is None:
                raise UserError("--detector sparsefusion needs --checkpoint, the folder "
                                "written by `perception train`.")
            from geometry.device import check_device

            check_device(self.device)
            return DETECTORS["sparsefusion"](self.checkpoint, self.device)
        if self.checkpoint is not None:
            raise UserError(f"--checkpoint is for learned detectors; --detector {self.detector}"
                            " takes none.")
        if self.detector == "noisy-oracle":
            return DETECTORS["noisy-oracle"](noise=replace(self.noise),
                                             seed=self.seed)
        return DETECTORS[self.detector]()

    def run(self) -> None:
        from geometry.progress import progress_bar
        from perception.data import NuScenesDataset
        from perception.detectors import run_detector
        from perception.results import write_results

        detector = self._detector()
        sweeps = self.sweeps
        if sweeps is None:
            config = getattr(detector, "config", None)
            sweeps = config.voxel.sweeps if config is not None else 10
        dataset = NuScenesDataset(self.dataroot, self.version, self.split, sweeps=sweeps,
                                  load_points=detector.needs_points,
                                  load_images=detector.needs_images)
        with progress_bar(f"detect {self.detector}") as progress:
            task = progress.add_task(self.detector, total=len(dataset))
            results = run_detector(detector, (dataset[i] for i in range(len(dataset))),
                                   on_sample=lambda: progress.advance(task))
        write_results(self.out, results, detector.meta)
        n_boxes = sum(len(v) for v in results.values())
        print(f"wrote {self.out}: {n_boxes} boxes for {len(results)} samples of {self.split}")
