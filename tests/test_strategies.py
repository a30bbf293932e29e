"""The baseline and term-based masking strategies: each one's defining property.

Inputs are fresh each run (the ``seed`` fixture: replay with DIFFMASK_FAST_TEST_SEED) and real
ChemProt sentences. Frequencies must lie within 5 binomial standard errors of the exact
probability, so a correct implementation fails a comparison with probability below 1e-6.
"""

from __future__ import annotations

import copy
import itertools
import math
import pickle
import random
import re
import unicodedata

import numpy as np
import pytest
import torch

import tokenizers_offline
from law_checks import binomial_p_value, power_against_bias, trials_to_detect
from diffmask_fast import reference
from diffmask_fast.anchors import Anchor, Anchors
from diffmask_fast.baselines import RandomTokenCollator, RandomWordCollator
from diffmask_fast.collator import DifferenceMaskingCollator
from diffmask_fast.scoring import ScoreTable
from diffmask_fast.strategies import build_strategy
from diffmask_fast.terms import (
    MSLMCollator,
    TermMaskingCollator,
    TermMatcher,
    domain_terms,
)
from diffmask_fast.tokenization import word_boundaries

TOKENIZERS = ["bert_wordpiece", "roberta_byte_bpe", "sentencepiece_unigram"]

FALLBACK_LINES = [
    "Epidermal growth factor receptor inhibitors include the small molecules gefitinib and erlotinib.",
    "Agents include an irreversible tyrosine kinase inhibitor and dual kinase inhibitors of the receptor.",
    "Alprenolol is a competitive slowly reversible antagonist at the receptor of rat left atria.",
    "The kinase inhibitor reduced phosphorylation of the substrate by the enzyme in the active site.",
]


@pytest.fixture(scope="module")
def corpus(request) -> list[str]:
    try:
        data = request.getfixturevalue("shared_data_dir")
        lines = (data / "chemprot" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    except pytest.skip.Exception:
        lines = FALLBACK_LINES
    return [line for line in lines if line.strip()]


def sample_lines(corpus, seed, count):
    rng = random.Random(seed)
    return [rng.choice(corpus) for _ in range(count)]


def within(observed: float, probability: float, trials: int) -> bool:
    return abs(observed - probability) <= 5 * math.sqrt(probability * (1 - probability) / trials) + 1e-9


def encode(tokenizer, texts, max_length: int | None = 96):
    if max_length is None:
        return [tokenizer(t)["input_ids"] for t in texts]
    return [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]


def random_sequences(tokenizer, rng: np.random.Generator, count: int) -> list[list[int]]:
    """Sequences of random non-special tokens of random length, wrapped in the special tokens."""
    pool = word_boundaries(tokenizer).random_token_ids.numpy()
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return [
        [first] + rng.choice(pool, size=int(rng.integers(1, 40))).tolist() + [last]
        for _ in range(count)
    ]


def reference_words(tokenizer, ids):
    """Reference grouping of one sequence (no padding): token positions of each word, and the
    normalized words, decoded one at a time."""
    groups, words = decoded_words(tokenizer, ids)
    return groups, [reference.normalize_word(w) for w in words]


def decoded_words(tokenizer, ids):
    """Token positions and surface text of each word of one sequence, decoded one at a time."""
    boundaries = word_boundaries(tokenizer)
    never = [bool(boundaries.never_word[i]) for i in ids]
    groups = reference.group_words(reference.word_starts(tokenizer.convert_ids_to_tokens(ids), never, boundaries.scheme), never)
    words = [tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens([ids[i] for i in g])).strip() for g in groups]
    return groups, words


def is_punctuation(character):
    return unicodedata.category(character)[0] in "PS" and character != "\ufffd"


def punctuation_edge(word, step):
    """The punctuation opening (``step`` 1) or closing (-1) a word; none for a word of punctuation
    alone, which is a word of its own, not punctuation around one."""
    word = word.lower()
    if all(map(is_punctuation, word)):
        return ""
    chars = word if step > 0 else word[::-1]
    taken = "".join(itertools.takewhile(is_punctuation, chars))
    return taken if step > 0 else taken[::-1]


def punctuation_between(words):
    """The punctuation that ends each word and opens the next."""
    return tuple(punctuation_edge(a, -1) + punctuation_edge(b, 1) for a, b in zip(words, words[1:]))


def term_words(tokenizer, term):
    """A term as the reference compares it: its normalized words, the punctuation between them,
    and that before its first word and after its last (which an occurrence must hold too: "C++"
    is no "C", "RESULTS:" no "results")."""
    ids = tokenizer(term, add_special_tokens=False)["input_ids"]
    words = decoded_words(tokenizer, ids)[1]
    return (tuple(reference.normalize_word(w) for w in words), punctuation_between(words),
            punctuation_edge(words[0], 1), punctuation_edge(words[-1], -1))


def reference_spans(tokenizer, ids, terms) -> list[tuple[int, int]]:
    """Leftmost-longest, non-overlapping occurrences of ``terms`` (as ``term_words`` gives them)
    among runs of adjacent words: only whitespace tokens (no word, not special) between them, and
    punctuation between words only where the term has it. Before the unknown token, or after it
    without a word mark of its own, a SentencePiece or byte-level BPE word is a fragment and part
    of no occurrence, unless the unknown token is also the first, last, separating or mask token
    (GPT-2's spelling of all of them: then it marks the end of a text, not an unknown character)."""
    groups, surface = decoded_words(tokenizer, ids)
    keys = [reference.normalize_word(w) for w in surface]
    boundaries = word_boundaries(tokenizer)
    never, special = boundaries.never_word, set(tokenizer.all_special_ids)
    whitespace = [bool(never[i]) and i not in special for i in ids]
    unknown = tokenizer.unk_token_id if boundaries.scheme in ("sentencepiece", "byte_bpe") else None
    if unknown in {getattr(tokenizer, f"{role}_token_id") for role in ("bos", "eos", "sep", "cls", "mask")}:
        unknown = None
    fragment = [unknown is not None and ((g[0] > 0 and ids[g[0] - 1] == unknown and not boundaries.starts_word[ids[g[0]]])
                                         or (g[-1] + 1 < len(ids) and ids[g[-1] + 1] == unknown)) for g in groups]
    longest = max(len(term[0]) for term in terms)
    spans, i = [], 0
    while i < len(keys):
        for n in range(min(longest, len(keys) - i), 0, -1):
            adjacent = all(all(whitespace[p] for p in range(groups[j][-1] + 1, groups[j + 1][0]))
                           for j in range(i, i + n - 1))
            inside = (tuple(keys[i:i + n]), punctuation_between(surface[i:i + n]))
            found = any(inside == (words, between) and punctuation_edge(surface[i], 1).endswith(before)
                        and punctuation_edge(surface[i + n - 1], -1).startswith(after)
                        for words, between, before, after in terms)
            if adjacent and found and not any(fragment[i:i + n]):
                spans.append((i, i + n))
                i += n
                break
        else:
            i += 1
    return spans


def representable(tokenizer, term) -> bool:
    ids = tokenizer(term, add_special_tokens=False)["input_ids"]
    return bool(ids) and not set(ids) & set(tokenizer.all_special_ids)


def random_terms(tokenizer, lines, rng: random.Random, count: int) -> list[str]:
    """Word n-grams (1 to 3 whitespace words, with a letter) of the lines, and prefixes of some."""
    terms = []
    while len(terms) < count:
        words = rng.choice(lines).split()
        n = rng.randint(1, 3)
        start = rng.randrange(max(1, len(words) - n + 1))
        term = " ".join(words[start:start + n])
        if reference.has_letter(term) and representable(tokenizer, term):
            terms.append(term)
            if n > 1 and rng.random() < 0.5 and reference.has_letter(words[start]):
                terms.append(words[start])  # a shorter term sharing the first word: longest wins
    return terms


def frequent_words(lines, count):
    """The most frequent purely alphabetic words of at least 4 letters (lowercased)."""
    counts = {}
    for line in lines:
        for word in line.split():
            if re.fullmatch(r"[A-Za-z]{4,}", word):
                counts[word.lower()] = counts.get(word.lower(), 0) + 1
    return sorted(counts, key=lambda w: (-counts[w], w))[:count]


def word_mask_counts(labels_row, groups):
    """(masked words, partly masked words) of one row."""
    masked = partial = 0
    for group in groups:
        flags = [labels_row[i] != -100 for i in group]
        masked += all(flags)
        partial += any(flags) and not all(flags)
    return masked, partial


def check_labels_and_specials(tokenizer, examples, batch, message):
    """Labels hold the original ids exactly where something is masked; special tokens and padding
    are never masked; unmasked tokens are unchanged."""
    special = set(tokenizer.all_special_ids)
    width = batch["input_ids"].shape[1]
    for row, ids in enumerate(examples):
        labels = batch["labels"][row].tolist()
        masked_ids = batch["input_ids"][row].tolist()
        padded = ids + [tokenizer.pad_token_id] * (width - len(ids))
        for position, token in enumerate(padded):
            if position >= len(ids) or token in special:
                assert labels[position] == -100 and masked_ids[position] == token, f"{message} row={row}"
            elif labels[position] == -100:
                assert masked_ids[position] == token, f"{message} row={row}"
            else:
                assert labels[position] == token, f"{message} row={row}"


