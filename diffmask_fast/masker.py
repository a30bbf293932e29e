"""DifferenceMasker: Difference-Masking inside the training step, on the device of the batch.

The collator masks on the CPU, in DataLoader workers. On a GPU the same step costs far less
than a millisecond, so it can run in the training step itself: pad the batch without masking
(``transformers.DataCollatorWithPadding``), move it to the GPU, and call the masker there. It
never copies anything to the host and never synchronizes, so it can be captured in a CUDA graph
or compiled with ``torch.compile(fullgraph=True)``.

Scores are looked up in a hash table of word hashes (a word is known by its token ids). The
table is filled on the host, where words can be decoded and scored: ``warm`` runs over the
texts or token ids the model will see before training. Words the table lacks score
``unknown_score`` and are counted on the device; ``coverage()`` reads the counts (and
synchronizes, so call it now and then, not every step).
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from . import ops
from ._checks import whole_number
from .advice import DiffmaskWarning
from .collator import DifferenceMaskingCollator
from .masking_base import (check_batch_ids, check_id_dtype, check_in_vocabulary, check_like_ids, distributed_rank,
                           pinned_seed, resume_counts)
from .scoring import ScoreTable
from .tokenization import tokenize_texts

__all__ = ["DifferenceMasker"]


def _base_seed(root: int, rank: int) -> int:
    """The first per-step seed of ``rank``, from a root seed. Below 2**62, so adding one per step
    never overflows int64."""
    entropy = np.random.SeedSequence([int(root), rank + 1])
    return int(entropy.generate_state(1, np.uint64)[0] >> 2)


def _is_batch(item: Any) -> bool:
    """A padded [B, L] batch: a 2-D tensor or array, or a mapping whose input_ids is one."""
    if isinstance(item, Mapping):
        item = item.get("input_ids")
    return isinstance(item, (torch.Tensor, np.ndarray)) and item.ndim == 2


def _is_one_sequence(item: Any) -> bool:
    """A 1-D tensor or array: one sequence of ids, not a collection of items."""
    return isinstance(item, (torch.Tensor, np.ndarray)) and item.ndim == 1


def _id_rows(item: Any) -> list[tuple[list[int], Any]]:
    """(token ids, attention mask or None) rows of one item of ``warm``'s data: a sequence of ids,
    an example dict, or a dict of rows (``tokenizer(texts)``, ``dataset[:n]``; padded or ragged)."""
    if not isinstance(item, Mapping):
        return [(_ids_of(item, "item"), None)]
    if "input_ids" not in item:
        keys = ", ".join(map(repr, item)) or "no keys"
        raise ValueError(f"warm takes mappings with 'input_ids'; got one with {keys}")
    ids, mask = item["input_ids"], item.get("attention_mask")
    if not _holds_rows(ids):
        row_ids = _ids_of(ids, "input_ids")
        return [(row_ids, _checked_mask(mask, len(row_ids), None))]
    masks = [None] * len(ids) if mask is None else mask
    if len(masks) != len(ids):
        raise ValueError(f"attention_mask has {len(masks)} rows but input_ids has {len(ids)}")
    return [(_ids_of(row_ids, f"input_ids row {index}"), _checked_mask(row_mask, len(row_ids), index))
            for index, (row_ids, row_mask) in enumerate(zip(ids, masks))]


def _holds_rows(ids: Any) -> bool:
    """Whether ``ids`` is a sequence of sequences of ids (rows) rather than one sequence."""
    if isinstance(ids, np.ndarray) and ids.dtype == object:  # ragged rows of a numpy-formatted dataset[:n]
        return ids.ndim == 1 and len(ids) > 0 and isinstance(ids[0], (Sequence, torch.Tensor, np.ndarray))
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        return ids.ndim == 2
    return (isinstance(ids, Sequence) and len(ids) > 0 and isinstance(ids[0], (Sequence, torch.Tensor, np.ndarray))
            and not isinstance(ids[0], (str, bytes)))


def _ids_of(sequence: Any, what: str) -> list[int]:
    """One sequence of token ids as a list of ints; floats are refused, not truncated."""
    if isinstance(sequence, (str, bytes)):
        raise TypeError(f"{what} is text inside token ids; pass texts as strings, ids as sequences of ints")
    if isinstance(sequence, (torch.Tensor, np.ndarray)):
        check_id_dtype(sequence, what)
        return sequence.reshape(-1).tolist()
    try:
        ids = list(sequence)
    except TypeError:
        raise TypeError(f"{what} is of type {type(sequence).__name__}, not a text or a sequence of token ids") from None
    odd = next((i for i in ids if not isinstance(i, numbers.Integral) or isinstance(i, bool)), None)
    if odd is not None:
        raise TypeError(f"{what} holds {odd!r} ({type(odd).__name__}); token ids must be integers")
    return [int(i) for i in ids]


def _checked_mask(mask: Any, length: int, row: int | None) -> Any:
    """``mask`` (or None), once its length is known to match its row's ids."""
    if mask is not None and len(mask) != length:
        where = "" if row is None else f" of row {row}"
        raise ValueError(f"attention_mask{where} has {len(mask)} items but its input_ids has {length}")
    return mask


