"""Loading a masked LM for continued pretraining, with a clear answer when it has no MLM head.

A checkpoint saved as a bare encoder (``BertModel``, a sentence-transformers model) loads into
``AutoModelForMaskedLM`` with a randomly initialized head and only a warning; continued
pretraining from there would first spend its steps learning the head. ``load_masked_lm`` refuses
that unless asked to initialize the head from the encoder's own input embeddings: the decoder is
tied to them (as in BERT), the transform starts as the identity, its layer norm with a small gain
and the biases at zero, so the first logits are scaled similarities between hidden states and
token embeddings. The small gain matters for encoders tuned away from token prediction (such as
sentence-transformers models): with gain 1 their first predictions are confidently wrong (a loss
above that of guessing uniformly); with ``HEAD_NORM_GAIN`` they start near uniform.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_masked_lm", "initialize_mlm_head"]

#: layer-norm gain of an initialized head (see the module docstring)
HEAD_NORM_GAIN = 0.1


def load_masked_lm(name_or_path: str, *, init_mlm_head: bool = False, dtype: torch.dtype = torch.float32) -> Any:
    """``AutoModelForMaskedLM`` for ``name_or_path``; raises ValueError when the checkpoint has
    no masked-LM head, unless ``init_mlm_head`` (then the head is built by ``initialize_mlm_head``).
    Weights are loaded as ``dtype``, float32 unless asked otherwise, whatever the checkpoint was
    saved in: transformers would load a bfloat16 checkpoint in bfloat16, where most of AdamW's
    updates round away (and in float16 its epsilon underflows); lower precision for training is
    the Trainer's mixed precision (``bf16``/``fp16``), over float32 weights."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    from .hf_loading import (MODEL_WEIGHT_FILES, check_model_reference, model_reference, quiet_transformers,
                             readable_weights, saved_weights)

    if not isinstance(init_mlm_head, bool):  # "no" would read as true
        raise TypeError(f"init_mlm_head must be True or False, got {init_mlm_head!r}")
    check_model_reference(name_or_path)
    name_or_path = model_reference(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load a model configuration from {name_or_path!r}: {error}") from error
    if type(config) not in AutoModelForMaskedLM._model_mapping:
        raise ValueError(
            f"{name_or_path!r} is a {config.model_type!r} model, which has no masked-LM head in transformers; "
            "continued MLM pretraining needs an encoder such as BERT, RoBERTa, DeBERTa or XLM-R"
        )
    if Path(name_or_path).is_dir() and saved_weights(name_or_path) is None:
        raise ValueError(f"the model directory {name_or_path!r} holds a configuration but no weights (none of "
                         f"{', '.join(MODEL_WEIGHT_FILES)}): save the model there, or give the folder that holds them")
    with quiet_transformers(), readable_weights(name_or_path):  # the missing-weights report: see below
        model, info = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True, dtype=dtype)
    prefix = model.base_model_prefix + "."
    missing_head = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(prefix))
    missing_encoder = sorted(k for k in info.get("missing_keys", ()) if k.startswith(prefix))
    if missing_encoder:
        _refuse_a_random_encoder(model, name_or_path, missing_encoder)
        logging.getLogger(__name__).warning("%s: %d encoder weights were not in the checkpoint (e.g. %s)",
                                            name_or_path, len(missing_encoder), missing_encoder[0])
    if missing_head:
        if not init_mlm_head:
            raise ValueError(
                f"{name_or_path!r} has no trained masked-LM head (missing {', '.join(missing_head[:4])}"
                f"{', ...' if len(missing_head) > 4 else ''}); pass init_mlm_head=True to start "
                "from a head tied to its input embeddings"
            )
        initialize_mlm_head(model, missing_head)
    return model


def _refuse_a_random_encoder(model: Any, name: str, missing: list[str]) -> None:
    """A checkpoint lacking the input embeddings or most encoder weights (keys saved under a
    prefix transformers does not know, a checkpoint of another model) would be pretrained from
    random weights: refused. A few missing weights are only logged."""
    prefix = model.base_model_prefix + "."
    encoder = [n for n, _ in model.named_parameters() if n.startswith(prefix)]
    inputs = model.get_input_embeddings()
    embeddings = [n for n, p in model.named_parameters() if inputs is not None and p is inputs.weight]
    if set(embeddings) & set(missing) or 2 * len(missing) > len(encoder):
        raise ValueError(f"{name!r}: {len(missing)} of its {len(encoder)} encoder weights are not in the checkpoint "
                         f"(e.g. {missing[0]}{', the input embeddings' if set(embeddings) & set(missing) else ''}), so "
                         "the encoder would start from random weights; is it a checkpoint of another model, or were "
                         "its weights saved under another prefix?")


