"""POST /v1/recommendations: stateless top-k for a history given in the request."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response

from seqrec.serve.routes.deps import ERRORS_READ, ReadKey, ServiceDep, json_body
from seqrec.serve.schemas import HistoryRecommendationIn, RecommendationsOut, ScoredItemOut
from seqrec.serve.service import Scored

router = APIRouter(prefix="/v1/recommendations", tags=["recommendations"], dependencies=[ReadKey],
                   responses=ERRORS_READ)


def scored_out(items: list[Scored]) -> list[ScoredItemOut]:
    # Built by the service from the artifact's own ids, floats and titles: nothing to validate.
    return [ScoredItemOut.model_construct(item_id=s.item_id, score=s.score, title=s.title) for s in items]


@router.post("", response_model=RecommendationsOut, summary="Top-k for an ad-hoc history (nothing stored)")
async def recommend(service: ServiceDep, body: HistoryRecommendationIn) -> Response:
    recs = await asyncio.wrap_future(service.submit_history(body.history, body.k, body.exclude, body.exclude_seen))
    return json_body(RecommendationsOut(model_version=service.version, items=scored_out(recs.items),
                                        history_length=recs.history_length, unknown_history_items=recs.unknown_items))
