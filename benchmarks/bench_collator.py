"""Collator time per batch: 64 sequences of 512 tokens of SciCite text, word scores ready.

Baselines in the same run: the plain-Python reference collator (diffmask_fast.reference) and
transformers' DataCollatorForLanguageModeling(whole_word_mask=True), given the offsets and
special-token masks it needs.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from harness import markdown_table, measure, measure_together, milliseconds, sized, verdict  # noqa: E402

from diffmask_fast import reference  # noqa: E402
from diffmask_fast.collator import DifferenceMaskingCollator  # noqa: E402
from diffmask_fast.embedding import load_encoder  # noqa: E402
from diffmask_fast.scoring import ScoreTable  # noqa: E402
from diffmask_fast.tokenization import decode_word, word_boundaries  # noqa: E402

GOALS = ("Goal: >= 100x faster than the reference collator and <= 0.2x the time of "
         "`DataCollatorForLanguageModeling(whole_word_mask=True)` on the same batch, each on one torch thread "
         "as in a DataLoader worker.")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BATCH, LENGTH = sized((64, 512), (4, 128))


def scicite_examples(tokenizer, batch: int = BATCH, length: int = LENGTH) -> list[dict]:
    """``batch`` examples of exactly ``length`` tokens, each from consecutive SciCite sentences."""
    lines = (DATA / "scicite" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    windows = []
    for start in range(0, len(lines), 40):
        encoded = tokenizer(" ".join(lines[start: start + 40]), truncation=True, max_length=length,
                            return_offsets_mapping=True, return_special_tokens_mask=True)
        if len(encoded["input_ids"]) == length:
            windows.append(dict(encoded))
    if not windows:
        raise ValueError(f"no 40 consecutive SciCite sentences reach {length} tokens")
    # A batch larger than the corpus reuses its windows (the collator's cost does not depend on
    # whether two rows are equal).
    return [windows[i % len(windows)] for i in range(batch)]


def scores_for(tokenizer, examples) -> ScoreTable:
    """Scores for every word of the batch (random in [-0.1, 1): the collator's cost does not
    depend on the values, and real scores are the subject of the scoring benchmarks)."""
    boundaries = word_boundaries(tokenizer)
    rng = random.Random(0)
    words = set()
    for example in examples:
        ids = example["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        never = [bool(boundaries.never_word[i]) for i in ids]
        for group in reference.group_words(reference.word_starts(tokens, never, boundaries.scheme), never):
            words.add(reference.normalize_word(decode_word(tokenizer, [ids[i] for i in group])))
    return ScoreTable.from_mapping({w: rng.uniform(-0.1, 1.0) for w in sorted(words)})


def reference_collate(tokenizer, table: ScoreTable, examples, rng, mlm_probability=0.25):
    """The reference collator: pad, then reference.mask_sequence on every sequence."""
    boundaries = word_boundaries(tokenizer)
    special = set(tokenizer.all_special_ids)
    random_ids = boundaries.random_token_ids.tolist()
    length = max(len(e["input_ids"]) for e in examples)
    out_ids, out_labels = [], []
    for example in examples:
        ids = list(example["input_ids"]) + [tokenizer.pad_token_id] * (length - len(example["input_ids"]))
        tokens = tokenizer.convert_ids_to_tokens(ids)
        never = [i in special for i in ids]
        masked, labels, _ = reference.mask_sequence(
            tokens, ids, never, boundaries.scheme, lambda word: table.score(decode_word(tokenizer, word)),
            boundaries.mask_token_id, random_ids, rng, mlm_probability=mlm_probability,
        )
        out_ids.append(masked)
        out_labels.append(labels)
    return {"input_ids": torch.tensor(out_ids), "labels": torch.tensor(out_labels)}


def on_one_thread(fn):
    """``fn`` run with torch on one thread, as in a DataLoader worker, and its threads restored."""
    def call():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)
    return call


def run() -> tuple[str, dict]:
    from transformers import DataCollatorForLanguageModeling

    _, tokenizer = load_encoder()
    examples = scicite_examples(tokenizer)
    plain = [{"input_ids": e["input_ids"]} for e in examples]
    table = scores_for(tokenizer, examples)
    ours = DifferenceMaskingCollator(tokenizer, table, mlm_probability=0.25, seed=0)
    ours(plain)  # learn the batch's words once: "word scores ready"
    huggingface = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.25, whole_word_mask=True, seed=0)
    hf_examples = [{k: e[k] for k in ("input_ids", "attention_mask", "special_tokens_mask", "offset_mapping")}
                   for e in examples]
    rng = np.random.default_rng(0)

    threads = torch.get_num_threads()
    # Interleaved, so that a machine that slows down shifts all alike; the goals are judged where
    # collators run, in DataLoader workers, which torch gives one thread: HuggingFace's too.
    times = measure_together({"ours": lambda: ours(plain),
                              "ours_one_thread": on_one_thread(lambda: ours(plain)),
                              "huggingface_wwm": on_one_thread(lambda: huggingface(hf_examples))},
                             min_seconds=6.0, min_runs=10)
    ours_time, one_thread_time, hf_time = times["ours"], times["ours_one_thread"], times["huggingface_wwm"]
    reference_time = measure(lambda: reference_collate(tokenizer, table, plain, rng), min_seconds=0, min_runs=2, warmup=0)
    results = {"ours": ours_time, "ours_one_thread": one_thread_time, "huggingface_wwm": hf_time,
               "reference": reference_time}
    table_md = markdown_table(
        [f"collator ({BATCH} x {LENGTH} tokens, SciCite)", "time per batch", "ours / this", "goal"],
        [
            [f"diffmask_fast.DifferenceMaskingCollator ({threads} torch threads)", milliseconds(ours_time), "1", "-"],
            ["diffmask_fast.DifferenceMaskingCollator (1 thread, as in a DataLoader worker)",
             milliseconds(one_thread_time), f"{ours_time / one_thread_time:.2f}", "-"],
            ["DataCollatorForLanguageModeling(whole_word_mask=True), 1 thread", milliseconds(hf_time),
             f"{one_thread_time / hf_time:.3f} (1 thread each)", verdict(one_thread_time / hf_time <= 0.2, "<= 0.2x")],
            ["reference collator (plain Python)", milliseconds(reference_time),
             f"{one_thread_time / reference_time:.5f} ({reference_time / one_thread_time:,.0f}x faster, 1 thread)",
             verdict(reference_time / one_thread_time >= 100, ">= 100x faster")],
        ],
    )
    return table_md, results


if __name__ == "__main__":
    print(run()[0])
