"""Typed dependencies shared by the routers: the service, the settings and the API-key checks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from seqrec.serve.schemas import ErrorOut
from seqrec.serve.service import Service
from seqrec.serve.settings import ServeSettings

API_KEY_HEADER = "X-API-Key"
_api_key = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                        description="Required by writes and deletes; by reads too when the server says so.")


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool,
# a thread hop per request for a few attribute reads.
async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def get_settings(request: Request) -> ServeSettings:
    settings: ServeSettings = request.app.state.settings
    return settings


def json_body(model: BaseModel, status_code: int = 200) -> Response:
    """``model`` as a JSON response, serialised once by pydantic's compiled serializer.

    The hot routes return this instead of the model: FastAPI would otherwise validate the
    returned model against ``response_model`` again and encode it through ``jsonable_encoder``,
    which costs more CPU than the rest of the request. The schema in the OpenAPI document still
    comes from the route's ``response_model``."""
    return Response(model.model_dump_json().encode(), status_code=status_code, media_type="application/json")


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]


def _check_key(settings: ServeSettings, given: str | None) -> None:
    expected = settings.api_key
    if expected is None:
        raise HTTPException(401, "this server has no API key configured, so writes are disabled; "
                                 "restart it with $SEQREC_API_KEY or --api-key-file",
                            headers={"WWW-Authenticate": "ApiKey"})
    # Compare bytes in constant time: a timing difference must not reveal a key prefix.
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, f"missing or wrong {API_KEY_HEADER} header",
                            headers={"WWW-Authenticate": "ApiKey"})


async def require_write_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key)]) -> None:
    _check_key(settings, key)


async def require_read_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key)]) -> None:
    if settings.read_requires_key:
        _check_key(settings, key)


WriteKey = Depends(require_write_key)
ReadKey = Depends(require_read_key)

ERRORS_READ: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut, "description": "API key missing or wrong (when reads need one)"},
    404: {"model": ErrorOut, "description": "unknown user or item"},
    422: {"model": ErrorOut, "description": "invalid request"},
}
ERRORS_WRITE: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut, "description": "API key missing or wrong"},
    413: {"model": ErrorOut, "description": "request body too large"},
    422: {"model": ErrorOut, "description": "invalid request"},
    503: {"model": ErrorOut, "description": "the state store is unavailable"},
}
