"""AttentionMasker: the attention baselines of Difference-Masking, inside the training step.

Both select tokens by how much the model's first token ([CLS] / <s>) attends to them, averaged
over the heads of one layer, computed by the model being trained on the unmasked batch:

* ``order="most"`` (AttnMask) masks the tokens it attends to most;
* ``order="least"`` (MST) masks the tokens it attends to least.

Each row masks ``mlm_probability * n`` of its ``n`` eligible tokens (not special, not padding),
rounded stochastically (up with probability equal to the fraction, as every strategy of this
package), then replaces them 80/10/10. Everything runs where the batch lives, without a host
round trip.

The first token's attention row is read as ``attention_weights`` says: for models built on
transformers' attention interface, from the chosen layer's query and key alone, the pass
stopping there; other models are switched to eager attention for the pass, which returns
every layer's [heads, L, L] weights per row, so a batch whose weights would exceed
``attention_memory`` bytes then runs through the encoder in chunks of rows. The model's
attention implementation is switched back afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from ._checks import whole_number
from .attention_weights import check_layer, first_token_row, switched_attention, without_autocast
from .hf_loading import check_vocabulary, embedded_id_count, eval_mode, longest_input, model_name
from .masking_base import (check_batch_ids, check_in_vocabulary, check_like_ids, check_probability,
                           check_replacement, check_seed, distributed_rank, pinned_seed, replace_selected,
                           resume_counts, stream_seed)
from .tokenization import WordBoundaries, naming_word_boundary, word_boundaries

__all__ = ["AttentionMasker", "ORDERS"]

#: Which end of the attention ranking is masked: "most" (AttnMask) or "least" (MST).
ORDERS = ("most", "least")


def _input_device(model: torch.nn.Module) -> torch.device | None:
    """The device of the model's input embeddings, where its ids must be; None where it does not
    say, or where the weights are held elsewhere and brought in for each pass (offloaded to
    "meta" by accelerate's hooks). A model split over devices reads its ids where its embeddings
    are, whichever device its first parameter is on."""
    try:
        weight = model.get_input_embeddings().weight
    except (AttributeError, NotImplementedError):
        return None
    return None if not isinstance(weight, torch.Tensor) or weight.device.type == "meta" else weight.device


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a (Distributed)DataParallel wrapper."""
    while isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def _encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The encoder of a masked LM (``model.base_model``: BertModel, RobertaModel...), or the
    model itself when it has none."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, torch.nn.Module) else model


def _first_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[B]: each row's first non-padding position (left padding puts it further right)."""
    if attention_mask is None:
        return torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    return (attention_mask != 0).to(torch.uint8).argmax(dim=1)


@contextlib.contextmanager
def _named_length_error(encoder: torch.nn.Module, length: int):
    """A batch longer than the model's position table fails deep in its embedding lookup
    ("index out of range in self"); say that the length is the problem, and which length the
    model takes (RoBERTa-style models take fewer than ``max_position_embeddings``)."""
    try:
        yield
    except torch.OutOfMemoryError:  # a RuntimeError too, but about the batch's size, not its length
        raise
    except (IndexError, RuntimeError) as error:
        longest = longest_input(encoder, length)
        if longest >= length:  # the model takes the length: another error
            raise
        limit = encoder.config.max_position_embeddings  # longest_input probes only a model that has one
        raise ValueError(f"the batch's rows are {length} tokens long, more than {type(encoder).__name__} takes "
                         f"(at most {longest} tokens; max_position_embeddings {limit}); tokenize with max_length "
                         f"{longest} or less ({type(error).__name__}: {error})") from error


def _calls_per_layer(config) -> int:
    """Attention calls a layer makes: ALBERT's ``inner_group_num`` (each call's weights are
    returned), else 1."""
    calls = getattr(config, "inner_group_num", 1)
    return calls if isinstance(calls, int) and calls > 1 else 1


def _layer_weights(attentions: tuple, layer: int, config) -> torch.Tensor:
    """The eager weights of ``layer``, counted in the model's layers: of a layer that attends
    several times, the last call's, whose output the next layer reads."""
    layers, calls = getattr(config, "num_hidden_layers", None), _calls_per_layer(config)
    if calls == 1 or not isinstance(layers, int) or len(attentions) != layers * calls:
        check_layer(layer, len(attentions))
        return attentions[layer]
    check_layer(layer, layers)
    return attentions[(layer % layers) * calls + calls - 1]


class AttentionMasker(torch.nn.Module):
    """Masks a padded batch by the attention of the model's first token: ``(input_ids, labels)``.

    ``order="most"`` masks the tokens the first token ([CLS] / <s>) attends to most (AttnMask),
    ``order="least"`` those it attends to least (MST); ``layer`` picks the layer whose attention
    (averaged over heads; of a layer that attends several times, as ALBERT's with
    ``inner_group_num > 1``, its last call's) ranks them, ties going to the earlier position.
    Each row masks ``mlm_probability`` of its eligible tokens (not special, not padding), rounded
    stochastically, and replaces them with the mask token (``mask_replace_prob``), a random
    token (``random_replace_prob``) or leaves them.

    ``forward(input_ids [B, L], attention_mask=None, special_tokens_mask=None, *, model)`` runs
    ``model``'s encoder on the unmasked batch without gradients and in eval mode, up to the
    chosen layer where the model uses transformers' attention interface (see
    ``attention_weights``), else whole with eager attention; its training flags and attention
    implementation are restored afterwards, also on error. On the eager path, when the weights
    of all layers would take more than ``attention_memory`` bytes (estimated from the model's
    config), the pass runs on chunks of rows that fit. The token tables are buffers, so
    ``masker.to(device)`` moves them. With a ``seed`` the draws
    come from a generator on the batch's device seeded from (seed, distributed rank) that
    advances with every call; without one, from the global torch RNG (on ranks other than 0,
    from a generator seeded from its seed and the rank).
    """

    #: The training loop must pass the model being trained (``masker(..., model=model)``).
    needs_model = True

    def __init__(
        self,
        tokenizer: Any,
        *,
        order: str = "most",
        mlm_probability: float = 0.25,
        layer: int = -1,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        seed: int | None = None,
        word_boundary: str | None = None,
        attention_memory: int = 2**30,
    ):
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; expected 'most' (AttnMask) or 'least' (MST)")
        check_probability("mlm_probability", mlm_probability)
        self.mask_replace_prob, self.random_replace_prob = check_replacement(mask_replace_prob, random_replace_prob)
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layer must be an integer (a layer index, negative from the last), got {layer!r}")
        self.attention_memory = whole_number(attention_memory, "attention_memory (bytes)")
        self.tokenizer = tokenizer
        self.order = order
        self.mlm_probability = float(mlm_probability)
        self.layer = int(layer)
        with naming_word_boundary():
            boundaries = word_boundaries(tokenizer, word_boundary)
        self.scheme = boundaries.scheme
        self.mask_token_id = boundaries.mask_token_id
        self.register_buffer("starts_word", boundaries.starts_word.clone(), persistent=False)
        self.register_buffer("never_word", boundaries.never_word.clone(), persistent=False)
        self.register_buffer("random_token_ids", boundaries.random_token_ids.clone(), persistent=False)
        self._generators: dict = {}
        self._pinned_seed: int | None = None
        self._resumed_at = 0
        self.seed = seed  # checked, and the streams start from it (see the property)

    def extra_repr(self) -> str:
        return (f"order={self.order!r}, mlm_probability={self.mlm_probability}, layer={self.layer}, "
                f"mask_replace_prob={self.mask_replace_prob}, random_replace_prob={self.random_replace_prob}, "
                f"seed={self.seed}, attention_memory={self.attention_memory}")

    @property
    def seed(self) -> int | None:
        return self._seed

    @seed.setter
    def seed(self, seed: int | None) -> None:
        """A new seed is checked as the constructor checks it, and restarts the streams from it."""
        self._seed = check_seed(seed)
        self._generators = {}

    def resume_at(self, step: int, calls_per_step: int = 1, calls_made: int | None = None) -> None:
        """Draw new streams in a run resumed at optimizer ``step`` (``MaskingTrainer`` calls
        this): a seeded stream would otherwise start over and replay the first steps' draws."""
        self._resumed_at, _, _ = resume_counts(step, calls_per_step, calls_made)
        self._generators = {}

    # -- pickling: generators are rebuilt on first use ------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_generators"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        if "seed" in state:  # pickled before the seed was a property
            state["_seed"] = state.pop("seed")
        super().__setstate__(state)

    # -- the training step -----------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        special_tokens_mask: torch.Tensor | None = None,
        *,
        model: torch.nn.Module,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input_ids, labels) of a padded [B, L] batch; labels are -100 where nothing is
        masked. ``token_type_ids``, where the batch has them, go to the attention pass as to the
        training forward (a sentence pair's segments change the attention)."""
        input_ids = check_batch_ids(input_ids, self.never_word.device)
        check_in_vocabulary(input_ids, self.never_word.shape[0], self.tokenizer, "masker")
        if attention_mask is not None:
            attention_mask = check_like_ids(input_ids, attention_mask, "attention_mask")
        if special_tokens_mask is not None:
            special_tokens_mask = check_like_ids(input_ids, special_tokens_mask, "special_tokens_mask")
        if token_type_ids is not None:
            token_type_ids = check_like_ids(input_ids, token_type_ids, "token_type_ids").long()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be the torch.nn.Module being trained, got {type(model).__name__}")

        eligible = self._eligible(input_ids, attention_mask, special_tokens_mask)
        if input_ids.numel() == 0:
            return input_ids.clone(), torch.full_like(input_ids, -100)
        scores = self._first_token_attention(model, input_ids, attention_mask, token_type_ids)
        generator = self._generator(input_ids.device)
        budget = self._budget(eligible, generator)
        selected = self._select(scores, eligible, budget)
        boundaries = WordBoundaries(
            self.scheme, self.starts_word, self.never_word, self.random_token_ids, self.mask_token_id
        )
        return replace_selected(
            input_ids, selected, boundaries, self.mask_replace_prob, self.random_replace_prob, generator
        )

    # -- steps -------------------------------------------------------------------------------------
    def _eligible(self, input_ids, attention_mask, special_tokens_mask) -> torch.Tensor:
        """Tokens that may be masked: not special, not padding. (Ids outside the vocabulary were
        refused by ``forward``; on a GPU that check is not waited for, and clamping keeps this
        look-up in bounds.)"""
        vocabulary = self.never_word.shape[0]
        eligible = ~self.never_word[input_ids.clamp(0, vocabulary - 1)]
        if attention_mask is not None:
            eligible &= attention_mask != 0
        if special_tokens_mask is not None:
            eligible &= ~special_tokens_mask.bool()
        return eligible

    def _first_token_attention(self, model, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """[B, L] float32: attention of each row's first non-padding token to every position in
        layer ``self.layer``, averaged over heads."""
        model = _unwrap(model)
        reads_on = _input_device(model)
        if reads_on is not None and reads_on != input_ids.device:
            raise ValueError(f"the model is on {reads_on} but the masker and its batch on {input_ids.device}: "
                             f"call masker.to({str(reads_on)!r}) and give it batches there")
        embedded = embedded_id_count(model)  # the tokenizer's ids fit its embeddings (else an IndexError deep
        if isinstance(embedded, int) and self.never_word.shape[0] > embedded:  # in the pass); cheap at every call
            check_vocabulary(self.tokenizer, model, model_name(model))
        encoder = _encoder(model)
        with _named_length_error(encoder, input_ids.shape[1]):
            return self._attention_rows(model, encoder, input_ids, attention_mask, token_type_ids)

    def _attention_rows(self, model, encoder, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        batch, length = input_ids.shape
        with torch.no_grad(), eval_mode(model):
            row = first_token_row(encoder, input_ids, attention_mask, _first_positions(input_ids, attention_mask),
                                  self.layer, token_type_ids)
            if row is not None:
                return row
        rows = self._rows_per_pass(encoder, batch, length)
        with torch.no_grad(), eval_mode(model), switched_attention(encoder, "eager"):
            return torch.cat([
                self._chunk_attention(encoder, input_ids[start:start + rows],
                                      None if attention_mask is None else attention_mask[start:start + rows],
                                      None if token_type_ids is None else token_type_ids[start:start + rows])
                for start in range(0, batch, rows)
            ])

    def _rows_per_pass(self, encoder: torch.nn.Module, batch: int, length: int) -> int:
        """Rows whose attention weights (every layer's, as eager attention returns them) fit in
        ``attention_memory``; the whole batch when the config does not say how many there are."""
        config = getattr(encoder, "config", None)
        layers, heads = getattr(config, "num_hidden_layers", None), getattr(config, "num_attention_heads", None)
        if not isinstance(layers, int) or not isinstance(heads, int):
            return batch
        parameter = next((p for p in encoder.parameters() if p.is_floating_point()), None)
        element = 4 if parameter is None else parameter.element_size()  # the weights' dtype, at most
        per_row = layers * _calls_per_layer(config) * heads * length * length * element
        return max(1, min(batch, self.attention_memory // max(per_row, 1)))

    def _chunk_attention(self, encoder: torch.nn.Module, input_ids, attention_mask,
                         token_type_ids=None) -> torch.Tensor:
        """``_first_token_attention`` of rows that go through the encoder in one pass."""
        kwargs: dict = {"input_ids": input_ids, "output_attentions": True}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.long()
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if getattr(encoder, "config", None) is not None:
            kwargs["return_dict"] = True
        with without_autocast(input_ids.device):  # weights in the model's dtype, as the attention interface's
            outputs = encoder(**kwargs)
        attentions = outputs.get("attentions") if isinstance(outputs, dict) else getattr(outputs, "attentions", None)
        if not attentions or any(a is None for a in attentions):
            implementation = getattr(getattr(encoder, "config", None), "_attn_implementation", None)
            raise RuntimeError(
                f"{type(encoder).__name__} returned no attention weights (attention implementation "
                f"{implementation!r}), so AttentionMasker cannot rank tokens; load the model with "
                'attn_implementation="eager" (from_pretrained(..., attn_implementation="eager") or '
                'model.set_attn_implementation("eager"))'
            )
        weights = _layer_weights(attentions, self.layer, getattr(encoder, "config", None))
        batch, length = input_ids.shape
        if weights.ndim != 4 or weights.shape[0] != batch or weights.shape[-2:] != (length, length):
            raise RuntimeError(
                f"expected attention weights of shape [batch, heads, {length}, {length}] from "
                f"{type(encoder).__name__}, got {tuple(weights.shape)}"
            )
        rows = torch.arange(batch, device=input_ids.device)
        return weights[rows, :, _first_positions(input_ids, attention_mask), :].float().mean(dim=1)

    def _budget(self, eligible: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """[B] tokens to mask per row: p * n rounded up with probability frac(p * n)."""
        expected = eligible.sum(dim=1, dtype=torch.float64) * self.mlm_probability
        floor = torch.floor(expected)
        draw = torch.rand(expected.shape, generator=generator, device=eligible.device, dtype=torch.float64)
        return (floor + (draw < expected - floor).to(torch.float64)).long()

    def _select(self, scores: torch.Tensor, eligible: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: each row's ``budget`` eligible tokens of highest (``most``) or lowest
        (``least``) score, ties to the earlier position."""
        most = self.order == "most"
        # Finite scores for eligible tokens (a NaN would otherwise sort first); the rest go last.
        scores = torch.nan_to_num(scores, nan=0.0, posinf=1.0, neginf=0.0)
        fill = float("-inf") if most else float("inf")
        keys = torch.where(eligible, scores, torch.full_like(scores, fill))
        # A stable sort keeps equal scores in position order in either direction.
        order = torch.sort(keys, dim=1, descending=most, stable=True).indices
        positions = torch.arange(keys.shape[1], device=keys.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, positions)
        return eligible & (rank < budget[:, None])

    @contextlib.contextmanager
    def pinned_generator(self, seed: int, per_process: bool = False):
        """Inside, draw from ``seed`` alone, the same in every rank (for masking a validation set
        identically everywhere); outside, the training draws go on where they were.
        ``per_process``: each rank draws a stream of its own from ``seed``, for ranks that mask
        different batches. A new ``seed`` or ``resume_at`` inside restarts the streams outside too."""
        saved = self._generators, self._pinned_seed
        streams_from = self._seed, self._resumed_at
        seed = pinned_seed(seed)
        self._generators = {}
        self._pinned_seed = stream_seed([seed, distributed_rank() + 1]) if per_process else seed
        try:
            yield self
        finally:
            restarted = (self._seed, self._resumed_at) != streams_from  # a seed or resume_at given inside
            self._generators, self._pinned_seed = ({} if restarted else saved[0]), saved[1]

    def _generator(self, device: torch.device) -> torch.Generator | None:
        """This masker's generator on ``device``, seeded from (seed, rank). Without a seed, None
        (the global torch RNG) on rank 0; ``set_seed`` makes that RNG the same on every rank, so
        the other ranks seed theirs from its seed and their rank, else all masked alike."""
        if self.seed is None and self._pinned_seed is None and distributed_rank() == 0:
            return None
        key = str(device)
        generator = self._generators.get(key)
        if generator is None:
            root = torch.initial_seed() if self.seed is None else self.seed
            seed = (self._pinned_seed if self._pinned_seed is not None
                    else stream_seed([int(root), distributed_rank() + 1], self._resumed_at))
            generator = torch.Generator(device=device).manual_seed(seed)
            self._generators[key] = generator
        return generator
