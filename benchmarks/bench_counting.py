"""Word counting throughput and memory on a corpus of real text, against collections.Counter.

The corpus is the lines of the ../shared/data corpora (ChemProt, ACL-ARC, SciCite), shuffled and
repeated into a 200 MB file (and a 100 MB one for memory), written to a temporary directory and
deleted afterwards. Repeated as they are, the lines would hold the source's ~63,000 distinct words
at any size, where real text keeps finding new ones (Heaps' law: about the square root of its
length); so each pass spells some words that occur once in the source anew, as many as make the
vocabulary grow with the square root of the corpus (about 360,000 distinct words in 200 MB): the
hash table's size and the final normalization of every distinct word grow as on real text. It is
read from the page cache (just written). ``count_words`` is measured end to end: reading,
counting, normalizing every distinct word and sorting the table.

- Rates are given per wall-clock second and per CPU-second of the process (all its threads):
  on a machine whose cores are shared or capped the two differ, and the CPU rate is the rate
  per core. A pure-compute Numba loop run in 1 and in 2 threads, in the same interleaved rounds,
  shows how much parallelism the machine gives; so do two independent processes counting the file
  with one thread each, started together (no shared state at all: the ceiling for this workload).
  Times are medians of 5 rounds.
- The baseline, ``Counter.update(line.split())`` over the lines of the file opened as UTF-8 text,
  is measured on the file's first 50 MB (its rate does not depend on length) in the same run.
- Peak memory is the peak resident set size (VmHWM) of a fresh process that counts the 100 MB,
  the 200 MB or twice the 200 MB corpus with 2 threads (the median of ``MEMORY_PROBES``
  processes), next to that process's size after importing and compiling and to the size of its
  word tables. The tables of distinct words grow with them (the 100 MB corpus has fewer); a file
  of the 200 MB file twice holds the same words in twice the bytes, so memory that grows with the
  bytes read shows there, beyond the tables. The tables do grow there: each thread has its own,
  which holds the words that thread met, and on twice the bytes each thread meets more of them
  (a table doubles when it is half full). Plain files are memory-mapped a few 16 MB blocks at a
  time and each block's pages are dropped once counted.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import markdown_table, sized, verdict  # noqa: E402

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from diffmask_fast.counting import count_words  # noqa: E402

GOALS = ("Goals: `count_words` >= 200 MB/s per core and >= 8x `collections.Counter` over `str.split` on "
         "the same file; >= 1.8x from 1 to 2 threads; peak memory that does not grow with corpus size (beyond the "
         "table of its distinct words).")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = ["acl_arc/corpus.txt", "chemprot/abstracts.txt", "chemprot/corpus.txt", "scicite/corpus.txt"]
MB = 1_000_000
RUNS = sized(5, 1)
#: The corpus, the smaller one for memory, and the prefix the Counter baseline reads.
# Smoke sizes above 2 x counting.MIN_CHUNK_BYTES, so that two threads share the smaller corpora too.
CORPUS_BYTES, HALF_BYTES, PREFIX_BYTES = sized((200 * MB, 100 * MB, 50 * MB), (4_400_000, 2_200_000, 2_200_000))
SPIN_VALUES, SPIN_ROUNDS = sized((1_000_000, 200), (10_000, 2))
#: How many of the shared corpora's lines make up one pass of the corpus (None: all, about 6 MB).
SOURCE_LINES = sized(None, 1_000)

# VmHWM (peak resident memory of this process image), not ru_maxrss: after fork and exec,
# ru_maxrss can still report the parent's size. The word tables' size is read as they are
# finished: each counting thread has its own, which holds the distinct words that thread met.
_MEMORY_PROBE = """
import json, sys
from diffmask_fast import counting

def status(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))

tables_bytes = []
finish = counting._RawTables.finish
def finish_and_measure(self, *args, **kwargs):
    tables_bytes.append(sum(array.nbytes for table in self.tables if table is not None for array in table))
    return finish(self, *args, **kwargs)
