"""The browser page at / and the docs at /docs over plain HTTP: served from this server's own
files (no other origin named anywhere), under a Content-Security-Policy; and the two keyed reads the page
uses, GET /v1/users and GET /v1/users/{user_id}/history."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

from fastapi.testclient import TestClient

from seqrec.serve.routes.page import PAGE_DIR

ClientFactory = Callable[..., TestClient]
N_USERS = 41  # the tiny artifact's users (conftest: 1..40, and 41 who saw every item)
_URL_ATTR = re.compile(r'(?:src|href)="([^"]*)"')


def local_urls(html: str) -> list[str]:
    urls = _URL_ATTR.findall(html)
    assert urls
    return urls


def csp(response: object) -> dict[str, list[str]]:
    header = response.headers["content-security-policy"]  # type: ignore[attr-defined]
    return {d.split()[0]: d.split()[1:] for d in (part.strip() for part in header.split(";")) if d}


# ---- the page ----------------------------------------------------------------------------------------------
def test_the_page_and_its_assets_are_served_from_this_origin_only(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    policy = csp(r)
    assert policy["default-src"] == ["'none'"] and policy["script-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    assert "<script>" not in r.text and " style=" not in r.text  # nothing inline: the policy allows none
    urls = local_urls(r.text)
    assert {"page/app.js", "page/style.css", "docs"} <= set(urls)
    for url in urls:
        assert not re.match(r"^[a-z]+://|^//", url), url  # relative: no other origin
        if not url.startswith("data:"):
            assert client.get(f"/{url}").status_code == 200, url
    js, css = client.get("/page/app.js"), client.get("/page/style.css")
    assert js.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert css.headers["content-type"].startswith("text/css")
    assert js.headers["x-content-type-options"] == "nosniff"
    for asset in (js.text, css.text):
        assert "://" not in asset  # no address of another origin in the code either


def test_the_page_never_puts_the_key_in_a_url_nor_api_text_in_html() -> None:
    js = (PAGE_DIR / "app.js").read_text()
    assert "sessionStorage" in js and "localStorage" not in js  # the key lives as long as the tab
    assert '"X-API-Key"' in js
    assert "innerHTML" not in js and "outerHTML" not in js and "insertAdjacentHTML" not in js
    # every request path the page builds: none carries the key
    paths = re.findall(r"api\(\s*`([^`]*)`", js) + re.findall(r'api\(\s*"([^"]*)"', js)
    assert paths and not any("key" in p.lower() for p in paths), paths


def test_the_page_and_docs_are_not_api_operations(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert not paths & {"/", "/docs"} and not any(p.startswith(("/page", "/docs-assets")) for p in paths)


# ---- the docs ----------------------------------------------------------------------------------------------
def test_the_docs_load_every_asset_from_this_server(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and "SwaggerUIBundle" in r.text
    spec = re.search(r"url: '([^']*)'", r.text)  # the OpenAPI document it renders
    assert spec is not None and spec.group(1) == "/openapi.json"
    for url in [*local_urls(r.text), spec.group(1)]:
        assert url.startswith("/") and not url.startswith("//"), url
        got = client.get(url)
        assert got.status_code == 200 and got.content, url
    assert '"validatorUrl": null' in r.text  # no badge from the public validator
    policy = csp(r)
    assert policy["default-src"] == ["'none'"] and policy["connect-src"] == ["'self'"]
    # the one inline start-up script is allowed by its hash, and only it
    inline = re.findall(r"<script>(.*?)</script>", r.text, re.DOTALL)
    hashes = [f"'sha256-{base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()}'" for code in inline]
    assert policy["script-src"] == ["'self'", *hashes]
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    assert policy["style-src"] == ["'self'"]
    assert client.get("/redoc").status_code == 404  # ReDoc's bundle loads its logo from a CDN: not served


# ---- GET /v1/users -----------------------------------------------------------------------------------------
def test_users_are_listed_in_pages_with_the_key_only(client: TestClient, auth: dict[str, str]) -> None:
    r = client.get("/v1/users")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    known = client.app.state.service.index.users.external  # type: ignore[attr-defined]
    assert len(known) == N_USERS
    first = client.get("/v1/users", params={"limit": 15}, headers=auth).json()
    assert first == {"users": known[:15], "next_offset": 15}
    rest = client.get("/v1/users", params={"limit": 100, "offset": 15}, headers=auth).json()
    assert rest == {"users": known[15:], "next_offset": None}
    assert client.get("/v1/users", params={"offset": 10**6}, headers=auth).json() == {"users": [],
                                                                                     "next_offset": None}
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "x"}):
        assert client.get("/v1/users", params=bad, headers=auth).status_code == 422, bad


def test_a_forgotten_user_is_not_listed(client: TestClient, auth: dict[str, str]) -> None:
    known = client.app.state.service.index.users.external  # type: ignore[attr-defined]
    assert client.delete(f"/v1/users/{known[1]}", headers=auth).status_code == 200
    page = client.get("/v1/users", params={"limit": 5}, headers=auth).json()
    assert page == {"users": [known[0], *known[2:5]], "next_offset": 5}  # a short page; the offsets go on


def test_users_stay_keyed_on_a_server_with_keyed_reads(make_client: ClientFactory, auth: dict[str, str]) -> None:
    client = make_client(read_requires_key=True)
    assert client.get("/v1/users").status_code == 401
    assert client.get("/v1/users", headers=auth).status_code == 200


# ---- GET /v1/users/{user_id}/history ---------------------------------------------------------------------
def test_the_history_has_titles_and_grows_with_an_event(client: TestClient, auth: dict[str, str]) -> None:
    assert client.get("/v1/users/2/history").status_code == 401
    before = client.get("/v1/users/2/history", params={"limit": 1000}, headers=auth).json()
    index = client.app.state.service.index  # type: ignore[attr-defined]
    expected = [index.items.external_of(i) for i in index.artifact_history(index.users.internal("2")).tolist()]
    assert [i["item_id"] for i in before["items"]] == expected and before["history_length"] == len(expected)
    assert all(i["title"] == f"Item {i['item_id']}" for i in before["items"])
    assert client.post("/v1/events", json={"events": [{"user_id": "2", "item_id": 107},
                                                      {"user_id": "2", "item_id": "not-an-item"}]},
                       headers=auth).status_code == 201
    after = client.get("/v1/users/2/history", params={"limit": 2}, headers=auth).json()
    assert after["user_id"] == "2" and after["history_length"] == len(expected) + 1
    assert after["items"] == [{"item_id": expected[-1], "title": f"Item {expected[-1]}"},
                              {"item_id": 107, "title": "Item 107"}]  # the last two, oldest first
    assert after["unknown_history_items"] == 1


def test_the_history_of_a_user_without_one_is_404(client: TestClient, auth: dict[str, str]) -> None:
    r = client.get("/v1/users/nobody/history", headers=auth)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert client.get("/v1/users/2/history", params={"limit": 0}, headers=auth).status_code == 422
    assert client.get("/v1/users/2/history", params={"limit": 1001}, headers=auth).status_code == 422


def test_the_history_without_titles_falls_back_to_ids(make_client: ClientFactory, string_artifact_dir: object,
                                                      auth: dict[str, str]) -> None:
    client = make_client(artifact=string_artifact_dir)
    body = client.get("/v1/users/user-3/history", headers=auth).json()
    assert body["items"] and all(i["title"] is None and i["item_id"].startswith("sku-") for i in body["items"])
