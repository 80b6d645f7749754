"""A trained model moved onto another catalog without training there (``seqrec evaluate ARTIFACT --data OTHER
--item-text OTHER_TEXT``), and items held out of training scored beside the trained ones.

The model is rebuilt for the other catalog: every weight that does not belong to an item (the encoder, the
text projection, the attribute embeddings of the artifact's vocabularies, the combination layer) is copied;
the other catalog's items get their vectors from their own text and attributes through those weights. In a
mode with an id part, an item the artifact knows keeps its trained id vector and a new one gets none (zero,
as for :meth:`FeatureTower.new_item_table`). An id-only model has no vector for a new item: it is refused,
or (``unscorable="exclude"``, for comparisons on held-out items) every new item scores minus infinity.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import torch
from torch import nn

from seqrec.data.features import ItemFeaturesConfig
from seqrec.data.ids import IdMap
from seqrec.data.preprocess import Dataset
from seqrec.data.split import EvalSet, make_split
from seqrec.errors import SeqrecError
from seqrec.items.features import FeatureTower, TowerInputs, TowerSpec, build_with_tower, prepare_tower
from seqrec.items.text import TextEncoder
from seqrec.models.base import SequenceModel

ROW_KEYS = ("tower.id_emb.weight", "tower.output.weight", "tower.output.bias", "tower.bias")  # one row per item
TABLE_BUFFER = re.compile(r"tower\.(text|num|cat_\d+)$")  # the catalog's encoded text and attributes
UNSCORABLE = ("refuse", "exclude")


def item_spec(model: SequenceModel) -> TowerSpec | None:
    spec = getattr(model.tower, "spec", None)
    return spec if isinstance(spec, TowerSpec) else None


def require_inductive(model: SequenceModel) -> TowerSpec:
    """The model's tower spec, if it embeds items from text or attributes; else one clear error."""
    spec = item_spec(model)
    if spec is None or not (spec.uses_text or spec.uses_features):
        raise SeqrecError("this model embeds item ids only; it has no vector for an item it was not trained on "
                          "(train with --item-mode text, features+text or features for zero-shot evaluation)")
    return spec


def other_catalog_inputs(model: SequenceModel, items: IdMap, item_text: str | None = None,
                         item_features: str | None = None, text_cols: str | None = None,
                         item_id_col: str | None = None, data_config: dict[str, Any] | None = None,
                         encoder: TextEncoder | None = None) -> TowerInputs | None:
    """The other catalog's text/attribute tables, read and encoded the way the artifact's were (its schema,
    its separators, its text encoder)."""
    spec = item_spec(model)
    if spec is None:
        return None
    trained = (data_config or {}).get("items", {})
    cols = text_cols if text_cols is not None else (",".join(spec.text_cols) or None)
    if spec.uses_text and item_text is None:
        raise SeqrecError(f"this model reads item text (item mode {spec.mode}); give the other catalog's text "
                          "with --item-text FILE")
    if spec.uses_features and item_features is None:
        raise SeqrecError(f"this model reads item attributes (item mode {spec.mode}); give the other catalog's "
                          "attributes with --item-features FILE")
    config = ItemFeaturesConfig(item_features=item_features if spec.uses_features else None,
                                item_text=item_text if spec.uses_text else None, text_cols=cols,
                                item_id_col=item_id_col, multi_sep=str(trained.get("multi_sep", "|")),
                                max_values=int(trained.get("max_values", 1000)), item_mode=spec.mode,
                                combine=spec.combine)
    if spec.uses_text and encoder is None:
        from seqrec.items.new_items import encoder_for

        encoder = encoder_for(spec)
    inputs = prepare_tower(config, items, encoder, schema=spec.schema if spec.uses_features else None)
    if spec.uses_text and (inputs.spec.text_encoder != spec.text_encoder or inputs.spec.text_dim != spec.text_dim):
        raise SeqrecError(f"the text encoder {inputs.spec.text_encoder!r} is not the artifact's {spec.text_encoder!r}")
    return inputs


