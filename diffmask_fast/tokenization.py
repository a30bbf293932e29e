"""Word boundaries from plain token ids (README, "Choices": Words).

``Trainer`` hands the collator nothing but ``input_ids``, so whether a token begins a word must be
known from its id alone. The three sub-word families mark words differently:

* ``wordpiece`` (BERT): continuation pieces carry a prefix ("##ing"); every other piece starts a word.
* ``byte_bpe`` (GPT-2, RoBERTa): the space before a word is folded into its first piece ("Ġword").
* ``sentencepiece`` (ALBERT, XLM-R, T5; Unigram or BPE): the same with "▁" ("▁word").

In both marker schemes a token that stands for whitespace alone (byte-level "Ċ" or "Âł", the
no-break space; a lone "▁") is no word, and a token whose text opens with whitespace and goes on
("ĉword" of tab + word) starts one. "Whitespace" is what ``str.split()`` splits on, so the words
grouped here are the words counting finds, with one exception: a token that ends in whitespace
after other text (".Ċ" under cl100k-style rules, which GPT-2-style tokenizers such as RoBERTa's
never make) does not end its word, since the tables say how a token starts, not how the one
before it ended. Byte-level tokens are read through the byte alphabet
and UTF-8; a piece of a multi-byte character cannot be judged and is read by its marker alone.
A lone "▁" before a continuation ("▁", "s", "pa", "ces") is no word either (one table per id
cannot see what follows it): the next token starts the word, whose text is the same, and the
"▁" stays unmasked beside it as a lone "Ġ" does. Otherwise it would be a word of no text
wherever a special token, another "▁"-token or the end of the sequence followed.

A word-level tokenizer has no sub-words: under the ``token`` scheme every token is a word.

``word_boundaries`` turns that into per-id lookup tables. Two rules depend on context and are
left to the masking ops: the first token of a sequence and the token after a special token (or
padding) always start a word, which is how RoBERTa's first word, lacking "Ġ", is caught.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from ._display import counted
from .advice import DiffmaskWarning
from .reference import TOKEN_SCHEME, WORD_BOUNDARY_MARKERS, WORD_BOUNDARY_SCHEMES

SCHEMES = WORD_BOUNDARY_SCHEMES

_WORDPIECE_PREFIX = WORD_BOUNDARY_MARKERS["wordpiece"]
_BYTE_LEVEL_SPACE = WORD_BOUNDARY_MARKERS["byte_bpe"]
_METASPACE = WORD_BOUNDARY_MARKERS["sentencepiece"]
#: How byte-level BPE writes the whitespace bytes (tab, newline, vertical tab, form feed, carriage
#: return, space): byte b below 0x21 becomes chr(0x100 + b).
_BYTE_LEVEL_WHITESPACE = frozenset(chr(0x100 + byte) for byte in b"\t\n\x0b\x0c\r ")
#: A SentencePiece byte-fallback piece: "<0x0A>" stands for byte 0x0A.
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")

#: A vocabulary-based guess needs at least this share of tokens carrying the winning marker...
_MIN_MARKER_SHARE = 0.05
#: ...and that share must be this many times the runner-up's.
_MIN_MARKER_MARGIN = 3.0


class UnknownWordBoundaries(ValueError):
    """The tokenizer's way of marking words could not be detected. The advice names the parameter
    the caller takes the scheme by (``scheme`` here; see ``naming_word_boundary``)."""

    def __init__(self, tokenizer_name: str, detail: str, parameter: str = "scheme"):
        self.tokenizer_name, self.detail, self.parameter = tokenizer_name, detail, parameter
        super().__init__(f"cannot tell how {tokenizer_name} marks word boundaries ({detail}); "
                         f"pass {parameter}= explicitly, one of {', '.join(repr(s) for s in SCHEMES)}")

    def __reduce__(self):  # the default pickles only the message, which __init__ does not take
        return type(self), (self.tokenizer_name, self.detail, self.parameter)


@contextlib.contextmanager
def naming_word_boundary(parameter: str = "word_boundary"):
    """Within it, undetectable word boundaries advise passing ``parameter=``: the name under which
    the caller (a collator, a strategy) takes the scheme it hands on as ``scheme``."""
    try:
        yield
    except UnknownWordBoundaries as error:
        if error.parameter == parameter:
            raise
        raise UnknownWordBoundaries(error.tokenizer_name, error.detail, parameter) from None


def _unknown_scheme(tokenizer, detail: str) -> ValueError:
    return UnknownWordBoundaries(type(tokenizer).__name__, detail)


def _scheme_for(tokenizer, scheme: str | None) -> str:
    """``scheme``, or the one detected. One given that contradicts a detected one is warned of: it
    groups text into pieces of words, or whole sentences into one word. ``token`` (every token a
    word) is no contradiction: it masks sub-word tokens on purpose."""
    if scheme is None:
        return detect_word_boundary_scheme(tokenizer)
    _check_scheme(scheme)
    if scheme != TOKEN_SCHEME:
        try:
            detected = detect_word_boundary_scheme(tokenizer)
        except UnknownWordBoundaries:
            return scheme  # what naming the scheme is for
        if detected != scheme:
            warnings.warn(f"word boundaries {scheme!r} were named for {type(tokenizer).__name__}, whose tokens mark "
                          f"words as {detected!r} does: its text will be grouped into pieces of words or runs of "
                          f"several words. Leave word_boundary out to use {detected!r}", DiffmaskWarning, stacklevel=3)
    return scheme


def _check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown word-boundary scheme {scheme!r}; expected one of {', '.join(repr(s) for s in SCHEMES)}")
    return scheme


def _components(component) -> list[dict]:
    """Every node of a normalizer / pre-tokenizer / decoder, ``Sequence`` containers flattened."""
    if component is None:
        return []
    try:
        state = json.loads(component.__getstate__())
    except Exception:  # not a `tokenizers` component we can introspect
        return []
    nodes: list[dict] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if "type" in node:
                nodes.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(state)
    return nodes


def _vocabulary_tokens(tokenizer) -> list[str]:
    """Token strings of the tokenizer's vocabulary, in no particular order."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is not None:
        try:
            return list(get_vocab())
        except (NotImplementedError, AttributeError, TypeError):
            pass
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return [token for token in tokens if isinstance(token, str)]


