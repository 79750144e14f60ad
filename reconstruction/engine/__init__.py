"""The method-agnostic Gaussian engine that InstantSplat, RDG-GS and later splat methods share.

- :mod:`.config`: ``recon fit``'s common options (:class:`~.config.FitConfig`) and the
  trainer's (:class:`~.config.TrainConfig`);
- :mod:`.fit`: the fit loop (photos, initialisation, normalisation, training with
  checkpoints/resume and callbacks, outputs);
- :mod:`.trainer`: :class:`~.trainer.GaussianTrainer`, the joint optimisation of Gaussians
  and poses, with a list of loss terms (:mod:`.losses`) and a densification strategy
  (:mod:`.strategy`, modelled on gsplat's ``Strategy``).

A Gaussian method is a trainer builder: ``gaussian_method("name", "summary", build=...)``
gives the :class:`~reconstruction.method.Method` record to register in
:mod:`reconstruction.methods`. Importing this package is light (no torch).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconstruction.method import Method

if typing.TYPE_CHECKING:
    from reconstruction.engine.fit import BuildTrainer, TrainerJob
    from reconstruction.engine.trainer import GaussianTrainer


def _default_build(job: TrainerJob) -> GaussianTrainer:
    from reconstruction.engine.fit import default_trainer

    return default_trainer(job)


def _load_gaussians(folder: Path, device: str = "cpu"):
    from reconstruction.scene_model import GaussianSceneModel

    return GaussianSceneModel.load(folder, device)


def gaussian_method(name: str, summary: str, build: BuildTrainer | None = None,
                    options: type | None = None,
                    check_inputs: Callable[[Any, list], None] | None = None,
                    stage_eval_inputs: Callable[[Any, list[Path], Path], Any] | None = None,
                    min_images: int = 2) -> Method:
    """The registry record of a method that runs the engine's fit loop with the trainer
    ``build`` makes (default: F-3DGO's) and returns a Gaussian scene.

    Args:
        name: registry name (``--method NAME``; its options appear as ``--NAME.*``).
        summary: one line for ``--help``.
        build: ``(TrainerJob) -> GaussianTrainer``; imports of heavy modules belong inside.
        options: the method's options dataclass.
        check_inputs: ``(options, loaded photos)``, raises UserError before any work.
        stage_eval_inputs: see :class:`~reconstruction.method.Method`.
        min_images: the fewest photos (see :class:`~reconstruction.method.Method`); one photo
            is initialised by :mod:`.single_view`.
    """
    build = _default_build if build is None else build

    def fit(config, cameras=None, callbacks=None) -> dict:
        from reconstruction.engine.fit import fit as run

        return run(config, cameras, callbacks, build=build, check_inputs=check_inputs,
                   min_images=min_images)

    return Method(name=name, summary=summary, fit=fit, load=_load_gaussians, options=options,
                  check_inputs=check_inputs, stage_eval_inputs=stage_eval_inputs,
                  min_images=min_images)
