"""What the maskers take: seeds, score tables, batches and datasets in the forms users hold them,
and clear errors for the rest (never a failure inside a DataLoader worker on the first batch)."""

from __future__ import annotations

import functools
import pickle
import random
import re

import numpy as np
import pytest
import torch

from diffmask_fast.attention import AttentionMasker
from diffmask_fast.baselines import RandomTokenCollator, RandomWordCollator
from diffmask_fast.collator import DifferenceMaskingCollator
from diffmask_fast.masker import DifferenceMasker
from diffmask_fast.scoring import ScoreTable
from diffmask_fast.strategies import build_strategy
from diffmask_fast.terms import MSLMCollator, TermMaskingCollator, TermMatcher, domain_terms
from diffmask_fast.tokenization import UnknownWordBoundaries, detect_word_boundary_scheme

SCORES = {"enzyme": 1.0, "binds": 0.5, "receptor": 0.8}
TEXTS = ["the enzyme binds the receptor", "an enzyme", "receptor of the enzyme binds a protein in cells"]


def collator_of(kind: str, tokenizer, seed, **options):
    makers = {
        "difference": lambda: DifferenceMaskingCollator(tokenizer, SCORES, seed=seed, **options),
        "random-token": lambda: RandomTokenCollator(tokenizer, seed=seed, **options),
        "random-word": lambda: RandomWordCollator(tokenizer, seed=seed, **options),
        "terms": lambda: TermMaskingCollator(tokenizer, ["enzyme"], seed=seed, **options),
        "mslm": lambda: MSLMCollator(tokenizer, ["enzyme"], seed=seed, **options),
    }
    return makers[kind]()


COLLATORS = ["difference", "random-token", "random-word", "terms", "mslm"]


def masker_of(kind: str, tokenizer, seed):
    """A collator of ``kind``, or the in-step maskers: "device" (DifferenceMasker), "attention"."""
    if kind == "device":
        return DifferenceMasker(tokenizer, SCORES, seed=seed)
    if kind == "attention":
        return AttentionMasker(tokenizer, seed=seed)
    return collator_of(kind, tokenizer, seed)


@pytest.mark.parametrize("kind", COLLATORS)
def test_a_word_the_examples_special_tokens_mask_flags_is_never_masked(kind, bert_wordpiece, seed):
    """``special_tokens_mask`` given with an example is read, not only dropped: every collator
    leaves the tokens it flags alone, even where it masks everything else."""
    encoded = bert_wordpiece("the enzyme binds the [MASK] receptor", return_special_tokens_mask=True)
    enzyme = [position for position, word in enumerate(encoded.word_ids()) if word == 1]
    assert bert_wordpiece.decode([encoded["input_ids"][i] for i in enzyme]) == "enzyme"
    flags = list(encoded["special_tokens_mask"])
    for position in enzyme:
        flags[position] = 1
    options = dict(mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0)
    if kind == "mslm":
        options["term_probability"] = 1.0
    collator = collator_of(kind, bert_wordpiece, seed, **options)
    labels = collator([{"input_ids": encoded["input_ids"], "special_tokens_mask": flags}])["labels"][0]
    assert labels[enzyme].tolist() == [-100] * len(enzyme), kind
    unflagged = collator([{"input_ids": encoded["input_ids"]}])["labels"][0]
    assert (unflagged[enzyme] != -100).all(), f"{kind} masks the word when nothing flags it"
    nothing = dict(mlm_probability=0.0, **({"term_probability": 0.0} if kind == "mslm" else {}))
    assert (collator_of(kind, bert_wordpiece, seed, **nothing)([encoded["input_ids"]])["labels"]
            == -100).all(), "no label where nothing is masked, not at the [MASK] the text holds either"


@pytest.mark.parametrize("kind", COLLATORS)
def test_a_numpy_integer_seed_draws_as_the_same_int(kind, bert_wordpiece):
    seed = random.randrange(2**62)
    examples = [bert_wordpiece(text) for text in TEXTS]
    by_numpy = collator_of(kind, bert_wordpiece, np.int64(seed))(examples)
    by_int = collator_of(kind, bert_wordpiece, seed)(examples)
    assert torch.equal(by_numpy["labels"], by_int["labels"]) and torch.equal(by_numpy["input_ids"], by_int["input_ids"])


