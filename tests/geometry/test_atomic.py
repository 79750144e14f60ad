"""Atomic output folders: a swap killed between its two renames is recovered, output paths
are checked before any work, someone else's folder is not replaced, one writer at a time.

Tests run as root here, and root writes whatever the mode bits say: an unwritable folder is
simulated with ``os.access`` monkeypatched (what :func:`check_output_folder` asks), and a
path under a regular file stands for a place nobody can create a folder in.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from geometry.errors import UserError
from geometry.io import atomic
from geometry.io.atomic import (
    atomic_directory,
    check_output_folder,
    check_replaceable,
    lock_path,
    output_lock,
    recover_directory,
)

ROOT = Path(__file__).resolve().parents[2]


def _write_folder(path: Path, text: str) -> None:
    with atomic_directory(path) as tmp:
        (tmp / "value.txt").write_text(text)


def _kill_between_the_renames(path: Path, text: str) -> subprocess.CompletedProcess:
    """Replace ``path`` in a process that dies (os._exit, no clean-up) right after the first
    rename of the swap, as a kill -9 would leave it."""
    script = textwrap.dedent(f"""
        import os
        from geometry.io import atomic
        real_replace = os.replace
        calls = []
        def replace(src, dst):
            real_replace(src, dst)
            calls.append(dst)
            if len(calls) == 1:
                os._exit(9)
        atomic.os.replace = replace
        with atomic.atomic_directory({str(path)!r}) as tmp:
            (tmp / "value.txt").write_text({text!r})
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_a_swap_killed_between_its_renames_is_recovered(tmp_path):
    out = tmp_path / "out"
    _write_folder(out, "old")
    done = _kill_between_the_renames(out, "new")
    assert done.returncode == 9, done.stderr
    # what a kill leaves: no OUT, the old folder aside (before the fix: under a PID name
    # that nothing looked for, so the old output was lost)
    assert not out.exists()
    assert (tmp_path / ".out.old" / "value.txt").read_text() == "old"
    recover_directory(out)
    assert (out / "value.txt").read_text() == "old"
    assert not (tmp_path / ".out.old").exists()
    # the next swap recovers by itself too, then replaces
    done = _kill_between_the_renames(out, "new")
    assert not out.exists()
    _write_folder(out, "newer")
    assert (out / "value.txt").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_recover_removes_the_old_folder_once_the_new_one_is_in_place(tmp_path):
    out = tmp_path / "out"
    _write_folder(out, "new")
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "value.txt").write_text("old")
    recover_directory(out)
    assert (out / "value.txt").read_text() == "new"
    assert not (tmp_path / ".out.old").exists()


def test_a_failing_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _write_folder(out, "old")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        _write_folder(out, "new")
    monkeypatch.undo()
    assert (out / "value.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("name", [".", "..", "/"])
def test_paths_without_a_name_are_refused(name):
    with pytest.raises(UserError, match="names no new folder"):
        check_output_folder(Path(name))


def test_unwritable_places_are_refused(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_output_folder(blocker)
    with pytest.raises(UserError, match=r"is under .*file, which is a file"):
        check_output_folder(blocker / "sub" / "out")
    # root ignores mode bits, so ask os.access what a normal user would be told
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(atomic.os, "access",
                        lambda path, mode: Path(path) != locked)
    with pytest.raises(UserError, match=r"cannot be written \(no write permission in .*locked"):
        check_output_folder(locked / "new" / "out")
    assert check_output_folder(tmp_path / "new" / "out") == tmp_path / "new" / "out"


def test_only_marked_or_empty_folders_are_replaced(tmp_path):
    out = tmp_path / "out"
    check_replaceable(out, ".marker", overwrite=False)  # missing: fine
    out.mkdir()
    check_replaceable(out, ".marker", overwrite=False)  # empty: fine
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="pass --overwrite"):
        check_replaceable(out, ".marker", overwrite=False)
    check_replaceable(out, ".marker", overwrite=True)
    (out / ".marker").write_text("")
    check_replaceable(out, ".marker", overwrite=False)


def test_a_second_writer_is_refused_and_the_lock_is_removed(tmp_path):
    out = tmp_path / "out"
    with output_lock(out) as lock:
        assert lock == lock_path(out) == tmp_path / ".out.lock"
        assert lock.read_text().strip() == str(os.getpid())
        # flock locks belong to an open file: a second lock in this process conflicts too
        with pytest.raises(UserError, match=rf"another run \(process {os.getpid()}\) is "
                                            "writing --out"):
            with output_lock(out):
                pass
        other = subprocess.run(
            [sys.executable, "-c", "from geometry.io.atomic import output_lock\n"
             f"with output_lock({str(out)!r}): pass"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and f"process {os.getpid()}" in other.stderr
    assert not lock_path(out).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock_path(out).write_text(dead.stdout)  # what a killed run leaves
    with output_lock(out) as lock:
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock_path(out).exists()
