"""diffmask_fast: Difference-Masking (Wilf et al., 2023) for continued pretraining of masked LMs.

Pipeline: ``count_words`` -> ``mine_anchors`` (TF-ICF against ``GeneralFrequencies``) ->
``WordScorer`` (with a ``WordEmbedder``) -> ``DifferenceMaskingCollator`` (CPU, DataLoader workers)
or ``DifferenceMasker`` / ``DifferenceMaskingTrainer`` (in the training step, on the GPU).
``diffmask_fast.pretrain`` runs continued pretraining with any strategy of ``STRATEGIES``, and
``diffmask_fast.finetune`` evaluates the result. The plain-Python specification is
``diffmask_fast.reference``. Names load lazily, so importing the package (or its reference) needs
neither the compiled extension nor a model.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "count_words": "counting",
    "DiffmaskWarning": "advice",
    "WordCounts": "counting",
    "GeneralFrequencies": "general",
    "mine_anchors": "anchors",
    "Anchors": "anchors",
    "Anchor": "anchors",
    "WordEmbedder": "embedding",
    "WordScorer": "scoring",
    "ScoreTable": "scoring",
    "AnchorIndex": "index",
    "ContextualAnchors": "contextual",
    "contextual_anchor_vectors": "contextual",
    "DifferenceMaskingCollator": "collator",
    "DifferenceMasker": "masker",
    "DifferenceMaskingTrainer": "trainer",
    "MaskingTrainer": "trainer",
    "RandomTokenCollator": "baselines",
    "RandomWordCollator": "baselines",
    "TermMatcher": "terms",
    "TermMaskingCollator": "terms",
    "MSLMCollator": "terms",
    "domain_terms": "terms",
    "AttentionMasker": "attention",
    "STRATEGIES": "strategies",
    "build_strategy": "strategies",
    "weighted_mlm_loss": "losses",
    "load_masked_lm": "mlm_model",
    "PretrainConfig": "pretrain",
    "FinetuneReport": "finetune",
    "word_boundaries": "tokenization",
}

__all__ = sorted(_EXPORTS) + ["reference"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in ("reference", "ops"):
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
