"""Showing what Difference-Masking masks and why: marked sentences (text or HTML) and how
often each word is masked over many draws (``plots.plot_masking_rates`` draws it)."""

from __future__ import annotations

import html
import math
import os
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from ._checks import refuse_one_string
from ._display import printable, printable_word, short_score
from ._io import atomic_write_bytes
from .collator import DifferenceMaskingCollator
from .pretrain_data import special_wrapping, word_windows
from .reference import normalize_word
from .tokenization import WordGrouper, decode_words, tokenize_texts

#: Characters of a text tokenized per token of the window at first: generous (English averages
#: about 4), so that a huge one-line document is not tokenized whole to show its first words.
CHARACTERS_PER_TOKEN = 50
#: ``masking_rates`` masks this many texts at a time, so that its memory does not grow with them.
RATE_CHUNK_TEXTS = 2048

#: Shown for a document in which the tokenizer reads no token but special ones (zero-width
#: characters alone): a blank line would look like a preview that failed.
NO_WORDS = "(no words: the tokenizer reads nothing here but special tokens)"

#: A run of characters that are not whitespace (anchored by ``match``, so it never backtracks).
_NON_SPACE_RUN = re.compile(r"\S*")


def sample_documents(documents: Iterable[str], sizes: Sequence[int], seed: int,
                     progress: bool = True) -> list[list[str]]:
    """For each ``sizes[i]``, that many documents drawn uniformly without replacement (all of them
    if there are fewer), reproducibly from ``seed + i``. One pass, reservoir sampling: memory
    holds the samples, not the corpus (a bar counts the documents read, as it takes a while)."""
    refuse_one_string(documents, "documents", "an iterable of texts")
    generators = [random.Random(seed + i) for i in range(len(sizes))]
    samples: list[list[str]] = [[] for _ in sizes]
    read = tqdm(documents, desc="sampling documents", unit=" docs", unit_scale=True, disable=not progress)
    for seen, document in enumerate(read):
        for size, sample, generator in zip(sizes, samples, generators):
            if len(sample) < size:
                sample.append(document)
            elif size > 0:
                slot = generator.randrange(seen + 1)
                if slot < size:
                    sample[slot] = document
    return samples


#: What the model reads where a masked word was, as ``PreviewWord.replacement`` names it (the
#: 80/10/10 replacement draws per token, so a word of several tokens may be "mixed").
REPLACEMENTS = {"mask": "the mask token", "kept": "the word itself", "random": "random tokens",
                "mixed": "the mask token for some of its tokens, random or its own for others"}


@dataclass(frozen=True)
class PreviewWord:
    """A word of a previewed text. ``masked``: chosen for prediction (its tokens are labels);
    ``replacement`` says what the model then reads in its place (a key of ``REPLACEMENTS``).
    ``unknown``: a token the tokenizer reads as unknown, no word's and never masked, shown as the
    unknown token (scored NaN) so that the text does not look whole where the model reads none."""

    text: str
    score: float
    masked: bool
    nearest_anchor: str | None
    replacement: str | None = None
    unknown: bool = False


@dataclass(frozen=True)
class WordMaskingRate:
    """How often one word of a text sample was masked over repeated draws."""

    word: str
    score: float
    occurrences: int  # in the sample (each draw masks every occurrence anew)
    masked: int  # occurrences masked, summed over the draws
    draws: int
    nearest_anchor: str | None

    @property
    def rate(self) -> float:
        return self.masked / (self.occurrences * self.draws)


