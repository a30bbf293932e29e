"""The GPU benchmark script runs end to end: its smoke mode takes every measurement on small sizes,
on the CPU here, so a GPU session's one run of it does not fail on a mistake a CPU could catch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke_run_writes_every_measurement(tmp_path):
    output = tmp_path / "gpu.md"
    process = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--device", "cpu", "--output", str(output)],
        capture_output=True, text=True, timeout=600,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    text = output.read_text(encoding="utf-8")
    assert text.startswith("## GPU\n") and "Command: `python benchmarks/bench_gpu.py --smoke --device cpu`." in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| measurement")]
    names = [row.split(" | ")[0].lstrip("| ") for row in rows]
    for k in ("20", "100", "1,000"):
        for precision in ("fp32", "TF32 ('high')", "bf16 ('medium')"):
            assert f"max_anchor_similarity {precision}, K = {k}" in names
    assert "sample_without_replacement, 64 x 512, 128 per row" in names
    assert any(name.startswith("full masking, 8 x 128 tokens") for name in names)
    assert any(name.startswith("small RoBERTa MLM forward + backward") for name in names), text
    assert all(" ms" in row.split(" | ")[1] for row in rows), text  # every measurement took a time


def test_gpu_benchmark_refuses_full_sizes_on_the_cpu():
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu"],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 2 and "needs --smoke" in process.stderr


def test_a_run_without_a_gpu_keeps_the_recorded_gpu_section(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from run import kept_section
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    results = tmp_path / "RESULTS.md"
    measured = "## GPU\n\nGoals.\n\n| measurement | device time |\n|---|---|\n| masking | 0.2 ms |\n"
    results.write_text(f"# Benchmark results\n\n## Ops\n\nx\n\n{measured}\n## Continued pretraining\n\ny\n",
                       encoding="utf-8")
    assert kept_section(results, "GPU", {"skipped": "no CUDA device"}) == measured
    assert kept_section(results, "GPU", {"device": "NVIDIA H200"}) is None  # a measured run replaces it
    assert kept_section(results, "Training", {"skipped": "no CUDA device"}) is None  # nothing to keep
    results.write_text("## GPU\n\n| GPU benchmarks |\n|---|\n| skipped: no CUDA device |\n", encoding="utf-8")
    assert kept_section(results, "GPU", {"skipped": "no CUDA device"}) is None
