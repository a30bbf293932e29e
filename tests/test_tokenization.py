"""Word-boundary tables against the reference's word_starts, on real and adversarial text."""

from __future__ import annotations

import copy
import os
import pickle
import random
import re
import warnings
from unittest import mock

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import tokenizers_offline
from diffmask_fast import reference, tokenization
from diffmask_fast.advice import DiffmaskWarning
from diffmask_fast.tokenization import (
    SCHEMES,
    UnknownWordBoundaries,
    WordBoundaries,
    decode_word,
    decode_words,
    detect_word_boundary_scheme,
    word_boundaries,
)

TOKENIZERS = {
    "bert_wordpiece": "wordpiece",
    "roberta_byte_bpe": "byte_bpe",
    "sentencepiece_unigram": "sentencepiece",
    "minilm_tokenizer": "wordpiece",
}

ADVERSARIAL = [
    "",
    " ",
    "   leading and trailing spaces   ",
    "(Leading punctuation) and trailing punctuation.",
    "...and an ellipsis, then 'quotes' and \"double quotes\".",
    "Straße ÉCOLE naïve coöperation Ångström",
    "stored at −20C, pH 7.4 ± 0.2 and 10^-5 M",
    "Fe-S clusters (IscS [12,22], IscU/Isu1 [6,11,16])",
    "multiple    spaces\tand\ttabs",
    "a newline\nin the middle",
    "x☃y ☃ 漢字 and a test tube 🧪 emoji",
    "e.g. i.e. et al. U.S.A. 3.14159 1,000,000 2nd",
    "ﬁnance in ＦＵＬＬＷＩＤＴＨ letters",
    "a" * 150 + " overlong word",
    "The enzyme receptor binds the ligand",
]

#: Sentences drawn from each shared corpus per run; the seed is printed with any failure.
LINES_PER_CORPUS = 8
SEED = int(os.environ.get("DIFFMASK_FAST_TEST_SEED", random.SystemRandom().randrange(2**31)))


