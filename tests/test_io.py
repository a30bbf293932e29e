"""Atomic writes: all or nothing, and the permissions a plain open() would give."""

from __future__ import annotations

import json
import os
import pathlib
import re
import stat

import pytest

from diffmask_fast._io import atomic_write_bytes, atomic_writer

pytestmark = pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_a_new_file_gets_the_permissions_of_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        written = atomic_write_bytes(tmp_path / "out" / "result.json", b"{}")
        plain = tmp_path / "plain.json"
        plain.write_bytes(b"{}")
    finally:
        os.umask(previous)
    assert mode(written) == 0o666 & ~umask == mode(plain)


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "scores.npz"
    for permissions in (0o600, 0o640, 0o644, 0o1644, 0o2640):  # the sticky and set-group bits too
        path.write_bytes(b"old")
        path.chmod(permissions)
        kept = mode(path)  # as the file system keeps them (it may drop the special bits)
        atomic_write_bytes(path, b"new")
        assert path.read_bytes() == b"new" and mode(path) == kept


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "anchors.json"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_writer(path) as file:
            file.write(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["anchors.json"]


def test_check_writable_refuses_what_could_not_be_written_and_creates_nothing(tmp_path, monkeypatch):
    import tempfile

    from diffmask_fast._io import check_writable

    assert check_writable(tmp_path / "a" / "b" / "report.json") == tmp_path / "a" / "b" / "report.json"
    assert not (tmp_path / "a").exists()  # checking creates nothing
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=r"the report '.*out' is a directory"):
        check_writable(tmp_path / "out", "report")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"'.*file' is not a folder"):
        check_writable(tmp_path / "file" / "sub" / "report.json")

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)  # as in a read-only folder, even for root
    with pytest.raises(ValueError, match=r"cannot write in folder .*Permission denied"):
        check_writable(tmp_path / "out" / "report.json")


def test_writing_through_a_link_replaces_the_file_it_points_to(tmp_path):
    """As open(path, "wb") does: the link stays, its target gets the new bytes and keeps its mode."""
    results = tmp_path / "results"
    results.mkdir()
    target = results / "anchors-v2.json"
    target.write_bytes(b"old")
    target.chmod(0o640)
    (tmp_path / "latest").mkdir()
    link = tmp_path / "latest" / "anchors.json"
    link.symlink_to(os.path.relpath(target, link.parent))
    assert atomic_write_bytes(link, b"new") == link
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(target, link.parent)
    assert target.read_bytes() == b"new" and mode(target) == 0o640
    assert [p.name for p in results.iterdir()] == ["anchors-v2.json"]  # no temporary left beside it
    assert [p.name for p in link.parent.iterdir()] == ["anchors.json"]
    dangling = tmp_path / "latest" / "scores.npz"  # a link to a file not written yet: created there
    dangling.symlink_to(results / "scores.npz")
    atomic_write_bytes(dangling, b"scores")
    assert dangling.is_symlink() and (results / "scores.npz").read_bytes() == b"scores"


@pytest.mark.parametrize("length", [250, 255])
def test_a_name_as_long_as_allowed_can_be_written(tmp_path, length, seed):
    import random

    from diffmask_fast._io import check_writable

    rng = random.Random(seed)
    name = "".join(rng.choice("abcdefghij-_é") for _ in range(length))
    name = name.encode()[:length - 5].decode(errors="ignore") + ".json"  # bytes are what the system limits
    path = tmp_path / name
    assert check_writable(path) == path
    with open(path, "wb"):  # the name itself is allowed
        pass
    path.unlink()
    atomic_write_bytes(path, b"{}")
    assert path.read_bytes() == b"{}" and [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads which file a descriptor is through /proc")
def test_the_file_and_then_its_folder_are_synced(tmp_path, monkeypatch):
    """A rename is durable only once its folder is synced: without it, a power cut can bring back
    the old file, or no file, after the run said it wrote one."""
    synced = []
    fsync = os.fsync

    def recording(descriptor):
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        return fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording)
    target = tmp_path / "folder" / "result.json"
    atomic_write_bytes(target, b"{}")
    assert len(synced) == 2 and synced[0].endswith(".tmp") and synced[1] == str(target.parent), synced


