"""The ``recon`` command line: ``fit``, ``eval``, ``view``, ``render`` and ``build-ops``.

Subcommands are dataclasses turned into a CLI by tyro; heavy modules are imported inside
``run`` so that ``recon --help`` stays fast. ``view`` and ``render`` live in the viewer
package (the CLI is the one place that ties the packages together).
"""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from geometry.errors import run_cli
from reconstruction.eval.cli import Eval
from reconstruction.instantsplat.config import FitConfig
from viewer.cli import Render, View


@dataclass
class BuildOps:
    """Compile the native kernels now (otherwise they are built on first use)."""

    verbose: bool = False
    """Show the compiler's output."""

    def run(self) -> None:
        from geometry.native import build_ops

        path = build_ops(verbose=self.verbose)
        print(f"native kernels ready: {path}")


@dataclass
class Fit(FitConfig):
    """Fit Gaussian splats and camera poses to a folder of 2-12 unposed photos (InstantSplat).

    Writes OUT/splats.ply, OUT/cameras/ (COLMAP text), OUT/transforms.json, OUT/images/ and
    OUT/metrics.json. Ctrl-C keeps the last checkpoint; rerun with --resume to continue.
    """

    def run(self) -> None:
        from reconstruction.instantsplat.pipeline import run_fit

        run_fit(self)


COMMANDS = {
    "fit": Fit,
    "eval": Eval,
    "view": View,
    "render": Render,
    "build-ops": BuildOps,
}


def main() -> None:
    def _main() -> None:
        cmd = tyro.extras.subcommand_cli_from_dict(COMMANDS, prog="recon")
        cmd.run()

    run_cli(_main, prog="recon")


if __name__ == "__main__":
    main()
