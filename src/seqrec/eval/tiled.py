"""Full-catalog ranking without materialising the (users x items) score matrix.

Scores are computed in (rows x ITEM_TILE) tiles; each tile has the seen items masked, gives up
its top-k candidates and, where the target lies in it, the target's score (read from the tile
itself, so the comparison uses bit-identical numbers). A tile's top-k comes from the k blocks
of BLOCK columns with the highest maxima (see :func:`tile_top`): a max pass is ~20x cheaper
than ``torch.topk`` over a whole row, which is then run on k x BLOCK candidates only. The merged
top-k then decides every rank up to k exactly. Only rows whose target ties with the k-th
candidate need more (ties may run past the list): they are re-ranked over the whole row by
the plain reference, :func:`seqrec.eval.evaluate.ranks_from_scores`. Ranks beyond k are
reported as ``inf``: no metric at a cut-off <= k can tell them apart from misses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from seqrec.items.tower import ItemTable
from seqrec.scoring import fill_tile

ITEM_TILE = 16384  # (R x ITEM_TILE) floats per tile: 16 MB for R = 256
BLOCK = 64  # columns per block maximum


def tile_top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, k) largest values of each row (sorted high to low) and their columns.

    The k blocks with the highest maxima hold the k largest values: every value above the k-th
    lies in a block whose maximum beats the k-th, and there are fewer than k such blocks; each
    block whose maximum equals the k-th holds a copy of it. So the values are exactly those of
    ``torch.topk(scores, k)``; among tied values the columns may differ, as topk's may.
    """
    R, width = scores.shape
    n_blocks = width // BLOCK
    if n_blocks <= 2 * k:
        return torch.topk(scores, min(k, width), dim=1)
    full = n_blocks * BLOCK
    block_max = scores[:, :full].reshape(R, n_blocks, BLOCK).amax(2)  # a view of the rows: no copy
    best = torch.topk(block_max, k, dim=1).indices  # (R, k)
    cols = (best[:, :, None] * BLOCK + torch.arange(BLOCK, device=scores.device)).reshape(R, k * BLOCK)
    if full < width:  # the ragged tail: every column is a candidate
        cols = torch.cat([cols, torch.arange(full, width, device=scores.device).expand(R, -1)], 1)
    vals, pos = torch.topk(scores.gather(1, cols), k, dim=1)
    return vals, cols.gather(1, pos)


def _seen_by_tile(seen_rows: torch.Tensor, seen_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(seen_items)
    return seen_rows[order], seen_items[order]


def top_and_ranks(query: torch.Tensor, table: ItemTable, targets: torch.Tensor,
                  seen_rows: torch.Tensor, seen_items: torch.Tensor, k: int,
                  full_rows: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, k) top item ids (0 where fewer than k items are rankable) and (R,) target ranks.

    query (R, D), table (N + 1, D) [+ bias], targets (R,), all on one device; ``seen_rows`` /
    ``seen_items`` list the (row, item) pairs excluded from ranking; ``full_rows(rows)`` gives
    the exact expected ranks of the listed rows (the slow path for ties at the k-th place).
    """
    R, n1, device = query.shape[0], table.weight.shape[0], query.device
    rows_sorted, items_sorted = _seen_by_tile(seen_rows, seen_items)
    target_score = torch.full((R,), float("nan"), dtype=torch.float32, device=device)
    cand_vals, cand_ids = [], []
    buf = torch.empty(R, min(ITEM_TILE, n1), dtype=torch.float32, device=device)
    for lo in range(0, n1, ITEM_TILE):
        hi = min(lo + ITEM_TILE, n1)
        scores = fill_tile(buf[:, : hi - lo], query, table, lo, hi)
        a, b = torch.searchsorted(items_sorted, torch.tensor([lo, hi], device=device)).tolist()
        scores[rows_sorted[a:b], items_sorted[a:b] - lo] = float("-inf")
        inside = torch.nonzero((targets >= lo) & (targets < hi)).squeeze(1)
        target_score[inside] = scores[inside, targets[inside] - lo]
        vals, ids = tile_top(scores, k)
        cand_vals.append(vals)
        cand_ids.append(ids + lo)
    vals, pos = torch.topk(torch.cat(cand_vals, 1), k, dim=1)  # (R, k), sorted high to low
    top = torch.where(vals == float("-inf"), 0, torch.cat(cand_ids, 1).gather(1, pos))
    t = target_score[:, None]
    higher = (vals > t).sum(1)
    ties = (vals == t).sum(1) - 1  # the target is in the list whenever its rank is <= k
    ranks = torch.where(higher + ties + 1 < k, 1.0 + higher + ties / 2.0, torch.inf).double()
    # The list is full of items scoring >= the target: the rank is > k unless the k-th ties it.
    miss = torch.isnan(target_score) | (target_score == float("-inf"))
    ambiguous = torch.nonzero((vals[:, -1] == target_score) & (higher < k) & ~miss).squeeze(1)
    if len(ambiguous):
        exact = full_rows(ambiguous)
        exact = exact.to(device)
        ranks[ambiguous] = torch.where(exact <= k, exact, torch.inf).double()
    return top, torch.where(miss, torch.inf, ranks)
