"""PUT /v1/items/{item_id}: an item embedded from its attributes/text by a feature or text model, recommendable
from the next request, kept in the store across a restart and a kill -9; an id-only model refuses."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from seqrec.artifact import Artifact, load_artifact, save_artifact
from seqrec.data.features import ItemFeaturesConfig
from seqrec.data.preprocess import build_dataset
from seqrec.items.features import build_with_tower, prepare_tower
from seqrec.items.new_items import feature_tower_of, new_items_from_frame, scores_with_new_items
from seqrec.models.registry import make_config
from seqrec.serve import new_items

KEY = "new-items-key-0123456789"
FIRST_ITEM, N_ITEMS, MAX_LEN = 100, 60, 20
ClientFactory = Callable[..., TestClient]  # the conftest fixture make_client
ServeProcess = Callable[..., subprocess.Popen[bytes]]  # the conftest fixture serve_process


def tiny_frame() -> pd.DataFrame:
    """30 users over items 100..159, and one user who has seen every item, so the catalog is exactly N_ITEMS."""
    rng = np.random.default_rng(0)
    rows = [(u, int(i), t) for u in range(1, 31) for t, i in
            enumerate(rng.integers(FIRST_ITEM, FIRST_ITEM + N_ITEMS, size=int(rng.integers(3, 15))))]
    rows += [(31, FIRST_ITEM + n, 100 + n) for n in range(N_ITEMS)]
    return pd.DataFrame(rows, columns=["user", "item", "time"])


class HashEncoder:
    """A tiny deterministic text encoder (the sentence encoder is not needed to test the plumbing)."""

    name = "hash-4"
    dim = 4

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.array([[(hash_bytes(t)[i] - 127.5) / 128 for i in range(self.dim)] for t in texts], dtype=np.float32)
        return out


def hash_bytes(text: str) -> bytes:
    import hashlib

    return hashlib.sha256(text.encode()).digest()


def build_feature_artifact(path: Path, mode: str = "features") -> Path:
    """A tiny sasrec artifact whose items are embedded from a 'kind' attribute (and a title, for text)."""
    frame = tiny_frame()
    data = build_dataset(frame, name="tiny")
    folder = path.parent
    feats, text = folder / "features.csv", folder / "text.csv"
    ids = list(range(FIRST_ITEM, FIRST_ITEM + N_ITEMS))
    feats.write_text("item_id,kind\n" + "".join(f"{i},k{i % 4}\n" for i in ids))
    text.write_text("item_id,title\n" + "".join(f"{i},thing {i % 7}\n" for i in ids))
    config = ItemFeaturesConfig(item_features=str(feats) if "features" in mode else None,
                                item_text=str(text) if "text" in mode else None, item_mode=mode)
    inputs = prepare_tower(config, data.items, HashEncoder(), folder / "cache")
    torch.manual_seed(0)
    model = build_with_tower("sasrec", make_config("sasrec", n_items=data.n_items, max_len=MAX_LEN, dim=16, n_heads=2,
                                                   n_layers=1), inputs.spec, inputs.features, inputs.text)
    return Path(save_artifact(path, Artifact("sasrec", model.eval(), data)))


@pytest.fixture
def feature_artifact(tmp_path: Path) -> Path:
    return build_feature_artifact(tmp_path / "feat")


def _recommended(client: TestClient | httpx.Client, history: list[int], k: int = N_ITEMS) -> dict[object, float]:
    r = client.post("/v1/recommendations", json={"history": history, "k": k})
    assert r.status_code == 200, r.text
    return {item["item_id"]: item["score"] for item in r.json()["items"]}


def test_put_item_is_recommendable_from_the_next_request(make_client: ClientFactory, feature_artifact: Path,
                                                         auth: dict[str, str]) -> None:
    client = make_client(artifact=feature_artifact)
    history = [FIRST_ITEM, FIRST_ITEM + 1]
    assert 999 not in _recommended(client, history)
    assert client.put("/v1/items/999", json={"fields": {"kind": "k1"}}).status_code == 401  # a write: keyed
    r = client.put("/v1/items/999", json={"fields": {"kind": "k1"}, "title": "Brand new"}, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["created"] is True and r.json()["n_items"] == N_ITEMS + 1
    assert r.json()["model_version"].endswith(tuple("0123456789abcdef")) and "+1items-" in r.json()["model_version"]
    scores = _recommended(client, history, N_ITEMS + 1)
    assert 999 in scores
    # the same id again replaces its fields (200); its score follows the new attribute
    r = client.put("/v1/items/999", json={"fields": {"kind": "k2"}}, headers=auth)
    assert r.status_code == 200 and r.json()["created"] is False and r.json()["n_items"] == N_ITEMS + 1
    assert _recommended(client, history, N_ITEMS + 1)[999] != scores[999]
    # an event on the new item counts in the user's history from now on
    assert client.post("/v1/events", json={"user_id": "fresh", "item_id": 999}, headers=auth).status_code == 201
    body = client.get("/v1/users/fresh/recommendations").json()
    assert body["history_length"] == 1 and body["unknown_history_items"] == 0


@pytest.mark.parametrize(("item", "body", "status", "message"), [
    (FIRST_ITEM, {"fields": {"kind": "k1"}}, 409, "in the model's training catalog"),
    (998, {"fields": {"colour": "red"}}, 422, "no column 'kind'"),
    ("sku", {"fields": {"kind": "k1"}}, 422, "item ids are integers"),
])
def test_bad_items_are_one_line_4xx(make_client: ClientFactory, feature_artifact: Path, auth: dict[str, str],
                                    item: object, body: dict[str, object], status: int, message: str) -> None:
    r = make_client(artifact=feature_artifact).put(f"/v1/items/{item}", json=body, headers=auth)
    assert r.status_code == status and message in r.json()["message"], r.text
    assert "\n" not in r.json()["message"]


def test_an_id_only_model_refuses(client: TestClient, auth: dict[str, str]) -> None:
    r = client.put("/v1/items/999", json={"fields": {"title": "x"}}, headers=auth)
    assert r.status_code == 409 and "embeds item ids only" in r.json()["message"]
    assert r.json()["error"] == "conflict"


def test_text_model_scores_the_added_item_as_offline(make_client: ClientFactory, tmp_path: Path,
                                                     auth: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(new_items, "encoder_factory", lambda spec: HashEncoder())
    path = build_feature_artifact(tmp_path / "text", "text")
    client = make_client(artifact=path)
    assert client.put("/v1/items/fresh-1", json={"fields": {"title": "thing 3"}}, headers=auth).status_code == 422
    r = client.put("/v1/items/1234", json={"fields": {"title": "thing 3"}}, headers=auth)
    assert r.status_code == 201, r.text
    history = [FIRST_ITEM + 5, FIRST_ITEM + 9]
    served = _recommended(client, history, N_ITEMS + 1)[1234]
    art = load_artifact(path)
    frame = pd.DataFrame([{"title": "thing 3"}], index=pd.Index(["1234"], name="item_id"))
    spec = feature_tower_of(art.model).spec
    new = new_items_from_frame(frame, spec, art.dataset.items, "test", encoder=HashEncoder())
    internal = [int(i) for i in art.dataset.items.to_internal(history)]
    offline = scores_with_new_items(art.model, internal, new)[-1]
    assert served == pytest.approx(float(offline), rel=1e-5, abs=1e-6)


def test_an_added_item_survives_kill_9(feature_artifact: Path, tmp_path: Path, free_port: int,
                                       serve_process: ServeProcess) -> None:
    db, base = tmp_path / "events.db", f"http://127.0.0.1:{free_port}"
    proc = serve_process(feature_artifact, free_port, db, KEY)
    try:
        r = httpx.put(f"{base}/v1/items/4242", json={"fields": {"kind": "k3"}}, headers={"X-API-Key": KEY})
        assert r.status_code == 201, r.text
        with httpx.Client(base_url=base) as http:
            assert 4242 in _recommended(http, [FIRST_ITEM], N_ITEMS + 1)
    finally:
        proc.send_signal(signal.SIGKILL)  # no shutdown hook: only what the store had made durable
        proc.wait(timeout=10)
    proc = serve_process(feature_artifact, free_port, db, KEY)
    try:
        with httpx.Client(base_url=base) as http:
            assert 4242 in _recommended(http, [FIRST_ITEM], N_ITEMS + 1)
            assert http.get("/healthz").json()["n_items"] == N_ITEMS + 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_added_items_are_kept_by_each_store_kind(feature_artifact: Path, store_url: str) -> None:
    from seqrec.serve.service import build_service
    from seqrec.serve.settings import ServeSettings

    settings = ServeSettings(artifact=feature_artifact, store=store_url, api_key=KEY)
    service = build_service(settings)
    try:
        added = new_items.put_item(service, 777, {"kind": "k0"})
        assert added.created and service.index.n_items == N_ITEMS + 1
        version = service.version
    finally:
        service.close()
    again = build_service(settings)  # a restart: the store's items are applied to the artifact again
    try:
        assert again.index.n_items == N_ITEMS + 1 and again.version == version
        assert again.index.items.internal("777") == N_ITEMS + 1
        old, new = again.reload()  # a reload keeps them too
        assert old == new == version
    finally:
        again.close()
