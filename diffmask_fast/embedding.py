"""BERT(w): one vector per word type, from any HuggingFace encoder, cached on disk."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ._checks import refuse_one_string, whole_number
from ._io import file_sha256
from .advice import DiffmaskWarning
from .embedding_cache import CACHE_FORMAT, EmbeddingCache, default_cache_dir
from .hf_loading import (bundled_model_path, cached_hub_file, check_max_length, check_model_reference,
                         check_vocabulary, eval_mode, model_name, model_reference, quiet_transformers,
                         readable_weights, usable_device)
from .tokenization import model_reading_text, tokenizable_text, tokenize_texts, truncating_on_the_right

#: How a word becomes a vector. ``pooled`` is the authors' choice: encode "[CLS] w [SEP]" alone
#: and take the pooled output (the [CLS] hidden state where the model has no pooler); ``cls``
#: takes the [CLS] hidden state even where a pooler exists.
POOLINGS = ("pooled", "cls", "mean", "input_embeddings")

#: Names accepted for ``WordEmbedder(dtype=...)``: the precision of the forward pass under autocast.
DTYPES = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}

#: Version of what a cached vector means; part of every cache key.
EMBEDDING_VERSION = 4
#: New words are embedded and cached in pieces of about CACHE_SECONDS of work (the first, and at
#: least, CACHE_PIECE words: seconds on a CPU): an interrupted run keeps all but the last piece,
#: and a fast GPU does not write many small cache segments.
CACHE_PIECE = 1024
CACHE_SECONDS = 30.0


#: The default embedding model's folder: the bundled all-MiniLM-L6-v2 (works offline).
default_model_path = bundled_model_path


def recommended_pooling(name_or_path: str | os.PathLike | None) -> str:
    """``pooled`` (the paper's choice) unless the checkpoint is a sentence-transformers model
    (its ``1_Pooling/config.json`` says how it pools), whose pooler head was never trained: then
    ``cls`` for [CLS] pooling (the raw [CLS] state, as it was trained), otherwise ``mean`` (for
    mean pooling, and the nearest of ours to max, weighted-mean or last-token pooling).
    all-MiniLM-L6-v2's pooled output gives every word a score of 0.75-0.98, its mean pooling
    separates "argument" (0.91) from "the" (0.12) against Python-domain anchors.
    """
    name = model_reference(name_or_path) if name_or_path is not None else default_model_path()
    config = _pooling_config(name)
    if config is not None:
        try:
            modes = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            modes = {}
        if isinstance(modes, dict) and any(key.startswith("pooling_mode_") for key in modes):
            if modes.get("pooling_mode_cls_token") and not modes.get("pooling_mode_mean_tokens"):
                return "cls"
            return "mean"
    return "pooled"


def class_token_first(tokenizer) -> bool:
    """Whether ``tokenizer`` puts its class token ([CLS], <s>) first in an encoded text, where
    ``cls`` and ``pooled`` pooling read it."""
    class_token = getattr(tokenizer, "cls_token_id", None)
    return class_token is not None and _first_token(tokenizer) == [class_token]


def _first_token(tokenizer) -> list[int]:
    """The id an encoded text starts with (in a list; empty where there is none)."""
    return tokenize_texts(tokenizer, ["a"], add_special_tokens=True)["input_ids"][0][:1]


def has_lone_surrogate(word: str) -> bool:
    """Whether ``word`` holds a lone surrogate (kept by counting from broken input): not valid
    Unicode text, which no tokenizer takes."""
    try:
        word.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _pooling_config(name_or_path: str) -> Path | None:
    """A sentence-transformers pooling config: in the model's folder, or for a hub name in the
    local HuggingFace cache (nothing is downloaded)."""
    local = Path(name_or_path) / "1_Pooling" / "config.json"
    if local.is_file():
        return local
    if Path(name_or_path).exists():
        return None
    return cached_hub_file(name_or_path, "1_Pooling/config.json")


def load_encoder(name_or_path: str | os.PathLike | None = None):
    """An encoder model and its tokenizer, from a local path or the local HuggingFace cache.

    A checkpoint saved without pooler weights (a masked-LM checkpoint such as roberta-base's, or
    what ``diffmask pretrain`` writes) loads with no pooler, not with the randomly initialized one
    ``AutoModel`` would add: ``pooled`` then takes the [CLS] hidden state, as for any model
    without a pooler, instead of scoring words through random weights drawn anew at every load.
    """
    from transformers import AutoModel, AutoTokenizer

    path = model_reference(name_or_path) if name_or_path is not None else default_model_path()
    check_model_reference(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # The report of the missing pooler is replaced by drop_untrained_pooler's.
    with quiet_transformers(), readable_weights(path):
        model, loading = AutoModel.from_pretrained(path, output_loading_info=True)
    drop_untrained_pooler(model, loading.get("missing_keys", ()), path)
    return model, tokenizer


def drop_untrained_pooler(model: torch.nn.Module, missing_keys: Iterable[str], name: str) -> bool:
    """Remove ``model.pooler`` when its weights were among the ``missing_keys`` of loading it
    (freshly random); returns whether it did."""
    missing_pooler = sorted(key for key in missing_keys if "pooler" in key.split("."))
    if not missing_pooler:
        return False
    if not isinstance(getattr(model, "pooler", None), torch.nn.Module):
        warnings.warn(f"{name!r} has no trained pooler ({', '.join(missing_pooler)} were newly initialized), and "
                      f"{type(model).__name__} keeps it elsewhere than .pooler: pooling='pooled' would read random "
                      "weights; use pooling='cls' or 'mean'", DiffmaskWarning, stacklevel=3)
        return False
    model.pooler = None
    logging.getLogger(__name__).info("%s has no trained pooler: pooled output is its [CLS] hidden state", name)
    return True


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the model's state dict (names, dtypes, shapes and bytes).

    Changes whenever any weight changes, however it was changed; about 50 ms for MiniLM's 90 MB.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        data = tensor.reshape(-1).contiguous().cpu()
        if data.numel():
            digest.update(memoryview(data.view(torch.uint8).numpy()))
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of what decides a tokenizer's ids: its full serialization when it has a
    ``tokenizers`` backend that serializes, its vocabulary and settings otherwise (with the kinds
    of its backend's parts: a part written in Python, as RoFormer's jieba pre-tokenizer is,
    cannot be serialized)."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    serialized = None
    if backend is not None and hasattr(backend, "to_str"):
        try:
            serialized = backend.to_str()
        except Exception:  # tokenizers raises Exception("Custom PreTokenizer cannot be serialized")
            parts = ("normalizer", "pre_tokenizer", "model", "post_processor", "decoder")
            digest.update(repr([(part, type(getattr(backend, part, None)).__name__) for part in parts]).encode())
    if serialized is not None:
        digest.update(_backend_digest(serialized).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode("utf-8"))
        settings = getattr(tokenizer, "init_kwargs", {})
        digest.update(repr(sorted((str(k), str(v)) for k, v in settings.items())).encode("utf-8"))
        # The files it was read from, by content: a SentencePiece model rewritten at the same path
        # with the same pieces (other scores) tokenizes otherwise.
        for name, value in sorted(settings.items()):
            if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
                digest.update(f"{name}:{file_sha256(value)}".encode())
    digest.update(repr(list(getattr(tokenizer, "all_special_tokens", []))).encode("utf-8"))
    return digest.hexdigest()


#: sha256 of a backend's serialization -> digest of its state without the transient settings.
_BACKEND_DIGESTS: dict[str, str] = {}


def _backend_digest(serialized: str) -> str:
    """Digest of a ``tokenizers`` serialization without its transient settings (truncation and
    padding are set by each call). Remembered by the serialization's own hash: rebuilding the
    sorted state takes 0.1 s for a 30k vocabulary, hashing the string a millisecond."""
    raw = hashlib.sha256(serialized.encode("utf-8", "surrogatepass")).hexdigest()
    digest = _BACKEND_DIGESTS.get(raw)
    if digest is None:
        state = json.loads(serialized)
        for transient in ("truncation", "padding"):
            state.pop(transient, None)
        digest = hashlib.sha256(json.dumps(state, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
        if len(_BACKEND_DIGESTS) >= 64:
            _BACKEND_DIGESTS.clear()
        _BACKEND_DIGESTS[raw] = digest
    return digest


def _config_identity(model) -> dict:
    config = getattr(model, "config", None)
    if config is None:
        return {}
    fields = json.loads(config.to_json_string(use_diff=False))
    return {k: v for k, v in fields.items()
            if not k.startswith("_") and k not in ("transformers_version", "torch_dtype", "dtype")}


def default_device(model: torch.nn.Module) -> torch.device:
    """Where to embed with ``model``: where it is, if on an accelerator (moving a model that
    training shares to another device would move it under the training); else CUDA if any."""
    placed = next((tensor.device for tensor in itertools.chain(model.parameters(), model.buffers())), None)
    if placed is not None and placed.type not in ("cpu", "meta"):
        return placed
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class WordEmbedder:
    """Embeds word types with a HuggingFace encoder, in length-sorted batches without gradients.

    - ``pooling``: one of ``POOLINGS``. ``pooled`` encodes "[CLS] w [SEP]" alone and takes the
      pooled output (the [CLS] hidden state without a pooler); ``cls`` takes the [CLS] hidden
      state, pooler or not (sentence-transformers CLS pooling); ``mean`` averages the word's
      sub-token hidden states; ``input_embeddings`` averages its sub-token input embeddings (no
      forward pass). Special tokens, [UNK] included, are left out of both means, and a word made
      only of characters the vocabulary lacks gets the zero vector under every pooling: its
      similarity to any anchor is 0.
    - ``max_length``: tokens per encoded word, special tokens included. A word of more sub-tokens
      (long chemical names, URLs) is embedded from its first ``max_length - 2`` pieces, and
      ``embed`` warns how many were cut; ``input_embeddings`` never truncates. ``length_setting``
      is how errors and that warning name it (a caller's own name for it: pretrain's
      ``embedding_max_length``, whose ``max_length`` is the training sequences').
    - ``dtype``: ``None``/``"float32"``, or ``"bfloat16"``/``"float16"`` to run the forward pass
      under autocast (vectors are returned in float32). On GPUs both are fast; on CPUs bf16 pays
      off where the CPU has bf16 instructions (AVX-512 BF16, AMX: about 1.7-1.9x on the benchmark machine)
      and fp16 is usually slower than fp32. ``input_embeddings`` is always computed in float32.
    - ``device``: defaults to the model's device where that is an accelerator (a model already on
      ``cuda:1`` stays there), else CUDA when available. The model is moved to ``device`` in
      place, as HuggingFace pipelines move theirs.
    - ``cache_dir``: a directory for the on-disk cache of vectors (``True``: ``default_cache_dir()``,
      ``$DIFFMASK_CACHE``, else ``$XDG_CACHE_HOME/diffmask_fast``, else ``~/.cache/diffmask_fast``;
      ``None``: no cache). Entries are keyed by ``cache_key()``, so a changed weight, tokenizer,
      pooling, max_length or dtype never reads stale vectors; words are cached verbatim, so "Enzyme" and "enzyme" are different entries.
    """

    model: torch.nn.Module
    tokenizer: object
    pooling: str = "pooled"
    batch_size: int = 256
    device: str | torch.device | None = None
    max_length: int = 64
    progress: bool = True
    dtype: str | torch.dtype | None = None
    cache_dir: str | os.PathLike | bool | None = None
    length_setting: str = field(default="max_length", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (a loaded encoder), got {type(self.model).__name__}; "
                            "load_encoder loads one with its tokenizer")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {', '.join(POOLINGS)}")
        # As ints (numpy's too: they go into the cache key's JSON); a float would fail only mid-run.
        self.batch_size = whole_number(self.batch_size, "batch_size")
        truncates = self.pooling != "input_embeddings"  # which reads no sequence
        self.max_length = whole_number(self.max_length, self.length_setting, least=3 if truncates else 1,
                                       least_why=" (two special tokens and a piece)" if truncates else "")
        if isinstance(self.dtype, str):
            if self.dtype not in DTYPES:
                raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
            self._autocast_dtype = DTYPES[self.dtype]
        elif self.dtype in (None, torch.float32):
            self._autocast_dtype = None
        elif self.dtype in (torch.float16, torch.bfloat16):
            self._autocast_dtype = self.dtype
        else:
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype}")
        if self.device is None:
            self.device = default_device(self.model)
        usable_device(self.device)
        base = getattr(self.model, "base_model", None)
        if isinstance(base, torch.nn.Module) and base is not self.model and callable(getattr(base, "forward", None)):
            self.model = base  # a model with a head (masked LM...): word vectors are its encoder's states
        # Left in its training mode: a model shared with training code; embedding runs in eval mode.
        self.model = self.model.to(self.device)
        self._refuse_other_half_precision()
        check_vocabulary(self.tokenizer, self.model, model_name(self.model))
        if self.pooling in ("cls", "pooled"):
            self._refuse_a_class_token_elsewhere()
        if self.pooling != "input_embeddings":  # refused now, not as a tensor-size error at the first long word
            check_max_length(self.model, self.max_length, model_name(self.model), self.length_setting)
        if self.cache_dir is True:
            self.cache_dir = default_cache_dir()
        elif self.cache_dir is False:
            self.cache_dir = None
        self._caches: dict[str, EmbeddingCache] = {}
        self._backend = None  # a private copy of the tokenizers backend, see _encode
        self._backend_checked: dict[bool, bool] = {}
        self._backend_fingerprint: str | None = None  # tokenizer_fingerprint of what _backend copies
        self._held: dict | None = None  # fingerprints taken inside an unchanged() block
        #: Words the last ``embed`` call cut to ``max_length`` tokens as it embedded them (words read
        #: from the cache were cut, and warned about, when they were first embedded).
        self.truncated_words = 0
        self._longest_truncated = ""  # the example the warning names
        self.unreadable_words = 0  # words read as special tokens alone ([UNK]): embedded as the zero vector
        self._unreadable_example = ""

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, pooling: str | None = None,
                        cache_dir: str | os.PathLike | bool | None = True, **options) -> "WordEmbedder":
        """Load an encoder by name or path; ``None`` means the bundled all-MiniLM-L6-v2.

        ``pooling=None`` picks ``recommended_pooling`` for the checkpoint, or ``mean`` where that
        reads a class token the tokenizer does not put first. The disk cache is on
        (``cache_dir=True``: the default directory); pass ``cache_dir=None`` to turn it off.
        """
        model, tokenizer = load_encoder(name_or_path)
        if pooling is None:
            pooling = recommended_pooling(name_or_path)
            if pooling in ("cls", "pooled") and not class_token_first(tokenizer):
                pooling = "mean"
        return cls(model, tokenizer, pooling=pooling, cache_dir=cache_dir, **options)

    @property
    def dimension(self) -> int:
        embedding_dim = int(self.model.get_input_embeddings().embedding_dim)
        if self.pooling == "input_embeddings":
            return embedding_dim
        return int(getattr(getattr(self.model, "config", None), "hidden_size", embedding_dim))

    # -- cache ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def unchanged(self) -> Iterator["WordEmbedder"]:
        """A block in which the model and tokenizer do not change: their fingerprints (a read of
        every weight, 0.08 s for MiniLM and seconds for large models) are taken once for all its
        ``embed`` calls instead of once per call. ``WordScorer.score`` embeds its chunks in one."""
        outermost = self._held is None
        if outermost:
            self._held = {}
        try:
            yield self
        finally:
            if outermost:
                self._held = None

    def _fingerprint(self, what: str) -> str:
        """The ``tokenizer`` or ``weights`` fingerprint, taken once per ``unchanged()`` block."""
        if self._held is not None and what in self._held:
            return self._held[what]
        value = tokenizer_fingerprint(self.tokenizer) if what == "tokenizer" else weights_fingerprint(self.model)
        if self._held is not None:
            self._held[what] = value
        return value

    @property
    def compute_dtype(self) -> str:
        """Precision the vectors are computed in: the autocast ``dtype`` of the forward pass, else
        that of the model's weights ("float32", or "bfloat16" for a model loaded in bf16;
        ``input_embeddings`` runs no forward pass and averages the weights as they are)."""
        weights = self.model.get_input_embeddings().weight.dtype
        if self.pooling == "input_embeddings" or self._autocast_dtype is None:
            return str(weights).replace("torch.", "")
        return str(self._autocast_dtype).replace("torch.", "")

    def cache_key(self) -> tuple[str, dict]:
        """(SHA-256 key, its fields): everything the vectors depend on, weights hashed by content."""
        fields = {
            "version": EMBEDDING_VERSION,
            "cache_format": CACHE_FORMAT,  # another format's segments go to a folder of their own
            "model_class": type(self.model).__name__,
            "config": _config_identity(self.model),
            "weights_sha256": self._fingerprint("weights"),
            "tokenizer_sha256": self._fingerprint("tokenizer"),
            "pooling": self.pooling,
            "max_length": None if self.pooling == "input_embeddings" else self.max_length,
            "dtype": None if self.compute_dtype == "float32" else self.compute_dtype,
        }
        key = hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
        return key, fields

    def _cache(self) -> EmbeddingCache | None:
        if self.cache_dir is None:
            return None
        key, fields = self.cache_key()
        cache = self._caches.get(key)
        if cache is None:
            description = {k: v for k, v in fields.items() if k != "config"}
            description["name_or_path"] = getattr(getattr(self.model, "config", None), "_name_or_path", "")
            cache = self._caches[key] = EmbeddingCache(self.cache_dir, key, self.dimension, description)
        return cache

    # -- embedding -----------------------------------------------------------------------------
    def embed(self, words: Sequence[str], *, progress=None) -> torch.Tensor:
        """A float32 [len(words), D] tensor on the CPU, one row per word, in input order.

        Each distinct word is embedded once; with a cache, only words it lacks are computed and
        then added to it. ``progress``: ``None`` follows ``self.progress``, a bool turns the bar
        on or off, and a tqdm bar is advanced instead of drawing a new one.
        """
        refuse_one_string(words, "words", "a list of words")
        words = list(words)
        if not words:
            return torch.zeros(0, self.dimension, dtype=torch.float32)  # whatever torch's default dtype
        if any(not isinstance(w, str) or not w for w in words):
            raise ValueError("words to embed must be non-empty strings")
        broken = next((w for w in words if has_lone_surrogate(w)), None)
        if broken is not None:
            raise ValueError(f"cannot embed {broken!r}: it holds a lone surrogate, which is not text a tokenizer takes")
        unique = list(dict.fromkeys(words))
        dimension = self.dimension
        result = np.empty((len(unique), dimension), dtype=np.float32)
        external = progress is not None and hasattr(progress, "update")
        bar = progress if external else tqdm(
            total=len(unique), desc="embedding words", unit="word",
            disable=not (self.progress if progress is None else bool(progress)))
        try:
            missing = np.arange(len(unique))
            self._follow_tokenizer(self._fingerprint("tokenizer"))
            cache = self._cache()
            try:
                positions, vectors = cache.lookup(unique) if cache is not None else (None, None)
            except OSError as error:  # a folder this user may not read, say: embed without it
                warnings.warn(f"could not read the embedding cache {cache.directory}: {error}; embedding without it",
                              DiffmaskWarning, stacklevel=2)
                cache = None
            if cache is not None:
                result[positions] = vectors
                bar.update(len(positions))
                found = np.zeros(len(unique), dtype=bool)
                found[positions] = True
                missing = np.nonzero(~found)[0]
            self.truncated_words, self._longest_truncated = 0, ""
            self.unreadable_words, self._unreadable_example = 0, ""
            begin, step = 0, CACHE_PIECE if cache is not None else len(missing)
            while begin < len(missing):
                piece = missing[begin : begin + step]
                started = time.perf_counter()
                new_words = [unique[i] for i in piece]
                computed = self._embed_uncached(new_words, bar)
                result[piece] = computed
                begin += len(piece)
                if cache is not None:
                    try:
                        cache.add(new_words, computed)
                    except OSError as error:
                        warnings.warn(f"could not write to the embedding cache {cache.directory}: {error}",
                                      DiffmaskWarning, stacklevel=2)
                        cache, step = None, len(missing)  # embed the rest without trying again
                        continue
                    rate = len(piece) / max(time.perf_counter() - started, 1e-9)
                    step = max(CACHE_PIECE, int(rate * CACHE_SECONDS))
            if self.truncated_words:  # one warning for the call, however many cache pieces it took
                warnings.warn(
                    f"{self.truncated_words:,} word(s) have more than {self.max_length} tokens with special tokens and "
                    f"were embedded from their first pieces (e.g. {self._longest_truncated[:60]!r}); raise "
                    f"{self.length_setting} to embed them whole", DiffmaskWarning, stacklevel=2)
            if self.unreadable_words:
                warnings.warn(
                    f"{self.unreadable_words:,} word(s) are read by the tokenizer as nothing but special tokens "
                    f"such as [UNK] (e.g. {self._unreadable_example[:60]!r}: characters its vocabulary lacks, or "
                    "for WordPiece a run of over 100 characters without punctuation): they get the zero vector, "
                    "whose similarity to any anchor is 0", DiffmaskWarning, stacklevel=2)
        finally:
            if not external:
                bar.close()
        if len(unique) != len(words):
            row = {w: i for i, w in enumerate(unique)}
            result = result[np.fromiter((row[w] for w in words), dtype=np.int64, count=len(words))]
        return torch.from_numpy(result)

    def read_as_special_tokens_only(self, words: Sequence[str]) -> list[bool]:
        """Whether the tokenizer reads each word as nothing but special tokens ([UNK]). Such a
        word has no piece of its own, and every pooling gives it the zero vector (``cls`` and
        ``pooled`` would otherwise give all such words the one state of "[CLS] [UNK] [SEP]")."""
        refuse_one_string(words, "words", "a list of words")
        words = list(words)
        if not words:
            return []
        if any(not isinstance(w, str) for w in words):
            raise TypeError("words to read must be strings")
        self._follow_tokenizer(self._fingerprint("tokenizer"))
        return self._special_only(self._encode(words, add_special_tokens=True))

    def _refuse_other_half_precision(self) -> None:
        """Autocast to float16 over bfloat16 weights (or the other way) fails in the first
        LayerNorm ("mixed dtype"): refused now, by name."""
        weights = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        runs_the_model = self.pooling != "input_embeddings"  # which reads the table alone, in float32
        half = weights in (torch.float16, torch.bfloat16)
        if runs_the_model and half and self._autocast_dtype not in (None, weights):
            name, asked = str(weights).split(".")[1], str(self._autocast_dtype).split(".")[1]
            raise ValueError(f"the model's weights are {name}: compute in float32 (load the model in float32) or "
                             f"in {name} (dtype={name!r} or None), not {asked}")

    def _special_only(self, encoded: list[list[int]]) -> list[bool]:
        """For each id list, whether every id is a special token's."""
        special = set(self.tokenizer.all_special_ids)
        return [all(token in special for token in ids) for ids in encoded]

    def _encode(self, words: list[str], add_special_tokens: bool) -> list[list[int]]:
        """Token ids of each word, untruncated. Goes straight to a private copy of the tokenizer's
        ``tokenizers`` backend when it gives the same ids as the tokenizer's own call (checked on
        the first words): twice as fast on millions of words, which the per-word conversion of
        the tokenizer's call dominates. ``embed`` copies it again whenever the tokenizer changes."""
        if self._backend is None:
            self._backend_checked = {}
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            try:
                from tokenizers import Tokenizer

                self._backend = Tokenizer.from_str(backend.to_str())
                self._backend.no_truncation()
                self._backend.no_padding()
                self._backend.encode_special_tokens = True  # words are text, as in tokenize_texts
                text_model = model_reading_text(self.tokenizer)
                if text_model is not None:
                    self._backend.model = text_model
            except Exception:  # no tokenizers backend: use the tokenizer itself
                self._backend = False
        if self._backend:
            encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
            ids = [encoding.ids for encoding in encode([tokenizable_text(word) for word in words],
                                                         add_special_tokens=add_special_tokens)]
            if add_special_tokens not in self._backend_checked:
                probe = words[:64]
                self._backend_checked[add_special_tokens] = (
                    ids[: len(probe)] == tokenize_texts(self.tokenizer, probe,
                                                        add_special_tokens=add_special_tokens)["input_ids"])
            if self._backend_checked[add_special_tokens]:
                return ids
        return tokenize_texts(self.tokenizer, words, add_special_tokens=add_special_tokens)["input_ids"]

    def _follow_tokenizer(self, fingerprint: str) -> None:
        """Drop the private copy of the tokenizer when the tokenizer was replaced or changed
        (``add_tokens``) since it was made: stale ids would be embedded and cached as new."""
        if fingerprint != self._backend_fingerprint:
            self._backend, self._backend_fingerprint = None, fingerprint

    def _embed_uncached(self, words: list[str], bar) -> np.ndarray:
        if self.pooling == "input_embeddings":
            return self._embed_input_embeddings(words, bar)
        encoded = self._encode(words, add_special_tokens=True)
        self._note_unreadable(words, [i for i, unreadable in enumerate(self._special_only(encoded)) if unreadable])
        long = [i for i, ids in enumerate(encoded) if len(ids) > self.max_length]
        if long:
            cut = self._first_pieces([words[i] for i in long])
            for i, ids in zip(long, cut):
                encoded[i] = ids
            self.truncated_words += len(long)
            self._longest_truncated = max([self._longest_truncated, *(words[i] for i in long)], key=len)
        order = sorted(range(len(words)), key=lambda i: len(encoded[i]))
        result = np.empty((len(words), self.dimension), dtype=np.float32)
        autocast = torch.autocast(device_type=torch.device(self.device).type, dtype=self._autocast_dtype,
                                  enabled=self._autocast_dtype is not None)
        with torch.inference_mode(), eval_mode(self.model), autocast:
            for begin in range(0, len(order), self.batch_size):
                batch = order[begin : begin + self.batch_size]
                result[batch] = self._embed_batch([encoded[i] for i in batch]).float().cpu().numpy()
                bar.update(len(batch))
        return result

    def _refuse_a_class_token_elsewhere(self) -> None:
        """``cls`` and ``pooled`` read the first position, the class token of BERT-style
        tokenizers; one that puts it last (XLNet's "w <sep> <cls>") or adds none (T5's
        encoders) would have the word's first piece read instead, with no error."""
        if not class_token_first(self.tokenizer):
            first = _first_token(self.tokenizer)
            where = ("has no class token" if getattr(self.tokenizer, "cls_token_id", None) is None else
                     f"puts {self.tokenizer.convert_ids_to_tokens(first)[0] if first else 'nothing'!r} first, not "
                     f"its class token {self.tokenizer.cls_token!r}")
            raise ValueError(f"pooling={self.pooling!r} reads the class token's hidden state at the first position, "
                             f"but {type(self.tokenizer).__name__} {where}: use pooling='mean'")

    def _first_pieces(self, words: list[str]) -> list[list[int]]:
        """Ids of words cut to ``max_length`` with special tokens, keeping their first pieces
        whatever the tokenizer's ``truncation_side``, which the cache key does not hold."""
        with truncating_on_the_right(self.tokenizer):
            return tokenize_texts(self.tokenizer, words, add_special_tokens=True, truncation=True,
                                  max_length=self.max_length)["input_ids"]

    def _note_unreadable(self, words: list[str], rows: list[int]) -> None:
        """Count the words at ``rows``, whose tokens are all special ([UNK]): no sub-token is left
        to average."""
        if rows:
            self.unreadable_words += len(rows)
            self._unreadable_example = self._unreadable_example or words[rows[0]]

    def _special_ids(self) -> torch.Tensor:
        return torch.tensor(sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long)

    def _embed_input_embeddings(self, words: list[str], bar, block: int = 65536) -> np.ndarray:
        """Mean of each word's non-special sub-token input embeddings, with one embedding_bag per block."""
        weight = self.model.get_input_embeddings().weight.detach()
        special = self._special_ids().to(weight.device)
        result = np.empty((len(words), weight.shape[1]), dtype=np.float32)
        with torch.inference_mode():
            for begin in range(0, len(words), block):
                chunk = words[begin : begin + block]
                encoded = self._encode(chunk, add_special_tokens=False)
                lengths = torch.from_numpy(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
                flat = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64,
                                                    count=int(lengths.sum())))
                keep = ~torch.isin(flat, special.cpu())
                owner = torch.repeat_interleave(torch.arange(len(chunk)), lengths)[keep]
                flat = flat[keep]
                counts = torch.bincount(owner, minlength=len(chunk))
                self._note_unreadable(chunk, torch.nonzero(counts == 0).flatten().tolist())  # no piece kept
                offsets = torch.cumsum(counts, 0) - counts
                vectors = torch.nn.functional.embedding_bag(flat.to(weight.device), weight.float(),
                                                            offsets.to(weight.device), mode="mean")
                result[begin : begin + len(chunk)] = vectors.float().cpu().numpy()
                bar.update(len(chunk))
        return result

    def _embed_batch(self, sequences: list[list[int]]) -> torch.Tensor:
        length = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([s + [pad] * (length - len(s)) for s in sequences], device=self.device)
        attention = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in sequences], device=self.device)
        special = torch.isin(input_ids, self._special_ids().to(self.device))
        word_tokens = (attention.bool() & ~special).unsqueeze(-1)
        output = self.model(input_ids=input_ids, attention_mask=attention, return_dict=True)  # whatever its config says
        if self.pooling == "mean":
            return _masked_mean(output.last_hidden_state.float(), word_tokens)
        pooled = getattr(output, "pooler_output", None) if self.pooling == "pooled" else None
        vectors = pooled if pooled is not None else output.last_hidden_state[:, 0]
        # A word of special tokens alone ([UNK]) is the zero vector here too: otherwise every such
        # word has the one vector of "[CLS] [UNK] [SEP]" and scores alike, often above real words.
        return vectors.masked_fill(~word_tokens.any(1), 0)


def _masked_mean(vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(vectors.dtype)
    return (vectors * mask).sum(1) / mask.sum(1).clamp_min(1)
