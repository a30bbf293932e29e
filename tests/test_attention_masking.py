"""AttentionMasker: the AttnMask ("most") and MST ("least") baselines, checked against the
[CLS] attention computed here, independently, with an eager copy of the model."""

from __future__ import annotations

import copy
import math
import pickle
from types import SimpleNamespace

import pytest
import torch

from law_checks import binomial_p_value, power_against_bias
from diffmask_fast.attention import AttentionMasker
from diffmask_fast.tokenization import word_boundaries


def random_batch(tokenizer, seed: int, rows: int = 12, max_body: int = 30, left: bool = False):
    """(input_ids, attention_mask, special_tokens_mask) of random rows: first token + random
    ordinary tokens (a few [UNK]-like specials among them, a few flagged only by the special
    tokens mask) + last token, padded right (or left) to a common length."""
    g = torch.Generator().manual_seed(seed)
    boundaries = word_boundaries(tokenizer)
    ordinary = boundaries.random_token_ids
    first, last = tokenizer.cls_token_id, tokenizer.sep_token_id
    lengths = torch.randint(0, max_body + 1, (rows,), generator=g).tolist()
    width = max(lengths) + 2
    ids = torch.full((rows, width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    flagged = torch.zeros((rows, width), dtype=torch.bool)
    for row, n in enumerate(lengths):
        body = ordinary[torch.randint(0, ordinary.numel(), (n,), generator=g)]
        body = torch.where(torch.rand(n, generator=g) < 0.05, torch.tensor(tokenizer.unk_token_id), body)
        sequence = torch.cat([torch.tensor([first]), body, torch.tensor([last])])
        start = width - sequence.numel() if left else 0
        ids[row, start : start + sequence.numel()] = sequence
        attention[row, start : start + sequence.numel()] = 1
        flagged[row, start + 1 : start + 1 + n] = torch.rand(n, generator=g) < 0.05
    return ids, attention, flagged


def reference_attention(model, ids, attention, layer: int, token_type_ids=None) -> torch.Tensor:
    """[B, L]: attention of each row's first real token to every position, averaged over the
    heads of ``layer``, from an eager copy of ``model`` in eval mode."""
    reference = copy.deepcopy(model).eval()
    reference.set_attn_implementation("eager")
    segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    with torch.no_grad():
        out = reference.base_model(input_ids=ids, attention_mask=attention, output_attentions=True, **segments)
    assert out.attentions and all(a is not None for a in out.attentions)
    weights = out.attentions[layer]
    rows = []
    for b in range(ids.shape[0]):
        first = int(attention[b].tolist().index(1))
        rows.append(weights[b, :, first, :].float().mean(dim=0))
    return torch.stack(rows)


def eligible_positions(tokenizer, ids, attention, flagged) -> torch.Tensor:
    never = word_boundaries(tokenizer).never_word[ids]
    return ~never & (attention == 1) & ~flagged


def check_selection(order, scores, eligible, labels, ids, p, message) -> list[int]:
    """The masked set of every row is the top (most) / bottom (least) k eligible tokens by
    score, ties to the earlier position, with k = floor or ceil of p * n; returns the k's."""
    masked = labels != -100
    assert not (masked & ~eligible).any(), f"a special, flagged or padding token was masked; {message}"
    assert torch.equal(labels[masked], ids[masked]), message
    budgets = []
    for b in range(ids.shape[0]):
        positions = eligible[b].nonzero().flatten().tolist()
        k = int(masked[b].sum())
        expected = p * len(positions)
        assert k in (math.floor(expected), math.ceil(expected)), f"row {b}: {k} masked of {len(positions)}; {message}"
        sign = -1.0 if order == "most" else 1.0
        ranked = sorted(positions, key=lambda j: (sign * float(scores[b, j]), j))
        assert set(masked[b].nonzero().flatten().tolist()) == set(ranked[:k]), f"row {b}; {message}"
        budgets.append(k)
    return budgets


@pytest.mark.parametrize("order, layer, left", [("most", -1, False), ("least", -1, False), ("most", 0, True)])
def test_masks_the_top_or_bottom_tokens_by_first_token_attention(bert_wordpiece, tiny_bert_mlm, order, layer, left, seed):
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=16, left=left)
    masker = AttentionMasker(bert_wordpiece, order=order, layer=layer, mlm_probability=0.3, seed=seed)
    masked_ids, labels = masker(ids, attention, flagged, model=tiny_bert_mlm)
    message = f"seed={seed}"
    scores = reference_attention(tiny_bert_mlm, ids, attention, layer)
    eligible = eligible_positions(bert_wordpiece, ids, attention, flagged)
    budgets = check_selection(order, scores, eligible, labels, ids, 0.3, message)
    assert sum(budgets) > 0, message
    untouched = labels == -100
    assert torch.equal(masked_ids[untouched], ids[untouched]), message


@pytest.mark.parametrize("layer", [0, 1, -1, -2])
def test_the_wanted_layer_is_read_from_query_and_key_and_the_pass_stops_there(bert_wordpiece, tiny_bert_mlm, seed,
                                                                              layer):
    """Eager attention returned every layer's [heads, L, L] weights, costing more than the forward
    pass at L = 512; a model on the attention interface gives the one row, and later layers do
    not run."""
    ids, attention, _ = random_batch(bert_wordpiece, seed, rows=6, left=layer == 0)
    masker = AttentionMasker(bert_wordpiece, layer=layer, seed=seed)
    ran = []
    hooks = [block.intermediate.register_forward_hook(lambda module, args, output, i=i: ran.append(i))
             for i, block in enumerate(tiny_bert_mlm.base_model.encoder.layer)]
    try:
        scores = masker._first_token_attention(tiny_bert_mlm, ids, attention)
    finally:
        for hook in hooks:
            hook.remove()
    layers = tiny_bert_mlm.config.num_hidden_layers
    assert ran == list(range(layer % layers)), "the layers after the wanted one's attention are skipped"
    torch.testing.assert_close(scores, reference_attention(tiny_bert_mlm, ids, attention, layer), atol=1e-6, rtol=1e-5)
    assert tiny_bert_mlm.config._attn_implementation == "sdpa", "the implementation is put back"


@pytest.mark.parametrize("path", ["interface", "eager"])
def test_the_attention_pass_sees_the_segments_of_a_sentence_pair(bert_wordpiece, tiny_bert_mlm, seed, path):
    """The ranking ran without token_type_ids, on another input than the model trains on."""
    model = copy.deepcopy(tiny_bert_mlm)
    with torch.no_grad():
        model.base_model.embeddings.token_type_embeddings.weight.mul_(20)  # segments matter, as in a trained model
    if path == "eager":
        model.set_attn_implementation("eager")
    pairs = bert_wordpiece(["the enzyme binds", "a receptor of cells"], ["its ligand in cells", "the protein"],
                           padding=True, return_tensors="pt")
    ids, attention = pairs["input_ids"], pairs["attention_mask"]
    separators = (ids == bert_wordpiece.sep_token_id).long()
    segments = ((separators.cumsum(dim=1) - separators) > 0).long() * attention  # 1 after the first [SEP], as BERT's
    assert segments.any(), "the premise: a second segment"
    masker = AttentionMasker(bert_wordpiece, layer=-1, seed=seed)
    scores = masker._first_token_attention(model, ids, attention, segments)
    torch.testing.assert_close(scores, reference_attention(model, ids, attention, -1, segments), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(scores, masker._first_token_attention(model, ids, attention), atol=1e-4)
    masked_ids, labels = masker(ids, attention, model=model, token_type_ids=segments)
    assert masked_ids.shape == ids.shape and (labels != -100).any()
    with pytest.raises(ValueError, match="token_type_ids must have the shape of input_ids"):
        masker(ids, attention, model=model, token_type_ids=segments[:1])


ENCODERS = {
    "distilbert": ("DistilBertForMaskedLM", "DistilBertConfig", dict(dim=32, n_layers=3, n_heads=4, hidden_dim=64)),
    "albert": ("AlbertForMaskedLM", "AlbertConfig", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                         intermediate_size=64, embedding_size=16)),
    # ALBERT with two attention calls per layer: the interface's calls are not the layers.
    "albert-grouped": ("AlbertForMaskedLM", "AlbertConfig", dict(hidden_size=32, num_hidden_layers=3,
                                                                 num_attention_heads=4, intermediate_size=64,
                                                                 embedding_size=16, inner_group_num=2)),
    "electra": ("ElectraForMaskedLM", "ElectraConfig", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                            intermediate_size=64, embedding_size=16)),
    "roberta": ("RobertaForMaskedLM", "RobertaConfig", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                            intermediate_size=64, pad_token_id=1)),
    "deberta-v2": ("DebertaV2ForMaskedLM", "DebertaV2Config", dict(hidden_size=32, num_hidden_layers=3,
                                                                   num_attention_heads=4, intermediate_size=64)),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_first_token_rows_equal_the_eager_weights_of_other_encoders(name, seed):
    """The row read from the attention interface is the eager weights' row for every encoder
    family that uses the interface; the others (DeBERTa-v2 here, and ALBERT with several attention
    calls per layer) answer None and are read eagerly."""
    import transformers

    from diffmask_fast.attention_weights import first_token_row

    model_class, config_class, options = ENCODERS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % 2**31)
        model = getattr(transformers, model_class)(getattr(transformers, config_class)(vocab_size=100, **options)).eval()
    encoder = model.base_model
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (4, 9), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0
    attention[2, :2] = 0  # left padding: the first token is further right
    first = attention.argmax(dim=1)
    eager = copy.deepcopy(encoder)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        weights = eager(input_ids=ids, attention_mask=attention, output_attentions=True).attentions
        for layer in (0, -1):
            row = first_token_row(encoder, ids, attention, first, layer)
            if name in ("deberta-v2", "albert-grouped"):
                assert row is None
                continue
            expected = weights[layer][torch.arange(4), :, first, :].float().mean(dim=1)
            torch.testing.assert_close(row, expected, atol=1e-6, rtol=1e-5)


