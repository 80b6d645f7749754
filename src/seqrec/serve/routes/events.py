"""POST /v1/events: append one event or a batch to users' histories."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Body, Response
from fastapi.openapi.models import Example

from seqrec.serve.routes.deps import BAD_JSON, KEY_ERRORS, STORE_DOWN, ServiceDep, WriteKey, errors, json_body
from seqrec.serve.schemas import MAX_EVENTS, EventBatchIn, EventsIn, EventsOut
from seqrec.serve.service import EventInput

router = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[WriteKey], responses=KEY_ERRORS)

_EXAMPLES: dict[str, Example] = {
    "one": {"summary": "one event", "value": {"user_id": "u1", "item_id": 318}},
    "batch": {"summary": "a batch", "value": {"events": [{"user_id": "u1", "item_id": 318, "timestamp": 1.7e9},
                                                         {"user_id": "u2", "item_id": "new-item"}]}},
}


@router.post("", status_code=201, response_model=EventsOut, summary="Append events to user histories",
             responses=errors({
                 400: BAD_JSON,
                 422: "invalid events: wrong JSON types (a timestamp must be a number, not a boolean or a string), "
                      f"unknown fields, an empty batch or more than {MAX_EVENTS} events, ids that are empty, "
                      "longer than 256 characters or hold control characters",
                 503: STORE_DOWN}))
async def post_events(service: ServiceDep,
                      body: Annotated[EventsIn, Body(openapi_examples=_EXAMPLES)]) -> Response:
    """Events are appended in arrival order and durable once the response is sent. Items the model
    does not know are stored and reported, but never scored (a newer model may know them)."""
    events = body.root.events if isinstance(body.root, EventBatchIn) else [body.root]
    # Awaited, not run in a thread: the writer thread commits queued posts together (group commit).
    added = await asyncio.wrap_future(service.submit_events([EventInput(e.user_id, e.item_id, e.timestamp)
                                                             for e in events]))
    return json_body(EventsOut(accepted=added.accepted, unknown_items=len(added.unknown_item_ids),
                               unknown_item_ids=added.unknown_item_ids), status_code=201)
