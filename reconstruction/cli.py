"""The ``recon`` command line: ``recon build-ops`` (and, as they land, fit/eval/view/render).

Subcommands are dataclasses turned into a CLI by tyro; heavy modules are imported inside
``run`` so that ``recon --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from geometry.errors import run_cli


@dataclass
class BuildOps:
    """Compile the native kernels now (otherwise they are built on first use)."""

    verbose: bool = False
    """Show the compiler's output."""

    def run(self) -> None:
        from geometry.native import build_ops

        path = build_ops(verbose=self.verbose)
        print(f"native kernels ready: {path}")


COMMANDS = {
    "build-ops": BuildOps,
}


def main() -> None:
    def _main() -> None:
        cmd = tyro.extras.subcommand_cli_from_dict(COMMANDS, prog="recon")
        cmd.run()

    run_cli(_main, prog="recon")


if __name__ == "__main__":
    main()
