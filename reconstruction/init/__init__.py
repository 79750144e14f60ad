"""Coarse initialisers (InstantSplat's CGI): cameras and a point cloud from unposed photos.

The registry is this one dict; ``recon fit --init NAME`` picks an entry. To add an
initialiser (e.g. a learned point-map model loading local weights), write a function with
the :data:`Initialiser` signature, add its name to :data:`InitName` and its entry to
:data:`INITIALISERS`; put its options in :class:`~reconstruction.init.cgi.InitConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from reconstruction.images import LoadedImage
from reconstruction.init.base import InitResult, SparseModel
from reconstruction.init.cgi import InitConfig, initialise_sfm, initialise_sfm_sparse

InitName = Literal["sfm", "sfm-sparse"]

#: ``(images, work_dir, config, seed) -> InitResult``; raises UserError on bad input.
Initialiser = Callable[[Sequence[LoadedImage], Path, InitConfig, int], InitResult]

INITIALISERS: dict[str, Initialiser] = {
    "sfm": initialise_sfm,  # SfM poses + sparse points + fused rectified-stereo cloud
    "sfm-sparse": initialise_sfm_sparse,  # SfM poses + sparse points only
}

__all__ = ["INITIALISERS", "InitConfig", "InitName", "InitResult", "Initialiser", "SparseModel"]
