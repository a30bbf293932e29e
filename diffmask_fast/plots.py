"""Pictures of what Difference-Masking does and how strategies compare, as PNG files
(matplotlib, no display needed)."""

from __future__ import annotations

import functools
import io
import math
import os
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from ._checks import refuse_one_string
from ._display import counted, percent, printable, printable_word, short_score
from ._io import atomic_write_bytes
from .metrics import mean_std
from .preview import WordMaskingRate
from .reference import normalize_word

if TYPE_CHECKING:
    from .finetune import FinetuneReport

_WORD_COLOR = "#d95f02"
_ANCHOR_COLOR = "#1f4e9c"
_UNIFORM_COLOR = "#555555"


#: The most bars the picture of the most masked words labels (its height grows with them).
MOST_MASKED_BARS = 100

#: Runs a comparison draws side by side at its narrowest; more widen it and slant their names.
_ROOMY_RUNS = 8

#: What a word's score is, by the score table's similarity (scoring.TABLE_SIMILARITIES).
_SCORE_MEANING = {"max": "similarity to the nearest anchor", "centroid": "similarity to the anchors' centroid",
                  "mean": "mean similarity to the anchors", "given": "the score given in the table"}


def plot_masking_rates(rates: Sequence[WordMaskingRate], path: str | os.PathLike, mlm_probability: float,
                       title: str = "Difference-Masking: which words are masked, and why", top: int = 15, *,
                       anchors: Iterable[str] = (), similarity: str = "max", lowercase: bool = True) -> Path:
    """Draw ``masking_rates`` output: the ``top`` (at most 100) most often masked words (with their
    score and nearest anchor), and every word's masking rate against its score, each beside the
    rate that masking every word alike (random-word masking) gives. ``anchors``, ``similarity`` and
    ``lowercase`` are the score table's: they pick out the anchors (keyed as the table keys the
    rates' words) and say what a score is (a table scored by ``centroid`` or ``mean`` names no
    nearest anchor). Written atomically to ``path``."""
    if not rates:
        raise ValueError("no word masking rates to plot")
    refuse_one_string(anchors, "anchors", "a list of anchor words")
    if not 1 <= top <= MOST_MASKED_BARS:
        raise ValueError(f"top must be between 1 and {MOST_MASKED_BARS} (more bars than a picture can label), got {top}")
    if similarity not in _SCORE_MEANING:
        raise ValueError(f"unknown similarity {similarity!r}; expected one of {', '.join(_SCORE_MEANING)}")
    _check_rates(rates)
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    anchor_keys = {normalize_word(a, lowercase) for a in anchors}  # as ScoreTable.key

    def is_anchor(rate: WordMaskingRate) -> bool:  # a table keeps its anchors as given ("DNA" for "dna")
        nearest = rate.nearest_anchor
        return rate.word in anchor_keys or (nearest is not None
                                            and rate.word in (nearest, normalize_word(nearest, lowercase)))

    def color(rate: WordMaskingRate) -> str:
        return _ANCHOR_COLOR if is_anchor(rate) else _WORD_COLOR

    # The most masked first, as masking_rates returns them (its order kept among equal rates).
    rates = sorted(rates, key=lambda rate: -rate.rate)
    shown = rates[:top][::-1]
    figure = Figure(figsize=(13, max(6.0, 1.5 + 0.2 * len(shown))), layout="constrained")  # a label per bar
    most, against_score = figure.subplots(1, 2, width_ratios=[1, 1.25])
    uniform = f"every word alike ({percent(mlm_probability)})"

    most.barh(range(len(shown)), [r.rate for r in shown], color=[color(r) for r in shown])
    most.set_yticks(range(len(shown)), _shown_labels([_label(r, is_anchor(r)) for r in shown]), fontsize=9,
                    parse_math=False)
    line = most.axvline(mlm_probability, linestyle="--", color=_UNIFORM_COLOR, label=uniform)
    most.set_xlim(0, 1)
    most.set_xlabel("share of the word's occurrences masked")
    named = " and nearest anchor" if any(r.nearest_anchor for r in shown) else ""
    most.set_title(f"The {counted(len(shown), 'most often masked word')} (score{named})"
                   if len(shown) > 1 else f"The most often masked word (score{named})", fontsize=11)
    most.legend(handles=[Patch(color=_ANCHOR_COLOR, label="anchor"), Patch(color=_WORD_COLOR, label="other word"),
                         line], loc="upper left", bbox_to_anchor=(0, -0.09), ncols=3, fontsize=9, frameon=False)

    occurrences = [r.occurrences for r in rates]
    largest = max(occurrences)
    for anchor, label in ((False, "word"), (True, "anchor")):
        group = [r for r in rates if is_anchor(r) == anchor]
        if group:
            against_score.scatter([r.score for r in group], [r.rate for r in group],
                                  s=[12 + 150 * (r.occurrences / largest) ** 0.5 for r in group],
                                  color=color(group[0]), alpha=0.45, edgecolors="none", label=label)
    against_score.axhline(mlm_probability, linestyle="--", color=_UNIFORM_COLOR, label=uniform)
    # The three most masked words that are not anchors (the anchors sit together at score 1);
    # their labels step down a line each, as their dots often share a corner, and a line leads
    # from each label to its own dot.
    noted = [r for r in rates if not is_anchor(r)][:3]
    for line_number, (rate, note) in enumerate(zip(noted, _shown_labels([(r.word,) for r in noted]))):
        against_score.annotate(note, (rate.score, rate.rate), fontsize=8, xytext=(-16, 10 - 11 * line_number),
                               textcoords="offset points", ha="right", va="center", parse_math=False,
                               arrowprops={"arrowstyle": "-", "color": _UNIFORM_COLOR, "linewidth": 0.6,
                                           "shrinkA": 1, "shrinkB": 2})
    against_score.set_ylim(-0.02, 1.02)
    against_score.set_xlim(*_score_axis([r.score for r in rates]))
    against_score.set_xlabel(f"word score s(w): {_SCORE_MEANING[similarity]}")
    against_score.set_ylabel("share of the word's occurrences masked")
    against_score.set_title(f"{counted(len(rates), 'distinct word')} over {counted(rates[0].draws, 'draw')} "
                            "(dot area: occurrences)", fontsize=11)
    against_score.legend(loc="upper left", fontsize=9)
    figure.suptitle(title, parse_math=False)

    return _save(figure, path)


