"""``run_cli``: user errors exit 2 with one line, and OpenMP threads are told to sleep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import os, sys
from geometry.errors import UserError, run_cli
def main():
    import torch  # imported inside the CLI, as every sparseview command does
    print(os.environ.get("OMP_WAIT_POLICY"))
    if len(sys.argv) > 1:
        raise UserError("the input is bad; give a good one.")
run_cli(main, prog="tool")
"""


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, text=True,
                          capture_output=True, env={**base, **env}, timeout=120)


def test_openmp_threads_sleep_unless_the_user_chose():
    assert _run().stdout.strip() == "PASSIVE"
    assert _run(OMP_WAIT_POLICY="ACTIVE").stdout.strip() == "ACTIVE"


def test_user_error_is_one_line_and_exit_code_2():
    proc = _run("bad")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "tool: error: the input is bad; give a good one."
