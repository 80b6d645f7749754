"""Items added to the served catalog (``PUT /v1/items/{item_id}``): embedded from their text and attributes by
a text/feature model, recommendable from the next request, kept in the state store.

An added item is appended after the artifact's catalog (the artifact's items keep their internal indices),
and the served model is rebuilt for the longer catalog with :func:`seqrec.items.zero_shot.move_to_catalog`:
the same weights, the added items' vectors from their text/attributes (no id vector: it was never trained).
The body is stored (JSON) before the new model is swapped in, so an item acknowledged survives a restart or a
``kill -9``: at start-up and on every reload the stored items are applied again to the loaded artifact. An
id-only artifact has no way to embed an item it was not trained on and refuses. With ``--workers N`` an
item added through one worker reaches the others when they restart or reload.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from seqrec.artifact import Artifact
from seqrec.data.features import FeatureTensors, ItemFeaturesConfig
from seqrec.data.ids import IdMap
from seqrec.data.preprocess import Dataset
from seqrec.errors import SeqrecError
from seqrec.items.features import FeatureTower, TowerInputs, TowerSpec
from seqrec.items.new_items import NewItems, encoder_for, new_items_from_frame
from seqrec.items.text import TextEncoder
from seqrec.items.zero_shot import move_to_catalog, require_inductive
from seqrec.serve.index import ExternalId, ServedModel
from seqrec.serve.service import Invalid, ServeError, Service
from seqrec.serve.store import EventStore

FieldValue = str | float | int | list[str]
# Builds the text encoder of an artifact's tower (the default: the sentence encoder it names); tests swap it.
encoder_factory: Callable[[TowerSpec], TextEncoder] = encoder_for


class Conflict(ServeError):
    """The request is well formed but this server cannot do it: the model cannot embed an item, or the id is a
    trained item's (HTTP 409)."""

    code = "conflict"
    status = 409


@dataclass(frozen=True)
class Added:
    item_id: ExternalId
    created: bool  # False: the item was added before and its body replaced
    n_items: int  # the served catalog's size now


