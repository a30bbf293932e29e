"""DifferenceMasker (masking inside the training step) and DifferenceMaskingTrainer, on the CPU.

The module runs the ops' CPU kernels here and their CUDA kernels on a GPU (tests/test_cuda.py);
either way it must draw from the collator's distribution: exactly the collator's output for the
same seed, and the same per-word masking frequencies over fresh draws.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import diffmask_fast
import tokenizers_offline
from diffmask_fast import DifferenceMasker, DifferenceMaskingCollator, DifferenceMaskingTrainer, ops
from diffmask_fast.scoring import ScoreTable
from diffmask_fast.tokenization import decode_words, word_boundaries

TOKENIZERS = ["bert_wordpiece", "roberta_byte_bpe", "sentencepiece_unigram"]


@pytest.fixture
def lines(seed):
    """64 lines in an order drawn with the test's seed, so that the printed seed replays a failure."""
    return tokenizers_offline.sample_lines(64, seed)


def score_table(tokenizer, texts, seed: int | None = None) -> ScoreTable:
    """Random scores for the words of ``texts`` (some zero or negative); without a ``seed``, drawn
    from the global generator, which starts from the test's seed."""
    boundaries = word_boundaries(tokenizer)
    words = set()
    encoded = tokenizer(texts)["input_ids"]
    for ids in encoded:
        ids_t = torch.tensor([ids])
        never = boundaries.never_word[ids_t]
        grouped = ops.group_words(ids_t, never, boundaries.starts_word)
        index = grouped.word_index[0]
        groups = [[ids[i] for i in (index == w).nonzero()[:, 0].tolist()] for w in range(int(grouped.n_words[0]))]
        words.update(decode_words(tokenizer, groups))
    rng = random.Random(random.getrandbits(64) if seed is None else seed)
    return ScoreTable.from_mapping({w: (0.0 if rng.random() < 0.2 else rng.uniform(-0.2, 1.0)) for w in sorted(words)})


def padded(tokenizer, texts, max_length=48):
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def next_collator_seed(collator) -> int:
    """The seed the collator's next mask() call will draw (its generator left untouched)."""
    generator = collator._generator()
    state = generator.get_state()
    value = int(torch.randint(-(2**63), 2**63 - 1, (), generator=generator))
    generator.set_state(state)
    return value


def test_masking_in_the_training_step_needs_no_numba(bert_wordpiece, tmp_path):
    """Numba counts corpora; a training machine that only masks (a GPU image without it) imports
    the masker, the collator and the trainer, and masks, without it."""
    bert_wordpiece.save_pretrained(tmp_path / "tokenizer")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["numba"] = None  # as if not installed: importing it raises ImportError
        import torch
        from transformers import AutoTokenizer
        from diffmask_fast import DifferenceMasker, DifferenceMaskingCollator, DifferenceMaskingTrainer
        tokenizer = AutoTokenizer.from_pretrained({str(tmp_path / "tokenizer")!r})
        masker = DifferenceMasker(tokenizer, {{"the": 0.5, "protein": 1.0, "binds": 0.25}}, seed=0)
        batch = tokenizer(["the protein binds the protein"] * 4, return_tensors="pt")
        ids, labels = masker(batch["input_ids"], batch["attention_mask"])
        assert (labels != -100).any() and "diffmask_fast.counting" not in sys.modules
        print("masked", int((labels != -100).sum()))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("masked"), run.stderr[-3000:]


def test_tokens_the_attention_mask_hides_are_never_masked_even_real_words(bert_wordpiece, lines, seed):
    """attention_mask 0 hides a token whatever it holds (a packed neighbour, a truncated tail, not
    only padding): the masker leaves real words there alone, exactly as the collator told
    ``never_word = attention == 0`` does."""
    tokenizer = bert_wordpiece
    scores = score_table(tokenizer, lines, seed)
    options = {"mlm_probability": 0.6, "mask_replace_prob": 0.8, "random_replace_prob": 0.1}
    collator = DifferenceMaskingCollator(tokenizer, scores, seed=seed, **options)
    masker = DifferenceMasker(tokenizer, scores, seed=seed, **options)
    ids, attention = padded(tokenizer, lines[:24])
    masker.warm(ids)  # the hidden words are known words too
    rng = random.Random(seed)
    attention = attention.clone()
    for row in range(ids.shape[0]):
        length = int(attention[row].sum())
        start = rng.randrange(1, length)
        attention[row, start: start + rng.randint(1, length)] = 0  # real tokens, hidden
    masker.warm({"input_ids": ids, "attention_mask": attention})  # and the pieces of words cut by the mask
    hidden_words = (attention == 0) & ~masker.never_word[ids]
    assert int(hidden_words.sum()) >= 24
    for _ in range(3):
        step_seed = next_collator_seed(collator)
        masker.seed_state.fill_(step_seed)
        expected_ids, expected_labels = collator.mask(ids, attention == 0)
        got_ids, got_labels = masker(ids, attention)
        assert bool((got_labels[attention == 0] == -100).all()) and torch.equal(got_ids[attention == 0], ids[attention == 0])
        assert torch.equal(got_ids, expected_ids) and torch.equal(got_labels, expected_labels), f"seed={seed}"


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
@pytest.mark.parametrize("options", [{}, {"weighting": "rank", "uniform_mix": 0.3, "mlm_probability": 0.4},
                                     {"mask_replace_prob": 0.5, "random_replace_prob": 0.3}])
def test_same_output_as_the_collator_for_the_same_seed(request, tokenizer_name, options, lines, seed):
    tokenizer = request.getfixturevalue(tokenizer_name)
    scores = score_table(tokenizer, lines, seed)
    collator = DifferenceMaskingCollator(tokenizer, scores, seed=seed, **options)
    masker = DifferenceMasker(tokenizer, scores, seed=seed, **options)
    ids, attention = padded(tokenizer, lines[:24])
    assert masker.warm({"input_ids": ids, "attention_mask": attention}) > 0  # the words the model will see
    for _ in range(3):
        step_seed = next_collator_seed(collator)
        masker.seed_state.fill_(step_seed)
        expected_ids, expected_labels = collator.mask(ids, attention == 0)
        got_ids, got_labels = masker(ids, attention)
        assert torch.equal(got_ids, expected_ids) and torch.equal(got_labels, expected_labels), f"seed={seed}"
        assert int(masker.seed_state) == step_seed + 1  # advanced in place
    assert masker.coverage()["missed"] == 0


