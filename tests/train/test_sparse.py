"""The sparse item optimizer: sparse lookups of the item tables, Adam moments only for touched rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import seqrec
from seqrec.data.batch import SequenceBatch
from seqrec.datasets.synthetic import markov_dataset
from seqrec.errors import SeqrecError
from seqrec.items.tower import ItemTable, SparseItemTable
from seqrec.losses import LossConfig, LossInputs, NegativeSampler, compute_loss
from seqrec.models.registry import create
from seqrec.scoring import candidate_scores, target_scores
from seqrec.train.loop import fit
from seqrec.train.optim import ItemRowsAdamW, RowAdam, clip_grad_norm, make_optimizer

N_ITEMS = 60
MODELS = ("sasrec", "gru4rec", "lstm", "bert4rec", "hstu")
SAMPLED = LossConfig(name="sampled", n_negatives=8)


def _model(name: str, seed: int = 0) -> seqrec.SequenceModel:
    torch.manual_seed(seed)
    kw: dict[str, Any] = {"n_heads": 1} if name in ("sasrec", "bert4rec") else {}
    return create(name, n_items=N_ITEMS, max_len=8, dim=16, **kw)


def _cfg(item_optimizer: str, loss: LossConfig = SAMPLED, **kw: Any) -> seqrec.TrainConfig:
    return seqrec.TrainConfig(item_optimizer=item_optimizer, loss=loss, lr=1e-2, weight_decay=0.0, **kw)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    items = torch.randint(1, N_ITEMS // 2, (4, 8), generator=gen)  # items above N/2 are never inputs or targets
    return items, torch.randint(1, N_ITEMS // 2, (4, 8), generator=gen)


def _step(model: seqrec.SequenceModel, opt: torch.optim.Optimizer, loss_cfg: LossConfig) -> None:
    """One training step as the loop takes it (dropout seeded, the same negatives every call)."""
    items, targets = _batch()
    torch.manual_seed(1)
    query = model(SequenceBatch(items))
    sampler = NegativeSampler(N_ITEMS // 2, "uniform")  # negatives among the first half of the items
    loss = compute_loss(LossInputs(query.reshape(-1, query.shape[-1]), model.item_table(), targets.reshape(-1),
                                   loss_cfg, sampler, torch.Generator().manual_seed(2)))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    clip_grad_norm(model.parameters(), 5.0)
    opt.step()


@pytest.mark.parametrize("name", MODELS)
def test_first_step_equals_adamw_and_touches_only_used_rows(name: str) -> None:
    dense_model, sparse_model = _model(name), _model(name)
    before = {k: v.clone() for k, v in sparse_model.state_dict().items()}
    _step(dense_model, make_optimizer(dense_model, _cfg("dense")), SAMPLED)
    opt = make_optimizer(sparse_model, _cfg("sparse"))
    assert isinstance(opt, ItemRowsAdamW)
    _step(sparse_model, opt, SAMPLED)
    for table in sparse_model.tower.row_tables():
        assert table.grad is not None and table.grad.is_sparse  # never an (N + 1, D) gradient
    # AdamW (no decay) and the row update agree on the first step: the same model afterwards
    dense, sparse = dense_model.state_dict(), sparse_model.state_dict()
    for key in dense:
        torch.testing.assert_close(sparse[key], dense[key], rtol=1e-5, atol=1e-6, msg=key)
    for table in sparse_model.tower.row_tables():
        state = opt.rows.state[table]
        touched = state["slot"] >= 0
        assert 0 < int(touched.sum()) == int(state["used"]) <= N_ITEMS // 2 + 1 + 8  # inputs, targets, negatives
        assert not touched[N_ITEMS // 2 + 1 :].any()  # no state for rows no step used
        key = next(k for k, v in sparse_model.named_parameters() if v is table)
        assert torch.equal(table.detach()[~touched], before[key][~touched])  # untouched rows unchanged


def test_row_update_matches_sparse_adam_over_steps() -> None:
    """Rows touched at different steps: the same moments and values as torch.optim.SparseAdam (whose
    denominator places eps differently: equal to float tolerance)."""
    torch.manual_seed(0)
    ours = torch.nn.Embedding(40, 6, sparse=True)
    theirs = torch.nn.Embedding(40, 6, sparse=True)
    theirs.load_state_dict(ours.state_dict())
    opt_a, opt_b = RowAdam(ours.parameters(), lr=0.01), torch.optim.SparseAdam(theirs.parameters(), lr=0.01)
    for ids in ([1, 2, 3, 3], [3, 7, 9], [1, 30, 31, 7, 7]):
        x = torch.tensor(ids)
        for emb, opt in ((ours, opt_a), (theirs, opt_b)):
            opt.zero_grad()
            (emb(x) ** 2 * torch.arange(1, 7)).sum().backward()
            opt.step()
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-5, atol=1e-6)
    state = opt_a.state[ours.weight]
    assert int(state["used"]) == 7  # rows 1, 2, 3, 7, 9, 30, 31
    rows = torch.nonzero(state["slot"] >= 0).squeeze(1)
    torch.testing.assert_close(state["exp_avg"][state["slot"][rows]], opt_b.state[theirs.weight]["exp_avg"][rows])


def test_dense_gradient_and_full_softmax_still_train() -> None:
    """The full softmax gives the output table a dense gradient: every row is updated, as AdamW does."""
    dense_model, sparse_model = _model("sasrec"), _model("sasrec")
    ce = LossConfig(name="ce")
    _step(dense_model, make_optimizer(dense_model, _cfg("dense", ce)), ce)
    opt = make_optimizer(sparse_model, _cfg("sparse", ce))
    _step(sparse_model, opt, ce)
    for key, value in dense_model.state_dict().items():
        torch.testing.assert_close(sparse_model.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert int(opt.rows.state[sparse_model.tower.id_emb.weight]["used"]) == N_ITEMS + 1


def test_sampled_scores_gather_sparse_rows_of_a_tied_table() -> None:
    """The tied table's gradient holds the input rows and the scored rows only, summed."""
    table = torch.nn.Parameter(torch.randn(10, 4))
    query = torch.randn(3, 4)
    sparse = SparseItemTable.of(table, None, table)
    loss = target_scores(query, sparse, torch.tensor([1, 2, 2])).sum() + candidate_scores(
        query, sparse, torch.tensor([5, 2])).sum()
    loss.backward()
    assert table.grad is not None and table.grad.is_sparse
    grad = table.grad.to_dense()
    assert torch.nonzero(grad.abs().sum(1)).squeeze(1).tolist() == [1, 2, 5]
    dense = torch.nn.Parameter(table.detach().clone())
    (target_scores(query, ItemTable(dense, None), torch.tensor([1, 2, 2])).sum()
     + candidate_scores(query, ItemTable(dense, None), torch.tensor([5, 2])).sum()).backward()
    torch.testing.assert_close(grad, dense.grad)


