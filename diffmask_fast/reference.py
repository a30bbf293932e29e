"""Difference-Masking in plain Python: the executable specification.

Every fast path in this package is tested against the functions here. They favour clarity over
speed and depend only on the standard library and numpy. Equation numbers refer to Wilf et al.,
"Difference-Masking: Choosing What to Mask in Continued Pretraining" (arXiv 2305.14577).
"""

from __future__ import annotations

import fractions
import itertools
import math
import re
import unicodedata
from collections import Counter
from typing import Callable, Collection, Iterable, Mapping, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------
# Words
# ----------------------------------------------------------------------------------------------

#: Word-boundary schemes and the marker each puts on tokens.
#: ``wordpiece`` marks continuations ("##ing"); the others mark word starts ("Ġword", "▁word").
WORD_BOUNDARY_MARKERS = {"wordpiece": "##", "byte_bpe": "\u0120", "sentencepiece": "\u2581"}
#: The scheme without markers: every token is a whole word (word-level tokenizers).
TOKEN_SCHEME = "token"
WORD_BOUNDARY_SCHEMES = (*WORD_BOUNDARY_MARKERS, TOKEN_SCHEME)


#: The character decoders put in place of bytes they cannot read. Kept on word ends (it is a
#: symbol, but marks broken text, which anchor mining must see, not punctuation).
REPLACEMENT_CHARACTER = "\ufffd"


def _is_stripped_from_word_ends(ch: str) -> bool:
    """Punctuation, a symbol, an invisible format character (a byte-order mark left inside joined
    files, a zero-width space, a soft hyphen) or whitespace: what normalizing strips from word
    ends. Text split on whitespace has none of it inside words, but tokenizers that keep a
    no-break space inside a word ("5" + U+00A0 + "%") leave it next to the word once the
    punctuation is gone."""
    if ch == REPLACEMENT_CHARACTER:
        return False
    category = unicodedata.category(ch)
    return category[0] in "PS" or category == "Cf" or ch.isspace()


def composed(word: str) -> str:
    """``word`` with its accents composed (Unicode NFC), as words are counted and looked up."""
    return word if word.isascii() else unicodedata.normalize("NFC", word)


def is_composed(word: str) -> bool:
    """Whether ``composed(word)`` is ``word`` (cheaper than composing: most text is)."""
    return word.isascii() or unicodedata.is_normalized("NFC", word)


def normalize_word(word: str, lowercase: bool = True) -> str:
    """The form under which a word is counted and scored (README, "Choices").

    Unicode-aware lowercasing (``str.lower``) and canonical composition (NFC: "cafe" + U+0301,
    as macOS file names and some PDF extractors write it, is the "café" of other text), then
    punctuation, symbols, invisible format characters and whitespace (Unicode categories P*, S* and
    Cf except U+FFFD, and ``str.isspace``) stripped from both ends, each with the combining marks
    that follow it (M*: "(x)" + U+0301 is "x"): "\ufeffhello" of two files joined with their
    byte-order marks is "hello". A word made only of them keeps its (lowercased) form less the
    whitespace around it (and that whitespace's marks), so "," and "..." stay words of their own
    rather than collapsing into "". Whitespace never ends a normalized word, so normalizing twice
    changes nothing. A word's end that is UTF-8 read as Latin-1 or Windows-1252 ("cafÃ©": "é" as
    "Ã" and the symbol "©") keeps its symbols (``_broken_tail_end``), so that the word is seen as
    broken text rather than counted as "cafã".
    """
    word = composed(word.lower() if lowercase else word)
    start, end = _stripped_span(word, _is_stripped_from_word_ends)
    if start < end:
        if end < len(word) and not word.isascii():
            end = _broken_tail_end(word, start, end)
        return word[start:end]
    start, end = _stripped_span(word, str.isspace)
    return word[start:end]


#: What UTF-8 read as Latin-1 or Windows-1252 at a word's end stands for, where a stripped symbol
#: is part of it: the Latin-1 supplement and Latin Extended-A (letters with accents, "©", "°"),
#: Greek (chemistry's "α"), general punctuation ("’", "”", "–") and "€", "™". Other characters
#: (Cyrillic, IPA) are what an accented capital before a guillemet reads as ("CANCIÓN»"): real text.
_BROKEN_TAIL_STANDS_FOR = ((0xA0, 0x17F), (0x370, 0x3FF), (0x2000, 0x206F), (0x20AC, 0x20AC), (0x2122, 0x2122))
#: Bytes of what follows a word's last letter in real text (… “ ” ‘ ’ • – — › ° ª º ® ¹ ² ³ « » ™):
#: after a lowercase letter read as the capital it may have been ("irmã”" as "irmÔ"), no
#: mojibake. (So lowercased "perÃº" and "dÃ»" still lose their ends: "perã", "dã".)
_AFTER_A_WORD = frozenset({0x85, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x99, 0x9B, 0xAA, 0xAB, 0xAE, 0xB0,
                           0xB2, 0xB3, 0xB9, 0xBA, 0xBB})