@pytest.mark.parametrize("kind", COLLATORS + ["device", "attention"])
@pytest.mark.parametrize("bad_seed", ["1", 1.0, True, torch.tensor(7)])
def test_a_seed_that_is_no_integer_is_refused_when_built(kind, bad_seed, bert_wordpiece):
    with pytest.raises(TypeError, match="seed must be an integer or None"):
        masker_of(kind, bert_wordpiece, bad_seed)


@pytest.mark.parametrize("kind", COLLATORS + ["device", "attention"])
@pytest.mark.parametrize("bad_seed", [-1, 2**63, np.uint64(2**63 + 5)])
def test_a_seed_outside_numpys_range_is_refused(kind, bad_seed, bert_wordpiece):
    """Seeds lie in [0, 2**63): a wider one would draw the masks of another seed."""
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*63\), got"):
        masker_of(kind, bert_wordpiece, bad_seed)


@pytest.mark.parametrize("kind", COLLATORS)
def test_the_widest_seeds_draw_streams_of_their_own(kind, bert_wordpiece):
    examples = [bert_wordpiece(text) for text in TEXTS * 4]
    drawn = [collator_of(kind, bert_wordpiece, seed)(examples)["labels"] for seed in (0, 2**62, 2**63 - 1)]
    assert not torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[1], drawn[2])


def test_the_device_masker_checks_its_batch(bert_wordpiece):
    encoded = bert_wordpiece(TEXTS, padding=True, return_tensors="pt")
    ids, attention = encoded["input_ids"], encoded["attention_mask"]
    masker = DifferenceMasker(bert_wordpiece, SCORES, mlm_probability=1.0, seed=0)
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \(3, \d+\), got \(1, \d+\)"):
        masker(ids, attention[:1])
    with pytest.raises(ValueError, match="special_tokens_mask must have the shape of input_ids"):
        masker(ids, attention, attention[:, 1:])
    with pytest.raises(ValueError, match=r"input_ids must be a \[batch, length\] matrix, got shape \(\d+,\)"):
        masker(ids[0])
    with pytest.raises(TypeError, match="input_ids holds torch.float32 values; token ids must be integers"):
        masker(ids.float(), attention)
    state = masker.seed_state.clone()
    from_tensor = masker(ids, attention)
    masker.seed_state.copy_(state)
    from_numpy = masker(ids.numpy(), attention.numpy())
    assert all(torch.equal(a, b) for a, b in zip(from_tensor, from_numpy))
    labels = from_tensor[1]
    assert ((labels != -100) == (attention.bool() & (ids != bert_wordpiece.cls_token_id)
                                 & (ids != bert_wordpiece.sep_token_id))).all(), "p = 1 masks every real token"


@pytest.mark.parametrize("mask_on", ["workers", "device"])
def test_a_validation_set_is_masked_from_an_integer_seed_only(mask_on, bert_wordpiece):
    """The collators took seed=None and drew unpinned masks; the device masker failed inside."""
    built = build_strategy("difference", bert_wordpiece, scores=ScoreTable.from_mapping(SCORES), seed=0,
                           mask_on=mask_on)
    examples = [bert_wordpiece(text) for text in TEXTS]
    for seed, error, message in [(None, TypeError, "mask_examples needs an integer seed"),
                                 (1.5, TypeError, "seed must be an integer"), (-1, ValueError, "seed must be in")]:
        with pytest.raises(error, match=message):
            built.mask_examples(examples, seed=seed)
    assert len(built.mask_examples(examples, seed=np.int64(3))) == len(TEXTS)


@pytest.mark.parametrize("strategy", ["random-word", "difference"])
def test_a_validation_set_given_as_a_dataset_is_masked(strategy, bert_wordpiece):
    datasets = pytest.importorskip("datasets")
    encoded = bert_wordpiece(TEXTS * 3)
    dataset = datasets.Dataset.from_dict(dict(encoded))
    options = {"scores": ScoreTable.from_mapping(SCORES)} if strategy == "difference" else {}
    built = build_strategy(strategy, bert_wordpiece, seed=0, mask_on="workers", **options)
    from_dataset = built.mask_examples(dataset, batch_size=4)
    from_list = built.mask_examples([{name: encoded[name][i] for name in encoded} for i in range(len(dataset))],
                                    batch_size=4)
    assert len(from_dataset) == len(TEXTS) * 3
    for a, b in zip(from_dataset, from_list):
        assert a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


