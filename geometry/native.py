"""Loader of sparseview's native kernels (the sources live in the top-level ``cuda/`` folder).

The kernels are compiled lazily, on the first call that needs them, with
``torch.utils.cpp_extension.load`` (ninja) into a per-user cache directory, and registered
as ``torch.ops.sparseview.*`` through one ``TORCH_LIBRARY`` (``cuda/registry.cpp``).
Importing this module never compiles; ``recon build-ops`` prebuilds.

The cache key covers the sources, the compiler flags, the torch version and the CPU, so a
stale or foreign build is never loaded, and the checkout's location: ninja's build file
names the sources by absolute path, so two checkouts sharing one build folder would each
rebuild (~30 s) every time the other had run. Set ``SPARSEVIEW_CACHE_DIR`` to move the cache.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from pathlib import Path

import torch

_LOCK = threading.Lock()
_LOADED: Path | None = None

_CFLAGS = ["-O3", "-fopenmp", "-march=native", "-ffp-contract=off"]
_LDFLAGS = ["-fopenmp"]


def sources_dir() -> Path:
    """The ``cuda/`` folder holding the kernel sources (beside the packages in a checkout)."""
    candidates = [
        Path(__file__).resolve().parent.parent / "cuda",
        Path(os.environ.get("SPARSEVIEW_SOURCES_DIR", "/nonexistent")),
    ]
    for path in candidates:
        if (path / "registry.cpp").is_file():
            return path
    raise RuntimeError(
        "sparseview's kernel sources (cuda/registry.cpp) were not found; install sparseview "
        "from a source checkout (pip install -e .) or set SPARSEVIEW_SOURCES_DIR."
    )


def _cpu_sources(root: Path) -> list[Path]:
    # One registry first, then every op's CPU backend. CUDA backends (cuda/<op>/*_cuda.cu)
    # would be added here only where a CUDA toolkit and device exist; on CUDA devices the
    # splatting path uses gsplat instead.
    return [root / "registry.cpp", *sorted(root.glob("*/*_cpu.cpp"))]


def _cpu_signature() -> str:
    # -march=native code must not be reused on a different CPU.
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{flags}"


def cache_dir() -> Path:
    base = os.environ.get("SPARSEVIEW_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(xdg) / "sparseview" / "ops"


def _build_key(sources: list[Path]) -> str:
    digest = hashlib.sha256()
    digest.update(str(sources_dir().resolve()).encode())
    for src in sources:
        digest.update(src.name.encode())
        digest.update(src.read_bytes())
    for header in sorted(sources_dir().glob("**/*.h")):
        digest.update(header.read_bytes())
    digest.update(" ".join(_CFLAGS + _LDFLAGS).encode())
    digest.update(torch.__version__.encode())
    digest.update(_cpu_signature().encode())
    return digest.hexdigest()[:16]


def build_ops(verbose: bool = False) -> Path:
    """Compile (if needed) and load the native kernels; returns the shared library's path."""
    global _LOADED
    with _LOCK:
        if _LOADED is not None:
            return _LOADED
        from torch.utils.cpp_extension import load

        root = sources_dir()
        sources = _cpu_sources(root)
        key = _build_key(sources)
        name = f"sparseview_ops_{key}"
        build_dir = cache_dir() / name
        build_dir.mkdir(parents=True, exist_ok=True)
        load(
            name=name,
            sources=[str(s) for s in sources],
            extra_cflags=_CFLAGS,
            extra_ldflags=_LDFLAGS,
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=verbose,
        )
        _LOADED = build_dir / f"{name}.so"
        return _LOADED


def load_ops() -> None:
    """Make ``torch.ops.sparseview.*`` available, building the kernels on first use."""
    if _LOADED is None:
        build_ops()