def _check_rates(rates: Sequence[WordMaskingRate]) -> None:
    """Refuse, by word, a rate that is no share of a word's occurrences, and rates of different
    draw counts (the picture is titled by one)."""
    for rate in rates:
        if rate.occurrences < 1 or rate.draws < 1:
            raise ValueError(f"a masking rate needs at least one occurrence and one draw; {rate.word!r} has "
                             f"{rate.occurrences} occurrence(s) over {rate.draws} draw(s)")
        if not 0 <= rate.masked <= rate.occurrences * rate.draws:
            raise ValueError(f"{rate.word!r} was masked {rate.masked} times in {rate.occurrences} occurrence(s) "
                             f"over {rate.draws} draw(s): a word is masked at most once per occurrence and draw")
    other = next((rate for rate in rates if rate.draws != rates[0].draws), None)
    if other is not None:
        raise ValueError(f"every rate must come from the same draws: {rates[0].word!r} has {rates[0].draws} "
                         f"draw(s), {other.word!r} {other.draws}")


def _score_axis(scores: Sequence[float]) -> tuple[float, float]:
    """Limits of a score axis: from 0 to 1 at least (where similarity scores lie), wider for the
    scores beyond, with a margin; scores all alike read as such, not spread over a zoomed axis."""
    finite = [s for s in scores if math.isfinite(s)]
    low, high = min([0.0, *finite]), max([1.0, *finite])
    margin = 0.03 * (high - low)
    return low - margin, high + margin


