"""`evaluate()` end to end on hand-made encoders: full ranking against a slow per-user reference,
the tie policy through a constant-score model, seen-item masking, K checks, sampled metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqrec.data.sequences import Sequences
from seqrec.data.split import EvalSet
from seqrec.errors import SeqrecError
from seqrec.eval.evaluate import EvalConfig, evaluate, mask_seen, score_histories
from seqrec.eval.metrics import all_metrics, expected_rank
from seqrec.items.tower import ItemTower, TowerConfig
from seqrec.models.base import ModelConfig, SequenceModel

NEG = float("-inf")


class WindowSumModel(SequenceModel):
    """Query = sum of a fixed vector per input item over the window; nothing to train.

    The vectors are the item tower's input table and the scores its output table, so evaluation
    goes through the model contract (forward, predict_next, item_table) as a trained model's does.
    Integer-valued tables keep float32 arithmetic exact, so a numpy reference agrees bit for bit.
    """

    name = "window-sum"

    def __init__(self, states: np.ndarray, table: np.ndarray, max_len: int) -> None:
        super().__init__()
        n_items, dim = table.shape[0] - 1, table.shape[1]
        self.config = ModelConfig(n_items=n_items, max_len=max_len)
        self.tower = ItemTower(TowerConfig(n_items, states.shape[1], output="table", out_dim=dim))
        self.states, self.table = states.astype(np.float32), table.astype(np.float32)  # (N + 1, D), states[0] = 0
        assert self.tower.output is not None
        with torch.no_grad():
            self.tower.id_emb.weight.copy_(torch.from_numpy(self.states))
            self.tower.output.weight.copy_(torch.from_numpy(self.table))

    def encode(self, x: torch.Tensor, items: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        return x.cumsum(1)  # (B, L, D)


def random_model(rng: np.random.Generator, n_items: int, dim: int, low: int, high: int,
                 max_len: int) -> WindowSumModel:
    states = rng.integers(low, high, size=(n_items + 1, dim))
    states[0] = 0  # padding adds nothing
    return WindowSumModel(states, rng.integers(low, high, size=(n_items + 1, dim)), max_len)


def constant_model(n_items: int, max_len: int) -> WindowSumModel:
    return WindowSumModel(np.ones((n_items + 1, 1)), np.zeros((n_items + 1, 1)), max_len)


def eval_set(histories: list[list[int]], targets: list[int]) -> EvalSet:
    return EvalSet(np.arange(len(histories)), Sequences.from_lists(histories), np.asarray(targets))


def random_eval_set(rng: np.random.Generator, n_users: int, n_items: int, max_hist: int) -> EvalSet:
    histories = [rng.integers(1, n_items + 1, size=int(rng.integers(1, max_hist + 1))).tolist()
                 for _ in range(n_users)]
    return eval_set(histories, rng.integers(1, n_items + 1, size=n_users).tolist())


def reference_scores(model: WindowSumModel, history: list[int], max_len: int, exclude_seen: bool) -> np.ndarray:
    """One user's catalog scores, computed the slow way."""
    hidden = model.states[history[-max_len:]].sum(0)  # only the last max_len items are input
    scores = model.table @ hidden
    scores[0] = NEG
    if exclude_seen:
        scores[history] = NEG
    return scores


