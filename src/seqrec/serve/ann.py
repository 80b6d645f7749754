"""Approximate top-K over the item table with FAISS (``pip install 'seqrec[ann]'``).

A score is ``q @ v + b`` (see :mod:`seqrec.scoring`). The bias is folded in as one more dimension
(query ``[q, 1]``, item ``[v, b]``) and the index searches by inner product directly. (The classic
reduction to L2 search, a last dimension ``sqrt(M^2 - |[v, b]|^2)``, was measured to lose items whose bias
stands far above the rest: they become isolated points of the graph.) IVF-PQ takes that reduction, though:
its lists (k-means) and codes (product quantisation) are built for L2, and by inner product the lists gather
around the few centroids of largest norm (measured on a 1M-item catalog: recall@10 0.69 at nprobe 125, see
benchmarks/results/ann-synthetic-1m-ivfpq.json). Padding (row 0) is never indexed.

Three kinds. ``pq``: a flat scan of 4-bit product-quantisation codes (FAISS fast-scan; one or two dimensions
per sub-quantiser, so a 1M x 64 table takes 34 bytes an item), by inner product, proposing ``refine_factor``
candidates per wanted item; builds in seconds and its cost grows with the catalog, so it is the choice up to
IVFPQ_FROM items. ``hnsw``: a graph (minutes to build at 1M items; what ``--index approx`` picks for small
catalogs). ``ivfpq``: inverted lists, so a search scans a fraction of the catalog (from IVFPQ_FROM items).

The index only proposes candidates: their scores are recomputed exactly from the item table, so a
returned score is the exact score of that item. Excluded items (seen, banned) are removed after the
search; the search over-fetches by their number, and when the approximate search still leaves fewer
than ``k`` a row is rescored exactly, so it never returns fewer than ``k`` items the catalog can give.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from seqrec.errors import SeqrecError

INDEX_MODES = ("exact", "approx", "auto")
AUTO_EXACT_BELOW = 100_000  # items: below this, exact scoring is as fast as a graph search on a CPU
IVFPQ_MIN_ITEMS = 1_000  # fewer cannot train the IVF lists and the 256-code quantisers; HNSW or exact does
IVFPQ_FROM = 5_000_000  # items: from here a flat scan of every code gets slower than probing IVF lists
# HNSW defaults (what --index approx and auto build; benchmarks/ann.py measured them, docs/serving.md has the
# numbers): below AUTO_EXACT_BELOW (reached only with --index approx) the graph is cheap to build, so it gets
# more links and a wider search, which a trained 256-wide table needs for recall@10 >= 0.99; from there the
# build time of the graph sets the links.
class HnswParams(TypedDict):
    hnsw_m: int  # links per node (M)
    ef_construction: int
    ef_search: int  # the search's candidate list for k = 10 and nothing excluded


HNSW_SMALL = HnswParams(hnsw_m=64, ef_construction=400, ef_search=1024)
HNSW_LARGE = HnswParams(hnsw_m=32, ef_construction=200, ef_search=128)
REFINE_FACTOR = 8
PQ_REFINE_FACTOR = 128  # pq: candidates per wanted item, re-ranked exactly (recall@10 >= 0.99 at 1M items)
PQ_WIDE_FROM = 128  # folded widths from here get two dimensions per sub-quantiser (one below)


log = logging.getLogger(__name__)


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise SeqrecError("--index approx needs FAISS: pip install 'seqrec[ann]' (faiss-cpu)") from None
    return faiss


ANN_KINDS = ("hnsw", "pq", "ivfpq")


def choose_kind(n_items: int, mode: str) -> str:
    """``exact``, ``hnsw``, ``pq`` or ``ivfpq`` for a catalog of ``n_items`` under ``--index mode``."""
    if mode not in INDEX_MODES:
        raise SeqrecError(f"--index {mode!r}: choose one of {', '.join(INDEX_MODES)}")
    if mode == "exact" or (mode == "auto" and n_items < AUTO_EXACT_BELOW):
        return "exact"
    if n_items >= IVFPQ_FROM:
        return "ivfpq"
    return "pq" if n_items >= AUTO_EXACT_BELOW else "hnsw"


def default_n_list(n_items: int) -> int:
    """IVF lists: about 4 sqrt(N), at least 16."""
    return max(16, int(4 * math.sqrt(n_items)))


def default_params(n_items: int, kind: str) -> dict[str, int]:
    """The build and search settings ``--index approx|auto`` uses for a catalog of ``n_items``."""
    if kind == "hnsw":
        chosen = HNSW_SMALL if n_items < AUTO_EXACT_BELOW else HNSW_LARGE
        return {"hnsw_m": chosen["hnsw_m"], "ef_construction": chosen["ef_construction"],
                "ef_search": chosen["ef_search"]}
    if kind == "ivfpq":
        n_list = default_n_list(n_items)
        return {"n_list": n_list, "nprobe": max(8, n_list // 32), "refine_factor": REFINE_FACTOR}
    if kind == "pq":
        return {"refine_factor": PQ_REFINE_FACTOR}
    raise SeqrecError(f"unknown ANN index kind {kind!r}: {', '.join(ANN_KINDS)}")


def cache_dir() -> Path | None:
    """Where built indexes are kept: ``$SEQREC_ANN_CACHE`` (``off``: nowhere), else ``$XDG_CACHE_HOME/seqrec/ann``
    (``~/.cache/seqrec/ann``)."""
    chosen = os.environ.get("SEQREC_ANN_CACHE")
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "no") else Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seqrec" / "ann"


def _digest(points: np.ndarray, build: dict[str, Any]) -> str:
    """What a cached index was built from: the indexed vectors, the build settings and the FAISS version."""
    h = hashlib.sha256(json.dumps(build | {"faiss": import_faiss().__version__}, sort_keys=True).encode())
    h.update(str(points.shape).encode())
    h.update(points.reshape(-1).view(np.uint8).data)
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class AnnResult:
    items: list[np.ndarray]  # per row: (<= k,) internal ids, best first
    scores: list[np.ndarray]  # per row: (<= k,) float32 exact scores


class ApproxIndex:
    """FAISS index over rows 1..N of an (N + 1, D) item table [and (N + 1,) bias]."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, kind: str = "hnsw", *,
                 hnsw_m: int | None = None, ef_construction: int | None = None, ef_search: int | None = None,
                 n_list: int | None = None, nprobe: int | None = None, refine_factor: int | None = None,
                 seed: int = 0, cache_dir: Path | None = None) -> None:
        """Settings left out take :func:`default_params` for this catalog size. With ``cache_dir`` the built
        index is kept there under a digest of the table and the build settings, and read back next time."""
        faiss = import_faiss()
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.n_items = int(self.weight.shape[0]) - 1
        if self.n_items < 1:
            raise SeqrecError("the item table is empty: nothing to index")
        if kind not in ANN_KINDS:
            raise SeqrecError(f"unknown ANN index kind {kind!r}: {', '.join(ANN_KINDS)}")
        if kind == "ivfpq" and self.n_items < IVFPQ_MIN_ITEMS:  # its quantisers need that many training points
            raise SeqrecError(f"an IVF-PQ index needs at least {IVFPQ_MIN_ITEMS:,} items and this catalog has "
                              f"{self.n_items:,}; use --index hnsw or exact")
        self.kind = kind
        hnsw = default_params(self.n_items, "hnsw")
        self.ef_search = ef_search or hnsw["ef_search"]
        self.n_list = (n_list or default_n_list(self.n_items)) if kind == "ivfpq" else 0  # IVF lists
        self.refine_factor = refine_factor or (PQ_REFINE_FACTOR if kind == "pq" else REFINE_FACTOR)
        self.fallbacks = 0  # rows rescored exactly because the search left fewer than k after exclusions
        points = self._folded(self.weight[1:], self.bias[1:] if self.bias is not None else None)
        pq_width = 2 if points.shape[1] >= PQ_WIDE_FROM else 1  # dimensions per PQ sub-quantiser
        if kind == "ivfpq":
            points = _l2_reduced(points)
        elif kind == "pq":  # zero columns up to a whole number of sub-quantisers, an even number of them
            points = np.hstack([points, np.zeros((len(points), -points.shape[1] % (2 * pq_width)), np.float32)])
        points = np.ascontiguousarray(points)
        self.extra = int(points.shape[1]) - int(self.weight.shape[1]) - 1  # query columns after [q, 1]: zeros
        self.dim = int(points.shape[1])
        build = {"kind": kind, "hnsw_m": hnsw_m or hnsw["hnsw_m"],
                 "ef_construction": ef_construction or hnsw["ef_construction"], "n_list": self.n_list, "seed": seed}
        if kind == "pq":
            build["pq_width"] = pq_width
        self.cache_path = None if cache_dir is None else cache_dir / f"{_digest(points, build)}.faiss"
        self.from_cache = False
        index = self._read_cached()
        if index is None:
            index = self._build(faiss, points, build)
            self._write_cached(index)
        self._index = index
        if kind == "ivfpq":
            index.k_factor = self.refine_factor
            self._ivf = faiss.extract_index_ivf(index)
            self._ivf.nprobe = nprobe or max(8, self.n_list // 32)

    def _build(self, faiss: Any, points: np.ndarray, build: dict[str, Any]) -> Any:
        ip = faiss.METRIC_INNER_PRODUCT
        rng = np.random.default_rng(build["seed"])
        if build["kind"] == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, build["hnsw_m"], ip)
            index.hnsw.efConstruction = build["ef_construction"]
        elif build["kind"] == "pq":  # codes only: the candidates are re-ranked from the item table itself
            index = faiss.IndexPQFastScan(self.dim, self.dim // build["pq_width"], 4, ip)
            index.train(points[rng.choice(len(points), size=min(len(points), 200_000), replace=False)])
        else:
            m = max(d for d in range(1, 33) if self.dim % d == 0)  # PQ sub-quantisers must divide the width
            ivf = faiss.IndexIVFPQ(faiss.IndexFlatL2(self.dim), self.dim, self.n_list, m, 8)  # L2: see _l2_reduced
            index = faiss.IndexRefineFlat(ivf)  # PQ proposes, the exact vectors rerank
            index.train(points[rng.choice(len(points), size=min(len(points), 64 * self.n_list), replace=False)])
        index.add(points)
        return index

    def _read_cached(self) -> Any:
        """The cached index, or None when there is none (or it cannot be read: it is then rebuilt)."""
        if self.cache_path is None or not self.cache_path.is_file():
            return None
        faiss = import_faiss()
        try:
            index = faiss.read_index(str(self.cache_path))
        except RuntimeError as exc:
            log.warning("ANN cache %s unreadable (%s); building the index again", self.cache_path, exc)
            return None
        if index.ntotal != self.n_items or index.d != self.dim:
            return None
        self.from_cache = True
        return index

    def _write_cached(self, index: Any) -> None:
        if self.cache_path is None:
            return
        faiss = import_faiss()
        tmp = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.tmp")
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            faiss.write_index(index, str(tmp))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.cache_path)  # whole or not at all
        except (OSError, RuntimeError) as exc:
            tmp.unlink(missing_ok=True)
            log.warning("ANN cache %s not written (%s)", self.cache_path, exc)

    @property
    def faiss_index(self) -> Any:
        """The FAISS index itself (for measuring it; searches go through :meth:`search`)."""
        return self._index

    def set_search(self, ef_search: int | None = None, nprobe: int | None = None,
                   refine_factor: int | None = None) -> None:
        """Change a search-time setting: HNSW ``ef_search`` (a floor; see :meth:`search`), IVF ``nprobe``, or the
        candidates per wanted item that PQ proposes for exact re-ranking (``refine_factor``; pq and ivfpq)."""
        if ef_search is not None:
            self.ef_search = ef_search
        if refine_factor is not None:
            if self.kind == "hnsw":
                raise SeqrecError("refine_factor applies to a pq or ivfpq index only")
            self.refine_factor = refine_factor
            if self.kind == "ivfpq":
                self._index.k_factor = refine_factor
        if nprobe is not None:
            if self.kind != "ivfpq":
                raise SeqrecError("nprobe applies to an IVF-PQ index only")
            self._ivf.nprobe = nprobe

    @staticmethod
    def _folded(vectors: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        ones = np.ones((len(vectors), 1), np.float32) if bias is None else bias[:, None]
        return np.hstack([vectors, ones]).astype(np.float32, copy=False)

    def _queries(self, query: np.ndarray) -> np.ndarray:
        q = np.asarray(query, dtype=np.float32)
        # [q, 1] . [v, b] = q.v + b (without a bias the items' last entry is 1: q.v + 1 ranks as q.v does); IVF-PQ's
        # and PQ's items carry more entries (see _l2_reduced, and the padding), which the query's zeros leave out
        return np.ascontiguousarray(np.hstack([q, np.ones((len(q), 1), np.float32),
                                               np.zeros((len(q), self.extra), np.float32)]))

    def exact_scores(self, query: np.ndarray, items: np.ndarray | slice) -> np.ndarray:
        s = self.weight[items] @ query
        return s + self.bias[items] if self.bias is not None else s

    def search(self, query: np.ndarray, k: int, excluded: list[np.ndarray]) -> AnnResult:
        """Top-``k`` per query row, never an item of that row's ``excluded`` (internal ids)."""
        excluded = [np.asarray(e).astype(np.int64, copy=False) for e in excluded]
        # A row whose exclusions would make the index propose an eighth of the catalog or more is scored exactly
        # (cheaper than a search for that many; e.g. a user who has seen most items)
        exact = [self._asked(k + len(e)) * 8 >= self.n_items for e in excluded]
        searched = [row for row in range(len(query)) if not exact[row]]
        found = np.zeros((len(query), 0), np.int64)
        distinct = {row: len(np.unique(excluded[row][excluded[row] > 0])) for row in searched}  # not for exact rows
        if searched:
            fetch = min(self.n_items, k + max(distinct.values()))
            self._set_search_params(fetch - k)
            found = np.full((len(query), self._asked(fetch)), -1, np.int64)
            found[searched] = self._index.search(self._queries(query[searched]), self._asked(fetch))[1]
        out_items: list[np.ndarray] = []
        out_scores: list[np.ndarray] = []
        for row in range(len(query)):
            ex = excluded[row]
            cand = found[row]
            cand = cand[cand >= 0] + 1  # faiss ids are rows 1..N shifted down by one
            if len(ex):
                cand = cand[~np.isin(cand, ex)]
            if exact[row] or len(cand) < min(k, self.n_items - distinct[row]):
                self.fallbacks += 1  # too many asked, or too few left after exclusions: scored exactly
                items, scores = self._exact_top(query[row], k, ex)
            else:
                scores = self.exact_scores(query[row], cand).astype(np.float32)
                order = np.argsort(-scores, kind="stable")[:k]
                items, scores = cand[order].astype(np.int64), scores[order]
            out_items.append(items)
            out_scores.append(scores)
        return AnnResult(out_items, out_scores)

    def _asked(self, fetch: int) -> int:
        """Candidates the index is asked for to return ``fetch`` places. PQ proposes ``refine_factor`` per place:
        the excluded items (a user's history) sit near the query and take places among the best-coded
        candidates, so they need the same margin as the wanted ones."""
        return min(self.n_items, fetch * self.refine_factor) if self.kind == "pq" else fetch

    def _exact_top(self, query: np.ndarray, k: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The exact top-``k`` over the whole catalog for one query row, ``excluded`` left out (no sort of the
        exclusions: a mask, so a history of a million items costs one pass)."""
        scores = self.exact_scores(np.asarray(query, np.float32), slice(1, None)).astype(np.float32)
        out = np.zeros(self.n_items, dtype=bool)
        out[excluded[(excluded > 0) & (excluded <= self.n_items)] - 1] = True
        scores[out] = -np.inf
        take = min(k, self.n_items - int(out.sum()))
        if take <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        top = np.argpartition(-scores, take - 1)[:take] if take < self.n_items else np.arange(self.n_items)
        top = top[np.argsort(-scores[top], kind="stable")]
        return (top + 1).astype(np.int64), scores[top]

    def _set_search_params(self, extra: int) -> None:
        if self.kind == "hnsw":  # the candidate list grows by one place per excluded item
            self._index.hnsw.efSearch = self.ef_search + extra


def _l2_reduced(points: np.ndarray) -> np.ndarray:
    """(N, D + 1): each point with a last entry ``sqrt(M^2 - |x|^2)`` (M the largest norm), so that every point
    has norm M and, for a query ``[y, 0]``, ``|[y, 0] - x'|^2 = |y|^2 + M^2 - 2 y.x``: the nearest points by L2
    are the points of largest inner product."""
    norms = np.einsum("ij,ij->i", points, points, dtype=np.float64)
    extra = np.sqrt(np.maximum(norms.max() - norms, 0.0)).astype(np.float32)
    return np.hstack([points, extra[:, None]]).astype(np.float32, copy=False)


def build_index(weight: np.ndarray, bias: np.ndarray | None, mode: str) -> ApproxIndex | None:
    """The approximate index ``--index mode`` asks for over this table, or None for exact scoring. ``mode`` may
    also name the kind (``hnsw``, ``ivfpq``: a model that extends a served one keeps its kind). Indexes of
    catalogs from AUTO_EXACT_BELOW items, whose builds take minutes, are cached (see :func:`cache_dir`)."""
    n_items = int(weight.shape[0]) - 1
    kind = mode if mode in ANN_KINDS else choose_kind(n_items, mode)
    if kind == "exact":
        return None
    cache = cache_dir() if n_items >= AUTO_EXACT_BELOW else None
    return ApproxIndex(weight, bias, kind, **default_params(n_items, kind), cache_dir=cache)
