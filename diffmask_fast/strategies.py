"""Masking strategies behind one interface, chosen by name.

``build_strategy(name, tokenizer, ...)`` returns a ``MaskingStrategy``: either a ``collator``
that masks in DataLoader workers (CPU) or a ``masker`` module that masks in the training step on
the training device (``MaskingTrainer`` calls it), plus ``mask_examples`` to mask a validation set
once, so that validation losses of successive evaluations are comparable.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch

from ._checks import refuse_one_string, whole_number
from .masking_base import check_seed, refuse_columns
from .scoring import ScoreTable

#: name -> what it masks
STRATEGIES = {
    "difference": "Difference-Masking: whole words drawn in proportion to their similarity to the domain's anchors",
    "random-token": "tokens drawn independently at random (BERT)",
    "random-word": "whole words drawn uniformly at random",
    "attention": "AttnMask: the tokens the model's first token ([CLS]) attends to most",
    "mst": "MST: the tokens the model's first token ([CLS]) attends to least",
    "terms": "given terms or spans first, whole (EntityBERT / salient spans), then random words",
    "mslm": "MSLM: domain terms and other words masked at separate rates, domain terms weighted more in the loss",
}

#: strategies whose masks can also be drawn in the training step, on the device
DEVICE_STRATEGIES = ("difference", "random-word", "attention", "mst")
#: strategies that can only mask in the training step (they need the model)
STEP_ONLY_STRATEGIES = ("attention", "mst")
#: build_strategy's settings that only some strategies read, and those strategies.
STRATEGY_SETTINGS = {"term_probability": ("mslm",), "term_weight": ("mslm",), "attention_layer": STEP_ONLY_STRATEGIES}
MASK_LOCATIONS = ("auto", "workers", "device")


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"unknown masking strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return name


@dataclass
class MaskingStrategy:
    """A strategy ready to train with: exactly one of ``collator`` and ``masker`` is set."""

    name: str
    collator: Any | None = None
    masker: torch.nn.Module | None = None

    @property
    def masks_on_device(self) -> bool:
        return self.masker is not None

    def mask_examples(self, examples: Sequence[dict], *, model: torch.nn.Module | None = None,
                      seed: int = 0, batch_size: int = 64) -> list[dict]:
        """Each example masked once (reproducibly for ``seed`` and ``batch_size``: one random stream
        runs through the batches, so another ``batch_size`` draws other masks): dicts with ``input_ids``,
        ``attention_mask`` and ``labels`` of the example's own length, and ``token_type_ids``
        where the examples have them. An example's own ``attention_mask`` and
        ``special_tokens_mask`` are kept: its padding is never masked. Loss weights are left
        out: a validation loss is the plain masked-LM loss, though on the tokens this strategy
        masks (its own share of domain terms, say), so it compares a run's steps, not strategies."""
        if seed is None:
            raise TypeError("mask_examples needs an integer seed: the masks are drawn from it alone, the same in every "
                            "rank and run")
        seed = check_seed(seed)
        batch_size = whole_number(batch_size, "batch_size")
        refuse_columns(examples)
        if self.collator is not None:
            return self._mask_with_collator(examples, seed, batch_size)
        return self._mask_with_masker(examples, model, seed, batch_size)

    def _mask_with_collator(self, examples, seed, batch_size) -> list[dict]:
        collator = dataclasses.replace(self.collator, seed=seed, return_tensors="pt", pad_to_multiple_of=None)
        collator.pin_generator(seed)  # the same masks in every distributed rank
        masked: list[dict] = []
        for examples_chunk in _chunks(examples, batch_size):
            chunk = [_token_fields(example) for example in examples_chunk]
            batch = collator(chunk)
            masked.extend(_unpad(batch, chunk, collator.tokenizer.padding_side))
        return masked

    def _mask_with_masker(self, examples, model, seed, batch_size) -> list[dict]:
        masker = self.masker
        tokenizer = masker.tokenizer
        extra = {"model": model} if getattr(masker, "needs_model", False) else {}
        if extra and model is None:
            raise ValueError(f"the {self.name!r} strategy needs the model to mask a validation set")
        # A masker scores only the words it was warmed with: the validation words would all get
        # the unknown score, and be drawn as in random-word masking.
        if hasattr(masker, "warm"):
            masker.warm(examples, batch_size=batch_size)
        # The same draws in every rank: the package's maskers pin their random stream to ``seed``;
        # any other masker gets its buffers back afterwards.
        pinned = masker.pinned_generator(seed) if hasattr(masker, "pinned_generator") else _restoring_buffers(masker)
        masked: list[dict] = []
        with pinned:
            device = next((b.device for b in masker.buffers()), torch.device("cpu"))
            for examples_chunk in _chunks(examples, batch_size):
                chunk = [_token_fields(example) for example in examples_chunk]
                batch = _pad_right(chunk, tokenizer.pad_token_id)
                special = batch.get("special_tokens_mask")
                # The attention pass sees the segments the model sees.
                segments = ({"token_type_ids": batch["token_type_ids"].to(device)}
                            if extra and "token_type_ids" in batch else {})
                with torch.no_grad():
                    masked_ids, labels = masker(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                                None if special is None else special.to(device), **extra, **segments)
                batch.update(input_ids=masked_ids.cpu(), labels=labels.cpu())
                masked.extend(_unpad(batch, chunk, "right"))
        return masked