def _scheme_from_vocabulary(tokenizer) -> str | None:
    """The scheme whose marker starts clearly more tokens than the others', if any."""
    tokens = _vocabulary_tokens(tokenizer)
    if not tokens:
        return None
    counts = {
        "wordpiece": sum(1 for t in tokens if t.startswith(_WORDPIECE_PREFIX)),
        "byte_bpe": sum(1 for t in tokens if t.startswith(_BYTE_LEVEL_SPACE)),
        "sentencepiece": sum(1 for t in tokens if t.startswith(_METASPACE)),
    }
    ranked = sorted(counts, key=counts.get, reverse=True)
    best, runner_up = counts[ranked[0]], counts[ranked[1]]
    if best >= _MIN_MARKER_SHARE * len(tokens) and best >= _MIN_MARKER_MARGIN * runner_up:
        return ranked[0]
    return None


def _scheme_from_backend(backend) -> str | None:
    """The scheme of a `tokenizers.Tokenizer`, from its model and pipeline; None if unclear."""
    model = backend.model
    kind = type(model).__name__
    pre_tokenizer = _components(backend.pre_tokenizer)
    normalizer = _components(backend.normalizer)
    decoder = _components(backend.decoder)
    byte_level = any(node["type"] == "ByteLevel" for node in pre_tokenizer)
    if any(node["type"] == "Metaspace" and node.get("replacement", _METASPACE) != _METASPACE
           for node in pre_tokenizer + decoder):
        return None  # spaces marked by another character than "▁", which the tables look for
    metaspace = (
        any(node["type"] == "Metaspace" for node in pre_tokenizer + decoder)
        # Llama-style: the normalizer writes "▁" for spaces and prepends one.
        or any(node["type"] == "Replace" and node.get("content") == _METASPACE for node in normalizer)
        or any(node["type"] == "Prepend" and node.get("prepend") == _METASPACE for node in normalizer)
    )
    if kind == "WordPiece":
        return "wordpiece"
    if kind == "BPE":
        if getattr(model, "end_of_word_suffix", None):
            return None  # marks word ends ("</w>"), which none of the schemes describes
        if getattr(model, "continuing_subword_prefix", None):
            return "wordpiece"  # BPE trained with WordPiece-style continuation prefixes
        if byte_level:
            return "byte_bpe"
        if metaspace:
            return "sentencepiece"
        return None
    if kind == "Unigram":
        if metaspace:
            return "sentencepiece"
        return "byte_bpe" if byte_level else None  # no marker in the pipeline: the vocabulary decides
    return None


