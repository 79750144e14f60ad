"""Shape helpers.

``torch.broadcast_shapes`` imports sympy on its first call (about 0.6 s, paid by every CLI
that builds a camera); the same rule computed by numpy costs microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def broadcast_shapes(*shapes: Sequence[int]) -> torch.Size:
    """The broadcast of ``shapes`` (numpy's rule, as ``torch.broadcast_shapes``).

    Raises:
        RuntimeError: the shapes do not broadcast (the error torch raises too).
    """
    try:
        return torch.Size(np.broadcast_shapes(*(tuple(int(d) for d in s) for s in shapes)))
    except ValueError as err:
        raise RuntimeError(f"shapes {[tuple(s) for s in shapes]} do not broadcast: "
                           f"{err}") from None
