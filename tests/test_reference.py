"""The reference itself: small cases worked out by hand, and its sampler against exact probabilities."""

import math
import random

import numpy as np
import pytest

from diffmask_fast import reference


def test_reference_needs_no_extension_or_torch():
    import subprocess
    import sys

    code = (
        "import sys, diffmask_fast.reference as r; "
        "assert 'torch' not in sys.modules and 'diffmask_fast._C' not in sys.modules; "
        "print(r.normalize_word('(Enzyme),'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "enzyme"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("(IscS", "iscs"),
        ("Enzyme,", "enzyme"),
        ("[14,15]).", "14,15"),
        ("Fe-S", "fe-s"),
        ("ÉCOLE", "école"),
        ("Straße", "straße"),
        ("−20C", "20c"),
        (",", ","),
        ("...", "..."),
        ("“quoted”", "quoted"),
        ("caf\ufffd,", "caf\ufffd"),  # U+FFFD, what undecodable bytes become, marks broken text: kept
        ("Cafe\u0301", "caf\u00e9"),  # decomposed accents, composed (NFC)
        ("\"nai\u0308ve\u0301.\"", "na\u00efv\u00e9"),
        ("\u212bngstr\u00f6m", "\u00e5ngstr\u00f6m"),  # the Angstrom sign is the letter
        ("ligand\u00a0.", "ligand"),  # whitespace a tokenizer kept inside a word goes with the punctuation
        ("5\u00a0%", "5"),
        ("(\u2009x", "x"),
        ("\u00a0%", "%"),  # a word of punctuation keeps it, less the whitespace around it
        ("( - )", "( - )"),
        # A stripped symbol goes with the marks after it: emoji with a variation selector were
        # all the one word U+FE0F.
        ("\u2764\ufe0f", "\u2764\ufe0f"),
        ("\u2714\ufe0f,", "\u2714\ufe0f,"),  # symbols alone: kept whole, as "%," is
        ("(x)\u0301", "x"),
        ("\u2764\ufe0fhello", "hello"),
        ("1\ufe0f\u20e3", "1\ufe0f\u20e3"),  # a keycap: the marks follow a digit, which stays
        ("\ufe0fx", "\ufe0fx"),  # marks after no stripped character stay
        # "à" read as Latin-1 is "Ã" and a no-break space, which would end the word in whitespace
        ("voil\u00c3\u00a0", "voil\u00e3"),
        ("caf\u00c3\u0085", "caf\u00e3"),  # U+0085 (next line) is whitespace too
        ("caf\u00c3\u00a9", "caf\u00e3\u00a9"),  # "é": kept, broken text
    ],
)
def test_normalize_word(raw, expected):
    assert reference.normalize_word(raw) == expected


def test_normalize_word_is_a_fixed_point_and_ignores_how_accents_are_written(seed):
    """Tables are keyed by normalized words and refuse keys that normalize to another one, so a
    normalized word must stay as it is; its composed and decomposed spellings are one word."""
    import random
    import unicodedata

    rng = random.Random(seed)
    alphabet = ["a", "e", "I", "İ", "Σ", "ς", "ß", "\u212a", "\u212b", "\u0301", "\u0308", "\u0327", "é", "Å", ".", ",",
                "“", "-", "\ufeff", "\u200b", "😀", "%", " ", "\u00a0", "\u2009", "\ufe0f",
                "\u20e3", "\u2764", "1",
                "\u00c3", "\u00e2", "\u00a9", "\u20ac", "\u2122", "\u0085"]  # UTF-8 read as Latin-1 / cp1252
    for _ in range(3000):
        word = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 8)))
        for lowercase in (True, False):
            once = reference.normalize_word(word, lowercase)
            assert reference.normalize_word(once, lowercase) == once, ascii(word)
            assert once == once.strip(), ascii(word)  # lookups strip whitespace: a key never holds it at an end
            for form in ("NFD", "NFC"):
                assert reference.normalize_word(unicodedata.normalize(form, word), lowercase) == once, ascii(word)