def test_json_is_written_without_nan_or_infinity(tmp_path):
    """A diverged run's NaN loss is written as null: strict JSON readers take the file."""
    import json
    import math

    from diffmask_fast._io import atomic_write_json

    payload = {"loss": math.nan, "history": [{"loss": math.inf}, {"loss": 1.5}], "pair": (-math.inf, 2),
               "nested": {"ok": 0.25, "bad": [math.nan]}, "text": "NaN", "none": None}
    path = atomic_write_json(tmp_path / "out.json", payload)

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "loss": None, "history": [{"loss": None}, {"loss": 1.5}], "pair": [None, 2],
        "nested": {"ok": 0.25, "bad": [None]}, "text": "NaN", "none": None}
    assert payload["loss"] != payload["loss"], "the caller's payload is left as it was"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_pipe_or_device_is_refused_not_replaced(tmp_path):
    """Renaming a finished file onto a named pipe (or /dev/null) would replace it with a file."""
    from diffmask_fast._io import atomic_write_json, check_writable

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    link = tmp_path / "to-pipe"
    link.symlink_to(pipe)
    for target in (pipe, link):
        with pytest.raises(ValueError, match="is not a regular file"):
            check_writable(target)
        with pytest.raises(ValueError, match="is not a regular file"):
            atomic_write_json(target, {"a": 1})
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and sorted(os.listdir(tmp_path)) == ["pipe", "to-pipe"]


def _saved_file_loaders():
    from diffmask_fast.anchors import Anchors
    from diffmask_fast.counting import WordCounts
    from diffmask_fast.finetune import FinetuneReport, load_labeled
    from diffmask_fast.general import GeneralFrequencies
    from diffmask_fast.pretrain import read_terms
    from diffmask_fast.scoring import ScoreTable

    return {"word counts": WordCounts.load, "word scores": ScoreTable.load, "anchors": Anchors.load,
            "general frequency table": GeneralFrequencies.from_file, "labelled data": load_labeled,
            "terms": read_terms, "fine-tuning report": FinetuneReport.load}


@pytest.mark.timeout(60, method="thread")
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize("what", list(_saved_file_loaders()))
@pytest.mark.parametrize("special", ["pipe", "/dev/zero"])
def test_a_pipe_or_device_given_as_a_saved_file_is_refused_not_read(tmp_path, what, special):
    """Opening a named pipe waits for a writer, and /dev/zero never ends: either would hang the
    load or exhaust memory."""
    if special == "pipe":
        special = tmp_path / "pipe"
        os.mkfifo(special)
    elif not os.path.exists(special):
        pytest.skip(f"no {special}")
    with pytest.raises(ValueError, match=f"{what} file '{special}' is a (pipe|device), not a regular file"):
        _saved_file_loaders()[what](special)


@pytest.mark.parametrize("what", list(_saved_file_loaders()))
def test_a_folder_or_a_missing_file_given_as_a_saved_file_is_named_as_such(tmp_path, what):
    """Every reader of a saved file says the same of a folder, and raises what callers of either
    kind catch: ``IsADirectoryError`` (some readers raised it) and ``ValueError`` (the others)."""
    from diffmask_fast._io import FolderGivenError

    with pytest.raises(FolderGivenError, match=f"^{what} file '{tmp_path}' is a folder, not ") as raised:
        _saved_file_loaders()[what](tmp_path)
    assert isinstance(raised.value, IsADirectoryError) and isinstance(raised.value, ValueError)
    with pytest.raises(FileNotFoundError, match=f"^{what} file '{tmp_path / 'none'}' does not exist$"):
        _saved_file_loaders()[what](tmp_path / "none")


def test_a_name_with_a_nul_is_refused_before_any_work(tmp_path):
    from diffmask_fast._io import check_writable

    with pytest.raises(ValueError, match="holds a NUL character"):
        check_writable(str(tmp_path / "x\x00y.json"))


def test_numpy_numbers_are_written_as_json_numbers(tmp_path):
    import json

    import numpy as np

    from diffmask_fast._io import atomic_write_json

    path = atomic_write_json(tmp_path / "out.json", {"count": np.int64(3), "share": np.float32(0.5),
                                                     "lost": np.float64("nan"), "flag": np.bool_(True)})
    assert json.loads(path.read_text()) == {"count": 3, "share": 0.5, "lost": None, "flag": True}