def plot_comparison(reports: Mapping[str, FinetuneReport], path: str | os.PathLike,
                    summaries: Mapping[str, dict | None] | None = None, split: str = "test",
                    metric: str = "macro_f1", title: str = "Masking strategies compared") -> Path:
    """Draw a comparison of strategies: each one's fine-tuning ``metric`` on ``split`` for every
    seed with mean ± std (``reports``: name -> ``FinetuneReport``), so that differences can be
    read against the spread over seeds; and, from the pretraining summaries (``pretrain``'s
    ``pretrain_summary.json``: name -> dict, None for no pretraining), each run's validation MLM
    loss over its steps. Written atomically to ``path``."""
    if not reports:
        raise ValueError("no fine-tuning reports to plot")
    from matplotlib.figure import Figure

    with_curves = {name: summary for name, summary in (summaries or {}).items()
                   if summary and _validation_curve(summary)}
    names = list(reports)
    crowded = len(names) > _ROOMY_RUNS
    width = 7 + (0.45 * (len(names) - _ROOMY_RUNS) if crowded else 0)
    figure = Figure(figsize=(width + (6 if with_curves else 0), 5.5), layout="constrained")
    axes = figure.subplots(1, 2 if with_curves else 1, squeeze=False,
                           gridspec_kw={"width_ratios": [width, 6] if with_curves else [1]})[0]
    scores = axes[0]
    metric_title = {"macro_f1": "macro-F1", "accuracy": "accuracy"}.get(metric, metric)
    ticks = []
    lacking = [name for name in names if split == "test" and not reports[name].has_test]
    if lacking:  # named here: each report says only that it has none
        raise ValueError(f"the fine-tuning of {', '.join(map(repr, lacking))} has no test results to draw; "
                         "draw split='dev', or fine-tune with a test set")
    for x, (name, shown) in enumerate(zip(names, _shown_labels([(name,) for name in names]))):
        values = [100 * v for v in reports[name].values(split, metric)]
        finite = [v for v in values if math.isfinite(v)]
        # A seed whose metric is NaN (a report saved with None) has no dot: the tick says so,
        # and the mean is over the others.
        ticks.append(shown if len(finite) == len(values) else
                     f"{shown}\n({len(values) - len(finite)} of {counted(len(values), 'seed')} NaN)")
        if not finite:
            continue
        offsets = [0.0] if len(finite) == 1 else [-0.15 + 0.3 * i / (len(finite) - 1) for i in range(len(finite))]
        scores.scatter([x + o for o in offsets], finite, color=_WORD_COLOR, alpha=0.6, zorder=3,
                       label="one fine-tuning seed" if not scores.collections else None)
        mean, spread = mean_std(finite)
        scores.errorbar([x], [mean], yerr=[spread], fmt="_", markersize=28, capsize=8, color=_ANCHOR_COLOR,
                        zorder=4, label="mean ± std" if len(scores.collections) == 1 else None)
        if not crowded:  # beside every bar of many, the numbers run into each other
            scores.annotate(f"{mean:.1f}", (x, mean), xytext=(22, -4), textcoords="offset points", fontsize=9)
    scores.set_xticks(range(len(names)), ticks, parse_math=False,
                      **({"rotation": 35, "ha": "right", "rotation_mode": "anchor"} if crowded else {}))
    scores.set_xlim(-0.6, len(names) - 0.4)
    scores.set_ylabel(f"{split} {metric_title} (%)")
    scores.set_title(f"Fine-tuned: {split} {metric_title} per seed", fontsize=11)
    if scores.collections:
        _plain_text(scores.legend(loc="lower right", fontsize=9))
    if with_curves:
        _draw_losses(axes[1], with_curves, training=False)
        axes[1].set_title("Continued pretraining", fontsize=11)
    figure.suptitle(title, parse_math=False)
    return _save(figure, path)