def test_normalize_word_can_keep_case():
    assert reference.normalize_word("(DNA)", lowercase=False) == "DNA"


def test_has_letter():
    assert reference.has_letter("cox-2") and reference.has_letter("é")
    assert not reference.has_letter("12,22") and not reference.has_letter("...")


LEGIBLE_WORDS = ("cox-2", "é", "café", "naïve", "garçon", "señor", "straße", "ñandú", "µm", "x²", "α-helix", "σύνταξη",
                 "plus\u00admaze", "中文", "काम", "می\u200cخواهم", "👩\u200d🔬lab", "a\u0301b", "\U000e0fffab",
                 # an accented letter before typographic punctuation read as UTF-8 is "ɒ" (U+0252)
                 "poincaré’s", "josé–maría", "CAFÉ’S", "renée”", "ça‘",
                 # or a letter of another script amid ASCII letters ("ڒ", a Hebrew accent, "Ӓ")
                 "perú’s", "malmö’s", "MALMÖ’S", "rondó”", "xô–y",
                 # and before a Windows-1252 letter (š ž): combining marks, Syriac, Arabic, IPA
                 "píše", "výše", "jíž", "tíže", "PÍŠE", "úžasný", "ÚŽASNÝ", "léšť", "nejvýš")


def test_anchor_candidates_have_a_letter_and_are_not_broken_text():
    for word in LEGIBLE_WORDS:  # any script, soft hyphen, ZWNJ, ZWJ, combining mark, unassigned code point
        assert reference.is_anchor_candidate(word) and reference.repaired_mojibake(word) is None, ascii(word)
    # Broken text: UTF-8 read as Latin-1 ("•" -> "â\x80¢", counted whole, or a fragment "â\x80"), a C0 control,
    # a PDF's private-use glyph, a decoder's replacement mark, a lone surrogate.
    for word in ("\u00e2\x80", "a\x02b", "pi3k\ue232akt", "caf\ufffd", "half\ud83d"):
        assert reference.has_letter(word) and not reference.is_anchor_candidate(word), ascii(word)
    assert not reference.is_anchor_candidate("12,22")


@pytest.mark.parametrize("read_as", ["latin-1", "cp1252"])
def test_a_broken_encoding_at_a_words_end_is_broken_text_not_a_shorter_word(read_as):
    """Normalizing stripped the symbols that end a mis-decoded character ("cafÃ©" lost "©") before
    anyone looked: "cafã" passed for a word, and was an anchor of a corpus read as cp1252. Real
    text with an accented letter before closing punctuation stays a word."""
    for meant in ("café", "José.", "Núñez’", "•", "niño", "François", "£", "α"):
        garbled = "".join(bytes([b]).decode(read_as, errors="ignore") or chr(b) for b in meant.encode("utf-8"))
        for lowercase in (True, False):
            word = reference.normalize_word(garbled, lowercase)
            assert reference.is_broken_text(word) and not reference.is_anchor_candidate(word), (ascii(garbled), word)
            assert reference.normalize_word(word, lowercase) == word
    for text, word in (("manhã»", "manhã"), ("irmã”", "irmã"), ("café»", "café"), ("CANCIÓN»", "canción"),
                       ("maçã…", "maçã"), ("Nestlé®", "nestlé"), ("são”", "são"), ("lã°", "lã"), ("Ã", "ã")):
        assert reference.normalize_word(text) == word and reference.is_anchor_candidate(word), text


@pytest.mark.parametrize("meant", ["10,000×g", "4×SSC", "ΔG", "ΔΔCt", "Γ-secretase", "ϕX174", "pH–ΔpH"])
@pytest.mark.parametrize("read_as", ["latin-1", "cp1252"])
def test_mojibake_of_symbols_and_greek_amid_ascii_letters_is_broken_text(meant, read_as):
    """Greek and "×" read as Windows-1252 put a lead byte before punctuation ("î”g" for "ΔG",
    "ã—g" for "×g"): unlike "perú’s", these are written, and their mojibake is no anchor."""
    garbled = "".join(bytes([b]).decode(read_as, errors="ignore") or chr(b) for b in meant.encode("utf-8"))
    for form in (garbled, garbled.lower()):
        assert reference.is_broken_text(form) and not reference.is_anchor_candidate(form), ascii(form)