# ----------------------------------------------------------------------------------------------
# Random tokens
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_random_token_rates_specials_and_replacement(request, tokenizer_name, corpus, seed):
    tokenizer = request.getfixturevalue(tokenizer_name)
    rng = np.random.default_rng(seed)
    p = float(rng.uniform(0.1, 0.5))
    examples = encode(tokenizer, sample_lines(corpus, seed, 32)) + random_sequences(tokenizer, rng, 32)
    collator = RandomTokenCollator(tokenizer, mlm_probability=p, seed=seed)
    message = f"seed={seed} p={p:.3f}"
    boundaries = collator.boundaries
    groups = [reference_words(tokenizer, ids)[0] for ids in examples]
    calls = 12
    # Every token but the special ones is eligible, as in transformers: whitespace tokens of no
    # word (a lone "▁", "Ċ") too.
    special = set(tokenizer.all_special_ids)
    eligible = calls * sum(token not in special for ids in examples for token in ids)
    blank = [[bool(boundaries.never_word[token]) and token not in special for token in ids] for ids in examples]
    masked = as_mask = as_random = unchanged = partial = blank_masked = 0
    for _ in range(calls):
        batch = collator(examples)
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        check_labels_and_specials(tokenizer, examples, batch, message)
        chosen = batch["labels"] != -100
        masked += int(chosen.sum())
        new, old = batch["input_ids"][chosen], batch["labels"][chosen]
        as_mask += int((new == tokenizer.mask_token_id).sum())
        replaced = (new != tokenizer.mask_token_id) & (new != old)
        as_random += int(replaced.sum())
        unchanged += int((new == old).sum())
        assert not boundaries.never_word[new[replaced]].any(), f"{message}: a special token drawn as replacement"
        for row, row_groups in enumerate(groups):
            partial += word_mask_counts(batch["labels"][row].tolist(), row_groups)[1]
            blank_masked += int(chosen[row, : len(blank[row])][torch.tensor(blank[row], dtype=torch.bool)].sum())
    assert within(masked / eligible, p, eligible), f"{message}: masked {masked} of {eligible} eligible tokens"
    blanks = calls * sum(map(sum, blank))
    assert blank_masked == 0 if blanks == 0 else within(blank_masked / blanks, p, blanks), (
        f"{message}: masked {blank_masked} of {blanks} whitespace tokens")
    # A random replacement draws the original token back with probability 1/R.
    back = 0.1 / boundaries.random_token_ids.numel()
    for observed, probability in ((as_mask, 0.8), (as_random, 0.1 - back), (unchanged, 0.1 + back)):
        assert within(observed / masked, probability, masked), f"{message}: {observed}/{masked} vs {probability}"
    assert partial > 0, f"{message}: token masking should split some multi-token words"


# ----------------------------------------------------------------------------------------------
# Random words
# ----------------------------------------------------------------------------------------------


def test_random_token_takes_a_tokenizer_without_word_marks(seed):
    tokenizer = tokenizers_offline.end_of_word_bpe()
    with pytest.raises(ValueError, match="word_boundary="):
        RandomWordCollator(tokenizer)  # words need marks...
    collator = RandomTokenCollator(tokenizer, mlm_probability=0.5, seed=seed)  # ...tokens do not
    assert collator.boundaries.scheme == "token"
    assert RandomTokenCollator(tokenizer).mlm_probability == RandomWordCollator.mlm_probability == 0.25
    rng = np.random.default_rng(seed)
    examples = [rng.integers(3, 7, size=int(rng.integers(1, 20))).tolist() for _ in range(64)]
    batch = collator(examples)
    masked = batch["labels"] != -100
    real = batch["attention_mask"].bool()
    assert not (masked & ~real).any()
    assert within(float(masked.sum()) / float(real.sum()), 0.5, int(real.sum())), f"seed={seed}"


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_random_word_whole_words_and_budget(request, tokenizer_name, corpus, seed):
    tokenizer = request.getfixturevalue(tokenizer_name)
    rng = np.random.default_rng(seed)
    p = float(rng.uniform(0.1, 0.6))
    examples = encode(tokenizer, sample_lines(corpus, seed, 32)) + random_sequences(tokenizer, rng, 32)
    groups = [reference_words(tokenizer, ids)[0] for ids in examples]
    collator = RandomWordCollator(tokenizer, mlm_probability=p, seed=seed)
    message = f"seed={seed} p={p:.3f}"
    calls = 20
    total = 0
    for _ in range(calls):
        batch = collator(examples)
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        check_labels_and_specials(tokenizer, examples, batch, message)
        for row, row_groups in enumerate(groups):
            masked, partial = word_mask_counts(batch["labels"][row].tolist(), row_groups)
            assert partial == 0, f"{message} row={row}: a word is masked in part"
            expected = p * len(row_groups)
            assert math.floor(expected) <= masked <= math.ceil(expected), f"{message} row={row}: {masked} vs {expected}"
            total += masked
    # Stochastic rounding: the expected count is exactly p * n; the variance is frac * (1 - frac).
    mean = calls * sum(p * len(g) for g in groups)
    variance = calls * sum((p * len(g) % 1) * (1 - p * len(g) % 1) for g in groups)
    assert abs(total - mean) <= 5 * math.sqrt(variance) + 1e-6, f"{message}: {total} masked words vs {mean:.1f}"


def test_random_word_every_word_equally_likely(bert_wordpiece, seed):
    tokenizer = bert_wordpiece
    rng = np.random.default_rng(seed)
    ids = random_sequences(tokenizer, rng, 1)[0]
    while len(reference_words(tokenizer, ids)[0]) < 4:
        ids = random_sequences(tokenizer, rng, 1)[0]
    groups, _ = reference_words(tokenizer, ids)
    p = float(rng.uniform(0.1, 0.7))
    rows = 20_000
    batch = RandomWordCollator(tokenizer, mlm_probability=p, seed=seed)([ids] * rows)
    chosen = batch["labels"] != -100
    for w, group in enumerate(groups):
        frequency = chosen[:, group[0]].double().mean().item()
        assert within(frequency, p, rows), f"seed={seed} p={p:.3f} word={w} of {len(groups)}: {frequency:.4f}"


# ----------------------------------------------------------------------------------------------
# Term matching
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_matcher_agrees_with_reference(request, tokenizer_name, corpus, seed):
    tokenizer = request.getfixturevalue(tokenizer_name)
    lines = sample_lines(corpus, seed, 24)
    terms = random_terms(tokenizer, lines, random.Random(seed), 12)
    matcher = TermMatcher(tokenizer, terms)
    examples = encode(tokenizer, lines, max_length=None)
    collator = RandomWordCollator(tokenizer)
    batch = collator._pad(examples)["input_ids"]
    spans = matcher.spans(batch)
    words = matcher.words_of(batch)
    term_set = {term_words(tokenizer, t) for t in terms}
    message = f"seed={seed} terms={terms}"
    found = 0
    for row, ids in enumerate(examples):
        assert words[row] == reference_words(tokenizer, ids)[1], f"{message} row={row}"
        expected = reference_spans(tokenizer, ids, term_set)
        assert spans[row] == expected, f"{message} row={row}: {spans[row]} vs {expected}"
        found += len(expected)
    assert found > 0, f"{message}: terms drawn from the lines must occur in them"


