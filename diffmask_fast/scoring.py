"""Word scores s(w) (eq. 3-4): similarity of each word type to the domain's anchors.

``WordScorer`` embeds word types in chunks and sends each chunk through an ``AnchorIndex``
(``max``) or a dot product with one vector (``centroid``, ``mean``), so memory
stays O(chunk x D) for any number of words and anchors: no words x anchors matrix is ever held.
The result is a ``ScoreTable``: sorted words with float32 scores and nearest-anchor ids, saved
as a compact ``.npz`` (or JSON) that the collator loads in a fraction of a second.
"""

from __future__ import annotations

import bisect
import contextlib
import inspect
import io
import itertools
import json
import math
import numbers
import os
import random
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import reference
from ._checks import (check_lowercase, earlier_normalization, first_blank_or_padded, first_unnormalized,
                      refuse_one_string, shown_apart, whole_number, word_list)
from ._io import atomic_write_bytes, atomic_write_json, check_input_file, json_ready, read_json
from .advice import DiffmaskWarning
from .anchors import Anchors
from .contextual import ContextualAnchors, contextual_anchor_vectors
from .embedding import WordEmbedder, has_lone_surrogate
from .general import GeneralFrequencies
from .hf_loading import saved_reference
from .index import AnchorIndex, auto_kind, default_recall_sample, first_equal_rows, unit_rows
from .tokenization import tokenize_texts

SIMILARITIES = ("max", "centroid", "mean")
#: What a table's scores are: one of SIMILARITIES, or "given" (made elsewhere: ``from_mapping``).
TABLE_SIMILARITIES = SIMILARITIES + ("given",)
SCORES_FORMAT = "diffmask_fast.word_scores/1"
#: A high and a low surrogate code point in a row: JSON escapes join them into one character.
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
#: Format tag of the binary (.npz) score table.
BINARY_SCORES_FORMAT = "diffmask_fast.word_scores.npz/1"


def check_unknown_score(unknown_score: float) -> None:
    """Refuse a score for unknown words the table cannot hold (it is stored as float32), or that
    is no number ("0.5" or True would be read as one)."""
    if isinstance(unknown_score, (bool, np.bool_)) or not isinstance(unknown_score, numbers.Real):
        raise TypeError(f"unknown_score must be a number, got {type(unknown_score).__name__} {unknown_score!r:.40}")
    if not (math.isfinite(unknown_score) and abs(unknown_score) <= float(np.finfo(np.float32).max)):
        raise ValueError(f"unknown_score must be finite (and within float32's range), got {unknown_score}")


def normalize_words(words: Iterable[str], lowercase: bool = True) -> list[str]:
    """Sorted distinct normalized forms (reference.normalize_word) of the non-blank words, the
    whitespace around them stripped (lookups strip it too).

    Words that are already normalized (the usual case: lowercase, letters or digits at both
    ends) skip the character-by-character stripping.
    """
    keys = set()
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"words must be strings, got {word!r} ({type(word).__name__})")
        given, word = word, word.strip()  # a line of readlines() keeps its newline
        if not word:
            continue
        lowered = word.lower() if lowercase else word
        if lowered[0].isalnum() and lowered[-1].isalnum() \
                and reference.is_composed(lowered):
            keys.add(lowered)
        else:  # as given: whitespace is stripped with the marks after it, as lookups strip it
            keys.add(reference.normalize_word(given, lowercase))
    keys.discard("")
    return sorted(keys)


class _WordValues(Mapping):
    """Read-only word -> value view over a sorted word list and a value array."""

    __slots__ = ("_words", "_values", "_valid")

    def __init__(self, words: list, values: np.ndarray, valid: np.ndarray | None = None):
        self._words, self._values, self._valid = words, values, valid

    def _row(self, word) -> int:
        if not isinstance(word, str):
            return -1
        row = bisect.bisect_left(self._words, word)
        if row < len(self._words) and self._words[row] == word and (self._valid is None or self._valid[row]):
            return row
        return -1

    def __getitem__(self, word):
        row = self._row(word)
        if row < 0:
            raise KeyError(word)
        return self._values[row].item()

    def __contains__(self, word) -> bool:
        return self._row(word) >= 0

    def __iter__(self):
        if self._valid is None:
            return iter(self._words)
        return itertools.compress(self._words, self._valid.tolist())

    def __len__(self) -> int:
        return len(self._words) if self._valid is None else int(self._valid.sum())

    def __repr__(self) -> str:
        return f"<{len(self):,} words>"


def _check_normalized(words: Sequence[str], lowercase: bool) -> None:
    """Refuse keys that are not normalized words: the collator and ``score`` look up
    normalize_word(w), so a key "Enzyme" or "receptor," could never be found."""
    check_lowercase(lowercase)
    padded = first_blank_or_padded(words)  # first: whitespace is the likelier slip, and says more
    if padded is not None:
        raise ValueError(f"score table keys are words, non-empty and without whitespace before or after them: "
                         f"{padded!r} would never be looked up (lookups strip it); ScoreTable.from_mapping strips "
                         "keys and leaves blank ones out")
    found = first_unnormalized(words, lowercase)
    if found is not None:
        word, normalized = shown_apart(*found)
        reason = earlier_normalization(found[0], lowercase)
        raise ValueError(f"score table keys must be normalized words (reference.normalize_word): {word} would "
                         f"be looked up as {normalized} and never found; ScoreTable.from_mapping normalizes keys"
                         + (f" (tables saved by an earlier version, which {reason}: score again)" if reason else ""))