def test_clip_grad_norm_with_sparse_grads_matches_torch() -> None:
    torch.manual_seed(0)
    a, b = torch.nn.Embedding(20, 4, sparse=True), torch.nn.Linear(4, 3)
    x = torch.tensor([1, 1, 4, 7])
    (b(a(x)) ** 2).sum().backward()
    dense_a = torch.nn.Parameter(a.weight.detach().clone())
    dense_a.grad = a.weight.grad.to_dense()  # type: ignore[union-attr]
    b2 = torch.nn.Parameter(b.weight.detach().clone())
    b2.grad = b.weight.grad.clone()  # type: ignore[union-attr]
    want = torch.nn.utils.clip_grad_norm_([dense_a, b2], 0.5)
    got = clip_grad_norm([a.weight, b.weight], 0.5)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(a.weight.grad.to_dense(), dense_a.grad)  # type: ignore[union-attr]
    torch.testing.assert_close(b.weight.grad, b2.grad)


def test_bf16_tables_train_with_stochastic_rounding() -> None:
    model = _model("sasrec")
    opt = make_optimizer(model, _cfg("sparse", item_dtype="bfloat16"))
    assert model.tower.id_emb.weight.dtype == torch.bfloat16
    before = model.tower.id_emb.weight.detach().clone()
    _step(model, opt, SAMPLED)
    after = model.tower.id_emb.weight.detach()
    assert after.dtype == torch.bfloat16 and not torch.equal(after, before)
    assert {v.dtype for v in model.state_dict().values()} == {torch.float32}  # saved as the config implies
    # a value between two bfloat16 numbers rounds up with the probability of its distance
    x = torch.full((20000,), 1.0 + 2**-9)  # a quarter of the way from 1 to the next bfloat16 (1 + 2**-7)
    rounded = opt.rows._round(x, torch.bfloat16).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert rounded.mean().item() == pytest.approx(1.0 + 2**-9, abs=1e-4)  # 4 standard errors; nearest: 1.0


def test_bf16_needs_sparse_optimizer_and_sampled_loss() -> None:
    with pytest.raises(SeqrecError, match="sparse item optimizer"):
        make_optimizer(_model("sasrec"), _cfg("dense", item_dtype="bfloat16"))
    with pytest.raises(SeqrecError, match="sampled loss"):
        make_optimizer(_model("sasrec"), _cfg("sparse", LossConfig(name="ce"), item_dtype="bfloat16"))
    with pytest.raises(SeqrecError, match="item_optimizer"):
        seqrec.TrainConfig(item_optimizer="lazy")


