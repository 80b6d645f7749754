"""DP-SGD's batched path (per-user gradients on the rows each user touches) gives the reference path's
clipped sum, clips each user, and trains through fit with the accountant's epsilon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("opacus")
from opacus.accountants import RDPAccountant

from seqrec.data.features import Column, FeatureSchema, FeatureTensors
from seqrec.data.split import Split, leave_one_out
from seqrec.datasets.synthetic import markov_dataset
from seqrec.errors import SeqrecError
from seqrec.items.features import TowerSpec, build_with_tower
from seqrec.losses import LossConfig, NegativeSampler
from seqrec.models.base import SequenceModel
from seqrec.models.registry import build_model, make_config
from seqrec.privacy import dp, touched
from seqrec.train.config import PrivacyConfig, TrainConfig
from seqrec.train.loop import fit

N_USERS, N_ITEMS = 40, 30
NEGATIVES = torch.tensor([3, 7, 7, 11, 20, 1])  # a repeat and ids users hold: accidental hits are masked


class FixedNegatives(NegativeSampler):
    """Always the same draw, so both paths score the same negatives."""

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        return NEGATIVES.clone().view(shape)


def setup(model: str, **extra: Any) -> tuple[SequenceModel, dp.UserWindows, TrainConfig, Split]:
    data = markov_dataset(n_users=N_USERS, n_items=N_ITEMS, length=12)
    split = leave_one_out(data)
    torch.manual_seed(0)
    params: dict[str, Any] = {"max_len": 5, "dim": 8, "n_heads": 1, "n_layers": 1, "dropout": 0.0, **extra}
    net = build_model(model, make_config(model, n_items=data.n_items, **params))
    cfg = TrainConfig(epochs=2, lr=1e-2, device="cpu", loss=LossConfig(name="sampled", n_negatives=6),
                      privacy=PrivacyConfig(epsilon=4.0, clip=0.05, batch_users=16))
    return net, dp.UserWindows(split.train, 5, True), cfg, split


@pytest.mark.parametrize(("model", "extra"), [("sasrec", {}), ("sasrec", {"tie_embeddings": False}),
                                               ("sasrec", {"lowpass": 0.5, "lowpass_window": 3}), ("hstu", {})])
@pytest.mark.parametrize("logq", [True, False])
def test_batched_path_gives_the_reference_clipped_sum(model: str, extra: dict[str, object], logq: bool) -> None:
    net, windows, cfg, _ = setup(model, **extra)
    cfg = TrainConfig(loss=LossConfig(name="sampled", n_negatives=6, logq=logq), privacy=cfg.privacy, device="cpu")
    assert touched.supported(net, cfg)
    params = [p for p in net.parameters() if p.requires_grad]
    sampler = FixedNegatives(N_ITEMS, "uniform")
    users = np.arange(0, N_USERS, 2)
    net.eval()
    ref, ref_losses = dp.clipped_sum(net, windows, users, params, cfg, sampler, torch.Generator())
    rows = touched.TouchedRows(net, params, windows)
    fast, norms, losses = rows.clipped_sum(users, NEGATIVES, sampler, logq, cfg.privacy.clip)
    assert max(norms) > cfg.privacy.clip  # the clip binds for some users
    for a, b in zip(ref, fast, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert sorted(losses) == pytest.approx(sorted(ref_losses), rel=1e-5)


TEXT_DIM = 6
SCHEMA = FeatureSchema((Column("brand", "cat", ("a", "b", "c"), width=2), Column("price", "num")))


def feature_model(mode: str, **extra: Any) -> SequenceModel:
    """A tiny sasrec whose item tower reads public per-item data: random text vectors (the last column the
    "no text" flag) and/or one two-valued categorical column and one numeric column."""
    gen = torch.Generator().manual_seed(1)
    rows = N_ITEMS + 1
    text = torch.cat([torch.randn(rows, TEXT_DIM, generator=gen), torch.zeros(rows, 1)], dim=1)
    text[0] = 0.0
    cat = torch.randint(0, 5, (rows, 2), generator=gen)
    cat[0] = 0
    num = torch.cat([torch.randn(rows, 1, generator=gen), torch.zeros(rows, 1)], dim=1)
    uses_text = "text" in mode
    spec = TowerSpec(mode, schema=SCHEMA if "features" in mode else FeatureSchema(),
                     text_dim=TEXT_DIM if uses_text else 0)
    torch.manual_seed(0)
    config = make_config("sasrec", n_items=N_ITEMS, max_len=5, dim=8, n_heads=1, n_layers=1, dropout=0.0, **extra)
    return build_with_tower("sasrec", config, spec, FeatureTensors([cat], num), text if uses_text else None)


@pytest.mark.parametrize("mode", ["text", "id+text", "features", "features+text"])
@pytest.mark.parametrize("extra", [{}, {"tie_embeddings": False}])
def test_feature_towers_give_the_reference_clipped_sum(mode: str, extra: dict[str, object]) -> None:
    _, windows, cfg, _ = setup("sasrec")
    net = feature_model(mode, **extra)
    assert touched.supported(net, cfg)
    rows = touched.TouchedRows(net, [p for p in net.parameters() if p.requires_grad], windows)
    assert rows.buffer_names and (bool(rows.row_names) == mode.startswith("id"))
    params = [p for p in net.parameters() if p.requires_grad]
    sampler = FixedNegatives(N_ITEMS, "uniform")
    users = np.arange(0, N_USERS, 2)
    net.eval()
    ref, ref_losses = dp.clipped_sum(net, windows, users, params, cfg, sampler, torch.Generator())
    fast, norms, losses = rows.clipped_sum(users, NEGATIVES, sampler, cfg.loss.logq, cfg.privacy.clip)
    assert max(norms) > cfg.privacy.clip  # the clip binds for some users
    shared = [n for n, p in net.named_parameters() if p.requires_grad and "tower." in n and p.shape[0] != N_ITEMS + 1]
    assert shared  # the projection (and attribute embeddings) are trained and shared by every item
    for a, b in zip(ref, fast, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert sorted(losses) == pytest.approx(sorted(ref_losses), rel=1e-5)
    for u in range(4):  # one user alone: their whole contribution is within the clip
        total, one, _ = rows.clipped_sum(np.array([u]), NEGATIVES, sampler, True, cfg.privacy.clip)
        norm = float(torch.stack([(g ** 2).sum() for g in total]).sum().sqrt())
        assert norm <= cfg.privacy.clip * (1 + 1e-5)
        assert norm == pytest.approx(min(one[0], cfg.privacy.clip), rel=1e-4)


def test_text_tower_trains_on_the_batched_path() -> None:
    net = feature_model("text")
    _, _, cfg, split = setup("sasrec")
    proj = net.tower.text_proj
    assert isinstance(proj, torch.nn.Linear)
    before = proj.weight.detach().clone()
    result = fit(net, split, cfg, progress=False)
    assert result.privacy["per_user_gradients"] == "batched, touched rows"
    assert not torch.equal(proj.weight, before)


def test_each_users_batched_contribution_is_clipped() -> None:
    net, windows, _, _ = setup("sasrec")
    params = [p for p in net.parameters() if p.requires_grad]
    rows = touched.TouchedRows(net, params, windows)
    sampler = NegativeSampler(N_ITEMS, "uniform")
    for clip in (1e-3, 1e6):
        for u in range(6):
            total, norms, _ = rows.clipped_sum(np.array([u]), NEGATIVES, sampler, True, clip)
            norm = float(torch.stack([(g ** 2).sum() for g in total]).sum().sqrt())
            assert norm <= clip * (1 + 1e-5)
            assert norm == pytest.approx(min(norms[0], clip), rel=1e-4)


def test_local_ids_renumber_each_row() -> None:
    ids = torch.tensor([[0, 5, 9, 5, 2], [0, 0, 7, 7, 7]])
    rows, local = touched.local_ids(ids)
    assert torch.equal(torch.gather(rows, 1, local), ids)
    assert rows.shape == (2, 4) and rows[0].tolist() == [0, 2, 5, 9] and rows[1].tolist() == [0, 7, 0, 0]
    assert local[:, 0].tolist() == [0, 0]  # the padding row stays local row 0


def test_fit_takes_the_batched_path_and_reaches_epsilon() -> None:
    net, _, cfg, split = setup("sasrec")
    result = fit(net, split, cfg, progress=False)
    assert result.privacy["per_user_gradients"] == "batched, touched rows"
    plan = dp.plan(cfg, N_USERS)
    ref = RDPAccountant()
    for _ in range(2 * plan.steps_per_epoch):
        ref.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
    assert result.privacy["epsilon"] == pytest.approx(ref.get_epsilon(delta=plan.delta))
    assert result.privacy["epsilon"] <= 4.0 * 1.01


@pytest.mark.parametrize(("model", "loss"), [("sasrec", LossConfig()), ("gru4rec", LossConfig(name="sampled"))])
def test_other_losses_and_recurrent_models_take_the_reference_path(model: str, loss: LossConfig) -> None:
    extra: dict[str, Any] = {"hidden": 8} if model == "gru4rec" else {"n_heads": 1}
    net = build_model(model, make_config(model, n_items=N_ITEMS, max_len=5, dim=8, **extra))
    assert not touched.supported(net, TrainConfig(loss=loss))


def test_popularity_negatives_are_refused() -> None:
    net, _, cfg, split = setup("sasrec")
    cfg = TrainConfig(epochs=1, device="cpu", loss=LossConfig(name="sampled", sampler="popularity"),
                      privacy=cfg.privacy)
    with pytest.raises(SeqrecError, match="popularity negatives"):
        fit(net, split, cfg, progress=False)


def test_resume_on_the_batched_path_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    net, _, cfg, split = setup("sasrec", dropout=0.3)  # dropout draws inside vmap come from the seeded stream
    straight: list[dict[str, float]] = []
    fit(net, split, cfg, tmp_path / "a", progress=False, on_epoch=straight.append)

    class Killed(Exception):
        pass

    def die(row: dict[str, float]) -> None:
        raise Killed  # after the first epoch's checkpoint

    with pytest.raises(Killed):
        fit(setup("sasrec", dropout=0.3)[0], split, cfg, tmp_path / "b", progress=False, on_epoch=die)
    net3 = setup("sasrec", dropout=0.3)[0]
    resumed: list[dict[str, float]] = []
    fit(net3, split, cfg, tmp_path / "b", resume=True, progress=False, on_epoch=resumed.append)
    assert [r["epoch"] for r in resumed] == [2] and resumed[0]["epsilon"] == straight[1]["epsilon"]
    for a, b in zip(net.state_dict().values(), net3.state_dict().values(), strict=True):
        assert torch.equal(a, b)
