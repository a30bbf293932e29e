"""Counting the words of a target-domain corpus: c_T(w) and N_T of TF-ICF (eq. 2)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from tqdm.auto import tqdm

from . import reference
from ._io import atomic_write_json, read_json
from .corpus import CorpusError, CorpusSource, corpus_size_bytes, iter_documents

COUNTS_FORMAT = "diffmask_fast.word_counts/1"


@dataclass
class WordCounts:
    """Normalized word counts of a corpus, with the number of documents they came from."""

    counts: Counter = field(default_factory=Counter)
    documents: int = 0
    lowercase: bool = True

    @property
    def total(self) -> int:
        """N_T: the number of word occurrences."""
        return sum(self.counts.values())

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, word: str) -> int:
        return self.counts.get(word, 0)

    def __contains__(self, word: object) -> bool:
        return word in self.counts

    def most_common(self, n: int | None = None) -> list[tuple[str, int]]:
        """Words by count, ties broken by word so the order is deterministic."""
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        return ranked if n is None else ranked[:n]

    def merge(self, other: "WordCounts") -> "WordCounts":
        if other.lowercase != self.lowercase:
            raise ValueError("cannot merge counts made with different lowercasing")
        merged = Counter(self.counts)
        merged.update(other.counts)
        return WordCounts(merged, self.documents + other.documents, self.lowercase)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(
            path,
            {"format": COUNTS_FORMAT, "documents": self.documents, "lowercase": self.lowercase,
             "counts": dict(self.most_common())},
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordCounts":
        payload = read_json(path, "word counts")
        if not isinstance(payload, dict) or payload.get("format") != COUNTS_FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a word-counts file (expected format {COUNTS_FORMAT})")
        return cls(Counter(payload["counts"]), int(payload["documents"]), bool(payload["lowercase"]))

    @classmethod
    def from_mapping(cls, counts: Mapping[str, int], documents: int = 0, lowercase: bool = True) -> "WordCounts":
        return cls(Counter(counts), documents, lowercase)


def count_words(source: CorpusSource, lowercase: bool = True, progress: bool = True) -> WordCounts:
    """Count normalized whitespace-separated words (DESIGN.md §2) of every document in ``source``.

    ``source`` is a file, directory or glob (plain or .gz text, one document a line), a list of
    ``pathlib.Path``, or an iterable of strings. Raises ``CorpusError`` when it holds no words.
    """
    counts: Counter = Counter()
    documents = 0
    size = corpus_size_bytes(source)
    with tqdm(total=size, unit="B", unit_scale=True, desc="counting words", disable=not progress) as bar:
        for document in iter_documents(source):
            documents += 1
            for raw in document.split():
                counts[reference.normalize_word(raw, lowercase)] += 1
            if size is not None:
                bar.update(len(document.encode("utf-8", "replace")) + 1)
            else:
                bar.update(0)
    if documents == 0:
        raise CorpusError("the corpus is empty: it has no documents")
    if not counts:
        raise CorpusError(f"the corpus has no words: its {documents} document(s) are blank")
    return WordCounts(counts, documents, lowercase)


def merge_counts(parts: Iterable[WordCounts]) -> WordCounts:
    """Sum the counts of several corpora."""
    merged = None
    for part in parts:
        merged = part if merged is None else merged.merge(part)
    if merged is None:
        raise ValueError("no word counts to merge")
    return merged
