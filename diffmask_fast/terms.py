"""Masking by domain terms: salient-span masking and Mask-Specific LM.

* ``TermMatcher`` finds the occurrences of a list of terms ("enzyme", "active site") in a
  tokenized batch, over the words the tokenizer forms, case-insensitively.
* ``TermMaskingCollator`` (EntityBERT / salient-span style) spends each row's whole-word budget
  on term occurrences first, then on uniformly random other words.
* ``MSLMCollator`` (Mask-Specific LM, arXiv 2403.18025) masks term occurrences at a higher rate
  than other words and weights their loss (``loss_weights``).
* ``domain_terms`` makes a term list without labels, from the anchors and the score table.

The collators pad, seed and pickle like ``DifferenceMaskingCollator`` (see ``masking_base``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from . import ops
from ._checks import refuse_one_string
from .advice import DiffmaskWarning
from .masking_base import (MaskingCollatorBase, check_like_ids, check_loss_weight, check_probability, id_matrix,
                           replace_selected)
from .reference import composed, has_letter, is_anchor_candidate, is_citation_word, normalize_word
from .tokenization import (WordBoundaries, decode_words, naming_word_boundary, special_token_table, tokenize_texts,
                           word_boundaries)

if TYPE_CHECKING:
    from .anchors import Anchors
    from .scoring import ScoreTable

__all__ = ["MSLMCollator", "TermMaskingCollator", "TermMatcher", "TermMatches", "domain_terms"]


# ----------------------------------------------------------------------------------------------
# Finding terms
# ----------------------------------------------------------------------------------------------


class TermMatches(NamedTuple):
    words: ops.Words  #: the words of the batch (ops.group_words)
    spans: list[list[tuple[int, int]]]  #: per row, the term occurrences as (start word, end word exclusive), left to right
    span_start: torch.Tensor  #: [B, W] int64: first word of the occurrence holding word w, -1 outside terms


def _check_terms(terms) -> list[str]:
    refuse_one_string(terms, "terms", "a list of strings")
    terms = list(terms)
    if not terms:
        raise ValueError("the term list is empty; give at least one term (e.g. from domain_terms)")
    wrong = [t for t in terms if not isinstance(t, str)]
    if wrong:
        raise TypeError(f"terms must be strings, got {type(wrong[0]).__name__} ({wrong[0]!r})")
    # Whitespace inside a term is one space, as text reads it: "kinase  inhibitors" or a line's
    # "enzyme\n" would otherwise tokenize into whitespace tokens or empty words that never match.
    terms = [" ".join(t.replace("\ufeff", " ").split()) for t in terms]  # a byte-order mark is no text
    letterless = [t for t in terms if not has_letter(t)]
    if letterless:
        raise ValueError(
            f"{len(letterless)} term(s) contain no letter, e.g. {letterless[0]!r}; terms are words such as "
            "'enzyme' or 'active site'"
        )
    return terms


def _word_extents(word_index: torch.Tensor, n_columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First token and one past the last token of every word: two [B, W] int64 tensors."""
    batch, length = word_index.shape
    positions = torch.arange(length).expand(batch, length)
    column = torch.where(word_index >= 0, word_index, torch.full_like(word_index, n_columns))
    start = torch.full((batch, n_columns + 1), length, dtype=torch.long)
    start.scatter_reduce_(1, column, positions, "amin")
    end = torch.full((batch, n_columns + 1), -1, dtype=torch.long)
    end.scatter_reduce_(1, column, positions, "amax")
    return start[:, :n_columns], end[:, :n_columns] + 1


def _token_flags(word_index: torch.Tensor, word_flags: torch.Tensor) -> torch.Tensor:
    """A per-word bool [B, W] spread to the tokens [B, L]; False for tokens of no word."""
    batch, n_columns = word_flags.shape
    padded = torch.cat([word_flags, torch.zeros((batch, 1), dtype=torch.bool)], dim=1)
    column = torch.where(word_index >= 0, word_index, torch.full_like(word_index, n_columns))
    return padded.gather(1, column)