def plot_pretraining(summaries: Mapping[str, dict], path: str | os.PathLike,
                     title: str = "Continued pretraining") -> Path:
    """Draw the training and validation MLM loss over the steps of pretraining runs
    (``pretrain``'s summaries, name -> dict; one summary alone is taken too). Written atomically."""
    if not isinstance(summaries, Mapping):
        raise TypeError(f"summaries must be a mapping of run name to summary, or one summary, got "
                        f"{type(summaries).__name__}")
    if any(not isinstance(value, Mapping) and value is not None for value in summaries.values()):  # one summary
        summaries = {str(summaries.get("strategy") or "run"): summaries}
    losses = [loss for s in summaries.values() if s for _, loss in logged_losses(s)]
    if not losses:
        raise ValueError("the pretraining summaries hold no losses to plot")
    if not any(math.isfinite(loss) for loss in losses):
        raise ValueError(f"every loss of the pretraining summaries is NaN or infinite ({len(losses)} logged): "
                         "the runs diverged, and there is no curve to draw")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 5), layout="constrained")
    _draw_losses(figure.subplots(), {name: s for name, s in summaries.items() if s}, training=True)
    figure.suptitle(title, parse_math=False)
    return _save(figure, path)


def _draw_losses(axes, summaries: Mapping[str, dict], training: bool) -> None:
    """Validation loss (markers) and, with ``training``, training loss (a thin line of the same
    colour, with a dot at a point that has no neighbour to join, such as a lone logged loss) of each
    run against its steps."""
    from matplotlib import rcParams

    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    shown_names = _shown_labels([(name,) for name in summaries])
    for index, (name, summary) in enumerate(summaries.items()):
        color = colors[index % len(colors)]
        name = shown_names[index]
        validation = _validation_curve(summary)
        if validation:
            axes.plot([step for step, _ in validation], [loss for _, loss in validation], marker="o", color=color,
                      label=_curve_label(f"{name}, validation" if training else name, validation))
        trained = _training_curve(summary) if training else []
        if trained:
            losses = [loss for _, loss in trained]
            alone = [i for i, loss in enumerate(losses) if math.isfinite(loss) and not any(
                0 <= j < len(losses) and math.isfinite(losses[j]) for j in (i - 1, i + 1))]  # no line reaches it
            axes.plot([step for step, _ in trained], losses, linewidth=1, alpha=0.6, color=color,
                      marker="o" if alone else None, markersize=4, markevery=alone or None,
                      label=_curve_label(f"{name}, training", trained))
    axes.set_xlabel("pretraining step")
    axes.set_ylabel("MLM loss" + ("" if training else " on validation (each on its own masks)"))
    _plain_text(axes.legend(fontsize=9))


def _plain_text(legend) -> None:
    """A legend's entries drawn as text: run names are the user's (``$x^$`` is no formula)."""
    for text in legend.get_texts():
        text.set_parse_math(False)


def _curve_label(label: str, curve: list[tuple[int, float]]) -> str:
    """A curve's legend entry; one with no finite loss draws nothing, so its entry says why."""
    return label if any(math.isfinite(loss) for _, loss in curve) else f"{label} (diverged: every loss NaN)"


def logged_losses(summary: dict) -> list[tuple[int, float]]:
    """Every (step, loss) a pretraining summary holds, validation and training, by step; NaN for
    a diverged one."""
    return sorted(_validation_curve(summary) + _training_curve(summary), key=lambda point: point[0])


