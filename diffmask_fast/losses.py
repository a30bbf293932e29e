"""Masked-LM loss with a weight per masked token (MSLM, arXiv 2403.18025).

loss = sum_i w_i * CE_i / n, where i runs over masked tokens (labels != -100) and n is the number
of masked tokens — of this batch, or of the whole gradient-accumulation cycle (``num_items``) as
``transformers.Trainer`` counts them. With every weight 1 it is the usual MLM loss; a domain term
with weight 2 costs twice as much to get wrong as a generic word. It is divided by the number of
masked tokens, not by the sum of their weights, so its value and its gradient grow with the mean
weight of the masked tokens (by 1.27 when 27% of them are terms of weight 2).

With ``label_smoothing`` each masked token's loss is the smoothed cross-entropy (as
``transformers.Trainer``'s ``label_smoothing_factor`` computes it), weighted the same way.
"""

from __future__ import annotations

import math
import numbers

import torch


def weighted_mlm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    num_items: torch.Tensor | int | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``logits`` [B, L, V], ``labels`` [B, L] (-100 = not masked), ``weights`` [B, L] (read only
    where labels != -100; must be finite and non-negative there); ``label_smoothing`` in [0, 1);
    ``num_items`` a count (a tensor on the GPU is not read, so as not to wait for it)."""
    for name, value in (("logits", logits), ("labels", labels), ("loss_weights", weights)):
        if not torch.is_tensor(value):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    given_count = _check_num_items(num_items)
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [B, L, V] and labels [B, L]; got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[-1] == 0:
        raise ValueError(f"logits have no vocabulary dimension: V = 0 in {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be integer token ids (-100 where not masked), got {labels.dtype}")
    labels = labels.long()  # cross_entropy takes int64 targets; collators of other libraries give int32
    if weights.shape != labels.shape:
        raise ValueError(f"loss_weights must have the labels' shape {tuple(labels.shape)}, got {tuple(weights.shape)}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    masked = labels != -100
    valid = torch.where(masked, torch.isfinite(weights) & (weights >= 0), True).all()
    vocabulary = logits.shape[-1]
    in_vocabulary = torch.where(masked, (labels >= 0) & (labels < vocabulary), True).all()
    if valid.device.type == "cpu":
        if not bool(in_vocabulary):
            bad = labels[masked & ~((labels >= 0) & (labels < vocabulary))]
            raise ValueError(f"labels must be token ids in [0, {vocabulary}) (the logits' vocabulary) or -100; "
                             f"{bad.numel()} are not (e.g. {int(bad[0])})")
        if given_count == 0 and bool(masked.any()):
            raise ValueError(f"num_items is 0 but {int(masked.sum())} tokens are masked: it counts the masked tokens "
                             "of the whole batch (over gradient accumulation, and processes)")
        if not bool(valid):
            bad = weights[masked & ~(torch.isfinite(weights) & (weights >= 0))]
            raise ValueError(f"loss_weights must be finite and non-negative where tokens are masked; "
                             f"{bad.numel()} are not (e.g. {float(bad[0])})")
    else:  # checked on the device, without waiting for it
        torch._assert_async(valid, "loss_weights must be finite and non-negative where tokens are masked")
        torch._assert_async(in_vocabulary, "labels must be token ids of the logits' vocabulary, or -100")
    token_losses = torch.nn.functional.cross_entropy(
        _at_least_float32(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none",
        label_smoothing=float(label_smoothing),
    ).reshape(labels.shape)
    weights = torch.where(masked, weights.to(token_losses.dtype), torch.zeros_like(token_losses))
    total = (token_losses * weights).sum()
    count = torch.as_tensor(masked.sum() if num_items is None else num_items, dtype=total.dtype,
                            device=total.device).reshape(())  # a count given as [1] leaves the loss a scalar
    # Nothing masked (a count of 0): the loss is 0, not 0/0. A share below 1 (the count divided
    # among parallel ranks) is divided by as it is.
    return total / torch.where(count > 0, count, torch.ones_like(count))


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in float32, where the softmax does not lose the loss; float32 and
    float64 as they are (a float64 model keeps its precision, and gradcheck can check the loss)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _check_num_items(num_items) -> float | None:
    """Refuse a count of masked tokens that is none: NaN made the loss NaN, and a negative count
    was taken as 1, silently. Returns the count, or None where there is none to read: None given,
    or a tensor on the GPU, left unread (reading it would synchronize)."""
    if torch.is_tensor(num_items) and num_items.numel() != 1:  # its shape is known without reading it
        raise ValueError(f"num_items must be one count, got a tensor of shape {tuple(num_items.shape)}")
    if num_items is None or (torch.is_tensor(num_items) and num_items.device.type != "cpu"):
        return None
    if torch.is_tensor(num_items):
        num_items = num_items.item()
    # Not necessarily whole: transformers divides the count by the tensor- and context-parallel
    # sizes, which need not divide it.
    if isinstance(num_items, bool) or not isinstance(num_items, numbers.Real) or not 0 <= num_items < math.inf:
        raise ValueError(f"num_items must be a finite non-negative count of masked tokens, got {num_items!r}")
    return float(num_items)
