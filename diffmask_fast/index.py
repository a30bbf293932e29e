"""Nearest anchor by cosine similarity for many queries: exact for small anchor sets, indexed for large.

``AnchorIndex`` answers what ``ops.max_anchor_similarity`` answers, (max cosine, arg max) per
query, for anchor sets from a handful of words to millions of contextual vectors:

* ``exact``: the compiled ``max_anchor_similarity`` op (blocked matrix products, exact).
* ``flat``: FAISS ``IndexFlatIP`` on unit vectors: exact too (up to float rounding); on the CPU
  as fast as the op or slower up to K = 10^6 (where IVF is far faster), and fast on the GPU
  with GPU FAISS.
* ``ivf``: an inverted file over FAISS spherical k-means centroids (``nlist`` lists). Each query
  scans the ``nprobe`` lists whose centroids are most similar to it. On the CPU the lists are
  scanned query-batched by the compiled ops ``top_dots`` (the lists each query probes) and
  ``ivf_max_dot`` (list by list, the list's vectors multiplied with all the queries that probe it,
  gathered in cache): on the benchmark machine about 10x the queries/s of FAISS's per-query list
  scan at the same recall (``engine="faiss"`` selects the latter; with GPU FAISS it is the
  default).
* ``hnsw``: FAISS ``IndexHNSWFlat`` (``hnsw_m`` links, ``ef_search`` tuned).

Approximate kinds are tuned when built: unless ``nprobe`` / ``ef_search`` is given, the index
searches for the smallest value (doubling, then bisecting) whose recall@1 against exact search
on a sample of queries, less two standard errors, reaches ``recall_target`` (a sample with no miss
must hold at least target / (1 - target) queries, 99 at 0.99), and keeps the recall it measured in
``recall`` (and ``report``). Give it
queries like the ones it will answer (``sample_queries``); without them it draws anchors and
perturbs them (each moved to cosine ~0.7 of where it was), which only approximates real queries.

Recall@1 counts a query as found when the returned anchor is the exact nearest anchor or is as
similar to the query as it (within 1e-6: ties and float rounding).

``kind="auto"`` picks by the number of anchors K, from measurements on 2-core AVX-512 CPUs
(benchmarks/bench_scoring.py, D = 384; see benchmarks/RESULTS.md): the exact op below
``IVF_MIN_ANCHORS`` (it answers 1.0-2.0x the queries/s of FAISS flat from K = 10^3 to 3 x 10^4
and 1.1x at 10^5, and IVF tuned to recall@1 0.99 answers about as many queries/s as it at
K = 10^4, 5.3x at 10^5 and 10.7x at 10^6), IVF from there on, falling back to the exact op when
reaching the recall target would make IVF scan more than ``MAX_SCAN_FRACTION`` of the anchors.
With ``use_gpu``, FAISS flat search
on the GPU takes the place of the exact op from ``GPU_FLAT_MIN_ANCHORS``. HNSW is never chosen
automatically: on those word queries it needs ef_search in the hundreds for recall@1 0.99, which
makes it slower than the exact op at K = 10^5, and it is the slowest to build; it stays
available for few-query, low-latency use.

Cosine similarity is the inner product of L2-normalized vectors. As in the exact op, a zero
vector (query or anchor) has similarity 0 to everything, and a zero query gets (0, 0).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ._checks import whole_number

logger = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "exact", "flat", "ivf", "hnsw")
IVF_ENGINES = ("batched", "faiss")

#: ``auto`` uses the exact op below this many anchors, and IVF from here on...
IVF_MIN_ANCHORS = 65536
#: ...but with ``use_gpu``, FAISS flat search on the GPU from this many.
GPU_FLAT_MIN_ANCHORS = 8192
#: ``auto`` gives up on IVF when the recall target needs more than this share of anchors scanned.
MAX_SCAN_FRACTION = 0.25
#: Two similarities closer than this count as a tie when measuring recall.
TIE_TOLERANCE = 1e-6
#: Results FAISS is asked for per query whose best two tie, among which the smallest id wins.
TIE_CANDIDATES = 8


def _smallest_tied(distances: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest label among the results as near as the first (FAISS orders ties as
    its scan meets them: by list, or by SIMD lane; the exact op by anchor)."""
    tied = (distances == distances[:, :1]) & (labels >= 0)
    return torch.where(tied, labels, torch.full_like(labels, torch.iinfo(labels.dtype).max)).amin(dim=1)


def auto_kind(k: int, use_gpu: bool = False) -> str:
    """The kind ``auto`` picks for ``k`` anchors (see the module's docstring for why)."""
    if k >= IVF_MIN_ANCHORS:
        return "ivf"
    return "flat" if use_gpu and k >= GPU_FLAT_MIN_ANCHORS else "exact"


#: The index kind each kind-specific option sets up.
#: Standard errors of the sample recall that tuning keeps below it (see ``AnchorIndex._tune``).
TUNING_MARGIN = 2

_OPTION_KIND = {"nlist": "ivf", "nprobe": "ivf", "engine": "ivf", "spill": "ivf", "ef_search": "hnsw"}


#: The least value of each whole-number option (the others must be positive). FAISS's HNSW
#: graph needs two links per node: one crashes it.
_LEAST = {"hnsw_m": 2, "recall_sample": 0, "seed": 0}
#: Seeds are passed to FAISS's k-means plus one, as a signed 64-bit value.
_SEED_LIMIT = 2**63 - 1
#: Options FAISS takes as a C int.
_C_INT_OPTIONS = ("nlist", "nprobe", "ef_search", "hnsw_m", "ef_construction", "kmeans_iterations")
_C_INT_MAX = 2**31 - 1