@pytest.mark.parametrize("meant", ["don’t", "café", "Düsseldorf", "“quote”", "naïve—", "µm", "😀x", "ĳ", "€uro", "文字",
                                   "așa", "ə", "ёж", "cœur", "Međugorje", "їжак", "міст", "ё"])
@pytest.mark.parametrize("read_as", ["latin-1", "cp1252"])
def test_mojibake_is_recognized_and_repaired_also_when_lowercased(meant, read_as):
    try:
        garbled = meant.encode("utf-8").decode(read_as)
    except UnicodeDecodeError:  # Windows-1252 has no character for the byte: readers fall back to Latin-1
        garbled = "".join(bytes([b]).decode(read_as, errors="ignore") or chr(b) for b in meant.encode("utf-8"))
    assert reference.repaired_mojibake(garbled) == meant, ascii(garbled)
    assert reference.repaired_mojibake(garbled.lower()) == meant.lower(), ascii(garbled.lower())
    assert reference.is_broken_text(garbled) and not reference.is_anchor_candidate(garbled)


def test_mojibake_of_latin_extended_before_a_windows_letter_is_broken_text_as_written():
    """"ǎ" and "ʊ" read as Windows-1252 are "ÇŽ" and "ÊŠ": mojibake. Lowercased, "çž" reads as
    the Czech "íš" of "píše" does, a lowercase accented letter before "š" or "ž", and is left a
    word: Czech is written far more often than lowercased mojibake of Pinyin or IPA."""
    for meant in ("ǎ", "ʊ", "ǚ", "xǎy"):
        garbled = meant.encode("utf-8").decode("cp1252")
        assert reference.repaired_mojibake(garbled) == meant and reference.is_broken_text(garbled), ascii(garbled)
        assert reference.repaired_mojibake(garbled.lower()) is None, ascii(garbled.lower())


def test_count_words_splits_on_whitespace_and_normalizes():
    counts = reference.count_words(["The enzyme,  the ENZYME\tbinds.", "", "binds"])
    assert counts == {"the": 2, "enzyme": 2, "binds": 2}


@pytest.mark.parametrize(
    "scheme, tokens, starts, groups",
    [
        ("wordpiece", ["[CLS]", "fra", "##ta", "##xin", ",", "hello", "[SEP]"],
         [False, True, False, False, True, True, False], [[1, 2, 3], [4], [5]]),
        ("byte_bpe", ["<s>", "The", "Ġenz", "yme", ",", "Ġbinds", "</s>"],
         [False, True, True, False, False, True, False], [[1], [2, 3, 4], [5]]),
        ("sentencepiece", ["<s>", "▁The", "▁enz", "yme", "▁", "1", "</s>"],
         [False, True, True, False, True, False, False], [[1], [2, 3], [4, 5]]),
    ],
)
def test_word_starts_and_groups(scheme, tokens, starts, groups):
    never = [t.startswith(("[", "<")) for t in tokens]
    assert reference.word_starts(tokens, never, scheme) == starts
    assert reference.group_words(starts, never) == groups


def test_token_scheme_makes_every_token_a_word():
    tokens = ["[CLS]", "the", "##x", "\u0120y", ",", "[SEP]", "[PAD]"]
    never = [True, False, False, False, False, True, True]
    starts = reference.word_starts(tokens, never, "token")
    assert starts == [False, True, True, True, True, False, False]
    assert reference.group_words(starts, never) == [[1], [2], [3], [4]]


