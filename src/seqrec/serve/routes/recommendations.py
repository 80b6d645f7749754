"""POST /v1/recommendations: stateless top-k for a history given in the request."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from seqrec.serve.routes.deps import BAD_JSON, ServiceDep, errors, json_body, scored
from seqrec.serve.schemas import HistoryRecommendationIn, RecommendationsOut, ScoredItemOut
from seqrec.serve.service import Scored

# A read: create_app adds the key check (and its 401) when the server runs with --read-requires-key.
router = APIRouter(prefix="/v1/recommendations", tags=["recommendations"])


def scored_out(items: list[Scored]) -> list[ScoredItemOut]:
    # Built by the service from the artifact's own ids, floats and titles: nothing to validate.
    return [ScoredItemOut.model_construct(item_id=s.item_id, score=s.score, title=s.title) for s in items]


@router.post("", response_model=RecommendationsOut, summary="Top-k for an ad-hoc history (nothing stored)",
             responses=errors({
                 400: BAD_JSON,
                 422: "invalid request (wrong JSON types, unknown fields, k above the catalog size, ...), or none "
                      "of the history items is known to the model (a schema-valid history of unknown ids)"}))
async def recommend(request: Request, service: ServiceDep, body: HistoryRecommendationIn) -> Response:
    """Unknown history items are skipped and counted; nothing is stored."""
    recs = await scored(request, lambda: service.submit_history(body.history, body.k, body.exclude,
                                                                body.exclude_seen))
    return json_body(RecommendationsOut(model_version=recs.version, items=scored_out(recs.items),
                                        history_length=recs.history_length, unknown_history_items=recs.unknown_items),
                     version=recs.version)
