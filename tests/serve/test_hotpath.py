"""The plain-ASGI hot path answers the recommendation read and the event write exactly as FastAPI does:
every request below is sent to an app with the hot path and to one without (each on its own store), and
the status, the JSON body, the model-version header and the request metrics agree. The requests it can
prove valid it answers itself; everything else is FastAPI's to answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from seqrec.serve.api import create_app
from seqrec.serve.hotpath import HotPath
from seqrec.serve.service import build_service
from seqrec.serve.settings import ServeSettings

API_KEY = "hot-path-key-0123456789"
KEY = {"X-API-Key": API_KEY}
EVENTS, RECS = "/v1/events", "/v1/users/{}/recommendations"

# (method, path, JSON body or raw bytes, headers): answered by the hot path
ANSWERED: list[tuple[str, str, Any, dict[str, str]]] = [
    ("GET", RECS.format(1), None, {}),
    ("GET", RECS.format(1) + "?k=3", None, {}),
    ("GET", RECS.format(2) + "?k=5&exclude_seen=false", None, {}),
    ("GET", RECS.format(2) + "?exclude_seen=true&k=1", None, {}),
    ("POST", EVENTS, {"user_id": 1, "item_id": 105}, KEY),
    ("POST", EVENTS, {"user_id": "new-user", "item_id": 105, "timestamp": 1.7e9}, KEY),
    ("POST", EVENTS, {"user_id": "new-user", "item_id": "not-an-item", "timestamp": 12}, KEY),
    ("POST", EVENTS, {"events": [{"user_id": 3, "item_id": 110}, {"user_id": "ü-ser", "item_id": 999999,
                                                                   "timestamp": None}]}, KEY),
    ("GET", RECS.format("new-user"), None, {}),
    ("GET", RECS.format("%C3%BC-ser"), None, {}),
    ("GET", RECS.format("nobody-at-all"), None, {}),  # the service's 404
    ("GET", RECS.format(1) + "?k=1000", None, {}),  # k above this catalog: the service's 422
]
# ... and passed on to FastAPI: invalid, or valid in a spelling the hot path leaves to the schema
PASSED_ON: list[tuple[str, str, Any, dict[str, str]]] = [
    ("GET", RECS.format(1) + "?k=0", None, {}),
    ("GET", RECS.format(1) + "?k=abc", None, {}),
    ("GET", RECS.format(1) + "?k=1001", None, {}),
    ("GET", RECS.format(1) + "?k=03", None, {}),
    ("GET", RECS.format(1) + "?k=3&k=4", None, {}),
    ("GET", RECS.format(1) + "?exclude_seen=0", None, {}),
    ("GET", RECS.format(1) + "?other=1", None, {}),
    ("GET", RECS.format("a%01b"), None, {}),
    ("GET", RECS.format("x" * 257), None, {}),
    ("GET", RECS.format(1), b"{}", {}),
    ("POST", EVENTS, {"user_id": 1, "item_id": 105}, {}),
    ("POST", EVENTS, {"user_id": 1, "item_id": 105}, {"X-API-Key": "wrong-key-0123456789"}),
    ("POST", EVENTS, b'{"user_id": 1, "item_id": ', KEY),
    ("POST", EVENTS, b"\xff\xfe", KEY),
    ("POST", EVENTS, b"", KEY),
    ("POST", EVENTS, {"user_id": 1, "item_id": 105, "extra": 1}, KEY),
    ("POST", EVENTS, {"user_id": 1, "item_id": 7.0}, KEY),
    ("POST", EVENTS, {"user_id": 1, "item_id": 7.5}, KEY),
    ("POST", EVENTS, {"user_id": True, "item_id": 105}, KEY),
    ("POST", EVENTS, {"user_id": "", "item_id": 105}, KEY),
    ("POST", EVENTS, {"user_id": "a\nb", "item_id": 105}, KEY),
    ("POST", EVENTS, {"user_id": 2**63, "item_id": 105}, KEY),
    ("POST", EVENTS, {"user_id": 1, "item_id": 105, "timestamp": -1}, KEY),
    ("POST", EVENTS, {"user_id": 1, "item_id": 105, "timestamp": True}, KEY),
    ("POST", EVENTS, {"user_id": 1, "item_id": 105, "timestamp": "1"}, KEY),
    ("POST", EVENTS, b'{"user_id": 1, "item_id": 105, "timestamp": NaN}', KEY),
    ("POST", EVENTS, {"events": []}, KEY),
    ("POST", EVENTS, {"events": [{"user_id": 1, "item_id": 105}], "more": 1}, KEY),
    ("POST", EVENTS, [{"user_id": 1, "item_id": 105}], KEY),
    ("POST", EVENTS, {"user_id": 1, "item_id": 105}, {**KEY, "Content-Type": "text/plain"}),
]


def make_settings(artifact: Path, store: str, **overrides: Any) -> ServeSettings:
    return ServeSettings(artifact=artifact, store=store, **{"api_key": API_KEY, **overrides})


@pytest.fixture
def pair(artifact_dir: Path, tmp_path: Path) -> Iterator[tuple[TestClient, TestClient]]:
    """(with the hot path, without it): the same artifact, each its own store."""
    clients = []
    for name, hot in (("hot", True), ("plain", False)):
        settings = make_settings(artifact_dir, f"sqlite:///{tmp_path / name}.db")
        clients.append(TestClient(create_app(build_service(settings), settings, hot_path=hot)))
    with clients[0] as hot_client, clients[1] as plain_client:
        yield hot_client, plain_client


def send(client: TestClient, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any, str]:
    if body is None:
        content = None
    elif isinstance(body, bytes):
        content = body
    else:
        content = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **headers}
    r = client.request(method, path, content=content, headers=headers)
    return r.status_code, r.json() if r.content else None, r.headers["x-model-version"]


@pytest.fixture
def passed_on(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the hot path handed to FastAPI."""
    seen: list[str] = []
    original = HotPath._pass_on

    async def spy(self: HotPath, scope: Any, *args: Any) -> None:
        seen.append(scope["path"])
        await original(self, scope, *args)

    monkeypatch.setattr(HotPath, "_pass_on", spy)
    return seen