class AddedItems:
    """The items added through one store, and the lock that orders PUTs."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.lock = threading.Lock()
        self._encoder: TextEncoder | None = None
        self._rows: dict[tuple[str, str], NewItems] = {}  # (id, body) -> encoded row: a body is embedded once

    def encoder(self, spec: TowerSpec) -> TextEncoder | None:
        if not spec.uses_text:
            return None
        if self._encoder is None:
            self._encoder = encoder_factory(spec)
        return self._encoder

    def stored(self) -> list[tuple[str, dict[str, Any]]]:
        read = getattr(self.store, "added_items", None)
        if read is None:
            return []
        return [(item, json.loads(body)) for item, body in read()]

    def encode(self, index: ServedModel, base: IdMap, item: str, body: Mapping[str, Any]) -> NewItems:
        key = (item, json.dumps(body, sort_keys=True))
        if key not in self._rows:
            spec = require_inductive(index.model)
            fields = {name: value for name, value in body.get("fields", {}).items()}
            frame = pd.DataFrame([fields], index=pd.Index([item], name="item_id"))
            data_cfg = ItemFeaturesConfig()
            self._rows[key] = new_items_from_frame(frame, spec, base, f"item {item!r}", data_cfg, self.encoder(spec))
        return self._rows[key]


_registry: weakref.WeakKeyDictionary[Any, AddedItems] = weakref.WeakKeyDictionary()


def added_items_of(store: EventStore) -> AddedItems:
    if store not in _registry:
        _registry[store] = AddedItems(store)
    return _registry[store]


def with_added_items(index: ServedModel, store: EventStore) -> ServedModel:
    """``index`` (as loaded from an artifact) with every item the store keeps; unchanged when none or when the
    model is id-only (it could not have accepted one). Items the artifact knows already are skipped."""
    added = added_items_of(store)
    items = [(i, b) for i, b in added.stored() if index.items.internal(index.items.canonical(i)) < 0]
    if not items or not _inductive(index):
        return index
    return _extended(index, items, added)


def put_item(service: Service, item_id: ExternalId, fields: Mapping[str, FieldValue],
             title: str | None = None) -> Added:
    """Add (or replace) one item: checked and embedded, stored durably, then served from the next request."""
    added = added_items_of(service.store)
    if getattr(service.store, "put_item", None) is None:
        raise Conflict(f"the {service.store.kind} store cannot keep added items")
    with service._reload_lock, added.lock:  # one catalog change at a time, and never beside a reload
        current = service.index
        if not _inductive(current):
            raise Conflict("this model embeds item ids only, so it cannot embed a new item; serve a model trained "
                           "with --item-mode text, features+text or features (or id+text) to add items")
        canonical = current.items.canonical(item_id)
        if current.items.numeric and not _is_int(canonical):
            raise Invalid(f"item id {canonical!r}: this model's item ids are integers")
        base = _base_ids(current, added)
        if base.to_internal([_typed(current, canonical)], strict=False)[0] > 0:
            raise Conflict(f"item {canonical!r} is in the model's training catalog; PUT adds new items only")
        body: dict[str, Any] = {"fields": dict(fields)} | ({"title": title} if title is not None else {})
        try:
            added.encode(current, base, canonical, body)  # every check before anything is stored
        except SeqrecError as exc:
            raise Invalid(str(exc)) from None
        previous = [(i, b) for i, b in added.stored() if i != canonical]
        created = len(previous) == len(added.stored())
        service.store.put_item(canonical, json.dumps(body))  # type: ignore[attr-defined]
        stored = added.stored()
        base_index = _base_index(current, added)
        service.index = _extended(base_index, stored, added)
        return Added(_typed(current, canonical), created, service.index.n_items)


# ---- building the extended served model --------------------------------------------------------------

_bases: weakref.WeakKeyDictionary[ServedModel, ServedModel] = weakref.WeakKeyDictionary()


def _inductive(index: ServedModel) -> bool:
    tower = getattr(index.model, "tower", None)
    return isinstance(tower, FeatureTower) and (tower.spec.uses_text or tower.spec.uses_features)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _typed(index: ServedModel, canonical: str) -> ExternalId:
    return int(canonical) if index.items.numeric else canonical


def _base_index(index: ServedModel, added: AddedItems) -> ServedModel:
    """The served model as its artifact loaded it (before any added item)."""
    return _bases.get(index, index)


def _base_ids(index: ServedModel, added: AddedItems) -> IdMap:
    return _id_map(_base_index(index, added).items.external, index.items.numeric, 1)


def _id_map(external: list[ExternalId], numeric: bool, offset: int) -> IdMap:
    return IdMap(np.asarray(external, dtype=np.int64 if numeric else object), offset)


def _extended(base: ServedModel, stored: list[tuple[str, dict[str, Any]]], added: AddedItems) -> ServedModel:
    """A new served model: ``base``'s catalog followed by the stored items, in the order first added."""
    model = base.model
    tower = model.tower
    assert isinstance(tower, FeatureTower)
    spec = tower.spec
    base_ids = _id_map(base.items.external, base.items.numeric, 1)
    stored = [(i, b) for i, b in stored if base.items.internal(base.items.canonical(i)) < 0]  # not trained on
    rows = [added.encode(base, base_ids, item, body) for item, body in stored]
    n = len(base.items)
    text = None
    if spec.uses_text:
        text = torch.cat([tower.text[: n + 1].cpu(), *[r.text.cpu() for r in rows if r.text is not None]])
    features = None
    if spec.uses_features:
        cats = [torch.cat([getattr(tower, f"cat_{i}")[: n + 1].cpu(), *[r.features.cat[i] for r in rows
                                                                         if r.features is not None]])
                for i in range(len(spec.schema.categorical))]
        num = torch.cat([tower.num[: n + 1].cpu(), *[r.features.num for r in rows
                                                     if r.features is not None and r.features.num is not None]])
        features = FeatureTensors(cats, num)
    new_ids = [_typed(base, item) for item, _ in stored]
    catalog = _id_map([*base.items.external, *new_ids], base.items.numeric, 1)
    moved = move_to_catalog(model, base_ids, catalog, TowerInputs(spec, features, text))
    titles = None
    if base.titles is not None:
        titles = [*base.titles, *[str(body.get("title") or item) for item, body in stored]]
    users = _id_map(base.users.external, base.users.numeric, 0)
    dataset = Dataset("served", base.sequences, users, catalog, titles)
    index_mode = "exact" if base.ann is None else base.index_kind
    # a version of its own: answers (and recurrent states) cached for the catalog before are never reused
    digest = hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()[:12]
    version = f"{base.version}+{len(stored)}items-{digest}"
    extended = ServedModel(Artifact(base.model_name, moved, dataset), version, index_mode, base.backend,
                           pseudonym_key=base.pseudonym_key)
    _bases[extended] = base
    return extended