#: The fields of an example that ``mask_examples`` reads, padded alongside input_ids.
_TOKEN_FIELDS = ("input_ids", "attention_mask", "special_tokens_mask", "token_type_ids")


def _token_fields(example) -> dict:
    """An example's token-level fields as lists (a bare sequence of ids is its input_ids)."""
    if not isinstance(example, Mapping):
        return {"input_ids": _as_list(example)}
    if "input_ids" not in example:
        raise ValueError(f"every example needs an 'input_ids' field; one has {', '.join(map(repr, example)) or 'none'}")
    fields = {name: _as_list(example[name]) for name in _TOKEN_FIELDS if name in example}
    for name, values in fields.items():
        if len(values) != len(fields["input_ids"]):
            raise ValueError(f"an example's {name!r} has {len(values)} items but its input_ids has "
                             f"{len(fields['input_ids'])}")
    return fields


def _chunks(examples: Sequence[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive lists of ``size`` examples, taken one by one: a slice of a ``datasets.Dataset``
    is a dict of columns, not a list of examples."""
    for start in range(0, len(examples), size):
        yield [examples[i] for i in range(start, min(start + size, len(examples)))]


@contextlib.contextmanager
def _restoring_buffers(module: torch.nn.Module):
    """Put ``module``'s buffers back as they were on leaving."""
    saved = {name: buffer.clone() for name, buffer in module.named_buffers()}
    try:
        yield module
    finally:
        for name, buffer in module.named_buffers():
            if name in saved and buffer.shape == saved[name].shape:
                buffer.copy_(saved[name])


def _as_list(values) -> list:
    """A sequence of ids as a list of Python numbers (tensors and arrays included)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _pad_right(chunk: list[dict], pad_id: int) -> dict:
    """The chunk's token fields padded on the right into [B, L] tensors (attention_mask made
    from the lengths where the examples have none)."""
    length = max(len(example["input_ids"]) for example in chunk)
    fills = {"input_ids": int(pad_id), "attention_mask": 0, "special_tokens_mask": 1, "token_type_ids": 0}
    names = [name for name in _TOKEN_FIELDS if any(name in example for example in chunk)]
    missing = next((name for name in names for example in chunk if name not in example), None)
    if missing is not None:  # else one example's attention_mask would be read as another's
        raise ValueError(f"field {missing!r} is in some examples of a chunk but not in all of them")
    batch = {name: torch.full((len(chunk), length), fills[name], dtype=torch.long) for name in names}
    if "attention_mask" not in batch:
        batch["attention_mask"] = torch.zeros((len(chunk), length), dtype=torch.long)
    for row, example in enumerate(chunk):
        n = len(example["input_ids"])
        for name in names:
            batch[name][row, :n] = torch.tensor(example[name], dtype=torch.long)
        if "attention_mask" not in example:
            batch["attention_mask"][row, :n] = 1
    if "special_tokens_mask" in batch:
        batch["special_tokens_mask"] = batch["special_tokens_mask"].bool()
    return batch


def _unpad(batch: dict, chunk: list[dict], padding_side: str) -> list[dict]:
    """Each example's rows of the masked batch, cut back to its own length."""
    kept = ["input_ids", "attention_mask", "labels"] + (["token_type_ids"] if "token_type_ids" in batch else [])
    width = batch["input_ids"].shape[1]
    rows = []
    for row, example in enumerate(chunk):
        n = len(example["input_ids"])
        span = slice(width - n, None) if padding_side == "left" else slice(0, n)
        rows.append({name: batch[name][row, span].tolist() for name in kept})
    return rows


def resolve_mask_location(name: str, mask_on: str) -> str:
    """'workers' or 'device' for a strategy: 'auto' masks on the device for the attention
    strategies (they need the model) and wherever a GPU is available for the others that can."""
    check_strategy(name)
    if mask_on not in MASK_LOCATIONS:
        raise ValueError(f"mask_on must be one of {', '.join(MASK_LOCATIONS)}, got {mask_on!r}")
    if name in STEP_ONLY_STRATEGIES:
        if mask_on == "workers":
            raise ValueError(f"the {name!r} strategy reads the model's attention, so it masks in the training step; "
                             "use mask_on='device' or 'auto'")
        return "device"
    if mask_on == "device" and name not in DEVICE_STRATEGIES:
        raise ValueError(f"the {name!r} strategy masks in DataLoader workers only; "
                         f"strategies that can mask on the device: {', '.join(DEVICE_STRATEGIES)}")
    if mask_on == "auto":
        on_gpu = name in DEVICE_STRATEGIES and torch.cuda.is_available()
        return "device" if on_gpu and not _missing_gpu_masking_kernel() else "workers"
    if mask_on == "device" and torch.cuda.is_available() and _missing_gpu_masking_kernel():
        raise ValueError(f"the {name!r} strategy would mask on the GPU, but the compiled extension has no CUDA "
                         "masking kernel (it was built without nvcc): mask in DataLoader workers (mask_on='workers'), "
                         "or rebuild it with CUDA (DIFFMASK_FAST_CUDA=1)")
    return mask_on


def _missing_gpu_masking_kernel() -> bool:
    """Whether the extension lacks the CUDA kernel of ``DifferenceMasker``: built where nvcc was
    missing, as with a pip-installed CUDA torch."""
    from ._extension import has_kernel, load

    load()
    return not has_kernel("difference_mask_device", "cuda")


def build_strategy(
    name: str,
    tokenizer: Any,
    *,
    mlm_probability: float = 0.25,
    seed: int | None = None,
    scores: ScoreTable | None = None,
    terms: Sequence[str] | None = None,
    mask_on: str = "auto",
    term_probability: float | None = None,
    term_weight: float | None = None,
    attention_layer: int | None = None,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    word_boundary: str | None = None,
    pad_to_multiple_of: int | None = None,
) -> MaskingStrategy:
    """The strategy ``name`` for ``tokenizer``. ``difference`` needs ``scores``; ``terms`` and
    ``mslm`` need ``terms``. ``mlm_probability`` is the share of words (tokens for
    ``random-token`` and the attention strategies) to mask; for ``mslm`` it is the rate of words
    that are not domain terms, which are masked at ``term_probability`` (default 0.5) and weighted
    ``term_weight`` (default 2.0). ``attention_layer`` (default -1, the last) is the layer whose
    attention ``attention`` and ``mst`` read. A setting the strategy does not read is refused: a
    typo in the strategy's name would otherwise train another strategy with it silently ignored."""
    given = {"term_probability": term_probability, "term_weight": term_weight, "attention_layer": attention_layer}
    unused = [setting for setting, value in given.items() if value is not None and name not in STRATEGY_SETTINGS[setting]]
    if unused and name in STRATEGIES:
        raise ValueError(f"the {name!r} strategy does not use {' or '.join(unused)}: leave "
                         f"{'them' if len(unused) > 1 else 'it'} out")
    term_probability = 0.5 if term_probability is None else term_probability
    term_weight = 2.0 if term_weight is None else term_weight
    attention_layer = -1 if attention_layer is None else attention_layer
    location = resolve_mask_location(name, mask_on)
    if location == "device" and pad_to_multiple_of is not None:
        raise ValueError(f"pad_to_multiple_of pads the batches a collator masks; the {name!r} strategy masks in the "
                         "training step, where the trainer's data_collator pads: give it one that pads so, e.g. "
                         "DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)")
    common = dict(mlm_probability=mlm_probability, mask_replace_prob=mask_replace_prob,
                  random_replace_prob=random_replace_prob, seed=seed, word_boundary=word_boundary)
    collating = dict(common, pad_to_multiple_of=pad_to_multiple_of)
    if name in ("difference", "random-word"):
        if name == "difference":
            if scores is None:
                raise ValueError("the 'difference' strategy needs a score table (scores=)")
            table = scores
        else:
            table = ScoreTable({}, unknown_score=1.0)  # every word weighs the same
        if location == "device":
            from .masker import DifferenceMasker

            return MaskingStrategy(name, masker=DifferenceMasker(tokenizer, table, **common))
        if name == "random-word":
            from .baselines import RandomWordCollator

            return MaskingStrategy(name, collator=RandomWordCollator(tokenizer, **collating))
        from .collator import DifferenceMaskingCollator

        return MaskingStrategy(name, collator=DifferenceMaskingCollator(tokenizer, table, **collating))
    if name == "random-token":
        from .baselines import RandomTokenCollator

        return MaskingStrategy(name, collator=RandomTokenCollator(tokenizer, **collating))
    if name in STEP_ONLY_STRATEGIES:
        from .attention import AttentionMasker

        order = "most" if name == "attention" else "least"
        return MaskingStrategy(name, masker=AttentionMasker(tokenizer, order=order, layer=attention_layer, **common))
    if terms is not None:
        refuse_one_string(terms, "terms", "a list of strings")
        terms = list(terms)
    if not terms:
        raise ValueError(f"the {name!r} strategy needs domain terms (terms=): a list of them, or those "
                         "diffmask_fast.terms.domain_terms(anchors, scores) takes from the anchors and a score table")
    if name == "terms":
        from .terms import TermMaskingCollator

        return MaskingStrategy(name, collator=TermMaskingCollator(tokenizer, terms, **collating))
    from .terms import MSLMCollator

    return MaskingStrategy(name, collator=MSLMCollator(tokenizer, terms, term_probability=term_probability,
                                                       term_weight=term_weight, **collating))
