"""POST /v1/admin/reload: swap in a new artifact without downtime (needs the separate admin key)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field

from seqrec.serve.routes.deps import ADMIN_KEY_HEADER, ServiceDep, SettingsDep, check_key, errors
from seqrec.serve.service import ReloadFailed

PEERS_TIMEOUT_S = 300.0  # for every other worker to load the artifact

_admin_key = APIKeyHeader(name=ADMIN_KEY_HEADER, scheme_name="AdminKeyHeader", auto_error=False,
                          description="The admin key (--admin-key-file or $SEQREC_ADMIN_KEY), separate from the "
                          "write key; only POST /v1/admin/reload needs it.")


async def require_admin_key(settings: SettingsDep, key: Annotated[str | None, Security(_admin_key)]) -> None:
    check_key(settings.admin_key, key, ADMIN_KEY_HEADER, "this server has no admin key configured, so reload over "
              "HTTP is disabled; restart it with $SEQREC_ADMIN_KEY or --admin-key-file, or send it SIGHUP")


class ReloadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact: str | None = Field(None, min_length=1, max_length=4096,
                                 description="artifact directory to serve from now on (default: the one served)")


class ReloadOut(BaseModel):
    previous_version: str
    model_version: str
    artifact: str
    workers: dict[str, str] | None = Field(None, description="with --workers N: each worker's pid and the version "
                                            "it serves now (every worker has reloaded when this answer is sent)")


router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])


@router.post("/reload", response_model=ReloadOut, summary="Swap in a new model without downtime",
             responses=errors({401: "missing or wrong X-Admin-Key, or no admin key configured",
                               422: "the artifact is missing, corrupt or has another id space; the old model "
                                    "keeps serving"}))
async def reload(service: ServiceDep, body: ReloadIn | None = None) -> ReloadOut:
    """Loads the artifact beside the served one, checks it, and swaps it in atomically: requests being
    scored finish with the old model, later ones use the new; every response names its model in
    X-Model-Version. With --workers N, the worker that answers reloads first, then every other worker does;
    the answer comes once all have, with each worker's version."""
    path = Path(body.artifact) if body is not None and body.artifact is not None else None
    old, new = await asyncio.to_thread(service.reload, path)
    workers = None
    if service.peers is not None and service.artifact is not None:
        passed_on = service.peers(service.artifact, new)
        try:
            workers = await asyncio.wait_for(asyncio.wrap_future(passed_on), PEERS_TIMEOUT_S)
        except TimeoutError:
            raise ReloadFailed(f"this worker serves {new} now, but the other workers did not confirm their reload "
                               f"within {PEERS_TIMEOUT_S:g} s; see the server's log") from None
        failed = {pid: v for pid, v in workers.items() if v.startswith("error")}
        if failed:
            raise ReloadFailed(f"this worker serves {new} now, but these workers could not reload: "
                               + "; ".join(f"{pid}: {v}" for pid, v in failed.items()))
    return ReloadOut(previous_version=old, model_version=new, artifact=str(service.artifact), workers=workers)
