"""DifferenceMaskingTrainer: a transformers.Trainer that masks each batch in the training step.

DataLoader workers only pad (``DataCollatorWithPadding``); the batch is moved to the device and a
``DifferenceMasker`` masks it there, before the masked tokens are counted for the loss
normalization of gradient accumulation. Evaluation batches are masked the same way (with fresh
draws, as a masking collator would), so ``evaluate()`` reports the masked-LM loss; pass
``mask_eval=False`` to evaluate on batches as they come (which then need their own labels).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DataCollatorWithPadding, Trainer

from .masker import DifferenceMasker

__all__ = ["DifferenceMaskingTrainer"]


class DifferenceMaskingTrainer(Trainer):
    """``Trainer(..., masker=DifferenceMasker(tokenizer, scores))``.

    Without a ``data_collator`` the batches are padded by ``DataCollatorWithPadding`` over the
    masker's tokenizer. Batches that already carry ``labels`` (e.g. from a masking collator)
    are left as they are. The masker is moved to the training device (``args.device``).
    """

    def __init__(self, *args: Any, masker: DifferenceMasker, mask_eval: bool = True, **kwargs: Any):
        if not isinstance(masker, DifferenceMasker):
            raise TypeError(f"masker must be a DifferenceMasker, got {type(masker).__name__}")
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = DataCollatorWithPadding(masker.tokenizer)
        super().__init__(*args, **kwargs)
        self.masker = masker.to(self.args.device)
        self.mask_eval = mask_eval

    def mask_batch(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The batch on the training device, masked (``input_ids`` replaced, ``labels`` added),
        unless it already has labels."""
        if inputs.get("labels") is not None:
            return inputs
        inputs = self._prepare_inputs(inputs)
        special_tokens_mask = inputs.pop("special_tokens_mask", None)
        with torch.no_grad():
            masked_ids, labels = self.masker(inputs["input_ids"], inputs.get("attention_mask"), special_tokens_mask)
        inputs["input_ids"] = masked_ids
        inputs["labels"] = labels
        return inputs

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Mask the batches of a gradient-accumulation cycle before the masked tokens are counted.
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not any(batch.get("labels") is None for batch in batch_samples):
            return batch_samples, num_items_in_batch
        batch_samples = [self.mask_batch(batch) for batch in batch_samples]
        count = getattr(self, "_get_num_items_in_batch", None)
        return batch_samples, count(batch_samples, device) if count is not None else num_items_in_batch

    def training_step(self, model, inputs, num_items_in_batch=None):
        return super().training_step(model, self.mask_batch(inputs), num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self.mask_eval:
            inputs = self.mask_batch(inputs)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