@pytest.fixture(params=sorted(TOKENIZERS))
def named_tokenizer(request):
    return request.param, request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def corpus_sentences(shared_data_dir):
    rng = random.Random(SEED)
    sentences = []
    for corpus in ("scicite", "chemprot", "acl_arc"):
        path = shared_data_dir / corpus / "corpus.txt"
        if not path.is_file():
            continue
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        sentences.extend(rng.sample(lines, min(LINES_PER_CORPUS, len(lines))))
    if not sentences:
        pytest.skip("no shared corpus found")
    return sentences


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def table_word_starts(ids, boundaries: WordBoundaries) -> list[bool]:
    """Word starts from the per-id tables plus the context rules the ops apply."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    never = boundaries.never_word[ids]
    after_excluded = torch.cat([torch.ones(1, dtype=torch.bool), never[:-1]])
    return (~never & (boundaries.starts_word[ids] | after_excluded)).tolist()


def stands_for_whitespace(tokenizer, token: str) -> bool:
    """Whether a byte-level or SentencePiece token is the text of whitespace alone, as the
    tokenizer's own decoder reads it (str.split's whitespace: "Ġ", "Ċ", "Âł", "▁", the byte 0x1F)."""
    if token.startswith("\u2581"):  # a Metaspace decoder drops the leading space of a text
        return token.replace("\u2581", " ").isspace()
    return tokenizer.backend_tokenizer.decoder.decode([token]).isspace()


def check_against_reference(tokenizer, boundaries, text):
    ids = tokenizer(text)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    never = boundaries.never_word[torch.tensor(ids, dtype=torch.long)].tolist()
    expected = reference.word_starts(tokens, never, boundaries.scheme)
    assert table_word_starts(ids, boundaries) == expected, (SEED, text, tokens)


def words_as_pre_tokenized(tokenizer, scheme, text):
    """Each word of ``text`` as the tokenizer splits it, with the groups of tokens covering it.

    Returns (pairs, spare): ``pairs`` holds (expected word, decoded group) for each word of the
    text whose tokens hold no unknown token; ``spare`` the decoded groups that cover no word
    (whitespace-only groups such as a lone "Ġ" or "▁").

    wordpiece and sentencepiece: the words are the backend's pre-tokens of the normalized text
    (BERT splits off punctuation; Metaspace splits at spaces), matched to tokens by word_ids.
    byte_bpe: ByteLevel splits words into letters / digits / punctuation pre-tokens; a space
    ("Ġ") marks a new word and whitespace-only tokens ("Ċ", a lone "Ġ") belong to none, so the
    words are the chunks of the text between ASCII whitespace, matched to tokens through their
    character offsets.
    """
    backend = tokenizer.backend_tokenizer
    boundaries = word_boundaries(tokenizer, scheme)
    encoding = tokenizer(text, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    never = boundaries.never_word[torch.tensor(ids, dtype=torch.long)].tolist()
    groups = reference.group_words(table_word_starts(ids, boundaries), never)
    decoded = decode_words(tokenizer, [[ids[i] for i in group] for group in groups])

    if scheme == "byte_bpe":
        chunks = [(m.start(), m.end()) for m in re.finditer(r"[^ \t\n\x0b\x0c\r]+", text)]
        words = [text[start:end].strip() for start, end in chunks]

        def unit_of(position):
            start, end = encoding["offset_mapping"][position]
            units = {index for index, (a, b) in enumerate(chunks) if a < end and start < b}
            assert len(units) <= 1, (text, position)
            return units.pop() if units else None
    else:
        normalized = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
        words = [word.replace("\u2581", " ").strip() for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
        word_ids = encoding.word_ids()

        def unit_of(position):
            return word_ids[position]

    unknown_units = {unit_of(i) for i, token_id in enumerate(ids) if token_id == tokenizer.unk_token_id}
    groups_of_unit: dict[int, list[str]] = {}
    spare = []
    for group, word in zip(groups, decoded):
        units = {unit_of(i) for i in group} - {None}
        assert len(units) <= 1, ("a group spans several words", text, group, word)
        if not units:
            spare.append(word)
            continue
        groups_of_unit.setdefault(units.pop(), []).append(word)
    pairs = []
    for unit, word in enumerate(words):
        if unit in unknown_units or not word:
            continue
        found = groups_of_unit.get(unit, [])
        assert len(found) == 1, ("a word is not exactly one group", text, word, found)
        pairs.append((word, found[0]))
    return pairs, spare


# ----------------------------------------------------------------------------------------------
# detection
# ----------------------------------------------------------------------------------------------


def test_detects_scheme_of_each_tokenizer(named_tokenizer):
    name, tokenizer = named_tokenizer
    assert detect_word_boundary_scheme(tokenizer) == TOKENIZERS[name]
    assert word_boundaries(tokenizer).scheme == TOKENIZERS[name]


def test_word_level_tokenizer_has_one_word_per_token():
    tokenizer = tokenizers_offline.word_level_whitespace()
    assert detect_word_boundary_scheme(tokenizer) == "token"
    boundaries = word_boundaries(tokenizer)
    special = set(tokenizer.all_special_ids)
    assert boundaries.starts_word.tolist() == [i not in special for i in range(len(tokenizer))]
    assert set(boundaries.never_word.nonzero().flatten().tolist()) == special
    # An explicit scheme is honoured over detection, with a warning that they differ.
    from diffmask_fast.advice import DiffmaskWarning

    with pytest.warns(DiffmaskWarning, match="'wordpiece' were named for"):
        assert word_boundaries(tokenizer, "wordpiece").scheme == "wordpiece"


def _variant(tokenizer, edit) -> PreTrainedTokenizerFast:
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    edit(backend)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", mask_token="<mask>"
    )


def test_detects_byte_level_inside_a_sequence(roberta_byte_bpe):
    def edit(backend):
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"\d{1,3}"), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )

    assert detect_word_boundary_scheme(_variant(roberta_byte_bpe, edit)) == "byte_bpe"


def test_detects_sentencepiece_bpe(roberta_byte_bpe):
    def metaspace(backend):
        backend.pre_tokenizer = pre_tokenizers.Metaspace()

    def llama_style(backend):  # no pre-tokenizer; the normalizer writes the "▁"
        backend.pre_tokenizer = None
        backend.normalizer = normalizers.Sequence(
            [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
        )

    assert detect_word_boundary_scheme(_variant(roberta_byte_bpe, metaspace)) == "sentencepiece"
    assert detect_word_boundary_scheme(_variant(roberta_byte_bpe, llama_style)) == "sentencepiece"


def test_bpe_with_continuation_prefix_is_wordpiece_like():
    vocab = {"<pad>": 0, "<unk>": 1, "<mask>": 2, "a": 3, "b": 4, "##b": 5, "##a": 6}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", continuing_subword_prefix="##"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    assert detect_word_boundary_scheme(tokenizer) == "wordpiece"
    boundaries = word_boundaries(tokenizer)
    assert boundaries.starts_word.tolist() == [False, False, False, True, True, False, False]


def test_end_of_word_suffix_bpe_is_rejected():
    tokenizer = tokenizers_offline.end_of_word_bpe()
    with pytest.raises(UnknownWordBoundaries, match="pass scheme= explicitly") as error:
        detect_word_boundary_scheme(tokenizer)
    message = str(error.value)
    assert type(tokenizer).__name__ in message
    assert all(scheme in message for scheme in SCHEMES)
    with pytest.raises(ValueError, match="pass scheme= explicitly"):
        word_boundaries(tokenizer)


def test_undetectable_word_boundaries_advise_the_parameter_the_caller_takes():
    """Functions take the scheme as ``scheme=``, collators, strategies and the pretraining config
    as ``word_boundary=``: the advice names the one the user called."""
    import pickle

    from diffmask_fast import RandomWordCollator
    from diffmask_fast.pretrain_data import tokenize_documents
    from diffmask_fast.terms import TermMatcher
    from diffmask_fast.vocabulary import tokenizer_word_types

    tokenizer = tokenizers_offline.end_of_word_bpe()
    with pytest.raises(UnknownWordBoundaries, match="pass scheme= explicitly"):
        tokenizer_word_types(tokenizer, ["a b"])
    for build in (lambda: RandomWordCollator(tokenizer), lambda: TermMatcher(tokenizer, ["a"]),
                  lambda: tokenize_documents(tokenizer, ["a b"], 16)):
        with pytest.raises(UnknownWordBoundaries, match="pass word_boundary= explicitly, one of") as error:
            build()
        assert "scheme=" not in str(error.value)
    copy = pickle.loads(pickle.dumps(error.value))  # crosses process boundaries (DataLoader workers)
    assert type(copy) is UnknownWordBoundaries and str(copy) == str(error.value)


class VocabularyOnly:
    """A stand-in for a slow tokenizer: a vocabulary and nothing else."""

    def __init__(self, tokens):
        self.tokens = list(tokens)

    def __len__(self):
        return len(self.tokens)

    def get_vocab(self):
        return {token: index for index, token in enumerate(self.tokens)}

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[i] for i in ids]


@pytest.mark.parametrize("name", ["bert_wordpiece", "roberta_byte_bpe", "sentencepiece_unigram"])
def test_detects_slow_tokenizers_from_their_vocabulary(request, name):
    tokenizer = request.getfixturevalue(name)
    slow = VocabularyOnly(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    assert detect_word_boundary_scheme(slow) == TOKENIZERS[name]
    with pytest.raises(ValueError, match="scheme="):
        detect_word_boundary_scheme(VocabularyOnly(["the", "cat", "sat", "on", "mat"]))


def test_slow_bert_matches_fast_bert(minilm_tokenizer):
    from transformers import BertTokenizerLegacy

    slow = BertTokenizerLegacy(vocab_file=os.path.join(minilm_tokenizer.name_or_path, "vocab.txt"))
    assert getattr(slow, "backend_tokenizer", None) is None
    assert detect_word_boundary_scheme(slow) == "wordpiece"
    assert word_boundaries(slow) == word_boundaries(minilm_tokenizer)
    ids = minilm_tokenizer("the enzyme's receptor binds")["input_ids"]
    groups = [[ids[1]], ids[2:5]]
    assert decode_words(slow, groups) == decode_words(minilm_tokenizer, groups)


# ----------------------------------------------------------------------------------------------
# word starts and words
# ----------------------------------------------------------------------------------------------


def test_word_starts_match_reference_on_adversarial_text(named_tokenizer):
    _, tokenizer = named_tokenizer
    boundaries = word_boundaries(tokenizer)
    for text in ADVERSARIAL:
        check_against_reference(tokenizer, boundaries, text)


def test_word_starts_match_reference_on_corpus_text(named_tokenizer, corpus_sentences):
    _, tokenizer = named_tokenizer
    boundaries = word_boundaries(tokenizer)
    for text in corpus_sentences:
        check_against_reference(tokenizer, boundaries, text)


def test_word_starts_match_reference_on_every_single_token(named_tokenizer):
    """Every id, alone and after a word start: the table and the reference agree token by token."""
    _, tokenizer = named_tokenizer
    boundaries = word_boundaries(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    never = boundaries.never_word.tolist()
    lead = next(i for i in range(len(tokens)) if not never[i] and boundaries.starts_word[i])
    ids = [j for i in range(len(tokens)) for j in (lead, i)]
    expected = reference.word_starts([tokens[i] for i in ids], [never[i] for i in ids], boundaries.scheme)
    assert table_word_starts(ids, boundaries) == expected


def test_words_decode_to_the_pre_tokenized_words(named_tokenizer, corpus_sentences):
    name, tokenizer = named_tokenizer
    scheme = TOKENIZERS[name]
    compared = 0
    for text in ADVERSARIAL + corpus_sentences:
        pairs, spare = words_as_pre_tokenized(tokenizer, scheme, text)
        assert all(word == "" for word in spare), (SEED, text, spare)
        for expected, got in pairs:
            assert reference.normalize_word(got) == reference.normalize_word(expected), (SEED, text, expected, got)
        compared += len(pairs)
    assert compared > 100


def test_roberta_first_word_has_no_marker_but_starts_a_word(roberta_byte_bpe):
    boundaries = word_boundaries(roberta_byte_bpe)
    ids = roberta_byte_bpe("Enzymes bind")["input_ids"]
    tokens = roberta_byte_bpe.convert_ids_to_tokens(ids)
    assert not tokens[1].startswith("\u0120") and not boundaries.starts_word[ids[1]]
    assert table_word_starts(ids, boundaries)[1]
    # With the space, the same word is spelled with different tokens.
    spaced = roberta_byte_bpe(" Enzymes bind")["input_ids"]
    assert roberta_byte_bpe.convert_ids_to_tokens(spaced)[1].startswith("\u0120")


def test_whitespace_tokens_separate_byte_level_words(roberta_byte_bpe):
    """Only a space becomes "Ġ" on a word: the token after a newline or tab has none. Whitespace-only
    tokens ("Ċ", "ĉ", the lone "Ġ" of a double space) belong to no word, so the next token starts one."""
    boundaries = word_boundaries(roberta_byte_bpe)
    ids = roberta_byte_bpe("alpha\nbeta\tdelta  epsilon gamma", add_special_tokens=False)["input_ids"]
    never = boundaries.never_word[torch.tensor(ids)].tolist()
    tokens = roberta_byte_bpe.convert_ids_to_tokens(ids)
    assert never == [token in ("\u010a", "\u0109", "\u0120") for token in tokens] and sum(never) == 3, tokens
    groups = reference.group_words(table_word_starts(ids, boundaries), never)
    words = decode_words(roberta_byte_bpe, [[ids[i] for i in g] for g in groups])
    assert words == ["alpha", "beta", "delta", "epsilon", "gamma"]
    assert not set(boundaries.random_token_ids.tolist()) & set(boundaries.never_word.nonzero().flatten().tolist())


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------


def test_tables_shapes_and_special_tokens(named_tokenizer):
    _, tokenizer = named_tokenizer
    boundaries = word_boundaries(tokenizer)
    size = len(tokenizer)
    assert boundaries.vocab_size == size
    assert boundaries.starts_word.shape == boundaries.never_word.shape == (size,)
    assert boundaries.starts_word.dtype == boundaries.never_word.dtype == torch.bool
    assert boundaries.random_token_ids.dtype == torch.int64

    special = set(tokenizer.all_special_ids)
    special |= {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    if boundaries.scheme in ("byte_bpe", "sentencepiece"):  # and the tokens of whitespace alone
        special |= {i for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(size))))
                    if token and stands_for_whitespace(tokenizer, token)}
        assert len(special) > len(set(tokenizer.all_special_ids))
    assert set(torch.nonzero(boundaries.never_word).flatten().tolist()) == special
    assert {tokenizer.pad_token_id, tokenizer.mask_token_id, tokenizer.unk_token_id} <= special
    assert not (boundaries.starts_word & boundaries.never_word).any()
    assert boundaries.random_token_ids.tolist() == sorted(set(range(size)) - special)
    assert boundaries.mask_token_id == tokenizer.mask_token_id
    assert boundaries.mask_token_id not in boundaries.random_token_ids.tolist()


@pytest.mark.parametrize("name", ["bert_wordpiece", "roberta_byte_bpe", "sentencepiece_unigram"])
def test_added_domain_tokens_are_whole_words_as_the_reference_groups_them(request, name):
    import copy

    tokenizer = copy.deepcopy(request.getfixturevalue(name))  # the fixture is shared: not changed
    tokenizer.add_tokens(["nanomolar", "kinaseX"])
    boundaries = word_boundaries(tokenizer)
    text = "binds with nanomolar affinity to kinaseX in nanomolar doses"
    check_against_reference(tokenizer, boundaries, text)
    ids = tokenizer(text)["input_ids"]
    never = boundaries.never_word[torch.tensor(ids)].tolist()
    groups = reference.group_words(table_word_starts(ids, boundaries), never)
    words = decode_words(tokenizer, [[ids[i] for i in group] for group in groups])
    assert [w.lower() for w in words] == text.lower().split(), (name, tokenizer.convert_ids_to_tokens(ids))


@pytest.mark.parametrize("name", ["bert_wordpiece", "roberta_byte_bpe", "sentencepiece_unigram"])
def test_added_tokens_with_accented_letters_decode_as_written(request, name):
    """A byte-level decoder reads each character of a token as a byte: an added "café" or "µM"
    (text, not bytes) decoded to "caf\ufffd", and was scored and masked under that name. Every
    word decodes as the text spells it, with and without the backend, and the word types
    the vocabulary reads are the words the collator looks up."""
    import copy

    from diffmask_fast.vocabulary import tokenizer_word_types

    tokenizer = copy.deepcopy(request.getfixturevalue(name))  # the fixture is shared: not changed
    added = ["café", "µM", "naïve", "Müller", "β-amyloid", "señor"]
    tokenizer.add_tokens(random.sample(added, len(added)))
    text = "add the µM of café to naïve Müller cells with β-amyloid for señor"  # words of every training text
    boundaries = word_boundaries(tokenizer)
    ids = tokenizer(text)["input_ids"]
    never = boundaries.never_word[torch.tensor(ids)].tolist()
    groups = reference.group_words(table_word_starts(ids, boundaries), never)
    id_lists = [[ids[i] for i in group] for group in groups]
    expected = [reference.normalize_word(w) for w in text.split()]
    normalized = lambda words: [reference.normalize_word(w) for w in words]  # noqa: E731
    assert normalized(decode_words(tokenizer, id_lists)) == expected, tokenizer.convert_ids_to_tokens(ids)
    assert normalized(decode_word(tokenizer, word) for word in id_lists) == expected
    with mock.patch.object(tokenization, "_decodes_with_backend", return_value=False):  # token by token
        assert normalized(decode_words(tokenizer, id_lists)) == expected
    if name != "sentencepiece_unigram":  # its normalizer spells µ as Greek mu
        assert tokenizer_word_types(tokenizer, [text]) == set(expected)


def test_reading_word_types_with_no_tokenizer_is_a_clear_error(bert_wordpiece):
    """A model name, None or a bare tokenizers.Tokenizer failed deep inside as a missing
    attribute or len()."""
    from diffmask_fast.tokenization import WordGrouper
    from diffmask_fast.vocabulary import WordTypes, tokenizer_word_types

    for not_a_tokenizer in (None, "bert-base-uncased", bert_wordpiece.backend_tokenizer):
        for read in (lambda t: tokenizer_word_types(t, ["a kinase"]), WordGrouper.for_tokenizer, WordTypes):
            with pytest.raises(TypeError, match="tokenizer must be a HuggingFace tokenizer .*, got "
                                                "(NoneType|str 'bert-base-uncased'|Tokenizer)$"):
                read(not_a_tokenizer)


def test_missing_mask_token_is_a_clear_error(tokenizer_without_mask):
    with pytest.raises(ValueError, match="has no mask token.*set tokenizer.mask_token"):
        word_boundaries(tokenizer_without_mask)


def test_unknown_scheme_is_rejected(bert_wordpiece):
    with pytest.raises(ValueError, match="wordpiece.*byte_bpe.*sentencepiece"):
        word_boundaries(bert_wordpiece, "wordlevel")


def test_explicit_scheme_overrides_detection(bert_wordpiece):
    from diffmask_fast.advice import DiffmaskWarning

    with pytest.warns(DiffmaskWarning, match="'sentencepiece' were named for"):
        forced = word_boundaries(bert_wordpiece, "sentencepiece")
    assert forced.scheme == "sentencepiece"
    assert not forced.starts_word.any()  # no BERT token carries "▁"
    assert torch.equal(forced.never_word, word_boundaries(bert_wordpiece).never_word)


def test_pickle_round_trip(named_tokenizer):
    _, tokenizer = named_tokenizer
    boundaries = word_boundaries(tokenizer)
    copy = pickle.loads(pickle.dumps(boundaries))
    assert copy == boundaries and copy is not boundaries
    assert copy.scheme == boundaries.scheme and copy.mask_token_id == boundaries.mask_token_id
    assert hash(copy) == hash(boundaries)


def test_tables_are_read_only_value(bert_wordpiece):
    boundaries = word_boundaries(bert_wordpiece)
    with pytest.raises(AttributeError):
        boundaries.scheme = "byte_bpe"
    assert boundaries.to("cpu") == boundaries
    assert "wordpiece" in repr(boundaries)


def test_added_tokens():
    tokenizer = tokenizers_offline.roberta_byte_bpe()
    tokenizer.add_tokens(["frataxin"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<ent>"]})
    boundaries = word_boundaries(tokenizer)
    plain, special = tokenizer.convert_tokens_to_ids(["frataxin", "<ent>"])
    assert boundaries.vocab_size == len(tokenizer)
    # A plain added token follows the scheme: without "Ġ" it continues the bare "Ġ" before it.
    assert not boundaries.starts_word[plain] and not boundaries.never_word[plain]
    assert boundaries.never_word[special] and not boundaries.starts_word[special]
    assert plain in boundaries.random_token_ids.tolist()
    assert special not in boundaries.random_token_ids.tolist()


def test_vocabulary_holes_start_words():
    vocab = {"[PAD]": 0, "[UNK]": 1, "[MASK]": 2, "##x": 4, "y": 5}  # no token has id 3
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]")
    assert tokenizer.convert_ids_to_tokens([3])[0] is None
    boundaries = word_boundaries(tokenizer)
    assert boundaries.vocab_size == 6, "the largest id is 5, whatever len(tokenizer) says"
    assert boundaries.starts_word[3] and not boundaries.never_word[3]
    assert not boundaries.starts_word[4] and boundaries.starts_word[5]
    assert 3 not in boundaries.random_token_ids.tolist(), "a hole is never a random replacement"


def test_custom_wordpiece_prefix():
    vocab = {"[PAD]": 0, "[UNK]": 1, "[MASK]": 2, "re": 3, "@@ceptor": 4, "##x": 5}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="@@"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]")
    boundaries = word_boundaries(tokenizer)
    assert boundaries.starts_word.tolist() == [False, False, False, True, False, True]


def test_word_boundaries_of_a_large_vocabulary():
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    while len(vocab) < 50_000:
        piece = "".join(rng.choice(letters) for _ in range(rng.randint(2, 10)))
        vocab.setdefault(("##" if rng.random() < 0.2 else "") + piece, len(vocab))
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    boundaries = word_boundaries(tokenizer)
    assert boundaries.vocab_size == 50_000
    assert int(boundaries.starts_word.sum()) == sum(1 for t in vocab if not t.startswith("##")) - 5


# ----------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------


def test_decode_word_and_decode_words_agree(named_tokenizer, corpus_sentences):
    _, tokenizer = named_tokenizer
    boundaries = word_boundaries(tokenizer)
    all_groups = []
    for text in ADVERSARIAL[:8] + corpus_sentences[:6]:
        ids = tokenizer(text)["input_ids"]
        never = boundaries.never_word[torch.tensor(ids)].tolist()
        for group in reference.group_words(table_word_starts(ids, boundaries), never):
            all_groups.append([ids[i] for i in group])
    words = decode_words(tokenizer, all_groups)
    assert words == [decode_word(tokenizer, group) for group in all_groups]
    assert words == [
        tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(group)).strip() for group in all_groups
    ]
    assert decode_words(tokenizer, []) == []
    assert decode_word(tokenizer, torch.tensor(all_groups[0])) == words[0]


def test_decode_word_examples(bert_wordpiece, roberta_byte_bpe, sentencepiece_unigram):
    for tokenizer in (bert_wordpiece, roberta_byte_bpe, sentencepiece_unigram):
        ids = tokenizer(" receptor", add_special_tokens=False)["input_ids"]
        assert decode_word(tokenizer, ids) == "receptor"
    ids = roberta_byte_bpe(" naïve", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1 and decode_word(roberta_byte_bpe, ids) == "naïve"


def test_tiny_bert_mlm_fixture(tiny_bert_mlm, bert_wordpiece):
    batch = bert_wordpiece(["the enzyme binds", "a receptor"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = tiny_bert_mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(bert_wordpiece))


# ----------------------------------------------------------------------------------------------
# the words that get scored are the words the ops group
# ----------------------------------------------------------------------------------------------


def words_the_ops_look_up(tokenizer, text):
    boundaries = word_boundaries(tokenizer)
    ids = tokenizer(text)["input_ids"]  # with special tokens, as a collator sees them
    never = boundaries.never_word[torch.tensor(ids, dtype=torch.long)].tolist()
    groups = reference.group_words(table_word_starts(ids, boundaries), never)
    return {reference.normalize_word(w) for w in decode_words(tokenizer, [[ids[i] for i in g] for g in groups]) if w}


def test_scored_word_types_are_the_words_the_ops_look_up(named_tokenizer):
    from diffmask_fast.vocabulary import tokenizer_word_types

    _, tokenizer = named_tokenizer
    texts = ADVERSARIAL + ["the protein ☃binds ✈x receptor", "unknown ☃ pieces☃ ☃around"]
    expected = set().union(*(words_the_ops_look_up(tokenizer, text) for text in texts))
    assert tokenizer_word_types(tokenizer, texts) == expected


def custom_prefix_wordpiece():
    from tokenizers import decoders

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "recept", "@@or", "binds",
                                         "kin", "@@ase"])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="@@"))
    backend.normalizer = normalizers.BertNormalizer()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="@@")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def test_scoring_and_contextual_anchors_follow_a_custom_continuation_prefix():
    from diffmask_fast.contextual import find_occurrences
    from diffmask_fast.vocabulary import tokenizer_word_types

    tokenizer = custom_prefix_wordpiece()
    text = "the receptor binds kinase"
    assert tokenizer.tokenize(text) == ["the", "recept", "@@or", "binds", "kin", "@@ase"]
    assert tokenizer_word_types(tokenizer, [text]) == words_the_ops_look_up(tokenizer, text) == set(text.split())
    (found,) = find_occurrences(tokenizer, [text], ["receptor"], max_per_anchor=5)
    assert found == [(text, 1, 3)]  # the recept @@or (no post-processor adds [CLS]): tokens 1 and 2


# ----------------------------------------------------------------------------------------------
# whitespace beyond ASCII: the words grouped are the words str.split() counts
# ----------------------------------------------------------------------------------------------

#: Runs of whitespace mixed into test sentences: Unicode spaces alone, doubled, next to a space.
MIXED_SPACES = (" ", "\t", "\u00a0", "\u202f", "\u2009", "\u3000", "\u00a0\u00a0", " \u00a0", "\u3000 ", "\t\u2009")


def grouped_words(tokenizer, text, **encode) -> list[str]:
    """The words the collator's tables group ``text`` into, decoded."""
    boundaries = word_boundaries(tokenizer)
    ids = tokenizer(text, **encode)["input_ids"]
    never = boundaries.never_word[torch.tensor(ids, dtype=torch.long)].tolist()
    groups = reference.group_words(table_word_starts(ids, boundaries), never)
    return decode_words(tokenizer, [[ids[i] for i in group] for group in groups])


