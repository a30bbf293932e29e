"""What masking costs in a training step, per strategy, and what the sparse MLM head saves.

One batch of 16 SciCite sequences of 128 tokens, all-MiniLM-L6-v2 with an MLM head (its 30,522-token
vocabulary projection is a large part of a small encoder's step). Baselines in the same run: a
training step (forward, backward) with transformers' own MLM loss over every position, and
``DataCollatorForLanguageModeling``'s time for the same batch.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench_collator import scicite_examples, scores_for  # noqa: E402
from harness import markdown_table, measure, measure_together, milliseconds, sized, verdict  # noqa: E402

from diffmask_fast.embedding import default_model_path  # noqa: E402
from diffmask_fast.mlm_model import load_masked_lm  # noqa: E402
from diffmask_fast.strategies import build_strategy  # noqa: E402

GOALS = ("Goal: masking (in DataLoader workers) costs under 1% of a training step for every word-level "
         "strategy; the sparse MLM head makes the step faster than the full-vocabulary loss over every position.")
BATCH, LENGTH = sized((16, 128), (2, 64))
#: BertConfig arguments of a small random model over MiniLM's vocabulary, for a smoke run; None: MiniLM itself.
SMALL_MODEL = sized(None, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
#: The strategies whose collators are timed (each against the 1% goal).
STRATEGY_NAMES = ("difference", "random-word", "random-token", "terms", "mslm")
TERMS = ["receptor", "cell", "protein", "gene expression", "patients", "model"]


def masked_lm(path: str, tokenizer):
    """MiniLM with an MLM head, or in a smoke run a small random BERT over the same vocabulary."""
    if SMALL_MODEL is None:
        return load_masked_lm(path, init_mlm_head=True)
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **SMALL_MODEL))


def run() -> tuple[str, dict]:
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, TrainingArguments

    from diffmask_fast.trainer import MaskingTrainer

    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = masked_lm(path, tokenizer).train()
    examples = [{"input_ids": e["input_ids"]} for e in scicite_examples(tokenizer, BATCH, LENGTH)]
    scores = scores_for(tokenizer, examples)
    batch = build_strategy("random-token", tokenizer, seed=0).collator(examples)

    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(output_dir=scratch, report_to=[])
        sparse = MaskingTrainer(model=model, args=args, data_collator=lambda x: x)
        full = MaskingTrainer(model=model, args=args, data_collator=lambda x: x, sparse_head=False)

        def step(trainer):
            def run_step():
                loss = trainer.compute_loss(model, dict(batch))
                loss.backward()
                model.zero_grad(set_to_none=True)
            return run_step

        def hf_step():
            model(**batch).loss.backward()
            model.zero_grad(set_to_none=True)

        times = measure_together({"hf": hf_step, "full": step(full), "sparse": step(sparse)}, min_seconds=15)
    assert sparse._sparse_head.verified, "the sparse head did not match the model's logits"

    hf_collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.25, seed=0)
    collate = {"DataCollatorForLanguageModeling": measure(lambda: hf_collator(examples))}
    for name in STRATEGY_NAMES:
        collator = build_strategy(name, tokenizer, seed=0, scores=scores, terms=TERMS, mask_on="workers").collator
        collate[name] = measure(lambda: collator(examples))
    step_time = times["sparse"]
    rows = [["training step, transformers' MLM loss (all positions)", milliseconds(times["hf"]), "1.00x", "-"],
            ["training step, MaskingTrainer, full head", milliseconds(times["full"]),
             f"{times['hf'] / times['full']:.2f}x", "-"],
            ["training step, MaskingTrainer, sparse head (masked positions)", milliseconds(times["sparse"]),
             f"{times['hf'] / times['sparse']:.2f}x", verdict(times["sparse"] < times["hf"], "faster than transformers")]]
    table = markdown_table([f"forward + backward, {BATCH} x {LENGTH} tokens", "time", "speed vs transformers", "goal"],
                           rows)
    collate_rows = [[name, milliseconds(t), f"{100 * t / step_time:.2f}%",
                     "-" if name not in STRATEGY_NAMES else verdict(t < 0.01 * step_time, "< 1% of a step")]
                    for name, t in collate.items()]
    table += "\n\n" + markdown_table(["collate the same batch", "time", "share of a sparse-head step", "goal"],
                                     collate_rows)
    return table, {"step": times, "collate": collate}


if __name__ == "__main__":
    print(run()[0])