def _stripped_edges(text: str) -> tuple[str, str]:
    """The punctuation ``normalize_word`` strips from the start and from the end of a decoded
    word ("(in" -> ("(", ""), "protein." -> ("", ".")): where a tokenizer keeps punctuation inside
    its words, it stands between the word and its neighbours."""
    lowered = composed(text.lower())  # as normalize_word composes accents
    key = normalize_word(text)
    if key == lowered:
        return "", ""
    first = lowered.find(key)
    return lowered[:first], lowered[first + len(key):]


def _inner_punctuation(edges: Sequence[tuple[str, str]], first: int, stop: int) -> tuple[str, ...]:
    """For the words ``first`` to ``stop`` (exclusive) of a row, the punctuation between each
    word and the next."""
    return tuple(edges[w][1] + edges[w + 1][0] for w in range(first, stop - 1))


def _term_punctuation(edges: Sequence[tuple[str, str]]) -> tuple:
    """What a term's words hold beside their normalized forms: (the punctuation before its first
    word, that between each word and the next, that after its last word): "C++" has "++" after."""
    return edges[0][0], _inner_punctuation(edges, 0, len(edges)), edges[-1][1]


def _punctuation_fits(form: tuple, edges: Sequence[tuple[str, str]], first: int, stop: int) -> bool:
    """Whether the words ``first`` to ``stop`` of a row have a term's punctuation (``form``): the
    same between them, and at the ends at least the term's ("(C++)" holds "C++", "C" does not)."""
    before, inner, after = form
    return (edges[first][0].endswith(before) and edges[stop - 1][1].startswith(after)
            and _inner_punctuation(edges, first, stop) == inner)


def _other_special_roles(tokenizer) -> set[int]:
    """The ids of the special tokens that mark a text's parts other than the unknown one. GPT-2's
    tokenizers spell the unknown, the first and the last token alike: there that id ends texts,
    and tells of no unknown character inside a word. (Padding is not among them: a tokenizer that
    pads with its unknown token, as LLaMA's are often set to, still spells unknown characters with
    it, and ``match`` is told where padding lies.)"""
    roles = ("bos", "eos", "sep", "cls", "mask")
    return {token for token in (getattr(tokenizer, f"{role}_token_id", None) for role in roles) if token is not None}