def test_a_layer_of_grouped_albert_is_its_last_attention_call_and_counted_by_layers(bert_wordpiece, seed):
    """ALBERT with ``inner_group_num`` 2 records two attention calls per layer: ``layer`` counted
    the calls (layer 1 read layer 0's second, and 3 to 5 were taken on a 3-layer model), and the
    chunk estimate held half the weights eager attention returns."""
    import transformers

    _, config_class, options = ENCODERS["albert-grouped"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % 2**31)
        config = getattr(transformers, config_class)(vocab_size=len(bert_wordpiece), **options)
        model = transformers.AlbertForMaskedLM(config).eval()
    ids, attention, _ = random_batch(bert_wordpiece, seed, rows=10)
    for layer, call in ((0, 1), (1, 3), (-1, 5), (-3, 1)):  # call: the index among the eager weights
        rows = AttentionMasker(bert_wordpiece, layer=layer, seed=seed)._first_token_attention(model, ids, attention)
        torch.testing.assert_close(rows, reference_attention(model, ids, attention, call), atol=1e-6, rtol=1e-5)
    for layer in (3, -4):
        with pytest.raises(ValueError, match=f"layer {layer} is out of range for a model with 3 attention layers"):
            AttentionMasker(bert_wordpiece, layer=layer, seed=seed)._first_token_attention(model, ids, attention)
    per_row = config.num_hidden_layers * config.inner_group_num * config.num_attention_heads * ids.shape[1] ** 2 * 4
    masker = AttentionMasker(bert_wordpiece, seed=seed, attention_memory=3 * per_row + 1)
    passes = []
    hook = model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: passes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        masker._first_token_attention(model, ids, attention)
    finally:
        hook.remove()
    assert passes == [3, 3, 3, 1]


def test_an_additive_or_broadcast_mask_gives_the_row_a_boolean_one_does(seed):
    from diffmask_fast.attention_weights import _first_row

    g = torch.Generator().manual_seed(seed)
    query, key = torch.randn(3, 4, 6, 8, generator=g), torch.randn(3, 4, 6, 8, generator=g)
    allowed = torch.rand(3, 1, 6, 6, generator=g) < 0.7
    allowed[..., 0] = True
    first = torch.tensor([0, 2, 5])
    boolean = _first_row(query, key, allowed, None, first)
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    torch.testing.assert_close(_first_row(query, key, additive, None, first), boolean)
    grouped = _first_row(query, key[:, :2], None, 0.5, first)  # two key heads shared by four query heads
    expected = torch.softmax(torch.einsum("bhd,bhkd->bhk", query[torch.arange(3), :, first],
                                          key[:, :2].repeat_interleave(2, dim=1)) * 0.5, dim=-1).mean(1)
    torch.testing.assert_close(grouped, expected)
    broadcast = _first_row(query, key, allowed[:1, :, :1].expand(1, 1, 1, 6), None, first)
    torch.testing.assert_close(broadcast, _first_row(query, key, allowed[:1, :, :1].expand(3, 1, 6, 6), None, first))


