"""Run every benchmark and, with --write, replace benchmarks/RESULTS.md with the numbers.

    python benchmarks/run.py --write            (or: make bench)
    python benchmarks/run.py --only collator    one section, printed only

Each section is a module with ``GOALS`` (a sentence) and ``run() -> (markdown, raw results)``.
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

from harness import machine, read_section, replace_section  # noqa: E402

from diffmask_fast._io import atomic_write_bytes  # noqa: E402

#: (name, module, heading) of every section, in the order RESULTS.md shows them.
SECTIONS = [
    ("collator", "bench_collator", "Collator (per batch, word scores ready)"),
    ("ops", "bench_ops", "Ops"),
    ("counting", "bench_counting", "Word counting"),
    ("scoring", "bench_scoring", "Word scoring"),
    ("training", "bench_training", "Training step: masking strategies and the MLM head"),
    ("gpu", "bench_gpu", "GPU"),
]

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite benchmarks/RESULTS.md")
    parser.add_argument("--only", choices=[name for name, _, _ in SECTIONS],
                        help="run one section and print it (with --write, replace that section of RESULTS.md)")
    args = parser.parse_args()
    if args.only:
        module, heading = next((m, h) for name, m, h in SECTIONS if name == args.only)
        section = importlib.import_module(module)
        table, results = section.run()
        print(table)
        if args.write and kept_section(HERE / "RESULTS.md", heading, results) is not None:
            print(f"RESULTS.md keeps its earlier '{heading}' section: this run skipped ({results['skipped']})")
        elif args.write:
            note = (f"Measured on its own: {machine()}; {datetime.date.today().isoformat()}; "
                    f"`python benchmarks/run.py --only {args.only} --write`.")
            replace_section(HERE / "RESULTS.md", f"## {heading}",
                            "\n".join([f"## {heading}", "", section.GOALS, "", note, "", table, ""]))
        return
    body = []
    for _, module, heading in SECTIONS:
        section = importlib.import_module(module)
        table, results = section.run()
        kept = kept_section(HERE / "RESULTS.md", heading, results)
        body += [kept] if kept is not None else [f"## {heading}", "", section.GOALS, "", table, ""]
    report = "\n".join([
        "# Benchmark results",
        "",
        f"Machine: {machine()}.",
        f"Date: {datetime.date.today().isoformat()}. Command: `make bench` (`python benchmarks/run.py --write`).",
        "Every ratio compares numbers measured in the same run; times are medians of repeated runs.",
        "",
        *body,
    ])
    print(report)
    if args.write:
        atomic_write_bytes(HERE / "RESULTS.md", (report + _kept_comparison()).encode("utf-8"))


def kept_section(path: Path, heading: str, results: dict) -> str | None:
    """The section ``path`` already has under ``heading``, when this run skipped it (no GPU here)
    and the earlier one holds measurements: a run on a machine without a GPU keeps the GPU numbers."""
    if not results.get("skipped"):
        return None
    earlier = read_section(path, f"## {heading}")
    return earlier if earlier is not None and "skipped:" not in earlier else None


def _kept_comparison() -> str:
    """The section written by comparison.py (it takes an hour, so `make bench` keeps it as it is)."""
    from comparison import SECTION

    kept = read_section(HERE / "RESULTS.md", SECTION)
    return "" if kept is None else "\n" + kept


if __name__ == "__main__":
    main()
