"""Corpus text that spells a special token ("[SEP]", "<mask>") is read as text everywhere this
library tokenizes: it never becomes a separator or an unlabeled mask mid-sequence."""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from diffmask_fast.collator import DifferenceMaskingCollator
from diffmask_fast.contextual import find_occurrences
from diffmask_fast.embedding import WordEmbedder
from diffmask_fast.finetune import _Encoded
from diffmask_fast.masker import DifferenceMasker
from diffmask_fast.pretrain_data import special_wrapping, tokenize_documents
from diffmask_fast.preview import preview
from diffmask_fast.scoring import ScoreTable
from diffmask_fast.tokenization import tokenize_texts
from diffmask_fast.vocabulary import tokenizer_word_types, tokenizer_words

#: One tokenizer of each kind: WordPiece, byte-level BPE, and a SentencePiece-style Unigram
#: whose special tokens are pieces of the model too (XLM-R).
TOKENIZERS = ["bert_wordpiece", "roberta_byte_bpe", "sentencepiece_unigram", "minilm_tokenizer"]
FILLERS = ["the", "protein", "binds", "a", "receptor", "of", "cells", "in", "mice"]


def special_spellings(tokenizer) -> list[str]:
    return sorted({t for t in tokenizer.all_special_tokens if t})


def spelled_text(tokenizer, rng: random.Random) -> str:
    """Filler words with every special token's spelling put in at random places, some glued to
    a neighbouring word."""
    words = [rng.choice(FILLERS) for _ in range(12)]
    for spelling in special_spellings(tokenizer):
        at = rng.randrange(len(words) + 1)
        if rng.random() < 0.3 and at < len(words):
            words[at] = words[at] + spelling
        else:
            words.insert(at, spelling)
    return " ".join(words)


def special_ids(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids)


def without_whitespace(text: str) -> str:
    return "".join(text.split())


@pytest.fixture(params=TOKENIZERS)
def tokenizer(request):
    return request.getfixturevalue(request.param)


def test_tokenized_text_holds_no_special_token(tokenizer, seed):
    rng = random.Random(seed)
    texts = [spelled_text(tokenizer, rng) for _ in range(5)]
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = False
    for ids in tokenize_texts(tokenizer, texts, add_special_tokens=False)["input_ids"]:
        assert not special_ids(tokenizer) & set(ids)
    before, after = special_wrapping(tokenizer)
    for ids in tokenize_texts(tokenizer, texts, add_special_tokens=True)["input_ids"]:
        inner = ids[len(before):len(ids) - len(after)]
        assert ids[:len(before)] == before and ids[len(ids) - len(after):] == after
        assert not special_ids(tokenizer) & set(inner)
    assert backend.encode_special_tokens is False, "the backend's switch is put back"
    plain = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert special_ids(tokenizer) & set(plain), "the tokenizer's own call is untouched"


def test_the_backend_keeps_its_truncation_and_padding(tokenizer):
    """A call that truncates or pads leaves a fast tokenizer's backend doing so: the embedder's
    truncating call cut the user's later backend encodings to its max_length."""
    import copy

    tokenizer = copy.deepcopy(tokenizer)
    backend = tokenizer.backend_tokenizer
    text = " ".join(["kinase"] * 40)
    for truncation, padding in [(None, None), ({"max_length": 200}, {"length": 64})]:
        backend.no_truncation() if truncation is None else backend.enable_truncation(**truncation)
        backend.no_padding() if padding is None else backend.enable_padding(**padding)
        before = backend.truncation, backend.padding
        tokenize_texts(tokenizer, [text, "a"], truncation=True, max_length=5, padding=True)
        assert (backend.truncation, backend.padding) == before
        assert len(backend.encode(text).ids) > 5


def test_words_keep_every_character_of_spelled_special_tokens(tokenizer, seed):
    rng = random.Random(seed)
    text = spelled_text(tokenizer, rng)
    expected = without_whitespace(text)
    if tokenizer.backend_tokenizer.normalizer is not None:  # the uncased BERTs lowercase
        expected = tokenizer.backend_tokenizer.normalizer.normalize_str(expected)
    assert "".join(tokenizer_words(tokenizer, text)) == expected
    assert "mask" in tokenizer_word_types(tokenizer, [f"see {tokenizer.mask_token} here"])


def test_pretraining_windows_hold_special_tokens_only_around_the_text(tokenizer, seed):
    rng = random.Random(seed)
    documents = [" ".join(spelled_text(tokenizer, rng) for _ in range(rng.randint(1, 6))) for _ in range(6)]
    before, after = special_wrapping(tokenizer)
    windows = tokenize_documents(tokenizer, documents, max_length=rng.randint(16, 64), progress=False)
    assert windows
    for ids in windows:
        assert ids[:len(before)] == before and ids[len(ids) - len(after):] == after
        assert not special_ids(tokenizer) & set(ids[len(before):len(ids) - len(after)])


