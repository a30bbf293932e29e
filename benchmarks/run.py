"""Run every benchmark and, with --write, replace benchmarks/RESULTS.md with the numbers.

    python benchmarks/run.py --write      (or: make bench)
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_collator  # noqa: E402
import bench_ops  # noqa: E402
from harness import machine  # noqa: E402

from diffmask_fast._io import atomic_write_bytes  # noqa: E402

GOALS = """Goals: collator >= 100x faster than the reference collator and <= 0.2x the time of
`DataCollatorForLanguageModeling(whole_word_mask=True)`; `sample_without_replacement` <= 1 ms on
64 x 512; `max_anchor_similarity` >= 80% of torch's fp32 matmul rate for K >= 1000, and within
1.5x of the time to read the embeddings twice for K = 20."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite benchmarks/RESULTS.md")
    args = parser.parse_args()
    collator_table, _ = bench_collator.run()
    ops_table, _ = bench_ops.run()
    report = "\n".join([
        "# Benchmark results",
        "",
        f"Machine: {machine()}.",
        f"Date: {datetime.date.today().isoformat()}. Command: `make bench` (`python benchmarks/run.py --write`).",
        "Every ratio compares numbers measured in the same run; times are medians of repeated runs.",
        "",
        GOALS,
        "",
        "## Collator (per batch, word scores ready)",
        "",
        collator_table,
        "",
        "## Ops",
        "",
        ops_table,
        "",
    ])
    print(report)
    if args.write:
        atomic_write_bytes(HERE / "RESULTS.md", report.encode("utf-8"))


if __name__ == "__main__":
    main()