def detect_word_boundary_scheme(tokenizer) -> str:
    """``"wordpiece"``, ``"byte_bpe"``, ``"sentencepiece"`` or ``"token"``: how ``tokenizer``
    marks words.

    A fast tokenizer is judged by its backend: a WordLevel model is ``token`` (every token is a
    whole word); a WordPiece model is ``wordpiece``; a BPE model with a ByteLevel pre-tokenizer
    (also inside a Sequence) is ``byte_bpe``; a Metaspace pre-tokenizer, or a BPE or Unigram model
    fed "▁" by its normalizer, is ``sentencepiece``. Otherwise, and for slow tokenizers, the
    vocabulary decides: the marker ("##", "Ġ", "▁") that starts clearly the most tokens. Raises
    ``UnknownWordBoundaries`` (a ValueError) when neither settles it.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        kind = type(backend.model).__name__
        if kind == "WordLevel":
            return TOKEN_SCHEME  # its tokens are whole words
        scheme = _scheme_from_backend(backend)
        if scheme is not None:
            return scheme
    scheme = _scheme_from_vocabulary(tokenizer)
    if scheme is None:
        raise _unknown_scheme(tokenizer, 'no "##", "\u0120" or "\u2581" markers found in its vocabulary')
    return scheme


def _wordpiece_prefix(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    prefix = getattr(getattr(backend, "model", None), "continuing_subword_prefix", None)
    return prefix if prefix else _WORDPIECE_PREFIX


@dataclass(frozen=True, eq=False)
class WordBoundaries:
    """Per-token-id word tables of one tokenizer (CPU tensors of length V, the largest id + 1).

    ``starts_word[i]``: token ``i`` begins a word wherever it occurs (False for ``never_word``
    ids). The context rules — the first token of a sequence and the token after a special token
    start a word — are applied by the masking ops. ``never_word[i]``: token ``i`` is special
    (padding, [CLS], [UNK], the mask token...) or, in byte-level BPE and SentencePiece, only
    whitespace ("Ġ" of a double space, "Ċ" of a newline, "Âł" of a no-break space, a lone "▁"):
    part of no word, never masked, never drawn as a random replacement. ``random_token_ids``:
    every id of [0, V) that is not ``never_word``.
    """

    scheme: str
    starts_word: torch.Tensor
    never_word: torch.Tensor
    random_token_ids: torch.Tensor
    mask_token_id: int

    def __post_init__(self) -> None:
        _check_scheme(self.scheme)
        if self.starts_word.dtype != torch.bool or self.never_word.dtype != torch.bool:
            raise TypeError("starts_word and never_word must be bool tensors")
        if self.starts_word.ndim != 1 or self.starts_word.shape != self.never_word.shape:
            raise ValueError("starts_word and never_word must be 1-D tensors of the same length")
        if self.random_token_ids.dtype != torch.int64 or self.random_token_ids.ndim != 1:
            raise TypeError("random_token_ids must be a 1-D int64 tensor")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"mask_token_id {self.mask_token_id} is outside the vocabulary [0, {self.vocab_size})")

    @property
    def vocab_size(self) -> int:
        return self.never_word.numel()

    def to(self, device) -> "WordBoundaries":
        """The same tables on ``device``."""
        return WordBoundaries(
            self.scheme,
            self.starts_word.to(device),
            self.never_word.to(device),
            self.random_token_ids.to(device),
            self.mask_token_id,
        )

    def __eq__(self, other) -> bool:
        if not isinstance(other, WordBoundaries):
            return NotImplemented
        return (
            self.scheme == other.scheme
            and self.mask_token_id == other.mask_token_id
            and torch.equal(self.starts_word.cpu(), other.starts_word.cpu())
            and torch.equal(self.never_word.cpu(), other.never_word.cpu())
            and torch.equal(self.random_token_ids.cpu(), other.random_token_ids.cpu())
        )

    def __hash__(self) -> int:
        return hash((self.scheme, self.mask_token_id, self.vocab_size))

    def __repr__(self) -> str:
        return (
            f"WordBoundaries(scheme={self.scheme!r}, vocab_size={self.vocab_size}, "
            f"word_starts={int(self.starts_word.sum())}, special={int(self.never_word.sum())}, "
            f"mask_token_id={self.mask_token_id})"
        )


def special_token_table(tokenizer, vocab_size: int) -> torch.Tensor:
    """[vocab_size] bool: which ids are the tokenizer's special tokens (a subset of ``never_word``,
    which also holds byte-level BPE's whitespace tokens)."""
    table = torch.zeros(vocab_size, dtype=torch.bool)
    special = _special_ids(tokenizer, vocab_size)
    if special:
        table[torch.tensor(special, dtype=torch.long)] = True
    return table


def _special_ids(tokenizer, vocab_size: int) -> list[int]:
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", ()) if i is not None}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, token in added.items() if getattr(token, "special", False))
    return sorted(i for i in ids if 0 <= i < vocab_size)


def _space_taking_ids(tokenizer, vocab_size: int) -> list[int]:
    """Added tokens that take the whitespace before them (``lstrip``): "the kinase" with such a
    token "kinase" is "the", "kinase", with no space token between, so the token starts a word."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return sorted(int(i) for i, token in added.items() if getattr(token, "lstrip", False) and 0 <= int(i) < vocab_size)


def _space_dropping_ids(tokenizer, never_word: torch.Tensor) -> list[int]:
    """Added tokens (not special) before which the tokenizer drops the space instead of keeping it
    in a bare "▁" / "Ġ" token: transformers builds XLM-R's, ALBERT's and T5's pipelines with a
    whitespace split before Metaspace, and DeBERTa-v3's normalizer strips the space before an
    added token that is not normalized. "the kinase" is then "▁the", "kinase": nothing marks
    the added token's word start, and the two read as one word, "thekinase". Found by tokenizing
    each such token after a word, all at once."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    probed = [(int(i), str(token.content)) for i, token in sorted(added.items())
              if not getattr(token, "special", True) and not getattr(token, "lstrip", False)
              and str(token.content).strip() and 0 <= int(i) < never_word.numel()]
    before = _neighbours(tokenizer, probed, "a {}", -1, never_word.numel())
    return [token_id for (token_id, _), other in zip(probed, before) if other is not None and not never_word[other]]


def _neighbours(tokenizer, tokens: list[tuple[int, str]], text: str, step: int, vocab_size: int) -> list[int | None]:
    """For each added token (id, content), the id ``step`` places from its first occurrence when
    ``text.format(content)`` is tokenized (all at once); None where it or its neighbour is
    missing: how the tokenizer treats the whitespace around it."""
    if not tokens:
        return []
    encoded = tokenizer([text.format(content) for _, content in tokens], add_special_tokens=False)["input_ids"]
    found = []
    for (token_id, _), ids in zip(tokens, encoded):
        at = ids.index(token_id) + step if token_id in ids else -1
        found.append(ids[at] if 0 <= at < len(ids) and 0 <= ids[at] < vocab_size else None)
    return found


