"""Request and response bodies. Requests forbid unknown fields, bound every size, and take JSON types
strictly: a number is a JSON number (``false`` and ``"3"`` are refused) and a flag is a JSON boolean, so
what the OpenAPI document says a field is, is what the service accepts. As in JSON Schema, an integer is
any JSON number without a fraction: ``7.0`` is the integer 7, ``7.5`` is refused."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    StrictBool,
    StrictFloat,
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
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # integer ids fit the stores' and numpy's int64


def _integral(value: Any) -> Any:
    """JSON has one number type, and JSON Schema's "integer" is a number without a fraction: 7.0 is 7."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Last in an Annotated[StrictInt, ...]: an integer in the JSON sense (no boolean, no string, no fraction).
# After the bounds, so that they stay "minimum"/"maximum" in the JSON schema.
JSON_INT = BeforeValidator(_integral)
IdInt = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX), JSON_INT]


def _id_kind(value: Any) -> str:
    # Choosing the branch up front makes an error name one problem ("should match pattern"), not one per branch.
    return "int" if isinstance(value, int | float) and not isinstance(value, bool) else "str"


ExternalId = Annotated[Annotated[IdInt, Tag("int")] | Annotated[IdText, Tag("str")], Discriminator(_id_kind),
                       Field(description="an external id, as in the training log (int or string)")]
K = Annotated[StrictInt, Field(ge=1, le=MAX_K, description=f"how many items (1..{MAX_K}, at most the catalog size)"),
              JSON_INT]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests -------------------------------------------------------------------------------
class EventIn(_Request):
    user_id: ExternalId
    item_id: ExternalId
    # StrictFloat takes any JSON number (integers too, as JSON Schema's "number" does) but no boolean or string.
    timestamp: Annotated[StrictFloat | None, Field(ge=0, le=1e11, allow_inf_nan=False,
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
    exclude_seen: Annotated[StrictBool, Field(description="leave out every item of the history")] = True


MAX_ITEM_FIELDS = 64  # text fields and feature values of one PUT /v1/items body
FieldText = Annotated[StrictStr, StringConstraints(max_length=10_000)]
FieldValue = FieldText | Annotated[StrictFloat, Field(allow_inf_nan=False)] | Annotated[
    list[Annotated[StrictStr, StringConstraints(max_length=256)]], Field(max_length=1000)]


class ItemIn(_Request):
    fields: Annotated[dict[str, FieldValue],
                      Field(max_length=MAX_ITEM_FIELDS, description="the item's text fields and feature values, "
                            "by the column names the model was trained with (a list for a multi-valued "
                            "attribute); other fields are ignored")]
    title: Annotated[StrictStr | None, StringConstraints(max_length=1000),
                     Field(description="shown with recommendations; default: the item id")] = None


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


class ItemAddedOut(BaseModel):
    model_version: str
    item_id: int | str
    created: bool = Field(description="false: the item had been added before and its fields were replaced")
    n_items: int = Field(description="items the model can recommend now")


class UsersOut(BaseModel):
    users: list[int | str] = Field(description="user ids from the training data in the artifact's order, forgotten "
                                   "users left out")
    next_offset: int | None = Field(description="the offset of the next page; null on the last one")


class HistoryItemOut(BaseModel):
    item_id: int | str
    title: str | None = None


class UserHistoryOut(BaseModel):
    user_id: str
    items: list[HistoryItemOut] = Field(description="the last `limit` items of the history, oldest first")
    history_length: int = Field(description="known history items, all of them (the model reads the last max_len)")
    unknown_history_items: int = Field(description="posted items the model does not know (stored, not listed)")


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
