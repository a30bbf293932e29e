"""Trainers that mask each batch in the training step and weight the loss per token.

``MaskingTrainer`` serves every masking strategy. Batches that arrive with ``labels`` (masked by
a collator in DataLoader workers) pass through, once the first has shown masked-LM labels (not a
causal-LM copy of input_ids, nor per-token tags); batches without labels are moved to the device
and masked there by ``masker`` before the masked tokens are counted for the loss normalization
of gradient accumulation. A masker that needs the model (attention-based masking) gets it. A
``loss_weights`` entry in a batch weights each masked token's loss (``losses.weighted_mlm_loss``).

The trainer computes the MLM loss itself, normalized by the masked tokens of the whole
accumulated (and, across processes, gathered) batch, with ``args.label_smoothing_factor`` applied
to each masked token. A ``compute_loss_func`` is refused: it would get the model's outputs
without the per-token weights, and normalize by a count of its own. Masked-LM classes such as
``BertForMaskedLM`` accept ``num_items_in_batch`` but return a per-batch mean, which
``transformers.Trainer`` would then take for an already-normalized sum: gradients grow with the
accumulation steps and the number of processes. Computing the loss here also lets the LM head
run on the masked positions only (``sparse_head``): a quarter of the positions at 25% masking,
which matters because the vocabulary projection is the largest matrix product of a small encoder.
accelerate puts only the model's own forward under autocast; the sparse head and a masker's
pass through the model run under the accelerator's autocast too, so bf16 and fp16 reach them.
The sparse head (and the head's parameters, below) follow the model being trained: with
``model_init`` (``hyperparameter_search``) every ``train()`` starts from a fresh model.

A model whose masked-LM head starts untrained (``load_masked_lm(init_mlm_head=True)``) can train
the head alone first: with ``head_warmup_steps`` the encoder's learning rate is 0 for that many
steps, then ramps up over the schedule's warm-up to its peak and follows the rest of the
schedule over the steps left (so it too reaches the learning rate asked for); ``head_learning_rate`` gives
the head a learning rate of its own. The encoder does not drift while the head still predicts
badly, and no parameter changes its ``requires_grad``, so DistributedDataParallel is unaffected.
Both split the optimizer's parameter groups; a scheduler passed in ``optimizers`` was built for
the groups before the split, so it is refused with them.

Training refuses to start when the masking writes token ids the model cannot embed (tokens added
to the tokenizer without ``model.resize_token_embeddings``).

An optimizer step that masked no token (short sequences, small batches) has no loss: the logged
training loss averages the steps that masked something, and evaluation the batches that did.
Evaluation masks, the masker's or a masking collator's, come from streams pinned to
``args.seed``, one per rank and DataLoader worker: every evaluation draws the same ones, and
training's draws are left as they were.

``DifferenceMaskingTrainer`` is the same with a ``DifferenceMasker``: DataLoader workers only pad
(``DataCollatorWithPadding``), the GPU masks. Evaluation batches without labels are masked the
same way, from a stream pinned to ``args.seed`` (the same masks at every evaluation, and the
training stream left where it was), so ``evaluate()`` reports the masked-LM loss; pass
``mask_eval=False`` to evaluate on batches as they come (which then need labels).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainerCallback

from ._checks import whole_number
from ._io import atomic_write_json, read_json
from .advice import DiffmaskWarning
from .hf_loading import embedded_id_count
from .losses import weighted_mlm_loss
from .masker import DifferenceMasker
from .pretrain_data import PADDING_VALUES

__all__ = ["MaskingTrainer", "DifferenceMaskingTrainer", "RunRecordCallback"]


#: Evaluation masks come from seed ``args.seed + EVALUATION_SEED_OFFSET``, apart from training's.
EVALUATION_SEED_OFFSET = 7919


def _trainer_arguments_by_name(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``Trainer``'s arguments, those given by position too, by name: a ``data_collator`` given
    by position is then seen as given, not given a second time as the masker's padding."""
    bound = inspect.signature(Trainer.__init__).bind_partial(None, *args, **kwargs)  # None: self
    return {name: value for name, value in bound.arguments.items() if name != "self"}


def _tied_names(model: torch.nn.Module) -> dict[str, list[str]]:
    """For each parameter name, every name of the parameter (more than one where it is tied)."""
    names_of: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(parameter), []).append(name)
    return {name: names for names in names_of.values() for name in names}


