"""Depth priors from networks: Depth-Anything-V2 monocular relative depth (local weights only).

- :mod:`.depth_anything`: the architecture (DINOv2 encoder + DPT head, official key names)
  and its presets ``vits``, ``vitb``, ``vitl`` (and ``tiny`` for tests);
- :mod:`.mono`: :func:`load_mono_depth` (``.pth``/``.safetensors`` -> :class:`MonoDepth`),
  :meth:`MonoDepth.predict` (``[H, W, 3]`` -> ``[H, W]`` relative inverse depth) and
  :func:`save_mono_depth`.

Importing this package is light: torch is imported on first use of a name below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconstruction.depth.depth_anything import DepthAnythingConfig, DepthAnythingV2
    from reconstruction.depth.mono import MonoDepth, load_mono_depth, save_mono_depth

__all__ = ["DepthAnythingConfig", "DepthAnythingV2", "MonoDepth", "load_mono_depth",
           "save_mono_depth"]

_WHERE = {
    "DepthAnythingConfig": "reconstruction.depth.depth_anything",
    "DepthAnythingV2": "reconstruction.depth.depth_anything",
    "MonoDepth": "reconstruction.depth.mono",
    "load_mono_depth": "reconstruction.depth.mono",
    "save_mono_depth": "reconstruction.depth.mono",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