def _broken_tail_end(word: str, start: int, end: int) -> int:
    """Where ``word`` ends when the symbols after ``end`` complete a UTF-8 sequence begun before
    it, read as Latin-1 or Windows-1252 ("cafÃ©", lowercased "cafã©"; "donâ€™"): past them; else
    ``end``. A function of the word as given, so that normalizing twice changes nothing."""
    for lead_at in range(max(start, end - 3), end):
        written = _single_byte(word[lead_at])
        for lead in () if written is None else _byte_options(written):
            count = _continuation_count(lead)
            stop = lead_at + 1 + count
            if count < 1 or stop <= end or stop > len(word):
                continue
            continuation = [_single_byte(ch) for ch in word[lead_at + 1:stop]]
            if None in continuation or not all(0x80 <= b <= 0xBF for b in continuation):
                continue
            if any(ch.isspace() for ch in word[lead_at + 1:stop]):  # "à" read as "Ã" + no-break space:
                continue  # whitespace never ends a normalized word, which lookups strip
            if lead != written and count == 1 and continuation[0] in _AFTER_A_WORD:
                continue
            try:
                character = bytes((lead, *continuation)).decode("utf-8")
            except UnicodeDecodeError:  # an overlong or surrogate form
                continue
            if any(low <= ord(character) <= high for low, high in _BROKEN_TAIL_STANDS_FOR):
                return stop
    return end


def _stripped_span(word: str, stripped) -> tuple[int, int]:
    """Bounds of ``word`` less the characters ``stripped`` accepts at its ends, each taken with
    the combining marks after it (a variation selector, as in the emoji "\u2764\ufe0f", or an
    accent: left behind, every such emoji was the one word "\ufe0f")."""
    start, end = 0, len(word)
    while start < end and stripped(word[start]):
        start += 1
        while start < end and _is_mark(word[start]):
            start += 1
    while end > start:
        before_marks = end
        while before_marks > start and _is_mark(word[before_marks - 1]):
            before_marks -= 1
        if before_marks == start or not stripped(word[before_marks - 1]):
            break
        end = before_marks - 1
    return start, end


def _is_mark(ch: str) -> bool:
    """A combining mark (Unicode categories M*): variation selectors, accents, enclosing keycaps."""
    return unicodedata.category(ch)[0] == "M"


def has_letter(word: str) -> bool:
    """Whether a word contains at least one Unicode letter (category L*)."""
    return any(unicodedata.category(ch)[0] == "L" for ch in word)


#: Unicode categories that written words never hold: control characters, surrogates and
#: private-use code points. (Unassigned code points are not among them: which ones are depends
#: on the Unicode version of the Python at hand.)
UNREADABLE_CATEGORIES = frozenset({"Cc", "Cs", "Co"})


def has_unreadable_character(word: str) -> bool:
    """Whether a word holds a character no written word holds: a control, surrogate or
    private-use code point, or U+FFFD (the mark decoders leave for bytes they could not read).

    UTF-8 read as Latin-1 turns "•" into "â\x80¢", whose C1 control survives normalization;
    PDF extraction leaves private-use glyphs.
    """
    if word.isascii():  # the common case, fast: only C0 controls and DEL are unreadable
        return not word.isprintable()
    return any(ch == REPLACEMENT_CHARACTER or unicodedata.category(ch) in UNREADABLE_CATEGORIES for ch in word)


def _single_byte(ch: str) -> int | None:
    """The byte that Latin-1 or Windows-1252 decodes to ``ch``, if there is one."""
    code = ord(ch)
    if code < 0x100:
        return code
    try:
        encoded = ch.encode("cp1252")
    except UnicodeEncodeError:
        return None
    return encoded[0]


def _continuation_count(lead: int) -> int:
    """How many continuation bytes follow a UTF-8 lead byte (-1: not a lead byte)."""
    return 1 if 0xC2 <= lead <= 0xDF else 2 if 0xE0 <= lead <= 0xEF else 3 if 0xF0 <= lead <= 0xF4 else -1


#: Windows-1252 bytes of lowercase letters whose capital is another byte (š and Š, ÿ and Ÿ...).
_CAPITAL_BYTE = {0x9A: 0x8A, 0x9C: 0x8C, 0x9E: 0x8E, 0xFF: 0x9F}


def _byte_options(byte: int) -> tuple[int, ...]:
    """The bytes a character of lowercased Latin-1 / Windows-1252 text may have been: itself, or
    the capital it was lowercased from ("ã" 0xE3 from "Ã" 0xC3)."""
    if 0xE0 <= byte <= 0xFE and byte != 0xF7:
        return byte, byte - 0x20
    return (byte, _CAPITAL_BYTE[byte]) if byte in _CAPITAL_BYTE else (byte,)


def _decode_sequence(data: list[int], start: int, among_ascii_letters: bool) -> tuple[str, int] | None:
    """(character, bytes used) of the UTF-8 sequence at ``data[start]``, each byte read as itself
    or as the capital it may have been (itself first), if there is one. ``among_ascii_letters``:
    the word holds ASCII letters too (see ``_accent_before_a_windows_byte``)."""
    for lead in _byte_options(data[start]):
        count = _continuation_count(lead)
        following = data[start + 1 : start + 1 + count]
        if count < 1 or len(following) < count:
            continue
        for continuation in itertools.product(*map(_byte_options, following)):
            if all(0x80 <= b <= 0xBF for b in continuation):
                try:
                    character = bytes((lead, *continuation)).decode("utf-8")
                except UnicodeDecodeError:  # an overlong or surrogate form
                    continue
                if not _accent_before_a_windows_byte(character, continuation, among_ascii_letters,
                                                     lead != data[start]):
                    return character, 1 + count
    return None


