"""The ``diffmask`` command line: demo, mine, preview."""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _add_masking_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="encoder name or path for word embeddings and tokenization "
                        "(default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--pooling", choices=("pooled", "mean", "input_embeddings"), default=None,
                        help="how a word becomes a vector (default: pooled [CLS] output, or mean pooling for "
                             "sentence-transformers checkpoints trained with it, such as the bundled MiniLM)")
    parser.add_argument("--mlm-probability", type=float, default=0.25, help="share of words to mask (default 0.25)")
    parser.add_argument("--similarity", choices=("max", "centroid", "mean"), default="max",
                        help="how a word's score combines its similarity to the anchors (default max)")
    parser.add_argument("--weighting", choices=("similarity", "rank"), default="similarity",
                        help="sampling weight of a word: its score, or its rank within the sequence")
    parser.add_argument("--sentences", "-n", type=int, default=5, help="sentences to show (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the sentences and the masks (default 0)")
    parser.add_argument("--scores", action="store_true", help="print each word's score next to it")
    parser.add_argument("--html", type=Path, default=None, help="also write the preview as an HTML page here")


def _add_mining_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", "--anchors-count", type=int, default=20, dest="k", help="number of anchors (default 20)")
    parser.add_argument("--min-count", type=int, default=None,
                        help="minimum domain count of an anchor (default: grows with the square root of corpus size)")
    parser.add_argument("--smoothing", type=float, default=None,
                        help="TF-ICF smoothing in occurrences per million words (default 10)")
    parser.add_argument("--general", type=Path, default=None,
                        help="general-English table, word<TAB>count per line (default: Google Web Trillion Word)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffmask", description="Difference-Masking for continued pretraining of masked LMs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="mask the Python language reference (offline, no arguments needed)",
                               description="Mine anchors from the Python language reference shipped with CPython, score "
                                           "words with the bundled all-MiniLM-L6-v2, and show masked sentences.")
    _add_masking_options(demo)

    mine = commands.add_parser("mine", help="find a corpus's anchor words by TF-ICF",
                               description="Count the words of a corpus (text files, one document per line; "
                                           "directories and globs allowed) and print its top anchors by TF-ICF.")
    mine.add_argument("corpus", nargs="+", help="text files, directories or glob patterns")
    _add_mining_options(mine)
    mine.add_argument("--output", "-o", type=Path, default=None, help="save the anchors as JSON here")
    mine.add_argument("--counts-output", type=Path, default=None, help="save the word counts as JSON here")

    preview = commands.add_parser("preview", help="show which words of a corpus get masked",
                                  description="Mask sample documents of a corpus and mark the masked words.")
    preview.add_argument("corpus", nargs="+", help="text files, directories or glob patterns")
    preview.add_argument("--anchors", type=Path, default=None,
                         help="anchors JSON from `diffmask mine` (default: mine them from the corpus now)")
    _add_mining_options(preview)
    _add_masking_options(preview)
    return parser


def _mine(corpus, args):
    from .anchors import mine_anchors
    from .counting import count_words
    from .general import GeneralFrequencies
    from .reference import DEFAULT_SMOOTHING_PER_MILLION

    counts = count_words(corpus)
    general = GeneralFrequencies.from_file(args.general) if args.general else GeneralFrequencies.default()
    smoothing = DEFAULT_SMOOTHING_PER_MILLION if args.smoothing is None else args.smoothing
    return counts, mine_anchors(counts, general, k=args.k, min_count=args.min_count, smoothing_per_million=smoothing)


def _show_masks(anchors, texts, args) -> None:
    from .collator import DifferenceMaskingCollator
    from .embedding import WordEmbedder
    from .preview import preview, render_text, write_html
    from .scoring import WordScorer
    from .vocabulary import tokenizer_word_types

    embedder = WordEmbedder.from_pretrained(args.model, pooling=args.pooling)
    scorer = WordScorer(embedder, anchors, similarity=args.similarity)
    table = scorer.score(tokenizer_word_types(embedder.tokenizer, texts) | set(anchors.words))
    collator = DifferenceMaskingCollator(embedder.tokenizer, table, mlm_probability=args.mlm_probability,
                                         weighting=args.weighting, seed=args.seed)
    sentences = preview(collator, texts)
    print(f"\nMasked words ([[like this]]) at mlm_probability={args.mlm_probability}, seed={args.seed}:\n")
    print(render_text(sentences, show_scores=args.scores).replace("\n", "\n\n"))
    anchor_words = set(anchors.words)
    top = [(w, s) for w, s in table.top(len(anchor_words) + 10) if w not in anchor_words][:10]
    print("\nHighest-scoring words here that are not anchors (score, nearest anchor): "
          + ", ".join(f"{w} ({s:.2f}, {table.nearest_anchor_of(w) or '-'})" for w, s in top))
    if args.html:
        write_html(args.html, sentences)
        print(f"Wrote {args.html}")


def run_demo(args) -> None:
    from .demo import python_reference_corpus, sample_sentences

    lines = python_reference_corpus()
    print(f"Corpus: the Python language reference shipped with CPython ({len(lines):,} paragraphs).")
    args.general = args.min_count = args.smoothing = None
    args.k = 20
    counts, anchors = _mine(lines, args)
    print(f"\nTop {len(anchors)} anchors by TF-ICF against general English ({counts.total:,} words counted):\n")
    print(anchors.table())
    _show_masks(anchors, sample_sentences(lines, args.sentences, args.seed), args)


def run_mine(args) -> None:
    counts, anchors = _mine([Path(c) for c in args.corpus], args)
    print(f"{counts.total:,} words, {len(counts):,} distinct, {counts.documents:,} documents; "
          f"anchors need at least {anchors.min_count} occurrences.\n")
    print(anchors.table())
    if args.output:
        anchors.save(args.output)
        print(f"\nSaved anchors to {args.output}")
    if args.counts_output:
        counts.save(args.counts_output)
        print(f"Saved word counts to {args.counts_output}")


def run_preview(args) -> None:
    from .anchors import Anchors
    from .corpus import iter_documents

    corpus = [Path(c) for c in args.corpus]
    if args.anchors:
        anchors = Anchors.load(args.anchors)
    else:
        _, anchors = _mine(corpus, args)
        print(anchors.table())
    documents = [d for d in iter_documents(corpus) if d.strip()]
    if not documents:
        raise ValueError("the corpus has no non-empty documents to preview")
    texts = random.Random(args.seed).sample(documents, min(args.sentences, len(documents)))
    _show_masks(anchors, texts, args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "sentences", 1) < 1:
        print("diffmask: error: --sentences must be at least 1", file=sys.stderr)
        return 2
    try:
        {"demo": run_demo, "mine": run_mine, "preview": run_preview}[args.command](args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"diffmask {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