counting._RawTables.finish = finish_and_measure

counting.count_words(["warm up"], progress=False)
warm = status("VmHWM")
tables_bytes.clear()
from pathlib import Path
counts = counting.count_words([Path(p) for p in sys.argv[2:]], progress=False, threads=int(sys.argv[1]))
print(json.dumps({"warm_kb": warm, "peak_kb": status("VmHWM"), "tables_kb": sum(tables_bytes) // 1024,
                  "distinct": len(counts), "total": counts.total}))
"""


def megabytes(nbytes: int) -> str:
    """A corpus size as the table names it: "200 MB" (or "0.4 MB" in a smoke run)."""
    return f"{nbytes / MB:g} MB"


def build_corpus(path: Path, size: int, seed: int = 0) -> int:
    """Write lines of the shared corpora, reshuffled on every pass, until ``size`` bytes; pass p
    (from 1) respells V·(sqrt(p + 1) - sqrt(p)) of the words that occur once in the source, V the
    source's distinct words, so that p passes hold about V·sqrt(p) (module docstring)."""
    texts = []
    for source in SOURCES:
        texts += (DATA / source).read_text(encoding="utf-8").splitlines()
    texts = texts[:SOURCE_LINES]
    counts = Counter(word for text in texts for word in text.split())
    line_of = {word: i for i, text in enumerate(texts) for word in text.split() if counts[word] == 1}
    once = sorted(line_of)
    distinct = len(count_words(texts, progress=False))  # as counted: "protein," is "protein"
    rng = random.Random(seed)
    order = list(range(len(texts)))
    written, passes = 0, 0
    with open(path, "wb") as handle:
        while written < size:
            lines = list(texts)
            respelled = round(distinct * (math.sqrt(passes + 1) - math.sqrt(passes))) if passes else 0
            by_line: dict[int, set] = {}
            for word in rng.sample(once, min(respelled, len(once))):
                by_line.setdefault(line_of[word], set()).add(word)
            for i, words in by_line.items():
                lines[i] = _respelled(lines[i], words, passes)
            rng.shuffle(order)
            chunk = "".join(lines[i] + "\n" for i in order).encode("utf-8")
            handle.write(chunk)
            written += len(chunk)
            passes += 1
    return written


def _respelled(line: str, words: set, passes: int) -> str:
    """``line`` with each of ``words`` given a suffix of letters that names the pass."""
    suffix = "q"
    while passes:
        passes, letter = divmod(passes, 26)
        suffix += chr(ord("a") + letter)
    return "".join(part + suffix if part in words else part for part in re.split(r"(\s+)", line))


def timed_rounds(functions: dict) -> dict:
    """Median (wall seconds, process CPU seconds) of each function over RUNS interleaved rounds."""
    samples: dict = {name: ([], []) for name in functions}
    for _ in range(RUNS):
        for name, fn in functions.items():
            wall, cpu = time.perf_counter(), time.process_time()
            seconds = fn()  # a function may time itself
            samples[name][0].append(seconds if isinstance(seconds, float) else time.perf_counter() - wall)
            samples[name][1].append(time.process_time() - cpu)
    return {name: (statistics.median(w), statistics.median(c)) for name, (w, c) in samples.items()}


_SIDE_BY_SIDE = """
import sys, time
from diffmask_fast.counting import count_words
count_words(["warm up"], progress=False)
print("ready", flush=True)
sys.stdin.readline()
started = time.perf_counter()
count_words(sys.argv[1], progress=False, threads=1)
print(time.perf_counter() - started, flush=True)
"""


