"""Model names -> (config class, encoder class)."""

from __future__ import annotations

import dataclasses
from typing import Any

from seqrec.errors import SeqrecError
from seqrec.models.base import SequenceEncoder
from seqrec.models.gru4rec import GRU4RecConfig, GRU4RecEncoder
from seqrec.models.lstm import LSTMConfig, LSTMEncoder
from seqrec.models.popular import PopularConfig, PopularEncoder

MODELS: dict[str, tuple[type, type[SequenceEncoder]]] = {
    "lstm": (LSTMConfig, LSTMEncoder),
    "gru4rec": (GRU4RecConfig, GRU4RecEncoder),
    "popular": (PopularConfig, PopularEncoder),
}


def model_names() -> list[str]:
    return list(MODELS)


def make_config(name: str, **params: Any) -> Any:
    """Build a model's config from keyword params, ignoring those it does not take."""
    if name not in MODELS:
        raise SeqrecError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    cls = MODELS[name][0]
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in fields and v is not None})


def build_model(name: str, config: Any) -> SequenceEncoder:
    return MODELS[name][1](config)


def create(name: str, **params: Any) -> SequenceEncoder:
    return build_model(name, make_config(name, **params))
