"""What every masking collator shares: padding, per-process seeding, pickling, 80/10/10.

A strategy collator is a dataclass that extends ``MaskingCollatorBase`` (which holds the options
every strategy shares) with a ``mask_batch(input_ids, never_word) -> dict`` method; the base pads
the examples, calls it and returns the batch. Keeping padding and seeding here means every
strategy draws fresh masks per call, reproducibly per ``seed``, and differently in each
DataLoader worker and distributed rank.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import numbers
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from transformers import BatchEncoding

from ._checks import whole_number
from .tokenization import WordBoundaries, check_tokenizer, naming_word_boundary, word_boundaries


def distributed_rank(default: int = 0) -> int:
    """This process's rank: from the process group, else $RANK (torchrun), else ``default``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", default))


def check_probability(name: str, value: float) -> float:
    """``value`` as a float, refused unless a number in [0, 1] (a Fraction or a NumPy scalar is
    kept as a float: torch compares tensors with neither)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def check_loss_weight(name: str, value: Any) -> float:
    """``value`` as a float after refusing what no float32 loss weight can hold: not a number, not
    positive, or beyond float32's range (1e308 would fail at the first batch; 1e-50 becomes 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    weight = float(value)
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    as_float32 = float(np.float32(weight)) if weight <= float(np.finfo(np.float32).max) else math.inf
    if not 0 < as_float32 < math.inf:
        raise ValueError(f"{name} must lie within float32's range (the loss weights' type), "
                         f"{float(np.finfo(np.float32).smallest_subnormal):.3g} to {float(np.finfo(np.float32).max):.3g}, "
                         f"got {value}")
    return weight


def check_count(name: str, value: Any) -> int:
    """``value`` as a Python int after refusing what is no count: a step of 1.7 would be taken
    as 1, silently, and a negative one would replay another run's draws."""
    return whole_number(value, name, least=0)


def resume_counts(step: Any, calls_per_step: Any, calls_made: Any) -> tuple[int, int, int | None]:
    """``resume_at``'s arguments, checked (see ``check_count``)."""
    return (check_count("step", step), check_count("calls_per_step", calls_per_step),
            None if calls_made is None else check_count("calls_made", calls_made))


def pinned_seed(seed: Any) -> int:
    """A ``pinned_generator`` seed: an integer seed, never None (there is no unpinned pin)."""
    if seed is None:
        raise TypeError("a pinned generator needs an integer seed, got None")
    return check_seed(seed)


