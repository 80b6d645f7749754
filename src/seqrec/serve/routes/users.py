"""/v1/users: recommendations from the stored history (a read), forgetting a user (a write), and the keyed
reads that show user ids: the list of users and a user's history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from seqrec.serve.index import PseudonymousIds
from seqrec.serve.new_items import Conflict
from seqrec.serve.routes.deps import KEY_ERRORS, STORE_DOWN, ServiceDep, WriteKey, errors, json_body, scored
from seqrec.serve.routes.recommendations import scored_out
from seqrec.serve.schemas import (
    ID_PATTERN,
    INT64_MAX,
    MAX_HISTORY,
    MAX_K,
    ForgetOut,
    HistoryItemOut,
    UserHistoryOut,
    UserRecommendationsOut,
    UsersOut,
)

# Two routers, as the two routes differ in access: create_app adds the read key check to `reads` only
# when the server runs with --read-requires-key; `writes` always needs the key.
reads = APIRouter(prefix="/v1/users", tags=["users"])
writes = APIRouter(prefix="/v1/users", tags=["users"], dependencies=[WriteKey], responses=KEY_ERRORS)
# Reads that show user ids and what a user did: keyed on every server, as the open reads never list either.
private = APIRouter(prefix="/v1/users", tags=["users"], dependencies=[WriteKey], responses=KEY_ERRORS)

MAX_USERS = 100  # users in one page of GET /v1/users

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


@private.get("", response_model=UsersOut, summary="List users of the training data",
             responses=errors({409: "user ids are pseudonymised on this server, which holds no raw id to list",
                               422: f"invalid limit (1..{MAX_USERS}) or offset (0 or more)", 503: STORE_DOWN}))
def list_users(service: ServiceDep, limit: Annotated[int, Query(ge=1, le=MAX_USERS)] = 20,
               offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0) -> UsersOut:
    """The training data's users ``offset`` to ``offset + limit``, less those forgotten since (a page may be
    shorter than ``limit``; ``next_offset`` goes on). Users known only from posted events are not listed."""
    ids = service.index.users
    if isinstance(ids, PseudonymousIds):
        raise Conflict("user ids are pseudonymised on this server: it holds no raw id to list")
    page = ids.external[offset:offset + limit]
    kept = [user for user in page if not service.store.user_state(ids.canonical(user), 1).forgotten]
    end = offset + len(page)
    return UsersOut(users=kept, next_offset=end if end < len(ids) else None)


@private.get("/{user_id}/history", response_model=UserHistoryOut, summary="A user's history, with item titles",
             responses=errors({
                 404: "unknown user: not in the training data and no events posted (or forgotten since)",
                 422: f"invalid user id or limit (1..{MAX_HISTORY})",
                 503: STORE_DOWN}))
def user_history(service: ServiceDep, user_id: UserId,
                 limit: Annotated[int, Query(ge=1, le=MAX_HISTORY)] = 50) -> UserHistoryOut:
    """The history the recommendations are scored from: the training-data history followed by the events
    posted since, items the model does not know left out (and counted)."""
    index = service.index  # one model throughout, even if a reload swaps it meanwhile
    history, unknown = service.user_history(user_id, index)
    items = [HistoryItemOut(item_id=index.items.external_of(i), title=index.title(i))
             for i in history[-limit:].tolist()]
    return UserHistoryOut(user_id=user_id, items=items, history_length=len(history), unknown_history_items=unknown)
