"""What a reconstruction method is to the rest of the suite: one :class:`Method` record.

The registry (:mod:`reconstruction.methods`) maps names to these records; ``recon fit
--method``, ``recon eval --method`` and their ``--help`` read it. A method provides:

- ``fit(config, cameras, callbacks) -> metrics``: reconstruct from the photos of
  ``config.images`` into the folder ``config.out`` (complete or not at all), with its own
  options in ``config.options``;
- ``load(folder, device) -> SceneModel``: the result as a
  :class:`~reconstruction.scene_model.SceneModel` (what ``recon eval`` and ``recon view``
  consume);
- optionally ``options`` (a dataclass of its own options, shown only for it as
  ``--<name>.*``), ``check_inputs`` (refuse bad option/file combinations before any work) and
  ``stage_eval_inputs`` (rewrite options that name per-photo files when ``recon eval``
  renames the training photos).

Methods built on the Gaussian engine get ``fit`` and ``load`` from
:func:`reconstruction.engine.gaussian_method`; others (neural fields) write their own.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if typing.TYPE_CHECKING:
    from geometry.cameras import Cameras
    from reconstruction.engine.config import FitConfig
    from reconstruction.scene_model import SceneModel

#: Called during a fit with the method's trainer-like object and the photos, e.g. the live
#: viewer's refresh; must return quickly.
Callback = Callable[..., None]

#: ``(config, known cameras or None, callbacks) -> metrics`` (what metrics.json holds).
FitFunction = Callable[["FitConfig", "Cameras | None", "list[Callback]"], dict]


@dataclass(frozen=True)
class Method:
    """A reconstruction method (see the module doc)."""

    name: str
    """Registry name (``recon fit --method NAME``); also the prefix of its options."""
    summary: str
    """One line for ``--help``."""
    fit: FitFunction
    load: Callable[[Path, str], SceneModel]
    options: type | None = None
    """Dataclass of the method's own options (None: it has none)."""
    check_inputs: Callable[[Any, list], None] | None = None
    """``(options, loaded photos)``: raise UserError for bad options or files, before the
    minutes of initialisation."""
    stage_eval_inputs: Callable[[Any, list[Path], Path], Any] | None = None
    """``(options, training photos in order, work folder) -> options`` for ``recon eval``,
    which stages the photos as ``NNN_<name>``: per-photo files named in the options follow."""
    min_images: int = 2
    """The fewest photos the method works from (1: single-view methods). Fewer are refused
    with one sentence where the photos are listed (:func:`reconstruction.images.
    list_image_files`, called with this number by the engine's fit)."""

    def default_options(self) -> Any:
        """A fresh instance of :attr:`options` (None for a method without options)."""
        return None if self.options is None else self.options()