def mixed_space_sentences(count: int, seed: int) -> list[str]:
    """Training sentences with each space replaced by a run of MIXED_SPACES, drawn with ``seed``."""
    rng = random.Random(seed)
    lines = rng.sample(tokenizers_offline.training_lines(), count)
    return ["".join(rng.choice(MIXED_SPACES) if ch == " " else ch for ch in line) for line in lines]


@pytest.fixture(scope="module", params=["gpt2", "cl100k"])
def unicode_space_tokenizer(request):
    return tokenizers_offline.unicode_space_byte_bpe(request.param)


def test_no_break_space_separates_byte_level_words(unicode_space_tokenizer):
    """ "Âł" (U+00A0), "âĢī" (U+2009) and "ãĢĢ" (U+3000) are whitespace like "Ġ": no word, and
    the word after them starts anew though it carries no "Ġ"."""
    tokenizer = unicode_space_tokenizer
    assert grouped_words(tokenizer, "the kinase\u00a0inhibitors bind") == ["the", "kinase", "inhibitors", "bind"]
    assert grouped_words(tokenizer, "in\u3000cells the\u2009receptor") == ["in", "cells", "the", "receptor"]
    assert grouped_words(tokenizer, "and\u00a0\u00a0more\twords ") == ["and", "more", "words"]