def check_seed(seed: Any) -> int | None:
    """``seed`` as a Python int (numpy integers included), or None; anything else is refused
    here rather than failing inside a DataLoader worker on the first batch. Seeds lie in
    [0, 2**63), as numpy's: each one then draws its own masks (wider seeds would share streams)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer or None, got {seed!r}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return int(seed)


def check_batch_ids(input_ids: Any, tables_device: torch.device) -> torch.Tensor:
    """``input_ids`` as an int64 tensor, refused unless it is a [B, L] matrix of integers on the
    device of the masker's token tables (``tables_device``)."""
    if isinstance(input_ids, Mapping):  # a tokenizer's whole output, say
        raise TypeError(f"input_ids must be a [batch, length] matrix of token ids, got a {type(input_ids).__name__} "
                        f"of {', '.join(map(repr, list(input_ids)[:6]))}: pass batch['input_ids'] and "
                        "batch['attention_mask'] (masker(batch['input_ids'], batch['attention_mask']))")
    input_ids = torch.as_tensor(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be a [batch, length] matrix, got shape {tuple(input_ids.shape)}")
    check_id_dtype(input_ids, "input_ids")
    if input_ids.device != tables_device:
        raise ValueError(f"the masker's token tables are on {tables_device} but input_ids is on {input_ids.device}; "
                         f"call masker.to({str(input_ids.device)!r})")
    return input_ids.long()


def id_matrix(input_ids: Any, vocabulary: int, tokenizer: Any = None, owner: str = "collator") -> torch.Tensor:
    """``input_ids`` as a [B, L] int64 tensor of integer ids inside [0, ``vocabulary``), the size
    of the word tables the ``owner`` built from ``tokenizer``; else an error naming the problem
    (and a tokenizer that has grown since the tables were built)."""
    input_ids = torch.as_tensor(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be a [batch, length] matrix, got shape {tuple(input_ids.shape)}")
    refuse_meta(input_ids, "input_ids")
    check_id_dtype(input_ids, "input_ids")
    input_ids = input_ids.long()
    _refuse_ids_outside(input_ids, vocabulary, tokenizer, owner)
    return input_ids


def refuse_meta(tensor: torch.Tensor, name: str) -> None:
    """A tensor on the "meta" device has a shape but no values to mask or search by."""
    if tensor.device.type == "meta":
        raise ValueError(f"{name} is on the 'meta' device, which holds no values; give it on a device such as "
                         "'cpu' or 'cuda'")


def _refuse_ids_outside(input_ids: torch.Tensor, vocabulary: int, tokenizer: Any, owner: str) -> None:
    """Raise ValueError for ids of an integer tensor outside [0, ``vocabulary``)."""
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocabulary):
        grown = tokenizer is not None and len(tokenizer) > vocabulary  # tokens added after the tables were built
        raise ValueError(f"input_ids hold ids outside the tokenizer's vocabulary [0, {vocabulary})"
                         + (f"; the tokenizer has grown to {len(tokenizer)} tokens since this {owner} "
                            "was built: build it again after adding tokens" if grown else ""))


def check_in_vocabulary(input_ids: torch.Tensor, vocabulary: int, tokenizer: Any, owner: str) -> None:
    """Refuse ids outside [0, ``vocabulary``) of a batch ``check_batch_ids`` passed, which the
    model's embedding would fail on far from here: at once on the CPU, with the reason; on a GPU
    or in a compiled step as an assertion on the device, which the step does not wait for."""
    if input_ids.device.type == "cpu" and not torch.compiler.is_compiling():
        _refuse_ids_outside(input_ids, vocabulary, tokenizer, owner)
    else:
        inside = ((input_ids >= 0) & (input_ids < vocabulary)).all()
        torch._assert_async(inside, f"input_ids hold ids outside the tokenizer's vocabulary [0, {vocabulary})")


def check_id_dtype(ids: torch.Tensor | np.ndarray, what: str) -> None:
    """Token ids arrive as integers: floats are refused, since casting would truncate them, and
    booleans, which are a mask passed where the ids go. An empty batch may be of any type."""
    if isinstance(ids, torch.Tensor):
        kind = "b" if ids.dtype == torch.bool else "f" if ids.dtype.is_floating_point or ids.dtype.is_complex else "i"
        empty = ids.numel() == 0
    else:
        kind, empty = ids.dtype.kind, ids.size == 0
    if kind not in "iu" and not empty:
        raise TypeError(f"{what} holds {ids.dtype} values; token ids must be integers")


def check_like_ids(input_ids: torch.Tensor, mask: Any, name: str) -> torch.Tensor:
    """``mask`` as a tensor on ``input_ids``' device, refused unless it has their [B, L] shape
    (a [1, L] mask would silently broadcast over every row)."""
    if isinstance(mask, torch.Tensor):
        refuse_meta(mask, name)
    mask = torch.as_tensor(mask, device=input_ids.device)
    if mask.shape != input_ids.shape:
        raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(mask.shape)}")
    return mask


#: The largest ``pad_to_multiple_of`` taken whatever the tokenizer's ``model_max_length``: tensor
#: cores want multiples of 8 or 64, and 10**9 padded every batch to a billion tokens.
PAD_MULTIPLE_LIMIT = 2**16


def longest_padding(tokenizer: Any) -> int:
    """The largest ``pad_to_multiple_of`` for ``tokenizer``: its ``model_max_length`` where it
    names one beyond PAD_MULTIPLE_LIMIT (a long-context model), else the limit."""
    longest = getattr(tokenizer, "model_max_length", None)
    if isinstance(longest, numbers.Integral) and not isinstance(longest, bool) and longest < 10**9:
        return max(PAD_MULTIPLE_LIMIT, int(longest))
    return PAD_MULTIPLE_LIMIT  # unset: transformers' VERY_LARGE_INTEGER (1e30)


#: How far over 1 two replacement shares may sum by float32 rounding alone: np.float32(0.1) is
#: 0.10000000149 as a float, so 0.9 and it sum to 1.0000000015.
REPLACEMENT_ROUNDING = 1e-6


