"""Pictures of what Difference-Masking does, as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

from ._io import atomic_write_bytes
from .preview import WordMaskingRate

_WORD_COLOR = "#d95f02"
_ANCHOR_COLOR = "#1f4e9c"
_UNIFORM_COLOR = "#555555"


def plot_masking_rates(rates: Sequence[WordMaskingRate], path: str | os.PathLike, mlm_probability: float,
                       title: str = "Difference-Masking: which words are masked, and why", top: int = 15) -> Path:
    """Draw ``masking_rates`` output: the ``top`` most often masked words (with their score and
    nearest anchor), and every word's masking rate against its score, each beside the rate that
    masking every word alike (random-word masking) gives. Written atomically to ``path``."""
    if not rates:
        raise ValueError("no word masking rates to plot")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 6), layout="constrained")
    most, against_score = figure.subplots(1, 2, width_ratios=[1, 1.25])
    uniform = f"every word alike ({mlm_probability:.0%})"

    shown = list(rates[:top])[::-1]
    most.barh(range(len(shown)), [r.rate for r in shown], color=[_color(r) for r in shown])
    most.set_yticks(range(len(shown)), [_label(r) for r in shown], fontsize=9)
    most.axvline(mlm_probability, linestyle="--", color=_UNIFORM_COLOR, label=uniform)
    most.barh([], [], color=_ANCHOR_COLOR, label="anchor")
    most.set_xlim(0, 1)
    most.set_xlabel("share of the word's occurrences masked")
    most.set_title(f"The {len(shown)} most often masked words (score, nearest anchor)", fontsize=11)
    most.legend(loc="upper left", bbox_to_anchor=(0, -0.09), ncols=2, fontsize=9, frameon=False)

    occurrences = [r.occurrences for r in rates]
    largest = max(occurrences)
    for is_anchor, label in ((False, "word"), (True, "anchor")):
        group = [r for r in rates if _is_anchor(r) == is_anchor]
        if group:
            against_score.scatter([r.score for r in group], [r.rate for r in group],
                                  s=[12 + 150 * (r.occurrences / largest) ** 0.5 for r in group],
                                  color=_color(group[0]), alpha=0.45, edgecolors="none", label=label)
    against_score.axhline(mlm_probability, linestyle="--", color=_UNIFORM_COLOR, label=uniform)
    for rate in [r for r in rates if not _is_anchor(r)][:3]:  # the anchors sit together at score 1
        against_score.annotate(rate.word, (rate.score, rate.rate), fontsize=8, xytext=(-4, 4),
                               textcoords="offset points", ha="right")
    against_score.set_ylim(-0.02, 1.02)
    against_score.set_xlabel("word score s(w): similarity to the nearest anchor")
    against_score.set_ylabel("share of the word's occurrences masked")
    draws = rates[0].draws
    against_score.set_title(f"{len(rates):,} distinct words over {draws:,} draws (dot area: occurrences)",
                            fontsize=11)
    against_score.legend(loc="upper left", fontsize=9)
    figure.suptitle(title)

    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    return atomic_write_bytes(path, image.getvalue())


def _is_anchor(rate: WordMaskingRate) -> bool:
    return rate.nearest_anchor == rate.word


def _color(rate: WordMaskingRate) -> str:
    return _ANCHOR_COLOR if _is_anchor(rate) else _WORD_COLOR


def _label(rate: WordMaskingRate) -> str:
    if _is_anchor(rate) or not rate.nearest_anchor:
        return f"{rate.word} ({rate.score:.2f})"
    return f"{rate.word} ({rate.score:.2f}, {rate.nearest_anchor})"