class MaskingTrainer(Trainer):
    """``Trainer(..., masker=None, mask_eval=True)``; see the module docstring.

    ``masker``: a module called as ``masker(input_ids, attention_mask, special_tokens_mask)``
    returning ``(masked input_ids, labels)``; with ``masker.needs_model`` it is also given
    ``model=`` (the unwrapped model being trained). It is moved to the training device.
    Without a ``data_collator`` (by name or by position) the masker's tokenizer pads the batches.
    """

    def __init__(self, *args: Any, masker: torch.nn.Module | None = None, mask_eval: bool = True,
                 sparse_head: bool = True, head_warmup_steps: int = 0, head_learning_rate: float | None = None,
                 **kwargs: Any):
        head_warmup_steps = whole_number(head_warmup_steps, "head_warmup_steps", 0)
        if head_learning_rate is not None and not (head_learning_rate > 0 and math.isfinite(head_learning_rate)):
            raise ValueError(f"head_learning_rate must be positive and finite, got {head_learning_rate!r}")
        kwargs = _trainer_arguments_by_name(args, kwargs)
        if masker is not None and kwargs.get("data_collator") is None:
            tokenizer = getattr(masker, "tokenizer", None)
            if tokenizer is None:
                raise ValueError("give a data_collator that pads batches, or a masker with a tokenizer to pad with")
            kwargs["data_collator"] = _PaddingForMasking(tokenizer)
        super().__init__(**kwargs)
        if self.compute_loss_func is not None:
            raise ValueError("MaskingTrainer computes the masked-LM loss itself (weighted per token by the batch's "
                             "loss_weights, normalized over the accumulated batch), and a compute_loss_func would get "
                             "neither: leave it out (label smoothing: TrainingArguments.label_smoothing_factor), or "
                             "subclass and override compute_loss")
        if (head_warmup_steps or head_learning_rate is not None) and self.lr_scheduler is not None:
            raise ValueError("head_warmup_steps and head_learning_rate split the optimizer's parameter groups into "
                             "encoder and head, which the scheduler given in optimizers=(optimizer, scheduler) was not "
                             "built for: give optimizers=(optimizer, None) to have the trainer schedule it, or give "
                             "the head its own parameter group and schedule yourself")
        self.masker = masker.to(self.args.device) if masker is not None else None
        if hasattr(self.masker, "follow_rank"):  # the process group may have started after the masker
            self.masker.follow_rank()
        if hasattr(self.masker, "follow_run_seed"):  # a masker without a seed repeats as the run does
            self.masker.follow_run_seed(self.args.seed)
        self.mask_eval = mask_eval
        self._logits_discarded = False  # set while an evaluation keeps the loss only
        self._predicting = False  # set inside prediction_step: each batch's loss is its own mean
        self._loss_tally: _LossTally | None = None  # set while an evaluation runs
        self._unmasked_steps = _UnmaskedSteps()
        self._loss_steps = self._run_steps = None  # (steps, unmasked) of the next training loss logged, see log
        self.resumed_at_step = 0  # the step the last train() began at: > 0 when it resumed a checkpoint
        self._masked_here: list = []  # the batches get_batch_samples masked for this step
        self._labels_checked = False  # whether a batch that came with labels was checked (see mask_batch)
        # compute_loss normalizes by num_items_in_batch itself, so have the Trainer count them.
        self.model_accepts_loss_kwargs = True
        self._sparse_head = _SparseHead(self.model, self.accelerator.autocast) if sparse_head else None
        self.head_warmup_steps = head_warmup_steps
        self.head_learning_rate = head_learning_rate
        self._head_parameters = (_head_parameters(self.model) if head_warmup_steps or head_learning_rate is not None
                                 else None)
        self._head_parameters_model = self.model
        self.add_callback(_ResumedMasking(self))
        self.add_callback(_MaskingFitsModel(self))

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the head's parameters in groups of their own when the
        head trains apart from the encoder (warm-up or a learning rate of its own)."""
        optimizer = super().create_optimizer() if model is None else super().create_optimizer(model)
        if self._head_parameters is not None and not any("part" in g for g in optimizer.param_groups):
            if self._head_parameters_model is not self.model:  # model_init made a fresh model for this run
                self._head_parameters, self._head_parameters_model = _head_parameters(self.model), self.model
            _split_head_groups(optimizer, self._head_parameters, self.head_learning_rate)
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        created = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if created and self.head_warmup_steps:
            if self.head_warmup_steps >= num_training_steps:  # the encoder would never train
                raise ValueError(f"head_warmup_steps {self.head_warmup_steps} is not below the run's "
                                 f"{num_training_steps} training steps: only the head would train; give fewer "
                                 "head warm-up steps, or more steps")
            _hold_encoder_back(scheduler, self.head_warmup_steps, self.args.get_warmup_steps(num_training_steps),
                               num_training_steps)
        return scheduler

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Trainer's warning about keys missing from a loaded checkpoint, without the keys of tied
        parameters (RoBERTa's ``lm_head.decoder.weight`` is the word embeddings, which are saved
        once): they were loaded through the parameter they share, and the warning alarmed for
        nothing at the end of every run."""
        missing = getattr(load_result, "missing_keys", None)
        if missing and hasattr(load_result, "_replace"):
            tied = _tied_names(self.model)  # a key is loaded through another name of its parameter
            load_result = load_result._replace(missing_keys=[key for key in missing
                                                             if not set(tied.get(key, ())) - set(missing)])
        super()._issue_warnings_after_load(load_result)

    def mask_batch(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The batch on the training device, masked (``input_ids`` replaced, ``labels`` added),
        unless it already has labels or there is no masker."""
        if self.masker is None:
            return inputs
        labels = inputs.get("labels")
        if labels is not None:
            if getattr(labels, "shape", None) != getattr(inputs.get("input_ids"), "shape", None):
                raise ValueError(
                    f"the batch has labels of shape {tuple(getattr(labels, 'shape', ()))}, not that of its input_ids "
                    f"{tuple(getattr(inputs.get('input_ids'), 'shape', ()))}: class labels, not masked-LM labels? "
                    "Remove the label column, or let the trainer pad (no data_collator), which drops it")
            # The first batch that comes with labels tells (a labels column is in every batch), at
            # the cost of a sync; later ones are not checked, so that steps do not wait on the device.
            if not self._labels_checked:
                self._labels_checked = True
                problem = _labels_problem(inputs, *_mask_token_share(self.masker))
                if problem is not None:
                    raise ValueError(f"{problem}; remove the labels column and the masker masks the batch")
            return inputs
        inputs = self._prepare_inputs(inputs)
        special_tokens_mask = inputs.pop("special_tokens_mask", None)
        extra, precision = {}, contextlib.nullcontext()
        if getattr(self.masker, "needs_model", False):
            extra["model"] = self.accelerator.unwrap_model(self.model)
            if inputs.get("token_type_ids") is not None:  # the attention pass sees the segments the model sees
                extra["token_type_ids"] = inputs["token_type_ids"]
            # The masker runs parts of the model (its encoder), outside the forward that
            # accelerate wraps in autocast: give it the training precision too.
            precision = self.accelerator.autocast()
        with torch.no_grad(), precision:
            masked_ids, labels = self.masker(
                inputs["input_ids"], inputs.get("attention_mask"), special_tokens_mask, **extra
            )
        inputs["input_ids"] = masked_ids
        inputs["labels"] = labels
        return inputs

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Mask the batches of a gradient-accumulation cycle before the masked tokens are counted.
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._masked_here = []
        if self.masker is not None and any(batch.get("labels") is None for batch in batch_samples):
            batch_samples = self._masked_here = [self.mask_batch(batch) for batch in batch_samples]
            count = getattr(self, "_get_num_items_in_batch", None)
            num_items_in_batch = count(batch_samples, device) if count is not None else num_items_in_batch
        if num_items_in_batch is not None and self.args.n_gpu > 1:
            # DataParallel: transformers hands each replica its count ([n_gpu, 1]), without averaging
            # across devices floored to its share (7 tokens on 2 GPUs: 3 each); this loss is computed
            # once, over the gathered logits, and needs them all.
            num_items_in_batch = sum((batch["labels"] != -100).sum() for batch in batch_samples).to(device)
        self._unmasked_steps.note(num_items_in_batch)
        return batch_samples, num_items_in_batch

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not any(inputs is batch for batch in self._masked_here):  # else masked in get_batch_samples already
            inputs = self.mask_batch(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    # -- the logged training loss leaves out steps that masked nothing ---------------------------
    # Such a step's loss is 0 (no token to predict), which the Trainer would average in: the
    # training loss of a run with short sequences or small batches would look better than it is.
    def train(self, *args, **kwargs):
        self._unmasked_steps = _UnmaskedSteps()
        output = super().train(*args, **kwargs)
        return output._replace(training_loss=output.metrics.get("train_loss", output.training_loss))

    def _maybe_log_save_evaluate(self, tr_loss, *args, **kwargs):
        if self.control.should_log and self.state.global_step > self._globalstep_last_logged:
            # As the Trainer logs (every process, when it syncs anyway): the steps its mean covers.
            self._loss_steps = (self.state.global_step - self._globalstep_last_logged,
                                self._unmasked_steps.take(self._sum_over_processes))
        return super()._maybe_log_save_evaluate(tr_loss, *args, **kwargs)

    def _finalize_training(self, *args, **kwargs):
        self._unmasked_steps.take(self._sum_over_processes)  # those after the last log
        first = getattr(self, "_initial_global_step", None)
        self._run_steps = None if first is None else (self.state.global_step - first, self._unmasked_steps.total)
        return super()._finalize_training(*args, **kwargs)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        for key, attribute in (("loss", "_loss_steps"), ("train_loss", "_run_steps")):
            steps = getattr(self, attribute, None)
            if key in logs and steps is not None:
                setattr(self, attribute, None)
                logs[key] = self._mean_over_masked_steps(key, logs[key], *steps)
                if logs[key] is None:
                    del logs[key]
        super().log(logs, *args, **kwargs)

    def _mean_over_masked_steps(self, key: str, mean: float, steps: int, unmasked: int) -> float | None:
        """``mean``, the loss averaged over ``steps`` steps of every process, over the ``unmasked``
        (process, step) pairs that masked nothing left out; when none masked, a warning and None (NaN
        for the run's train_loss)."""
        pairs = steps * self.accelerator.num_processes
        if not unmasked:
            return mean
        if unmasked < pairs:
            return mean * pairs / (pairs - unmasked)
        # One message per key: shown once, however many logs have no loss.
        which, outcome = (("no step of the run", "train_loss is NaN") if key == "train_loss" else
                          ("no step since the last log", "the log leaves 'loss' out"))
        warnings.warn(f"{which} masked a token (every label was -100), so there is no training loss: {outcome}. The "
                      "sequences are too short, or the batches too small, for the share of tokens masked "
                      "(mlm_probability)", DiffmaskWarning, stacklevel=3)
        return float("nan") if key == "train_loss" else None

    def _sum_over_processes(self, counts: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(counts.to(self.args.device), reduction="sum").cpu()

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """Evaluation batches are masked from streams of their own, pinned to ``args.seed`` (one
        per rank and DataLoader worker), by the masker or by a masking ``data_collator`` alike:
        every evaluation draws the same masks (validation losses compare across steps), and the
        training stream is not advanced (a resumed run replays its masks exactly).

        A batch with nothing masked has no loss and is left out of the mean, whatever
        ``args.logging_nan_inf_filter`` says (see ``_LossTally``)."""
        tally, keep_non_finite = _LossTally(), not self.args.logging_nan_inf_filter
        self._loss_tally, self.args.logging_nan_inf_filter = tally, True  # the loop drops the NaN of unmasked batches
        try:
            with contextlib.ExitStack() as pinned_masks:
                for masking in (self.masker, self.data_collator) if self.mask_eval else ():
                    pinned = getattr(masking, "pinned_generator", None)
                    if pinned is not None:
                        seed = self.args.seed + EVALUATION_SEED_OFFSET
                        pinned_masks.enter_context(_pinned_apart(pinned, seed))
                output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                                 metric_key_prefix)
        finally:
            self._loss_tally, self.args.logging_nan_inf_filter = None, not keep_non_finite
        tally.settle(output.metrics, f"{metric_key_prefix}_loss", keep_non_finite, self._sum_over_processes)
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self.mask_eval:
            masked = self.mask_batch(inputs)
            if masked is not inputs:  # the evaluation loop gives its own batch to compute_metrics
                inputs.update(input_ids=masked["input_ids"], labels=masked["labels"])
            inputs = masked
        self._logits_discarded = prediction_loss_only  # then the sparse head may compute the loss
        self._predicting = True
        try:
            loss, *rest = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        finally:
            self._logits_discarded = self._predicting = False
        labels = inputs.get("labels")
        if loss is not None and torch.is_tensor(labels):
            nothing_masked = not bool((labels != -100).any())
            if self._loss_tally is not None:
                self._loss_tally.add(loss, nothing_masked)
            if nothing_masked:
                # No loss, which the evaluation loop leaves out of its mean (as it does transformers'
                # NaN for such a batch); a 0 would pull the validation loss down.
                loss = torch.full_like(loss, float("nan"))
        return (loss, *rest)

    def _set_signature_columns_if_needed(self):
        # Trainer drops the dataset columns its model's forward does not take (remove_unused_columns),
        # which would drop per-token loss weights before compute_loss reads them.
        # So would it drop special_tokens_mask, which tells the masker tokens never to mask.
        super()._set_signature_columns_if_needed()
        kept = ["loss_weights"] + (["special_tokens_mask"] if self.masker is not None else [])
        self._signature_columns.extend(column for column in kept if column not in self._signature_columns)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "special_tokens_mask" in inputs:  # read by the masker (a batch masked already keeps it); no model takes it
            inputs = {key: value for key, value in inputs.items() if key != "special_tokens_mask"}
        if inputs.get("labels") is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=None)
        if self._predicting:
            # Evaluation gives the masked tokens of every process's batch, for gradients DDP would
            # average; nothing averages here, so each process's batch loss is its own mean.
            num_items_in_batch = None
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        weights = inputs.pop("loss_weights", None)
        if weights is None:
            weights = torch.ones(labels.shape, device=labels.device)
        smoothing = self.args.label_smoothing_factor
        # The sparse head's logits cover the masked positions only: never returned as the outputs.
        sparse_head = self._sparse_head_for(model)
        sparse = (sparse_head is not None and (not return_outputs or self._logits_discarded)
                  and sparse_head.usable(inputs, labels))
        if sparse:
            masked = labels != -100
            logits = sparse_head(inputs, masked)
            loss = weighted_mlm_loss(logits[None], labels[masked][None], weights[masked][None], num_items_in_batch,
                                     label_smoothing=smoothing)
            outputs = {"logits": logits}
        else:
            outputs = model(**inputs)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            loss = weighted_mlm_loss(logits, labels, weights, num_items_in_batch, label_smoothing=smoothing)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's tokens; DDP averages the gradients.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss

    def _sparse_head_for(self, model: torch.nn.Module) -> _SparseHead | None:
        """The sparse head, when ``model`` is the trainer's model itself: a wrapper's forward
        (DistributedDataParallel's) must run. Built again for a model that replaced the one it was
        built for (``model_init`` makes a fresh one at every ``train()``)."""
        if self._sparse_head is None or model is not self.model:
            return None
        if self._sparse_head.model is not model:
            self._sparse_head = _SparseHead(model, self.accelerator.autocast)
        return self._sparse_head


class _LossTally:
    """What an evaluation's batches were: how many, how many had nothing masked, and the losses of
    masked batches that were not finite.

    The evaluation loop averages the batches' losses, a batch with nothing masked standing as NaN,
    and leaves NaN out only with ``logging_nan_inf_filter``: without it such a batch made the
    validation loss NaN. So the loop runs with the filter, and ``settle`` puts back what it would
    have hidden from a caller who turned it off: a loss on masked tokens that is not finite."""

    def __init__(self):
        self.batches, self.unmasked, self.non_finite, self.non_finite_sum = 0, 0, 0, 0.0

    def add(self, loss: torch.Tensor, nothing_masked: bool) -> None:
        self.batches += 1
        if nothing_masked:
            self.unmasked += 1
            return
        finite = torch.isfinite(loss.detach().float())  # kept on the device: no sync per batch
        self.non_finite = self.non_finite + (~finite).sum()
        self.non_finite_sum = self.non_finite_sum + torch.where(finite, 0.0, loss.detach().float()).sum()

    def settle(self, metrics: dict, key: str, keep_non_finite: bool,
               sum_over_processes: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Correct ``metrics[key]`` (the mean loss) once every process has counted its batches."""
        counts = torch.tensor([self.batches, self.unmasked, float(self.non_finite), float(self.non_finite_sum)],
                              dtype=torch.float32)
        batches, unmasked, non_finite, non_finite_sum = sum_over_processes(counts).tolist()
        if key not in metrics:
            return
        if keep_non_finite and non_finite:
            metrics[key] = non_finite_sum  # NaN or an infinity, as the mean of the losses with it would be
        elif batches and unmasked == batches:
            warnings.warn(f"no evaluation batch has a masked token (every label is -100), so {key} is NaN: nothing "
                          "was measured. The masking chose no token of the evaluation set: its sequences are too "
                          "short, or too few, for the share of tokens masked (mlm_probability); give more or longer "
                          "ones", DiffmaskWarning, stacklevel=4)


class _UnmaskedSteps:
    """Optimizer steps that masked no token, counted on the device (no sync per step) until the
    Trainer logs; ``total`` is the run's, summed over processes."""

    def __init__(self):
        self.window: torch.Tensor | int = 0
        self.total = 0

    def note(self, masked_tokens: torch.Tensor | int | None) -> None:
        if masked_tokens is not None:
            self.window = self.window + (masked_tokens == 0)

    def take(self, sum_over_processes: Callable[[torch.Tensor], torch.Tensor]) -> int:
        """The steps noted since the last take, summed over processes (every process must call it)."""
        window, self.window = self.window, 0
        counted = int(sum_over_processes(torch.as_tensor(window, dtype=torch.float32).reshape(1)).item())
        self.total += counted
        return counted


class _PaddingForMasking(DataCollatorWithPadding):
    """``DataCollatorWithPadding`` for batches the trainer masks: a class-label column
    (``label``, ``label_ids``, or ``labels`` that are not one per token) is dropped, since the
    padded batch would carry it as ``labels`` and the masked-LM labels are drawn in the step."""

    def __call__(self, features):
        features = [_as_example(feature) for feature in features]  # a bare sequence of ids, as the collators take
        features = [{key: value for key, value in feature.items() if not _class_label(key, value, feature)}
                    for feature in features]
        # tokenizer.pad pads neither the labels nor an MSLM example's loss weights: padded here,
        # with the values pad_examples pads them with
        masked = {name: [feature.pop(name, None) for feature in features] for name in ("labels", "loss_weights")}
        for name, column in masked.items():
            if 0 < sum(value is not None for value in column) < len(column):
                raise ValueError(f"some examples have per-token {name} and some do not: give them to all or none")
        batch = super().__call__(features)
        length, side = batch["input_ids"].shape[1], self.tokenizer.padding_side
        for name, column in masked.items():
            if column[0] is not None:
                dtype = torch.float32 if name == "loss_weights" else torch.long
                batch[name] = _padded_rows(column, length, side, PADDING_VALUES[name], dtype)
        return batch


def _as_example(feature: Any) -> Mapping:
    """A dataset item as an example: a mapping as it is, a sequence of token ids as its input_ids."""
    if isinstance(feature, Mapping):
        return feature
    if isinstance(feature, (str, bytes)):
        raise TypeError("the dataset's examples must be tokenized (dicts with 'input_ids', or sequences of token ids), "
                        "not text")
    ids = feature.tolist() if isinstance(feature, (torch.Tensor, np.ndarray)) else list(feature)
    return {"input_ids": ids}


def _pinned_apart(pinned: Callable, seed: int):
    """``pinned(seed)`` with a stream per rank and DataLoader worker where it takes
    ``per_process`` (the package's maskers and collators): each masks batches of its own, which
    one shared stream would mask at the same positions."""
    if "per_process" in inspect.signature(pinned).parameters:
        return pinned(seed, per_process=True)
    return pinned(seed)


#: Labelled tokens expected to hold the mask token that make a batch tell masked-LM labels from
#: tags: none of them holding it comes by chance at odds below e**-40.
_EXPECTED_MASK_TOKENS = 40


def _mask_token_share(masker: Any) -> tuple[int | None, float]:
    """The mask token id and the share of masked tokens the masker replaces with it (0.8 at
    80/10/10): labels a masking collator made show about that share too."""
    settings = getattr(masker, "collator", masker)
    share = float(getattr(settings, "mask_replace_prob", 0.8))
    return getattr(getattr(masker, "tokenizer", None), "mask_token_id", None), share


def _labels_problem(inputs: dict[str, Any], mask_token_id: int | None, mask_share: float) -> str | None:
    """What shows a batch's labels are not masked-LM labels, None if nothing does. Masked-LM
    labels label a share of the tokens, most of which hold the mask token; a causal-LM column
    copies input_ids, and per-token tags (NER) label most tokens, none of which holds it. A
    batch with too few labelled tokens to tell passes, and so does one labelling at most half
    of its tokens (masks drawn by a collator that never puts the mask token, say)."""
    labels, ids = inputs.get("labels"), inputs.get("input_ids")
    if not (torch.is_tensor(labels) and torch.is_tensor(ids)) or labels.numel() == 0:
        return None
    labels = labels.to(ids.device)
    attended = inputs.get("attention_mask")
    attended = ids == ids if not torch.is_tensor(attended) else attended.to(ids.device) != 0
    if bool(((labels == ids) | ~attended).all()):
        return ("the batch's labels are its input_ids at every token (a causal-LM labels column?): the model would "
                "learn to copy unmasked tokens. Masked-LM labels are -100 except at masked tokens")
    labelled = (labels != -100) & attended
    count, tokens = int(labelled.sum()), int(attended.sum())
    if mask_token_id is None or count * mask_share < _EXPECTED_MASK_TOKENS or 2 * count <= tokens:
        return None
    if not bool((labelled & (ids == mask_token_id)).any()):
        return (f"the batch's labels are not masked-LM labels: they label {count:,} of its {tokens:,} tokens and none "
                f"holds the mask token, where the masker would put it at {mask_share:.0%} of them (per-token tags of "
                "a token-classification set, e.g. NER?); the model would learn to predict tag ids")
    return None


def _padded_rows(rows: list, length: int, padding_side: str, fill, dtype: torch.dtype) -> torch.Tensor:
    """Per-token values of an already masked batch (labels, loss weights) padded with ``fill``
    on the side their input_ids are."""
    padded = torch.full((len(rows), length), fill, dtype=dtype)
    for index, row in enumerate(rows):
        row = torch.as_tensor(row, dtype=dtype)
        if padding_side == "left":
            padded[index, length - len(row):] = row
        else:
            padded[index, : len(row)] = row
    return padded


def _class_label(key: str, value: Any, feature: dict) -> bool:
    if key in ("label", "label_ids"):
        return True
    if key != "labels":
        return False
    try:
        return len(value) != len(feature["input_ids"])
    except TypeError:  # a scalar
        return True


def _head_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters outside the model's encoder (``base_model``): its task head. A decoder tied
    to the input embeddings belongs to the encoder."""
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise ValueError(f"{type(model).__name__} is not an encoder (base_model) with a head; "
                         "head_warmup_steps and head_learning_rate need one")
    encoder = {id(p) for p in base.parameters()}
    head = [p for p in model.parameters() if id(p) not in encoder]
    if not head:
        raise ValueError(f"{type(model).__name__} has no parameters outside its encoder to train as a head")
    return head


def _split_head_groups(optimizer: torch.optim.Optimizer, head: list[torch.nn.Parameter],
                       head_learning_rate: float | None) -> None:
    """Split each parameter group of a fresh optimizer into its encoder part and its head part
    (same options; the head's learning rate ``head_learning_rate`` when given)."""
    if optimizer.state:
        raise RuntimeError("the optimizer has already stepped; its parameter groups can no longer be split")
    head_ids = {id(p) for p in head}
    groups = list(optimizer.param_groups)
    if not any(id(p) in head_ids for group in groups for p in group["params"]):
        raise ValueError("the optimizer holds none of the head's parameters, so the head cannot train apart from "
                         "the encoder (is the model wrapped so that its parameters are replaced, e.g. FSDP without "
                         "use_orig_params?)")
    optimizer.param_groups.clear()
    for group in groups:
        options = {key: value for key, value in group.items() if key != "params"}
        for part in ("encoder", "head"):
            params = [p for p in group["params"] if (id(p) in head_ids) == (part == "head")]
            if params:
                lr = head_learning_rate if part == "head" and head_learning_rate is not None else options["lr"]
                optimizer.add_param_group({**options, "params": params, "lr": lr, "part": part})


def _hold_encoder_back(scheduler, steps: int, ramp: int, total: int) -> None:
    """Make the encoder groups' learning rate 0 for ``steps`` steps, then ramp it up linearly over
    ``ramp`` steps to the schedule's value where its own warm-up ends (its peak), and follow the
    rest of the schedule squeezed into the steps left before ``total``: the encoder reaches the
    learning rate asked for and ends where the schedule ends, where joining the schedule as it
    stood after the hold would have given it a rate decayed meanwhile (71% of the peak for 3 of
    10 steps)."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise ValueError(f"head_warmup_steps needs a LambdaLR schedule (as transformers' step-based schedules are), "
                         f"got {type(scheduler).__name__}")
    after_ramp = total - steps - ramp

    def held_back(schedule):
        def factor(step: int) -> float:  # a plain function: checkpoints store no state for it
            if step < steps:
                return 0.0
            since = step - steps
            if since < ramp:  # a warm-up reaches its peak at its last step or the one after
                return max(schedule(ramp - 1), schedule(ramp)) * (since + 1) / ramp
            if after_ramp <= 0:  # past the run's steps
                return schedule(step)
            return schedule(ramp + (since - ramp) * (total - ramp) / after_ramp)
        return factor

    for index, group in enumerate(scheduler.optimizer.param_groups):
        if group.get("part", "encoder") == "encoder":
            scheduler.lr_lambdas[index] = held_back(scheduler.lr_lambdas[index])
    for group, schedule in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = group["initial_lr"] * schedule(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


class _SparseHead:
    """The MLM head applied to the masked positions only: ``head(encoder(**inputs)[0][masked])``.

    Used when the model is an encoder (``base_model``) plus one head module that maps hidden
    states to logits position by position (BERT, RoBERTa, XLM-R...). That is checked
    once, in eval mode, against the model's own logits on the first batch; any other model (or a
    wrapped one, e.g. by DistributedDataParallel, whose forward must run) gets its full forward.

    ``autocast`` gives the training precision (the accelerator's ``autocast``): accelerate
    wraps only the model's own forward in it, and the encoder and head are called apart from it.
    """

    def __init__(self, model: torch.nn.Module, autocast: Callable[[], Any] = contextlib.nullcontext):
        self.model = model
        self.autocast = autocast
        base = getattr(model, "base_model", None)
        heads = [module for module in model.children() if module is not base]
        self.parts = (base, heads[0]) if base is not None and base is not model and len(heads) == 1 else None
        self.verified: bool | None = None if self.parts is not None else False

    def usable(self, inputs: dict, labels: torch.Tensor) -> bool:
        if self.verified is None:
            masked = labels != -100
            if not bool(masked.any()):
                return False  # nothing to compare: check on the next batch with masked tokens
            self.verified = self._matches_full_forward(inputs, masked)
        return self.verified

    def __call__(self, inputs: dict, masked: torch.Tensor) -> torch.Tensor:
        encoder, head = self.parts
        with self.autocast():
            return head(encoder(**inputs)[0][masked])

    @torch.no_grad()
    def _matches_full_forward(self, inputs: dict, masked: torch.Tensor) -> bool:
        training = self.model.training
        self.model.eval()  # no dropout, so both forwards see the same network
        try:
            with self.autocast():
                outputs = self.model(**inputs)
            expected = (outputs["logits"] if isinstance(outputs, dict) else outputs[0])[masked]
            sparse = self(inputs, masked)
            # A head that returns anything but one row of logits per masked position (XLM's
            # prediction layer returns a tuple) is not one to call apart.
            rows = int(masked.sum())
            if not (_are_logits(expected, rows) and _are_logits(sparse, rows) and sparse.shape == expected.shape):
                return False
            # Under bf16/fp16 autocast the two differ by the rounding of the logits (a few units in
            # the last place of the half-precision type); a head that is not position-wise differs
            # by far more.
            tolerance = max(1e-3, 8 * max(torch.finfo(sparse.dtype).eps, torch.finfo(expected.dtype).eps))
            return bool(torch.allclose(sparse.float(), expected.float(), rtol=tolerance, atol=tolerance))
        except (TypeError, RuntimeError, ValueError, KeyError, IndexError, AttributeError):
            return False
        finally:
            self.model.train(training)


def _are_logits(value: Any, rows: int) -> bool:
    return torch.is_tensor(value) and value.is_floating_point() and value.ndim == 2 and value.shape[0] == rows


class DifferenceMaskingTrainer(MaskingTrainer):
    """``Trainer(..., masker=DifferenceMasker(tokenizer, scores))``.

    Without a ``data_collator`` the batches are padded by ``DataCollatorWithPadding`` over the
    masker's tokenizer. Batches that already carry ``labels`` (e.g. from a masking collator)
    are left as they are. The masker is moved to the training device (``args.device``).
    """

    def __init__(self, *args: Any, masker: DifferenceMasker, mask_eval: bool = True, **kwargs: Any):
        if not isinstance(masker, DifferenceMasker):
            raise TypeError(f"masker must be a DifferenceMasker, got {type(masker).__name__}")
        super().__init__(*args, masker=masker, mask_eval=mask_eval, **kwargs)


class ResumableEarlyStopping(EarlyStoppingCallback):
    """``EarlyStoppingCallback`` whose count of evaluations without improvement carries over a
    resume, so that a resumed run stops where the uninterrupted one would. Checkpoints save the
    count, but transformers restores callbacks only with ``restore_callback_states_from_checkpoint``,
    which would bring back the saved patience too (it may change on resume)."""

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if state.global_step > 0:
            self.early_stopping_patience_counter = self.saved_count(state.stateful_callbacks)

    @classmethod
    def saved_count(cls, stateful_callbacks: dict | None) -> int:
        """The count a checkpoint's trainer state saved (``stateful_callbacks``), by this class or
        by ``EarlyStoppingCallback``; 0 where it saved none."""
        saved = stateful_callbacks or {}
        saved = saved.get(cls.__name__) or saved.get(EarlyStoppingCallback.__name__)
        saved = saved[0] if isinstance(saved, list) and saved else saved
        count = saved.get("attributes", {}).get("early_stopping_patience_counter") if isinstance(saved, dict) else None
        return count if isinstance(count, int) and not isinstance(count, bool) else 0


class CurrentIntervals(TrainerCallback):
    """Evaluate, save and log at the intervals of the resumed run's arguments: transformers takes
    a checkpoint's (its saved trainer state) and mentions it only in its log, so a raised
    ``eval_steps`` changed nothing, and patience went on counting the old evaluations."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:
            state.compute_steps(args, state.max_steps)


class _ResumedMasking(TrainerCallback):
    """Tells the masker and the masking collator the step a resumed run starts at: their seeded
    streams would otherwise start over (checkpoints do not hold them) and repeat the run's first
    draws. Fresh runs (step 0) are left alone."""

    def __init__(self, trainer: MaskingTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.trainer.resumed_at_step = state.global_step
        if state.global_step > 0:
            accumulation = args.gradient_accumulation_steps
            calls = _batches_before(state.global_step, accumulation, train_dataloader)
            for masking in (self.trainer.masker, self.trainer.data_collator):
                if hasattr(masking, "resume_at"):
                    masking.resume_at(state.global_step, accumulation, calls_made=calls)


class _MaskingFitsModel(TrainerCallback):
    """Refuses, as training starts, masking that writes token ids the model cannot embed: random
    replacements are drawn from the tokenizer's whole vocabulary, and tokens added to it without
    ``model.resize_token_embeddings`` would fail the embedding lookup only when first drawn,
    possibly thousands of steps in."""

    def __init__(self, trainer: MaskingTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # The trainer's model, not the callbacks' (that stays the first one when model_init makes another).
        embedded = embedded_id_count(self.trainer.accelerator.unwrap_model(self.trainer.model))
        if embedded is None:
            return
        collator = self.trainer.data_collator
        for masking in (self.trainer.masker, collator, getattr(collator, "masking", None)):
            largest = _largest_written_id(masking)
            if largest is not None and largest >= embedded:
                raise ValueError(
                    f"the masking writes token ids up to {largest} (the mask token, and random replacements drawn "
                    f"from the tokenizer's vocabulary), but the model embeds only {embedded} ids (0 to {embedded - 1}): "
                    "the tokenizer has tokens the model lacks. Call model.resize_token_embeddings(len(tokenizer)) "
                    "before training")


def _largest_written_id(masking: Any) -> int | None:
    """The largest token id a masker or masking collator puts into the inputs (the mask token or
    a random replacement), from its word tables or its collator's; None for anything else."""
    tables = (masking, getattr(masking, "boundaries", None), getattr(getattr(masking, "collator", None), "boundaries", None))
    written = []
    for table in tables:
        random_ids = getattr(table, "random_token_ids", None)
        if torch.is_tensor(random_ids) and random_ids.numel():
            written.append(int(random_ids.max()))
        mask_id = getattr(table, "mask_token_id", None)
        if isinstance(mask_id, int):
            written.append(mask_id)
    return max(written, default=None)


def _batches_before(step: int, accumulation: int, dataloader) -> int:
    """The batches an uninterrupted run has taken before optimizer step ``step``: every batch of
    each finished epoch (whose last step may take fewer than ``accumulation``), then
    ``accumulation`` per step."""
    try:
        batches = len(dataloader)
    except TypeError:  # no dataloader, or one without a length: steps of equal size
        return step * accumulation
    per_epoch = max(-(-batches // accumulation), 1)
    epochs, steps = divmod(step, per_epoch)
    return epochs * batches + steps * accumulation


class RunRecordCallback(TrainerCallback):
    """Saves a run's record (``fields``, a JSON object) when training starts, and again with
    ``validation_loss_before`` once the evaluation at step 0 (``eval_on_start``) has measured it,
    so an interrupted run keeps both. Only where ``write`` (the main process). A resumed run
    (``resume_from_checkpoint``) keeps the loss before training that the record holds.

    The loss before training comes from that evaluation, not from ``evaluate()`` called before
    ``train()``: accelerate would prepare the model for evaluation only, and ``train()`` would then
    never wrap it in DistributedDataParallel, so every rank would train its own copy."""

    def __init__(self, path, fields: dict, write: bool = True):
        self.path, self.fields, self.write = Path(path), dict(fields), write
        self.loss_before: float | None = None

    def _save(self) -> None:
        if self.write:  # atomic_write_json makes the folder
            atomic_write_json(self.path, {**self.fields, "validation_loss_before": self.loss_before})

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0 and self.loss_before is None:  # resumed: measured when the run began, if at all
            self.loss_before = self._recorded_loss_before()
        self._save()

    def _recorded_loss_before(self) -> float | None:
        """The validation loss before training that the run's record already holds: a resumed
        run evaluates no step 0 to measure it again."""
        if not self.path.exists():
            return None
        record = read_json(self.path, "run record")
        loss = record.get("validation_loss_before") if isinstance(record, dict) else None
        return float(loss) if loss is not None else None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.loss_before is None and state.global_step == 0 and metrics and "eval_loss" in metrics:
            loss = float(metrics["eval_loss"])
            if math.isfinite(loss):  # a NaN (nothing masked) is no measurement, and JSON cannot hold it
                self.loss_before = loss
                self._save()
