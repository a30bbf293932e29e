"""GPU benchmarks, each against a baseline measured on the same GPU in the same run (CUDA events,
medians of repeated runs):

- max_anchor_similarity on 32,768 x 768 fp32 embeddings at K = 20, 1,000 and 100,000 anchors, as a
  fraction of the FLOP rate of torch.mm on the same shapes (fp32, TF32 off, torch's default), and
  for K = 20 against the memory-bandwidth floor (the time to read the embeddings once at the
  copy bandwidth measured in the same run); the 'high' (bf16x3) and 'medium' (bfloat16)
  precisions against torch.mm at the same names (TF32, and bfloat16).
- Full masking of a 256 x 512 batch on the GPU (DifferenceMasker: never-word look-up plus
  difference_mask_device), against the forward + backward pass of a RoBERTa-base-sized masked LM
  (RobertaConfig defaults, random weights, bfloat16 autocast) on the same batch.
- GPU against CPU time for each op (the CPU kernels on this machine's cores).

Without a CUDA device, or without the CUDA kernels in diffmask_fast._C, run() returns a one-line
table that says so. ``--smoke`` runs every measurement on small sizes, on the CPU where there is
no GPU: it checks the script end to end (the tests do), its numbers mean nothing.

    python benchmarks/bench_gpu.py [--output section.md] [--smoke [--device cpu]]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))  # the offline tokenizers
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from harness import machine, markdown_table, measure, milliseconds, verdict  # noqa: E402

GOALS = ("Goals (GPU): `max_anchor_similarity` >= 70% of torch.mm's fp32 rate for K >= 1000 and near the "
         "memory-bandwidth floor (at most 2x the time to read the embeddings once) for K = 20; full masking of "
         "a 256 x 512 batch <= 0.5 ms and <= 1% of a forward + backward pass of a RoBERTa-base-sized masked LM "
         "on the same batch.")


@dataclass(frozen=True)
class Sizes:
    """What is measured: the issue's shapes, or small ones that check the script quickly."""

    words: int = 32_768
    dim: int = 768
    anchor_counts: tuple[int, ...] = (20, 1000, 100_000)
    batch: int = 256
    length: int = 512
    # A large domain's score table, larger than an H100's or H200's L2 cache (50 / 60 MB): look-ups
    # go to memory as in training.
    table_words: int = 4_000_000
    model: dict = field(default_factory=dict)  # RobertaConfig arguments; RoBERTa-base by default
    seconds: float = 1.0  # how long each measurement repeats at least (scaled per measurement)


FULL = Sizes()
SMOKE = Sizes(words=1024, dim=64, anchor_counts=(20, 100, 1000), batch=8, length=128, table_words=10_000,
              model=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
              seconds=0.01)
CUDA_OPS = ("max_anchor_similarity", "sample_without_replacement", "difference_mask_device")


def unavailable() -> str | None:
    """Why the GPU benchmarks cannot run here, or None."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    from diffmask_fast import _extension

    _extension.load()
    missing = [op for op in CUDA_OPS if not _extension.has_kernel(op, "cuda")]
    if missing:
        return "diffmask_fast._C was built without CUDA kernels (rebuild with DIFFMASK_FAST_CUDA=1)"
    return None


def device_description(device: torch.device) -> str:
    if device.type != "cuda":
        return f"{machine()} (no GPU: sizes and numbers of a smoke run)"
    properties = torch.cuda.get_device_properties(device)
    return (f"{properties.name} ({properties.multi_processor_count} multiprocessors, "
            f"{properties.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}; CPU baselines: {machine()}")


def device_time(device: torch.device, fn, min_runs: int = 10, min_seconds: float = 0.5, warmup: int = 3) -> float:
    """Median time of ``fn`` on ``device`` in seconds: CUDA events around each call on a GPU, wall
    time elsewhere."""
    if device.type != "cuda":
        return measure(fn, min_seconds=min_seconds, min_runs=min_runs, warmup=warmup)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)
    return statistics.median(times)


#: "Near the memory-bandwidth floor": at most this many times the time to read the embeddings once.
NEAR_FLOOR = 2.0


def against_cpu(ours: float, cpu: float, what: str) -> str:
    """How the device's time compares with the CPU's, read the right way round either way."""
    if ours <= cpu:
        return f"{cpu / ours:.1f}x faster than {what} ({milliseconds(cpu)})"
    return f"{ours / cpu:.1f}x slower than {what} ({milliseconds(cpu)})"


def tflops(flops: float, seconds: float) -> str:
    return f"{flops / seconds / 1e12:.1f} TFLOP/s"


# ----------------------------------------------------------------------------------------------
# max_anchor_similarity
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tf32_products(allowed: bool):
    """torch's float32 matrix products may (or may not) round to TF32 inside the block; the
    setting before is put back after. Set through the per-backend setting where torch has it
    (2.9 and later): the legacy getter raises once that setting has been used in the process."""
    matmul = torch.backends.cuda.matmul
    name, value = (("fp32_precision", "tf32" if allowed else "ieee") if hasattr(matmul, "fp32_precision")
                   else ("allow_tf32", allowed))
    before = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, before)


def runs_tensor_core_precisions(device: torch.device) -> bool:
    """Whether 'high' and 'medium' run here: compute capability 8.0 or newer (the CPU runs all)."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] >= 8