def test_multiword_terms_match_across_tokenizers(request, corpus, seed):
    """A phrase of alphabetic words is found by every tokenizer wherever it occurs, in any case."""
    lines = sample_lines(corpus, seed, 40)
    rng = random.Random(seed)
    phrases = []
    while len(phrases) < 3:
        words = rng.choice(lines).split()
        k = rng.choice([2, 3])
        starts = [i for i in range(len(words) - k + 1) if all(re.fullmatch(r"[A-Za-z]+", w) for w in words[i:i + k])]
        if starts:
            i = rng.choice(starts)
            phrases.append(words[i:i + k])
    checked = 0
    for tokenizer_name in TOKENIZERS:
        tokenizer = request.getfixturevalue(tokenizer_name)
        collator = RandomWordCollator(tokenizer)
        for phrase in phrases:
            term = " ".join(w.upper() if k % 2 else w.title() for k, w in enumerate(phrase))  # case must not matter
            cased = " ".join([" ".join(phrase).upper(), " ".join(phrase).title(), " ".join(phrase).lower()])
            if tokenizer.unk_token_id in tokenizer(cased, add_special_tokens=False)["input_ids"]:
                continue  # a letter the tiny vocabulary lacks in some case: no tokenizer could match it
            checked += 1
            matcher = TermMatcher(tokenizer, [term])
            message = f"seed={seed} {tokenizer_name} term={term!r}"
            for text in (lines, [line.lower() for line in lines], [line.upper() for line in lines]):
                examples = encode(tokenizer, text, max_length=None)
                batch = collator._pad(examples)["input_ids"]
                spans = matcher.spans(batch)
                words = matcher.words_of(batch)
                target = [w.lower() for w in phrase]
                for row, line in enumerate(text):
                    tokens = [w.lower() for w in line.split()]
                    occurs = any(tokens[i:i + len(target)] == target for i in range(len(tokens)))
                    assert not occurs or spans[row], f"{message}: missed in {line!r}"
                    for start, end in spans[row]:
                        assert words[row][start:end] == target, f"{message}: {words[row][start:end]} in {line!r}"
    assert checked >= 2 * len(phrases), "the tokenizers with full alphabets check every phrase"


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_terms_match_across_any_whitespace(request, tokenizer_name):
    """Double spaces, tabs and newlines separate words as a space does (byte-level BPE writes them
    as whitespace-only tokens, and the word after one carries no "Ġ")."""
    tokenizer = request.getfixturevalue(tokenizer_name)
    matcher = TermMatcher(tokenizer, ["kinase inhibitors", "binds"])
    texts = ["the kinase inhibitors binds", "the kinase  inhibitors  binds", "the kinase\ninhibitors\tbinds",
             "the kinase \n inhibitors\r\nbinds"]
    batch = RandomWordCollator(tokenizer)._pad(encode(tokenizer, texts, max_length=None))["input_ids"]
    for row, words in enumerate(matcher.words_of(batch)):
        assert words == ["the", "kinase", "inhibitors", "binds"], (tokenizer_name, texts[row], words)
    assert matcher.spans(batch) == [[(1, 3), (3, 4)]] * len(texts), tokenizer_name
    # The collators flag every token of no word, whitespace tokens included: terms still span them.
    never_word = word_boundaries(tokenizer).never_word[batch] | (batch == tokenizer.pad_token_id)
    assert matcher.spans(batch, never_word) == [[(1, 3), (3, 4)]] * len(texts), tokenizer_name
    # Whitespace inside terms, as a terms file read with readlines() or typed by hand gives it.
    spaced = TermMatcher(tokenizer, ["kinase  inhibitors\n", "\tbinds\n"])
    assert spaced.sequences == matcher.sequences, tokenizer_name
    assert spaced.spans(batch) == [[(1, 3), (3, 4)]] * len(texts), tokenizer_name
    # A byte-order mark (a terms file saved by Windows tools, read as plain UTF-8) is no text.
    marked = TermMatcher(tokenizer, ["\ufeffkinase inhibitors", "binds"])
    assert marked.sequences == matcher.sequences, tokenizer_name


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_terms_match_however_their_accents_are_written(request, tokenizer_name):
    """A term written with composed accents finds text written with decomposed ones ("e" +
    U+0301) and the other way round; the punctuation beside such a word is still read."""
    tokenizer = request.getfixturevalue(tokenizer_name)
    texts = ["the Cafe\u0301 au lait", "the caf\u00e9 au lait", "the cafe\u0301. au lait", "the (cafe\u0301 au lait"]
    batch = RandomWordCollator(tokenizer)._pad(encode(tokenizer, texts, max_length=None))["input_ids"]
    for term in ("caf\u00e9 au lait", "cafe\u0301 au lait"):
        found = TermMatcher(tokenizer, [term]).spans(batch)
        assert [bool(row) for row in found] == [True, True, False, True], (tokenizer_name, ascii(term), found)


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_terms_match_across_no_punctuation_they_lack(request, tokenizer_name):
    """RoBERTa and SentencePiece keep punctuation inside words ("protein."), BERT makes it a word:
    under every tokenizer "protein. Kinase" is no occurrence of "protein kinase" (it was under the
    first two), and a term with the punctuation finds it."""
    tokenizer = request.getfixturevalue(tokenizer_name)
    texts = ["the protein kinase binds", "we purified the protein. Kinase binds", "the protein, kinase binds",
             "the protein (kinase binds"]
    batch = RandomWordCollator(tokenizer)._pad(encode(tokenizer, texts, max_length=None))["input_ids"]
    plain = TermMatcher(tokenizer, ["protein kinase"]).spans(batch)
    assert [bool(row) for row in plain] == [True, False, False, False], (tokenizer_name, plain)
    dotted = TermMatcher(tokenizer, ["protein. kinase"]).spans(batch)
    assert [bool(row) for row in dotted] == [False, True, False, False], (tokenizer_name, dotted)
    after = TermMatcher(tokenizer, ["kinase binds"])  # punctuation before a term is none inside it
    words = after.words_of(batch)
    assert [[words[row][a:b] for a, b in spans] for row, spans in enumerate(after.spans(batch))] \
        == [[["kinase", "binds"]]] * 4, tokenizer_name


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_a_term_with_punctuation_at_its_ends_finds_that_punctuation(request, tokenizer_name):
    """Normalizing strips the ends of words: where a tokenizer keeps "C++" one word (RoBERTa,
    SentencePiece), the term "C++" was "c" and matched every "vitamin C", and "C++" and "C" were
    one term. Punctuation outside the term's own still does not matter ("(C++)", "C++,")."""
    tokenizer = request.getfixturevalue(tokenizer_name)
    texts = ["vitamin C and kinase C", "written in C++, today", "code (C++) here", "C+ is no C++", "a C, and (C)"]
    batch = RandomWordCollator(tokenizer)._pad(encode(tokenizer, texts, max_length=None))["input_ids"]
    words = TermMatcher(tokenizer, ["C"]).words_of(batch)
    found = [[" ".join(words[row][a:b]) for a, b in spans]
             for row, spans in enumerate(TermMatcher(tokenizer, ["C++"]).spans(batch))]
    plus = "c + +" if tokenizer_name == "bert_wordpiece" else "c"  # BERT makes each "+" a word
    assert found == [[], [plus], [plus], [plus], []], (tokenizer_name, found)
    single = TermMatcher(tokenizer, ["C"])  # a term without punctuation takes a word with any, as "protein."
    assert [len(spans) for spans in single.spans(batch)] == [2, 1, 1, 2, 2], tokenizer_name
    assert len(TermMatcher(tokenizer, ["C++", "C"])) == 2, tokenizer_name
    both = TermMatcher(tokenizer, ["C++", "C"]).spans(batch)
    assert [len(spans) for spans in both] == [2, 1, 1, 2, 2], (tokenizer_name, both)


def test_pieces_beside_the_unknown_token_match_no_term(sentencepiece_unigram, bert_wordpiece):
    """SentencePiece spells an unknown character as <unk> inside the word: "p" of "p<unk>3" is a
    piece of a word, not the term "p"; a word marked as one ("▁protein") after it is a whole
    word. BERT's [UNK] stands for a whole word."""
    texts = ["the p \u26033 protein", "the p\u26033 protein", "\u2603p binds p", "the p\u2603 protein"]
    ids = [sentencepiece_unigram(t)["input_ids"] for t in texts]
    assert sentencepiece_unigram.unk_token_id in ids[1], "the premise: the character is unknown"
    batch = RandomWordCollator(sentencepiece_unigram)._pad([{"input_ids": i} for i in ids])["input_ids"]
    matcher = TermMatcher(sentencepiece_unigram, ["p", "protein", "the", "binds"])
    words = matcher.words_of(batch)
    found = [[words[row][a] for a, _ in spans] for row, spans in enumerate(matcher.spans(batch))]
    # "▁protein" after the unknown token starts a word of its own; "p" before it is a fragment.
    assert found == [["the", "p", "protein"], ["the", "protein"], ["binds", "p"], ["the", "protein"]], (words, found)
    bert = torch.tensor([bert_wordpiece("the \u2603 protein")["input_ids"]])
    assert bert_wordpiece.unk_token_id in bert[0].tolist()
    assert len(TermMatcher(bert_wordpiece, ["the", "protein"]).spans(bert)[0]) == 2


