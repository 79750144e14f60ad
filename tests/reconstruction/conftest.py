"""Fixtures shared by the reconstruction tests."""

from __future__ import annotations

import sys

import pytest
import torch


def _runner(monkeypatch, capsys, keep_stdout: bool):
    from sparseview.cli import recon as cli

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["recon", *args])
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, (captured.out + captured.err) if keep_stdout else captured.err

    return run


@pytest.fixture
def run_recon(monkeypatch, capsys):
    """Run ``recon ARGS...`` in-process; returns ``(exit code, stderr)``."""
    return _runner(monkeypatch, capsys, keep_stdout=False)


@pytest.fixture
def run_recon_output(monkeypatch, capsys):
    """Run ``recon ARGS...`` in-process; returns ``(exit code, stdout + stderr)`` (help)."""
    return _runner(monkeypatch, capsys, keep_stdout=True)


@pytest.fixture
def one_thread():
    """Tiny tensors: a single torch thread avoids stalls when other jobs share the cores
    (the root conftest restores the count after the test)."""
    torch.set_num_threads(1)
