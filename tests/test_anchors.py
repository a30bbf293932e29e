"""Counting, general frequencies and anchor mining, against the reference and on real text."""

import gzip
import json
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from diffmask_fast import DiffmaskWarning, reference
from diffmask_fast.anchors import Anchor, Anchors, mine_anchors
from diffmask_fast.corpus import CorpusError
from diffmask_fast.counting import WordCounts, count_words
from diffmask_fast.general import GOOGLE_TRILLION_TOTAL, GeneralFrequencies

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not present")

ADVERSARIAL = [
    "", "   ", "Straße ÉCOLE naïve", "(IscS [12,22], IscU/Isu1 [6,11,16]).", "−20C e.g. Fe-S",
    "a" * 5000, "tab\tseparated\u00a0nbsp\u2003em-space", "ΣΊΣΥΦΟΣ Όσος", "中文 字符", "emoji 🧪 test",
]


def random_text(rng: random.Random) -> str:
    alphabet = "abcXYZ é-.,()'’Σς 12\t"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))


def test_count_words_matches_reference_on_adversarial_and_random_text():
    rng = random.Random(random.getrandbits(64))  # seeded by the test's seed
    texts = ADVERSARIAL + [random_text(rng) for _ in range(200)]
    counts = count_words(texts, progress=False)
    assert dict(counts.counts) == dict(reference.count_words(texts))
    assert counts.documents == len(texts)
    assert counts.total == sum(reference.count_words(texts).values())


@needs_data
def test_count_words_matches_reference_on_real_corpus():
    path = DATA / "acl_arc" / "corpus.txt"
    counts = count_words(path, progress=False)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert dict(counts.counts) == dict(reference.count_words(lines))
    assert counts.documents == len(lines)


def test_corpus_sources(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"Enzyme binds\r\nreceptor\r\n")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("enzyme\n")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 na\xefve\n")
    with pytest.warns(UserWarning, match=r"skipped 1 other file\(s\) \(ignored.bin\)"):
        by_directory = count_words(tmp_path, progress=False)
    assert by_directory["enzyme"] == 2 and by_directory["receptor"] == 1
    # Invalid UTF-8 bytes become U+FFFD, which normalization keeps: it marks broken text.
    assert by_directory["caf\ufffd"] == 1 and by_directory["na\ufffdve"] == 1
    by_glob = count_words(str(tmp_path / "*.txt"), progress=False)
    assert by_glob["enzyme"] == 1
    by_paths = count_words([tmp_path / "a.txt", tmp_path / "b.txt.gz"], progress=False)
    assert by_paths["enzyme"] == 2 and "caf" not in by_paths


def test_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        count_words(tmp_path / "missing.txt", progress=False)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CorpusError, match="no text files"):
        count_words(tmp_path / "empty_dir", progress=False)
    (tmp_path / "binary.txt").write_bytes(b"\x7fELF\x00\x00\x01")
    with pytest.raises(CorpusError, match="binary"):
        count_words(tmp_path / "binary.txt", progress=False)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match="empty"):
        count_words(tmp_path / "empty.txt", progress=False)
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    with pytest.raises(CorpusError, match="no words"):
        count_words(tmp_path / "blank.txt", progress=False)
    with pytest.raises(CorpusError, match="no files match"):
        count_words(str(tmp_path / "*.nothing"), progress=False)
    with pytest.raises(CorpusError, match="strings"):
        count_words([b"bytes"], progress=False)


