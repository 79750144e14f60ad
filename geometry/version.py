"""``--version`` of the command lines (``recon``, ``perception``, ``pose``)."""

from __future__ import annotations

from collections.abc import Sequence

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