def _check_scores_are_numbers(items) -> None:
    """float() would read the score "0.5" as 0.5 and True as 1.0: a table made from parsed text
    that was never converted, or from flags, is refused instead."""
    for word, score in items:
        if isinstance(score, (str, bytes, bool, np.bool_)):
            raise TypeError(f"scores must be numbers, got {score!r} for {word!r}")


def _one_dimensional(values, name: str, kinds: str) -> np.ndarray:
    """``values`` as a 1-D array of numbers of a dtype kind in ``kinds``: a [N, 2] array was
    flattened into 2N values, silently given to the wrong words, and strings were parsed."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one value per word (1-D), got an array of shape {array.shape}")
    if array.size and array.dtype.kind not in kinds:
        raise TypeError(f"{name} must be {'numbers' if 'f' in kinds else 'integers'}, got an array of {array.dtype}")
    return array.astype(np.float64 if "f" in kinds else np.int64, copy=False)


@contextlib.contextmanager
def _fields_of(path: Path) -> Iterator[None]:
    """A missing or mistyped field of a score file as a ValueError that names the file."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{os.fspath(path)!r} is not a valid word-scores file: {detail}") from error


def _check_nearest(nearest: np.ndarray, words: Sequence[str], anchor_count: int) -> None:
    """Each nearest-anchor id must index ``anchors`` or be -1 (none): an id beyond them would name
    no anchor, silently, in every explanation of the table."""
    bad = (nearest < -1) | (nearest >= anchor_count)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"nearest-anchor ids must be -1 (none) or index the table's {anchor_count} anchors; "
                         f"{int(bad.sum())} do not (e.g. {int(nearest[row])} for {words[row]!r})")


