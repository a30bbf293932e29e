"""DifferenceMaskingCollator: the masking properties the README fixes ("Choices") on three tokenizer families."""

import copy
import math
import pickle
import random
import re

import numpy as np
import pytest
import torch

from law_checks import binomial_p_value, power_against_bias, words_of
from diffmask_fast import reference
from diffmask_fast.collator import DifferenceMaskingCollator
from diffmask_fast.scoring import ScoreTable
from diffmask_fast.tokenization import word_boundaries

TOKENIZERS = ["bert_wordpiece", "roberta_byte_bpe", "sentencepiece_unigram", "minilm_tokenizer",
              "word_level_whitespace"]

FALLBACK_LINES = [
    "However, how frataxin interacts with the Fe-S cluster biosynthesis components remains unclear.",
    "The drug also reduces catecholamine secretion, thereby reducing stress and leading to relief.",
    "Receptor binding was inhibited by the antagonist in a dose-dependent manner (p < 0.05).",
]


@pytest.fixture(scope="module")
def corpus(request):
    try:
        data = request.getfixturevalue("shared_data_dir")
        return (data / "scicite" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    except pytest.skip.Exception:
        return FALLBACK_LINES * 20


@pytest.fixture
def lines(corpus, seed):
    """48 lines drawn with the test's seed, so that the printed seed replays a failure."""
    return random.Random(seed).sample(corpus, 48)


def random_scores(tokenizer, texts, zero_share=0.2):
    """A score table over the words of ``texts`` with random scores, some exactly zero or negative."""
    words = set()
    boundaries = word_boundaries(tokenizer)
    for text in texts:
        _, decoded = words_of(tokenizer, tokenizer(text)["input_ids"], boundaries)
        words.update(decoded)
    rng = random.Random(random.getrandbits(64))  # the global generator starts from the test's seed
    return ScoreTable.from_mapping({w: (0.0 if rng.random() < zero_share else rng.uniform(-0.2, 1.0)) for w in words})


def encode(tokenizer, texts, max_length=64):
    return [{"input_ids": tokenizer(t, truncation=True, max_length=max_length)["input_ids"]} for t in texts]


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_masks_whole_words_only_and_never_special_tokens(request, tokenizer_name, lines):
    tokenizer = request.getfixturevalue(tokenizer_name)
    examples = encode(tokenizer, lines)
    collator = DifferenceMaskingCollator(tokenizer, random_scores(tokenizer, lines), mlm_probability=0.3)
    batch = collator(examples)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    length = max(len(e["input_ids"]) for e in examples)
    assert batch["input_ids"].shape == batch["labels"].shape == (len(examples), length)
    special = set(tokenizer.all_special_ids)
    for row, example in enumerate(examples):
        ids = example["input_ids"]
        labels = batch["labels"][row].tolist()
        masked_ids = batch["input_ids"][row].tolist()
        assert batch["attention_mask"][row].tolist() == [1] * len(ids) + [0] * (length - len(ids))
        assert all(label == -100 for label in labels[len(ids):]), "padding is never masked"
        assert all(m == tokenizer.pad_token_id for m in masked_ids[len(ids):])
        groups, _ = words_of(tokenizer, ids)
        masked_words = 0
        for group in groups:
            flags = {labels[i] != -100 for i in group}
            assert len(flags) == 1, f"word {group} partly masked in row {row}"
            masked_words += flags.pop()
        expected = 0.3 * len(groups)
        assert math.floor(expected) <= masked_words <= math.ceil(expected)
        for position, token in enumerate(ids):
            if token in special:
                assert labels[position] == -100 and masked_ids[position] == token
            if labels[position] != -100:
                assert labels[position] == token
            else:
                assert masked_ids[position] == token


@pytest.mark.parametrize("mask_share, random_share", [(0.8, 0.1), (0.55, 0.3)])
def test_budget_and_replacement_proportions(minilm_tokenizer, lines, mask_share, random_share):
    """About p of the words are masked, and each masked token becomes the mask token, a random
    non-special token or stays in the given shares. Each share is checked against its exact
    binomial law at alpha = 1e-6 / 3 (a correct implementation fails below 1e-6), and batches
    are drawn until a 10% relative bias of any share (the random one 0.10 -> 0.11, say) would
    fail with probability at least 0.999 (exact power, law_checks.power_against_bias)."""
    tokenizer = minilm_tokenizer
    examples = encode(tokenizer, lines, max_length=128)
    collator = DifferenceMaskingCollator(tokenizer, random_scores(tokenizer, lines), mlm_probability=0.25,
                                         mask_replace_prob=mask_share, random_replace_prob=random_share)
    boundaries = collator.boundaries
    first_tokens = [[g[0] for g in words_of(tokenizer, e["input_ids"], boundaries)[0]] for e in examples]
    n_words = sum(len(f) for f in first_tokens)
    # A random replacement draws the original token back with probability 1 / v.
    back = random_share / boundaries.random_token_ids.numel()
    shares = {"mask": mask_share, "random": random_share - back, "kept": 1 - mask_share - random_share + back}
    alpha = 1e-6 / len(shares)
    counts = dict.fromkeys(shares, 0)
    masked_words = masked_tokens = calls = 0
    # How many tokens are masked does not depend on how they are replaced (separate draws), so
    # stopping on that count leaves each share's count binomial given the total.
    while calls == 0 or min(power_against_bias(masked_tokens, share, alpha) for share in shares.values()) < 0.999:
        assert calls < 1000, f"{masked_tokens} masked tokens after {calls} calls"
        batch = collator(examples)
        calls += 1
        labels = batch["labels"]
        chosen = labels != -100
        new = batch["input_ids"][chosen]
        masked_tokens += int(chosen.sum())
        counts["mask"] += int((new == tokenizer.mask_token_id).sum())
        changed = (new != tokenizer.mask_token_id) & (new != labels[chosen])
        counts["random"] += int(changed.sum())
        counts["kept"] += int((new == labels[chosen]).sum())
        assert not boundaries.never_word[new[changed]].any(), "a random replacement is a special token"
        for row, starts in enumerate(first_tokens):
            masked_words += int((labels[row, starts] != -100).sum())
    share = masked_words / (n_words * calls)
    standard_error = math.sqrt(0.25 * 0.75 / (n_words * calls))
    assert abs(share - 0.25) < 5 * standard_error + 0.002, share
    assert sum(counts.values()) == masked_tokens
    for name, probability in shares.items():
        assert binomial_p_value(counts[name], masked_tokens, probability) >= alpha, (
            f"{name}: {counts[name]}/{masked_tokens} = {counts[name] / masked_tokens:.5f} vs {probability:.5f}")


def test_word_frequencies_match_exact_successive_sampling(bert_wordpiece):
    """For one short sentence, how often each word is masked matches the exact probabilities of
    stochastic-rounding budget + successive sampling (enumerated)."""
    tokenizer = bert_wordpiece
    ids = tokenizer("enzymes bind receptors in cells")["input_ids"]
    groups, words = words_of(tokenizer, ids)
    keys = [reference.normalize_word(w) for w in words]
    assert len(set(keys)) == len(keys)
    rng = random.Random(random.getrandbits(64))  # the global generator starts from the test's seed
    scores = {k: rng.uniform(0.05, 1.0) for k in keys}
    p = 0.3
    n = len(groups)
    low = math.floor(p * n)
    frac = p * n - low
    exact = np.array(reference.successive_sampling_inclusion(list(scores.values()), low)) * (1 - frac)
    exact += np.array(reference.successive_sampling_inclusion(list(scores.values()), low + 1)) * frac
    collator = DifferenceMaskingCollator(tokenizer, scores, mlm_probability=p)
    rows = 20000
    batch = collator([{"input_ids": ids}] * rows)
    observed = np.array([(batch["labels"][:, g[0]] != -100).float().mean().item() for g in groups])
    bound = 5 * np.sqrt(exact * (1 - exact) / rows) + 1e-3
    assert (np.abs(observed - exact) < bound).all(), (scores, exact, observed)


def test_zero_score_words_only_fill_the_budget_after_positive_ones(bert_wordpiece):
    tokenizer = bert_wordpiece
    ids = tokenizer("enzymes bind receptors in cells and tissues")["input_ids"]
    groups, words = words_of(tokenizer, ids)
    scores = {reference.normalize_word(w): 0.0 for w in words}
    positive = reference.normalize_word(words[2])
    scores[positive] = 0.7
    collator = DifferenceMaskingCollator(tokenizer, scores, mlm_probability=0.3)
    batch = collator([{"input_ids": ids}] * 500)
    assert (batch["labels"][:, groups[2][0]] != -100).all(), "the only positive-score word is always masked"
    masked_words = sum((batch["labels"][:, g[0]] != -100).long() for g in groups)
    assert set(masked_words.tolist()) <= {math.floor(0.3 * len(groups)), math.ceil(0.3 * len(groups))}


def test_seed_reproducibility_and_fresh_draws(bert_wordpiece, lines):
    tokenizer = bert_wordpiece
    examples = encode(tokenizer, lines)
    table = random_scores(tokenizer, lines)
    first = DifferenceMaskingCollator(tokenizer, table, seed=1234)(examples)
    second = DifferenceMaskingCollator(tokenizer, table, seed=1234)(examples)
    other = DifferenceMaskingCollator(tokenizer, table, seed=99)(examples)
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["labels"], second["labels"])
    assert not torch.equal(first["labels"], other["labels"])
    collator = DifferenceMaskingCollator(tokenizer, table, seed=1234)
    assert not torch.equal(collator(examples)["labels"], collator(examples)["labels"]), "each call draws anew"