def test_a_folder_in_the_way_is_named_not_the_temporary_file(tmp_path):
    """The rename failed with an OS error naming the temporary file."""
    from diffmask_fast.counting import WordCounts

    folder = tmp_path / "counts.json"
    folder.mkdir()
    for write in (lambda: atomic_write_bytes(folder, b"x"),
                  lambda: WordCounts.from_mapping({"a": 1}, 1).save(folder)):
        with pytest.raises(IsADirectoryError, match=f"cannot write {re.escape(repr(str(folder)))}: it is a folder"):
            write()
    assert [p.name for p in tmp_path.iterdir()] == ["counts.json"] and not any(folder.iterdir())


def test_a_file_where_a_folder_should_be_is_named_as_open_names_it(tmp_path):
    """mkdir's FileExistsError came out, which reads as if the output already existed."""
    (tmp_path / "runs").write_text("notes")
    with pytest.raises(NotADirectoryError, match=re.escape(f"cannot write {str(tmp_path / 'runs' / 'x.json')!r}: "
                                                           f"{str(tmp_path / 'runs')!r} is a file, not a folder")):
        atomic_write_bytes(tmp_path / "runs" / "x.json", b"x")
    assert (tmp_path / "runs").read_text() == "notes" and [p.name for p in tmp_path.iterdir()] == ["runs"]


def test_word_counts_named_json_in_capitals_are_saved_as_json(tmp_path):
    from diffmask_fast.counting import WordCounts

    counts = WordCounts.from_mapping({"enzyme": 3, "binds": 1}, 2)
    counts.save(tmp_path / "C.JSON")
    assert json.loads((tmp_path / "C.JSON").read_text())["counts"] == {"enzyme": 3, "binds": 1}
    assert WordCounts.load(tmp_path / "C.JSON") == counts


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    """It said only "[Errno 28] No space left on device", or named the temporary file."""
    path = tmp_path / "anchors.json"
    with pytest.raises(OSError, match=r"No space left on device: '.*anchors\.json'$") as raised:
        with atomic_writer(path) as file:
            file.write(b"{}")
            real_fsync = os.fsync

            def full(descriptor):
                monkeypatch.setattr(os, "fsync", real_fsync)
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(os, "fsync", full)
    assert raised.value.errno == 28 and raised.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(tmp_path / ".anchors.json.abc123.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError, match=r"Read-only file system: '.*anchors\.json'$"):
        atomic_write_bytes(path, b"{}")
    monkeypatch.undo()
    other = tmp_path / "other.txt"  # an error about another file, in the caller's block, is its own
    with pytest.raises(FileNotFoundError, match="other.txt") as raised:
        with atomic_writer(path) as file:
            file.write(other.read_bytes())
    assert raised.value.__cause__ is None, "passed on as it was, not as its own cause"
    folder = os.open(tmp_path, os.O_RDONLY)
    try:  # an error of the caller's block naming no file, and not one of writing, is not the output's
        with pytest.raises(IsADirectoryError) as raised:
            with atomic_writer(path) as file:
                file.write(os.read(folder, 10))
    finally:
        os.close(folder)
    assert raised.value.filename is None and raised.value.__cause__ is None
    with pytest.raises(OSError, match="^a socket closed$") as raised:
        with atomic_writer(path):
            raise OSError("a socket closed")
    assert raised.value.__cause__ is None and list(tmp_path.iterdir()) == []


def test_check_writable_follows_a_link_as_the_writer_does(tmp_path, monkeypatch):
    """A link to a file in a folder that cannot be written passed the check (the link's folder
    was tried), and hours of work were lost when the result was saved beside the target."""
    import tempfile

    from diffmask_fast._io import check_writable

    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "anchors.json").write_text("[]")
    link = tmp_path / "anchors.json"
    link.symlink_to(tmp_path / "locked" / "anchors.json")
    tried = []
    real = tempfile.TemporaryFile

    def locked(*args, dir=None, **kwargs):
        tried.append(dir)
        if str(dir).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", locked)
    with pytest.raises(ValueError, match=r"cannot write in folder '.*locked'"):
        check_writable(link, "anchors")
    assert check_writable(tmp_path / "plain.json") == tmp_path / "plain.json"


def test_json_nested_too_deeply_is_named(tmp_path):
    """It escaped as a RecursionError traceback."""
    from diffmask_fast._io import read_json

    path = tmp_path / "anchors.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match="is not a valid anchors file: its JSON is nested too deeply"):
        read_json(path, "anchors")


