"""One layer's attention of the first token, read from a transformers encoder.

The attention baselines rank tokens by how much the first token attends to them in one layer.
Eager attention returns every layer's full [heads, L, L] weights, which cost more than the
forward pass itself at L = 512 (and SDPA or flash attention return none). Models built on
transformers' attention interface (BERT, RoBERTa, ELECTRA, XLM-R and most encoders in
transformers 5) instead hand each layer's projected query and key to an attention function
chosen by name. For the pass, such a model is switched to ``FIRST_ROW``: SDPA in the layers
before the wanted one; in that layer the first token's softmax row from its query and key (O(L)
per head), after which the forward stops, as later layers are not needed. Other models are
switched to eager attention and their weights read from the outputs (``switched_attention``).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator

import torch

#: The attention implementation that records the first token's row (registered on first use).
FIRST_ROW = "diffmask_fast_first_row"


@dataclass
class _Reading:
    """What the attention function is asked for during one pass, and what it found."""

    layer: int  # the wanted layer, counted from 0
    first: torch.Tensor  # [B]: each row's first token (left padding puts it further right)
    calls: int = 0
    row: torch.Tensor | None = None


class _Found(Exception):
    """Raised in the wanted layer: the rest of the forward pass is not needed."""


_READING: contextvars.ContextVar[_Reading | None] = contextvars.ContextVar("diffmask_fast_reading", default=None)
_registered = False


def _first_row_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention interface's function for ``FIRST_ROW``: SDPA, except in the wanted layer."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    reading = _READING.get()
    if reading is not None:
        layer, reading.calls = reading.calls, reading.calls + 1
        if layer == reading.layer:
            reading.row = _first_row(query, key, attention_mask, scaling, reading.first)
            raise _Found
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                           dropout=dropout, **kwargs)


def without_autocast(device: torch.device):
    """A block computed in its tensors' own dtypes although autocast is on: autocast rounds
    attention rows to bf16/fp16, where many tokens tie, and ties go to the earlier position.
    Nothing to turn off on a device without autocast (meta)."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def _first_row(query, key, attention_mask, scaling, first) -> torch.Tensor:
    """[B, L] float32: softmax(q_first k^T * scaling + mask), averaged over the heads."""
    rows = torch.arange(query.shape[0], device=query.device)
    if key.shape[1] != query.shape[1]:  # fewer key heads than query heads (grouped-query attention)
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    with without_autocast(query.device):
        scores = torch.einsum("bhd,bhkd->bhk", query[rows, :, first, :].float(), key.float()) * scale
        if attention_mask is not None:  # [B or 1, 1 or H, L or 1, L]: boolean (attend) or additive
            mask = attention_mask.expand(query.shape[0], -1, query.shape[2], -1)[rows, :, first, :]
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        return scores.softmax(dim=-1).mean(dim=1)


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(FIRST_ROW, _first_row_attention)
        AttentionMaskInterface.register(FIRST_ROW, sdpa_mask)  # the masks SDPA takes
        _registered = True


def first_token_row(encoder: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    first: torch.Tensor, layer: int, token_type_ids: torch.Tensor | None = None) -> torch.Tensor | None:
    """[B, L] float32: the attention of each row's ``first`` token to every position in
    ``layer`` (negative from the last), averaged over heads; None when ``encoder`` does not use
    the attention interface (then read the weights with eager attention)."""
    can_switch = getattr(encoder, "_can_set_attn_implementation", None)
    config = getattr(encoder, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    if can_switch is None or not isinstance(layers, int) or not can_switch():
        return None
    if getattr(config, "inner_group_num", 1) != 1:  # ALBERT: several attention calls per layer, counted by eager
        return None
    check_layer(layer, layers)
    _register()
    reading = _Reading(layer % layers, first)
    kwargs: dict = {"input_ids": input_ids}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.long()
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    token = _READING.set(reading)
    try:
        with switched_attention(encoder, FIRST_ROW):
            encoder(**kwargs)
    except _Found:
        pass
    finally:
        _READING.reset(token)
    return reading.row  # None if the model never called the interface in that layer


def check_layer(layer: int, layers: int) -> None:
    if not -layers <= layer < layers:
        raise ValueError(f"layer {layer} is out of range for a model with {layers} attention layers")


def _attention_configs(model: torch.nn.Module) -> list:
    """The configs of ``model`` and its sub-models that name an attention implementation, each
    before its sub-configs."""
    seen: set[int] = set()
    configs: list = []

    def visit(config) -> None:
        if config is None or id(config) in seen or not hasattr(config, "_attn_implementation"):
            return
        seen.add(id(config))
        configs.append(config)
        for key in getattr(config, "sub_configs", None) or ():
            visit(getattr(config, key, None))

    for module in model.modules():
        visit(getattr(module, "config", None))
    return configs


@contextlib.contextmanager
def switched_attention(encoder: torch.nn.Module, implementation: str) -> Iterator[None]:
    """``encoder`` with the attention ``implementation`` for the duration.

    A transformers model is switched with its public ``set_attn_implementation``; afterwards
    every config is given back the implementation it had. Models already using it, and modules
    without that method, are left as they are (the caller checks what came back).
    """
    configs = _attention_configs(encoder)
    current = getattr(getattr(encoder, "config", None), "_attn_implementation", None)
    switch = getattr(encoder, "set_attn_implementation", None)
    if switch is None or not configs or current in (None, implementation):
        yield
        return
    previous = [(config, config._attn_implementation) for config in configs]
    try:
        switch(implementation)
        yield
    finally:
        # Parents first: setting a config also sets its sub-configs, which are restored after it.
        for config, before in previous:
            if config._attn_implementation != before:
                config._attn_implementation = before
