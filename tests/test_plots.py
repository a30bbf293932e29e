"""How often each word is masked over many draws (``preview.masking_rates``) and the picture
drawn from it (``plots.plot_masking_rates``)."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest

from diffmask_fast.collator import DifferenceMaskingCollator
from diffmask_fast.plots import plot_masking_rates
from diffmask_fast.preview import masking_rates, preview, sample_documents
from diffmask_fast.scoring import ScoreTable

FILLER = ["the", "protein", "binds", "its", "ligand", "in", "cells", "with", "high", "affinity", "and", "no", "activity"]


def sentences(seed: int, rows: int, with_word: str | None = None) -> list[str]:
    """Rows of 5 to 12 plain words; ``with_word`` once in each, at a random place, capitalized or
    followed by a comma in some rows."""
    rng = random.Random(seed)
    texts = []
    for _ in range(rows):
        words = [rng.choice(FILLER) for _ in range(rng.randint(5, 12))]
        if with_word:
            words.insert(rng.randint(0, len(words)), rng.choice([with_word, with_word.capitalize(), with_word + ","]))
        texts.append(" ".join(words))
    return texts


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("tokenizer_name, return_tensors", [("bert_wordpiece", "pt"), ("roberta_byte_bpe", "np")])
def test_the_only_positive_word_is_masked_in_every_draw(request, tokenizer_name, seed, return_tensors, padding_side):
    # >= 6 words a row: a budget of at least one word. RoBERTa keeps case: "Kinase" and "kinase,"
    # are one word of the table. Rows differ in length, so left padding moves them.
    texts = sentences(seed, 12, with_word="kinase")
    tokenizer = copy.deepcopy(request.getfixturevalue(tokenizer_name))
    tokenizer.padding_side = padding_side
    collator = DifferenceMaskingCollator(tokenizer, ScoreTable.from_mapping({"kinase": 1.0}), seed=seed,
                                         return_tensors=return_tensors)
    rates = masking_rates(collator, texts, draws=30)
    assert rates[0].word == "kinase" and rates[0].rate == 1.0 and rates[0].score == 1.0, f"seed={seed}"
    assert rates[0].occurrences == 12 and rates[0].masked == 12 * 30 and rates[0].draws == 30
    assert all(r.rate < 1.0 and r.score == 0.0 for r in rates[1:]), f"seed={seed}"
    assert [r.rate for r in rates] == sorted((r.rate for r in rates), reverse=True)
    for row in preview(collator, texts):  # one draw, shown word by word
        assert [w.text.strip(",").lower() for w in row if w.masked].count("kinase") == 1, f"seed={seed} {row}"
        assert all(w.score == 0.0 for w in row if w.text.strip(",").lower() != "kinase")


def test_rates_are_counted_a_chunk_of_texts_at_a_time(bert_wordpiece, seed, monkeypatch):
    """Masking every text at once held them all in memory, growing with the sample."""
    from diffmask_fast import preview as preview_module

    texts = sentences(seed, 13, with_word="kinase")
    collator = DifferenceMaskingCollator(bert_wordpiece, ScoreTable.from_mapping({"kinase": 1.0}), seed=seed)
    whole = masking_rates(collator, texts, draws=4)
    calls = []
    monkeypatch.setattr(preview_module, "RATE_CHUNK_TEXTS", 5)
    call = DifferenceMaskingCollator.__call__
    monkeypatch.setattr(DifferenceMaskingCollator, "__call__", lambda self, rows: (calls.append(len(rows)), call(self, rows))[1])
    chunked = masking_rates(collator, texts, draws=4)
    assert calls == [5] * 4 + [5] * 4 + [3] * 4
    assert {r.word: r.occurrences for r in chunked} == {r.word: r.occurrences for r in whole}
    assert chunked[0].word == "kinase" and chunked[0].masked == 13 * 4


@pytest.mark.parametrize("look", ["preview", "masking_rates"])
@pytest.mark.parametrize("seeded", [True, False])
def test_a_look_at_the_masks_leaves_the_training_draws_as_they_were(bert_wordpiece, seed, look, seeded):
    """The README looks at a collator before handing it to a Trainer: a look that drew from the
    collator's stream (or, unseeded, from torch's) changed every mask training then drew."""
    import torch

    texts = sentences(seed, 12, with_word="kinase")
    table = ScoreTable({"kinase": 0.9, "ligand": 0.5})
    examples = [{"input_ids": bert_wordpiece(text)["input_ids"]} for text in texts]

    def first_batches(look_first: bool):
        torch.manual_seed(seed)
        collator = DifferenceMaskingCollator(bert_wordpiece, table, seed=seed if seeded else None)
        collator(examples[:2])  # a stream already in use is left where it was too
        if look_first:
            (preview(collator, texts) if look == "preview" else masking_rates(collator, texts, draws=3))
        return [collator(examples)["input_ids"] for _ in range(2)], torch.rand(3)

    (batches, after), (looked_batches, looked_after) = first_batches(False), first_batches(True)
    assert all(torch.equal(a, b) for a, b in zip(batches, looked_batches))
    assert torch.equal(after, looked_after), "torch's global RNG is left as it was"


def test_words_scored_alike_are_masked_at_the_budget_rate(bert_wordpiece, seed):
    texts = sentences(seed, 40)
    table = ScoreTable.from_mapping({"the": 1.0}, unknown_score=1.0)
    collator = DifferenceMaskingCollator(bert_wordpiece, table, mlm_probability=0.25, seed=seed)
    draws = 50
    rates = masking_rates(collator, texts, draws=draws)
    occurrences = sum(r.occurrences for r in rates)
    masked = sum(r.masked for r in rates)
    # Each row masks floor or ceil of p * n words, p * n in expectation: only the rounding varies.
    spread = math.sqrt(len(texts) * draws * 0.25) / (occurrences * draws)
    assert abs(masked / (occurrences * draws) - 0.25) < 5 * spread, f"seed={seed}"


def test_the_picture_format_follows_the_file_suffix(bert_wordpiece, tmp_path):
    collator = DifferenceMaskingCollator(bert_wordpiece, {"kinase": 1.0})
    rates = masking_rates(collator, ["the kinase binds its ligand"], draws=3)
    starts = {"rates.png": b"\x89PNG", "rates.PDF": b"%PDF", "rates.svg": b"<?xml", "rates": b"\x89PNG"}
    for name, start in starts.items():
        plot_masking_rates(rates, tmp_path / name, 0.25)
        assert (tmp_path / name).read_bytes().startswith(start), name
    with pytest.raises(ValueError, match=r"cannot draw a picture as .*rates.txt.*\.png, \.pdf, \.svg"):
        plot_masking_rates(rates, tmp_path / "rates.txt", 0.25)
    assert not (tmp_path / "rates.txt").exists()


def test_the_same_rates_draw_the_same_bytes_in_every_format(bert_wordpiece, tmp_path):
    """PDF, SVG and EPS carried the time they were drawn (and SVG random element ids)."""
    import time

    from diffmask_fast.plots import IMAGE_FORMATS

    collator = DifferenceMaskingCollator(bert_wordpiece, {"kinase": 1.0})
    rates = masking_rates(collator, ["the kinase binds its ligand"], draws=3)

    def drawn(folder):
        folder.mkdir()
        for suffix in IMAGE_FORMATS:
            plot_masking_rates(rates, folder / f"rates.{suffix}", 0.25)
        return {suffix: (folder / f"rates.{suffix}").read_bytes() for suffix in IMAGE_FORMATS}

    first = drawn(tmp_path / "first")
    time.sleep(1.1)  # the dates written have whole seconds
    second = drawn(tmp_path / "second")
    assert [suffix for suffix in IMAGE_FORMATS if first[suffix] != second[suffix]] == []


def test_bad_arguments(bert_wordpiece, tmp_path):
    collator = DifferenceMaskingCollator(bert_wordpiece, {"kinase": 1.0})
    with pytest.raises(ValueError, match="draws must be at least 1"):
        masking_rates(collator, ["the kinase"], draws=0)
    with pytest.raises(ValueError, match="no words"):
        masking_rates(collator, ["", ""])
    with pytest.raises(ValueError, match="no word masking rates"):
        plot_masking_rates([], tmp_path / "empty.png", 0.25)
    rates = masking_rates(collator, ["the kinase binds"], draws=2)
    for top in (0, 101):
        with pytest.raises(ValueError, match="top must be between 1 and 100"):
            plot_masking_rates(rates, tmp_path / "none.png", 0.25, top=top)
    assert not list(tmp_path.iterdir())


def test_collators_that_score_no_word_are_named(bert_wordpiece):
    from diffmask_fast.baselines import RandomTokenCollator, RandomWordCollator

    for collator in (RandomWordCollator(bert_wordpiece, seed=0), RandomTokenCollator(bert_wordpiece, seed=0)):
        for function in (preview, masking_rates):
            with pytest.raises(TypeError, match=f"DifferenceMaskingCollator's words; got a {type(collator).__name__}"):
                function(collator, ["the kinase binds"])


def drawn_figure(monkeypatch):
    """The figure the next plot draws, kept as it is saved."""
    from diffmask_fast import plots

    kept = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, path: (kept.append(figure), save(figure, path))[1])
    return kept


@pytest.mark.parametrize("similarity, meaning", [("max", "similarity to the nearest anchor"),
                                                 ("centroid", "similarity to the anchors' centroid"),
                                                 ("mean", "mean similarity to the anchors"),
                                                 ("given", "the score given in the table")])
def test_the_picture_says_what_the_scores_are_and_which_words_are_anchors(bert_wordpiece, tmp_path, seed,
                                                                           monkeypatch, similarity, meaning):
    """A centroid- or mean-scored table names no nearest anchor: its anchors were drawn as words,
    and the axis called every score the similarity to the nearest anchor."""
    from matplotlib.colors import to_hex

    from diffmask_fast.plots import _ANCHOR_COLOR, _WORD_COLOR

    nearest = {"kinase": 0, "ligand": 0} if similarity == "max" else None
    table = ScoreTable({"kinase": 0.9, "ligand": 0.6, "affinity": 0.3}, anchors=("Kinase",), nearest_anchor=nearest,
                       similarity=similarity)
    collator = DifferenceMaskingCollator(bert_wordpiece, table, seed=seed)
    kept = drawn_figure(monkeypatch)
    rates = masking_rates(collator, sentences(seed, 30, with_word="kinase"), draws=20)
    plot_masking_rates(rates, tmp_path / "rates.png", 0.25, anchors=table.anchors, similarity=similarity)
    most, against_score = kept[0].axes
    assert against_score.get_xlabel() == f"word score s(w): {meaning}"
    labels = [t.get_text() for t in most.get_yticklabels()]
    colors = {label.split(" ")[0]: to_hex(bar.get_facecolor()) for label, bar in zip(labels, most.patches)}
    assert colors["kinase"] == _ANCHOR_COLOR and colors["ligand"] == _WORD_COLOR, colors
    assert ("nearest anchor" in most.get_title()) == (similarity == "max")
    legend = {text.get_text(): handle for text, handle in zip(most.get_legend().get_texts(),
                                                              most.get_legend().legend_handles)}
    assert to_hex(legend["anchor"].get_facecolor()) == _ANCHOR_COLOR, "the swatch is the anchors' colour"
    assert to_hex(legend["other word"].get_facecolor()) == _WORD_COLOR
    with pytest.raises(ValueError, match="unknown similarity 'nearest'"):
        plot_masking_rates(rates, tmp_path / "x.png", 0.25, similarity="nearest")


def test_the_uniform_line_is_labelled_with_the_probability_it_is_drawn_at(bert_wordpiece, tmp_path, seed,
                                                                          monkeypatch):
    """Rounded to whole percent, a line drawn at 0.125 was labelled 12%, and one at 0.004, 0%."""
    collator = DifferenceMaskingCollator(bert_wordpiece, ScoreTable({"kinase": 0.9}), seed=seed)
    rates = masking_rates(collator, sentences(seed, 10, with_word="kinase"), draws=5)
    for probability, shown in [(0.125, "12.5%"), (0.004, "0.4%"), (0.25, "25%")]:
        kept = drawn_figure(monkeypatch)
        plot_masking_rates(rates, tmp_path / "rates.png", probability)
        labels = [text.get_text() for text in kept[0].axes[0].get_legend().get_texts()]
        assert f"every word alike ({shown})" in labels, labels


def test_each_noted_word_has_a_line_to_its_own_dot(bert_wordpiece, tmp_path, seed, monkeypatch):
    """The three most masked words are named beside the scatter: labels stepped down a line each
    sat beside other words' dots, so a line leads from each label to its word."""
    table = ScoreTable({"kinase": 0.9, "ligand": 0.8, "affinity": 0.7, "binds": 0.6}, anchors=("enzyme",))
    collator = DifferenceMaskingCollator(bert_wordpiece, table, seed=seed)
    kept = drawn_figure(monkeypatch)
    rates = masking_rates(collator, sentences(seed, 30, with_word="kinase"), draws=10)
    plot_masking_rates(rates, tmp_path / "rates.png", 0.25, anchors=table.anchors)
    _, against_score = kept[0].axes
    notes = [text for text in against_score.texts if hasattr(text, "xy")]
    assert [note.get_text() for note in notes] == [r.word for r in rates[:3]]
    for note, rate in zip(notes, rates):
        assert note.xy == (rate.score, rate.rate) and note.arrow_patch is not None, note.get_text()
    assert len({note.xyann for note in notes}) == len(notes), "each label a line of its own"


