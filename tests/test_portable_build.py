"""The C++ sources build for 64-bit ARM (Graviton, Apple silicon), where the AVX kernels and the
x86 float-mode register are compiled out and BLAS does the products. No test here runs on such a
CPU, so each source is cross-compiled for aarch64 with the clang that the ``ziglang`` package
ships: it fails on an error, and on a warning (-Wall, as the extension's build) in the project's
own files (torch's and Python's headers are system headers, as in test_cuda_build.py). The core's
tests build as C++17 (as CMake builds them), the operators under the standard of the extension's
build (cxx_standards.py)."""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch.utils.cpp_extension

from cxx_standards import built_with

ziglang = pytest.importorskip("ziglang", reason="ziglang (a cross-compiling clang) is not installed")

ROOT = Path(__file__).resolve().parents[1]
OPERATORS = sorted(str(path.relative_to(ROOT)) for path in [*(ROOT / "csrc" / "cpu").glob("*.cpp"),
                                                              ROOT / "csrc" / "ops.cpp"])
CORE_TESTS = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests" / "cpp").glob("*.cpp"))


def cross_compile(source: str, system_includes: list[str], tmp_path: Path, standard: str = "c++17") -> None:
    zig = Path(ziglang.__file__).parent / "zig"
    env = dict(os.environ, ZIG_GLOBAL_CACHE_DIR=str(tmp_path / "cache"), ZIG_LOCAL_CACHE_DIR=str(tmp_path / "cache"))
    command = [str(zig), "c++", "-target", "aarch64-linux-gnu", f"-std={standard}", "-O1", "-Wall", "-Werror",
               "-I", "csrc",
               *(flag for path in system_includes for flag in ("-isystem", path)),
               "-c", source, "-o", str(tmp_path / "out.o")]
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "out.o").stat().st_size > 0


@pytest.mark.parametrize("source", CORE_TESTS)
def test_the_core_and_its_tests_build_for_arm(source, tmp_path):
    cross_compile(source, [], tmp_path)


@pytest.mark.parametrize("source", OPERATORS)
def test_the_cpu_operators_build_for_arm(source, tmp_path):
    cross_compile(source, [*torch.utils.cpp_extension.include_paths(), sysconfig.get_paths()["include"]], tmp_path,
                  built_with())
