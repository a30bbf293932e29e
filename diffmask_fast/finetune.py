"""Fine-tune a checkpoint on a labelled task over several seeds and report mean ± std.

The end task evaluation of continued pretraining: a checkpoint (for example a directory saved after
Difference-Masking continued pretraining, with or without its masked-LM head) gets a fresh
classification head and is fine-tuned with ``transformers.Trainer`` once per seed. After every
epoch the model is evaluated on the dev set; the epoch with the best dev macro-F1 is kept (the
earliest one on a tie), and its dev and test accuracy and macro-F1 are reported.

Data files are JSON lines, one ``{"text": ..., "label": ...}`` object per line (other fields are
ignored). Label ids follow the sorted set of training labels.

    report = finetune("runs/dm-scicite", "scicite/train.jsonl", "scicite/dev.jsonl",
                      "scicite/test.jsonl", seeds=(1, 2, 3))
    print(report.table())
    report.save("runs/dm-scicite/finetune.json")
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import gzip
import json
import math
import numbers
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ._io import (atomic_write_json, check_input_file, check_writable, file_sha256, read_json, same_file,
                  user_path)
from .advice import DiffmaskWarning
from .corpus import is_gzip
from .hf_loading import (check_max_length, check_vocabulary, load_tokenizer, model_reference, no_progress_bars,
                         quiet_transformers, readable_weights, saved_weights, usable_device, weights_of_other_sizes)
from .metrics import accuracy, macro_f1, mean_std

__all__ = ["load_labeled", "finetune", "FinetuneReport", "SeedResult", "add_finetune_command",
           "run_finetune_command"]

#: Metrics reported for each split, in table order.
METRICS = ("accuracy", "macro_f1")
_METRIC_TITLES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}

#: Seed of the random training subset taken for ``max_train_examples`` (the same for every run seed,
#: so the spread over seeds reflects training randomness only).
SUBSET_SEED = 0


# --------------------------------------------------------------------------------------------- data


def _open_text(path: Path):
    # Named as the corpus reader names them: "train.jsonl.GZ" is gzip too.
    return gzip.open(path, "rt", encoding="utf-8") if is_gzip(path) else path.open(encoding="utf-8")


def load_labeled(path: str | os.PathLike, text_field: str = "text",
                 label_field: str = "label") -> tuple[list[str], list[str | int]]:
    """Texts and labels of a JSON-lines file (plain or ``.gz``), one object per line; blank lines
    are skipped. Labels must be strings or integers, all of one kind.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError``, naming the file and the line,
    for invalid JSON, a line that is not an object, a missing field, a text that is not a string, a
    label that is not a string or an integer, and for a file with no examples."""
    path = Path(path)
    check_input_file(path, "labelled data", folder="not a JSON-lines file")
    texts: list[str] = []
    labels: list[str | int] = []
    label_kind: tuple[type, int] | None = None  # (str or int, first line with a label)
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                # A byte-order mark (as some editors write) is no part of the line, also where files
                # that each begin with one were joined: as the corpus reader reads them.
                line = line.removeprefix("\ufeff")
                if not line.strip():
                    continue
                where = f"{path}, line {number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
                except (ValueError, RecursionError) as error:  # nested too deep, or a number too long
                    raise ValueError(f"{where}: JSON that cannot be read ({error})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
                for name in (text_field, label_field):
                    if name not in record:
                        fields = ", ".join(map(repr, record)) or "none"
                        raise ValueError(f"{where}: no {name!r} field (fields: {fields})")
                text, label = record[text_field], record[label_field]
                if not isinstance(text, str):
                    raise ValueError(f"{where}: field {text_field!r} must be a string, got "
                                     f"{type(text).__name__}")
                if isinstance(label, bool) or not isinstance(label, (str, int)):
                    raise ValueError(f"{where}: field {label_field!r} must be a string or an integer, got "
                                     f"{json.dumps(label)[:60]}")
                kind = str if isinstance(label, str) else int
                if label_kind is None:
                    label_kind = (kind, number)
                elif kind is not label_kind[0]:
                    raise ValueError(f"{where}: label {label!r} is {'a string' if kind is str else 'an integer'}"
                                     f" but the label on line {label_kind[1]} is not: use one kind throughout")
                texts.append(text)
                labels.append(label)
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"{str(path)!r} is not a readable UTF-8 JSON-lines file: {error}") from error
    if not texts:
        raise ValueError(f"labelled data file {str(path)!r} has no examples")
    return texts, labels


#: Labels named in an error message, each cut to LABEL_CHARS characters: a text field given as
#: the label field would otherwise print the whole data set.
LABELS_SHOWN, LABEL_CHARS = 5, 40


def _some_labels(labels: Sequence, counts: Mapping | None = None) -> str:
    """The first LABELS_SHOWN of ``labels`` for a message, with their example counts if given."""
    def shown(label) -> str:
        text = repr(label)
        text = text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 3] + "..."
        return text if counts is None else f"{text} ({counts[label]} examples)"

    listed = ", ".join(shown(label) for label in list(labels)[:LABELS_SHOWN])
    return listed + (f" and {len(labels) - LABELS_SHOWN:,} more" if len(labels) > LABELS_SHOWN else "")


def _label_ids(labels: Sequence, label2id: dict, path: str | os.PathLike) -> list[int]:
    counts = collections.Counter(labels)
    unknown = [label for label in counts if label not in label2id]
    if unknown:
        hint = (" (every label differs: is --label-field / label_field the label?)"
                if len(counts) == len(labels) > LABELS_SHOWN else "")
        raise ValueError(f"{str(path)!r} has {len(unknown):,} labels not seen in the training data: "
                         f"{_some_labels(unknown, counts)}; {len(label2id):,} training labels: "
                         f"{_some_labels(list(label2id))}{hint}")
    return [label2id[label] for label in labels]


class _Encoded:
    """Tokenized examples as a map-style dataset of dicts (padded later by the collator)."""

    def __init__(self, tokenizer, texts: Sequence[str], label_ids: Sequence[int], max_length: int):
        from .tokenization import tokenize_texts

        encoded = tokenize_texts(tokenizer, texts, truncation=True, max_length=max_length)
        names = [name for name in encoded if name in tokenizer.model_input_names] or list(encoded)
        self.rows = [{**{name: encoded[name][i] for name in names}, "labels": label}
                     for i, label in enumerate(label_ids)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


# ------------------------------------------------------------------------------------------ report


@dataclass
class SeedResult:
    """One fine-tuning run: the dev (and test) metrics of its best dev epoch."""

    seed: int
    best_epoch: int
    dev: dict[str, float]
    test: dict[str, float] | None = None
    #: Dev metrics after each epoch: ``{"epoch", "accuracy", "macro_f1", "loss"}``.
    dev_history: list[dict[str, float]] = field(default_factory=list)
    train_loss: float | None = None
    seconds: float = 0.0


def _seed_result(fields: dict[str, Any]) -> SeedResult:
    """A ``SeedResult`` read back from JSON, which holds a NaN metric (a diverged run's loss) as None."""
    def metrics(values: dict | None) -> dict | None:
        return None if values is None else {k: math.nan if v is None else v for k, v in values.items()}

    fields = dict(fields)
    for split in ("dev", "test"):
        if split in fields:
            fields[split] = metrics(fields[split])
    if "dev_history" in fields:
        fields["dev_history"] = [metrics(epoch) for epoch in fields["dev_history"]]
    return SeedResult(**fields)


@dataclass
class FinetuneReport:
    """Per-seed results of :func:`finetune`, with their mean ± std."""

    model: str
    labels: list[str | int]
    results: list[SeedResult]
    #: Hyperparameters, data files and sizes of the run.
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [result.seed for result in self.results]

    @property
    def seeds_requested(self) -> list[int]:
        """The seeds the run was asked for (those done, when the config does not say)."""
        return list(self.config.get("seeds", self.seeds))

    @property
    def complete(self) -> bool:
        """False for a report saved while fine-tuning still had seeds to run (or was interrupted)."""
        return len(self.results) >= len(self.seeds_requested)

    @property
    def has_test(self) -> bool:
        return bool(self.results) and all(result.test is not None for result in self.results)

    def values(self, split: str, metric: str) -> list[float]:
        """``metric`` of ``split`` ("dev" or "test") for each seed, in the order the seeds ran (a
        resumed run's finished seeds first)."""
        if split not in ("dev", "test"):
            raise ValueError(f"split must be 'dev' or 'test', not {split!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
        if split == "test" and not self.has_test:
            raise ValueError("this report has no test results")
        return [getattr(result, split)[metric] for result in self.results]

    def summary(self) -> dict[str, dict[str, tuple[float, float]] | None]:
        """``{"dev": {"accuracy": (mean, std), "macro_f1": (mean, std)}, "test": {...}}`` over the
        seeds (sample std, 0 for one seed); ``"test"`` is None without a test set."""
        if not self.results:  # finetune writes none such; one made by hand
            raise ValueError("this report holds no seed results to summarize")
        splits = ("dev", "test") if self.has_test else ("dev",)
        summary: dict[str, Any] = {split: {metric: mean_std(self.values(split, metric)) for metric in METRICS}
                                   for split in splits}
        summary.setdefault("test", None)
        return summary

    def table(self, name: str | None = None, header: bool = True) -> str:
        """A markdown table of mean ± std in percent over the seeds, e.g. ``| model | 81.2 ± 0.4 |
        ...``; ``header=False`` gives the row alone, to stack rows of several models."""
        summary = self.summary()
        splits = [split for split in ("dev", "test") if summary[split] is not None]
        titles = [f"{split.capitalize()} {_METRIC_TITLES[metric]}" for split in splits for metric in METRICS]
        spread = len(self.results) > 1  # one seed has no spread to show, not a spread of 0
        cells = [f"{100 * mean:.1f} ± {100 * std:.1f}" if spread else f"{100 * mean:.1f}"
                 for split in splits for mean, std in (summary[split][metric] for metric in METRICS)]
        row = "| " + " | ".join([name if name is not None else self.model, *cells]) + " |"
        if not header:
            return row
        seeds = f"{len(self.results)} seed{'s' if len(self.results) != 1 else ''}"
        lines = [f"| Model ({seeds}) | " + " | ".join(titles) + " |",
                 "|---|" + "---:|" * len(titles), row]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        summary = {split: None if values is None else
                   {metric: {"mean": mean, "std": std} for metric, (mean, std) in values.items()}
                   for split, values in self.summary().items()}
        return {"model": self.model, "labels": list(self.labels), "config": dict(self.config),
                "seeds": [asdict(result) for result in self.results], "summary": summary,
                "complete": self.complete, "seeds_done": len(self.results),
                "seeds_requested": len(self.seeds_requested)}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FinetuneReport:
        """A report read back from ``to_dict``'s mapping; ValueError saying what is missing or
        wrong, for a mapping that is none (another tool's results, say)."""
        if not isinstance(payload, dict):
            raise ValueError(f"not a fine-tuning report: it holds a JSON {_json_kind(payload)}, not an object")
        missing = [name for name in ("model", "labels", "seeds") if name not in payload]
        if missing:
            raise ValueError(f"not a fine-tuning report: it has no {' or '.join(map(repr, missing))} field "
                             f"(it has {', '.join(map(repr, list(payload)[:8])) or 'none'})")
        if not isinstance(payload["seeds"], list) or not payload["seeds"]:
            raise ValueError("not a fine-tuning report: its 'seeds' field is no list of seed results (finetune "
                             "writes a report after its first seed)")
        results = []
        for i, result in enumerate(payload["seeds"]):
            try:
                results.append(_seed_result(result))
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                raise ValueError(f"not a fine-tuning report: seeds[{i}] is no seed result ({error})") from error
        try:
            return cls(model=payload["model"], labels=list(payload["labels"]), results=results,
                       config=dict(payload.get("config", {})))
        except (TypeError, ValueError) as error:
            raise ValueError(f"not a fine-tuning report: {error}") from error

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> FinetuneReport:
        payload = read_json(path, "fine-tuning report")
        try:
            return cls.from_dict(payload)
        except ValueError as error:  # named: -o results.json --resume may name another tool's file
            raise ValueError(f"{os.fspath(path)!r} is {error}") from None


def _json_kind(value: Any) -> str:
    """What a JSON value is, as JSON names it: "array", "string", "number", ..."""
    kinds = ((list, "array"), (str, "string"), (bool, "boolean"), ((int, float), "number"), (type(None), "null"))
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


# ---------------------------------------------------------------------------------------- training


def _load_classifier(model: str, id2label: dict[int, Any], label2id: dict[Any, int]):
    """``model`` with a classification head drawn under the current seed, also where the
    checkpoint has a head of its own (a fine-tuned model, perhaps for other labels, or for
    regression: the problem is always single-label classification here). Weights are float32
    whatever the checkpoint was saved in (see ``mlm_model.load_masked_lm``)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        with quiet_transformers(), readable_weights(model):
            classifier, loading = AutoModelForSequenceClassification.from_pretrained(
                model_reference(model), num_labels=len(id2label), id2label=id2label, label2id=label2id,
                problem_type="single_label_classification", dtype=torch.float32,
                ignore_mismatched_sizes=True, output_loading_info=True)
        # Sizes are let differ for a head of other labels; the encoder's must be the checkpoint's.
        encoder = [row for row in loading.get("mismatched_keys", ())
                   if row[0].startswith(f"{classifier.base_model_prefix}.")]
        if encoder:
            raise weights_of_other_sizes(model, encoder)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ValueError(f"cannot load {model!r} for sequence classification: {error}") from error
    fresh = set(loading.get("missing_keys", ())) | {key[0] for key in loading.get("mismatched_keys", ())}
    _redraw_loaded_head(classifier, fresh)
    return classifier


def _redraw_loaded_head(classifier, fresh: set[str]) -> None:
    """Draw again every head module (a child of the model beside its encoder) whose weights came
    from the checkpoint: seeds must start from heads of their own, and an old head may have
    ordered its labels differently. The new weights come from a model built from the config,
    with the architecture's own initialization."""
    import torch
    from transformers import AutoModelForSequenceClassification

    base = getattr(classifier, "base_model", None)
    loaded = [name for name, module in classifier.named_children()
              if module is not base and any(f"{name}.{key}" not in fresh for key, _ in module.named_parameters())]
    if not loaded:
        return
    with quiet_transformers():
        drawn = AutoModelForSequenceClassification.from_config(classifier.config, dtype=torch.float32)
    for name in loaded:
        getattr(classifier, name).load_state_dict(getattr(drawn, name).state_dict())


def _make_keep_best_callback(select_by: str = "macro_f1"):
    from transformers import TrainerCallback

    class KeepBestEpoch(TrainerCallback):
        """Records the dev metrics of every epoch and keeps a CPU copy of the weights of the epoch
        with the best dev ``select_by`` metric (the earliest on a tie)."""

        def __init__(self) -> None:
            self.history: list[dict[str, float]] = []
            self.best_state: dict | None = None
            self.best_epoch = 0
            self.best_score = -math.inf

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            if not metrics or "eval_macro_f1" not in metrics:
                return
            epoch = round(state.epoch or 0)
            self.history.append({"epoch": epoch, "accuracy": float(metrics["eval_accuracy"]),
                                 "macro_f1": float(metrics["eval_macro_f1"]),
                                 "loss": float(metrics.get("eval_loss", math.nan))})
            if metrics[f"eval_{select_by}"] > self.best_score and model is not None:
                self.best_score = metrics[f"eval_{select_by}"]
                self.best_epoch = epoch
                self.best_state = {key: value.detach().to("cpu", copy=True)
                                   for key, value in model.state_dict().items()}

    return KeepBestEpoch()


def _scores(label_ids, logits) -> dict[str, float]:
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits = np.asarray(logits)
    if not np.isfinite(logits).all():  # a diverged model: argmax would read NaN rows as the first label
        return {"accuracy": math.nan, "macro_f1": math.nan}
    predictions = logits.argmax(axis=-1)
    label_ids = np.asarray(label_ids)
    return {"accuracy": accuracy(label_ids, predictions), "macro_f1": macro_f1(label_ids, predictions)}


def _check_options(seeds, epochs, learning_rate, batch_size, max_length, weight_decay, warmup_ratio,
                   max_train_examples) -> list[int]:
    if _is_whole(seeds):
        seeds = [seeds]  # one seed
    elif not isinstance(seeds, collections.abc.Iterable) or isinstance(seeds, (str, bytes)):
        raise ValueError(f"seeds must be integers, one or a sequence of them such as (1, 2, 3), got {seeds!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("give at least one seed")
    if any(not _is_whole(s) for s in seeds):
        raise ValueError(f"seeds must be integers, got {seeds!r}")
    seeds = [int(s) for s in seeds]  # numpy's as Python's: the report's JSON holds them
    if any(not 0 <= s < 2**32 for s in seeds):
        raise ValueError(f"seeds must be in [0, 2**32), got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("max_length", max_length)):
        if not _is_whole(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (room for the special tokens), got {max_length}")
    numbers_given = (("learning_rate", learning_rate), ("weight_decay", weight_decay), ("warmup_ratio", warmup_ratio))
    for name, value in numbers_given:
        if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be a number, got {value!r}")
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be positive and finite, got {learning_rate!r}")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be non-negative and finite, got {weight_decay!r}")
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
    if max_train_examples is not None and (not _is_whole(max_train_examples) or max_train_examples < 1):
        raise ValueError(f"max_train_examples must be a positive integer, got {max_train_examples!r}")
    return seeds


def _is_whole(value) -> bool:
    """An integer, Python's or numpy's, and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_device(training_args, device: str | None, wanted) -> None:
    """The trainer picks its device itself: make sure it is ``wanted`` (``device`` parsed)."""
    if wanted is None:
        return
    actual = training_args.device
    if wanted.type != actual.type or (wanted.index is not None and wanted.index != (actual.index or 0)):
        raise ValueError(f"device {device!r} was asked for but training would run on {str(actual)!r} "
                         f"(choose a GPU with CUDA_VISIBLE_DEVICES)")


def finetune(model: str | os.PathLike, train: str | os.PathLike, dev: str | os.PathLike,
             test: str | os.PathLike | None = None, *, seeds: int | Sequence[int] = (1, 2, 3), epochs: int = 3,
             learning_rate: float = 2e-5, batch_size: int = 16, max_length: int = 128,
             weight_decay: float = 0.01, warmup_ratio: float = 0.06, max_train_examples: int | None = None,
             output_dir: str | os.PathLike | None = None, text_field: str = "text", label_field: str = "label",
             device: str | None = None, progress: bool = True,
             report_path: str | os.PathLike | None = None, resume: bool = False,
             on_seed_done: Callable[[SeedResult], None] | None = None,
             select_by: str = "macro_f1") -> FinetuneReport:
    """Fine-tune ``model`` (a name or path of a checkpoint with a tokenizer) on the JSON-lines
    ``train`` file once per seed and report dev (and test) accuracy and macro-F1 of each run's best
    dev epoch: best by ``select_by``, "macro_f1" (ACL-ARC's and SciCite's metric) or "accuracy"
    (micro-F1 of a single-label task: ChemProt's).

    Each seed seeds the classification head's initialization, the data order and dropout. Training
    uses AdamW with a linear schedule warmed up over ``warmup_ratio`` of the steps. ``max_train_examples``
    takes a random subset of the training file (the same for every seed); the label set is always
    that of the full training file. Macro-F1 averages over the classes present in the gold labels or
    the predictions of the split (see :mod:`diffmask_fast.metrics`).

    No checkpoints are written: the best epoch's weights are kept in memory. With ``output_dir``,
    each seed's best model and tokenizer are saved to ``output_dir/seed-<seed>``; without it the
    trainer works in a temporary directory that is removed. ``device``: "cpu", "cuda", ... (default:
    a GPU when there is one).

    With ``report_path``, the report is saved there (atomically) after every seed, so that an
    interrupted run keeps the seeds it finished: until the last seed is done it says
    ``"complete": false`` and how many of the requested seeds it holds. The path is checked before
    any data is read, and ``device`` and ``max_length`` (against the model's position limit)
    before any training. With ``resume``, the seeds an earlier run of the same model, data and
    settings saved at ``report_path`` are kept and only the others run; seeds it holds that
    ``seeds`` leaves out stay in the report and its summary. Without it, the report of an
    interrupted run there is refused rather than overwritten.

    ``on_seed_done`` is called with each seed's result as it finishes; by default a line saying it
    goes to stderr when ``progress`` is on.
    """
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    seeds = _check_options(seeds, epochs, learning_rate, batch_size, max_length, weight_decay, warmup_ratio,
                           max_train_examples)
    if select_by not in METRICS:
        raise ValueError(f"select_by must be one of {', '.join(METRICS)}, got {select_by!r}")
    # numpy's numbers as Python's: the report's JSON holds them.
    epochs, batch_size, max_length = int(epochs), int(batch_size), int(max_length)
    learning_rate, weight_decay, warmup_ratio = float(learning_rate), float(weight_decay), float(warmup_ratio)
    max_train_examples = None if max_train_examples is None else int(max_train_examples)
    wanted_device = usable_device(device) if device is not None else None
    if resume and report_path is None:
        raise ValueError("resuming needs the report path (-o) where the earlier run saved its seeds")
    if report_path is not None:
        report_path = check_writable(report_path, "report")
    _check_outputs_apart(model, {"train": train, "dev": dev, "test": test}, output_dir, report_path, seeds)
    if report_path is not None and not resume:
        _refuse_unfinished(report_path)
    if output_dir is not None and not (resume and report_path.is_file()):  # else that run's, checked below
        _refuse_saved_seed_models(Path(output_dir), seeds)
    model = str(model)
    train_texts, train_labels = load_labeled(train, text_field, label_field)
    dev_texts, dev_labels = load_labeled(dev, text_field, label_field)
    test_data = load_labeled(test, text_field, label_field) if test is not None else None

    _warn_of_texts_with_several_labels(train_texts, train_labels, train, text_field)
    label_names = sorted(set(train_labels))
    if len(label_names) < 2:
        raise ValueError(f"{str(train)!r} has a single label ({label_names[0]!r}): classification needs at least two")
    label2id = {label: i for i, label in enumerate(label_names)}
    id2label = dict(enumerate(label_names))
    train_ids = _label_ids(train_labels, label2id, train)
    dev_ids = _label_ids(dev_labels, label2id, dev)
    test_ids = _label_ids(test_data[1], label2id, test) if test_data is not None else None

    if max_train_examples is not None and max_train_examples < len(train_texts):
        keep = sorted(random.Random(SUBSET_SEED).sample(range(len(train_texts)), max_train_examples))
        train_texts = [train_texts[i] for i in keep]
        train_ids = [train_ids[i] for i in keep]

    tokenizer = load_tokenizer(model)
    train_set = _Encoded(tokenizer, train_texts, train_ids, max_length)
    dev_set = _Encoded(tokenizer, dev_texts, dev_ids, max_length)
    test_set = _Encoded(tokenizer, test_data[0], test_ids, max_length) if test_data is not None else None
    collator = DataCollatorWithPadding(tokenizer)

    config = {"train": str(train), "dev": str(dev), "test": None if test is None else str(test),
              "train_examples": len(train_set), "dev_examples": len(dev_set),
              "test_examples": None if test_set is None else len(test_set), "seeds": seeds, "epochs": epochs,
              "learning_rate": learning_rate, "batch_size": batch_size, "max_length": max_length,
              "weight_decay": weight_decay, "warmup_ratio": warmup_ratio,
              "max_train_examples": max_train_examples, "text_field": text_field, "label_field": label_field,
              "selection": f"best dev {_METRIC_TITLES[select_by]} epoch",
              "inputs_sha256": _input_fingerprints(model, {"train": train, "dev": dev, "test": test})}

    def compute_metrics(prediction) -> dict[str, float]:
        return _scores(prediction.label_ids, prediction.predictions)

    on_cpu = wanted_device is not None and wanted_device.type == "cpu"
    finished = _finished_seeds(report_path, model, label_names, config) if resume else {}
    if output_dir is not None and resume and report_path.is_file():
        _refuse_saved_seed_models(Path(output_dir), [seed for seed in seeds if seed not in finished], report_path)
    # Seeds saved earlier stay in the report, in its order, even when not asked for again.
    seeds = list(finished) + [seed for seed in seeds if seed not in finished]
    config["seeds"] = seeds
    results: list[SeedResult] = []
    length_checked = False
    with contextlib.ExitStack() as stack:
        if not progress:  # transformers' own bars (writing a model's shards), which disable_tqdm leaves
            stack.enter_context(no_progress_bars())
        if output_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="diffmask-finetune-")))
        else:
            work_dir = Path(output_dir)
        for seed in seeds:
            if seed in finished:
                results.append(finished[seed])
                continue
            started = time.perf_counter()
            run_dir = work_dir / f"seed-{seed}"
            training_args = TrainingArguments(
                output_dir=str(run_dir), num_train_epochs=epochs, learning_rate=learning_rate,
                per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
                # A share of the steps Trainer counts: with several devices an epoch has fewer steps
                # than batch_size makes on one, and a number of steps computed here would overshoot.
                weight_decay=weight_decay, warmup_steps=warmup_ratio, lr_scheduler_type="linear",
                eval_strategy="epoch", save_strategy="no", logging_strategy="epoch", seed=seed,
                report_to="none", disable_tqdm=not progress, use_cpu=on_cpu,
                dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available() and not on_cpu,
                remove_unused_columns=False)
            _check_device(training_args, device, wanted_device)
            set_seed(seed)  # the new classification head is initialized under the run's seed
            classifier = _load_classifier(model, id2label, label2id)
            if not length_checked:
                check_max_length(classifier, max_length, model, "max_length (--max-length)")
                check_vocabulary(tokenizer, classifier, model)
                length_checked = True
            keep_best = _make_keep_best_callback(select_by)
            trainer = Trainer(model=classifier, args=training_args, data_collator=collator,
                              train_dataset=train_set, eval_dataset=dev_set, processing_class=tokenizer,
                              compute_metrics=compute_metrics, callbacks=[keep_best])
            if not progress:
                trainer.remove_callback(PrinterCallback)
            output = trainer.train()
            if keep_best.best_state is not None:
                trainer.model.load_state_dict(keep_best.best_state)
            prediction = trainer.predict(dev_set)
            dev_scores = _scores(prediction.label_ids, prediction.predictions)
            test_scores = None
            if test_set is not None:
                prediction = trainer.predict(test_set)
                test_scores = _scores(prediction.label_ids, prediction.predictions)
            broken = [split for split, scores in (("dev", dev_scores), ("test", test_scores))
                      if scores is not None and math.isnan(scores["macro_f1"])]
            if broken:  # the dev set's NaN is every epoch's: the best epoch is chosen on it
                raise ValueError(f"seed {seed} diverged: the model's outputs "
                                 + ("hold NaN or infinity after every epoch" if "dev" in broken else
                                    "on the test set hold NaN or infinity (on the dev set they do not)")
                                 + f" (learning rate {learning_rate:g}); lower --learning-rate"
                                 + (" (the seeds finished before it are saved; --resume keeps them)"
                                    if report_path is not None and results else ""))
            result = SeedResult(seed=seed, best_epoch=keep_best.best_epoch, dev=dev_scores, test=test_scores,
                                dev_history=keep_best.history, train_loss=float(output.training_loss),
                                seconds=round(time.perf_counter() - started, 3))
            results.append(result)
            try:
                if output_dir is not None:
                    _save_model_whole(trainer, run_dir)
            finally:  # the seed's scores are kept even when its model cannot be saved
                if report_path is not None:
                    FinetuneReport(model=model, labels=label_names, results=list(results),
                                   config=config).save(report_path)
            if on_seed_done is not None:
                on_seed_done(result)
            elif progress:
                print(seed_line(result, epochs), file=sys.stderr)
            del trainer, classifier, keep_best
    report = FinetuneReport(model=model, labels=label_names, results=results, config=config)
    if report_path is not None:  # also when a resumed run found every seed done: it is complete now
        report.save(report_path)
    return report


def seed_line(result: SeedResult, epochs: int) -> str:
    """One line on a finished seed, for logs."""
    line = (f"seed {result.seed}: best epoch {result.best_epoch}/{epochs}, dev accuracy "
            f"{result.dev['accuracy']:.3f}, macro-F1 {result.dev['macro_f1']:.3f}")
    if result.test is not None:
        line += f"; test accuracy {result.test['accuracy']:.3f}, macro-F1 {result.test['macro_f1']:.3f}"
    return line


def _check_outputs_apart(model, data: Mapping[str, Any], output_dir, report_path: Path | None,
                         seeds: Sequence[int]) -> None:
    """Refuse, before any training, outputs that would replace what fine-tuning reads (a data
    file, a file of the model's folder) or each other (the report where a seed's model is saved):
    this run, or the next, would lose it."""
    if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"the output directory {str(output_dir)!r} is a file, not a directory")
    if report_path is None:
        return
    for name, path in data.items():
        if path is not None and same_file(report_path, path):
            raise ValueError(f"the report {str(report_path)!r} is the file of {INPUT_NAMES[name]}; writing it "
                             "would replace the data")
    if Path(model).is_dir() and report_path.exists() and same_file(report_path.absolute().parent, model):
        try:
            FinetuneReport.load(report_path)  # an earlier report saved beside the model may be replaced
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"the report {str(report_path)!r} is a file of the model {str(model)!r}; writing it "
                             "would replace part of the model") from None
    if output_dir is not None:
        folders = [Path(output_dir)] + [Path(output_dir) / f"seed-{seed}" for seed in seeds]
        if any(same_file(report_path, folder) for folder in folders):
            raise ValueError(f"the report {str(report_path)!r} is the output directory {str(output_dir)!r} or a "
                             "seed's folder in it, where the models are saved; write it elsewhere")


def _refuse_saved_seed_models(output_dir: Path, seeds: Sequence[int], resumed: Path | None = None) -> None:
    """Refuse to save over the seed models of an earlier run (a new run of another model or other
    data into the same folder): they would be replaced, or listed as this run's. Resuming that
    run keeps the seeds it finished and trains only the others; a resumed run (``resumed`` its
    report) is refused a model for a seed its report does not list, which another run saved."""
    for seed in seeds:
        weights = saved_weights(output_dir / f"seed-{seed}")
        if weights is None:
            continue
        if resumed is not None:
            raise ValueError(f"{str(output_dir)!r} holds a model saved for seed {seed} (seed-{seed}/{weights}), "
                             f"which the report {str(resumed)!r} of the run resumed does not list: another run "
                             "saved it (or this one, interrupted before its report was written). This run would "
                             f"replace it: choose another output_dir, or remove seed-{seed} to train it again")
        raise ValueError(f"{str(output_dir)!r} holds a model saved for seed {seed} by an earlier run "
                         f"(seed-{seed}/{weights}), which this run would replace: choose another output_dir, "
                         "remove it, or pass resume=True with that run's report to keep its seeds")


def _refuse_unfinished(report_path: Path) -> None:
    """Refuse to overwrite the report of an interrupted run (as pretrain refuses its checkpoints):
    its seeds would be lost. A finished report, or a file that is not a report, is replaced."""
    if not report_path.is_file():
        return
    try:
        earlier = FinetuneReport.load(report_path)
    except (ValueError, KeyError, TypeError):
        return
    if not earlier.complete:
        raise ValueError(f"{str(report_path)!r} holds an interrupted run ({len(earlier.results)} of "
                         f"{len(earlier.seeds_requested)} seeds done): pass resume=True to run only the "
                         "others, or remove it to start again")


#: What each fingerprint in a report's ``inputs_sha256`` covers (reports of earlier versions lack
#: the tokenizer's: it is compared where both reports hold it).
INPUT_NAMES = {"model": "the model's weight files", "tokenizer": "the model's tokenizer files", "train": "--train",
               "dev": "--dev", "test": "--test"}
#: Files of a model's folder that make its tokenizer (vocabularies, merges, SentencePiece models).
TOKENIZER_FILE_PREFIXES = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens", "spiece",
                           "sentencepiece")


def _input_fingerprints(model: str, data: Mapping[str, Any]) -> dict[str, str | None]:
    """SHA-256 of what fine-tuning reads: the data files, and the weight and tokenizer files of a
    model given as a folder (None for a hub name or a missing file). ``--resume`` compares them, so
    seeds of a checkpoint retrained or re-tokenized in place, or of edited data, are never reported
    together."""
    import hashlib

    def digest(paths: list[Path]) -> str | None:
        if not paths:
            return None
        named = "".join(f"{path.name}\0{file_sha256(path)}\n" for path in paths)
        return hashlib.sha256(named.encode("utf-8", "surrogatepass")).hexdigest()

    folder = Path(model_reference(model))  # the bundled model's name too
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    weights = [p for p in files if p.name.endswith((".safetensors", ".bin"))]
    tokenizer = [p for p in files if p.name.startswith(TOKENIZER_FILE_PREFIXES) and p not in weights]
    fingerprints = {"model": digest(weights), "tokenizer": digest(tokenizer)}
    for name, path in data.items():
        fingerprints[name] = digest([Path(path)]) if path is not None and Path(path).is_file() else None
    return fingerprints


def _finished_seeds(report_path: Path, model: str, labels: list[str], config: dict) -> dict[int, SeedResult]:
    """The results an earlier run saved at ``report_path``, by seed in the order it ran them;
    refused when that run fine-tuned another model or used other data or settings."""
    if not report_path.is_file():
        return {}
    earlier = FinetuneReport.load(report_path)
    before = earlier.config.get("inputs_sha256") or {}  # reports of earlier versions have none
    now = config["inputs_sha256"]

    def same(name: str, saved: Any, given: Any) -> bool:
        if name not in INPUT_NAMES:
            return saved == given
        return _same_input(saved, given, before.get(name), now.get(name))

    changed = [key for key in config
               if key not in ("seeds", "inputs_sha256") and not same(key, earlier.config.get(key), config[key])]
    changed += [f"the contents of {INPUT_NAMES[name]}" for name, digest in now.items()
                if before.get(name) is not None and digest is not None and before[name] != digest]
    counts = [key for key in changed if key.endswith("_examples") and key != "max_train_examples"]
    if len(counts) < len(changed):  # the numbers of examples follow from the settings named with them
        changed = [key for key in changed if key not in counts]
    if not same("model", earlier.model, model):
        changed.insert(0, "model")
    if list(earlier.labels) != list(labels):
        changed.append("labels")
    if changed:
        raise ValueError(f"cannot resume from {str(report_path)!r}: the run that saved it differs in "
                         f"{', '.join(changed)}")
    return {result.seed: result for result in earlier.results}


def _same_input(saved: Any, given: Any, saved_digest: str | None, digest: str | None) -> bool:
    """Whether a saved input path and the one given now name the same input: the same text, the
    same contents (both hashed alike), or the same file spelled another way ("model/", "./m")."""
    if saved == given or (saved_digest is not None and saved_digest == digest):
        return True
    if saved is None or given is None:
        return False
    paths = [Path(str(value)).expanduser() for value in (saved, given)]
    return all(path.exists() for path in paths) and paths[0].resolve() == paths[1].resolve()


# -------------------------------------------------------------------------------------- command line


def add_finetune_command(commands):
    """Add the ``finetune`` command to ``commands`` (the subparsers of an argparse parser)."""
    parser = commands.add_parser(
        "finetune", help="fine-tune a checkpoint on a labelled task over several seeds",
        description="Fine-tune a checkpoint (e.g. one saved after continued pretraining) with a new "
                    "classification head once per seed; after each epoch evaluate on the dev set and keep "
                    "the epoch with the best dev macro-F1 (or --select-by); print dev (and test) accuracy and "
                    "macro-F1 as mean ± std over the seeds. Data files are JSON lines with a text and a label "
                    "per line.")
    parser.add_argument("model", metavar="MODEL", help="name or path of a checkpoint saved with its tokenizer")
    parser.add_argument("--train", type=user_path, required=True, help="training data, JSON lines")
    parser.add_argument("--dev", type=user_path, required=True, help="dev data, JSON lines: selects the best epoch")
    parser.add_argument("--test", type=user_path, default=None, help="test data, JSON lines (optional)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="run seeds (default 1 2 3)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="peak learning rate (default 2e-5)")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per batch (default 16)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens kept per example (default 128)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    parser.add_argument("--warmup-ratio", type=float, default=0.06,
                        help="share of the steps the learning rate warms up over (default 0.06)")
    parser.add_argument("--max-train-examples", type=int, default=None,
                        help="train on a random subset of this many examples (same subset for every seed)")
    parser.add_argument("--select-by", choices=METRICS, default="macro_f1",
                        help="dev metric that picks each seed's best epoch: macro_f1 (default; ACL-ARC, SciCite) or "
                             "accuracy (micro-F1 of a single-label task: ChemProt)")
    parser.add_argument("--text-field", default="text",
                        help="field holding the text (default 'text'; ChemProt's relation pairs: 'text_marked')")
    parser.add_argument("--label-field", default="label", help="field holding the label (default 'label')")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    parser.add_argument("--output-dir", type=user_path, default=None,
                        help="save each seed's best model here as seed-<seed>/ (default: keep no models)")
    parser.add_argument("--output", "-o", type=user_path, default=None,
                        help="save the report as JSON here, updated after each seed")
    parser.add_argument("--resume", action="store_true",
                        help="keep the seeds an earlier run with the same model, data and settings saved in "
                             "-o's report (also seeds not given now), and run only the others")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    return parser


def run_finetune_command(args) -> FinetuneReport:
    """Run ``diffmask finetune``: fine-tune, print the results, save the report if asked."""
    report = finetune(args.model, args.train, args.dev, args.test, seeds=args.seeds, epochs=args.epochs,
                      learning_rate=args.learning_rate, batch_size=args.batch_size, max_length=args.max_length,
                      weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
                      max_train_examples=args.max_train_examples, output_dir=args.output_dir,
                      text_field=args.text_field, label_field=args.label_field, device=args.device,
                      progress=not args.no_progress, report_path=args.output, resume=args.resume,
                      on_seed_done=lambda result: print(seed_line(result, args.epochs), file=sys.stderr, flush=True),
                      select_by=args.select_by)
    config = report.config
    print(f"Fine-tuned {report.model} on {config['train_examples']:,} examples ({len(report.labels)} labels), "
          f"{config['epochs']} epoch{'s' if config['epochs'] != 1 else ''}, "
          f"seed{'s' if len(report.seeds) != 1 else ''} {' '.join(map(str, report.seeds))}; "
          f"{config['selection']} kept.\n")
    for result in report.results:
        line = (f"  seed {result.seed}: epoch {result.best_epoch}  dev acc {100 * result.dev['accuracy']:.1f}"
                f"  F1 {100 * result.dev['macro_f1']:.1f}")
        if result.test is not None:
            line += f"  test acc {100 * result.test['accuracy']:.1f}  F1 {100 * result.test['macro_f1']:.1f}"
        print(line)
    print()
    print(report.table())
    if args.output_dir is not None:
        print(_saved_models_line(Path(args.output_dir), report.seeds))
    if args.output is not None:  # saved by finetune after each seed, the last time complete
        print(f"\nSaved the report to {args.output}")
    return report


#: Share of training examples whose text other examples hold with another label, above which
#: ``finetune`` warns: the text alone cannot tell them apart.
AMBIGUOUS_SHARE = 0.05  # ChemProt's text_marked has 1%: pairs that hold two relations


def _warn_of_texts_with_several_labels(texts: Sequence[str], labels: Sequence, path, text_field: str) -> None:
    """Warn where many training texts come with several labels. A relation task has a row per
    pair of entities in a sentence: with the markers of the pair left out (ChemProt's ``text``
    field; its ``text_marked`` keeps them) a third of its rows repeat a text under another label."""
    labels_of: dict[str, set] = collections.defaultdict(set)
    for text, label in zip(texts, labels):
        labels_of[text].add(label)
    ambiguous = sum(len(labels_of[text]) > 1 for text in texts)
    if ambiguous > AMBIGUOUS_SHARE * len(texts):
        warnings.warn(f"{ambiguous:,} of the {len(texts):,} examples in {str(path)!r} ({ambiguous / len(texts):.0%}) "
                      f"share their {text_field!r} with examples of another label, which no model can tell apart "
                      "from the text: is the thing to classify marked in another field (ChemProt's 'text_marked')? "
                      "Give that field as text_field", DiffmaskWarning, stacklevel=3)


def _save_model_whole(trainer, run_dir: Path) -> None:
    """The seed's model saved under ``run_dir`` whole or not at all: written beside it and renamed
    into place. A save cut short (a full disk) left a folder with part of a weights file, which a
    resumed run, keeping the seed from its report, called the seed's saved model. Every process
    saves (sharded engines need them all); the one that writes files renames."""
    staging = run_dir.with_name(f".{run_dir.name}.saving")
    writes = trainer.args.should_save
    if writes and staging.exists():
        shutil.rmtree(staging)
    try:
        trainer.save_model(str(staging))
    except BaseException:
        if writes:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if not writes:
        return
    replaced = run_dir.with_name(f".{run_dir.name}.replaced")
    if replaced.exists():
        shutil.rmtree(replaced)
    if run_dir.exists():
        run_dir.rename(replaced)
    staging.rename(run_dir)
    shutil.rmtree(replaced, ignore_errors=True)


def _has_saved_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and saved_weights(folder) is not None


def _saved_models_line(output_dir: Path, seeds: list[int]) -> str:
    """Where the seeds' best models are; a resumed run trains (and saves) only the seeds the report
    lacked, so the others have a model here only if an earlier run saved it here."""
    saved = [seed for seed in seeds if _has_saved_model(output_dir / f"seed-{seed}")]
    missing = [seed for seed in seeds if seed not in saved]
    line = (f"\nSaved the best model of seed{'s' if len(saved) != 1 else ''} {' '.join(map(str, saved))} under "
            f"{output_dir} (seed-<seed>)" if saved else f"\nNo model saved under {output_dir}")
    if missing:
        line += (f"; seed{'s' if len(missing) != 1 else ''} {' '.join(map(str, missing))} came from the report "
                 "(--resume) with no model there")
    return line