def test_a_rate_without_occurrences_is_named(tmp_path):
    from diffmask_fast.preview import WordMaskingRate

    with pytest.raises(ValueError, match="'a' has 0 occurrence"):
        plot_masking_rates([WordMaskingRate("a", 0.1, 0, 0, 10, None)], tmp_path / "x.png", 0.25)


def test_the_picture_is_a_png_written_in_one_piece(bert_wordpiece, tmp_path, seed):
    texts = sentences(seed, 30, with_word="kinase")
    table = ScoreTable.from_mapping({"kinase": 1.0, "ligand": 0.6, "affinity": 0.3}, unknown_score=0.05)
    collator = DifferenceMaskingCollator(bert_wordpiece, table, seed=seed)
    path = tmp_path / "figures" / "masking.png"
    assert plot_masking_rates(masking_rates(collator, texts, draws=20), path, 0.25) == path
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert [p.name for p in path.parent.iterdir()] == ["masking.png"]  # no temporary file left behind


def test_the_comparison_picture_with_and_without_pretraining_curves(tmp_path):
    from diffmask_fast.finetune import FinetuneReport, SeedResult
    from diffmask_fast.plots import plot_comparison

    def report(scores):
        return FinetuneReport("m", [0, 1], [SeedResult(i, 1, {"accuracy": s, "macro_f1": s}, {"accuracy": s, "macro_f1": s})
                                            for i, s in enumerate(scores)])

    reports = {"none": report([0.7, 0.6]), "difference": report([0.8]), "random-word": report([0.75, 0.77, 0.76])}
    summaries = {"none": None, "difference": {"validation_loss_before": 9.0, "log_history": [{"step": 5, "eval_loss": 8.0}]},
                 "random-word": {"validation_loss_before": 9.1, "log_history": []}}
    for name, given in (("curves.png", summaries), ("scores.png", None)):
        path = plot_comparison(reports, tmp_path / name, given, split="dev", metric="accuracy")
        assert path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="no fine-tuning reports"):
        plot_comparison({}, tmp_path / "none.png")
    with pytest.raises(ValueError, match="split must be"):
        plot_comparison(reports, tmp_path / "bad.png", split="train")
    reports["mslm"] = FinetuneReport("m", [0, 1], [SeedResult(0, 1, {"accuracy": 0.7, "macro_f1": 0.7}, None)])
    with pytest.raises(ValueError, match="the fine-tuning of 'mslm' has no test results to draw; draw split='dev'"):
        plot_comparison(reports, tmp_path / "test.png")  # "this report has no test results": which?
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "scores.png"]


