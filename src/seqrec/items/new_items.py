"""Items added after training: embedded from their attributes and text by a trained feature/text tower,
scored beside the training catalog (``seqrec recommend ARTIFACT --history ... --new-items items.csv``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from seqrec.data.features import FeatureTensors, ItemFeaturesConfig, encode_features, read_item_table, text_of
from seqrec.data.ids import IdMap
from seqrec.errors import SeqrecError
from seqrec.items.features import FeatureTower, TowerSpec
from seqrec.items.text import TextEncoder, embed_texts, encoder_named
from seqrec.items.tower import ItemTable
from seqrec.models.base import SequenceModel
from seqrec.scoring import catalog_scores


@dataclass
class NewItems:
    ids: np.ndarray  # (M,) external ids, as given
    features: FeatureTensors | None
    text: torch.Tensor | None  # (M, T + 1)


def feature_tower_of(model: SequenceModel) -> FeatureTower:
    tower = getattr(model, "tower", None)
    if not isinstance(tower, FeatureTower) or not (tower.spec.uses_features or tower.spec.uses_text):
        raise SeqrecError("this artifact embeds item ids only, so it cannot score new items; train with "
                          "--item-mode text, features+text or id+text (with --item-features/--item-text)")
    return tower


def encoder_for(spec: TowerSpec) -> TextEncoder:
    """The sentence encoder that embedded the artifact's text (the default one, as it ran or as the int8 model;
    another must come from Python)."""
    encoder = encoder_named(spec.text_encoder)
    if encoder is None:
        raise SeqrecError(f"this artifact's text was embedded by {spec.text_encoder!r}; pass that encoder "
                          "from Python (encoder=...)")
    return encoder


def read_new_items(path: str | Path, spec: TowerSpec, catalog: IdMap, config: ItemFeaturesConfig | None = None,
                   encoder: TextEncoder | None = None) -> NewItems:
    """The new items of ``path`` (one row each: the feature columns and text columns the artifact was trained
    with), encoded with the artifact's vocabularies; an id already in the catalog is an error."""
    cfg = config or ItemFeaturesConfig()
    return new_items_from_frame(read_item_table(path, cfg.item_id_col), spec, catalog, str(path), cfg, encoder)


def new_items_from_frame(frame: pd.DataFrame, spec: TowerSpec, catalog: IdMap, source: str,
                         config: ItemFeaturesConfig | None = None, encoder: TextEncoder | None = None) -> NewItems:
    """New items from a frame indexed by item id (what a service builds from a request body)."""
    cfg = config or ItemFeaturesConfig()
    path = source
    if not len(frame):
        raise SeqrecError(f"{path}: no items in it")
    known = catalog.to_internal(np.asarray(frame.index, dtype=object), strict=False)
    if (known > 0).any():
        raise SeqrecError(f"{path}: item {frame.index[int(np.flatnonzero(known > 0)[0])]!r} is in the training "
                          "catalog already; list only new items")
    rows = np.arange(1, len(frame) + 1)
    features = None
    if spec.uses_features:
        enc = encode_features(frame, rows, spec.schema, len(frame) + 1, cfg, str(path))
        features = FeatureTensors([c[1:] for c in enc.cat], enc.num[1:] if enc.num is not None else None)
    text = None
    if spec.uses_text:
        texts = list(text_of(frame, list(spec.text_cols) or None, str(path)))
        encoder = encoder or encoder_for(spec)
        if encoder.name != spec.text_encoder or encoder.dim != spec.text_dim:
            raise SeqrecError(f"the text encoder {encoder.name!r} ({encoder.dim}-dim) is not the artifact's "
                              f"{spec.text_encoder!r} ({spec.text_dim}-dim)")
        arr, _ = embed_texts(texts, encoder, progress=False)
        text = torch.cat([torch.from_numpy(arr), torch.zeros(len(texts), 1)], dim=1)
    return NewItems(np.asarray(frame.index, dtype=object), features, text)


@torch.no_grad()
def scores_with_new_items(model: SequenceModel, history: list[int], new: NewItems,
                          exclude_seen: bool = True) -> torch.Tensor:
    """(N + 1 + M,) scores of the catalog (padding at -inf, seen items too unless asked) then the new items."""
    tower = feature_tower_of(model)
    model.eval()
    window = history[-model.config.max_len:]
    padded = [0] * (model.config.max_len - len(window)) + window  # left-padded to the window, as evaluation does
    items = torch.tensor([padded], dtype=torch.long, device=model.device)
    query = model.predict_next(items)  # (1, D)
    old = catalog_scores(query, model.item_table())[0].float()
    if exclude_seen:
        old[torch.tensor(history, dtype=torch.long, device=old.device)] = float("-inf")
    weight, bias = tower.new_item_table(new.features, new.text)
    table = model.similarity.items(ItemTable(weight, bias))
    fresh = query @ table.weight.T
    if table.bias is not None:
        fresh = fresh + table.bias
    return torch.cat([old, fresh[0].float()])


def recommend_with_new_items(model: SequenceModel, catalog: IdMap, history: list[int], new: NewItems, k: int,
                             exclude_seen: bool = True) -> pd.DataFrame:
    """Top-k over the training catalog and the new items together; ``new`` marks the new ones."""
    scores = scores_with_new_items(model, history, new, exclude_seen)
    n = len(catalog)
    k = min(k, int(torch.isfinite(scores).sum()))
    top = torch.topk(scores, k)
    idx, val = top.indices.cpu().numpy(), top.values.cpu().numpy()
    ids = [new.ids[i - n - 1] if i > n else catalog.to_external(np.array([i]))[0] for i in idx]
    return pd.DataFrame({"rank": np.arange(1, k + 1), "item_id": ids, "score": val, "new": idx > n})


def recommend_new(model: SequenceModel, catalog: IdMap, history: list[str], path: str | Path, k: int,
                  exclude_seen: bool = True, encoder: TextEncoder | None = None,
                  data_config: dict[str, Any] | None = None) -> pd.DataFrame:
    """``seqrec recommend --history ... --new-items FILE``: check the artifact first, then read the file."""
    tower = feature_tower_of(model)
    internal = catalog.to_internal(history, strict=False)
    known = [int(i) for i in internal if i > 0]
    if not known:
        raise SeqrecError("none of the history items are known to the model; check the item ids")
    trained = (data_config or {}).get("items", {})  # how the training files were read: the same separators
    config = ItemFeaturesConfig(multi_sep=str(trained.get("multi_sep", "|")),
                                max_values=int(trained.get("max_values", 1000)))
    new = read_new_items(path, tower.spec, catalog, config, encoder)
    return recommend_with_new_items(model, catalog, known, new, k, exclude_seen)