def similarity(device: torch.device, sizes: Sizes) -> tuple[list, dict]:
    from diffmask_fast import ops

    rows, results = [], {}
    generator = torch.Generator(device=device).manual_seed(0)
    embeddings = torch.randn(sizes.words, sizes.dim, device=device, generator=generator)
    copy = torch.empty_like(embeddings)
    copy_time = device_time(device, lambda: copy.copy_(embeddings), min_runs=20, min_seconds=0.5 * sizes.seconds)
    bandwidth = 2 * embeddings.numel() * 4 / copy_time
    floor = embeddings.numel() * 4 / bandwidth  # reading the embeddings once
    results["copy_bandwidth_bytes_per_s"] = bandwidth
    cpu_embeddings = embeddings.cpu()
    fewest, most = min(sizes.anchor_counts), max(sizes.anchor_counts)
    tensor_cores = runs_tensor_core_precisions(device)
    with tf32_products(False):
        for k in sizes.anchor_counts:
            anchors = torch.randn(k, sizes.dim, device=device, generator=generator)
            anchors_t = anchors.T.contiguous()
            runs = 3 if k == most else 10

            def timed(fn):
                return device_time(device, fn, min_runs=runs, min_seconds=0.5 * sizes.seconds)

            flops = 2.0 * sizes.words * k * sizes.dim
            product = torch.empty(sizes.words, k, device=device)  # torch.mm writes in place, as ours allocates little
            ours = timed(lambda: ops.max_anchor_similarity(embeddings, anchors))
            matmul = timed(lambda: torch.mm(embeddings, anchors_t, out=product))
            product = None
            entry = {"ours": ours, "matmul_fp32": matmul}
            against = f"{matmul / ours:.0%} of torch.mm fp32 ({tflops(flops, matmul)})"
            goal = verdict(matmul / ours >= 0.7, ">= 70% of torch.mm") if k >= 1000 else "-"
            if k == fewest:
                against += f"; {ours / floor:.2f}x the memory floor ({milliseconds(floor)} at {bandwidth / 1e12:.2f} TB/s)"
                goal = verdict(ours / floor <= NEAR_FLOOR, f"<= {NEAR_FLOOR:g}x the memory floor")
            if k != most:
                cpu_anchors = anchors.cpu()  # copied before the timing: the CPU kernel's time alone
                cpu = measure(lambda: ops.max_anchor_similarity(cpu_embeddings, cpu_anchors), min_runs=3,
                              min_seconds=sizes.seconds)
                entry["cpu"] = cpu
                against += f"; {against_cpu(ours, cpu, 'the CPU kernel')}"
            rows.append([f"max_anchor_similarity fp32, K = {k:,}", f"{milliseconds(ours)} = {tflops(flops, ours)}",
                         against, goal])
            # The tensor-core precisions against torch.mm at the same setting's name.
            if tensor_cores:
                with tf32_products(True):
                    high = timed(lambda: ops.max_anchor_similarity(embeddings, anchors, "high"))
                    matmul_tf32 = timed(lambda: torch.mm(embeddings, anchors_t))
                e16, a16 = embeddings.bfloat16(), anchors_t.bfloat16()
                medium = timed(lambda: ops.max_anchor_similarity(embeddings, anchors, "medium"))
                matmul_bf16 = timed(lambda: torch.mm(e16, a16))
                entry.update(high=high, matmul_tf32=matmul_tf32, medium=medium, matmul_bf16=matmul_bf16)
                fused = " (float32: up to 32 anchors every precision is)" if k <= 32 else ""
                rows.append([f"max_anchor_similarity bf16x3 ('high'), K = {k:,}{fused}",
                             f"{milliseconds(high)} = {tflops(flops, high)}",
                             f"{matmul_tf32 / high:.0%} of torch.mm TF32 ({tflops(flops, matmul_tf32)})", "option"])
                rows.append([f"max_anchor_similarity bf16 ('medium'), K = {k:,}{fused}",
                             f"{milliseconds(medium)} = {tflops(flops, medium)}",
                             f"{matmul_bf16 / medium:.0%} of torch.mm bf16 ({tflops(flops, matmul_bf16)})", "option"])
            results[f"k{k}"] = entry
            release_cached_memory(device)
    return rows, results


