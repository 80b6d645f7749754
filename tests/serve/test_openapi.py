"""The OpenAPI document tells the truth: every status each operation can answer, the key on the writes
and the reads open unless the server says otherwise, strict JSON types, the catalog's bound on k; and
schemathesis, run against a live `seqrec serve`, finds no disagreement between document and server."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from seqrec.serve.schemas import INT64_MAX, INT64_MIN

ClientFactory = Callable[..., TestClient]
N_ITEMS = 60  # the tiny artifact's catalog (conftest.N_ITEMS)
KEY = "openapi-key-0123456789"  # 16+ characters: `seqrec serve` refuses shorter keys

READS = {("/v1/users/{user_id}/recommendations", "get"), ("/v1/recommendations", "post"),
         ("/v1/items/{item_id}/similar", "get")}
WRITES = {("/v1/events", "post"), ("/v1/users/{user_id}", "delete"), ("/v1/items/{item_id}", "put")}
KEYED_READS = {("/v1/users", "get"), ("/v1/users/{user_id}/history", "get")}  # user ids: keyed on every server
OPEN = {("/healthz", "get"), ("/metrics", "get")}
# every status each operation can answer, besides 401 on the reads of a server with --read-requires-key
STATUSES = {
    ("/v1/events", "post"): {"201", "400", "401", "413", "422", "503"},
    ("/v1/users/{user_id}", "delete"): {"200", "401", "413", "422", "503"},
    ("/v1/items/{item_id}", "put"): {"200", "201", "400", "401", "409", "413", "422", "503"},
    ("/v1/users/{user_id}/recommendations", "get"): {"200", "404", "413", "422", "503"},
    ("/v1/recommendations", "post"): {"200", "400", "413", "422"},
    ("/v1/items/{item_id}/similar", "get"): {"200", "404", "413", "422"},
    ("/v1/users", "get"): {"200", "401", "409", "413", "422", "503"},  # 409: ids pseudonymised
    ("/v1/users/{user_id}/history", "get"): {"200", "401", "404", "413", "422", "503"},
    ("/healthz", "get"): {"200", "413", "503"},
    ("/metrics", "get"): {"200", "413"},
}


def spec_of(client: TestClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec: dict[str, Any] = r.json()
    return spec


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(path, method): op for path, ops in spec["paths"].items() for method, op in ops.items()}


def test_every_status_an_operation_answers_is_documented_with_the_error_body(client: TestClient) -> None:
    ops = operations(spec_of(client))
    assert set(ops) == READS | WRITES | KEYED_READS | OPEN
    for key, op in ops.items():
        assert set(op["responses"]) == STATUSES[key], key
        for status, response in op["responses"].items():
            assert response["description"], (key, status)
            assert response["headers"]["X-Model-Version"]["required"] is True  # every response carries it
            if status >= "400":
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
    # the 422 of a schema-valid request with ids the model does not know is described where it happens
    assert "none of the history items is known" in ops[("/v1/recommendations", "post")]["responses"]["422"][
        "description"]
    assert "items the model does not know" in ops[("/v1/users/{user_id}/recommendations", "get")]["responses"][
        "422"]["description"]


def test_writes_need_the_key_and_reads_are_open_by_design(client: TestClient, auth: dict[str, str]) -> None:
    spec = spec_of(client)
    ops = operations(spec)
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["in"] == "header"
    assert "open on this server, by design" in spec["info"]["description"]
    for key in WRITES | KEYED_READS:
        assert ops[key]["security"] == [{"APIKeyHeader": []}], key
        assert "Needs the `X-API-Key` header" in ops[key]["description"]
    for key in READS:
        assert "security" not in ops[key], key
        assert "open on this server, by design" in ops[key]["description"], key
    for key in OPEN:
        assert "security" not in ops[key] and "Always open" in ops[key]["description"]
    # and the server does what the document says
    assert client.get("/v1/users/1/recommendations").status_code == 200
    assert client.post("/v1/recommendations", json={"history": [105]}).status_code == 200
    assert client.get("/v1/items/105/similar").status_code == 200
    assert client.post("/v1/events", json={"user_id": "w", "item_id": 105}).status_code == 401
    assert client.delete("/v1/users/w").status_code == 401
    assert client.delete("/v1/users/w", headers=auth).status_code == 200


def test_with_read_requires_key_the_reads_are_keyed_in_the_document_too(make_client: ClientFactory,
                                                                        auth: dict[str, str]) -> None:
    client = make_client(read_requires_key=True)
    spec = spec_of(client)
    ops = operations(spec)
    assert "--read-requires-key" in spec["info"]["description"] and "open on this server" not in spec["info"][
        "description"]
    for key in READS | WRITES:
        assert ops[key]["security"] == [{"APIKeyHeader": []}], key
        assert set(ops[key]["responses"]) == STATUSES[key] | {"401"}, key
    for key in OPEN | KEYED_READS:
        assert set(ops[key]["responses"]) == STATUSES[key], key
    for key in OPEN:
        assert "security" not in ops[key]
    r = client.get("/v1/users/1/recommendations")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert client.get("/v1/users/1/recommendations", headers=auth).status_code == 200
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("raw", [b'{"user_id": "\xff", "item_id": 105}', b"L\xd1", b"[" * 5000])
def test_an_undecodable_body_is_the_documented_400(client: TestClient, auth: dict[str, str], raw: bytes) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    for path in ("/v1/events", "/v1/recommendations"):
        r = client.post(path, content=raw, headers=headers)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"] == "bad_request" and r.json()["message"]
    assert client.post("/v1/events", content=b"{not json", headers=headers).status_code == 422  # as documented


@pytest.mark.parametrize("event", [
    {"user_id": "s", "item_id": 105, "timestamp": False},
    {"user_id": "s", "item_id": 105, "timestamp": True},
    {"user_id": "s", "item_id": 105, "timestamp": "1700000000"},
    {"user_id": True, "item_id": 105},
    {"user_id": "s", "item_id": False},
    {"user_id": "s", "item_id": 105.5},
])
def test_booleans_and_strings_are_not_numbers(client: TestClient, auth: dict[str, str],
                                              event: dict[str, Any]) -> None:
    r = client.post("/v1/events", json=event, headers=auth)
    assert r.status_code == 422, r.text
    assert client.post("/v1/events", json={"events": [event]}, headers=auth).status_code == 422


@pytest.mark.parametrize("body", [{"history": [105], "k": True}, {"history": [105], "k": "5"},
                                  {"history": [105], "k": 2.5}, {"history": [105], "exclude_seen": 1},
                                  {"history": [105], "exclude_seen": "true"}, {"history": [True]}])
def test_stateless_requests_take_json_types_strictly(client: TestClient, body: dict[str, Any]) -> None:
    assert client.post("/v1/recommendations", json=body).status_code == 422


def test_an_integer_is_any_json_number_without_a_fraction(client: TestClient, auth: dict[str, str]) -> None:
    """As in JSON Schema, whose "integer" the document uses: 105.0 is the integer 105."""
    r = client.post("/v1/events", json={"user_id": 7007.0, "item_id": 105.0, "timestamp": 1700000000},
                    headers=auth)
    assert r.status_code == 201 and r.json()["unknown_items"] == 0, r.text
    body = client.get("/v1/users/7007/recommendations", params={"k": 3}).json()
    assert body["history_length"] == 1
    r = client.post("/v1/recommendations", json={"history": [105.0], "k": 3.0})
    assert r.status_code == 200 and len(r.json()["items"]) == 3


def test_k_is_bounded_by_the_catalog_in_the_document_and_the_server(client: TestClient) -> None:
    ops = operations(spec_of(client))

    def k_max(key: tuple[str, str]) -> int:
        (k,) = [p for p in ops[key]["parameters"] if p["name"] == "k"]
        return int(k["schema"]["maximum"])

    assert k_max(("/v1/users/{user_id}/recommendations", "get")) == N_ITEMS
    assert k_max(("/v1/items/{item_id}/similar", "get")) == N_ITEMS - 1  # never the item itself
    assert spec_of(client)["components"]["schemas"]["HistoryRecommendationIn"]["properties"]["k"]["maximum"] == N_ITEMS
    assert client.get("/v1/users/1/recommendations", params={"k": N_ITEMS}).status_code == 200
    assert client.get("/v1/users/1/recommendations", params={"k": N_ITEMS + 1}).status_code == 422
    assert client.get("/v1/items/105/similar", params={"k": N_ITEMS - 1}).status_code == 200
    assert client.get("/v1/items/105/similar", params={"k": N_ITEMS}).status_code == 422
    assert client.post("/v1/recommendations", json={"history": [105], "k": N_ITEMS}).status_code == 200
    assert client.post("/v1/recommendations", json={"history": [105], "k": N_ITEMS + 1}).status_code == 422


def test_integer_id_bounds_are_exact_int64(client: TestClient, auth: dict[str, str]) -> None:
    """FastAPI writes bounds as floats, and float(2**63 - 1) == 2**63: the document must not say 2**63 is fine."""
    raw = client.get("/openapi.json").text
    assert str(INT64_MAX) in raw and str(INT64_MIN) in raw and "e+18" not in raw
    assert client.post("/v1/events", json={"user_id": "b", "item_id": INT64_MAX}, headers=auth).status_code == 201
    assert client.post("/v1/events", json={"user_id": "b", "item_id": INT64_MAX + 1}, headers=auth).status_code == 422


def test_the_examples_are_ids_this_model_knows_and_no_user_id(client: TestClient) -> None:
    spec = spec_of(client)
    ops = operations(spec)
    (item,) = [p for p in ops[("/v1/items/{item_id}/similar", "get")]["parameters"] if p["name"] == "item_id"]
    assert client.get(f"/v1/items/{item['example']}/similar").status_code == 200
    (example,) = spec["components"]["schemas"]["HistoryRecommendationIn"]["examples"]
    r = client.post("/v1/recommendations", json=example)
    assert r.status_code == 200 and r.json()["unknown_history_items"] == 0
    user = ops[("/v1/users/{user_id}/recommendations", "get")]["parameters"][0]
    assert user["name"] == "user_id" and "example" not in user and "examples" not in user


# ---- schemathesis against a live server ---------------------------------------------------------------
# What the schema cannot say: whether an id is one this model knows. A schema-valid history of unknown
# items, or a user whose events are all on unknown items, is answered with the documented 422, so for those
# two operations 422 is an expected answer to schema-valid data. User ids are drawn half the time from
# training users (1..41), so the 200 answers are checked too, not only 404s.
SCHEMATHESIS_CONFIG = """
[dictionaries]
users = { values = ["1", "2", "3", "41"] }

