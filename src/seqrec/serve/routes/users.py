"""/v1/users/{user_id}: recommendations from the stored history, and forgetting a user."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from seqrec.serve.routes.deps import ERRORS_READ, ERRORS_WRITE, ReadKey, ServiceDep, WriteKey, json_body
from seqrec.serve.routes.recommendations import scored_out
from seqrec.serve.schemas import ID_PATTERN, MAX_K, ForgetOut, UserRecommendationsOut

router = APIRouter(prefix="/v1/users", tags=["users"])

UserId = Annotated[str, Path(min_length=1, max_length=256, pattern=ID_PATTERN)]


@router.get("/{user_id}/recommendations", response_model=UserRecommendationsOut, dependencies=[ReadKey],
            responses=ERRORS_READ, summary="Top-k for a user from their stored history")
async def user_recommendations(service: ServiceDep, user_id: UserId,
                               k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                               exclude_seen: bool = True) -> Response:
    """The history is the user's training-data history (if any) followed by every event posted
    since, so an event posted a moment ago already counts."""
    # Awaited, not run in a thread: the scorer thread batches this with other queued requests.
    recs = await asyncio.wrap_future(service.submit_user(user_id, k, exclude_seen))
    return json_body(UserRecommendationsOut(
        user_id=user_id, model_version=service.version, items=scored_out(recs.items),
        history_length=recs.history_length, unknown_history_items=recs.unknown_items))


@router.delete("/{user_id}", response_model=ForgetOut, dependencies=[WriteKey], responses=ERRORS_WRITE,
               summary="Forget a user")
def forget_user(service: ServiceDep, user_id: UserId) -> ForgetOut:
    """Erases every stored event of the user, from disk too; a user from the training data stops
    getting their training history. Idempotent: forgetting twice is not an error."""
    return ForgetOut(user_id=user_id, deleted_events=service.forget(user_id))
