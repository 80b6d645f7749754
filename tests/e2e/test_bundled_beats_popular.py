"""End to end on the bundled MovieLens data: lstm and gru4rec beat the popularity baseline."""

from __future__ import annotations

import pytest

import seqrec


@pytest.fixture(scope="module")
def movielens() -> tuple[seqrec.Dataset, seqrec.Split, float]:
    data = seqrec.load_dataset("movielens-latest-small")
    split = seqrec.leave_one_out(data)
    popular = seqrec.Recommender("popular")
    popular.fit(data, split, progress=False)
    return data, split, popular.evaluate(ks=(10,))["NDCG@10"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gru4rec", "lstm"])
def test_recurrent_models_beat_popular_on_bundled_movielens(model: str, movielens) -> None:  # type: ignore[no-untyped-def]
    data, split, popular_ndcg = movielens
    cfg = seqrec.TrainConfig(epochs=5, batch_size=128, lr=1e-2, patience=5, seed=0, device="cpu")
    rec = seqrec.Recommender(model, cfg, max_len=50)
    rec.fit(data, split, progress=False)
    ours = rec.evaluate(ks=(10,))["NDCG@10"]
    assert ours > popular_ndcg, f"{model} NDCG@10 {ours:.4f} <= popular {popular_ndcg:.4f}"
