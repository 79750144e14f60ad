"""Standard JSON out of metric reports: non-finite floats become ``null``.

Python's ``json`` writes ``NaN`` and ``Infinity``, which are not JSON (RFC 8259):
``jq``, JavaScript's ``JSON.parse`` and most other readers reject the whole file. Metrics
are undefined (NaN) whenever a class or a sequence has nothing to score, so every metrics
writer goes through :func:`dumps_json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by ``None`` and numpy/torch scalars, arrays,
    tuples, sets, paths and dataclasses turned into JSON types (recursively)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if hasattr(value, "tolist"):  # numpy / torch arrays and scalars
        return json_safe(value.tolist())
    if hasattr(value, "item"):
        return json_safe(value.item())
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def dumps_json(value: Any, indent: int | None = 2) -> str:
    """Standard JSON text of ``value`` (see :func:`json_safe`), ending in a newline."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False) + "\n"