[[operations]]
include-path = "/v1/users/{user_id}/recommendations"
parameters = { "path.user_id" = { dictionary = "users", probability = 0.5 } }
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "422"]

[[operations]]
include-path = "/v1/recommendations"
checks.positive_data_acceptance.expected-statuses = ["2xx", "422"]
"""
MAX_EXAMPLES = 30  # per operation and phase: ~650 requests, a few seconds
SEED = 20260101


@pytest.mark.schemathesis
def test_schemathesis_finds_no_disagreement_with_the_live_server(artifact_dir: Path, tmp_path: Path, free_port: int,
                                                                 serve_process: Callable[..., subprocess.Popen[bytes]]
                                                                 ) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    junit = tmp_path / "schemathesis.xml"
    proc = serve_process(artifact_dir, free_port, tmp_path / "events.db", KEY)
    try:
        cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
               f"http://127.0.0.1:{free_port}/openapi.json", "-H", f"X-API-Key: {KEY}", "--checks", "all",
               "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
               "--request-timeout", "10", "--report", "junit", "--report-junit-path", str(junit)]
        # cwd: tmp_path, so neither a schemathesis.toml nor a report folder of the work tree is involved
        run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                             env={**os.environ, "NO_COLOR": "1"})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, out
    cases = ET.parse(junit).getroot().findall(".//testcase")
    tested = {case.get("name") for case in cases}
    assert {f"{method.upper()} {path}" for path, method in STATUSES} <= tested, out  # every operation
    assert all(case.find("failure") is None and case.find("error") is None for case in cases), out
