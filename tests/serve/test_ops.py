"""/healthz, /metrics, the model-version header, and the OpenAPI document."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from fastapi.testclient import TestClient


def expected_version(artifact: Path) -> str:
    return "gru4rec-" + hashlib.sha256((artifact / "model.safetensors").read_bytes()).hexdigest()[:16]


def test_healthz(client: TestClient, artifact_dir: Path) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "model": "gru4rec", "model_version": expected_version(artifact_dir),
                        "n_items": 60, "n_users": 41, "store": "sqlite"}


def test_every_response_names_the_model_version(client: TestClient, artifact_dir: Path,
                                                auth: dict[str, str]) -> None:
    version = expected_version(artifact_dir)
    responses = [client.get("/healthz"), client.get("/metrics"), client.get("/v1/users/1/recommendations"),
                 client.get("/v1/users/nobody/recommendations"), client.get("/no/such/route"),
                 client.post("/v1/events", json={}), client.post("/v1/events", json={"user_id": 1, "item_id": 2},
                                                                  headers=auth),
                 client.post("/v1/recommendations", json={"history": [105]}), client.get("/v1/items/105/similar")]
    assert [r.headers.get("X-Model-Version") for r in responses] == [version] * len(responses)
    assert {r.status_code for r in responses} >= {200, 201, 401, 404}


def test_metrics_count_requests_by_route_and_time_them(client: TestClient, auth: dict[str, str]) -> None:
    for _ in range(3):
        client.get("/v1/users/1/recommendations")
    client.get("/v1/users/nobody-at-all/recommendations")
    client.post("/v1/events", json={"user_id": "m", "item_id": 105}, headers=auth)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    route = 'route="/v1/users/{user_id}/recommendations"'
    assert f'seqrec_http_requests_total{{method="GET",{route},status="200"}} 3' in text
    assert f'seqrec_http_requests_total{{method="GET",{route},status="404"}} 1' in text
    assert f'seqrec_http_request_duration_seconds_count{{method="GET",{route}}} 4' in text
    assert f'seqrec_http_request_duration_seconds_bucket{{method="GET",{route},le="+Inf"}} 4' in text
    assert "seqrec_events_stored_total 1" in text
    assert "nobody-at-all" not in text  # labels are route templates, never user ids
    assert re.search(r'^seqrec_model_info\{model="gru4rec",version="gru4rec-[0-9a-f]{16}",store="sqlite"\} 1$',
                     text, re.M)
    assert re.search(r"^seqrec_score_batch_size_count [1-9]", text, re.M)
    # every sample line is "name{labels} value" or "name value"
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{([a-z_]+="[^"]*",?)+\})? [0-9.e+-]+', line), line


def test_histogram_buckets_are_cumulative(client: TestClient) -> None:
    for _ in range(5):
        client.get("/healthz")
    text = client.get("/metrics").text
    counts = [int(m) for m in re.findall(r'seqrec_http_request_duration_seconds_bucket\{method="GET",'
                                         r'route="/healthz",le="[^"]+"\} (\d+)', text)]
    assert counts == sorted(counts) and counts[-1] == 5


def test_openapi_documents_every_route_and_the_key(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/v1/events", "/v1/users/{user_id}/recommendations", "/v1/users/{user_id}",
                                  "/v1/users", "/v1/users/{user_id}/history",
                                  "/v1/recommendations", "/v1/items/{item_id}/similar", "/v1/items/{item_id}",
                                  "/healthz", "/metrics"}
    scheme = spec["components"]["securitySchemes"]["APIKeyHeader"]
    assert {k: scheme[k] for k in ("type", "in", "name")} == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert "--read-requires-key" in scheme["description"]  # reads are open by design unless the server says so
    post_events = spec["paths"]["/v1/events"]["post"]
    assert {"201", "401", "413", "422"} <= set(post_events["responses"])
    assert post_events["security"] == [{"APIKeyHeader": []}]
    schemas = spec["components"]["schemas"]
    assert {"EventIn", "EventBatchIn", "EventsOut", "HistoryRecommendationIn", "RecommendationsOut",
            "UserRecommendationsOut", "SimilarItemsOut", "ForgetOut", "HealthOut", "ErrorOut"} <= set(schemas)
    assert client.get("/docs").status_code == 200