def test_same_per_word_frequencies_as_the_collator(bert_wordpiece, lines, seed):
    """Fresh draws of module and collator: per-word masking frequencies and the budget agree."""
    tokenizer = bert_wordpiece
    scores = score_table(tokenizer, lines, seed)
    collator = DifferenceMaskingCollator(tokenizer, scores, seed=seed, mlm_probability=0.25)
    masker = DifferenceMasker(tokenizer, scores, seed=seed + 1, mlm_probability=0.25)
    ids, attention = padded(tokenizer, lines[:16])
    masker.warm(ids)
    never = (attention == 0) | word_boundaries(tokenizer).never_word[ids]
    words = ops.group_words(ids, never, word_boundaries(tokenizer).starts_word)
    draws = 400
    counts = {"collator": torch.zeros(words.word_hash.shape), "masker": torch.zeros(words.word_hash.shape)}
    totals = {"collator": 0, "masker": 0}
    for _ in range(draws):
        for name, labels in (("collator", collator.mask(ids, attention == 0)[1]), ("masker", masker(ids, attention)[1])):
            masked = labels != -100
            for b in range(ids.shape[0]):
                chosen = torch.unique(words.word_index[b][masked[b]])
                counts[name][b, chosen] += 1
                totals[name] += chosen.numel()
    message = f"seed={seed}"
    expected_total = draws * float((0.25 * words.n_words.double()).sum())
    for name in counts:
        assert abs(totals[name] - expected_total) <= 6 * math.sqrt(draws * words.n_words.numel() * 0.25), message
    valid = torch.arange(words.word_hash.shape[1])[None, :] < words.n_words[:, None]
    p1 = counts["collator"][valid] / draws
    p2 = counts["masker"][valid] / draws
    pooled = (p1 + p2) / 2
    z = (p1 - p2) / torch.sqrt(pooled * (1 - pooled) * 2 / draws).clamp_min(1e-12)
    # Under the same law the largest of the words' |z| exceeds this with probability 1e-5 per run.
    bound = statistics.NormalDist().inv_cdf(1 - 1e-5 / (2 * z.numel()))
    assert float(z.abs().max()) < bound, message
    assert abs(float(z.mean())) < 4 / math.sqrt(z.numel()) + 0.05, message


def test_seeds_advance_and_reproduce(bert_wordpiece, lines, monkeypatch):
    scores = score_table(bert_wordpiece, lines)
    ids, attention = padded(bert_wordpiece, lines[:8])
    a = DifferenceMasker(bert_wordpiece, scores, seed=11)
    b = DifferenceMasker(bert_wordpiece, scores, seed=11)
    first = [a(ids, attention) for _ in range(3)]
    second = [b(ids, attention) for _ in range(3)]
    for (ia, la), (ib, lb) in zip(first, second):
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    assert not torch.equal(first[0][1], first[1][1])  # fresh masks every step
    monkeypatch.setenv("RANK", "1")  # another distributed rank draws other masks
    other_rank = DifferenceMasker(bert_wordpiece, scores, seed=11)
    monkeypatch.setenv("RANK", "0")
    assert int(other_rank.seed_state) != int(DifferenceMasker(bert_wordpiece, scores, seed=11).seed_state)
    torch.manual_seed(5)
    unseeded = DifferenceMasker(bert_wordpiece, scores)
    torch.manual_seed(5)
    assert int(DifferenceMasker(bert_wordpiece, scores).seed_state) == int(unseeded.seed_state)
    # Without a seed, set_seed makes the global RNG equal on every rank: the rank still tells them apart.
    monkeypatch.setenv("RANK", "1")
    torch.manual_seed(5)
    assert int(DifferenceMasker(bert_wordpiece, scores).seed_state) != int(unseeded.seed_state)


@pytest.mark.parametrize("masker_seed", [11, None])
def test_a_masker_built_before_its_process_group_follows_its_rank(bert_wordpiece, lines, monkeypatch, masker_seed):
    scores = score_table(bert_wordpiece, lines)
    ids, attention = padded(bert_wordpiece, lines[:8])
    monkeypatch.delenv("RANK", raising=False)
    torch.manual_seed(3)
    early = DifferenceMasker(bert_wordpiece, scores, seed=masker_seed)  # no process group yet: rank 0
    early(ids, attention)
    monkeypatch.setenv("RANK", "1")  # the process group says rank 1 now
    torch.manual_seed(3)
    built_later = DifferenceMasker(bert_wordpiece, scores, seed=masker_seed)
    built_later(ids, attention)
    early.follow_rank()
    for _ in range(2):  # the step drawn before counts: the streams agree from here on
        assert torch.equal(early(ids, attention)[1], built_later(ids, attention)[1])
    seed_before = int(early.seed_state)
    early.follow_rank()  # the same rank again: nothing changes
    assert int(early.seed_state) == seed_before


def test_pinned_generator_draws_from_the_seed_alone_and_leaves_training_state(bert_wordpiece, lines, monkeypatch):
    scores = score_table(bert_wordpiece, lines)
    ids, attention = padded(bert_wordpiece, lines[:8])
    pinned = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        masker = DifferenceMasker(bert_wordpiece, scores, seed=11)
        masker(ids, attention)
        before = (int(masker.seed_state), masker.coverage())
        with masker.pinned_generator(3):
            pinned[rank] = masker(ids, attention)
        assert (int(masker.seed_state), masker.coverage()) == before, f"rank {rank}: training state moved"
    assert all(torch.equal(a, b) for a, b in zip(pinned["0"], pinned["1"]))
    apart = {}  # per_process: each rank its own stream, the same at every pin
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        masker = DifferenceMasker(bert_wordpiece, scores, seed=11)
        draws = []
        for _ in range(2):
            with masker.pinned_generator(3, per_process=True):
                draws.append(masker(ids, attention)[1])
        assert torch.equal(draws[0], draws[1]), f"rank {rank}: another draw at the same pin"
        apart[rank] = draws[0]
    assert not torch.equal(apart["0"], apart["1"]), "ranks masking different batches drew one stream"
    assert not torch.equal(apart["0"], pinned["0"][1]), "a stream of its own, not the shared one"


def test_masks_whole_words_within_the_budget(roberta_byte_bpe, lines, seed):
    tokenizer = roberta_byte_bpe
    scores = score_table(tokenizer, lines, seed)
    masker = DifferenceMasker(tokenizer, scores, seed=seed, mlm_probability=0.3)
    ids, attention = padded(tokenizer, lines[:32])
    masker.warm(ids)
    masked_ids, labels = masker(ids, attention)
    boundaries = word_boundaries(tokenizer)
    never = (attention == 0) | boundaries.never_word[ids]
    words = ops.group_words(ids, never, boundaries.starts_word)
    masked = labels != -100
    assert not (masked & never).any()
    assert torch.equal(labels[masked], ids[masked]) and torch.equal(masked_ids[~masked], ids[~masked])
    for b in range(ids.shape[0]):
        chosen = set(words.word_index[b][masked[b]].tolist())
        for w in chosen:
            assert bool(masked[b][words.word_index[b] == w].all()), f"seed={seed} row={b}"
        n = int(words.n_words[b])
        assert math.floor(0.3 * n) <= len(chosen) <= min(math.floor(0.3 * n) + 1, n)


