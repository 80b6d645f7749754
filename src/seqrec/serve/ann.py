"""Approximate top-K over the item table with FAISS (``pip install 'seqrec[ann]'``).

A score is ``q @ v + b`` (see :mod:`seqrec.scoring`). The bias is folded in as one more dimension
(query ``[q, 1]``, item ``[v, b]``) and the index searches by inner product directly. (The classic
reduction to L2 search, a last dimension ``sqrt(M^2 - |[v, b]|^2)``, was measured to lose items whose bias
stands far above the rest: they become isolated points of the graph.) Padding (row 0) is never indexed.

The index only proposes candidates: their scores are recomputed exactly from the item table, so a
returned score is the exact score of that item. Excluded items (seen, banned) are removed after the
search; the search over-fetches by their number, and when the approximate search still leaves fewer
than ``k`` a row is rescored exactly, so it never returns fewer than ``k`` items the catalog can give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqrec.errors import SeqrecError

INDEX_MODES = ("exact", "approx", "auto")
AUTO_EXACT_BELOW = 100_000  # items: below this, exact scoring is as fast as a graph search on a CPU
IVFPQ_FROM = 5_000_000  # items: from here the HNSW graph (~ N * (4 * 2 * M + 4 * D) bytes) gets too large
# HNSW defaults (what --index approx and auto build; benchmarks/ann.py measured them, docs/serving.md has the
# numbers): below AUTO_EXACT_BELOW (reached only with --index approx) the graph is cheap to build, so it gets
# more links and a wider search, which a trained 256-wide table needs for recall@10 >= 0.99; from there the
# build time of the graph sets the links.
HNSW_SMALL = {"hnsw_m": 64, "ef_construction": 400, "ef_search": 1024}
HNSW_LARGE = {"hnsw_m": 32, "ef_construction": 200, "ef_search": 128}
REFINE_FACTOR = 8


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise SeqrecError("--index approx needs FAISS: pip install 'seqrec[ann]' (faiss-cpu)") from None
    return faiss


def choose_kind(n_items: int, mode: str) -> str:
    """``exact``, ``hnsw`` or ``ivfpq`` for a catalog of ``n_items`` under ``--index mode``."""
    if mode not in INDEX_MODES:
        raise SeqrecError(f"--index {mode!r}: choose one of {', '.join(INDEX_MODES)}")
    if mode == "exact" or (mode == "auto" and n_items < AUTO_EXACT_BELOW):
        return "exact"
    return "ivfpq" if n_items >= IVFPQ_FROM else "hnsw"


def default_n_list(n_items: int) -> int:
    """IVF lists: about 4 sqrt(N), at least 16."""
    return max(16, int(4 * math.sqrt(n_items)))


def default_params(n_items: int, kind: str) -> dict[str, int]:
    """The build and search settings ``--index approx|auto`` uses for a catalog of ``n_items``."""
    if kind == "hnsw":
        return dict(HNSW_SMALL if n_items < AUTO_EXACT_BELOW else HNSW_LARGE)
    if kind == "ivfpq":
        n_list = default_n_list(n_items)
        return {"n_list": n_list, "nprobe": max(8, n_list // 32), "refine_factor": REFINE_FACTOR}
    raise SeqrecError(f"unknown ANN index kind {kind!r}: hnsw or ivfpq")


@dataclass(frozen=True)
class AnnResult:
    items: list[np.ndarray]  # per row: (<= k,) internal ids, best first
    scores: list[np.ndarray]  # per row: (<= k,) float32 exact scores


class ApproxIndex:
    """FAISS index over rows 1..N of an (N + 1, D) item table [and (N + 1,) bias]."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, kind: str = "hnsw", *,
                 hnsw_m: int | None = None, ef_construction: int | None = None, ef_search: int | None = None,
                 n_list: int | None = None, nprobe: int | None = None, refine_factor: int = REFINE_FACTOR,
                 seed: int = 0) -> None:
        """Settings left out take :func:`default_params` for this catalog size."""
        faiss = import_faiss()
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.n_items = int(self.weight.shape[0]) - 1
        if self.n_items < 1:
            raise SeqrecError("the item table is empty: nothing to index")
        self.kind = kind
        hnsw = default_params(self.n_items, "hnsw")
        self.ef_search = ef_search or hnsw["ef_search"]
        self.n_list = 0  # IVF lists (an IVF-PQ index only)
        self.fallbacks = 0  # rows rescored exactly because the search left fewer than k after exclusions
        items = self._folded(self.weight[1:], self.bias[1:] if self.bias is not None else None)
        points = np.ascontiguousarray(items)
        dim = int(points.shape[1])
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m or hnsw["hnsw_m"], ip)
            index.hnsw.efConstruction = ef_construction or hnsw["ef_construction"]
        elif kind == "ivfpq":
            n_list = self.n_list = n_list or default_n_list(self.n_items)
            m = max(d for d in range(1, 33) if dim % d == 0)  # PQ sub-quantisers must divide the width
            quantizer = faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFPQ(quantizer, dim, n_list, m, 8, ip)
            index = faiss.IndexRefineFlat(ivf)  # PQ proposes, the exact vectors rerank
            rng = np.random.default_rng(seed)
            sample = points[rng.choice(len(points), size=min(len(points), 64 * n_list), replace=False)]
            index.train(sample)
            index.k_factor = refine_factor
            self._ivf = faiss.extract_index_ivf(index)
            self._ivf.nprobe = nprobe or max(8, n_list // 32)
        else:
            raise SeqrecError(f"unknown ANN index kind {kind!r}: hnsw or ivfpq")
        index.add(points)
        self._index = index
        self.dim = dim

    @property
    def faiss_index(self) -> Any:
        """The FAISS index itself (for measuring it; searches go through :meth:`search`)."""
        return self._index

    def set_search(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change the search-time setting: HNSW ``ef_search`` (a floor; see :meth:`search`), IVF ``nprobe``."""
        if ef_search is not None:
            self.ef_search = ef_search
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
        # [q, 1] . [v, b] = q.v + b (without a bias the items' last entry is 1: q.v + 1 ranks as q.v does)
        return np.ascontiguousarray(np.hstack([q, np.ones((len(q), 1), np.float32)]))

    def exact_scores(self, query: np.ndarray, items: np.ndarray) -> np.ndarray:
        s = self.weight[items] @ query
        return s + self.bias[items] if self.bias is not None else s

    def search(self, query: np.ndarray, k: int, excluded: list[np.ndarray]) -> AnnResult:
        """Top-``k`` per query row, never an item of that row's ``excluded`` (internal ids)."""
        n_rows = len(query)
        fetch = min(self.n_items, k + max((len(np.unique(e)) for e in excluded), default=0))
        self._set_search_params(fetch - k)
        _, found = self._index.search(self._queries(query), fetch)
        out_items: list[np.ndarray] = []
        out_scores: list[np.ndarray] = []
        for row in range(n_rows):
            cand = found[row]
            cand = cand[cand >= 0] + 1  # faiss ids are rows 1..N shifted down by one
            if len(excluded[row]):
                cand = cand[~np.isin(cand, excluded[row])]
            want = min(k, self.n_items - len(np.unique(excluded[row][excluded[row] > 0])))
            if len(cand) < want:  # the graph gave too few after exclusions: this row is scored exactly
                self.fallbacks += 1
                cand = np.arange(1, self.n_items + 1)
                if len(excluded[row]):
                    cand = cand[~np.isin(cand, excluded[row])]
            scores = self.exact_scores(query[row], cand).astype(np.float32)
            order = np.argsort(-scores, kind="stable")[:k]
            out_items.append(cand[order].astype(np.int64))
            out_scores.append(scores[order])
        return AnnResult(out_items, out_scores)

    def _set_search_params(self, extra: int) -> None:
        if self.kind == "hnsw":  # the candidate list grows by one place per excluded item
            self._index.hnsw.efSearch = self.ef_search + extra


def build_index(weight: np.ndarray, bias: np.ndarray | None, mode: str) -> ApproxIndex | None:
    """The approximate index ``--index mode`` asks for over this table, or None for exact scoring."""
    n_items = int(weight.shape[0]) - 1
    kind = choose_kind(n_items, mode)
    return None if kind == "exact" else ApproxIndex(weight, bias, kind, **default_params(n_items, kind))
