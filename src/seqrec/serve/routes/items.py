"""GET /v1/items/{item_id}/similar: nearest items by cosine of the model's item embeddings; PUT /v1/items/{item_id}
(a write): add an item to the catalog of a text/feature model (seqrec.serve.new_items)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from seqrec.serve.routes.deps import BAD_JSON, KEY_ERRORS, STORE_DOWN, ServiceDep, WriteKey, errors, json_body
from seqrec.serve.routes.recommendations import scored_out
from seqrec.serve.schemas import ID_PATTERN, MAX_ITEM_FIELDS, MAX_K, ItemAddedOut, ItemIn, SimilarItemsOut

# A read: create_app adds the key check (and its 401) when the server runs with --read-requires-key.
router = APIRouter(prefix="/v1/items", tags=["items"])
# Writes: always keyed.
writes = APIRouter(prefix="/v1/items", tags=["items"], dependencies=[WriteKey], responses=KEY_ERRORS)

ItemId = Annotated[str, Path(min_length=1, max_length=256, pattern=ID_PATTERN)]


@router.get("/{item_id}/similar", response_model=SimilarItemsOut, summary="Items similar to an item",
            responses=errors({404: "unknown item: it was not in the training data",
                              422: "invalid item id or k (k must be at most the catalog size minus one)"}))
def similar_items(service: ServiceDep,
                  item_id: Annotated[str, Path(min_length=1, max_length=256, pattern=ID_PATTERN)],
                  k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> SimilarItemsOut:
    """Ranked by the cosine of the model's output item embeddings; the item itself is left out."""
    item, items = service.similar(item_id, k)
    return SimilarItemsOut(model_version=service.version, item_id=item, items=scored_out(items))


@writes.put("/{item_id}", status_code=201, response_model=ItemAddedOut, summary="Add an item to the catalog",
            responses={200: {"model": ItemAddedOut, "description": "the item had been added before: its fields "
                             "were replaced"},
                       **errors({400: BAD_JSON,
                                 409: "the served model embeds item ids only, so it cannot embed a new item; or the "
                                      "id is an item of the training catalog",
                                 422: "a field the model's schema needs is missing or of the wrong type, more than "
                                      f"{MAX_ITEM_FIELDS} fields, an item id that is not an integer for a model with "
                                      "integer item ids, or an invalid item id",
                                 503: STORE_DOWN})})
async def put_item(service: ServiceDep, item_id: ItemId, body: ItemIn) -> Response:
    """The item is embedded from its text and attributes by the served model (a text or feature model), kept
    in the state store (it survives restarts) and recommendable from the next request. Its id must not be in
    the training catalog; the same id again replaces its fields."""
    from seqrec.serve.new_items import put_item as add

    added = await run_in_threadpool(add, service, item_id, body.fields, body.title)
    return json_body(ItemAddedOut(model_version=service.version, item_id=added.item_id, created=added.created,
                                  n_items=added.n_items), status_code=201 if added.created else 200)
