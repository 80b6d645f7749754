"""The two routes a live shop calls most, answered in plain ASGI in front of the FastAPI app.

``GET /v1/users/{user_id}/recommendations`` and ``POST /v1/events`` make up nearly all of a service's
traffic, and FastAPI's per-request machinery (routing, dependency resolution, pydantic validation of the
query and the body, the exception middleware) costs more CPU than the rest of such a request. :class:`HotPath`
sits outermost in the app's middleware and answers exactly these two routes itself, for requests it can
prove valid with a few type and bound checks: the key matches, the path and query are plain, the body is a
JSON event or batch whose every field passes the schema's rules (see :mod:`seqrec.serve.schemas`).

Everything else, including every request that would be refused, goes on to FastAPI unchanged (its body
replayed), so each error answer, 401 to 499, is FastAPI's own and the OpenAPI document describes what
is served. What the hot path answers is what FastAPI would: the same JSON bodies (the model version
included), the ``X-Model-Version`` header, the same store writes through the same service calls, and the
same request metrics under the route template.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from seqrec.serve.api import CLIENT_CLOSED, MODEL_VERSION_HEADER, error, replay_body
from seqrec.serve.index import ExternalId
from seqrec.serve.routes.deps import CLIENT_GONE, ClientGone, await_scored
from seqrec.serve.schemas import INT64_MAX, INT64_MIN, MAX_EVENTS, MAX_K, EventsOut, UserRecommendationsOut
from seqrec.serve.service import EventInput, Invalid, NotFound, Recommendations, ReloadFailed, ServeError, Service
from seqrec.serve.settings import ServeSettings
from seqrec.serve.store import StoreError

USERS_PREFIX, RECOMMENDATIONS_SUFFIX = "/v1/users/", "/recommendations"
RECOMMEND_ROUTE = USERS_PREFIX + "{user_id}" + RECOMMENDATIONS_SUFFIX  # the metrics label, as FastAPI's
EVENTS_ROUTE = "/v1/events"

# What the schema refuses in an id string: control characters (ID_PATTERN), and lone surrogates, which
# JSON text can spell ("\ud800") but pydantic cannot take.
_REFUSED_CHAR = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_K_TEXT = re.compile(rb"[1-9][0-9]{0,3}")  # a plain positive integer; anything fancier goes to FastAPI
_EVENT_FIELDS = frozenset(("user_id", "item_id", "timestamp"))
_JSON_TYPES = (b"application/json", None)  # what FastAPI parses as JSON and this path takes as it is


def _dumps(payload: dict[str, Any]) -> bytes:
    # As Starlette's JSONResponse and pydantic write JSON: compact, UTF-8, no NaN or infinity.
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class HotPath:
    """Pure ASGI; ``app`` is the rest of the middleware stack (the serving middleware, then FastAPI's
    routing), which gets every request this class does not answer."""

    def __init__(self, app: ASGIApp, service: Service, settings: ServeSettings) -> None:
        self.app = app
        self.service = service
        self.max_body = settings.max_body_bytes
        self.key = None if settings.api_key is None else settings.api_key.encode()
        self.read_key = settings.read_requires_key
        self.version_header = MODEL_VERSION_HEADER.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path.startswith(USERS_PREFIX) and path.endswith(RECOMMENDATIONS_SUFFIX):
            await self._recommend(scope, receive, send)
        elif method == "POST" and path == EVENTS_ROUTE:
            await self._events(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # ---- GET /v1/users/{user_id}/recommendations ------------------------------------------------------
    async def _recommend(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        user_id = _user_id(scope["path"])
        query = _query(scope["query_string"])
        keyed = not self.read_key or self._key_ok(scope)
        body, gone = await self._read_body(scope, receive)
        if user_id is None or query is None or not keyed or gone or body != b"":  # a body: FastAPI's 413 or not
            await self._pass_on(scope, receive, send, body, gone)
            return
        k, exclude_seen = query
        service = self.service
        status = 500
        try:
            try:
                recs = await await_scored(scope, receive, lambda: service.submit_user(user_id, k, exclude_seen))
            except ClientGone:
                status = CLIENT_CLOSED
                await self._answer(send, status, b"", None, service.version)
                return
            except (ServeError, StoreError) as exc:
                status = error_status(exc)
                await self._answer(send, status, _error_body(status, str(exc)), b"application/json", service.version)
                return
            status = 200
            await self._answer(send, status, _recommendations_body(user_id, recs), b"application/json", recs.version)
        finally:
            service.metrics.observe_request("GET", RECOMMEND_ROUTE, status, time.perf_counter() - start)

    # ---- POST /v1/events ------------------------------------------------------------------------------
    async def _events(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        keyed = self.key is not None and self._key_ok(scope)
        body, gone = await self._read_body(scope, receive)
        events = None
        if keyed and not gone and body is not None and len(body) <= self.max_body and \
                _content_type(scope) in _JSON_TYPES:
            events = _events(body)
        if events is None:
            await self._pass_on(scope, receive, send, body, gone)
            return
        service = self.service
        status = 500
        try:
            try:
                added = await asyncio.wrap_future(service.submit_events(events))
            except (ServeError, StoreError) as exc:
                status = error_status(exc)
                await self._answer(send, status, _error_body(status, str(exc)), b"application/json", service.version)
                return
            status = 201
            answer = {"accepted": added.accepted, "unknown_items": len(added.unknown_item_ids),
                      "unknown_item_ids": added.unknown_item_ids}
            try:
                payload = _dumps(answer)
            except (ValueError, UnicodeEncodeError):  # ids JSON cannot spell as they are: pydantic's way
                payload = EventsOut.model_validate(answer).model_dump_json().encode()
            await self._answer(send, status, payload, b"application/json", service.version)
        finally:
            service.metrics.observe_request("POST", EVENTS_ROUTE, status, time.perf_counter() - start)

    # ---- plumbing ---------------------------------------------------------------------------------
    def _key_ok(self, scope: Scope) -> bool:
        """The X-API-Key header matches (compared as FastAPI's check compares it); False sends the request
        on to FastAPI, which answers the 401."""
        if self.key is None:
            return False
        for name, value in scope["headers"]:
            if name == b"x-api-key":  # the first one, as Starlette's headers.get takes
                return bool(value) and hmac.compare_digest(value.decode("latin-1").encode(), self.key)
        return False

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes | None, bool]:
        """(the whole body; whether the client left while it was read). The body is None when its declared
        length is past the size limit (left unread), and stops as soon as it passes the limit."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return None, False
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), True
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > self.max_body:
                break
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks), False

    async def _pass_on(self, scope: Scope, receive: Receive, send: Send, body: bytes | None, gone: bool) -> None:
        """FastAPI answers: the body read so far is replayed, and a client gone is marked as the serving
        middleware marks it. A body declared past the limit is sent on unread, for that middleware's 413."""
        if gone:
            scope[CLIENT_GONE] = True
        await self.app(scope, receive if body is None else replay_body(body, receive), send)

    async def _answer(self, send: Send, status: int, body: bytes, media_type: bytes | None, version: str) -> None:
        headers = [(b"content-length", str(len(body)).encode())]
        if media_type is not None:
            headers.append((b"content-type", media_type))
        headers.append((self.version_header, version.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def error_status(exc: Exception) -> int:
    """The status FastAPI's exception handlers give a service or store error (see api.py)."""
    if isinstance(exc, StoreError):
        return 503
    default = 404 if isinstance(exc, NotFound) else 422 if isinstance(exc, Invalid | ReloadFailed) else 400
    status: int = getattr(exc, "status", default)
    return status


def _error_body(status: int, message: str) -> bytes:
    return bytes(error(status, message).body)  # the error handlers' own body


def _recommendations_body(user_id: str, recs: Recommendations) -> bytes:
    """UserRecommendationsOut's JSON, its fields in the model's order."""
    items = [{"item_id": s.item_id, "score": s.score, "title": s.title} for s in recs.items]
    payload = {"model_version": recs.version, "items": items, "history_length": recs.history_length,
               "unknown_history_items": recs.unknown_items, "user_id": user_id}
    try:
        return _dumps(payload)
    except (ValueError, UnicodeEncodeError):  # a score that is not finite: pydantic writes null
        return UserRecommendationsOut.model_validate(payload).model_dump_json().encode()


def _user_id(path: str) -> str | None:
    """The {user_id} of a recommendations path when the schema takes it as it is, else None."""
    user = path[len(USERS_PREFIX): -len(RECOMMENDATIONS_SUFFIX)]
    if not 1 <= len(user) <= 256 or "/" in user or _REFUSED_CHAR.search(user):
        return None
    return user


def _query(raw: bytes) -> tuple[int, bool] | None:
    """(k, exclude_seen) from a plain query string (``k=10``, ``exclude_seen=false``, each at most once);
    None for anything else (percent escapes, other spellings of a boolean, repeats, other parameters)."""
    k, exclude_seen, seen = 10, True, set()
    if raw:
        for part in raw.split(b"&"):
            name, eq, value = part.partition(b"=")
            if not eq or name in seen:
                return None
            seen.add(name)
            if name == b"k" and _K_TEXT.fullmatch(value):
                k = int(value)
            elif name == b"exclude_seen" and value in (b"true", b"false"):
                exclude_seen = value == b"true"
            else:
                return None
    return (k, exclude_seen) if k <= MAX_K else None


def _content_type(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value)
    return None


def _external_id(value: object) -> ExternalId | None:
    """An id the schema takes as it is (an int64, or a 1..256 character string of printable text); None for
    anything else, floats included (the schema's own rules decide those)."""
    if type(value) is int:
        return value if INT64_MIN <= value <= INT64_MAX else None
    if type(value) is str:
        return value if 1 <= len(value) <= 256 and not _REFUSED_CHAR.search(value) else None
    return None


def _event(raw: object) -> EventInput | None:
    if type(raw) is not dict or not raw.keys() <= _EVENT_FIELDS:
        return None
    user, item = _external_id(raw.get("user_id")), _external_id(raw.get("item_id"))
    if user is None or item is None:
        return None
    stamp = raw.get("timestamp")
    if stamp is None:
        return EventInput(user, item)
    if type(stamp) not in (int, float) or not 0 <= stamp <= 1e11:  # NaN fails the bounds too
        return None
    return EventInput(user, item, float(stamp))


def _events(body: bytes) -> list[EventInput] | None:
    """The events of a body the schema takes as it is (one event, or {"events": [...]}), else None."""
    if not body:
        return None
    try:
        data = json.loads(body)  # as Starlette's request.json() reads it
    except (ValueError, RecursionError):
        return None
    if type(data) is dict and data.keys() == {"events"}:
        batch = data["events"]
        if type(batch) is not list or not 1 <= len(batch) <= MAX_EVENTS:
            return None
        events = [_event(e) for e in batch]
        return None if any(e is None for e in events) else events  # type: ignore[return-value]
    event = _event(data)
    return None if event is None else [event]
