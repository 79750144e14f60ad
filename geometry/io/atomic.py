"""Atomic writes: a reader never sees a half-written file or output directory.

Files are written to a temporary sibling and renamed into place with ``os.replace``
(atomic on POSIX within one file system); on error the temporary is removed.

Replacing a folder takes two renames (``OUT -> .OUT.old``, then ``tmp -> OUT``). A process
killed between them leaves ``.OUT.old`` and no ``OUT``: :func:`recover_directory` (called
by :func:`atomic_directory` and by the commands before they read ``OUT``) puts the old
folder back, or removes it once the new one is in place.

Before any work, a command that writes an output folder checks it with
:func:`check_output_folder` (a path with a name, in a folder it can write, not someone
else's files: :func:`check_replaceable`) and holds :func:`output_lock` while it writes, so
that two runs with the same ``--out`` do not share their checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from geometry.errors import UserError


def _default_mode(mode: int) -> int:
    """``mode`` under the process umask: what ``open``/``mkdir`` would have given."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    Works for anything written to a path (``np.save``, ``PIL.Image.save``, ``plyfile``):
    the temporary keeps the final suffix so writers that look at it behave the same.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(_default_mode(0o666))  # mkstemp makes it 0600; match a normal open()
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _old_path(path: Path) -> Path:
    """Where the previous ``path`` waits while its replacement is renamed into place."""
    return path.with_name(f".{path.name}.old")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def recover_directory(path: str | os.PathLike) -> None:
    """Finish a folder swap that a killed process left half done (see the module doc).

    ``.OUT.old`` without ``OUT``: the new folder never arrived, the old one is put back.
    ``.OUT.old`` beside ``OUT``: the swap finished but not the clean-up; it is removed.
    Temporary folders ``.OUT.<pid>-*.tmp`` of processes that no longer run are removed.
    """
    path = Path(path)
    old = _old_path(path)
    if old.is_dir():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)
    if path.parent.is_dir():
        pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)-[^.]*\.tmp$")
        for entry in path.parent.iterdir():
            match = pattern.match(entry.name)
            if match and entry.is_dir() and not _process_alive(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds.

    Use for outputs made of several files (a COLMAP model folder, a whole results folder)
    so that an error, Ctrl-C or a kill leaves either the previous contents or nothing
    (after a kill between the two renames, :func:`recover_directory` restores them).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    # the PID in the name lets recover_directory remove what a killed process left
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp",
                                dir=path.parent))
    tmp.chmod(_default_mode(0o777))  # mkdtemp makes it 0700; match a normal mkdir
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists")
            old = _old_path(path)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # the old folder back, as if nothing happened
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder path that cannot be written.

    ``path`` must have a name (not ``.``, ``..`` or ``/``: the folder is replaced by a rename
    beside it), must not be a file, and the nearest existing folder on its way must be
    writable (``os.access``; root passes it whatever the mode bits). Returns ``path``.
    """
    path = Path(path)
    if path.name in ("", ".", "..") or path.resolve() == path.resolve().parent:
        raise UserError(f"{option} {path} names no new folder (it is replaced as a whole); "
                        f"give a folder path such as {option} out.")
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file; give a folder path for the outputs.")
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path} is under {parent}, which is a file; give a folder "
                        "path for the outputs.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path} cannot be written (no write permission in "
                        f"{parent}); choose a folder you can write to.")
    return path


def check_replaceable(path: str | os.PathLike, marker: str, overwrite: bool,
                      option: str = "--out") -> None:
    """Refuse to replace a non-empty folder that is not an earlier output of the command.

    An earlier output holds the file ``marker`` (the command writes it into every output);
    any other non-empty folder is only replaced with ``overwrite`` (``--overwrite``).
    """
    path = Path(path)
    if overwrite or not path.is_dir() or (path / marker).is_file():
        return
    if any(path.iterdir()):
        raise UserError(f"{option} {path} is a non-empty folder that this command did not "
                        "write; choose another --out, or pass --overwrite to replace it.")


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of a run writing the folder ``path``: ``.OUT.lock`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, option: str = "--out") -> Iterator[Path]:
    """Hold the lock of the output folder ``path`` for the block (one writer at a time).

    The lock file ``.OUT.lock`` holds the owner's PID. It is locked with ``flock``, which
    the kernel releases when the owner dies, so the file a killed run left behind (a stale
    lock, its PID dead) is simply taken over. A second run raises a UserError naming the
    PID. The file is removed when the block ends.
    """
    import fcntl

    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, _default_mode(0o666))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            try:
                owner = lock.read_text(encoding="utf-8").strip() or "unknown"
            except OSError:
                owner = "unknown"
            raise UserError(f"another run (process {owner}) is writing {option} {path}; wait "
                            f"for it to finish or choose another {option}.") from None
        try:  # the file may have been removed by its last owner before we locked it
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)
