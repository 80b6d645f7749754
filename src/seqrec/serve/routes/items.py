"""GET /v1/items/{item_id}/similar: nearest items by cosine of the model's item embeddings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from seqrec.serve.routes.deps import ServiceDep, errors
from seqrec.serve.routes.recommendations import scored_out
from seqrec.serve.schemas import ID_PATTERN, MAX_K, SimilarItemsOut

# A read: create_app adds the key check (and its 401) when the server runs with --read-requires-key.
router = APIRouter(prefix="/v1/items", tags=["items"])


@router.get("/{item_id}/similar", response_model=SimilarItemsOut, summary="Items similar to an item",
            responses=errors({404: "unknown item: it was not in the training data",
                              422: "invalid item id or k (k must be at most the catalog size minus one)"}))
def similar_items(service: ServiceDep,
                  item_id: Annotated[str, Path(min_length=1, max_length=256, pattern=ID_PATTERN)],
                  k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> SimilarItemsOut:
    """Ranked by the cosine of the model's output item embeddings; the item itself is left out."""
    item, items = service.similar(item_id, k)
    return SimilarItemsOut(model_version=service.version, item_id=item, items=scored_out(items))