def test_a_continuation_token_first_in_a_row_begins_a_word():
    """A row cut inside a word (a window's first token continues the word before it)."""
    assert reference.group_words([False, True, False], [False, False, False]) == [[0], [1, 2]]
    assert reference.group_words([False, False, True], [True, False, False]) == [[1], [2]]


def test_word_starts_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="unknown word-boundary scheme"):
        reference.word_starts(["a"], [False], "wordlevel")


def test_continuation_after_special_token_starts_a_word():
    # RoBERTa's first word carries no "Ġ"; a continuation right after a special token still starts a word.
    assert reference.word_starts(["<s>", "yme", "</s>", "##x"], [True, False, True, False], "byte_bpe") == [False, True, False, True]


def test_tf_icf_is_a_smoothed_ratio_of_relative_frequencies():
    value = reference.tf_icf(10, 1_000_000, 20, 1_000_000, smoothing_per_million=0.0)
    assert value == pytest.approx(0.5)
    assert reference.tf_icf(1, 1_000_000, 0, 1e12, smoothing_per_million=10.0) == pytest.approx(11 / 10)


def test_general_count_of_compounds_is_their_rarest_part():
    general = {"long": 100, "term": 50, "e": 1000, "g": 900}
    assert reference.general_count("long-term", general) == 50
    assert reference.general_count("e.g", general) == 900
    assert reference.general_count("long-zzz", general) == 0
    assert reference.general_count("zzz", general) == 0


def test_numbers_in_a_compound_say_nothing_of_its_rarity():
    """The default table has no words with digits: "cox-2" counts as "cox", not as unseen; a
    word that is only numbers, or a word with digits that is no compound, still counts 0."""
    general = {"cox": 9_503_104, "covid": 1_000, "mg": 5e6, "kg": 8e6}
    assert reference.general_count("cox-2", general) == 9_503_104
    assert reference.general_count("covid-19", general) == 1_000
    assert reference.general_count("il-1-beta", general) == 0  # "il" and "beta" are missing
    assert reference.general_count("10-20", general) == 0
    assert reference.general_count("p53", general) == 0 and reference.general_count("2nd", general) == 0
    assert reference.general_count("mg/kg", general) == 5e6
    assert reference.general_count("cox-2", {"cox": 100, "2": 7}) == 100  # a table that has the number too


def test_a_word_with_combining_marks_is_one_word_not_a_compound():
    general = {"ne": 5e7, "e": 3e7, "na": 1e6, "ve": 8e5, "well": 9e7, "known": 4e7}
    assert reference.general_count("ne\u0301e", general) == 0  # decomposed "née", absent as the composed one
    assert reference.general_count("na\u0131\u0308ve", general) == 0
    assert reference.general_count("we\u0301ll-known", general) == 4e7  # parts "wéll" (as "well") and "known"
    assert reference.word_parts("ne\u0301e-ve") == ["ne\u0301e", "ve"]


def test_words_with_accents_are_looked_up_without_them_where_the_table_lacks_them():
    general = {"cafe": 1.6e7, "naive": 1.8e6, "resume": 2e7, "résumé": 5.0, "long": 100, "term": 50}
    assert reference.general_count("café", general) == 1.6e7
    assert reference.general_count("cafe\u0301", general) == 1.6e7  # decomposed, too
    assert reference.general_count("Naïve", general) == 1.8e6  # and with capitals (lowercase=False counts)
    assert reference.general_count("résumé", general) == 5.0  # a table that holds the accented form: as written
    assert reference.general_count("lóng-térm", general) == 50  # compounds of accented parts
    assert reference.general_count("straße", general) == 0 and reference.general_count("α", general) == 0
    assert reference.strip_accents("Åçcéñt ß ø") == "Accent ß ø"