def _whole_words_prefix(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters before a run of whitespace: a word cut in the
    middle would tokenize unlike the same word in the whole text."""
    if len(text) <= limit:
        return text
    head = text[:limit + 1]  # one more: is the character at the cut whitespace?
    # The (possibly cut) last word, found from the end in linear time; then the space before it.
    cut_word = _NON_SPACE_RUN.match(head[::-1]).end()
    return head[:len(head) - cut_word].rstrip()


def _prefix(text: str, limit: int) -> str:
    """``_whole_words_prefix``, unless that is under half of ``limit``: text without whitespace
    (Chinese, a minified line) is then cut at ``limit`` characters, as otherwise every doubling
    found no word to cut before and the whole document was tokenized. The word so cut is the
    prefix's last, which the window leaves out (``_window_ids``) unless it is longer than the
    window."""
    prefix = _whole_words_prefix(text, limit)
    return prefix if 2 * len(prefix) >= min(limit, len(text)) else text[:limit]


def _leading_ids(tokenizer, texts: Sequence[str], count: int) -> list[list[int]]:
    """For each text, the token ids (no special tokens) of a prefix that tokenizes to at least
    ``count`` ids, or of all of it: only as much of a long document is tokenized as the window
    needs, the prefix doubling while it falls short. One tokenizer call per doubling."""
    found: list[list[int]] = [[] for _ in texts]
    pending, limit = list(range(len(texts))), count * CHARACTERS_PER_TOKEN
    while pending:
        encoded = tokenize_texts(tokenizer, [_prefix(texts[i], limit) for i in pending],
                                 add_special_tokens=False, return_attention_mask=False,
                                 return_token_type_ids=False, verbose=False)["input_ids"]
        short = []
        for i, ids in zip(pending, encoded):
            if len(ids) >= count or limit >= len(texts[i]):
                found[i] = list(ids)
            else:
                short.append(i)
        pending, limit = short, limit * 2
    return found


def _window_ids(grouper: WordGrouper, ids: list[int], room: int) -> list[int]:
    """The first at most ``room`` of a text's leading ``ids`` (``room + 1`` of them tell whether
    the last word goes on), ending between words as the pretraining windows do: a word whose
    last pieces do not fit is left out rather than shown, scored and counted as a word of its
    own ("phosphory"). Only a word longer than the window is cut."""
    if len(ids) <= room:
        return ids
    _, end = word_windows(grouper.breaks(ids[:room + 1]), room)[0]
    return ids[:end]


def _room(tokenizer, before: list[int], after: list[int], max_length: int) -> int:
    """Tokens of text that fit in ``max_length`` beside the special tokens."""
    room = max_length - len(before) - len(after)
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text beside the {len(before) + len(after)} "
                         f"special tokens {type(tokenizer).__name__} adds")
    return room


def _encoded_words(collator: DifferenceMaskingCollator, texts: Sequence[str], max_length: int):
    """Each text's token ids (at most ``max_length``, special tokens included, as the tokenizer
    adds them) and its words: (ids, [token positions of each word], [word text])."""
    grouper = WordGrouper(collator.boundaries.starts_word, collator.boundaries.never_word)  # the collator's words
    return _windows(collator.tokenizer, grouper, texts, max_length)


def shown_word_types(tokenizer, texts: Sequence[str], max_length: int = 128, lowercase: bool = True,
                     scheme: str | None = None) -> set[str]:
    """The normalized word types ``preview`` and ``masking_rates`` show of ``texts`` (with the same
    ``max_length`` and word-boundary ``scheme``, detected when None): those of each text's leading
    window only, so that scoring what a preview shows never reads a huge document whole."""
    refuse_one_string(texts, "texts", "a list of texts")
    if len(texts) == 0:
        return set()
    rows = _windows(tokenizer, WordGrouper.for_tokenizer(tokenizer, scheme), texts, max_length)
    return {normalize_word(word, lowercase) for _, _, words in rows for word in words if word}


def _windows(tokenizer, grouper: WordGrouper, texts: Sequence[str], max_length: int):
    """``_encoded_words`` with the words ``grouper`` forms."""
    before, after = special_wrapping(tokenizer)
    room = _room(tokenizer, before, after, max_length)
    sequences = [before + _window_ids(grouper, ids, room) + after
                 for ids in _leading_ids(tokenizer, texts, room + 1)]  # one past the window: see _window_ids
    groups_of = [grouper(ids) for ids in sequences]
    distinct = list({tuple(ids[i] for i in group) for ids, groups in zip(sequences, groups_of) for group in groups})
    text_of = dict(zip(distinct, decode_words(tokenizer, [list(word) for word in distinct])))  # each decoded once
    return [(ids, groups, [text_of[tuple(ids[i] for i in group)] for group in groups])
            for ids, groups in zip(sequences, groups_of)]


def _padding_offsets(collator: DifferenceMaskingCollator, rows, length: int) -> list[int]:
    """Where each row's first token sits in a batch padded to ``length``: after the padding when
    the tokenizer pads on the left, as the collator does."""
    left = getattr(collator.tokenizer, "padding_side", "right") == "left"
    return [length - len(ids) if left else 0 for ids, _, _ in rows]


@contextmanager
def _draws_left_as_they_were(collator: DifferenceMaskingCollator):
    """Let ``collator`` mask inside, then put its random streams and torch's global RNG back:
    a look at a collator before it is handed to a Trainer must not change what training draws
    (the same masks with or without a preview, for a seeded run)."""
    saved = {context: generator.get_state() for context, generator in collator._generators.items()}
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            collator._generators = {context: generator for context, generator in collator._generators.items()
                                    if context in saved}
            for context, state in saved.items():
                collator._generators[context].set_state(state)


def preview(collator: DifferenceMaskingCollator, texts: Sequence[str], max_length: int = 128) -> list[list[PreviewWord]]:
    """Mask ``texts`` with ``collator`` once and report, word by word, score, whether it was
    masked and what the model reads in its place (``PreviewWord``). A text longer than
    ``max_length`` tokens is shown up to its last word that fits. The collator's random streams
    are left as they were: training draws the same masks."""
    _refuse_other_collators(collator, "preview")
    refuse_one_string(texts, "texts", "a list of texts")
    if len(texts) == 0:  # nothing to show (the collator refuses an empty batch)
        return []
    rows = _encoded_words(collator, texts, max_length)
    with _draws_left_as_they_were(collator):
        batch = collator([{"input_ids": ids} for ids, _, _ in rows])
    labels, inputs = torch.as_tensor(batch["labels"]), torch.as_tensor(batch["input_ids"])
    offsets = _padding_offsets(collator, rows, labels.shape[1])
    return [_shown_words(collator, ids, groups, words, labels[row, offsets[row]:].tolist(),
                         inputs[row, offsets[row]:].tolist())
            for row, (ids, groups, words) in enumerate(rows)]


def _shown_words(collator: DifferenceMaskingCollator, ids: list[int], groups, words, labels: list[int],
                 inputs: list[int]) -> list[PreviewWord]:
    """A row's words in order, each with what the model reads in its place, and between them the
    tokens read as unknown, which belong to no word."""
    tokenizer = collator.tokenizer
    shown = []
    for word, group in zip(words, groups):
        masked = any(labels[i] != -100 for i in group)
        replacement = _replacement([inputs[i] for i in group], [ids[i] for i in group],
                                   tokenizer.mask_token_id) if masked else None
        text = word or _unstripped_text(tokenizer, ids, group)
        shown.append((group[0], PreviewWord(text, collator.scores.score(word), masked,
                                            collator.scores.nearest_anchor_of(word), replacement)))
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is not None:
        in_words = {i for group in groups for i in group}
        shown += [(i, PreviewWord(str(tokenizer.unk_token), math.nan, False, None, unknown=True))
                  for i, token in enumerate(ids) if token == unknown and i not in in_words]
    return [word for _, word in sorted(shown, key=lambda item: item[0])]


def _replacement(read: list[int], written: list[int], mask: int) -> str:
    """What the model reads in place of a masked word's tokens ``written``: a key of REPLACEMENTS."""
    if all(token == mask for token in read):
        return "mask"
    if read == written:
        return "kept"
    return "random" if all(token != mask for token in read) else "mixed"