def test_pickling_keeps_behaviour(bert_wordpiece, lines):
    tokenizer = bert_wordpiece
    examples = encode(tokenizer, lines)
    collator = DifferenceMaskingCollator(tokenizer, random_scores(tokenizer, lines), seed=7)
    copy = pickle.loads(pickle.dumps(collator))
    assert torch.equal(collator(examples)["labels"], copy(examples)["labels"])


def test_threads_masking_with_one_collator_take_turns(bert_wordpiece, shared_data_dir):
    """Prefetching threads share a collator: one thread's new words grew (rehashed) the table
    while another read it, and the call failed with a shape mismatch."""
    from concurrent.futures import ThreadPoolExecutor

    lines = (shared_data_dir / "scicite" / "corpus.txt").read_text(encoding="utf-8").splitlines()[:1500]
    examples, table = encode(bert_wordpiece, lines), random_scores(bert_wordpiece, lines)
    collator = DifferenceMaskingCollator(bert_wordpiece, table, seed=0)
    batches = [examples[i:i + 16] for i in range(0, len(examples), 16)]
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(collator, batches))
    assert all(out["labels"].shape == out["input_ids"].shape for out in outputs)
    single = DifferenceMaskingCollator(bert_wordpiece, table, seed=0)
    for batch in batches:
        single(batch)
    assert collator.known_token_sequences == single.known_token_sequences  # no word lost to a race
    copied = copy.deepcopy(pickle.loads(pickle.dumps(collator)))  # each copy takes turns of its own
    assert copied._lock is not collator._lock and copied(batches[0])["labels"].shape[0] == len(batches[0])
    assert copied._cache is not collator._cache
    shallow = copy.copy(collator)  # shares the table of words seen, so the turns at it too
    assert shallow._cache is collator._cache and shallow._lock is collator._lock
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda pair: pair[0](pair[1]), [(collator, b) for b in batches[::2]]
                                + [(shallow, b) for b in batches[1::2]]))
    assert all(out["labels"].shape == out["input_ids"].shape for out in outputs)
    assert shallow.known_token_sequences == single.known_token_sequences


