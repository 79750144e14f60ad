"""Reading weight files the user gives: safetensors and ``torch.load(weights_only=True)``.

Every weights file a CLI reads (checkpoints, ``--init-from``, backbone and metric weights,
training state, sample caches) goes through :func:`load_safetensors` or
:func:`torch_load_weights_only`, so a damaged, truncated or wrong file gives one
:class:`~geometry.errors.UserError` sentence naming the file, what it should have been and
what to do, never a ``SafetensorError``/``UnpicklingError`` traceback. The messages never
quote torch's advice to re-run with ``weights_only=False``: a file that needs more than
tensors and plain containers is not a weights file of the expected kind, and loading it
without the safety would run whatever code it holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geometry.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor


def _check_file(path: Path, what: str, hint: str) -> None:
    if path.is_dir():
        raise UserError(f"{path} is a folder, not {what}; {hint}")
    if not path.is_file():
        raise UserError(f"{path} does not exist ({what} expected); {hint}")


def _reason(err: BaseException) -> str:
    """First line of a safetensors error, without its final full stop (one sentence)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.rstrip(".")[:120]


def load_safetensors(path: str | os.PathLike, what: str,
                     hint: str = "give the right file or write it again") -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file, on the CPU.

    Args:
        path: the file.
        what: what the file should be, with its article, for the message
            (e.g. ``"a SparseFusion weights file"``).
        hint: what the user should do, the end of the sentence.

    Raises:
        UserError: the file is missing, a folder, or not a readable safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _check_file(path, what, hint)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as err:
        raise UserError(f"{path} is not {what} (it is not a readable safetensors file: "
                        f"{_reason(err)}); {hint}") from None


def torch_load_weights_only(path: str | os.PathLike, what: str,
                            hint: str = "give the right file or write it again") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with a one-sentence error.

    Only tensors, numbers, strings and plain containers can be in such a file; anything else
    (a pickled class, code) is refused by torch and reported as a file of the wrong kind.

    Args:
        path: the file (``.pt``/``.pth``).
        what: what the file should be, with its article (e.g. ``"an LPIPS .pth file"``).
        hint: what the user should do, the end of the sentence.

    Raises:
        UserError: the file is missing, a folder, damaged, or holds more than weights.
    """
    import pickle

    import torch

    path = Path(path)
    _check_file(path, what, hint)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False: never pass that on.
        raise UserError(f"{path} is not {what} (it holds Python objects other than tensors "
                        f"and plain containers, which are not loaded); {hint}") from None
    except Exception:  # noqa: BLE001 - torch raises many types for a damaged file
        raise UserError(f"{path} is not {what} (it is not a PyTorch file, or it is "
                        f"truncated or damaged); {hint}") from None
