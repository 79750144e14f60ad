"""``--version`` of the command lines (``recon``, ``perception``, ``pose``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

VERSION_HELP = "--version prints the installed sparseview version."


def version_string() -> str:
    """``"sparseview X.Y.Z"`` of the installed distribution (``unknown`` if not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"sparseview {version('sparseview')}"
    except PackageNotFoundError:
        return "sparseview unknown (not installed; pip install -e .)"


def print_version_if_asked(argv: Sequence[str]) -> bool:
    """Print the version and return True when ``argv`` is exactly ``["--version"]``.

    Only the bare top-level flag counts: subcommands keep their own ``--version`` (the
    nuScenes table version of ``perception`` and ``recon view``).
    """
    if list(argv) != ["--version"]:
        return False
    print(version_string())
    return True


def run_subcommands(commands: Mapping[str, type] | Callable[[list[str]], Mapping[str, type]],
                    prog: str, description: str, argv: Sequence[str] | None = None) -> None:
    """The ``main`` of a command line made of tyro subcommands with a ``run()`` method:
    ``--version``, one-sentence user errors with exit code 2 (:func:`geometry.errors.run_cli`).

    Args:
        commands: ``{name: dataclass}``, or a function of the arguments that builds it (the
            ``recon`` CLI builds ``fit``/``eval`` for the ``--method`` given).
        prog: the program name in usage lines and errors.
        description: the top-level help text (the ``--version`` sentence is appended).
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    import sys

    import tyro

    from geometry.errors import run_cli

    def _main() -> None:
        args = list(sys.argv[1:] if argv is None else argv)
        if print_version_if_asked(args):
            return
        table = commands(args) if callable(commands) else commands
        cmd = tyro.extras.subcommand_cli_from_dict(
            dict(table), prog=prog, args=args, description=f"{description} {VERSION_HELP}")
        cmd.run()

    run_cli(_main, prog=prog)
