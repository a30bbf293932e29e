"""The two custom ops against torch baselines measured in the same run.

- sample_without_replacement on 64 x 512 weights (goal <= 1 ms on 2 cores), beside torch.multinomial
  drawing the same counts without replacement.
- max_anchor_similarity on 32,768 x 768 fp32 embeddings: for large K as a fraction of the fp32
  matmul FLOP rate torch reaches on the same shapes; for K = 20 against the time to read the
  embeddings twice (two full reductions over them); K = 64, between the two, has no goal but
  shows the rate where the CPU kernels first pack the rows for 32-wide panels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import markdown_table, measure_together, milliseconds, sized, verdict  # noqa: E402

from diffmask_fast import ops  # noqa: E402

GOALS = ("Goals: `sample_without_replacement` <= 1 ms on 64 x 512; `max_anchor_similarity` >= 80% of "
         "torch's fp32 matmul rate for K >= 1000, and within 1.5x of the time to read the embeddings twice for K = 20.")
WORDS, DIM = sized((32_768, 768), (512, 64))
ANCHOR_COUNTS = sized((20, 64, 1000, 4096, 16384), (20, 64, 1000))


def sampling() -> tuple[list, dict]:
    weights = torch.rand(64, 512)
    weights[weights < 0.1] = 0
    counts = torch.full((64,), 128, dtype=torch.long)
    generator, torch_generator = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    # torch's own sampler of the same law (successive sampling without replacement, every row
    # drawing 128), on the same weights, interleaved.
    times = measure_together({
        "ours": lambda: ops.sample_without_replacement(weights, counts, generator=generator),
        "multinomial": lambda: torch.multinomial(weights, 128, replacement=False, generator=torch_generator),
    }, min_runs=200)
    seconds, multinomial = times["ours"], times["multinomial"]
    return [["sample_without_replacement, 64 x 512, 128 per row", milliseconds(seconds),
             f"{multinomial / seconds:.1f}x faster than torch.multinomial(replacement=False) ({milliseconds(multinomial)})",
             verdict(seconds <= 1e-3, "<= 1 ms")]], {"sampling": seconds, "multinomial": multinomial}


def similarity() -> tuple[list, dict]:
    torch.manual_seed(0)
    embeddings = torch.randn(WORDS, DIM)
    rows, results = [], {}
    for k in ANCHOR_COUNTS:
        anchors = torch.randn(k, DIM)
        anchors_t = anchors.T.contiguous()
        product = torch.empty(WORDS, k)  # written in place: a fresh 32,768 x K output's page faults are no matmul
        baselines = {"matmul": lambda: torch.mm(embeddings, anchors_t, out=product)}
        if k == 20:
            baselines["read_twice"] = lambda: (embeddings.sum(), embeddings.sum())
        times = measure_together({"ours": lambda: ops.max_anchor_similarity(embeddings, anchors), **baselines},
                                 min_runs=10 if k == 20 else 5)
        ours, matmul = times["ours"], times["matmul"]
        if k == 20:
            read_twice = results["read_twice"] = times["read_twice"]
        flops = 2.0 * WORDS * k * DIM
        results[f"k{k}"] = {"ours": ours, "matmul": matmul}
        rows.append([
            f"max_anchor_similarity, K = {k}", milliseconds(ours),
            f"{flops / ours / 1e9:.1f} GFLOP/s = {matmul / ours:.0%} of torch.mm ({flops / matmul / 1e9:.1f} GFLOP/s)"
            + (f"; {ours / read_twice:.2f}x the time to read the embeddings twice ({milliseconds(read_twice)})" if k == 20 else ""),
            verdict(ours / read_twice <= 1.5, "<= 1.5x reading twice") if k == 20
            else verdict(matmul / ours >= 0.8, ">= 80% of torch.mm") if k >= 1000 else "-",
        ])
    return rows, results


def run() -> tuple[str, dict]:
    sample_rows, sample_results = sampling()
    similarity_rows, similarity_results = similarity()
    table = markdown_table([f"op (embeddings {WORDS:,} x {DIM}, fp32)", "time", "against the baseline", "goal"],
                           sample_rows + similarity_rows)
    return table, {**sample_results, **similarity_results}


if __name__ == "__main__":
    print(run()[0])
