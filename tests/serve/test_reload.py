"""POST /v1/admin/reload: atomic swaps under load, the admin key, and bad artifacts keeping the old model."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from seqrec.errors import SeqrecError
from seqrec.serve.settings import read_admin_key

ADMIN_KEY = "admin-key-0123456789abcdef"
ADMIN = {"X-Admin-Key": ADMIN_KEY}


@pytest.fixture(scope="module")
def second_artifact(tmp_path_factory: pytest.TempPathFactory, build_artifact: Callable[..., Path]) -> Path:
    """sasrec on the same data as the default gru4rec artifact: the same id space, another model."""
    return build_artifact(tmp_path_factory.mktemp("reload-art") / "sasrec", model="sasrec")


def version(client: TestClient) -> str:
    return str(client.get("/healthz").json()["model_version"])


def test_reload_needs_the_admin_key(make_client: Callable[..., TestClient]) -> None:
    no_key = make_client()
    r = no_key.post("/v1/admin/reload")
    assert r.status_code == 401 and "no admin key configured" in r.json()["message"]
    keyed = make_client(admin_key=ADMIN_KEY)
    assert keyed.post("/v1/admin/reload").status_code == 401
    assert keyed.post("/v1/admin/reload", headers={"X-Admin-Key": "wrong-key-0123456789"}).status_code == 401
    # the write key is not the admin key
    assert keyed.post("/v1/admin/reload", headers={"X-Admin-Key": "test-key-0123456789"}).status_code == 401


def test_admin_key_must_be_long(tmp_path: Path) -> None:
    with pytest.raises(SeqrecError, match="fewer than 16"):
        read_admin_key(None, {"SEQREC_ADMIN_KEY": "short"})
    assert read_admin_key(None, {}) is None
    (tmp_path / "k").write_text(ADMIN_KEY + "\n")
    assert read_admin_key(tmp_path / "k", {}) == ADMIN_KEY


def test_reload_swaps_the_model_and_back(make_client: Callable[..., TestClient], artifact_dir: Path,
                                          second_artifact: Path) -> None:
    client = make_client(admin_key=ADMIN_KEY)
    first = version(client)
    r = client.post("/v1/admin/reload", headers=ADMIN, json={"artifact": str(second_artifact)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["previous_version"] == first and body["model_version"].startswith("sasrec-")
    recs = client.get("/v1/users/1/recommendations?k=5")
    assert recs.headers["X-Model-Version"] == recs.json()["model_version"] == body["model_version"]
    assert version(client) == body["model_version"]
    assert 'version="' + body["model_version"] in client.get("/metrics").text
    r = client.post("/v1/admin/reload", headers=ADMIN, json={"artifact": str(artifact_dir)})
    assert r.status_code == 200 and r.json()["model_version"] == first
    r = client.post("/v1/admin/reload", headers=ADMIN)  # no body: the same artifact again
    assert r.status_code == 200 and r.json()["model_version"] == first


@pytest.mark.parametrize("damage", ["missing", "corrupt", "other_ids"])
def test_bad_reload_keeps_the_old_model(make_client: Callable[..., TestClient], artifact_dir: Path, tmp_path: Path,
                                        build_artifact: Callable[..., Path], damage: str) -> None:
    client = make_client(admin_key=ADMIN_KEY)
    before = version(client)
    target = tmp_path / "bad"
    if damage == "corrupt":
        shutil.copytree(artifact_dir, target)
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "other_ids":
        target = build_artifact(target, string_ids=True)
    r = client.post("/v1/admin/reload", headers=ADMIN, json={"artifact": str(target)})
    assert r.status_code == 422, r.text
    message = r.json()["message"]
    assert "still serving " + before in message
    if damage == "other_ids":
        assert "id space" in message
    assert version(client) == before
    recs = client.get("/v1/users/1/recommendations?k=3")
    assert recs.status_code == 200 and recs.headers["X-Model-Version"] == before


def test_requests_through_swaps_see_no_errors(make_client: Callable[..., TestClient], artifact_dir: Path,
                                              second_artifact: Path) -> None:
    client = make_client(admin_key=ADMIN_KEY)
    stop = threading.Event()
    statuses: list[int] = []
    versions: list[str] = []
    mismatched: list[tuple[str, str]] = []

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            r = (client.get(f"/v1/users/{1 + i % 40}/recommendations?k=5") if i % 2 else
                 client.post("/v1/recommendations", json={"history": [100, 101, 102], "k": 5}))
            statuses.append(r.status_code)
            if r.status_code == 200:
                versions.append(r.headers["X-Model-Version"])
                if r.json()["model_version"] != r.headers["X-Model-Version"]:
                    mismatched.append((r.json()["model_version"], r.headers["X-Model-Version"]))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for target in (second_artifact, artifact_dir, second_artifact, artifact_dir):
            seen = len(statuses)
            while len(statuses) < seen + 10 and all(t.is_alive() for t in threads):  # requests between swaps
                time.sleep(0.005)
            r = client.post("/v1/admin/reload", headers=ADMIN, json={"artifact": str(target)})
            assert r.status_code == 200, r.text
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(statuses) >= 40 and set(statuses) == {200}
    assert not mismatched
    assert {v.split("-")[0] for v in versions} == {"gru4rec", "sasrec"}


def test_reload_is_documented_only_with_an_admin_key(make_client: Callable[..., TestClient]) -> None:
    assert "/v1/admin/reload" not in make_client().get("/openapi.json").json()["paths"]
    op = make_client(admin_key=ADMIN_KEY).get("/openapi.json").json()["paths"]["/v1/admin/reload"]["post"]
    assert {"200", "401", "422"} <= set(op["responses"]) and "X-Admin-Key" in op["description"]
