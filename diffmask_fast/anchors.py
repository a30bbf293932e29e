"""Anchor mining: the top-K words of a domain by TF-ICF (eq. 2)."""

from __future__ import annotations

import math
import numbers
import os
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterator, Mapping

from . import reference
from ._checks import earlier_normalization, first_unnormalized, shown_apart, whole_number
from ._display import counted, printable
from ._io import atomic_write_json, json_ready, read_json
from .advice import DiffmaskWarning
from .general import GeneralFrequencies

if TYPE_CHECKING:
    from .counting import WordCounts

ANCHORS_FORMAT = "diffmask_fast.anchors/1"


@dataclass(frozen=True)
class Anchor:
    """One anchor: its TF-ICF ``score`` (eq. 2) from its count in the domain corpus and in the
    general-English table."""

    word: str
    score: float
    target_count: int
    general_count: float


@dataclass(frozen=True)
class Anchors:
    """The anchors of a domain, best first, with the settings that chose them."""

    anchors: tuple
    target_total: int
    general_total: float
    min_count: int
    smoothing_per_million: float
    general_source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "anchors", tuple(self.anchors))  # a list given compares equal to its loaded copy

    @property
    def words(self) -> list[str]:
        return [anchor.word for anchor in self.anchors]

    def __len__(self) -> int:
        return len(self.anchors)

    def __iter__(self) -> Iterator[Anchor]:
        return iter(self.anchors)

    def __getitem__(self, index: int) -> Anchor:
        return self.anchors[index]

    def table(self, limit: int | None = None) -> str:
        """A plain-text table of the anchors, for terminals and logs."""
        rows = self.anchors if limit is None else self.anchors[:limit]
        words = [printable(a.word) for a in rows]
        width = max([len("anchor")] + [len(word) for word in words])
        lines = [f"{'rank':>4}  {'anchor':<{width}}  {'TF-ICF':>9}  {'domain':>9}  {'general':>15}"]
        for rank, (a, word) in enumerate(zip(rows, words), start=1):
            score = f"{a.score:>9.2f}" if abs(a.score) < 1e6 else f"{a.score:>9.3g}"  # 1e308 under a tiny smoothing
            lines.append(f"{rank:>4}  {word:<{width}}  {score}  {a.target_count:>9,}  {a.general_count:>15,.0f}")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> None:
        """Written atomically as JSON; anchors that ``load`` would refuse (an infinite score is
        written as null) are refused here, before anything is written."""
        payload = json_ready({**{k: v for k, v in asdict(self).items() if k != "anchors"}, "format": ANCHORS_FORMAT,
                              "anchors": [asdict(a) for a in self.anchors]})
        _, problem = _anchors_from(payload)
        if problem is not None:
            raise ValueError(f"cannot save these anchors, which could not be loaded again: {problem}")
        atomic_write_json(path, payload)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Anchors":
        payload = read_json(path, "anchors")
        if not isinstance(payload, dict) or payload.get("format") != ANCHORS_FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not an anchors file (expected format {ANCHORS_FORMAT})")
        loaded, problem = _anchors_from(payload)
        if problem is not None:
            raise ValueError(f"{os.fspath(path)!r} is not a valid anchors file: {problem}")
        return loaded


def _anchors_from(payload: dict) -> tuple[Anchors | None, str | None]:
    """The anchors of a saved file's payload, or None and what is wrong with it."""
    fields = {key: value for key, value in payload.items() if key != "format"}
    try:
        anchors = tuple(Anchor(**a) for a in fields.pop("anchors"))
        loaded = Anchors(anchors=anchors, **fields)
    except (KeyError, TypeError) as error:
        return None, str(error)
    if not anchors:
        return None, "it holds no anchors"
    problem = _field_problem(loaded)
    return (None, problem) if problem is not None else (loaded, None)


def _is_number(value) -> bool:
    """A finite number, as a float can hold it (JSON reads any integer: 10**400 overflowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _shown(value) -> str:
    """A field's value in a message: an integer too long to print (Python refuses beyond 4,300
    digits) by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1024:
        return f"an integer of {value.bit_length():,} bits, beyond a float's range"
    return repr(value)