def test_the_row_is_float32_under_autocast(bert_wordpiece, tiny_bert_mlm, seed):
    """Mixed-precision training runs the masker under autocast, which rounded the row to bf16:
    many tokens tied (13 distinct values of 256 in a row), and ties go to the earlier position."""
    from diffmask_fast.attention_weights import _first_row

    g = torch.Generator().manual_seed(seed)
    query, key = torch.randn(2, 4, 64, 8, generator=g), torch.randn(2, 4, 64, 8, generator=g)
    first = torch.tensor([0, 3])
    exact = _first_row(query, key, None, None, first)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = _first_row(query.bfloat16(), key.bfloat16(), None, None, first)
        row = _first_row(query, key, None, None, first)
    assert row.dtype == rounded.dtype == torch.float32
    torch.testing.assert_close(row, exact, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(rounded, _first_row(query.bfloat16(), key.bfloat16(), None, None, first),
                               atol=1e-7, rtol=1e-6)
    ids, attention, _ = random_batch(bert_wordpiece, seed, rows=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = AttentionMasker(bert_wordpiece, seed=seed)._first_token_attention(tiny_bert_mlm, ids, attention)
    assert scores.dtype == torch.float32
    assert _first_row(query.to("meta"), key.to("meta"), None, None, first.to("meta")).shape == (2, 64)
    # A model read through eager attention weights (DeBERTa-v2's) too: its pass runs outside autocast.
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM

    torch.manual_seed(seed)
    deberta = DebertaV2ForMaskedLM(DebertaV2Config(vocab_size=len(bert_wordpiece), hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=64)).eval()
    masker = AttentionMasker(bert_wordpiece, seed=seed)
    exact = masker._first_token_attention(deberta, ids, attention)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(masker._first_token_attention(deberta, ids, attention), exact)


def test_a_batch_over_the_memory_bound_runs_in_chunks(bert_wordpiece, tiny_bert_mlm, seed, monkeypatch):
    """Where a model does not use the attention interface, its eager weights are read in chunks."""
    from diffmask_fast import attention

    monkeypatch.setattr(attention, "first_token_row", lambda *args: None)
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=10)
    config = tiny_bert_mlm.config
    per_row = config.num_hidden_layers * config.num_attention_heads * ids.shape[1] ** 2 * 4
    masker = AttentionMasker(bert_wordpiece, mlm_probability=0.3, seed=seed, attention_memory=3 * per_row + 1)
    passes = []
    hook = tiny_bert_mlm.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: passes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        masked_ids, labels = masker(ids, attention, flagged, model=tiny_bert_mlm)
        scores = masker._first_token_attention(tiny_bert_mlm, ids, attention)
    finally:
        hook.remove()
    assert passes == [3, 3, 3, 1] * 2, f"seed={seed}"
    torch.testing.assert_close(scores, reference_attention(tiny_bert_mlm, ids, attention, -1), atol=1e-6, rtol=1e-5)
    eligible = eligible_positions(bert_wordpiece, ids, attention, flagged)
    assert sum(check_selection("most", scores, eligible, labels, ids, 0.3, f"seed={seed}")) > 0


def test_ids_outside_the_vocabulary_are_refused_before_the_attention_pass(bert_wordpiece, tiny_bert_mlm):
    """They went into the model's embedding, which failed with an IndexError of its own."""
    masker = AttentionMasker(bert_wordpiece, seed=0)
    ids, attention, _ = random_batch(bert_wordpiece, 0)
    ids[1, 0] = len(bert_wordpiece) + 3
    vocabulary = len(bert_wordpiece)
    with pytest.raises(ValueError, match=rf"input_ids hold ids outside the tokenizer's vocabulary \[0, {vocabulary}\)"):
        masker(ids, attention, model=tiny_bert_mlm)


def test_a_model_that_embeds_fewer_ids_than_the_tokenizer_holds_is_named(bert_wordpiece):
    """Tokens added to the tokenizer without resizing the model's embeddings: the attention pass
    failed with an IndexError deep in the embedding lookup (pretrain checks; the library did not)."""
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=len(bert_wordpiece) - 100, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64)).eval()
    ids, attention, _ = random_batch(bert_wordpiece, 0)
    with pytest.raises(ValueError, match=rf"has {len(bert_wordpiece)} tokens but the model embeds only "
                                         rf"{len(bert_wordpiece) - 100}: .*resize_token_embeddings"):
        AttentionMasker(bert_wordpiece, seed=0)(ids, attention, model=model)


def test_a_model_on_another_device_than_the_masker_is_named(bert_wordpiece, tiny_bert_mlm, monkeypatch):
    """The model's forward met ids on another device and failed with torch's own message (a
    masker left on the CPU with the model on a GPU, in ``mask_examples`` say). The device is that
    of the input embeddings (a model split over devices reads its ids there), and weights
    offloaded to "meta" between passes are not taken for a device."""
    import copy

    from diffmask_fast import attention

    assert attention._input_device(tiny_bert_mlm) == torch.device("cpu")
    offloaded = copy.deepcopy(tiny_bert_mlm)
    offloaded.get_input_embeddings().to("meta")
    assert attention._input_device(offloaded) is None
    ids, attention_mask, _ = random_batch(bert_wordpiece, 0)
    monkeypatch.setattr(attention, "_input_device", lambda model: torch.device("cuda", 1))
    with pytest.raises(ValueError, match=r"the model is on cuda:1 but the masker and its batch on cpu: "
                                         r"call masker.to\('cuda:1'\)"):
        AttentionMasker(bert_wordpiece, seed=0)(ids, attention_mask, model=tiny_bert_mlm)


def test_a_model_whose_embeddings_shrink_after_a_first_call_is_still_named(bert_wordpiece):
    """The check ran once per model identity: the same model resized afterwards (or another one
    at a freed model's address) reached the embedding lookup unchecked."""
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=len(bert_wordpiece), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64)).eval()
    masker = AttentionMasker(bert_wordpiece, seed=0)
    ids, attention, _ = random_batch(bert_wordpiece, 0)
    masker(ids, attention, model=model)
    model.resize_token_embeddings(len(bert_wordpiece) - 100)
    with pytest.raises(ValueError, match=rf"the model embeds only {len(bert_wordpiece) - 100}: "):
        masker(ids, attention, model=model)


def test_the_two_orders_pick_different_ends(bert_wordpiece, tiny_bert_mlm, seed):
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=8)
    most = AttentionMasker(bert_wordpiece, order="most", mlm_probability=0.5, seed=seed)(ids, attention, model=tiny_bert_mlm)[1]
    least = AttentionMasker(bert_wordpiece, order="least", mlm_probability=0.5, seed=seed)(ids, attention, model=tiny_bert_mlm)[1]
    scores = reference_attention(tiny_bert_mlm, ids, attention, -1)
    mean_most = scores[most != -100].mean()
    mean_least = scores[least != -100].mean()
    assert mean_most > mean_least, f"seed={seed}"