#: What an accented letter before Windows-1252 punctuation (bytes 0x91-0x97) reads as in UTF-8
#: when the letter is taken for the capital it may have been lowercased from, where that is a
#: character next to never written: "ó’" as "Ӓ" (Chuvash), "ô" as Cyrillic Supplement, "ö" as a
#: Hebrew cantillation mark, "ø" as an Arabic honorific, "ú’" and "ú”" as Arabic "ڒ" and "ڔ",
#: "ü" as Syriac, "ý" as Arabic Supplement, "þ" as Thaana. (Greek, "×", Cyrillic "ё" and "і" are
#: written: "ã—" and "î”" stay mojibake.)
_RARELY_WRITTEN_AFTER_AN_ACCENT = ((0x4D1, 0x4D7), (0x511, 0x517), (0x591, 0x597), (0x611, 0x617), (0x692, 0x692),
                                   (0x694, 0x694), (0x711, 0x717), (0x751, 0x757), (0x791, 0x797))


#: Windows-1252 bytes of letters that UTF-8 reads as continuation bytes: Š Œ Ž š œ ž Ÿ.
_WINDOWS_LETTERS = frozenset({0x8A, 0x8C, 0x8E, 0x9A, 0x9C, 0x9E, 0x9F})


def _accent_before_a_windows_byte(character: str, continuation: tuple[int, ...], among_ascii_letters: bool,
                                  capital_lead: bool) -> bool:
    """Whether a two-byte "sequence" is more likely an accented letter before Windows-1252
    punctuation (‘ ’ “ ” • – —, bytes 0x91-0x97) or a letter of it (š ž œ, ``_WINDOWS_LETTERS``)
    than a character of UTF-8. "é’" of "josé’s" reads as "ɒ", and the Czech "píše", "výše" and
    "úžasný" read as combining marks, Syriac and Arabic (their accented letter taken for the
    capital it may have been lowercased from: ``capital_lead``). The characters they would be are
    next to never written, and such words are common: after punctuation, Latin Extended-B, IPA,
    spacing modifiers and combining marks (U+0180-U+036F), and ``_RARELY_WRITTEN_AFTER_AN_ACCENT``
    amid ASCII letters ("perú’s", "malmö’s"), where a word of their script read as Latin-1 would
    hold none; after a letter, combining marks and Syriac to NKo (U+0300-U+036F, U+0700-U+07FF),
    Cyrillic to Arabic amid ASCII letters, and Latin Extended-B to spacing modifiers where the
    accented letter was lowercase ("ǎ" read as Latin-1 and lowercased, "çž", is rarer than Czech)."""
    if len(continuation) != 1:
        return False
    code = ord(character)
    if 0x91 <= continuation[0] <= 0x97:
        return 0x180 <= code <= 0x36F or among_ascii_letters and any(
            low <= code <= high for low, high in _RARELY_WRITTEN_AFTER_AN_ACCENT)
    if continuation[0] in _WINDOWS_LETTERS:
        return (0x300 <= code <= 0x36F or 0x700 <= code <= 0x7FF or among_ascii_letters and 0x400 <= code <= 0x6FF
                or capital_lead and 0x180 <= code <= 0x2FF)
    return False


def repaired_mojibake(word: str) -> str | None:
    """What a word meant if it is UTF-8 text read as Latin-1 or Windows-1252 ("donâ€™t" for
    "don’t", "cafã©" for "café"), else None.

    Lowercased words are read too: lowercasing turns a lead byte such as "Ã" (0xC3) into "ã"
    (0xE3), so each byte is also tried as the capital it may have been. Real words do not match:
    in Latin-1 text a letter such as "é" is not followed by the 0x80-0xBF bytes UTF-8 needs.
    """
    if word.isascii():
        return None
    data = [_single_byte(ch) for ch in word]
    if None in data:
        return None
    among_ascii_letters = any(ch.isascii() and ch.isalpha() for ch in word)
    out, i = [], 0
    while i < len(data):
        if data[i] < 0x80:
            out.append(chr(data[i]))
            i += 1
            continue
        decoded = _decode_sequence(data, i, among_ascii_letters)
        if decoded is None:
            return None
        out.append(decoded[0])
        i += decoded[1]
    return "".join(out)


def is_broken_text(word: str) -> bool:
    """Whether a word is debris of wrongly decoded text: it holds an unreadable character or is
    UTF-8 read as Latin-1 or Windows-1252 (``repaired_mojibake``)."""
    return has_unreadable_character(word) or repaired_mojibake(word) is not None


#: Words of citation syntax ("et al.", "cf.", "i.e."; as normalized, in lowercase): frequent in
#: scientific text and rare on the web, so TF-ICF ranks them high, but they name nothing of a
#: domain. On ACL-ARC "et" and "al" were anchors 2 and 4, and the words nearest them (themselves,
#: 700 times each, and fragments such as "e", "en", "ed") drew a third of the masking weight.
CITATION_WORDS = frozenset({"et", "al", "cf", "etc", "ibid", "viz", "ie", "eg", "i.e", "e.g"})

#: A year with a letter, as citations tell apart an author's works of one year ("Collins 1997a").
#: No word of general English holds a digit, so each had TF-ICF as high as a word never seen on
#: the web: "2004a" and "1997b" were among the top 300 words of SciCite and ACL-ARC.
CITATION_YEAR = re.compile(r"(1[5-9]|20)\d\d[a-z]")