def test_select_anchors_prefers_frequent_domain_words_and_breaks_ties_by_word():
    target = {"enzyme": 50, "receptor": 50, "the": 500, "typo": 1, "12": 80}
    general = {"the": 4e10, "enzyme": 1e5, "receptor": 1e5}
    anchors = reference.select_anchors(target, general, 1e12, k=3, min_count=2)
    assert [w for w, _ in anchors] == ["enzyme", "receptor", "the"]
    assert anchors[0][1] == anchors[1][1]
    with pytest.raises(ValueError):
        reference.select_anchors(target, general, 1e12, k=0)
    with pytest.raises(ValueError, match="no words"):
        reference.select_anchors({}, general, 1e12)


def test_default_min_count_grows_with_corpus_size():
    assert reference.default_min_count(1000) == 3
    assert reference.default_min_count(340_000) == 6
    assert reference.default_min_count(10**9) == 317


def test_similarity_modes():
    anchors = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    word = np.array([1.0, 1.0])
    assert reference.word_similarity(word, anchors, "max") == pytest.approx(math.sqrt(0.5))
    assert reference.word_similarity(word, anchors, "mean") == pytest.approx(2 * math.sqrt(0.5) / 3)
    assert reference.word_similarity(word, anchors, "centroid") == pytest.approx(1.0)
    values, indices = reference.max_anchor_similarity(np.array([[0.0, 0.0], [0.0, 2.0]]), anchors)
    assert values.tolist() == [0.0, pytest.approx(1.0)] and indices.tolist() == [0, 1]
    with pytest.raises(ValueError):
        reference.word_similarity(word, anchors, "median")


def test_cosine_of_parallel_vectors_is_exactly_one_or_minus_one():
    rng = np.random.default_rng()
    for _ in range(200):
        u = rng.standard_normal(int(rng.integers(1, 300)))
        scale = float(rng.uniform(0.1, 10))
        assert 1 - 1e-12 < reference.cosine(u, scale * u) <= 1.0
        assert -1.0 <= reference.cosine(u, -scale * u) < -1 + 1e-12


def test_rank_weights_average_ties():
    assert reference.rank_weights([0.3, 0.1, 0.3, 0.9]) == [2.5, 1.0, 2.5, 4.0]


def test_word_weights():
    assert reference.word_weights([0.5, -0.2, 0.0]) == [0.5, 0.0, 0.0]
    mixed = reference.word_weights([3.0, 1.0], uniform_mix=0.5)
    assert mixed == pytest.approx([0.5 * 0.75 + 0.25, 0.5 * 0.25 + 0.25])
    assert reference.word_weights([0.0, -1.0], uniform_mix=0.2) == [0.5, 0.5]
    with pytest.raises(ValueError):
        reference.word_weights([1.0], scheme="softmax")


@pytest.mark.parametrize("scheme", ["similarity", "rank"])
@pytest.mark.parametrize("uniform_mix", [0.0, 0.2])
def test_scores_that_are_not_finite_are_refused_as_the_ops_refuse_them(scheme, uniform_mix):
    """A NaN score made every weight of a uniform mix uniform, and took a rank by its position;
    the ops refuse it."""
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="score .* is not finite"):
            reference.word_weights([0.3, bad, 0.5], scheme, uniform_mix)


def test_masking_budget_rounds_stochastically_with_exact_expectation():
    assert reference.masking_budget(10, 0.25, 0.49) == 3
    assert reference.masking_budget(10, 0.25, 0.5) == 2
    assert reference.masking_budget(4, 1.0, 0.0) == 4
    rng = random.Random(random.getrandbits(64))  # seeded by the test's seed
    draws = [reference.masking_budget(7, 0.25, rng.random()) for _ in range(20000)]
    assert np.mean(draws) == pytest.approx(1.75, abs=0.03)


def test_successive_sampling_matches_exact_inclusion():
    seed = random.randrange(2**32)
    rng = np.random.default_rng(seed)
    weights = list(rng.random(5)) + [0.0]
    k = 2
    exact = reference.successive_sampling_inclusion(weights, k)
    assert sum(exact) == pytest.approx(k)
    runs = 20000
    hits = np.zeros(len(weights))
    for _ in range(runs):
        hits[reference.successive_sampling(weights, k, rng)] += 1
    for p, h in zip(exact, hits):
        bound = 5 * math.sqrt(p * (1 - p) / runs) + 1e-9
        assert abs(h / runs - p) <= bound, (seed, weights, exact, hits / runs)
    assert hits[-1] == 0


