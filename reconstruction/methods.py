"""The registry of reconstruction methods: name -> :class:`~reconstruction.method.Method`.

``recon fit --method``, ``recon eval --method`` and their ``--help`` read it. Adding a method
is one folder (its code and a ``METHOD`` record) plus one line below; a package outside
this repository registers through the ``sparseview.methods`` entry-point group (each entry
point names a ``Method``) or by calling :func:`register`.
"""

from __future__ import annotations

import typing

from geometry.errors import UserError
from reconstruction.instantsplat import METHOD as INSTANTSPLAT
from reconstruction.method import Method
from reconstruction.neo360 import METHOD as NEO360
from reconstruction.rdggs import METHOD as RDGGS
from reconstruction.sparse3d import METHOD as SPARSE3D
from reconstruction.upfusion import METHOD as UPFUSION

if typing.TYPE_CHECKING:
    from geometry.cameras import Cameras
    from reconstruction.engine.config import FitConfig
    from reconstruction.method import Callback

#: The default of ``--method``.
DEFAULT_METHOD = "instantsplat"

METHODS: dict[str, Method] = {}
_entry_points_loaded = False


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace``: allow a name already taken)."""
    if not replace and method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"a reconstruction method named {method.name!r} is registered already")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests register throw-away ones)."""
    METHODS.pop(name, None)


register(INSTANTSPLAT)
register(RDGGS)
register(NEO360)
register(UPFUSION)
register(SPARSE3D)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group="sparseview.methods"):
        method = entry.load()
        if not isinstance(method, Method):
            raise TypeError(f"entry point {entry.name} ({entry.value}) is not a Method")
        register(method, replace=True)


def method_names() -> list[str]:
    """Registered names, the default first."""
    _load_entry_points()
    return sorted(METHODS, key=lambda name: (name != DEFAULT_METHOD, name))


def get_method(name: str) -> Method:
    """The method called ``name``; a UserError lists the known ones."""
    _load_entry_points()
    if name not in METHODS:
        raise UserError(f"there is no reconstruction method {name!r}; choose one of "
                        f"{', '.join(method_names())}.")
    return METHODS[name]


def fit(config: FitConfig, cameras: Cameras | None = None,
        callbacks: list[Callback] | None = None) -> dict:
    """Run ``config.method`` on ``config.images`` into ``config.out``; returns its metrics.

    ``cameras``: known cameras of the photos in name order (as ``--poses``);
    ``callbacks``: called during training (the live viewer).
    """
    method = get_method(config.method)
    if config.options is None:
        config.options = method.default_options()
    elif method.options is not None and not isinstance(config.options, method.options):
        raise TypeError(f"options of --method {method.name} must be {method.options.__name__}, "
                        f"not {type(config.options).__name__}")
    return method.fit(config, cameras, callbacks or [])
