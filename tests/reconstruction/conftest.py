"""Fixtures shared by the reconstruction tests."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def run_recon(monkeypatch, capsys):
    """Run ``recon ARGS...`` in-process; returns ``(exit code, stderr)``."""
    from sparseview.cli import recon as cli

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["recon", *args])
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    return run
