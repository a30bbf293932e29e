"""DifferenceMaskingCollator: a drop-in for transformers.DataCollatorForLanguageModeling."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import ops
from .scoring import ScoreTable
from .tokenization import WordBoundaries, decode_words, word_boundaries

WEIGHTINGS = ("similarity", "rank")


def _distributed_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def _worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return -1 if info is None else info.id


@dataclass
class DifferenceMaskingCollator:
    """Pads tokenized examples and masks whole words with probability given by their scores.

    Works from plain ``input_ids`` (``attention_mask`` and ``special_tokens_mask`` are used when
    present), so it fits ``Trainer`` with ``remove_unused_columns=True``. ``scores`` is a
    ``ScoreTable`` or a ``{word: score}`` mapping. Each call draws fresh masks; with ``seed``
    the draws are reproducible and differ across DataLoader workers and distributed ranks.
    All work is on the CPU, so it is safe in DataLoader workers.
    """

    tokenizer: Any
    scores: ScoreTable | Mapping[str, float]
    mlm_probability: float = 0.25
    weighting: str = "similarity"
    uniform_mix: float = 0.0
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"
    seed: int | None = None
    word_boundary: str | None = None
    mlm: bool = True
    boundaries: WordBoundaries = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.mlm:
            raise ValueError("DifferenceMaskingCollator masks words for masked language modelling; mlm=False is not supported")
        if not 0.0 <= self.mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1], got {self.mlm_probability}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
        if not 0.0 <= self.uniform_mix <= 1.0:
            raise ValueError(f"uniform_mix must be in [0, 1], got {self.uniform_mix}")
        if self.mask_replace_prob < 0 or self.random_replace_prob < 0 or self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError(
                "mask_replace_prob and random_replace_prob must be non-negative and sum to at most 1, "
                f"got {self.mask_replace_prob} and {self.random_replace_prob}"
            )
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be a positive integer, got {self.pad_to_multiple_of}")
        if self.return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {self.return_tensors!r}")
        if not isinstance(self.scores, ScoreTable):
            self.scores = ScoreTable.from_mapping(self.scores)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"{type(self.tokenizer).__name__} has no padding token; set tokenizer.pad_token first")
        self.boundaries = word_boundaries(self.tokenizer, self.word_boundary)
        self._cache = ops.ScoreHashTable()
        self._generators: dict = {}

    # -- pickling: generators are per process and rebuilt on first use ----------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_generators"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # -- public --------------------------------------------------------------------------------
    def __call__(self, examples: Sequence[Any]) -> dict:
        batch = self._pad(examples)
        never_word = batch.pop("special_tokens_mask") | ~batch["attention_mask"].bool()
        masked_ids, labels = self.mask(batch["input_ids"], never_word)
        batch["input_ids"], batch["labels"] = masked_ids, labels
        if self.return_tensors == "np":
            return {key: value.numpy() for key, value in batch.items()}
        return batch

    def mask(self, input_ids: torch.Tensor, never_word: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask a padded [B, L] batch; ``never_word`` flags tokens that belong to no word
        (special tokens are always excluded). Returns (masked input_ids, labels)."""
        input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be a [batch, length] matrix, got shape {tuple(input_ids.shape)}")
        vocabulary = self.boundaries.never_word.numel()
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocabulary):
            raise ValueError(f"input_ids hold ids outside the tokenizer's vocabulary [0, {vocabulary})")
        special = self.boundaries.never_word[input_ids]
        never_word = special if never_word is None else (never_word.bool() | special)
        seed = int(torch.randint(-(2**63), 2**63 - 1, (), generator=self._generator()))
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

    def _generator(self) -> torch.Generator | None:
        """A generator for this process: seeded from (seed, rank, worker) when a seed is set.

        Without a seed the global torch RNG is used, which DataLoader already seeds per worker.
        """
        if self.seed is None:
            return None
        context = (os.getpid(), _distributed_rank(), _worker_id())
        generator = self._generators.get(context)
        if generator is None:
            entropy = np.random.SeedSequence([self.seed % 2**63, context[1] + 1, context[2] + 1])
            generator = torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0] >> 1))
            self._generators[context] = generator
        return generator

    def _pad(self, examples: Sequence[Any]) -> dict:
        """Pad every sequence-valued field to a common length without a per-token Python loop."""
        if len(examples) == 0:
            raise ValueError("cannot collate an empty list of examples")
        if not isinstance(examples[0], Mapping):
            examples = [{"input_ids": example} for example in examples]
        if any("input_ids" not in example for example in examples):
            raise ValueError("every example needs an 'input_ids' field")
        sequences = [example["input_ids"] for example in examples]
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        length = int(lengths.max())
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        rows = np.repeat(np.arange(len(sequences)), lengths)
        offsets = np.cumsum(lengths) - lengths
        columns = np.arange(int(lengths.sum())) - np.repeat(offsets, lengths)
        if self.tokenizer.padding_side == "left":
            columns += np.repeat(length - lengths, lengths)
        index = (torch.from_numpy(rows), torch.from_numpy(columns))

        def padded(field_name: str, fill: int, dtype=torch.long) -> torch.Tensor:
            values = _flatten([example[field_name] for example in examples], int(lengths.sum()), field_name)
            out = torch.full((len(sequences), length), fill, dtype=dtype)
            out[index] = torch.from_numpy(values).to(dtype)
            return out

        batch = {"input_ids": padded("input_ids", self.tokenizer.pad_token_id)}
        if "attention_mask" in examples[0]:
            batch["attention_mask"] = padded("attention_mask", 0)
        else:
            batch["attention_mask"] = torch.zeros((len(sequences), length), dtype=torch.long)
            batch["attention_mask"][index] = 1
        if "special_tokens_mask" in examples[0]:
            batch["special_tokens_mask"] = padded("special_tokens_mask", 1, torch.bool)
        else:
            batch["special_tokens_mask"] = torch.zeros((len(sequences), length), dtype=torch.bool)
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = padded("token_type_ids", getattr(self.tokenizer, "pad_token_type_id", 0))
        for key in examples[0]:
            if key in batch or key in ("input_ids", "labels"):
                continue
            batch[key] = torch.as_tensor(np.asarray([example[key] for example in examples]))
        return batch


def _flatten(sequences: list, total: int, field_name: str) -> np.ndarray:
    """Concatenate sequences of ints (lists, numpy arrays or tensors) into one int64 array."""
    first = sequences[0]
    if isinstance(first, torch.Tensor):
        flat = torch.cat([s.reshape(-1) for s in sequences]).numpy()
    elif isinstance(first, np.ndarray):
        flat = np.concatenate([s.reshape(-1) for s in sequences])
    else:
        try:
            flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=total)
        except ValueError:
            raise ValueError(f"field {field_name!r} is shorter than input_ids in some example") from None
    if flat.shape[0] != total:
        raise ValueError(f"field {field_name!r} has a different length than input_ids in some example")
    return flat.astype(np.int64, copy=False)