def test_the_turns_survive_a_new_score_table_and_a_fork(bert_wordpiece, lines):
    """Assigning scores rebuilt the collator with a new lock while threads were masking under the
    old one; a process forked while another thread held the lock would wait for it forever."""
    import threading

    examples, table = encode(bert_wordpiece, lines), random_scores(bert_wordpiece, lines)
    collator = DifferenceMaskingCollator(bert_wordpiece, table, seed=0)
    lock = collator._lock
    collator.scores = random_scores(bert_wordpiece, lines)
    assert collator._lock is lock and collator.known_token_sequences == 0, "new tables, the same turns"
    lock.acquire()  # held by a thread of the parent when the process was forked
    collator._lock_pid = -1  # as a forked child sees it
    done = threading.Event()
    worker = threading.Thread(target=lambda: (collator(examples), done.set()), daemon=True)
    worker.start()
    worker.join(timeout=60)
    lock.release()
    assert done.is_set(), "the child waited for a lock no thread of its own would release"


def test_an_unpickled_collator_keeps_the_rank_it_was_sent_from(bert_wordpiece, lines, monkeypatch):
    """A worker started by spawn has no process group, and without torchrun no $RANK."""
    tokenizer = bert_wordpiece
    examples = encode(tokenizer, lines[:16])
    collator = DifferenceMaskingCollator(tokenizer, random_scores(tokenizer, lines[:16], zero_share=0.0), seed=7)
    monkeypatch.setenv("RANK", "1")
    sent = pickle.dumps(collator)
    on_rank_one = pickle.loads(sent)(examples)["labels"]
    monkeypatch.delenv("RANK")
    received = pickle.loads(sent)
    assert torch.equal(received(examples)["labels"], on_rank_one)
    assert not torch.equal(pickle.loads(pickle.dumps(collator))(examples)["labels"], on_rank_one)  # rank 0's
    assert torch.equal(pickle.loads(pickle.dumps(received))(examples)["labels"], on_rank_one), "passed on again"


def test_a_resumed_collator_draws_new_streams(bert_wordpiece, lines):
    tokenizer = bert_wordpiece
    examples = encode(tokenizer, lines[:16])
    table = random_scores(tokenizer, lines[:16], zero_share=0.0)

    def first_draw(resumed_at=None):
        collator = DifferenceMaskingCollator(tokenizer, table, seed=7)
        if resumed_at is not None:
            collator.resume_at(resumed_at, calls_per_step=2)
        return collator(examples)["labels"]

    assert torch.equal(first_draw(0), first_draw())  # a fresh run is left as it was
    assert torch.equal(first_draw(5), first_draw(5))  # reproducible
    assert not torch.equal(first_draw(5), first_draw()) and not torch.equal(first_draw(5), first_draw(6))


def _first_batch_per_worker(collator, examples, seed, start_method=None):
    loader = torch.utils.data.DataLoader(examples, batch_size=len(examples) // 2, num_workers=2,
                                         collate_fn=collator, generator=torch.Generator().manual_seed(seed),
                                         multiprocessing_context=start_method)
    return [batch["labels"] for batch in loader]


def test_seeded_workers_draw_new_masks_every_epoch(bert_wordpiece):
    tokenizer = bert_wordpiece
    text = "enzymes bind receptors in cells and tissues of the brain"
    examples = [{"input_ids": tokenizer(text)["input_ids"]}] * 32
    collator = DifferenceMaskingCollator(tokenizer, random_scores(tokenizer, [text], zero_share=0.0), seed=3)
    loader = torch.utils.data.DataLoader(examples, batch_size=16, num_workers=2, collate_fn=collator,
                                         generator=torch.Generator().manual_seed(0))
    first_epoch = [batch["labels"] for batch in loader]
    second_epoch = [batch["labels"] for batch in loader]  # new workers, as without persistent_workers
    assert not any(torch.equal(a, b) for a, b in zip(first_epoch, second_epoch)), "epochs replay their masks"
    # DataLoader seeds each epoch's workers from its generator: the run as a whole repeats.
    loader.generator.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(first_epoch, [batch["labels"] for batch in loader]))


def test_dataloader_with_two_workers(bert_wordpiece):
    tokenizer = bert_wordpiece
    text = "enzymes bind receptors in cells and tissues of the brain"
    examples = [{"input_ids": tokenizer(text)["input_ids"]}] * 64
    table = random_scores(tokenizer, [text], zero_share=0.0)
    collator = DifferenceMaskingCollator(tokenizer, table, seed=3)
    first, second = _first_batch_per_worker(collator, examples, 0)
    assert not torch.equal(first, second), "two workers must not draw the same masks"
    again = _first_batch_per_worker(collator, examples, 0)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1]), "seeded runs repeat"


def test_spawned_workers_draw_what_forked_ones_do(bert_wordpiece):
    """Workers started by spawn (macOS, Windows; forkserver is Linux's default from Python 3.14)
    receive the collator pickled, and draw the same masks as forked ones."""
    tokenizer = bert_wordpiece
    text = "enzymes bind receptors in cells and tissues of the brain"
    examples = [{"input_ids": tokenizer(text)["input_ids"]}] * 16
    collator = DifferenceMaskingCollator(tokenizer, random_scores(tokenizer, [text], zero_share=0.0), seed=5)
    forked = _first_batch_per_worker(collator, examples, 1, "fork")
    spawned = _first_batch_per_worker(collator, examples, 1, "spawn")
    assert all(torch.equal(a, b) for a, b in zip(forked, spawned)) and not torch.equal(*spawned)
    assert not collator._cache.keys.any(), "the workers' words went into the parent's table"


