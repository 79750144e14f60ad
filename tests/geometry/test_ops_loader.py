"""The native-op loader: which sources it compiles with and without a CUDA device (no
compiler runs here), and that importing the ops never compiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geometry.ops import loader


@pytest.fixture
def fake_sources(tmp_path, monkeypatch) -> Path:
    """A sources folder shaped like cuda/: a registry, two ops, one with CUDA sources."""
    root = tmp_path / "cuda"
    for rel in ("registry.cpp", "alpha/alpha_cpu.cpp", "alpha/alpha_cuda.cu",
                "alpha/alpha_cuda.cpp", "alpha/alpha.h", "beta/beta_cpu.cpp"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"// {rel}\n")
    monkeypatch.setattr(loader, "sources_dir", lambda: root)
    monkeypatch.setenv("SPARSEVIEW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    return root


def _rel(paths, root: Path) -> list[str]:
    return [str(Path(p).relative_to(root)) for p in paths]


CPU_SOURCES = ["registry.cpp", "alpha/alpha_cpu.cpp", "beta/beta_cpu.cpp"]
CUDA_SOURCES = ["alpha/alpha_cuda.cpp", "alpha/alpha_cuda.cu"]


def test_plan_without_cuda_device_compiles_cpu_sources_only(fake_sources, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = loader.build_plan()
    assert _rel(plan.sources, fake_sources) == CPU_SOURCES
    assert not plan.with_cuda
    assert plan.name.startswith("sparseview_ops_")
    assert plan.build_dir == fake_sources.parent / "cache" / plan.name


def test_plan_with_cuda_device_adds_cuda_sources(fake_sources, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu_plan = loader.build_plan()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plan = loader.build_plan()
    assert _rel(plan.sources, fake_sources) == CPU_SOURCES + CUDA_SOURCES
    assert plan.with_cuda
    assert plan.name != cpu_plan.name  # a CUDA build never reuses the CPU-only library
    # Without CUDA sources, a CUDA device changes nothing: same sources, same build key.
    for rel in CUDA_SOURCES:
        (fake_sources / rel).unlink()
    assert loader.build_plan() == cpu_plan


def test_build_ops_passes_the_plan_to_load(fake_sources, monkeypatch):
    """build_ops hands torch's load() the CUDA switch only with CUDA sources (load faked)."""
    calls = []
    monkeypatch.setattr("torch.utils.cpp_extension.load", lambda **kw: calls.append(kw))
    for available in (False, True):
        monkeypatch.setattr(loader, "_LOADED", None)
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        path = loader.build_ops()
        plan = loader.build_plan()
        assert path == plan.build_dir / f"{plan.name}.so"
        assert plan.build_dir.is_dir()
    cpu_call, cuda_call = calls
    assert _rel(cpu_call["sources"], fake_sources) == CPU_SOURCES
    assert "with_cuda" not in cpu_call and "extra_cuda_cflags" not in cpu_call
    assert cpu_call["is_python_module"] is False
    assert "-fopenmp" in cpu_call["extra_cflags"] and "-fopenmp" in cpu_call["extra_ldflags"]
    assert _rel(cuda_call["sources"], fake_sources) == CPU_SOURCES + CUDA_SOURCES
    assert cuda_call["with_cuda"] is True and cuda_call["extra_cuda_cflags"]


def test_repository_sources_without_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = loader.sources_dir()
    assert root == Path(__file__).resolve().parents[2] / "cuda"
    plan = loader.build_plan()
    assert _rel(plan.sources, root) == [
        "registry.cpp", "projection/projection_cpu.cpp", "rasterize/rasterize_cpu.cpp",
        "rasterize/sh_cpu.cpp", "sparse_voxel/sparse_voxel_cpu.cpp", "ssim/ssim_cpu.cpp",
        "voxelize/voxelize_cpu.cpp"]
    assert not plan.with_cuda


def test_importing_the_ops_compiles_nothing():
    code = (
        "import geometry, geometry.ops.rasterize, geometry.ops.voxelize, reconstruction.splatting\n"
        "from geometry.ops import loader\n"
        "assert loader._LOADED is None\n"
        "import torch\n"
        "assert not hasattr(torch.ops.sparseview, 'voxelize')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[2])
