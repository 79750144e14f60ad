"""Coarse geometric initialisation (CGI) without learned weights: SfM poses + stereo cloud."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geometry.errors import UserError
from reconstruction.images import LoadedImage
from reconstruction.init.base import InitResult, SparseModel
from reconstruction.init.config import InitConfig
from reconstruction.init.sfm import run_sfm
from reconstruction.init.stereo import densify


def check_registered(model: SparseModel) -> None:
    """Raise a UserError naming the views SfM could not register."""
    missing = model.unregistered_names()
    if not missing:
        return
    if len(missing) == model.num_views:
        raise UserError("no two photos could be registered (too few feature matches between "
                        "them); use photos of one scene with more overlap and texture.")
    raise UserError(f"could not register {', '.join(missing)} (too few feature matches with "
                    "the other photos); remove them or add photos that overlap them.")


def initialise_sfm_sparse(images: Sequence[LoadedImage], work_dir: Path, config: InitConfig,
                          seed: int) -> InitResult:
    """SfM poses and intrinsics; the splats start on the sparse SfM points only."""
    model, timings = run_sfm(images, work_dir, config.sfm, seed)
    check_registered(model)
    if len(model.points_world) < 4:
        raise UserError("the photos share too few features to triangulate the scene; use "
                        "photos with more overlap and texture.")
    return InitResult(model=model, points_world=model.points_world, colors=model.colors,
                      timings=timings, stats={**model.stats, "mapper": model.mapper})


def initialise_sfm(images: Sequence[LoadedImage], work_dir: Path, config: InitConfig,
                   seed: int) -> InitResult:
    """SfM poses and intrinsics, and the sparse points plus a fused stereo cloud."""
    result = initialise_sfm_sparse(images, work_dir, config, seed)
    t0 = time.perf_counter()
    dense, dense_colors, stats = densify(result.model, images, config.stereo)
    result.timings["stereo"] = time.perf_counter() - t0
    result.points_world = np.concatenate([result.model.points_world, dense])
    result.colors = np.concatenate([result.model.colors, dense_colors])
    result.stats.update(stats)
    return result