def test_word_counts_save_and_load(tmp_path):
    counts = count_words(["b a a", "c"], progress=False)
    counts.save(tmp_path / "counts.json")
    loaded = WordCounts.load(tmp_path / "counts.json")
    assert loaded == counts and loaded.most_common(1) == [("a", 2)]
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a word-counts file"):
        WordCounts.load(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not a valid word counts file"):
        WordCounts.load(tmp_path / "broken.json")


def test_default_general_table_is_the_trillion_word_unigrams():
    general = GeneralFrequencies.default()
    assert general.total == GOOGLE_TRILLION_TOTAL
    assert len(general) > 300_000
    assert general.count("the") == 23_135_851_162
    assert general.count("frataxin-zzqx") == 0
    assert general.count("long-term") == min(general.count("long"), general.count("term"))
    assert general.most_common(5) == ["the", "of", "and", "to", "a"]


def test_most_common_general_words_break_ties_by_word():
    rng = random.Random(random.getrandbits(64))
    counts = {f"w{i}": float(rng.randrange(1, 6)) for i in range(50)}
    n = rng.randrange(0, 60)
    assert GeneralFrequencies(counts, 1e6).most_common(n) == sorted(counts, key=lambda w: (-counts[w], w))[:n]


def test_a_general_table_made_in_code_refuses_counts_tf_icf_cannot_use():
    """from_file checked its counts; a table built directly took a negative or NaN count, which
    gives a negative or NaN TF-ICF and ranks anchors by it."""
    for counts, message in [({"the": 5.0, "enzyme": -1.0}, r"1 are not \(e.g. 'enzyme': -1.0\)"),
                            ({"the": float("nan")}, "finite and non-negative"),
                            ({"the": float("inf")}, "finite and non-negative"),
                            ({"the": "many"}, "general counts must map words \\(strings\\) to numbers; 'the': 'many'"),
                            ({"the": "5"}, "'the': '5'"), ({"the": b"5"}, "'the': b'5'"), ({"the": True}, "'the': True"),
                            ({1: 5.0}, "the key 1 is no string")]:
        with pytest.raises(ValueError, match=message):
            GeneralFrequencies(counts, 1e6)
    with pytest.raises(ValueError, match="positive finite number, got '1000'"):
        GeneralFrequencies({"the": 1.0}, "1000")
    with pytest.raises(ValueError, match="positive finite number, got 1000000"):  # an OverflowError before
        GeneralFrequencies({"the": 1.0}, 10**400)
    assert GeneralFrequencies({"the": 0, "enzyme": 3}, 1e6).relative("enzyme") == 3e-6
    with pytest.raises(ValueError, match=r"total \(1,000\) is less than the sum of its counts \(1,000.5\)"):
        GeneralFrequencies({"a": 1000.5}, 1000.0)
    assert GeneralFrequencies({"a": 0.1, "b": 0.2}, 0.3).total == 0.3, "a sum past the total by rounding alone"


def test_general_table_from_file(tmp_path):
    path = tmp_path / "general.tsv"
    path.write_text("# comment\nThe\t10\nthe\t5\n\nenzyme\t2.5\n")
    table = GeneralFrequencies.from_file(path)
    counts = WordCounts.from_mapping({"enzyme": 5, "kinase": 3}, 1)
    assert mine_anchors(counts, general=path, k=2, min_count=1) == mine_anchors(counts, general=table, k=2,
                                                                                   min_count=1)
    assert table.count("the") == 15 and table.total == 17.5
    assert table.source == str(path), "the whole path, as anchors files record where general English came from"
    assert GeneralFrequencies.from_file(path, total=1000).relative("enzyme") == 0.0025
    with pytest.raises(ValueError, match=re.escape("total (10) is less than the sum of its counts (17.5)")):
        GeneralFrequencies.from_file(path, total=10)  # relative frequencies summing past 1
    for bad, message in [("word 10\n", "expected 'word<TAB>count'"), ("word\tmany\n", "not a number"),
                         ("the\t1000\nprotein\t20\tNOUN\n", r"line 2: expected 'word<TAB>count', got 'protein\\t20\\tNOUN'"),
                         ("word\t-3\n", "non-negative"), ("word\tnan\n", "non-negative"), ("\n# only\n", "no entries")]:
        path.write_text(bad)
        with pytest.raises(ValueError, match=message):
            GeneralFrequencies.from_file(path)
    with pytest.raises(FileNotFoundError):
        GeneralFrequencies.from_file(tmp_path / "missing.tsv")


def test_mine_anchors_equals_reference_and_round_trips(tmp_path):
    rng = random.Random(random.getrandbits(64))  # seeded by the test's seed
    vocabulary = ["enzyme", "receptor", "the", "of", "binding", "kinase", "frataxin", "12", "e.g", "xq-7"]
    texts = [" ".join(rng.choice(vocabulary) for _ in range(rng.randrange(1, 30))) for _ in range(300)]
    counts = count_words(texts, progress=False)
    general = GeneralFrequencies.default()
    anchors = mine_anchors(counts, general, k=5)
    expected = reference.select_anchors(counts.counts, general.counts, general.total, k=5)
    assert [(a.word, a.score) for a in anchors] == expected
    assert "12" not in anchors.words
    anchors.save(tmp_path / "anchors.json")
    assert Anchors.load(tmp_path / "anchors.json") == anchors
    assert mine_anchors(counts, general, k=5) == anchors
    assert anchors.general_source == general.source == "google-web-trillion (wordsegment)"


def test_the_default_min_count_admits_words_at_it_and_not_below(seed):
    """Left out, min_count grows with the corpus (reference.default_min_count): a word occurring
    exactly that often is an anchor, one occurrence fewer is not."""
    rng = random.Random(seed)
    while True:  # a corpus whose default the two words themselves do not move
        filler = {f"w{i}": rng.randrange(1, 100) for i in range(rng.randrange(100, 3000))}
        default = reference.default_min_count(sum(filler.values()))
        counts = {**filler, "frataxin": default, "zymogen": default - 1}
        if reference.default_min_count(sum(counts.values())) == default:
            break
    general = GeneralFrequencies({"the": 1.0}, total=1e6)
    with pytest.warns(DiffmaskWarning, match="qualify as anchors"):
        anchors = mine_anchors(counts, general, k=len(counts))
    assert anchors.min_count == default and "frataxin" in anchors.words and "zymogen" not in anchors.words
    expected = reference.select_anchors(counts, general.counts, general.total, k=len(counts))
    assert [(a.word, a.score) for a in anchors] == expected


def test_a_cased_general_table_is_found_by_a_word_in_another_case(tmp_path):
    """A table that keeps case ("DNA") gave the word "dna" of a corpus counted with case kept no
    count at all, and so the TF-ICF of a word unseen in general English: an anchor."""
    table = tmp_path / "general.tsv"
    table.write_text("the\t1000\nDNA\t500\nprotein\t10\nof\t900\nbinds\t800\nenzyme\t700\n")
    general = GeneralFrequencies.from_file(table, lowercase=False)
    assert general.count("dna") == general.count("Dna") == general.count("DNA") == 500
    assert general.count("dna-protein") == 10 and general.count("zzz") == 0
    counts = count_words(["the dna of the protein binds dna the enzyme binds DNA"] * 10, lowercase=False,
                         progress=False)
    anchors = mine_anchors(counts, general, k=7, min_count=1)
    assert anchors.words[0] == "protein", "the one word general English makes rare"
    assert general.lowercased().source == str(table) == anchors.general_source
    assert {anchor.word: anchor.general_count for anchor in anchors} == {
        "protein": 10, "dna": 500, "DNA": 500, "the": 1000, "of": 900, "binds": 800, "enzyme": 700}
    expected = reference.select_anchors(counts.counts, general.counts, general.total, k=7, min_count=1)
    assert [(a.word, a.score) for a in anchors] == expected
    assert reference.general_count("dna", {"DNA": 5.0, "dna": 2.0}) == 2.0, "a word as written comes first"
    cased = {"DNA": 5.0, "Dna": 2.0}
    assert reference.general_count("dna", cased) == 0, "unfolded: the table as given"
    assert reference.general_count("dna", cased, reference.case_folded(cased)) == 7


def test_mine_anchors_equals_reference_at_the_min_count_edge_with_tied_scores(seed):
    """Many words occur exactly min_count - 1, min_count and min_count + 1 times and share their
    general count, so TF-ICF ties abound: the count filter keeps min_count itself (>=, not >)
    and ties break by word, as reference.select_anchors does, for any k and min_count."""
    rng = random.Random(seed)
    edge_words_chosen = 0
    for trial in range(30):
        min_count = rng.randint(2, 12)
        counts, general = {}, {}
        for _ in range(rng.randint(20, 80)):
            word = "".join(rng.choice("abcde") for _ in range(rng.randint(2, 5)))
            if rng.random() < 0.1:
                word = str(rng.randrange(1000))  # no letter: never an anchor
            counts[word] = min_count + rng.choice([-1, -1, 0, 0, 0, 1, 1, rng.randint(-min_count + 1, 30)])
            general_count = rng.choice([None, None, 1e3, 1e3, 1e6])  # absent, or shared with many words
            if general_count is not None:
                general[word] = general_count
        table = GeneralFrequencies(general, 1e10)
        k = rng.randint(1, len(counts) + 2)
        expected = reference.select_anchors(counts, table.counts, table.total, k=k, min_count=min_count)
        message = f"seed={seed} trial={trial} k={k} min_count={min_count}"
        for given in (counts, WordCounts.from_mapping(counts)):
            if not expected:
                with pytest.raises(ValueError, match="no word qualifies"):
                    mine_anchors(given, table, k=k, min_count=min_count)
                continue
            anchors = mine_anchors(given, table, k=k, min_count=min_count)
            assert [(a.word, a.score) for a in anchors] == expected, message
        edge_words_chosen += any(counts[word] == min_count for word, _ in expected)
    assert edge_words_chosen >= 10, f"seed={seed}: too few draws put a word of exactly min_count among the anchors"


def test_words_of_broken_text_are_no_anchors_and_are_named_when_they_would_have_been():
    bullet, apostrophe, glyph = "\u00e2\x80", "don\u00e2\u20ac\u2122t", "pi3k\ue232akt"  # "•" and "don’t" mis-decoded
    general = GeneralFrequencies({"the": 5e9, "enzyme": 1e5, "kinase": 1e5, bullet: 1, apostrophe: 1, glyph: 1}, 1e12)
    counts = {"the": 600, "enzyme": 40, "kinase": 30, bullet: 50, apostrophe: 20, glyph: 3}
    # TF-ICF ranks them: bullet, enzyme, kinase, apostrophe, glyph, the.
    with pytest.warns(DiffmaskWarning,
                      match=r"^1 of the top words is broken text and was skipped .*: '\\xe2\\x80' \(50 times\)\. "):
        anchors = mine_anchors(counts, general, k=3, min_count=1)
    assert anchors.words == ["enzyme", "kinase", "the"]
    assert [(a.word, a.score) for a in anchors] == reference.select_anchors(counts, general.counts, general.total, k=3,
                                                                            min_count=1)
    with pytest.warns(DiffmaskWarning, match=r"^2 of the top words are broken text and were skipped .*\(50 times\), "
                                             r"'don\\xe2\\u20ac\\u2122t' \(20 times; meant 'don’t'\)\. "):
        assert mine_anchors(counts, general, k=4, min_count=1).words == ["enzyme", "kinase", "the"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ranked below the anchors: no warning
        assert mine_anchors({**counts, bullet: 1, apostrophe: 1, glyph: 1}, general, k=2, min_count=1).words == [
            "enzyme", "kinase"]
    with pytest.warns(DiffmaskWarning, match=r"^1 of the top words"), pytest.raises(
            ValueError, match="1 distinct word .*, 1 is broken text$"):
        mine_anchors({bullet: 9}, general, min_count=1)  # named before the error


@needs_data
def test_a_corpus_in_another_language_than_the_general_table_is_warned_of(seed):
    """Words the English table lacks have TF-ICF of their frequency alone: a Russian corpus's
    anchors were its function words ("в", "и", "на"), with TF-ICF in the thousands, and no warning."""
    rng = random.Random(seed)
    function_words = ["в", "и", "на", "с", "не"]
    content = ["фермент", "рецептор", "киназа", "клетка", "белок", "ингибитор", "печень", "ген"]
    lines = [" ".join(rng.choice(function_words if rng.random() < 0.5 else content) for _ in range(12))
             for _ in range(300)]
    with pytest.warns(DiffmaskWarning, match=r"^100% of the occurrences of the corpus's frequent words are of words "
                                             r"the general table \(.*\) lacks: the corpus is probably in another "
                                             r"language .*give a general table of the corpus's language"):
        anchors = mine_anchors(count_words(lines, progress=False), k=5)
    assert set(anchors.words) & set(function_words)
    russian = GeneralFrequencies({word: 10**6 for word in function_words + content}, 10**9)
    english = count_words(DATA / "chemprot" / "abstracts.txt", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mine_anchors(count_words(lines, progress=False), russian, k=5)  # the table of its language
        mine_anchors(english)  # about 2% of its frequent words' occurrences are not in the table


def test_fewer_qualifying_words_than_asked_for_are_warned_of():
    """The library returned fewer than k anchors without a word (the command line alone said so)."""
    general = GeneralFrequencies({"the": 1000, "enzyme": 1, "cell": 10}, total=10000)
    counts = {"enzyme": 10, "receptor": 10, "kinase": 10, "the": 50, "cell": 10, "42": 30, "rare": 1, "odd": 1,
              "caf\ufffd": 40}
    with pytest.warns(DiffmaskWarning, match=r"only 5 words qualify as anchors \(100 asked for\): of the others, "
                                             r"2 occur fewer than 2 times, 1 has no letter, 1 is broken text; "
                                             r"a lower min_count admits more$"):
        assert len(mine_anchors(counts, general, k=100, min_count=2)) == 5
    with pytest.warns(DiffmaskWarning, match=r"only 1 word qualifies as anchors \(9 asked for\): of the others, "
                                             r"2 have no letter$"):
        mine_anchors({"enzyme": 3, "42": 3, "%": 3}, general, k=9, min_count=1)
    with pytest.warns(DiffmaskWarning, match=r"only 2 words qualify as anchors \(3 asked for\)"):
        assert len(mine_anchors({"protein": 5, "kinase": 5, "the": 1}, general, k=3, min_count=3)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del counts["caf\ufffd"]
        assert len(mine_anchors(counts, general, k=3, min_count=2)) == 3


def test_mine_anchors_errors():
    counts = count_words(["enzyme enzyme enzyme 12 12 12"], progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        mine_anchors(counts, k=0)
    for k in (2.5, "20", True):
        with pytest.raises(TypeError, match=re.escape("k (the number of anchors) must be a whole number")):
            mine_anchors(counts, k=k)
    with pytest.raises(TypeError, match="min_count must be a whole number"):
        mine_anchors(counts, min_count=1.5)
    with pytest.raises(TypeError, match="smoothing_per_million must be a number, got '1'"):
        mine_anchors(counts, smoothing_per_million="1")
    with pytest.raises(TypeError, match="smoothing_per_million must be a number, got True"):
        mine_anchors(counts, smoothing_per_million=True)
    with pytest.raises(TypeError, match="general must be a GeneralFrequencies or the path of a word<TAB>count table, "
                                        "got dict"):
        mine_anchors(counts, general={"the": 5})
    with pytest.raises(FileNotFoundError, match="general frequency table file 'missing.tsv' does not exist"):
        mine_anchors(counts, general="missing.tsv")
    assert mine_anchors(counts, k=np.int64(1), min_count=1).words == ["enzyme"]
    with pytest.raises(ValueError, match="no word qualifies"):
        mine_anchors(count_words(["12 12 12 12"], progress=False))
    # The refusal names what kept the words out, as the warning of too few anchors does.
    with pytest.raises(ValueError, match=r"^no word qualifies as an anchor: of the corpus's 3 distinct words \(25 in "
                                         r"all\), 3 are citation syntax \(et al., cf.\)$"):
        mine_anchors(WordCounts.from_mapping({"et": 10, "al": 10, "cf": 5}))
    with pytest.raises(ValueError, match=r"of the corpus's 4 distinct words \(17 in all\), 1 occurs fewer than 3 "
                                         r"times, 1 has no letter, 2 are citation syntax \(et al., cf.\); lower "
                                         r"min_count"):
        mine_anchors(WordCounts.from_mapping({"et": 10, "al": 3, "12": 3, "enzyme": 1}))
    with pytest.raises(ValueError, match="empty"):
        mine_anchors(WordCounts())
    for bad, error, message in [({1: 5, "the": 50}, TypeError, r"the words of counts must be strings, got 1 \(int\)"),
                                ([("kinase", 10)], TypeError, "a word -> count mapping .*got list"),
                                ({"kinase": float("nan")}, ValueError, "count of 'kinase' must be a non-negative integer"),
                                ({"kinase": "10"}, ValueError, "count of 'kinase' must be a non-negative integer"),
                                ({"kinase": float("inf")}, ValueError, "count of 'kinase' must be a non-negative integer"),
                                ({"kinase": True}, ValueError, "count of 'kinase' must be a non-negative integer")]:
        with pytest.raises(error, match=message):
            mine_anchors(bad, k=1, min_count=1)


def test_anchors_mined_against_numpy_counts_save_as_plain_json(tmp_path):
    """A general table built from numpy arrays hands numpy numbers on to the anchors."""
    general = GeneralFrequencies(dict(zip(["the", "cell", "kinase"], np.array([1000, 50, 2]))), total=np.int64(10**6))
    anchors = mine_anchors({"kinase": 10, "the": 40, "cell": 5}, general, k=2, min_count=1)
    anchors.save(tmp_path / "anchors.json")
    loaded = Anchors.load(tmp_path / "anchors.json")
    assert loaded.words == anchors.words == ["kinase", "cell"]
    assert [a.general_count for a in loaded] == [2, 50] and loaded.general_total == 10**6


@needs_data
@pytest.mark.filterwarnings("ignore:.*top words (is|are) broken text")
@pytest.mark.parametrize(
    "corpus, expected",
    [("chemprot/abstracts.txt", {"receptor", "inhibition", "inhibitor"}), ("acl_arc/corpus.txt", {"lexical", "corpus", "semantic"})],
)
def test_default_anchors_are_frequent_domain_words(corpus, expected):
    counts = count_words(DATA / corpus, progress=False)
    anchors = mine_anchors(counts, k=20)
    assert expected <= set(anchors.words), anchors.table()
    assert all(a.target_count >= anchors.min_count and reference.is_anchor_candidate(a.word) for a in anchors)
    # One-off names and typos never make it: every anchor is among the corpus's common words.
    common = {w for w, _ in counts.most_common(2000)}
    assert set(anchors.words) <= common, anchors.table()


@needs_data
def test_broken_text_of_acl_arc_is_named_not_mined():
    counts = count_words(DATA / "acl_arc/corpus.txt", progress=False)
    with pytest.warns(DiffmaskWarning,
                      match=r"top words (is|are) broken text.*'\\xe2\\x80\\xa2' \(39 times; meant '•'\).*UTF-8 read "
                            r"as Latin-1"):
        anchors = mine_anchors(counts, k=20)
    assert all(reference.is_anchor_candidate(word) for word in anchors.words), anchors.table()


@needs_data
def test_citation_syntax_is_no_anchor_of_acl_arc():
    """"et" and "al" (of "et al.") were ACL-ARC's anchors 2 and 4 and drew a third of the masking
    weight; the words after them are the field's."""
    counts = count_words(DATA / "acl_arc/corpus.txt", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiffmaskWarning)  # the corpus's broken text, named above
        anchors = mine_anchors(counts, k=20)
    assert {"et", "al"} <= {word for word, _ in counts.most_common(300)}
    assert not {"et", "al", "cf"} & set(anchors.words) and anchors.words[:3] == ["lexical", "corpus", "semantic"]
    # Nor "cf." with the corpus's placeholder after it, or the years that tell an author's works apart.
    assert counts["cfxxx"] == 25 and counts["1997a"] and "cfxxx" not in anchors.words
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiffmaskWarning)
        widest = mine_anchors(counts, k=300).words
    assert not [word for word in widest if reference.is_citation_word(word) or word[:4].isdigit()], widest
    general = GeneralFrequencies.default().lowercased()
    assert [(a.word, a.score) for a in anchors] == reference.select_anchors(
        dict(counts.counts), general.counts, general.total, k=20, min_count=anchors.min_count)


def test_citation_words_are_left_out_whatever_their_case_and_named_when_few_qualify():
    general = GeneralFrequencies({"the": 5e9, "protein": 1e6}, 1e12)
    for lowercase, words in ((True, {"et": 90, "al": 90, "i.e": 40, "protein": 30}),
                             (False, {"Et": 90, "al": 90, "E.g": 40, "protein": 30})):
        counts = WordCounts.from_mapping(words, 10, lowercase=lowercase)
        with pytest.warns(DiffmaskWarning, match=r"only 1 word qualifies as anchors \(3 asked for\): of the others, "
                                                 r"3 are citation syntax \(et al., cf.\)"):
            assert mine_anchors(counts, general, k=3, min_count=1).words == ["protein"]
        assert reference.select_anchors(words, general.counts, general.total, k=3, min_count=1)[0][0] == "protein"
    assert reference.is_anchor_candidate("etc.") and not reference.is_anchor_candidate(reference.normalize_word("etc."))
    for citation in ("cfXXX", "etxxxx", "2004a", "1997B", "1850c"):
        assert reference.is_citation_word(citation) and not reference.is_anchor_candidate(citation), citation
    for word in ("2004", "x2004a", "2004ab", "cfx", "xxx", "1450a", "mp3", "cox-2"):
        assert not reference.is_citation_word(word), word


def test_case_kept_counts_look_general_words_up_in_lowercase():
    general = GeneralFrequencies({"the": 5e9, "there": 1e9, "enzyme": 1e4, "long": 1e8, "term": 1e8}, 1e12)
    counts = WordCounts.from_mapping({"The": 500, "There": 400, "the": 900, "Enzyme": 300, "Long-Term": 50}, 10,
                                     lowercase=False)
    anchors = mine_anchors(counts, general, k=2, min_count=1)
    assert anchors.words == ["Enzyme", "Long-Term"]
    assert [a.general_count for a in anchors] == [1e4, 1e8]
    assert reference.select_anchors(dict(counts.counts), general.counts, general.total, k=2, min_count=1) == [
        (a.word, a.score) for a in anchors]
    # A table that keeps case is read as written first.
    cased = GeneralFrequencies({"The": 7.0, "the": 5e9}, 1e12)
    assert cased.count("The") == 7.0 and cased.count("THE") == 5e9


@pytest.mark.parametrize("smoothing", [float("nan"), float("inf"), 0.0, -1.0])
def test_smoothing_must_be_positive_and_finite(smoothing):
    counts = WordCounts.from_mapping({"enzyme": 10, "cell": 5}, 1)
    with pytest.raises(ValueError, match="smoothing_per_million"):
        mine_anchors(counts, k=1, min_count=1, smoothing_per_million=smoothing)


@pytest.mark.parametrize("total", [float("nan"), float("inf"), 0.0])
def test_general_total_must_be_positive_and_finite(total):
    with pytest.raises(ValueError, match="positive finite"):
        GeneralFrequencies({"the": 1.0}, total)


def test_general_table_file_with_a_bom_or_bad_bytes(tmp_path):
    table = tmp_path / "general.tsv"
    table.write_bytes("\ufeffthe\t100\nenzyme\t3\n".encode("utf-8"))
    assert GeneralFrequencies.from_file(table).counts == {"the": 100.0, "enzyme": 3.0}
    table.write_bytes(b"the\t100\n\xff\xfe\t3\n")
    with pytest.raises(ValueError, match="general.tsv' line 2: not UTF-8"):
        GeneralFrequencies.from_file(table)
    # Far into a file the line is still exact (a text decoder reads ahead in chunks).
    table.write_bytes(b"".join(b"word%d\t%d\n" % (i, i + 1) for i in range(2499)) + b"caf\xe9\t3\nthe\t1\n")
    with pytest.raises(ValueError, match="general.tsv' line 2500: not UTF-8"):
        GeneralFrequencies.from_file(table)
    table.write_bytes(b"the\t100\r\nenzyme\t3\r\n")  # Windows line ends
    assert GeneralFrequencies.from_file(table).counts == {"the": 100.0, "enzyme": 3.0}


@pytest.mark.parametrize("damage, problem", [
    ("no anchors key", "anchors"), ("anchor field missing", "score"), ("unknown field", "colour"),
    ("total as text", "target_total must be a finite number"), ("count as text", "target_count"),
    ("word as number", "must be one word"),
    ("duplicate anchor", "anchor 'enzyme' is listed twice"),
    ("two words", "must be one word (non-empty, no whitespace), got 'two words'"),
    ("empty word", "must be one word"),
    ("punctuation", "anchor 'enzyme,' is not a counted word"),
    ("negative count", "target_count of anchor 'cell' must be an integer from 1 to target_total (15), got -5"),
    ("count beyond total", "got 16"), ("fractional count", "got 2.5"),
    ("negative general count", "general_count of anchor 'enzyme' must not be negative"),
    ("zero total", "target_total must be an integer of at least 1, got 0"),
    ("min count zero", "min_count must be an integer of at least 1"),
    ("zero smoothing", "smoothing_per_million must be positive"),
    ("huge general count", "general_count of anchor 'enzyme' must be a finite number, got an integer of 1,329 bits, "
                           "beyond a float's range"),
    ("endless total", "Exceeds the limit (4300 digits) for integer string conversion"),
])
def test_a_damaged_anchors_file_is_a_clear_error(tmp_path, damage, problem):
    path = tmp_path / "anchors.json"
    mine_anchors(WordCounts.from_mapping({"enzyme": 10, "cell": 5}, 1), k=2, min_count=1).save(path)
    payload = json.loads(path.read_text())
    first, second = payload["anchors"]
    edits = {"duplicate anchor": (second, "word", "enzyme"), "two words": (first, "word", "two words"),
             "empty word": (first, "word", ""), "punctuation": (first, "word", "enzyme,"),
             "negative count": (second, "target_count", -5), "count beyond total": (second, "target_count", 16),
             "fractional count": (second, "target_count", 2.5),
             "negative general count": (first, "general_count", -1.0), "zero total": (payload, "target_total", 0),
             "min count zero": (payload, "min_count", 0), "zero smoothing": (payload, "smoothing_per_million", 0.0),
             "huge general count": (first, "general_count", 10**400)}  # JSON holds any integer; a float cannot
    if damage in edits:
        record, field, value = edits[damage]
        record[field] = value
    elif damage == "no anchors key":
        del payload["anchors"]
    elif damage == "anchor field missing":
        del payload["anchors"][0]["score"]
    elif damage == "total as text":
        payload["target_total"] = "x"
    elif damage == "count as text":
        payload["anchors"][1]["target_count"] = "5"
    elif damage == "word as number":
        payload["anchors"][0]["word"] = 7
    elif damage == "endless total":  # more digits than Python reads (or json.dumps writes)
        payload["general_total"] = "ENDLESS"
    else:
        payload["colour"] = "blue"
    path.write_text(json.dumps(payload).replace('"ENDLESS"', "9" * 5000))
    with pytest.raises(ValueError, match="not a valid anchors file: .*" + re.escape(problem)):
        Anchors.load(path)
    with pytest.raises(IsADirectoryError, match=f"anchors file '{tmp_path}' is a folder, not a file"):
        Anchors.load(tmp_path)


def test_anchors_with_lone_surrogates_save_and_load(tmp_path):
    counts = WordCounts.from_mapping({"enzyme\ud83d": 10, "cell": 5}, 1)
    with pytest.warns(DiffmaskWarning, match="top words is broken text.*enzyme"):
        assert mine_anchors(counts, k=2, min_count=1).words == ["cell"]  # broken text is no anchor...
    anchors = Anchors((Anchor("enzyme\ud83d", 9.0, 10, 0.0), Anchor("cell", 2.0, 5, 1e6)), 15, 1e12, 1, 0.5)
    anchors.save(tmp_path / "anchors.json")  # ...but an anchor list made by hand keeps it
    assert Anchors.load(tmp_path / "anchors.json") == anchors


def test_a_cased_general_table_meets_a_lowercased_corpus():
    """A table built by hand with "DNA" and "Kinase" (and "kinase") still knows the words of a
    lowercased corpus: its counts are summed per lowercase word."""
    general = GeneralFrequencies({"the": 5e9, "DNA": 4e7, "Kinase": 1e5, "kinase": 2e5, "enzyme": 1e4}, 1e12)
    assert general.lowercased().counts == {"the": 5e9, "dna": 4e7, "kinase": 3e5, "enzyme": 1e4}
    assert general.lowercased().total == general.total
    plain = GeneralFrequencies({"the": 5e9, "dna": 4e7}, 1e12)
    assert plain.lowercased() is plain
    counts = {"the": 5000, "dna": 3000, "kinase": 100, "enzyme": 100}
    anchors = mine_anchors(WordCounts.from_mapping(counts, 1), general, k=4, min_count=1)
    assert {a.word: a.general_count for a in anchors} == {"the": 5e9, "dna": 4e7, "kinase": 3e5, "enzyme": 1e4}
    assert mine_anchors(counts, general, k=4, min_count=1) == anchors  # a plain mapping of lowercase words too
    assert [(a.word, a.score) for a in anchors] == reference.select_anchors(
        counts, general.lowercased().counts, general.total, k=4, min_count=1)
    # Counts that keep case look words up as written, then in lowercase.
    cased = mine_anchors({"DNA": 3000, "Kinase": 100}, general, k=2, min_count=1)
    assert {a.word: a.general_count for a in cased} == {"DNA": 4e7, "Kinase": 1e5}


def test_a_general_table_with_decomposed_accents_meets_the_composed_corpus_words(tmp_path):
    """Corpus words are composed (NFC); a table's "re" + U+0301 + "sume" + U+0301 met none of
    them, and "résumé" became an anchor as a word general English never uses."""
    decomposed, composed = "re\u0301sume\u0301", "r\u00e9sum\u00e9"
    general = GeneralFrequencies({"the": 5e9, decomposed: 3e9, composed: 2e9, "kinase": 1e3}, 1e12)
    assert general.counts == {"the": 5e9, composed: 5e9, "kinase": 1e3}
    (tmp_path / "general.tsv").write_text(f"the\t5000000000\nR{decomposed[1:]}\t5000000000\nkinase\t1000\n",
                                          encoding="utf-8")
    from_file = GeneralFrequencies.from_file(tmp_path / "general.tsv", total=1e12)
    assert from_file.counts == general.counts and from_file.count(composed) == 5e9
    counts = count_words([f"the kinase binds {decomposed} the {composed}"] * 50, progress=False)
    anchors = mine_anchors(counts, general, k=2, min_count=1)
    assert {a.word: a.general_count for a in anchors} == {"kinase": 1e3, "binds": 0}


def test_a_general_table_split_from_raw_text_meets_the_words_as_they_are_counted(tmp_path):
    """A table made by splitting text on whitespace spreads a word over "protein,", "(protein)"
    and "protein."; corpus words are stripped of that punctuation, so only the bare form met
    them, and "protein" looked 200 times rarer than it is. Keys are normalized as counted words
    are (case kept: lookups fold it), their counts summed; a key of punctuation alone stays."""
    raw = {"The": 4e9, "the.": 1e9, "protein": 5.0, "protein,": 100.0, "(protein)": 1000.0, "\u201cprotein\u201d": 10.0,
           ",": 3e9, "kinase": 2.0}
    general = GeneralFrequencies(raw, 1e12)
    assert general.counts == {"The": 4e9, "the": 1e9, "protein": 1115.0, ",": 3e9, "kinase": 2.0}
    assert general.count("protein") == 1115.0 and general.count("the") == 1e9
    (tmp_path / "general.tsv").write_text("".join(f"{word}\t{count}\n" for word, count in raw.items()), encoding="utf-8")
    from_file = GeneralFrequencies.from_file(tmp_path / "general.tsv", total=1e12)
    assert from_file.counts == {"the": 5e9, "protein": 1115.0, ",": 3e9, "kinase": 2.0}
    counts = count_words(["the protein, the kinase."] * 50, progress=False)
    assert {a.word: a.general_count for a in mine_anchors(counts, general, k=1, min_count=1)} == {"kinase": 2.0}


def test_a_general_count_too_large_for_a_float_is_named():
    with pytest.raises(ValueError, match=r"general counts must be finite and non-negative; 'the': 1000.*is too large"):
        GeneralFrequencies({"a": 1, "the": 10**400}, 1e12)


def test_counts_saved_with_decomposed_accents_are_refused_where_such_a_word_is_read(tmp_path, monkeypatch):
    """Counts saved before words had their accents composed hold "zymogene" + U+0301 apart: the
    anchor mined from them could not be saved, and JSON counts did not say why they were refused."""
    from diffmask_fast import counting

    old = {"zymogene\u0301": 40, "the": 2, "binds": 1}
    with monkeypatch.context() as earlier:  # as an earlier version saved them: no composition checked
        earlier.setattr(counting, "first_unnormalized", lambda words, lowercase: None)
        WordCounts(old, documents=3).save(tmp_path / "old.counts")
        WordCounts(old, documents=3).save(tmp_path / "old.json")
    with pytest.raises(ValueError, match=r"'zymogene\\u0301' is counted as 'zymogen\\xe9' \(Unicode NFC.*"
                                         r"kept decomposed accents apart: count again"):
        WordCounts.load(tmp_path / "old.json")
    loaded = WordCounts.load(tmp_path / "old.counts")  # binary counts are mapped, their words not read
    with pytest.raises(ValueError, match=r"the counts hold the anchor 'zymogene\\u0301', which is now counted as "
                                         r"'zymogen\\xe9'.*count the corpus again"):
        mine_anchors(loaded, k=2, min_count=1)


def test_a_general_table_word_holding_whitespace_is_refused(tmp_path):
    """'the \t500' kept the key 'the ': "the" then counted 0 in general English and became an anchor."""
    table = tmp_path / "general.tsv"
    for line in ("the \t500", " the\t500", "new york\t7"):
        table.write_text(f"enzyme\t3\n{line}\n")
        with pytest.raises(ValueError, match="line 2: the word .* holds whitespace"):
            GeneralFrequencies.from_file(table)


def test_ligatures_from_pdfs_do_not_make_common_words_anchors():
    general = GeneralFrequencies({"the": 5e6, "significantly": 1e5, "kinase": 10.0}, total=1e8)
    anchors = mine_anchors({"kinase": 50, "signiﬁcantly": 50, "the": 400}, general, k=1, min_count=1)
    assert anchors.words == ["kinase"]


def test_a_general_table_made_in_code_refuses_words_with_whitespace():
    """from_file refused them; made in code, "the " left "the" uncounted, and "the" an anchor."""
    for word in ("the ", " enzyme", "", "new york"):
        with pytest.raises(ValueError, match=f"the general count's word {re.escape(repr(word))} is empty or holds "
                                             "whitespace"):
            GeneralFrequencies({word: 10, "kinase": 1}, total=100)


def test_anchors_that_would_not_load_are_not_saved(tmp_path):
    """A tiny smoothing scored a word general English lacks infinite; saved as null, the file did not load."""
    general = GeneralFrequencies({"the": 1000}, total=1e6)
    with pytest.raises(ValueError, match=r"smoothing_per_million 1e-310 is too small: 'frataxin'.*scores inf"):
        mine_anchors({"frataxin": 10, "the": 40}, general, k=2, min_count=1, smoothing_per_million=1e-310)
    anchors = Anchors((Anchor("frataxin", float("inf"), 10, 0.0),), 50, 1e6, 1, 10.0)
    with pytest.raises(ValueError, match="cannot save these anchors, which could not be loaded again: the score of "
                                         "anchor 'frataxin' must be a finite number, got None"):
        anchors.save(tmp_path / "anchors.json")
    assert list(tmp_path.iterdir()) == []


def test_anchors_save_and_load_as_equals_whatever_numbers_and_sequence_they_were_given(tmp_path):
    from fractions import Fraction

    general = GeneralFrequencies({"the": 1000, "kinase": 2}, total=1e6)
    mined = mine_anchors({"kinase": 10, "the": 40}, general, k=1, min_count=1, smoothing_per_million=Fraction(1, 2))
    mined.save(tmp_path / "mined.json")
    assert Anchors.load(tmp_path / "mined.json") == mined and mined.smoothing_per_million == 0.5
    listed = Anchors([Anchor("kinase", 5.0, 10, 2.0)], 50, 1e6, 1, 10.0)
    listed.save(tmp_path / "listed.json")
    assert Anchors.load(tmp_path / "listed.json") == listed


def test_anchors_no_more_frequent_than_in_general_english_are_warned_of():
    """A small corpus passes few words through the count filter, and "the" became an anchor unsaid."""
    general = GeneralFrequencies({"the": 5e5, "of": 3e5, "kinase": 1.0}, total=1e6)
    with pytest.warns(DiffmaskWarning, match=r"2 of the 3 anchors are at most 2 times as frequent in the corpus as in "
                                             r"general English.*'the' \(1\.\d\d\), 'of' \(1\.\d\d\)\. Only 3 words"):
        anchors = mine_anchors({"kinase": 20, "the": 60, "of": 35}, general, k=5, min_count=1)
    assert anchors.words == ["kinase", "the", "of"]
    tenth = GeneralFrequencies({f"word{i}": 100.0 for i in range(10)}, total=1000.0)
    with pytest.warns(DiffmaskWarning, match=r"2 of the 2 anchors .* Only 10 words occur often enough to be anchors"):
        mine_anchors({f"word{i}": 10 for i in range(10)}, tenth, k=2, min_count=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mine_anchors({"kinase": 20, "the": 60, "of": 35}, general, k=1, min_count=1).words == ["kinase"]
    exactly_twice = GeneralFrequencies({"foo": 1.0, "bar": 999999.0}, total=1e6)  # "foo": TF-ICF 2.0 exactly
    with pytest.warns(DiffmaskWarning, match=r"1 of the 1 anchors are at most 2 times as frequent"):
        anchors = mine_anchors({"foo": 3, "bar": 999997}, exactly_twice, k=1, min_count=3, smoothing_per_million=1.0)
    assert anchors.words == ["foo"] and anchors[0].score == 2.0


def test_the_table_keeps_its_columns_for_scores_of_any_size():
    """A tiny smoothing gives TF-ICF scores near 1e308: the table shows them in a few digits, its
    columns aligned, not as 300-digit numbers."""
    anchors = Anchors((Anchor("kinase", 1.7e308, 40, 0.0), Anchor("enzyme", 12.5, 30, 2.0e6)), target_total=1000,
                      general_total=1e12, min_count=1, smoothing_per_million=1e-300)
    lines = anchors.table().splitlines()
    assert len({len(line) for line in lines}) == 1, "\n".join(lines)
    assert "1.7e+308" in lines[1] and "12.50" in lines[2]


def test_a_general_table_holds_what_its_count_finds_hashes_and_names_a_bad_n():
    """``in`` read the keys as written ("the" was not in a table of "The" that counts it); the
    frozen table could not be hashed; most_common(None) failed in a comparison."""
    general = GeneralFrequencies({"The": 5, "café": 3, "long": 4, "term": 2}, 100)
    assert [word in general for word in ("The", "the", "CAFÉ", "long-term", "zzz", 3)] == [
        True, True, True, True, False, False]
    again = GeneralFrequencies({"The": 5, "café": 3, "long": 4, "term": 2}, 100)
    assert general == again and len({general, again}) == 1
    with pytest.raises(TypeError, match=r"n \(words\) must be a whole number, got None"):
        general.most_common(None)
    with pytest.raises(ValueError, match=r"n \(words\) must be at least 0, got -1"):
        general.most_common(-1)
    assert general.most_common(0) == []