def test_words_of_unicode_spaced_text_are_its_whitespace_split_words(unicode_space_tokenizer, seed):
    tokenizer = unicode_space_tokenizer
    texts = mixed_space_sentences(40, seed)
    for text in texts:
        assert grouped_words(tokenizer, text) == text.split(), (seed, text, tokenizer.tokenize(text))
    # What gets scored is what gets counted.
    from diffmask_fast.vocabulary import tokenizer_word_types

    assert tokenizer_word_types(tokenizer, texts) == set(reference.count_words(texts))


def test_a_token_opening_with_whitespace_starts_a_word():
    """cl100k-style rules fold one tab or no-break space into the word after it ("ĉword", "Âłword")."""
    tokenizer = tokenizers_offline.unicode_space_byte_bpe("cl100k")
    boundaries = word_boundaries(tokenizer)
    text = "the\tthe\u00a0of\u3000and\u2009in"
    opening = ["\u0109the", "\u00c2\u0142of", "\u00e3\u0122\u0122and", "\u00e2\u0122\u012bin"]  # tab, U+00A0, U+3000, U+2009
    if not set(opening) <= set(tokenizer.get_vocab()):  # merges learned from the shared corpus's words
        pytest.skip("the tokenizer trained without the shared corpus has no whitespace-opened tokens of these words")
    assert tokenizer.tokenize(text) == ["the", *opening]
    ids = tokenizer.convert_tokens_to_ids(opening)
    assert boundaries.starts_word[ids].all() and not boundaries.never_word[ids].any()
    assert grouped_words(tokenizer, text) == text.split()
    # The reference reads the tokens alike.
    encoded = tokenizer(text)["input_ids"]
    never = boundaries.never_word[encoded].tolist()
    assert reference.word_starts(tokenizer.convert_ids_to_tokens(encoded), never, "byte_bpe") == \
        table_word_starts(encoded, boundaries)