def side_by_side(path: Path, processes: int) -> float:
    """Seconds until ``processes`` independent one-thread counts of ``path``, started together,
    have all finished: with 2, the most any threading could gain on this machine."""
    children = [subprocess.Popen([sys.executable, "-c", _SIDE_BY_SIDE, str(path)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    seconds = max(float(child.stdout.readline()) for child in children)
    for child in children:
        child.wait()
    return seconds


def counter_baseline(path: Path) -> None:
    counts: Counter = Counter()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            counts.update(line.split())


@njit(nogil=True)
def _spin(values, rounds):
    x = 0
    for _ in range(rounds):
        for v in values:
            x = (x ^ v) * 1099511628211
    return x


def spin_functions(pool: ThreadPoolExecutor) -> dict:
    """A pure-compute loop run once in 1 thread and twice side by side in 2: the ratio of their
    times (2.0 on two free cores) is the parallelism the machine gives at that moment."""
    values = np.arange(SPIN_VALUES, dtype=np.int64)
    _spin(values, 1)
    return {"spin1": lambda: _spin(values, SPIN_ROUNDS),
            "spin2": lambda: list(pool.map(_spin, [values, values], [SPIN_ROUNDS, SPIN_ROUNDS]))}


#: Fresh processes a peak is the median of: one count's peak varies by about 8% from run to run
#: (how many of the mapped blocks' pages are resident at once), the size of the goal's margin.
MEMORY_PROBES = 3


def beyond_tables(probe: dict) -> int:
    """A probe's peak less its word tables (kB): what would grow with the bytes read."""
    return probe["peak_kb"] - probe["tables_kb"]


def peak_memory(paths: list[Path], threads: int = 2) -> dict:
    probes = []
    for _ in range(MEMORY_PROBES):
        result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(threads), *map(str, paths)],
                                capture_output=True, text=True, check=True)
        probes.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return sorted(probes, key=lambda probe: probe["peak_kb"])[len(probes) // 2]


def run() -> tuple[str, dict]:
    directory = Path(tempfile.mkdtemp(prefix="diffmask-bench-counting-"))
    try:
        big, half, prefix = directory / "corpus200.txt", directory / "corpus100.txt", directory / "prefix50.txt"
        size = build_corpus(big, CORPUS_BYTES)
        half_size = build_corpus(half, HALF_BYTES, seed=1)
        with open(big, "rb") as source, open(prefix, "wb") as target:
            target.write(source.read(PREFIX_BYTES))
            target.write(source.readline())
        prefix_size = prefix.stat().st_size

        count_words(["warm up"], progress=False)
        # Interleaved rounds, so that every measurement sees the same share of a shared machine.
        with ThreadPoolExecutor(2) as pool:
            results = timed_rounds({
                1: lambda: count_words(big, progress=False, threads=1),
                2: lambda: count_words(big, progress=False, threads=2),
                "counter": lambda: counter_baseline(prefix),
                **spin_functions(pool),
                "processes1": lambda: side_by_side(big, 1),
                "processes2": lambda: side_by_side(big, 2),
            })
        ours, baseline = {1: results[1], 2: results[2]}, results["counter"]
        parallelism = 2 * results["spin1"][0] / results["spin2"][0]
        process_scaling = 2 * results["processes1"][0] / results["processes2"][0]
        doubled = directory / "corpus400.txt"  # the same words in twice the bytes, in one file as the others
        with open(doubled, "wb") as out:
            for _ in range(2):
                with open(big, "rb") as source:
                    shutil.copyfileobj(source, out)
        memory = {"100MB": peak_memory([half]), "200MB": peak_memory([big]), "400MB": peak_memory([doubled])}
        counts = count_words(big, progress=False)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    def rates(wall_cpu, nbytes):
        return nbytes / wall_cpu[0] / MB, nbytes / wall_cpu[1] / MB

    one_wall, one_cpu = rates(ours[1], size)
    two_wall, two_cpu = rates(ours[2], size)
    base_wall, base_cpu = rates(baseline, prefix_size)
    raw = {
        "corpus_bytes": size, "words": counts.total, "distinct": len(counts),
        "threads1": {"wall_s": ours[1][0], "cpu_s": ours[1][1]}, "threads2": {"wall_s": ours[2][0], "cpu_s": ours[2][1]},
        "counter_50MB": {"bytes": prefix_size, "wall_s": baseline[0], "cpu_s": baseline[1]},
        "machine_parallelism": parallelism, "two_processes_throughput": process_scaling,
        "memory": memory, "half_corpus_bytes": half_size,
    }
    mib = lambda kb: f"{kb / 1024:.0f} MiB"  # noqa: E731
    rows = [
        ["`count_words`, 1 thread", f"{one_wall:.0f} MB/s wall; {one_cpu:.0f} MB/s per CPU-second",
         f"{ours[1][0]:.2f} s for {size / MB:.0f} MB ({counts.total / 1e6:.1f}M words, {len(counts):,} distinct); "
         + verdict(one_cpu >= 200, ">= 200 MB/s per core")],
        ["`count_words`, 2 threads", f"{two_wall:.0f} MB/s wall ({two_wall / 2:.0f} per thread); "
         f"{two_cpu:.0f} MB/s per CPU-second", f"{ours[2][0]:.2f} s"],
        ["`Counter.update(line.split())`", f"{base_wall:.1f} MB/s wall; {base_cpu:.1f} MB/s per CPU-second",
         f"on the first {prefix_size / MB:.0f} MB of the same file"],
        ["`count_words` (1 thread) / Counter", f"{one_wall / base_wall:.1f}x wall; {one_cpu / base_cpu:.1f}x per CPU-second",
         verdict(one_cpu / base_cpu >= 8, ">= 8x")],
        ["1 -> 2 threads", f"{two_wall / one_wall:.2f}x wall",
         f"{verdict(two_wall / one_wall >= 1.8, '>= 1.8x')}. On this machine, in the same rounds: a pure-compute loop gains {parallelism:.2f}x "
         f"from 1 to 2 threads; two independent one-thread counts side by side give {process_scaling:.2f}x "
         "the throughput of one"],
        [f"peak RSS, {megabytes(HALF_BYTES)} corpus", mib(memory["100MB"]["peak_kb"]),
         f"{mib(memory['100MB']['warm_kb'])} after import and JIT warm-up; {memory['100MB']['distinct']:,} distinct "
         f"words; word tables {mib(memory['100MB']['tables_kb'])}"],
        [f"peak RSS, {megabytes(CORPUS_BYTES)} corpus", mib(memory["200MB"]["peak_kb"]),
         f"{mib(memory['200MB']['warm_kb'])} after import and JIT warm-up; {memory['200MB']['distinct']:,} distinct "
         f"words; word tables {mib(memory['200MB']['tables_kb'])}; goal: no growth with corpus size beyond that "
         "of its distinct words"],
        [f"peak RSS, {megabytes(2 * CORPUS_BYTES)} corpus", mib(memory["400MB"]["peak_kb"]),
         f"{mib(memory['400MB']['warm_kb'])} after import and JIT warm-up "
         f"(the {megabytes(CORPUS_BYTES)} file twice in one: the same {memory['400MB']['distinct']:,} distinct words, "
         f"of which each of the 2 threads' own tables now holds more); word tables "
         f"{mib(memory['400MB']['tables_kb'])}; the rest {mib(beyond_tables(memory['400MB']))} against "
         f"{mib(beyond_tables(memory['200MB']))}: "
         + verdict(beyond_tables(memory["400MB"]) <= 1.1 * beyond_tables(memory["200MB"]),
                   f"no growth with the bytes read beyond the word tables: within 10% of the "
                   f"{megabytes(CORPUS_BYTES)} corpus's")],
    ]
    return markdown_table(["measurement", "result", "notes"], rows), raw


if __name__ == "__main__":
    table, raw = run()
    print(table)
    print(json.dumps(raw, indent=1))