def test_control_characters_in_words_are_drawn_as_question_marks(tmp_path):
    import warnings

    from diffmask_fast.preview import WordMaskingRate

    rates = [WordMaskingRate("a\x80b", 0.9, 3, 5, 2, "anchor\x07"), WordMaskingRate("anchor\x07", 1.0, 2, 4, 2, "anchor\x07")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph missing from the font warns
        assert plot_masking_rates(rates, tmp_path / "words.png", 0.25).is_file()
    with pytest.raises(TypeError, match="anchors must be a list of anchor words, not one string"):
        plot_masking_rates(rates, tmp_path / "anchor.png", 0.25, anchors="anchor")


def test_the_pretraining_picture_takes_one_summary_or_several(tmp_path):
    from diffmask_fast.plots import plot_pretraining

    def summary(strategy, before):
        return {"strategy": strategy, "validation_loss_before": before,
                "log_history": [{"step": 5, "loss": before - 0.5}, {"step": 10, "eval_loss": before - 1.0},
                                {"step": 10, "loss": before - 0.9}]}

    assert plot_pretraining(summary("difference", 9.0), tmp_path / "one.png").read_bytes().startswith(b"\x89PNG")
    several = {"difference": summary("difference", 9.0), "random-word": summary("random-word", 9.2), "none": None}
    assert plot_pretraining(several, tmp_path / "several.png").is_file()
    with pytest.raises(ValueError, match="no losses"):
        plot_pretraining({"strategy": "x", "validation_loss_before": None, "log_history": []}, tmp_path / "no.png")
    # A summary without its log is one summary still, not a mapping of runs.
    assert plot_pretraining({"strategy": "x", "validation_loss_before": 3.0}, tmp_path / "before.png").is_file()
    with pytest.raises(TypeError, match="summaries must be a mapping of run name to summary"):
        plot_pretraining([summary("difference", 9.0)], tmp_path / "list.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["before.png", "one.png", "several.png"]


def test_loss_curves_keep_the_first_evaluation_of_a_step():
    from diffmask_fast.plots import _training_curve, _validation_curve

    summary = {"validation_loss_before": 9.0, "log_history": [
        {"step": 10, "loss": 8.5}, {"step": 10, "eval_loss": 8.0}, {"step": 20, "eval_loss": 8.2},
        {"step": 20, "eval_loss": 8.0},  # the best checkpoint (step 10), evaluated again after training
    ]}
    assert _validation_curve(summary) == [(0, 9.0), (10, 8.0), (20, 8.2)]
    assert _training_curve(summary) == [(10, 8.5)]
    assert _validation_curve({"validation_loss_before": None, "log_history": None}) == []


def test_sample_documents_draws_each_document_equally_often_in_one_pass():
    documents = [f"document {i}" for i in range(20)]
    seed = random.randrange(2**30)
    picked = [0] * 20
    runs = 3000
    for run in range(runs):
        small, large, none = sample_documents(iter(documents), (3, 50, 0), seed + 3 * run)
        assert len(small) == len(set(small)) == 3 and sorted(large) == sorted(documents) and none == []
        for document in small:
            picked[int(document.split()[1])] += 1
    expected = runs * 3 / 20  # each document is in a sample of 3 with probability 3/20
    spread = math.sqrt(runs * (3 / 20) * (17 / 20))
    assert all(abs(count - expected) < 5 * spread for count in picked), picked
    assert sample_documents(documents, (4,), seed) == sample_documents(iter(documents), (4,), seed)
    assert sample_documents([], (4, 2), seed) == [[], []]


def test_dollar_signs_in_words_are_drawn_as_text_not_formulas(tmp_path, monkeypatch, seed):
    """A corpus word or anchor such as "$x^$" or "$\\frac$" is no formula for matplotlib to parse."""
    from diffmask_fast import plots
    from diffmask_fast.preview import WordMaskingRate

    rng = random.Random(seed)
    odd = ["$x^$", "$\\frac$", "$", "US$5", "$a$b$", "$$"]
    anchor = rng.choice(odd)
    words = rng.sample(odd, 4) + ["kinase"]
    rates = [WordMaskingRate(anchor, 1.0, 3, 5, 2, anchor)]
    rates += [WordMaskingRate(word, rng.random(), 3, 5, 2, anchor) for word in words]
    drawn = []
    save = plots._save

    def keep_and_save(figure, path):
        drawn.append(figure)
        return save(figure, path)

    monkeypatch.setattr(plots, "_save", keep_and_save)
    path = plot_masking_rates(rates, tmp_path / "dollars.png", 0.25)
    assert path.read_bytes().startswith(b"\x89PNG")
    bars, dots = drawn[0].axes[:2]
    labels = bars.get_yticklabels()
    assert [label.get_text() for label in labels] == ["".join(plots._label(r, r.word == anchor)) for r in rates[::-1]]
    assert any("$" in label.get_text() for label in labels) and not any(label.get_parse_math() for label in labels)
    assert "kinase (" in labels[0].get_text() and "$" in labels[0].get_text()  # texts as given
    notes = dots.texts
    assert notes and all(not note.get_parse_math() and note.get_text() in words for note in notes)


def test_the_pretraining_picture_of_a_summary_read_back_with_null_losses(tmp_path):
    """JSON holds a diverged run's NaN losses as null: the picture leaves those points out."""
    from diffmask_fast.plots import plot_pretraining

    summary = {"strategy": "difference", "validation_loss_before": None,
               "log_history": [{"step": 5, "loss": 8.0}, {"step": 10, "eval_loss": None}, {"step": 10, "loss": None},
                               {"step": 20, "eval_loss": 7.0}]}
    assert plot_pretraining(summary, tmp_path / "nan.png").read_bytes().startswith(b"\x89PNG")


def test_the_masking_rate_picture_draws_rates_against_scores(tmp_path, monkeypatch):
    """The bars are the top words' masking rates (not their scores), and each dot sits at (score,
    rate) of its word."""
    from diffmask_fast.preview import WordMaskingRate

    # most masked first, as masking_rates returns them; scores in another order than rates
    rates = [WordMaskingRate("kinase", 0.2, 4, 36, 10, None), WordMaskingRate("ligand", 0.9, 5, 30, 10, None),
             WordMaskingRate("binds", 0.5, 2, 8, 10, None), WordMaskingRate("the", 0.1, 8, 8, 10, None),
             WordMaskingRate("of", 0.3, 6, 3, 10, None)]
    kept = drawn_figure(monkeypatch)
    plot_masking_rates(rates, tmp_path / "rates.png", 0.25, top=2)
    bars, dots = kept[0].axes[:2]
    assert [label.get_text().split(" ")[0] for label in bars.get_yticklabels()] == ["ligand", "kinase"]
    assert [patch.get_width() for patch in bars.patches] == pytest.approx([0.6, 0.9]), "bar length = rate"
    [words] = dots.collections
    np.testing.assert_allclose(np.asarray(words.get_offsets()), [[r.score, r.rate] for r in rates])
    assert dots.get_title().startswith("5 distinct words over 10 draws"), "every word's dot, not the bars' two"


def test_a_lone_training_loss_is_drawn_as_a_dot(tmp_path, monkeypatch):
    """A line through one point draws nothing: a run that logged one training loss, or a loss between
    diverged (NaN) ones, gets a dot there; a line that joins its points gets none."""
    from diffmask_fast.plots import plot_pretraining

    kept = drawn_figure(monkeypatch)
    runs = {"one": {"validation_loss_before": 9.0, "log_history": [{"step": 5, "loss": 8.5}, {"step": 5, "eval_loss": 8.0}]},
            "gap": {"validation_loss_before": 9.0, "log_history": [{"step": 5, "loss": 8.0}, {"step": 10, "loss": None},
                                                                   {"step": 15, "loss": 7.5}, {"step": 20, "loss": 7.0}]},
            "joined": {"validation_loss_before": 9.0, "log_history": [{"step": 5, "loss": 8.0}, {"step": 10, "loss": 7.5}]}}
    plot_pretraining(runs, tmp_path / "losses.png")
    training = {line.get_label(): line for line in kept[0].axes[0].lines if line.get_label().endswith(", training")}
    assert training["one, training"].get_marker() == "o" and training["one, training"].get_markevery() == [0]
    assert training["one, training"].get_xydata().tolist() == [[5, 8.5]]
    assert training["gap, training"].get_marker() == "o" and training["gap, training"].get_markevery() == [0]
    assert training["joined, training"].get_marker() in ("None", None, "")


def chemical_name(rng: random.Random, length: int) -> str:
    """A systematic chemical name of about ``length`` characters, as ChemProt's are."""
    parts = ["methyl", "ethyl", "phenyl", "amino", "chloro", "hydroxy", "benzyl", "pyridin", "carbonyl", "oxo"]
    name = f"{rng.randint(1, 9)}-"
    while len(name) < length:
        name += f"({rng.randint(1, 9)}-{rng.choice(parts)})" if rng.random() < 0.3 else rng.choice(parts)
    return name + "amide"


def test_long_words_are_drawn_shortened_and_told_apart(tmp_path, monkeypatch, seed):
    """Chemical names of 110 to 160 characters were drawn whole as labels, and the picture was all
    labels. Drawn cut to their start and end, words cut alike still read as different labels,
    and short words are drawn as they are."""
    from diffmask_fast import plots
    from diffmask_fast.preview import WordMaskingRate

    rng = random.Random(seed)
    long_anchor, start = chemical_name(rng, 140), chemical_name(rng, 60)
    twins = [start + middle + "-4-carboxamide" for middle in (chemical_name(rng, 70), chemical_name(rng, 80))]
    words = [chemical_name(rng, rng.randint(110, 160)) for _ in range(6)]
    rates = [WordMaskingRate(long_anchor, 1.0, 3, 5, 9, long_anchor)]
    rates += [WordMaskingRate(twin, 0.5, 3, 5, 9, "kinase") for twin in twins]  # labelled alike but for the middle
    rates += [WordMaskingRate(word, rng.random(), 3, 5, 9, rng.choice([long_anchor, "kinase", None])) for word in words]
    short = [("kinase", None), ("a\x07b", "kinase"), ("ligand", None)]
    rates += [WordMaskingRate(word, rng.random(), 3, 4, 9, anchor) for word, anchor in short]
    words += twins
    kept = drawn_figure(monkeypatch)
    plot_masking_rates(rates, tmp_path / "chemicals.png", 0.25, anchors=[long_anchor], top=len(rates))
    bars, dots = kept[0].axes[:2]
    labels = [label.get_text() for label in bars.get_yticklabels()]
    assert len(labels) == len(rates) and len(set(labels)) == len(labels), labels
    assert all(len(label) <= plots._LABEL_LIMIT for label in labels), labels
    assert any(label.startswith(start[:8]) and "#2" in label for label in labels), "twins are told apart"
    short = ["".join(plots._label(r, False)).replace("\x07", "\\x07") for r in rates[-3:]]
    assert short[1] == "a\\x07b (" + f"{rates[-2].score:.2f}, kinase)" and set(short) <= set(labels), "short labels stay"
    notes = [note.get_text() for note in dots.texts]
    assert len(notes) == len(set(notes)) == 3 and all(len(note) <= plots._LABEL_LIMIT for note in notes), notes
    assert notes[1].endswith("#2") and "\u2026" in notes[0], "the twins' notes are told apart too"
    assert all(any(note[:5] in word for word in words) for note in notes)


def test_shown_labels_keep_each_words_start_and_end():
    from diffmask_fast.plots import _shown_labels

    long = "N-(2-chloro-6-methylphenyl)-2-[(6-{4-(2-hydroxyethyl)piperazin-1-yl}-2-methylpyrimidin-4-yl)amino]"
    [word, with_anchor, both_long, alone] = _shown_labels(
        [(long,), (long, " (0.83, ", "kinase", ")"), (long, " (0.83, ", long, ")"), ("kinase", " (0.83)")], limit=30)
    assert word == long[:15] + "\u2026" + long[-14:]
    assert with_anchor.endswith(" (0.83, kinase)") and len(with_anchor) == 30 and with_anchor.startswith(long[:7])
    assert " (0.83, " in both_long and len(both_long) == 30 and both_long.count("\u2026") == 2
    assert alone == "kinase (0.83)"
    assert _shown_labels([("a\tb",)]) == ["a\\tb"]


def test_labels_cut_alike_are_numbered_apart_and_never_repeat_a_short_label():
    from diffmask_fast.plots import _LABEL_LIMIT, _score_axis, _shown_labels

    words = ["abcdefghijklmnopq" + middle * 30 + "rstuvwxyzABCDEFGH" for middle in "XYZ"]
    labels = _shown_labels([(word, " (0.50)") for word in words])
    assert len(set(labels)) == 3 and labels[1].endswith("#2 (0.50)") and labels[2].endswith("#3 (0.50)"), labels
    assert all(len(label) == _LABEL_LIMIT for label in labels), "a number takes room from the word"
    assert _shown_labels([("abcdefghijklmnop", " (0.50)")], limit=10) == ["abc\u2026op (0.50)"], "6 characters at least"
    long = "a" * 30 + "b" * 30
    [cut] = _shown_labels([(long, " (0.50)")])
    short = cut[: -len(" (0.50)")]  # a word spelled as the long one's label
    assert len(short) + len(" (0.50)") <= _LABEL_LIMIT
    shown = _shown_labels([(long, " (0.50)"), (short, " (0.50)")])
    assert len(set(shown)) == 2 and shown[1] == short + " (0.50)", shown
    assert _score_axis([0.5, 3.0])[1] > 3.0 and _score_axis([3.0, 0.5])[1] > 3.0, "the highest score in view"
    assert _score_axis([0.5]) == pytest.approx((-0.03, 1.03)), "similarities below 1 on the whole [0, 1] axis"
    assert _score_axis([-2.0, math.nan]) == pytest.approx((-2.09, 1.09))


def test_words_whose_escapes_read_alike_get_labels_apart(monkeypatch):
    """A control character or one the fonts lack is drawn as its escape, which a corpus word can
    spell as it is ("a\\tb" beside "a<TAB>b"): the two bars had one label."""
    import diffmask_fast.plots as plots

    monkeypatch.setattr(plots, "_drawable_characters", lambda: frozenset(range(128)))
    tab, spelled = ("a\tb", " (0.50)"), ("a\\tb", " (0.50)")
    chinese, escape = ("\u767d", " (0.40)"), ("\\u767d", " (0.40)")
    shown = plots._shown_labels([tab, spelled, chinese, escape, tab, ("a", " (0.50)")])
    assert shown == ["a\\tb (0.50)", "a\\tb#2 (0.50)", "\\u767d (0.40)", "\\u767d#2 (0.40)", "a\\tb (0.50)",
                     "a (0.50)"], shown
    assert plots._shown_labels([spelled, tab]) == ["a\\tb (0.50)", "a\\tb#2 (0.50)"], "the first drawn as it is"


def test_labels_with_right_to_left_names_keep_their_order(tmp_path, monkeypatch):
    """The text layout reordered a whole label around a Hebrew or Arabic word: "שלום (protein ,0.80)".
    Its names are isolated after a left-to-right mark; other labels are drawn as they are."""
    import diffmask_fast.plots as plots
    from diffmask_fast.plots import _shown_labels
    from diffmask_fast.preview import WordMaskingRate

    hebrew, arabic, long = "\u05e9\u05dc\u05d5\u05dd", "\u0628\u0631\u0648\u062a\u064a\u0646", "\u05d0" * 60
    # As if the fonts had these letters (matplotlib's own DejaVu Sans lacks Arabic in some releases)
    fonts_have = plots._drawable_characters()
    monkeypatch.setattr(plots, "_drawable_characters", lambda: fonts_have | set(map(ord, hebrew + arabic + long)))
    [one, both, plain, cut] = _shown_labels([(hebrew, " (0.80, ", "protein", ")"), ("kinase", " (0.90, ", arabic, ")"),
                                             ("kinase", " (0.83)"), (long, " (0.5)")], limit=30)
    assert one == f"\u200e\u2068{hebrew}\u2069 (0.80, \u2068protein\u2069)"
    assert both == f"\u200e\u2068kinase\u2069 (0.90, \u2068{arabic}\u2069)" and plain == "kinase (0.83)"
    assert cut.startswith("\u200e\u2068\u05d0") and cut.endswith("\u2069 (0.5)") and "\u2026" in cut
    kept = drawn_figure(monkeypatch)
    rates = [WordMaskingRate(hebrew, 0.8, 10, 600, 100, "protein"), WordMaskingRate("protein", 1.0, 10, 700, 100,
                                                                                   "protein")]
    plot_masking_rates(rates, tmp_path / "rtl.png", 0.25, anchors=["protein"])
    labels = [label.get_text() for label in kept[0].axes[0].get_yticklabels()]
    assert f"\u200e\u2068{hebrew}\u2069 (0.80, \u2068protein\u2069)" in labels and "protein (1.00)" in labels


def test_a_table_that_keeps_case_colours_its_own_anchors(roberta_byte_bpe, tmp_path, seed, monkeypatch):
    """The anchors were lowercased to pick them out, whatever the table: "Kinase" was drawn as a
    word, and "kinase", another word of a table that keeps case, as the anchor."""
    from matplotlib.colors import to_hex

    from diffmask_fast.plots import _ANCHOR_COLOR, _WORD_COLOR

    table = ScoreTable({"Kinase": 1.0, "kinase": 0.2, "ligand": 0.6}, anchors=("Kinase",), similarity="centroid",
                       lowercase=False)
    collator = DifferenceMaskingCollator(roberta_byte_bpe, table, seed=seed)
    rates = masking_rates(collator, ["the Kinase binds its ligand in cells with kinase"] * 6, draws=10)
    kept = drawn_figure(monkeypatch)
    plot_masking_rates(rates, tmp_path / "case.png", 0.25, anchors=table.anchors, similarity=table.similarity,
                       lowercase=table.lowercase)
    most = kept[0].axes[0]
    colors = {label.get_text().split(" ")[0]: to_hex(bar.get_facecolor())
              for label, bar in zip(most.get_yticklabels(), most.patches)}
    assert colors["Kinase"] == _ANCHOR_COLOR and colors["kinase"] == _WORD_COLOR, colors


def test_characters_the_fonts_lack_are_drawn_as_escapes_not_boxes(tmp_path, monkeypatch):
    """Chinese words were drawn as rows of empty boxes, alike for different words, with a warning
    per missing glyph."""
    import warnings

    from diffmask_fast.preview import WordMaskingRate

    rates = [WordMaskingRate("白血病", 1.0, 3, 3, 2, "白血病"), WordMaskingRate("蛋白", 0.8, 3, 4, 2, "白血病"),
             WordMaskingRate("naïve", 0.3, 3, 1, 2, "白血病")]
    kept = drawn_figure(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_masking_rates(rates, tmp_path / "cjk.png", 0.25, anchors=["白血病"])
    bars, dots = kept[0].axes[:2]
    labels = [label.get_text() for label in bars.get_yticklabels()]
    # Bars by masking rate, the most masked at the top: 蛋白 (4 of 6), 白血病 (3 of 6), naïve (1 of 6).
    assert labels[0] == "naïve (0.30, \\u767d\\u8840\\u75c5)" and labels[1] == "\\u767d\\u8840\\u75c5 (1.00)", labels
    assert labels[2].startswith("\\u86cb\\u767d (0.80, \\u767d"), "cut to the label's room, as any long label"
    assert [note.get_text() for note in dots.texts] == ["\\u86cb\\u767d", "naïve"]


def test_a_blank_word_one_draw_and_equal_scores_read_as_they_are(tmp_path, monkeypatch):
    """The empty word (the key of U+3000 standing alone) had a bar without a name; titles said
    "1 distinct words over 1 draws"; scores all alike were spread over a zoomed axis (0.96 to 1.04)."""
    from diffmask_fast.preview import WordMaskingRate

    kept = drawn_figure(monkeypatch)
    plot_masking_rates([WordMaskingRate("", 1.0, 2, 1, 1, None)], tmp_path / "one.png", 0.25)
    bars, dots = kept[0].axes[:2]
    assert [label.get_text() for label in bars.get_yticklabels()] == ["(blank) (1.00)"]
    assert dots.get_title().startswith("1 distinct word over 1 draw (") and bars.get_title().startswith("The most ")
    low, high = dots.get_xlim()
    assert low <= 0.0 and high >= 1.0
    rates = [WordMaskingRate(w, 4.0, 2, 1, 3, None) for w in ("a", "b")]
    plot_masking_rates(rates, tmp_path / "two.png", 0.25)
    bars, dots = kept[1].axes[:2]
    assert dots.get_title().startswith("2 distinct words over 3 draws (") and bars.get_title().startswith("The 2 most ")
    low, high = dots.get_xlim()
    assert low <= 0.0 and high >= 4.0


def test_a_summary_of_nan_losses_alone_is_refused_not_drawn_as_empty_axes(tmp_path):
    from diffmask_fast.plots import plot_pretraining

    summary = {"strategy": "difference", "validation_loss_before": None,
               "log_history": [{"step": 2, "loss": None}, {"step": 2, "eval_loss": math.nan}]}
    with pytest.raises(ValueError, match=r"every loss .* is NaN or infinite \(2 logged\): the runs diverged"):
        plot_pretraining(summary, tmp_path / "nan.png")
    assert list(tmp_path.iterdir()) == []


def test_many_bars_get_a_taller_picture_and_huge_scores_short_labels(tmp_path, monkeypatch):
    """A label per bar: 100 bars stretch the picture rather than stack their labels into a smear;
    a score given as 1e30 is labelled in a few characters, not 31 digits."""
    from diffmask_fast.preview import WordMaskingRate

    rates = [WordMaskingRate(f"word{i}", 1e30 if i == 0 else i / 100, 3, 2, 10, None) for i in range(100)]
    kept = drawn_figure(monkeypatch)
    plot_masking_rates(rates, tmp_path / "few.png", 0.25, top=15)
    plot_masking_rates(rates, tmp_path / "many.png", 0.25, top=100)
    few, many = (figure.get_size_inches()[1] for figure in kept)
    assert few == 6 and many >= 100 * 0.2, (few, many)
    labels = [label.get_text() for label in kept[1].axes[0].get_yticklabels()]
    assert "word0 (1e+30)" in labels, labels[-3:]


def test_rates_in_any_order_draw_the_most_masked_words_and_a_table_cased_anchor(tmp_path, monkeypatch):
    """The bars took the first ``top`` rates as given (a list sorted by word drew the least masked
    under "most often masked"), and an anchor kept as given ("DNA") was drawn as an ordinary word:
    its nearest anchor, "DNA", is not its key, "dna"."""
    from diffmask_fast.preview import WordMaskingRate

    rates = [WordMaskingRate(f"w{i}", 0.1 * i, 10, i * 10, 10, "DNA") for i in range(10)]
    rates.append(WordMaskingRate("dna", 1.0, 10, 95, 10, "DNA"))
    random.Random(0).shuffle(rates)
    kept = drawn_figure(monkeypatch)
    plot_masking_rates(rates, tmp_path / "rates.png", 0.25, top=3)
    bars, dots = kept[0].axes[:2]
    assert [label.get_text().split(" ")[0] for label in bars.get_yticklabels()] == ["w8", "w9", "dna"]
    assert len({tuple(patch.get_facecolor()) for patch in bars.patches}) == 2, "the anchor's bar has its own colour"
    assert [text.get_text() for text in dots.get_legend().get_texts()][:2] == ["word", "anchor"]
    assert "dna" not in [note.get_text() for note in dots.texts], "an anchor noted as a most masked non-anchor"


def test_a_diverged_run_beside_a_trained_one_is_named_as_diverged_in_the_legend(tmp_path, monkeypatch):
    """A run whose every loss is NaN draws no point; its legend entries said nothing of why (a
    coloured line with no curve to match)."""
    from diffmask_fast.plots import plot_pretraining

    kept = drawn_figure(monkeypatch)
    trained = [{"step": 5, "loss": 8.0}, {"step": 10, "loss": 7.0}, {"step": 10, "eval_loss": 7.5}]
    runs = {"random": {"validation_loss_before": 9.0, "log_history": trained},
            "difference": {"validation_loss_before": None,
                           "log_history": [{"step": 5, "loss": None}, {"step": 10, "loss": math.nan},
                                           {"step": 10, "eval_loss": None}]}}
    plot_pretraining(runs, tmp_path / "losses.png")
    labels = [text.get_text() for text in kept[0].axes[0].get_legend().get_texts()]
    assert "random, training" in labels and "random, validation" in labels
    assert [label for label in labels if label.startswith("difference")] == [
        "difference, validation (diverged: every loss NaN)", "difference, training (diverged: every loss NaN)"]


@pytest.mark.parametrize("rates, problem", [
    ([(3, 7, 2)], r"'w0' was masked 7 times in 3 occurrence\(s\) over 2 draw\(s\)"),
    ([(3, -1, 2)], r"'w0' was masked -1 times"),
    ([(3, 1, 2), (2, 1, 5)], r"every rate must come from the same draws: 'w0' has 2 draw\(s\), 'w1' 5"),
    ([(0, 0, 2)], r"at least one occurrence and one draw; 'w0' has 0 occurrence\(s\) over 2 draw\(s\)"),
    ([(3, 0, 0)], r"at least one occurrence and one draw; 'w0' has 3 occurrence\(s\) over 0 draw\(s\)"),
])
def test_impossible_masking_rates_are_refused_by_word(tmp_path, rates, problem):
    """A hand-built rate above 1 drew a bar past the axis, and rates of different draw counts
    were all titled by the first's."""
    from diffmask_fast.preview import WordMaskingRate

    built = [WordMaskingRate(f"w{i}", 0.5, occurrences, masked, draws, None)
             for i, (occurrences, masked, draws) in enumerate(rates)]
    with pytest.raises(ValueError, match=problem):
        plot_masking_rates(built, tmp_path / "x.png", 0.25)
    assert list(tmp_path.iterdir()) == []


def _report(scores):
    from diffmask_fast.finetune import FinetuneReport, SeedResult

    return FinetuneReport("m", [0, 1], [SeedResult(i, 1, {"accuracy": s, "macro_f1": s}, {"accuracy": s, "macro_f1": s})
                                        for i, s in enumerate(scores)])


def test_run_names_and_titles_with_dollar_signs_are_drawn_as_text(tmp_path, monkeypatch):
    """A run named "cost $x^$" (or a title naming a folder with two "$") aborted the picture with
    matplotlib's formula parser."""
    from diffmask_fast.plots import plot_comparison, plot_pretraining

    kept = drawn_figure(monkeypatch)
    curve = {"validation_loss_before": 3.0, "log_history": [{"step": 10, "eval_loss": 2.0}, {"step": 10, "loss": 2.1}]}
    plot_comparison({"cost $x^$": _report([0.5, 0.6]), "b": _report([0.7])}, tmp_path / "c.png",
                    {"cost $x^$": curve, "b": None}, title="runs/$HOME_x^$")
    plot_pretraining({"a$x^$": curve}, tmp_path / "p.png", title="a $x^$ title")
    for figure in kept:
        texts = [figure._suptitle] + [t for axes in figure.axes for t in axes.get_xticklabels()]
        texts += [t for axes in figure.axes if axes.get_legend() for t in axes.get_legend().get_texts()]
        assert any("$x^$" in t.get_text() for t in texts[1:]) and "x^$" in texts[0].get_text()
        assert not any(t.get_parse_math() for t in texts if "$" in t.get_text())


def test_a_comparison_of_many_runs_widens_and_slants_its_names(tmp_path, monkeypatch):
    from diffmask_fast.plots import plot_comparison

    kept = drawn_figure(monkeypatch)
    plot_comparison({f"strategy-number-{i}-with-a-rather-long-name-{i}": _report([0.5, 0.6, 0.7]) for i in range(30)},
                    tmp_path / "many.png")
    plot_comparison({"a": _report([0.5]), "b": _report([0.6])}, tmp_path / "few.png")
    many, few = kept
    assert many.get_figwidth() > 2 * few.get_figwidth()
    ticks = many.axes[0].get_xticklabels()
    assert len({t.get_text() for t in ticks}) == 30 and all(len(t.get_text()) <= 36 for t in ticks)
    assert all(t.get_rotation() == 35 for t in ticks) and not many.axes[0].texts  # no means run together
    assert [t.get_rotation() for t in few.axes[0].get_xticklabels()] == [0, 0] and len(few.axes[0].texts) == 2
    from diffmask_fast import plots

    plot_comparison({f"r{i}": _report([0.5]) for i in range(plots._ROOMY_RUNS)}, tmp_path / "roomy.png")
    roomy = kept[2].axes[0]
    assert {t.get_rotation() for t in roomy.get_xticklabels()} == {0} and len(roomy.texts) == plots._ROOMY_RUNS
    # Summaries without a validation loss have no curve to draw: no panel for them.
    plot_comparison({"a": _report([0.5])}, tmp_path / "curveless.png",
                    summaries={"a": {"log_history": [{"loss": 2.0, "step": 1}]}})
    assert len(kept[3].axes) == 1


def test_a_seed_whose_metric_is_nan_is_named_not_dropped_silently(tmp_path, monkeypatch):
    """A report read back with a null metric drew one dot and no mean, as if the run had one seed."""
    from matplotlib.collections import PathCollection

    from diffmask_fast.plots import plot_comparison

    kept = drawn_figure(monkeypatch)
    plot_comparison({"dm": _report([0.5, math.nan, 0.7]), "lost": _report([math.nan]), "ok": _report([0.6])},
                    tmp_path / "nan.png")
    axes = kept[0].axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["dm\n(1 of 3 seeds NaN)", "lost\n(1 of 1 seed NaN)", "ok"]
    assert [t.get_text() for t in axes.texts] == ["60.0", "60.0"]  # dm's mean over its two finite seeds
    assert [len(c.get_offsets()) for c in axes.collections if len(c.get_offsets())][:2] == [2, 1]
    dots = [c.get_offsets()[:, 0].tolist() for c in axes.collections if isinstance(c, PathCollection)]
    assert dots[0] == pytest.approx([-0.15, 0.15]) and dots[1] == pytest.approx([2.0]), "seeds side by side"