def test_budget_is_p_n_rounded_stochastically(bert_wordpiece, tiny_bert_mlm, seed):
    """floor or ceil per row; the total is within binomial bounds of p * n (always rounding
    down or up would be ~rows/2 off)."""
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=240, max_body=20)
    p = 0.3
    masker = AttentionMasker(bert_wordpiece, mlm_probability=p, seed=seed)
    labels = masker(ids, attention, flagged, model=tiny_bert_mlm)[1]
    eligible = eligible_positions(bert_wordpiece, ids, attention, flagged)
    n = eligible.sum(dim=1).double()
    counts = (labels != -100).sum(dim=1).double()
    message = f"seed={seed}"
    assert torch.all((counts == torch.floor(p * n)) | (counts == torch.ceil(p * n))), message
    fraction = p * n - torch.floor(p * n)
    sd = math.sqrt(float((fraction * (1 - fraction)).sum()))
    assert abs(float(counts.sum() - (p * n).sum())) <= 5 * sd + 1e-9, message
    assert sd > 1.0, message  # enough fractional budgets for the bound to mean something


def test_replacement_is_80_10_10(bert_wordpiece, tiny_bert_mlm, seed):
    """Each masked token becomes the mask token (0.8), a random ordinary token (0.1) or stays
    (0.1). Over ~74k masked tokens each share is checked against its exact binomial law at
    alpha = 1e-6 / 3 (a correct implementation fails below 1e-6). The test asserts its own power:
    a 10% relative bias of any share (the random one 0.10 -> 0.11 or 0.09, say: ~8 standard
    errors) fails it with probability at least 0.999, computed exactly (law_checks.power_against_bias)."""
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=5500, max_body=30)
    masker = AttentionMasker(bert_wordpiece, mlm_probability=1.0, seed=seed)
    masked_ids, labels = masker(ids, attention, flagged, model=tiny_bert_mlm)
    message = f"seed={seed}"
    eligible = eligible_positions(bert_wordpiece, ids, attention, flagged)
    assert torch.equal(labels != -100, eligible), message  # p = 1 masks every eligible token
    assert torch.equal(masked_ids[~eligible], ids[~eligible]), message
    boundaries = word_boundaries(bert_wordpiece)
    selected_ids, original = masked_ids[eligible], ids[eligible]
    n = selected_ids.numel()
    as_mask = int((selected_ids == boundaries.mask_token_id).sum())
    changed = (selected_ids != boundaries.mask_token_id) & (selected_ids != original)
    as_random = int(changed.sum())
    kept = int((selected_ids == original).sum())
    assert as_mask + as_random + kept == n, message  # the mask token is never an eligible token
    assert not boundaries.never_word[selected_ids[changed]].any(), message
    # A random replacement draws the original token back with probability 1 / v.
    v = boundaries.random_token_ids.numel()
    alpha = 1e-6 / 3
    for name, count, expected in (("mask", as_mask, 0.8), ("random", as_random, 0.1 * (1 - 1 / v)),
                                  ("kept", kept, 0.1 + 0.1 / v)):
        power = power_against_bias(n, expected, alpha)
        assert power >= 0.999, f"{name}: {n} masked tokens see a 10% bias with probability {power:.5f} only; {message}"
        assert binomial_p_value(count, n, expected) >= alpha, (
            f"{name}: {count}/{n} = {count / n:.5f} vs {expected:.5f}; {message}")


def test_model_runs_in_eval_mode_and_its_flags_are_restored(bert_wordpiece, tiny_bert_mlm, seed):
    model = tiny_bert_mlm
    model.train()
    model.cls.eval()  # mixed flags must come back as they were
    flags = {name: module.training for name, module in model.named_modules()}
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=12)
    masker = AttentionMasker(bert_wordpiece, mlm_probability=0.4, seed=seed)
    labels = masker(ids, attention, flagged, model=model)[1]
    message = f"seed={seed}"
    assert {name: module.training for name, module in model.named_modules()} == flags, message
    # Dropout was off: the selection is the eval-mode one.
    scores = reference_attention(model, ids, attention, -1)
    check_selection("most", scores, eligible_positions(bert_wordpiece, ids, attention, flagged), labels, ids, 0.4, message)
    assert model.config._attn_implementation == "sdpa"


def test_flags_and_attention_implementation_restored_on_error(bert_wordpiece, tiny_bert_mlm):
    model = tiny_bert_mlm.train()
    masker = AttentionMasker(bert_wordpiece)
    ids = torch.tensor([[bert_wordpiece.cls_token_id, 10, 11, bert_wordpiece.sep_token_id]])

    def fail(*_):
        raise RuntimeError("out of memory in the attention pass")

    hook = model.bert.embeddings.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="out of memory in the attention pass"):
            masker(ids, model=model)
    finally:
        hook.remove()
    assert all(module.training for module in model.modules())
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("order", ["most", "least"])
def test_sdpa_and_eager_models_give_the_same_masks(bert_wordpiece, tiny_bert_mlm, tmp_path, order, seed):
    from transformers import BertForMaskedLM

    tiny_bert_mlm.save_pretrained(tmp_path)
    sdpa = BertForMaskedLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    eager = BertForMaskedLM.from_pretrained(tmp_path, attn_implementation="eager")
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=10)
    outputs = {}
    for name, model in (("sdpa", sdpa), ("eager", eager)):
        masker = AttentionMasker(bert_wordpiece, order=order, seed=seed)
        outputs[name] = masker(ids, attention, flagged, model=model)
        assert model.config._attn_implementation == name, f"{name} was not restored"
    message = f"seed={seed}"
    assert torch.equal(outputs["sdpa"][0], outputs["eager"][0]), message
    assert torch.equal(outputs["sdpa"][1], outputs["eager"][1]), message
    scores = reference_attention(eager, ids, attention, -1)
    eligible = eligible_positions(bert_wordpiece, ids, attention, flagged)
    check_selection(order, scores, eligible, outputs["sdpa"][1], ids, 0.25, message)


