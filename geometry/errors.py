"""User-facing errors and the CLI wrapper that turns them into one line and exit code 2.

Every error a user can cause (a bad path, a wrong format, too few images, NaNs in the
input) is raised as :class:`UserError` with one sentence that says what to do. The CLIs
wrap their entry point with :func:`run_cli`, which prints that sentence to stderr without
a traceback and exits with status 2. Programming errors keep their tracebacks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """An error caused by the user's input; the message is one sentence saying what to do."""


def quiet_openmp_waits() -> None:
    """Make idle OpenMP threads sleep instead of spin (unless ``OMP_WAIT_POLICY`` is set).

    Must run before torch is imported (the OpenMP runtime reads it when it loads). On a
    machine that other jobs keep busy, threads spinning at torch's and our kernels' barriers
    take the cores from the threads with work. Measured on 2 cores with other jobs keeping
    them busy (load ~4): 40 steps of ``recon fit`` at 512 px took 48 s of optimisation with
    spinning threads and 16 s with sleeping ones. On an idle machine sleeping costs a little:
    the shipped sample's ``recon fit`` took 52.6 s instead of 48.3 s. Set
    ``OMP_WAIT_POLICY=ACTIVE`` for the last few percent on a machine of your own.
    """
    import os

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_cli(main: Callable[[], T], prog: str | None = None) -> T:
    """Run a CLI entry point; a :class:`UserError` prints ``prog: error: msg`` and exits 2.

    ``KeyboardInterrupt`` exits with 130 (the shell's convention) after one line, so
    long jobs that checkpoint can say how to resume before they are called.
    """
    name = prog or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "sparseview")
    quiet_openmp_waits()
    try:
        return main()
    except UserError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