def test_float_fields_come_back_as_transformers_collators_give_them(bert_wordpiece):
    examples = [{**bert_wordpiece("the enzyme"), "weight": 0.5, "target": [0.25, 1.0]},
                {**bert_wordpiece("an enzyme binds"), "weight": 1.5, "target": [2.0, 3.0]}]
    batch = DifferenceMaskingCollator(bert_wordpiece, SCORES)(examples)
    assert batch["weight"].dtype == torch.float32 and batch["weight"].tolist() == [0.5, 1.5]
    assert batch["target"].dtype == torch.float32 and batch["target"].shape == (2, 2)
    as_numpy = DifferenceMaskingCollator(bert_wordpiece, SCORES, return_tensors="np")(examples)
    assert as_numpy["weight"].dtype == np.float64, "numpy's own float, as transformers' numpy collators give"
    arrays = [{**example, "weight": np.float64(example["weight"])} for example in examples]
    assert DifferenceMaskingCollator(bert_wordpiece, SCORES)(arrays)["weight"].dtype == torch.float64, \
        "numpy values keep their dtype"
    ints = [{**example, "label": i} for i, example in enumerate(examples)]
    assert DifferenceMaskingCollator(bert_wordpiece, SCORES)(ints)["label"].dtype == torch.int64


def test_scores_given_as_the_path_of_a_saved_table(bert_wordpiece, tmp_path):
    table = ScoreTable.from_mapping(SCORES)
    table.save(tmp_path / "scores.npz")
    examples = [bert_wordpiece(text) for text in TEXTS]
    by_path = DifferenceMaskingCollator(bert_wordpiece, str(tmp_path / "scores.npz"), seed=3)
    assert by_path.scores == table
    assert torch.equal(by_path(examples)["labels"], DifferenceMaskingCollator(bert_wordpiece, table, seed=3)(examples)["labels"])
    assert DifferenceMasker(bert_wordpiece, tmp_path / "scores.npz").collator.scores == table
    for wrong in (None, [("enzyme", 1.0)], 0.5):
        with pytest.raises(TypeError, match="scores must be a ScoreTable, a {word: score} mapping or the path"):
            DifferenceMaskingCollator(bert_wordpiece, wrong)
    with pytest.raises(FileNotFoundError, match="no-scores.npz"):
        DifferenceMaskingCollator(bert_wordpiece, tmp_path / "no-scores.npz")


def test_scores_float32_cannot_hold_are_refused_when_the_table_is_made():
    with pytest.raises(ValueError, match="word scores must be finite \\(and within float32's range.*'enzyme'"):
        ScoreTable.from_mapping({"enzyme": 1e39, "binds": 0.5})
    with pytest.raises(ValueError, match="unknown_score must be finite \\(and within float32's range\\), got -1e\\+39"):
        ScoreTable.from_mapping(SCORES, unknown_score=-1e39)
    assert ScoreTable.from_mapping({"enzyme": 3e38}).score("enzyme") == pytest.approx(3e38, rel=1e-6)


def test_score_keys_that_are_not_words_are_refused():
    with pytest.raises(TypeError, match=r"scores must map words \(str\) to scores, got the key 1 \(int\)"):
        ScoreTable.from_mapping({1: 0.5})


