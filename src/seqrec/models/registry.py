"""Model names -> (config class, encoder class)."""

from __future__ import annotations

import dataclasses
from typing import Any

from seqrec.errors import SeqrecError
from seqrec.models.base import SequenceEncoder
from seqrec.models.bert4rec import BERT4RecConfig, BERT4RecEncoder
from seqrec.models.gru4rec import GRU4RecConfig, GRU4RecEncoder
from seqrec.models.hstu import HSTUConfig, HSTUEncoder
from seqrec.models.layers import SIZES
from seqrec.models.lstm import LSTMConfig, LSTMEncoder
from seqrec.models.popular import PopularConfig, PopularEncoder
from seqrec.models.sasrec import SASRecConfig, SASRecEncoder

MODELS: dict[str, tuple[type, type[SequenceEncoder]]] = {
    "lstm": (LSTMConfig, LSTMEncoder),
    "gru4rec": (GRU4RecConfig, GRU4RecEncoder),
    "popular": (PopularConfig, PopularEncoder),
    "sasrec": (SASRecConfig, SASRecEncoder),
    "bert4rec": (BERT4RecConfig, BERT4RecEncoder),
    "hstu": (HSTUConfig, HSTUEncoder),
}
ATTENTION_MODELS = ("sasrec", "bert4rec", "hstu")


def model_names() -> list[str]:
    return list(MODELS)


def make_config(name: str, size: str | None = None, **params: Any) -> Any:
    """Build a model's config from keyword params, ignoring those it does not take.

    ``size`` picks a preset (dim, n_layers, n_heads) for the attention models; explicit
    params override it.
    """
    if name not in MODELS:
        raise SeqrecError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if size is not None:
        if size not in SIZES:
            raise SeqrecError(f"unknown size {size!r}; choose one of: {', '.join(SIZES)}")
        if name not in ATTENTION_MODELS:
            raise SeqrecError(f"--size applies to {', '.join(ATTENTION_MODELS)}, not {name}")
        dim, n_layers, n_heads = SIZES[size]
        params = {"dim": dim, "n_layers": n_layers, "n_heads": n_heads, "ff_dim": 4 * dim} | {
            k: v for k, v in params.items() if v is not None}
    cls = MODELS[name][0]
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in fields and v is not None})


def build_model(name: str, config: Any) -> SequenceEncoder:
    return MODELS[name][1](config)


def create(name: str, **params: Any) -> SequenceEncoder:
    return build_model(name, make_config(name, **params))
