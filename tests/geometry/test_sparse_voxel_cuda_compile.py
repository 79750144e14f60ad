"""`recon build-ops --cuda-compile-only`: every .cu under cuda/ compiles with nvcc for sm_80
and sm_90 (no GPU needed); a file that does not compile, or a missing nvcc, is one sentence
and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from geometry.ops import loader
from geometry.version import run_subcommands
from sparseview.cli.recon import BuildOps

NVCC = loader.find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) not installed")


def _recon(argv: list[str]) -> None:
    run_subcommands({"build-ops": BuildOps}, "recon", "test", argv=argv)


@needs_nvcc
def test_repository_cuda_sources_compile(capsys):
    # ~20-40 s on 2 busy cores (one nvcc run per .cu, both architectures in parallel).
    _recon(["build-ops", "--cuda-compile-only"])
    out = capsys.readouterr().out
    sources = sorted(loader.sources_dir().rglob("*.cu"))
    assert any(s.name == "sparse_voxel_cuda.cu" for s in sources)
    assert f"{len(sources)} file(s)" in out


@needs_nvcc
def test_a_broken_cuda_source_names_the_file(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cuda"
    (root / "good").mkdir(parents=True)
    (root / "registry.cpp").write_text("// registry\n")
    (root / "good" / "good_cuda.cu").write_text("__global__ void k(float* x) { x[0] = 1; }\n")
    (root / "bad").mkdir()
    (root / "bad" / "bad_cuda.cu").write_text("__global__ void k(float* x) { x[0] = y; }\n")
    monkeypatch.setattr(loader, "sources_dir", lambda: root)
    with pytest.raises(SystemExit) as exit_info:
        _recon(["build-ops", "--cuda-compile-only"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cuda/bad/bad_cuda.cu does not compile" in err and "sm_80/sm_90" in err


def test_missing_nvcc_is_a_user_error(monkeypatch, capsys):
    monkeypatch.setattr(loader, "find_nvcc", lambda: None)
    with pytest.raises(SystemExit) as exit_info:
        _recon(["build-ops", "--cuda-compile-only"])
    assert exit_info.value.code == 2
    assert "nvcc (the CUDA compiler) was not found" in capsys.readouterr().err


def test_compile_command_targets_both_architectures(tmp_path):
    command = loader.cuda_compile_command(Path("/x/nvcc"), tmp_path / "a.cu", tmp_path / "a.o")
    joined = " ".join(command)
    assert "-gencode arch=compute_80,code=sm_80" in joined
    assert "-gencode arch=compute_90,code=sm_90" in joined
    assert "-c" in command and "--fmad=false" in command