def release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def sampling(device: torch.device, sizes: Sizes) -> tuple[list, dict]:
    weights = torch.rand(64, 512, generator=torch.Generator().manual_seed(0))
    weights[weights < 0.1] = 0
    counts = torch.full((64,), 128, dtype=torch.long)
    op = torch.ops.diffmask_fast.sample_without_replacement
    weights_on_device, counts_on_device = weights.to(device), counts.to(device)
    on_device = device_time(device, lambda: op(weights_on_device, counts_on_device, 7), min_runs=50,
                            min_seconds=0.5 * sizes.seconds)
    cpu = measure(lambda: op(weights, counts, 7), min_runs=200, min_seconds=sizes.seconds)  # the same entry point
    return [["sample_without_replacement, 64 x 512, 128 per row", milliseconds(on_device),
             f"{against_cpu(on_device, cpu, 'the CPU kernel')}; includes the input check's one synchronization",
             "-"]], {"device": on_device, "cpu": cpu}


# ----------------------------------------------------------------------------------------------
# Masking in the training step, and the step itself
# ----------------------------------------------------------------------------------------------


def text_batch(tokenizer, sizes: Sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """``sizes.batch`` rows of exactly ``sizes.length`` tokens of prose (SciCite when present, else
    the Python language reference), each from consecutive lines."""
    import tokenizers_offline

    lines = tokenizers_offline.training_lines(limit=100_000)
    rows, cursor = [], 0
    while len(rows) < sizes.batch:
        text = " ".join(lines[(cursor + i) % len(lines)] for i in range(40))
        cursor += 40
        ids = tokenizer(text, truncation=True, max_length=sizes.length)["input_ids"]
        if len(ids) == sizes.length:
            rows.append(ids)
    ids = torch.tensor(rows, dtype=torch.long)
    return ids, torch.ones_like(ids)


def masker_and_batch(sizes: Sizes):
    import random

    import tokenizers_offline

    from diffmask_fast import DifferenceMasker

    tokenizer = tokenizers_offline.roberta_byte_bpe()
    ids, attention = text_batch(tokenizer, sizes)
    words = {w.strip(".,;:()[]").lower() for line in tokenizers_offline.training_lines(limit=100_000) for w in line.split()}
    rng = random.Random(0)
    scores = {w: rng.uniform(-0.1, 1.0) for w in sorted(words)}
    masker = DifferenceMasker(tokenizer, scores, seed=0)
    masker.warm({"input_ids": ids, "attention_mask": attention})
    # Fill the table to a large domain's size (beyond the L2 cache), so that look-ups go to memory.
    filler = torch.Generator().manual_seed(1)
    masker.collator._cache.insert(torch.randint(1, 2**62, (sizes.table_words,), generator=filler),
                                  torch.rand(sizes.table_words, generator=filler))
    masker._upload_table()
    return masker, ids, attention


def graph_replay_time(device: torch.device, masker, ids, attention, sizes: Sizes) -> float:
    """The masking step replayed from a CUDA graph: the device time alone, without Python's launches."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        masker(ids, attention)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        masker(ids, attention)
    return device_time(device, graph.replay, min_runs=200, min_seconds=0.5 * sizes.seconds)


def training_step_time(device: torch.device, masked_ids, attention, labels, sizes: Sizes) -> tuple[float, int]:
    """Forward + backward of a RoBERTa masked LM (random weights, bfloat16 autocast) over the batch,
    in the largest micro-batches that fit; (seconds, micro-batch size)."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    # RoBERTa's position ids start after the padding index: 512 tokens need 514 positions, as
    # roberta-base has (RobertaConfig's default of 512 fails on them).
    config = RobertaConfig(**{"max_position_embeddings": sizes.length + 2, **sizes.model})
    model = RobertaForMaskedLM(config).to(device).train()
    try:
        for micro in [m for m in (sizes.batch, 128, 64, 32, 16) if m <= sizes.batch]:
            def forward_backward():
                for start in range(0, sizes.batch, micro):
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        loss = model(input_ids=masked_ids[start:start + micro],
                                     attention_mask=attention[start:start + micro],
                                     labels=labels[start:start + micro]).loss
                    loss.backward()
                model.zero_grad(set_to_none=True)

            try:
                return device_time(device, forward_backward, min_runs=5, min_seconds=2.0 * sizes.seconds,
                                   warmup=2), micro
            except (torch.cuda.OutOfMemoryError, RuntimeError) as error:  # cuBLAS's allocation failures too
                if not isinstance(error, torch.cuda.OutOfMemoryError) and "ALLOC_FAILED" not in str(error):
                    raise
                model.zero_grad(set_to_none=True)
                release_cached_memory(device)
        raise torch.cuda.OutOfMemoryError(f"out of memory even in micro-batches of {micro}")
    finally:
        model.cpu()
        release_cached_memory(device)


def masking_and_step(device: torch.device, sizes: Sizes) -> tuple[list, dict]:
    masker, ids, attention = masker_and_batch(sizes)
    cpu = measure(lambda: masker(ids, attention), min_runs=10, min_seconds=sizes.seconds)
    masker = masker.to(device)
    ids_on_device, attention_on_device = ids.to(device), attention.to(device)
    on_device = device_time(device, lambda: masker(ids_on_device, attention_on_device), min_runs=200,
                            min_seconds=0.5 * sizes.seconds)
    results = {"masking_device": on_device, "masking_cpu": cpu, "known_words": masker.coverage()["known_words"]}
    shown = milliseconds(on_device)
    if device.type == "cuda":
        results["masking_device_graph"] = graphed = graph_replay_time(device, masker, ids_on_device,
                                                                      attention_on_device, sizes)
        shown += f" ({milliseconds(graphed)} in a CUDA graph)"
    masked_ids, labels = masker(ids_on_device, attention_on_device)
    where = "GPU" if device.type == "cuda" else device.type.upper()
    rows = [[f"full masking, {sizes.batch} x {sizes.length} tokens (DifferenceMasker on the {where}, table of "
             f"{results['known_words']:,} words)", shown,
             against_cpu(on_device, cpu, "on the CPU"), verdict(on_device <= 0.5e-3, "<= 0.5 ms")]]
    model_name = "RoBERTa-base" if not sizes.model else "small RoBERTa"
    try:
        step, micro = training_step_time(device, masked_ids, attention_on_device, labels, sizes)
    except Exception as error:  # report it, and keep the masking numbers
        results["step_error"] = repr(error)
        rows.append([f"{model_name} MLM forward + backward", "not measured", repr(error), "masking <= 1%"])
    else:
        results.update(step=step, micro_batch=micro)
        rows.append([f"{model_name} MLM forward + backward, same batch (bf16 autocast, micro-batches of {micro})",
                     milliseconds(step), f"masking = {on_device / step:.2%} of the step",
                     verdict(on_device / step <= 0.01, "masking <= 1%")])
    return rows, results


#: The measurements, in the order they run: a phase that fails is a row saying so, and the
#: others are kept (a GPU is lent for a short session).
PHASES = {"similarity": similarity, "sampling": sampling, "masking": masking_and_step}
COLUMNS = ["measurement", "device time", "against the baseline (same device, same run)", "goal"]


def run(device: str | torch.device = "cuda", sizes: Sizes = FULL) -> tuple[str, dict]:
    """The GPU section's text and raw numbers; on a non-CUDA ``device`` (smoke runs) the same
    measurements run there. Each phase's rows go to stderr as soon as they are measured, so that
    they reach the reader even if a later phase ends the process."""
    device = torch.device(device)
    reason = unavailable() if device.type == "cuda" else None
    if reason is not None:
        return markdown_table(["GPU benchmarks"], [[f"skipped: {reason}"]]), {"skipped": reason}
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    rows, results = [], {"device": name}
    for phase, measure_phase in PHASES.items():
        try:
            phase_rows, results[phase] = measure_phase(device, sizes)
        except Exception as error:  # any failure: the other phases' numbers stay
            traceback.print_exc()
            phase_rows, results[phase] = [[phase, "not measured", f"failed: {error!r}"[:300], "-"]], {
                "error": repr(error)}
        print(f"bench_gpu {phase}:\n{markdown_table(COLUMNS, phase_rows)}", file=sys.stderr, flush=True)
        rows += phase_rows
    failed = [phase for phase in PHASES if "error" in results[phase]]
    if failed:
        results["failed"] = failed
    text = f"Device: {device_description(device)}.\n\n{markdown_table(COLUMNS, rows)}"
    return text, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, help="also write the section (with the command) to this file")
    parser.add_argument("--smoke", action="store_true", help="small sizes: check the script, not the speed")
    parser.add_argument("--device", help="cuda (the default) or, with --smoke, cpu (the default without a GPU)")
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() or not args.smoke else "cpu")
    if torch.device(device).type != "cuda" and not args.smoke:
        parser.error(f"the full-size measurements are for a GPU; --device {device} needs --smoke")
    text, _ = run(device, SMOKE if args.smoke else FULL)
    print(text)
    if args.output is not None:
        from diffmask_fast._io import atomic_write_bytes

        command = ("python benchmarks/bench_gpu.py" + (" --smoke" if args.smoke else "")
                   + (f" --device {args.device}" if args.device else ""))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.output, f"## GPU\n\n{GOALS}\n\nCommand: `{command}`.\n\n{text}\n".encode("utf-8"))


if __name__ == "__main__":
    main()