def test_successive_sampling_rejects_bad_weights(seed):
    rng = np.random.default_rng(seed)
    for bad in ([1.0, float("nan")], [1.0, -0.5], [float("inf")]):
        with pytest.raises(ValueError):
            reference.successive_sampling(bad, 1, rng)


def test_choose_words_fills_budget_with_zero_weight_words_last_and_uniformly(seed):
    rng = np.random.default_rng(seed)
    runs = 6000
    filled = np.zeros(5)
    for _ in range(runs):
        chosen = reference.choose_words([0.0, 2.0, 0.0, 1.0, 0.0], 3, rng)
        assert len(set(chosen)) == 3 and set(chosen[:2]) == {1, 3}, (seed, chosen)
        filled[chosen[2]] += 1
    for word in (0, 2, 4):
        assert abs(filled[word] / runs - 1 / 3) <= 5 * math.sqrt(2 / 9 / runs), (seed, filled)


def test_replace_tokens_follows_the_shares_and_draws_random_tokens_uniformly(seed):
    rng = np.random.default_rng(seed)
    n, mask_share, random_share = 40_000, 0.6, 0.25
    ids = list(range(1000, 1000 + n))
    mask = [i % 4 != 0 for i in range(n)]  # a quarter of the tokens is not masked
    random_ids = [7, 8, 9, 10]
    replaced, labels = reference.replace_tokens(ids, mask, 1, random_ids, rng, mask_replace_prob=mask_share,
                                                random_replace_prob=random_share)
    assert labels == [i if m else -100 for i, m in zip(ids, mask)]
    assert all(r == i for r, i, m in zip(replaced, ids, mask) if not m)
    masked = [r for r, m in zip(replaced, mask) if m]
    total = len(masked)
    for share, count in ((mask_share, masked.count(1)), (random_share, sum(r in random_ids for r in masked)),
                         (1 - mask_share - random_share, sum(r >= 1000 for r in masked))):
        assert abs(count / total - share) <= 5 * math.sqrt(share * (1 - share) / total), (seed, share, count)
    drawn = [r for r in masked if r in random_ids]
    for token in random_ids:
        assert abs(drawn.count(token) / len(drawn) - 0.25) <= 5 * math.sqrt(0.1875 / len(drawn)), (seed, token)
    with pytest.raises(ValueError, match="sum to at most 1"):
        reference.replace_tokens(ids, mask, 1, random_ids, rng, mask_replace_prob=0.8, random_replace_prob=0.3)


def test_mask_sequence_end_to_end(seed):
    rng = np.random.default_rng(seed)
    tokens = ["[CLS]", "fra", "##ta", "##xin", "binds", "iron", "[SEP]", "[PAD]"]
    ids = list(range(100, 108))
    never = [True, False, False, False, False, False, True, True]
    scores = {(101, 102, 103): 0.9, (104,): 0.0, (105,): 0.5}
    for _ in range(100):
        masked, labels, mask = reference.mask_sequence(
            tokens, ids, never, "wordpiece", lambda w: scores[tuple(w)], mask_token_id=1,
            random_token_ids=[7, 8], rng=rng, mlm_probability=0.5,
        )
        assert not any(mask[i] for i in (0, 6, 7))
        assert mask[1] == mask[2] == mask[3]
        assert labels == [ids[i] if mask[i] else -100 for i in range(len(ids))]
        assert all(m in (1, 7, 8, ids[i]) for i, m in enumerate(masked))
        assert sum([mask[1], mask[4], mask[5]]) in (1, 2)
        assert not mask[4], "a zero-score word waits until the positive ones are drawn (budget 1 or 2 of 2)"


