"""Baseline masking strategies to compare Difference-Masking against.

* ``RandomTokenCollator``: BERT's masking, as ``transformers.DataCollatorForLanguageModeling``
  does it: every token independently, whole words not respected.
* ``RandomWordCollator``: whole-word masking with uniformly random words and the budget rule of
  the difference strategy (stochastic rounding of p * n_words per row), on the same compiled op.

Both pad, seed and pickle like ``DifferenceMaskingCollator`` (see ``masking_base``) and return
``input_ids``, ``attention_mask`` and ``labels`` (-100 where nothing is masked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import ops
from .masking_base import MaskingCollatorBase, replace_selected
from .reference import TOKEN_SCHEME
from .tokenization import UnknownWordBoundaries, WordBoundaries, special_token_table, word_boundaries

__all__ = ["RandomTokenCollator", "RandomWordCollator"]


@dataclass
class RandomTokenCollator(MaskingCollatorBase):
    """Masks every token (special tokens and padding excepted) independently with probability
    ``mlm_probability``, then replaces the selected tokens 80/10/10 (mask token / random token /
    unchanged, by ``mask_replace_prob`` and ``random_replace_prob``). Tokens that stand for
    whitespace alone (byte-level BPE's "Ċ", a lone "▁"), which belong to no word, are masked
    like any other, as transformers does.

    The selection ignores word boundaries, so words made of several tokens are often masked in
    part. ``word_boundary`` is handed to ``word_boundaries`` like in the other strategies (the
    special-token and random-replacement tables come from there); it does not change which
    tokens are selected, and a tokenizer whose word marks cannot be detected is taken as it is
    (the ``"token"`` scheme).
    """

    tokenizer: Any
    mlm_probability: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        self._special = special_token_table(self.tokenizer, self.boundaries.never_word.numel())

    def _word_boundaries(self) -> WordBoundaries:
        try:
            return super()._word_boundaries()
        except UnknownWordBoundaries:  # token-level masking needs no words
            return word_boundaries(self.tokenizer, TOKEN_SCHEME)

    def mask_batch(self, input_ids: torch.Tensor, never_word: torch.Tensor | None = None) -> dict:
        """Mask a padded [B, L] batch; ``never_word`` flags tokens never to mask (padding; special
        tokens are always excluded). Returns ``input_ids`` (replaced) and ``labels``."""
        input_ids, never_word = self._checked_inputs(input_ids, never_word, self._special)
        generator = self._generator()
        draw = torch.rand(input_ids.shape, generator=generator, dtype=torch.float64)
        selected = (draw < self.mlm_probability) & ~never_word
        masked_ids, labels = replace_selected(
            input_ids, selected, self.boundaries, self.mask_replace_prob, self.random_replace_prob, generator
        )
        return {"input_ids": masked_ids, "labels": labels}


@dataclass
class RandomWordCollator(MaskingCollatorBase):
    """Whole-word masking of uniformly random words.

    Each row masks exactly ``floor(p * n_words)`` or ``ceil(p * n_words)`` words (rounded up with
    probability frac(p * n_words), so the expected count is p * n_words), drawn uniformly without
    replacement; every token of a drawn word is replaced 80/10/10. This is the difference strategy
    with every word weighted alike: it runs ``ops.difference_mask`` on an empty score table whose
    unknown score is 1, so both share the compiled kernel and the budget rule.
    """

    tokenizer: Any
    mlm_probability: float = 0.25

    def mask_batch(self, input_ids: torch.Tensor, never_word: torch.Tensor | None = None) -> dict:
        """Mask a padded [B, L] batch; ``never_word`` flags tokens that belong to no word (special
        tokens are always excluded). Returns ``input_ids`` (replaced) and ``labels``."""
        input_ids, never_word = self._checked_inputs(input_ids, never_word)
        # Every word is absent from the empty table and so weighs unknown_score = 1: uniform
        # sampling. The op lists the absent words too; with nothing to learn they are ignored.
        output = ops.difference_mask(
            input_ids, never_word, self.boundaries.starts_word,
            torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float32),
            self.boundaries.random_token_ids, mask_token_id=self.boundaries.mask_token_id,
            mlm_probability=self.mlm_probability, weighting="similarity", uniform_mix=0.0, unknown_score=1.0,
            mask_replace_prob=self.mask_replace_prob, random_replace_prob=self.random_replace_prob,
            seed=self._draw_seed(),
        )
        return {"input_ids": output.masked_ids, "labels": output.labels}
