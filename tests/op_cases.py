"""Arguments for every operator of diffmask_fast, for opcheck on any device (test_compile.py on the
CPU, test_cuda.py on CUDA). A new operator must get cases here: test_compile.py fails otherwise."""

from __future__ import annotations

import torch

from diffmask_fast import ops

#: Operators whose output sizes depend on the data: opcheck skips the dynamic-shape AOT test.
DATA_DEPENDENT = {"group_words", "difference_mask"}

MASK_ID = 999
VOCABULARY = 1013


#: The operators with a CUDA kernel (group_words and score_table_insert run on the host, where
#: words are decoded and scored; top_dots and ivf_max_dot serve the CPU index).
CUDA_OPS = {"max_anchor_similarity", "max_anchor_similarity_precision", "sample_without_replacement",
            "difference_mask", "difference_mask_device", "score_table_lookup"}


def operator_names() -> set[str]:
    """Every operator registered under torch.ops.diffmask_fast."""
    prefix = "diffmask_fast::"
    return {name[len(prefix):] for name in torch._C._dispatch_get_all_op_names() if name.startswith(prefix)}


def _batch(g: torch.Generator, device, batch: int = 3, length: int = 12):
    ids = torch.randint(0, VOCABULARY, (batch, length), generator=g)
    never = torch.rand(batch, length, generator=g) < 0.15
    never[:, 0] = True
    starts = torch.rand(VOCABULARY, generator=g) < 0.6
    words = ops.group_words(ids, never, starts)
    hashes = torch.unique(words.word_hash[words.word_hash != 0])
    table = ops.ScoreHashTable()
    keep = hashes[torch.rand(hashes.numel(), generator=g) < 0.7]
    table.insert(keep, torch.randn(keep.numel(), generator=g))
    keys, values = table.tensors()
    random_ids = torch.arange(1000, VOCABULARY)
    return [t.to(device) for t in (ids, never, starts, keys, values, random_ids)]


def cases(device, seed: int) -> dict[str, list[tuple]]:
    """{operator name: [argument tuples]} with tensors on ``device``."""
    g = torch.Generator().manual_seed(seed)
    ids, never, starts, keys, values, random_ids = _batch(g, device)
    mask_options = (0.3, 0, 0.0, 0.0, MASK_ID, 0.8, 0.1)
    rank_options = (0.5, 1, 0.2, 0.1, MASK_ID, 0.7, 0.2)

    def on(*tensors):
        return tuple(t.to(device) for t in tensors)

    return {
        "max_anchor_similarity": [
            on(torch.randn(2, 3, 8, generator=g), torch.randn(4, 8, generator=g)),
            on(torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(3, 8, generator=g)),
            on(torch.randn(70, 8, generator=g), torch.randn(40, 8, generator=g)),
        ],
        "max_anchor_similarity_precision": [
            (*on(torch.randn(70, 8, generator=g), torch.randn(40, 8, generator=g)), "high"),
            (*on(torch.randn(2, 6, 8, generator=g), torch.randn(3, 8, generator=g)), "medium"),
            (*on(torch.randn(6, 8, generator=g), torch.randn(3, 8, generator=g)), "highest"),
        ],
        "top_dots": [
            (*on(torch.randn(9, 8, generator=g), torch.randn(30, 8, generator=g)), 4),
            (*on(torch.randn(2, 5, generator=g), torch.randn(3, 5, generator=g)), 0),
        ],
        "ivf_max_dot": [
            on(torch.randn(7, 8, generator=g), torch.randint(0, 3, (7, 2), generator=g), torch.randn(40, 8, generator=g),
               torch.tensor([0, 5, 5, 40])),
            on(torch.randn(3, 4, generator=g), torch.zeros(3, 0, dtype=torch.int64), torch.randn(2, 4, generator=g),
               torch.tensor([0, 2])),
            on(torch.randn(5, 8, generator=g), torch.randint(0, 2, (5, 2), generator=g), torch.randn(6, 8, generator=g),
               torch.tensor([0, 3, 6]), torch.tensor([2, 4, 5, 0, 1, 3])),
        ],
        "sample_without_replacement": [
            (*on(torch.rand(4, 9, generator=g), torch.tensor([1, 3, 0, 9])), 7),
            (*on(torch.rand(2, 300, generator=g, dtype=torch.float64), torch.tensor([100, 299])), -5),
        ],
        "group_words": [(ids, never, starts)],
        "score_table_lookup": [(keys, values, torch.randint(1, 100, (5,), generator=g).to(device), -1.0)],
        "score_table_insert": [
            (keys.clone(), values.clone(), *on(torch.tensor([5, 6]), torch.tensor([0.5, 1.5]))),
        ],
        "difference_mask": [
            (ids, never, starts, keys, values, random_ids, *mask_options, seed),
            (ids, never, starts, keys, values, random_ids, *rank_options, -seed),
        ],
        "difference_mask_device": [
            (ids, never, starts, keys, values, random_ids, *mask_options, torch.tensor([seed], device=device)),
            (ids, never, starts, keys, values, random_ids, *rank_options, torch.tensor([-seed])),
        ],
    }