def test_seeds_reproduce_and_differ(bert_wordpiece, tiny_bert_mlm, seed):
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=16)
    message = f"seed={seed}"

    def draws(masker, n=2):
        return [masker(ids, attention, flagged, model=tiny_bert_mlm) for _ in range(n)]

    first = draws(AttentionMasker(bert_wordpiece, seed=seed))
    again = draws(AttentionMasker(bert_wordpiece, seed=seed))
    other = draws(AttentionMasker(bert_wordpiece, seed=seed + 1))
    for (a_ids, a_labels), (b_ids, b_labels) in zip(first, again):
        assert torch.equal(a_ids, b_ids) and torch.equal(a_labels, b_labels), message
    assert not torch.equal(first[0][0], first[1][0]), f"successive calls drew the same masks; {message}"
    assert not torch.equal(first[0][0], other[0][0]), f"different seeds drew the same masks; {message}"
    # A pickled masker starts its stream over.
    restored = pickle.loads(pickle.dumps(AttentionMasker(bert_wordpiece, seed=seed)))
    assert torch.equal(restored(ids, attention, flagged, model=tiny_bert_mlm)[0], first[0][0]), message
    # Without a seed the global RNG decides.
    unseeded = AttentionMasker(bert_wordpiece)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        a = unseeded(ids, attention, flagged, model=tiny_bert_mlm)
        torch.manual_seed(seed)
        b = unseeded(ids, attention, flagged, model=tiny_bert_mlm)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), message


def test_roberta_style_model(roberta_byte_bpe, seed):
    from transformers import RobertaConfig, RobertaForMaskedLM

    tokenizer = roberta_byte_bpe
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RobertaForMaskedLM(config).train()
    ids, attention, flagged = random_batch(tokenizer, seed, rows=12)
    masker = AttentionMasker(tokenizer, order="least", mlm_probability=0.35, seed=seed)
    masked_ids, labels = masker(ids, attention, flagged, model=model)
    message = f"seed={seed}"
    assert model.training and model.config._attn_implementation == "sdpa", message
    scores = reference_attention(model, ids, attention, -1)
    eligible = eligible_positions(tokenizer, ids, attention, flagged)
    assert sum(check_selection("least", scores, eligible, labels, ids, 0.35, message)) > 0, message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda(bert_wordpiece, tiny_bert_mlm, seed):
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=16)
    masker = AttentionMasker(bert_wordpiece, order="most", mlm_probability=0.3, seed=seed).cuda()
    model = copy.deepcopy(tiny_bert_mlm).cuda()
    masked_ids, labels = masker(ids.cuda(), attention.cuda(), flagged.cuda(), model=model)
    assert masked_ids.is_cuda and labels.is_cuda
    message = f"seed={seed}"
    scores = reference_attention(model, ids.cuda(), attention.cuda(), -1).cpu()
    eligible = eligible_positions(bert_wordpiece, ids, attention, flagged)
    check_selection("most", scores, eligible, labels.cpu(), ids, 0.3, message)
    again = AttentionMasker(bert_wordpiece, order="most", mlm_probability=0.3, seed=seed).cuda()
    assert torch.equal(again(ids.cuda(), attention.cuda(), flagged.cuda(), model=model)[0], masked_ids), message


class _NoAttentions(torch.nn.Module):
    """A model whose forward returns no attention weights, as SDPA does."""

    def forward(self, input_ids, attention_mask=None, output_attentions=False):
        return SimpleNamespace(attentions=())


class _UniformAttention(torch.nn.Module):
    """A plain module (no transformers config) whose one layer attends uniformly: all ties."""

    def forward(self, input_ids, attention_mask=None, output_attentions=False):
        batch, length = input_ids.shape
        return SimpleNamespace(attentions=(torch.full((batch, 3, length, length), 1.0 / length),))


@pytest.mark.parametrize("n", [11, 12])
def test_budget_rounds_up_with_probability_equal_to_the_fraction(bert_wordpiece, n, seed):
    """Rows of the same n with p * n = 3.3 mask 4 tokens in 30% of rows, not 70%: a sum over
    mixed fractions cannot tell "round up when draw < frac" from "when draw >= frac". With
    p * n = 3.6, in 60% of rows, not in all (rounding to the nearest)."""
    rows, p = 3000, 0.3
    fraction = p * n - math.floor(p * n)
    g = torch.Generator().manual_seed(seed)
    ordinary = word_boundaries(bert_wordpiece).random_token_ids
    body = ordinary[torch.randint(0, ordinary.numel(), (rows, n), generator=g)]
    ids = torch.cat([torch.full((rows, 1), bert_wordpiece.cls_token_id), body,
                     torch.full((rows, 1), bert_wordpiece.sep_token_id)], dim=1)
    attention = torch.ones_like(ids)
    flagged = torch.zeros_like(ids, dtype=torch.bool)
    assert bool((eligible_positions(bert_wordpiece, ids, attention, flagged).sum(dim=1) == n).all())
    masker = AttentionMasker(bert_wordpiece, mlm_probability=p, seed=seed)
    counts = (masker(ids, attention, flagged, model=_UniformAttention())[1] != -100).sum(dim=1)
    assert set(counts.tolist()) <= {3, 4}, f"seed={seed}"
    share = float((counts == 4).double().mean())
    se = math.sqrt(fraction * (1 - fraction) / rows)
    assert abs(share - fraction) <= 5 * se, f"{share:.3f} of rows rounded up; seed={seed}"


@pytest.mark.parametrize("order", ["most", "least"])
def test_ties_go_to_the_earlier_position(bert_wordpiece, order, seed):
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=10)
    labels = AttentionMasker(bert_wordpiece, order=order, mlm_probability=0.5, seed=seed)(
        ids, attention, flagged, model=_UniformAttention()
    )[1]
    eligible = eligible_positions(bert_wordpiece, ids, attention, flagged)
    for b in range(ids.shape[0]):
        positions = eligible[b].nonzero().flatten().tolist()
        masked = (labels[b] != -100).nonzero().flatten().tolist()
        assert masked == positions[: len(masked)], f"row {b}; seed={seed}"