def test_an_unknown_token_that_also_ends_texts_or_pads_rows_splits_no_word(sentencepiece_unigram):
    """GPT-2's tokenizers spell the unknown, first and last token alike, and are padded with it:
    the word before each end of a text (and after it, in packed texts) was taken for a piece of
    an unknown word, so a term ending a text was never found, nor one in a row padded longer. A
    tokenizer padding with its unknown token (as LLaMA's are often set to) pads no word either,
    and still spells unknown characters inside words with it."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizers_offline._roberta_backend_json(1500))
    gpt2 = tokenizers_offline._wrap(backend, bos_token="</s>", eos_token="</s>", unk_token="</s>",
                                    mask_token="<mask>")
    gpt2.pad_token = gpt2.eos_token
    end = [gpt2.eos_token_id]
    first, second = (gpt2(text, add_special_tokens=False)["input_ids"] for text in ("the receptor", "Enzyme binds"))
    matcher = TermMatcher(gpt2, ["receptor", "enzyme"])
    packed = torch.tensor([first + end + second + end])
    assert matcher.words_of(packed) == [["the", "receptor", "enzyme", "binds"]]
    assert matcher.spans(packed) == [[(1, 2), (2, 3)]]
    assert reference_spans(gpt2, packed[0].tolist(), {term_words(gpt2, t) for t in ("receptor", "enzyme")}) == [
        (1, 2), (2, 3)]
    collator = MSLMCollator(gpt2, ["receptor"], term_probability=1.0, mlm_probability=0.0, seed=0)
    alone, padded = collator([first + end]), collator([first + end, first + second + first + end])
    receptor = len(gpt2(" receptor", add_special_tokens=False)["input_ids"])
    assert int((alone["labels"][0] != -100).sum()) == int((padded["labels"][0] != -100).sum()) == receptor

    llama = copy.deepcopy(sentencepiece_unigram)
    llama.pad_token = llama.unk_token
    unknown_inside = llama("the p\u26033 protein")["input_ids"]  # "p" before <unk> is a piece of a word
    short = llama("the protein")["input_ids"][:-1]  # no closing token: the row ends with its word
    assert llama.unk_token_id in unknown_inside
    matcher = TermMatcher(llama, ["p", "protein", "the"])
    batch = RandomWordCollator(llama)._pad([{"input_ids": unknown_inside}, {"input_ids": short}])
    never = ~batch["attention_mask"].bool()
    assert batch["input_ids"][1, -1] == llama.unk_token_id, "the premise: the short row is padded by <unk>"
    words = matcher.words_of(batch["input_ids"], never)
    found = [[words[row][a] for a, _ in spans] for row, spans in enumerate(matcher.spans(batch["input_ids"], never))]
    assert found == [["the", "protein"], ["the", "protein"]], (words, found)


def test_matcher_details(bert_wordpiece, roberta_byte_bpe, monkeypatch):
    tokenizer = bert_wordpiece
    # No match across a special token (the separator of a pair).
    matcher = TermMatcher(tokenizer, ["active site"])
    pair = tokenizer("the enzyme is active", "site of binding")["input_ids"]
    single = tokenizer("the enzyme is active site of binding")["input_ids"]
    assert matcher.spans(torch.tensor([pair])) == [[]]
    assert matcher.spans(torch.tensor([single])) == [[(3, 5)]]
    # Longest first, left to right, no overlaps.
    matcher = TermMatcher(tokenizer, ["kinase", "kinase inhibitor", "inhibitor of", "of the"])
    ids = tokenizer("kinase inhibitor of the kinase")["input_ids"]
    assert matcher.spans(torch.tensor([ids])) == [[(0, 2), (2, 4), (4, 5)]]
    # Each distinct word is decoded once.
    from diffmask_fast import terms as terms_module

    decoded = []
    original = terms_module.decode_words

    def counting(tok, words):
        decoded.extend(tuple(w) for w in words)
        return original(tok, words)

    monkeypatch.setattr(terms_module, "decode_words", counting)
    matcher = TermMatcher(roberta_byte_bpe, ["Enzyme"])
    decoded.clear()
    batch = torch.tensor([roberta_byte_bpe("the enzyme and the ENZYME, the enzyme")["input_ids"]] * 3)
    assert [len(s) for s in matcher.spans(batch)] == [3, 3, 3]
    assert len(decoded) == len(set(decoded)) == matcher.known_words - 1
    decoded.clear()
    matcher.spans(batch)
    assert decoded == [], "known words are not decoded again"
    # Terms the tokenizer cannot represent are dropped with a warning.
    with pytest.warns(UserWarning, match="cannot represent"):
        assert len(TermMatcher(tokenizer, ["enzyme", "\u2603x"])) == 1


# ----------------------------------------------------------------------------------------------
# Term masking
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_term_masking_takes_whole_terms_first(request, tokenizer_name, corpus, seed):
    tokenizer = request.getfixturevalue(tokenizer_name)
    lines = sample_lines(corpus, seed, 48)
    rng = random.Random(seed)
    terms = frequent_words(lines, 6) + random_terms(tokenizer, lines, rng, 4)
    p = rng.uniform(0.1, 0.5)
    collator = TermMaskingCollator(tokenizer, terms, mlm_probability=p, seed=seed)
    examples = encode(tokenizer, lines)
    batch_ids = collator._pad([{"input_ids": e} for e in examples])["input_ids"]
    spans = collator.matcher.spans(batch_ids)
    longest = max(collator.matcher.max_term_words, 1)
    message = f"seed={seed} p={p:.3f} terms={terms}"
    all_groups = [reference_words(tokenizer, ids)[0] for ids in examples]
    saw_terms_only = saw_fill = False
    for _ in range(6):
        batch = collator(examples)
        check_labels_and_specials(tokenizer, examples, batch, message)
        for row, groups in enumerate(all_groups):
            labels = batch["labels"][row].tolist()
            flags = []
            for group in groups:
                word = {labels[i] != -100 for i in group}
                assert len(word) == 1, f"{message} row={row}: a word is masked in part"
                flags.append(word.pop())
            in_term = [False] * len(groups)
            for start, end in spans[row]:
                assert len(set(flags[start:end])) == 1, f"{message} row={row}: term {start}:{end} masked in part"
                in_term[start:end] = [True] * (end - start)
            masked = sum(flags)
            n_terms = sum(in_term)
            other = sum(f and not t for f, t in zip(flags, in_term))
            terms_masked = masked - other
            low, high = math.floor(p * len(groups)), math.ceil(p * len(groups))
            if masked < n_terms:
                assert other == 0, f"{message} row={row}: other words masked before every term word"
                assert low <= masked <= high + longest - 1, f"{message} row={row}: {masked} words vs {p * len(groups):.2f}"
                saw_terms_only |= masked > 0
            else:
                assert terms_masked == n_terms, f"{message} row={row}"
                assert low <= masked <= max(high, n_terms), f"{message} row={row}: {masked} words vs {p * len(groups):.2f}"
                if n_terms and other:
                    saw_fill = True
                    assert low <= masked <= high, f"{message} row={row}: filled past the budget"
    assert saw_terms_only or saw_fill, f"{message}: no row masked a term"


@pytest.mark.parametrize("case", ["terms exceed the budget", "terms below the budget"])
def test_term_masking_random_order_and_uniform_fill(bert_wordpiece, seed, case):
    """Single-word terms: with budget B and T term words, each term word is masked with
    probability min(B, T) / T and each other word with probability max(B - T, 0) / (n - T)."""
    tokenizer = bert_wordpiece
    rng = np.random.default_rng(seed)
    vocabulary = [t for t in tokenizer.get_vocab() if re.fullmatch(r"[a-z]{3,}", t)]
    n = int(rng.integers(8, 14))
    words = list(rng.choice(sorted(vocabulary), size=n, replace=False))
    n_terms = int(rng.integers(4, n - 2)) if case == "terms exceed the budget" else int(rng.integers(1, 3))
    p = float(rng.uniform(0.1, 0.9 * n_terms / n)) if case == "terms exceed the budget" else float(rng.uniform(0.5, 0.9))
    terms = list(rng.choice(words, size=n_terms, replace=False))
    ids = tokenizer(" ".join(words))["input_ids"]
    assert len(ids) == n + 2, "vocabulary words are single tokens"
    rows = 20_000
    batch = TermMaskingCollator(tokenizer, [t.upper() for t in terms], mlm_probability=p, seed=seed)([ids] * rows)
    chosen = (batch["labels"][:, 1:-1] != -100).double().mean(0).tolist()
    low = math.floor(p * n)
    exact_term = exact_other = 0.0
    for budget, chance in ((low, 1 - (p * n - low)), (low + 1, p * n - low)):
        exact_term += chance * min(budget, n_terms) / n_terms
        exact_other += chance * max(budget - n_terms, 0) / (n - n_terms)
    message = f"seed={seed} words={words} terms={terms} p={p:.3f}"
    for word, frequency in zip(words, chosen):
        exact = exact_term if word in terms else exact_other
        assert within(frequency, exact, rows), f"{message} word={word!r}: {frequency:.4f} vs {exact:.4f}"


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_term_masking_overshoots_only_by_whole_spans(request, tokenizer_name, seed):
    """Multi-word terms beyond the budget: spans stay whole, so the last one taken may overshoot
    the budget by at most its length - 1 words, and no other word is masked."""
    tokenizer = request.getfixturevalue(tokenizer_name)
    rng = random.Random(seed)
    units = ["active site"] * rng.randint(2, 4) + ["tyrosine kinase inhibitor"] * rng.randint(2, 4)
    units += rng.sample(["the", "cells", "were", "treated", "with", "and", "binding", "of", "to", "protein"], 6)
    rng.shuffle(units)
    text = " ".join(units)
    ids = tokenizer(text)["input_ids"]
    groups, _ = reference_words(tokenizer, ids)
    spans = reference_spans(tokenizer, ids, {term_words(tokenizer, t) for t in ("Active Site", "tyrosine KINASE inhibitor")})
    n, n_terms = len(groups), sum(end - start for start, end in spans)
    p = rng.uniform(0.2, 0.9 * n_terms / n)
    rows = 2000
    batch = TermMaskingCollator(tokenizer, ["Active Site", "tyrosine KINASE inhibitor"], mlm_probability=p, seed=seed)([ids] * rows)
    chosen = batch["labels"] != -100
    words = torch.stack([chosen[:, g[0]] for g in groups], dim=1)
    for w, group in enumerate(groups):
        assert torch.equal(chosen[:, group], words[:, w:w + 1].expand(rows, len(group))), f"seed={seed} word {w} split"
    in_term = torch.zeros(n, dtype=torch.bool)
    for start, end in spans:
        assert (words[:, start:end].all(1) | ~words[:, start:end].any(1)).all(), f"seed={seed} text={text!r}: span split"
        in_term[start:end] = True
    message = f"seed={seed} text={text!r} p={p:.3f}"
    assert not words[:, ~in_term].any(), f"{message}: other words masked though terms exceed the budget"
    masked = words.sum(1)
    low, high = math.floor(p * n), math.ceil(p * n)
    assert int(masked.min()) >= low and int(masked.max()) <= high + 2, message
    assert int(masked.max()) > high, f"{message}: the last span never overshot the budget"


# ----------------------------------------------------------------------------------------------
# MSLM
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_mslm_rates_and_loss_weights(request, tokenizer_name, corpus, seed):
    """Term occurrences are masked whole at term_probability, other words at mlm_probability,
    with loss weights term_weight / 1 / 0. Both rates are checked by exact binomial p-values
    at alpha = 1e-6 / 2 (a correct implementation fails below 1e-6) over as many calls as make a
    10% relative bias of either rate, up or down, fail with probability at least 0.999 (exact
    binomial power at the trials made, law_checks.power_against_bias)."""
    tokenizer = request.getfixturevalue(tokenizer_name)
    lines = sample_lines(corpus, seed, 16)
    rng = random.Random(seed)
    terms = frequent_words(lines, 5) + random_terms(tokenizer, lines, rng, 3)
    term_probability, other_probability = rng.uniform(0.3, 0.9), rng.uniform(0.05, 0.3)
    weight = rng.choice([0.5, 2.0, 3.7])
    collator = MSLMCollator(tokenizer, terms, term_probability=term_probability, mlm_probability=other_probability,
                            term_weight=weight, seed=seed)
    copies = 40
    examples = encode(tokenizer, lines) * copies
    message = f"seed={seed} terms={terms} rates={term_probability:.3f}/{other_probability:.3f} weight={weight}"
    # Per line: each token's unit (term occurrence or other word) as the position of the unit's
    # first token (-1: in no unit), the first tokens of term occurrences and of other words, and
    # the tokens of term occurrences; from the reference words and the matcher's spans.
    width = max(len(ids) for ids in examples)
    first_of = torch.full((len(lines), width), -1, dtype=torch.long)
    term_first = torch.zeros((len(lines), width), dtype=torch.bool)
    other_first = torch.zeros((len(lines), width), dtype=torch.bool)
    term_token = torch.zeros((len(lines), width), dtype=torch.bool)
    spans = collator.matcher.spans(collator._pad(examples[: len(lines)])["input_ids"])
    for row, ids in enumerate(examples[: len(lines)]):
        groups = reference_words(tokenizer, ids)[0]
        in_term = [False] * len(groups)
        for start, end in spans[row]:
            positions = [i for g in groups[start:end] for i in g]
            first_of[row, positions] = positions[0]
            term_first[row, positions[0]] = True
            term_token[row, positions] = True
            in_term[start:end] = [True] * (end - start)
        for group, term in zip(groups, in_term):
            if not term:
                first_of[row, group] = group[0]
                other_first[row, group[0]] = True
    occurrences_per_call, others_per_call = copies * int(term_first.sum()), copies * int(other_first.sum())
    assert occurrences_per_call > 0 and others_per_call > 0, message
    first_of, term_first, other_first, term_token = (t.repeat(copies, 1) for t in (first_of, term_first, other_first, term_token))
    in_unit = first_of >= 0
    alpha = 1e-6 / 2
    calls = max(math.ceil(trials_to_detect(term_probability, alpha) / occurrences_per_call),
                math.ceil(trials_to_detect(other_probability, alpha) / others_per_call))
    while min(power_against_bias(calls * occurrences_per_call, term_probability, alpha),
              power_against_bias(calls * others_per_call, other_probability, alpha)) < 0.999:
        calls += 1  # the exact power of a binomial test saws with the trials: make it hold where we stop
    original = collator._pad(examples)["input_ids"]
    masked_occurrences = masked_others = 0
    for call in range(calls):
        batch = collator(examples)
        if call == 0:
            assert set(batch) == {"input_ids", "attention_mask", "labels", "loss_weights"}
            assert batch["loss_weights"].dtype == torch.float32 and batch["loss_weights"].shape == batch["labels"].shape
            check_labels_and_specials(tokenizer, examples, batch, message)
        labels, weights = batch["labels"], batch["loss_weights"]
        masked = labels != -100
        assert torch.equal(labels[masked], original[masked]), message
        assert torch.equal(batch["input_ids"][~masked], original[~masked]), message
        assert not (masked & ~in_unit).any(), f"{message}: a token of no word masked"
        split = (masked != masked.gather(1, first_of.clamp(min=0))) & in_unit
        assert not split.any(), f"{message} row={int(split.any(1).nonzero()[0])}: word or term occurrence masked in part"
        expected = torch.where(masked, torch.where(term_token, weight, 1.0), 0.0).to(torch.float32)
        assert torch.equal(weights, expected), f"{message}: loss weights"
        masked_occurrences += int((masked & term_first).sum())
        masked_others += int((masked & other_first).sum())
    occurrences, others = calls * occurrences_per_call, calls * others_per_call
    assert binomial_p_value(masked_occurrences, occurrences, term_probability) >= alpha, (
        f"{message}: {masked_occurrences}/{occurrences} = {masked_occurrences / occurrences:.5f} term occurrences masked")
    assert binomial_p_value(masked_others, others, other_probability) >= alpha, (
        f"{message}: {masked_others}/{others} = {masked_others / others:.5f} other words masked")


def test_mslm_numpy_output(bert_wordpiece):
    batch = MSLMCollator(bert_wordpiece, ["enzyme"], term_probability=1.0, mlm_probability=0.0, term_weight=2.5,
                         return_tensors="np")([bert_wordpiece("the enzyme binds")["input_ids"]])
    assert isinstance(batch["loss_weights"], np.ndarray)
    encoded = bert_wordpiece("the enzyme binds", return_offsets_mapping=True)
    in_term = [4 <= start and end <= 10 and end > start for start, end in encoded["offset_mapping"]]
    assert any(in_term)
    assert batch["loss_weights"].tolist() == [[2.5 if term else 0.0 for term in in_term]]
    assert batch["labels"].tolist() == [[i if term else -100 for i, term in zip(encoded["input_ids"], in_term)]]


# ----------------------------------------------------------------------------------------------
# Terms without labels
# ----------------------------------------------------------------------------------------------


def test_domain_terms(seed):
    rng = random.Random(seed)
    letters = [f"{rng.choice('abcdefgh')}{rng.choice('aeiou')}{rng.choice('klmnprst')}{i}" for i in range(200)]
    other = ["123", "--", "4.5", "%", "\u00e2\x80", "pi3k\ue232akt"]
    scores = {w: round(rng.uniform(-1, 1), 3) for w in letters + other}
    for w in other:
        scores[w] = 5.0  # the best scores, but no letter or broken text: never terms
    table = ScoreTable.from_mapping(scores)
    anchor_words = rng.sample(letters, 5) + ["Receptor"]
    anchors = Anchors(tuple(Anchor(w, 1.0, 10, 1.0) for w in anchor_words), 1000, 1e6, 2, 10.0)
    fraction = rng.choice([0.02, 0.05, 0.1, 0.33])
    ranked = sorted(letters, key=lambda w: (-float(np.float32(scores[w])), w))
    expected = sorted(set(ranked[:math.ceil(fraction * len(letters))]) | {w.lower() for w in anchor_words})
    message = f"seed={seed} fraction={fraction}"
    assert domain_terms(anchors, table, top_fraction=fraction) == expected, message
    assert domain_terms(anchor_words, table, top_fraction=fraction) == expected, message
    threshold = round(rng.uniform(0, 0.8), 3)
    best = {w for w in letters if float(np.float32(scores[w])) >= float(np.float32(threshold))}
    assert domain_terms(anchors, table, min_score=threshold) == sorted(best | {w.lower() for w in anchor_words}), message
    for word in rng.sample(letters, 5):  # a threshold equal to a listed score keeps that word
        assert word in domain_terms([], table, min_score=scores[word]), f"{message} {word}={scores[word]}"
    assert domain_terms(anchors, None) == sorted({w.lower() for w in anchor_words})
    with pytest.raises(ValueError, match="no domain terms"):
        domain_terms([], None)
    with pytest.raises(ValueError, match="no domain terms"):
        domain_terms(["42"], ScoreTable.from_mapping({w: 1.0 for w in other}))
    with pytest.raises(ValueError, match="top_fraction"):
        domain_terms(anchors, table, top_fraction=1.5)
    # A phrase of citation words is citation syntax too; a phrase with a word of its own is a term.
    assert domain_terms(["et al.", "Et  Al", "active site", "al kinase", "et"], None) == ["active site", "al kinase"]


# ----------------------------------------------------------------------------------------------
# Every collator: seeding, pickling, errors
# ----------------------------------------------------------------------------------------------

TERMS = ["receptor", "kinase inhibitor", "antagonist", "the"]
FACTORIES = {
    "random_token": lambda tok, **kw: RandomTokenCollator(tok, **kw),
    "random_word": lambda tok, **kw: RandomWordCollator(tok, **kw),
    "terms": lambda tok, **kw: TermMaskingCollator(tok, TERMS, **kw),
    "mslm": lambda tok, **kw: MSLMCollator(tok, TERMS, **kw),
}


@pytest.mark.parametrize("strategy", sorted(FACTORIES))
def test_seeds_reproduce_and_calls_draw_anew(request, strategy, corpus, seed):
    make = FACTORIES[strategy]
    tokenizer = request.getfixturevalue(TOKENIZERS[seed % 3])
    examples = encode(tokenizer, sample_lines(corpus, seed, 32))
    first = make(tokenizer, seed=seed)(examples)
    second = make(tokenizer, seed=seed)(examples)
    for key in first:
        assert torch.equal(first[key], second[key]), f"seed={seed} {strategy}: {key} differs for one seed"
    assert not torch.equal(first["labels"], make(tokenizer, seed=seed + 1)(examples)["labels"]), f"seed={seed}"
    collator = make(tokenizer, seed=seed)
    assert not torch.equal(collator(examples)["labels"], collator(examples)["labels"]), f"seed={seed}: each call draws anew"
    unseeded = make(tokenizer)
    assert not torch.equal(unseeded(examples)["labels"], unseeded(examples)["labels"]), f"seed={seed}"


ALL_WORDS = {
    **FACTORIES,
    "mslm": lambda tok, **kw: MSLMCollator(tok, TERMS, term_probability=1.0, **kw),
    "difference": lambda tok, **kw: DifferenceMaskingCollator(tok, ScoreTable.from_mapping({"the": 1.0, "receptor": 0.5}), **kw),
}


@pytest.mark.parametrize("strategy", sorted(ALL_WORDS))
def test_mlm_probability_one_masks_every_eligible_word(request, strategy, corpus, seed):
    """p = 1 leaves no word (no token but the special ones, for random-token) unmasked, in rows
    of one word too: a budget capped below the row's word count, or rounded down, would leave
    one out."""
    tokenizer = request.getfixturevalue(TOKENIZERS[seed % 3])
    rng = np.random.default_rng(seed)
    examples = encode(tokenizer, sample_lines(corpus, seed, 12)) + random_sequences(tokenizer, rng, 12)
    examples += [tokenizer(word)["input_ids"] for word in ("receptor", "the", "kinase", "Enzymes")]
    collator = ALL_WORDS[strategy](tokenizer, seed=seed, mlm_probability=1.0)
    batch = collator(examples)
    check_labels_and_specials(tokenizer, examples, batch, f"seed={seed} {strategy}")
    never = word_boundaries(tokenizer).never_word  # specials and bare word marks ("▁", "Ġ")
    special = set(tokenizer.all_special_ids)
    for row, ids in enumerate(examples):
        expected = [i not in special if strategy == "random_token" else not bool(never[i]) for i in ids]
        masked = (batch["labels"][row, : len(ids)] != -100).tolist()
        assert masked == expected, f"seed={seed} {strategy} row={row}: {tokenizer.convert_ids_to_tokens(ids)}"


@pytest.mark.parametrize("strategy", sorted(FACTORIES))
def test_pickling_round_trip(request, strategy, corpus, seed):
    tokenizer = request.getfixturevalue(TOKENIZERS[(seed + 1) % 3])
    examples = encode(tokenizer, sample_lines(corpus, seed, 16))
    collator = FACTORIES[strategy](tokenizer, seed=seed, mlm_probability=0.3)
    copy = pickle.loads(pickle.dumps(collator))
    assert type(copy) is type(collator)
    for _ in range(2):  # the copy continues the same stream of draws
        expected, got = collator(examples), copy(examples)
        for key in expected:
            assert torch.equal(expected[key], got[key]), f"seed={seed} {strategy}: {key}"


def test_errors(bert_wordpiece, tokenizer_without_mask):
    tokenizer = bert_wordpiece
    for make in FACTORIES.values():
        for settings, pattern in [
            ({"mlm_probability": 1.5}, "mlm_probability"), ({"mlm_probability": -0.1}, "mlm_probability"),
            ({"mask_replace_prob": 0.95, "random_replace_prob": 0.1}, "sum to at most 1"),
            ({"pad_to_multiple_of": 0}, "pad_to_multiple_of"), ({"return_tensors": "tf"}, "return_tensors"),
            ({"word_boundary": "wordlevel"}, "wordlevel"),
        ]:
            with pytest.raises(ValueError, match=pattern):
                make(tokenizer, **settings)
        with pytest.raises(ValueError, match="mask token"):
            make(tokenizer_without_mask)
        collator = make(tokenizer)
        with pytest.raises(ValueError, match="empty list"):
            collator([])
        with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
            collator([[2, 10**6]])
    for make in (TermMaskingCollator, MSLMCollator):
        with pytest.raises(ValueError, match="empty"):
            make(tokenizer, [])
        with pytest.raises(ValueError, match="no letter"):
            make(tokenizer, ["enzyme", "42 %"])
        with pytest.raises(TypeError, match="single string"):
            make(tokenizer, "enzyme")
    with pytest.raises(ValueError, match="empty"):
        TermMatcher(tokenizer, [])
    with pytest.raises(ValueError, match="no letter"):
        TermMatcher(tokenizer, ["--"])
    with pytest.raises(ValueError, match="none of the terms"), pytest.warns(UserWarning):
        TermMatcher(tokenizer, ["\u2603x"])
    for weight in (float("nan"), -1.0, 0.0, float("inf")):
        with pytest.raises(ValueError, match="term_weight"):
            MSLMCollator(tokenizer, ["enzyme"], term_weight=weight)
    for weight in (1e308, 1e-50):  # accepted, they would fail at the first batch, or weigh terms 0
        with pytest.raises(ValueError, match="term_weight must lie within float32's range"):
            MSLMCollator(tokenizer, ["enzyme"], term_weight=weight)
    for weight in ("2", True, None):
        with pytest.raises(TypeError, match="term_weight must be a number"):
            MSLMCollator(tokenizer, ["enzyme"], term_weight=weight)
    extreme = MSLMCollator(tokenizer, ["enzyme"], term_weight=3e38, term_probability=1.0)
    assert extreme([tokenizer("the enzyme")["input_ids"]])["loss_weights"].max() == torch.tensor(3e38)
    with pytest.raises(ValueError, match="term_probability"):
        MSLMCollator(tokenizer, ["enzyme"], term_probability=1.2)


def test_every_collator_masks_at_the_same_rate_by_default(bert_wordpiece):
    """Built directly, as build_strategy and the command line build them: 25% of the words."""
    scores = ScoreTable.from_mapping({"enzyme": 0.5})
    collators = [DifferenceMaskingCollator(bert_wordpiece, scores), RandomTokenCollator(bert_wordpiece),
                 RandomWordCollator(bert_wordpiece), TermMaskingCollator(bert_wordpiece, ["enzyme"]),
                 MSLMCollator(bert_wordpiece, ["enzyme"])]
    assert [collator.mlm_probability for collator in collators] == [0.25] * len(collators)
    assert build_strategy("mslm", bert_wordpiece, terms=["enzyme"]).collator.mlm_probability == 0.25


@pytest.mark.parametrize("mask_on", ["workers", "device"])
def test_a_validation_set_masked_in_the_training_step_is_scored(bert_wordpiece, corpus, seed, mask_on):
    """The device masker scores only the words it was warmed with, and mask_examples did not warm
    it: every validation word scored as unknown, drawn as in random-word masking (coverage() was
    put back and said nothing)."""
    strategy = build_strategy("difference", bert_wordpiece, seed=seed, scores=ScoreTable.from_mapping({"the": 1.0}),
                              terms=TERMS, mask_on=mask_on, mlm_probability=0.25)
    the = bert_wordpiece.convert_tokens_to_ids("the")
    examples = [ids for ids in encode(bert_wordpiece, sample_lines(corpus, seed, 200)) if the in ids]
    masked = strategy.mask_examples(examples, seed=seed)
    # A row that masks anything masks an occurrence of the word "the", drawn before every word of
    # score 0 (the token may also be part of another word, "the-", hence not every row).
    rows = [(example["labels"], ids) for example, ids in zip(masked, examples)
            if any(label != -100 for label in example["labels"])]
    chosen = sum(any(label != -100 for label, token in zip(labels, ids) if token == the) for labels, ids in rows)
    assert len(rows) > 50 and chosen >= 0.9 * len(rows), f"'the' masked in {chosen} of {len(rows)} rows masking a word"


@pytest.mark.parametrize("mask_on", ["workers", "device"])
def test_examples_must_agree_on_the_fields_they_hold(bert_wordpiece, corpus, seed, mask_on):
    """Fields were read as the first example has them: an attention_mask only a later example held
    was ignored (its hidden tokens masked) or, on the device, read as all padding."""
    strategy = build_strategy("random-word", bert_wordpiece, seed=seed, terms=TERMS, mask_on=mask_on,
                              scores=ScoreTable.from_mapping({"the": 1.0}))
    ids = encode(bert_wordpiece, sample_lines(corpus, seed, 2))
    plain, hiding = {"input_ids": ids[0]}, {"input_ids": ids[1], "attention_mask": [1] * 3 + [0] * (len(ids[1]) - 3)}
    for examples in ([plain, hiding], [hiding, plain]):
        with pytest.raises(ValueError, match="'attention_mask' is in (example 1 but not in example 0|example 0 but "
                                             "not in example 1|some examples of a chunk but not in all of them)"):
            strategy.mask_examples(examples, seed=seed)


@pytest.mark.parametrize("name", ["difference", "random-token", "random-word", "terms", "mslm", "attention", "mst"])
def test_replacement_shares_reach_every_strategy(request, name, corpus, seed):
    """build_strategy forwards mask_replace_prob and random_replace_prob, and each collator (or,
    for the attention strategies, the masker of the training step) replaces its masked tokens by
    them (not by a fixed 80/10/10)."""
    step_only = name in ("attention", "mst")  # they read a model's attention: the tiny BERT's vocabulary
    tokenizer = request.getfixturevalue("bert_wordpiece" if step_only else TOKENIZERS[seed % 3])
    mask_share, random_share = 0.55, 0.3
    strategy = build_strategy(name, tokenizer, seed=seed, scores=ScoreTable.from_mapping({"the": 1.0}), terms=TERMS,
                              mask_on="device" if step_only else "workers", mlm_probability=0.4,
                              mask_replace_prob=mask_share, random_replace_prob=random_share)
    examples = encode(tokenizer, sample_lines(corpus, seed, 32))
    if step_only:
        model = request.getfixturevalue("tiny_bert_mlm")
        ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(e) for e in examples], batch_first=True,
                                              padding_value=tokenizer.pad_token_id)

        def mask(_):
            with torch.no_grad():
                masked_ids, labels = strategy.masker(ids, (ids != tokenizer.pad_token_id).long(), None, model=model)
            return {"input_ids": masked_ids, "labels": labels}
    else:
        mask = strategy.collator
    masked = as_mask = as_random = unchanged = 0
    for _ in range(8):
        batch = mask(examples)
        chosen = batch["labels"] != -100
        new, old = batch["input_ids"][chosen], batch["labels"][chosen]
        masked += int(chosen.sum())
        as_mask += int((new == tokenizer.mask_token_id).sum())
        as_random += int(((new != tokenizer.mask_token_id) & (new != old)).sum())
        unchanged += int((new == old).sum())
    back = random_share / word_boundaries(tokenizer).random_token_ids.numel()  # a random draw of the original
    message = f"seed={seed} {name}"
    for observed, share in ((as_mask, mask_share), (as_random, random_share - back),
                            (unchanged, 1 - mask_share - random_share + back)):
        assert within(observed / masked, share, masked), f"{message}: {observed}/{masked} vs {share:.4f}"


def test_shared_options_are_keyword_only(bert_wordpiece):
    """An option passed by position past a strategy's own fields fails instead of landing in another."""
    scores = {"enzyme": 1.0}
    for make, positional in [(RandomTokenCollator, (0.2,)), (RandomWordCollator, (0.2,)),
                             (TermMaskingCollator, (TERMS, 0.2)), (MSLMCollator, (TERMS, 0.5, 0.2, 2.0)),
                             (DifferenceMaskingCollator, (scores, 0.2, "rank", 0.1))]:
        collator = make(bert_wordpiece, *positional, mask_replace_prob=0.7, seed=3)
        assert collator.mlm_probability == 0.2 and collator.mask_replace_prob == 0.7 and collator.seed == 3
        with pytest.raises(TypeError, match="positional argument"):
            make(bert_wordpiece, *positional, 0.8)


