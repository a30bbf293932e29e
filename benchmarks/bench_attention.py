"""What the attention baselines' masking pass costs (AttnMask, MST: ``AttentionMasker``).

They rank tokens by one layer's attention of the first token, read from the model being trained
in an extra pass without gradients. all-MiniLM-L6-v2 (6 layers, SDPA attention) on batches of
random vocabulary tokens (attention costs the same whatever the text). Baselines in the same
run: the encoder's forward pass without gradients, and the same masker reading every layer's
weights from eager attention (its path for models not built on transformers' attention
interface).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from harness import markdown_table, measure_together, milliseconds, sized, verdict  # noqa: E402

from diffmask_fast import attention  # noqa: E402
from diffmask_fast.embedding import load_encoder  # noqa: E402

GOALS = "Goal: the attention baselines' masking pass costs at most one forward pass of the encoder (no gradients)."
#: (rows, tokens) of each batch timed.
SHAPES = sized([(16, 128), (8, 512)], [(2, 16)])
#: BertConfig arguments of a small random encoder over MiniLM's vocabulary, for a smoke run; None: MiniLM itself.
SMALL_MODEL = sized(None, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))


def encoder_and_tokenizer():
    model, tokenizer = load_encoder(None)
    if SMALL_MODEL is not None:
        from transformers import BertConfig, BertModel

        model = BertModel(BertConfig(vocab_size=len(tokenizer), **SMALL_MODEL))
    return model.eval(), tokenizer


def run() -> tuple[str, dict]:
    model, tokenizer = encoder_and_tokenizer()
    masker = attention.AttentionMasker(tokenizer, seed=0)
    generator = torch.Generator().manual_seed(0)
    rows, results = [], {}
    for batch, length in SHAPES:
        ids = torch.randint(1000, len(tokenizer), (batch, length), generator=generator)
        ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
        mask = torch.ones_like(ids)

        def forward():
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)

        def eager():
            with mock.patch.object(attention, "first_token_row", lambda *args: None):
                masker(ids, mask, model=model)

        times = measure_together({"forward": forward, "interface": lambda: masker(ids, mask, model=model),
                                  "eager": eager}, min_seconds=10)
        results[f"{batch}x{length}"] = times
        shape = f"{batch} x {length} tokens"
        rows += [[f"encoder forward, no gradients, {shape}", milliseconds(times["forward"]), "1.00x", "-"],
                 [f"masking pass, attention interface (one row, stops at the layer), {shape}",
                  milliseconds(times["interface"]), f"{times['interface'] / times['forward']:.2f}x",
                  verdict(times["interface"] <= times["forward"], "<= one forward pass")],
                 [f"masking pass, eager attention (every layer's weights), {shape}", milliseconds(times["eager"]),
                  f"{times['eager'] / times['forward']:.2f}x", "-"]]
    table = markdown_table(["AttentionMasker, all-MiniLM-L6-v2", "time", "vs the forward pass", "goal"], rows)
    return table, results


if __name__ == "__main__":
    print(run()[0])
