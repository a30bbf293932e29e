"""Classification metrics for fine-tuning runs: accuracy, macro-F1, and mean ± std over seeds.

Labels can be any hashable values (strings, integers, ...) but tuples, one per example; they are
compared with ``==``. Numpy arrays and torch tensors are compared by value, as Python numbers. A
tuple, list, set or dict is refused as a label: it is a row of scores or a multi-label row that
was meant to be reduced to one label first.

Macro-F1 convention (the same as scikit-learn's ``f1_score(average="macro", zero_division=0)``):

* per class ``c``, ``F1 = 2 TP / (2 TP + FP + FN)`` (the harmonic mean of precision and recall),
  and 0 when ``2 TP + FP + FN`` is 0, i.e. when ``c`` occurs neither in ``y_true`` nor in ``y_pred``;
* with ``labels=None`` the average runs over the classes present in ``y_true`` or ``y_pred``, so a
  class with no true and no predicted example does not count;
* with ``labels`` given it runs over exactly those classes: one absent from both sides counts as an
  F1 of 0. An example whose true label is outside the set still adds a false positive to the class
  it is predicted as, and one predicted outside the set a false negative to its true class; only
  an example with both labels outside the set counts for no class.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Sequence

import numpy as np

__all__ = ["accuracy", "macro_f1", "per_class_f1", "mean_std"]


def _labels(values: Iterable[Hashable], name: str) -> list:
    """The labels as a list of scalars that compare and hash by value: arrays and tensors (whose
    elements hash by identity, a tensor's) become Python numbers, and a label that is itself a
    vector (a one-hot row) is refused rather than compared element by element, as is one string
    (read a character a label)."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must hold one label per example, got one {type(values).__name__} {values!r:.60}: "
                        "give a list of labels")
    if hasattr(values, "tolist") and hasattr(values, "ndim"):  # a numpy array or a torch tensor
        if values.ndim != 1:
            raise ValueError(f"{name} must hold one label per example (one dimension), got shape "
                             f"{tuple(values.shape)}; take the argmax of one-hot or score rows first")
        return values.tolist()
    labels = []
    for value in values:
        if hasattr(value, "ndim") and hasattr(value, "tolist"):  # a 0-d tensor or a numpy scalar
            if value.ndim != 0:
                raise ValueError(f"{name} must hold one label per example, got a label of shape "
                                 f"{tuple(value.shape)}; take the argmax of one-hot or score rows first")
            value = value.tolist()
        elif isinstance(value, (list, tuple, set, dict)):
            raise ValueError(f"{name} must hold one label per example, got a {type(value).__name__} label "
                             f"{value!r:.60}; take the argmax of one-hot or score rows first")
        labels.append(value)
    return labels


def _pair(y_true: Iterable[Hashable], y_pred: Iterable[Hashable]) -> tuple[list, list]:
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} and {len(y_pred)}")
    if not y_true:
        raise ValueError("no examples to score: y_true and y_pred are empty")
    return y_true, y_pred


def accuracy(y_true: Iterable[Hashable], y_pred: Iterable[Hashable]) -> float:
    """Share of examples whose predicted label equals the true one."""
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean([t == p for t, p in zip(y_true, y_pred)]))


def per_class_f1(y_true: Iterable[Hashable], y_pred: Iterable[Hashable],
                 labels: Sequence[Hashable] | None = None) -> dict[Hashable, float]:
    """F1 of each class, keyed by label, over ``labels`` (default: the classes present in ``y_true``
    or ``y_pred``, sorted when they can be). See the module docstring for the convention."""
    y_true, y_pred = _pair(y_true, y_pred)
    if labels is None:
        present = set(y_true) | set(y_pred)
        try:
            labels = sorted(present)
        except TypeError:  # labels of types that do not order: keep first-seen order
            labels = list(dict.fromkeys(y_true + y_pred))
    else:
        labels = _labels(labels, "labels")
        if not labels:
            raise ValueError("labels is empty: give at least one class to average over")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels has duplicates: {labels!r}")
    index = {label: i for i, label in enumerate(labels)}
    true_ids = np.fromiter((index.get(t, -1) for t in y_true), dtype=np.int64, count=len(y_true))
    pred_ids = np.fromiter((index.get(p, -1) for p in y_pred), dtype=np.int64, count=len(y_pred))
    n = len(labels)
    true_counts = np.bincount(true_ids[true_ids >= 0], minlength=n)  # TP + FN
    pred_counts = np.bincount(pred_ids[pred_ids >= 0], minlength=n)  # TP + FP
    hits = (true_ids == pred_ids) & (true_ids >= 0)
    true_positives = np.bincount(true_ids[hits], minlength=n)
    denominator = true_counts + pred_counts  # = 2 TP + FP + FN
    scores = np.divide(2.0 * true_positives, denominator, out=np.zeros(n), where=denominator > 0)
    return {label: float(score) for label, score in zip(labels, scores)}


def macro_f1(y_true: Iterable[Hashable], y_pred: Iterable[Hashable],
             labels: Sequence[Hashable] | None = None) -> float:
    """Unweighted mean of the per-class F1 scores over ``labels`` (default: the classes present in
    ``y_true`` or ``y_pred``). Matches ``sklearn.metrics.f1_score(y_true, y_pred, labels=labels,
    average="macro", zero_division=0)``."""
    return float(np.mean(list(per_class_f1(y_true, y_pred, labels).values())))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of ``values``; the deviation of a single
    value is 0."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    array = np.asarray(values)
    std = float(array.std(ddof=1)) if len(values) > 1 else 0.0
    return float(array.mean()), std