@pytest.fixture(scope="module")
def split() -> seqrec.Split:
    return seqrec.leave_one_out(markov_dataset(n_users=120, n_items=30, length=12, seed=2))


def test_fit_with_sparse_rows_resumes_like_uninterrupted(split: seqrec.Split, tmp_path: Path) -> None:
    """Checkpoints hold the row optimizer's state (row map, pools): a resumed run equals an uninterrupted one.
    The gradient norm is not clipped here: torch's clip_grad_norm_ cannot take sparse gradients."""
    cfg = seqrec.TrainConfig(epochs=3, batch_size=32, lr=5e-3, seed=3, patience=10, grad_clip=0.0,
                             item_optimizer="sparse", loss=SAMPLED)

    def run(out: Path, **kw: Any) -> list[dict[str, float]]:
        torch.manual_seed(0)
        model = create("sasrec", n_items=split.n_items, max_len=10, dim=16, n_heads=1)
        return fit(model, split, cfg, out_dir=out, progress=False, **kw).history

    def stop_after_one(row: dict[str, float]) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    full = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", on_epoch=stop_after_one)
    resumed = run(tmp_path / "b", resume=True)
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in full]
    assert [{k: v for k, v in r.items() if "seconds" not in k} for r in resumed] == strip
    assert full[-1]["loss"] < full[0]["loss"]


def test_sparse_fit_learns_beyond_popularity(split: seqrec.Split) -> None:
    # the default gradient clipping stays on: the loop clips sparse item-table gradients too
    cfg = seqrec.TrainConfig(epochs=5, batch_size=32, lr=5e-3, seed=0, patience=10,
                             item_optimizer="sparse", loss=dataclasses.replace(SAMPLED, n_negatives=16))
    torch.manual_seed(0)
    model = create("sasrec", n_items=split.n_items, max_len=10, dim=16, n_heads=1)
    result = fit(model, split, cfg, progress=False)
    popular = create("popular", n_items=split.n_items)
    baseline = fit(popular, split, cfg, progress=False)
    assert result.best_metric > 2 * baseline.best_metric


def test_cli_trains_bf16_sparse_tables_into_a_float32_artifact(tiny_log: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from seqrec.cli import main

    out = tmp_path / "model"
    assert main(["train", "--data", str(tiny_log), "--model", "sasrec", "--epochs", "1", "--dim", "8",
                 "--max-len", "10", "--quiet", "--item-optimizer", "sparse", "--item-dtype", "bfloat16",
                 "--loss", "sampled", "--negatives", "8", "--out", str(out)]) == 0
    rec = seqrec.Recommender.load(out)
    assert rec.model.tower.id_emb.weight.dtype == torch.float32  # the artifact holds what its config implies
    capsys.readouterr()
    assert main(["evaluate", str(out), "--format", "json"]) == 0
    assert "NDCG@10" in capsys.readouterr().out
    assert main(["train", "--data", str(tiny_log), "--model", "sasrec", "--epochs", "1", "--quiet",
                 "--item-dtype", "bfloat16", "--out", str(tmp_path / "bad")]) == 2


def test_learning_rate_set_on_the_groups_reaches_both_optimizers() -> None:
    """The loop sets ``lr`` on ``opt.param_groups`` every step (warm-up, cosine), also after a resume."""
    model = _model("sasrec")
    opt = make_optimizer(model, _cfg("sparse"))
    assert isinstance(opt, ItemRowsAdamW) and opt.dense is not None
    _step(model, opt, SAMPLED)
    opt.load_state_dict(opt.state_dict())
    for group in opt.param_groups:
        group["lr"] = 0.123
    assert {g["lr"] for g in opt.dense.param_groups} == {g["lr"] for g in opt.rows.param_groups} == {0.123}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_the_optimizer_sets_the_tower_mode_both_ways() -> None:
    model = _model("sasrec")
    make_optimizer(model, _cfg("sparse", item_dtype="bfloat16"))
    assert model.tower.sparse_rows and model.tower.id_emb.weight.dtype == torch.bfloat16
    opt = make_optimizer(model, _cfg("dense"))  # trained sparse, now dense: dense gradients in float32
    assert not model.tower.sparse_rows and model.tower.id_emb.weight.dtype == torch.float32
    _step(model, opt, SAMPLED)
    assert model.tower.id_emb.weight.grad is not None and not model.tower.id_emb.weight.grad.is_sparse


def test_weight_decay_never_reaches_the_item_tables() -> None:
    model = _model("gru4rec")
    opt = make_optimizer(model, dataclasses.replace(_cfg("sparse"), weight_decay=0.1))
    assert isinstance(opt, ItemRowsAdamW) and opt.dense is not None
    decayed = {id(p) for g in opt.dense.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed and not decayed & {id(t) for t in model.tower.row_tables()}
    assert "weight_decay" not in opt.rows.param_groups[0]
