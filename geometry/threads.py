"""One meaning of ``--threads`` in every CLI: CPU threads, default all cores.

Every ``--threads`` option says "CPU threads (default: all cores)." and calls
:func:`set_threads`.

A fixed, explicit default (rather than whatever torch picks from the environment) because
results of the CPU kernels depend slightly on the thread count (per-thread partial sums):
the count is part of a run's identity, so a command says which count it used.

Under ``torchrun`` the processes on one machine share its cores: the default is then the
cores divided by ``LOCAL_WORLD_SIZE`` (torchrun sets it), so that N processes do not each
start one thread per core.
"""

from __future__ import annotations

import os

from geometry.errors import UserError

__all__ = ["choose_threads", "set_threads"]


def choose_threads(requested: int | None) -> int:
    """The CPU thread count to use: ``requested``, else every core.

    Raises:
        UserError: ``requested`` below 1.
    """
    if requested is not None:
        if requested < 1:
            raise UserError(f"--threads {requested} must be at least 1.")
        return int(requested)
    cores = os.cpu_count() or 1
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local_processes))


def set_threads(requested: int | None) -> int:
    """Make torch use :func:`choose_threads` ``(requested)`` CPU threads; returns the count."""
    import torch

    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    return threads