class ScoreTable:
    """s(w) for every scored word type, keyed by the normalized word (reference.normalize_word).

    Held as a sorted list of words with float32 ``values`` and int32 ``nearest`` (index of each
    word's most similar anchor in ``anchors`` for ``max`` similarity, -1 otherwise), so a table of
    millions of words is compact, pickles fast into DataLoader workers, and looks words up by
    binary search. ``scores`` and ``nearest_anchor`` are read-only mappings over it. Words outside
    the table score ``unknown_score``. ``info`` records how the scores were made.
    """

    def __init__(self, scores: Mapping[str, float] | None = None, anchors: Sequence[str] = (),
                 nearest_anchor: Mapping[str, int] | None = None, similarity: str = "max",
                 unknown_score: float = 0.0, lowercase: bool = True, info: dict | None = None):
        scores = dict(scores or {})
        words = sorted(scores)
        _check_normalized(words, lowercase)
        _check_scores_are_numbers(scores.items())
        values = np.fromiter((float(scores[w]) for w in words), dtype=np.float64, count=len(words))
        nearest = None
        if nearest_anchor:
            nearest = np.fromiter((int(nearest_anchor.get(w, -1)) for w in words), dtype=np.int64, count=len(words))
        self._set(words, values, nearest, anchors, similarity, unknown_score, lowercase, info)

    @classmethod
    def from_arrays(cls, words: Sequence[str], values, nearest=None, *, anchors: Sequence[str] = (),
                    similarity: str = "max", unknown_score: float = 0.0, lowercase: bool = True,
                    info: dict | None = None, sorted_unique: bool = False) -> "ScoreTable":
        """A table from parallel arrays; ``sorted_unique=True`` promises ``words`` are sorted and
        distinct (skipping the sort). Words are used as keys as they are, so they must be
        normalized (``normalize_words``); others are refused, as they could never be found."""
        refuse_one_string(words, "words", "a sequence of words")
        words = list(words)
        values = _one_dimensional(values, "scores", "fiu")
        nearest = None if nearest is None else _one_dimensional(nearest, "nearest anchors", "iu")
        if values.shape[0] != len(words) or (nearest is not None and nearest.shape[0] != len(words)):
            raise ValueError(f"{len(words)} words but {values.shape[0]} scores"
                             + ("" if nearest is None else f" and {nearest.shape[0]} nearest anchors"))
        if not sorted_unique:
            order = sorted(range(len(words)), key=words.__getitem__)
            words = [words[i] for i in order]
            values = values[order]
            nearest = None if nearest is None else nearest[order]
            if any(a == b for a, b in zip(words, itertools.islice(words, 1, None))):
                raise ValueError("score table words must be distinct")
        else:  # a broken promise would make lookups miss (they bisect) and the saved file unreadable
            pairs = enumerate(zip(words, itertools.islice(words, 1, None)))
            wrong = next((i for i, (a, b) in pairs if not a < b), None)
            if wrong is not None:
                raise ValueError(f"sorted_unique=True, but words {wrong} and {wrong + 1} ({words[wrong]!r:.40}, "
                                 f"{words[wrong + 1]!r:.40}) are not in increasing order")
        _check_normalized(words, lowercase)
        table = cls.__new__(cls)
        table._set(words, values, nearest, anchors, similarity, unknown_score, lowercase, info)
        return table

    def _set(self, words, values, nearest, anchors, similarity, unknown_score, lowercase, info) -> None:
        with np.errstate(over="ignore"):  # a score beyond float32's range becomes inf, refused below
            stored = np.ascontiguousarray(values, dtype=np.float32)
        if not np.isfinite(stored).all():
            bad = words[int(np.flatnonzero(~np.isfinite(stored))[0])]
            raise ValueError(f"word scores must be finite (and within float32's range, as the table holds them); "
                             f"{int((~np.isfinite(stored)).sum())} are not (e.g. {bad!r})")
        check_unknown_score(unknown_score)
        if similarity not in TABLE_SIMILARITIES:
            raise ValueError(f"a score table's similarity is one of {', '.join(TABLE_SIMILARITIES)}, got {similarity!r}")
        check_lowercase(lowercase)
        anchors = tuple(word_list(anchors, "anchors", "a list of anchor words"))
        if nearest is not None:
            _check_nearest(np.asarray(nearest), words, len(anchors))
        self._words: list[str] = words
        self.values = stored
        self.nearest = (np.full(len(words), -1, dtype=np.int32) if nearest is None
                        else np.ascontiguousarray(nearest, dtype=np.int32))
        self.anchors = anchors
        self.similarity = similarity
        # As float32, the type of the table's and the collators' cached scores: an unknown word then
        # weighs exactly as a word scored the same, and as itself once a collator has cached it.
        self.unknown_score = float(np.float32(unknown_score))
        self.lowercase = bool(lowercase)
        self.info = dict(info or {})

    # -- lookups -------------------------------------------------------------------------------
    @property
    def words(self) -> list[str]:
        """The scored words, sorted (do not modify)."""
        return self._words

    @property
    def scores(self) -> Mapping[str, float]:
        return _WordValues(self._words, self.values)

    @property
    def nearest_anchor(self) -> Mapping[str, int]:
        return _WordValues(self._words, self.nearest, self.nearest >= 0)

    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and self._row(self.key(word)) >= 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScoreTable):
            return NotImplemented
        return (self._words == other._words and np.array_equal(self.values, other.values)
                and np.array_equal(self.nearest, other.nearest) and self.anchors == other.anchors
                and self.similarity == other.similarity and self.unknown_score == other.unknown_score
                and self.lowercase == other.lowercase)

    def __repr__(self) -> str:
        return (f"ScoreTable({len(self):,} words, {len(self.anchors)} anchors, similarity={self.similarity!r}, "
                f"unknown_score={self.unknown_score})")

    def _row(self, key: str) -> int:
        row = bisect.bisect_left(self._words, key)
        return row if row < len(self._words) and self._words[row] == key else -1

    def key(self, word: str) -> str:
        """The table key of a surface word: its normalized form."""
        if not isinstance(word, str):
            raise TypeError(f"a word must be a string, got {type(word).__name__}: {word!r}")
        return reference.normalize_word(word, self.lowercase)

    def score(self, word: str) -> float:
        """s(w) of a surface word (normalized first); ``unknown_score`` when it was never scored."""
        row = self._row(self.key(word))
        return float(self.values[row]) if row >= 0 else self.unknown_score

    def scores_of(self, words: Iterable[str]) -> list[float]:
        refuse_one_string(words, "words", "an iterable of words")
        return [self.score(w) for w in words]

    def nearest_anchor_of(self, word: str) -> str | None:
        row = self._row(self.key(word))
        index = int(self.nearest[row]) if row >= 0 else -1
        return self.anchors[index] if 0 <= index < len(self.anchors) else None

    def top(self, n: int = 20) -> list[tuple[str, float]]:
        """The ``n`` highest-scoring words, ties broken by word."""
        n = whole_number(n, "n (a number of words)", least=0)  # -1 is no number of words, as for most_common
        if n == 0 or not len(self):
            return []
        values = self.values
        if n < len(values):
            threshold = np.partition(values, len(values) - n)[len(values) - n]
            rows = np.flatnonzero(values >= threshold)
        else:
            rows = np.arange(len(values))
        rows = rows[np.argsort(-values[rows], kind="stable")][:n]
        return [(self._words[i], float(values[i])) for i in rows.tolist()]

    # -- files ---------------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"anchors": list(self.anchors), "similarity": self.similarity, "unknown_score": self.unknown_score,
                "lowercase": self.lowercase, "info": self.info}

    def save(self, path: str | os.PathLike, format: str | None = None) -> None:
        """Write the table atomically: ``format`` "binary" (a .npz of sorted UTF-8 words, float32
        scores and int32 nearest anchors; the default) or "json" (the default for a .json path)."""
        if format is None:
            format = "json" if os.fspath(path).lower().endswith(".json") else "binary"
        if format == "json":
            paired = next((w for w in self._words if _SURROGATE_PAIR.search(w)), None)
            if paired is not None:  # JSON's "\ud83d\ude00" reads back as one character: another word
                raise ValueError(f"the word {paired!r} holds a surrogate pair as two code points, which JSON reads "
                                 "back as one character (another word); save the table in the binary format")
            nearest = {w: int(i) for w, i in zip(self._words, self.nearest.tolist()) if i >= 0}
            atomic_write_json(path, {"format": SCORES_FORMAT, **self._meta(),
                                     "scores": dict(zip(self._words, self.values.tolist())),
                                     "nearest_anchor": nearest})
            return
        if format != "binary":
            raise ValueError(f"unknown score-table format {format!r}; expected 'binary' or 'json'")
        encoded = [w.encode("utf-8", "surrogatepass") for w in self._words]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        # Every table is made with its keys checked (from_arrays, __init__), so a file this
        # version writes need not be checked again when loaded; a file without the mark is.
        meta = {"format": BINARY_SCORES_FORMAT, "count": len(self._words), "keys_normalized": True, **self._meta()}
        buffer = io.BytesIO()
        # ASCII escapes: an anchor holding a lone surrogate (broken text) survives the round trip.
        header = json.dumps(json_ready(meta), allow_nan=False).encode("ascii")  # as the JSON format takes info
        np.savez(buffer, meta=np.frombuffer(header, dtype=np.uint8),
                 words=np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets=offsets,
                 scores=self.values, nearest=self.nearest)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ScoreTable":
        """Read a table written by ``save`` (either format, told apart by content)."""
        path = Path(path)
        check_input_file(path, "word scores", folder="not a file: give the .npz or .json file in it")
        with open(path, "rb") as handle:
            start = handle.read(4)
        if start.startswith(b"PK"):
            return cls._load_binary(path)
        payload = read_json(path, "word scores")
        if not isinstance(payload, dict) or payload.get("format") != SCORES_FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a word-scores file (expected format {SCORES_FORMAT})")
        with _fields_of(path):
            _check_scores_are_numbers(payload["scores"].items())  # a hand-edited "0.5" is not read as 0.5
            _check_scores_are_numbers([("unknown_score", payload["unknown_score"])])
            scores = {w: float(s) for w, s in payload["scores"].items()}
            words = sorted(scores)
            lowercase = payload["lowercase"]
            nearest = payload.get("nearest_anchor") or {}
            odd = next(((w, i) for w, i in nearest.items() if type(i) is not int), None)
            if odd is not None:  # int() would read "1" and True as 1, and 1.9 as 1
                raise TypeError(f"nearest-anchor ids must be whole numbers, got {odd[1]!r} for {odd[0]!r}")
            return cls.from_arrays(
                words, [scores[w] for w in words], [int(nearest.get(w, -1)) for w in words], sorted_unique=True,
                anchors=payload["anchors"], similarity=payload["similarity"],
                unknown_score=float(payload["unknown_score"]), lowercase=lowercase, info=dict(payload.get("info") or {}),
            )

    @classmethod
    def _load_binary(cls, path: Path) -> "ScoreTable":
        def invalid(reason: str) -> ValueError:
            return ValueError(f"{str(path)!r} is not a valid binary word-scores file: {reason}")

        if not zipfile.is_zipfile(path):  # else numpy reads it as a pickle, and says so
            raise invalid("it starts as a .npz archive does but is none (damaged, or cut short)")
        try:
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in ("meta", "words", "offsets", "scores", "nearest")}
        # zipfile raises NotImplementedError for a compression method or version it lacks, and
        # RuntimeError for a member marked encrypted: damage to a header's flags, as much as any.
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, NotImplementedError,
                RuntimeError) as error:
            raise invalid(str(error)) from error
        try:
            meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise invalid(f"unreadable metadata ({error})") from error
        if not isinstance(meta, dict) or meta.get("format") != BINARY_SCORES_FORMAT:
            raise invalid(f"expected format {BINARY_SCORES_FORMAT}")
        offsets, scores, nearest = arrays["offsets"], arrays["scores"], arrays["nearest"]
        count = meta.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise invalid(f"'count' must be a number of words, got {count!r}")
        kinds = {"offsets": offsets.dtype.kind, "nearest": nearest.dtype.kind, "scores": scores.dtype.kind,
                  "words": arrays["words"].dtype.kind}
        odd = next((name for name, kind in kinds.items() if kind not in ("f" if name == "scores" else "iu")), None)
        if odd is not None:
            raise invalid(f"its {odd} are {arrays[odd].dtype} values")
        if (offsets.shape != (count + 1,) or scores.shape != (count,) or nearest.shape != (count,)
                or offsets[0] != 0 or offsets[-1] != arrays["words"].shape[0] or (np.diff(offsets) < 0).any()):
            raise invalid("array sizes do not agree")
        data = arrays["words"].tobytes()
        bounds = offsets.tolist()
        try:
            words = [data[bounds[i] : bounds[i + 1]].decode("utf-8", "surrogatepass") for i in range(count)]
        except UnicodeDecodeError as error:
            raise invalid(f"words are not UTF-8 ({error})") from error
        if any(a >= b for a, b in zip(words, itertools.islice(words, 1, None))):
            raise invalid("words are not sorted and distinct")
        with _fields_of(path):
            anchors, similarity = meta["anchors"], meta["similarity"]
            _check_scores_are_numbers([("unknown_score", meta["unknown_score"])])
            unknown_score, lowercase = float(meta["unknown_score"]), meta["lowercase"]
            if meta.get("keys_normalized") is not True:
                _check_normalized(words, lowercase)
            table = cls.__new__(cls)
            table._set(words, scores, nearest, anchors, similarity, unknown_score, lowercase,
                       dict(meta.get("info") or {}))
            return table

    @classmethod
    def from_mapping(cls, scores: Mapping[str, float], unknown_score: float = 0.0, lowercase: bool = True) -> "ScoreTable":
        """A table from given scores (keys are normalized), e.g. for hand-made or external scores.

        Keys that normalize to one word ("The" and "the,") give it the highest of their scores,
        whatever their order. Blank keys are left out."""
        _check_scores_are_numbers(scores.items())
        normalized: dict[str, float] = {}
        for word, score in scores.items():
            if not isinstance(word, str):
                raise TypeError(f"scores must map words (str) to scores, got the key {word!r} ({type(word).__name__})")
            key, value = reference.normalize_word(word, lowercase), float(score)
            if not key:
                continue  # no word of text is blank: it would never be looked up
            if key not in normalized or value > normalized[key] or math.isnan(value):  # NaN stays, to be refused
                normalized[key] = value
        return cls(normalized, unknown_score=unknown_score, lowercase=lowercase, similarity="given")


