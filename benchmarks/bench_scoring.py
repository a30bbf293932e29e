"""Word scoring: embedding throughput, a score table for a million word types, nearest-anchor search.

1. Embedding throughput of all-MiniLM-L6-v2 on 2,000 word types of the shared corpora, per
   pooling and precision (and on the GPU when there is one), plus reading them back from the
   disk cache.
2. A score table for 1,000,000 word types at K = 20 anchors, end to end (normalize, tokenize,
   embed, search, build the table, save, load), in a fresh process so its peak memory is its own.
   The word types are the shared corpora's word types plus hyphenated compounds of their
   adjacent words ("receptor-binding"), embedded with ``input_embeddings`` pooling (MiniLM's
   input embeddings, no forward pass): a transformer forward pass over a million words would take
   hours on 2 cores (see the throughput above), the rest of the pipeline is what is measured.
3. Nearest-anchor search at K = 10^4, 10^5, 10^6 real vectors: the anchors are MiniLM last-layer
   hidden states of the tokens of a random set of sentences of the shared corpora (10^6
   contextual token vectors, the "contextual anchors" case, bf16 forward pass, cached on disk
   after the first run, which takes a few minutes longer), the
   queries mean-pooled MiniLM vectors of word types of the corpora. Exact search (the compiled
   op, and FAISS flat) against IVF tuned to recall@1 >= 0.99 on 1,000 separate queries; recall is
   measured on the timed queries. Search times are the best of 2 runs (the machine is shared);
   the embedding throughput and the million-word table's times are single runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from harness import markdown_table, sized, smoke, verdict  # noqa: E402

from diffmask_fast import reference  # noqa: E402

GOALS = ("Goals: embedding throughput and the cost of a 1,000,000-word score table measured and reported "
         "(peak memory well under the machine's 24 GiB); approximate nearest-anchor search at recall@1 >= 0.99 "
         ">= 5x faster than exact search for K >= 10^5. Search times are the best of 2 runs, each on the "
         "queries the exact op was timed on; the throughput and the table's times single runs.")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = ["chemprot/abstracts.txt", "scicite/corpus.txt", "chemprot/corpus.txt", "acl_arc/corpus.txt"]
#: Lines read from each corpus (None: all).
CORPUS_LINES = sized(None, 500)
THROUGHPUT_WORDS = sized(2000, 20)
INPUT_EMBEDDING_WORDS = sized(60_000, 500)
TABLE_WORDS, LOOKUP_PROBES = sized((1_000_000, 100_000), (5_000, 1_000))
#: Ks of the search: the middle one also gets FAISS IVF and HNSW rows, the first HNSW; the goal
#: applies from the middle one up.
SEARCH_KS = sized((10_000, 100_000, 1_000_000), (1_000, 5_000))
#: Query words embedded; of them, the first tune the indexes and the rest are timed (fewer at the
#: largest K, and for the per-query FAISS searches).
QUERY_WORDS, CALIBRATION_QUERIES = sized((9192, 1000), (200, 100))
LARGEST_K_QUERIES, PER_QUERY_QUERIES = sized((1024, 2048), (50, 50))
CROSSOVER_KS, CROSSOVER_QUERIES = sized(((1024, 4096, 8192, 16384, 32768), 4096), ((256, 1024), 256))


def corpus_lines() -> list[str]:
    lines = []
    for name in CORPORA:
        lines += [line for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()][:CORPUS_LINES]
    return lines


def word_types(lines: list[str]) -> list[str]:
    types = {reference.normalize_word(w) for line in lines for w in line.split()}
    return sorted(w for w in types if reference.has_letter(w))


def best_of(fn, runs: int = 2) -> tuple[float, object]:
    """The best time of ``runs`` calls and the last result; one call in a smoke run."""
    best, result = float("inf"), None
    for _ in range(sized(runs, 1)):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


# ----------------------------------------------------------------------------------------------
# 1. Embedding throughput
# ----------------------------------------------------------------------------------------------


def throughput(lines: list[str]) -> tuple[str, dict]:
    from diffmask_fast.embedding import WordEmbedder

    words = word_types(lines)
    random.Random(0).shuffle(words)
    sample = words[:THROUGHPUT_WORDS]
    base = WordEmbedder.from_pretrained(None, pooling="mean", cache_dir=None, progress=False)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows, raw = [], {}
    for device in devices:
        configs = [("pooled", None), ("pooled", "bfloat16"), ("mean", None), ("mean", "bfloat16")]
        if device == "cuda":
            configs += [("mean", "float16")]
        for pooling, dtype in configs:
            embedder = WordEmbedder(base.model, base.tokenizer, pooling=pooling, dtype=dtype, device=device,
                                    cache_dir=None, progress=False)
            embedder.embed(sample[:256])  # warm-up
            seconds, _ = best_of(lambda: embedder.embed(sample), runs=2)
            raw[f"{device}/{pooling}/{dtype or 'float32'}"] = THROUGHPUT_WORDS / seconds
            rows.append([device, pooling, dtype or "float32", f"{THROUGHPUT_WORDS:,}", f"{THROUGHPUT_WORDS / seconds:,.0f}"])
        base.model.to("cpu")
    many = words[:INPUT_EMBEDDING_WORDS]
    inputs = WordEmbedder(base.model, base.tokenizer, pooling="input_embeddings", device="cpu", cache_dir=None,
                          progress=False)
    seconds, _ = best_of(lambda: inputs.embed(many), runs=1)
    raw["cpu/input_embeddings"] = len(many) / seconds
    rows.append(["cpu", "input_embeddings", "float32", f"{len(many):,}", f"{len(many) / seconds:,.0f}"])
    with tempfile.TemporaryDirectory() as cache:
        cached = WordEmbedder(base.model, base.tokenizer, pooling="mean", cache_dir=cache, progress=False)
        cached.embed(sample)
        seconds, _ = best_of(lambda: WordEmbedder(base.model, base.tokenizer, pooling="mean", cache_dir=cache,
                                                  progress=False).embed(sample), runs=2)
    raw["cpu/mean/cache-hit"] = THROUGHPUT_WORDS / seconds
    rows.append(["cpu", "mean, from the disk cache", "-", f"{THROUGHPUT_WORDS:,}", f"{THROUGHPUT_WORDS / seconds:,.0f}"])
    table = markdown_table(["device", "pooling", "precision", "words", "words/s"], rows)
    return table, raw


# ----------------------------------------------------------------------------------------------
# 2. A score table for a million word types (run in a child process)
# ----------------------------------------------------------------------------------------------


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status in MiB: VmRSS (resident now), VmHWM (peak resident of
    this process image; not ru_maxrss, which after fork and exec can report the parent's size)."""
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def million_child() -> None:
    from diffmask_fast.anchors import mine_anchors
    from diffmask_fast.counting import count_words
    from diffmask_fast.embedding import WordEmbedder
    from diffmask_fast.scoring import ScoreTable, WordScorer

    lines = corpus_lines()
    anchors = mine_anchors(count_words([DATA / "chemprot" / "abstracts.txt"], progress=False), k=20).words
    types = dict.fromkeys(word_types(lines))
    for n in (2, 3):
        for line in lines:
            words = [reference.normalize_word(w) for w in line.split()]
            for i in range(len(words) - n + 1):
                types["-".join(words[i : i + n])] = None
                if len(types) >= TABLE_WORDS:
                    break
            if len(types) >= TABLE_WORDS:
                break
    words = list(types)[:TABLE_WORDS]
    random.Random(0).shuffle(words)
    embedder = WordEmbedder.from_pretrained(None, pooling="input_embeddings", cache_dir=None, progress=False)
    scorer = WordScorer(embedder, anchors)
    before = _status_mib("VmRSS")
    started = time.perf_counter()
    table = scorer.score(words, progress=False)
    score_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "scores.npz"
        started = time.perf_counter()
        table.save(path)
        save_seconds = time.perf_counter() - started
        size = path.stat().st_size
        started = time.perf_counter()
        loaded = ScoreTable.load(path)
        load_seconds = time.perf_counter() - started
    probe = random.Random(1).sample(words, LOOKUP_PROBES)
    started = time.perf_counter()
    loaded.scores_of(probe)
    lookup_seconds = (time.perf_counter() - started) / len(probe)
    print(json.dumps({
        "inputs": len(words), "words": len(table), "anchors": len(anchors), "index": scorer.index.describe(), "score_seconds": score_seconds,
        "save_seconds": save_seconds, "file_mib": size / 2**20, "load_seconds": load_seconds,
        "lookup_us": lookup_seconds * 1e6, "rss_before_mib": before,
        "peak_rss_mib": _status_mib("VmHWM"),
    }))


