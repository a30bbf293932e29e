"""Timing and reporting shared by the benchmarks: medians of repeated runs, machine facts, tables."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from typing import Callable, TypeVar

import torch

#: Set to "1" (``run.py --smoke`` does) for a smoke run: every section takes every measurement once,
#: on tiny sizes, to check the scripts end to end in seconds; its numbers mean nothing. Child
#: processes inherit it, so their sizes shrink too.
SMOKE_VARIABLE = "DIFFMASK_FAST_BENCH_SMOKE"
T = TypeVar("T")


def smoke() -> bool:
    """Whether this is a smoke run (see SMOKE_VARIABLE)."""
    return os.environ.get(SMOKE_VARIABLE) == "1"


def enable_smoke() -> None:
    """Make this process and its children a smoke run; before importing a section, whose sizes are
    fixed when it is imported."""
    os.environ[SMOKE_VARIABLE] = "1"


def sized(full: T, small: T) -> T:
    """``full``, or ``small`` in a smoke run: a section's sizes in one place, both visible."""
    return small if smoke() else full


def measure(fn: Callable[[], object], min_seconds: float = 1.0, min_runs: int = 5, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in seconds, over at least ``min_runs`` runs and ``min_seconds``;
    one run without warm-up in a smoke run."""
    return measure_together({"fn": fn}, min_seconds=min_seconds, min_runs=min_runs, warmup=warmup)["fn"]


def measure_together(fns: dict[str, Callable[[], object]], min_seconds: float = 1.0, min_runs: int = 5,
                     warmup: int = 2) -> dict[str, float]:
    """Median wall time of each of ``fns`` in seconds, called in turn, one call of each per round:
    a machine that slows down or speeds up during the measurement shifts them all alike, so the
    ratio of two is not a record of when each was timed. ``min_runs`` and ``min_seconds`` count
    rounds."""
    if smoke():
        min_seconds, min_runs, warmup = 0.0, 1, 0
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    rounds, started = 0, time.perf_counter()
    while rounds < min_runs or time.perf_counter() - started < min_seconds:
        for name, fn in fns.items():
            begin = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - begin)
        rounds += 1
    return {name: statistics.median(values) for name, values in times.items()}


def machine() -> str:
    """CPU model, cores, threads, the CPU kernels the ops run (``DIFFMASK_FAST_CPU_KERNELS`` may
    narrow them) and library versions, for RESULTS.md."""
    from diffmask_fast import _extension

    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}; "
            f"diffmask_fast kernels {_extension.load().cpu_kernels}), "
            f"Python {platform.python_version()}")


def verdict(met: bool, goal: str) -> str:
    """A goal's line in a results table: met, or missed in bold, so a miss cannot pass unseen."""
    return f"met ({goal})" if met else f"**missed** ({goal})"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _section_span(text: str, heading: str) -> tuple[int, int] | None:
    """Where the section that starts with the line ``heading`` lies in ``text`` (up to the next
    ``## `` heading or the end), or None. Whole lines only: "## GPU" is no "### GPU"."""
    found = re.search(rf"^{re.escape(heading)}$", text, re.MULTILINE)
    if found is None:
        return None
    following = re.search(r"^## ", text[found.end():], re.MULTILINE)
    return found.start(), found.end() + following.start() - 1 if following else len(text)  # before its "\n"


def read_section(path, heading: str) -> str | None:
    """The section of ``path`` that starts with the line ``heading``, or None."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    span = _section_span(text, heading)
    return None if span is None else text[span[0]:span[1]].rstrip("\n") + "\n"


def replace_section(path, heading: str, section: str) -> None:
    """Put ``section`` (markdown starting with the line ``heading``) in place of the section of
    ``path`` with that heading, or at its end; the rest of the file stays as it is."""
    from diffmask_fast._io import atomic_write_bytes

    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    span = _section_span(text, heading)
    if span is not None:
        text = text[:span[0]] + section.rstrip("\n") + "\n" + text[span[1]:]
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
