"""The FastAPI application: routers, error bodies, and one ASGI middleware for the cross-cutting
parts (body-size limit, model-version header, request metrics)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seqrec.serve.metrics import Metrics
from seqrec.serve.routes import events, items, ops, recommendations, users
from seqrec.serve.service import Invalid, NotFound, ServeError, Service
from seqrec.serve.settings import ServeSettings
from seqrec.serve.store import StoreError

MODEL_VERSION_HEADER = "X-Model-Version"
_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
          422: "validation_error", 503: "store_unavailable"}

DESCRIPTION = """Next-item recommendations from a trained seqrec artifact.

* Writes (`POST /v1/events`, `DELETE /v1/users/{user_id}`) need the `X-API-Key` header.
* Every response carries `X-Model-Version` (model name + hash of its weights).
* Errors are JSON: `{"error": code, "message": text, "details": [...]}`.
"""


def create_app(service: Service, settings: ServeSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="seqrec", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.state.settings = settings
    for module in (events, users, recommendations, items, ops):
        app.include_router(module.router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_middleware(ServingMiddleware, metrics=service.metrics, version=service.version,
                       max_body=settings.max_body_bytes)
    return app


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
    status = 404 if isinstance(exc, NotFound) else 422 if isinstance(exc, Invalid) else 400
    return error(status, str(exc))


async def _store_error(_: Request, exc: Exception) -> JSONResponse:
    return error(503, str(exc))


class ServingMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): cheaper per request, and it sees the final status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, version: str, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.header = (MODEL_VERSION_HEADER.lower().encode(), version.encode())
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
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if body is None:
                response = error(413, f"request body larger than {self.max_body} bytes; send smaller batches")
                await response(scope, receive, send_with_header)
            else:
                await self.app(scope, _replay(body, receive), send_with_header)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(scope["method"], route, status, time.perf_counter() - start)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the limit (checked before reading when declared)."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # client went away; the app sees an empty body and the disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as the server's would

    return replay
