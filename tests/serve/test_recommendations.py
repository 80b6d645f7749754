"""POST /v1/recommendations (stateless), and served scores == offline scores for every model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from seqrec.data.sequences import Sequences
from seqrec.eval.evaluate import score_histories
from seqrec.models.registry import model_names
from seqrec.recommender import Recommender
from seqrec.serve.index import ScoreRequest
from seqrec.serve.schemas import MAX_HISTORY
from seqrec.serve.service import Scored, Service, build_service
from seqrec.serve.settings import ServeSettings


def test_stateless_matches_the_offline_recommender(client: TestClient, artifact_dir: Path) -> None:
    history = [110, 120, 130, 110, 140]
    r = client.post("/v1/recommendations", json={"history": history, "k": 8})
    assert r.status_code == 200
    body = r.json()
    frame = Recommender.load(artifact_dir).recommend_history(history, k=8)
    assert [it["item_id"] for it in body["items"]] == frame["item_id"].tolist()
    np.testing.assert_allclose([it["score"] for it in body["items"]], frame["score"], rtol=0, atol=1e-5)
    assert [it["title"] for it in body["items"]] == frame["title"].tolist()
    assert body["history_length"] == 5 and body["unknown_history_items"] == 0


def test_exclude_and_unknown_items(client: TestClient) -> None:
    base = client.post("/v1/recommendations", json={"history": [110, "?", "120"], "k": 5}).json()
    assert base["unknown_history_items"] == 1 and base["history_length"] == 2
    top = [it["item_id"] for it in base["items"]]
    r = client.post("/v1/recommendations", json={"history": [110, 120], "k": 5, "exclude": [*top[:2], "zzz"]})
    got = [it["item_id"] for it in r.json()["items"]]
    assert got[:3] == top[2:] and not set(got) & set(top[:2])
    seen = client.post("/v1/recommendations", json={"history": [110], "k": 60, "exclude_seen": False}).json()
    assert 110 in [it["item_id"] for it in seen["items"]] and len(seen["items"]) == 60


@pytest.mark.parametrize("body", [
    {"history": [], "k": 5},
    {"history": ["nope", "never"], "k": 5},
    {"history": [110], "k": 0},
    {"history": [110], "k": 61},
    {"history": [110], "k": 5, "exclude": 3},
    {"history": [110] * (MAX_HISTORY + 1)},
    {"history": "110"},
    {"history": [[110]]},
    {"history": [110], "user_id": "x"},
])
def test_invalid_stateless_requests_get_422(client: TestClient, body: dict[str, object]) -> None:
    r = client.post("/v1/recommendations", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error" and r.json()["message"]


@pytest.mark.parametrize("model", model_names())
def test_served_scores_equal_offline_scores_for_every_model(model: str, tmp_path: Path,
                                                            build_artifact: Callable[..., Path]) -> None:
    """The design's promise: serving and evaluation share the model's forward pass and item_table()."""
    artifact = build_artifact(tmp_path / model, model=model)
    service = build_service(ServeSettings(artifact, store=f"sqlite:///{tmp_path / 'e.db'}"))
    try:
        offline = Recommender.load(artifact)
        for history in ([105], [101, 150, 102, 103, 150], list(range(100, 130))):
            want = offline.recommend_history(history, k=10)
            got = service.recommend_history(history, k=10)
            assert_same(want, got.items)
    finally:
        service.close()


def assert_same(want: pd.DataFrame, got: list[Scored]) -> None:
    # Scores in rank order must agree; items too, except where tied scores may swap places.
    np.testing.assert_allclose([s.score for s in got], want["score"].to_numpy(), rtol=0, atol=1e-5)
    scores = want["score"].to_numpy()
    untied = [i for i in range(len(scores)) if np.sum(np.abs(scores - scores[i]) < 1e-6) == 1]
    assert [got[i].item_id for i in untied] == want["item_id"].to_numpy()[untied].tolist()


def test_a_batched_forward_pass_scores_each_history_as_alone(service: Service) -> None:
    """Micro-batching mixes lengths and options in one pass; each row must equal its lone score."""
    ix = service.index
    rng = np.random.default_rng(1)
    histories = [rng.integers(1, ix.n_items + 1, size=n) for n in (1, 3, 25, 7, 40)]
    requests = [ScoreRequest(h, k=6, exclude_seen=i % 2 == 0, banned=h[:1] if i == 3 else h[:0])
                for i, h in enumerate(histories)]
    batched = ix.score(requests)
    for req, got in zip(requests, batched, strict=True):
        alone = ix.score([req])[0]
        np.testing.assert_array_equal(got.items, alone.items)
        np.testing.assert_allclose(got.scores, alone.scores, rtol=0, atol=1e-5)
        full = score_histories(ix.model, Sequences.from_lists([req.history.tolist()]), np.zeros(1, dtype=np.int64),
                               req.exclude_seen)[0]
        full[torch.from_numpy(req.banned)] = float("-inf")
        np.testing.assert_allclose(got.scores, torch.topk(full, 6).values.numpy(), rtol=0, atol=1e-5)