# ----------------------------------------------------------------------------------------------
# Validation masks: drawn once, the same in every distributed rank
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,mask_on", [("difference", "workers"), ("difference", "device"),
                                          ("random-token", "workers"), ("random-word", "device"),
                                          ("mslm", "workers"), ("attention", "device"), ("mst", "device")])
def test_validation_masks_are_the_same_in_every_rank(bert_wordpiece, tiny_bert_mlm, corpus, seed, monkeypatch,
                                                     name, mask_on):

    tokenizer = bert_wordpiece
    lines = sample_lines(corpus, seed, 24)
    words = {w for line in lines for w in re.findall(r"\w+", line.lower())}
    rng = random.Random(seed)
    scores = ScoreTable.from_mapping({w: rng.random() for w in words})
    examples = [{"input_ids": ids} for ids in encode(tokenizer, lines)]
    tiny_bert_mlm.eval()

    def masks_in_rank(rank: str):
        monkeypatch.setenv("RANK", rank)
        strategy = build_strategy(name, tokenizer, seed=seed, scores=scores, terms=TERMS, mask_on=mask_on)
        validation = strategy.mask_examples(examples, model=tiny_bert_mlm, seed=seed + 1)
        if strategy.collator is not None:
            training = strategy.collator(examples)["labels"]
        else:
            ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(e["input_ids"]) for e in examples], batch_first=True,
                                                  padding_value=tokenizer.pad_token_id)
            extra = {"model": tiny_bert_mlm} if getattr(strategy.masker, "needs_model", False) else {}
            with torch.no_grad():
                training = strategy.masker(ids, (ids != tokenizer.pad_token_id).long(), None, **extra)[1]
        return [v["labels"] for v in validation], training

    validation_0, training_0 = masks_in_rank("0")
    validation_1, training_1 = masks_in_rank("1")
    assert validation_0 == validation_1, f"seed={seed} {name}: validation masks differ between ranks"
    assert any(label != -100 for row in validation_0 for label in row), f"seed={seed} {name}: nothing masked"
    assert not torch.equal(training_0, training_1), f"seed={seed} {name}: ranks draw the same training masks"