def test_a_score_table_sent_to_a_process_is_a_copy_not_shared_memory():
    """torch's multiprocessing pickler moved the table's tensors to shared memory: spawned
    DataLoader workers all wrote into one table, each counting only its own words, and training
    stopped with "the table (capacity 1024) is full"."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's reductions with ForkingPickler)

    from diffmask_fast.ops import ScoreHashTable

    table = ScoreHashTable()
    table.insert(torch.tensor([5, 9]), torch.tensor([0.5, 0.9]))
    sent = ForkingPickler.loads(ForkingPickler.dumps(table))
    sent.insert(torch.arange(100, 2100), torch.rand(2000))
    assert len(table) == 2 and int((table.keys != 0).sum()) == 2 and table.capacity == 1024
    assert table.lookup(torch.tensor([5, 9, 3]))[1].tolist() == [True, True, False]
    assert len(sent) == 2002 and sent.lookup(torch.tensor([9]))[0].tolist() == [pytest.approx(0.9)]


def test_trainer_with_plain_input_ids(bert_wordpiece, tiny_bert_mlm, tmp_path, lines):
    from transformers import Trainer, TrainingArguments

    tokenizer = bert_wordpiece
    dataset = encode(tokenizer, lines[:16])
    collator = DifferenceMaskingCollator(tokenizer, random_scores(tokenizer, lines[:16]), seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8,
                             report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)
    result = Trainer(model=tiny_bert_mlm, args=args, train_dataset=dataset, data_collator=collator).train()
    assert math.isfinite(result.training_loss)


def test_padding_options(roberta_byte_bpe, lines):
    tokenizer = roberta_byte_bpe
    examples = encode(tokenizer, lines[:5])
    table = random_scores(tokenizer, lines[:5])
    batch = DifferenceMaskingCollator(tokenizer, table, pad_to_multiple_of=8)(examples)
    assert batch["input_ids"].shape[1] % 8 == 0
    numpy_batch = DifferenceMaskingCollator(tokenizer, table, return_tensors="np")(examples)
    assert isinstance(numpy_batch["input_ids"], np.ndarray)
    lists = DifferenceMaskingCollator(tokenizer, table, seed=5)([e["input_ids"] for e in examples])
    dicts = DifferenceMaskingCollator(tokenizer, table, seed=5)(examples)
    assert torch.equal(lists["labels"], dicts["labels"])
    tensors = DifferenceMaskingCollator(tokenizer, table, seed=5)([torch.tensor(e["input_ids"]) for e in examples])
    assert torch.equal(tensors["labels"], dicts["labels"])


def test_pad_to_multiple_of_pads_to_the_next_multiple_and_no_further(roberta_byte_bpe, lines, seed):
    """The batch is ceil(longest / m) * m long: a longest row already a multiple of m gets no
    extra block of padding (wasted compute, and shapes that differ from the tokenizer's)."""
    tokenizer = roberta_byte_bpe
    table = random_scores(tokenizer, lines[:8])
    encoded = [tokenizer(t)["input_ids"] for t in lines]
    rng = random.Random(seed)
    exact = 0
    for trial in range(40):
        multiple = rng.choice([1, 2, 3, 4, 5, 8, 16])
        longest = rng.randint(1, 60)
        if trial % 2:  # half the batches end exactly on a multiple
            longest = max(multiple, longest - longest % multiple)
        rows = [(encoded[rng.randrange(len(encoded))] * 64)[: rng.randint(1, longest)] for _ in range(rng.randint(1, 6))]
        rows[rng.randrange(len(rows))] = (encoded[0] * 64)[:longest]
        exact += longest % multiple == 0
        batch = DifferenceMaskingCollator(tokenizer, table, pad_to_multiple_of=multiple, seed=trial)(
            [{"input_ids": row} for row in rows])
        want = -(-longest // multiple) * multiple
        assert batch["input_ids"].shape == batch["labels"].shape == (len(rows), want), (longest, multiple)
        assert batch["attention_mask"].sum(1).tolist() == [len(row) for row in rows]
    assert exact >= 20


def test_left_padding_and_given_masks(bert_wordpiece):
    from tokenizers_offline import bert_wordpiece as build

    tokenizer = build()
    tokenizer.padding_side = "left"
    encoded = [tokenizer(t, return_special_tokens_mask=True) for t in ["enzymes bind", "receptors in cells of mice"]]
    examples = [{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"],
                 "special_tokens_mask": e["special_tokens_mask"], "token_type_ids": [0] * len(e["input_ids"])}
                for e in encoded]
    batch = DifferenceMaskingCollator(tokenizer, {"enzymes": 1.0}, mlm_probability=1.0)(examples)
    assert batch["attention_mask"][0].tolist()[:3] == [0, 0, 0]
    assert (batch["labels"][0, :3] == -100).all() and (batch["input_ids"][0, :3] == tokenizer.pad_token_id).all()
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert int((batch["labels"][1] != -100).sum()) == len(encoded[1]["input_ids"]) - 2, "p=1 masks every word"


@pytest.mark.parametrize("known, unknown", [(1.0, 0.0), (0.0, 0.5)])
def test_unknown_words_score_unknown_score_and_are_learned_once(bert_wordpiece, lines, known, unknown):
    tokenizer = bert_wordpiece
    examples = encode(tokenizer, lines[:8])
    collator = DifferenceMaskingCollator(tokenizer, ScoreTable.from_mapping({"the": known}, unknown_score=unknown))
    batch = collator(examples)
    learned = collator.known_token_sequences
    assert learned > 1
    keys, values = collator._cache.tensors()
    assert sorted(set(values[keys != 0].tolist())) == sorted({known, unknown}), "each word keeps the score it looked up"
    collator(examples)
    assert collator.known_token_sequences == learned
    # Exactly one of "the" and the other words scores above 0; while a row has enough of those
    # for its budget, words scoring 0 are never masked.
    for row, example in enumerate(examples):
        groups, words = words_of(tokenizer, example["input_ids"])
        masked = [bool((batch["labels"][row][group] != -100).all()) for group in groups]
        positive = [(word == "the") == (known > 0) for word in words]
        budget = math.ceil(0.25 * len(groups))  # at most, under stochastic rounding
        if sum(positive) >= budget:
            assert not any(m and not p for m, p in zip(masked, positive)), (row, words, masked)
        if budget and any(positive) and 0.25 * len(groups) >= 1:
            assert any(m and p for m, p in zip(masked, positive)), (row, words, masked)


@pytest.mark.parametrize("weighting, mix", [("rank", 0.0), ("similarity", 0.5), ("rank", 1.0)])
def test_other_weightings_keep_whole_words(bert_wordpiece, lines, weighting, mix):
    tokenizer = bert_wordpiece
    examples = encode(tokenizer, lines[:8])
    batch = DifferenceMaskingCollator(tokenizer, random_scores(tokenizer, lines[:8]), weighting=weighting,
                                      uniform_mix=mix)(examples)
    for row, example in enumerate(examples):
        groups, _ = words_of(tokenizer, example["input_ids"])
        for group in groups:
            assert len({int(batch["labels"][row, i] != -100) for i in group}) == 1


def test_errors(bert_wordpiece, tokenizer_without_mask):
    with pytest.raises(ValueError, match="mask token"):
        DifferenceMaskingCollator(tokenizer_without_mask, {"a": 1.0})
    bad_settings = [
        ({"mlm_probability": 1.5}, "mlm_probability"), ({"weighting": "softmax"}, "unknown weighting"),
        ({"uniform_mix": -0.1}, "uniform_mix"), ({"mask_replace_prob": 0.95, "random_replace_prob": 0.1}, "sum to at most 1"),
        ({"pad_to_multiple_of": 0}, "pad_to_multiple_of must be at least 1"),
        ({"mask_replace_prob": float("nan")}, "mask_replace_prob"),
        ({"random_replace_prob": float("nan")}, "random_replace_prob must be in"),
        ({"mlm_probability": float("nan")}, "mlm_probability"), ({"return_tensors": "tf"}, "return_tensors"),
        ({"mlm": False}, "mlm=False"), ({"word_boundary": "wordlevel"}, "wordlevel"),
    ]
    for settings, message in bad_settings:
        with pytest.raises(ValueError, match=message):
            DifferenceMaskingCollator(bert_wordpiece, {"a": 1.0}, **settings)
    for name, value in (("mask_replace_prob", "0.8"), ("random_replace_prob", None),
                        ("mask_replace_prob", torch.tensor(0.8))):
        with pytest.raises(TypeError, match=f"{name} must be a number in \\[0, 1\\], got {re.escape(repr(value))}"):
            DifferenceMaskingCollator(bert_wordpiece, {"a": 1.0}, **{name: value})
    numpy_share = DifferenceMaskingCollator(bert_wordpiece, {"a": 1.0}, mask_replace_prob=np.float32(0.5))
    assert type(numpy_share.mask_replace_prob) is float
    with pytest.raises(ValueError, match=r"pad_to_multiple_of must be at most 65,536 \(the longest sequence the "
                                         r"tokenizer names, or 65,536\), got 1000000000"):
        DifferenceMaskingCollator(bert_wordpiece, {"a": 1.0}, pad_to_multiple_of=10**9)  # padded to 10^9 tokens
    short_context = copy.copy(bert_wordpiece)
    short_context.model_max_length = 512  # the limit is 65,536 for it too, not its 512
    assert DifferenceMaskingCollator(short_context, {"a": 1.0}, pad_to_multiple_of=1024).pad_to_multiple_of == 1024
    with pytest.raises(ValueError, match="pad_to_multiple_of must be at most 65,536"):
        DifferenceMaskingCollator(short_context, {"a": 1.0}, pad_to_multiple_of=65_537)
    long_context = copy.copy(bert_wordpiece)
    long_context.model_max_length = 131_072
    assert DifferenceMaskingCollator(long_context, {"a": 1.0}, pad_to_multiple_of=131_072).pad_to_multiple_of == 131_072
    with pytest.raises(TypeError, match="pad_to_multiple_of must be a whole number, got 2.5"):
        DifferenceMaskingCollator(bert_wordpiece, {"a": 1.0}, pad_to_multiple_of=2.5)
    with pytest.raises(ValueError, match="finite"):
        DifferenceMaskingCollator(bert_wordpiece, {"a": float("nan")})
    collator = DifferenceMaskingCollator(bert_wordpiece, {"a": 1.0})
    with pytest.raises(ValueError, match="empty list"):
        collator([])
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        collator([{"input_ids": [2, 10**6]}])
    with pytest.raises(ValueError, match="input_ids"):
        collator([{"text": "no ids"}])
    with pytest.raises(ValueError, match="matrix"):
        collator.mask(torch.tensor([1, 2, 3]))


def test_distributed_ranks_draw_different_masks(bert_wordpiece, lines, monkeypatch):
    tokenizer = bert_wordpiece
    examples = encode(tokenizer, lines)
    table = random_scores(tokenizer, lines)
    by_rank = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        by_rank[rank] = DifferenceMaskingCollator(tokenizer, table, seed=11)(examples)["labels"]
    assert not torch.equal(by_rank["0"], by_rank["1"])
    monkeypatch.setenv("RANK", "1")
    assert torch.equal(DifferenceMaskingCollator(tokenizer, table, seed=11)(examples)["labels"], by_rank["1"])
    from diffmask_fast.baselines import RandomWordCollator

    unseeded = {}
    for rank in ("0", "1"):  # without a seed too: every rank starts from the same torch seed (set_seed)
        monkeypatch.setenv("RANK", rank)
        torch.manual_seed(5)
        unseeded[rank] = [collator(examples)["labels"] for collator in (DifferenceMaskingCollator(tokenizer, table),
                                                                        RandomWordCollator(tokenizer))]
    for on_rank_0, on_rank_1 in zip(unseeded["0"], unseeded["1"]):
        assert not torch.equal(on_rank_0, on_rank_1)


@pytest.mark.parametrize("field", ["attention_mask", "special_tokens_mask", "token_type_ids"])
def test_each_example_field_must_be_as_long_as_its_input_ids(bert_wordpiece, field):
    collator = DifferenceMaskingCollator(bert_wordpiece, {"a": 1.0})
    # The totals agree (6 + 2 = 5 + 3): only a per-example check sees that rows 0 and 1 disagree.
    shifted = [{"input_ids": [2, 141, 1117, 144, 3], field: [1, 1, 1, 1, 1, 0]},
               {"input_ids": [2, 141, 3], field: [1, 1]}]
    with pytest.raises(ValueError, match=f"'{field}' of example 0 has 6 items but its input_ids has 5"):
        collator(shifted)
    longer_last = [{"input_ids": [2, 141, 3], field: [1, 1, 1]}, {"input_ids": [2, 141, 3], field: [1, 1, 1, 0]}]
    with pytest.raises(ValueError, match=f"'{field}' of example 1 has 4"):
        collator(longer_last)
    with pytest.raises(ValueError, match=f"'{field}' of example 0 has 4"):
        collator([{"input_ids": [2, 141, 3], field: np.array([1, 1, 1, 0])}])
    with pytest.raises(ValueError, match=f"'{field}' is in example 0 but not in example 1"):
        collator([{"input_ids": [2, 141, 3], field: [1, 1, 1]}, {"input_ids": [2, 141, 3]}])


def test_untokenized_or_misshapen_examples_are_refused_by_name(bert_wordpiece):
    collator = DifferenceMaskingCollator(bert_wordpiece, {"receptor": 1.0})
    with pytest.raises(TypeError, match="example 0 is text; examples must be tokenized"):
        collator(["the receptor"])
    with pytest.raises(TypeError, match="'input_ids' of example 1 is text"):
        collator([{"input_ids": [2, 141, 3]}, {"input_ids": "the receptor"}])
    one_row = bert_wordpiece("the receptor", return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match=rf"'input_ids' of example 0 has shape \(1, {one_row.shape[1]}\).*squeeze"):
        collator([{"input_ids": one_row}])
    with pytest.raises(ValueError, match=r"'input_ids' of example 1 has shape \(1, 3\)"):
        collator([[2, 141, 3], [[2, 141, 3]]])
    with pytest.raises(TypeError, match="'input_ids' of example 0 is of type int, not a sequence"):
        collator([{"input_ids": 5}])


@pytest.mark.parametrize("ids", [[2.0, 5.5, 3.0], [2, 5.0, 3], np.array([2.0, 5.5, 3.0]),
                                 torch.tensor([2.0, 5.0, 3.0]), [2, "5", 3]])
def test_ids_that_are_not_integers_are_refused(bert_wordpiece, ids):
    collator = DifferenceMaskingCollator(bert_wordpiece, {"a": 1.0})
    with pytest.raises(TypeError, match="'input_ids' of example 1 holds .* values; token ids and masks must be integers"):
        collator([[2, 141, 3], ids])
    with pytest.raises(TypeError, match="'attention_mask' of example 0 holds"):
        collator([{"input_ids": [2, 141, 3], "attention_mask": ids}])


def test_lists_arrays_and_tensors_mix_freely(bert_wordpiece, lines):
    tokenizer = bert_wordpiece
    ids = [e["input_ids"] for e in encode(tokenizer, lines[:6])]
    table = random_scores(tokenizer, lines[:6])
    mixed = [torch.tensor(ids[0]), ids[1], np.asarray(ids[2], dtype=np.int32), tuple(ids[3]),
             torch.tensor(ids[4], dtype=torch.int32), ids[5]]
    expected = DifferenceMaskingCollator(tokenizer, table, seed=5)(ids)
    got = DifferenceMaskingCollator(tokenizer, table, seed=5)(mixed)
    assert all(torch.equal(got[key], expected[key]) for key in expected)
    masks = [{"input_ids": ids[0], "attention_mask": torch.ones(len(ids[0]), dtype=torch.bool)},
             {"input_ids": torch.tensor(ids[1]), "attention_mask": [1] * len(ids[1])}]
    batch = DifferenceMaskingCollator(tokenizer, table)(masks)
    assert batch["attention_mask"].sum(1).tolist() == [len(ids[0]), len(ids[1])]


def test_other_fields_are_kept_when_they_stack_and_named_when_not(bert_wordpiece):
    collator = DifferenceMaskingCollator(bert_wordpiece, {"a": 1.0})
    kept = collator([{"input_ids": [2, 141, 3], "label": 1, "labels": 7},
                     {"input_ids": [2, 141, 1117, 3], "label": 0, "labels": 7}])
    assert kept["label"].tolist() == [1, 0]
    assert kept["labels"].shape == kept["input_ids"].shape, "the masking labels replace a given labels field"
    with pytest.raises(TypeError, match="field 'id' of example 0 holds str values.*remove it"):
        collator([{"input_ids": [2, 141, 3], "id": "a"}, {"input_ids": [2, 141, 3], "id": "b"}])
    with pytest.raises(ValueError, match="field 'word_ids' has a different shape in some examples"):
        collator([{"input_ids": [2, 141, 3], "word_ids": [0, 1, 2]}, {"input_ids": [2, 3], "word_ids": [0, 1]}])
    # Character offsets (which transformers' whole-word masking reads, and drops) are no model input.
    encoded = [bert_wordpiece(text, return_offsets_mapping=True) for text in ("the cell", "the enzyme binds it")]
    assert "offset_mapping" in encoded[0]
    assert set(collator(encoded)) == set(encoded[0]) - {"offset_mapping"} | {"labels"}


def _labels_of_a_run(collator, examples, generator=None) -> list[torch.Tensor]:
    loader = torch.utils.data.DataLoader(examples, batch_size=4, num_workers=2, persistent_workers=False,
                                         collate_fn=collator, generator=generator)
    return [batch["labels"] for batch in loader]


def test_runs_with_workers_repeat_when_the_worker_seeds_are_seeded_too(bert_wordpiece):
    """A worker's stream mixes in the worker seed DataLoader draws every epoch from its generator,
    else from the global torch RNG: with ``seed`` alone, runs repeat only when that is seeded."""
    tokenizer = bert_wordpiece
    text = "enzymes bind receptors in cells and tissues of the brain"
    examples = [{"input_ids": tokenizer(text)["input_ids"]}] * 16
    collator = DifferenceMaskingCollator(tokenizer, random_scores(tokenizer, [text], zero_share=0.0), seed=3)
    first = _labels_of_a_run(collator, examples, torch.Generator().manual_seed(8))
    second = _labels_of_a_run(collator, examples, torch.Generator().manual_seed(8))
    assert len(first) == 4 and all(torch.equal(a, b) for a, b in zip(first, second))
    torch.manual_seed(8)  # what set_seed does for Trainer
    from_global = _labels_of_a_run(collator, examples)
    torch.manual_seed(8)
    assert all(torch.equal(a, b) for a, b in zip(from_global, _labels_of_a_run(collator, examples)))
    # Unseeded, each run's workers get seeds of their own: their masks may differ from run to run.
    assert len(_labels_of_a_run(collator, examples)) == 4


RESUME_TEXTS = ["the enzyme binds the receptor in cells of mice", "kinase inhibitors block the active site of the enzyme",
                "receptor binding was inhibited by the antagonist"]


def _resume_collator(tokenizer, **options):
    return DifferenceMaskingCollator(tokenizer, {"enzyme": 1.0, "receptor": 0.5}, **options)


def test_resume_and_pin_take_effect_after_draws_were_made(bert_wordpiece):
    """A collator that has drawn already starts the stream it is told to, not its old one."""
    examples = encode(bert_wordpiece, RESUME_TEXTS)
    used, fresh = _resume_collator(bert_wordpiece, seed=7), _resume_collator(bert_wordpiece, seed=7)
    used(examples)
    used.resume_at(5)
    fresh.resume_at(5)
    assert torch.equal(used(examples)["labels"], fresh(examples)["labels"])
    pinned, other = _resume_collator(bert_wordpiece, seed=1), _resume_collator(bert_wordpiece, seed=2)
    pinned(examples)
    pinned.pin_generator(9)
    other.pin_generator(9)
    assert torch.equal(pinned(examples)["labels"], other(examples)["labels"])


def test_tokens_the_attention_mask_hides_are_never_masked(bert_wordpiece):
    examples = []
    for text in RESUME_TEXTS:
        ids = bert_wordpiece(text)["input_ids"]
        examples.append({"input_ids": ids, "attention_mask": [1] * 4 + [0] * (len(ids) - 4)})
    batch = _resume_collator(bert_wordpiece, mlm_probability=1.0, seed=0)(examples)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert (batch["labels"][batch["attention_mask"] == 1] != -100).any()


def _same_batches(first, second):
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_assigning_a_score_table_rebuilds_what_came_from_the_old_one(bert_wordpiece, lines, seed):
    """collator.scores = other: the words already seen are masked by the new table's scores (the
    old ones were remembered by token ids), the random stream goes on where it was, and a table
    that fails its checks is refused with the old one kept."""
    examples = encode(bert_wordpiece, lines)
    old, new = random_scores(bert_wordpiece, lines), random_scores(bert_wordpiece, lines)
    changed = DifferenceMaskingCollator(bert_wordpiece, old, seed=seed)
    fresh = DifferenceMaskingCollator(bert_wordpiece, new, seed=seed)
    changed(examples[:16]), fresh(examples[:16])  # the same draws so far, whatever the table
    changed.scores = {word: new.score(word) for word in new.words}  # a mapping becomes a table, as in __init__
    assert isinstance(changed.scores, ScoreTable)
    _same_batches(changed(examples), fresh(examples))
    with pytest.raises(ValueError, match="word scores must be finite"):
        changed.scores = {"kinase": float("nan")}
    assert changed.scores.score("kinase") == new.score("kinase")
    _same_batches(changed(examples[16:]), fresh(examples[16:]))


def test_assigning_a_tokenizer_rebuilds_the_word_tables(bert_wordpiece, roberta_byte_bpe, lines, seed):
    table = random_scores(roberta_byte_bpe, lines)
    changed = DifferenceMaskingCollator(bert_wordpiece, table, seed=seed)
    changed(encode(bert_wordpiece, lines[:4]))
    changed.tokenizer = roberta_byte_bpe
    fresh = DifferenceMaskingCollator(roberta_byte_bpe, table, seed=seed)
    fresh(encode(roberta_byte_bpe, lines[:4]))
    examples = encode(roberta_byte_bpe, lines)
    _same_batches(changed(examples), fresh(examples))


@pytest.mark.parametrize("name", ["TermMaskingCollator", "MSLMCollator"])
def test_assigning_terms_rebuilds_the_term_matcher(bert_wordpiece, lines, seed, name):
    from diffmask_fast import terms

    collator_class = getattr(terms, name)
    words = sorted({w for line in lines for w in line.split() if w.isalpha()})
    chosen = random.Random(seed).sample(words, 6)
    changed = collator_class(bert_wordpiece, ["zzzz unused"], seed=seed)
    fresh = collator_class(bert_wordpiece, chosen, seed=seed)
    examples = encode(bert_wordpiece, lines)
    changed(examples[:8]), fresh(examples[:8])
    changed.terms = chosen
    _same_batches(changed(examples), fresh(examples))
    with pytest.raises((TypeError, ValueError)):
        changed.terms = 7
    assert changed.terms == fresh.terms


@pytest.mark.parametrize("name, setting, value, problem", [
    ("DifferenceMaskingCollator", "mlm_probability", 7.0, "mlm_probability must be"),
    ("DifferenceMaskingCollator", "weighting", "ranked", "unknown weighting 'ranked'"),
    ("DifferenceMaskingCollator", "uniform_mix", -0.5, "uniform_mix must be"),
    ("DifferenceMaskingCollator", "random_replace_prob", 0.5, "mask_replace_prob .* random_replace_prob"),
    ("MSLMCollator", "term_weight", -5.0, "term_weight must be positive and finite, got -5.0"),
    ("MSLMCollator", "term_probability", 7.0, "term_probability must be"),
    ("RandomWordCollator", "return_tensors", "tf", "return_tensors must be 'pt' or 'np'"),
    ("RandomTokenCollator", "seed", -1, "seed"),
])
def test_an_option_assigned_after_construction_is_checked_as_the_constructor_checks_it(
        bert_wordpiece, lines, seed, name, setting, value, problem):
    """``collator.term_weight = -5`` was taken: every masked term then weighed -5 in the loss."""
    import diffmask_fast

    collator_class = getattr(diffmask_fast, name)
    arguments = {"DifferenceMaskingCollator": (random_scores(bert_wordpiece, lines),),
                 "MSLMCollator": (["kinase"],)}.get(name, ())
    collator = collator_class(bert_wordpiece, *arguments, seed=seed)
    with pytest.raises(ValueError, match=problem):
        collator_class(bert_wordpiece, *arguments, **{"seed": seed, setting: value})
    kept = getattr(collator, setting)
    with pytest.raises(ValueError, match=problem):
        setattr(collator, setting, value)
    assert getattr(collator, setting) == kept
    collator.mlm_probability = 0.5
    assert collator.mlm_probability == 0.5


def test_a_seed_assigned_after_construction_restarts_the_stream_from_it(bert_wordpiece, lines, seed):
    examples = encode(bert_wordpiece, lines)
    table = random_scores(bert_wordpiece, lines)
    changed = DifferenceMaskingCollator(bert_wordpiece, table, seed=seed)
    changed(examples[:8])
    changed.seed = seed + 1
    _same_batches(changed(examples), DifferenceMaskingCollator(bert_wordpiece, table, seed=seed + 1)(examples))


def test_a_cased_score_table_tells_capitals_apart(roberta_byte_bpe, seed):
    """A table that keeps case (lowercase=False) scores "The" and "the" apart; no collator test
    used one, so looking words up lowercased would have passed."""
    table = ScoreTable.from_mapping({"The": 1.0, "the": 0.0, "cat": 0.0, "sat": 0.0, "on": 0.0, "mat": 0.0},
                                    lowercase=False)
    collator = DifferenceMaskingCollator(roberta_byte_bpe, table, mlm_probability=1 / 6, seed=seed % 1000)
    ids = roberta_byte_bpe("The cat sat on the mat")["input_ids"]
    labels = collator([ids] * 200)["labels"]
    tokens = roberta_byte_bpe.convert_ids_to_tokens(ids)
    capital, lower = tokens.index("The"), tokens.index("\u0120the")
    assert (labels[:, capital] != -100).all(), "the only positive word, within a budget of one word"
    assert (labels != -100).sum() == 200 and (labels[:, lower] == -100).all()


def test_probabilities_of_any_real_type_are_kept_as_floats(bert_wordpiece):
    """A Fraction passed the checks and failed at the first batch (torch compares tensors with no
    Fraction), inside a DataLoader worker."""
    from fractions import Fraction

    from diffmask_fast.baselines import RandomTokenCollator, RandomWordCollator
    from diffmask_fast.terms import MSLMCollator, TermMaskingCollator

    quarter = Fraction(1, 4)
    collators = [
        RandomTokenCollator(bert_wordpiece, seed=0, mlm_probability=quarter),
        RandomWordCollator(bert_wordpiece, seed=0, mlm_probability=quarter),
        DifferenceMaskingCollator(bert_wordpiece, {"cell": 1.0}, seed=0, mlm_probability=quarter, uniform_mix=quarter),
        TermMaskingCollator(bert_wordpiece, ["protein"], seed=0, mlm_probability=quarter),
        MSLMCollator(bert_wordpiece, ["protein"], seed=0, mlm_probability=quarter, term_probability=quarter,
                     term_weight=Fraction(3, 2)),
    ]
    ids = bert_wordpiece("the cell binds the protein receptor")["input_ids"]
    for collator in collators:
        settings = {name: getattr(collator, name) for name in ("mlm_probability", "uniform_mix", "term_probability",
                                                                "term_weight") if hasattr(collator, name)}
        assert all(type(value) is float for value in settings.values()), (type(collator).__name__, settings)
        assert collator([ids])["labels"].shape == (1, len(ids))
