"""The FastAPI application: routers, error bodies, and one ASGI middleware for the cross-cutting
parts (body-size limit, model-version header, request metrics)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seqrec.serve.index import ServedModel
from seqrec.serve.metrics import Metrics
from seqrec.serve.routes import admin, events, items, ops, recommendations, users
from seqrec.serve.routes.deps import API_KEY_HEADER, CLIENT_GONE, EVERY_ROUTE_ERRORS, KEY_ERRORS, ClientGone, ReadKey
from seqrec.serve.routes.page import mount_pages
from seqrec.serve.schemas import INT64_MAX, INT64_MIN, MAX_K
from seqrec.serve.service import Invalid, NotFound, ReloadFailed, ServeError, Service
from seqrec.serve.settings import ServeSettings
from seqrec.serve.store import StoreError

MODEL_VERSION_HEADER = "X-Model-Version"
_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "payload_too_large", 422: "validation_error", 503: "store_unavailable"}
# nginx's "client closed request": counted in the metrics for a request dropped because its client left;
# never sent (there is nobody to send it to), so not in the OpenAPI document.
CLIENT_CLOSED = 499

WRITE_ROUTERS = (events.router, users.writes, items.writes)
PRIVATE_ROUTERS = (users.private,)  # reads that list user ids or show a history: always keyed
READ_ROUTERS = (users.reads, recommendations.router, items.router)
OPEN_ROUTERS = (ops.router,)
ADMIN_ROUTERS = (admin.router,)

READS_OPEN = (f"**open on this server, by design**: they answer without a key (the server runs without "
              f"`--read-requires-key`; an `{API_KEY_HEADER}` header sent with them is ignored).")
READS_KEYED = (f"this server runs with `--read-requires-key`, so they need the `{API_KEY_HEADER}` header too "
               "(the `APIKeyHeader` security scheme).")


def _description(reads: str) -> str:
    return f"""Next-item recommendations from a trained seqrec artifact.

* **Writes** (`POST /v1/events`, `DELETE /v1/users/{{user_id}}`, `PUT /v1/items/{{item_id}}`) need the
  `{API_KEY_HEADER}` header (the `APIKeyHeader` security scheme); a server started without a key answers every
  write with `401`.
* **Reads** (`GET /v1/users/{{user_id}}/recommendations`, `POST /v1/recommendations`,
  `GET /v1/items/{{item_id}}/similar`): {reads}
* **Keyed reads** (`GET /v1/users`, `GET /v1/users/{{user_id}}/history`) list user ids and show what a user
  did, so they need the `{API_KEY_HEADER}` header on every server.
* `/healthz` and `/metrics` are always open. The browser page at `/` uses these routes.
* Every response carries `X-Model-Version` (model name + hash of its weights).
* Errors are JSON: `{{"error": code, "message": text, "details": [...]}}`. Any route answers `413` to a body
  larger than `--max-body-bytes`; each operation lists the other statuses it can answer.
* A recommendation request whose client disconnects before it is scored is dropped unscored (the metrics
  count it under status `{CLIENT_CLOSED}`; no answer is sent).
"""


def create_app(service: Service, settings: ServeSettings, hot_path: bool = True) -> FastAPI:
    """``hot_path=False`` leaves every route to FastAPI (see seqrec.serve.hotpath; for comparisons)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        on_sighup = _reload_on_sighup(service)
        yield
        if on_sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        service.close()

    keyed_reads = settings.read_requires_key
    app = FastAPI(title="seqrec", version="1", lifespan=lifespan, responses=EVERY_ROUTE_ERRORS,
                  description=_description(READS_KEYED if keyed_reads else READS_OPEN),
                  docs_url=None, redoc_url=None)  # mount_pages serves both from local files
    app.state.service = service
    app.state.settings = settings
    for router in (*WRITE_ROUTERS, *PRIVATE_ROUTERS, *OPEN_ROUTERS):
        app.include_router(router)
    admin_on = settings.admin_key is not None
    for router in ADMIN_ROUTERS:  # documented only where it can work; without an admin key it answers 401
        app.include_router(router, include_in_schema=admin_on)
    for router in READ_ROUTERS:  # keyed only when the server says so: the document shows the access in force
        app.include_router(router, dependencies=[ReadKey] if keyed_reads else [],
                           responses=KEY_ERRORS if keyed_reads else None)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_middleware(ServingMiddleware, metrics=service.metrics, version=lambda: service.version,
                       max_body=settings.max_body_bytes)
    if hot_path:  # outermost: answers the two hot routes itself, before the serving middleware and routing
        from seqrec.serve.hotpath import HotPath

        app.add_middleware(HotPath, service=service, settings=settings)
    _document(app, service.index, keyed_reads, admin_on)
    mount_pages(app)
    return app


def _reload_on_sighup(service: Service) -> bool:
    """SIGHUP reloads the served artifact (in a thread: the loop keeps answering). False where the loop
    cannot take signals (not the main thread, as under a test client, or no SIGHUP on this platform)."""
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            old, new = service.reload()
            print(f"seqrec serve: SIGHUP: reloaded {service.artifact}: {old} -> {new}", file=sys.stderr, flush=True)
        except ServeError as exc:
            print(f"seqrec serve: SIGHUP: {exc}", file=sys.stderr, flush=True)

    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, reload))
    except (AttributeError, NotImplementedError, RuntimeError, ValueError):
        return False
    return True