@pytest.mark.parametrize("terms", ["kinase", b"kinase"])
def test_one_string_of_terms_is_refused_not_read_as_letters(bert_wordpiece, terms):
    for name in ("terms", "mslm"):
        with pytest.raises(TypeError, match="terms must be a list of strings, not one string"):
            build_strategy(name, bert_wordpiece, terms=terms)


def test_terms_may_come_as_any_sequence(bert_wordpiece):
    as_list = build_strategy("terms", bert_wordpiece, terms=["kinase", "active site"]).collator
    for terms in (("kinase", "active site"), np.array(["kinase", "active site"])):
        assert build_strategy("terms", bert_wordpiece, terms=terms).collator.matcher.sequences == as_list.matcher.sequences
    with pytest.raises(ValueError, match="needs domain terms"):
        build_strategy("terms", bert_wordpiece, terms=np.array([], dtype=str))


def test_attention_masks_the_most_attended_words_and_mst_the_least(bert_wordpiece):
    assert build_strategy("attention", bert_wordpiece).masker.order == "most"
    assert build_strategy("mst", bert_wordpiece).masker.order == "least"


def test_mask_examples_with_a_left_padding_tokenizer():
    tokenizer = tokenizers_offline.bert_wordpiece()
    tokenizer.padding_side = "left"
    strategy = build_strategy("difference", tokenizer, scores=ScoreTable.from_mapping({"enzyme": 1.0}), mask_on="workers")
    examples = [{"input_ids": tokenizer(text)["input_ids"]}
                for text in ["enzyme", "the enzyme binds the receptor in cells of mice"]]
    for example, row in zip(examples, strategy.mask_examples(examples, seed=3)):
        ids = example["input_ids"]
        assert row["attention_mask"] == [1] * len(ids)
        assert all(label in (-100, token) for label, token in zip(row["labels"], ids))
        assert all(masked == token for masked, token, label in zip(row["input_ids"], ids, row["labels"]) if label == -100)


