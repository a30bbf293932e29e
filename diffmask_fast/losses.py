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

import torch


def weighted_mlm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    num_items: torch.Tensor | int | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``logits`` [B, L, V], ``labels`` [B, L] (-100 = not masked), ``weights`` [B, L] (read only
    where labels != -100; must be finite and non-negative there); ``label_smoothing`` in [0, 1)."""
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [B, L, V] and labels [B, L]; got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if weights.shape != labels.shape:
        raise ValueError(f"loss_weights must have the labels' shape {tuple(labels.shape)}, got {tuple(weights.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    masked = labels != -100
    valid = torch.where(masked, torch.isfinite(weights) & (weights >= 0), True).all()
    if valid.device.type == "cpu":
        if not bool(valid):
            bad = weights[masked & ~(torch.isfinite(weights) & (weights >= 0))]
            raise ValueError(f"loss_weights must be finite and non-negative where tokens are masked; "
                             f"{bad.numel()} are not (e.g. {float(bad[0])})")
    else:  # checked on the device, without waiting for it
        torch._assert_async(valid, "loss_weights must be finite and non-negative where tokens are masked")
    token_losses = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none",
        label_smoothing=float(label_smoothing),
    ).reshape(labels.shape)
    weights = torch.where(masked, weights.to(token_losses.dtype), torch.zeros_like(token_losses))
    total = (token_losses * weights).sum()
    if num_items is None:
        num_items = masked.sum()
    if torch.is_tensor(num_items):
        num_items = num_items.to(total.device, total.dtype)
    return total / torch.clamp(torch.as_tensor(num_items, dtype=total.dtype, device=total.device), min=1.0)
