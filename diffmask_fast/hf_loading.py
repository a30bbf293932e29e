"""Loading HuggingFace checkpoints quietly and with errors that say what is wrong."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide the load report ("newly initialized" head, unused MLM-head weights) and the
    weight-loading progress bar."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"cannot load a tokenizer for {model!r} (a checkpoint needs its tokenizer saved "
                         f"with it): {error}") from error
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        # A directory with a model config but no tokenizer files loads as a tokenizer whose
        # vocabulary is its special tokens alone: every word would become [UNK].
        raise ValueError(f"{model!r} has no tokenizer vocabulary (only special tokens): save the tokenizer "
                         f"with the checkpoint")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"the tokenizer of {model!r} has no padding token")
    return tokenizer