def test_warm_inputs_and_coverage(bert_wordpiece, lines):
    tokenizer = bert_wordpiece
    scores = score_table(tokenizer, lines)
    ids, attention = padded(tokenizer, lines[:8])
    cold = DifferenceMasker(tokenizer, scores, seed=0)
    cold(ids, attention)
    coverage = cold.coverage()
    assert coverage["words"] > 0 and coverage["missed"] == coverage["words"]  # empty table: all unknown
    cold.reset_coverage()
    assert cold.coverage()["words"] == 0

    encoded = tokenizer(lines[:8])["input_ids"]
    full = tokenizer(lines[:8], padding=True, return_tensors="pt")
    full_ids, full_attention = full["input_ids"], full["attention_mask"]
    known = {}
    for name, data in {
        "texts": lines[:8],
        "one text": lines[0],
        "id lists": encoded,
        "arrays": [np.asarray(e) for e in encoded],
        "tensors": [torch.tensor(e) for e in encoded],
        "dicts": [{"input_ids": e} for e in encoded],
        "padded tensor": full_ids,
        "batch dict": {"input_ids": full_ids, "attention_mask": full_attention},
        "batches": [{"input_ids": full_ids[:4], "attention_mask": full_attention[:4]},
                    {"input_ids": full_ids[4:], "attention_mask": full_attention[4:]}],
    }.items():
        masker = DifferenceMasker(tokenizer, scores, seed=0)
        known[name] = masker.warm(data, batch_size=3)
        assert known[name] > 0, name
    assert known["texts"] == known["id lists"] == known["arrays"] == known["tensors"] == known["dicts"]
    assert known["texts"] == known["padded tensor"] == known["batch dict"] == known["batches"]

    warm = DifferenceMasker(tokenizer, scores, seed=0)
    warm.warm(lines[:8], max_length=48)  # truncated as in padded()
    warm(ids, attention)
    assert warm.coverage()["missed"] == 0
    half = DifferenceMasker(tokenizer, scores, seed=0)
    half.warm(lines[:4], max_length=48)
    half(ids, attention)
    coverage = half.coverage()
    assert 0 < coverage["missed"] < coverage["words"]
    assert coverage["missed_fraction"] == pytest.approx(coverage["missed"] / coverage["words"])
    # The masks of a warm table score words exactly as the collator does.
    reference_collator = DifferenceMaskingCollator(tokenizer, scores)
    reference_collator.mask(ids, attention == 0)
    hashes = reference_collator._cache.keys[reference_collator._cache.keys != 0]
    got, found = ops.score_table_lookup(warm.table_keys, warm.table_values, hashes)
    assert bool(found.all())
    assert torch.equal(got, reference_collator._cache.lookup(hashes)[0])


def test_out_of_vocabulary_and_special_tokens(bert_wordpiece, lines):
    tokenizer = bert_wordpiece
    masker = DifferenceMasker(tokenizer, score_table(tokenizer, lines), seed=0, mlm_probability=1.0,
                              mask_replace_prob=1.0, random_replace_prob=0.0)
    ids, attention = padded(tokenizer, lines[:4])
    masker.warm(ids)
    vocabulary = masker.never_word.numel()
    for bad in (vocabulary + 5, -3):  # passed through unmasked, for the model's embedding to fail on
        wrong = ids.clone()
        wrong[0, 1] = bad
        with pytest.raises(ValueError, match=rf"ids outside the tokenizer's vocabulary \[0, {vocabulary}\)"):
            masker(wrong, attention)
        compiled = torch.compile(masker.forward, fullgraph=True, backend="eager")
        with pytest.raises(RuntimeError, match="input_ids hold ids outside the tokenizer's vocabulary"):
            compiled(wrong, attention)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[2, 1] = True
    masked_ids, labels = masker(ids, attention, special)
    assert labels[2, 1] == -100
    words = (attention == 1) & ~masker.never_word[ids] & ~special
    assert torch.equal(labels != -100, words)  # mlm_probability 1: every other token of a word


def test_compiles_fullgraph_and_matches_eager(bert_wordpiece, lines):
    tokenizer = bert_wordpiece
    scores = score_table(tokenizer, lines)
    eager = DifferenceMasker(tokenizer, scores, seed=21)
    traced = DifferenceMasker(tokenizer, scores, seed=21)
    for texts in (lines[:16], lines[16:24]):
        eager.warm(padded(tokenizer, texts)[0])
        traced.warm(padded(tokenizer, texts)[0])
    compiled = torch.compile(traced, fullgraph=True, backend="aot_eager")
    for texts in (lines[:16], lines[16:24]):  # a second shape
        ids, attention = padded(tokenizer, texts)
        expected = eager(ids, attention)
        got = compiled(ids, attention)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert int(traced.seed_state) == int(eager.seed_state)  # the in-place step survives compilation
    assert traced.coverage() == eager.coverage()


def test_state_dict_holds_calls_and_counters_only(bert_wordpiece, lines, monkeypatch):
    """The state carries on each rank's own stream: it held rank 0's absolute seed, so every
    rank that loaded it drew rank 0's masks (and a resumed run counted its calls twice)."""
    scores = score_table(bert_wordpiece, lines)
    ids, attention = padded(bert_wordpiece, lines[:8])
    calls = random.randrange(1, 5)
    masker = DifferenceMasker(bert_wordpiece, scores, seed=1)
    for _ in range(calls):
        masker(ids, attention)
    assert set(masker.state_dict()) == {"calls_made", "words_seen", "words_missed"}
    assert int(masker.calls_made) == calls
    again = DifferenceMasker(bert_wordpiece, scores, seed=1)
    again.load_state_dict(masker.state_dict())
    assert int(again.seed_state) == int(masker.seed_state) and again.coverage() == masker.coverage()
    assert torch.equal(again(ids, attention)[1], masker(ids, attention)[1]), "the stream goes on where it was"
    monkeypatch.setenv("RANK", "1")
    other_rank = DifferenceMasker(bert_wordpiece, scores, seed=1)
    other_rank.load_state_dict(masker.state_dict())
    assert int(other_rank.calls_made) == int(masker.calls_made)
    assert not torch.equal(other_rank(ids, attention)[1], masker(ids, attention)[1]), "rank 1 drew rank 0's masks"
    fresh = DifferenceMasker(bert_wordpiece, scores, seed=1)
    fresh.resume_at(calls + 2)
    assert int(fresh.seed_state) == int(other_rank.seed_state), "resume_at sets the calls made, in this rank"
    other_rank.resume_at(calls + 2)
    assert int(other_rank.seed_state) == int(fresh.seed_state), "whatever was loaded"


@pytest.mark.parametrize("cast", ["half", "double", "bfloat16"])
def test_a_cast_of_the_model_leaves_the_score_table_float32(cast, bert_wordpiece, lines):
    scores = score_table(bert_wordpiece, lines)
    ids, attention = padded(bert_wordpiece, lines[:8])
    masker = DifferenceMasker(bert_wordpiece, scores, seed=3)
    masker.warm(ids)
    expected = masker(ids, attention)
    masker.seed_state.sub_(1)
    holder = torch.nn.Module()
    holder.masker = masker
    getattr(holder, cast)()  # as model.half() reaches a masker held by the model
    assert masker.table_values.dtype == torch.float32
    got = masker(ids, attention)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_from_collator_keeps_options_and_known_words(bert_wordpiece, lines):
    collator = DifferenceMaskingCollator(bert_wordpiece, score_table(bert_wordpiece, lines), mlm_probability=0.3,
                                         weighting="rank", seed=4)
    ids, attention = padded(bert_wordpiece, lines[:8])
    collator.mask(ids, attention == 0)
    masker = DifferenceMasker.from_collator(collator)
    assert masker.collator.weighting == "rank" and masker.mlm_probability == 0.3
    assert masker.coverage()["known_words"] == collator.known_token_sequences
    masker(ids, attention)
    assert masker.coverage()["missed"] == 0