def test_errors(bert_wordpiece, tiny_bert_mlm):
    tokenizer, model = bert_wordpiece, tiny_bert_mlm
    with pytest.raises(ValueError, match="unknown order 'top'"):
        AttentionMasker(tokenizer, order="top")
    with pytest.raises(ValueError, match="mlm_probability"):
        AttentionMasker(tokenizer, mlm_probability=1.5)
    with pytest.raises(ValueError, match="mlm_probability"):
        AttentionMasker(tokenizer, mlm_probability=-0.1)
    with pytest.raises(ValueError, match="sum to at most 1"):
        AttentionMasker(tokenizer, mask_replace_prob=0.8, random_replace_prob=0.3)
    with pytest.raises(TypeError, match="layer must be an integer"):
        AttentionMasker(tokenizer, layer=1.5)
    for memory in (0, -5):
        with pytest.raises(ValueError, match=rf"attention_memory \(bytes\) must be at least 1, got {memory}"):
            AttentionMasker(tokenizer, attention_memory=memory)
    for memory in (1.5, True):
        with pytest.raises(TypeError, match=rf"attention_memory \(bytes\) must be a whole number, got {memory}"):
            AttentionMasker(tokenizer, attention_memory=memory)
    masker = AttentionMasker(tokenizer)
    ids, attention, flagged = random_batch(tokenizer, 0, rows=3)
    with pytest.raises(ValueError, match=r"\[batch, length\] matrix"):
        masker(ids[0], model=model)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        masker(ids, attention[:, :-1], model=model)
    with pytest.raises(ValueError, match="special_tokens_mask must have the shape"):
        masker(ids, attention, flagged[:2], model=model)
    with pytest.raises(RuntimeError, match='attn_implementation="eager"'):
        masker(ids, attention, model=_NoAttentions())
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        AttentionMasker(tokenizer, layer=2)(ids, attention, model=model)
    with pytest.raises(TypeError, match="model"):
        masker(ids, attention, model=None)
    assert AttentionMasker.needs_model is True
    limit = model.config.max_position_embeddings
    long_ids = torch.full((2, limit + 1), tokenizer.convert_tokens_to_ids("the"))
    with pytest.raises(ValueError, match=f"rows are {limit + 1} tokens long, more than .* takes "
                                         f"\\(at most {limit} tokens; max_position_embeddings {limit}\\)"):
        masker(long_ids, model=model)
    masker(long_ids[:, :limit], model=model)  # as long as the model takes

    def failing(error):
        def first_token_row(*args, **kwargs):
            raise error
        return first_token_row

    import diffmask_fast.attention as attention_module

    for error, ids in ((torch.OutOfMemoryError("CUDA out of memory"), long_ids),  # about the size, not the length
                       (RuntimeError("something else"), long_ids[:, :limit])):  # a length the model takes
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(attention_module, "first_token_row", failing(error))
            with pytest.raises(type(error), match=str(error)):
                masker(ids, model=model)


def test_a_resumed_attention_masker_draws_new_masks(bert_wordpiece, tiny_bert_mlm):
    ids = torch.tensor([bert_wordpiece("the protein kinase binds the ligand of the cell " * 3)["input_ids"]] * 4)

    def draws(resumed_at=None):
        masker = AttentionMasker(bert_wordpiece, seed=3, mlm_probability=0.3)
        if resumed_at is not None:
            masker.resume_at(resumed_at)
        return [masker(ids, model=tiny_bert_mlm) for _ in range(3)]

    fresh, again, resumed = draws(), draws(), draws(resumed_at=5)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(fresh, again))
    assert not all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(fresh, resumed)), \
        "a resumed run replays the first steps' draws"


def test_a_seed_given_to_a_built_attention_masker_is_checked_and_restarts_its_streams(bert_wordpiece, tiny_bert_mlm,
                                                                                      seed):
    """It was a plain attribute: a new seed was neither checked nor used, the streams of the old
    one going on; and one given inside a pinned block was undone at its end, as resume_at was."""
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=6)

    def first_draws(seed, count=2):
        masker = AttentionMasker(bert_wordpiece, mlm_probability=0.5, seed=seed)
        return [masker(ids, attention, flagged, model=tiny_bert_mlm)[0] for _ in range(count)]

    masker = AttentionMasker(bert_wordpiece, mlm_probability=0.5, seed=seed)
    masker(ids, attention, flagged, model=tiny_bert_mlm)
    masker.seed = seed + 1
    assert torch.equal(masker(ids, attention, flagged, model=tiny_bert_mlm)[0], first_draws(seed + 1)[0])
    with pytest.raises(TypeError, match="seed"):
        masker.seed = "7"
    with masker.pinned_generator(5):
        masker.seed = seed + 2
    assert torch.equal(masker(ids, attention, flagged, model=tiny_bert_mlm)[0], first_draws(seed + 2)[0])
    with masker.pinned_generator(5):  # the streams outside go on where they were
        masker(ids, attention, flagged, model=tiny_bert_mlm)
    assert torch.equal(masker(ids, attention, flagged, model=tiny_bert_mlm)[0], first_draws(seed + 2)[1])
    restored = pickle.loads(pickle.dumps(masker))
    assert restored.seed == seed + 2 and torch.equal(restored(ids, attention, flagged, model=tiny_bert_mlm)[0],
                                                     first_draws(seed + 2)[0])


def test_the_eager_attention_pass_reads_the_first_token_of_left_padded_rows(bert_wordpiece, tiny_bert_mlm,
                                                                            monkeypatch):

    from diffmask_fast import attention as attention_module

    tokenizer = copy.deepcopy(bert_wordpiece)
    tokenizer.padding_side = "left"
    batch = tokenizer(["the enzyme binds", "a receptor of the cells binds its ligand"], padding=True,
                      return_tensors="pt")
    ids, attention = batch["input_ids"], batch["attention_mask"]
    assert attention[0, 0] == 0, "the premise: the first row is padded on the left"
    masker = AttentionMasker(tokenizer, layer=-1, seed=0)
    read_from_query_and_key = masker._first_token_attention(tiny_bert_mlm, ids, attention)
    monkeypatch.setattr(attention_module, "first_token_row", lambda *args, **kwargs: None)  # a model without it
    eager = masker._first_token_attention(tiny_bert_mlm, ids, attention)
    torch.testing.assert_close(eager, read_from_query_and_key, atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a .functools.lru_cache")  # in transformers
def test_a_seeded_masker_compiles_and_draws_as_in_eager_mode(bert_wordpiece, tiny_bert_mlm, seed):
    """Building its generator under torch.compile failed (numpy's uint64 shift in the seed), on the
    first call and again after resume_at, which a resumed run makes."""
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=6)
    tiny_bert_mlm.eval()
    eager, traced = (AttentionMasker(bert_wordpiece, mlm_probability=0.3, seed=seed) for _ in range(2))
    step = torch.compile(lambda i, a, f: traced(i, a, f, model=tiny_bert_mlm), backend="aot_eager")
    for resumed in (False, True):
        if resumed:
            eager.resume_at(10)
            traced.resume_at(10)
        expected = eager(ids, attention, flagged, model=tiny_bert_mlm)
        got = step(ids, attention, flagged)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), f"seed={seed} resumed={resumed}"


