"""An item tower that adds attributes and text to (or puts them in place of) the id embedding.

Parts, each (..., dim): the id embedding (modes starting with ``id``), the attributes (one
EmbeddingBag per categorical column, mean over an item's values, plus a projection of the numeric
columns and of an "item not in the file" flag), and the projected frozen text embedding (with a
"no text" flag). ``combine``: ``sum`` adds the parts, ``concat`` projects their concatenation,
``gate`` weighs them by a learned per-item softmax. The feature and text tables are buffers, so they
live in the model's safetensors and a loaded artifact scores identically. Modes without ``id`` hold no
per-item parameter: an item never seen in training is scored from its attributes and text
(:meth:`FeatureTower.new_item_table`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seqrec.data.features import (
    COMBINES,
    MODES,
    FeatureSchema,
    FeatureTensors,
    ItemFeaturesConfig,
    align,
    encode_features,
    infer_schema,
    read_item_table,
    text_columns,
    text_of,
)
from seqrec.data.ids import IdMap
from seqrec.errors import SeqrecError
from seqrec.items.text import SentenceEncoder, TextEncoder, text_rows
from seqrec.items.tower import ItemTable, ItemTower, TowerConfig
from seqrec.items.users import UserInputs, UserSpec, attach_user_tower, prepare_users, user_tower_of
from seqrec.settings import check_choice


@dataclass(frozen=True)
class TowerSpec:
    """Everything but the tensors that rebuilds a :class:`FeatureTower` (saved as the artifact's tower.json)."""

    mode: str = "id"
    combine: str = "sum"
    schema: FeatureSchema = dataclasses.field(default_factory=FeatureSchema)
    text_dim: int = 0  # width of the frozen text embedding (0: no text)
    text_encoder: str = ""  # the sentence encoder's name (new items must be embedded by the same one)
    text_cols: tuple[str, ...] = ()
    users: UserSpec | None = None  # user features (seqrec.items.users), any item mode

    def __post_init__(self) -> None:
        check_choice("item_mode", self.mode, MODES)
        check_choice("combine", self.combine, COMBINES)
        if self.uses_features and not self.schema.columns:
            raise SeqrecError(f"item mode {self.mode} needs item features")
        if self.uses_text and self.text_dim < 1:
            raise SeqrecError(f"item mode {self.mode} needs item text")

    @property
    def uses_id(self) -> bool:
        return self.mode.startswith("id")

    @property
    def uses_features(self) -> bool:
        return "features" in self.mode

    @property
    def uses_text(self) -> bool:
        return "text" in self.mode

    @property
    def n_parts(self) -> int:
        return int(self.uses_id) + int(self.uses_features) + int(self.uses_text)

    def to_json(self) -> dict[str, Any]:
        out = {"mode": self.mode, "combine": self.combine, "schema": self.schema.to_json(),
               "text_dim": self.text_dim, "text_encoder": self.text_encoder, "text_cols": list(self.text_cols)}
        return out | ({"users": self.users.to_json()} if self.users is not None else {})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TowerSpec:
        users = UserSpec.from_json(dict(data["users"])) if "users" in data else None
        return cls(str(data["mode"]), str(data["combine"]), FeatureSchema.from_json(list(data["schema"])),
                   int(data["text_dim"]), str(data["text_encoder"]), tuple(str(c) for c in data["text_cols"]), users)


class FeatureTower(ItemTower):
    """An :class:`ItemTower` whose vectors come from ids, attributes and/or text (see the module docstring)."""

    def __init__(self, config: TowerConfig, spec: TowerSpec, features: FeatureTensors | None = None,
                 text: torch.Tensor | None = None) -> None:
        super().__init__(config)
        self.spec = s = spec
        c = config
        rows = c.n_items + 1 + c.extra_tokens
        if not s.uses_id:  # no per-item parameter: padding and the extra tokens only
            self.id_emb = nn.Embedding(1 + c.extra_tokens, c.dim, padding_idx=0)
            self.bias = None
            if self.output is not None:
                self.output = None
        out_dim = c.out_dim or c.dim
        self.out_proj = nn.Linear(c.dim, out_dim, bias=False) if c.output != "tied" else None
        self.num: torch.Tensor
        self.text: torch.Tensor
        self.cat_emb = nn.ModuleList()
        self.num_proj: nn.Linear | None = None
        if s.uses_features:
            for i, col in enumerate(s.schema.categorical):
                bag = nn.EmbeddingBag(len(col.values) + 2, c.dim, mode="mean", padding_idx=0)
                self.cat_emb.append(bag)
                index = features.cat[i] if features is not None else torch.zeros(rows, col.width, dtype=torch.long)
                self.register_buffer(f"cat_{i}", _rows(index, rows))
            self.num_proj = nn.Linear(len(s.schema.numeric) + 1, c.dim, bias=False)
            num = features.num if features is not None and features.num is not None else None
            self.register_buffer("num", _rows(num if num is not None
                                              else torch.zeros(rows, len(s.schema.numeric) + 1), rows))
        self.text_proj: nn.Linear | None = None
        if s.uses_text:
            self.text_proj = nn.Linear(s.text_dim + 1, c.dim, bias=False)
            self.register_buffer("text", _rows(text if text is not None else torch.zeros(rows, s.text_dim + 1), rows))
        self.mix: nn.Linear | None = None
        if s.combine == "concat":
            self.mix = nn.Linear(s.n_parts * c.dim, c.dim, bias=False)
        elif s.combine == "gate" and s.n_parts > 1:
            self.mix = nn.Linear(s.n_parts * c.dim, s.n_parts)
        self.reset_feature_parameters()

    def reset_feature_parameters(self) -> None:
        for bag in self.cat_emb:
            assert isinstance(bag, nn.EmbeddingBag)
            nn.init.normal_(bag.weight, std=0.02)
            with torch.no_grad():
                bag.weight[0].zero_()

    # ---- vectors --------------------------------------------------------------------------
    def _parts(self, ids: torch.Tensor, id_vec: torch.Tensor | None, cats: list[torch.Tensor] | None = None,
               num: torch.Tensor | None = None, text: torch.Tensor | None = None) -> list[torch.Tensor]:
        """(M,) flat ids -> the parts, each (M, dim); explicit rows (new items) replace the buffers' rows."""
        s = self.spec
        parts = [id_vec] if id_vec is not None else []
        if s.uses_features and self.num_proj is not None:
            feat = self.num_proj(num if num is not None else self.num[ids])
            for i, bag in enumerate(self.cat_emb):
                index = cats[i] if cats is not None else getattr(self, f"cat_{i}")[ids]
                feat = feat + bag(index)
            parts.append(feat)
        if s.uses_text and self.text_proj is not None:
            parts.append(self.text_proj(text if text is not None else self.text[ids]))
        return parts

    def _combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if self.spec.combine == "concat" and self.mix is not None:
            return self.mix(torch.cat(parts, dim=-1))
        if self.spec.combine == "gate" and self.mix is not None:
            weights = torch.softmax(self.mix(torch.cat(parts, dim=-1)), dim=-1)  # (M, parts)
            return sum(w.unsqueeze(-1) * p for w, p in zip(weights.unbind(-1), parts, strict=True))  # type: ignore[return-value]
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        n = self.n_items
        if self.spec.uses_id:
            x = self._combine(self._parts(flat, self.id_emb(flat)))
        else:
            x = self._combine(self._parts(flat, None))
            if self.config.extra_tokens:  # the mask token's own vector
                x = x + self.id_emb(torch.where(flat > n, flat - n, torch.zeros_like(flat)))
        return x.reshape(*ids.shape, -1)  # (..., dim)

    def table(self) -> ItemTable:
        ids = torch.arange(self._table_rows(), device=self.id_emb.weight.device)
        inputs = self(ids)  # (N + 1, dim)
        return self._output(inputs, self.output.weight if self.output is not None and self.spec.uses_id else None,
                            self._bias())

    def _table_rows(self) -> int:
        """N + 1, read from the per-item tensors: a caller that swaps in a subset of their rows
        (:mod:`seqrec.privacy.touched`, through ``functional_call``) gets the table of those rows."""
        s = self.spec
        held = self.id_emb.weight if s.uses_id else self.text if s.uses_text else self.num
        return int(held.shape[0]) - self.config.extra_tokens

    def _bias(self) -> torch.Tensor | None:
        if isinstance(self.output, nn.Linear):
            return self.output.bias if self.spec.uses_id else None
        return self.bias

    def _output(self, inputs: torch.Tensor, own: torch.Tensor | None, bias: torch.Tensor | None) -> ItemTable:
        if self.out_proj is None:
            return ItemTable(inputs, bias)
        weight = self.out_proj(inputs)
        return ItemTable(weight if own is None else own + weight, bias)

    # ---- items never seen in training ------------------------------------------------------
    def new_item_table(self, features: FeatureTensors | None, text: torch.Tensor | None) -> ItemTable:
        """(M, D) output vectors of M new items from their feature rows and text embeddings (no id part:
        a new item has no trained id vector). Rows are the new items, no padding row."""
        s = self.spec
        if not (s.uses_features or s.uses_text):
            raise SeqrecError("this model embeds item ids only; it cannot score items it was not trained on "
                              "(train with --item-mode text, features+text or id+text)")
        m = _count(features, text)
        device = self.id_emb.weight.device
        id_vec = torch.zeros(m, self.config.dim, device=device) if s.uses_id else None
        cats = [c.to(device) for c in features.cat] if features is not None else None
        num = features.num.to(device) if features is not None and features.num is not None else None
        parts = self._parts(torch.zeros(m, dtype=torch.long, device=device), id_vec, cats, num,
                            text.to(device) if text is not None else None)
        inputs = self._combine(parts)
        bias = self._bias()
        own = torch.zeros(m, self.output.weight.shape[1], device=device) \
            if self.output is not None and s.uses_id else None
        return self._output(inputs, own, torch.zeros(m, device=device) if bias is not None else None)


def _count(features: FeatureTensors | None, text: torch.Tensor | None) -> int:
    if text is not None:
        return int(text.shape[0])
    if features is not None and features.num is not None:
        return int(features.num.shape[0])
    raise SeqrecError("no new items given")


def _rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` padded (zeros) or cut to ``rows`` rows (the extra tokens' rows hold no feature)."""
    if t.shape[0] >= rows:
        return t[:rows].contiguous()
    pad = torch.zeros(rows - t.shape[0], *t.shape[1:], dtype=t.dtype)
    return torch.cat([t, pad]).contiguous()


def feature_tower(base: TowerConfig, spec: TowerSpec, features: FeatureTensors | None = None,
                  text: torch.Tensor | None = None) -> ItemTower:
    """The tower for ``spec``: the plain :class:`ItemTower` for mode ``id`` (seeded results unchanged)."""
    if spec.mode == "id":
        return ItemTower(base)
    return FeatureTower(base, spec, features, text)


def build_with_tower(name: str, config: Any, spec: TowerSpec | None, features: FeatureTensors | None = None,
                     text: torch.Tensor | None = None) -> Any:
    """``name``'s model for ``config`` with the tower ``spec`` describes (the model's own for none or mode id).

    The model's default tower config (output kind, width, bias, extra tokens) is read from a copy built on
    the meta device, which allocates nothing and draws no random numbers."""
    from seqrec.models.registry import MODELS, build_model

    if spec is None:
        return build_model(name, config)
    if spec.mode == "id":
        model = build_model(name, config)
    else:
        if not MODELS[name][1].trainable:
            raise SeqrecError(f"model {name} takes no item features or text (it has no item tower)")
        from seqrec.artifact_checks import _SkipMetaNormal

        with torch.device("meta"), _SkipMetaNormal():
            base = build_model(name, config).tower.config
        model = build_model(name, config, tower=FeatureTower(base, spec, features, text))
    if spec.users is not None:  # rows filled by the caller's load_state_dict
        attach_user_tower(model, spec.users)
    return model


def tower_spec_of(model: Any) -> TowerSpec | None:
    """What the artifact's tower.json holds for ``model``: its feature tower's spec and/or its user features
    (None for a plain id model without user features: such an artifact has no tower.json)."""
    spec = getattr(model.tower, "spec", None) if hasattr(model, "tower") else None
    users = user_tower_of(model)
    if users is None:
        return spec if isinstance(spec, TowerSpec) else None
    return dataclasses.replace(spec if isinstance(spec, TowerSpec) else TowerSpec(), users=users.spec)


@dataclass
class TowerInputs:
    """A tower's spec and its tables for the training catalog (rows 0..N)."""

    spec: TowerSpec
    features: FeatureTensors | None = None
    text: torch.Tensor | None = None


def prepare_tower(config: ItemFeaturesConfig, items: IdMap, encoder: TextEncoder | None = None,
                  cache: Path | None = None, schema: FeatureSchema | None = None) -> TowerInputs:
    """Read, check and encode the feature and text files of ``config`` for the catalog ``items``."""
    n_rows = len(items) + 1
    features = None
    if config.uses_features and config.item_features is not None:
        frame = read_item_table(config.item_features, config.item_id_col)
        rows = align(frame, items, n_rows, config.item_features, report=False)
        schema = schema or infer_schema(frame.iloc[rows >= 0] if (rows >= 0).any() else frame, config,
                                        config.item_features)
        features = encode_features(frame, rows, schema, n_rows, config, config.item_features)
        align(frame, items, n_rows, config.item_features)  # reported once the file is known to be good
    text, text_dim, encoder_name = None, 0, ""
    cols = text_columns(config)
    if config.uses_text and config.item_text is not None:
        frame = read_item_table(config.item_text, config.item_id_col)
        texts = text_of(frame, cols, config.item_text)
        rows = align(frame, items, n_rows, config.item_text)
        encoder = encoder or SentenceEncoder(precision=config.text_precision)
        text, text_dim, encoder_name = text_rows(list(texts), rows, n_rows, encoder, cache)
    spec = TowerSpec(config.item_mode, config.combine, schema or FeatureSchema(), text_dim, encoder_name,
                     tuple(cols or ()))
    return TowerInputs(spec, features, text)


def prepare_inputs(config: ItemFeaturesConfig, items: IdMap,
                   users: IdMap) -> tuple[TowerInputs | None, UserInputs | None]:
    """A log's model inputs besides its ids, read once: the item tower's (unless items are ids only) and
    the user features' (when a file is named)."""
    tower = prepare_tower(config, items) if config.item_mode != "id" else None
    user_inputs = prepare_users(config.user_features, users) if config.user_features is not None else None
    return tower, user_inputs
