"""`recon build-ops --cuda-compile-only` also parses the torch-facing CUDA bindings
(cuda/*/*_cuda.cpp) against torch's headers, on a CPU wheel of torch too (the one generated
c10/cuda header it lacks is supplied); a binding that does not parse is one sentence and
exit status 2."""

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
def test_repository_bindings_parse():
    # ~20 s per binding on a busy machine (torch's headers are large).
    sources = loader.check_cuda_bindings()
    assert [s.name for s in sources] == ["sparse_voxel_cuda.cpp"]


@needs_nvcc
def test_a_broken_binding_names_the_file(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cuda"
    (root / "bad").mkdir(parents=True)
    (root / "registry.cpp").write_text("// registry\n")
    (root / "bad" / "bad_cuda.cu").write_text("__global__ void k(float* x) { x[0] = 1; }\n")
    # parses only with c10/cuda's headers (the supplied CMake header included) ...
    good = ("#include <c10/cuda/CUDAMacros.h>\n#include <cuda_runtime_api.h>\n"
            "int ok() { return C10_CUDA_API_IS_DEFINED; }\n")
    (root / "bad" / "bad_cuda.cpp").write_text(good.replace("C10_CUDA_API_IS_DEFINED", "1"))
    monkeypatch.setattr(loader, "sources_dir", lambda: root)
    assert [s.name for s in loader.check_cuda_bindings()] == ["bad_cuda.cpp"]
    # ... and a type error is reported with the file's name
    (root / "bad" / "bad_cuda.cpp").write_text(good.replace("C10_CUDA_API_IS_DEFINED",
                                                            "undeclared_name"))
    with pytest.raises(SystemExit) as exit_info:
        _recon(["build-ops", "--cuda-compile-only"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cuda/bad/bad_cuda.cpp does not compile against torch's headers" in err
    assert "undeclared_name" in err


def test_binding_command_uses_torch_and_cuda_headers(tmp_path):
    command = loader.binding_check_command("g++", tmp_path / "a_cuda.cpp",
                                           Path("/cuda/include"), tmp_path / "stub")
    assert command[:3] == ["g++", "-std=c++20", "-fsyntax-only"]
    joined = " ".join(command)
    assert f"-I {tmp_path / 'stub'}" in joined and "-I /cuda/include" in joined
    assert "torch/include" in joined and command[-1] == str(tmp_path / "a_cuda.cpp")


def test_missing_compiler_is_a_user_error(monkeypatch, tmp_path):
    import shutil

    from geometry.errors import UserError

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="no C.. compiler"):
        loader.check_cuda_bindings(nvcc=tmp_path / "bin" / "nvcc")