def test_a_pinned_stream_per_process_differs_by_rank_and_repeats(bert_wordpiece, tiny_bert_mlm, seed, monkeypatch):
    """Pinned for an evaluation in which every rank masks batches of its own, one shared stream
    masked them at the same positions; per_process gives each rank its own, the same at every pin."""
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=16)
    draws = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        masker = AttentionMasker(bert_wordpiece, mlm_probability=0.5, seed=seed)
        with masker.pinned_generator(5):
            shared = masker(ids, attention, flagged, model=tiny_bert_mlm)[0]
        own = []
        for _ in range(2):
            with masker.pinned_generator(5, per_process=True):
                own.append(masker(ids, attention, flagged, model=tiny_bert_mlm)[0])
        assert torch.equal(own[0], own[1]), f"rank {rank}: another draw at the same pin"
        draws[rank] = shared, own[0]
    assert torch.equal(draws["0"][0], draws["1"][0]), "without per_process every rank draws alike"
    assert not torch.equal(draws["0"][1], draws["1"][1]), f"seed={seed}"


# ----------------------------------------------------------------------------------------------
# Inputs and models at the edges of what the masker takes


def test_a_model_in_nested_data_parallel_wrappers_is_read_as_the_model(bert_wordpiece, tiny_bert_mlm, seed):
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=6)
    wrapped = torch.nn.DataParallel(torch.nn.DataParallel(tiny_bert_mlm))
    plain, nested = (AttentionMasker(bert_wordpiece, mlm_probability=0.4, seed=seed) for _ in range(2))
    expected = plain(ids, attention, flagged, model=tiny_bert_mlm)
    assert all(torch.equal(a, b) for a, b in zip(nested(ids, attention, flagged, model=wrapped), expected))


@pytest.mark.parametrize("pad_offset", [0, 2])
def test_a_roberta_row_longer_than_its_positions_is_named_with_the_length_it_takes(roberta_byte_bpe, pad_offset):
    """RoBERTa numbers positions from padding_idx + 1: with padding id 1 it takes
    max_position_embeddings - 2, with a later padding id fewer (those lengths were left as the
    embedding's bare index error)."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    tokenizer = roberta_byte_bpe
    pad = tokenizer.pad_token_id + pad_offset
    model = RobertaForMaskedLM(RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, pad_token_id=pad)).eval()
    longest = 63 - pad
    word = tokenizer.convert_tokens_to_ids("Ġthe")
    masker = AttentionMasker(tokenizer, seed=0)
    for length in range(longest + 1, 65):
        with pytest.raises(ValueError, match=rf"rows are {length} tokens long, more than RobertaModel takes "
                                             rf"\(at most {longest} tokens; max_position_embeddings 64\); tokenize "
                                             rf"with max_length {longest} or less \((IndexError|RuntimeError): "):
            masker(torch.full((2, length), word), model=model)
    masker(torch.full((2, longest), word), model=model)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.float32])
def test_token_type_ids_of_another_dtype_are_read_as_ids(bert_wordpiece, tiny_bert_mlm, dtype, seed):
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=6)
    segments = (torch.arange(ids.shape[1]) >= ids.shape[1] // 2).long().expand_as(ids)
    for path in ("interface", "eager"):
        with pytest.MonkeyPatch.context() as patch:
            if path == "eager":
                from diffmask_fast import attention as attention_module

                patch.setattr(attention_module, "first_token_row", lambda *args: None)
            as_long, as_other = (AttentionMasker(bert_wordpiece, seed=seed) for _ in range(2))
            expected = as_long(ids, attention, flagged, model=tiny_bert_mlm, token_type_ids=segments)
            got = as_other(ids, attention, flagged, model=tiny_bert_mlm, token_type_ids=segments.to(dtype))
            assert all(torch.equal(a, b) for a, b in zip(got, expected)), path


def test_tokens_the_attention_mask_hides_are_never_masked(bert_wordpiece, tiny_bert_mlm, seed):
    """Rows packed or cut by their attention mask hide real tokens, not only padding."""
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=10)
    hidden = attention.clone()
    hidden[:, 1::3] = 0  # ordinary tokens among them
    hidden[:, 0] = 1
    labels = AttentionMasker(bert_wordpiece, mlm_probability=1.0, seed=seed)(ids, hidden, flagged,
                                                                              model=tiny_bert_mlm)[1]
    assert torch.equal(labels != -100, eligible_positions(bert_wordpiece, ids, hidden, flagged)), f"seed={seed}"
    assert bool((labels[hidden == 0] == -100).all())


def test_the_eager_pass_reads_weights_in_the_models_dtype_and_returns_float32_rows(bert_wordpiece, tiny_bert_mlm,
                                                                                     seed, monkeypatch):
    """A bfloat16 model's weights take half the bytes: twice the rows a pass. A bound below one
    row's weights still runs one row a pass. A model configured to return tuples is asked for
    its outputs by name."""
    from diffmask_fast import attention as attention_module

    monkeypatch.setattr(attention_module, "first_token_row", lambda *args: None)
    ids, attention, _ = random_batch(bert_wordpiece, seed, rows=10)
    half = copy.deepcopy(tiny_bert_mlm).to(torch.bfloat16)
    config = half.config
    per_row = config.num_hidden_layers * config.num_attention_heads * ids.shape[1] ** 2 * 2
    passes = []
    hook = half.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: passes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        rows = AttentionMasker(bert_wordpiece, seed=seed, attention_memory=3 * per_row + 1)._first_token_attention(
            half, ids, attention)
        assert passes == [3, 3, 3, 1] and rows.dtype == torch.float32
        passes.clear()
        AttentionMasker(bert_wordpiece, seed=seed, attention_memory=1)._first_token_attention(half, ids, attention)
        assert passes == [1] * 10
    finally:
        hook.remove()
    # bfloat16 products may round otherwise in a pass of other rows: close to bfloat16's precision
    torch.testing.assert_close(rows, reference_attention(half, ids, attention, -1), atol=1e-3, rtol=1e-2)
    tuples = copy.deepcopy(tiny_bert_mlm)
    tuples.config.return_dict = False
    rows = AttentionMasker(bert_wordpiece, seed=seed)._first_token_attention(tuples, ids, attention)
    torch.testing.assert_close(rows, reference_attention(tiny_bert_mlm, ids, attention, -1), atol=1e-6, rtol=1e-5)


class _NoneAttentions(torch.nn.Module):
    """A model whose layers return None for their weights (SDPA in some versions)."""

    def forward(self, input_ids, attention_mask=None, output_attentions=False):
        return SimpleNamespace(attentions=(None, None))


class _ShapedAttention(torch.nn.Module):
    """A plain module whose one layer's weights have the given shape, as a function of (B, L)."""

    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, input_ids, attention_mask=None, output_attentions=False):
        return SimpleNamespace(attentions=(torch.full(self.shape(*input_ids.shape), 0.1),))