def test_from_collator_masks_as_a_masker_built_with_the_same_options(bert_wordpiece, lines, seed):
    table = score_table(bert_wordpiece, lines)
    options = dict(mlm_probability=0.35, weighting="rank", uniform_mix=0.3, mask_replace_prob=0.6,
                   random_replace_prob=0.3, seed=seed % 1000, word_boundary="wordpiece")
    ids, attention = padded(bert_wordpiece, lines[:16])
    made = DifferenceMasker.from_collator(DifferenceMaskingCollator(bert_wordpiece, table, **options))
    built = DifferenceMasker(bert_wordpiece, table, **options)
    for name, value in options.items():
        assert getattr(made.collator, name) == value == getattr(built.collator, name), name
    for masker in (made, built):
        masker.warm({"input_ids": ids, "attention_mask": attention})
    for _ in range(3):
        got, expected = made(ids, attention), built(ids, attention)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), f"seed={seed}"


def test_trainer_masks_in_the_training_step(tiny_bert_mlm, bert_wordpiece, lines, tmp_path):
    from transformers import TrainingArguments

    tokenizer = bert_wordpiece
    masker = DifferenceMasker(tokenizer, score_table(tokenizer, lines), seed=0)
    train = [{"input_ids": tokenizer(t, truncation=True, max_length=32)["input_ids"]} for t in lines[:24]]
    evaluation = [{"input_ids": tokenizer(t, truncation=True, max_length=32)["input_ids"]} for t in lines[24:32]]
    masker.warm(train + evaluation)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        gradient_accumulation_steps=2, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=True, seed=0,
    )
    model = tiny_bert_mlm.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = DifferenceMaskingTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                                       masker=masker)
    assert masker._rank == 0  # the trainer took the rank again (still 0 here)
    start = int(masker.seed_state)
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    assert int(masker.seed_state) - start == 6  # one masking per micro-batch: 3 steps x 2
    assert any(not torch.equal(before[name], p.detach()) for name, p in model.named_parameters())
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses)
    trained_state = int(masker.seed_state)
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])
    assert masker.coverage()["missed"] == 0
    # Evaluation draws from a stream of its own: the same masks every time, training's left alone.
    assert int(masker.seed_state) == trained_state
    assert trainer.evaluate()["eval_loss"] == metrics["eval_loss"]

    # The masked tokens of a gradient-accumulation cycle are counted after masking, over all of its
    # batches: each micro-batch's loss is divided by the cycle's count, as transformers does.
    unlabelled = [trainer.data_collator(train[i:i + 4]) for i in (0, 4)]
    batches, count = trainer.get_batch_samples(iter(unlabelled), 2, torch.device("cpu"))
    assert count is not None and int(count) == sum(int((b["labels"] != -100).sum()) for b in batches) > 0

    # Batches that already carry labels (a masking collator upstream) are used as they are;
    # class labels are not masked-LM labels.
    labelled = {"input_ids": torch.tensor([[2, 100, 101, 3]]), "labels": torch.tensor([[-100, 100, -100, -100]])}
    assert trainer.mask_batch(labelled) is labelled
    with pytest.raises(ValueError, match="class labels"):
        trainer.mask_batch({"input_ids": torch.tensor([[2, 100, 101, 3]]), "labels": torch.tensor([1])})
    with pytest.raises(TypeError, match="DifferenceMasker"):
        DifferenceMaskingTrainer(model=model, args=args, masker=object())


@pytest.mark.parametrize("examples, steps, calls", [
    (32, (2, 4), (4, 8)),  # 8 batches an epoch, 4 steps of 2
    (20, (4, 6), (7, 10)),  # 5 batches an epoch: steps of 2, 2 and 1 batch; step 4 is 5 + 2 batches in
])
def test_a_resumed_run_masks_as_the_uninterrupted_one_would(tiny_bert_mlm, bert_wordpiece, lines, tmp_path,
                                                            examples, steps, calls):
    import copy

    from transformers import TrainingArguments

    tokenizer = bert_wordpiece
    scores = score_table(tokenizer, lines)
    train = [{"input_ids": tokenizer(t, truncation=True, max_length=32)["input_ids"]} for t in lines[:examples]]

    def run(output_dir, max_steps, resume=False):
        masker = DifferenceMasker(tokenizer, scores, seed=4)
        args = TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=4,
                                 gradient_accumulation_steps=2, save_strategy="steps", save_steps=steps[0],
                                 report_to=[], use_cpu=True, seed=0, learning_rate=1e-3)
        trainer = DifferenceMaskingTrainer(model=copy.deepcopy(tiny_bert_mlm), args=args, train_dataset=train,
                                           masker=masker)
        start = int(masker.seed_state)
        trainer.train(resume_from_checkpoint=resume or None)
        return int(masker.seed_state) - start

    assert run(tmp_path / "whole", steps[1]) == calls[1]
    assert run(tmp_path / "parts", steps[0]) == calls[0]
    # Checkpoints do not hold the masker: it moves on by the batches masked before the checkpoint
    # (an epoch's last step may take fewer), then draws the rest as the whole run did.
    assert run(tmp_path / "parts", steps[1], resume=True) == calls[1]


def test_a_masker_without_a_seed_repeats_as_the_trainer_s_run_does(tiny_bert_mlm, bert_wordpiece, lines, tmp_path):
    """Its root seed came from the unseeded global RNG when it was built, before Trainer's
    set_seed: its masks differed from run to run although the collator's repeated."""
    import copy

    from transformers import TrainingArguments

    tokenizer = bert_wordpiece
    scores = score_table(tokenizer, lines)
    train = [{"input_ids": tokenizer(t, truncation=True, max_length=32)["input_ids"]} for t in lines[:8]]

    def masks(run_seed, masker_seed=None):
        torch.manual_seed(random.randrange(2**31))  # whatever the RNG held before the run
        masker = DifferenceMasker(tokenizer, scores, seed=masker_seed)
        masker.warm(train)
        args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                                 report_to=[], use_cpu=True, seed=run_seed, save_strategy="no")
        DifferenceMaskingTrainer(model=copy.deepcopy(tiny_bert_mlm), args=args, train_dataset=train, masker=masker)
        return [masker(*padded(tokenizer, lines[:4]))[1] for _ in range(2)]

    first, again, other = masks(7), masks(7), masks(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    given = masks(7, masker_seed=3)  # a masker given a seed keeps it
    assert all(torch.equal(a, b) for a, b in zip(given, masks(8, masker_seed=3)))


def test_trainer_drops_a_class_label_column_before_masking(tiny_bert_mlm, bert_wordpiece, lines, tmp_path):
    from transformers import TrainingArguments

    tokenizer = bert_wordpiece
    masker = DifferenceMasker(tokenizer, score_table(tokenizer, lines), seed=0)
    # Task data often keeps its label: the padding collator would turn it into [B] "labels".
    train = [{"input_ids": tokenizer(t, truncation=True, max_length=32)["input_ids"], "label": i % 3}
             for i, t in enumerate(lines[:8])]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                             save_strategy="no", report_to=[], use_cpu=True, seed=0)
    trainer = DifferenceMaskingTrainer(model=tiny_bert_mlm.train(), args=args, train_dataset=train,
                                       eval_dataset=train, masker=masker)
    assert math.isfinite(trainer.train().training_loss)
    assert math.isfinite(trainer.evaluate()["eval_loss"])


