"""DifferenceMaskingCollator: a drop-in for transformers.DataCollatorForLanguageModeling."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from . import ops
from .masking_base import MaskingCollatorBase, check_probability
from .scoring import ScoreTable, as_score_table
from .tokenization import decode_words

WEIGHTINGS = ("similarity", "rank")


@dataclass
class DifferenceMaskingCollator(MaskingCollatorBase):
    """Pads tokenized examples and masks whole words with probability given by their scores.

    Works from plain ``input_ids`` (``attention_mask`` and ``special_tokens_mask`` are used when
    present), so it fits ``Trainer`` with ``remove_unused_columns=True``. ``scores`` is a
    ``ScoreTable``, a ``{word: score}`` mapping or the path of a saved table. Each call draws
    fresh masks; with ``seed`` the draws are reproducible in the main process and differ across
    distributed ranks; in DataLoader workers they differ per worker and epoch, and repeat from
    run to run where the DataLoader's seeds do (``torch.manual_seed`` or ``set_seed`` first, as
    ``Trainer`` does).
    All work is on the CPU, so it is safe in DataLoader workers; calls from several threads at
    once take turns (the table of words seen so far grows as they mask).
    """

    tokenizer: Any
    scores: ScoreTable | Mapping[str, float] | str | os.PathLike
    mlm_probability: float = 0.25
    weighting: str = "similarity"
    uniform_mix: float = 0.0

    TABLES_FROM = (*MaskingCollatorBase.TABLES_FROM, "scores")

    def __post_init__(self) -> None:
        self.scores = as_score_table(self.scores)
        self._setup_base()
        self._cache = ops.ScoreHashTable()
        if "_lock" not in self.__dict__:  # kept when an assignment rebuilds the tables: threads may be masking
            self._new_lock()

    def _check_settings(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
        self.uniform_mix = check_probability("uniform_mix", self.uniform_mix)
        super()._check_settings()

    def mask_batch(self, input_ids: torch.Tensor, never_word: torch.Tensor | None = None) -> dict:
        masked_ids, labels = self.mask(input_ids, never_word)
        return {"input_ids": masked_ids, "labels": labels}

    def mask(self, input_ids: torch.Tensor, never_word: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask a padded [B, L] batch; ``never_word`` flags tokens that belong to no word
        (special tokens are always excluded). Returns (masked input_ids, labels)."""
        input_ids, never_word = self._checked_inputs(input_ids, never_word)
        if self._lock_pid != os.getpid():  # forked while another thread held it: never released here
            self._new_lock()
        with self._lock:  # another thread's new words would grow the table under this one's reads
            seed = self._draw_seed()
            while True:
                keys, values = self._cache.tensors()
                masked_ids, labels, _, misses = ops.difference_mask(
                    input_ids, never_word, self.boundaries.starts_word, keys, values,
                    self.boundaries.random_token_ids,
                    mlm_probability=self.mlm_probability, weighting=self.weighting, uniform_mix=self.uniform_mix,
                    unknown_score=self.scores.unknown_score, mask_token_id=self.boundaries.mask_token_id,
                    mask_replace_prob=self.mask_replace_prob, random_replace_prob=self.random_replace_prob, seed=seed,
                )
                if misses.shape[0] == 0:
                    return masked_ids, labels
                self._learn_words(input_ids, misses)

    def _new_lock(self) -> None:
        self._lock, self._lock_pid = threading.Lock(), os.getpid()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_lock", None)  # a lock is no value to copy: each copy takes turns of its own
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._new_lock()

    def __copy__(self) -> "DifferenceMaskingCollator":
        """A shallow copy shares the table of words seen so far, so it takes turns at it with the
        original: with a lock of its own, two threads masking with the two would race on it."""
        copied = super().__copy__()
        copied._lock, copied._lock_pid = self._lock, self._lock_pid
        return copied

    @property
    def known_token_sequences(self) -> int:
        """Distinct token sequences (word surface forms) whose score has been looked up so far."""
        return len(self._cache)

    # -- internals -----------------------------------------------------------------------------
    def _learn_words(self, input_ids: torch.Tensor, misses: torch.Tensor) -> None:
        """Decode words never seen before, look their scores up and remember them by token ids."""
        rows = misses.tolist()
        words = decode_words(self.tokenizer, [input_ids[b, start:end].tolist() for _, b, start, end in rows])
        scores = torch.tensor(self.scores.scores_of(words), dtype=torch.float32)
        self._cache.insert(misses[:, 0].contiguous(), scores)
