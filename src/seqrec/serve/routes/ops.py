"""GET /healthz and GET /metrics: unversioned, for load balancers and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from seqrec.serve.routes.deps import STORE_DOWN, ServiceDep, errors
from seqrec.serve.schemas import HealthOut
from seqrec.serve.store import StoreError

router = APIRouter(tags=["operations"])  # always open, whatever --read-requires-key says


@router.get("/healthz", response_model=HealthOut,
            responses=errors({503: STORE_DOWN}))
def healthz(service: ServiceDep) -> HealthOut | JSONResponse:
    ix = service.index
    try:
        service.ping()
    except StoreError as exc:
        return JSONResponse({"error": "store_unavailable", "message": str(exc)}, status_code=503)
    return HealthOut(status="ok", model=ix.model_name, model_version=ix.version, n_items=ix.n_items,
                     n_users=len(ix.users), store=service.store.kind)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4"}})
async def metrics(service: ServiceDep) -> PlainTextResponse:
    return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