def test_trainer_refuses_a_masker_that_writes_ids_the_model_cannot_embed(tiny_bert_mlm, lines, tmp_path):
    """Tokens added to the tokenizer without resizing the model's embeddings are drawn as random
    replacements: refused when training starts, not when the first one is drawn."""
    from transformers import TrainingArguments

    tokenizer = tokenizers_offline.bert_wordpiece()  # a private copy: a token is added
    tokenizer.add_tokens(["zymogenase"])
    masker = DifferenceMasker(tokenizer, score_table(tokenizer, lines), seed=0)
    train = [{"input_ids": tokenizer(t, truncation=True, max_length=32)["input_ids"]} for t in lines[:8]]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4,
                             save_strategy="no", report_to=[], use_cpu=True, seed=0)
    model = tiny_bert_mlm.train()
    trainer = DifferenceMaskingTrainer(model=model, args=args, train_dataset=train, masker=masker)
    with pytest.raises(ValueError, match=r"token ids up to 1500 .* embeds only 1500 ids .*resize_token_embeddings"):
        trainer.train()
    model.resize_token_embeddings(len(tokenizer))
    trainer = DifferenceMaskingTrainer(model=model, args=args, train_dataset=train, masker=masker)
    assert math.isfinite(trainer.train().training_loss)


def test_warm_reads_dicts_of_rows_as_rows_not_their_keys(bert_wordpiece, lines):
    """``tokenizer(texts)``, ``tokenizer(texts, padding=True)`` and ``dataset[:n]`` are dicts whose
    input_ids hold one row per example (lists, ragged or padded): their words are learned."""
    tokenizer = bert_wordpiece
    scores = score_table(tokenizer, lines)
    texts = lines[:8]
    encoded = tokenizer(texts)
    padded_lists = tokenizer(texts, padding=True)
    by_texts = DifferenceMasker(tokenizer, scores, seed=0).warm(texts)
    for name, data in {
        "BatchEncoding": encoded,
        "padded lists": padded_lists,
        "dataset slice": {"input_ids": list(encoded["input_ids"]), "attention_mask": list(encoded["attention_mask"])},
        "rows without a mask": {"input_ids": list(encoded["input_ids"])},
        "rows of tensors": {"input_ids": [torch.tensor(ids) for ids in encoded["input_ids"]]},
        "list of dicts of rows": [tokenizer(texts[:3]), tokenizer(texts[3:])],
        "one example dict": [tokenizer(text) for text in texts],
        "ragged rows of a numpy-formatted dataset[:n]": {  # a 1-D object array of row arrays
            "input_ids": np.array([np.array(ids) for ids in encoded["input_ids"]] + [np.array([1, 2])],
                                  dtype=object)[:-1]},
    }.items():
        masker = DifferenceMasker(tokenizer, scores, seed=0)
        assert masker.warm(data, batch_size=3) == by_texts, name
        ids, attention = padded(tokenizer, texts, max_length=512)
        masker(ids, attention)
        assert masker.coverage()["missed"] == 0, name
    assert DifferenceMasker(tokenizer, scores, seed=0).warm(tokenizer(texts[0])) > 0  # one example's dict


def test_warm_leaves_the_global_random_stream_alone(bert_wordpiece, lines):
    """warm masks to learn words and throws the masks away: drawn from the global RNG (a masker
    without a seed), model initialization or shuffling after it depended on how much was warmed."""
    masker = DifferenceMasker(bert_wordpiece, score_table(bert_wordpiece, lines))
    state = torch.get_rng_state()
    masker.warm(lines[:40], batch_size=7)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_warm_that_learns_nothing_copies_no_table(bert_wordpiece, lines, monkeypatch):
    masker = DifferenceMasker(bert_wordpiece, score_table(bert_wordpiece, lines), seed=0)
    uploads = []
    upload = DifferenceMasker._upload_table
    monkeypatch.setattr(DifferenceMasker, "_upload_table", lambda self: uploads.append(1) or upload(self))
    known = masker.warm(lines[:20])
    assert masker.warm(lines[:20]) == known and len(uploads) == 1
    masker.warm(lines[20:40])
    assert len(uploads) == 2


def test_a_score_table_or_tokenizer_given_to_the_masker_s_collator_reaches_the_device(
        bert_wordpiece, roberta_byte_bpe, lines, seed):
    """``masker.collator.scores = table`` rebuilt the collator's tables, but the device kept masking
    with the old scores (and a new tokenizer's ids went through the old word boundaries)."""
    from diffmask_fast import DiffmaskWarning

    masker = DifferenceMasker(bert_wordpiece, score_table(bert_wordpiece, lines, seed), seed=seed)
    ids, attention = padded(bert_wordpiece, lines[:24])
    masker.warm({"input_ids": ids, "attention_mask": attention})
    masker.collator.scores = score_table(bert_wordpiece, lines, seed + 1)
    with pytest.warns(DiffmaskWarning, match=r"scores = \.\.\.\) rebuilt its tables.*warm"):
        masker(ids, attention)
    assert masker.coverage()["missed"] == masker.coverage()["words"] > 0, "the new table knows no word yet"
    for tokenizer, table in ((bert_wordpiece, masker.collator.scores),
                             (roberta_byte_bpe, score_table(roberta_byte_bpe, lines, seed + 2))):
        if tokenizer is not bert_wordpiece:
            masker.collator.tokenizer, masker.collator.scores = tokenizer, table
            ids, attention = padded(tokenizer, lines[:24])
        assert_masks_alike(masker, DifferenceMasker(tokenizer, table, seed=seed), ids, attention, seed + 7)


def test_options_given_to_the_masker_s_collator_are_followed(bert_wordpiece, lines, seed):
    """``masker.collator.weighting = "rank"`` was accepted, but the masker kept the weighting it
    was built with."""
    ids, attention = padded(bert_wordpiece, lines[:24])
    table = score_table(bert_wordpiece, lines, seed)
    options = dict(weighting="rank", uniform_mix=0.3, mlm_probability=0.4, mask_replace_prob=0.5,
                   random_replace_prob=0.25)
    masker = DifferenceMasker(bert_wordpiece, table, seed=seed)
    for name, value in options.items():
        setattr(masker.collator, name, value)
    assert_masks_alike(masker, DifferenceMasker(bert_wordpiece, table, seed=seed, **options), ids, attention, seed + 3)
    assert "weighting='rank'" in repr(masker)


def assert_masks_alike(masker, expected, ids, attention, seed_state: int) -> None:
    """``masker`` and ``expected``, warmed on the batch and set to one seed, mask it alike."""
    for each in (masker, expected):
        each.warm({"input_ids": ids, "attention_mask": attention})
        each.seed_state.fill_(seed_state)
    expected_ids, expected_labels = expected(ids, attention)
    got_ids, got_labels = masker(ids, attention)
    assert torch.equal(got_ids, expected_ids) and torch.equal(got_labels, expected_labels), f"seed={seed_state}"