def is_citation_word(word: str) -> bool:
    """Whether a (normalized) word is citation syntax, whatever its case: one of
    ``CITATION_WORDS``, such a word with a placeholder after it (ACL-ARC's "cfXXX", its 14th
    anchor otherwise), or a year with a letter (``CITATION_YEAR``)."""
    lowered = word.lower()
    if lowered in CITATION_WORDS or CITATION_YEAR.fullmatch(lowered):
        return True
    return lowered.endswith("xxx") and lowered.rstrip("x") in CITATION_WORDS


def is_anchor_candidate(word: str) -> bool:
    """Whether a word may be an anchor: it has a letter, is no citation syntax
    (``CITATION_WORDS``) and is not broken text.

    Broken-text fragments such as "â\x80¢" or "donâ€™t" are frequent in some corpora and absent
    from general English, so TF-ICF would crown them; an uncased embedding model then reads "â"
    as "a" and scores every "a" as a domain word.
    """
    return has_letter(word) and not is_citation_word(word) and not is_broken_text(word)


def count_words(texts: Iterable[str], lowercase: bool = True) -> Counter:
    """c_T(w) of eq. 2: whitespace-separated words of every text, normalized and counted."""
    counts: Counter = Counter()
    for text in texts:
        for raw in text.split():
            counts[normalize_word(raw, lowercase)] += 1
    return counts


def _byte_level_characters() -> dict[str, int]:
    """Byte-level BPE writes each byte as a character: a byte that prints as itself in Latin-1
    (not the space) as that character, the others as chr(256), chr(257), ... in byte order."""
    table, unprintable = {}, 0
    for byte in range(256):
        if chr(byte).isprintable() and byte != 0x20:
            table[chr(byte)] = byte
        else:
            table[chr(256 + unprintable)] = byte
            unprintable += 1
    return table


BYTE_LEVEL_CHARACTERS = _byte_level_characters()


def token_text(token: str, scheme: str) -> str | None:
    """The text a byte-level BPE or SentencePiece token stands for ("Âł": a no-break space;
    "▁x": " x"; the byte-fallback piece "<0x09>": a tab), or None where it cannot be read alone
    (a byte-fallback piece of a multi-byte character, an added token outside the byte alphabet).
    In a byte-level token, the bytes of an incomplete character read as U+FFFD: what comes
    before them is still read ("Âłæ": a no-break space, then part of a character)."""
    if scheme == "byte_bpe":
        try:
            return bytes(BYTE_LEVEL_CHARACTERS[c] for c in token).decode("utf-8", "replace")
        except KeyError:
            return None
    if scheme == "sentencepiece":
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            try:
                byte = int(token[3:5], 16)
            except ValueError:
                return token.replace(WORD_BOUNDARY_MARKERS[scheme], " ")
            return chr(byte) if byte < 0x80 else None
        return token.replace(WORD_BOUNDARY_MARKERS[scheme], " ")
    return None


def word_starts(tokens: Sequence[str], never_word: Sequence[bool], scheme: str,
                space_taking: Collection[str] = ()) -> list[bool]:
    """Which tokens begin a new word.

    A word is a maximal run of tokens the tokenizer marks as one word. ``never_word`` flags
    special tokens and padding (and, for byte-level BPE and SentencePiece, tokens that stand for
    whitespace alone); they belong to no word, and the token after one always starts a word
    (RoBERTa's first word carries no "Ġ"). Under a space marker, a token whose text opens with
    whitespace and goes on ("ĉword" of a tab and a word) starts one too, as does, under any
    scheme, a token of ``space_taking``: added tokens that take the whitespace before them.
    """
    if scheme not in WORD_BOUNDARY_SCHEMES:
        raise ValueError(f"unknown word-boundary scheme {scheme!r}; expected one of {sorted(WORD_BOUNDARY_SCHEMES)}")
    marker = WORD_BOUNDARY_MARKERS.get(scheme)
    starts = []
    previous_in_word = False
    for token, excluded in zip(tokens, never_word):
        if excluded:
            starts.append(False)
            previous_in_word = False
            continue
        if scheme == TOKEN_SCHEME:
            begins = True
        elif scheme == "wordpiece":
            begins = not token.startswith(marker)
        else:
            text = token_text(token, scheme)
            begins = token.startswith(marker) or (text is not None and text[:1].isspace() and not text.isspace())
        starts.append(begins or not previous_in_word or token in space_taking)
        previous_in_word = True
    return starts


def group_words(starts: Sequence[bool], never_word: Sequence[bool]) -> list[list[int]]:
    """Token positions of each word, in order, from word-start flags."""
    groups: list[list[int]] = []
    for position, (begins, excluded) in enumerate(zip(starts, never_word)):
        if excluded:
            continue
        if begins or not groups:
            groups.append([position])
        else:
            groups[-1].append(position)
    return groups


# ----------------------------------------------------------------------------------------------
# Anchors: TF-ICF (eq. 2)
# ----------------------------------------------------------------------------------------------

#: Smoothing constant of the TF-ICF ratio, in occurrences per million words (see tf_icf). At 10,
#: anchors of ChemProt are "receptor, inhibition, inhibitor, ...", of ACL-ARC "lexical, corpus,
#: semantic, grammar, ..." (citation syntax left out: ``CITATION_WORDS``), where 1 crowns author
#: names and 100 drifts to "cells", "results".
DEFAULT_SMOOTHING_PER_MILLION = 10.0