def test_preview_and_warm_read_spelled_special_tokens_as_words(tokenizer):
    text = f"the {tokenizer.mask_token} binds {tokenizer.sep_token or tokenizer.eos_token} here"
    collator = DifferenceMaskingCollator(tokenizer, ScoreTable.from_mapping({"binds": 1.0}), seed=0)
    shown = preview(collator, [text])[0]
    assert without_whitespace("".join(word.text for word in shown)).lower() == without_whitespace(text).lower()
    masker = DifferenceMasker(tokenizer, ScoreTable.from_mapping({}), seed=0)
    learned = masker.warm([text])
    plain = DifferenceMasker(tokenizer, ScoreTable.from_mapping({}), seed=0).warm(["the mask binds sep here"])
    assert learned >= plain, "the spelled tokens' words are learned, as other words are"


def test_contextual_occurrences_are_found_inside_spelled_special_tokens(bert_wordpiece):
    text = "the [MASK] binds here"
    found = find_occurrences(bert_wordpiece, [text], ["mask"], max_per_anchor=5)
    assert len(found[0]) == 1
    _, start, end = found[0][0]
    ids = tokenize_texts(bert_wordpiece, [text], add_special_tokens=True)["input_ids"][0]
    assert bert_wordpiece.decode(ids[start:end]) == "mask"


def test_finetune_examples_read_spelled_special_tokens_as_text(tokenizer, seed):
    rng = random.Random(seed)
    texts = [spelled_text(tokenizer, rng) for _ in range(4)]
    before, after = special_wrapping(tokenizer)
    for row in _Encoded(tokenizer, texts, [0, 1, 0, 1], max_length=512).rows:
        ids = row["input_ids"]
        assert not special_ids(tokenizer) & set(ids[len(before):len(ids) - len(after)])


@pytest.mark.parametrize("pooling", ["mean", "input_embeddings"])
def test_a_word_spelling_a_special_token_is_embedded_as_text(minilm_tokenizer, pooling):
    """The uncased MiniLM tokenizer reads "[MASK]" and "[mask]" alike once both are text."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32)
    model = BertModel(config).eval()
    words = ["[MASK]", "[mask]", "x[SEP]", "x[sep]"]
    for backend in (True, False):
        embedder = WordEmbedder(model, minilm_tokenizer, pooling=pooling, progress=False)
        if not backend:
            embedder._backend = False  # the tokenizer's own call, as for a tokenizer without a backend
        vectors = embedder.embed(words)
        torch.testing.assert_close(vectors[0], vectors[1])
        torch.testing.assert_close(vectors[2], vectors[3])


def xlmr_style_unigram(characters: str = "<>/abdeikmnpstu") -> PreTrainedTokenizerFast:
    """A tiny Unigram tokenizer laid out as XLM-R's: <s>=0 <pad>=1 </s>=2 <unk>=3 are pieces of the
    model (scored 0, above every other piece), as is <mask>, last; ``characters`` are the single
    characters it has pieces for."""
    words = ["\u2581the", "\u2581binds", "\u2581a", "\u2581mask", "\u2581pad", "\u2581unk", "\u2581", *characters]
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(piece, -2.0 - len(piece) ** -1) for piece in dict.fromkeys(words)] + [("<mask>", 0.0)]
    backend = Tokenizer(models.Unigram(pieces, 3, False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True, special=True)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


@pytest.mark.parametrize("text", ["<s>", "the </s> binds", "a<pad>", "kin<unk>a", "<s></s>", "the <mask> binds <mask>"])
def test_spelled_special_pieces_of_a_unigram_model_are_text(text):
    """A Unigram model matches "<s>" in text as it matches any of its pieces, which reading special
    tokens as text (split_special_tokens) does not stop: it only keeps the added tokens from matching."""
    tokenizer = xlmr_style_unigram()
    saved = tokenizer.backend_tokenizer.to_str()
    ids = tokenize_texts(tokenizer, [text], add_special_tokens=False)["input_ids"][0]
    assert tokenizer.backend_tokenizer.to_str() == saved, "the backend keeps its own model"
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert not special_ids(tokenizer) & set(ids), tokens
    assert without_whitespace(tokenizer.convert_tokens_to_string(tokens)) == without_whitespace(text)
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert special_ids(tokenizer) & set(plain), "the tokenizer's own call is untouched"
    assert tokenize_texts(tokenizer, ["the binds a"])["input_ids"] == tokenizer(["the binds a"])["input_ids"]


def test_spelled_special_pieces_of_unknown_characters_are_the_unknown_token():
    """Characters without pieces come out as one unknown token, which the model names by their text:
    "<pad>" spelled in characters it has no pieces for was the padding token."""
    tokenizer = xlmr_style_unigram(characters="abdeikmnstu")
    ids = tokenize_texts(tokenizer, ["<pad> <s>"], add_special_tokens=False)["input_ids"][0]
    assert not special_ids(tokenizer) - {tokenizer.unk_token_id} & set(ids), tokenizer.convert_ids_to_tokens(ids)


def test_the_embedder_reads_spelled_special_pieces_as_text(sentencepiece_unigram):
    """The embedder's own copy of the tokenizer reads them as the tokenizer's call does."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=len(sentencepiece_unigram), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32)
    embedder = WordEmbedder(BertModel(config).eval(), sentencepiece_unigram, progress=False)
    words = ["kinase", "<s>", "x</s>", "<pad>y", "<unk>", "<mask>"] * 20
    encoded = embedder._encode(words, add_special_tokens=False)
    assert embedder._backend, "the copy is used"
    assert encoded == tokenize_texts(sentencepiece_unigram, words, add_special_tokens=False)["input_ids"]
    assert not special_ids(sentencepiece_unigram) & {i for ids in encoded for i in ids}