def test_the_replacement_defaults_are_berts_80_10_10():
    import inspect

    for function in (reference.mask_sequence, reference.replace_tokens):
        parameters = inspect.signature(function).parameters
        assert (parameters["mask_replace_prob"].default, parameters["random_replace_prob"].default) == (0.8, 0.1)


def test_similarity_ties_go_to_the_first_anchor():
    # anchors 1 and 2 point the same way (2 is longer): equal cosines, the first wins
    _, indices = reference.max_anchor_similarity(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 0.0], [3.0, 0.0]]))
    assert indices.tolist() == [1]


def test_sentencepiece_byte_tokens_are_text_only_for_single_byte_characters():
    assert reference.token_text("<0x09>", "sentencepiece") == "\t"
    assert reference.token_text("<0x41>", "sentencepiece") == "A"
    assert reference.token_text("<0xC3>", "sentencepiece") is None  # part of a multi-byte character


def test_a_word_with_a_ligature_is_counted_as_its_letters_in_general_english():
    """Text from PDFs holds "ﬁ": "signiﬁcantly" counted 0 in general English and was crowned an anchor."""
    general = {"significantly": 5.0, "x2": 3.0, "naive": 2.0}
    assert reference.general_count("signiﬁcantly", general) == 5.0
    assert reference.general_count("x²", general) == 3.0 and reference.general_count("naïve", general) == 2.0
    assert reference.general_count("signiﬁcantly", {"signiﬁcantly": 1.0, "significantly": 5.0}) == 1.0, "as written first"
    assert reference.strip_accents("ﬁ") == "ﬁ" and reference.strip_accents("ﬁ", compatibility=True) == "fi"


def test_the_reference_refuses_what_the_ops_refuse():
    """The specification answered where the ops refuse: vectors of other lengths were cut to the
    shorter, no anchor gave NaN at a missing index, a NaN anchor came first or not by its place,
    a smoothing of 0 divided by zero, and NaN probabilities replaced nothing."""
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="different lengths"):
        reference.cosine([1, 0, 0], [1, 0])
    with pytest.raises(ValueError, match=r"anchors must be a non-empty \[K, 3\] array, got shape \(1, 2\)"):
        reference.max_anchor_similarity([[0, 0, 5]], [[1, 0]])
    for mode in ("max", "mean", "centroid"):
        with pytest.raises(ValueError, match="anchors must be a non-empty"):
            reference.word_similarity([1.0, 0.0], np.zeros((0, 2)), mode)
    for anchors in ([[math.nan, 0], [1, 0]], [[1, 0], [math.nan, 0]]):
        assert reference.word_similarity([1.0, 0.0], anchors, "max") == 1.0
    for smoothing in (0.0, -5.0, math.nan):
        with pytest.raises(ValueError, match="smoothing_per_million must be a positive finite number"):
            reference.select_anchors({"enzyme": 5, "the": 9}, {"the": 100}, 1e6, k=2,
                                     smoothing_per_million=smoothing)
    chosen = reference.select_anchors({"enzyme": 5, "zero": 0}, {}, 1e6, k=2, min_count=1)
    assert [word for word, _ in chosen] == ["enzyme"]
    with pytest.raises(ValueError, match="min_count must be at least 1, got 0"):  # as mine_anchors refuses it
        reference.select_anchors({"enzyme": 5, "zero": 0}, {}, 1e6, k=2, min_count=0)
    with pytest.raises(ValueError, match="the vectors must have a positive dimension D, got 0"):  # a reshape error
        reference.max_anchor_similarity(np.zeros((2, 0)), np.zeros((1, 0)))
    with pytest.raises(ValueError, match="must be non-negative and sum to at most 1"):
        reference.replace_tokens([5, 6], [True, True], 1, [2], rng, math.nan, 0.1)
    with pytest.raises(ValueError, match="needs random_token_ids"):
        reference.replace_tokens([5, 6], [True, True], 1, [], rng, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"mlm_probability must be in \[0, 1\]"):
        reference.masking_budget(4, -0.5, 0.1)
