"""Model names -> (config class, model class)."""

from __future__ import annotations

import dataclasses
from typing import Any

from seqrec.errors import SeqrecError
from seqrec.items.tower import ItemTower
from seqrec.models.base import ModelConfig, SequenceModel
from seqrec.models.bert4rec import BERT4RecConfig, BERT4RecModel
from seqrec.models.gru4rec import GRU4RecConfig, GRU4RecModel
from seqrec.models.hstu import HSTUConfig, HSTUModel
from seqrec.models.layers import SIZES
from seqrec.models.lstm import LSTMConfig, LSTMModel
from seqrec.models.popular import PopularConfig, PopularModel
from seqrec.models.sasrec import SASRecConfig, SASRecModel
from seqrec.settings import check_choice, nearest

MODELS: dict[str, tuple[type[ModelConfig], type[SequenceModel]]] = {
    "lstm": (LSTMConfig, LSTMModel),
    "gru4rec": (GRU4RecConfig, GRU4RecModel),
    "popular": (PopularConfig, PopularModel),
    "sasrec": (SASRecConfig, SASRecModel),
    "bert4rec": (BERT4RecConfig, BERT4RecModel),
    "hstu": (HSTUConfig, HSTUModel),
}
ATTENTION_MODELS = ("sasrec", "bert4rec", "hstu")


def model_names() -> list[str]:
    return list(MODELS)


def settings_of(name: str) -> list[str]:
    """The settings a model takes (its config fields, without the data-given n_items)."""
    check_choice("model", name, MODELS)
    return [f.name for f in dataclasses.fields(MODELS[name][0]) if f.name != "n_items"]


def make_config(name: str, size: str | None = None, **params: Any) -> Any:
    """Build a model's config from keyword params; a param the model does not take is an error.

    ``size`` picks a preset (dim, n_layers, n_heads, ff_dim = 4 dim) for the attention models;
    explicit params override it. ``None`` values mean "the model's default".
    """
    check_choice("model", name, MODELS)
    params = {k: v for k, v in params.items() if v is not None}
    if size is not None:
        check_choice("size", size, SIZES)
        if name not in ATTENTION_MODELS:
            raise SeqrecError(f"size applies to {', '.join(ATTENTION_MODELS)}, not {name}")
        dim, n_layers, n_heads = SIZES[size]
        preset = {"dim": dim, "n_layers": n_layers, "n_heads": n_heads, "ff_dim": 4 * dim}
        params = {k: v for k, v in preset.items() if k in _fields(name)} | params
    known = _fields(name)
    for key in params:
        if key not in known:
            raise SeqrecError(f"model {name} has no setting {key!r}{nearest(key, known)}; "
                              f"it takes: {', '.join(settings_of(name))}")
    try:
        return MODELS[name][0](**params)
    except (TypeError, ValueError) as exc:
        raise SeqrecError(f"model {name}: {exc}") from None


def _fields(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(MODELS[name][0])}


def build_model(name: str, config: Any, tower: ItemTower | None = None) -> SequenceModel:
    """The model for a config; ``tower`` replaces the item tower the config would build."""
    cls = MODELS[name][1]
    return cls(config) if tower is None else cls(config, tower)


def create(name: str, **params: Any) -> SequenceModel:
    return build_model(name, make_config(name, **params))