def million() -> tuple[str, dict]:
    command = [sys.executable, "-c", "import bench_scoring; bench_scoring.million_child()"]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    if result.returncode != 0:
        raise RuntimeError(f"the million-word child failed:\n{result.stderr[-3000:]}")
    raw = json.loads(result.stdout.strip().splitlines()[-1])
    rows = [
        [f"score {raw['inputs']:,} word types (normalize, tokenize, embed, exact max over 20 anchors, build the table)",
         f"{raw['score_seconds']:.1f} s ({raw['inputs'] / raw['score_seconds']:,.0f} words/s; "
         f"{raw['words']:,} distinct once normalized)"],
        ["peak memory of the process (RSS)",
         f"{raw['peak_rss_mib']:,.0f} MiB ({raw['rss_before_mib']:,.0f} MiB before scoring: model, words)"],
        ["save the table (.npz)", f"{raw['save_seconds']:.2f} s, {raw['file_mib']:.1f} MiB"],
        ["load the table", f"{raw['load_seconds']:.2f} s"],
        ["look a word up (ScoreTable.score, normalizing it)", f"{raw['lookup_us']:.1f} µs"],
    ]
    return markdown_table([f"{TABLE_WORDS:,} word types, K = 20, MiniLM input-embedding vectors", "result"], rows), raw


