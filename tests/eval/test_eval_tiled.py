"""The tiled ranking equals the plain one (full score matrix, mask, compare, top-k)."""

from __future__ import annotations

import pytest
import torch

from seqrec.eval.evaluate import ranks_from_scores
from seqrec.eval.tiled import tile_top, top_and_ranks
from seqrec.items.tower import ItemTable


def plain(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
          seen_rows: torch.Tensor, seen_items: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    scores = hidden @ weight.T + (0 if bias is None else bias)
    scores[:, 0] = float("-inf")
    scores[seen_rows, seen_items] = float("-inf")
    ranks = ranks_from_scores(scores, targets)
    top = torch.topk(scores, k, dim=1)
    return torch.where(top.values == float("-inf"), 0, top.indices), ranks


@pytest.mark.parametrize(("tile", "block"), [(3, 64), (7, 64), (2048, 64), (2048, 2), (2048, 3), (25, 2)])
@pytest.mark.parametrize("seed", range(4))
def test_tiled_ranks_equal_plain(tile: int, block: int, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("seqrec.eval.tiled.ITEM_TILE", tile)
    monkeypatch.setattr("seqrec.eval.tiled.BLOCK", block)
    g = torch.Generator().manual_seed(seed)
    n_items, dim, rows, k = 40, 4, 25, 5
    # integer-valued embeddings make many exact ties, including at the k-th place
    weight = torch.randint(-2, 3, (n_items + 1, dim), generator=g).float()
    hidden = torch.randint(-1, 2, (rows, dim), generator=g).float()
    bias = torch.randint(0, 2, (n_items + 1,), generator=g).float() if seed % 2 else None
    targets = torch.randint(1, n_items + 1, (rows,), generator=g)
    seen_rows = torch.randint(0, rows, (60,), generator=g)
    seen_items = torch.randint(1, n_items + 1, (60,), generator=g)

    def exact(sub: torch.Tensor) -> torch.Tensor:
        return plain(hidden, weight, bias, targets, seen_rows, seen_items, k)[1][sub]

    top, ranks = top_and_ranks(hidden, ItemTable(weight, bias), targets, seen_rows, seen_items, k, exact)
    want_top, want_ranks = plain(hidden, weight, bias, targets, seen_rows, seen_items, k)
    within = want_ranks <= k
    assert torch.equal(ranks[within], want_ranks[within].double())
    assert torch.isinf(ranks[~within]).all()
    # top lists agree up to the order of tied items: compare the scores they pick
    scores = hidden @ weight.T + (0 if bias is None else bias)
    assert torch.equal(scores.gather(1, top), scores.gather(1, want_top))
    assert torch.equal(top == 0, want_top == 0)


def test_all_equal_scores_take_the_slow_path_and_get_the_middle_rank() -> None:
    weight, hidden = torch.zeros(101, 3), torch.zeros(4, 3)
    targets = torch.tensor([1, 50, 99, 100])
    calls = []

    def exact(sub: torch.Tensor) -> torch.Tensor:
        calls.append(sub.tolist())
        return torch.full((len(sub),), 50.5, dtype=torch.float64)

    _, ranks = top_and_ranks(hidden, ItemTable(weight, None), targets, torch.zeros(0, dtype=torch.long),
                             torch.zeros(0, dtype=torch.long), 10, exact)
    assert calls == [[0, 1, 2, 3]]
    assert torch.isinf(ranks).all()  # middle rank 50.5 > k = 10


@pytest.mark.parametrize("block", [1, 2, 5, 8])
@pytest.mark.parametrize("seed", range(5))
def test_block_maxima_top_k_has_the_values_of_topk(block: int, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("seqrec.eval.tiled.BLOCK", block)
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(-3, 4, (30, 203), generator=g).float()  # many ties, a ragged tail
    scores[torch.rand(scores.shape, generator=g) < 0.3] = float("-inf")  # masked items
    scores[0] = float("-inf")  # a row with nothing rankable
    k = 7
    vals, cols = tile_top(scores, k)
    want = torch.topk(scores, k, dim=1).values
    assert torch.equal(vals, want)
    assert torch.equal(scores.gather(1, cols), vals)  # the columns hold those values
    assert all(len(set(row)) == k for row in cols.tolist())  # no column twice
