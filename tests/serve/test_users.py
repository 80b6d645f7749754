"""/v1/users/{user_id}: recommendations from stored history (fresh, equal to offline) and forgetting."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from seqrec.recommender import Recommender

MakeClient = Callable[..., TestClient]


def recs(client: TestClient, user: str, **params: object) -> dict[str, Any]:
    r = client.get(f"/v1/users/{user}/recommendations", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def post(client: TestClient, auth: dict[str, str], user: str, *items: object) -> None:
    events = [{"user_id": user, "item_id": i} for i in items]
    assert client.post("/v1/events", json={"events": events}, headers=auth).status_code == 201


def offline(artifact: Path, history: list[object], k: int, exclude_seen: bool = True) -> dict[object, float]:
    frame = Recommender.load(artifact).recommend_history(history, k=k, exclude_seen=exclude_seen)
    return dict(zip(frame["item_id"].tolist(), frame["score"].tolist(), strict=True))


def served(body: dict[str, Any]) -> dict[object, float]:
    return {it["item_id"]: it["score"] for it in body["items"]}


def assert_same_scores(got: dict[object, float], want: dict[object, float]) -> None:
    """Same top-k items with the same scores (random weights: no exact ties to reorder them)."""
    assert set(got) == set(want)
    np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=0, atol=1e-5)


def artifact_history(artifact: Path, user: object) -> list[object]:
    data = Recommender.load(artifact).dataset
    assert data is not None
    row = int(data.users.to_internal([user])[0])
    return list(data.items.to_external(data.sequences.get(row)).tolist())


def test_a_known_user_gets_the_offline_recommendations(client: TestClient, artifact_dir: Path) -> None:
    body = recs(client, "1", k=10)
    history = artifact_history(artifact_dir, 1)
    assert body["history_length"] == len(history) and body["user_id"] == "1"
    assert_same_scores(served(body), offline(artifact_dir, history, 10))
    assert all(it["title"] == f"Item {it['item_id']}" for it in body["items"])
    assert not set(served(body)) & set(history)  # seen items are excluded by default


def test_served_user_recommendations_equal_recommender_recommend(client: TestClient, artifact_dir: Path) -> None:
    frame = Recommender.load(artifact_dir).recommend([1, 7], k=6)
    for user in (1, 7):
        want = frame[frame["user_id"] == user]
        assert_same_scores(served(recs(client, str(user), k=6)),
                           dict(zip(want["item_id"].tolist(), want["score"].tolist(), strict=True)))


def test_an_event_counts_at_once_and_scores_stay_offline(client: TestClient, auth: dict[str, str],
                                                          artifact_dir: Path) -> None:
    before = recs(client, "2", k=5)
    target = before["items"][0]["item_id"]
    post(client, auth, "2", target, "not-in-catalog")
    after = recs(client, "2", k=5)
    assert after["history_length"] == before["history_length"] + 1
    assert after["unknown_history_items"] == 1
    assert target not in served(after)  # the item just consumed is now "seen"
    history = [*artifact_history(artifact_dir, 2), target]
    assert_same_scores(served(after), offline(artifact_dir, history, 5))


def test_a_new_user_starts_from_posted_events(client: TestClient, auth: dict[str, str], artifact_dir: Path) -> None:
    assert client.get("/v1/users/newcomer/recommendations").status_code == 404
    post(client, auth, "newcomer", 101, 102, 103)
    body = recs(client, "newcomer", k=7, exclude_seen="false")
    assert body["history_length"] == 3
    assert_same_scores(served(body), offline(artifact_dir, [101, 102, 103], 7, exclude_seen=False))


def test_int_user_ids_match_whatever_their_spelling(client: TestClient) -> None:
    assert recs(client, "+7")["items"] == recs(client, "7")["items"]


def test_history_is_capped_at_the_most_recent_events(make_client: MakeClient, auth: dict[str, str],
                                                      artifact_dir: Path) -> None:
    client = make_client(history_cap=5)
    post(client, auth, "capped", *range(100, 112))
    body = recs(client, "capped", k=5)
    assert body["history_length"] == 5
    assert_same_scores(served(body), offline(artifact_dir, list(range(107, 112)), 5))
    assert recs(client, "1")["history_length"] == 40  # the artifact's history is not cut, as offline


def test_string_id_artifacts_serve_too(make_client: MakeClient, auth: dict[str, str],
                                       string_artifact_dir: Path) -> None:
    client = make_client(artifact=string_artifact_dir)
    post(client, auth, "user-3", "sku-120")
    body = recs(client, "user-3", k=4)
    history = [*artifact_history(string_artifact_dir, "user-3"), "sku-120"]
    assert_same_scores(served(body), offline(string_artifact_dir, history, 4))
    assert all(it["title"] is None for it in body["items"])


@pytest.mark.parametrize(("params", "status"), [
    ({"k": 0}, 422), ({"k": -3}, 422), ({"k": 10**9}, 422), ({"k": 61}, 422), ({"k": "ten"}, 422),
    ({"k": 2.5}, 422), ({"exclude_seen": "maybe"}, 422), ({"k": 60}, 200),
])
def test_bad_query_parameters_are_4xx(client: TestClient, params: dict[str, object], status: int) -> None:
    r = client.get("/v1/users/1/recommendations", params=params)
    assert r.status_code == status, r.text
    if status != 200:
        assert r.json()["error"] == "validation_error"


def test_a_user_with_only_unknown_items_gets_a_clear_422(client: TestClient, auth: dict[str, str]) -> None:
    post(client, auth, "odd", "x1", "x2")
    r = client.get("/v1/users/odd/recommendations")
    assert r.status_code == 422 and "does not know" in r.json()["message"]


def test_reads_can_require_the_key(make_client: MakeClient, auth: dict[str, str]) -> None:
    client = make_client(read_requires_key=True)
    assert client.get("/v1/users/1/recommendations").status_code == 401
    assert client.get("/v1/users/1/recommendations", headers=auth).status_code == 200
    assert client.get("/healthz").status_code == 200  # operations stay open for probes


# ---- forgetting --------------------------------------------------------------------------------
SECRET_USER = "forget-me-7Qx9Zr"
SECRET_ITEMS = [f"secret-item-{i}-Kp3vW8" for i in range(5)]


def test_delete_needs_the_key(client: TestClient, auth: dict[str, str]) -> None:
    post(client, auth, "keep", 101)
    assert client.delete("/v1/users/keep").status_code == 401
    assert client.delete("/v1/users/keep", headers={"X-API-Key": "nope"}).status_code == 401
    assert recs(client, "keep")["history_length"] == 1


def test_delete_leaves_no_trace_in_the_sqlite_files(make_client: MakeClient, auth: dict[str, str],
                                                    tmp_path: Path) -> None:
    db = tmp_path / "forget.db"
    client = make_client(store=f"sqlite:///{db}")
    post(client, auth, "neighbour", 101, 102, "neighbour-item")  # other data stays around the erased rows
    for item in [*SECRET_ITEMS, 101, 102]:
        post(client, auth, SECRET_USER, item)
    post(client, auth, "neighbour", 103)
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    assert SECRET_USER.encode() in b"".join(p.read_bytes() for p in files if p.exists())  # the test can see

    r = client.delete(f"/v1/users/{SECRET_USER}", headers=auth)
    assert r.status_code == 200 and r.json() == {"user_id": SECRET_USER, "deleted_events": 7}
    raw = b"".join(p.read_bytes() for p in files if p.exists())
    for secret in [SECRET_USER, "forget-me", *SECRET_ITEMS, "Kp3vW8"]:
        assert secret.encode() not in raw, f"{secret!r} is still on disk"
    assert client.get(f"/v1/users/{SECRET_USER}/recommendations").status_code == 404
    assert recs(client, "neighbour")["history_length"] == 3  # nobody else lost anything
    assert client.delete(f"/v1/users/{SECRET_USER}", headers=auth).json()["deleted_events"] == 0


def test_a_forgotten_training_user_loses_their_artifact_history(client: TestClient, auth: dict[str, str],
                                                                 sqlite_url: str) -> None:
    assert recs(client, "5")["history_length"] > 0
    post(client, auth, "5", 101)
    assert client.delete("/v1/users/5", headers=auth).json()["deleted_events"] == 1
    assert client.get("/v1/users/5/recommendations").status_code == 404
    raw = Path(sqlite_url.removeprefix("sqlite:///")).read_bytes()
    assert b"forgotten" in raw  # the tombstone table exists, holding a salted hash, not the id
    post(client, auth, "5", 102)  # coming back starts a fresh history
    assert recs(client, "5")["history_length"] == 1


def test_redis_store_serves_fresh_events_and_forgets(make_client: MakeClient, auth: dict[str, str],
                                                     redis_url: str) -> None:
    import redis

    client = make_client(store=redis_url)
    post(client, auth, SECRET_USER, 101, *SECRET_ITEMS)
    assert recs(client, SECRET_USER)["history_length"] == 1
    assert client.get("/healthz").json()["store"] == "redis"
    assert client.delete(f"/v1/users/{SECRET_USER}", headers=auth).json()["deleted_events"] == 6
    r = redis.Redis.from_url(redis_url)
    keys = r.keys("*")
    assert not [k for k in keys if SECRET_USER.encode() in k]
    assert not any(SECRET_USER.encode() in v for v in r.smembers("seqrec:forgotten"))
    r.close()
    assert client.get(f"/v1/users/{SECRET_USER}/recommendations").status_code == 404