def _refuse_other_collators(collator, function: str) -> None:
    """The previews report each word's score and nearest anchor, which only a
    DifferenceMaskingCollator has (the baselines and the term collators score no word)."""
    if not isinstance(collator, DifferenceMaskingCollator):
        raise TypeError(f"{function} shows the scores and nearest anchors of a DifferenceMaskingCollator's words; "
                        f"got a {type(collator).__name__}")


def _unstripped_text(tokenizer, ids: Sequence[int], group: Sequence[int]) -> str:
    """The text of a word that decodes to whitespace alone (U+3000 standing alone, in byte-level
    BPE), which the decoded word, stripped, leaves empty: the word is masked like any other, and
    an empty one could not be seen."""
    return tokenizer.decode([ids[i] for i in group], skip_special_tokens=False,
                            clean_up_tokenization_spaces=False).strip(" ")


def masking_rates(collator: DifferenceMaskingCollator, texts: Sequence[str], draws: int = 100,
                  max_length: int = 128) -> list[WordMaskingRate]:
    """Mask ``texts`` ``draws`` times and count, per word as the score table keys it (lowercased,
    punctuation stripped: "The" and "the" are one word, scored once), how often it was masked:
    what the collator's distribution does with each word, which one draw cannot show. Most masked
    first. The collator's random streams are left as they were: training draws the same masks."""
    _refuse_other_collators(collator, "masking_rates")
    refuse_one_string(texts, "texts", "a list of texts")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    with _draws_left_as_they_were(collator):
        word_types, occurrences, masked = _masked_counts(collator, texts, draws, max_length)
    if not word_types:
        raise ValueError("the texts hold no words to mask")
    rates = [
        WordMaskingRate(word, collator.scores.score(word), int(occurrences[t]), int(masked[t]), draws,
                        collator.scores.nearest_anchor_of(word))
        for word, t in word_types.items()
    ]
    return sorted(rates, key=lambda r: (-r.rate, -r.score, r.word))