def test_a_masker_never_warmed_says_so_once(bert_wordpiece, lines):
    """Without warm() every word scored unknown_score (random-word masking) and only coverage()
    showed it."""
    from diffmask_fast import DiffmaskWarning

    ids, attention = padded(bert_wordpiece, lines[:8])
    masker = DifferenceMasker(bert_wordpiece, score_table(bert_wordpiece, lines), seed=0)
    with pytest.warns(DiffmaskWarning, match="knows no word's score yet.*masker.warm"):
        masker(ids, attention)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masker(ids, attention)  # once
        warmed = DifferenceMasker(bert_wordpiece, score_table(bert_wordpiece, lines), seed=0)
        warmed.warm({"input_ids": ids, "attention_mask": attention})
        warmed(ids, attention)
        from diffmask_fast.strategies import build_strategy  # random-word on the device: no scores by design

        build_strategy("random-word", bert_wordpiece, mask_on="device", seed=0).masker(ids, attention)
    swapped = DifferenceMasker(bert_wordpiece, score_table(bert_wordpiece, lines), seed=0)
    swapped.warm({"input_ids": ids, "attention_mask": attention})
    swapped.collator.scores = score_table(bert_wordpiece, lines, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        swapped(ids, attention)
    assert [str(w.message).split(":")[0] for w in caught] == [
        "an option assigned to the masker's collator (collator.scores = ...) rebuilt its tables"]


def test_words_not_warmed_are_weighted_by_the_unknown_score(bert_wordpiece):
    """A word the masker has not seen scores the table's unknown_score, as in the collator, not 0."""
    table = ScoreTable({"enzyme": 1.0}, unknown_score=1.0)  # every word weighs as much as the one known
    masker = DifferenceMasker(bert_wordpiece, table, mlm_probability=0.2, seed=0)
    masker.warm(["enzyme"])
    encoded = bert_wordpiece(["the enzyme binds the receptor"], return_tensors="pt")
    enzyme = [i for i, word in enumerate(encoded.word_ids()) if word == 1]
    others = 0
    for _ in range(100):  # one word of five a call: "enzyme" alone would be drawn 0.2 ** 100 of the time
        _, labels = masker(encoded["input_ids"], encoded["attention_mask"])
        others += int((labels[0] != -100).sum()) - int((labels[0, enzyme] != -100).sum())
    assert others > 0, "words not warmed were never drawn: weighted 0 instead of unknown_score"


def test_warm_honours_the_attention_mask_of_rows(bert_wordpiece, lines):
    tokenizer = bert_wordpiece
    scores = score_table(tokenizer, lines)
    encoded = tokenizer(lines[:4], padding=True)
    hidden = [[0] * len(mask) for mask in encoded["attention_mask"]]
    masker = DifferenceMasker(tokenizer, scores, seed=0)
    assert masker.warm({"input_ids": encoded["input_ids"], "attention_mask": hidden}) == 0
    assert masker.warm({"input_ids": encoded["input_ids"][0], "attention_mask": hidden[0]}) == 0


def test_warm_refuses_what_it_cannot_read(bert_wordpiece, lines):
    masker = DifferenceMasker(bert_wordpiece, score_table(bert_wordpiece, lines), seed=0)
    with pytest.raises(ValueError, match="mappings with 'input_ids'; got one with 'text'"):
        masker.warm({"text": lines[:2]})
    with pytest.raises(ValueError, match="attention_mask of row 1 has 2 items but its input_ids has 3"):
        masker.warm({"input_ids": [[2, 141, 3], [2, 141, 3]], "attention_mask": [[1, 1, 1], [1, 1]]})
    with pytest.raises(ValueError, match="attention_mask has 1 rows but input_ids has 2"):
        masker.warm({"input_ids": [[2, 141, 3], [2, 141, 3]], "attention_mask": [[1, 1, 1]]})
    with pytest.raises(TypeError, match="not a text or a sequence of token ids"):
        masker.warm([2, 141, 3])
    batch = torch.tensor([[2, 141, 3, 0], [2, 141, 141, 3]])
    for mask in (torch.ones(2, 2), torch.ones(4), torch.ones(1, 4)):  # would broadcast, or fail in torch
        with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \(2, 4\)"):
            masker.warm({"input_ids": batch, "attention_mask": mask})
    for data in (5, 5.5, None):
        with pytest.raises(TypeError, match="warm takes texts, token-id sequences, example dicts or batches, got"):
            masker.warm(data)
    with pytest.raises(ValueError, match="max_length \\(or None\\) must be at least 1, got -1"):
        masker.warm(lines[:2], max_length=-1)


@pytest.mark.parametrize("data", [
    [[2, 141.7, 3]],
    [np.array([2.0, 141.0, 3.0])],
    [torch.tensor([2.0, 141.0, 3.0])],
    {"input_ids": [[2, 141, 3], [2, "141", 3]]},
    torch.tensor([[2.0, 141.0, 3.0]]),
    {"input_ids": np.array([[2.0, 141.0, 3.0]])},
])
def test_warm_refuses_ids_that_are_not_integers(bert_wordpiece, lines, data):
    """Casting would truncate 141.7 to another word's id, and learn a word nobody wrote."""
    masker = DifferenceMasker(bert_wordpiece, score_table(bert_wordpiece, lines), seed=0)
    with pytest.raises(TypeError, match="token ids must be integers"):
        masker.warm(data)


def test_trainer_pads_a_validation_set_masked_beforehand(tiny_bert_mlm, bert_wordpiece, lines, tmp_path):
    """Examples that carry per-token labels (``MaskingStrategy.mask_examples``) are padded with
    them: transformers' padding collator left the labels ragged and failed."""
    from transformers import TrainingArguments

    from diffmask_fast.strategies import build_strategy

    tokenizer = bert_wordpiece
    strategy = build_strategy("difference", tokenizer, scores=score_table(tokenizer, lines), mask_on="device", seed=0)
    data = [{"input_ids": tokenizer(t, truncation=True, max_length=random.randrange(8, 40))["input_ids"]}
            for t in lines[:12]]
    validation = strategy.mask_examples(data, seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True)
    trainer = DifferenceMaskingTrainer(model=tiny_bert_mlm, args=args, eval_dataset=validation, masker=strategy.masker)
    batch = trainer.data_collator(validation[:4])
    for row, example in enumerate(validation[:4]):
        n = len(example["labels"])
        assert batch["labels"][row, :n].tolist() == example["labels"] and (batch["labels"][row, n:] == -100).all()
    assert math.isfinite(trainer.evaluate()["eval_loss"])
    with pytest.raises(ValueError, match="some examples have per-token labels and some do not"):
        trainer.data_collator([validation[0], data[1]])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_trainer_pads_the_loss_weights_of_mslm_examples_masked_beforehand(tiny_bert_mlm, bert_wordpiece, lines,
                                                                         tmp_path, padding_side):
    """They went on to tokenizer.pad, which cannot pad them, and the evaluation failed."""
    import copy

    from transformers import TrainingArguments

    from diffmask_fast.strategies import build_strategy

    tokenizer = copy.deepcopy(bert_wordpiece)
    tokenizer.padding_side = padding_side
    strategy = build_strategy("mslm", tokenizer, terms=["the", "protein", "of"], term_weight=3.0, seed=0)
    data = [{"input_ids": tokenizer(t, truncation=True, max_length=random.randrange(8, 40))["input_ids"]}
            for t in lines[:8]]
    masked = [{**example, "loss_weights": strategy.collator([example])["loss_weights"][0].tolist()}
              for example in strategy.mask_examples(data, seed=0)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True)
    trainer = DifferenceMaskingTrainer(model=tiny_bert_mlm, args=args, eval_dataset=masked,
                                       masker=DifferenceMasker(tokenizer, score_table(tokenizer, lines), seed=0))
    batch = trainer.data_collator(masked[:4])
    width = batch["input_ids"].shape[1]
    for row, example in enumerate(masked[:4]):
        n = len(example["loss_weights"])
        kept = slice(width - n, width) if padding_side == "left" else slice(0, n)
        pad = slice(0, width - n) if padding_side == "left" else slice(n, width)
        assert batch["loss_weights"][row, kept].tolist() == example["loss_weights"]
        assert (batch["loss_weights"][row, pad] == 0).all() and batch["loss_weights"].dtype == torch.float32
    assert math.isfinite(trainer.evaluate()["eval_loss"])
    with pytest.raises(ValueError, match="some examples have per-token loss_weights and some do not"):
        trainer.data_collator([masked[0], {key: value for key, value in masked[1].items() if key != "loss_weights"}])


def test_the_trainer_keeps_the_datasets_special_tokens_mask_for_the_masker(tiny_bert_mlm, bert_wordpiece, lines,
                                                                          tmp_path):
    """Trainer drops the columns the model's forward does not take: special_tokens_mask was gone
    before the masker could read it, and the tokens it protects were masked."""
    datasets = pytest.importorskip("datasets")
    from transformers import TrainingArguments

    tokenizer = bert_wordpiece
    ids = [tokenizer(t, truncation=True, max_length=24)["input_ids"] for t in lines[:8]]
    protected = [[int(i < len(row) // 2) for i in range(len(row))] for row in ids]  # the first half of each row
    data = datasets.Dataset.from_dict({"input_ids": ids, "special_tokens_mask": protected})
    masker = DifferenceMasker(tokenizer, {}, mlm_probability=1.0, seed=0)
    seen = []
    forward = masker.forward

    def spy(input_ids, attention_mask=None, special_tokens_mask=None):
        masked_ids, labels = forward(input_ids, attention_mask, special_tokens_mask)
        seen.append((special_tokens_mask, labels))
        return masked_ids, labels

    masker.forward = spy
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to=[],
                             use_cpu=True, save_strategy="no")
    DifferenceMaskingTrainer(model=tiny_bert_mlm, args=args, train_dataset=data, masker=masker).train()
    assert seen and all(mask is not None for mask, _ in seen), "the masker never saw special_tokens_mask"
    for mask, labels in seen:
        assert not ((labels != -100) & mask.bool()).any() and (labels != -100).any()


def test_the_trainer_pads_a_dataset_of_bare_id_sequences(tiny_bert_mlm, bert_wordpiece, lines, tmp_path):
    """The collators and warm take sequences of ids as examples; the trainer's padding failed on them."""
    from transformers import TrainingArguments

    ids = [bert_wordpiece(t, truncation=True, max_length=24)["input_ids"] for t in lines[:6]]
    data = ids[:2] + [torch.tensor(ids[2]), np.array(ids[3])] + ids[4:]
    masker = DifferenceMasker(bert_wordpiece, {}, seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=6, report_to=[], use_cpu=True)
    trainer = DifferenceMaskingTrainer(model=tiny_bert_mlm, args=args, eval_dataset=data, masker=masker)
    batch = trainer.data_collator(data)
    assert batch["input_ids"][3, : len(ids[3])].tolist() == ids[3] and batch["attention_mask"].sum() == sum(map(len, ids))
    assert math.isfinite(trainer.evaluate()["eval_loss"])
    with pytest.raises(TypeError, match="must be tokenized"):
        trainer.data_collator(["a text"])


def test_compute_metrics_sees_the_inputs_the_model_saw(tiny_bert_mlm, bert_wordpiece, lines, tmp_path):
    from transformers import TrainingArguments

    tokenizer = bert_wordpiece
    masker = DifferenceMasker(tokenizer, {}, mlm_probability=0.5, mask_replace_prob=1.0, random_replace_prob=0.0,
                              seed=random.randrange(100))
    data = [{"input_ids": tokenizer(t, truncation=True, max_length=32)["input_ids"]} for t in lines[:8]]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=8, report_to=[], use_cpu=True,
                             include_for_metrics=["inputs"])
    seen = {}

    def metrics(prediction):
        seen.update(inputs=prediction.inputs, labels=prediction.label_ids)
        return {}

    DifferenceMaskingTrainer(model=tiny_bert_mlm, args=args, eval_dataset=data, masker=masker,
                             compute_metrics=metrics).evaluate()
    masked = seen["labels"] != -100
    assert masked.any() and (seen["inputs"][masked] == tokenizer.mask_token_id).all()


def test_labels_that_copy_the_inputs_are_refused(tiny_bert_mlm, bert_wordpiece, lines, tmp_path):
    """A causal-LM recipe's labels column (labels = input_ids) would pass as an already masked
    batch: the model would learn to copy its input."""
    from transformers import TrainingArguments

    tokenizer = bert_wordpiece
    data = [tokenizer(t, truncation=True, max_length=random.randrange(8, 32)) for t in lines[:8]]
    copied = [{**example, "labels": list(example["input_ids"])} for example in data]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy="no")
    trainer = DifferenceMaskingTrainer(model=tiny_bert_mlm, args=args, train_dataset=copied,
                                       masker=DifferenceMasker(tokenizer, {}, seed=0))
    with pytest.raises(ValueError, match="labels are its input_ids at every token"):
        trainer.train()
    masked = trainer.mask_batch(trainer.data_collator(data[:4]))  # a batch the masker masked passes
    assert trainer.mask_batch(masked) is masked


def test_per_token_tags_are_refused_as_masked_lm_labels(tiny_bert_mlm, bert_wordpiece, lines, tmp_path):
    """A token-classification set's labels column (NER tags, the length of input_ids) passed as
    an already masked batch: nothing was masked and the model learned to predict tag ids."""
    from transformers import TrainingArguments

    tokenizer = bert_wordpiece
    data = [tokenizer(t, truncation=True, max_length=32) for t in lines[:16]]
    tagged = [{**example, "labels": [-100] + [random.randrange(9) for _ in example["input_ids"][2:]] + [-100]}
              for example in data]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, report_to=[],
                             use_cpu=True, save_strategy="no")
    trainer = DifferenceMaskingTrainer(model=tiny_bert_mlm, args=args, train_dataset=tagged,
                                       masker=DifferenceMasker(tokenizer, {}, seed=0))
    with pytest.raises(ValueError, match=r"not masked-LM labels: they label [\d,]+ of its [\d,]+ tokens and none "
                                         "holds the mask token"):
        trainer.train()
    # Labels a masking collator made pass, at any replacement shares the masker would draw with,
    # and at shares other than its own (no mask token at all) when they label at most half the tokens.
    for mask_share, random_share in ((0.8, 0.1), (0.2, 0.0), (0.0, 1.0)):
        collator = DifferenceMaskingCollator(tokenizer, {}, mlm_probability=0.9, mask_replace_prob=mask_share,
                                             random_replace_prob=random_share, seed=random.randrange(2**32))
        masked = collator(data)
        labelled, tokens = int((masked["labels"] != -100).sum()), int(masked["attention_mask"].sum())
        assert mask_share == 0 or (labelled * mask_share >= 40 and 2 * labelled > tokens), "the premise: it tells"
        trainer = DifferenceMaskingTrainer(model=tiny_bert_mlm, args=args, train_dataset=data,
                                           masker=DifferenceMasker(tokenizer, {}, mask_replace_prob=mask_share,
                                                                   random_replace_prob=random_share, seed=0))
        assert trainer.mask_batch(masked) is masked
    random_only = DifferenceMaskingCollator(tokenizer, {}, mlm_probability=0.3, mask_replace_prob=0.0,
                                            random_replace_prob=1.0, seed=random.randrange(2**32))(data)
    trainer = DifferenceMaskingTrainer(model=tiny_bert_mlm, args=args, train_dataset=data,
                                       masker=DifferenceMasker(tokenizer, {}, seed=0))
    assert trainer.mask_batch(random_only) is random_only
    # A batch with too few labelled tokens to tell passes.
    few = trainer.data_collator(tagged[:1])
    few["labels"][:, 3:] = -100
    assert DifferenceMaskingTrainer(model=tiny_bert_mlm, args=args, train_dataset=data,
                                    masker=DifferenceMasker(tokenizer, {}, seed=0)).mask_batch(few) is few