def _check_whole(name: str, value) -> None:
    """Refuse a whole-number option that is no integer (1.5 or True would be cut or read as 1
    deep inside torch or FAISS), below its least value or beyond what FAISS takes."""
    if name == "seed":
        whole_number(value, name, _LEAST[name], _SEED_LIMIT - 1, " (FAISS adds 1 to it in a signed 64-bit value)")
    elif name == "ef_search":  # FAISS searches with max(ef_search, k), and k is 2 (the runner-up, for ties)
        whole_number(value, name, 2, _C_INT_MAX, " (FAISS takes it as a C int)",
                     " (the search asks for the two nearest anchors, to break ties as the exact op does)")
    elif name in _C_INT_OPTIONS:
        whole_number(value, name, _LEAST.get(name, 1), _C_INT_MAX, " (FAISS takes it as a C int)")
    else:
        whole_number(value, name, _LEAST.get(name, 1))


#: IVF's default number of lists: this many times sqrt(K) (at most K/39, for k-means)...
IVF_LISTS_PER_ROOT = 8
#: ...and with the batched engine each anchor goes into its two nearest lists (``spill=2``) when
#: lists hold fewer anchors than this on average: anchors near the edge of a short list are
#: often nearest to queries that probe the list beside it. (Measured on the benchmark's word
#: queries: at K = 10^5, 2,530 lists of 40, recall@1 0.99 with 5.2x the exact op's queries/s
#: against 3.7x with one list each; at K = 10^6, 8,000 lists of 125, 12.2x against 9.5x.) Longer
#: lists come with large K, where the second copy of every anchor costs most memory (1.5 GB more
#: at 10^6 anchors of 384 floats) for a smaller gain: they take one list each unless ``spill=2``.
SPILL_BELOW_LIST_SIZE = 64
#: Query-list pairs one batched IVF scan holds at once (about 30 bytes each): a block of
#: queries probing many lists is scanned in parts.
IVF_SCAN_PAIRS = 2**22


def smallest_tuning_sample(recall_target: float) -> int:
    """The fewest sample queries that can show ``recall_target`` (``AnchorIndex._reaches``: with
    no miss, n / (n + 1) must reach it): 99 for 0.99."""
    if recall_target >= 1.0:
        return 1
    return max(1, math.ceil(recall_target / (1 - recall_target) - 1e-9))


def default_recall_sample(recall_target: float) -> int:
    """Sample queries tuning uses when not told: 1,000, or as many as ``recall_target`` needs."""
    return max(1000, smallest_tuning_sample(recall_target))


