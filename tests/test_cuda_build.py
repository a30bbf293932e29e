"""The CUDA operator adapters compile, even where torch has no CUDA (as on CI).

csrc/cuda/*_launch.cpp register the CUDA kernels with torch and are compiled only into a CUDA
build. A CPU build of torch ships the c10/cuda and ATen/cuda headers they include, all but one
header generated when torch itself is built (it only defines C10_CUDA_BUILD_SHARED_LIBS), so
with the CUDA toolkit's headers they can be checked here: a syntax-and-types pass of the C++
compiler, warnings as errors in our code (torch's headers are system headers), under each C++
standard torch's headers accept (cxx_standards.py). The kernels themselves (csrc/cuda/*.cu) are
compiled by nvcc in the C++ tests (`make test-cpp`, C++17), and here under the standards a build
against torch may use. Skipped when no CUDA toolkit or compiler is found.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

from cxx_standards import accepted_by_torch

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = sorted((ROOT / "csrc" / "cuda").glob("*_launch.cpp"))
KERNELS = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def cuda_include_dir() -> Path | None:
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parents[1]))
    for candidate in candidates:
        if candidate and (Path(candidate) / "include" / "cuda_runtime_api.h").is_file():
            return Path(candidate) / "include"
    return None


def compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def test_there_are_adapters_and_kernels():
    assert {p.name for p in ADAPTERS} >= {"similarity_launch.cpp", "sampling_launch.cpp", "masking_launch.cpp"}
    assert {p.name for p in KERNELS} >= {"similarity.cu", "sampling.cu", "masking.cu"}


@pytest.mark.skipif(cuda_include_dir() is None or compiler() is None, reason="no CUDA toolkit headers or C++ compiler")
@pytest.mark.parametrize("standard", accepted_by_torch())
def test_adapters_compile_against_torch_headers(tmp_path, standard):
    torch_includes = cpp_extension.include_paths()
    shim = tmp_path / "shim"
    generated = Path("c10") / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not any((Path(p) / generated).is_file() for p in torch_includes):
        (shim / generated).parent.mkdir(parents=True)
        (shim / generated).write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    flags = [compiler(), f"-std={standard}", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-Wno-c++20-extensions",
             f"-DDIFFMASK_FAST_TORCH_VERSION=\"{torch.__version__}\"", "-DDIFFMASK_FAST_WITH_CUDA",
             "-DTORCH_API_INCLUDE_EXTENSION_H", f"-I{ROOT / 'csrc'}"]
    for include in [str(shim), *torch_includes, str(cuda_include_dir())]:
        flags += ["-isystem", include]
    assert_each_compiles(ADAPTERS, lambda path: [*flags, str(path)])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc")
@pytest.mark.parametrize("standard", accepted_by_torch())
def test_kernels_compile_under_the_standards_torch_builds_with(tmp_path, standard):
    """CMake compiles the kernels as C++17; a build against torch 2.12 or later compiles them as
    C++20 (with the warnings CMake's build refuses)."""
    flags = ["nvcc", f"-std={standard}", "-O0", "-arch=sm_80", *cmake_cuda_flags(), f"-I{ROOT / 'csrc'}", "-c"]
    assert_each_compiles(KERNELS, lambda path: [*flags, str(path), "-o", str(tmp_path / f"{path.stem}.o")])


def cmake_cuda_flags() -> list[str]:
    """The flags CMake's build compiles the kernels with (warnings as errors, no FMA contraction),
    read from CMakeLists.txt so that this check refuses what that build refuses."""
    found = re.search(r"set\(DIFFMASK_FAST_CUDA_FLAGS ([^)]+)\)", (ROOT / "CMakeLists.txt").read_text())
    assert found, "CMakeLists.txt no longer sets DIFFMASK_FAST_CUDA_FLAGS"
    return found.group(1).split()


def assert_each_compiles(sources: list[Path], command) -> None:
    """Runs ``command(source)`` for every source at once; fails naming each that did not compile."""
    processes = {path.name: subprocess.Popen(command(path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                             text=True) for path in sources}
    failures = {}
    for name, process in processes.items():
        output, _ = process.communicate(timeout=600)
        if process.returncode != 0:
            failures[name] = output[-4000:]
    assert not failures, "\n".join(f"--- {name}\n{output}" for name, output in failures.items())


def run_setup(tmp_path, **env):
    environment = {**os.environ, **env}
    return subprocess.run([sys.executable, str(ROOT / "setup.py"), "--name"], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_a_required_cuda_build_names_what_is_missing(tmp_path):
    process = run_setup(tmp_path, DIFFMASK_FAST_CUDA="1", CUDA_HOME=str(tmp_path))
    assert process.returncode != 0
    assert "DIFFMASK_FAST_CUDA=1 but the CUDA kernels cannot be built" in process.stderr
    if torch.version.cuda is None:
        assert f"the installed torch {torch.__version__} was built without CUDA" in process.stderr
    else:
        assert f"CUDA_HOME={tmp_path} has no {os.path.join('bin', 'nvcc')}" in process.stderr


def test_an_unknown_cuda_switch_is_refused(tmp_path):
    process = run_setup(tmp_path, DIFFMASK_FAST_CUDA="maybe")
    assert process.returncode != 0 and "DIFFMASK_FAST_CUDA must be one of auto, 0, 1, got 'maybe'" in process.stderr