def test_evaluation_with_a_masking_collator_draws_the_same_masks_every_time(tiny_bert_mlm, bert_wordpiece, lines,
                                                                            tmp_path):
    """Evaluation batches a masking data_collator masked came from its training stream: every
    evaluate() reported another loss, and advanced the masks training would draw."""
    from transformers import TrainingArguments

    tokenizer = bert_wordpiece
    data = [{"input_ids": tokenizer(t, truncation=True, max_length=32)["input_ids"]} for t in lines[:16]]
    collator = DifferenceMaskingCollator(tokenizer, {}, seed=random.randrange(2**32))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True,
                             seed=random.randrange(2**31))
    trainer = diffmask_fast.MaskingTrainer(model=tiny_bert_mlm, args=args, eval_dataset=data, data_collator=collator)
    before = collator._generator().get_state()
    losses = {trainer.evaluate()["eval_loss"] for _ in range(3)}
    assert len(losses) == 1
    assert torch.equal(collator._generator().get_state(), before), "evaluation advanced the training stream"
    assert collator._pinned_seed is None


def test_evaluation_workers_of_a_masking_collator_draw_streams_of_their_own(tiny_bert_mlm, bert_wordpiece, tmp_path):
    """Pinned for evaluation, every DataLoader worker started from the one pinned seed: batches
    of the same shape in different workers were masked at the same positions."""
    from transformers import TrainingArguments

    from diffmask_fast.strategies import build_strategy

    collator = build_strategy("random-token", bert_wordpiece, mask_on="workers", seed=0).collator
    g = torch.Generator().manual_seed(random.randrange(2**31))
    examples = [{"input_ids": [bert_wordpiece.cls_token_id] + torch.randint(10, 400, (60,), generator=g).tolist()
                 + [bert_wordpiece.sep_token_id]} for _ in range(8)]
    seen = []

    class Recording(diffmask_fast.MaskingTrainer):
        def prediction_step(self, model, inputs, *args, **kwargs):
            seen.append(inputs["labels"].cpu() != -100)
            return super().prediction_step(model, inputs, *args, **kwargs)

    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, dataloader_num_workers=2,
                             report_to=[], use_cpu=True, seed=42)
    trainer = Recording(model=tiny_bert_mlm, args=args, data_collator=collator, eval_dataset=examples)
    first = trainer.evaluate()["eval_loss"]
    masks, seen[:] = list(seen), []
    assert not any(torch.equal(masks[i], masks[i + 1]) for i in (0, 2)), "workers 0 and 1 masked alike"
    assert trainer.evaluate()["eval_loss"] == first and all(torch.equal(a, b) for a, b in zip(seen, masks))