@torch.no_grad()
def initialize_mlm_head(model: Any, parameter_names: list[str] | None = None) -> None:
    """Set the MLM head's parameters (all of them, or those named) to an embedding-tied start:
    square linear maps to the identity, a map from the hidden size to a smaller embedding size
    (ALBERT, ELECTRA) to the pseudo-inverse of the model's projection of embeddings into the
    hidden size, layer norms to (HEAD_NORM_GAIN, 0), biases to 0, and the output projection tied
    to (or, where the model does not tie, copied from) the input embeddings; a map from the
    vocabulary that extends it (MobileBERT's, for hidden sizes past the embedding size) to 0."""
    output = model.get_output_embeddings()
    inputs = model.get_input_embeddings()
    if output is None or inputs is None:
        raise ValueError(f"{type(model).__name__} exposes no output embeddings to initialize a masked-LM head from")
    named = dict(model.named_parameters(remove_duplicate=False))
    names = list(parameter_names) if parameter_names is not None else [
        n for n in named if not n.startswith(model.base_model_prefix + ".")]
    modules = dict(model.named_modules())
    for name in names:
        module_name, _, attribute = name.rpartition(".")
        module = modules.get(module_name)
        parameter = named.get(name)
        if module is None or parameter is None:
            continue
        if module is output and attribute == "weight" and parameter.shape == inputs.weight.shape:
            parameter.copy_(inputs.weight)
        elif module is output and attribute == "weight" and parameter.shape[0] == inputs.weight.shape[0]:
            raise ValueError(f"cannot tie {name} {tuple(parameter.shape)} to the input embeddings "
                             f"{tuple(inputs.weight.shape)}")
        elif attribute == "bias" or name.endswith(".bias"):
            parameter.zero_()
        elif isinstance(module, torch.nn.LayerNorm) or "norm" in module_name.lower():
            parameter.fill_(HEAD_NORM_GAIN)
        elif isinstance(module, torch.nn.Linear) and parameter.ndim == 2 \
                and parameter.shape[1] == inputs.weight.shape[0]:  # a map from the vocabulary
            parameter.zero_()  # MobileBERT's rows of the output projection past the embedding size: no say at first
        elif isinstance(module, torch.nn.Linear) and parameter.ndim == 2 and parameter.shape[0] == parameter.shape[1]:
            parameter.copy_(torch.eye(parameter.shape[0], dtype=parameter.dtype))
        elif isinstance(module, torch.nn.Linear) and parameter.ndim == 2 and parameter.shape[0] == inputs.weight.shape[1]:
            parameter.copy_(_inverse_of_the_embedding_projection(model, name, parameter))
        else:
            raise ValueError(f"do not know how to initialize {name} of {type(model).__name__} from its embeddings")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def _inverse_of_the_embedding_projection(model: Any, name: str, parameter: torch.Tensor) -> torch.Tensor:
    """For a head map from the hidden size to a smaller embedding size, the pseudo-inverse of the
    encoder's one linear map the other way (ALBERT's embedding_hidden_mapping_in, ELECTRA's
    embeddings_project): the transform then starts by reading hidden states back as embeddings,
    as the identity does where the sizes are equal."""
    embedding_size, hidden_size = parameter.shape
    prefix = model.base_model_prefix + "."
    projections = [module for module_name, module in model.named_modules()
                   if (module_name + ".").startswith(prefix) and isinstance(module, torch.nn.Linear)
                   and tuple(module.weight.shape) == (hidden_size, embedding_size)]
    if len(projections) != 1:
        raise ValueError(f"cannot initialize {name} of {type(model).__name__}: it maps the hidden size {hidden_size} "
                         f"to the embedding size {embedding_size}, and the encoder has "
                         f"{'no' if not projections else len(projections)} linear maps from the embedding size to the "
                         "hidden size to invert (one is needed); start from a checkpoint with a trained masked-LM head")
    return torch.linalg.pinv(projections[0].weight.float()).to(parameter.dtype)
