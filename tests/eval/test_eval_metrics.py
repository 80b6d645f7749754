"""Hand-computed ranking metrics, the tie policy, and the fast rank against the slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqrec.eval.evaluate import ranks_from_scores
from seqrec.eval.metrics import all_metrics, coverage, expected_rank, hit_rate, mrr, ndcg

INF = float("inf")
NEG = float("-inf")

# five users: ranks 1, 2, 3, 11 and one excluded target (inf)
RANKS = np.array([1.0, 2.0, 3.0, 11.0, INF])


@pytest.mark.parametrize(("k", "hr"), [(1, 1 / 5), (2, 2 / 5), (3, 3 / 5), (10, 3 / 5), (11, 4 / 5), (1000, 4 / 5)])
def test_hit_rate_and_recall_by_hand(k: int, hr: float) -> None:
    assert hit_rate(RANKS, k) == pytest.approx(hr)
    out = all_metrics(RANKS, (k,))
    assert out[f"HR@{k}"] == pytest.approx(hr)
    assert out[f"Recall@{k}"] == pytest.approx(hr)  # one held-out target per user: Recall@K is HR@K


def test_ndcg_by_hand() -> None:
    assert ndcg(RANKS, 1) == pytest.approx(1 / 5)
    assert ndcg(RANKS, 3) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 5)
    assert ndcg(RANKS, 11) == pytest.approx((1 + 1 / math.log2(3) + 0.5 + 1 / math.log2(12)) / 5)


def test_mrr_by_hand() -> None:
    assert mrr(RANKS, 1) == pytest.approx(1 / 5)
    assert mrr(RANKS, 10) == pytest.approx((1 + 1 / 2 + 1 / 3) / 5)
    assert mrr(RANKS, 11) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 11) / 5)


def test_an_excluded_target_is_a_miss_at_every_k() -> None:
    only_missing = np.array([INF, INF])
    for metric in (hit_rate, ndcg, mrr):
        assert metric(only_missing, 10**9) == 0.0
    assert set(all_metrics(only_missing, (10**9,)).values()) == {0.0}


def test_fractional_ranks_from_ties() -> None:
    ranks = np.array([1.5, 3.5])  # a two-way tie at the top; a target tied with two items behind two
    assert hit_rate(ranks, 1) == 0.0  # the expected rank 1.5 is not a hit at 1
    assert hit_rate(ranks, 2) == pytest.approx(0.5)
    assert ndcg(ranks, 4) == pytest.approx((1 / math.log2(2.5) + 1 / math.log2(4.5)) / 2)
    assert mrr(ranks, 4) == pytest.approx((1 / 1.5 + 1 / 3.5) / 2)


def test_no_users_gives_zero_not_nan() -> None:
    empty = np.zeros(0)
    assert [hit_rate(empty, 5), ndcg(empty, 5), mrr(empty, 5)] == [0.0] * 3
    assert all_metrics(empty, (5,)) == {"HR@5": 0.0, "NDCG@5": 0.0, "MRR@5": 0.0, "Recall@5": 0.0}
    assert coverage(np.zeros((0, 5), dtype=np.int64), 5, 10) == 0.0


def test_coverage_by_hand() -> None:
    top = np.array([[1, 2, 0], [2, 3, 0], [2, 1, 4]])  # 0 is padding: never counted
    assert coverage(top, 1, 10) == pytest.approx(2 / 10)  # {1, 2}
    assert coverage(top, 2, 10) == pytest.approx(3 / 10)  # {1, 2, 3}
    assert coverage(top, 3, 10) == pytest.approx(4 / 10)  # {1, 2, 3, 4}
    assert coverage(np.zeros((2, 3), dtype=np.int64), 3, 10) == 0.0


def test_all_metrics_names_values_and_prefix() -> None:
    top = np.array([[1, 2], [3, 1], [1, 2], [2, 3], [4, 1]])
    out = all_metrics(RANKS, (1, 2), top, n_items=8)
    assert set(out) == {f"{m}@{k}" for m in ("HR", "NDCG", "MRR", "Recall", "coverage") for k in (1, 2)}
    assert out["HR@2"] == pytest.approx(2 / 5)
    assert out["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 5)
    assert out["MRR@2"] == pytest.approx((1 + 1 / 2) / 5)
    assert out["coverage@1"] == pytest.approx(4 / 8)  # {1, 2, 3, 4}
    no_top = all_metrics(RANKS, (2,), prefix="sampled_x_")
    assert set(no_top) == {"sampled_x_HR@2", "sampled_x_NDCG@2", "sampled_x_MRR@2", "sampled_x_Recall@2"}


# ---- ranks and ties ------------------------------------------------------------------------


def test_expected_rank_by_hand() -> None:
    scores = np.array([NEG, 3.0, 1.0, 3.0, 2.0, 3.0])
    assert expected_rank(scores, 1) == pytest.approx(1 + 0 + 2 / 2)  # tied with two others
    assert expected_rank(scores, 4) == pytest.approx(1 + 3)  # three 3.0 above, no tie
    assert expected_rank(scores, 2) == pytest.approx(1 + 4)
    assert expected_rank(scores, 0) == INF  # excluded (-inf): a miss
    assert expected_rank(np.array([0.0, np.nan, 1.0]), 1) == INF


def test_ranks_from_scores_by_hand() -> None:
    scores = torch.tensor([
        [NEG, 3.0, 1.0, 3.0, 2.0, 3.0],
        [NEG, 3.0, 1.0, 3.0, 2.0, 3.0],
        [NEG, 5.0, NEG, 1.0, 2.0, 0.0],  # target excluded
        [NEG, 0.0, 0.0, 0.0, 0.0, 0.0],  # constant scores: the middle, never the best
    ])
    ranks = ranks_from_scores(scores, torch.tensor([1, 4, 2, 3]))
    assert ranks.tolist() == [2.0, 4.0, INF, 3.0]


@pytest.mark.parametrize("n_items", [1, 2, 9, 100])
def test_constant_scores_get_the_middle_rank(n_items: int) -> None:
    scores = torch.zeros(3, n_items + 1)
    scores[:, 0] = NEG  # padding
    targets = torch.tensor([1, n_items, (n_items + 1) // 2])
    expected = 1 + (n_items - 1) / 2
    assert ranks_from_scores(scores, targets).tolist() == [expected] * 3
    if n_items > 1:
        assert hit_rate(ranks_from_scores(scores, targets).numpy(), 1) == 0.0


def test_nan_target_is_a_miss_not_a_perfect_hit() -> None:
    # a diverged model scores NaN; comparisons with NaN are all false, which once gave rank 0.5
    scores = torch.full((2, 6), float("nan"))
    scores[1, :3] = torch.tensor([NEG, 1.0, 2.0])
    ranks = ranks_from_scores(scores, torch.tensor([2, 4]))
    assert ranks.tolist() == [INF, INF]
    assert all_metrics(ranks.numpy(), (1, 5))["HR@5"] == 0.0


def test_fast_ranks_match_the_slow_reference_on_random_scores_with_ties() -> None:
    rng = np.random.default_rng(7)
    n_rows, n_cols = 300, 30
    scores = rng.integers(-3, 4, size=(n_rows, n_cols)).astype(np.float32)  # many ties
    scores[rng.random((n_rows, n_cols)) < 0.2] = NEG  # excluded items, sometimes the target
    scores[:, 0] = NEG
    targets = rng.integers(1, n_cols, size=n_rows)
    fast = ranks_from_scores(torch.from_numpy(scores), torch.from_numpy(targets)).numpy()
    slow = np.array([expected_rank(scores[r], int(targets[r])) for r in range(n_rows)])
    assert np.isinf(slow).any() and (slow[np.isfinite(slow)] % 1 == 0.5).any()  # both policies really exercised
    np.testing.assert_array_equal(fast, slow)
