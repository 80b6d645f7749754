"""Property: whatever a client sends, every endpoint answers with a JSON 2xx/4xx, never a 500.

The TestClient re-raises server exceptions, so a crash fails the example outright.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqrec.serve.api import create_app
from seqrec.serve.service import build_service
from seqrec.serve.settings import ServeSettings

KEY = "fuzz-key"
# database=None: no .hypothesis/ folder left in the work tree
FUZZ = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
# ids: mostly plausible (catalog ints, short strings), sometimes anything at all
ids = st.integers(90, 170) | st.integers() | st.text(max_size=300) | json_values
events = st.fixed_dictionaries({"user_id": ids, "item_id": ids},
                               optional={"timestamp": st.floats(allow_nan=False, allow_infinity=False) | scalars,
                                         "junk": scalars})
ks = st.integers(-5, 80) | st.integers() | st.text(max_size=8) | st.floats(allow_nan=False, allow_infinity=False)


@pytest.fixture(scope="module")
def fuzz_client(artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    db = tmp_path_factory.mktemp("fuzz") / "events.db"
    cfg = ServeSettings(artifact_dir, store=f"sqlite:///{db}", api_key=KEY, max_body_bytes=64 * 1024)
    with TestClient(create_app(build_service(cfg), cfg)) as client:
        yield client


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    if r.status_code >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body.get("message"), body


def seg(text: str) -> str:
    return quote(text, safe="")


@FUZZ
@given(body=json_values | events | st.fixed_dictionaries({"events": st.lists(events, max_size=30) | json_values}))
def test_post_events(fuzz_client: TestClient, body: Any) -> None:
    check(fuzz_client.post("/v1/events", json=body, headers={"X-API-Key": KEY}))


@FUZZ
@given(body=json_values | st.fixed_dictionaries(
    {"history": st.lists(ids, max_size=20) | json_values},
    optional={"k": ks | scalars, "exclude": st.lists(ids, max_size=5) | json_values, "exclude_seen": scalars}))
def test_post_recommendations(fuzz_client: TestClient, body: Any) -> None:
    check(fuzz_client.post("/v1/recommendations", json=body))


@FUZZ
@given(user=st.text(min_size=1, max_size=300) | st.integers().map(str), k=ks,
       exclude_seen=st.sampled_from(["true", "false", "1", "no", "maybe", ""]))
def test_get_user_recommendations(fuzz_client: TestClient, user: str, k: Any, exclude_seen: str) -> None:
    check(fuzz_client.get(f"/v1/users/{seg(user)}/recommendations", params={"k": k, "exclude_seen": exclude_seen}))


@FUZZ
@given(item=st.text(min_size=1, max_size=300) | st.integers(90, 170).map(str), k=ks)
def test_get_similar(fuzz_client: TestClient, item: str, k: Any) -> None:
    check(fuzz_client.get(f"/v1/items/{seg(item)}/similar", params={"k": k}))


@FUZZ
@given(user=st.text(min_size=1, max_size=300), key=st.sampled_from([KEY, "wrong", ""]))
def test_delete_user(fuzz_client: TestClient, user: str, key: str) -> None:
    check(fuzz_client.delete(f"/v1/users/{seg(user)}", headers={"X-API-Key": key}))


@FUZZ
@given(raw=st.binary(max_size=200), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_raw_bytes_bodies(fuzz_client: TestClient, raw: bytes, content_type: str) -> None:
    headers = {"X-API-Key": KEY, "Content-Type": content_type}
    check(fuzz_client.post("/v1/events", content=raw, headers=headers))
    check(fuzz_client.post("/v1/recommendations", content=raw, headers=headers))
