"""Loader of sparseview's native kernels (the sources live in the top-level ``cuda/`` folder).

The kernels are compiled lazily, on the first call that needs them, with
``torch.utils.cpp_extension.load`` (ninja) into a per-user cache directory, and registered
as ``torch.ops.sparseview.*`` through one ``TORCH_LIBRARY`` (``cuda/registry.cpp``).
Importing this module never compiles; ``recon build-ops`` prebuilds.

What is compiled (:func:`build_plan`): the registry and every op's CPU backend
(``cuda/<op>/*_cpu.cpp``, OpenMP) always; where ``torch.cuda.is_available()``, also every
op's CUDA sources (``cuda/<op>/*.cu`` and their thin torch bindings ``cuda/<op>/*_cuda.cpp``)
into the same library, with ``with_cuda=True``. Without a CUDA device the CUDA sources are
never compiled and the CPU build is exactly what it was before CUDA sources existed.

The cache key covers the sources, the compiler flags, the torch version and the CPU (and,
with CUDA, the CUDA flags, torch's CUDA version and the target architectures), so a stale
or foreign build is never loaded, and the checkout's location: ninja's build file names the
sources by absolute path, so two checkouts sharing one build folder would each rebuild
(~30 s) every time the other had run. Set ``SPARSEVIEW_CACHE_DIR`` to move the cache.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

_LOCK = threading.Lock()
_LOADED: Path | None = None

# -fno-trapping-math lets GCC vectorise branch-free float selects (the compositing loops);
# unlike -ffast-math it changes no result. -ffp-contract=off: no FMA, results match the
# PyTorch reference's rounding and do not depend on the CPU's FMA support (except the
# compositing kernels, cuda/rasterize/rasterize_cpu.cpp, which turn contraction back on for
# speed and are compared with the reference within tolerances).
_CFLAGS = ["-O3", "-fopenmp", "-march=native", "-ffp-contract=off", "-fno-trapping-math"]
_LDFLAGS = ["-fopenmp"]
# nvcc: no fast-math, and no FMA contraction, so CUDA results can be compared with the CPU
# kernels (built with -ffp-contract=off) and the PyTorch references.
_CUDA_CFLAGS = ["-O3", "--fmad=false"]


def sources_dir() -> Path:
    """The ``cuda/`` folder holding the kernel sources (beside the packages in a checkout)."""
    candidates = [
        Path(__file__).resolve().parents[2] / "cuda",
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
    # One registry first, then every op's CPU backend.
    return [root / "registry.cpp", *sorted(root.glob("*/*_cpu.cpp"))]


def _cuda_sources(root: Path) -> list[Path]:
    # The kernels (raw pointers + a stream, CUDA runtime only) and the thin C++ layers that
    # bind them to torch (TORCH_LIBRARY_IMPL(sparseview, CUDA, ...)); both need nvcc/CUDA
    # headers, so they are compiled only where a CUDA device exists.
    return sorted([*root.glob("*/*.cu"), *root.glob("*/*_cuda.cpp")])


@dataclass(frozen=True)
class BuildPlan:
    """What :func:`build_ops` compiles: the arguments of ``torch.utils.cpp_extension.load``."""

    name: str  # extension name, ``sparseview_ops_<key>``
    sources: list[Path]  # registry first, then CPU backends, then CUDA sources if any
    with_cuda: bool  # True when CUDA sources are part of the build
    build_dir: Path  # cache_dir() / name


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


def _cuda_signature() -> str:
    # nvcc compiles for TORCH_CUDA_ARCH_LIST, or else for the visible devices' architectures.
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or ",".join(
        "{}.{}".format(*torch.cuda.get_device_capability(i))
        for i in range(torch.cuda.device_count())
    )
    return f"{torch.version.cuda}|{archs}|{' '.join(_CUDA_CFLAGS)}"


def cache_dir() -> Path:
    """The build cache: ``$SPARSEVIEW_CACHE_DIR``, else ``$XDG_CACHE_HOME/sparseview/ops``."""
    base = os.environ.get("SPARSEVIEW_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(xdg) / "sparseview" / "ops"


def _build_key(sources: list[Path], with_cuda: bool = False) -> str:
    root = sources_dir()
    digest = hashlib.sha256()
    digest.update(str(root.resolve()).encode())
    for src in sources:
        digest.update(src.name.encode())
        digest.update(src.read_bytes())
    for header in sorted(root.glob("**/*.h")):
        digest.update(header.read_bytes())
    digest.update(" ".join(_CFLAGS + _LDFLAGS).encode())
    digest.update(torch.__version__.encode())
    digest.update(_cpu_signature().encode())
    if with_cuda:  # CPU-only builds keep the key they had before CUDA sources existed
        for header in sorted(root.glob("**/*.cuh")):
            digest.update(header.read_bytes())
        digest.update(_cuda_signature().encode())
    return digest.hexdigest()[:16]


def build_plan() -> BuildPlan:
    """The sources, CUDA switch, name and build folder of this machine's build (no compiling).

    CUDA sources join the build only where ``torch.cuda.is_available()`` and some exist.
    """
    root = sources_dir()
    sources = _cpu_sources(root)
    cuda_sources = _cuda_sources(root) if torch.cuda.is_available() else []
    with_cuda = bool(cuda_sources)
    sources = sources + cuda_sources
    name = f"sparseview_ops_{_build_key(sources, with_cuda)}"
    return BuildPlan(name=name, sources=sources, with_cuda=with_cuda,
                     build_dir=cache_dir() / name)


def build_ops(verbose: bool = False) -> Path:
    """Compile (if needed) and load the native kernels; returns the shared library's path."""
    global _LOADED
    with _LOCK:
        if _LOADED is not None:
            return _LOADED
        from torch.utils.cpp_extension import load

        plan = build_plan()
        plan.build_dir.mkdir(parents=True, exist_ok=True)
        if not (plan.build_dir / f"{plan.name}.so").is_file():
            # a first build takes ~30 s on 2 cores: say why nothing else moves meanwhile
            from geometry.progress import log_stage

            log_stage(f"compiling native kernels (once, about 30 s) into {plan.build_dir}…")
        # Passing with_cuda/extra_cuda_cflags only when CUDA sources are built keeps the
        # CPU-only call exactly as before.
        cuda_args = {"with_cuda": True, "extra_cuda_cflags": _CUDA_CFLAGS} if plan.with_cuda else {}
        load(
            name=plan.name,
            sources=[str(s) for s in plan.sources],
            extra_cflags=_CFLAGS,
            extra_ldflags=_LDFLAGS,
            build_directory=str(plan.build_dir),
            is_python_module=False,
            verbose=verbose,
            **cuda_args,
        )
        _LOADED = plan.build_dir / f"{plan.name}.so"
        return _LOADED


