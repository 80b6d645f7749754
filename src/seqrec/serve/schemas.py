"""Request and response bodies. Requests forbid unknown fields and bound every size."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    StrictInt,
    StrictStr,
    StringConstraints,
    Tag,
)

MAX_K = 1000  # larger k gets 422; k above the catalog size too
MAX_EVENTS = 1000  # events in one POST /v1/events
MAX_HISTORY = 1000  # items in a stateless history or exclude list
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # printable: ids end up in logs, keys and headers

IdText = Annotated[StrictStr, StringConstraints(min_length=1, max_length=256, pattern=ID_PATTERN)]
IdInt = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]


def _id_kind(value: Any) -> str:
    # Choosing the branch up front makes an error name one problem ("should match pattern"), not one per branch.
    return "int" if isinstance(value, int) and not isinstance(value, bool) else "str"


ExternalId = Annotated[Annotated[IdInt, Tag("int")] | Annotated[IdText, Tag("str")], Discriminator(_id_kind),
                       Field(description="an external id, as in the training log (int or string)")]
K = Annotated[int, Field(ge=1, le=MAX_K, description=f"how many items (1..{MAX_K}, at most the catalog size)")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests -------------------------------------------------------------------------------
class EventIn(_Request):
    user_id: ExternalId
    item_id: ExternalId
    timestamp: Annotated[float | None, Field(ge=0, le=1e11, allow_inf_nan=False,
                                             description="unix seconds; default: the server's clock")] = None


class EventBatchIn(_Request):
    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_EVENTS)]


def _event_kind(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "events" in value else "event"


class EventsIn(RootModel[Annotated[Annotated[EventIn, Tag("event")] | Annotated[EventBatchIn, Tag("batch")],
                                   Discriminator(_event_kind)]]):
    """One event, or a batch: {"events": [...]}."""

    # A root model rather than a bare union: FastAPI tries every member of a bare union body and
    # reports the errors of both; here the discriminator picks the shape and only its errors count.


class HistoryRecommendationIn(_Request):
    history: Annotated[list[ExternalId], Field(min_length=1, max_length=MAX_HISTORY,
                                               description="item ids, oldest first; unknown ones are skipped")]
    k: K = 10
    exclude: Annotated[list[ExternalId], Field(max_length=MAX_HISTORY, description="never recommend these")] = []
    exclude_seen: bool = True


# ---- responses ------------------------------------------------------------------------------
class ScoredItemOut(BaseModel):
    item_id: int | str
    score: float
    title: str | None = None


class EventsOut(BaseModel):
    accepted: int = Field(description="events stored")
    unknown_items: int = Field(description="distinct stored items the model does not know (kept, not scored)")
    unknown_item_ids: list[str]


class RecommendationsOut(BaseModel):
    model_version: str
    items: list[ScoredItemOut]
    history_length: int = Field(description="known history items the model used")
    unknown_history_items: int = Field(description="history items skipped because the model does not know them")


class UserRecommendationsOut(RecommendationsOut):
    user_id: str


class SimilarItemsOut(BaseModel):
    model_version: str
    item_id: int | str
    items: list[ScoredItemOut]


class ForgetOut(BaseModel):
    user_id: str
    deleted_events: int


class HealthOut(BaseModel):
    status: str
    model: str
    model_version: str
    n_items: int
    n_users: int
    store: str


class ErrorOut(BaseModel):
    error: str = Field(description="a stable code: validation_error, unauthorized, not_found, ...")
    message: str
    details: list[dict[str, Any]] | None = None
