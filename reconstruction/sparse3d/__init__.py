"""Sparse3D (Zou et al. 2023) on the Gaussian engine: ``recon fit --method sparse3d``.

2-3 *posed* photos (``--poses``); a frozen diffusion model steered by a zero-initialised
ControlNet-style controller that reads epipolar features of the inputs
(:mod:`.epipolar`, :mod:`.model`) scores random novel renders of the Gaussians; SDS or
C-SDS (:mod:`reconstruction.generative.sds`) is added to the photometric loss on the inputs
(:mod:`.method`). The controller trains with ``recon sparse3d train`` (:mod:`.train`).
Deviation from the paper: the scene is Gaussian splats, not a NeRF.
"""

from __future__ import annotations

import dataclasses

from reconstruction.engine import gaussian_method
from reconstruction.sparse3d.config import Sparse3DConfig


def _build(job):
    from reconstruction.sparse3d.method import build_trainer

    return build_trainer(job)


def _check_inputs(options: Sparse3DConfig, images: list) -> None:
    from reconstruction.sparse3d.method import check_inputs

    check_inputs(options, images)


_ENGINE = gaussian_method(
    "sparse3d",
    "Sparse3D: posed sparse views (--poses), score distillation from a diffusion model "
    "steered by epipolar features of the inputs.",
    build=_build, options=Sparse3DConfig, check_inputs=_check_inputs)


def _fit(config, cameras=None, callbacks=None) -> dict:
    from reconstruction.sparse3d.method import check_poses

    check_poses(config, cameras)
    return _ENGINE.fit(config, cameras, callbacks)


METHOD = dataclasses.replace(_ENGINE, fit=_fit)
