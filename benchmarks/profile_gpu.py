"""One call of each GPU path of max_anchor_similarity (and one masking step), between
cudaProfilerStart and cudaProfilerStop, for a kernel profiler to read the hardware counters of:

    ncu --profile-from-start off --clock-control none --section SpeedOfLight \\
        --section MemoryWorkloadAnalysis --section Occupancy python benchmarks/profile_gpu.py

(`make gpu-profile` runs that and writes build/gpu/profile.txt). Each path runs twice before the
profiled range, so the profile holds no first-call costs (cuBLAS loading, allocations). The sizes
are the benchmarks' (benchmarks/bench_gpu.py): 32,768 rows of 768 against K = 20 (the fused
kernel), 1,000 (blocked products, float32) and 1,000 in 'high' and 'medium'. ``--smoke`` runs the
same calls on small sizes, on the CPU where there is no GPU, without the profiler range.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def calls(device: torch.device, sizes) -> list[tuple[str, callable]]:
    """(name, call) of each path, on inputs made once."""
    from bench_gpu import masker_and_batch, runs_tensor_core_precisions
    from diffmask_fast import ops

    generator = torch.Generator(device=device).manual_seed(0)
    dim = sizes.dim
    embeddings = torch.randn(sizes.words, dim, device=device, generator=generator)
    few = torch.randn(20, dim, device=device, generator=generator)
    many = torch.randn(1000, dim, device=device, generator=generator)
    paths = [
        ("similarity K=20 (fused)", lambda: ops.max_anchor_similarity(embeddings, few)),
        ("similarity K=1000 float32 (blocked)", lambda: ops.max_anchor_similarity(embeddings, many)),
    ]
    if runs_tensor_core_precisions(device):
        paths += [
            ("similarity K=1000 'high' (bf16x3)", lambda: ops.max_anchor_similarity(embeddings, many, "high")),
            ("similarity K=1000 'medium' (bf16)", lambda: ops.max_anchor_similarity(embeddings, many, "medium")),
        ]
    masker, ids, attention = masker_and_batch(sizes)
    masker, ids, attention = masker.to(device), ids.to(device), attention.to(device)
    paths.append((f"masking step, {sizes.batch} x {sizes.length} tokens", lambda: masker(ids, attention)))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small sizes, no profiler range: check the script")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.error("profiling needs a GPU; --smoke checks the script without one")
    from bench_gpu import FULL, SMOKE

    paths = calls(device, SMOKE if args.smoke else FULL)
    for _ in range(2):
        for _, call in paths:
            call()
    profiling = device.type == "cuda" and not args.smoke
    if device.type == "cuda":
        torch.cuda.synchronize()
    if profiling:
        torch.cuda.cudart().cudaProfilerStart()
    for name, call in paths:
        if device.type == "cuda":
            torch.cuda.nvtx.range_push(name)
        call()
        if device.type == "cuda":
            torch.cuda.nvtx.range_pop()
    if device.type == "cuda":
        torch.cuda.synchronize()
    if profiling:
        torch.cuda.cudart().cudaProfilerStop()
    print("profiled: " + "; ".join(name for name, _ in paths))


if __name__ == "__main__":
    main()
