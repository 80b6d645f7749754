"""Typed dependencies shared by the routers: the service, the settings, the API-key checks, the error
responses each route documents, and awaiting the scorer on behalf of a client that may leave."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from concurrent.futures import Future
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request, Response, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel
from starlette.types import Receive, Scope

from seqrec.serve.schemas import ErrorOut
from seqrec.serve.service import Service
from seqrec.serve.settings import ServeSettings

T = TypeVar("T")

API_KEY_HEADER = "X-API-Key"
ADMIN_KEY_HEADER = "X-Admin-Key"
MODEL_VERSION_HEADER = "X-Model-Version"
KEY_SCHEME = "APIKeyHeader"
_api_key = APIKeyHeader(name=API_KEY_HEADER, scheme_name=KEY_SCHEME, auto_error=False,
                        description="Needed by the writes (POST /v1/events, DELETE /v1/users/{user_id}). The reads "
                        "answer without it by design unless the server runs with --read-requires-key; each read "
                        "operation says which applies to this server. /healthz and /metrics are always open.")

# Set in the ASGI scope by the serving middleware when the client disconnected before its request was read.
CLIENT_GONE = "seqrec.client_gone"


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool,
# a thread hop per request for a few attribute reads.
async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def get_settings(request: Request) -> ServeSettings:
    settings: ServeSettings = request.app.state.settings
    return settings


def json_body(model: BaseModel, status_code: int = 200, version: str | None = None) -> Response:
    """``model`` as a JSON response, serialised once by pydantic's compiled serializer.

    The hot routes return this instead of the model: FastAPI would otherwise validate the
    returned model against ``response_model`` again and encode it through ``jsonable_encoder``,
    which costs more CPU than the rest of the request. The schema in the OpenAPI document still
    comes from the route's ``response_model``."""
    headers = None if version is None else {MODEL_VERSION_HEADER: version}  # the model that scored it
    return Response(model.model_dump_json().encode(), status_code=status_code, media_type="application/json",
                    headers=headers)


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]


def check_key(expected: str | None, given: str | None, header: str, not_configured: str) -> None:
    """401 unless ``given`` equals ``expected``; ``not_configured`` says what to do when no key is set."""
    if expected is None:
        raise HTTPException(401, not_configured, headers={"WWW-Authenticate": "ApiKey"})
    # Compare bytes in constant time: a timing difference must not reveal a key prefix.
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, f"missing or wrong {header} header", headers={"WWW-Authenticate": "ApiKey"})


def _check_key(settings: ServeSettings, given: str | None) -> None:
    check_key(settings.api_key, given, API_KEY_HEADER, "this server has no API key configured, so writes are "
              "disabled; restart it with $SEQREC_API_KEY or --api-key-file")


async def require_write_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key)]) -> None:
    _check_key(settings, key)


async def require_read_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key)]) -> None:
    if settings.read_requires_key:
        _check_key(settings, key)


# The write routers carry WriteKey themselves; create_app adds ReadKey to the read routers only when the
# server runs with --read-requires-key, so the OpenAPI document marks the reads keyed exactly then.
WriteKey = Depends(require_write_key)
ReadKey = Depends(require_read_key)

# ---- documented error answers -----------------------------------------------------------------
BAD_JSON = ("the body cannot be decoded: bytes that are not UTF-8 text, or JSON nested too deeply "
            "(malformed JSON text is a 422)")
BAD_KEY = f"{API_KEY_HEADER} missing or wrong, or the server has no key configured"
TOO_LARGE = "the request body is larger than --max-body-bytes (refused before it is parsed)"
STORE_DOWN = "the state store is unreachable"


def errors(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with the error body and what causes it there."""
    return {status: {"model": ErrorOut, "description": text} for status, text in described.items()}


KEY_ERRORS = errors({401: BAD_KEY})
EVERY_ROUTE_ERRORS = errors({413: TOO_LARGE})  # the serving middleware checks every request's body size


# ---- awaiting the scorer -----------------------------------------------------------------------
class ClientGone(Exception):
    """The client closed its connection before its answer was ready: nobody will read one."""


async def scored(request: Request, submit: Callable[[], Future[T]]) -> T:
    """``submit()`` a request to the scorer and await the answer, unless the client leaves first.

    A client already gone when its request was read is never queued. One that leaves while its
    request waits in the queue has the request cancelled, and the scorer drops a cancelled request
    unscored. Either way :class:`ClientGone` is raised (the answer, status 499, goes nowhere)."""
    return await await_scored(request.scope, request.receive, submit)


async def await_scored(scope: Scope, receive: Receive, submit: Callable[[], Future[T]]) -> T:
    """:func:`scored` for an ASGI request (its scope and its receive channel, the body read already)."""
    if scope.get(CLIENT_GONE):
        raise ClientGone
    answer = asyncio.wrap_future(submit())
    # A task rather than asyncio.wait on two awaitables: about half the added cost per request (~5 us).
    watcher = asyncio.ensure_future(_cancel_when_gone(receive, answer))
    try:
        return await answer
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if watcher.done() and not watcher.cancelled() and (task is None or not task.cancelling()):
            raise ClientGone from None  # the watcher cancelled the answer; nobody is cancelling this task
        raise
    finally:
        watcher.cancel()


async def _cancel_when_gone(receive: Receive, answer: asyncio.Future[T]) -> None:
    await _disconnected(receive)
    answer.cancel()  # unless answered already; cancels the scorer's future too, so a queued request is skipped


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has disconnected. The body was read already, so until then the
    server's receive() blocks (the ASGI contract). The body's one message, replayed by the serving
    middleware to whoever asks first, may come before; anything else means a server that does not
    block, and then this waits for its cancellation rather than spin."""
    message = await receive()
    if message["type"] != "http.disconnect":
        message = await receive()
    if message["type"] != "http.disconnect":
        await asyncio.Event().wait()