def _document(app: FastAPI, index: ServedModel, keyed_reads: bool, admin: bool = False) -> None:
    """What FastAPI cannot know from the route signatures, added to the OpenAPI document once:
    ``k``'s bound by this artifact's catalog (a larger k is answered 422), item ids this model knows
    as examples (item ids only: user ids stay out of a document anyone may read), each read's access
    on this server, the ``X-Model-Version`` header every response carries, and the JSON error body of
    every error answer (also on /metrics, whose own answer is text)."""
    generate = app.openapi
    n_items, known = index.n_items, index.items.external[:3]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        paths = spec["paths"]
        bounds = {("/v1/users/{user_id}/recommendations", "get"): n_items,
                  ("/v1/items/{item_id}/similar", "get"): n_items - 1}  # the item itself is never similar
        for (path, method), bound in bounds.items():
            (k,) = [p for p in paths[path][method]["parameters"] if p["name"] == "k"]
            k["schema"]["maximum"] = min(MAX_K, bound)
        (item,) = [p for p in paths["/v1/items/{item_id}/similar"]["get"]["parameters"] if p["name"] == "item_id"]
        item["example"] = str(known[0])
        body = spec["components"]["schemas"]["HistoryRecommendationIn"]
        body["properties"]["k"]["maximum"] = min(MAX_K, n_items)
        body["examples"] = [{"history": known, "k": min(3, n_items)}]
        access = {**_operations(READ_ROUTERS, READS_KEYED if keyed_reads else READS_OPEN),
                  **_operations(WRITE_ROUTERS, f"Needs the `{API_KEY_HEADER}` header."),
                  **_operations(PRIVATE_ROUTERS, f"Needs the `{API_KEY_HEADER}` header on every server: user ids "
                                "and histories, which the open reads never list."),
                  **_operations(OPEN_ROUTERS, "Always open."),
                  **(_operations(ADMIN_ROUTERS, "Needs the `X-Admin-Key` header (the admin key).") if admin else {})}
        for (path, method), text in access.items():
            operation = paths[path][method]
            operation["description"] = f"{operation.get('description', '')}\n\n**Access**: {text}".lstrip()
        _exact_int_bounds(spec)
        header = {"description": "the served model: its name and the first 16 hex digits of the sha256 of its "
                  "weights", "required": True, "schema": {"type": "string"}}
        error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
        for operations in paths.values():
            for operation in operations.values():
                for status, response in operation["responses"].items():
                    response.setdefault("headers", {})[MODEL_VERSION_HEADER] = header
                    if status >= "400":  # JSON whatever the route's own media type (/metrics: text)
                        response["content"] = error_body
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _exact_int_bounds(node: Any) -> None:
    """FastAPI's OpenAPI model holds bounds as floats, and float(2**63 - 1) is 2**63: put the integer ids'
    int64 bounds back exactly, so a client that trusts the document never sends 2**63 (refused with 422)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("minimum", "maximum"):
                value = node.get(key)
                if isinstance(value, float) and value.is_integer():
                    node[key] = _INT64_BOUNDS.get(value, int(value))
        for child in node.values():
            _exact_int_bounds(child)
    elif isinstance(node, list):
        for child in node:
            _exact_int_bounds(child)


_INT64_BOUNDS = {float(INT64_MAX): INT64_MAX, float(INT64_MIN): INT64_MIN}


def _operations(routers: tuple[APIRouter, ...], text: str) -> dict[tuple[str, str], str]:
    return {(route.path, method.lower()): text for router in routers for route in router.routes
            if isinstance(route, APIRoute) for method in route.methods or ()}


def error(status: int, message: str, details: list[dict[str, Any]] | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": _CODES.get(status, "http_error"), "message": message, "details": details}
    return JSONResponse(body, status_code=status, headers=headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Drop pydantic's "input" and "ctx": they echo the request back and may not be JSON-able.
    details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                "type": str(e.get("type", ""))} for e in exc.errors()]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    return error(422, f"{'.'.join(first['loc']) or 'request'}: {first['msg']}", details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), headers=dict(exc.headers) if exc.headers else None)


async def _serve_error(_: Request, exc: Exception) -> JSONResponse:
    status = 404 if isinstance(exc, NotFound) else 422 if isinstance(exc, Invalid | ReloadFailed) else 400
    return error(getattr(exc, "status", status), str(exc))  # a ServeError may name its own (409: a conflict)


async def _store_error(_: Request, exc: Exception) -> JSONResponse:
    return error(503, str(exc))


async def _client_gone(_: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED)  # the server drops it: the connection is closed


class ServingMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): cheaper per request, and it sees the final status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, version: Callable[[], str], max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.version = version  # the model served now (a reload changes it)
        self.header_name = MODEL_VERSION_HEADER.lower().encode()
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the outer error middleware sends if the app raises

        async def send_with_header(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(name == self.header_name for name, _ in headers):  # a scored answer names its own
                    headers.append((self.header_name, self.version().encode()))
                message["headers"] = headers
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if body is None:
                response = error(413, f"request body larger than {self.max_body} bytes; send smaller batches")
                await response(scope, receive, send_with_header)
            else:
                await self.app(scope, replay_body(body, receive), send_with_header)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(scope["method"], route, status, time.perf_counter() - start)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the limit (checked before reading when declared).
        A client that has already disconnected is marked in the scope, so its request is not scored."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                scope[CLIENT_GONE] = True  # the app sees the body read so far and the disconnect
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that first gives the whole ``body`` (already read), then the client's later messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as the server's would

    return replay