def test_word_tables_follow_the_text_each_byte_level_token_stands_for(unicode_space_tokenizer):
    """Per token, as its own decoder reads it (a piece of a character as U+FFFD): whitespace
    alone is no word; a "Ġ" or whitespace followed by more starts one."""
    tokenizer = unicode_space_tokenizer
    boundaries = word_boundaries(tokenizer)
    decoder = tokenizer.backend_tokenizer.decoder
    special = set(tokenizer.all_special_ids)
    for token, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        text = decoder.decode([token])
        assert boundaries.never_word[i] == text.isspace(), (token, text)
        opens = token.startswith("\u0120") or (text[:1].isspace() and not text.isspace())
        assert boundaries.starts_word[i] == (opens and not boundaries.never_word[i]), (token, text)


def test_whitespace_before_part_of_a_character_starts_a_word(roberta_byte_bpe):
    """A token of a no-break space and the first bytes of a character ("Âłæ" of "\\xa0漢") reads
    as whitespace, then more: it starts a word, in the tables and the reference alike."""
    tokenizer = copy.deepcopy(roberta_byte_bpe)
    merged = ["\u00c2\u0142\u00e6", "\u010a\u00e6"]  # U+00A0 or "\n", then the lead byte of U+6F22
    tokenizer.add_tokens(merged)
    boundaries = word_boundaries(tokenizer)
    ids = tokenizer.convert_tokens_to_ids(merged)
    assert boundaries.starts_word[ids].all() and not boundaries.never_word[ids].any()
    assert reference.token_text(merged[0], "byte_bpe") == "\u00a0\ufffd"
    tokens = ["<s>", "the", *merged, "</s>"]
    assert reference.word_starts(tokens, [True, False, False, False, True], "byte_bpe") == \
        [False, True, True, True, False]


def test_ascii_byte_level_tokens_keep_their_tables(roberta_byte_bpe):
    """Tokens of ASCII text other than the separators 0x1C-0x1F (which str.split() splits on)
    are judged as before: no word if written with "Ġ", "Ċ", "ĉ"... alone, a word start if "Ġ"-led."""
    boundaries = word_boundaries(roberta_byte_bpe)
    decoder = roberta_byte_bpe.backend_tokenizer.decoder
    blank = {chr(0x100 + b) for b in b"\t\n\x0b\x0c\r "}
    special = set(roberta_byte_bpe.all_special_ids)
    checked = 0
    for token, i in roberta_byte_bpe.get_vocab().items():
        text = decoder.decode([token])
        if i in special or not text.isascii() or set(text) & set("\x1c\x1d\x1e\x1f"):
            continue
        assert boundaries.never_word[i] == (set(token) <= blank), token
        assert boundaries.starts_word[i] == (token.startswith("\u0120") and not set(token) <= blank), token
        checked += 1
    assert checked > 1000
    for text in ADVERSARIAL:
        if text.isascii():
            check_against_reference(roberta_byte_bpe, boundaries, text)