def load_ops() -> None:
    """Make ``torch.ops.sparseview.*`` available, building the kernels on first use."""
    if _LOADED is None:
        build_ops()


_AUTOGRAD_LOCK = threading.Lock()
_AUTOGRAD: set[str] = set()


def load_ops_with_autograd(formulas: dict[str, tuple]) -> None:
    """:func:`load_ops`, then give each op of ``formulas`` (``"sparseview::name"`` ->
    ``(backward, setup_context)``) its autograd formula, once per process (thread-safe)."""
    if _AUTOGRAD.issuperset(formulas):
        return
    with _AUTOGRAD_LOCK:
        load_ops()
        for op, (backward, setup_context) in formulas.items():
            if op not in _AUTOGRAD:
                torch.library.register_autograd(op, backward, setup_context=setup_context)
                _AUTOGRAD.add(op)


# --- CUDA compile check (`recon build-ops --cuda-compile-only`) ----------------------------
# The architectures CI checks: A100 (sm_80) and H100/H200 (sm_90).
CUDA_CHECK_ARCHS = ("80", "90")


def find_nvcc() -> Path | None:
    """nvcc from ``$CUDA_HOME/bin``, else ``PATH``, else ``/usr/local/cuda-13.0`` or
    ``/usr/local/cuda``; None when there is none."""
    import shutil

    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc")
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(Path(on_path))
    candidates += [Path("/usr/local/cuda-13.0/bin/nvcc"), Path("/usr/local/cuda/bin/nvcc")]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def cuda_compile_command(nvcc: Path, source: Path, output: Path) -> list[str]:
    """The nvcc command that compiles one ``.cu`` (object only) for every checked arch."""
    gencode = []
    for arch in CUDA_CHECK_ARCHS:
        gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return [str(nvcc), *_CUDA_CFLAGS, "-std=c++17", "--threads", str(len(CUDA_CHECK_ARCHS)),
            *gencode, "-I", str(source.parent), "-I", str(sources_dir()), "-c", str(source),
            "-o", str(output)]