# ----------------------------------------------------------------------------------------------
# 3. Nearest-anchor search on real vectors
# ----------------------------------------------------------------------------------------------


def bench_vectors(lines: list[str]) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The search's vectors, cached in the user's cache; in a smoke run in a temporary directory,
    written and read back (its small vectors must never stand in for the real ones)."""
    from diffmask_fast.embedding import default_cache_dir

    if not smoke():
        return search_vectors(lines, default_cache_dir() / "bench")
    with tempfile.TemporaryDirectory(prefix="diffmask-bench-vectors-") as cache:
        search_vectors(lines, Path(cache))
        return search_vectors(lines, Path(cache))


def _digest(text: str, size: int) -> str:
    """A short name for cached vectors made from ``text`` at ``size``."""
    return hashlib.sha256(f"{size}\n{text}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def search_vectors(lines: list[str], cache: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(contextual token vectors [>= max(SEARCH_KS), 384], word query vectors [N, 384], how they
    were obtained), read from ``cache`` or computed and saved there."""
    from diffmask_fast.embedding import WordEmbedder

    # Named by what they are made of (the lines; the words as counting normalizes them today), so
    # that a cache made from other text or by older normalization is not read as this one.
    words = word_types(lines)
    random.Random(0).shuffle(words)
    lines_key = _digest("\n".join(lines), max(SEARCH_KS))
    words_key = _digest("\n".join(words[:QUERY_WORDS]), QUERY_WORDS)
    anchors_path = cache / f"minilm_contextual_tokens_{lines_key}.npy"
    queries_path = cache / f"minilm_word_queries_{words_key}.npy"
    if anchors_path.is_file() and queries_path.is_file():
        return (torch.from_numpy(np.load(anchors_path).astype(np.float32)),
                torch.from_numpy(np.load(queries_path)), f"read from {cache}")
    started = time.perf_counter()
    embedder = WordEmbedder.from_pretrained(None, pooling="mean", cache_dir=None, dtype="bfloat16", progress=False)
    tokenizer, model = embedder.tokenizer, embedder.model
    encoded = tokenizer(lines, truncation=True, max_length=256)["input_ids"]
    shuffled, tokens = list(range(len(encoded))), 0
    random.Random(0).shuffle(shuffled)
    for used, i in enumerate(shuffled):  # a random set of sentences with at least 10^6 tokens
        tokens += len(encoded[i]) - 2
        if tokens >= max(SEARCH_KS):
            break
    order = sorted(shuffled[: used + 1], key=lambda i: len(encoded[i]))
    parts = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for begin in range(0, len(order), 32):
            batch = [encoded[i] for i in order[begin : begin + 32]]
            length = max(map(len, batch))
            ids = torch.tensor([s + [0] * (length - len(s)) for s in batch])
            attention = (ids != 0).long()
            hidden = model(input_ids=ids, attention_mask=attention).last_hidden_state.float()
            inner = attention.bool()
            inner[:, 0] = False
            for row, sequence in enumerate(batch):
                inner[row, len(sequence) - 1] = False
            parts.append(hidden[inner].half())
    anchors = torch.cat(parts)
    anchors = anchors[torch.randperm(anchors.shape[0], generator=torch.Generator().manual_seed(0))]
    queries = embedder.embed(words[:QUERY_WORDS])
    cache.mkdir(parents=True, exist_ok=True)
    np.save(anchors_path, anchors.numpy())
    np.save(queries_path, queries.numpy())
    return anchors.float(), queries, f"computed in {time.perf_counter() - started:.0f} s and saved to {cache}"