def check_index_options(kind: str = "auto", *, recall_target: float = 0.99, spill: int | None = None,
                        engine: str | None = None, **counts: int | None) -> None:
    """Raise ValueError for options ``AnchorIndex`` refuses. ``counts`` are the whole-number
    options (``nlist``, ``nprobe``, ``ef_search``, ``hnsw_m``, ...; None means the default), positive
    unless ``_LEAST`` says otherwise. Callers check them before the hours of counting and
    embedding that come before an index is built."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")
    if not 0.0 < recall_target <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
    tuned = {"ivf": "nprobe", "hnsw": "ef_search"}.get(kind)
    if recall_target >= 1.0 and tuned is not None and counts.get(tuned) is None:
        raise ValueError(f"recall_target 1 cannot be shown by sampling: a {kind!r} index is tuned until a sample "
                         f"shows recall@1 at the target, which only an exact search can promise; use kind 'exact' or "
                         f"'flat', or a target below 1")
    if spill is not None and spill not in (1, 2):
        raise ValueError(f"spill must be 1 or 2, got {spill}")
    if engine is not None and engine not in IVF_ENGINES:
        raise ValueError(f"unknown IVF engine {engine!r}; expected one of {', '.join(IVF_ENGINES)}")
    if spill == 2 and engine == "faiss":
        raise ValueError("spill=2 needs engine='batched': FAISS's IVF index puts each anchor in one list")
    for name, value in counts.items():
        if value is not None:
            _check_whole(name, value)
    sample, needed = counts.get("recall_sample"), smallest_tuning_sample(recall_target)
    if sample is not None and 0 < sample < needed and kind != "exact" and kind != "flat":
        raise ValueError(f"recall_sample {sample} cannot show recall@1 {recall_target}: a sample with no miss shows at "
                         f"most n/(n+1), so tuning would scan every list; give at least {needed} (or 0 to keep the "
                         "default parameters untuned)")
    if kind != "auto":  # auto applies the options of the kind it picks
        given = {"nlist": counts.get("nlist"), "nprobe": counts.get("nprobe"), "engine": engine,
                 "spill": spill if spill not in (None, 1) else None, "ef_search": counts.get("ef_search")}
        for name, value in given.items():
            if value is not None and _OPTION_KIND[name] != kind:
                raise ValueError(f"{name} must be left out of a {kind!r} index: it tunes "
                                 f"{_OPTION_KIND[name]!r} indexes only")


@dataclass
class RecallReport:
    """Recall@1 of an approximate index against exact search on sample queries."""

    recall: float
    queries: int
    #: Mean and largest amount by which the returned similarity falls short of the exact maximum.
    mean_shortfall: float
    max_shortfall: float
    #: Where the sample queries came from: "given" or "perturbed anchors".
    source: str = "given"

    def __str__(self) -> str:
        return (f"recall@1 {self.recall:.4f} on {self.queries:,} {self.source} queries "
                f"(similarity shortfall mean {self.mean_shortfall:.2g}, max {self.max_shortfall:.2g})")


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("FAISS indexes need the faiss package: pip install faiss-cpu (or faiss-gpu)") from error
    return faiss


def faiss_gpus() -> int:
    """Number of GPUs FAISS can use (0 with faiss-cpu)."""
    try:
        faiss = _faiss()
    except ImportError:
        return 0
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


#: Values ``unit_rows`` normalizes at a time: its dozen elementwise passes then run in cache
#: (2-4x faster than over a whole block of 32,768 queries: benchmarks/test_speed.py).
UNIT_ROWS_BLOCK_VALUES = 2**17


def unit_rows(vectors: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows scaled to unit L2 norm, as ``dtype``, zeros positive; zero rows stay zero, and a row
    holding NaN or inf becomes NaN (it has no direction), as the exact op scores such a row NaN.

    Each row is divided by its largest magnitude first, in the wider of its own type and
    ``dtype``, so that rows of any finite scale (1e300, or subnormal) normalize like the
    reference instead of overflowing or flushing to zero; only the unit rows are rounded."""
    step = max(1, UNIT_ROWS_BLOCK_VALUES // max(1, vectors.shape[-1]))
    if vectors.ndim != 2 or vectors.shape[0] <= step:
        return _unit_rows(vectors, dtype)
    unit = torch.empty(vectors.shape, dtype=dtype, device=vectors.device)
    for begin in range(0, vectors.shape[0], step):
        unit[begin : begin + step] = _unit_rows(vectors[begin : begin + step], dtype)
    return unit


def _unit_rows(vectors: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    wide = torch.float64 if torch.float64 in (vectors.dtype, dtype) else torch.float32
    vectors = vectors.to(wide)
    largest = vectors.abs().amax(dim=-1, keepdim=True)
    ones = torch.ones_like(largest)
    scaled = vectors / torch.where((largest > 0) & torch.isfinite(largest), largest, ones)
    norms = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)
    unit = torch.where(norms > 0, scaled / torch.where(norms > 0, norms, ones), torch.zeros_like(scaled))
    finite = torch.isfinite(vectors).all(dim=-1, keepdim=True)
    unit = torch.where(finite, unit, torch.full_like(unit, float("nan"))).to(dtype)
    return torch.where(unit == 0, torch.zeros_like(unit), unit)  # -0.0 is 0.0: copies hash alike


def _directed(queries: torch.Tensor) -> torch.Tensor:
    """The rows of ``queries`` that have a direction, at unit length (float32): zero rows and
    rows holding NaN or infinity get the same answer from every search, so a recall sample of
    them would show recall 1 whatever the index does."""
    units = unit_rows(queries)
    return units[torch.linalg.vector_norm(units, dim=1) > 0]  # NaN norms compare False


def first_equal_rows(rows: torch.Tensor) -> torch.Tensor:
    """For each row of a float32 matrix, the index of the first row equal to it bit for bit.
    Rows are hashed (exact integer arithmetic on their bits); a row whose hash meets another's
    is compared with the first row of that hash, all at once, and only the rare hashes shared
    by rows that differ are sorted out one by one."""
    first = torch.arange(rows.shape[0])
    if rows.shape[0] < 2:
        return first
    bits = rows.contiguous().view(torch.int32)
    multipliers = torch.randint(1, 2**62, (rows.shape[1],), generator=torch.Generator().manual_seed(0))
    keys = torch.cat([(part.long() * multipliers).sum(1)  # wraps: any fixed hash will do
                      for part in bits.split(8192)])
    keys, order = torch.sort(keys, stable=True)  # equal keys keep the rows' order
    starts = torch.cat([torch.tensor([True]), keys[1:] != keys[:-1]])
    run = torch.cumsum(starts, 0) - 1  # of each sorted position
    sizes = torch.bincount(run)
    shared = torch.nonzero(sizes[run] > 1).squeeze(1)  # sorted positions whose hash another row has
    if shared.numel() == 0:
        return first
    heads = order[torch.nonzero(starts).squeeze(1)][run[shared]]
    members = order[shared]
    same = torch.cat([(bits[m] == bits[h]).all(1) for m, h in zip(members.split(8192), heads.split(8192))])
    first[members[same]] = heads[same]
    collided = torch.unique(run[shared[~same]]).tolist()
    bounds = torch.cat([torch.nonzero(starts).squeeze(1), torch.tensor([rows.shape[0]])])
    for r in collided:
        start, stop = int(bounds[r]), int(bounds[r + 1])
        members = order[start:stop]
        _, inverse = torch.unique(rows[members].view(torch.int32), dim=0, return_inverse=True)
        earliest = torch.full((int(inverse.max()) + 1,), len(members)).scatter_reduce(
            0, inverse, torch.arange(len(members)), "amin")
        first[members] = members[earliest[inverse]]
    return first


def _distinct_directions(units: torch.Tensor, nonzero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the distinct non-zero unit rows, the anchor row of each, or None when that is every row).
    An index holds each direction once, under its first anchor: ties then go to the first
    anchor, as in the exact op, and HNSW's graph, which copies of one vector tangle, stays
    searchable."""
    rows = torch.nonzero(nonzero).squeeze(1)
    distinct = first_equal_rows(units[rows]) == torch.arange(rows.numel())
    if rows.numel() == units.shape[0] and bool(distinct.all()):
        return units.contiguous(), None
    kept = rows[distinct]
    return units[kept].contiguous(), kept


def exact_search(queries: torch.Tensor, anchors: torch.Tensor, block: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """``ops.max_anchor_similarity`` over blocks of queries: (values float32, indices int64)."""
    from .ops import max_anchor_similarity

    queries = queries.reshape(-1, queries.shape[-1])
    values = torch.empty(queries.shape[0], dtype=torch.float32)
    indices = torch.empty(queries.shape[0], dtype=torch.int64)
    for begin in range(0, queries.shape[0], block):
        v, i = max_anchor_similarity(queries[begin : begin + block], anchors)
        values[begin : begin + block], indices[begin : begin + block] = v.cpu(), i.cpu()
    return values, indices


def _as_tensor(vectors, name: str) -> torch.Tensor:
    if isinstance(vectors, np.ndarray):
        vectors = torch.from_numpy(vectors)
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(vectors).__name__}")
    if not vectors.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {vectors.dtype}")
    if vectors.device.type == "meta":
        raise ValueError(f"{name} are on the 'meta' device, which holds no values; give them on a device such as "
                         "'cpu' or 'cuda'")
    return vectors.detach().cpu()


def recall_at_1(found_values, found_indices, exact_values, exact_indices, source: str = "given") -> RecallReport:
    """Recall@1 of (found) against (exact) results; ties within TIE_TOLERANCE count as found."""
    found_values, exact_values = found_values.double(), exact_values.double()
    hit = (found_indices == exact_indices) | (found_values >= exact_values - TIE_TOLERANCE)
    shortfall = (exact_values - found_values).clamp_min(0)
    n = int(hit.numel())
    return RecallReport(
        recall=float(hit.double().mean()) if n else 1.0, queries=n,
        mean_shortfall=float(shortfall.mean()) if n else 0.0, max_shortfall=float(shortfall.max()) if n else 0.0,
        source=source,
    )


class AnchorIndex:
    """Max cosine similarity to a set of anchor vectors and the nearest anchor, for batches of queries.

    ``anchors`` is [K, D] (torch or numpy, any float dtype). ``search(queries[..., D])`` returns
    (values float32 [...], indices int64 [...]) like ``ops.max_anchor_similarity``.

    Parameters (``None`` means chosen or tuned at build time):

    - ``kind``: one of ``INDEX_KINDS`` (see the module documentation for ``auto``).
    - ``recall_target``: recall@1 the tuning of ``nprobe`` / ``ef_search`` aims for.
    - ``sample_queries``: [N, D] queries like the real ones, for tuning and measuring recall;
      ``recall_sample`` caps how many are used (default ``default_recall_sample``; 0 skips
      measuring, and tuning then keeps the
      given or default parameters).
    - IVF: ``nlist`` (default 8·sqrt(K), at most K/39 so k-means has 39 points per centroid),
      ``nprobe``, ``spill`` (lists each anchor is put in, 1 or 2: 2 doubles the lists' memory and
      raises recall at a given scan cost; default 2 with the batched engine where lists average
      fewer than ``SPILL_BELOW_LIST_SIZE`` anchors, else 1), ``engine`` (``batched`` or ``faiss``),
      ``kmeans_iterations``.
    - HNSW: ``hnsw_m``, ``ef_construction``, ``ef_search``.
    - ``batch_size``: queries sent to the index at once. ``use_gpu``: GPU FAISS for flat and IVF
      (default: when FAISS sees a GPU). ``seed``: k-means and sampling.
    """

    def __init__(
        self,
        anchors,
        kind: str = "auto",
        *,
        recall_target: float = 0.99,
        sample_queries=None,
        recall_sample: int | None = None,
        nlist: int | None = None,
        nprobe: int | None = None,
        spill: int | None = None,
        engine: str | None = None,
        kmeans_iterations: int = 10,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int | None = None,
        batch_size: int = 32768,
        use_gpu: bool | None = None,
        seed: int = 0,
        progress: bool = False,
    ):
        check_index_options(kind, recall_target=recall_target, spill=spill, engine=engine, nlist=nlist,
                            nprobe=nprobe, ef_search=ef_search, hnsw_m=hnsw_m, ef_construction=ef_construction,
                            batch_size=batch_size, kmeans_iterations=kmeans_iterations, recall_sample=recall_sample,
                            seed=seed)
        # Whole numbers as Python ints: numpy's pass the check but not torch's or FAISS's setters.
        nlist, nprobe, ef_search = (None if value is None else int(value) for value in (nlist, nprobe, ef_search))
        spill = None if spill is None else int(spill)
        if recall_sample is None:
            recall_sample = default_recall_sample(recall_target)
        kmeans_iterations, hnsw_m, ef_construction, recall_sample = (
            int(value) for value in (kmeans_iterations, hnsw_m, ef_construction, recall_sample))
        started = time.perf_counter()
        anchors = _as_tensor(anchors, "anchors")
        if anchors.ndim != 2 or anchors.shape[0] < 1 or anchors.shape[1] < 1:
            raise ValueError(f"anchors must be a non-empty [K, D] matrix, got shape {tuple(anchors.shape)}")
        broken = torch.nonzero(~torch.isfinite(anchors).all(dim=1)).flatten()
        if broken.numel():
            raise ValueError(f"{broken.numel():,} anchor vector(s) hold NaN or infinite values (e.g. row "
                             f"{int(broken[0])}); no similarity to them is defined")
        self.k, self.dimension = int(anchors.shape[0]), int(anchors.shape[1])
        self.requested_kind = kind
        self.recall_target = float(recall_target)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.use_gpu = faiss_gpus() > 0 if use_gpu is None else bool(use_gpu)
        if self.use_gpu and kind in ("flat", "ivf", "hnsw", "auto") and faiss_gpus() == 0:
            raise ValueError("use_gpu=True, but FAISS sees no GPU (faiss-cpu installs no GPU support)")
        self.notes: list[str] = []
        self.report: RecallReport | None = None
        self.params: dict = {}
        self._anchors = anchors
        self._unit = unit_rows(anchors)
        nonzero = torch.linalg.vector_norm(self._unit, dim=1) > 0
        zero = torch.nonzero(~nonzero)
        self._zero_anchor = int(zero[0, 0]) if zero.numel() else -1
        self._searchable, self._row_of = _distinct_directions(self._unit, nonzero)

        if kind == "auto":
            kind = auto_kind(self.k, self.use_gpu)
            why = f"for {self.k:,} anchor vectors (IVF from {IVF_MIN_ANCHORS:,}); give the kind to use them"
            if kind in ("ivf", "hnsw") and self.recall_target >= 1.0:  # only exact search shows recall 1
                kind = "flat" if self.use_gpu else "exact"
                why = "as recall_target 1 needs an exact search"
            given = {"nlist": nlist, "nprobe": nprobe, "engine": engine, "spill": spill, "ef_search": ef_search}
            unused = [name for name, value in given.items() if value is not None and _OPTION_KIND[name] != kind]
            if unused:
                self.notes.append(f"{', '.join(unused)} left unused: 'auto' chose {kind} search {why}")
        if self._searchable.shape[0] == 0:
            kind = "exact"
            self.notes.append("every anchor is the zero vector: all similarities are 0")
        self.kind = kind

        self._sample, self._sample_source = self._sample_queries(sample_queries, recall_sample)
        self._sample_exact = None
        self._flat = None
        # Building IVF or HNSW over many anchors takes minutes: the bar names the step under way.
        self._stages = tqdm(desc=f"building the {kind} index of {self.k:,} anchor vectors",
                            bar_format="{desc}: {postfix} [{elapsed}]",
                            disable=not progress or kind not in ("ivf", "hnsw"))
        with self._stages:
            if kind == "exact":
                pass
            elif kind == "flat":
                self._build_flat()
            elif kind == "ivf":
                self._build_ivf(nlist, nprobe, spill, engine, kmeans_iterations)
            else:
                self._build_hnsw(hnsw_m, ef_construction, ef_search)
            if self.kind in ("ivf", "hnsw") and self._sample is not None and self.report is None:
                self._stage("measuring recall")
                self.report = self._measure(self._sample, self._sample_source)
            self._stage("done")
        self._stages = None  # closed: later searches show nothing
        self.build_seconds = time.perf_counter() - started
        # Only the index structures (and the anchors, for exact search) are needed from here on.
        self._sample = self._sample_exact = self._flat = self._unit = self._searchable = None
        logger.info("%s", self.describe())

    # -- public --------------------------------------------------------------------------------
    @property
    def recall(self) -> float | None:
        """Recall@1 measured at build time (1.0 for exact search, None when not measured)."""
        if self.exact:
            return 1.0
        return self.report.recall if self.report is not None else None

    @property
    def exact(self) -> bool:
        """Whether results equal exact search (up to float rounding)."""
        return self.kind in ("exact", "flat")

    def describe(self) -> str:
        names = {"exact": "exact search (max_anchor_similarity)", "flat": "FAISS flat (exact)",
                 "ivf": "IVF", "hnsw": "FAISS HNSW"}
        parts = [f"{names[self.kind]} over {self.k:,} anchor vectors"]
        parts += [f"{key}={value}" for key, value in self.params.items()]
        text = ", ".join(parts)
        if self.kind not in ("exact", "flat"):
            text += f"; {self.report}" if self.report is not None else "; recall not measured"
        if self.notes:
            text += "; " + "; ".join(self.notes)
        return text

    def search(self, queries) -> tuple[torch.Tensor, torch.Tensor]:
        """(max cosine similarity float32, nearest anchor int64) for queries [..., D]."""
        queries = _as_tensor(queries, "queries")
        flat = self._query_rows(queries, "queries")
        shape = queries.shape[:-1]
        values = torch.empty(flat.shape[0], dtype=torch.float32)
        indices = torch.empty(flat.shape[0], dtype=torch.int64)
        for begin in range(0, flat.shape[0], self.batch_size):
            block = flat[begin : begin + self.batch_size]
            values[begin : begin + block.shape[0]], indices[begin : begin + block.shape[0]] = self._search_block(block)
        return values.reshape(shape), indices.reshape(shape)

    def measure_recall(self, queries, source: str = "given") -> RecallReport:
        """Recall@1 of this index against exact search on ``queries`` [N, D]. Queries without a
        direction (zero, NaN or infinite) are left out: every search gives them the same answer."""
        return self._measure(_directed(self._query_rows(queries, "queries")), source)

    def _query_rows(self, queries, name: str) -> torch.Tensor:
        """``queries`` [..., D] as an [N, D] matrix; any other last dimension is an error."""
        queries = _as_tensor(queries, name)
        if queries.ndim < 1 or queries.shape[-1] != self.dimension:
            raise ValueError(f"{name} must be [..., {self.dimension}], got shape {tuple(queries.shape)}")
        return queries.reshape(-1, self.dimension)

    # -- search --------------------------------------------------------------------------------
    def _search_block(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "exact":
            return exact_search(block, self._anchors)
        units = unit_rows(block)
        if self.kind == "ivf" and self.params.get("engine") == "batched":
            nprobe = self.params["nprobe"]
            rows = max(1, IVF_SCAN_PAIRS // min(nprobe, self._nlist))  # memory grows with rows x nprobe
            parts = [self._ivf_batched(part, nprobe) for part in units.split(rows)]
            values, ids = torch.cat([part[0] for part in parts]), torch.cat([part[1] for part in parts])
        else:
            values, ids = self._faiss_search(units)
        return self._finish(block, units, values, ids)

    def _faiss_search(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FAISS's nearest anchor of each row; where several (of the first ``TIE_CANDIDATES``)
        are as near as the nearest, the smallest id, as the exact op gives."""
        rows = np.ascontiguousarray(units.numpy())
        distances, labels = self._faiss_search_rows(rows, 2)  # the runner-up shows a tie (FAISS's k=8 costs 17%)
        tied = (distances[:, 1] == distances[:, 0]) & (labels[:, 1] >= 0)
        if bool(tied.any()):
            rows_tied = torch.nonzero(tied).squeeze(1)
            more = self._faiss_search_rows(rows[rows_tied.numpy()], TIE_CANDIDATES)
            labels[rows_tied, 0] = _smallest_tied(*more)
        return distances[:, 0].clone(), labels[:, 0].clone()

    def _faiss_search_rows(self, rows: np.ndarray, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        distances, labels = self._faiss_index.search(rows, min(count, int(self._faiss_index.ntotal)))
        if distances.shape[1] < 2:  # one vector indexed: no runner-up
            distances = np.concatenate([distances, np.full_like(distances, -np.inf)], axis=1)
            labels = np.concatenate([labels, np.full_like(labels, -1)], axis=1)
        return torch.from_numpy(distances), torch.from_numpy(labels)

    def _finish(self, block, units, values, ids) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ids back to anchor rows and apply the exact op's conventions to the edge cases."""
        values = values.clamp(-1.0, 1.0)  # inner products of rounded unit rows pass 1 by an ulp
        missing = ids < 0  # an approximate index found nothing for these rows
        if self._row_of is not None:
            ids = self._row_of[ids.clamp_min(0)]
            if self._zero_anchor >= 0:  # a zero anchor has similarity 0 to every query
                below = (values < 0) | ((values == 0) & (ids > self._zero_anchor))
                values = torch.where(below, torch.zeros_like(values), values)
                ids = torch.where(below, torch.full_like(ids, self._zero_anchor), ids)
        if bool(missing.any()):
            rows = torch.nonzero(missing).squeeze(1)
            values[rows], ids[rows] = exact_search(block[rows], self._anchors)
        zero_query = torch.linalg.vector_norm(units, dim=1) == 0
        if bool(zero_query.any()):
            values = torch.where(zero_query, torch.zeros_like(values), values)
            ids = torch.where(zero_query, torch.zeros_like(ids), ids)
        bad = ~torch.isfinite(block).all(dim=1)
        if bool(bad.any()):  # the exact op's convention: (NaN, 0)
            values = torch.where(bad, torch.full_like(values, float("nan")), values)
            ids = torch.where(bad, torch.zeros_like(ids), ids)
        return values, ids

    def _ivf_batched(self, units: torch.Tensor, nprobe: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Probe the lists of the ``nprobe`` nearest centroids (``ops.top_dots``) and scan them
        with ``ops.ivf_max_dot``: list by list, each list's vectors multiplied with all the
        queries that probe it at once. (value, anchor id) per query; (-inf, -1) where the probed
        lists are empty."""
        from .ops import ivf_max_dot, top_dots

        probes = top_dots(units, self._centroids, min(nprobe, self._nlist))
        values, positions = ivf_max_dot(units, probes, self._list_vectors, self._offsets, self._list_ids)
        found = positions >= 0
        ids = torch.where(found, self._list_ids[positions.clamp_min(0)], torch.full_like(positions, -1))
        return values, ids

    # -- building ------------------------------------------------------------------------------
    def _sample_queries(self, sample_queries, limit: int):
        """(sample, its source): at most ``limit`` of the given queries that have a direction, topped
        up with perturbed anchors to the ``smallest_tuning_sample`` the target needs; all perturbed
        anchors without given queries."""
        if limit <= 0:
            return None, ""
        generator = torch.Generator().manual_seed(self.seed)
        needed = min(limit, smallest_tuning_sample(self.recall_target))
        if sample_queries is not None:
            given = self._query_rows(sample_queries, "sample_queries")
            sample = _directed(given)
            if sample.shape[0] < given.shape[0]:
                self.notes.append(f"{given.shape[0] - sample.shape[0]:,} sample queries without a direction (zero, NaN "
                                  "or infinite) left out of tuning")
            if sample.shape[0] > limit:
                sample = sample[torch.randperm(sample.shape[0], generator=generator)[:limit]]
            if sample.shape[0] >= needed:
                return sample, "given"
            if sample.shape[0]:
                self.notes.append(f"only {sample.shape[0]:,} sample queries: topped up with perturbed anchors to the "
                                  f"{needed:,} a sample needs to show recall@1 {self.recall_target}")
                return torch.cat([sample, self._perturbed_anchors(needed - sample.shape[0], generator)]), \
                    "given and perturbed anchors"
            missing = "no sample query given" if given.shape[0] == 0 else "no sample query has a direction"
            self.notes.append(f"{missing}: tuned on perturbed anchors instead")
        return self._perturbed_anchors(limit, generator), "perturbed anchors"

    def _perturbed_anchors(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` queries near random anchors (as far from each as from a random direction)."""
        rows = torch.randint(0, self.k, (count,), generator=generator)
        noise = unit_rows(torch.randn(count, self.dimension, generator=generator))
        return unit_rows(self._unit[rows] + noise)

    def _exact(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact nearest anchors, the yardstick of recall: the op, or with ``use_gpu`` and many
        anchors (where ``auto`` would search FAISS flat) FAISS's flat search on the CPU, exact too."""
        if auto_kind(self.k, self.use_gpu) != "flat" or self._searchable is None or self._searchable.shape[0] == 0:
            return exact_search(queries, self._anchors)
        if self._flat is None:
            faiss = _faiss()
            self._flat = faiss.IndexFlatIP(self.dimension)
            self._flat.add(np.ascontiguousarray(self._searchable.numpy()))
        units = unit_rows(queries.reshape(-1, self.dimension))
        values = torch.empty(units.shape[0], dtype=torch.float32)
        ids = torch.empty(units.shape[0], dtype=torch.int64)
        for begin in range(0, units.shape[0], self.batch_size):
            block = units[begin : begin + self.batch_size]
            distances, labels = self._flat.search(np.ascontiguousarray(block.numpy()), 1)
            values[begin : begin + block.shape[0]] = torch.from_numpy(distances[:, 0].copy())
            ids[begin : begin + block.shape[0]] = torch.from_numpy(labels[:, 0].copy())
        return self._finish(queries.reshape(-1, self.dimension), units, values, ids)

    def _measure(self, queries: torch.Tensor, source: str) -> RecallReport:
        started = time.perf_counter()
        if queries is self._sample:
            if self._sample_exact is None:
                self._sample_exact = self._exact(self._sample)
            exact_values, exact_ids = self._sample_exact
        else:
            exact_values, exact_ids = self._exact(queries)
        logger.debug("exact search of %d sample queries: %.1f s", queries.shape[0], time.perf_counter() - started)
        values, ids = self.search(queries)
        return recall_at_1(values, ids, exact_values, exact_ids, source)

    def _tune(self, parameter: str, start: int, limit: int, apply, least: int = 1) -> int:
        """The smallest ``parameter`` (to within 1/8) whose sample recall, less two standard
        errors, reaches the target, so that the recall on other queries reaches it too, most of
        the time. Samples of 1,000 real queries differ by about 0.003 in recall at one setting,
        and taking the smallest value that passes favours a lucky sample: with one standard
        error, other queries often fell short (0.983 on 1,024 at K = 10^6 for a target of 0.99).

        Doubles from ``start`` until the target or ``limit`` is reached (or halves, down to
        ``least``, while ``start`` already reaches it), then bisects between the largest value that
        missed and the smallest that reached it (search cost grows linearly with it).
        """
        value, failed = max(least, min(start, limit)), 0
        while True:
            report = self._try(parameter, value, apply)
            if self._reaches(report) or value >= limit:
                break
            failed, value = value, min(2 * value, limit)
        best, best_report = value, report
        if not self._reaches(report):  # the limit itself fell short: nothing below it can do better
            self.notes.append(f"{parameter}={value} (the most) did not show recall@1 >= {self.recall_target} "
                              f"on the {report.queries:,}-query sample")
            self.report = report
            return value
        while not failed and best > least and self._reaches(best_report):
            lower = max(least, best // 2)
            report = self._try(parameter, lower, apply)
            if not self._reaches(report):
                failed = lower
            else:
                best, best_report = lower, report
        while failed and best - failed > max(1, best // 8):
            middle = (failed + best) // 2
            report = self._try(parameter, middle, apply)
            if self._reaches(report):
                best, best_report = middle, report
            else:
                failed = middle
        apply(best)
        self.report = best_report
        return best

    def _stage(self, step: str) -> None:
        if self._stages is not None:
            self._stages.set_postfix_str(step, refresh=True)

    def _reaches(self, report: RecallReport) -> bool:
        """Whether the sample recall, less TUNING_MARGIN standard errors, reaches the target. A
        sample with no miss has no spread to subtract: it must then be large enough that one more
        miss would still reach the target (n / (n + 1) >= target), or 30 lucky queries would pass
        at 0.99."""
        n = max(report.queries, 1)
        if report.recall >= 1.0:
            return n / (n + 1) >= self.recall_target
        error = math.sqrt(report.recall * (1 - report.recall) / n)
        return report.recall - TUNING_MARGIN * error >= self.recall_target

    def _try(self, parameter: str, value: int, apply) -> RecallReport:
        self._stage(f"tuning {parameter}: trying {value}")
        apply(value)
        report = self._measure(self._sample, self._sample_source)
        logger.debug("tuning %s=%d: %s", parameter, value, report)
        return report

    def _to_gpu(self, index):
        faiss = _faiss()
        return faiss.index_cpu_to_all_gpus(index)

    def _build_flat(self) -> None:
        faiss = _faiss()
        index = self._flat
        if index is None:
            index = faiss.IndexFlatIP(self.dimension)
            index.add(np.ascontiguousarray(self._searchable.numpy()))
        self._faiss_index = self._to_gpu(index) if self.use_gpu else index
        self.params = {"gpu": True} if self.use_gpu else {}

    def _train_centroids(self, nlist: int, iterations: int) -> torch.Tensor:
        if nlist == 1:  # the one list holds every anchor: nothing to cluster (FAISS would warn of too few points)
            return self._searchable[:1].clone()
        faiss = _faiss()
        n = self._searchable.shape[0]
        points_per_centroid = 40
        generator = torch.Generator().manual_seed(self.seed)
        sample = self._searchable
        if n > points_per_centroid * nlist:
            sample = sample[torch.randperm(n, generator=generator)[: points_per_centroid * nlist]]
        self._stage(f"k-means, {nlist:,} lists from {sample.shape[0]:,} anchors")
        kmeans = faiss.Kmeans(self.dimension, nlist, niter=iterations, spherical=True, seed=self.seed + 1,
                              max_points_per_centroid=points_per_centroid, verbose=False)
        started = time.perf_counter()
        kmeans.train(np.ascontiguousarray(sample.numpy()))
        logger.debug("k-means, %d lists from %d points: %.1f s", nlist, sample.shape[0], time.perf_counter() - started)
        return unit_rows(torch.from_numpy(np.array(kmeans.centroids)))

    def _build_ivf(self, nlist, nprobe, spill, engine, iterations) -> None:
        n = self._searchable.shape[0]
        limit = max(1, n // 39)  # k-means wants about 39 points per list
        if nlist is not None and nlist > limit:
            self.notes.append(f"nlist={nlist} lowered to {limit}: k-means needs about 39 anchors per list")
        nlist = min(nlist or max(1, round(IVF_LISTS_PER_ROOT * math.sqrt(n))), limit)
        if nlist == 1:
            self.notes.append("one list holds every anchor: the IVF index scans them all, as exact search does")
        engine = engine or ("faiss" if self.use_gpu else "batched")
        if spill is None:
            spill = 2 if engine == "batched" and n / nlist < SPILL_BELOW_LIST_SIZE else 1
        spill = min(spill, nlist)  # one list takes each anchor once
        self._nlist = nlist
        self._centroids = self._train_centroids(nlist, iterations)
        self._stage("assigning anchors to lists")
        if engine == "batched":
            started = time.perf_counter()
            faiss = _faiss()
            quantizer = faiss.IndexFlatIP(self.dimension)
            quantizer.add(np.ascontiguousarray(self._centroids.numpy()))
            _, nearest = quantizer.search(np.ascontiguousarray(self._searchable.numpy()), spill)
            assignment = torch.from_numpy(nearest)
            lists = assignment.reshape(-1)
            ids = torch.arange(n).repeat_interleave(assignment.shape[1])
            order = torch.argsort(lists, stable=True)
            self._list_ids = ids[order].contiguous()
            self._list_vectors = self._searchable[self._list_ids].contiguous()
            self._offsets = torch.cat([torch.zeros(1, dtype=torch.int64),
                                       torch.cumsum(torch.bincount(lists, minlength=nlist), 0)])
            logger.debug("assigning %d anchors to lists: %.1f s", n, time.perf_counter() - started)
            apply = lambda value: self.params.__setitem__("nprobe", value)  # noqa: E731
        else:
            if spill != 1:
                raise ValueError("spill > 1 needs engine='batched'")
            faiss = _faiss()
            quantizer = faiss.IndexFlatIP(self.dimension)
            quantizer.add(np.ascontiguousarray(self._centroids.numpy()))
            index = faiss.IndexIVFFlat(quantizer, self.dimension, nlist, faiss.METRIC_INNER_PRODUCT)
            index.is_trained = True
            index.add(np.ascontiguousarray(self._searchable.numpy()))
            self._quantizer = quantizer
            self._faiss_index = self._to_gpu(index) if self.use_gpu else index

            def apply(value):
                self.params["nprobe"] = value
                if self.use_gpu:
                    faiss.GpuParameterSpace().set_index_parameter(self._faiss_index, "nprobe", value)
                else:
                    self._faiss_index.nprobe = value

        if nprobe is not None and nprobe > nlist:
            self.notes.append(f"nprobe={nprobe} lowered to nlist={nlist}: there are no more lists to scan")
            nprobe = nlist
        self.params = {"nlist": nlist, "nprobe": nprobe, "spill": spill, "engine": engine}
        if nprobe is not None or self._sample is None:
            apply(nprobe or min(nlist, max(1, nlist // 16)))
            return
        chosen = self._tune("nprobe", 8, nlist, apply)
        scanned = chosen * spill / nlist
        if self.requested_kind == "auto" and scanned > MAX_SCAN_FRACTION:
            fallback = "flat" if self.use_gpu else "exact"
            instead = "exact flat search on the GPU" if fallback == "flat" else "the exact op"
            self.notes.append(f"IVF needed nprobe={chosen} of {nlist} lists ({scanned:.0%} of the anchors) for "
                              f"recall@1 {self.report.recall:.3f}; using {instead} instead")
            self.kind, self.report, self.params = fallback, None, {}
            # The lists hold a copy of every anchor (spill copies): nothing searches them now.
            for name in ("_centroids", "_list_ids", "_list_vectors", "_offsets", "_quantizer", "_faiss_index"):
                self.__dict__.pop(name, None)
            if fallback == "flat":
                self._build_flat()

    def _build_hnsw(self, m: int, ef_construction: int, ef_search: int | None) -> None:
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(self.dimension, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        self._stage(f"adding {self._searchable.shape[0]:,} anchors to the graph")
        index.add(np.ascontiguousarray(self._searchable.numpy()))
        self._faiss_index = index
        self.params = {"M": m, "ef_construction": ef_construction, "ef_search": ef_search}

        def apply(value):
            self.params["ef_search"] = value
            index.hnsw.efSearch = value

        if ef_search is not None or self._sample is None:
            apply(ef_search or 64)
            return
        self._tune("ef_search", 16, max(16, self._searchable.shape[0]), apply, least=2)  # FAISS searches >= 2
