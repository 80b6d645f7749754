"""POST /v1/events: single and batch, unknown items, the API key, and size limits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from seqrec.errors import SeqrecError
from seqrec.serve.schemas import MAX_EVENTS
from seqrec.serve.settings import read_api_key

MakeClient = Callable[..., TestClient]


def history_length(client: TestClient, user: str) -> int:
    r = client.get(f"/v1/users/{user}/recommendations", params={"k": 1})
    return int(r.json()["history_length"]) if r.status_code == 200 else 0


def test_one_event_and_a_batch_are_stored(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/v1/events", json={"user_id": "alice", "item_id": 105}, headers=auth)
    assert r.status_code == 201
    assert r.json() == {"accepted": 1, "unknown_items": 0, "unknown_item_ids": []}
    batch = {"events": [{"user_id": "alice", "item_id": "106", "timestamp": 1.7e9},
                        {"user_id": "bob", "item_id": 107}]}
    r = client.post("/v1/events", json=batch, headers=auth)
    assert r.status_code == 201 and r.json()["accepted"] == 2
    assert history_length(client, "alice") == 2
    assert history_length(client, "bob") == 1


def test_unknown_items_are_accepted_counted_and_not_scored(client: TestClient, auth: dict[str, str]) -> None:
    batch = {"events": [{"user_id": "carol", "item_id": 105}, {"user_id": "carol", "item_id": "brand-new"},
                        {"user_id": "carol", "item_id": "brand-new"}, {"user_id": "carol", "item_id": 99999}]}
    r = client.post("/v1/events", json=batch, headers=auth)
    assert r.status_code == 201
    assert r.json() == {"accepted": 4, "unknown_items": 2, "unknown_item_ids": ["brand-new", "99999"]}
    body = client.get("/v1/users/carol/recommendations").json()
    assert body["history_length"] == 1 and body["unknown_history_items"] == 3
    metrics = client.get("/metrics").text
    assert "seqrec_events_stored_total 4" in metrics
    assert "seqrec_events_unknown_item_total 3" in metrics


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}, {"X-API-Key": "test-key"}])
def test_missing_or_wrong_key_is_401_and_writes_nothing(client: TestClient, headers: dict[str, str]) -> None:
    r = client.post("/v1/events", json={"user_id": "mallory", "item_id": 105}, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"
    assert r.headers["WWW-Authenticate"] == "ApiKey"
    assert client.get("/v1/users/mallory/recommendations").status_code == 404


def test_a_server_without_a_key_refuses_every_write(make_client: MakeClient, auth: dict[str, str]) -> None:
    client = make_client(api_key=None)
    r = client.post("/v1/events", json={"user_id": "x", "item_id": 105}, headers=auth)
    assert r.status_code == 401 and "no API key configured" in r.json()["message"]
    assert client.get("/v1/users/1/recommendations").status_code == 200  # reads stay open


def test_the_key_file_and_env_var_feed_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file-0123456789\n")
    assert read_api_key(key_file, {"SEQREC_API_KEY": "from-env-0123456789"}) == "from-file-0123456789"
    assert read_api_key(None, {"SEQREC_API_KEY": " from-env-0123456789 "}) == "from-env-0123456789"
    assert read_api_key(None, {}) is None
    key_file.write_text("  \n")
    with pytest.raises(SeqrecError, match="is empty"):
        read_api_key(key_file, {})
    with pytest.raises(SeqrecError, match="cannot read"):
        read_api_key(tmp_path / "absent", {})


@pytest.mark.parametrize("body", [
    {"user_id": "u"},  # no item
    {"user_id": "u", "item_id": 1, "extra": 1},  # unknown field
    {"user_id": None, "item_id": 1},
    {"user_id": 1.5, "item_id": 1},
    {"user_id": True, "item_id": 1},
    {"user_id": "", "item_id": 1},
    {"user_id": "a\nb", "item_id": 1},  # control characters
    {"user_id": "u" * 257, "item_id": 1},
    {"user_id": "u", "item_id": 2**64},
    {"user_id": "u", "item_id": 1, "timestamp": -1},
    {"user_id": "u", "item_id": 1, "timestamp": "yesterday"},
    {"events": []},
    {"events": [{"user_id": "u", "item_id": 1}] * (MAX_EVENTS + 1)},
    [{"user_id": "u", "item_id": 1}],
    "text",
])
def test_invalid_events_get_422_and_write_nothing(client: TestClient, auth: dict[str, str], body: object) -> None:
    r = client.post("/v1/events", json=body, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error" and r.json()["message"]
    assert history_length(client, "u") == 0


def test_nan_timestamp_and_broken_json_get_422(client: TestClient, auth: dict[str, str]) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    for raw in (b'{"user_id": "u", "item_id": 1, "timestamp": NaN}', b'{"user_id": "u", ', b"\xff\xfe"):
        r = client.post("/v1/events", content=raw, headers=headers)
        assert r.status_code == 422, r.text


def test_oversized_bodies_get_413_before_parsing(make_client: MakeClient, auth: dict[str, str]) -> None:
    client = make_client(max_body_bytes=4096)
    events = {"events": [{"user_id": "big", "item_id": 105}] * 200}  # ~7 KB
    r = client.post("/v1/events", json=events, headers=auth)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts bytes as they come
        yield b'{"events": ['
        for _ in range(300):
            yield b'{"user_id": "big", "item_id": 105},'
        yield b'{"user_id": "big", "item_id": 105}]}'

    r = client.post("/v1/events", content=chunks(), headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert history_length(client, "big") == 0