def test_a_piece_made_special_after_a_first_call_is_read_as_text():
    """The model reading text is made once per tokenizer and made again when its special tokens
    change: a piece of the Unigram model added as a special token later (an entity marker the
    vocabulary held) is then spelled out too, never read in text as the special token."""
    tokenizer = xlmr_style_unigram()
    marker = tokenizer.convert_tokens_to_ids("\u2581pad")
    assert tokenize_texts(tokenizer, ["the pad binds"], add_special_tokens=False)["input_ids"][0][1] == marker
    tokenizer.add_special_tokens({"additional_special_tokens": ["\u2581pad"]})
    assert marker in special_ids(tokenizer)
    ids = tokenize_texts(tokenizer, ["the pad binds"], add_special_tokens=False)["input_ids"][0]
    assert marker not in ids, tokenizer.convert_ids_to_tokens(ids)
    assert without_whitespace(tokenizer.decode(ids)) == "thepadbinds"


def test_the_noncharacter_marking_special_pieces_is_read_as_broken_text():
    """The special pieces are spelled with U+FFFF in front; damaged text holding that character
    before "<s>" matched them again."""
    tokenizer = xlmr_style_unigram()
    text = "a \uffff<s> b \uffff</s> c \uffff<pad>"
    ids = tokenize_texts(tokenizer, [text], add_special_tokens=False)["input_ids"][0]
    assert not special_ids(tokenizer) - {tokenizer.unk_token_id} & set(ids), tokenizer.convert_ids_to_tokens(ids)
    assert tokenize_texts(tokenizer, [text])["input_ids"] == tokenize_texts(
        tokenizer, [text.replace("\uffff", "\ufffd")])["input_ids"], "read as U+FFFD, one for one"


def test_threads_sharing_a_tokenizer_leave_its_backend_as_it_was():
    """tokenize_texts changes the backend (its special-token switch and, for a Unigram model, the
    model) and puts it back: threads sharing the tokenizer put back each other's changes as the
    originals, and the tokenizer then saved a model without "<s>"."""
    import threading

    tokenizer = xlmr_style_unigram()
    saved = tokenizer.backend_tokenizer.to_str()
    texts = ["the <s> binds a receptor " * 10] * 32
    problems = []

    def work():
        for _ in range(60):
            ids = tokenize_texts(tokenizer, texts, add_special_tokens=False)["input_ids"]
            if special_ids(tokenizer) - {tokenizer.unk_token_id} & {i for row in ids for i in row}:
                problems.append("a special token read in text")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not problems, problems[:1]
    assert tokenizer.backend_tokenizer.to_str() == saved
    assert tokenizer.backend_tokenizer.encode_special_tokens is False


def test_a_python_tokenizer_that_reads_special_text_as_special_is_warned_of_once(tmp_path):
    """Python tokenizers (ProphetNet's, BERT's legacy one) keep "[SEP]" whole whatever
    split_special_tokens says: the words left the counts and a spelled "[MASK]" became an
    unlabeled mask, with no word said."""
    import warnings

    from transformers import BertTokenizerLegacy, ProphetNetTokenizer

    from diffmask_fast import DiffmaskWarning

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[SEP]", "[X_SEP]", "[CLS]", "[MASK]", "the",
                                                   "token", "[", "]", "sep", "mask"]) + "\n")
    for tokenizer in (ProphetNetTokenizer(str(tmp_path / "vocab.txt")),
                      BertTokenizerLegacy(vocab_file=str(tmp_path / "vocab.txt"))):
        with pytest.warns(DiffmaskWarning, match=rf"{type(tokenizer).__name__} \(a Python tokenizer\) reads .*"
                                                 r"'\[SEP\]'.* in the text as its special tokens: "
                                                 r".*Use a fast tokenizer"):
            read = tokenize_texts(tokenizer, ["the [SEP] token"], add_special_tokens=False)["input_ids"][0]
        assert tokenizer.sep_token_id in read  # what the warning says
        with warnings.catch_warnings():
            warnings.simplefilter("error", DiffmaskWarning)
            tokenize_texts(tokenizer, ["the [SEP] token"], add_special_tokens=False)  # once per tokenizer