def _validation_curve(summary: dict) -> list[tuple[int, float]]:
    """(step, validation loss) of a pretraining summary, from the loss before training on. The
    first evaluation at each step only: the one after training measures the best checkpoint,
    which may be an earlier step's."""
    curve = [(0, float(summary["validation_loss_before"]))] if summary.get("validation_loss_before") is not None else []
    steps = {step for step, _ in curve}
    for entry in summary.get("log_history") or ():
        if "eval_loss" in entry and "step" in entry and int(entry["step"]) not in steps:
            steps.add(int(entry["step"]))
            curve.append((int(entry["step"]), _loss(entry["eval_loss"])))
    return curve


def _training_curve(summary: dict) -> list[tuple[int, float]]:
    """(step, training loss) as the trainer logged it."""
    return [(int(entry["step"]), _loss(entry["loss"])) for entry in summary.get("log_history") or ()
            if "loss" in entry and "step" in entry]


def _loss(value) -> float:
    """A logged loss; a summary read back from JSON holds a diverged (NaN) loss as None."""
    return math.nan if value is None else float(value)


#: Picture formats by file suffix (a path without one gets PNG).
IMAGE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "webp", "eps")


def image_format(path: str | os.PathLike) -> str:
    """The picture format ``path`` names by its suffix; ValueError for one that is no picture."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"cannot draw a picture as {str(path)!r}: name it .{', .'.join(IMAGE_FORMATS)}")
    return suffix


#: Metadata that would stamp a picture with the time it was drawn, left out: the same results
#: draw the same bytes (a picture kept under version control changes only when they do).
_UNDATED = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}
#: The EPS header's date, which matplotlib writes whatever the metadata says.
_EPS_DATE = re.compile(rb"^%%CreationDate: [^\n]*\n", re.MULTILINE)


def _save(figure, path: str | os.PathLike) -> Path:
    import matplotlib

    image = io.BytesIO()
    kind = image_format(path)
    with matplotlib.rc_context({"svg.hashsalt": "diffmask"}):  # SVG element ids, random by default
        figure.savefig(image, format=kind, dpi=110, metadata=_UNDATED.get(kind))
    data = image.getvalue()
    if kind == "eps":
        data = _EPS_DATE.sub(b"", data, count=1)
    return atomic_write_bytes(path, data)


#: Most characters of a word's label as drawn (a bar's, score and anchor included, or a dot's): chemical
#: names run to 160 characters, and the picture was all labels.
_LABEL_LIMIT = 36
#: Fewest characters a word or anchor is cut to, however long the rest of its label (a score of 1e30).
_SHORTEST_NAME = 6
_ELLIPSIS = "\u2026"


def _drawable_characters() -> frozenset[int]:
    """The code points that the fonts labels are drawn in have glyphs for: those of each installed
    font that matplotlib's font settings name (matplotlib falls back along that list)."""
    from matplotlib import font_manager, rcParams

    names = []
    for family in rcParams["font.family"]:
        generic = f"font.{family}"  # "sans-serif" names a list of fonts
        names += rcParams[generic] if generic in rcParams else [family]
    installed = {font.name: font.fname for font in font_manager.fontManager.ttflist}
    paths = tuple(dict.fromkeys(installed[name] for name in names if name in installed)) or (
        font_manager.findfont(font_manager.FontProperties()),)
    return _font_characters(paths)


@functools.lru_cache(maxsize=8)
def _font_characters(paths: tuple[str, ...]) -> frozenset[int]:
    from matplotlib import font_manager

    return frozenset().union(*(font_manager.get_font(path).get_charmap() for path in paths))


def _in_font(text: str, drawable: frozenset[int]) -> str:
    """``text`` with each character outside ``drawable`` spelled as its escape (``\\u767d``)."""
    if text.isascii():  # the usual case: every font has these
        return text
    return "".join(c if ord(c) in drawable else c.encode("unicode_escape").decode("ascii") for c in text)


def _label(rate: WordMaskingRate, is_anchor: bool) -> tuple[str, ...]:
    """A bar's label in parts: the word, its score, and the nearest anchor unless the word is one.
    Parts at even places are names, which ``_shown_labels`` may cut; the others are kept."""
    score = short_score(rate.score)
    if is_anchor or not rate.nearest_anchor:
        return rate.word, f" ({score})"
    return rate.word, f" ({score}, ", rate.nearest_anchor, ")"