def as_score_table(scores: "ScoreTable | Mapping[str, float] | str | os.PathLike") -> ScoreTable:
    """A ScoreTable from what the collators take: a table, a ``{word: score}`` mapping (keys
    normalized), or the path of a table saved by ``diffmask score``."""
    if isinstance(scores, ScoreTable):
        return scores
    if isinstance(scores, (str, os.PathLike)):
        return ScoreTable.load(scores)
    # Word counts exist only once counting is imported (and with it Numba, which masking on a
    # training machine does without): no import here.
    counting = sys.modules.get(f"{__package__}.counting")
    if counting is not None and isinstance(scores, counting.WordCounts):
        raise TypeError("scores must be word scores, got word counts (WordCounts): mine anchors from them "
                        "(mine_anchors) and score words against those (WordScorer)")
    if isinstance(scores, Mapping):
        return ScoreTable.from_mapping(scores)
    raise TypeError(f"scores must be a ScoreTable, a {{word: score}} mapping or the path of a saved table, "
                    f"got {type(scores).__name__}")


def load_scores_for(path: str | os.PathLike, anchors: Anchors | None, anchors_path: str | os.PathLike | None):
    """The score table saved at ``path``, refused when ``anchors`` (read from ``anchors_path``)
    are not the anchors it was scored against."""
    table = ScoreTable.load(path)
    if anchors is not None and set(anchors.words) != set(table.anchors):
        raise ValueError(f"the score table {os.fspath(path)!r} was made against other anchors than those of "
                         f"{os.fspath(anchors_path)!r}; give the anchors it was scored against, or only --scores")
    return table


