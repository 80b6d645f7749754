"""The seams are real: a new item feature and a new loss plug in without touching models/ or the loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seqrec
from seqrec.datasets.synthetic import markov_dataset
from seqrec.items.tower import ItemTable, ItemTower, TowerConfig
from seqrec.losses import LOSSES, LossConfig, LossInputs
from seqrec.models.registry import build_model, make_config
from seqrec.scoring import catalog_scores
from seqrec.train.config import TrainConfig
from seqrec.train.loop import fit


class CategoryTower(ItemTower):
    """Toy item feature: every item has one of a few categories, embedded and added to its id vector."""

    def __init__(self, config: TowerConfig, category: torch.Tensor, n_categories: int) -> None:
        super().__init__(config)
        self.category: torch.Tensor
        self.register_buffer("category", category)  # (N + 1,) category of each item, 0 for padding
        self.category_emb = nn.Embedding(n_categories, config.dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) + self.category_emb(self.category[ids])

    def table(self) -> ItemTable:
        weight, bias = super().table()
        return ItemTable(weight + self.category_emb(self.category), bias)


def smoothed_ce(x: LossInputs) -> torch.Tensor:
    """Toy loss: full-catalog cross-entropy with label smoothing, scored by the one scorer."""
    smoothed_ce.calls += 1  # type: ignore[attr-defined]
    logits = catalog_scores(x.query, x.table)[:, 1:]  # padding column dropped: label smoothing spreads over items
    return F.cross_entropy(logits, x.targets - 1, label_smoothing=0.1)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_a_toy_feature_and_a_toy_loss_train_through_the_unchanged_loop(name: str, monkeypatch: pytest.MonkeyPatch
                                                                      ) -> None:
    monkeypatch.setitem(LOSSES, "smoothed", smoothed_ce)
    smoothed_ce.calls = 0  # type: ignore[attr-defined]
    data = markov_dataset(n_users=120, n_items=30, length=12)
    split = seqrec.leave_one_out(data)
    params = {"dim": 16, "hidden": 16} if name == "gru4rec" else {"dim": 16}
    config = make_config(name, n_items=data.n_items, max_len=12, **params)
    torch.manual_seed(0)
    category = torch.arange(data.n_items + 1) % 4
    default = build_model(name, config)
    tower_config = default.tower.config
    tower = CategoryTower(tower_config, category, n_categories=4)
    model = build_model(name, config, tower=tower)
    before = tower.category_emb.weight.detach().clone()
    cfg = TrainConfig(epochs=2, batch_size=32, device="cpu", loss=LossConfig(name="smoothed"))
    result = fit(model, split, cfg, progress=False)
    assert smoothed_ce.calls > 0  # type: ignore[attr-defined]
    assert not torch.allclose(tower.category_emb.weight, before)  # the feature was trained
    assert result.history and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    # Evaluation and scoring see the feature: the catalog table includes the category vectors.
    with torch.no_grad():
        weight = model.item_table().weight
        expected = tower.id_emb.weight[: data.n_items + 1] if tower_config.output == "tied" else None
        if expected is not None:
            torch.testing.assert_close(weight, expected + tower.category_emb(category))
    assert 0.0 <= result.best_metric <= 1.0


def test_an_unknown_loss_names_the_nearest() -> None:
    with pytest.raises(seqrec.SeqrecError, match="sampled"):
        LossConfig(name="sampeld")
