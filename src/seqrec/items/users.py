"""User attributes as an input of every sequence model (``seqrec train --user-features FILE``).

A user feature file has one row per user: categorical columns (one value or several) and numeric columns
(standardised, as the item features are); a zip/postcode column is used by its first three characters.
The encoded rows are buffers of a :class:`UserTower` (so they live in the model's safetensors and the
schema in the artifact's tower.json): row ``u + 1`` holds internal user ``u``, row 0 the learned "unknown"
user, which users missing from the file, users the log never had (serving, zero-shot evaluation) and
ad-hoc histories get.

The user's vector is added to the embedded input at every real position (padding stays zero): the same
term at each position, so a position still sees nothing of the future, and left padding changes nothing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from seqrec.data.features import (
    UNKNOWN,
    Column,
    FeatureSchema,
    FeatureTensors,
    ItemFeaturesConfig,
    encode_features,
    infer_schema,
    read_item_table,
)
from seqrec.data.ids import IdMap
from seqrec.errors import SeqrecError

ZIP_COLUMNS = ("zip", "zip_code", "zipcode", "postcode", "postal_code")
ZIP_PREFIX = 3


@dataclass(frozen=True)
class UserSpec:
    """The user feature schema and the number of users the tower's rows describe."""

    schema: FeatureSchema
    n_users: int

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.schema.to_json(), "n_users": self.n_users}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UserSpec:
        n_users = data["n_users"]
        if type(n_users) is not int or n_users < 0:
            raise ValueError(f"n_users must be a non-negative integer, got {n_users!r}")
        schema = FeatureSchema.from_json(list(data["schema"]))
        if not schema.columns:
            raise ValueError("a user feature schema needs at least one column")
        return cls(schema, n_users)


@dataclass
class UserInputs:
    """A user tower's spec, its encoded rows, and what reading the file found."""

    spec: UserSpec
    tensors: FeatureTensors
    not_in_log: int = 0  # ids in the file the log never mentions (ignored)
    without_row: int = 0  # users of the log the file does not describe (they get the unknown value)


def read_user_table(path: str | Path) -> pd.DataFrame:
    """The file as a frame indexed by user id; a zip column is cut to its prefix."""
    frame = read_item_table(path, kind="user")
    for col in frame.columns:
        if str(col).lower() in ZIP_COLUMNS:
            frame[col] = frame[col].map(lambda v: v if v is None or (isinstance(v, float) and np.isnan(v))
                                        else str(v).strip()[:ZIP_PREFIX])
    return frame


def prepare_users(path: str | Path, users: IdMap, report: bool = True) -> UserInputs:
    """Read, check and encode the user feature file for the log's users (internal ids 0..U-1)."""
    source = str(path)
    frame = read_user_table(path)
    rows = users.to_internal(np.asarray(frame.index, dtype=object), strict=False) if len(frame) else \
        np.zeros(0, dtype=np.int64)
    known = rows >= 0
    config = ItemFeaturesConfig()
    described = frame.iloc[known] if known.any() else frame
    schema = _zip_categorical(infer_schema(described, config, source), described)
    tensors = encode_rows(frame, rows, schema, len(users), source)
    not_in_log, without_row = int((~known).sum()), len(users) - int(known.sum())
    if report and not_in_log:
        print(f"seqrec: note: {source}: {not_in_log:,} of {len(frame):,} users are not in the log (ignored)",
              file=sys.stderr)
    if report and without_row:
        print(f"seqrec: note: {source}: {without_row:,} of {len(users):,} users have no row; they get the learned "
              "'unknown' user value", file=sys.stderr)
    return UserInputs(UserSpec(schema, len(users)), tensors, not_in_log, without_row)


def _zip_categorical(schema: FeatureSchema, frame: pd.DataFrame) -> FeatureSchema:
    """A zip prefix is a place, not a quantity: categorical even when its values look numeric."""
    columns = []
    for col in schema.columns:
        if col.kind == "num" and col.name.lower() in ZIP_COLUMNS:
            col = Column(col.name, "cat", tuple(sorted({str(v) for v in frame[col.name]})), 1)
        columns.append(col)
    return FeatureSchema(tuple(columns))