def _is_count(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _field_problem(anchors: Anchors) -> str | None:
    """What is wrong with the fields of loaded anchors (JSON gives any type, and a hand edit any
    value), or None. Anchors are counted words: distinct, whole words of ``str.split()``, with
    punctuation stripped (case is kept: counts made with ``lowercase=False`` keep it)."""
    for name in ("target_total", "general_total", "min_count", "smoothing_per_million"):
        if not _is_number(getattr(anchors, name)):
            return f"{name} must be a finite number, got {_shown(getattr(anchors, name))}"
    for name, value, least in (("target_total", anchors.target_total, 1), ("min_count", anchors.min_count, 1)):
        if not _is_count(value, least):
            return f"{name} must be an integer of at least {least}, got {value!r}"
    for name in ("general_total", "smoothing_per_million"):
        if not getattr(anchors, name) > 0:
            return f"{name} must be positive, got {getattr(anchors, name)!r}"
    seen = set()
    for anchor in anchors:
        if not isinstance(anchor.word, str) or anchor.word.split() != [anchor.word]:
            return f"an anchor's word must be one word (non-empty, no whitespace), got {anchor.word!r}"
        if (normalized := reference.normalize_word(anchor.word, lowercase=False)) != anchor.word:
            word, normalized = shown_apart(anchor.word, normalized)
            return f"anchor {word} is not a counted word (punctuation is stripped from words' ends: {normalized})"
        if anchor.word in seen:
            return f"anchor {anchor.word!r} is listed twice"
        seen.add(anchor.word)
        for name in ("score", "target_count", "general_count"):
            if not _is_number(getattr(anchor, name)):
                return (f"the {name} of anchor {anchor.word!r} must be a finite number, got "
                        f"{_shown(getattr(anchor, name))}")
        if not _is_count(anchor.target_count, 1) or anchor.target_count > anchors.target_total:
            return (f"the target_count of anchor {anchor.word!r} must be an integer from 1 to target_total "
                    f"({anchors.target_total:,}), got {anchor.target_count!r}")
        if anchor.general_count < 0:
            return f"the general_count of anchor {anchor.word!r} must not be negative, got {anchor.general_count!r}"
    return None


def check_mining_settings(k: int, min_count: int | None, smoothing_per_million: float) -> None:
    """Raise ValueError for settings ``mine_anchors`` refuses: callers check them before a long count."""
    whole_number(k, "k (the number of anchors)")
    if min_count is not None:
        whole_number(min_count, "min_count")
    if isinstance(smoothing_per_million, bool) or not isinstance(smoothing_per_million, numbers.Real):
        raise TypeError(f"smoothing_per_million must be a number, got {smoothing_per_million!r}")
    if not (math.isfinite(smoothing_per_million) and smoothing_per_million > 0):
        raise ValueError(f"smoothing_per_million must be a positive finite number, got {smoothing_per_million}")


def mine_anchors(
    counts: WordCounts | Mapping[str, int] | str | os.PathLike,
    general: GeneralFrequencies | str | os.PathLike | None = None,
    k: int = 20,
    min_count: int | None = None,
    smoothing_per_million: float = reference.DEFAULT_SMOOTHING_PER_MILLION,
) -> Anchors:
    """The ``k`` words with the highest TF-ICF (eq. 2) among words with a letter, citation syntax
    (``reference.CITATION_WORDS``: "et", "al", "cf", ...) left out.

    ``counts`` is a ``WordCounts`` (from ``count_words`` or ``WordCounts.load``), a word -> count
    mapping, or the path of saved counts (checksummed as it is loaded). ``general`` is the table of
    general English (the bundled one by default), or the path of a ``word<TAB>count`` table
    (``GeneralFrequencies.from_file``). ``min_count`` defaults to
    ``reference.default_min_count`` of the corpus size and ``smoothing_per_million`` is the add-n
    constant of ``reference.tf_icf``; both keep one-off names and typos from outranking words that
    are frequent in the domain. Ties break by word. The result equals
    ``reference.select_anchors``, given the general table lowercased (``GeneralFrequencies.lowercased``)
    when the counts are; only words with at least ``min_count`` occurrences are decoded,
    so counts mapped from a file are never decoded whole.
    """
    from .counting import WordCounts  # here: scores and masking are used without counting's Numba

    check_mining_settings(k, min_count, smoothing_per_million)
    smoothing_per_million = float(smoothing_per_million)  # a Fraction or numpy number: saved as JSON
    if isinstance(counts, (str, os.PathLike)):
        counts = WordCounts.load(counts, verify=True)
    elif not isinstance(counts, WordCounts):  # lowercase unless a word says otherwise
        if not isinstance(counts, Mapping):
            raise TypeError(f"counts must be WordCounts, a word -> count mapping or the path of saved counts, "
                            f"got {type(counts).__name__}")
        odd = next((word for word in counts if not isinstance(word, str)), None)
        if odd is not None:
            raise TypeError(f"the words of counts must be strings, got {odd!r} ({type(odd).__name__})")
        counts = WordCounts.from_mapping(counts, lowercase=all(word == word.lower() for word in counts))
    total = counts.total
    if total == 0:
        raise ValueError("cannot mine anchors: the word counts are empty")
    if isinstance(general, (str, os.PathLike)):
        general = GeneralFrequencies.from_file(general)
    elif general is None:
        general = GeneralFrequencies.default()
    elif not isinstance(general, GeneralFrequencies):
        raise TypeError(f"general must be a GeneralFrequencies or the path of a word<TAB>count table, "
                        f"got {type(general).__name__}")
    if counts.lowercase:  # the corpus's words are lowercase, so the table's must be too
        general = general.lowercased()
    if min_count is None:
        min_count = reference.default_min_count(total)
    # reference.select_anchors, over the words that pass its count filter only.
    frequent = counts.at_least(min_count)
    # (word, count, general count): the general count is looked up once, for TF-ICF and the
    # warning of a corpus in another language.
    lettered = [(word, count, general.count(word)) for word, count in frequent if reference.has_letter(word)]
    scored = [
        (word, reference.tf_icf(count, total, general_count, general.total, smoothing_per_million))
        for word, count, general_count in lettered
        if not reference.is_citation_word(word)
    ]
    scored.sort(key=lambda item: (-item[1], item[0]))
    if scored and not math.isfinite(scored[0][1]):
        raise ValueError(f"smoothing_per_million {smoothing_per_million:g} is too small: {scored[0][0]!r}, which "
                         f"general English lacks, scores {scored[0][1]} (the default is "
                         f"{reference.DEFAULT_SMOOTHING_PER_MILLION:g})")
    chosen, broken = [], []  # the top k readable words; the broken ones among the top k of all
    for rank, (word, score) in enumerate(scored):
        if len(chosen) == k:  # reached only past rank k - 1: every rank below k was seen
            break
        if not reference.is_broken_text(word):
            chosen.append((word, score))
        elif rank < k:
            broken.append((word, counts[word]))
    if broken:
        _warn_of_broken_text(broken)
    _refuse_uncomposed([word for word, _ in chosen], counts.lowercase)
    left_out = _left_out(min_count, rare=len(counts) - len(frequent), letterless=len(frequent) - len(lettered),
                         citation=len(lettered) - len(scored), broken=len(scored) - len(chosen))
    if not chosen:  # the words that kept the others out, as the warning below names them
        raise ValueError(f"no word qualifies as an anchor: of the corpus's {counted(len(counts), 'distinct word')} "
                         f"({total:,} in all), {', '.join(left_out)}"
                         + ("; lower min_count or give a larger corpus" if len(counts) > len(frequent) else ""))
    if len(chosen) < k:
        _warn_of_few_anchors(len(chosen), k, left_out, rare=len(counts) > len(frequent))
    anchors = tuple(Anchor(w, s, counts[w], general.count(w)) for w, s in chosen)
    _warn_of_weak_anchors(anchors, len(scored))
    _warn_of_another_language(lettered, general.source, anchors)
    return Anchors(anchors, total, general.total, min_count, smoothing_per_million, general.source)


def _left_out(min_count: int, rare: int, letterless: int, citation: int, broken: int) -> list[str]:
    """What kept words from being anchors, each reason with how many words it kept out."""
    return [f"{count:,} {one if count == 1 else many}"
            for count, one, many in ((rare, f"occurs fewer than {min_count:,} times",
                                      f"occur fewer than {min_count:,} times"),
                                     (letterless, "has no letter", "have no letter"),
                                     (citation, "is citation syntax (et al., cf.)",
                                      "are citation syntax (et al., cf.)"),
                                     (broken, "is broken text", "are broken text"))
            if count]


def _warn_of_few_anchors(qualified: int, asked: int, left_out: list[str], rare: bool) -> None:
    """Warn that fewer words than asked for qualify as anchors, naming what kept the others out
    (``_left_out``; every word was seen: the selection ran through all of them)."""
    qualify = "word qualifies" if qualified == 1 else "words qualify"
    why = f"of the others, {', '.join(left_out)}" if left_out else "the corpus has no other words"
    warnings.warn(f"only {qualified:,} {qualify} as anchors ({asked:,} asked for): {why}"
                  + ("; a lower min_count admits more" if rare else ""), DiffmaskWarning, stacklevel=3)


def _refuse_uncomposed(words: list, lowercase: bool) -> None:
    """Refuse anchors that counting no longer makes: counts saved by an earlier version (before
    accents were composed, or marks stripped with the symbol before them) hold words such as
    "cafe" + U+0301 apart from "café", and such an anchor could not be saved."""
    found = first_unnormalized(words, lowercase)
    if found is not None:
        word, normalized = shown_apart(*found)
        reason = earlier_normalization(found[0], lowercase) or "normalized words otherwise"
        raise ValueError(f"the counts hold the anchor {word}, which is now counted as {normalized}: they were saved "
                         f"by an earlier version, which {reason}; count the corpus again")


#: An anchor at most this many times as frequent in the domain as in general English (TF-ICF) is
#: no word of the domain: "the" and "of" reach it when few words pass the count filter.
WEAK_ANCHOR_TF_ICF = 2.0


def _warn_of_weak_anchors(anchors: tuple, eligible: int) -> None:
    """Warn of anchors that are no domain words: with max-similarity scoring, an anchor "the"
    scores every function word as a domain word."""
    weak = [a for a in anchors if a.score <= WEAK_ANCHOR_TF_ICF]
    if weak:
        shown = ", ".join(f"{printable(a.word)!r} ({a.score:.2f})" for a in weak[:5])
        warnings.warn(
            f"{len(weak):,} of the {len(anchors):,} anchors are at most {WEAK_ANCHOR_TF_ICF:g} times as frequent in "
            f"the corpus as in general English, so no words of its domain: {shown}. Only {eligible:,} words occur "
            "often enough to be anchors; a larger corpus, or fewer anchors, keeps the anchors to the domain's words",
            DiffmaskWarning, stacklevel=3)


#: The share of the occurrences of a corpus's frequent words that may be of words the general
#: table lacks before the corpus is taken to be in another language: 1-2% on the English
#: corpora of the paper's tasks (chemical names, authors), near 100% in Russian or Chinese.
OTHER_LANGUAGE_SHARE = 0.5


def _warn_of_another_language(lettered: list, source: str, anchors: tuple) -> None:
    """Warn where most occurrences of the frequent words (``lettered``: (word, count, general
    count)) are of words the general table (from ``source``) lacks: the corpus is in another
    language than the table, whose TF-ICF is then the words' frequency alone, and its function
    words are the anchors, with no warning of weak anchors (their TF-ICF is in the thousands)."""
    occurrences = sum(count for _, count, _ in lettered)
    unknown = sum(count for _, count, general_count in lettered if general_count == 0)
    if occurrences and unknown > OTHER_LANGUAGE_SHARE * occurrences:
        shown = ", ".join(repr(printable(anchor.word)) for anchor in anchors[:5])
        warnings.warn(f"{unknown / occurrences:.0%} of the occurrences of the corpus's frequent words are of words "
                      f"the general table ({source}) lacks: the corpus is probably in another language than "
                      f"the table. TF-ICF is then the words' frequency alone, and the anchors its most frequent words "
                      f"({shown}); give a general table of the corpus's language (general=..., --general)",
                      DiffmaskWarning, stacklevel=3)


def _warn_of_broken_text(broken: list) -> None:
    """Warn that (word, count) pairs of broken text would have been among the anchors: the corpus
    is probably decoded wrongly, which the user should repair rather than lose the anchors to."""
    shown = ", ".join(
        f"{ascii(word)} ({count:,} times" + (f"; meant {repaired!r})" if (repaired := reference.repaired_mojibake(word))
                                             and repaired.isprintable() else ")")
        for word, count in broken[:5])
    one = len(broken) == 1
    warnings.warn(
        f"{len(broken)} of the top words {'is' if one else 'are'} broken text and {'was' if one else 'were'} "
        f"skipped as anchors: {shown}. Such words "
        f"hold control, surrogate, private-use or replacement characters, or are UTF-8 read as Latin-1 or "
        f"Windows-1252 ('\u2019' becomes '\u00e2\u20ac\u2122'); repair the corpus's encoding (for example "
        f"with ftfy) so that they count as what they stand for.",
        DiffmaskWarning, stacklevel=3,
    )