class TermMatcher:
    """Occurrences of ``terms`` in tokenized batches, on the words the tokenizer forms.

    A term is a string of one or more words. It is tokenized with ``tokenizer`` and split into
    the tokenizer's words, so it is compared with text word for word exactly as the text is
    split ("Fe-S" is three words for BERT and one for RoBERTa, in terms and text alike). Words
    are compared in normalized form (``reference.normalize_word``: Unicode lowercase, surrounding
    punctuation and symbols stripped). An occurrence is a run of words equal to a term with no
    special token or padding between them (whitespace tokens may be), with the punctuation
    the term has at its ends (a word "C++" is an occurrence of "C++" and of "C"; "C" is none of
    "C++"), and with the punctuation between its words that the term has: where a tokenizer
    keeps punctuation inside a word ("protein." for RoBERTa, "protein" "." for BERT),
    "protein. Kinase" is no occurrence of "protein kinase", nor "protein, kinase" of
    "protein. kinase", under either. Occurrences do not overlap: rows are scanned left to
    right, taking at each word the longest term that starts there.

    Each distinct word (token sequence) is decoded once per process: its normalized form is
    cached by its hash (``ops.word_hash``). Terms the tokenizer cannot represent (they would
    contain its unknown token) can never match: they are dropped with a warning. Where the
    unknown token stands inside a word (SentencePiece and byte-level BPE; BERT's stands for a
    whole word), the pieces of that word beside it are fragments ("p" of "p<unk>3") and match no
    term.
    """

    def __init__(self, tokenizer, terms: Iterable[str], *, word_boundary: str | None = None,
                 boundaries: WordBoundaries | None = None):
        terms = _check_terms(terms)
        self.tokenizer = tokenizer
        if boundaries is None:
            with naming_word_boundary():
                boundaries = word_boundaries(tokenizer, word_boundary)
        self.boundaries = boundaries
        self._special = special_token_table(tokenizer, self.boundaries.never_word.numel())
        # Tokens of no word that are not special: whitespace ("Ċ", a lone "Ġ" or "▁", "Âł").
        self._whitespace = self.boundaries.never_word & ~self._special
        self._normalized: dict[int, str] = {}
        self._edges: dict[int, int] = {}  # by word hash: an index into _edge_pairs
        self._edge_pairs: list[tuple[str, str]] = [("", "")]
        self._edge_index: dict[tuple[str, str], int] = {("", ""): 0}
        unknown = tokenizer.unk_token_id
        self._unknown_inside_words = (unknown if self.boundaries.scheme in ("sentencepiece", "byte_bpe")
                                      and unknown is not None and 0 <= unknown < self._special.numel()
                                      and unknown not in _other_special_roles(tokenizer) else None)
        self._build(terms)

    # -- terms ---------------------------------------------------------------------------------
    def _build(self, terms: list[str]) -> None:
        encoded = tokenize_texts(self.tokenizer, terms, add_special_tokens=False)["input_ids"]
        lengths = [len(ids) for ids in encoded]
        width = max(lengths)
        input_ids = torch.zeros((len(terms), width), dtype=torch.long)
        padding = torch.ones((len(terms), width), dtype=torch.bool)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            padding[row, : len(ids)] = False
        # Whitespace tokens (byte-level BPE) separate words as in text; special and unknown
        # tokens make a term unusable.
        excluded = self.boundaries.never_word[input_ids] & ~padding
        special = self._special[input_ids] & ~padding
        words = ops.group_words(input_ids, padding | excluded, self.boundaries.starts_word)
        keys, edges, _ = self._word_keys(input_ids, words)
        n_words = words.n_words.tolist()
        self.vocabulary: dict[str, int] = {}
        sequences: set[tuple[int, ...]] = set()
        self._punctuation: dict[tuple[int, ...], set[tuple]] = {}  # see _term_punctuation
        unusable = []
        for row, term in enumerate(terms):
            if n_words[row] == 0 or bool(special[row].any()):
                unusable.append(term)
                continue
            sequence = tuple(self.vocabulary.setdefault(k, len(self.vocabulary)) for k in keys[row][: n_words[row]])
            sequences.add(sequence)
            self._punctuation.setdefault(sequence, set()).add(_term_punctuation(edges[row][: len(sequence)]))
        if unusable:
            warnings.warn(
                f"{len(unusable)} term(s) hold text the tokenizer cannot represent and can never match, "
                f"e.g. {unusable[0]!r}; they are ignored",
                DiffmaskWarning, stacklevel=3,
            )
        if not sequences:
            raise ValueError("none of the terms can be represented by the tokenizer (each holds its unknown token or "
                             "a special token)")
        self.sequences: frozenset = frozenset(sequences)
        # One word, no punctuation of its own: any occurrence of the word is one of the term.
        self._bare = frozenset(sequence for sequence, forms in self._punctuation.items()
                               if len(sequence) == 1 and ("", (), "") in forms)
        lengths_by_first: dict[int, set] = {}
        for sequence in sequences:
            lengths_by_first.setdefault(sequence[0], set()).add(len(sequence))
        self._lengths = {first: sorted(found, reverse=True) for first, found in lengths_by_first.items()}
        self._starts_term = torch.zeros(len(self.vocabulary) + 1, dtype=torch.bool)  # index 0: not a term word
        self._starts_term[torch.tensor([first + 1 for first in self._lengths], dtype=torch.long)] = True

    def __len__(self) -> int:
        """Number of distinct terms (as sequences of normalized words, with the punctuation the
        terms hold at their ends and between their words)."""
        return sum(len(forms) for forms in self._punctuation.values())

    @property
    def max_term_words(self) -> int:
        """Words in the longest term."""
        return max(len(sequence) for sequence in self.sequences)

    def __repr__(self) -> str:
        return f"TermMatcher({len(self)} terms, longest {self.max_term_words} words, scheme={self.boundaries.scheme!r})"

    # -- words ---------------------------------------------------------------------------------
    def _word_keys(self, input_ids: torch.Tensor, words: ops.Words, *, as_codes: bool = False):
        """The normalized form of every word and the punctuation normalizing stripped from its
        ends (``_stripped_edges``) as per-row lists, with the word extents: (keys, edges, extents);
        with ``as_codes``, the term-vocabulary code of every word (-1 for none) as a [B, W]
        tensor instead: (codes, extents). Either way, every word's edges are known after."""
        n_columns = words.word_hash.shape[1]
        start, end = _word_extents(words.word_index, n_columns)
        valid = torch.arange(n_columns) < words.n_words[:, None]
        hashes = words.word_hash[valid]
        unique, inverse = torch.unique(hashes, return_inverse=True)
        unique_list = unique.tolist()
        missing = [i for i, h in enumerate(unique_list) if h not in self._normalized]
        if missing:
            first = torch.full((len(unique_list),), hashes.numel(), dtype=torch.long)
            first.scatter_reduce_(0, inverse, torch.arange(hashes.numel()), "amin")
            rows, columns = valid.nonzero(as_tuple=True)
            picks = first[torch.tensor(missing, dtype=torch.long)]
            rows, columns = rows[picks].tolist(), columns[picks].tolist()
            starts, ends = start[rows, columns].tolist(), end[rows, columns].tolist()
            id_lists = [input_ids[r, s:e].tolist() for r, s, e in zip(rows, starts, ends)]
            for i, text in zip(missing, decode_words(self.tokenizer, id_lists)):
                self._normalized[unique_list[i]] = normalize_word(text)
                pair = _stripped_edges(text)
                if pair not in self._edge_index:
                    self._edge_index[pair] = len(self._edge_pairs)
                    self._edge_pairs.append(pair)
                self._edges[unique_list[i]] = self._edge_index[pair]
        if as_codes:
            codes = torch.tensor([self.vocabulary.get(self._normalized[h], -1) for h in unique_list], dtype=torch.long)
            out = torch.full(valid.shape, -1, dtype=torch.long)
            out[valid] = codes[inverse]
            return out, (start, end)
        normalized = [self._normalized[h] for h in unique_list]
        edges = [self._edge_pairs[self._edges[h]] for h in unique_list]
        inverse_list = inverse.tolist()
        flat = [normalized[i] for i in inverse_list]
        flat_edges = [edges[i] for i in inverse_list]
        per_row, per_row_edges, offset = [], [], 0
        for count in words.n_words.tolist():
            per_row.append(flat[offset: offset + count])
            per_row_edges.append(flat_edges[offset: offset + count])
            offset += count
        return per_row, per_row_edges, (start, end)

    @property
    def known_words(self) -> int:
        """Distinct words (token sequences) decoded so far."""
        return len(self._normalized)

    # -- matching ------------------------------------------------------------------------------
    def _group(self, input_ids, never_word) -> tuple[torch.Tensor, ops.Words, torch.Tensor]:
        """(input_ids, words, separators): ``separators`` [B, L] flags the tokens no term spans
        (special tokens and the caller's ``never_word``, such as padding). Whitespace tokens never
        separate, even where the caller flags them (the collators pass every token of no word)."""
        input_ids = id_matrix(input_ids, self.boundaries.never_word.numel(), self.tokenizer)
        excluded = self.boundaries.never_word[input_ids]
        separators = self._special[input_ids]
        if never_word is not None:
            given = check_like_ids(input_ids, never_word, "never_word").bool()
            excluded, separators = excluded | given, separators | (given & ~self._whitespace[input_ids])
        return input_ids, ops.group_words(input_ids, excluded, self.boundaries.starts_word), separators

    def match(self, input_ids: torch.Tensor, never_word: torch.Tensor | None = None) -> TermMatches:
        """Words and term occurrences of a padded [B, L] batch. ``never_word`` [B, L] flags
        tokens that belong to no word (padding); special tokens are always excluded."""
        input_ids, words, separators = self._group(input_ids, never_word)
        batch, n_columns = words.word_hash.shape
        codes, (start, end) = self._word_keys(input_ids, words, as_codes=True)
        if self._unknown_inside_words is not None:
            unknown = input_ids == self._unknown_inside_words
            if never_word is not None:  # padding by the unknown token ends a row, no word
                unknown &= ~check_like_ids(input_ids, never_word, "never_word").bool()
            if bool(unknown.any()):
                codes = torch.where(self._beside_unknown(input_ids, unknown, start, end), torch.full_like(codes, -1),
                                    codes)
        span_start = torch.full((batch, n_columns), -1, dtype=torch.long)
        spans: list[list[tuple[int, int]]] = [[] for _ in range(batch)]
        candidates = self._starts_term[codes + 1].nonzero().tolist()
        if not candidates:
            return TermMatches(words, spans, span_start)
        # Words w-1 and w are adjacent when no separator lies between them: a term never spans a
        # special token (e.g. the separator between two segments), but spans whitespace tokens.
        before = torch.nn.functional.pad(separators.long().cumsum(1), (1, 0))  # [B, L+1]: separators before t
        length = input_ids.shape[1]
        breaks = torch.ones((batch, n_columns), dtype=torch.bool)
        breaks[:, 1:] = (before.gather(1, start[:, 1:].clamp(0, length))
                         != before.gather(1, end[:, :-1].clamp(0, length)))
        segment = breaks.cumsum(1)
        n_words = words.n_words.tolist()
        cursor = [0] * batch
        rows_cache: dict[int, tuple[list, list]] = {}
        terms, lengths = self.sequences, self._lengths
        match_rows, match_starts, match_lengths = [], [], []
        for row, position in candidates:
            if position < cursor[row]:
                continue
            if row not in rows_cache:
                rows_cache.clear()
                rows_cache[row] = (codes[row, : n_words[row]].tolist(), segment[row, : n_words[row]].tolist(), [])
            row_codes, row_segment, row_edges = rows_cache[row]
            for length in lengths[row_codes[position]]:
                stop = position + length
                if stop > n_words[row] or row_segment[stop - 1] != row_segment[position]:
                    continue
                sequence = tuple(row_codes[position:stop])
                if sequence not in terms:
                    continue
                if sequence not in self._bare and not row_edges:  # read once per row, when needed
                    hashes = words.word_hash[row, : n_words[row]].tolist()
                    row_edges.extend(self._edge_pairs[self._edges[h]] for h in hashes)
                if sequence in self._bare or any(_punctuation_fits(form, row_edges, position, stop)
                                                 for form in self._punctuation[sequence]):
                    spans[row].append((position, stop))
                    match_rows.append(row)
                    match_starts.append(position)
                    match_lengths.append(length)
                    cursor[row] = stop
                    break
        if match_rows:
            counts = torch.tensor(match_lengths, dtype=torch.long)
            rows = torch.tensor(match_rows, dtype=torch.long).repeat_interleave(counts)
            firsts = torch.tensor(match_starts, dtype=torch.long).repeat_interleave(counts)
            offsets = torch.arange(int(counts.sum())) - (counts.cumsum(0) - counts).repeat_interleave(counts)
            span_start[rows, firsts + offsets] = firsts
        return TermMatches(words, spans, span_start)

    def _beside_unknown(self, input_ids: torch.Tensor, unknown: torch.Tensor, start: torch.Tensor,
                        end: torch.Tensor) -> torch.Tensor:
        """[B, W]: words whose last token precedes an unknown token (``unknown`` [B, L]) directly,
        or whose first token follows it and carries no word start of its own: pieces of a word the
        tokenizer could not spell whole. ("▁kinase" after the unknown token is a word of its own.)"""
        padded = torch.nn.functional.pad(unknown, (1, 1))  # [B, L+2]: token t at t+1
        length = input_ids.shape[1]
        before = padded.gather(1, start.clamp(0, length))  # the token at start - 1
        after = padded.gather(1, (end + 1).clamp(0, length + 1))  # the token at end
        first_starts_word = self.boundaries.starts_word[input_ids.gather(1, start.clamp(0, length - 1))]
        return (before & ~first_starts_word) | after

    def spans(self, input_ids: torch.Tensor, never_word: torch.Tensor | None = None) -> list[list[tuple[int, int]]]:
        """Per row, the term occurrences as word-index spans (start word, end word exclusive),
        non-overlapping and left to right; word indices are those of ``ops.group_words``."""
        return self.match(input_ids, never_word).spans

    def words_of(self, input_ids: torch.Tensor, never_word: torch.Tensor | None = None) -> list[list[str]]:
        """The normalized words of each row, as matched against the terms."""
        input_ids, words, _ = self._group(input_ids, never_word)
        return self._word_keys(input_ids, words)[0]