def test_the_top_fraction_of_domain_terms_rounds_up():
    table = ScoreTable.from_mapping({f"w{chr(97 + i // 26)}{chr(97 + i % 26)}": i / 130 for i in range(130)})
    assert len(domain_terms([], table, top_fraction=0.02)) == 3  # 2.6 words


@pytest.mark.parametrize("build", [
    lambda tokenizer, **options: RandomTokenCollator(tokenizer=tokenizer, mlm_probability=0.15, **options),
    lambda tokenizer, **options: RandomWordCollator(tokenizer=tokenizer, **options),
    lambda tokenizer, **options: DifferenceMaskingCollator(tokenizer, {"enzyme": 0.9}, **options),
    lambda tokenizer, **options: TermMaskingCollator(tokenizer, ["enzyme"], **options),
    lambda tokenizer, **options: MSLMCollator(tokenizer, ["enzyme"], **options),
], ids=["random-token", "random-word", "difference", "terms", "mslm"])
def test_every_collator_takes_the_mlm_flag_of_hf_collators(build, bert_wordpiece):
    """DataCollatorForLanguageModeling(tokenizer=..., mlm=True, mlm_probability=...) calls carry over."""
    collator = build(bert_wordpiece, mlm=True)
    assert collator([bert_wordpiece("the enzyme binds")["input_ids"]])["labels"].shape[0] == 1
    with pytest.raises(ValueError, match=f"{type(collator).__name__} masks for masked language modelling; mlm=False"):
        build(bert_wordpiece, mlm=False)


@pytest.mark.parametrize("name, mask_on", [("random-word", "device"), ("difference", "device"), ("attention", "auto")])
def test_pad_to_multiple_of_is_refused_where_the_training_step_masks(name, mask_on, bert_wordpiece):
    """It was dropped without a word: the trainer's padding collator never saw it."""
    scores = ScoreTable({"enzyme": 0.9})
    with pytest.raises(ValueError, match=f"the {name!r} strategy masks in the training step.*DataCollatorWithPadding"):
        build_strategy(name, bert_wordpiece, scores=scores, mask_on=mask_on, pad_to_multiple_of=8)
    collator = build_strategy("random-word", bert_wordpiece, mask_on="workers", pad_to_multiple_of=8).collator
    assert collator([list(range(5, 14))])["input_ids"].shape[1] == 16  # 9 tokens padded to a multiple of 8


def test_a_term_strategy_without_terms_names_what_gives_them(bert_wordpiece):
    """It said to give "anchors and scores", which build_strategy does not take."""
    from diffmask_fast.terms import domain_terms

    table = ScoreTable({"enzyme": 0.9, "receptor": 0.8, "the": 0.1})
    with pytest.raises(ValueError, match=r"needs domain terms \(terms=\).*domain_terms\(anchors, scores\)"):
        build_strategy("mslm", bert_wordpiece, scores=table)
    terms = domain_terms(["enzyme"], table, top_fraction=0.5)
    assert build_strategy("mslm", bert_wordpiece, terms=terms).collator is not None