class DifferenceMasker(torch.nn.Module):
    """Masks a padded batch of token ids where it lives (CPU or GPU): ``(input_ids, labels)``.

    Takes the collator's options and draws from the same distribution: the per-row algorithm,
    random draws and score look-ups are those of ``DifferenceMaskingCollator`` (given the seed of
    one of the collator's steps in ``seed_state``, and once ``warm`` has seen the batch's words, the
    output is identical (the collator looks up words it has not seen; the masker scores them
    ``unknown_score``); the two advance their seeds differently, so they do not draw the same
    masks step after step). The word tables and
    the score table are buffers, so ``masker.to(device)`` moves them (a cast such as
    ``model.half()`` leaves the score table float32); each call uses the seed in the
    ``seed_state`` buffer and then adds one to it in place, so steps draw fresh masks without a
    host round trip and a given ``seed`` reproduces a run (per distributed rank, as the
    collator's seed). Without one the root seed is drawn from the global torch RNG, and
    ``MaskingTrainer`` roots it at ``TrainingArguments.seed`` so that runs repeat. The state dict
    holds the calls made (``calls_made``) and the coverage counters, not the seed: loaded in any
    rank, it carries on that rank's own stream. Options
    assigned to ``masker.collator`` later (``scores``, ``tokenizer``) reach the device tables at
    the next uncompiled call or ``warm``; a new score table knows no word until ``warm``.

    ``forward(input_ids [B, L], attention_mask=None, special_tokens_mask=None)``: padding
    (attention_mask 0) and special tokens are never masked. Ids outside the tokenizer's vocabulary
    are refused: on the CPU with a ValueError, on a GPU or in a compiled step by an assertion on
    the device.
    """

    def __init__(
        self,
        tokenizer: Any,
        scores: ScoreTable | Mapping[str, float],
        *,
        mlm_probability: float = 0.25,
        weighting: str = "similarity",
        uniform_mix: float = 0.0,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        seed: int | None = None,
        word_boundary: str | None = None,
    ):
        super().__init__()
        # The collator validates the options and does the host-side work: decoding and scoring
        # words the table does not know yet.
        self.collator = DifferenceMaskingCollator(
            tokenizer, scores, mlm_probability=mlm_probability, weighting=weighting, uniform_mix=uniform_mix,
            mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob, seed=seed,
            word_boundary=word_boundary,
        )
        boundaries = self.collator.boundaries
        self.register_buffer("starts_word", boundaries.starts_word.clone(), persistent=False)
        self.register_buffer("never_word", boundaries.never_word.clone(), persistent=False)
        self.register_buffer("random_token_ids", boundaries.random_token_ids.clone(), persistent=False)
        self._boundaries = boundaries  # see _follow_collator
        keys, values = self.collator._cache.tensors()
        self.register_buffer("table_keys", keys.clone(), persistent=False)
        self.register_buffer("table_values", values.clone(), persistent=False)
        self._uploaded = (self.collator._cache, len(self.collator._cache))  # see _table_is_current
        # Without a seed, the root comes from the global torch RNG, which set_seed makes equal on
        # every rank: the rank is mixed in either way.
        self._root_seed = int(seed) if seed is not None else int(torch.randint(0, 2**62, ()))
        self._seed_given = seed is not None  # see follow_run_seed
        self._rank = distributed_rank()
        self.register_buffer("seed_state", torch.tensor([_base_seed(self._root_seed, self._rank)], dtype=torch.int64),
                             persistent=False)
        self.register_buffer("calls_made", torch.zeros(1, dtype=torch.int64))
        self.register_buffer("words_seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("words_missed", torch.zeros((), dtype=torch.int64))

    @classmethod
    def from_collator(cls, collator: DifferenceMaskingCollator, seed: int | None = None) -> "DifferenceMasker":
        """A masker with the collator's tokenizer, scores and options; it starts with a copy of
        the words the collator has already looked up."""
        if not isinstance(collator, DifferenceMaskingCollator):
            raise TypeError(f"from_collator takes a DifferenceMaskingCollator, got {type(collator).__name__}")
        masker = cls(
            collator.tokenizer, collator.scores, mlm_probability=collator.mlm_probability,
            weighting=collator.weighting, uniform_mix=collator.uniform_mix,
            mask_replace_prob=collator.mask_replace_prob, random_replace_prob=collator.random_replace_prob,
            seed=collator.seed if seed is None else seed, word_boundary=collator.boundaries.scheme,
        )
        keys, values = collator._cache.tensors()
        occupied = keys != 0
        masker.collator._cache.insert(keys[occupied], values[occupied])
        masker._upload_table()
        return masker

    # -- options ---------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.collator.tokenizer

    @property
    def scores(self) -> ScoreTable:
        return self.collator.scores

    @property
    def mlm_probability(self) -> float:
        return self.collator.mlm_probability

    def extra_repr(self) -> str:
        c = self.collator
        return (f"mlm_probability={c.mlm_probability}, weighting={c.weighting!r}, uniform_mix={c.uniform_mix}, "
                f"mask_replace_prob={c.mask_replace_prob}, random_replace_prob={c.random_replace_prob}, "
                f"known_words={len(c._cache)}")

    def follow_rank(self) -> None:
        """Take the distributed rank again, for a masker built before its process group was
        initialized (``MaskingTrainer`` calls this): its steps then draw this rank's masks, the
        steps already drawn counted."""
        rank = distributed_rank(self._rank)
        if rank != self._rank:
            self._rank = rank
            self._reseed()

    def follow_run_seed(self, seed: int) -> None:
        """Root a masker built without a seed at the run's ``seed`` (``MaskingTrainer`` calls this
        with ``TrainingArguments.seed``): its root came from the global torch RNG when it was
        built, before ``Trainer`` seeded that RNG, so its masks differed from run to run. A
        masker given a seed keeps it."""
        if not getattr(self, "_seed_given", True):  # a masker pickled before it had the flag keeps its root
            self._root_seed = int(seed)
            self._reseed()

    def resume_at(self, step: int, calls_per_step: int = 1, calls_made: int | None = None) -> None:
        """Carry on from optimizer ``step`` of a resumed run (``MaskingTrainer`` calls this): the
        calls made before (``calls_made``; ``step * calls_per_step`` when not given) are taken as
        made, whatever this masker counted or loaded, so the masks are those of the run
        uninterrupted."""
        step, calls_per_step, calls_made = resume_counts(step, calls_per_step, calls_made)
        self.calls_made.fill_(step * calls_per_step if calls_made is None else calls_made)
        self._reseed()

    def _reseed(self) -> None:
        """``seed_state`` from the root seed, this rank and the calls made (no host round trip)."""
        self.seed_state.copy_(self.calls_made + _base_seed(self._root_seed, self._rank))

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._reseed()  # the loaded calls, in this rank's stream

    def _apply(self, fn, recurse: bool = True):
        """Moves reach every buffer; casts (``model.half()``) leave the score table float32,
        which the op reads, and its scores unrounded."""
        table = self.table_values
        result = super()._apply(fn, recurse)
        if self.table_values.dtype != torch.float32:
            self.table_values = table.to(self.table_values.device)
        return result

    # -- the training step -----------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        special_tokens_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input_ids, labels) of a padded [B, L] batch; labels are -100 where nothing is
        masked. No host round trip: the seed, the tables and the miss counts stay on the device."""
        if not torch.compiler.is_compiling():  # a compiled step keeps the tables it was traced with
            self._follow_collator()
            self._warn_if_never_warmed()
        input_ids = check_batch_ids(input_ids, self.never_word.device)
        vocabulary = self.never_word.shape[0]
        check_in_vocabulary(input_ids, vocabulary, self.collator.tokenizer, "masker")
        # On a GPU the check above is not waited for: clamping keeps this look-up in bounds.
        never = self.never_word[input_ids.clamp(0, vocabulary - 1)]
        if attention_mask is not None:
            never = never | (check_like_ids(input_ids, attention_mask, "attention_mask") == 0)
        if special_tokens_mask is not None:
            never = never | check_like_ids(input_ids, special_tokens_mask, "special_tokens_mask").bool()
        c = self.collator
        masked_ids, labels, _, n_words, missed_words = torch.ops.diffmask_fast.difference_mask_device(
            input_ids, never, self.starts_word, self.table_keys, self.table_values, self.random_token_ids,
            float(c.mlm_probability), ops.WEIGHTINGS[c.weighting], float(c.uniform_mix), float(c.scores.unknown_score),
            int(c.boundaries.mask_token_id), float(c.mask_replace_prob), float(c.random_replace_prob),
            self.seed_state,
        )
        self.seed_state.add_(1)
        self.calls_made.add_(1)
        self.words_seen.add_(n_words.sum())
        self.words_missed.add_(missed_words.sum())
        return masked_ids, labels

    # -- the score table -------------------------------------------------------------------------
    def warm(self, data: Any, *, batch_size: int = 256, max_length: int | None = None) -> int:
        """Look up, on the CPU, the score of every word in ``data``, so that the table on the
        device knows them; returns how many distinct words (token sequences) it knows.

        ``data``: texts (strings, tokenized here, truncated to ``max_length`` when given), token-id
        sequences (lists, arrays, 1-D tensors), dicts with ``input_ids`` holding one example (a
        tokenized ``datasets.Dataset`` works) or rows of them, padded or not (``tokenizer(texts)``,
        ``dataset[:1000]``), or a padded [B, L] tensor / a batch dict with 2-D ``input_ids``; a
        dict's ``attention_mask``, when present, marks the tokens to read. Run it over the
        training data (or a large sample of it) before training, and again whenever
        ``coverage()`` shows many misses.
        """
        batch_size = whole_number(batch_size, "batch_size")
        self._follow_collator(warn=False)
        if max_length is not None:
            max_length = whole_number(max_length, "max_length (or None)")
        if not isinstance(data, Iterable):
            raise TypeError(f"warm takes texts, token-id sequences, example dicts or batches, got "
                            f"{type(data).__name__} {data!r:.60}")
        if isinstance(data, (str, Mapping)) or _is_batch(data) or _is_one_sequence(data):
            data = [data]
        texts: list[str] = []
        rows: list[tuple[list[int], Any]] = []
        for item in data:
            if _is_batch(item):  # e.g. the batches of a DataLoader
                ids = item["input_ids"] if isinstance(item, Mapping) else item
                mask = item.get("attention_mask") if isinstance(item, Mapping) else None
                check_id_dtype(ids, "input_ids")
                self._learn_batch(torch.as_tensor(ids), mask)
            elif isinstance(item, str):
                texts.append(item)
            else:
                rows.extend(_id_rows(item))
            if len(texts) >= batch_size:
                rows.extend(self._tokenized(texts, max_length))
                texts = []
            if len(rows) >= batch_size:  # not on every item: the slice left over is a copy
                rows = self._learn_in_chunks(rows, batch_size)
        rows.extend(self._tokenized(texts, max_length))
        self._learn_in_chunks(rows, batch_size, everything=True)
        if not self._table_is_current():  # a warm that learned nothing copies nothing to the device
            self._upload_table()
        return len(self.collator._cache)

    def coverage(self) -> dict:
        """Words of the batches masked so far (every word drawn from, masked or not) and how
        many of them the table did not know (they scored ``unknown_score``). Reads device
        counters: synchronizes."""
        seen, missed = int(self.words_seen), int(self.words_missed)
        return {"words": seen, "missed": missed, "missed_fraction": missed / seen if seen else 0.0,
                "known_words": len(self.collator._cache)}

    def reset_coverage(self) -> None:
        self.words_seen.zero_()
        self.words_missed.zero_()

    @contextlib.contextmanager
    def pinned_generator(self, seed: int, per_process: bool = False):
        """Inside, draw from ``seed`` alone, the same in every rank (for masking a validation set
        identically everywhere) and without counting coverage; outside, the training draws and
        counts go on where they were. Words learned inside stay learned. ``per_process``: each
        rank draws a stream of its own from ``seed``, for ranks that mask different batches."""
        saved = {name: getattr(self, name).clone()
                 for name in ("seed_state", "calls_made", "words_seen", "words_missed")}
        seed = pinned_seed(seed)
        if per_process:
            seed = _base_seed(seed, distributed_rank(self._rank))
        self.seed_state.fill_(int(torch.randint(0, 2**62, (), generator=torch.Generator().manual_seed(seed))))
        try:
            yield self
        finally:
            for name, value in saved.items():
                getattr(self, name).copy_(value)

    # -- internals ---------------------------------------------------------------------------------
    def _tokenized(self, texts: list[str], max_length: int | None) -> list[tuple[list[int], None]]:
        if not texts:
            return []
        encoded = tokenize_texts(self.tokenizer, texts, truncation=max_length is not None, max_length=max_length)
        return [(list(ids), None) for ids in encoded["input_ids"]]

    def _learn_in_chunks(self, rows: list, batch_size: int, everything: bool = False) -> list:
        """Learn ``rows`` ``batch_size`` at a time; returns the rows left for a later, full chunk."""
        end = len(rows) if everything else len(rows) - len(rows) % batch_size
        for start in range(0, end, batch_size):
            self._learn_rows(rows[start:start + batch_size])
        return rows[end:]

    def _learn_rows(self, rows: list[tuple[list[int], Any]]) -> None:
        """Learn the words of (token ids, attention mask or None) rows, padded into one batch."""
        rows = [(ids, mask) for ids, mask in rows if len(ids) > 0]
        if not rows:
            return
        length = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), length), int(self.tokenizer.pad_token_id), dtype=torch.int64)
        attention = torch.zeros((len(rows), length), dtype=torch.bool)
        for row, (row_ids, mask) in enumerate(rows):
            ids[row, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.int64)
            attention[row, : len(row_ids)] = True if mask is None else torch.as_tensor(mask) != 0
        self._learn_batch(ids, attention)

    def _learn_batch(self, input_ids: torch.Tensor, attention_mask) -> None:
        input_ids = input_ids.detach().to("cpu", torch.int64)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be a [batch, length] matrix, got shape {tuple(input_ids.shape)}")
        vocabulary = self.collator.boundaries.vocab_size
        never = (input_ids < 0) | (input_ids >= vocabulary)
        if attention_mask is not None:  # [1, L] or [L] would broadcast over every row, silently
            never |= check_like_ids(input_ids, torch.as_tensor(attention_mask).detach().cpu(), "attention_mask") == 0
        ids = input_ids.clamp(0, vocabulary - 1)
        # The collator's mask() decodes and scores every word its table lacks, until none is left;
        # its masks are thrown away, drawn from a stream of their own (not the global RNG's).
        with self.collator.pinned_generator(0):
            self.collator.mask(ids, never)

    def _follow_collator(self, warn: bool = True) -> None:
        """Take up what an assignment to the collator rebuilt (``masker.collator.scores = table``
        starts a new table of known words; a new tokenizer, new word boundaries): two identity
        checks when nothing changed."""
        boundaries = self.collator.boundaries
        if boundaries is not getattr(self, "_boundaries", boundaries):  # a masker pickled before it had one
            device = self.starts_word.device
            for name in ("starts_word", "never_word", "random_token_ids"):
                setattr(self, name, getattr(boundaries, name).to(device, copy=True))
            self._boundaries = boundaries
        if getattr(self, "_uploaded", (self.collator._cache,))[0] is not self.collator._cache:
            if warn:
                self._warned_never_warmed = True  # this says it already
                warnings.warn("an option assigned to the masker's collator (collator.scores = ...) rebuilt its tables: "
                              "the device's table of scored words starts empty, so every word scores unknown_score "
                              "until masker.warm(...) sees it", DiffmaskWarning, stacklevel=3)
            self._upload_table()

    def _warn_if_never_warmed(self) -> None:
        """Once, where the device's table knows no word of a score table that has some: every word
        then scores unknown_score and the masks are random-word masks, which ``coverage()`` alone
        would show (a host check: the table's size is known on the host)."""
        if (len(self.collator._cache) == 0 and len(self.collator.scores) > 0  # an empty table scores all alike
                and not getattr(self, "_warned_never_warmed", False)):
            self._warned_never_warmed = True
            warnings.warn("the masker knows no word's score yet, so every word scores unknown_score and masking "
                          "is uniform over words: call masker.warm(texts or batches) before training",
                          DiffmaskWarning, stacklevel=3)

    def _upload_table(self) -> None:
        cache = self.collator._cache
        keys, values = cache.tensors()
        device = self.starts_word.device
        self.table_keys = keys.to(device, copy=True)
        self.table_values = values.to(device, copy=True)
        self._uploaded = (cache, len(cache))  # what the device's table holds

    def _table_is_current(self) -> bool:
        """Whether the device's table holds every word the collator's does (a new score table
        given to the collator starts a new one)."""
        cache, words = getattr(self, "_uploaded", (None, -1))  # a masker pickled before it had one
        return cache is self.collator._cache and words == len(cache)