def encode_rows(frame: pd.DataFrame, rows: np.ndarray, schema: FeatureSchema, n_users: int,
                source: str) -> FeatureTensors:
    """(n_users + 1)-row tables: user ``u`` at row ``u + 1`` (``rows`` -1: not a user of the log), row 0 and
    every undescribed user the unknown value."""
    table_rows = np.where(rows >= 0, rows + 1, -1).astype(np.int64)
    out = encode_features(frame, table_rows, schema, n_users + 1, ItemFeaturesConfig(), source)
    for cat in out.cat:
        cat[0] = 0
        cat[0, 0] = UNKNOWN
    assert out.num is not None
    out.num[0, -1] = 1.0
    return out


class UserTower(nn.Module):
    """(B,) internal user ids -> (B, L, dim) vectors added to the embedded inputs at real positions."""

    def __init__(self, spec: UserSpec, dim: int, tensors: FeatureTensors | None = None) -> None:
        super().__init__()
        self.spec = spec
        rows = spec.n_users + 1
        self.cat_emb = nn.ModuleList()
        for i, col in enumerate(spec.schema.categorical):
            bag = nn.EmbeddingBag(len(col.values) + 2, dim, mode="mean", padding_idx=0)
            nn.init.normal_(bag.weight, std=0.02)
            with torch.no_grad():
                bag.weight[0].zero_()
            self.cat_emb.append(bag)
            index = tensors.cat[i] if tensors is not None else torch.zeros(rows, col.width, dtype=torch.long)
            self.register_buffer(f"cat_{i}", _exact(index, rows, f"categorical column {col.name!r}"))
        n_num = len(spec.schema.numeric) + 1  # the columns and the "unknown user" flag
        self.num_proj = nn.Linear(n_num, dim, bias=False)
        num = tensors.num if tensors is not None and tensors.num is not None else torch.zeros(rows, n_num)
        self.num: torch.Tensor
        self.register_buffer("num", _exact(num, rows, "numeric columns"))

    def vectors(self, users: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B, dim) vector of each user; None, -1 or an id outside the table: the unknown user."""
        device = self.num.device
        if users is None:
            idx = torch.zeros(batch, dtype=torch.long, device=device)
        else:
            users = users.to(device=device, dtype=torch.long).reshape(-1)
            if users.shape[0] != batch:
                raise SeqrecError(f"the batch has {batch} rows but {users.shape[0]} user ids")
            idx = torch.where((users >= 0) & (users < self.spec.n_users), users + 1, torch.zeros_like(users))
        out = self.num_proj(self.num[idx])
        for i, bag in enumerate(self.cat_emb):
            out = out + bag(getattr(self, f"cat_{i}")[idx])
        return out

    def forward(self, users: torch.Tensor | None, items: torch.Tensor) -> torch.Tensor:
        vec = self.vectors(users, items.shape[0])  # (B, dim)
        return vec[:, None, :] * (items > 0).unsqueeze(-1).to(vec.dtype)


def _exact(t: torch.Tensor, rows: int, what: str) -> torch.Tensor:
    if t.shape[0] != rows:
        raise SeqrecError(f"user features: {what} has {t.shape[0]} rows, expected {rows}")
    return t.contiguous()


def user_tower_of(model: nn.Module) -> UserTower | None:
    tower = model._modules.get("user_tower")
    return tower if isinstance(tower, UserTower) else None


def attach_user_tower(model: Any, spec: UserSpec, tensors: FeatureTensors | None = None) -> None:
    """Give ``model`` a :class:`UserTower` (built after the model, so its own seeded weights are unchanged)."""
    if not getattr(model, "trainable", False):
        raise SeqrecError(f"model {model.name} takes no user features (it has no sequence encoder)")
    dim = int(model.tower.config.dim)
    model.user_tower = UserTower(spec, dim, tensors).to(model.device)