def test_the_labels_check_waits_on_the_device_once_not_every_batch(tiny_bert_mlm, bert_wordpiece, lines, tmp_path,
                                                                    monkeypatch):
    """Batches the trainer masked were checked again (a host sync each); batches that come with
    labels are checked once, on the first."""
    from transformers import TrainingArguments

    import diffmask_fast.trainer as trainer_module

    calls = []
    check = trainer_module._labels_problem
    monkeypatch.setattr(trainer_module, "_labels_problem", lambda *given: calls.append(1) or check(*given))
    tokenizer = bert_wordpiece
    data = [tokenizer(t, truncation=True, max_length=random.randrange(8, 32)) for t in lines[:24]]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, report_to=[],
                             use_cpu=True, save_strategy="no", gradient_accumulation_steps=2)
    DifferenceMaskingTrainer(model=tiny_bert_mlm, args=args, train_dataset=data,
                             masker=DifferenceMasker(tokenizer, {}, seed=0)).train()
    assert calls == [], "the trainer's own masks were checked"
    from diffmask_fast.strategies import build_strategy

    collator = build_strategy("random-word", tokenizer, mask_on="workers", seed=0).collator
    DifferenceMaskingTrainer(model=tiny_bert_mlm, args=args, train_dataset=data, data_collator=collator,
                             masker=DifferenceMasker(tokenizer, {}, seed=0)).train()
    assert calls == [1]


def test_a_whole_tokenizer_batch_given_as_input_ids_is_named(bert_wordpiece, tiny_bert_mlm, lines):
    """It failed inside torch.as_tensor: "Could not infer dtype of tokenizers.Encoding"."""
    from diffmask_fast.attention import AttentionMasker

    batch = bert_wordpiece(lines[:3], padding=True, return_tensors="pt")
    for masker, extra in ((DifferenceMasker(bert_wordpiece, {}, seed=0), {}),
                          (AttentionMasker(bert_wordpiece, seed=0), {"model": tiny_bert_mlm})):
        with pytest.raises(TypeError, match=r"got a BatchEncoding of 'input_ids', .*pass batch\['input_ids'\]"):
            masker(batch, **extra)


def test_trainer_tests_skip_saying_why_where_accelerate_is_missing(tmp_path):
    """A GPU image without accelerate failed every test that builds transformers' Trainer; the
    suite's one run there is better served by skips that say so."""
    from pathlib import Path

    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['accelerate'] = None\n", encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    process = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                              f"{root / 'tests' / 'test_masking_module.py'}::test_trainer_masks_in_the_training_step"],
                             capture_output=True, text=True, timeout=600, cwd=root,
                             env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert process.returncode == 0, process.stdout[-3000:]
    assert "1 skipped" in process.stdout and "Trainer needs accelerate, which this Python lacks" in process.stdout