def supported_on(device_type: str) -> set[str]:
    """The operators that have a kernel for ``device_type`` ('cpu' or 'cuda')."""
    from diffmask_fast import _extension

    return {name for name in operator_names() if _extension.has_kernel(name, device_type)}


def random_batch(g: torch.Generator, batch: int, length: int, vocabulary: int = 300, empty_rows=()):
    """ids [B, L] (some out of the vocabulary at never-word positions), never_word [B, L] with
    a leading special token in most rows (the others begin with a word, as text tokenized without
    special tokens does), padding, scattered specials and ``empty_rows`` of no word, and
    starts_word [V]."""
    ids = torch.randint(0, vocabulary, (batch, length), generator=g)
    never = torch.rand(batch, length, generator=g) < 0.08
    if length:
        never[:, 0] |= torch.rand(batch, generator=g) < 0.7
        lengths = torch.randint(0, length + 1, (batch,), generator=g)
        never |= torch.arange(length)[None, :] >= lengths[:, None]
    for row in empty_rows:
        never[row] = True
    ids[never & (torch.rand(batch, length, generator=g) < 0.3)] = vocabulary + 7  # ignored under never_word
    starts = torch.rand(vocabulary, generator=g) < 0.6
    return ids, never, starts


def masking_batch(g, batch, length, vocabulary=3000, known=0.7, empty_rows=()):
    """A ``random_batch`` and a score table knowing ``known`` of its words (a tenth of them at
    score 0)."""
    ids, never, starts = random_batch(g, batch, length, vocabulary, empty_rows)
    words = ops.group_words(ids, never, starts)
    hashes = torch.unique(words.word_hash[words.word_hash != 0])
    table = ops.ScoreHashTable()
    keep = hashes[torch.rand(hashes.numel(), generator=g) < known]
    scores = torch.randn(keep.numel(), generator=g)
    scores[torch.rand(keep.numel(), generator=g) < 0.1] = 0.0
    table.insert(keep, scores)
    return ids, never, starts, table


#: Masking options that reach every branch: rank weighting with a mix, unknown scores, custom
#: replacement shares, everything masked, nothing masked.
MASKING_OPTIONS = [
    dict(),
    dict(weighting="rank", uniform_mix=0.3, mlm_probability=0.4),
    dict(uniform_mix=0.5, unknown_score=0.1, mask_replace_prob=0.6, random_replace_prob=0.3),
    dict(mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0),
    dict(mlm_probability=0.0),
    # Unknown words of weight 1e-310, whose keys E / w overflow, beside known ones of normal weight.
    dict(unknown_score=1e-310, mlm_probability=0.6),
]