def _compile_error(command: list[str], verbose: bool) -> str | None:
    """Run one compiler ``command``; None when it succeeds, else its first error line (the
    whole output goes to stderr with ``verbose``)."""
    import subprocess
    import sys

    result = subprocess.run(command, capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    if verbose and output:
        print(output, file=sys.stderr)
    if result.returncode == 0:
        return None
    lines = output.splitlines()
    first = next((line for line in lines if "error" in line.lower()),
                 lines[0] if lines else f"exit status {result.returncode}")
    return first.strip()


def compile_cuda_sources(nvcc: Path | None = None, verbose: bool = False) -> list[Path]:
    """Compile every ``.cu`` under ``cuda/`` with nvcc for sm_80 and sm_90 into objects in a
    temporary folder (a compile check: nothing is linked or kept); returns the sources.

    Needs no GPU and no torch CUDA headers (the kernels use the CUDA runtime only). Raises
    :class:`~geometry.errors.UserError` when nvcc is missing or a file does not compile
    (nvcc's own messages go to stderr with ``verbose``; the first error line is in the
    sentence).
    """
    import tempfile

    from geometry.errors import UserError
    from geometry.progress import log_stage

    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise UserError("nvcc (the CUDA compiler) was not found: install the CUDA toolkit and "
                        "set CUDA_HOME or put nvcc on PATH to check the CUDA sources.")
    root = sources_dir()
    sources = sorted(root.rglob("*.cu"))
    with tempfile.TemporaryDirectory(prefix="sparseview-nvcc-") as tmp:
        for index, source in enumerate(sources):
            name = source.relative_to(root.parent)
            log_stage(f"nvcc {name} (sm_{', sm_'.join(CUDA_CHECK_ARCHS)})…")
            first = _compile_error(cuda_compile_command(nvcc, source, Path(tmp) / f"{index}.o"),
                                   verbose)
            if first is not None:
                raise UserError(f"{name} does not compile with {nvcc} for "
                                f"sm_{'/sm_'.join(CUDA_CHECK_ARCHS)} ({first}); "
                                "fix it (rerun with --verbose for nvcc's full output).")
    return sources


# --- torch-binding syntax check (also `recon build-ops --cuda-compile-only`) --------------
#: What the CPU wheel of torch lacks to parse ``c10/cuda`` headers: the header CMake writes
#: for a CUDA build (``c10/cuda/impl/cuda_cmake_macros.h``), here as torch's template fills it.
_CUDA_CMAKE_MACROS = ("#pragma once\n"
                      "// written by sparseview's binding check: the CPU wheel of torch lacks\n"
                      "// this CMake-generated header; this is what a shared-library build has\n"
                      "#define C10_CUDA_BUILD_SHARED_LIBS\n")


def find_cuda_include(nvcc: Path) -> Path | None:
    """The CUDA toolkit's include folder (the one with ``cuda_runtime_api.h``):
    ``$CUDA_HOME/include``, else beside ``nvcc`` (``nvcc`` may be a wrapper script on PATH),
    else ``/usr/local/cuda-13.0`` or ``/usr/local/cuda``; None when there is none."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "include")
    candidates += [nvcc.resolve().parent.parent / "include",
                   Path("/usr/local/cuda-13.0/include"), Path("/usr/local/cuda/include")]
    return next((path for path in candidates if (path / "cuda_runtime_api.h").is_file()), None)


def binding_check_command(compiler: str, source: Path, cuda_include: Path,
                          stub_include: Path | None) -> list[str]:
    """The ``-fsyntax-only`` command that parses one torch-facing CUDA binding
    (``cuda/<op>/*_cuda.cpp``) against torch's headers and the CUDA runtime's, as
    torch's extension build would (C++20)."""
    from torch.utils.cpp_extension import include_paths

    stub = ["-I", str(stub_include)] if stub_include is not None else []
    torch_includes = [arg for path in include_paths() for arg in ("-I", path)]
    return [compiler, "-std=c++20", "-fsyntax-only", *stub, *torch_includes, "-I",
            str(cuda_include), "-I", str(source.parent), "-I", str(sources_dir()),
            str(source)]


def check_cuda_bindings(nvcc: Path | None = None, verbose: bool = False) -> list[Path]:
    """Parse every torch-facing CUDA binding (``cuda/<op>/*_cuda.cpp``) with the host C++
    compiler (``-fsyntax-only``) against torch's headers and the CUDA toolkit's next to
    ``nvcc``; returns the sources.

    On a CPU wheel of torch, which lacks ``c10/cuda/impl/cuda_cmake_macros.h``, that one
    generated header is supplied from a temporary folder, so the check needs no GPU and no
    CUDA build of torch. Raises :class:`~geometry.errors.UserError` when nvcc (whose toolkit
    has the CUDA headers) or a C++ compiler is missing, or a binding does not parse (the
    first error line is in the sentence; the compiler's full output with ``verbose``).
    """
    import shutil
    import tempfile

    import torch.utils.cpp_extension as cpp_extension

    from geometry.errors import UserError
    from geometry.progress import log_stage

    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise UserError("nvcc (the CUDA compiler) was not found: install the CUDA toolkit and "
                        "set CUDA_HOME or put nvcc on PATH to check the CUDA sources.")
    cuda_include = find_cuda_include(nvcc)
    if cuda_include is None:
        raise UserError(f"the CUDA runtime headers (cuda_runtime_api.h) were not found next to "
                        f"{nvcc}; set CUDA_HOME to the CUDA toolkit's folder.")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise UserError("no C++ compiler (c++ or g++, or $CXX) was found to check the CUDA "
                        "bindings; install one (e.g. apt-get install g++).")
    root = sources_dir()
    sources = sorted(root.glob("*/*_cuda.cpp"))
    has_macros = any((Path(p) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").is_file()
                     for p in cpp_extension.include_paths())
    with tempfile.TemporaryDirectory(prefix="sparseview-bindings-") as tmp:
        stub = None
        if not has_macros:
            stub = Path(tmp)
            header = stub / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
            header.parent.mkdir(parents=True)
            header.write_text(_CUDA_CMAKE_MACROS)
        for source in sources:
            name = source.relative_to(root.parent)
            log_stage(f"{Path(compiler).name} -fsyntax-only {name} (torch binding)…")
            first = _compile_error(binding_check_command(compiler, source, cuda_include, stub),
                                   verbose)
            if first is not None:
                raise UserError(f"{name} does not compile against torch's headers "
                                f"({first}); fix it (rerun with --verbose for the "
                                "compiler's full output).")
    return sources