def _shortened(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: its start and end around "…" when it is longer."""
    if len(text) <= limit:
        return text
    end = (limit - 1) // 2
    return text[: limit - 1 - end] + _ELLIPSIS + text[len(text) - end:]


def _fitted(names: Sequence[str], room: int) -> list[str]:
    """``names`` cut to ``room`` characters together: the shorter ones kept whole while they take
    no more than an even share, the longer ones sharing what is left."""
    fitted = list(names)
    left = room
    order = sorted(range(len(names)), key=lambda i: len(names[i]))
    for rank, i in enumerate(order):
        fitted[i] = _shortened(names[i], max(left // (len(names) - rank), _SHORTEST_NAME))
        left -= len(fitted[i])
    return fitted


def _drawn(parts: Sequence[str], room: int, mark: str = "") -> list[str]:
    """The parts of a label in ``room`` characters, its names fitted to what the rest leaves and
    ``mark`` after the word."""
    kept = sum(len(part) for part in parts[1::2]) + len(mark)
    drawn = list(parts)
    drawn[::2] = _fitted(parts[::2], room - kept)
    drawn[0] += mark
    return drawn


def _left_to_right(parts: Sequence[str]) -> str:
    """A label's parts as one left-to-right text: a name in a right-to-left script (Hebrew,
    Arabic) is isolated (U+2068 ... U+2069) after a left-to-right mark, as the text layout would
    otherwise reorder the whole label around it ("שלום (protein ,0.80)")."""
    text = "".join(parts)
    if not any(unicodedata.bidirectional(c) in ("R", "AL") for c in text):
        return text
    return "\u200e" + "".join(f"\u2068{part}\u2069" if i % 2 == 0 else part for i, part in enumerate(parts))


def _shown_labels(labels: Sequence[Sequence[str]], limit: int = _LABEL_LIMIT) -> list[str]:
    """Each label (its parts: names at even places, kept text between) as it is drawn, every word
    of the picture going through here: printable (``_display.printable_word``: control characters
    escaped, which fonts lack, and a blank word spelled out), and at most ``limit``
    characters, long names keeping their start and end around "…". A label that fits is drawn as
    it is; one cut to read as another label, or whose escapes read as another's word (the word
    ``a\\tb`` beside ``a<TAB>b``), is told apart by a number after its word ("…#2").
    Characters the picture's fonts lack (Chinese, say, with matplotlib's default fonts) are spelled
    as their escapes too: drawn, they were empty boxes, and words of them could not be told apart.
    Labels are drawn with math text off (``parse_math=False``): a corpus word such as ``$x^$`` is
    text, and matplotlib would refuse it as a formula. Right-to-left names are isolated
    (``_left_to_right``)."""
    drawable = _drawable_characters()
    labels = [tuple(label) for label in labels]
    printed = {label: tuple(_in_font(printable_word(part) if i % 2 == 0 else printable(part), drawable)
                            for i, part in enumerate(label)) for label in labels}
    owners: dict[str, tuple[str, ...]] = {}  # each text that fits, drawn for the first label that prints as it
    for label, parts in printed.items():
        if len("".join(parts)) <= limit:
            owners.setdefault("".join(parts), label)
    taken = set(owners)
    shown: dict[tuple[str, ...], str] = {}
    for label, parts in printed.items():
        drawn, number = _drawn(parts, limit), 1  # as it is where it fits
        if owners.get("".join(parts)) != label:
            while "".join(drawn) in taken:
                number += 1
                drawn = _drawn(parts, limit, f"#{number}")
        taken.add("".join(drawn))
        shown[label] = _left_to_right(drawn)
    return [shown[label] for label in labels]