def test_the_hot_path_answers_as_fastapi_does(pair: tuple[TestClient, TestClient], passed_on: list[str]) -> None:
    hot, plain = pair
    for n, request in enumerate(ANSWERED + PASSED_ON):
        before = len(passed_on)
        got, want = send(hot, *request), send(plain, *request)
        assert got == want, request
        assert len(passed_on) - before == (n >= len(ANSWERED)), request
    statuses = {send(plain, *r)[0] for r in PASSED_ON}
    assert {401, 422} <= statuses  # refusals among them (and valid spellings left to the schema)
    assert {send(plain, *r)[0] for r in ANSWERED} == {200, 201, 404, 422}


def request_counts(client: TestClient) -> list[str]:
    return sorted(line for line in client.get("/metrics").text.splitlines()
                  if line.startswith(("seqrec_http_requests_total", "seqrec_http_request_duration_seconds_count",
                                      "seqrec_events_stored_total")))


def test_the_metrics_count_the_same_routes_and_statuses(pair: tuple[TestClient, TestClient]) -> None:
    hot, plain = pair
    for request in ANSWERED + PASSED_ON:
        send(hot, *request)
        send(plain, *request)
    counts = request_counts(hot)
    assert counts == request_counts(plain)
    assert any('route="/v1/users/{user_id}/recommendations",status="200"' in line for line in counts)
    assert not any("nobody-at-all" in line or 'route="/v1/users/1' in line for line in counts)


def test_keyed_reads_need_the_key_on_the_hot_path_too(artifact_dir: Path, tmp_path: Path,
                                                      passed_on: list[str]) -> None:
    settings = make_settings(artifact_dir, f"sqlite:///{tmp_path / 'keyed.db'}", read_requires_key=True)
    with TestClient(create_app(build_service(settings), settings)) as client:
        assert client.get(RECS.format(1)).status_code == 401 and len(passed_on) == 1
        assert client.get(RECS.format(1), headers=KEY).status_code == 200 and len(passed_on) == 1


def test_writes_without_a_configured_key_are_refused(artifact_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(artifact_dir, f"sqlite:///{tmp_path / 'nokey.db'}", api_key=None)
    with TestClient(create_app(build_service(settings), settings)) as client:
        r = client.post(EVENTS, json={"user_id": 1, "item_id": 105}, headers=KEY)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"


def test_an_event_posted_on_the_hot_path_is_read_back(pair: tuple[TestClient, TestClient]) -> None:
    hot, _ = pair
    assert hot.post(EVENTS, json={"user_id": "fresh", "item_id": 105}, headers=KEY).status_code == 201
    r = hot.get(RECS.format("fresh") + "?k=5")
    assert r.status_code == 200 and r.json()["history_length"] == 1
    assert 105 not in [item["item_id"] for item in r.json()["items"]]  # seen items are left out
    history = hot.get("/v1/users/fresh/history", headers=KEY).json()
    assert [item["item_id"] for item in history["items"]] == [105]
