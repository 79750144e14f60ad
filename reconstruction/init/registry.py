"""The registry of coarse initialisers: ``recon fit --init NAME`` runs ``INITIALISERS[NAME]``.

To add one (e.g. a learned point-map model that loads local weights), write a function with
the :data:`Initialiser` signature, add its name to
:data:`reconstruction.init.config.InitName` and its entry here, and put its options in
:class:`reconstruction.init.config.InitConfig`. A camera-pose estimator of ``pose/`` becomes
one through :func:`pose.camera.initialiser.register_camera_estimator` (pose may import
reconstruction, not the other way round), which adds it here at run time.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from reconstruction.images import LoadedImage
from reconstruction.init.base import InitResult
from reconstruction.init.cgi import initialise_sfm, initialise_sfm_sparse
from reconstruction.init.config import InitConfig, InitName


class Initialiser(Protocol):
    """``(images, work_dir, config, seed, cameras=None) -> InitResult``; raises UserError on
    bad input. ``cameras``: known ``(Ks [V, 3, 3], T_cam_world [V, 4, 4])`` (numpy float64)
    that the returned model must carry, its cloud built with them."""

    def __call__(self, images: Sequence[LoadedImage], work_dir: Path, config: InitConfig,
                 seed: int, cameras: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> InitResult: ...

INITIALISERS: dict[str, Initialiser] = {
    "sfm": initialise_sfm,  # SfM poses + sparse points + fused rectified-stereo cloud
    "sfm-sparse": initialise_sfm_sparse,  # SfM poses + sparse points only
}

assert tuple(INITIALISERS) == typing.get_args(InitName), "InitName and INITIALISERS differ"