def search(lines: list[str]) -> tuple[str, dict]:
    from diffmask_fast.index import AnchorIndex, exact_search, recall_at_1

    anchors_all, queries, origin = bench_vectors(lines)
    calibration, timed = queries[:CALIBRATION_QUERIES], queries[CALIBRATION_QUERIES:]
    rows, raw = [], {"vectors": origin}
    for k in SEARCH_KS:
        anchors = anchors_all[:k].contiguous()
        exact_queries = timed if k < max(SEARCH_KS) else timed[:LARGEST_K_QUERIES]
        exact_seconds, (exact_values, exact_ids) = best_of(lambda: exact_search(exact_queries, anchors))
        flat = AnchorIndex(anchors, "flat")
        flat_seconds, _ = best_of(lambda: flat.search(exact_queries))
        exact_rate, flat_rate = len(exact_queries) / exact_seconds, len(exact_queries) / flat_seconds
        rows.append([f"{k:,}", "exact (max_anchor_similarity)", "-", "1.0000", f"{exact_rate:,.0f}", "1.0x", "-", "-"])
        rows.append([f"{k:,}", "FAISS flat (exact)", f"{flat.build_seconds:.1f} s", "1.0000", f"{flat_rate:,.0f}",
                     f"{flat_rate / exact_rate:.1f}x", "-", "-"])
        raw[k] = {"exact_qps": exact_rate, "flat_qps": flat_rate}
        flat = None  # free its copy of the anchors
        kinds = [("ivf", {})]
        if k == SEARCH_KS[1]:
            kinds += [("ivf", {"engine": "faiss"}), ("hnsw", {})]
        elif k == SEARCH_KS[0]:
            kinds += [("hnsw", {})]
        for kind, options in kinds:
            index = AnchorIndex(anchors, kind, sample_queries=calibration, recall_target=0.99, **options)
            batched = kind == "ivf" and options.get("engine") != "faiss"
            checked = len(exact_queries) if batched else min(PER_QUERY_QUERIES, len(exact_queries))
            timed_queries = exact_queries if batched else exact_queries[:checked]  # the exact op's, for the ratio
            seconds, _ = best_of(lambda: index.search(timed_queries))
            values, ids = index.search(exact_queries[:checked])
            report = recall_at_1(values, ids, exact_values[:checked], exact_ids[:checked])
            rate = len(timed_queries) / seconds
            name = {"ivf": "IVF, batched list scan", "hnsw": "FAISS HNSW"}[kind]
            if options.get("engine") == "faiss":
                name = "IVF, FAISS per-query scan"
            parameters = ", ".join(f"{key}={value}" for key, value in index.params.items() if key != "engine")
            goal = (verdict(rate / exact_rate >= 5 and report.recall >= 0.99, ">= 5x the exact op at recall@1 >= 0.99")
                    if batched and k >= SEARCH_KS[1] else "-")
            rows.append([f"{k:,}", f"{name} ({parameters})", f"{index.build_seconds:.1f} s", f"{report.recall:.4f}",
                         f"{rate:,.0f}", f"{rate / exact_rate:.1f}x", f"{rate / flat_rate:.1f}x", goal])
            raw[k][f"{kind}{'-faiss' if options else ''}"] = {
                "qps": rate, "recall": report.recall, "params": index.params, "build_seconds": index.build_seconds,
                "calibration_recall": index.recall, "max_shortfall": report.max_shortfall}
            index = None
    header = ["K", "search", "build", "recall@1", "queries/s", "vs exact op", "vs FAISS flat", "goal"]
    return markdown_table(header, rows), raw