@torch.no_grad()
def move_to_catalog(model: SequenceModel, trained: IdMap, other: IdMap, inputs: TowerInputs | None,
                    unscorable: str = "refuse") -> SequenceModel:
    """``model`` rebuilt for the catalog ``other`` (see the module docstring); ``trained`` is its own catalog."""
    if unscorable not in UNSCORABLE:
        raise SeqrecError(f"unscorable must be one of {', '.join(UNSCORABLE)}")
    spec = item_spec(model)
    known = trained.to_internal(np.asarray(other.external, dtype=object), strict=False)  # (M,) -1: new
    if unscorable == "refuse":
        require_inductive(model)
    name = str(model.name)
    config = dataclasses.replace(model.config, n_items=len(other))
    new_spec = dataclasses.replace(spec, users=None) if spec is not None else None
    fresh: SequenceModel = build_with_tower(name, config, new_spec,
                                            inputs.features if inputs is not None else None,
                                            inputs.text if inputs is not None else None)
    fresh.to(model.device)
    old_state, new_state = model.state_dict(), fresh.state_dict()
    n_old, n_new = int(model.config.n_items), len(other)
    uses_id = spec is None or spec.uses_id
    src = torch.from_numpy(np.concatenate([[0], known[known > 0]]))  # row 0 (padding) too
    dst = torch.from_numpy(np.concatenate([[0], np.flatnonzero(known > 0) + 1]))
    for key, value in new_state.items():
        if key.startswith("user_tower.") or TABLE_BUFFER.match(key) or key not in old_state:
            continue
        old = old_state[key]
        if key in ROW_KEYS and uses_id:
            value.zero_()
            value[dst] = old[src].to(value.dtype)
            extra = old.shape[0] - (n_old + 1)  # input-only rows after the catalog (BERT4Rec's mask token)
            if extra > 0:
                value[n_new + 1:] = old[n_old + 1:]
            continue
        if old.shape != value.shape:
            raise SeqrecError(f"internal error: {key} is {tuple(old.shape)} in the artifact, {tuple(value.shape)} "
                              "for the other catalog")
        value.copy_(old)
    fresh.load_state_dict(new_state)
    if spec is None:  # id-only, unscorable="exclude": a new item has no vector, so it is never ranked
        _exclude(fresh, known)
    fresh.eval()
    return fresh


def _exclude(model: SequenceModel, known: np.ndarray) -> None:
    bias = torch.zeros(len(known) + 1, device=model.device)
    bias[0] = 0.0
    bias[1:][torch.from_numpy(known < 0).to(model.device)] = float("-inf")
    tower = model.tower
    if isinstance(tower.output, nn.Linear) and tower.output.bias is not None:
        tower.output.bias.data[torch.isinf(bias)] = float("-inf")
    elif not isinstance(tower, FeatureTower):
        current = tower.bias.data if tower.bias is not None else torch.zeros_like(bias)
        tower.bias = nn.Parameter(current + bias, requires_grad=False)




def evaluate_other(model: SequenceModel, trained: IdMap, other: Dataset, inputs: TowerInputs | None,
                   ks: tuple[int, ...], exclude_seen: bool = True, on: str = "test") -> dict[str, float]:
    """Full-ranking metrics of ``model`` on ``other``'s leave-one-out split, with no training on it."""
    from seqrec.eval.evaluate import EvalConfig, evaluate

    moved = move_to_catalog(model, trained, other.items, inputs)
    split = make_split(other)
    chosen = split.test if on == "test" else split.valid
    data = EvalSet(np.full(len(chosen), -1, dtype=np.int64), chosen.history, chosen.targets)
    return evaluate(moved, data, EvalConfig(ks=tuple(ks), exclude_seen=exclude_seen))


def read_other_log(path: str, read: Any) -> Dataset:
    """The other log, read with ``read`` (:class:`seqrec.data.io.ReadOptions`) and the default cleaning."""
    from pathlib import Path

    from seqrec.data.io import read_log
    from seqrec.data.preprocess import PreprocessOptions, build_dataset

    p = Path(path)
    return build_dataset(read_log(p, read), PreprocessOptions(), name=p.name, source=str(p),
                         header_rows=int(read.header))