def histories_of(data: EvalSet) -> list[list[int]]:
    return [data.history.get(r).tolist() for r in range(len(data))]


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_full_ranking_matches_the_slow_per_user_reference(exclude_seen: bool, workers: int) -> None:
    rng = np.random.default_rng(3)
    model = random_model(rng, n_items=40, dim=2, low=-1, high=2, max_len=4)  # scores in -8..8: many ties
    data = random_eval_set(rng, n_users=120, n_items=40, max_hist=12)
    ks = (1, 5, 10, 40)
    threads = torch.get_num_threads()
    got = evaluate(model, data,
                   config=EvalConfig(ks=ks, exclude_seen=exclude_seen, batch_size=7, workers=workers))
    assert torch.get_num_threads() == threads  # restored after the batches ran side by side
    ranks = np.array([expected_rank(reference_scores(model, h, 4, exclude_seen), int(t))
                      for h, t in zip(histories_of(data), data.targets, strict=True)])
    assert (ranks[np.isfinite(ranks)] % 1 == 0.5).any()  # ties really happened
    assert np.isinf(ranks).any() == exclude_seen  # some targets were in the history
    want = all_metrics(ranks, ks)
    assert {k: got[k] for k in want} == pytest.approx(want)


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_score_histories_are_the_reference_scores_on_the_models_device(exclude_seen: bool) -> None:
    rng = np.random.default_rng(4)
    model = random_model(rng, n_items=30, dim=3, low=-5, high=6, max_len=5)
    data = random_eval_set(rng, n_users=20, n_items=30, max_hist=12)
    rows = np.array([3, 0, 17, 9])
    scores = score_histories(model, data.history, rows, exclude_seen)
    assert scores.dtype == torch.float32 and scores.device == model.device
    want = np.stack([reference_scores(model, data.history.get(r).tolist(), 5, exclude_seen) for r in rows])
    np.testing.assert_array_equal(scores.numpy(), want)


def test_batches_ranked_side_by_side_give_exactly_the_sequential_metrics() -> None:
    rng = np.random.default_rng(5)
    model = random_model(rng, n_items=300, dim=8, low=-3, high=4, max_len=6)
    data = random_eval_set(rng, n_users=500, n_items=300, max_hist=30)
    one = evaluate(model, data, config=EvalConfig(ks=(1, 10, 50), batch_size=16, workers=1))
    assert evaluate(model, data, config=EvalConfig(ks=(1, 10, 50), batch_size=16, workers=4)) == one


def test_coverage_matches_the_reference_and_skips_excluded_items() -> None:
    rng = np.random.default_rng(5)
    n_items, ks = 12, (3, 10)
    model = random_model(rng, n_items=n_items, dim=3, low=-1000, high=1000, max_len=5)  # exact, practically no ties
    data = random_eval_set(rng, n_users=6, n_items=n_items, max_hist=9)
    got = evaluate(model, data, config=EvalConfig(ks=ks, batch_size=4))
    for k in ks:
        shown: set[int] = set()
        for history in histories_of(data):
            scores = reference_scores(model, history, 5, exclude_seen=True)
            finite = np.flatnonzero(np.isfinite(scores))
            assert len(set(scores[finite].tolist())) == len(finite)  # no ties: top-k is unique
            shown |= set(finite[np.argsort(-scores[finite])][:k].tolist())
        assert got[f"coverage@{k}"] == pytest.approx(len(shown) / n_items)
    assert min(n_items - len(set(h)) for h in histories_of(data)) < 10  # some top-10 lists were short


def test_coverage_does_not_count_excluded_items_that_fill_a_short_list() -> None:
    model = WindowSumModel(np.ones((5, 1)), np.array([[0.0], [1.0], [2.0], [3.0], [4.0]]), max_len=5)
    out = evaluate(model, eval_set([[1, 2, 3]], [4]), config=EvalConfig(ks=(4,)))
    assert out["HR@4"] == 1.0
    assert out["coverage@4"] == pytest.approx(1 / 4)  # only item 4 is recommended; 1-3 were seen


def test_constant_score_model_gets_the_middle_rank_not_the_best() -> None:
    data = eval_set([[1, 2, 3]], [5])
    model = constant_model(n_items=9, max_len=10)
    ks = (1, 3, 5)
    seen_out = evaluate(model, data, config=EvalConfig(ks=ks))
    # 9 items, 3 seen and excluded: the target ties with 5 others -> rank 1 + 5/2
    assert seen_out["HR@1"] == 0.0 and seen_out["HR@3"] == 0.0 and seen_out["HR@5"] == 1.0
    assert seen_out["NDCG@5"] == pytest.approx(1 / math.log2(4.5))
    assert seen_out["MRR@5"] == pytest.approx(1 / 3.5)
    seen_in = evaluate(model, data, config=EvalConfig(ks=ks, exclude_seen=False))
    # nothing excluded: ties with 8 others -> rank 5
    assert seen_in["HR@3"] == 0.0 and seen_in["HR@5"] == 1.0
    assert seen_in["MRR@5"] == pytest.approx(1 / 5)


