"""The one place that multiplies queries by item vectors.

Every loss, the tiled cross-entropy, full-ranking evaluation, ``recommend`` and serving score
through these functions. The similarity is a separate, pluggable piece applied before the product:
:class:`DotSimilarity` leaves both sides as they are; :class:`CosineSimilarity` L2-normalises the
query and the item rows and divides the query by a temperature, so the product is
``cos(q, v) / temperature``. Either way a score is ``query @ weight.T + bias``, column 0 (padding)
at -inf.

Sampled scores gather only the rows they use (:func:`gather_rows`): from a
:class:`~seqrec.items.tower.SparseItemTable` with a sparse gradient, so a step over a catalog of
millions of items never builds an (N + 1, D) gradient. A table stored in bfloat16 is scored in the
query's dtype, a tile or a gathered block at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from seqrec.items.tower import ItemTable, SparseItemTable
from seqrec.settings import check_choice

SIMILARITIES = ("dot", "cosine")


class Similarity(Protocol):
    def query(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def items(self, table: ItemTable) -> ItemTable: ...


@dataclass(frozen=True)
class DotSimilarity:
    def query(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def items(self, table: ItemTable) -> ItemTable:
        return table


@dataclass(frozen=True)
class CosineSimilarity:
    temperature: float = 0.05

    def query(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(hidden, dim=-1) / self.temperature

    def items(self, table: ItemTable) -> ItemTable:
        # rows of zeros (padding) stay zeros; their column is set to -inf anyway
        return ItemTable(F.normalize(table.weight, dim=-1), table.bias)


def make_similarity(name: str, temperature: float) -> Similarity:
    check_choice("similarity", name, SIMILARITIES)
    return CosineSimilarity(temperature) if name == "cosine" else DotSimilarity()


def catalog_scores(query: torch.Tensor, table: ItemTable) -> torch.Tensor:
    """(..., D) queries -> (..., N + 1) scores over the whole catalog, padding at -inf."""
    logits = query @ _up(table.weight, query.dtype).T
    if table.bias is not None:
        logits = logits + table.bias
    logits[..., 0] = float("-inf")
    return logits


def fill_tile(out: torch.Tensor, query: torch.Tensor, table: ItemTable, lo: int, hi: int) -> torch.Tensor:
    """Write the scores of items ``lo:hi`` into ``out`` (R, hi - lo), as :func:`catalog_scores` gives
    them, without allocating a new (R, hi - lo) block."""
    weight, bias = table
    rows = _up(weight[lo:hi], query.dtype)
    if out.is_contiguous():
        torch.mm(query, rows.T, out=out)
    else:  # a column slice of a wider buffer (the catalog's last, partial tile)
        out.copy_(query @ rows.T)
    if bias is not None:
        out += bias[lo:hi]
    if lo == 0:
        out[:, 0] = float("-inf")  # padding is never a candidate
    return out


def _up(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows of a table stored in a lower precision (bfloat16) cast up to the query's; else as they are."""
    return rows.to(torch.promote_types(rows.dtype, dtype))


def gather_rows(table: ItemTable, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(..., D) the table's rows of ``ids`` (cast up to ``dtype`` if stored lower); with a sparse gradient
    for a SparseItemTable."""
    if isinstance(table, SparseItemTable):
        return _up(F.embedding(ids, table.source, sparse=True), dtype)
    return _up(table.weight[ids], dtype)


def target_scores(query: torch.Tensor, table: ItemTable, targets: torch.Tensor) -> torch.Tensor:
    """(M, D) queries, (M,) item ids -> (M,) the score of each row's own item."""
    scores = (query * gather_rows(table, targets, query.dtype)).sum(-1)
    return scores + table.bias[targets] if table.bias is not None else scores


def candidate_scores(query: torch.Tensor, table: ItemTable, candidates: torch.Tensor) -> torch.Tensor:
    """(M, D) queries and (K,) candidates shared by every row, or (M, K) per row -> (M, K) scores."""
    vectors = gather_rows(table, candidates, query.dtype)  # (K, D) or (M, K, D)
    # shared: one (M x K) product; per row: a batched dot product
    scores = query @ vectors.T if candidates.dim() == 1 else torch.einsum("md,mkd->mk", query, vectors)
    return scores + table.bias[candidates] if table.bias is not None else scores