def test_information_separators_split_words_as_counting_does(roberta_byte_bpe):
    text = "kinase\x1finhibitors\x1cbind"
    assert text.split() == ["kinase", "inhibitors", "bind"]
    assert grouped_words(roberta_byte_bpe, text) == text.split()


# ----------------------------------------------------------------------------------------------
# SentencePiece: a lone "▁" is whitespace, no word
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, words",
    [
        ("the receptor ", ["the", "receptor"]),  # "▁" at the end of the sequence
        ("end </s> next", ["end", "next"]),  # "▁" before a special token
        ("binds 漢字 here", ["binds", "here"]),  # "▁" before <unk>, which is no word either
        ("   leading and trailing spaces   ", ["leading", "and", "trailing", "spaces"]),
    ],
)
def test_lone_metaspace_is_no_word(sentencepiece_unigram, text, words):
    tokens = sentencepiece_unigram.tokenize(text)
    assert "\u2581" in tokens, tokens  # the case under test occurs
    assert grouped_words(sentencepiece_unigram, text) == words, tokens


def test_lone_metaspace_before_a_continuation_leaves_the_word_whole(sentencepiece_unigram):
    """ "▁", "s", "pa", "ces": the "▁" is no word and "s" starts one; the word's text is unchanged."""
    boundaries = word_boundaries(sentencepiece_unigram)
    ids = sentencepiece_unigram("trailing spaces")["input_ids"]
    tokens = sentencepiece_unigram.convert_ids_to_tokens(ids)
    if "\u2581" not in tokens:  # the pieces learned from the shared corpus read "spaces" so
        pytest.skip("the tokenizer trained without the shared corpus reads no lone '\u2581' in 'trailing spaces'")
    lone = tokens.index("\u2581")
    assert not tokens[lone + 1].startswith("\u2581"), tokens
    assert boundaries.never_word[ids[lone]] and not boundaries.starts_word[ids[lone + 1]]
    assert table_word_starts(ids, boundaries)[lone + 1]
    assert grouped_words(sentencepiece_unigram, "trailing spaces") == ["trailing", "spaces"]


def test_no_tokenizer_groups_an_empty_word(named_tokenizer):
    _, tokenizer = named_tokenizer
    for text in ADVERSARIAL:
        assert "" not in grouped_words(tokenizer, text), (text, tokenizer.tokenize(text))


