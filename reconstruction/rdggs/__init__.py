"""RDG-GS: relative-depth-guided Gaussian splatting for sparse views (``--method rdggs``).

The Gaussian engine with RDG-GS's loss term and densification strategy (:mod:`.method`),
per-view depth priors (:mod:`.priors`) and options (:mod:`.config`, ``--rdggs.*``).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from reconstruction.engine import gaussian_method
from reconstruction.rdggs.config import RDGGSConfig


def _build(job):
    from reconstruction.rdggs.method import build_trainer

    return build_trainer(job)


def _check_inputs(options: RDGGSConfig, images: list) -> None:
    from reconstruction.rdggs.priors import check_prior_inputs

    check_prior_inputs(options, images)


def _stage_priors(options: RDGGSConfig, images: list[Path], work: Path) -> RDGGSConfig:
    """``recon eval`` stages training photo ``k`` as ``NNN_<name>``: the depth maps
    ``<prior-dir>/<stem>.npy`` are copied under the same stems into ``work/priors``."""
    from geometry.errors import UserError

    if options.prior_dir is None:
        return options
    folder = Path(options.prior_dir)
    if not folder.is_dir():
        raise UserError(f"--rdggs.prior-dir {folder} is not a folder; give the folder of "
                        "<photo stem>.npy depth maps.")
    staged = Path(work) / "priors"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for k, path in enumerate(images):
        source = folder / f"{path.stem}.npy"
        if not source.is_file():
            raise UserError(f"{folder} has no depth map for {path.name} (expected "
                            f"{source.name}); give one per training view.")
        shutil.copyfile(source, staged / f"{k:03d}_{path.stem}.npy")
    return dataclasses.replace(options, prior_dir=staged)


METHOD = gaussian_method(
    "rdggs",
    "RDG-GS: InstantSplat's engine with relative depth guidance from per-view depth priors "
    "and adaptive sampling.",
    build=_build, options=RDGGSConfig, check_inputs=_check_inputs,
    stage_eval_inputs=_stage_priors)