def default_min_count(total_target_words: int) -> int:
    """Minimum domain count for an anchor: grows with the square root of the corpus size.

    3 for corpora under ~90k words, 6 at 340k, 32 at 10M, 317 at 1B: a word must recur in
    proportion to how much text there is before it can define the domain.
    """
    return max(3, math.ceil(math.sqrt(total_target_words) / 100))


def tf_icf(
    target_count: int,
    target_total: int,
    general_count: float,
    general_total: float,
    smoothing_per_million: float = DEFAULT_SMOOTHING_PER_MILLION,
) -> float:
    """Eq. 2, score(w) = (c_T(w)/N_T) / (c_G(w)/N_G), on smoothed relative frequencies.

    Both relative frequencies are taken per million words and ``smoothing_per_million`` is added
    to each: words unseen in general English get a finite score, and a word seen once in the
    domain cannot outrank words that are common there (Kilgarriff's "simple maths" keyness). A
    word must be well above ``smoothing_per_million`` per million in the domain to score far above 1.
    """
    if target_total <= 0 or general_total <= 0:
        raise ValueError("tf_icf needs positive corpus totals")
    if not (math.isfinite(smoothing_per_million) and smoothing_per_million >= 0):
        raise ValueError(f"smoothing_per_million must be a finite number >= 0, got {smoothing_per_million}")
    target_per_million = 1e6 * target_count / target_total
    general_per_million = 1e6 * general_count / general_total
    if general_per_million + smoothing_per_million == 0:
        raise ValueError("without smoothing (smoothing_per_million=0), a word general English lacks has no TF-ICF")
    return (target_per_million + smoothing_per_million) / (general_per_million + smoothing_per_million)


def word_parts(word: str) -> list[str]:
    """The runs of letters and digits in a word: "long-term" -> ["long", "term"]. Combining marks
    (Unicode categories M*) belong to their run: "ne\u0301e", decomposed "née", is one part, not
    "ne" and "e"."""
    parts, current = [], []
    for ch in word:
        if ch.isalnum() or unicodedata.category(ch).startswith("M"):
            current.append(ch)
        elif current:
            parts.append("".join(current))
            current = []
    if current:
        parts.append("".join(current))
    return parts


def general_count(word: str, general_counts: Mapping[str, float],
                  folded_counts: Mapping[str, float] | None = None) -> float:
    """c_G(w): the word's count in the general table.

    General-English tables split words at punctuation ("long-term" is counted as "long" and
    "term"). A word the table lacks that is made of several letter/digit runs ("e.g", "mg/kg",
    "follow-up", "object's") gets the smallest count among its parts (0 if a part is missing):
    a compound is at most as frequent as its rarest part, so it is never crowned for its
    punctuation alone. Parts that are numbers are left out ("cox-2" counts as "cox"): general
    tables hold few numbers (the default none), so a number's absence says nothing of the
    compound. Any other missing word has count 0 and is handled by the smoothing of tf_icf.

    General tables are case-folded: a word with capitals (counted with ``lowercase=False``) that
    the table lacks as written is looked up in lowercase, so "The" is as common as "the". The
    default table is also ASCII only: a word with accents it lacks is looked up without them, so
    "café" and "naïve" are as common as "cafe" and "naive", not unseen. A table that keeps case
    comes with ``folded_counts`` (``case_folded``): a word it lacks in every form ("dna" beside
    its "DNA") is looked up there.
    """
    def lookup(form: str) -> float | None:
        count = _table_count(form, general_counts)
        return count if count is not None or folded_counts is None else _table_count(form, folded_counts)

    count = lookup(word)
    if count is not None:
        return count
    parts = word_parts(word)
    if len(parts) < 2:
        return 0
    return min((lookup(part) or 0 for part in parts if not part.isdigit()), default=0)


def case_folded(general_counts: Mapping[str, float]) -> dict[str, float] | None:
    """The table's counts summed by lowercase word, for ``general_count``; None when no key has
    an upper-case letter (its own lookups fold the word's case already)."""
    if all(word == word.lower() for word in general_counts):
        return None
    folded: dict[str, float] = {}
    for word, count in general_counts.items():
        folded[word.lower()] = folded.get(word.lower(), 0) + count
    return folded


def _table_count(word: str, general_counts: Mapping[str, float]) -> float | None:
    """The table's count of a word as written, else of its lowercase form, else of either without
    accents, else of either in compatibility form too (the ligature of "signiﬁcant", from a PDF,
    read as "fi"); None if it has none of them."""
    forms = (word, word.lower())
    if not word.isascii():
        forms += (strip_accents(word), strip_accents(word.lower()),
                  strip_accents(word, compatibility=True), strip_accents(word.lower(), compatibility=True))
    for form in dict.fromkeys(forms):
        count = general_counts.get(form)
        if count is not None:
            return count
    return None


def strip_accents(word: str, compatibility: bool = False) -> str:
    """``word`` without combining marks after canonical decomposition: "naïve" -> "naive",
    "Å" -> "A". Letters that do not decompose ("ß", "ø", Greek) stay as they are. With
    ``compatibility``, compatibility decomposition: also "ﬁ" -> "fi", "²" -> "2", "Ａ" -> "A"."""
    decomposed = unicodedata.normalize("NFKD" if compatibility else "NFD", word)
    return "".join(ch for ch in decomposed if not unicodedata.category(ch).startswith("M"))


