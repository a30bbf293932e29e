"""Arguments of the wrong kind given to the public API are refused by name: never read as
something else (the string "false" as true, "ab" as the words "a" and "b"), nor failing deep
inside with an AttributeError or a torch error that names none of them."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from diffmask_fast.collator import DifferenceMaskingCollator
from diffmask_fast.contextual import ContextualAnchors, contextual_anchor_vectors
from diffmask_fast.counting import MAX_THREADS, count_words
from diffmask_fast.embedding import WordEmbedder
from diffmask_fast.general import GeneralFrequencies
from diffmask_fast.index import AnchorIndex
from diffmask_fast.losses import weighted_mlm_loss
from diffmask_fast.masker import DifferenceMasker
from diffmask_fast.mlm_model import load_masked_lm
from diffmask_fast.pretrain import PretrainConfig
from diffmask_fast.scoring import ScoreTable, WordScorer
from diffmask_fast.terms import TermMatcher

SCORES = {"enzyme": 0.9, "binds": 0.4}
META = "is on the 'meta' device, which holds no values"


def test_a_flag_given_as_a_string_is_refused_not_read_as_true(tmp_path, bert_wordpiece, tiny_bert_mlm):
    table = tmp_path / "general.tsv"
    table.write_text("The\t100\nProtein\t5\n", encoding="utf-8")
    with pytest.raises(TypeError, match="lowercase must be True or False, got 'false'"):
        GeneralFrequencies.from_file(table, lowercase="false")
    embedder = WordEmbedder(tiny_bert_mlm, bert_wordpiece, pooling="mean", progress=False)
    with pytest.raises(TypeError, match="lowercase must be True or False, got 'no'"):
        contextual_anchor_vectors(embedder, ["the enzyme binds"], ["enzyme"], lowercase="no")
    tiny_bert_mlm.save_pretrained(tmp_path / "model")
    with pytest.raises(TypeError, match="init_mlm_head must be True or False, got 'no'"):
        load_masked_lm(str(tmp_path / "model"), init_mlm_head="no")


def test_objects_of_another_kind_are_named(bert_wordpiece, tiny_bert_mlm):
    counts = count_words(["the enzyme binds"], progress=False)
    for other in ({"the": 1}, None):
        with pytest.raises(TypeError, match=f"can merge only WordCounts, got {type(other).__name__}"):
            counts.merge(other)
        with pytest.raises(TypeError, match=f"can subtract only WordCounts, got {type(other).__name__}"):
            counts.subtract(other)
    with pytest.raises(TypeError, match="general counts must be a mapping of words to counts, got list"):
        GeneralFrequencies([("the", 5)], 100.0)
    general = GeneralFrequencies({"the": 5.0}, 100.0)
    for lookup in (general.count, general.relative):
        with pytest.raises(TypeError, match="word must be a string, got NoneType"):
            lookup(None)
    with pytest.raises(TypeError, match="from_collator takes a DifferenceMaskingCollator, got NoneType"):
        DifferenceMasker.from_collator(None)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module .*got NoneType"):
        WordEmbedder(None, bert_wordpiece)
    with pytest.raises(TypeError, match="embedder must be a WordEmbedder, got NoneType"):
        WordScorer(None, ["enzyme"])
    collator = DifferenceMaskingCollator(bert_wordpiece, SCORES)
    with pytest.raises(TypeError, match="a collator takes a list of examples .*got NoneType"):
        collator(None)


def test_tensors_on_the_meta_device_are_refused_by_name(bert_wordpiece):
    ids = torch.tensor([bert_wordpiece("the enzyme binds")["input_ids"]])
    collator = DifferenceMaskingCollator(bert_wordpiece, SCORES)
    with pytest.raises(ValueError, match=f"input_ids {META}"):
        collator.mask_batch(ids.to("meta"))
    with pytest.raises(ValueError, match=f"input_ids {META}"):
        TermMatcher(bert_wordpiece, ["enzyme"]).spans(ids.to("meta"))
    with pytest.raises(ValueError, match=re.escape("field 'input_ids' of example 0 ") + META):
        collator([{"input_ids": ids[0].to("meta")}])
    masker = DifferenceMasker(bert_wordpiece, SCORES)
    with pytest.raises(ValueError, match=f"attention_mask {META}"):
        masker(ids, torch.ones_like(ids).to("meta"))
    anchors = torch.randn(5, 8)
    with pytest.raises(ValueError, match="anchors are on the 'meta' device"):
        AnchorIndex(anchors.to("meta"), "exact")
    with pytest.raises(ValueError, match="queries are on the 'meta' device"):
        AnchorIndex(anchors, "exact").search(torch.randn(3, 8).to("meta"))


def test_the_weighted_loss_names_labels_outside_the_vocabulary_and_integer_logits():
    logits, weights = torch.randn(2, 3, 11), torch.ones(2, 3)
    labels = torch.tensor([[24, -100, 3], [4, 5, -100]])
    with pytest.raises(ValueError, match=re.escape("labels must be token ids in [0, 11) (the logits' vocabulary) or "
                                                   "-100; 1 are not (e.g. 24)")):
        weighted_mlm_loss(logits, labels, weights)
    with pytest.raises(ValueError, match=r"1 are not \(e\.g\. -3\)"):
        weighted_mlm_loss(logits, torch.tensor([[1, -3, -100], [0, 10, -100]]), weights)
    with pytest.raises(TypeError, match="logits must be floating point, got torch.int64"):
        weighted_mlm_loss(logits.long(), labels.clamp(max=10), weights)
    assert torch.isfinite(weighted_mlm_loss(logits, labels.clamp(max=10), weights))


def test_settings_that_are_no_numbers_are_named(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the enzyme binds\n", encoding="utf-8")
    for name in ("mlm_probability", "learning_rate", "epochs", "warmup_ratio", "head_learning_rate"):
        config = PretrainConfig(model="m", corpus=[str(corpus)], output_dir=str(tmp_path / "o"), **{name: "x"})
        with pytest.raises(TypeError, match=f"{name} must be a number, got 'x'"):
            config.check()
    with pytest.raises(ValueError, match=f"threads must be at most {MAX_THREADS:,}, got {2**70}"):
        count_words(["a b"], threads=2**70, progress=False)


def test_one_string_is_not_read_as_a_list_of_its_characters():
    with pytest.raises(TypeError, match="not one string"):
        ScoreTable.from_arrays("ab", [0.1, 0.2])
    table = ScoreTable(SCORES)
    with pytest.raises(TypeError, match="not one string"):
        table.scores_of("enzyme")
    with pytest.raises(TypeError, match="not one string"):
        ContextualAnchors("pk", torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"n \(a number of words\) must be at least 0, got -1"):
        table.top(-1)
    assert table.top(np.int64(1)) == [("enzyme", pytest.approx(0.9))] and table.top(0) == []