def test_settings_a_strategy_does_not_read_are_refused(bert_wordpiece):
    """build_strategy("msml", ..., term_weight=3.0) with the name mistyped as "random-word" or
    "difference" trained that strategy, the setting silently dropped."""
    scores = ScoreTable({"enzyme": 0.9})
    for name, settings in (("difference", {"term_weight": 3.0}), ("random-word", {"term_probability": 0.6}),
                           ("random-token", {"attention_layer": 2}), ("mslm", {"attention_layer": -2}),
                           ("attention", {"term_probability": 0.5, "term_weight": 2.0})):
        unused = " or ".join(settings)
        with pytest.raises(ValueError, match=f"the {name!r} strategy does not use {unused}: leave"):
            build_strategy(name, bert_wordpiece, scores=scores, terms=["enzyme"], **settings)
    mslm = build_strategy("mslm", bert_wordpiece, terms=["enzyme"], term_probability=0.6, term_weight=3.0)
    assert (mslm.collator.term_probability, mslm.collator.term_weight) == (0.6, 3.0)
    default = build_strategy("mslm", bert_wordpiece, terms=["enzyme"])
    assert (default.collator.term_probability, default.collator.term_weight) == (0.5, 2.0)
    assert build_strategy("attention", bert_wordpiece, attention_layer=1).masker.layer == 1
    assert build_strategy("mst", bert_wordpiece).masker.layer == -1


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8"])
def test_mask_examples_refuses_a_batch_size_that_is_none(bert_wordpiece, batch_size):
    """-1 gave no examples at all, without a word; 0 failed inside range()."""
    strategy = build_strategy("random-word", bert_wordpiece, seed=0)
    examples = [{"input_ids": bert_wordpiece("the protein binds")["input_ids"]}] * 2
    error, problem = (ValueError, "at least 1") if isinstance(batch_size, int) and not isinstance(batch_size, bool) \
        else (TypeError, "a whole number")
    with pytest.raises(error, match=f"batch_size must be {problem}, got {re.escape(repr(batch_size))}"):
        strategy.mask_examples(examples, seed=0, batch_size=batch_size)
    assert len(strategy.mask_examples(examples, seed=0, batch_size=np.int64(1))) == 2


def _every_collator(tokenizer, lines, seed, **options):
    """One collator of each strategy over ``tokenizer``, seeded, with ``options``."""
    words = frequent_words(lines, 12)
    table = ScoreTable.from_mapping({w: (i % 5) / 5 for i, w in enumerate(words)})
    return {"difference": DifferenceMaskingCollator(tokenizer, table, seed=seed, **options),
            "random-token": RandomTokenCollator(tokenizer, seed=seed, **options),
            "random-word": RandomWordCollator(tokenizer, seed=seed, **options),
            "terms": TermMaskingCollator(tokenizer, words[:4], seed=seed, **options),
            "mslm": MSLMCollator(tokenizer, words[:4], seed=seed, **options)}


def test_every_collator_s_pinned_draws_leave_its_training_stream_where_it_was(bert_wordpiece, corpus, seed):
    """MaskingTrainer evaluates inside pinned_generator: were the training streams reset on the
    way out, every evaluation would restart the training masks from the first step."""
    examples = encode(bert_wordpiece, sample_lines(corpus, seed, 6))
    undisturbed = _every_collator(bert_wordpiece, corpus, seed)
    pinned = _every_collator(bert_wordpiece, corpus, seed)
    for name, collator in pinned.items():
        first = undisturbed[name](examples)["labels"]
        second = undisturbed[name](examples)["labels"]
        assert torch.equal(collator(examples)["labels"], first)
        with collator.pinned_generator(99):
            inside = collator(examples)["labels"]
        with collator.pinned_generator(99):
            assert torch.equal(collator(examples)["labels"], inside), name
        assert torch.equal(collator(examples)["labels"], second), name
        assert not torch.equal(second, first), name


def test_every_collator_s_pinned_draws_per_process_differ_by_rank(bert_wordpiece, corpus, seed, monkeypatch):
    """Ranks evaluating different batches with one stream would mask them at the same positions."""
    examples = encode(bert_wordpiece, sample_lines(corpus, seed, 6))

    def pinned_labels(rank, per_process):
        monkeypatch.setenv("RANK", str(rank))
        labels = {}
        for name, collator in _every_collator(bert_wordpiece, corpus, seed).items():
            with collator.pinned_generator(5, per_process=per_process):
                labels[name] = collator(examples)["labels"]
        return labels

    for per_process in (True, False):
        zero, one = pinned_labels(0, per_process), pinned_labels(1, per_process)
        zero_again = pinned_labels(0, per_process)
        for name in zero:
            assert torch.equal(zero[name], zero_again[name]), name
            assert torch.equal(zero[name], one[name]) != per_process, (name, per_process)


def test_random_replacements_are_uniform_over_every_allowed_id(seed):
    """The Python replacement behind random-token, random-word, terms and MSLM masking: each allowed
    id, the last included, equally often (the C++ op's own is checked in test_sampling_statistics)."""
    from types import SimpleNamespace

    from diffmask_fast.masking_base import replace_selected

    allowed = torch.tensor([5, 9, 11, 12, 20, 21, 30, 31, 40, 47])
    boundaries = SimpleNamespace(random_token_ids=allowed, mask_token_id=3)
    ids = torch.full((200, 100), 7)
    masked, labels = replace_selected(ids, torch.ones_like(ids, dtype=torch.bool), boundaries, 0.0, 1.0,
                                      torch.Generator().manual_seed(seed))
    assert torch.equal(labels, ids)
    counts = torch.bincount(masked.flatten(), minlength=48)[allowed]
    assert int(counts.sum()) == ids.numel()
    for count in counts.tolist():  # each ~ Binomial(20000, 1/10)
        assert binomial_p_value(count, ids.numel(), 0.1) > 1e-6, (counts.tolist(), f"seed={seed}")


def test_a_term_with_a_word_the_tokenizer_cannot_spell_matches_nowhere(bert_wordpiece):
    """"☃ kinase" reads "[UNK] kinase": kept, it would match as "kinase" alone and make every
    kinase a term."""
    from diffmask_fast import DiffmaskWarning

    assert bert_wordpiece.tokenize("☃ kinase")[0] == "[UNK]"
    with pytest.warns(DiffmaskWarning, match="1 term.* hold text the tokenizer cannot represent"):
        matcher = TermMatcher(bert_wordpiece, ["☃ kinase", "enzyme"])
    ids = torch.tensor([bert_wordpiece("the kinase binds the enzyme")["input_ids"]])
    assert matcher.spans(ids) == [[(4, 5)]], "word 4 only (spans count words)"


def test_punctuation_before_a_term_is_part_of_it(roberta_byte_bpe):
    """"(C)" is not "C)": the punctuation a term opens with must be there too."""
    matcher = TermMatcher(roberta_byte_bpe, ["(C)"])
    ids = torch.tensor([roberta_byte_bpe("the C) and the (C) here")["input_ids"]])
    assert matcher.spans(ids) == [[(4, 5)]]


def test_given_anchors_that_are_no_anchor_candidates_are_no_terms():
    """Citation syntax and broken text are left out of the terms as of the anchors."""
    assert domain_terms(["enzyme", "et", "al.", "cafÃ©"]) == ["enzyme"]


def test_the_attention_strategy_reads_the_segments_of_validation_examples(bert_wordpiece):
    """The attention pass sees the token types the model sees: validation examples of two
    segments were masked as if they had one."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(bert_wordpiece), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64, type_vocab_size=2)).eval()
    with torch.no_grad():
        model.bert.embeddings.token_type_embeddings.weight[1] += 5.0  # the second segment reads otherwise
    lines = ["the cell binds the receptor and the protein", "water flows into the house",
             "gene expression in the cell nucleus is high"]
    ids = [bert_wordpiece(line)["input_ids"] for line in lines]
    strategy = build_strategy("attention", bert_wordpiece, mlm_probability=0.3)
    two = strategy.mask_examples([{"input_ids": i, "token_type_ids": [0] * 4 + [1] * (len(i) - 4)} for i in ids],
                                 model=model, seed=0)
    one = strategy.mask_examples([{"input_ids": i, "token_type_ids": [0] * len(i)} for i in ids], model=model, seed=0)
    assert [e["labels"] for e in two] != [e["labels"] for e in one]
    assert [e["token_type_ids"] for e in two] == [[0] * 4 + [1] * (len(i) - 4) for i in ids]


def test_a_masker_without_a_pinned_stream_gets_its_buffers_back():
    """mask_examples draws from a masker's buffers (a third party's random state, say) and puts
    them back, so that masking a validation set does not move training's stream."""
    from diffmask_fast.strategies import _restoring_buffers

    module = torch.nn.Module()
    module.register_buffer("count", torch.zeros(1))
    module.register_buffer("state", torch.arange(3))
    with _restoring_buffers(module):
        module.count += 1
        module.state.copy_(torch.tensor([7, 7, 7]))
    assert module.count.tolist() == [0.0] and module.state.tolist() == [0, 1, 2]