@pytest.mark.parametrize("kind", COLLATORS + ["device", "attention"])
@pytest.mark.parametrize("dtype", [torch.bool, torch.float64])
def test_a_batch_of_ids_that_are_no_integers_is_refused(kind, dtype, bert_wordpiece):
    """A mask passed where the ids go would be masked as ids 0 and 1; floats would be truncated."""
    ids = bert_wordpiece(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    masker = masker_of(kind, bert_wordpiece, 0)
    mask = (masker.mask_batch if kind in COLLATORS else
            functools.partial(masker, model=torch.nn.Linear(1, 1)) if kind == "attention" else masker)
    with pytest.raises(TypeError, match=f"input_ids holds {dtype} values; token ids must be integers"):
        mask((ids % 2).to(dtype))
    assert mask(torch.zeros((2, 0), dtype=dtype))[0 if kind not in COLLATORS else "labels"].shape == (2, 0)


@pytest.mark.parametrize("kind", COLLATORS + ["device", "attention"])
def test_a_resume_step_or_pinned_seed_that_is_no_count_is_refused(kind, bert_wordpiece):
    """A step of 1.7 was taken as 1 and a pinned seed of 1.5 as 1, silently; a negative step
    would draw from another run's stream."""
    masker = masker_of(kind, bert_wordpiece, 0)
    for bad in (1.7, True, "3"):
        with pytest.raises(TypeError, match=f"step must be a whole number, got {re.escape(repr(bad))}"):
            masker.resume_at(bad)
    with pytest.raises(ValueError, match="step must be at least 0, got -1"):
        masker.resume_at(-1)
    with pytest.raises(TypeError, match="calls_per_step must be a whole number, got 2.5"):
        masker.resume_at(3, 2.5)
    with pytest.raises(ValueError, match="calls_made must be at least 0"):
        masker.resume_at(3, 1, calls_made=-4)
    masker.resume_at(np.int64(3), 2)
    if kind in ("device", "attention"):
        for bad, error in ((1.5, TypeError), (-1, ValueError), (None, TypeError)):
            with pytest.raises(error, match="seed"), masker.pinned_generator(bad):
                pass


@pytest.mark.parametrize("kind", COLLATORS)
def test_examples_of_booleans_or_of_ids_beyond_int64_are_refused(kind, bert_wordpiece):
    for not_a_tokenizer in (None, "bert-base-uncased"):
        with pytest.raises(TypeError, match="tokenizer must be a HuggingFace tokenizer .*, got (NoneType|str 'bert-base-uncased')$"):
            collator_of(kind, not_a_tokenizer, 0)
    """Collated from lists (as a DataLoader gives them), a list of booleans would be masked as ids
    0 and 1, and an id of 2**63 stopped numpy with a bare OverflowError."""
    collator = collator_of(kind, bert_wordpiece, 0)
    ids = bert_wordpiece(TEXTS)["input_ids"]
    for flags in ([True, False, True], np.array([True, False]), torch.tensor([True, False])):
        with pytest.raises(TypeError, match="field 'input_ids' of example 1 holds bool values"):
            collator([ids[0], flags])
    with pytest.raises(ValueError, match="field 'input_ids' holds integers beyond int64's range"):
        collator([ids[0], [2, 2**63, 3]])
    masks = [{"input_ids": row, "attention_mask": [True] * len(row)} for row in ids]
    assert collator(masks)["attention_mask"].sum() == sum(map(len, ids)), "a boolean attention mask is fine"


@pytest.mark.parametrize("kind", COLLATORS)
def test_never_word_must_have_the_shape_of_the_batch(kind, bert_wordpiece):
    ids = bert_wordpiece(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    collator = collator_of(kind, bert_wordpiece, 0)
    with pytest.raises(ValueError, match=r"never_word must have the shape of input_ids \(3, \d+\), got \(1, \d+\)"):
        collator.mask_batch(ids, torch.zeros((1, ids.shape[1]), dtype=torch.bool))
    everything = collator.mask_batch(ids, np.ones(ids.shape, dtype=bool))  # numpy is read as a tensor
    assert (everything["labels"] == -100).all(), "nothing may be masked where every token is excluded"


def test_the_term_matcher_checks_never_word(bert_wordpiece):
    ids = bert_wordpiece(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    matcher = TermMatcher(bert_wordpiece, ["enzyme"])
    with pytest.raises(ValueError, match="never_word must have the shape of input_ids"):
        matcher.spans(ids, torch.zeros((1, ids.shape[1]), dtype=torch.bool))
    assert matcher.spans(ids, np.zeros(ids.shape, dtype=bool)) == matcher.spans(ids)
    assert matcher.spans(ids, np.ones(ids.shape, dtype=bool)) == [[], [], []]


def test_a_whole_batch_given_as_examples_is_named(bert_wordpiece):
    columns = "not one mapping of columns \\(a whole batch, such as tokenizer\\(texts\\)\\)"
    with pytest.raises(TypeError, match=columns):
        DifferenceMaskingCollator(bert_wordpiece, SCORES)(bert_wordpiece(TEXTS))
    for name, mask_on in (("random-word", "workers"), ("attention", "auto")):  # by a collator, by a masker
        strategy = build_strategy(name, bert_wordpiece, seed=0, mask_on=mask_on)
        for batch in (bert_wordpiece(TEXTS), {"input_ids": [[2, 141, 3]]}):  # an Encoding of many texts failed on
            with pytest.raises(TypeError, match=columns):                   # row 0, a dict with KeyError 0
                strategy.mask_examples(batch, seed=0)


def test_replacement_shares_given_as_numpy_float32_mask_every_batch(bert_wordpiece):
    """0.9 and np.float32(0.1) sum to exactly 1 in float32, which the collators took, but their
    doubles sum to 1.0000000015, which the ops refused at every batch ("got 0.9 + 0.1")."""
    batch = [bert_wordpiece(text) for text in TEXTS]
    ids = bert_wordpiece(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    for mask_share, random_share in ((0.9, np.float32(0.1)), (np.float32(0.7), np.float32(0.3)),
                                     (0.5, np.float32(0.5))):
        shares = dict(mask_replace_prob=mask_share, random_replace_prob=random_share)
        for collator in (DifferenceMaskingCollator(bert_wordpiece, SCORES, **shares),
                         RandomWordCollator(bert_wordpiece, **shares)):
            assert collator.mask_replace_prob + collator.random_replace_prob <= 1.0
            assert collator(batch)["input_ids"].shape == ids.shape
        masker = DifferenceMasker(bert_wordpiece, SCORES, **shares)
        masker.warm(TEXTS)
        assert masker(ids)[0].shape == ids.shape
    with pytest.raises(ValueError, match="must sum to at most 1, got 0.9 and 0.10001000016927719"):
        DifferenceMaskingCollator(bert_wordpiece, SCORES, mask_replace_prob=0.9,
                                  random_replace_prob=np.float32(0.10001))


def test_domain_terms_refuse_anchors_that_are_not_words():
    with pytest.raises(TypeError, match=r"anchors must be words \(strings\), got \('kinase', 3.5\)"):
        domain_terms([("kinase", 3.5), ("enzyme", 2.0)])
    assert domain_terms(["Kinase", "enzyme"]) == ["enzyme", "kinase"]


def test_domain_terms_take_scores_as_the_collators_do_and_name_bad_settings(tmp_path):
    """A {word: score} mapping failed with AttributeError ('dict' has no 'words'), and a string
    min_score with "must be real number, not str"."""
    from diffmask_fast import ScoreTable

    scores = {"Receptor": 0.9, "ligand": 0.8, "the": 0.1}
    table = ScoreTable.from_mapping(scores)
    table.save(tmp_path / "scores.npz")
    expected = domain_terms(["kinase"], table, top_fraction=0.5)
    assert expected == ["kinase", "ligand", "receptor"]
    assert domain_terms(["kinase"], scores, top_fraction=0.5) == expected
    assert domain_terms(["kinase"], tmp_path / "scores.npz", top_fraction=0.5) == expected
    with pytest.raises(TypeError, match=r"scores must be a ScoreTable, a \{word: score\} mapping or the path"):
        domain_terms(["kinase"], [("receptor", 0.9)])
    with pytest.raises(TypeError, match="min_score must be a number, got '0.5'"):
        domain_terms(["kinase"], table, min_score="0.5")
    with pytest.raises(TypeError, match=r"top_fraction must be a number in \[0, 1\], got '0.1'"):
        domain_terms(["kinase"], table, top_fraction="0.1")


def test_a_unigram_tokenizer_without_word_marks_is_not_taken_for_sentencepiece():
    """Without Metaspace no token carries "▁": read as SentencePiece, a whole row would be one word."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = "the enzyme binds receptor strongly an inhibits kinase protein cell".split()
    lines = [" ".join(words[(i * 7 + j) % 10] for j in range(8)) for i in range(300)]
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(lines, trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[MASK]"], unk_token="[UNK]", show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        mask_token="[MASK]")
    with pytest.raises(UnknownWordBoundaries):
        detect_word_boundary_scheme(tokenizer)
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    with_marks = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                         mask_token="[MASK]")
    assert detect_word_boundary_scheme(with_marks) == "sentencepiece"


@pytest.mark.parametrize("strategy", ["random-word", "difference", "terms", "device"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_a_validation_set_keeps_its_examples_padding_and_token_types(strategy, padding_side, bert_wordpiece):
    tokenizer = bert_wordpiece
    saved_side, tokenizer.padding_side = tokenizer.padding_side, padding_side
    try:
        length = random.randrange(16, 24)
        texts = random.sample(TEXTS, 2)
        encoded = tokenizer(texts, ["the enzyme"] * len(texts), padding="max_length", truncation=True,
                            max_length=length)
    finally:
        tokenizer.padding_side = saved_side
    examples = [{name: encoded[name][i] for name in encoded} for i in range(len(texts))]
    for example in examples:  # this tokenizer gives none
        second = random.randrange(length)
        example["token_type_ids"] = [0] * second + [1] * (length - second)
    options = {"terms": ["enzyme"]} if strategy == "terms" else {"scores": ScoreTable.from_mapping(SCORES)}
    name, mask_on = ("difference", "device") if strategy == "device" else (strategy, "workers")
    built = build_strategy(name, tokenizer, mlm_probability=1.0, seed=0, mask_on=mask_on, **options)
    for example, masked in zip(examples, built.mask_examples(examples, seed=random.randrange(100))):
        attention = torch.tensor(example["attention_mask"])
        assert masked["attention_mask"] == example["attention_mask"], "the example's padding is kept"
        assert masked["token_type_ids"] == example["token_type_ids"]
        assert len(masked["input_ids"]) == length
        labels = torch.tensor(masked["labels"])
        assert (labels[attention == 0] == -100).all(), "padding is never masked"
        special = torch.tensor(tokenizer.get_special_tokens_mask(example["input_ids"], already_has_special_tokens=True))
        assert ((labels != -100) == ((attention == 1) & (special == 0))).all(), "p = 1 masks every real word"


@pytest.mark.parametrize("own_seed", [None, 11])
def test_a_pinned_collator_draws_the_same_after_pickling_and_in_workers(own_seed, bert_wordpiece):
    examples = [bert_wordpiece(text) for text in TEXTS * 2]
    collator = DifferenceMaskingCollator(bert_wordpiece, SCORES, mlm_probability=0.5, seed=own_seed)
    pinned = random.randrange(2**62)
    collator.pin_generator(pinned)
    here = collator(examples)["labels"]
    collator.pin_generator(pinned)  # starts the stream again
    assert torch.equal(collator(examples)["labels"], here)
    assert torch.equal(pickle.loads(pickle.dumps(collator))(examples)["labels"], here), "pinning survives pickling"
    loader = torch.utils.data.DataLoader([examples], batch_size=None, num_workers=1, collate_fn=collator)
    assert torch.equal(next(iter(loader))["labels"], here), "a worker draws from the pinned seed too"
    collator.pin_generator(None)
    if own_seed is not None:
        unpinned = DifferenceMaskingCollator(bert_wordpiece, SCORES, mlm_probability=0.5, seed=own_seed)(examples)
        assert torch.equal(collator(examples)["labels"], unpinned["labels"]), "unpinned: the collator's own seed"


@pytest.mark.parametrize("kind", COLLATORS)
def test_a_new_seed_given_inside_a_pinned_block_masks_after_it(kind, bert_wordpiece):
    """The block put back the streams of the old seed when it ended, while ``seed`` said the new."""
    examples = [bert_wordpiece(text) for text in TEXTS * 3]
    seed, new = random.randrange(2**62), random.randrange(2**62)
    collator = collator_of(kind, bert_wordpiece, seed, mlm_probability=0.5)
    collator(examples)
    with collator.pinned_generator(7):
        collator.seed = new
    assert torch.equal(collator(examples)["labels"],
                       collator_of(kind, bert_wordpiece, new, mlm_probability=0.5)(examples)["labels"])
    with collator.pinned_generator(7):  # the streams outside go on where they were
        collator(examples)
    second = collator_of(kind, bert_wordpiece, new, mlm_probability=0.5)
    second(examples)
    assert torch.equal(collator(examples)["labels"], second(examples)["labels"])


@pytest.mark.parametrize("kind", COLLATORS)
def test_a_copied_collator_draws_on_from_where_the_original_is(kind, bert_wordpiece):
    """A copy started its streams over: it replayed the original's first masks."""
    import copy

    examples = [bert_wordpiece(text) for text in TEXTS * 3]
    collator = collator_of(kind, bert_wordpiece, random.randrange(2**62), mlm_probability=0.5)
    first = collator(examples)["labels"]
    for copied in (copy.copy(collator), copy.deepcopy(collator)):
        assert copied._generators.keys() == collator._generators.keys()
        assert all(copied._generators[c] is not g for c, g in collator._generators.items())
        drawn = copied(examples)["labels"]
        assert not torch.equal(drawn, first), "not a replay of the first masks"
        assert torch.equal(drawn, copy.copy(collator)(examples)["labels"]), "the original's next masks"
    assert torch.equal(collator(examples)["labels"], drawn), "the copies' draws left the original's stream alone"
    fresh = pickle.loads(pickle.dumps(collator))  # sent to a process: streams of its own there
    assert fresh._generators == {}


def test_tensor_fields_of_any_dtype_stack_with_the_field_named(bert_wordpiece):
    examples = [{**bert_wordpiece(text), "weight": torch.tensor([0.5, 1.0 + i], dtype=torch.bfloat16)}
                for i, text in enumerate(TEXTS)]
    batch = DifferenceMaskingCollator(bert_wordpiece, SCORES)(examples)
    assert batch["weight"].dtype == torch.bfloat16 and batch["weight"][:, 1].tolist() == [1.0, 2.0, 3.0]
    as_numpy = DifferenceMaskingCollator(bert_wordpiece, SCORES, return_tensors="np")(examples)
    assert as_numpy["weight"].dtype == np.float32 and as_numpy["weight"][:, 1].tolist() == [1.0, 2.0, 3.0]
    examples[1]["weight"] = torch.zeros(3, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="field 'weight' has a different shape"):
        DifferenceMaskingCollator(bert_wordpiece, SCORES)(examples)


@pytest.mark.parametrize("bad", [None, "0.15", True])
def test_a_masking_rate_that_is_no_number_is_named(bad, bert_wordpiece):
    with pytest.raises(TypeError, match="mlm_probability must be a number in \\[0, 1\\]"):
        DifferenceMaskingCollator(bert_wordpiece, SCORES, mlm_probability=bad)


def test_tokens_added_after_the_collator_was_built_say_to_build_it_again():
    from tokenizers_offline import bert_wordpiece

    tokenizer = bert_wordpiece()
    collator = RandomWordCollator(tokenizer, seed=0)
    tokenizer.add_tokens(["enzymology"])
    with pytest.raises(ValueError, match="grown to 1501 tokens since this collator was built"):
        collator([tokenizer("enzymology binds")])


def test_tokens_added_after_a_masker_was_built_say_to_build_the_masker_again():
    from tokenizers_offline import bert_wordpiece

    from diffmask_fast import DifferenceMasker
    from diffmask_fast.attention import AttentionMasker

    tokenizer = bert_wordpiece()
    maskers = [DifferenceMasker(tokenizer, SCORES, seed=0), AttentionMasker(tokenizer, seed=0)]
    tokenizer.add_tokens(["enzymology"])
    ids = torch.tensor([tokenizer("enzymology binds")["input_ids"]])
    for masker, options in zip(maskers, ({}, {"model": torch.nn.Linear(1, 1)})):  # refused before the model runs
        with pytest.raises(ValueError, match="grown to 1501 tokens since this masker was built"):
            masker(ids, **options)


@pytest.mark.parametrize("kind", COLLATORS)
def test_batches_move_to_a_device_as_transformers_batches_do(kind, bert_wordpiece):
    batch = collator_of(kind, bert_wordpiece, random.randrange(100))([bert_wordpiece(text) for text in TEXTS])
    moved = batch.to("meta")  # as a training loop moves a BatchEncoding to its GPU
    assert set(moved) == set(batch) and all(value.device.type == "meta" for value in moved.values())
    assert dict(batch).keys() == batch.keys() and "labels" in batch


@pytest.mark.parametrize("mask_on", ["workers", "device"])
def test_a_validation_set_of_tensors_and_arrays_is_masked_as_lists_are(mask_on, bert_wordpiece):
    encoded = [bert_wordpiece(text) for text in TEXTS]
    as_lists = [{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]} for e in encoded]
    as_arrays = [{"input_ids": torch.tensor(e["input_ids"]), "attention_mask": np.array(e["attention_mask"])}
                 for e in encoded]
    built = build_strategy("difference", bert_wordpiece, scores=ScoreTable.from_mapping(SCORES), seed=0, mask_on=mask_on)
    seed = random.randrange(100)
    assert built.mask_examples(as_arrays, seed=seed) == built.mask_examples(as_lists, seed=seed)