def crossover() -> tuple[str, dict]:
    """Exact op against FAISS flat by K (random unit vectors, D = 384, 4,096 queries): why ``auto``
    keeps the op below IVF sizes on the CPU."""
    from diffmask_fast.index import AnchorIndex, exact_search

    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(CROSSOVER_QUERIES, 384, generator=generator)
    cells, raw = [], {}
    for k in CROSSOVER_KS:
        anchors = torch.randn(k, 384, generator=generator)
        flat = AnchorIndex(anchors, "flat")
        op_seconds, _ = best_of(lambda: exact_search(queries, anchors), runs=2)
        flat_seconds, _ = best_of(lambda: flat.search(queries), runs=2)
        raw[k] = {"op": op_seconds, "flat": flat_seconds}
        cells.append(f"K={k:,}: op {op_seconds * 1e3:.0f} ms, flat {flat_seconds * 1e3:.0f} ms")
    return f"Exact op vs FAISS flat ({CROSSOVER_QUERIES:,} random queries, D = 384): " + "; ".join(cells) + ".", raw


def run() -> tuple[str, dict]:
    lines = corpus_lines()
    embed_table, embed_raw = throughput(lines)
    million_table, million_raw = million()
    search_table, search_raw = search(lines)
    crossover_text, crossover_raw = crossover()
    text = "\n\n".join([
        "Embedding throughput (all-MiniLM-L6-v2, word types of the shared corpora, length-sorted batches of 256):",
        embed_table,
        million_table,
        f"Nearest-anchor search, D = 384: anchors are MiniLM contextual token vectors of the shared corpora, "
        f"queries mean-pooled MiniLM word vectors ({search_raw['vectors']}). Approximate indexes are tuned to "
        "recall@1 >= 0.99 on 1,000 other queries; recall is measured on the queries exact search was timed on "
        "(8,192; 1,024 at K = 10^6; 2,048 for the per-query FAISS searches). \"vs\" columns compare queries/s.",
        search_table,
        crossover_text,
    ])
    return text, {"embedding": embed_raw, "million": million_raw, "search": search_raw, "crossover": crossover_raw}


if __name__ == "__main__":
    print(run()[0])