def test_weights_missing_or_of_another_shape_are_named(bert_wordpiece):
    ids, attention, _ = random_batch(bert_wordpiece, 0, rows=3)
    masker = AttentionMasker(bert_wordpiece, seed=0)
    with pytest.raises(RuntimeError, match='returned no attention weights .* attn_implementation="eager"'):
        masker(ids, attention, model=_NoneAttentions())
    for shape in (lambda b, n: (b, n, n), lambda b, n: (b, 2, n, n + 1), lambda b, n: (b + 1, 2, n, n)):
        with pytest.raises(RuntimeError, match=r"expected attention weights of shape \[batch, heads, "):
            masker(ids, attention, model=_ShapedAttention(shape))
    with pytest.raises(TypeError, match="layer must be an integer"):
        AttentionMasker(bert_wordpiece, layer=True)


class _AttentionWithNaN(torch.nn.Module):
    """Uniform attention but NaN at position 1 of every row (a diverged model)."""

    def forward(self, input_ids, attention_mask=None, output_attentions=False):
        batch, length = input_ids.shape
        weights = torch.full((batch, 2, length, length), 1.0 / length)
        weights[..., 1] = float("nan")
        return SimpleNamespace(attentions=(weights,))


@pytest.mark.parametrize("order", ["most", "least"])
def test_a_nan_attention_weight_ranks_as_zero(bert_wordpiece, order, seed):
    """NaN sorts above every number: "most" masked the diverged position first."""
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=40)
    flagged[:, 1] = False
    ids[:, 1] = word_boundaries(bert_wordpiece).random_token_ids[0]
    labels = AttentionMasker(bert_wordpiece, order=order, mlm_probability=0.3, seed=seed)(
        ids, attention, flagged, model=_AttentionWithNaN())[1]
    eligible = eligible_positions(bert_wordpiece, ids, attention, flagged)
    budget = (labels != -100).sum(dim=1)
    below_all = eligible.sum(dim=1) > budget  # rows where the lowest-ranked token stays unmasked
    assert bool(below_all.any())
    chosen = labels[:, 1] != -100
    assert bool(((chosen == (order == "least")) | ~below_all | (budget == 0)).all()), f"seed={seed}"


def test_an_unseeded_masker_on_another_rank_draws_from_the_global_seed_and_its_rank(bert_wordpiece, tiny_bert_mlm,
                                                                                       seed, monkeypatch):
    """``set_seed`` makes the global RNG alike on every rank: rank 1 must not draw rank 0's masks,
    and must follow the run's seed."""
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=16)

    def draw(rank: str, global_seed: int) -> torch.Tensor:
        monkeypatch.setenv("RANK", rank)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(global_seed)
            return AttentionMasker(bert_wordpiece, mlm_probability=0.5)(ids, attention, flagged,
                                                                        model=tiny_bert_mlm)[0]

    assert torch.equal(draw("1", seed), draw("1", seed))
    assert not torch.equal(draw("0", seed), draw("1", seed)), f"seed={seed}"
    assert not torch.equal(draw("1", seed), draw("1", seed + 1)), f"seed={seed}"


def test_resuming_or_pickling_a_masker_that_has_drawn_restarts_its_stream(bert_wordpiece, tiny_bert_mlm, seed):
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=12)

    def call(masker):
        return masker(ids, attention, flagged, model=tiny_bert_mlm)[0]

    used = AttentionMasker(bert_wordpiece, mlm_probability=0.5, seed=seed)
    first = call(used)
    assert torch.equal(call(pickle.loads(pickle.dumps(used))), first), f"seed={seed}"
    fresh = AttentionMasker(bert_wordpiece, mlm_probability=0.5, seed=seed)
    fresh.resume_at(5)
    used.resume_at(5)
    assert torch.equal(call(used), call(fresh)), f"seed={seed}"


def test_a_model_one_id_short_of_the_tokenizer_is_named(bert_wordpiece):
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=len(bert_wordpiece) - 1, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64)).eval()
    ids, attention, _ = random_batch(bert_wordpiece, 0)
    with pytest.raises(ValueError, match=rf"the model embeds only {len(bert_wordpiece) - 1}: "):
        AttentionMasker(bert_wordpiece, seed=0)(ids, attention, model=model)


def test_first_row_reads_the_mask_of_each_rows_first_token(seed):
    """A mask that differs by query row (causal, or packed sequences) is read at the first token."""
    from diffmask_fast.attention_weights import _first_row

    g = torch.Generator().manual_seed(seed)
    query, key = torch.randn(3, 2, 6, 4, generator=g), torch.randn(3, 2, 6, 4, generator=g)
    allowed = torch.rand(3, 1, 6, 6, generator=g) < 0.6
    allowed[..., 0] = True  # every query row attends somewhere
    first = torch.tensor([0, 2, 5])
    expected = []
    for b, f in enumerate(first.tolist()):
        scores = (query[b, :, f, None, :] @ key[b].transpose(-1, -2)).squeeze(1) * 0.5  # [heads, L]; 1 / sqrt(4)
        expected.append(scores.masked_fill(~allowed[b, :, f, :], float("-inf")).softmax(dim=-1).mean(dim=0))
    torch.testing.assert_close(_first_row(query, key, allowed, None, first), torch.stack(expected))


def test_a_layers_own_scaling_is_kept_in_the_layers_before_the_wanted_one(bert_wordpiece, tiny_bert_mlm, seed):
    ids, attention, _ = random_batch(bert_wordpiece, seed, rows=6)
    model = copy.deepcopy(tiny_bert_mlm)
    with torch.no_grad():  # attention far from uniform, so that the first layer's scaling shows in the last
        for layer in model.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(30)
            layer.attention.self.key.weight.mul_(30)
    first = model.bert.encoder.layer[0].attention.self
    default = reference_attention(model, ids, attention, -1)
    first.scaling = 4 * first.scaling
    rows = AttentionMasker(bert_wordpiece, seed=seed)._first_token_attention(model, ids, attention)
    torch.testing.assert_close(rows, reference_attention(model, ids, attention, -1), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(rows, default, atol=1e-4), "the premise: the scaling changes the row"


def test_a_model_that_cannot_switch_its_attention_is_read_in_one_eager_pass(bert_wordpiece, seed):
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM

    model = DebertaV2ForMaskedLM(DebertaV2Config(vocab_size=len(bert_wordpiece), hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64)).eval()
    assert not model.base_model._can_set_attn_implementation()
    ids, attention, flagged = random_batch(bert_wordpiece, seed, rows=4)
    passes = []
    hook = model.base_model.register_forward_pre_hook(lambda *args: passes.append(1))
    try:
        AttentionMasker(bert_wordpiece, seed=seed)(ids, attention, flagged, model=model)
    finally:
        hook.remove()
    assert len(passes) == 1