def test_a_target_already_in_the_history_is_a_miss_when_seen_items_are_excluded() -> None:
    model = WindowSumModel(np.ones((5, 1)), np.array([[0.0], [4.0], [3.0], [2.0], [1.0]]), max_len=5)
    data = eval_set([[1, 3], [3]], [1, 1])  # both targets are item 1, the best-scored item
    excluded = evaluate(model, data, config=EvalConfig(ks=(1, 4)))
    assert excluded["HR@4"] == pytest.approx(0.5)  # user 0 saw item 1: rank inf
    assert excluded["MRR@1"] == pytest.approx(0.5)
    included = evaluate(model, data, config=EvalConfig(ks=(1, 4), exclude_seen=False))
    assert included["HR@1"] == 1.0


def test_k_larger_than_the_catalog_is_a_user_error() -> None:
    model, data = constant_model(n_items=9, max_len=5), eval_set([[1]], [2])
    with pytest.raises(SeqrecError, match=r"K=10 .*9 items"):
        evaluate(model, data, config=EvalConfig(ks=(1, 10)))
    assert evaluate(model, data, config=EvalConfig(ks=(9,)))["HR@9"] == 1.0


def test_evaluate_restores_the_training_mode() -> None:
    model = constant_model(n_items=4, max_len=3)
    model.train()
    evaluate(model, eval_set([[1]], [2]), config=EvalConfig(ks=(1,)))
    assert model.training


def test_mask_seen_excludes_exactly_the_history_items() -> None:
    history = Sequences.from_lists([[1, 1, 4], [], [2, 7, 3, 2], [6]])
    rows = np.array([2, 0, 1])
    scores = torch.arange(3 * 9, dtype=torch.float32).reshape(3, 9)
    before = scores.clone()
    mask_seen(scores, history, rows)
    masked = [set(torch.nonzero(torch.isinf(scores[r])).flatten().tolist()) for r in range(3)]
    assert masked == [{2, 3, 7}, {1, 4}, set()]
    untouched = ~torch.isinf(scores)
    assert torch.equal(scores[untouched], before[untouched])


# ---- sampled metrics: only on request, always labelled --------------------------------------


def test_full_ranking_keys_are_never_labelled_sampled() -> None:
    out = evaluate(constant_model(n_items=9, max_len=3), eval_set([[1]], [2]), config=EvalConfig(ks=(1, 5)))
    assert out and not any("sampled" in key for key in out)
    assert {"HR@5", "NDCG@5", "MRR@5", "Recall@5", "coverage@5"} <= set(out)


def test_uniform_sampled_metrics_are_prefixed_and_never_sample_the_target_or_padding() -> None:
    # item scores 1..6 and the target (item 1) scores lowest, so its rank counts the negatives
    table = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    model = WindowSumModel(np.ones((7, 1)), table, max_len=3)
    data = eval_set([[3], [4], [5]], [1, 1, 1])
    cfg = EvalConfig(ks=(1, 5), exclude_seen=False, sampled="uniform", n_negatives=50, seed=1)
    out = evaluate(model, data, config=cfg)
    assert set(out) == {f"sampled_uniform50_{m}@{k}" for m in ("HR", "NDCG", "MRR", "Recall") for k in (1, 5)}
    assert out["sampled_uniform50_HR@5"] == 0.0  # rank 51 for every user: all 50 negatives are real items


def test_popularity_sampled_metrics_follow_the_counts() -> None:
    table = np.array([[0.0], [5.0], [0.5], [9.0], [8.0]])
    model = WindowSumModel(np.ones((5, 1)), table, max_len=3)
    data = eval_set([[3], [4]], [1, 1])
    counts = np.array([0, 3, 7, 0, 0])  # only item 2 (below the target) can be a negative
    cfg = EvalConfig(ks=(1,), exclude_seen=False, sampled="popularity", n_negatives=20)
    out = evaluate(model, data, config=cfg, item_counts=counts)
    assert out == {"sampled_popularity20_HR@1": 1.0, "sampled_popularity20_NDCG@1": 1.0,
                   "sampled_popularity20_MRR@1": 1.0, "sampled_popularity20_Recall@1": 1.0}
    with pytest.raises(SeqrecError, match="item counts"):
        evaluate(model, data, config=cfg)