def check_tokenizer(tokenizer) -> None:
    """Refuse what is no tokenizer (a model name, None) before it fails as a missing attribute."""
    if not all(hasattr(tokenizer, name) for name in ("convert_ids_to_tokens", "get_vocab", "pad_token_id")):
        shown = f" {tokenizer!r:.60}" if isinstance(tokenizer, (str, os.PathLike)) else ""
        raise TypeError(f"tokenizer must be a HuggingFace tokenizer (e.g. AutoTokenizer.from_pretrained(name)), got "
                        f"{type(tokenizer).__name__}{shown}")


def word_boundaries(tokenizer, scheme: str | None = None) -> WordBoundaries:
    """The ``WordBoundaries`` of ``tokenizer``; ``scheme`` overrides detection.

    Token strings are those of ``tokenizer.convert_ids_to_tokens`` over every id up to the
    largest. Ids without a token (holes in the vocabulary) start a word; special tokens never do;
    holes are never drawn as random replacements. Added tokens that are not special follow the
    scheme like any token: a byte-level BPE or SentencePiece tokenizer puts the space before one
    in a bare "Ġ" / "▁" token, which is whitespace and no word, so the added token starts one.
    One that takes the space before it (``lstrip=True``), or before which the tokenizer drops the
    space (``_space_dropping_ids``: XLM-R, ALBERT, T5, DeBERTa-v3), always starts a word.
    """
    check_tokenizer(tokenizer)
    mask_token_id = getattr(tokenizer, "mask_token_id", None)
    if getattr(tokenizer, "mask_token", None) is None or mask_token_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no mask token; masked language modelling needs one "
            "(set tokenizer.mask_token)"
        )
    scheme = _scheme_for(tokenizer, scheme)
    starts_word, never_word, holes = _word_tables(tokenizer, scheme)
    if not 0 <= int(mask_token_id) < never_word.numel():
        raise ValueError(f"the mask token id {mask_token_id} is outside the vocabulary [0, {never_word.numel()})")
    random_token_ids = torch.nonzero(~never_word & ~holes).flatten().to(torch.int64)
    return WordBoundaries(scheme, starts_word, never_word, random_token_ids, int(mask_token_id))