def select_anchors(
    target_counts: Mapping[str, int],
    general_counts: Mapping[str, float],
    general_total: float,
    k: int = 20,
    min_count: int | None = None,
    smoothing_per_million: float = DEFAULT_SMOOTHING_PER_MILLION,
) -> list[tuple[str, float]]:
    """The top-k words by TF-ICF among anchor candidates (``is_anchor_candidate``) with at least
    ``min_count`` occurrences.

    Ties break by the word itself, so the result is deterministic.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not (math.isfinite(smoothing_per_million) and smoothing_per_million > 0):  # as mine_anchors
        raise ValueError(f"smoothing_per_million must be a positive finite number, got {smoothing_per_million}")
    target_total = sum(target_counts.values())
    if target_total == 0:
        raise ValueError("the target corpus has no words")
    if min_count is None:
        min_count = default_min_count(target_total)
    if min_count < 1:  # as mine_anchors: a word the corpus lacks is no candidate
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    folded = case_folded(general_counts)
    scored = [
        (word, tf_icf(count, target_total, general_count(word, general_counts, folded), general_total,
                      smoothing_per_million))
        for word, count in target_counts.items()
        if count >= min_count and is_anchor_candidate(word)
    ]
    scored.sort(key=lambda item: (-item[1], item[0]))
    return scored[:k]


# ----------------------------------------------------------------------------------------------
# Similarity (eq. 3-4)
# ----------------------------------------------------------------------------------------------


def _power_of_two_scaled(vector: Sequence[float]) -> list[float]:
    """``vector`` times the power of two that brings its largest |x| into [0.5, 1): exact, and
    the cosine does not change, but squares of 1e200 or 1e-200 no longer over- or underflow."""
    values = [float(x) for x in vector]
    largest = max(map(abs, values), default=0.0)
    if largest == 0:
        return values
    exponent = math.frexp(largest)[1]
    return [math.ldexp(x, -exponent) for x in values]


def cosine(u: Sequence[float], v: Sequence[float]) -> float:
    """Cosine similarity in [-1, 1]; 0 when either vector is zero, NaN when either holds NaN or infinity."""
    if len(u) != len(v):
        raise ValueError(f"cosine of vectors of different lengths ({len(u)} and {len(v)})")
    if not all(math.isfinite(float(x)) for x in (*u, *v)):
        return math.nan
    u, v = _power_of_two_scaled(u), _power_of_two_scaled(v)
    dot = sum(float(a) * float(b) for a, b in zip(u, v))
    norm = math.sqrt(sum(float(a) ** 2 for a in u)) * math.sqrt(sum(float(b) ** 2 for b in v))
    if norm == 0:
        return 0.0
    return min(1.0, max(-1.0, dot / norm))  # rounding can pass +-1 by an ulp; no cosine does


def max_anchor_similarity(embeddings, anchors) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 4 with the nearest anchor: for each row, max_a cos(e, a) and the first arg max.

    ``embeddings`` is [..., D], ``anchors`` is [K, D]; zero vectors have similarity 0, so a zero
    embedding gets (0, 0). An embedding holding NaN or infinity gets (NaN, 0); an anchor holding
    one is never the nearest, unless every anchor does (then NaN at anchor 0).
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    anchors = _anchor_matrix(anchors, embeddings.shape[-1])
    flat = embeddings.reshape(-1, embeddings.shape[-1])
    values = np.zeros(len(flat))
    indices = np.zeros(len(flat), dtype=np.int64)
    for row, vector in enumerate(flat):
        if not np.isfinite(vector).all():
            values[row], indices[row] = math.nan, 0
            continue
        if not vector.any():
            values[row], indices[row] = 0.0, 0
            continue
        similarities = [cosine(vector, anchor) for anchor in anchors]
        usable = [i for i, s in enumerate(similarities) if not math.isnan(s)]
        if not usable:
            values[row], indices[row] = math.nan, 0
            continue
        best = max(usable, key=lambda i: (similarities[i], -i))
        values[row], indices[row] = similarities[best], best
    return values.reshape(embeddings.shape[:-1]), indices.reshape(embeddings.shape[:-1])


def _anchor_matrix(anchors, dimension: int) -> np.ndarray:
    """``anchors`` as a float64 [K, D] array, refused unless K >= 1 and D is ``dimension`` >= 1."""
    anchors = np.asarray(anchors, dtype=np.float64)
    if dimension < 1:  # else a reshape of no values failed, naming no argument
        raise ValueError(f"the vectors must have a positive dimension D, got {dimension}")
    if anchors.ndim != 2 or anchors.shape[0] == 0 or anchors.shape[1] != dimension:
        raise ValueError(f"anchors must be a non-empty [K, {dimension}] array, got shape {anchors.shape}")
    return anchors


def top_dots(queries, vectors, k: int) -> np.ndarray:
    """For each query, the k vectors of largest dot product (a NaN product ranked as -inf, ties
    to the smaller index), in increasing index order."""
    queries = np.asarray(queries, dtype=np.float64)
    vectors = np.asarray(vectors, dtype=np.float64)
    rows = []
    for query in queries:
        dots = [float(np.dot(query, vector)) for vector in vectors]
        # Key math.inf for NaN: the key of a product of -inf.
        ranked = sorted(range(len(dots)), key=lambda c: (math.inf if math.isnan(dots[c]) else -dots[c], c))
        rows.append(sorted(ranked[:k]))
    return np.array(rows, dtype=np.int64).reshape(len(queries), k)


def ivf_max_dot(queries, probes, vectors, offsets, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """The list scan of an inverted-file index: for each query, the largest dot product with the
    vectors of the lists it probes (list l is vectors[offsets[l]:offsets[l + 1]]) and the smallest
    position reaching it (given ``ids``, increasing within each list, the position of the smallest
    id reaching it); (-inf, -1) when those lists hold no vector or only NaN products."""
    queries = np.asarray(queries, dtype=np.float64)
    vectors = np.asarray(vectors, dtype=np.float64)
    if ids is not None:
        for lst in range(len(offsets) - 1):
            inside = [int(ids[m]) for m in range(int(offsets[lst]), int(offsets[lst + 1]))]
            if any(later <= earlier for earlier, later in zip(inside, inside[1:])):
                raise ValueError(f"ids must increase within every list; list {lst} holds {inside}")
    rank = (lambda m: m) if ids is None else (lambda m: (int(ids[m]), m))
    values = np.full(len(queries), -math.inf)
    positions = np.full(len(queries), -1, dtype=np.int64)
    for row, (query, lists) in enumerate(zip(queries, probes)):
        candidates = {m for lst in lists for m in range(int(offsets[lst]), int(offsets[lst + 1]))}
        for m in sorted(candidates, key=rank):
            dot = float(np.dot(query, vectors[m]))
            if not math.isnan(dot) and (positions[row] < 0 or dot > values[row]):
                values[row], positions[row] = dot, m
    return values, positions


def word_similarity(embedding, anchors, mode: str = "max") -> float:
    """s(w) of eq. 3-4: ``max`` (nearest anchor, the default), ``centroid`` or ``mean``.

    ``centroid`` is the cosine to the anchors' centroid, the mean of their vectors as the model
    gives them; ``mean`` averages the cosines to all anchors, which is the dot product with the
    mean of the unit-length anchors (a centroid of unit anchors would only rescale it, and mask
    as ``mean`` does). A zero anchor counts here with cosine 0; ``WordScorer`` leaves zero
    anchor vectors (words the model knows no piece of) out before it compares, so that they are
    never a word's nearest anchor and do not dilute the mean, and counts once the anchor words
    the model gives one vector (copies would weigh that direction twice).
    """
    anchors = _anchor_matrix(anchors, len(embedding))
    if mode == "max":  # a NaN anchor is never the nearest, in any order (max_anchor_similarity)
        return float(max_anchor_similarity(np.asarray(embedding, dtype=np.float64)[None], anchors)[0][0])
    if mode == "mean":
        return sum(cosine(embedding, anchor) for anchor in anchors) / len(anchors)
    if mode == "centroid":
        largest = float(np.abs(anchors).max(initial=0.0))
        return cosine(embedding, np.mean(anchors / (largest if largest > 0 else 1.0), axis=0))
    raise ValueError(f"unknown similarity mode {mode!r}; expected 'max', 'centroid' or 'mean'")


# ----------------------------------------------------------------------------------------------
# Masking (Section 3.2)
# ----------------------------------------------------------------------------------------------


def rank_weights(scores: Sequence[float]) -> list[float]:
    """The authors' code's weighting: each word's rank by score within its sequence.

    The lowest score has rank 1 and the highest rank n; tied scores share their average rank.
    """
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for position in order[i : j + 1]:
            ranks[position] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def word_weights(scores: Sequence[float], scheme: str = "similarity", uniform_mix: float = 0.0) -> list[float]:
    """Sampling weights of the words of one sequence.

    ``similarity`` (paper): w_i = max(s_i, 0). ``rank``: see rank_weights. With ``uniform_mix``
    λ > 0 the weights become (1-λ)·w/Σw + λ/n (when Σw is 0 they are uniform).
    """
    if not 0.0 <= uniform_mix <= 1.0:
        raise ValueError(f"uniform_mix must be in [0, 1], got {uniform_mix}")
    bad = next((s for s in scores if not math.isfinite(float(s))), None)
    if bad is not None:  # as the ops refuse them: a NaN has no rank, and makes every weight of a mix NaN
        raise ValueError(f"score {bad} is not finite: a word's score must be a finite number")
    if scheme == "similarity":
        weights = [max(float(s), 0.0) for s in scores]
    elif scheme == "rank":
        weights = rank_weights(scores)
    else:
        raise ValueError(f"unknown weighting {scheme!r}; expected 'similarity' or 'rank'")
    if uniform_mix > 0 and weights:
        total = sum(weights)
        n = len(weights)
        if total > 0:
            weights = [(1 - uniform_mix) * w / total + uniform_mix / n for w in weights]
        else:
            weights = [1.0 / n] * n
    return weights


def masking_budget(n_words: int, mlm_probability: float, u: float) -> int:
    """Words to mask in one sequence: p·n rounded stochastically (up with probability frac(p·n)).

    ``u`` is a uniform draw in [0, 1). The expectation is exactly p·n, capped at n.
    """
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
    expected = mlm_probability * n_words
    budget = math.floor(expected) + (1 if u < expected - math.floor(expected) else 0)
    return min(budget, n_words)


def successive_sampling(weights: Sequence[float], count: int, rng: np.random.Generator) -> list[int]:
    """Draw positions one at a time with probability proportional to weight, without replacement.

    Stops after ``count`` draws or when no positive weight is left: zero weights are never drawn.
    """
    weights = [float(w) for w in weights]
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError("weights must be finite and non-negative")
    remaining = list(weights)
    chosen: list[int] = []
    while len(chosen) < count:
        largest = max(remaining, default=0.0)
        if largest <= 0:
            break
        # Relative to the largest weight left, so that a sum of huge weights cannot overflow
        # and tiny weights are compared among themselves once the larger ones are drawn.
        scaled = [w / largest for w in remaining]
        target = rng.random() * sum(scaled)
        cumulative = 0.0
        pick = None
        for i, w in enumerate(scaled):
            if w <= 0:
                continue
            cumulative += w
            pick = i
            if target < cumulative:
                break
        chosen.append(pick)
        remaining[pick] = 0.0
    return chosen


def successive_sampling_inclusion(weights: Sequence[float], count: int) -> list[float]:
    """Exact probability that each position is drawn by successive_sampling, by enumeration.

    Exponential in ``count``; meant for the small cases tests check against. Exact rational
    arithmetic, so weights spanning any range (1e308 next to 1e-320) are handled.
    """
    n = len(weights)
    exact = [fractions.Fraction(float(w)) for w in weights]
    positive = [i for i in range(n) if exact[i] > 0]
    draws = min(count, len(positive))
    inclusion = [fractions.Fraction(0)] * n
    total = sum(exact[i] for i in positive)
    for sequence in itertools.permutations(positive, draws):
        probability = fractions.Fraction(1)
        left = total
        for i in sequence:
            probability *= exact[i] / left
            left -= exact[i]
        for i in sequence:
            inclusion[i] += probability
    return [float(p) for p in inclusion]


def choose_words(weights: Sequence[float], budget: int, rng: np.random.Generator) -> list[int]:
    """The masked words of one sequence: successive sampling over positive weights first; if the
    budget is larger than the number of positive-weight words, the rest are drawn uniformly
    without replacement from the zero-weight words.
    """
    chosen = successive_sampling(weights, budget, rng)
    if len(chosen) < budget:
        zero = [i for i, w in enumerate(weights) if w <= 0]
        extra = rng.permutation(len(zero))[: budget - len(chosen)]
        chosen.extend(zero[i] for i in extra)
    return chosen


def whole_word_mask(groups: Sequence[Sequence[int]], chosen: Iterable[int], length: int) -> list[bool]:
    """Spread a word choice to every sub-word token of each chosen word."""
    mask = [False] * length
    for word in chosen:
        for position in groups[word]:
            mask[position] = True
    return mask


def replace_tokens(
    input_ids: Sequence[int],
    mask: Sequence[bool],
    mask_token_id: int,
    random_token_ids: Sequence[int],
    rng: np.random.Generator,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> tuple[list[int], list[int]]:
    """BERT's 80/10/10 rule on the masked tokens; labels are -100 where nothing is masked.

    Each masked token independently becomes the mask token with probability
    ``mask_replace_prob``, a uniformly drawn token from ``random_token_ids`` with probability
    ``random_replace_prob``, and stays as it is otherwise.
    """
    if not (0 <= mask_replace_prob and 0 <= random_replace_prob and mask_replace_prob + random_replace_prob <= 1):
        raise ValueError("mask_replace_prob and random_replace_prob must be non-negative and sum to at most 1")
    if random_replace_prob > 0 and len(random_token_ids) == 0:
        raise ValueError("random_replace_prob > 0 needs random_token_ids to draw from")
    ids = list(input_ids)
    labels = [-100] * len(ids)
    for position, masked in enumerate(mask):
        if not masked:
            continue
        labels[position] = ids[position]
        u = rng.random()
        if u < mask_replace_prob:
            ids[position] = mask_token_id
        elif u < mask_replace_prob + random_replace_prob:
            ids[position] = int(random_token_ids[rng.integers(len(random_token_ids))])
    return ids, labels


def mask_sequence(
    tokens: Sequence[str],
    input_ids: Sequence[int],
    never_word: Sequence[bool],
    scheme: str,
    word_score: Callable[[Sequence[int]], float],
    mask_token_id: int,
    random_token_ids: Sequence[int],
    rng: np.random.Generator,
    mlm_probability: float = 0.25,
    weighting: str = "similarity",
    uniform_mix: float = 0.0,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> tuple[list[int], list[int], list[bool]]:
    """Difference-Masking of one tokenized sequence, end to end.

    ``word_score`` maps the token ids of a word to its score s(w) (in practice: decode the
    tokens, normalize_word, look the word up in the score table). Returns the masked ids, the
    labels and the whole-word mask.
    """
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
    starts = word_starts(tokens, never_word, scheme)
    groups = group_words(starts, never_word)
    scores = [word_score([input_ids[i] for i in group]) for group in groups]
    weights = word_weights(scores, weighting, uniform_mix)
    budget = masking_budget(len(groups), mlm_probability, rng.random())
    chosen = choose_words(weights, budget, rng)
    mask = whole_word_mask(groups, chosen, len(input_ids))
    ids, labels = replace_tokens(
        input_ids, mask, mask_token_id, random_token_ids, rng, mask_replace_prob, random_replace_prob
    )
    return ids, labels, mask