def test_an_empty_file_and_a_score_table_are_named_where_json_is_read(tmp_path):
    """A file left empty by a cut-short copy read "Expecting value: line 1 column 1 (char 0)"; a
    score table given as anchors, "'utf-8' codec can't decode byte 0xa9"."""
    from diffmask_fast._io import read_json
    from diffmask_fast.anchors import Anchors
    from diffmask_fast.scoring import ScoreTable

    (tmp_path / "empty.json").write_bytes(b"")
    with pytest.raises(ValueError, match=r"'.*empty.json' is not a valid word scores file: it is empty \(0 bytes\)"):
        ScoreTable.load(tmp_path / "empty.json")
    ScoreTable.from_mapping({"kinase": 0.5}).save(tmp_path / "scores.npz")
    with pytest.raises(ValueError, match=r"is not a valid anchors file: it is a zip archive \(as score tables saved "
                                         r"as .npz are\), not JSON"):
        Anchors.load(tmp_path / "scores.npz")
    from diffmask_fast.counting import WordCounts

    WordCounts.from_mapping({"kinase": 3}, 1).save(tmp_path / "corpus.counts")  # binary: no zip, no JSON
    with pytest.raises(ValueError, match=r"is not a valid word scores file: it holds saved word counts \(as mine "
                                         r"--counts-output writes them\), not JSON"):
        ScoreTable.load(tmp_path / "corpus.counts")
    (tmp_path / "ok.json").write_text('\ufeff{"a": 1}', encoding="utf-8")  # a byte-order mark is still skipped
    assert read_json(tmp_path / "ok.json", "x") == {"a": 1}


def test_command_line_paths_expand_the_home_folder(tmp_path, monkeypatch):
    """--output=~/x is not expanded by the shell: a folder named "~" was made in the working directory."""
    from diffmask_fast._io import user_path
    from diffmask_fast.cli import _corpus_name, build_parser

    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_path("~/anchors.json") == tmp_path / "anchors.json"
    assert _corpus_name("~/corpus/*.txt") == str(tmp_path / "corpus" / "*.txt")
    args = build_parser().parse_args(["mine", "~/corpus.txt", "--output=~/anchors.json"])
    assert args.output == tmp_path / "anchors.json" and args.corpus == [str(tmp_path / "corpus.txt")]
    args = build_parser().parse_args(["pretrain", "~/c.txt", "--model", "m", "-o", "~/run", "--validation", "~/v.txt"])
    assert args.output == tmp_path / "run" and args.corpus == [str(tmp_path / "c.txt")]
    assert args.validation == [str(tmp_path / "v.txt")]


@pytest.mark.parametrize("ending", ["/", "/.", "/.."])
def test_a_path_that_names_a_folder_is_refused_not_written_as_a_file(tmp_path, ending):
    """realpath drops a final "/": save("results/") wrote a file named results, where open() refuses."""
    from diffmask_fast._io import check_writable

    path = str(tmp_path / "results") + ending
    with pytest.raises(ValueError, match="names a folder"):
        check_writable(path)
    with pytest.raises(IsADirectoryError, match="names a folder"):
        atomic_write_bytes(path, b"x")
    assert list(tmp_path.iterdir()) == []


def test_numpy_and_torch_values_are_written_as_json_holds_them(tmp_path):
    """Arrays, tensors, sets and numpy keys failed in json.dumps ("not JSON serializable")."""
    import numpy as np
    import torch

    from diffmask_fast._io import atomic_write_json

    payload = {"array": np.array([1.5, 2.0]), "tensor": torch.tensor(0.5), "vector": torch.tensor([1, 2]),
               np.int64(3): "three", "set": {"b", "a"}, "nested": [np.float32(0.25), (np.bool_(True),)],
               "path": pathlib.Path("runs") / "a"}
    atomic_write_json(tmp_path / "x.json", payload)
    assert json.loads((tmp_path / "x.json").read_text()) == {
        "array": [1.5, 2.0], "tensor": 0.5, "vector": [1, 2], "3": "three", "set": ["a", "b"],
        "nested": [0.25, [True]], "path": os.path.join("runs", "a")}


def test_same_file_compares_paths_not_yet_written_as_resolved(tmp_path, monkeypatch):
    """The command line refuses an output that is also an input before either need exist."""
    from diffmask_fast._io import same_file

    monkeypatch.chdir(tmp_path)
    assert same_file("out.json", "./out.json") and same_file("out.json", tmp_path / "sub" / ".." / "out.json")
    assert not same_file("out.json", "other.json") and not same_file("out.json", "sub/out.json")
    (tmp_path / "out.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "out.json")
    assert same_file("link.json", "out.json") and not same_file("link.json", "missing.json")