def check_replacement(mask_replace_prob: float, random_replace_prob: float) -> tuple[float, float]:
    """The shares of the 80/10/10 replacement as floats: numbers in [0, 1] that sum to at most 1.
    Shares over 1 by rounding alone (``REPLACEMENT_ROUNDING``) sum to 1, the random share
    lowered: the ops refuse a float sum over 1, which each batch would then fail on."""
    mask_share = check_probability("mask_replace_prob", mask_replace_prob)
    random_share = check_probability("random_replace_prob", random_replace_prob)
    if mask_share + random_share > 1 + REPLACEMENT_ROUNDING:
        raise ValueError(f"mask_replace_prob and random_replace_prob must sum to at most 1, got {mask_share} and "
                         f"{random_share}")
    return mask_share, min(random_share, 1.0 - mask_share)


def replace_selected(
    input_ids: torch.Tensor,
    selected: torch.Tensor,
    boundaries: WordBoundaries,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input_ids, labels) for the ``selected`` positions of a [B, L] batch: each becomes
    the mask token with ``mask_replace_prob``, a random token with ``random_replace_prob`` (from
    ``boundaries.random_token_ids``: never a special token, nor a whitespace-only one, which is no
    word's), and stays otherwise; labels are -100 where nothing is selected.
    Works on any device (``generator`` must live on the batch's device)."""
    device = input_ids.device
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    draw = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (draw < mask_replace_prob)
    to_random = selected & (draw >= mask_replace_prob) & (draw < mask_replace_prob + random_replace_prob)
    random_ids = boundaries.random_token_ids.to(device)
    picks = torch.randint(0, random_ids.numel(), input_ids.shape, generator=generator, device=device)
    masked = torch.where(to_mask, torch.full_like(input_ids, boundaries.mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids[picks], masked)
    return masked, labels


def stream_seed(words: list[int], resumed_at: int = 0) -> int:
    """A torch seed (63 bits) drawn from ``words`` and, in a resumed run, the step it resumed at:
    the streams of different words (seed, rank, worker...) are independent."""
    entropy = np.random.SeedSequence(list(words) + ([resumed_at] if resumed_at else []))
    return int(entropy.generate_state(1, np.uint64)[0]) >> 1


def _stream_context(rank_default: int = 0) -> tuple[int, int, int, int]:
    """What makes a random stream distinct: process, distributed rank, DataLoader worker (-1
    outside workers) and the worker's seed, which DataLoader draws anew from its generator (else
    the global torch RNG) for every epoch's workers (they would otherwise replay the last epoch's
    masks). ``rank_default`` is the rank where neither a process group nor $RANK tells it."""
    info = torch.utils.data.get_worker_info()
    rank = distributed_rank(rank_default)
    if info is None:
        return (os.getpid(), rank, -1, -1)
    return (os.getpid(), rank, info.id, int(info.seed))


def _continued_streams(generators: dict) -> dict:
    """New generators, each at the state of its original: a copy's draws go on from there."""
    continued = {}
    for context, generator in generators.items():
        continued[context] = torch.Generator(device=generator.device)
        continued[context].set_state(generator.get_state())
    return continued


@functools.cache
def _option_names(collator_class: type) -> frozenset[str]:
    """The fields a collator is constructed with."""
    return frozenset(f.name for f in fields(collator_class) if f.init)


@dataclass(kw_only=True)
class MaskingCollatorBase:
    """Padding, seeding and pickling for a masking collator, and the options every strategy has
    (keyword-only): the 80/10/10 split (``mask_replace_prob``, ``random_replace_prob``),
    ``pad_to_multiple_of``, ``return_tensors`` ("pt" or "np"), ``seed`` and ``word_boundary``
    (see ``word_boundaries``), and ``mlm`` (only True) as ``DataCollatorForLanguageModeling`` takes it.

    Examples are dicts with ``input_ids`` or bare sequences of ids (lists, arrays and tensors of
    integers, mixed freely). ``attention_mask``, ``special_tokens_mask`` and ``token_type_ids``
    are padded with them and must be as long as each example's ``input_ids``; ``labels`` gives
    way to the masking labels; any other field (a class label, say) is kept, stacked into one
    tensor over the examples, as ``DataCollatorForLanguageModeling`` keeps it, and a field that
    does not stack (text, sequences of different lengths) is an error that names it.

    Subclasses (dataclasses) define ``tokenizer`` and ``mlm_probability`` (a ``__post_init__`` of
    their own calls ``_setup_base()``) and implement ``mask_batch(input_ids [B, L], never_word
    [B, L]) -> dict`` returning at least ``input_ids`` and ``labels`` (and e.g. ``loss_weights``).
    """

    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"
    seed: int | None = None
    word_boundary: str | None = None
    mlm: bool = True  # as in DataCollatorForLanguageModeling, so that its calls carry over; only True
    boundaries: WordBoundaries = field(init=False, repr=False)

    #: Fields the collator's tables are built from (word boundaries, score caches, term
    #: matchers): assigning one after construction rebuilds them (see ``__setattr__``).
    TABLES_FROM = ("tokenizer", "word_boundary")
    #: What ``_setup_base`` starts afresh and a rebuild keeps: the random streams and their position.
    _STREAM_STATE = ("_generators", "_sender_rank", "_resumed_at", "_pinned_seed", "_pinned_per_process")

    def __post_init__(self) -> None:
        self._setup_base()

    def __setattr__(self, name: str, value: Any) -> None:
        """Assigning a field of ``TABLES_FROM`` to a built collator (``collator.scores = table``)
        checks it and rebuilds what was derived from it, keeping the random streams where they
        are, instead of masking on with tables of the old value; any other option is checked as
        the constructor checks it (``collator.mlm_probability = 7`` is refused), and a new
        ``seed`` restarts the streams from it. A value that fails its checks is refused and the
        old one kept."""
        built = "boundaries" in self.__dict__ and not self.__dict__.get("_rebuilding")
        if not built or name not in _option_names(type(self)):
            object.__setattr__(self, name, value)
            return
        before = dict(self.__dict__)
        object.__setattr__(self, name, value)
        self.__dict__["_rebuilding"] = True
        try:
            if name in self.TABLES_FROM:
                self.__post_init__()
            else:
                self._check_settings()
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise
        finally:
            self.__dict__.pop("_rebuilding", None)
        if name in self.TABLES_FROM:
            self.__dict__.update({key: before[key] for key in self._STREAM_STATE})
        elif name == "seed" and self.seed != before["seed"]:
            self._generators = {}

    def _check_settings(self) -> None:
        """Check (and normalize) the options that build no table: at construction and whenever
        one is assigned. Subclasses check their own too."""
        if not self.mlm:
            raise ValueError(f"{type(self).__name__} masks for masked language modelling; mlm=False (causal language "
                             "modelling) is not supported")
        self.mlm_probability = check_probability("mlm_probability", self.mlm_probability)
        self.mask_replace_prob, self.random_replace_prob = check_replacement(self.mask_replace_prob,
                                                                             self.random_replace_prob)
        self.seed = check_seed(self.seed)
        if self.pad_to_multiple_of is not None:
            self.pad_to_multiple_of = whole_number(self.pad_to_multiple_of, "pad_to_multiple_of",
                                                   most=longest_padding(self.tokenizer),
                                                   why=" (the longest sequence the tokenizer names, or 65,536)")
        if self.return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {self.return_tensors!r}")

    def _setup_base(self) -> None:
        """Check the options every masking collator has and build the tokenizer's word tables."""
        self._check_settings()
        check_tokenizer(self.tokenizer)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"{type(self.tokenizer).__name__} has no padding token; set tokenizer.pad_token first")
        self.boundaries = self._word_boundaries()
        self._generators: dict = {}
        self._sender_rank = 0  # see __getstate__
        self._resumed_at = 0  # see resume_at
        self._pinned_seed: int | None = None  # see pin_generator
        self._pinned_per_process = False  # see pinned_generator

    def _word_boundaries(self) -> WordBoundaries:
        with naming_word_boundary():
            return word_boundaries(self.tokenizer, self.word_boundary)

    # -- pickling: generators are per process and rebuilt on first use ----------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_generators"] = {}
        # A DataLoader worker started by spawn or forkserver has no process group, and without
        # torchrun no $RANK either: it takes the rank of the process that sent it the collator.
        state["_sender_rank"] = distributed_rank(self._sender_rank)
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_pinned_seed", None)  # pickled before pinning survived pickling
        state.setdefault("_pinned_per_process", False)
        self.__dict__.update(state)

    # -- copies in this process go on where the original's streams are, as a copied RNG does ----
    # (through pickling they started over, and replayed the original's first masks).
    def __copy__(self) -> "MaskingCollatorBase":
        copied = type(self).__new__(type(self))
        copied.__setstate__(self.__getstate__())
        copied._generators = _continued_streams(self._generators)
        return copied

    def __deepcopy__(self, memo: dict) -> "MaskingCollatorBase":
        copied = memo[id(self)] = type(self).__new__(type(self))
        copied.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        copied._generators = _continued_streams(self._generators)
        return copied

    def __call__(self, examples: Sequence[Any], return_tensors: str | None = None) -> BatchEncoding:
        """The examples padded and masked, as a ``BatchEncoding`` (a mapping with ``.to(device)``),
        as transformers' collators return them; ``return_tensors`` ("pt" or "np") overrides the
        collator's for this call, as theirs take it."""
        if return_tensors is None:
            return_tensors = self.return_tensors
        elif return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        batch = self._pad(examples, return_tensors)
        never_word = batch.pop("special_tokens_mask") | ~batch["attention_mask"].bool()
        batch.update(self.mask_batch(batch["input_ids"], never_word))
        if return_tensors == "np":  # numpy has no bfloat16: such a field comes back as float32
            batch = {key: (value.float() if value.dtype == torch.bfloat16 else value).numpy()
                     for key, value in batch.items()}
        return BatchEncoding(batch)

    def mask_batch(self, input_ids: torch.Tensor, never_word: torch.Tensor | None = None) -> dict:
        raise NotImplementedError

    def _checked_inputs(self, input_ids, never_word, excluded_ids: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` as a [B, L] int64 tensor of ids inside the tokenizer's vocabulary, and the
        tokens never to mask: the caller's ``never_word`` (or none) plus the tokens of
        ``excluded_ids`` (a per-id table; by default the boundaries' ``never_word``, which holds
        the special tokens and the whitespace tokens of no word)."""
        input_ids = id_matrix(input_ids, self.boundaries.never_word.numel(), self.tokenizer)
        excluded = (self.boundaries.never_word if excluded_ids is None else excluded_ids)[input_ids]
        if never_word is None:
            return input_ids, excluded
        return input_ids, check_like_ids(input_ids, never_word, "never_word").bool() | excluded

    def _generator(self) -> torch.Generator | None:
        """A generator for this process, seeded from (seed, rank, worker, worker seed) when a seed
        is set. Outside DataLoader workers that is the seed and the rank alone, so runs repeat.
        A worker's seed is drawn by DataLoader at the start of every epoch from its ``generator``,
        else from the global torch RNG, so that each epoch's workers draw new masks; runs with
        workers repeat only when that is seeded too (``torch.manual_seed``, as ``set_seed`` and
        ``Trainer`` do, or ``DataLoader(generator=torch.Generator().manual_seed(s))``).
        After ``pin_generator(s)`` every process starts from ``s`` alone.

        Without a seed, rank 0 draws from the global torch RNG, which DataLoader already seeds per
        worker. ``set_seed`` makes that RNG the same on every rank, so the other ranks draw from
        streams of their own, seeded from its seed and their rank: else every rank masked the
        same positions.
        """
        context = _stream_context(self._sender_rank)
        generator = self._generators.get(context)
        _, rank, worker, seed_of_worker = context
        if generator is None and self._pinned_seed is not None:
            seed = (stream_seed([self._pinned_seed, rank + 1, worker + 1]) if self._pinned_per_process
                    else self._pinned_seed)
            generator = self._generators[context] = torch.Generator().manual_seed(seed)
        elif generator is None and self.seed is not None:
            words = [self.seed, rank + 1, worker + 1] + ([seed_of_worker % 2**64] if worker >= 0 else [])
            generator = self._generators[context] = self._stream(words)
        elif generator is None and rank > 0:
            generator = self._generators[context] = self._stream([torch.initial_seed() % 2**64, rank + 1, worker + 1])
        return generator

    def _stream(self, words: list[int]) -> torch.Generator:
        """A generator seeded from ``words`` and, in a resumed run, the step it resumed at."""
        return torch.Generator().manual_seed(stream_seed(words, self._resumed_at))

    def resume_at(self, step: int, calls_per_step: int = 1, calls_made: int | None = None) -> None:
        """Draw new streams in a run resumed at optimizer ``step`` (``MaskingTrainer`` calls
        this): a seeded stream would otherwise start over and replay the first steps' draws.
        A pinned stream stays pinned."""
        self._resumed_at, _, _ = resume_counts(step, calls_per_step, calls_made)
        self._generators = {}

    def pin_generator(self, seed: int | None) -> None:
        """Draw masks from ``seed`` alone, the same in every rank and DataLoader worker (for
        masking a validation set identically everywhere): each process, and each worker the
        collator is sent to, starts a stream from ``seed``. ``None`` unpins."""
        self._pinned_seed = check_seed(seed)
        self._pinned_per_process = False
        self._generators = {}

    @contextlib.contextmanager
    def pinned_generator(self, seed: int, per_process: bool = False):
        """Inside, draw from ``seed`` alone, as after ``pin_generator(seed)``; outside, the
        streams go on where they were. An evaluation masked inside draws the same masks every
        time and leaves the training draws as they were (``MaskingTrainer`` evaluates so).
        ``per_process``: each rank and DataLoader worker draws a stream of its own from ``seed``
        (they mask different batches, which one stream would mask at the same positions). The
        pin reaches DataLoader workers started inside; persistent workers (``persistent_workers``)
        go on with the stream they started with, so their masks change from one use to the next.
        A new ``seed`` or ``resume_at`` inside restarts the streams outside too."""
        saved = self._pinned_seed, self._pinned_per_process, self._generators
        streams_from = self.seed, self._resumed_at
        self.pin_generator(pinned_seed(seed))
        self._pinned_per_process = bool(per_process)
        try:
            yield self
        finally:
            restarted = (self.seed, self._resumed_at) != streams_from
            self._pinned_seed, self._pinned_per_process = saved[:2]
            self._generators = {} if restarted else saved[2]

    def _draw_seed(self) -> int:
        """A 64-bit seed for a compiled op, from this process's generator."""
        return int(torch.randint(-(2**63), 2**63 - 1, (), generator=self._generator()))

    def _pad(self, examples: Sequence[Any], return_tensors: str | None = None) -> dict:
        """Pad every sequence-valued field to a common length without a per-token Python loop
        (other fields stacked as ``return_tensors``, by default the collator's, will hold them)."""
        examples = _as_examples(examples)
        _refuse_fields_example_0_lacks(examples)
        sequences = [example["input_ids"] for example in examples]
        lengths = _sequence_lengths(sequences, "input_ids")
        total = int(lengths.sum())
        length = int(lengths.max())
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        rows = np.repeat(np.arange(len(sequences)), lengths)
        offsets = np.cumsum(lengths) - lengths
        columns = np.arange(total) - np.repeat(offsets, lengths)
        if self.tokenizer.padding_side == "left":
            columns += np.repeat(length - lengths, lengths)
        index = (torch.from_numpy(rows), torch.from_numpy(columns))

        def padded(field_name: str, fill: int, dtype=torch.long) -> torch.Tensor:
            values = _field_values(examples, field_name)
            if field_name != "input_ids":
                _check_lengths(values, lengths, field_name)
            out = torch.full((len(sequences), length), fill, dtype=dtype)
            out[index] = torch.from_numpy(_flatten(values, total, field_name)).to(dtype)
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
            if key in batch or key in DROPPED_FIELDS:
                continue
            batch[key] = _stacked_extra(_field_values(examples, key), key, return_tensors or self.return_tensors)
        return batch


#: Fields a batch never carries, as transformers' collators drop them: labels give way to the
#: masking's, and character offsets (what HF's whole-word masking reads) are no model input.
DROPPED_FIELDS = ("input_ids", "labels", "offset_mapping")

#: Why an example that is text cannot be collated.
_NOT_TOKENIZED = ("examples must be tokenized: dicts with 'input_ids', or sequences of token ids "
                  "(e.g. tokenizer(text)['input_ids'])")


def refuse_columns(examples: Any) -> None:
    """Refuse one mapping of columns (``tokenizer(texts)``, ``dataset[:n]``) where a list of
    examples belongs: indexed by row, it fails with an error that names neither."""
    if isinstance(examples, Mapping):
        raise TypeError("examples must be a list of examples (dicts with 'input_ids', or sequences of ids), not one "
                        "mapping of columns (a whole batch, such as tokenizer(texts)); pass its rows, e.g. "
                        "[{'input_ids': ids} for ids in batch['input_ids']]")


def _as_examples(examples: Sequence[Any]) -> list[Mapping]:
    """The examples as mappings with ``input_ids``: a bare sequence of ids becomes one."""
    if not isinstance(examples, Sequence) and not hasattr(examples, "__len__"):
        raise TypeError(f"a collator takes a list of examples (the DataLoader's batch), got {type(examples).__name__}")
    refuse_columns(examples)
    if len(examples) == 0:
        raise ValueError("cannot collate an empty list of examples")
    mappings = []
    for index, example in enumerate(examples):
        if isinstance(example, (str, bytes)):
            raise TypeError(f"example {index} is text; {_NOT_TOKENIZED}")
        if not isinstance(example, Mapping):
            example = {"input_ids": example}
        elif "input_ids" not in example:
            raise ValueError(f"every example needs an 'input_ids' field; example {index} has "
                             f"{', '.join(map(repr, example)) or 'none'}")
        mappings.append(example)
    return mappings


def _refuse_fields_example_0_lacks(examples: list[Mapping]) -> None:
    """Fields are read as example 0 has them: one only a later example holds (its attention_mask,
    say) would be left out without a word, its tokens masked as if attended."""
    first = examples[0].keys()
    for index, example in enumerate(examples[1:], 1):
        extra = example.keys() - first - set(DROPPED_FIELDS)  # not in the batch, held or not
        if extra:
            raise ValueError(f"field {min(extra, key=str)!r} is in example {index} but not in example 0")


def _field_values(examples: list[Mapping], field_name: str) -> list:
    """``field_name`` of every example; example 0 has it, so every example must."""
    try:
        return [example[field_name] for example in examples]
    except KeyError:
        missing = next(i for i, example in enumerate(examples) if field_name not in example)
        raise ValueError(f"field {field_name!r} is in example 0 but not in example {missing}") from None


def _sequence_lengths(values: list, field_name: str) -> np.ndarray:
    """The length of every example's ``field_name``, which must be one sequence."""
    lengths = np.empty(len(values), dtype=np.int64)
    for index, value in enumerate(values):
        if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim != 1:
            raise ValueError(_shape_problem(field_name, index, f"has shape {tuple(value.shape)}"))
        if isinstance(value, (str, bytes)):
            raise TypeError(f"field {field_name!r} of example {index} is text; {_NOT_TOKENIZED}")
        try:
            lengths[index] = len(value)
        except TypeError:
            raise TypeError(f"field {field_name!r} of example {index} is of type {type(value).__name__}, "
                            "not a sequence of token ids") from None
    return lengths


def _shape_problem(field_name: str, index: int, what_it_is: str) -> str:
    return (f"field {field_name!r} of example {index} {what_it_is}; each example must be one sequence: "
            "squeeze it, or tokenize without return_tensors")


def _check_lengths(values: list, lengths: np.ndarray, field_name: str) -> None:
    """Each example's ``field_name`` has as many items as its input_ids (tokenizer.pad agrees)."""
    mismatched = np.flatnonzero(_sequence_lengths(values, field_name) != lengths)
    if mismatched.size:
        index = int(mismatched[0])
        raise ValueError(f"field {field_name!r} of example {index} has {len(values[index])} items but its "
                         f"input_ids has {int(lengths[index])}")


def _flatten(sequences: list, total: int, field_name: str) -> np.ndarray:
    """Concatenate the examples' sequences of integers (lists, numpy arrays or tensors, mixed
    freely) into one int64 array of ``total`` items; anything but integers is refused."""
    if field_name == "input_ids":  # a list of booleans is a mask passed where the ids go
        flags = next((index for index, s in enumerate(sequences) if _starts_with_a_bool(s)), None)
        if flags is not None:
            raise TypeError(_not_integers(field_name, flags, "bool"))
    if all(isinstance(s, list) for s in sequences) and _all_integers(sequences):
        try:
            return np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=total)
        except OverflowError:
            raise ValueError(f"field {field_name!r} holds integers beyond int64's range; token ids and masks are "
                             "small non-negative integers") from None
    # Example by example, so that an error names the example.
    arrays = [_integer_array(s, field_name, index) for index, s in enumerate(sequences)]
    return np.concatenate(arrays).astype(np.int64, copy=False)


def _starts_with_a_bool(sequence: Any) -> bool:
    """Whether a sequence's first item is a boolean (read at its first item only: a per-item
    check would cost a Python loop over the batch)."""
    if isinstance(sequence, (torch.Tensor, np.ndarray)):
        return sequence.dtype in (torch.bool, np.bool_)
    return len(sequence) > 0 and isinstance(sequence[0], (bool, np.bool_))


def _all_integers(lists: list[list]) -> bool:
    """Whether every item of the lists is an integer, at C speed: a float, string or list makes
    their sum something else or raises. (np.fromiter would truncate floats and parse strings.)"""
    try:
        return isinstance(sum(map(sum, lists)), numbers.Integral)
    except TypeError:
        return False


def _integer_array(sequence: Any, field_name: str, index: int) -> np.ndarray:
    """One example's ``field_name`` as a 1-D numpy array of integers (or booleans)."""
    if isinstance(sequence, torch.Tensor):
        if sequence.numel() == 0:  # torch.tensor([]) is float32: empty, it holds no wrong value
            return np.empty(0, dtype=np.int64)
        if sequence.dtype.is_floating_point or sequence.dtype.is_complex:
            raise TypeError(_not_integers(field_name, index, sequence.dtype))
        refuse_meta(sequence, f"field {field_name!r} of example {index}")
        sequence = sequence.detach().cpu().numpy()
    try:
        array = np.asarray(sequence)
    except ValueError:  # ragged nesting
        raise ValueError(_shape_problem(field_name, index, "holds nested sequences")) from None
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(_shape_problem(field_name, index, f"has shape {array.shape}"))
    if array.dtype.kind not in "biu":
        raise TypeError(_not_integers(field_name, index, array.dtype))
    return array


def _not_integers(field_name: str, index: int, dtype: Any) -> str:
    return f"field {field_name!r} of example {index} holds {dtype} values; token ids and masks must be integers"


def _stacked_extra(values: list, field_name: str, return_tensors: str = "pt") -> torch.Tensor:
    """A field the collator does not pad (e.g. a class label) as one tensor over the examples.
    Python floats become torch's default dtype (float32) for "pt", as transformers' collators
    give them, rather than numpy's float64, which would carry into the loss."""
    keep_or_remove = ("; the collator keeps other fields only as numbers or equal-shape arrays that "
                      "stack into one tensor, so remove it (e.g. dataset.remove_columns) before collating")
    if all(isinstance(value, torch.Tensor) for value in values):  # bfloat16 has no numpy dtype
        return _stacked_tensors(values, field_name, keep_or_remove)
    try:
        array = np.asarray(values)
    except ValueError:
        raise ValueError(f"field {field_name!r} has a different shape in some examples{keep_or_remove}") from None
    if array.dtype.kind not in "biuf":
        index = next((i for i, value in enumerate(values) if np.asarray(value).dtype.kind not in "biuf"), 0)
        raise TypeError(f"field {field_name!r} of example {index} holds {type(values[index]).__name__} values"
                        f"{keep_or_remove}")
    tensor = torch.as_tensor(array)
    if return_tensors == "pt" and array.dtype == np.float64 \
            and not any(isinstance(value, (np.ndarray, np.generic, torch.Tensor)) for value in values):
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def _stacked_tensors(values: list[torch.Tensor], field_name: str, keep_or_remove: str) -> torch.Tensor:
    """Tensors of one shape and kind stacked on the CPU, their dtype kept."""
    shapes = {tuple(value.shape) for value in values}
    if len(shapes) > 1:
        raise ValueError(f"field {field_name!r} has a different shape in some examples{keep_or_remove}")
    odd = next((i for i, value in enumerate(values) if value.is_complex()), None)
    if odd is not None:
        raise TypeError(f"field {field_name!r} of example {odd} holds {values[odd].dtype} values{keep_or_remove}")
    return torch.stack([value.detach().cpu() for value in values])
