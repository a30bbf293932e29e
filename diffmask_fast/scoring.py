"""Word scores s(w) (eq. 3-4): similarity of each word type to the domain's anchors."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from . import reference
from ._io import atomic_write_json, read_json
from .anchors import Anchors
from .embedding import WordEmbedder

SIMILARITIES = ("max", "centroid", "mean")
SCORES_FORMAT = "diffmask_fast.word_scores/1"


@dataclass
class ScoreTable:
    """s(w) for every scored word type, keyed by the normalized word (reference.normalize_word).

    ``nearest_anchor`` holds, per word, the index of its most similar anchor (``max``
    similarity only; -1 otherwise) so previews can say why a word scores high. Words outside
    the table score ``unknown_score``.
    """

    scores: dict = field(default_factory=dict)
    anchors: tuple = ()
    nearest_anchor: dict = field(default_factory=dict)
    similarity: str = "max"
    unknown_score: float = 0.0
    lowercase: bool = True

    def __post_init__(self) -> None:
        bad = [w for w, s in self.scores.items() if not math.isfinite(s)]
        if bad:
            raise ValueError(f"word scores must be finite; {len(bad)} are not (e.g. {bad[0]!r})")
        if not math.isfinite(self.unknown_score):
            raise ValueError(f"unknown_score must be finite, got {self.unknown_score}")

    def __len__(self) -> int:
        return len(self.scores)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and self.key(word) in self.scores

    def key(self, word: str) -> str:
        """The table key of a surface word."""
        return reference.normalize_word(word, self.lowercase)

    def score(self, word: str) -> float:
        """s(w) of a surface word (normalized first); ``unknown_score`` when it was never scored."""
        return float(self.scores.get(self.key(word), self.unknown_score))

    def scores_of(self, words: Iterable[str]) -> list[float]:
        return [self.score(w) for w in words]

    def nearest_anchor_of(self, word: str) -> str | None:
        index = self.nearest_anchor.get(self.key(word), -1)
        return self.anchors[index] if 0 <= index < len(self.anchors) else None

    def top(self, n: int = 20) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda item: (-item[1], item[0]))[:n]

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, {
            "format": SCORES_FORMAT, "anchors": list(self.anchors), "similarity": self.similarity,
            "unknown_score": self.unknown_score, "lowercase": self.lowercase,
            "scores": self.scores, "nearest_anchor": self.nearest_anchor,
        })

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ScoreTable":
        payload = read_json(path, "word scores")
        if not isinstance(payload, dict) or payload.get("format") != SCORES_FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a word-scores file (expected format {SCORES_FORMAT})")
        return cls(
            scores={w: float(s) for w, s in payload["scores"].items()},
            anchors=tuple(payload["anchors"]),
            nearest_anchor={w: int(i) for w, i in payload.get("nearest_anchor", {}).items()},
            similarity=payload["similarity"],
            unknown_score=float(payload["unknown_score"]),
            lowercase=bool(payload["lowercase"]),
        )

    @classmethod
    def from_mapping(cls, scores: Mapping[str, float], unknown_score: float = 0.0, lowercase: bool = True) -> "ScoreTable":
        """A table from given scores (keys are normalized), e.g. for hand-made or external scores."""
        normalized = {reference.normalize_word(w, lowercase): float(s) for w, s in scores.items()}
        return cls(normalized, unknown_score=unknown_score, lowercase=lowercase, similarity="given")


def similarity_to_anchors(word_vectors: torch.Tensor, anchor_vectors: torch.Tensor, similarity: str = "max"):
    """s(w) for each row of ``word_vectors`` (eq. 3-4) and, for ``max``, the nearest anchor."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; expected one of {', '.join(SIMILARITIES)}")
    if anchor_vectors.ndim != 2 or anchor_vectors.shape[0] == 0:
        raise ValueError(f"anchor vectors must be a non-empty [K, D] matrix, got shape {tuple(anchor_vectors.shape)}")
    if similarity == "max":
        from .ops import max_anchor_similarity

        return max_anchor_similarity(word_vectors, anchor_vectors)
    words = torch.nn.functional.normalize(word_vectors.float(), dim=-1)
    units = torch.nn.functional.normalize(anchor_vectors.float(), dim=-1)
    if similarity == "mean":
        values = (words @ units.T).mean(dim=-1)
    else:
        values = words @ torch.nn.functional.normalize(units.mean(dim=0), dim=0)
    return values, torch.full(values.shape, -1, dtype=torch.long)


class WordScorer:
    """Scores word types against a domain's anchors with one embedding model.

    ``anchors`` is an ``Anchors`` result or a list of anchor words.
    """

    def __init__(self, embedder: WordEmbedder, anchors: Anchors | Sequence[str], similarity: str = "max",
                 unknown_score: float = 0.0):
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; expected one of {', '.join(SIMILARITIES)}")
        words = anchors.words if isinstance(anchors, Anchors) else [str(a) for a in anchors]
        if not words:
            raise ValueError("WordScorer needs at least one anchor (K=0 given)")
        self.embedder = embedder
        self.anchor_words = tuple(words)
        self.similarity = similarity
        self.unknown_score = float(unknown_score)
        self.anchor_vectors = embedder.embed(list(self.anchor_words))

    def score(self, words: Iterable[str], lowercase: bool = True) -> ScoreTable:
        """A ScoreTable for the given words (normalized and deduplicated first)."""
        keys = sorted({reference.normalize_word(w, lowercase) for w in words if w and w.strip()})
        if not keys:
            raise ValueError("no words to score: the vocabulary is empty")
        vectors = self.embedder.embed(keys)
        values, nearest = similarity_to_anchors(vectors, self.anchor_vectors, self.similarity)
        values = values.double().numpy()
        if not np.isfinite(values).all():
            raise ValueError("the embedding model produced non-finite vectors; word scores would be NaN")
        return ScoreTable(
            scores=dict(zip(keys, values.tolist())),
            anchors=self.anchor_words,
            nearest_anchor=dict(zip(keys, nearest.tolist())) if self.similarity == "max" else {},
            similarity=self.similarity,
            unknown_score=self.unknown_score,
            lowercase=lowercase,
        )
