"""Contextual anchors: one vector per occurrence of each anchor word in the corpus.

The paper embeds each anchor word alone. An anchor word also has a vector in every sentence
that uses it: the hidden states of its sub-tokens, averaged, with the sentence around it. Those
vectors cover the senses the word actually has in the domain, and on a real corpus there are
hundreds of thousands of them, which is what ``AnchorIndex`` is for. A word's score is then its
highest cosine similarity to any occurrence of any anchor, and its nearest anchor is the anchor
word of that occurrence.

Occurrences are found as the collator finds words (DESIGN.md §2: maximal runs of tokens the
tokenizer marks as one word, special tokens excluded), decoded and normalized, and compared
with the normalized anchor words. At most ``max_occurrences_per_anchor`` occurrences are kept per
anchor, a uniform sample of all of them (reservoir sampling, seeded).

Contextual vectors are means of sub-token hidden states, so they compare with word vectors of
the same kind: use them with ``pooling="mean"`` (the pooled [CLS] output of a word alone lives
elsewhere, and input embeddings do not depend on context at all).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import reference
from .tokenization import WordGrouper, decode_words


@dataclass
class ContextualAnchors:
    """Vectors of anchor-word occurrences: ``vectors[i]`` is an occurrence of ``words[anchor_ids[i]]``."""

    words: tuple
    vectors: torch.Tensor
    anchor_ids: torch.Tensor

    def __post_init__(self) -> None:
        self.words = tuple(self.words)
        if self.vectors.ndim != 2 or self.anchor_ids.shape != (self.vectors.shape[0],):
            raise ValueError(f"vectors must be [M, D] and anchor_ids [M], got {tuple(self.vectors.shape)} "
                             f"and {tuple(self.anchor_ids.shape)}")

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def occurrences(self) -> dict:
        """Occurrences kept per anchor word."""
        counts = np.bincount(self.anchor_ids.numpy(), minlength=len(self.words))
        return dict(zip(self.words, counts.tolist()))


def find_occurrences(tokenizer, texts: Iterable[str], anchor_words: Sequence[str], *, max_per_anchor: int,
                     max_length: int = 256, lowercase: bool = True, seed: int = 0, chunk: int = 512,
                     scheme: str | None = None) -> list[list[tuple[str, int, int]]]:
    """Per anchor, a uniform sample of at most ``max_per_anchor`` occurrences as
    (text, first token, end token) in the tokenization with special tokens and truncation."""
    grouper = WordGrouper.for_tokenizer(tokenizer, scheme)
    wanted = {reference.normalize_word(w, lowercase): i for i, w in enumerate(anchor_words)}
    rng = random.Random(seed)
    seen = [0] * len(anchor_words)
    kept: list[list[tuple[str, int, int]]] = [[] for _ in anchor_words]

    def consume(batch: list[str]) -> None:
        encoded = tokenizer(batch, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        spans, id_lists, owners = [], [], []
        for text, ids in zip(batch, encoded):
            for group in grouper(ids):
                spans.append((group[0], group[-1] + 1))
                id_lists.append([ids[i] for i in group])
                owners.append(text)
        for word, text, (start, end) in zip(decode_words(tokenizer, id_lists), owners, spans):
            anchor = wanted.get(reference.normalize_word(word, lowercase)) if word else None
            if anchor is None:
                continue
            seen[anchor] += 1
            if len(kept[anchor]) < max_per_anchor:
                kept[anchor].append((text, start, end))
            else:
                slot = rng.randrange(seen[anchor])
                if slot < max_per_anchor:
                    kept[anchor][slot] = (text, start, end)

    batch: list[str] = []
    for text in texts:
        if text and text.strip():
            batch.append(text)
        if len(batch) >= chunk:
            consume(batch)
            batch = []
    if batch:
        consume(batch)
    return kept


def contextual_anchor_vectors(embedder, texts: Iterable[str], anchor_words: Sequence[str], *,
                              max_occurrences_per_anchor: int = 1000, max_length: int = 256, batch_size: int = 32,
                              lowercase: bool = True, seed: int = 0, progress: bool | None = None) -> ContextualAnchors:
    """One vector per sampled occurrence of each anchor word in ``texts`` (one document each).

    Each vector is the mean of the last hidden states of the word's sub-tokens, computed by
    ``embedder``'s model on the document (truncated to ``max_length`` tokens) with its device and
    dtype. Anchors that never occur get no vectors (see ``ContextualAnchors.occurrences``);
    when none occurs at all, ValueError.
    """
    if max_occurrences_per_anchor < 1:
        raise ValueError(f"max_occurrences_per_anchor must be positive, got {max_occurrences_per_anchor}")
    words = tuple(reference.normalize_word(w, lowercase) for w in anchor_words)
    if not words:
        raise ValueError("contextual anchors need at least one anchor word")
    tokenizer, model = embedder.tokenizer, embedder.model
    kept = find_occurrences(tokenizer, texts, words, max_per_anchor=max_occurrences_per_anchor,
                            max_length=max_length, lowercase=lowercase, seed=seed)
    by_text: dict[str, list[tuple[int, int, int]]] = {}
    for anchor, occurrences in enumerate(kept):
        for text, start, end in occurrences:
            by_text.setdefault(text, []).append((anchor, start, end))
    total = sum(len(o) for o in kept)
    if total == 0:
        raise ValueError(f"none of the {len(words)} anchor words occurs in the texts")
    documents = list(by_text)
    encoded = tokenizer(documents, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(documents)), key=lambda i: len(encoded[i]))
    vectors = torch.empty(total, embedder.dimension)
    anchor_ids = torch.empty(total, dtype=torch.int64)
    row = 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = torch.device(embedder.device)
    autocast_dtype = getattr(embedder, "_autocast_dtype", None)
    show = embedder.progress if progress is None else progress
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=autocast_dtype,
                                                enabled=autocast_dtype is not None), \
            tqdm(total=total, desc="embedding anchor occurrences", unit="vector", disable=not show) as bar:
        for begin in range(0, len(order), batch_size):
            batch = order[begin : begin + batch_size]
            length = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), length), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), length), dtype=torch.long)
            for b, i in enumerate(batch):
                input_ids[b, : len(encoded[i])] = torch.tensor(encoded[i])
                attention[b, : len(encoded[i])] = 1
            hidden = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
            hidden = hidden.float().cpu()
            for b, i in enumerate(batch):
                for anchor, start, end in by_text[documents[i]]:
                    vectors[row] = hidden[b, start:end].mean(0)
                    anchor_ids[row] = anchor
                    row += 1
                    bar.update(1)
    order_rows = torch.argsort(anchor_ids, stable=True)
    return ContextualAnchors(words, vectors[order_rows], anchor_ids[order_rows])
