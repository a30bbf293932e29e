"""The CPU operators' narrower paths: AVX2 panels, and BLAS alone (CPUs with neither AVX2 nor
AVX-512, ARM among them). A CPU runs the widest it has, so on an AVX-512 machine the others ran
in no test; $DIFFMASK_FAST_CPU_KERNELS caps the kernels, and the similarity and IVF tests run
again here under each cap the machine allows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffmask_fast._extension import CPU_KERNELS, CPU_KERNELS_VARIABLE as VARIABLE

NARROW_TO_WIDE = ("none", "avx2", "avx512")
ROOT = Path(__file__).resolve().parents[1]


def environment(allowed: str | None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != VARIABLE}
    if allowed is not None:
        env[VARIABLE] = allowed
    return env


def kernels_run(allowed: str | None) -> str:
    """The kernels the operators run in a fresh process with ``allowed`` in the environment."""
    run = subprocess.run([sys.executable, "-c", "from diffmask_fast import _extension; "
                          "print(_extension.load().cpu_kernels)"],
                         capture_output=True, text=True, env=environment(allowed), cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


@pytest.fixture(scope="module")
def widest() -> str:
    return kernels_run(None)


def test_the_kernels_run_are_the_widest_the_cpu_has_within_what_is_allowed(widest):
    assert set(NARROW_TO_WIDE) == set(CPU_KERNELS) and widest in NARROW_TO_WIDE
    for allowed in NARROW_TO_WIDE:
        expected = min(allowed, widest, key=NARROW_TO_WIDE.index)
        assert kernels_run(allowed) == expected, allowed
    assert kernels_run("") == widest


def test_an_unknown_kernel_name_is_refused_by_name():
    run = subprocess.run([sys.executable, "-c", "import diffmask_fast.ops"], capture_output=True, text=True,
                         env=environment("sse4"), cwd=ROOT, timeout=300)
    assert run.returncode != 0
    assert "DIFFMASK_FAST_CPU_KERNELS must be one of avx512, avx2, none (or unset), got 'sse4'" in run.stderr


@pytest.mark.parametrize("allowed", ["avx2", "none"])
def test_the_narrower_paths_pass_the_similarity_and_ivf_tests(widest, allowed):
    if NARROW_TO_WIDE.index(allowed) >= NARROW_TO_WIDE.index(widest):
        pytest.skip(f"this CPU runs {widest!r} kernels: the other tests ran that path")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_ops.py", "tests/test_ivf_scan.py", "tests/test_index.py",
                          "-k", "simil or ivf or top_dots or exact or denormal"],
                         capture_output=True, text=True, env=environment(allowed), cwd=ROOT, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
