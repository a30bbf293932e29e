"""``preview`` and ``masking_rates`` on texts longer than the window: the words shown end where a
whole word ends, never on the first pieces of a word whose last pieces were cut off."""

from __future__ import annotations

import math
import random
import re

import pytest

from diffmask_fast.collator import DifferenceMaskingCollator
from diffmask_fast import reference
from diffmask_fast.preview import masking_rates, preview, sample_documents, shown_word_types
from diffmask_fast.scoring import ScoreTable

TOKENIZERS = ["bert_wordpiece", "roberta_byte_bpe"]


def collator_for(request, tokenizer_name: str) -> DifferenceMaskingCollator:
    table = ScoreTable.from_mapping({"phosphorylation": 1.0})
    return DifferenceMaskingCollator(request.getfixturevalue(tokenizer_name), table, seed=0)


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
@pytest.mark.parametrize("fillers", range(120, 130))  # the window ends before, inside and after the long word
def test_a_word_cut_by_the_window_is_left_out(request, tokenizer_name, fillers):
    collator = collator_for(request, tokenizer_name)
    text = "the " * fillers + "phosphorylation of the protein"
    words = [w.text for w in preview(collator, [text])[0]]
    assert words == text.split()[:len(words)], f"{fillers}: {words[-3:]}"
    assert len(words) >= 120
    shown = "phosphorylation" in words
    rates = {r.word: r for r in masking_rates(collator, [text], draws=3)}
    assert set(rates) == set(words), "counted the words shown, no fragment"
    assert ("phosphorylation" in rates) == shown
    if shown:
        assert rates["phosphorylation"].score == 1.0 and rates["phosphorylation"].rate == 1.0


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_a_word_longer_than_the_window_is_shown_cut(request, tokenizer_name):
    collator = collator_for(request, tokenizer_name)
    word = "phosphorylationkinasereceptorbinding" * 2
    [row] = preview(collator, [word + " of the protein"], max_length=8)
    assert len(row) == 1 and word.startswith(row[0].text) and len(row[0].text) < len(word)
    [rate] = masking_rates(collator, [word], draws=2, max_length=8)
    assert rate.word == row[0].text and rate.occurrences == 1


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_a_huge_line_previews_its_first_words(request, tokenizer_name):
    collator = collator_for(request, tokenizer_name)
    sentence = "the phosphorylation of the protein binds its ligand in cells "
    text = sentence * (2_000_000 // len(sentence))  # one 2 MB line: only its start is tokenized
    words = [w.text for w in preview(collator, [text])[0]]
    assert words == [w.text for w in preview(collator, [sentence * 40])[0]]
    assert words == text.split()[:len(words)] and len(words) > 60


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
@pytest.mark.parametrize("text", ["\u86cb\u767d\u8d28\u78f7\u9178\u5316" * 100_000, "a=f(b,c);" * 60_000])
def test_a_huge_document_without_spaces_previews_its_start_without_being_read_whole(request, tokenizer_name, text,
                                                                                     monkeypatch):
    """Chinese text or a minified line has no whitespace to cut before: the prefix was empty at
    every doubling, and the whole document was tokenized to show its first 128 tokens."""
    from diffmask_fast import preview as preview_module

    collator = collator_for(request, tokenizer_name)
    tokenized = []
    original = preview_module.tokenize_texts
    monkeypatch.setattr(preview_module, "tokenize_texts",
                        lambda tokenizer, texts, **kw: tokenized.extend(map(len, texts)) or original(tokenizer, texts, **kw))
    words = [w.text for w in preview(collator, [text])[0]]
    assert max(tokenized) <= 4 * 128 * preview_module.CHARACTERS_PER_TOKEN, tokenized
    assert words == [w.text for w in preview(collator, [text[:20_000]])[0]]
    assert words or text.startswith("\u86cb"), "the test BERT vocabulary reads Chinese as [UNK]: no words"


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_the_word_types_to_score_are_those_shown(request, tokenizer_name, shared_data_dir):
    """What preview scores before it shows a text is the words of its window, not of the whole
    document (a one-line corpus had every word of it embedded)."""
    collator = collator_for(request, tokenizer_name)
    lines = (shared_data_dir / "chemprot" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    texts = [" ".join(lines[:400]), *lines[400:405], "Word  "]
    shown = {reference.normalize_word(w.text) for row in preview(collator, texts) for w in row
             if w.text and not w.unknown}
    types = shown_word_types(collator.tokenizer, texts)
    assert types == shown and len(types) < 400
    assert shown_word_types(collator.tokenizer, []) == set()


def test_preview_rejects_a_window_without_room_for_text(bert_wordpiece):
    collator = DifferenceMaskingCollator(bert_wordpiece, ScoreTable.from_mapping({}), seed=0)
    with pytest.raises(ValueError, match="leaves no room for text"):
        preview(collator, ["the protein"], max_length=2)


def test_previewing_no_texts_shows_nothing(bert_wordpiece):
    collator = DifferenceMaskingCollator(bert_wordpiece, ScoreTable.from_mapping({"enzyme": 1.0}), seed=0)
    assert preview(collator, []) == []


def test_one_text_alone_is_refused_not_read_letter_by_letter(bert_wordpiece):
    collator = DifferenceMaskingCollator(bert_wordpiece, ScoreTable.from_mapping({"enzyme": 1.0}), seed=0)
    for call in (lambda: preview(collator, "the enzyme"), lambda: masking_rates(collator, "the enzyme", draws=2),
                 lambda: sample_documents("the enzyme", [2], seed=0, progress=False)):
        with pytest.raises(TypeError, match="not one string"):
            call()


def test_sampling_documents_shows_a_bar_unless_told_not_to(capsys):
    documents = [f"document {i}" for i in range(50)]
    assert sample_documents(iter(documents), (3,), seed=0, progress=False) == sample_documents(documents, (3,), seed=0)
    err = capsys.readouterr().err
    assert err.count("sampling documents") >= 1 and "50" in err
    sample_documents(documents, (3,), seed=0, progress=False)
    assert "sampling documents" not in capsys.readouterr().err


def test_texts_are_cut_before_the_last_whitespace_within_the_limit(seed):
    """Against its definition on random text over every kind of whitespace ``str.split`` knows,
    and on a long run of spaces (a backtracking search took seconds there)."""
    from diffmask_fast.preview import _whole_words_prefix

    def cut(text: str, limit: int) -> str:
        if len(text) <= limit:
            return text
        spaces = [i for i in range(limit + 1) if text[i].isspace()]
        return text[:spaces[-1]].rstrip() if spaces else ""

    rng = random.Random(seed)
    alphabet = ["a", "é", "-", " ", "\n", "\t", "\u00a0", "\u2009", "\u3000", "\x1c"]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        limit = rng.randint(0, 15)
        assert _whole_words_prefix(text, limit) == cut(text, limit), (text, limit, f"seed={seed}")
    text = "start" + " " * 40_000 + " word" * 20_000
    assert _whole_words_prefix(text, 40_010) == cut(text, 40_010) == "start" + " " * 40_001 + "word"


def test_the_html_preview_shades_words_by_score_and_boxes_the_masked_ones():
    from diffmask_fast.preview import PreviewWord, render_html

    page = render_html([[PreviewWord("low", 0.1, False, None), PreviewWord("mid", 0.5, False, None),
                         PreviewWord("high", 0.9, True, "enzyme")]])
    styles = shading(page)
    assert "rgba(255, 140, 0, 0.90)" in styles["high"] and "rgba(255, 140, 0, 0.10)" in styles["low"]
    assert "rgba(255, 140, 0, 0.50)" in styles["mid"]
    assert "outline" in styles["high"] and "outline" not in styles["low"] + styles["mid"], "only masked words boxed"
    assert "darkest at 1 " in page


def test_the_preview_says_what_the_model_reads_in_place_of_each_masked_word(bert_wordpiece, word_level_whitespace,
                                                                           seed):
    """A masked word is chosen for prediction; the model reads the mask token there for 80% of
    tokens, the token itself or a random one for 10% each: shown as if all were [MASK], a quarter
    of the boxed words reached the model as they were written or as other words."""
    from diffmask_fast.preview import PreviewWord, render_html

    texts = [" ".join(random.Random(seed + i).choices(["kinase", "phosphorylation", "binds", "the"], k=30))
             for i in range(20)]
    table = ScoreTable.from_mapping({"kinase": 1.0, "phosphorylation": 0.8})
    for shares, expected in [((1.0, 0.0), {"mask"}), ((0.0, 0.0), {"kept"})]:
        collator = DifferenceMaskingCollator(bert_wordpiece, table, seed=seed, mask_replace_prob=shares[0],
                                             random_replace_prob=shares[1])
        words = [word for row in preview(collator, texts) for word in row]
        assert {word.replacement for word in words if word.masked} == expected
        assert {word.replacement for word in words if not word.masked} == {None}
    collator = DifferenceMaskingCollator(word_level_whitespace, table, seed=seed)  # one token a word: 80/10/10
    masked = [word for row in preview(collator, texts * 5) for word in row if word.masked]
    shares = {kind: sum(word.replacement == kind for word in masked) / len(masked) for kind in ("mask", "kept")}
    assert len(masked) > 500 and abs(shares["mask"] - 0.8) < 0.07 and 0.03 < shares["kept"] < 0.2, shares
    assert {word.replacement for word in masked} <= {"mask", "kept", "random"}
    page = render_html([[PreviewWord("kinase", 0.9, True, None, "mask"), PreviewWord("binds", 0.2, True, None, "kept"),
                         PreviewWord("the", 0.1, True, None, "random")]])
    styles = shading(page)
    assert "2px solid" in styles["kinase"] and "2px dashed" in styles["binds"] and "2px dashed" in styles["the"]
    assert "masked: the model reads the mask token" in page and "masked: the model reads the word itself" in page
    assert "masked: the model reads random tokens" in page


def test_tokens_read_as_unknown_are_shown_where_they_are_and_never_masked(bert_wordpiece):
    """The words grouped leave out tokens read as unknown: the preview showed fluent text where
    the model reads [UNK]."""
    from diffmask_fast.preview import render_html, render_text

    unknown = bert_wordpiece.unk_token
    text = "the kinase \u2603 binds \u2603\u2603 the"
    ids = bert_wordpiece(text)["input_ids"]
    assert ids.count(bert_wordpiece.unk_token_id) >= 2, bert_wordpiece.convert_ids_to_tokens(ids)
    collator = DifferenceMaskingCollator(bert_wordpiece, ScoreTable.from_mapping({"kinase": 1.0}), seed=0,
                                         mlm_probability=1.0)
    [row] = preview(collator, [text])
    assert [word.text for word in row] == ["the", "kinase", unknown, "binds", unknown, "the"]
    assert render_text([row]) == f"[[the]] [[kinase]] {unknown} [[binds]] {unknown} [[the]]", "every word masked"
    assert [word.unknown for word in row] == [False, False, True, False, True, False]
    assert all(not word.masked and math.isnan(word.score) and word.nearest_anchor is None
               for word in row if word.unknown)
    assert "read as unknown by the tokenizer" in render_html([row])


def shading(page: str) -> dict[str, str]:
    return {text: style for style, text in re.findall(r'<span style="([^"]*)"[^>]*>([^<]*)</span>', page)}


def test_the_html_shading_is_one_scale_not_stretched_over_each_page():
    """Shading ran from the page's lowest score to its highest: a page of anchors alone was blank,
    and a score of 0.05 was as dark as an anchor on a page without one."""
    from diffmask_fast.preview import PreviewWord, render_html

    anchors = shading(render_html([[PreviewWord("kinase", 1.0, True, "kinase"), PreviewWord("enzyme", 1.0, False, None)]]))
    assert all("rgba(255, 140, 0, 1.00)" in style for style in anchors.values()), anchors
    faint = shading(render_html([[PreviewWord("the", 0.01, False, None), PreviewWord("of", 0.05, False, None)]]))
    assert "0.01)" in faint["the"] and "0.05)" in faint["of"], faint
    given = render_html([[PreviewWord("big", 8.0, False, None), PreviewWord("half", 4.0, False, None),
                          PreviewWord("below", -0.3, False, None), PreviewWord("odd", math.nan, False, None)]])
    styles = shading(given)
    assert "1.00)" in styles["big"] and "0.50)" in styles["half"] and "darkest at 8 " in given, "scores above 1"
    assert "0.00)" in styles["below"] and "0.00)" in styles["odd"] and "nan)" not in given


def test_a_word_of_whitespace_alone_is_shown_spelled_out_not_blank(roberta_byte_bpe):
    """Byte-level BPE reads U+3000 standing alone as a word, masked like any other: it was shown as
    an empty [[ ]], an empty box in HTML, and a bar without a word in the picture."""
    from diffmask_fast._display import printable_word
    from diffmask_fast.preview import preview, render_html, render_text

    collator = DifferenceMaskingCollator(roberta_byte_bpe, ScoreTable.from_mapping({"protein": 1.0}),
                                         mlm_probability=0.5, seed=0)
    words = preview(collator, ["protein \u3000 binds \u00a0 the ligand"])[0]
    assert [w.text for w in words] == ["protein", "\u3000", "binds", "\xa0", "the", "ligand"]
    assert [w.score for w in words] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    text = render_text([words], show_scores=True)
    assert "\\u3000:0.00" in text and "\\xa0:0.00" in text, text
    assert "></span>" not in render_html([words]) and "\\u3000</span>" in render_html([words])
    assert [printable_word(word) for word in (" ", " \u3000", "", " a ")] == ["\\x20", "\\x20\\u3000", "(blank)", " a "]


def test_characters_that_are_not_printable_are_shown_escaped_in_text_html_and_tables():
    """A corpus word holding an escape sequence must not recolour the terminal; a zero-width or
    direction-changing character must not hide or reorder what is shown."""
    from diffmask_fast.anchors import Anchor, Anchors
    from diffmask_fast.preview import PreviewWord, render_html, render_text

    words = [PreviewWord("\x1b[31mred", 0.9, True, "ok\u202e"), PreviewWord("zero\u200bwidth", 0.1, False, None),
             PreviewWord("naïve", 0.5, False, None)]
    for shown in (render_text([words], show_scores=True), render_html([words])):
        assert "\x1b" not in shown and "\u200b" not in shown and "\u202e" not in shown, shown
        assert "\\x1b[31mred" in shown and "zero\\u200bwidth" in shown and "naïve" in shown, shown
    assert "ok\\u202e" in render_html([words])
    table = Anchors((Anchor("bell\x07", 5.0, 9, 1.0),), 100, 1e12, 1, 10.0).table()
    assert "\x07" not in table and "bell\\x07" in table, table


def test_a_line_of_right_to_left_words_reads_from_the_right():
    """Lines were laid out left to right whatever their words: a Hebrew line was aligned left, and
    a number or the full stop at its end landed on the wrong side of it. Each line takes the
    direction of its first letter; words are not isolated from each other, so that an English
    phrase in a Hebrew line (and a Hebrew one in an English line) reads as written."""
    from diffmask_fast.preview import PreviewWord, render_html

    hebrew = [PreviewWord("\u05d7\u05dc\u05d1\u05d5\u05df", 0.9, True, None), PreviewWord("3", 0.1, False, None),
              PreviewWord("kinase", 0.5, False, None), PreviewWord("binds", 0.2, False, None)]
    page = render_html([hebrew, [PreviewWord("kinase", 0.5, False, None)]])
    assert page.count("<p dir='auto'>") == 2, page
    spans = re.findall(r'<span ([^>]*)>([^<]*)</span>', page)
    assert [text for _, text in spans] == ["\u05d7\u05dc\u05d1\u05d5\u05df", "3", "kinase", "binds", "kinase"]
    assert not any("dir=" in attributes for attributes, _ in spans), page


def test_words_written_in_double_brackets_are_not_shown_as_masked_words():
    """Wiki markup "[[Paris]]" is one word to a byte-level BPE: unmasked, it printed exactly as a
    masked "Paris". Brackets in a word holding "[[" or "]]" are shown escaped."""
    from diffmask_fast.preview import PreviewWord, render_text

    def shown(text: str, masked: bool) -> str:
        return render_text([[PreviewWord(text, 0.5, masked, None)]])

    assert shown("[[Paris]]", False) == "\\[\\[Paris\\]\\]" != shown("Paris", True) == "[[Paris]]"
    assert shown("[[Paris]]", True) == "[[\\[\\[Paris\\]\\]]]"
    assert shown("[14]", False) == "[14]" and shown("x]", False) == "x]"  # no "[[" or "]]": as they are
    # Masked, a word's own bracket at its edge ran into the marks: "[[protein]]]" read as a masked
    # "protein" and a "]".
    assert shown("protein]", True) == "[[protein\\]]]" and shown("[cells", True) == "[[\\[cells]]"
    assert shown("[", True) == "[[\\[]]" and shown("a[1", True) == "[[a[1]]"
    # A masked word ending in a backslash read as an escaped bracket ("[[C:\\]]"); in a word whose
    # brackets are escaped, backslashes are doubled, so an escape reads one way.
    assert shown("C:\\", True) == "[[C:\\\\]]" and shown("C:\\", False) == "C:\\"
    assert shown("\\]", True) == "[[\\\\\\]]]" != shown("]", True) == "[[\\]]]"
    assert shown("a\\b", True) == "[[a\\b]]"  # nothing ambiguous: as it is


def test_huge_table_scores_are_shown_short(bert_wordpiece):
    """A table's score of 1e30 printed as 31 digits in the text preview."""
    from diffmask_fast.preview import PreviewWord, render_html, render_text

    words = [PreviewWord("protein", 1e30, True, None), PreviewWord("cell", 12345.678, False, None),
             PreviewWord("of", 0.123456, False, None)]
    assert render_text([words], show_scores=True) == "[[protein:1e+30]] cell:1.23e+04 of:0.12"
    page = render_html([words])
    assert 'title="score 1e+30"' in page and 'title="score 1.23e+04"' in page and 'title="score 0.123"' in page


def test_a_document_with_no_words_is_shown_as_such_not_as_a_blank_line(bert_wordpiece):
    from diffmask_fast.preview import NO_WORDS, PreviewWord, preview, render_html, render_text

    collator = DifferenceMaskingCollator(bert_wordpiece, ScoreTable.from_mapping({"enzyme": 1.0}), seed=0)
    sentences = preview(collator, ["\u200b\u200b", "the enzyme"])
    assert sentences[0] == [] and [w.text for w in sentences[1]] == ["the", "enzyme"]
    assert render_text(sentences).splitlines()[0] == NO_WORDS
    assert NO_WORDS in render_html(sentences) and NO_WORDS not in render_html([[PreviewWord("a", 0.0, False, None)]])


def test_a_document_of_unknown_tokens_is_not_said_to_be_read_as_nothing(bert_wordpiece):
    """WordPiece reads a word of over 100 characters as [UNK], which is never masked: the preview
    said the tokenizer reads nothing in the document."""
    from diffmask_fast.preview import NO_WORDS, preview, render_text

    collator = DifferenceMaskingCollator(bert_wordpiece, ScoreTable.from_mapping({"enzyme": 1.0}), seed=0)
    assert bert_wordpiece.tokenize("x" * 120) == ["[UNK]"]
    assert render_text(preview(collator, ["x" * 120])) == "[UNK]"
    assert render_text(preview(collator, ["\u200b"])) == NO_WORDS


def test_masking_rates_are_ranked_by_rate_not_by_score(bert_wordpiece):
    """"ligand" (score 0.5) is the only scored word of its row and is masked in every draw; the
    words scored 1.0 share one row's single masked word."""
    from diffmask_fast.preview import masking_rates

    table = ScoreTable.from_mapping({"ligand": 0.5, "kinase": 1.0, "receptor": 1.0, "enzyme": 1.0, "protein": 1.0})
    collator = DifferenceMaskingCollator(bert_wordpiece, table, mlm_probability=0.25, seed=0)
    rates = masking_rates(collator, ["ligand the the the", "kinase receptor enzyme protein"], draws=20)
    assert rates[0].word == "ligand" and rates[0].rate == 1.0
    assert [r.rate for r in rates] == sorted((r.rate for r in rates), reverse=True)
    assert all(r.rate < 1.0 for r in rates if r.score == 1.0)


def test_the_html_page_escapes_what_it_shows_and_marks_every_kind_of_word():
    from diffmask_fast.preview import PreviewWord, _replacement, render_html

    assert _replacement([4, 999], [5, 6], mask=4) == "mixed" and _replacement([998, 999], [5, 6], mask=4) == "random"
    assert _replacement([4, 4], [5, 6], mask=4) == "mask" and _replacement([5, 6], [5, 6], mask=4) == "kept"
    page = render_html([[PreviewWord("<b>&", 0.1, False, 'a"b<'), PreviewWord("x", 0.5, True, None),
                         PreviewWord("[UNK]", math.nan, False, None, unknown=True),
                         PreviewWord("far", -1e30, False, None)]], title="A</title><script>")
    assert "<b>&" not in page and "&lt;b&gt;&amp;</span>" in page
    assert 'nearest anchor: a&quot;b&lt;"' in page and "<script>" not in page
    assert "<title>A&lt;/title&gt;&lt;script&gt;</title>" in page
    styles = shading(page)
    assert "2px solid" in styles["x"], "masked, with nothing said of its replacement: the mask token"
    assert "color: #888" in styles["[UNK]"] and "color" not in styles["x"]
    assert 'title="score -1e+30"' in page


def test_a_word_ending_in_double_brackets_alone_is_shown_escaped():
    from diffmask_fast.preview import PreviewWord, render_text

    assert render_text([[PreviewWord("Paris]]", 0.5, False, None)]]) == "Paris\\]\\]"
    assert render_text([[PreviewWord("[[Paris", 0.5, False, None)]]) == "\\[\\[Paris"


def test_left_padded_rows_say_what_the_model_reads_in_each_word(bert_wordpiece, seed):
    import copy

    tokenizer = copy.deepcopy(bert_wordpiece)
    tokenizer.padding_side = "left"
    table = ScoreTable.from_mapping({"kinase": 1.0, "binds": 0.5})
    collator = DifferenceMaskingCollator(tokenizer, table, seed=seed, mlm_probability=1.0, mask_replace_prob=1.0,
                                         random_replace_prob=0.0)
    texts = ["the kinase binds", "the kinase binds the receptor of the cell in the tissue"]
    masked = [word for row in preview(collator, texts) for word in row if word.masked]
    assert len(masked) == sum(len(text.split()) for text in texts), "every word, in rows of two lengths"
    assert {word.replacement for word in masked} == {"mask"}


def test_words_masked_at_the_same_rate_are_listed_by_score(bert_wordpiece):
    table = ScoreTable.from_mapping({"the": 0.2, "kinase": 0.9, "binds": 0.5})
    collator = DifferenceMaskingCollator(bert_wordpiece, table, seed=0, mlm_probability=1.0)
    rates = masking_rates(collator, ["the kinase binds"], draws=3)
    assert [rate.rate for rate in rates] == [1.0, 1.0, 1.0], "every word masked in every draw"
    assert [rate.word for rate in rates] == ["kinase", "binds", "the"]
