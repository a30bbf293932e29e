"""General-English word frequencies: c_G(w) and N_G of TF-ICF (eq. 2)."""

from __future__ import annotations

import heapq
import math
import numbers
import os
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from . import reference
from ._checks import check_lowercase, first_unnormalized, whole_number
from ._io import check_input_file

#: Tokens in the Google Web Trillion Word corpus the default table is drawn from. The shipped
#: table keeps only its 333,333 most frequent words, so its own sum is smaller.
GOOGLE_TRILLION_TOTAL = 1_024_908_267_229

#: The ``source`` of the default table (and of anchors mined against it), known without reading it.
DEFAULT_SOURCE = "google-web-trillion (wordsegment)"


def _is_number(value) -> bool:
    """A real number, numpy's included; not a bool, a string or bytes (which numpy would read)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class GeneralFrequencies:
    """A unigram table of general English.

    ``total`` is N_G, the size of the corpus the counts come from (not necessarily the sum of a
    truncated table). Keys are normalized as counted words are (``reference.normalize_word``,
    case kept), the counts of keys that normalize alike summed. Words missing from the table
    have count 0; TF-ICF smooths them (``reference.tf_icf``).
    """

    counts: dict
    total: float
    source: str = "custom"

    def __post_init__(self) -> None:
        if not isinstance(self.counts, Mapping):
            raise TypeError(f"general counts must be a mapping of words to counts, got {type(self.counts).__name__}")
        if not self.counts:
            raise ValueError("a general frequency table needs at least one word")
        if not (_is_number(self.total) and _fits_a_float(self.total) and math.isfinite(self.total) and self.total > 0):
            raise ValueError(f"the general corpus total must be a positive finite number, got {self.total!r}")
        # A string or bytes count would pass numpy's conversion below and fail every later use.
        odd = next(((w, c) for w, c in self.counts.items() if not isinstance(w, str) or not _is_number(c)), None)
        if odd is not None:
            word, count = odd
            problem = f"the key {word!r} is no string" if not isinstance(word, str) else f"{word!r}: {count!r}"
            raise ValueError(f"general counts must map words (strings) to numbers; {problem}")
        spaced = next((w for w in self.counts if w.split() != [w]), None)
        if spaced is not None:  # no counted word holds whitespace: "the " would leave "the" uncounted
            raise ValueError(f"the general count's word {spaced!r} is empty or holds whitespace, which no counted word "
                             "does (a padded column?)")
        # a negative or NaN count would give negative or NaN TF-ICF, and anchors ranked by it
        try:
            values = np.fromiter(self.counts.values(), dtype=np.float64, count=len(self.counts))
        except OverflowError:  # an int beyond float64's range
            word = next(w for w, c in self.counts.items() if not _fits_a_float(c))
            raise ValueError(f"general counts must be finite and non-negative; {word!r}: {self.counts[word]!r} "
                             "is too large for a float") from None
        bad = ~(np.isfinite(values) & (values >= 0))
        if bad.any():
            word = list(self.counts)[int(np.flatnonzero(bad)[0])]
            raise ValueError(f"general counts must be finite and non-negative; {int(bad.sum())} are not "
                             f"(e.g. {word!r}: {self.counts[word]!r})")
        if first_unnormalized(self.counts, lowercase=False) is not None:
            object.__setattr__(self, "counts", _normalized_keys(self.counts))
        counted = float(values.sum())
        if counted > self.total * (1 + 1e-9):  # frequencies above 1 in sum: the total is of another corpus
            raise ValueError(f"the general corpus total ({self.total:,.6g}) is less than the sum of its counts "
                             f"({counted:,.6g}); the total is the size of the corpus the counts were made on")

    def count(self, word: str) -> float:
        """c_G(w), with compounds of known parts counted as their rarest part (reference.general_count).
        Where the table keeps case, a spelling it holds is counted as written ("the" apart from
        "The"); ``lowercased()`` sums them, as anchors for a lowercased corpus need."""
        from .reference import general_count

        if not isinstance(word, str):
            raise TypeError(f"word must be a string, got {type(word).__name__}")
        return general_count(word, self.counts, self._folded_counts)

    def lowercased(self) -> "GeneralFrequencies":
        """This table with its words lowercased (counts of "DNA" and "dna" summed), to match a
        lowercased corpus: a cased key could never meet one of its words. Itself when no key has
        an upper-case letter."""
        folded = self._folded_counts
        return self if folded is None else GeneralFrequencies(dict(folded), self.total, self.source)

    @cached_property
    def _folded_counts(self) -> dict | None:
        """Where keys keep case, the counts by lowercase word: "dna" is found beside "DNA"
        (``reference.case_folded``, as ``reference.select_anchors`` folds the table)."""
        return reference.case_folded(self.counts)

    def relative(self, word: str) -> float:
        return self.count(word) / self.total

    def __contains__(self, word: object) -> bool:
        """Whether ``count`` finds the word (a key "The" counts "the", a key "café" counts "CAFÉ"),
        as a check before ``count`` expects."""
        return isinstance(word, str) and self.count(word) > 0

    def __hash__(self) -> int:  # the dataclass's would hash the dict of counts, which cannot be
        return hash((self.source, self.total, len(self.counts)))

    def __len__(self) -> int:
        return len(self.counts)

    def most_common(self, n: int) -> list[str]:
        """The ``n`` most frequent words, most frequent first (ties by word)."""
        n = whole_number(n, "n (words)", least=0)
        if self.source == DEFAULT_SOURCE and self is _default_table():  # cached: asked once per scorer
            return list(_most_common_default(n))
        return _most_common(self.counts, n)

    @classmethod
    def default(cls) -> "GeneralFrequencies":
        """Google Web Trillion Word unigram counts, as shipped in the ``wordsegment`` package."""
        return _default_table()

    @classmethod
    def from_file(cls, path: str | os.PathLike, total: float | None = None, lowercase: bool = True) -> "GeneralFrequencies":
        """Read a ``word<TAB>count`` table (one word a line; blank lines and ``#`` comments skipped).

        Words are lowercased like the target corpus, normalized as its words are ("protein," is
        "protein") and duplicates summed. ``total``
        defaults to the sum of the counts. A malformed line raises ``ValueError`` naming it.
        """
        check_lowercase(lowercase)
        path = Path(path)
        check_input_file(path, "general frequency table")
        counts: dict[str, float] = {}
        with open(path, encoding="utf-8-sig", errors="strict") as handle:  # -sig: a leading BOM is no part of a word
            for number, line in enumerate(_decoded_lines(handle, path), start=1):
                line = line.rstrip("\r\n")
                if not line.strip() or line.startswith("#"):
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or not parts[0]:
                    raise ValueError(f"{str(path)!r} line {number}: expected 'word<TAB>count', got {line[:80]!r}")
                if parts[0].split() != [parts[0]]:  # counted words never hold whitespace: it could never match
                    raise ValueError(f"{str(path)!r} line {number}: the word {parts[0]!r} holds whitespace, which no "
                                     "counted word does (a padded column?)")
                try:
                    value = float(parts[1])
                except ValueError:
                    raise ValueError(f"{str(path)!r} line {number}: count {parts[1]!r} is not a number") from None
                if not value >= 0 or value == float("inf"):
                    raise ValueError(f"{str(path)!r} line {number}: count must be finite and non-negative, got {parts[1]!r}")
                word = parts[0].lower() if lowercase else parts[0]
                counts[word] = counts.get(word, 0) + value
        if not counts:
            raise ValueError(f"general frequency table {str(path)!r} has no entries")
        return cls(counts, float(total) if total is not None else _table_total(counts, path), source=str(path))


def _normalized_keys(counts: dict) -> dict:
    """``counts`` keyed by words normalized as corpus words are (``reference.normalize_word``,
    case kept: lookups fold it), summing keys that normalize alike: a table split from raw text
    holds "protein," and "(protein)", and one with decomposed accents "re\u0301sume\u0301",
    which no counted word would ever meet."""
    return _summed_by(counts, lambda word: reference.normalize_word(word, lowercase=False))


def _summed_by(counts: dict, key: Callable[[str], str]) -> dict:
    """``counts`` keyed by ``key(word)``, the counts of words with one key summed."""
    summed: dict = {}
    for word, count in counts.items():
        word_key = key(word)
        summed[word_key] = summed.get(word_key, 0) + count
    return summed


def _fits_a_float(count) -> bool:
    try:
        float(count)
    except OverflowError:
        return False
    return True


def _table_total(counts: dict, path: Path) -> float:
    """The sum of a table's counts, as N_G; ValueError naming the file when it is no positive
    finite number (every count 0), which TF-ICF cannot divide by."""
    total = float(sum(counts.values()))
    if total == 0:
        raise ValueError(f"general frequency table {str(path)!r}: every count is 0, so its total (N_G) is 0; "
                         "give a table of counts, or the total of the corpus they come from")
    if not math.isfinite(total):
        raise ValueError(f"general frequency table {str(path)!r}: its counts sum to {total}, not a finite total")
    return total


def _decoded_lines(handle, path: Path):
    """The lines of a text file, with a decoding error reported as ValueError naming the file and
    the line (found again byte by byte: the text decoder reads ahead in chunks)."""
    try:
        yield from handle
    except UnicodeDecodeError as error:
        raise ValueError(f"{str(path)!r} line {_first_undecodable_line(path)}: not UTF-8 text "
                         f"({error.reason})") from None


def _first_undecodable_line(path: Path) -> int:
    """The number of the first line that is not UTF-8, with lines ended as the text reader ends
    them (``\\n``, ``\\r\\n`` or a lone ``\\r``): read as Latin-1, one character a byte, each line
    is its bytes again."""
    number = 0
    with open(path, encoding="latin-1", newline=None) as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.encode("latin-1").decode("utf-8")
            except UnicodeDecodeError:
                return number
    return number


@lru_cache(maxsize=1)
def _default_table() -> GeneralFrequencies:
    import wordsegment

    path = Path(wordsegment.__file__).with_name("unigrams.txt")
    table = GeneralFrequencies.from_file(path, total=GOOGLE_TRILLION_TOTAL)
    return GeneralFrequencies(table.counts, table.total, source=DEFAULT_SOURCE)


def _most_common(counts: dict, n: int) -> list[str]:
    return [word for word, _ in heapq.nsmallest(n, counts.items(), key=lambda item: (-item[1], item[0]))]


@lru_cache(maxsize=4)
def _most_common_default(n: int) -> tuple:
    return tuple(_most_common(_default_table().counts, n))