def token_id_count(tokenizer) -> int:
    """How many token ids ``tokenizer`` can produce: its largest id + 1. ``len()`` counts entries,
    and with holes in the ids the largest id can be beyond it."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)


def _word_tables(tokenizer, scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(starts_word, never_word, holes) per token id, for ids up to the largest."""
    vocab_size = token_id_count(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    if scheme in ("byte_bpe", "sentencepiece"):
        # Whitespace is no word, and what follows it starts one: "kinase\ninhibitors" is
        # "Ġkinase", "Ċ", "inhibitors" (no "Ġ" after the newline), two words.
        marked = [_marker_flags(token, scheme) for token in tokens]
        flags = [opens for opens, _, _ in marked]
        never_word = torch.tensor([blank for _, blank, _ in marked], dtype=torch.bool)
        spanning = [token for token, (_, _, spans) in zip(tokens, marked) if spans]
    else:
        flags = _prefix_flags(tokenizer, tokens, scheme)
        # WordPiece pieces and word-level tokens hold no space, but an added token may be one
        # ("\n" added to keep line breaks): whitespace, it is no word, as in the schemes above.
        never_word = torch.tensor([isinstance(token, str) and token != "" and not token.strip() for token in tokens],
                                  dtype=torch.bool)
        spanning = []
    starts_word = torch.tensor(flags, dtype=torch.bool)
    takes_space = _space_taking_ids(tokenizer, vocab_size)
    if scheme in ("byte_bpe", "sentencepiece"):
        takes_space += _space_dropping_ids(tokenizer, never_word)
    if takes_space:
        starts_word[torch.tensor(takes_space, dtype=torch.long)] = True
    special = _special_ids(tokenizer, vocab_size)
    if special:
        never_word[torch.tensor(special, dtype=torch.long)] = True
    starts_word &= ~never_word
    holes = torch.tensor([not isinstance(token, str) for token in tokens], dtype=torch.bool)
    _warn_of_words_tokens_cannot_tell(tokenizer, spanning)
    _warn_of_tokens_gluing_the_next_word(tokenizer, starts_word, never_word)
    _warn_of_a_missing_decoder(tokenizer, scheme)
    return starts_word, never_word, holes


#: The ``tokenizers`` decoder that turns each scheme's tokens back into text.
_DECODERS = {"byte_bpe": "ByteLevel()", "wordpiece": "WordPiece()", "sentencepiece": "Metaspace()"}


def _warn_of_a_missing_decoder(tokenizer, scheme: str) -> None:
    """Warn of a fast tokenizer built without a decoder (one trained with ``tokenizers`` and
    saved before setting it): its words decode as their tokens joined by spaces ("Ġkin ase"),
    so the words scored and looked up never meet the words counted."""
    if scheme not in _DECODERS or not _decodes_with_backend(tokenizer):
        return
    if tokenizer.backend_tokenizer.decoder is None:
        warnings.warn(f"{type(tokenizer).__name__} has no decoder (backend_tokenizer.decoder is None): a word's tokens "
                      "decode as themselves joined by spaces, so the words scored and looked up are not the words "
                      "counted; set tokenizer.backend_tokenizer.decoder = tokenizers.decoders."
                      f"{_DECODERS[scheme]}", DiffmaskWarning, stacklevel=4)


def _warn_of_words_tokens_cannot_tell(tokenizer, spanning: Sequence[str]) -> None:
    """Warn where this tokenizer's tokens cannot follow the words ``str.split()`` finds: pieces
    that span a space (``spanning``; a pre-tokenizer that does not split there: Metaspace
    ``split=False``, ByteLevel ``use_regex=False``), and added tokens that transformers matches
    inside longer words (``single_word=False``, its default), which cut those words in two."""
    name = type(tokenizer).__name__
    if spanning:
        warnings.warn(f"{name} has {counted(len(spanning), 'token')} holding text of several words (e.g. "
                      f"{spanning[0]!r}): its pre-tokenizer does not split at spaces, so such a token joins "
                      "the end of one word to the start of the next, and both are masked and scored as one word",
                      DiffmaskWarning, stacklevel=4)
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    inside = sorted(str(token.content) for token in added.values()
                    if not getattr(token, "special", True) and not getattr(token, "single_word", True)
                    and (str(token.content)[:1].isalnum() or str(token.content)[-1:].isalnum()))
    if inside:
        warnings.warn(f"{name} has {counted(len(inside), 'added token')} matched inside longer words too (e.g. "
                      f"{inside[0]!r}): {'pro' + inside[0]!r} is tokenized as 'pro' and {inside[0]!r}, two words to "
                      "mask. Adding them as AddedToken(word, single_word=True) matches whole words only",
                      DiffmaskWarning, stacklevel=4)


def _warn_of_tokens_gluing_the_next_word(tokenizer, starts_word: torch.Tensor, never_word: torch.Tensor) -> None:
    """Warn of added tokens that take the whitespace after them (``rstrip=True``) where the token
    that follows then lacks its word-start marker ("Ġ"): "zymogenase binds" is read as one word,
    "zymogenasebinds". Found by tokenizing such a token before a word, as the marker's absence
    depends on the pre-tokenizer (a Metaspace that prepends "▁" to every piece keeps it)."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    taking = [(int(i), str(token.content)) for i, token in sorted(added.items())
              if getattr(token, "rstrip", False) and not getattr(token, "special", True)
              and str(token.content).strip()]  # whitespace ends a word anyway
    after = _neighbours(tokenizer, taking, "{} word", 1, starts_word.numel())
    glued = [content for (_, content), other in zip(taking, after)
             if other is not None and not (starts_word[other] or never_word[other])]
    if glued:
        warnings.warn(f"{type(tokenizer).__name__} has {counted(len(glued), 'added token')} with rstrip=True (e.g. "
                      f"{glued[0]!r}): taking the space after it, such a token leaves the next word without its "
                      f"word-start marker, so {glued[0] + ' word'!r} is masked and scored as one word. Adding them "
                      "with rstrip=False keeps the words apart", DiffmaskWarning, stacklevel=4)


def _prefix_flags(tokenizer, tokens: Sequence, scheme: str) -> list[bool]:
    """starts_word of the schemes without a space marker: every token (``token``), or every one
    without the continuation prefix (``wordpiece``)."""
    if scheme == TOKEN_SCHEME:
        return [True] * len(tokens)
    prefix = _wordpiece_prefix(tokenizer)
    return [not token.startswith(prefix) if isinstance(token, str) else True for token in tokens]


def _marker_flags(token, scheme: str) -> tuple[bool, bool, bool]:
    """(starts a word, is whitespace only, holds text of several words) of one byte-level BPE or
    SentencePiece token.

    Its text decides where it can be read, so that a no-break space or a tab splits words as
    ``str.split()`` does in counting; the marker still decides where it cannot.
    """
    if not isinstance(token, str):
        return True, False, False  # a hole in the ids
    text = _byte_level_text(token) if scheme == "byte_bpe" else _sentencepiece_text(token)
    blank = _is_blank(text) or (scheme == "byte_bpe" and _is_whitespace_token(token))
    opens = token.startswith(WORD_BOUNDARY_MARKERS[scheme]) or _opens_word(text)
    return opens, blank, text is not None and len(text.split()) > 1


def _is_blank(text: str | None) -> bool:
    """Whether a token's text is whitespace alone, which belongs to no word."""
    return text is not None and text.isspace()


def _opens_word(text: str | None) -> bool:
    """Whether a token's text is whitespace then more: the start of the word after the space."""
    return text is not None and text[:1].isspace() and not text.isspace()


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's character -> byte table. Bytes that print as themselves in Latin-1 keep
    their character; the others (controls, space, no-break space, soft hyphen), in byte order,
    take chr(0x100), chr(0x101)..., so every byte has a visible character."""
    visible = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    hidden = sorted(set(range(0x100)) - set(visible))
    table = {chr(byte): byte for byte in visible}
    table.update({chr(0x100 + rank): byte for rank, byte in enumerate(hidden)})
    return table


_BYTE_OF_CHARACTER = _byte_level_alphabet()


def _byte_level_text(token: str) -> str | None:
    """The text a byte-level token stands for ("Âł" -> "\\xa0"), a piece of a multi-byte
    character read as U+FFFD (so that a no-break space merged with the first bytes of a CJK
    character still reads as whitespace, then more); None when the token is not in the byte
    alphabet (added tokens, which are kept as written)."""
    try:
        return bytes(_BYTE_OF_CHARACTER[character] for character in token).decode("utf-8", "replace")
    except KeyError:
        return None


def _sentencepiece_text(token: str) -> str | None:
    """The text a SentencePiece token stands for: "▁" read as a space, and a byte-fallback piece
    ("<0x0A>", Llama-style) as its byte when that is a character of its own (ASCII)."""
    fallback = _BYTE_FALLBACK.fullmatch(token)
    if fallback is not None:
        byte = int(fallback.group(1), 16)
        return chr(byte) if byte < 0x80 else None
    return token.replace(_METASPACE, " ")


def _is_whitespace_token(token) -> bool:
    """Whether a byte-level BPE token is written with whitespace characters only ("Ġ", "ĊĊ", or
    an added "\\n"), which holds for tokens that ``_byte_level_text`` cannot read too."""
    return isinstance(token, str) and token != "" and all(ch in _BYTE_LEVEL_WHITESPACE or ch.isspace() for ch in token)


class WordGrouper:
    """Groups one sequence's token ids into words exactly as the masking ops do, from per-id
    ``starts_word`` / ``never_word`` tables (a collator's ``boundaries``, or ``for_tokenizer``,
    which needs no mask token): for the words that get scored, previewed, and the occurrences that
    become contextual anchors."""

    def __init__(self, starts_word: torch.Tensor, never_word: torch.Tensor):
        self._starts, self._never = starts_word.tolist(), never_word.tolist()
        self._starts_array, self._never_array = starts_word.cpu().numpy().copy(), never_word.cpu().numpy().copy()

    @classmethod
    def for_tokenizer(cls, tokenizer, scheme: str | None = None) -> "WordGrouper":
        """The grouper of ``tokenizer``'s words (scheme detected unless given)."""
        check_tokenizer(tokenizer)
        starts_word, never_word, _ = _word_tables(tokenizer, _scheme_for(tokenizer, scheme))
        return cls(starts_word, never_word)

    def __call__(self, ids: Sequence[int]) -> list[list[int]]:
        """Positions of each word of ``ids``; special tokens belong to none, and the token after
        one (or the first token) starts a word."""
        groups: list[list[int]] = []
        in_word = False
        starts, never = self._starts, self._never
        if len(ids):
            self._check_ids(min(ids), max(ids))
        for position, token in enumerate(ids):
            if never[token]:
                in_word = False
                continue
            if starts[token] or not in_word:
                groups.append([position])
            else:
                groups[-1].append(position)
            in_word = True
        return groups

    def _check_ids(self, lowest: int, highest: int) -> None:
        """Refuse ids outside the tables: a negative one (-100, the label of unmasked tokens) read
        them from their end, silently, and one past them failed as a bare IndexError."""
        if lowest < 0 or highest >= len(self._never):
            raise ValueError(f"token ids must be in [0, {len(self._never)}), the vocabulary's; got "
                             f"{lowest if lowest < 0 else highest}")

    def breaks(self, ids: Sequence[int]) -> np.ndarray:
        """[n] bool: the positions a sequence can be cut at without splitting a word, i.e. where
        ``__call__`` would start a new word or a token of no word is on either side."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size:
            self._check_ids(int(ids.min()), int(ids.max()))
        never = self._never_array[ids]
        continues = ~self._starts_array[ids] & ~never
        continues[1:] &= ~never[:-1]
        continues[:1] = False
        return ~continues

    def breaks_after_words(self, ids: Sequence[int]) -> np.ndarray:
        """``breaks`` but for those right after a token of no word (whitespace that byte-level BPE
        or SentencePiece writes as a token alone): a text cut there begins without the space the
        word after it was read with, and reads that word otherwise; the cut before it keeps it."""
        ids = np.asarray(ids, dtype=np.int64)
        breaks = self.breaks(ids)
        breaks[1:] &= ~self._never_array[ids[:-1]]
        return breaks


def _as_id_list(token_ids: Iterable[int]) -> list[int]:
    if isinstance(token_ids, torch.Tensor):
        return token_ids.reshape(-1).tolist()
    return [int(i) for i in token_ids]


def decode_word(tokenizer, token_ids: Sequence[int]) -> str:
    """The surface string of one word from its token ids, surrounding whitespace stripped."""
    return decode_words(tokenizer, [token_ids])[0]


#: A SentencePiece byte piece (byte fallback: a character the pieces lack, byte by byte).
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _decode_tokens(tokenizer, ids: list[int]) -> str:
    tokens = [t for t in tokenizer.convert_ids_to_tokens(ids) if isinstance(t, str)]
    if not tokens:
        return ""
    model = getattr(tokenizer, "sp_model", None)
    if model is not None and any(_BYTE_PIECE.fullmatch(token) for token in tokens):
        # A Python SentencePiece tokenizer spells byte pieces out ("na<0xC3><0xAF>ve"), and such a
        # word never met its counted form "naïve"; its model joins them into the characters.
        return model.decode_pieces(tokens)
    return tokenizer.convert_tokens_to_string(tokens)


#: tokenizer -> (its length when read, {id: content} of the added tokens its decoder garbles)
_GARBLED_ADDED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _garbled_added_tokens(tokenizer) -> dict[int, str]:
    """The tokenizer's added (not special) tokens that its decoder does not give back as written,
    id -> text: a byte-level decoder reads every character of a token as a byte, so an added
    "café" or "µM" (written as text, not bytes) decodes to "caf\ufffd", "\ufffdM"."""
    try:
        known = _GARBLED_ADDED.get(tokenizer)
    except TypeError:  # an object weakref cannot follow
        known = None
    if known is not None and known[0] == len(tokenizer):
        return known[1]
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    garbled = {}
    for token_id, token in added.items():
        if not getattr(token, "special", False) and _decode_tokens(tokenizer, [int(token_id)]).strip() != \
                token.content.strip():
            garbled[int(token_id)] = token.content
    with contextlib.suppress(TypeError):
        _GARBLED_ADDED[tokenizer] = (len(tokenizer), garbled)
    return garbled


def _decodes_with_backend(tokenizer) -> bool:
    """Whether ``convert_tokens_to_string`` is plain ``backend_tokenizer.decoder.decode``."""
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # pragma: no cover - transformers is a dependency of every caller
        return False
    return (
        isinstance(tokenizer, PreTrainedTokenizerFast)
        and type(tokenizer).convert_tokens_to_string is PreTrainedTokenizerFast.convert_tokens_to_string
        and type(tokenizer).convert_ids_to_tokens is PreTrainedTokenizerFast.convert_ids_to_tokens
    )


def decode_words(tokenizer, words: Sequence[Sequence[int]]) -> list[str]:
    """``decode_word`` for each id list of ``words``.

    Fast tokenizers decode the whole batch in one call to the backend, which, without skipping
    special tokens, maps ids to tokens and runs the decoder exactly as ``decode_word`` does.
    """
    id_lists = [_as_id_list(ids) for ids in words]
    if not id_lists:
        return []
    garbled = _garbled_added_tokens(tokenizer)
    runs, words_parts = id_lists, None
    if garbled and any(i in garbled for ids in id_lists for i in ids):
        # Added tokens the decoder garbles are taken as written, the ids around them decoded.
        runs, words_parts = [], []
        for ids in id_lists:
            parts, run = [], []
            for token_id in ids + [None]:
                if token_id is None or token_id in garbled:
                    if run:
                        parts.append(len(runs))
                        runs.append(run)
                        run = []
                    if token_id is not None:
                        parts.append(garbled[token_id])
                else:
                    run.append(token_id)
            words_parts.append(parts)
    if _decodes_with_backend(tokenizer):
        texts = tokenizer.backend_tokenizer.decode_batch(runs, skip_special_tokens=False)
    else:
        texts = [_decode_tokens(tokenizer, run) for run in runs]
    if words_parts is None:
        return [text.strip() for text in texts]
    return ["".join(texts[part] if isinstance(part, int) else part for part in parts).strip()
            for parts in words_parts]


#: Surrogate code points: a JSON escape of half an emoji ("\\ud83d") puts one in a str, and no
#: tokenizer takes it.
_SURROGATE = re.compile("[\ud800-\udfff\uffff]")


def tokenizable_text(text):
    """``text`` with each surrogate code point, and the noncharacter U+FFFF that marks the special
    pieces of ``model_reading_text`` (damaged text may hold one), read as U+FFFD, one for one
    (offsets keep)."""
    if isinstance(text, str) and not text.isascii() and _SURROGATE.search(text):
        return _SURROGATE.sub("\ufffd", text)
    return text


#: Put before a special token's piece in the Unigram model that reads text: U+FFFF is a Unicode
#: noncharacter, kept for a program's own use; ``tokenizable_text`` reads it in text as U+FFFD,
#: so the piece matches no text.
_UNSPELLABLE = "\uffff"

#: tokenizer -> (its backend, the backend model's size, its special ids, the model reading text or None)
_TEXT_MODELS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _unspellable_pieces(model, ids: Sequence[int]):
    """A copy of the Unigram ``model`` in which the pieces of ``ids`` are spelled with U+FFFF in
    front (more than one should such a spelling be a piece already), keeping every id and score."""
    state = json.loads(model.__getstate__())
    vocabulary = state["vocab"]
    pieces = {piece for piece, _ in vocabulary}
    for i in ids:
        piece = _UNSPELLABLE + vocabulary[i][0]
        while piece in pieces:
            piece = _UNSPELLABLE + piece
        vocabulary[i][0] = piece
        pieces.add(piece)
    copy = type(model)()
    copy.__setstate__(json.dumps(state).encode("utf-8"))
    return copy


def model_reading_text(tokenizer):
    """The model that ``tokenizer``'s backend should tokenize text with so that a special token's
    spelling is read as text, or None when its own model does so already.

    ``split_special_tokens`` keeps the added tokens from matching, which is all it takes for
    WordPiece and BPE. A Unigram model (SentencePiece's: XLM-R, ALBERT, T5, CamemBERT) holds the
    special tokens as pieces too ("<s>", "</s>", "<pad>", "<unk>", and "<mask>" in XLM-R) and
    matches them in text like any piece, at the top score; it also names a run of unknown
    characters by its text, so "<pad>" in characters it has no pieces for was the padding token.
    Its copy spells those pieces with a noncharacter in front, so that they match no text:
    the characters become the pieces of other text, or the unknown token when they have none.
    Made once per tokenizer (about a second for XLM-R's 250,002 pieces), and again when its
    backend, the backend's size or its special tokens change.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or type(backend.model).__name__ != "Unigram":  # WordPiece, BPE: nothing to do
        return None
    size = backend.get_vocab_size(with_added_tokens=False)
    special = tuple(_special_ids(tokenizer, size))
    try:
        cached = _TEXT_MODELS.get(tokenizer)
    except TypeError:  # a tokenizer that takes no weak reference: made on each call
        cached = None
    if cached is not None and cached[0] is backend and cached[1:3] == (size, special):
        return cached[3]
    text_model = _unspellable_pieces(backend.model, special) if special else None
    try:
        _TEXT_MODELS[tokenizer] = (backend, size, special, text_model)
    except TypeError:
        pass
    return text_model


#: tokenizer -> the lock held while ``tokenize_texts`` changes its backend's settings and model:
#: threads sharing a tokenizer would otherwise put back each other's changes as the originals.
_BACKEND_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()
#: For tokenizers that take no weak reference.
_SHARED_BACKEND_LOCK = threading.Lock()


def _backend_lock(tokenizer) -> threading.Lock:
    with _LOCKS_LOCK:
        try:
            return _BACKEND_LOCKS.setdefault(tokenizer, threading.Lock())
        except TypeError:
            return _SHARED_BACKEND_LOCK


@contextlib.contextmanager
def truncating_on_the_right(tokenizer):
    """Within it ``truncation=True`` keeps a text's first tokens, whatever the tokenizer's
    ``truncation_side`` (put back after): where positions read in one tokenization are used in
    another, or a cache key holds no side, both must cut the same end."""
    side = getattr(tokenizer, "truncation_side", "right")
    tokenizer.truncation_side = "right"
    try:
        yield
    finally:
        tokenizer.truncation_side = side


def tokenize_texts(tokenizer, texts: Sequence[str], **options):
    """``tokenizer(texts, **options)`` with the texts read as plain text.

    A corpus may spell a special token ("[SEP]" quoted in an NLP paper, HTML's "<s>"). Read as
    the special token, it would put a separator or an unlabeled mask mid-sequence, and being no
    word it would never be masked; so every place that tokenizes corpus text, terms or words
    goes through here with ``split_special_tokens``, and with ``model_reading_text`` in place of
    a Unigram model that holds the special tokens as pieces (a Python tokenizer that reads them
    as special in spite of that option is warned of: that cannot be undone from outside it). The
    backend's own switch, which that option leaves set, and its model are put back for callers
    that use the backend directly, as are its truncation and padding, which ``truncation=True``
    or ``padding=True`` leave set. A lone surrogate (broken text kept by JSON escapes) is read as
    U+FFFD, which tokenizers take. Calls on one fast tokenizer from several threads take turns,
    as its backend is changed meanwhile.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        _warn_of_special_text_read_as_special(tokenizer)
        return tokenizer([tokenizable_text(text) for text in texts], split_special_tokens=True, **options)
    with _backend_lock(tokenizer):
        return _tokenize_with_backend(tokenizer, backend, texts, options)


#: Python (slow) tokenizers already checked by ``_warn_of_special_text_read_as_special``.
_SPECIAL_TEXT_CHECKED: "weakref.WeakSet" = weakref.WeakSet()


def _warn_of_special_text_read_as_special(tokenizer) -> None:
    """Warn, once per tokenizer, where a Python tokenizer reads special-token text as the special
    token in spite of ``split_special_tokens`` (ProphetNet's word splitter keeps "[SEP]" whole, a
    SentencePiece model may hold "[MASK]" as a piece): ``tokenize_texts`` cannot read it as text."""
    try:
        if tokenizer in _SPECIAL_TEXT_CHECKED:
            return
        _SPECIAL_TEXT_CHECKED.add(tokenizer)
    except TypeError:  # an object a weak set cannot hold: checked at every call
        pass
    # The unknown token is left out: text read as text may well hold pieces the vocabulary lacks.
    unknown = getattr(tokenizer, "unk_token", None)
    spellings = [token for token in getattr(tokenizer, "all_special_tokens", ())
                 if isinstance(token, str) and token and token != unknown]
    if not spellings:
        return
    read = tokenizer([f"a {token} b" for token in spellings], split_special_tokens=True,
                     add_special_tokens=False)["input_ids"]
    kept = [token for token, ids in zip(spellings, read) if tokenizer.convert_tokens_to_ids(token) in ids]
    if kept:
        warnings.warn(f"{type(tokenizer).__name__} (a Python tokenizer) reads {', '.join(map(repr, kept[:4]))} "
                      f"in the text as its special token{'s' if len(kept) > 1 else ''}: "
                      "a corpus that spells one has it left out of words and counts, and a mask token spelled in "
                      "the text is a mask with no label. Use a fast tokenizer where one exists",
                      DiffmaskWarning, stacklevel=3)


def _tokenize_with_backend(tokenizer, backend, texts: Sequence[str], options: dict):
    """``tokenize_texts`` for a fast tokenizer, its backend's settings and model put back after."""
    before = getattr(backend, "encode_special_tokens", None)
    truncation, padding = getattr(backend, "truncation", None), getattr(backend, "padding", None)
    text_model = model_reading_text(tokenizer)
    model = None
    try:
        if text_model is not None:
            model, backend.model = backend.model, text_model
        return tokenizer([tokenizable_text(text) for text in texts], split_special_tokens=True, **options)
    finally:
        if model is not None:
            backend.model = model
        if before is not None:
            backend.encode_special_tokens = before
            # A call that truncates or pads leaves the backend doing so: put back what it did.
            if backend.truncation != truncation:
                backend.no_truncation() if truncation is None else backend.enable_truncation(**truncation)
            if backend.padding != padding:
                backend.no_padding() if padding is None else backend.enable_padding(**padding)
