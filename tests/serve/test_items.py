"""GET /v1/items/{item_id}/similar: cosine neighbours of the model's item embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from seqrec.recommender import Recommender


def test_similar_items_are_the_cosine_nearest(client: TestClient, artifact_dir: Path) -> None:
    r = client.get("/v1/items/105/similar", params={"k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["item_id"] == 105 and len(body["items"]) == 5

    rec = Recommender.load(artifact_dir)
    assert rec.model is not None and rec.dataset is not None
    emb = rec.model.item_table().weight.detach().numpy()[1:]  # (N, D), row 0 (padding) dropped
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    me = int(rec.dataset.items.to_internal([105])[0]) - 1
    cos = unit @ unit[me]
    cos[me] = -np.inf
    best = np.argsort(-cos)[:5]
    assert [it["item_id"] for it in body["items"]] == rec.dataset.items.external[best].tolist()
    np.testing.assert_allclose([it["score"] for it in body["items"]], cos[best], rtol=0, atol=1e-5)
    assert 105 not in [it["item_id"] for it in body["items"]]
    assert body["items"][0]["title"] == f"Item {body['items'][0]['item_id']}"


def test_the_whole_catalog_but_the_item_itself(client: TestClient) -> None:
    items = client.get("/v1/items/105/similar", params={"k": 59}).json()["items"]
    assert len({it["item_id"] for it in items}) == 59


@pytest.mark.parametrize(("path", "status"), [
    ("/v1/items/99999/similar", 404), ("/v1/items/sku-1/similar", 404),
    ("/v1/items/105/similar?k=60", 422), ("/v1/items/105/similar?k=0", 422),
    ("/v1/items/105/similar?k=1e3", 422), ("/v1/items/105/similar?k=1001", 422),
])
def test_unknown_items_and_bad_k(client: TestClient, path: str, status: int) -> None:
    r = client.get(path)
    assert r.status_code == status, r.text
    assert r.json()["error"] in ("not_found", "validation_error")
