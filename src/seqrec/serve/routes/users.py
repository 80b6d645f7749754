"""/v1/users/{user_id}: recommendations from the stored history (a read), and forgetting a user (a write)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from seqrec.serve.routes.deps import KEY_ERRORS, STORE_DOWN, ServiceDep, WriteKey, errors, json_body, scored
from seqrec.serve.routes.recommendations import scored_out
from seqrec.serve.schemas import ID_PATTERN, MAX_K, ForgetOut, UserRecommendationsOut

# Two routers, as the two routes differ in access: create_app adds the read key check to `reads` only
# when the server runs with --read-requires-key; `writes` always needs the key.
reads = APIRouter(prefix="/v1/users", tags=["users"])
writes = APIRouter(prefix="/v1/users", tags=["users"], dependencies=[WriteKey], responses=KEY_ERRORS)

UserId = Annotated[str, Path(min_length=1, max_length=256, pattern=ID_PATTERN)]


@reads.get("/{user_id}/recommendations", response_model=UserRecommendationsOut,
           summary="Top-k for a user from their stored history",
           responses=errors({
               404: "unknown user: not in the training data and no events posted (or forgotten since)",
               422: "invalid user id or k (k above the catalog size too), or every event of the user is on "
                    "items the model does not know, so there is nothing to score from",
               503: STORE_DOWN}))
async def user_recommendations(request: Request, service: ServiceDep, user_id: UserId,
                               k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                               exclude_seen: bool = True) -> Response:
    """The history is the user's training-data history (if any) followed by every event posted
    since, so an event posted a moment ago already counts."""
    # Awaited, not run in a thread: the scorer thread batches this with other queued requests.
    recs = await scored(request, lambda: service.submit_user(user_id, k, exclude_seen))
    return json_body(UserRecommendationsOut(
        user_id=user_id, model_version=recs.version, items=scored_out(recs.items),
        history_length=recs.history_length, unknown_history_items=recs.unknown_items), version=recs.version)


@writes.delete("/{user_id}", response_model=ForgetOut, summary="Forget a user",
               responses=errors({422: "invalid user id (empty, longer than 256 characters or control characters)",
                                 503: STORE_DOWN}))
def forget_user(service: ServiceDep, user_id: UserId) -> ForgetOut:
    """Erases every stored event of the user, from disk too; a user from the training data stops
    getting their training history. Idempotent: forgetting twice is not an error."""
    return ForgetOut(user_id=user_id, deleted_events=service.forget(user_id))