def similarity_to_anchors(word_vectors: torch.Tensor, anchor_vectors: torch.Tensor, similarity: str = "max"):
    """s(w) for each row of ``word_vectors`` (eq. 3-4) and, for ``max``, the nearest anchor.

    ``max`` is the exact op. ``mean`` and ``centroid`` need no words x anchors matrix: the mean
    of the cosines to the anchors is the dot product of the unit word vector with the mean unit
    anchor vector, and ``centroid`` the cosine to the mean anchor vector (``_similarity_target``).
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; expected one of {', '.join(SIMILARITIES)}")
    if anchor_vectors.ndim != 2 or anchor_vectors.shape[0] == 0:
        raise ValueError(f"anchor vectors must be a non-empty [K, D] matrix, got shape {tuple(anchor_vectors.shape)}")
    if word_vectors.ndim < 2 or word_vectors.shape[-1] != anchor_vectors.shape[1]:
        raise ValueError(f"word vectors [..., D] and anchor vectors [K, D] must share D, got shapes "
                         f"{tuple(word_vectors.shape)} and {tuple(anchor_vectors.shape)}")
    if similarity == "max":
        from .ops import max_anchor_similarity

        return max_anchor_similarity(word_vectors, anchor_vectors)
    return _similarity_to(word_vectors, _similarity_target(anchor_vectors, similarity))


def _similarity_target(anchor_vectors: torch.Tensor, similarity: str,
                       owners: torch.Tensor | None = None) -> torch.Tensor:
    """The float64 vector whose dot product with a unit word vector is its score: for ``mean``
    the mean unit anchor vector, for ``centroid`` the unit vector along the anchors' mean (their
    vectors scaled alike first, so no sum overflows). A centroid of unit anchors would be a
    multiple of ``mean``'s vector, every score scaled alike: the same masks.

    ``owners``, the anchor word of each vector (contextual anchors' occurrences), makes the
    means over anchor words, as in the paper: each word's occurrences share its weight, which
    would otherwise grow with how many of them were found."""
    rows = unit_rows(anchor_vectors, torch.float64) if similarity == "mean" else anchor_vectors.double()
    if similarity == "centroid":
        largest = float(rows.abs().max()) if rows.numel() else 0.0
        rows = rows / largest if largest > 0 else rows
    if owners is None or bool((torch.bincount(owners) <= 1).all()):
        mean = rows.mean(dim=0)
    else:
        _, word, occurrences = torch.unique(owners, return_inverse=True, return_counts=True)
        weights = 1.0 / (occurrences[word].double() * len(occurrences))
        mean = (rows * weights[:, None]).sum(dim=0)
    return mean if similarity == "mean" else unit_rows(mean[None], torch.float64).squeeze(0)


def _similarity_to(word_vectors: torch.Tensor, target: torch.Tensor):
    values = (unit_rows(word_vectors, torch.float64) @ target).float()
    return values, torch.full(values.shape, -1, dtype=torch.long)


#: Index settings WordScorer sets itself.
_SCORER_INDEX_SETTINGS = ("kind", "sample_queries", "seed", "progress")


def _check_index_choice(index: str, index_options: dict | None, similarity: str) -> None:
    """Refuse, before anything is embedded, an index choice ``AnchorIndex`` would refuse."""
    from .index import AnchorIndex, check_index_options

    options = dict(index_options or {})
    taken = [name for name in _SCORER_INDEX_SETTINGS if name in options]
    if taken:
        raise ValueError(f"index_options cannot set {', '.join(taken)}: the scorer sets "
                         f"{'it' if len(taken) == 1 else 'them'} (index= and seed= choose the kind and seed)")
    known = set(inspect.signature(AnchorIndex).parameters) - {"anchors", *_SCORER_INDEX_SETTINGS}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown index option(s) {', '.join(map(repr, unknown))}; expected some of "
                         f"{', '.join(sorted(known))}")
    whole = {name: value for name, value in options.items() if name not in ("recall_target", "spill", "engine",
                                                                            "use_gpu")}
    check_index_options(index, **{name: options[name] for name in ("recall_target", "spill", "engine")
                                  if name in options}, **whole)
    if similarity != "max" and (index != "auto" or options):
        raise ValueError(f"index and index_options choose the nearest-anchor search of similarity 'max'; "
                         f"similarity {similarity!r} compares each word with every anchor")


def _as_float32_vectors(vectors: torch.Tensor) -> torch.Tensor:
    """Contextual anchor vectors in float32, the type scoring computes in; finite values beyond
    its range are refused here rather than reported later as infinities the model produced."""
    if not vectors.is_floating_point():
        raise ValueError(f"contextual anchor vectors must be floating point, got {vectors.dtype}")
    finite = vectors[torch.isfinite(vectors)]
    largest = float(finite.abs().max()) if finite.numel() else 0.0
    if largest > torch.finfo(torch.float32).max:
        raise ValueError(f"contextual anchor vectors hold values beyond float32's range (largest magnitude "
                         f"{largest:.3g}); scale them down, which leaves their cosine similarities as they are")
    return vectors.float()


def _anchor_words(anchors) -> list[str]:
    """Anchor words in the form words are scored in (``normalize_word``, case kept: lowercasing
    is chosen when scoring): an anchor "cell," given by hand was embedded with its comma, so the
    word "cell" scored below 1 against it. Copies that normalize alike are one anchor."""
    if isinstance(anchors, Anchors):
        return anchors.words
    words = word_list(anchors, "anchors", "an Anchors result or a list of words")
    return list(dict.fromkeys(reference.normalize_word(word, lowercase=False) for word in words))


def _encodable(keys: list[str]) -> list[str]:
    """``keys`` without words that are not valid Unicode text (lone surrogates, kept by counting
    from broken input): no tokenizer takes them, and a tokenizer's decoded words never hold
    them, so masking never looks them up."""
    kept = [key for key in keys if not has_lone_surrogate(key)]
    if len(kept) < len(keys):
        example = next(key for key in keys if has_lone_surrogate(key))
        warnings.warn(f"skipped {len(keys) - len(kept):,} word(s) holding lone surrogates (broken text such as "
                      f"{example!r}); they stay unscored", DiffmaskWarning, stacklevel=3)
    return kept


def _warn_of_cased_anchors(embedder: WordEmbedder, anchors: Sequence[str]) -> None:
    """Name anchors with capitals the model reads apart from their lowercase form, when the words
    scored are lowercased: no word is then scored against its own spelling ("python" against
    the anchor "Python"), and the anchor's own word scores below 1."""
    tokenizer = getattr(embedder, "tokenizer", None)
    cased = [anchor for anchor in anchors
             if reference.normalize_word(anchor) != anchor and not has_lone_surrogate(anchor)]
    if tokenizer is None or not cased:
        return
    lowered = [reference.normalize_word(anchor) for anchor in cased]
    read = tokenize_texts(tokenizer, cased + lowered, add_special_tokens=False)["input_ids"]
    apart = [(anchor, low) for anchor, low, as_given, as_lowered in zip(cased, lowered, read, read[len(cased):])
             if as_given != as_lowered]
    if apart:
        shown = ", ".join(f"{anchor!r}" for anchor, _ in apart[:5])
        warnings.warn(f"{len(apart)} anchor(s) hold capitals the embedding model reads ({shown}) while the words "
                      f"scored are lowercased: {apart[0][1]!r} is scored against {apart[0][0]!r} as written, below "
                      "1.0; give the anchors lowercased, or score with lowercase=False", DiffmaskWarning, stacklevel=3)


#: How many of the most common general-English words ``anchors_read_as_common_words`` compares with.
COMMON_WORDS_CHECKED = 1000


def anchors_read_as_common_words(embedder: WordEmbedder, anchors: Sequence[str]) -> list[tuple[str, str]]:
    """(anchor, common word) for each anchor the embedder's tokenizer encodes exactly as a different
    word among the ``COMMON_WORDS_CHECKED`` most common English words.

    TF-ICF judges an anchor as written, the model as it reads it: an uncased model strips accents,
    so the broken-text fragment "â", rare in English, becomes "a", and every "a" would score 1.0.
    """
    tokenizer = getattr(embedder, "tokenizer", None)
    anchors = [anchor for anchor in anchors if not has_lone_surrogate(anchor)]  # no tokenizer takes them
    if tokenizer is None or not anchors:
        return []
    common = GeneralFrequencies.default().most_common(COMMON_WORDS_CHECKED)

    def token_ids(words: list[str]) -> list[tuple]:
        return [tuple(ids) for ids in tokenize_texts(tokenizer, words, add_special_tokens=False)["input_ids"]]

    reading: dict = {}
    for word, ids in zip(common, token_ids(common)):
        reading.setdefault(ids, word)  # the more common word of two read alike
    found = []
    for anchor, ids in zip(anchors, token_ids(anchors)):
        common_word = reading.get(ids)
        if ids and common_word is not None and common_word != reference.normalize_word(anchor):
            found.append((anchor, common_word))
    return found


class WordScorer:
    """Scores word types against a domain's anchors with one embedding model.

    ``anchors`` is an ``Anchors`` result, a list of anchor words, or ``ContextualAnchors``
    (one vector per occurrence; see ``with_contextual_anchors``). ``index`` and
    ``index_options`` choose the ``AnchorIndex`` for ``max`` similarity (``auto``: exact search
    below 65,536 anchor vectors, IVF from there on); an approximate index is tuned and its recall measured on a
    sample of the words being scored. ``chunk_size`` words are embedded and scored at a time.
    """

    def __init__(self, embedder: WordEmbedder, anchors: Anchors | Sequence[str] | ContextualAnchors,
                 similarity: str = "max", unknown_score: float = 0.0, *, index: str = "auto",
                 index_options: dict | None = None, chunk_size: int = 65536, seed: int = 0):
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; expected one of {', '.join(SIMILARITIES)}")
        chunk_size = whole_number(chunk_size, "chunk_size")
        _check_index_choice(index, index_options, similarity)
        self.embedder = embedder
        self.similarity = similarity
        check_unknown_score(unknown_score)  # before hours of embedding, not when the table is built
        if not callable(getattr(embedder, "embed", None)):
            raise TypeError(f"embedder must be a WordEmbedder, got {type(embedder).__name__}")
        self.unknown_score = float(unknown_score)
        self.index_kind = index
        self.index_options = dict(index_options or {})
        self.chunk_size = int(chunk_size)
        self.seed = int(seed)
        self.index: AnchorIndex | None = None
        #: The ContextualAnchors given, if any.
        self.contextual_anchors = anchors if isinstance(anchors, ContextualAnchors) else None
        if isinstance(anchors, ContextualAnchors):
            if len(anchors) == 0:
                raise ValueError("WordScorer needs at least one anchor vector (K=0 given)")
            self.anchor_words = anchors.words
            # Where word vectors are compared and indexes built; vectors kept on a GPU failed there.
            self.anchor_vectors = _as_float32_vectors(anchors.vectors).cpu()
            self.vector_anchor = anchors.anchor_ids.long().cpu()
            if embedder.pooling != "mean":
                warnings.warn(f"contextual anchors are means of sub-token hidden states; word vectors made with "
                              f"pooling={embedder.pooling!r} are not comparable with them (use pooling='mean')",
                              DiffmaskWarning, stacklevel=2)
        else:
            words = _anchor_words(anchors)
            if not words:
                raise ValueError("WordScorer needs at least one anchor (K=0 given)")
            self.anchor_words = tuple(words)
            with warnings.catch_warnings():  # the zero anchors are named below, as anchors
                warnings.filterwarnings("ignore", r".* word\(s\) are read by the tokenizer as nothing but special",
                                        DiffmaskWarning)
                self.anchor_vectors = embedder.embed(list(self.anchor_words))
            self.vector_anchor = None
            zero = [w for w, v in zip(words, self.anchor_vectors) if not bool(v.any())]
            if zero:
                warnings.warn(f"{len(zero)} anchor(s) have a zero vector because the model knows none of their "
                              f"pieces ({', '.join(map(repr, zero[:5]))}); they match no word", DiffmaskWarning,
                              stacklevel=2)
        misread = anchors_read_as_common_words(embedder, self.anchor_words)
        if misread:
            shown = ", ".join(f"{anchor!r} as {common!r}" for anchor, common in misread[:5])
            warnings.warn(f"the embedding model reads {len(misread)} anchor(s) as very common English words "
                          f"({shown}): those words and their neighbours will score as domain words; "
                          "leave such anchors out", DiffmaskWarning, stacklevel=2)
        if self.anchor_vectors.shape[1] != embedder.dimension:
            why = ("contextual anchors are hidden states, and pooling='input_embeddings' gives input embeddings: use "
                   "pooling='mean'" if self.contextual_anchors is not None and embedder.pooling == "input_embeddings"
                   else "they come from different models")
            raise ValueError(f"the anchor vectors have {self.anchor_vectors.shape[1]} dimensions and the embedding "
                             f"model's word vectors {embedder.dimension}: {why}")
        broken = ~torch.isfinite(self.anchor_vectors).all(dim=1)
        if bool(broken.any()):
            rows = torch.nonzero(broken).flatten().tolist()
            owners = rows if self.vector_anchor is None else self.vector_anchor[rows].tolist()
            names = ", ".join(dict.fromkeys(repr(self.anchor_words[i]) for i in owners[:5]))
            raise ValueError(f"{len(rows):,} anchor vector(s) hold NaN or infinite values (anchors {names}): "
                             "the embedding model produced them")
        if self.contextual_anchors is None:
            self._merge_anchors_read_alike()
        self._drop_zero_anchors()
        self._target = (_similarity_target(self.anchor_vectors, similarity, self.vector_anchor) if similarity != "max"
                        else None)

    def _merge_anchors_read_alike(self) -> None:
        """Count once the anchor words the model gives one vector, bit for bit ("DNA" and "dna"
        for an uncased model, "café" and "cafe" where it strips accents): as two anchors they
        weighed that direction twice in ``mean`` and ``centroid``. The first names them."""
        first = first_equal_rows(self.anchor_vectors.float())
        kept = first == torch.arange(len(first))
        if bool(kept.all()):
            return
        alike = [(self.anchor_words[i], self.anchor_words[j]) for i, j in enumerate(first.tolist())
                 if i != j and bool(self.anchor_vectors[i].any())]  # zero vectors are named as such
        if alike:
            shown = ", ".join(f"{word!r} as {earlier!r}" for word, earlier in alike[:5])
            warnings.warn(f"the embedding model reads {len(alike)} anchor(s) exactly as an earlier one ({shown}): "
                          "each counts once, as the earlier anchor", DiffmaskWarning, stacklevel=3)
        self.vector_anchor = torch.nonzero(kept).squeeze(1)
        self.anchor_vectors = self.anchor_vectors[self.vector_anchor]

    def _drop_zero_anchors(self) -> None:
        """Leave zero anchor vectors (words the model knows no piece of) out: similar to nothing,
        they would otherwise be every word's nearest anchor at 0 where all cosines are negative,
        and dilute the mean."""
        nonzero = self.anchor_vectors.any(dim=1)
        if bool(nonzero.all()):
            return
        if not bool(nonzero.any()):
            raise ValueError("every anchor vector is zero (the model knows no piece of any anchor): no word can be "
                             "compared with them")
        rows = torch.nonzero(nonzero).squeeze(1)
        self.vector_anchor = rows if self.vector_anchor is None else self.vector_anchor[rows]
        self.anchor_vectors = self.anchor_vectors[rows]

    @classmethod
    def with_contextual_anchors(cls, embedder: WordEmbedder, anchors: Anchors | Sequence[str], texts: Iterable[str],
                                max_occurrences_per_anchor: int = 1000, *, context_options: dict | None = None,
                                **options) -> "WordScorer":
        """A scorer whose anchors are the vectors of up to ``max_occurrences_per_anchor``
        occurrences of each anchor word in ``texts`` (see ``contextual_anchor_vectors``)."""
        words = _anchor_words(anchors)
        contextual = contextual_anchor_vectors(embedder, texts, words, max_occurrences_per_anchor=max_occurrences_per_anchor,
                                               **(context_options or {}))
        return cls(embedder, contextual, **options)

    def build_index(self, sample_queries=None, progress: bool = False) -> AnchorIndex:
        """The index for ``max`` similarity (built once; ``score`` calls this with a sample of its words)."""
        if self.index is None:
            self.index = AnchorIndex(self.anchor_vectors, self.index_kind, sample_queries=sample_queries,
                                     seed=self.seed, progress=progress, **self.index_options)
        return self.index

    def _needs_sample(self) -> bool:
        k = self.anchor_vectors.shape[0]
        return self.index_kind in ("ivf", "hnsw") or (self.index_kind == "auto" and auto_kind(k) == "ivf")

    def score(self, words: Iterable[str], lowercase: bool = True, progress: bool | None = None) -> ScoreTable:
        """A ScoreTable for the given words (normalized and deduplicated first)."""
        refuse_one_string(words, "words", "an iterable of words")
        check_lowercase(lowercase)  # before the embedding, which can take hours
        keys = _encodable(normalize_words(words, lowercase))
        if not keys:
            raise ValueError("no words to score: the vocabulary is empty")
        if lowercase:
            _warn_of_cased_anchors(self.embedder, self.anchor_words)
        with self.embedder.unchanged():  # the model is fingerprinted once, not once per chunk
            values, nearest = self._score_keys(keys, progress)
        bad = ~np.isfinite(values)
        if bad.any():
            example = keys[int(np.flatnonzero(bad)[0])]
            raise ValueError(f"the embedding model produced non-finite vectors for {int(bad.sum()):,} words "
                             f"(e.g. {example!r}); word scores would be NaN")
        np.clip(values, -1.0, 1.0, out=values)  # cosines: float32 rounding gives 1.0000007 for an anchor itself
        return ScoreTable.from_arrays(
            keys, values, nearest if self.similarity == "max" else None, sorted_unique=True,
            anchors=self.anchor_words, similarity=self.similarity, unknown_score=self.unknown_score,
            lowercase=lowercase, info=self.describe(),
        )

    def _score_keys(self, keys: list[str], progress: bool | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, nearest anchors or -1) of normalized words, embedded ``chunk_size`` at a time."""
        show = self.embedder.progress if progress is None else progress
        if self.similarity == "max" and self.index is None:
            sample = None
            if self._needs_sample():
                limit = self.index_options.get("recall_sample")
                if limit is None:
                    limit = default_recall_sample(self.index_options.get("recall_target", 0.99))
                chosen = random.Random(self.seed).sample(keys, min(int(limit), len(keys)))
                sample = self.embedder.embed(chosen, progress=False) if chosen else None
            self.build_index(sample, progress=show)
        values = np.empty(len(keys), dtype=np.float32)
        nearest = np.full(len(keys), -1, dtype=np.int64)
        with tqdm(total=len(keys), desc="scoring words", unit="word", disable=not show) as bar:
            for begin in range(0, len(keys), self.chunk_size):
                chunk = keys[begin : begin + self.chunk_size]
                vectors = self.embedder.embed(chunk, progress=bar)
                if self.similarity == "max":
                    chunk_values, chunk_nearest = self.index.search(vectors)
                    if self.vector_anchor is not None:
                        chunk_nearest = self.vector_anchor[chunk_nearest]
                    chunk_nearest[~vectors.any(dim=1)] = -1  # a zero vector is near no anchor
                    nearest[begin : begin + len(chunk)] = chunk_nearest.numpy()
                else:
                    chunk_values, _ = _similarity_to(vectors, self._target)
                values[begin : begin + len(chunk)] = chunk_values.numpy()
        return values, nearest

    def describe(self) -> dict:
        """How this scorer makes scores: model, pooling, anchors and index (stored in the table)."""
        model = getattr(getattr(self.embedder.model, "config", None), "_name_or_path", "")
        model = saved_reference(model) if model else type(self.embedder.model).__name__
        info = {"model": model, "pooling": self.embedder.pooling, "similarity": self.similarity,
                "dtype": getattr(self.embedder, "compute_dtype", "float32"),
                "anchor_words": len(self.anchor_words), "anchor_vectors": int(self.anchor_vectors.shape[0]),
                "contextual": self.contextual_anchors is not None}
        if self.embedder.pooling != "input_embeddings":  # the only pooling that never truncates a word
            info["max_length"] = getattr(self.embedder, "max_length", None)
        if self.index is not None:
            info["index"] = self.index.describe()
            info["index_kind"] = self.index.kind
            info["recall"] = self.index.recall
        return info
