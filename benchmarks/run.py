"""Run every benchmark and, with --write, replace benchmarks/RESULTS.md with the numbers.

    python benchmarks/run.py --write            (or: make bench)
    python benchmarks/run.py --only collator    one section, printed only
    python benchmarks/run.py --smoke            every measurement once on tiny sizes, in seconds:
                                                checks the scripts (the tests do), its numbers mean nothing

Each section is a module with ``GOALS`` (a sentence) and ``run() -> (markdown, raw results)``.
A smoke run writes only to a file named with --results, never to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import importlib  # noqa: E402

from harness import enable_smoke, machine, read_section, replace_section, smoke  # noqa: E402

from diffmask_fast._io import atomic_write_bytes  # noqa: E402

#: (name, module, heading) of every section, in the order RESULTS.md shows them.
SECTIONS = [
    ("collator", "bench_collator", "Collator (per batch, word scores ready)"),
    ("ops", "bench_ops", "Ops"),
    ("counting", "bench_counting", "Word counting"),
    ("scoring", "bench_scoring", "Word scoring"),
    ("training", "bench_training", "Training step: masking strategies and the MLM head"),
    ("attention", "bench_attention", "Attention baselines: the masking pass"),
    ("gpu", "bench_gpu", "GPU"),
]

#: Sections a run that cannot measure them (no GPU) keeps from an earlier run.
KEPT_WHEN_SKIPPED = {"GPU"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite --results (default benchmarks/RESULTS.md)")
    parser.add_argument("--only", choices=[name for name, _, _ in SECTIONS],
                        help="run one section and print it (with --write, replace that section of --results)")
    parser.add_argument("--smoke", action="store_true",
                        help="every measurement once on tiny sizes: checks the scripts, its numbers mean nothing")
    parser.add_argument("--results", type=Path,
                        help="the markdown file --write rewrites (default benchmarks/RESULTS.md; a smoke run needs it)")
    args = parser.parse_args(argv)
    args.smoke = args.smoke or smoke()  # the environment variable alone makes a smoke run too
    if args.smoke and args.write and args.results is None:
        parser.error("--smoke --write needs --results: a smoke run's numbers never go to benchmarks/RESULTS.md")
    if args.results is None:
        args.results = HERE / "RESULTS.md"
    return args


def main() -> None:
    args = parse_args()
    if args.smoke:
        enable_smoke()  # before any section is imported: their sizes are fixed on import
    if args.only:
        run_one(args)
        return
    body = []
    for _, module, heading in SECTIONS:
        section = importlib.import_module(module)
        table, results = run_section(section)
        kept = kept_section(args.results, heading, results)
        body += [kept] if kept is not None else measured_section(heading, section.GOALS, table, results, args)
    report = "\n".join([
        "# Benchmark results",
        "",
        f"Every section measured by {command(args)} on {machine()}, {datetime.date.today().isoformat()},",
        "unless it names its own machine, date and command (measured since on its own, or kept from a",
        "run on a machine with a GPU). Every ratio compares numbers measured in the same run; times are",
        "medians of repeated runs unless a section says otherwise.",
        "",
        *body,
    ])
    print(report)
    if args.write:
        atomic_write_bytes(args.results, (report + _kept_comparison(args.results)).encode("utf-8"))


def measured_section(heading: str, goals: str, table: str, results: dict, args: argparse.Namespace) -> list[str]:
    """The lines of a section this run measured. One that a later run may keep (the GPU's, on a
    machine without one) names its own machine, date and command: the report's header will not."""
    stamp = [f"Measured by {command(args)} on {machine()}, {datetime.date.today().isoformat()}.", ""] \
        if heading in KEPT_WHEN_SKIPPED and not results.get("skipped") else []
    return [f"## {heading}", "", goals, "", *stamp, table, ""]


def run_one(args: argparse.Namespace) -> None:
    """``--only``: one section, printed, and with --write put in place of its section of --results."""
    module, heading = next((m, h) for name, m, h in SECTIONS if name == args.only)
    section = importlib.import_module(module)
    table, results = run_section(section)
    print(table)
    if results.get("skipped"):  # nothing measured: nothing to stamp as measured, and a make target fails
        kept = " (it keeps its earlier section)" if args.write and kept_section(args.results, heading, results) else ""
        sys.exit(f"'{heading}' was not measured: {results['skipped']}; {args.results.name} is left as it is{kept}")
    if args.write:
        note = (f"Measured on its own: {machine()}; {datetime.date.today().isoformat()}; "
                f"`python benchmarks/run.py --only {args.only}{' --smoke' if args.smoke else ''} --write`.")
        replace_section(args.results, f"## {heading}",
                        "\n".join([f"## {heading}", "", section.GOALS, "", note, "", table, ""]))
    if results.get("failed"):  # written with the rest, but a make target fails
        sys.exit(f"'{heading}': {', '.join(results['failed'])} failed (see the rows that say so)")


def run_section(section) -> tuple[str, dict]:
    """A section's text and raw results; the GPU section takes its sizes as an argument, so a smoke
    run passes it its small ones (the CPU sections read the smoke flag themselves)."""
    if smoke() and hasattr(section, "SMOKE"):
        return section.run(sizes=section.SMOKE)
    return section.run()


def command(args: argparse.Namespace) -> str:
    """The report's command; a smoke run's says that its numbers mean nothing."""
    if not args.smoke:
        return "`make bench` (`python benchmarks/run.py --write`)"
    return "`python benchmarks/run.py --smoke` (a smoke run: tiny sizes, one run each, the numbers mean nothing)"


def kept_section(path: Path, heading: str, results: dict) -> str | None:
    """The section ``path`` already has under ``heading``, when this run skipped it (no GPU here)
    and the earlier one holds measurements: a run on a machine without a GPU keeps the GPU numbers."""
    if not results.get("skipped"):
        return None
    earlier = read_section(path, f"## {heading}")
    return earlier if earlier is not None and "skipped:" not in earlier else None


def _kept_comparison(path: Path) -> str:
    """The section written by comparison.py (it takes an hour, so `make bench` keeps it as it is)."""
    from comparison import SECTION

    kept = read_section(path, SECTION)
    return "" if kept is None else "\n" + kept


if __name__ == "__main__":
    main()
