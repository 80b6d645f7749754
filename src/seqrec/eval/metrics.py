"""Ranking metrics as pure functions of the target's rank.

Tie policy: a target that ties with other items gets the *expected* rank under a random
tie-break, ``1 + (#items scored higher) + (#other items with the same score) / 2``. A model
that scores every item the same therefore gets the middle rank, never the best one.
A target excluded from the ranking (e.g. already seen) has rank ``inf``: a miss.
With one held-out target per user, Recall@K equals HR@K.
"""

from __future__ import annotations

import numpy as np


def hit_rate(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks <= k)) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    if not len(ranks):
        return 0.0
    gains = np.where(ranks <= k, 1.0 / np.log2(np.minimum(ranks, 1e18) + 1.0), 0.0)
    return float(np.mean(gains))


def mrr(ranks: np.ndarray, k: int) -> float:
    if not len(ranks):
        return 0.0
    return float(np.mean(np.where(ranks <= k, 1.0 / np.minimum(ranks, 1e18), 0.0)))


def coverage(top_items: np.ndarray, k: int, n_items: int) -> float:
    """Share of the catalog that appears in at least one top-k list."""
    if top_items.size == 0:
        return 0.0
    distinct = np.unique(top_items[:, :k])
    return float(np.count_nonzero(distinct > 0) / n_items)


def all_metrics(ranks: np.ndarray, ks: tuple[int, ...], top_items: np.ndarray | None = None,
                n_items: int | None = None, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}HR@{k}"] = hit_rate(ranks, k)
        out[f"{prefix}NDCG@{k}"] = ndcg(ranks, k)
        out[f"{prefix}MRR@{k}"] = mrr(ranks, k)
        out[f"{prefix}Recall@{k}"] = out[f"{prefix}HR@{k}"]  # one held-out target per user: recall = hit rate
        if top_items is not None and n_items:
            out[f"{prefix}coverage@{k}"] = coverage(top_items, k, n_items)
    return out


def expected_rank(scores: np.ndarray, target: int) -> float:
    """Reference (slow, one row) rank of ``scores[target]`` under the tie policy."""
    s = scores[target]
    if np.isnan(s) or s == float("-inf"):  # excluded or unrankable: a miss, as in ranks_from_scores
        return float("inf")
    higher = int(np.sum(scores > s))
    ties = int(np.sum(scores == s)) - 1
    return 1.0 + higher + ties / 2.0