def _masked_counts(collator: DifferenceMaskingCollator, texts: Sequence[str], draws: int, max_length: int
                   ) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
    """({word type: its index}, occurrences and masked occurrences of each type over ``draws``
    maskings of ``texts``), a chunk of texts at a time so that memory does not grow with them."""
    word_types: dict[str, int] = {}
    occurrences = masked = torch.zeros(0, dtype=torch.long)  # per word type, grown as types appear
    for begin in range(0, len(texts), RATE_CHUNK_TEXTS):
        rows = _encoded_words(collator, texts[begin:begin + RATE_CHUNK_TEXTS], max_length)
        rows_of, positions_of, types_of = [], [], []
        for row, (_, groups, words) in enumerate(rows):
            for word, group in zip(words, groups):
                rows_of.append(row)
                positions_of.append(group[0])  # a word is masked whole: its first token tells
                types_of.append(word_types.setdefault(collator.scores.key(word), len(word_types)))
        if not types_of:
            continue
        index = (torch.tensor(rows_of), torch.tensor(positions_of))
        types, known = torch.tensor(types_of), len(word_types)
        grown = torch.zeros(known - occurrences.numel(), dtype=torch.long)
        occurrences = torch.cat([occurrences, grown]) + torch.bincount(types, minlength=known)
        masked = torch.cat([masked, grown])
        examples = [{"input_ids": ids} for ids, _, _ in rows]
        for draw in range(draws):
            labels = torch.as_tensor(collator(examples)["labels"])  # the collator may return numpy
            if draw == 0:
                offsets = torch.tensor(_padding_offsets(collator, rows, labels.shape[1]))
                index = (index[0], index[1] + offsets[index[0]])
            masked += torch.bincount(types, weights=(labels[index] != -100).double(), minlength=known).long()
    return word_types, occurrences, masked


