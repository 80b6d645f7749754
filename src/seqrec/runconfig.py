"""A whole training run's settings (model, training, data) and their TOML file.

The file has three tables::

    [model]          # name = "sasrec", then the model's settings (max_len, dim, ...; size = "tiny" for a preset)
    [train]          # TrainConfig, with [train.loss]
    [data]           # DataConfig, with [data.read] and [data.preprocess]

Every table and key is optional (defaults fill in); an unknown one is an error naming the nearest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from seqrec.data.config import DataConfig
from seqrec.errors import SeqrecError
from seqrec.models.layers import SIZES
from seqrec.models.registry import MODELS, make_config
from seqrec.settings import (
    check_choice,
    check_fields,
    convert_value,
    dump_toml,
    from_dict,
    load_toml,
    nearest,
    nested_where,
    setting,
    to_dict,
    type_hints,
    where_prefix,
)
from seqrec.train.config import TrainConfig

SECTIONS = ("model", "train", "data")
IGNORED_KEYS = ("format_version",)  # artifact bookkeeping a run's file may carry at the top level


@dataclass(frozen=True)
class RunConfig:
    model: str = setting("gru4rec", "the model to train", choices=tuple(MODELS))
    # the model config's fields but n_items (set from the data); resolved on construction, so that a
    # size preset and the model's defaults are written out and a rerun gets the same model
    model_config: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "model_config", resolve_model(self.model, self.model_config))


def model_settings(config: Any) -> dict[str, Any]:
    """A model config as TOML values, without the data-given n_items."""
    return {k: v for k, v in to_dict(config).items() if k != "n_items"}


def setting_names(model: str) -> list[str]:
    """The settings ``model`` takes (its config fields but n_items)."""
    return [f.name for f in fields(MODELS[model][0]) if f.name != "n_items"]


def not_applicable(model: str, key: str, spelled: str | None = None) -> str:
    """Why ``key`` is no setting of ``model``: the models that take it, or the nearest setting it has."""
    takers = [name for name in MODELS if key in setting_names(name)]
    if takers:
        return f"{spelled or key} does not apply to {model} (models: {', '.join(takers)})"
    options = [*setting_names(model), *(["size"] if size_keys(model) else [])]
    return f"{model} has no setting {spelled or key!r}{nearest(key, options)}; it takes: {', '.join(options)}"


def resolve_model(model: str, params: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Check ``params`` for ``model`` (names, types, values), apply a ``size`` preset, and return all
    of the model's settings. ``n_items`` is ignored: it comes from the data."""
    check_choice("model", model, MODELS)
    hints = type_hints(MODELS[model][0])
    own = setting_names(model)
    typed: dict[str, Any] = {}
    for key, value in params.items():
        if key == "size":
            typed[key] = convert_value(value, str, where, key)
        elif key in own:
            typed[key] = convert_value(value, hints.get(key, Any), where, key)
        elif key != "n_items":
            raise SeqrecError(f"{where_prefix(where)}{not_applicable(model, key)}")
    try:
        return model_settings(make_config(model, n_items=1, **typed))
    except SeqrecError as exc:
        raise SeqrecError(f"{where_prefix(where)}{exc}") from None


def size_keys(model: str) -> set[str]:
    """The settings that some size preset sets for ``model`` (none for a model without presets)."""
    plain = resolve_model(model, {})
    keys: set[str] = set()
    for size in SIZES:
        try:
            sized = resolve_model(model, {"size": size})
        except SeqrecError:  # the model takes no size
            return set()
        keys |= {k for k in sized.keys() | plain.keys() if sized.get(k) != plain.get(k)}
    return keys


# ---- TOML -------------------------------------------------------------------------------------


def run_config_dict(run: RunConfig) -> dict[str, Any]:
    """The run as the nested dict of its TOML file."""
    return {"model": {"name": run.model, **run.model_config}, "train": to_dict(run.train),
            "data": to_dict(run.data)}


def run_config_from_dict(data: Mapping[str, Any], where: str = "") -> RunConfig:
    """A run from the nested dict of its TOML file (strict; errors start with ``where``, e.g. the path)."""
    for key in data:
        if key not in (*SECTIONS, *IGNORED_KEYS):
            raise SeqrecError(f"{where_prefix(where)}unknown table [{key}]{nearest(key, SECTIONS)}; "
                              "the tables are [model], [train] and [data]")
    for key in SECTIONS:
        if not isinstance(data.get(key, {}), Mapping):
            raise SeqrecError(f"{where_prefix(where)}{key} must be a table [{key}]")
    model = dict(data.get("model", {}))
    name = convert_value(model.pop("name", RunConfig.model), str, nested_where(where, "model"), "name")
    try:
        check_choice("name", name, MODELS)
    except SeqrecError as exc:
        raise SeqrecError(f"{where_prefix(nested_where(where, 'model'))}{exc}") from None
    return RunConfig(name, resolve_model(name, model, nested_where(where, "model")),
                     from_dict(TrainConfig, data.get("train", {}), nested_where(where, "train")),
                     from_dict(DataConfig, data.get("data", {}), nested_where(where, "data")))


def run_config_toml(run: RunConfig) -> str:
    """The run's TOML file: ``load_run_config`` reads it back to an equal RunConfig."""
    return dump_toml(run_config_dict(run))


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run's TOML file (one-line errors naming the file, the table and the nearest key)."""
    return run_config_from_dict(load_toml(path), str(path))