# ----------------------------------------------------------------------------------------------
# Collators
# ----------------------------------------------------------------------------------------------


def _units(match: TermMatches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(valid [B, W]: w < n_words, in_term [B, W], unit [B, W]: the first word of the term
    occurrence holding w, or w itself)."""
    batch, n_columns = match.span_start.shape
    columns = torch.arange(n_columns).expand(batch, n_columns)
    valid = columns < match.words.n_words[:, None]
    in_term = match.span_start >= 0
    return valid, in_term, torch.where(in_term, match.span_start, columns)


@dataclass
class TermMaskingCollator(MaskingCollatorBase):
    """Whole-word masking that spends each row's budget on term occurrences first.

    The budget of a row is ``mlm_probability * n_words`` words, rounded stochastically (up with
    probability of its fractional part). Term occurrences (see ``TermMatcher``) are taken whole,
    in random order, while the budget is not spent, so the last one may overshoot it by at most
    its length - 1 words; whatever budget remains goes to non-term words drawn uniformly. Every
    token of a chosen word is then replaced 80/10/10. This is the salient-span / entity masking
    of EntityBERT with a fixed list of domain terms in place of an entity tagger.
    """

    tokenizer: Any
    terms: Sequence[str]
    mlm_probability: float = 0.25
    matcher: TermMatcher = field(init=False, repr=False)

    TABLES_FROM = (*MaskingCollatorBase.TABLES_FROM, "terms")

    def __post_init__(self) -> None:
        self.terms = _check_terms(self.terms)
        self._setup_base()
        self.matcher = TermMatcher(self.tokenizer, self.terms, boundaries=self.boundaries)

    def mask_batch(self, input_ids: torch.Tensor, never_word: torch.Tensor | None = None) -> dict:
        """Mask a padded [B, L] batch; ``never_word`` flags tokens that belong to no word (special
        tokens are always excluded). Returns ``input_ids`` (replaced) and ``labels``."""
        input_ids, never_word = self._checked_inputs(input_ids, never_word)
        match = self.matcher.match(input_ids, never_word)
        valid, in_term, unit = _units(match)
        batch, n_columns = unit.shape
        generator = self._generator()
        # Order the words of a row: term occurrences first (one random key per occurrence, so
        # its words stay together, first word first), then the other words, shuffled. A unit is
        # taken when the words ranked before it are fewer than the budget.
        draw = torch.rand((batch, n_columns), generator=generator, dtype=torch.float64)
        key = torch.where(in_term, draw.gather(1, unit), 1.0 + draw)
        key = torch.where(valid, key, torch.full_like(key, 3.0))
        order = torch.argsort(key, dim=1, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n_columns).expand(batch, n_columns))
        n_words = match.words.n_words
        expected = n_words.to(torch.float64) * self.mlm_probability
        low = torch.floor(expected)
        up = torch.rand((batch,), generator=generator, dtype=torch.float64) < expected - low
        budget = torch.minimum(low.long() + up.long(), n_words)
        chosen = valid & (rank.gather(1, unit) < budget[:, None])
        selected = _token_flags(match.words.word_index, chosen)
        masked_ids, labels = replace_selected(
            input_ids, selected, self.boundaries, self.mask_replace_prob, self.random_replace_prob, generator
        )
        return {"input_ids": masked_ids, "labels": labels}


@dataclass
class MSLMCollator(MaskingCollatorBase):
    """Mask-Specific LM (arXiv 2403.18025): domain terms masked more often and weighted more.

    Every term occurrence (see ``TermMatcher``) is masked whole with probability
    ``term_probability``, every other word with probability ``mlm_probability``, independently;
    masked tokens are replaced 80/10/10. The batch also holds ``loss_weights`` (float32 [B, L]):
    ``term_weight`` at masked tokens of term occurrences, 1.0 at other masked tokens, 0.0 where
    ``labels`` is -100. They are meant for the loss

        loss = sum_i w_i * CE_i / (number of masked tokens),

    i over masked tokens, which ``losses.weighted_mlm_loss`` computes and the package's trainer
    applies when a batch holds ``loss_weights``; with every weight 1 it is the usual MLM loss.
    A plain ``transformers.Trainer`` passes ``loss_weights`` to the model, and masked-LM models
    that take ``**kwargs`` ignore it without a word: the loss is then the plain MLM loss. Train
    with ``MaskingTrainer`` (or read the weights in your own loss).

    The defaults are this package's, not the paper's: its authors' code (github.com/mykelismyname/
    MSLM) takes the terms from gold entity labels, masks entities at 0.25 and other tokens at
    0.075 to 0.225 in its run script, and derives the weights from the data (a softmax over one
    minus the share of tokens of each group), which puts a term's weight within about 10% of a
    generic word's. ``term_weight=2.0`` gives the terms a clearer edge; set it to taste.
    """

    tokenizer: Any
    terms: Sequence[str]
    term_probability: float = 0.5
    mlm_probability: float = 0.25  # the package's rate for every strategy
    term_weight: float = 2.0
    matcher: TermMatcher = field(init=False, repr=False)

    TABLES_FROM = (*MaskingCollatorBase.TABLES_FROM, "terms")

    def __post_init__(self) -> None:
        self.terms = _check_terms(self.terms)
        self._setup_base()
        self.matcher = TermMatcher(self.tokenizer, self.terms, boundaries=self.boundaries)

    def _check_settings(self) -> None:
        self.term_probability = check_probability("term_probability", self.term_probability)
        self.term_weight = check_loss_weight("term_weight", self.term_weight)
        super()._check_settings()

    def mask_batch(self, input_ids: torch.Tensor, never_word: torch.Tensor | None = None) -> dict:
        """Mask a padded [B, L] batch; ``never_word`` flags tokens that belong to no word (special
        tokens are always excluded). Returns ``input_ids`` (replaced), ``labels`` and
        ``loss_weights``."""
        input_ids, never_word = self._checked_inputs(input_ids, never_word)
        match = self.matcher.match(input_ids, never_word)
        valid, in_term, unit = _units(match)
        generator = self._generator()
        draw = torch.rand(unit.shape, generator=generator, dtype=torch.float64).gather(1, unit)
        rate = torch.where(in_term, torch.tensor(float(self.term_probability), dtype=torch.float64),
                           torch.tensor(float(self.mlm_probability), dtype=torch.float64))
        chosen = valid & (draw < rate)
        word_index = match.words.word_index
        selected = _token_flags(word_index, chosen)
        term_tokens = _token_flags(word_index, in_term & valid)
        masked_ids, labels = replace_selected(
            input_ids, selected, self.boundaries, self.mask_replace_prob, self.random_replace_prob, generator
        )
        loss_weights = torch.zeros(input_ids.shape, dtype=torch.float32)
        loss_weights[selected] = 1.0
        loss_weights[selected & term_tokens] = float(self.term_weight)
        return {"input_ids": masked_ids, "labels": labels, "loss_weights": loss_weights}


# ----------------------------------------------------------------------------------------------
# Terms without labels
# ----------------------------------------------------------------------------------------------


def domain_terms(
    anchors: Anchors | Iterable[str],
    scores: ScoreTable | Mapping[str, float] | str | None = None,
    top_fraction: float = 0.02,
    min_score: float | None = None,
) -> list[str]:
    """Domain terms for ``MSLMCollator`` / ``TermMaskingCollator`` without any labelled data.

    The anchor words (``Anchors`` or plain strings) plus the highest-scoring word types of
    ``scores`` (a ScoreTable, a ``{word: score}`` mapping or a saved table's path) that could be
    anchors (``reference.is_anchor_candidate``: a letter, no citation syntax such as "et" or "al",
    no broken text; given anchors too, and a phrase of citation words such as "et al."): the top
    ``top_fraction``
    of those (rounded up), or, when ``min_score`` is given, all of them scoring at least
    ``min_score``. Returned normalized, deduplicated and sorted. Raises ValueError when nothing is
    left.
    """
    from .scoring import as_score_table

    check_probability("top_fraction", top_fraction)
    if min_score is not None:
        if isinstance(min_score, bool) or not isinstance(min_score, numbers.Real):
            raise TypeError(f"min_score must be a number, got {min_score!r}")
        if not math.isfinite(min_score):
            raise ValueError(f"min_score must be finite, got {min_score}")
    scores = None if scores is None else as_score_table(scores)
    if isinstance(anchors, str):
        raise TypeError("anchors must be an Anchors object or a list of words, not a single string")
    anchor_words = anchors.words if hasattr(anchors, "words") else list(anchors)
    other = next((w for w in anchor_words if not isinstance(w, str)), None)
    if other is not None:  # e.g. the (word, score) pairs of reference.select_anchors
        raise TypeError(f"anchors must be words (strings), got {other!r}")
    found = {normalize_word(w) for w in anchor_words if has_letter(w)}
    if scores is not None and len(scores):
        words = scores.words
        values = np.asarray(scores.values, dtype=np.float64)
        candidate = np.fromiter((is_anchor_candidate(w) for w in words), dtype=bool, count=len(words))
        rows = np.flatnonzero(candidate)
        if min_score is not None:  # compared at the table's float32 precision: 0.732 keeps a word listed at 0.732
            rows = rows[values[rows] >= float(np.float32(min_score))]
        else:
            count = math.ceil(top_fraction * rows.size - 1e-9)
            # Highest first; words are sorted, so ties go to the alphabetically first.
            rows = rows[np.argsort(-values[rows], kind="stable")[:count]]
        found.update(normalize_word(words[i]) for i in rows.tolist())
    # A phrase among the anchors ("et al.") is citation syntax when each of its words is.
    found = {w for w in found if is_anchor_candidate(w) and not all(map(is_citation_word, w.split()))}
    if not found:
        raise ValueError(
            "no domain terms: the anchors hold no readable word with a letter and the score table gives none "
            "(raise top_fraction or lower min_score)"
        )
    return sorted(found)