def _bracket_safe(text: str, masked: bool) -> str:
    """``text`` with its brackets escaped ("\\[") where it holds "[[" or "]]", or, masked, starts
    with "[" or ends with "]" or a backslash: wiki markup "[[Paris]]", one word to a byte-level
    BPE, would print as a masked "Paris", a masked "protein]" as "[[protein]]]", a masked "protein"
    and a "]", and a masked "C:\\" as "[[C:\\]]", an escaped bracket. Backslashes of a word so
    escaped are doubled first, so that each escape reads one way."""
    ambiguous = "[[" in text or "]]" in text or (masked and (text.startswith("[") or text.endswith(("]", "\\"))))
    if not ambiguous:
        return text
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def render_text(sentences: Sequence[Sequence[PreviewWord]], show_scores: bool = False) -> str:
    """One line per sentence, masked words in [[double brackets]] (with their score if asked);
    characters that are not printable are shown escaped, as are the brackets of a word that
    holds "[[" or "]]" (or, masked, starts with "[" or ends with "]" or a backslash); scores of a
    table far from [-1, 1] are shown in three significant digits."""
    lines = []
    for words in sentences:
        parts = []
        for word in words:
            shown = _bracket_safe(printable_word(word.text), word.masked)
            text = f"{shown}:{short_score(word.score)}" if show_scores else shown
            parts.append(f"[[{text}]]" if word.masked else text)
        lines.append(" ".join(parts) if parts else NO_WORDS)
    return "\n".join(lines)


def render_html(sentences: Sequence[Sequence[PreviewWord]], title: str = "Difference-Masking preview") -> str:
    """A page where each word is shaded by its score and masked words are boxed. Each line takes
    its direction from the first letter it holds (``dir="auto"``): a line of Arabic or Hebrew reads
    from the right, as it is written; the words are not isolated from each other, so that a phrase
    in the other direction within a line reads as written too."""
    darkest = _darkest_score(sentences)
    rows = []
    for words in sentences:
        cells = []
        for w in words:
            alpha = min(max(w.score / darkest, 0.0), 1.0) if math.isfinite(w.score) else 0.0
            style = f"background: rgba(255, 140, 0, {alpha:.2f});"
            if w.masked:
                line = "solid" if w.replacement in (None, "mask") else "dashed"
                style += f" outline: 2px {line} #1f4e9c; font-weight: bold;"
            if w.unknown:
                style += " color: #888;"
            tip = _tip(w)
            cells.append(f'<span style="{style}" title="{html.escape(tip)}">{html.escape(printable_word(w.text))}</span>')
        rows.append(f"<p dir='auto'>{' '.join(cells)}</p>" if cells else f"<p><i>{html.escape(NO_WORDS)}</i></p>")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family: sans-serif; line-height: 2; max-width: 60em'>"
        f"<h1>{html.escape(title)}</h1><p>Shading: word score, from none at 0 or below to darkest at "
        f"{darkest:g} (darker = closer to the domain's anchors); "
        f"boxed: masked in this draw (chosen for prediction), with a solid box where the model reads the mask "
        f"token, a dashed one where it reads the word itself or random tokens (BERT's replacement, 80/10/10 "
        f"by default); grey: read as unknown, never masked. Hover a word for its score, nearest anchor and what "
        f"the model reads.</p>{''.join(rows)}</body></html>"
    )


def _tip(word: PreviewWord) -> str:
    """A word's hover text: its score and nearest anchor, and what the model reads in its place."""
    if word.unknown:
        return "read as unknown by the tokenizer: no word, never masked"
    nearest = f", nearest anchor: {printable(word.nearest_anchor)}" if word.nearest_anchor else ""
    tip = f"score {word.score:.3f}{nearest}" if abs(word.score) < 1e4 else f"score {word.score:.3g}{nearest}"
    if word.masked and word.replacement in REPLACEMENTS:
        tip += f"; masked: the model reads {REPLACEMENTS[word.replacement]}"
    return tip


def _darkest_score(sentences: Sequence[Sequence[PreviewWord]]) -> float:
    """The score shaded darkest: 1, a similarity's most, or the highest beyond it (a table of
    given scores). One scale for the page, so that a score is shaded alike wherever it is, and a
    page of anchors alone is dark, not blank."""
    return max([1.0, *(w.score for words in sentences for w in words if math.isfinite(w.score))])


def write_html(path: str | os.PathLike, sentences: Sequence[Sequence[PreviewWord]], title: str = "Difference-Masking preview") -> None:
    atomic_write_bytes(path, render_html(sentences, title).encode("utf-8"))