def byte_fallback_sentencepiece() -> PreTrainedTokenizerFast:
    """A Llama-style SentencePiece (spaces written "▁" by the normalizer) whose tab and newline
    come out as byte-fallback pieces "<0x09>" and "<0x0A>"."""
    from tokenizers import decoders

    pieces = ["<unk>", "<s>", "</s>", "<mask>", "<0x09>", "<0x0A>", "<0xC2>", "<0xA0>", "\u2581", "\u2581\u2581",
              "\u2581kinase", "\u2581inhibitors", "inhibitors", "\u2581bind", "bind", *"abdehiknorst"]
    backend = Tokenizer(models.Unigram([(piece, -1.0 - len(piece) ** -1) for piece in pieces], 0, True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   mask_token="<mask>")


def test_sentencepiece_byte_fallback_whitespace_is_no_word():
    tokenizer = byte_fallback_sentencepiece()
    assert detect_word_boundary_scheme(tokenizer) == "sentencepiece"
    text = "kinase\ninhibitors\tbind  kinase"
    tokens = tokenizer.tokenize(text)
    assert {"<0x0A>", "<0x09>", "\u2581\u2581"} & set(tokens) >= {"<0x0A>", "<0x09>"}, tokens
    assert grouped_words(tokenizer, text) == text.split(), tokens
    boundaries = word_boundaries(tokenizer)
    ids = tokenizer.convert_tokens_to_ids(["<0x0A>", "<0x09>", "\u2581\u2581", "<0xC2>", "<0xA0>", "inhibitors"])
    assert boundaries.never_word[ids].tolist() == [True, True, True, False, False, False]


def test_texts_with_lone_surrogates_are_tokenized_with_the_replacement_character(named_tokenizer):
    """A JSON escape of half an emoji ("\\ud83d") leaves a lone surrogate in a str; every tokenizer
    refused the whole batch with a TypeError. It reads as U+FFFD, one character for one, so
    offsets still point into the text as given."""
    from diffmask_fast.tokenization import tokenize_texts
    from diffmask_fast.vocabulary import tokenizer_word_types

    _, tokenizer = named_tokenizer
    broken, repaired = "the receptor \ud83d binds", "the receptor \ufffd binds"
    assert tokenize_texts(tokenizer, [broken, "x"])["input_ids"] == tokenize_texts(tokenizer, [repaired, "x"])["input_ids"]
    assert tokenizer_word_types(tokenizer, [broken]) == tokenizer_word_types(tokenizer, [repaired])
    if getattr(tokenizer, "is_fast", False):
        spans = tokenize_texts(tokenizer, [broken], return_offsets_mapping=True)["offset_mapping"][0]
        assert spans == tokenize_texts(tokenizer, [repaired], return_offsets_mapping=True)["offset_mapping"][0]


@pytest.mark.parametrize("name", ["roberta_byte_bpe", "sentencepiece_unigram", "bert_wordpiece"])
def test_an_added_token_that_takes_the_space_before_it_starts_a_word(request, name):
    """An added token with ``lstrip=True`` swallows the space before it, so no "Ġ" / "▁" marks
    the word it starts: "the kinasex" must not read as one word "thekinasex"."""
    from tokenizers import AddedToken

    tokenizer = copy.deepcopy(request.getfixturevalue(name))
    tokenizer.add_tokens([AddedToken("kinasex", lstrip=True)])
    assert grouped_words(tokenizer, "the kinasex binds") == ["the", "kinasex", "binds"]
    ids = tokenizer("the kinasex binds")["input_ids"]
    never = word_boundaries(tokenizer).never_word[ids].tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert reference.word_starts(tokens, never, word_boundaries(tokenizer).scheme, {"kinasex"}) == \
        table_word_starts(ids, word_boundaries(tokenizer))


@pytest.mark.filterwarnings("ignore:.*matched inside longer words too")  # "nanomolar": not single_word
def test_an_added_token_the_tokenizer_drops_the_space_before_starts_a_word(sentencepiece_unigram):
    """transformers builds XLM-R's, ALBERT's and T5's tokenizers with a whitespace split before
    Metaspace: the space before an added token is dropped, not kept in a bare "▁", so "the
    kinase" was "▁the", "kinase", read (decoded, scored, masked) as one word "thekinase"."""
    from tokenizers import AddedToken, pre_tokenizers

    tokenizer = copy.deepcopy(sentencepiece_unigram)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    tokenizer.add_tokens([AddedToken("kinase", single_word=True), "nanomolar", AddedToken("<ent>", special=True)])
    text = "the kinase binds with nanomolar affinity"
    tokens = tokenizer.tokenize(text)
    assert tokens[:2] == ["\u2581the", "kinase"] and "nanomolar" in tokens, "the premise: no bare marker between"
    assert grouped_words(tokenizer, text) == text.split()
    boundaries = word_boundaries(tokenizer)
    ids = tokenizer(text)["input_ids"]
    never = boundaries.never_word[ids].tolist()
    assert reference.word_starts(tokenizer.convert_ids_to_tokens(ids), never, boundaries.scheme,
                                 {"kinase", "nanomolar"}) == table_word_starts(ids, boundaries)
    assert not boundaries.starts_word[tokenizer.convert_tokens_to_ids("<ent>")], "special tokens start no word"
    # Where the space is kept in a bare marker, the added token starts a word by the marker's token.
    kept = copy.deepcopy(sentencepiece_unigram)
    kept.add_tokens([AddedToken("kinase", single_word=True)])
    assert "\u2581" in kept.tokenize(text)[:3] and grouped_words(kept, text) == text.split()


def test_an_added_token_of_newlines_is_no_word():
    from tokenizers import AddedToken

    tokenizer = tokenizers_offline.roberta_byte_bpe()
    tokenizer.add_tokens(["\n\n"])
    assert bool(word_boundaries(tokenizer).never_word[tokenizer.convert_tokens_to_ids("\n\n")])
    # In WordPiece too, where it was a word of no text: masked, and drawn as a random replacement.
    for scheme in ("wordpiece", "token"):
        wordpiece = tokenizers_offline.bert_wordpiece()
        wordpiece.add_tokens([AddedToken("\n", normalized=False), AddedToken("\t\t", normalized=False)])
        boundaries = word_boundaries(wordpiece, scheme)
        for blank in ("\n", "\t\t"):
            token_id = wordpiece.convert_tokens_to_ids(blank)
            assert boundaries.never_word[token_id] and not boundaries.starts_word[token_id], (scheme, blank)
            assert token_id not in boundaries.random_token_ids.tolist()
    assert "\n" in wordpiece.tokenize("the enzyme\nbinds"), "the premise: the line break is a token"
    assert grouped_words(wordpiece, "the enzyme\nbinds") == ["the", "enzyme", "binds"]


def test_a_named_scheme_that_contradicts_the_detected_one_is_warned_of(bert_wordpiece, roberta_byte_bpe):
    """demo --word-boundary byte_bpe on a WordPiece model masked whole sentences as one word, silently."""
    import warnings

    from diffmask_fast import RandomWordCollator
    from diffmask_fast.advice import DiffmaskWarning
    from diffmask_fast.vocabulary import tokenizer_words

    with pytest.warns(DiffmaskWarning, match="'byte_bpe' were named for .*mark words as 'wordpiece' does"):
        word_boundaries(bert_wordpiece, "byte_bpe")
    with pytest.warns(DiffmaskWarning, match="'wordpiece' were named for .*Leave word_boundary out to use 'byte_bpe'"):
        tokenizer_words(roberta_byte_bpe, "the enzyme binds", scheme="wordpiece")
    with pytest.warns(DiffmaskWarning, match="'sentencepiece' were named for"):
        RandomWordCollator(bert_wordpiece, word_boundary="sentencepiece")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        word_boundaries(bert_wordpiece, "wordpiece")  # the detected one
        word_boundaries(roberta_byte_bpe, "token")  # every token a word: sub-word masking on purpose
        word_boundaries(tokenizers_offline.end_of_word_bpe(), "wordpiece")  # nothing detected to contradict


def test_added_tokens_matched_inside_words_are_warned_of_and_whole_word_ones_are_not():
    """transformers cuts "prozymogenase" into "pro" and an added "zymogenase": two words to mask."""
    from tokenizers import AddedToken

    tokenizer = tokenizers_offline.bert_wordpiece()
    tokenizer.add_tokens(["zymogenase", "<ent>"])
    assert tokenizer.tokenize("prozymogenase") == ["pro", "zymogenase"]
    warning = (r"has 1 added token matched inside longer words too \(e.g. 'zymogenase'\): 'prozymogenase' is "
               r"tokenized as 'pro' and 'zymogenase'.*single_word=True")
    with pytest.warns(DiffmaskWarning, match=warning):
        word_boundaries(tokenizer)
    whole = tokenizers_offline.bert_wordpiece()
    whole.add_tokens([AddedToken("zymogenase", single_word=True), AddedToken("<x>", special=True)])
    assert whole.tokenize("prozymogenase")[0] == "pro" and "zymogenase" not in whole.tokenize("prozymogenase")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        word_boundaries(whole)
        for family in (tokenizers_offline.bert_wordpiece, tokenizers_offline.roberta_byte_bpe,
                       tokenizers_offline.sentencepiece_unigram):
            word_boundaries(family())


def test_added_tokens_that_take_the_next_space_are_warned_of_where_they_glue_the_next_word():
    """An rstrip token leaves a byte-level BPE's next word without its "Ġ", so the two read as one
    word; WordPiece and a Metaspace that prepends "▁" to every piece keep them apart."""
    from tokenizers import AddedToken

    from diffmask_fast.vocabulary import tokenizer_words

    glued = tokenizers_offline.roberta_byte_bpe()
    glued.add_tokens([AddedToken("zymogenase", single_word=True, rstrip=True)])
    with pytest.warns(DiffmaskWarning, match=r"has 1 added token with rstrip=True \(e.g. 'zymogenase'\).*"
                                             r"'zymogenase word' is masked and scored as one word"):
        assert tokenizer_words(glued, "the zymogenase binds") == ["the", "zymogenasebinds"]
    for family in (tokenizers_offline.roberta_byte_bpe, tokenizers_offline.bert_wordpiece,
                   tokenizers_offline.sentencepiece_unigram):
        for rstrip in (False, True):
            tokenizer = family()
            tokenizer.add_tokens([AddedToken("zymogenase", single_word=True, rstrip=rstrip)])
            if rstrip and family is tokenizers_offline.roberta_byte_bpe:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert tokenizer_words(tokenizer, "the zymogenase binds") == ["the", "zymogenase", "binds"]
    spacing = tokenizers_offline.roberta_byte_bpe()  # a whitespace token taking the space after it
    spacing.add_tokens([AddedToken("\n\n", rstrip=True, normalized=False), AddedToken("\t\t", rstrip=True)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tokenizer_words(spacing, "kinase\n\n binds\t\t the") == ["kinase", "binds", "the"]


def test_pieces_across_a_space_are_warned_of():
    """A Metaspace pre-tokenizer that does not split lets a piece hold "s▁the": the end of one word
    and the start of the next, grouped as one word."""
    from tokenizers import decoders

    pieces = [("<unk>", 0.0), ("<mask>", 0.0), ("▁the", -1.0), ("▁enzyme", -2.0), ("s▁the", -1.5), ("s", -3.0),
              ("▁", -4.0)] + [(ch, -5.0) for ch in "abcdefghijklmnopqrstuvwxyz"]
    backend = Tokenizer(models.Unigram(pieces, unk_id=0))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(split=False)
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", mask_token="<mask>")
    assert "s▁the" in tokenizer.tokenize("enzymes the")
    with pytest.warns(DiffmaskWarning, match=r"has 1 token holding text of several words \(e.g. 's▁the'\): its "
                                             "pre-tokenizer does not split at spaces"):
        word_boundaries(tokenizer, "sentencepiece")


def test_a_metaspace_with_another_space_marker_is_refused_not_read_as_one_word():
    """Its pieces carry "_", not "▁": it was taken for SentencePiece, found no word start, and
    every sequence became one word, masked whole or not at all."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="_")
    backend.decoder = decoders.Metaspace(replacement="_")
    lines = ["the enzyme binds the receptor", "kinase inhibitors include gefitinib"] * 20
    backend.train_from_iterator(lines, trainers.UnigramTrainer(vocab_size=60, special_tokens=["<unk>", "<mask>"],
                                                               unk_token="<unk>", show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", mask_token="<mask>")
    assert any(token.startswith("_") for token in tokenizer.convert_ids_to_tokens(tokenizer("the enzyme")["input_ids"]))
    with pytest.raises(UnknownWordBoundaries, match="pass scheme= explicitly"):
        detect_word_boundary_scheme(tokenizer)


@pytest.mark.parametrize("build, decoder", [(tokenizers_offline.bert_wordpiece, "WordPiece()"),
                                            (tokenizers_offline.roberta_byte_bpe, "ByteLevel()"),
                                            (tokenizers_offline.sentencepiece_unigram, "Metaspace()")])
def test_a_tokenizer_without_a_decoder_is_named(build, decoder):
    """A tokenizer trained with `tokenizers` and saved without a decoder decodes a word as its
    tokens joined by spaces ("Ġkin ase"): the word types scored and looked up were junk."""
    tokenizer = copy.deepcopy(build())
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffmaskWarning)
        word_boundaries(tokenizer)
    tokenizer.backend_tokenizer.decoder = None
    with pytest.warns(DiffmaskWarning, match=r"has no decoder \(backend_tokenizer\.decoder is None\).* "
                                             f"tokenizers\\.decoders\\.{re.escape(decoder)}"):
        word_boundaries(tokenizer)


def test_a_python_sentencepiece_tokenizer_decodes_byte_pieces_into_characters(tmp_path):
    """A character its pieces lack is byte pieces ("<0xC3><0xAF>"); the Python tokenizer's
    convert_tokens_to_string spelled them out, so "naïve" was the word "na<0xC3><0xAF>ve" and
    never met its counted form."""
    import sentencepiece
    from transformers import BertGenerationTokenizer

    from diffmask_fast.vocabulary import tokenizer_word_types, tokenizer_words

    (tmp_path / "train.txt").write_text("\n".join(tokenizers_offline.training_lines()), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(input=str(tmp_path / "train.txt"), model_prefix=str(tmp_path / "sp"),
                                             vocab_size=800, byte_fallback=True, minloglevel=3)
    tokenizer = BertGenerationTokenizer(str(tmp_path / "sp.model"))
    assert not getattr(tokenizer, "is_fast", False)
    text = "the naïve enzyme 東京 😀"
    assert "<0xC3>" in tokenizer.tokenize(text)
    assert tokenizer_words(tokenizer, text) == ["the", "naïve", "enzyme", "東京", "😀"]
    assert tokenizer_word_types(tokenizer, [text]) == {"the", "naïve", "enzyme", "東京", "😀"}


# -- rules the other tests let change -----------------------------------------------------------


def test_an_end_of_word_suffix_bpe_behind_a_byte_level_pre_tokenizer_is_no_byte_bpe():
    """A CLIP-style BPE marks the end of words ("</w>"), not the start ("Ġ"): read as byte-level
    BPE, a whole sequence would be one word."""
    from tokenizers import decoders

    vocab = {"<pad>": 0, "<unk>": 1, "<mask>": 2, "a": 3, "b</w>": 4, "ab</w>": 5, "c</w>": 6}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", end_of_word_suffix="</w>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.BPEDecoder(suffix="</w>")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        mask_token="<mask>")
    with pytest.raises(UnknownWordBoundaries):
        detect_word_boundary_scheme(tokenizer)


def test_a_vocabulary_whose_markers_are_close_names_no_scheme():
    """4 tokens begin with "##" and 3 with "▁": no marker leads by the margin that tells a scheme."""
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<mask>", *"abcdefghij", "##x", "##y", "##z", "##w",
                                         "\u2581p", "\u2581q", "\u2581r"])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        mask_token="<mask>")
    with pytest.raises(UnknownWordBoundaries):
        detect_word_boundary_scheme(tokenizer)


def test_an_added_special_token_is_no_word_and_no_random_replacement():
    """A token added with special=True (an entity marker) is not in all_special_ids, yet no word."""
    from tokenizers import AddedToken

    from diffmask_fast.tokenization import WordGrouper

    tokenizer = tokenizers_offline.bert_wordpiece()
    tokenizer.add_tokens([AddedToken("[ENT]", special=True)])
    marker = tokenizer.convert_tokens_to_ids("[ENT]")
    boundaries = word_boundaries(tokenizer)
    assert bool(boundaries.never_word[marker]) and marker not in boundaries.random_token_ids.tolist()
    ids = tokenizer("the [ENT] enzyme", add_special_tokens=False)["input_ids"]
    assert ids[1] == marker and WordGrouper.for_tokenizer(tokenizer)(ids) == [[0], [2, *range(3, len(ids))]]


def test_tokens_added_after_a_first_decode_are_decoded_as_written():
    """The garbled-added-token table was kept from before tokens were added: "café" read "caf�"."""
    tokenizer = tokenizers_offline.roberta_byte_bpe()
    assert decode_words(tokenizer, [tokenizer("kinase", add_special_tokens=False)["input_ids"]]) == ["kinase"]
    tokenizer.add_tokens(["café", "µM"])
    added = [tokenizer.convert_tokens_to_ids(token) for token in ("café", "µM")]
    assert decode_words(tokenizer, [[token] for token in added]) == ["café", "µM"]


def test_truncating_on_the_right_puts_the_side_back(bert_wordpiece):
    tokenizer = copy.deepcopy(bert_wordpiece)
    tokenizer.truncation_side = "left"
    with tokenization.truncating_on_the_right(tokenizer):
        assert tokenizer.truncation_side == "right"
    assert tokenizer.truncation_side == "left"
    with pytest.raises(KeyError), tokenization.truncating_on_the_right(tokenizer):
        raise KeyError("inside")
    assert tokenizer.truncation_side == "left", "put back after an error too"


def test_a_grouper_refuses_the_id_one_past_the_vocabulary(bert_wordpiece):
    from diffmask_fast.tokenization import WordGrouper

    grouper = WordGrouper.for_tokenizer(bert_wordpiece)
    size = len(word_boundaries(bert_wordpiece).never_word)
    for ids in ([size], [2, size - 1, size]):
        with pytest.raises(ValueError, match=rf"token ids must be in \[0, {size}\)"):
            grouper(ids)
        with pytest.raises(ValueError, match=rf"token ids must be in \[0, {size}\)"):
            grouper.breaks(ids)
