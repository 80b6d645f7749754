"""The search space of `seqrec tune`: which settings are searched, over which values.

A parameter is a setting's dotted path in the run's TOML file (``train.lr``, ``model.dim``,
``train.loss.name``) with a range (``low``, ``high``, optional ``log`` and ``step``) or a list of
``choices``. Each model has a default space, centred on the settings that trained it best on the
Amazon benchmarks (full cross-entropy, 1-2 blocks of width 256, dropout 0.3-0.4, learning rate 1e-3);
a TOML file overrides or adds parameters::

    [train.lr]
    low = 3e-4
    high = 3e-3
    log = true

    [model.dim]
    choices = [128, 256]

``defaults = false`` at the top of the file searches only the file's parameters. A setting given as
a flag or in ``--config`` is fixed: it leaves the default space.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from seqrec.errors import SeqrecError
from seqrec.models.registry import MODELS
from seqrec.runconfig import RunConfig, not_applicable, run_config_dict, run_config_from_dict, setting_names
from seqrec.settings import deep_merge, load_toml, nearest, type_hints
from seqrec.train.config import TrainConfig

SPEC_KEYS = ("low", "high", "log", "step", "choices")
ROOTS = ("model", "train")


@dataclass(frozen=True)
class Param:
    """One searched setting: a range (``low``..``high``, ``log`` scale, ``step``) or ``choices``."""

    path: str  # dotted path in the run's TOML file, e.g. "train.lr"
    kind: str  # "int", "float" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.path} in {list(self.choices)}"
        scale = ", log" if self.log else ""
        step = f", step {self.step:g}" if self.step is not None else ""
        return f"{self.path} in [{self.low:g}, {self.high:g}{scale}{step}]"

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this parameter's range or choices."""
        if self.kind == "choice":
            return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and value != int(value):
            return False
        return (self.low or 0) <= value <= (self.high or 0)

    def to_json(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"path": self.path, "choices": list(self.choices)}
        return {"path": self.path, "kind": self.kind, "low": self.low, "high": self.high, "log": self.log,
                "step": self.step}


def _rng(path: str, low: float, high: float, log: bool = False) -> dict[str, Any]:
    return {path: {"low": low, "high": high, "log": log}}


def _choice(path: str, *choices: Any) -> dict[str, Any]:
    return {path: {"choices": list(choices)}}


TRAINING = {**_rng("train.lr", 2e-4, 5e-3, log=True), **_choice("train.weight_decay", 0.0, 0.01, 0.1),
            **_choice("train.batch_size", 64, 128, 256)}
ATTENTION = {**_choice("model.dim", 64, 128, 256, 384), **_rng("model.n_layers", 1, 3),
             **_rng("model.dropout", 0.1, 0.6)}
RECURRENT = {**_choice("model.dim", 32, 64, 128), **_choice("model.hidden", 64, 128, 256),
             **_rng("model.n_layers", 1, 2), **_rng("model.dropout", 0.0, 0.5)}
DEFAULT_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "sasrec": {**TRAINING, **ATTENTION},
    "hstu": {**TRAINING, **ATTENTION},
    "bert4rec": {**TRAINING, **ATTENTION, **_rng("train.mask_prob", 0.1, 0.6)},  # 0.6: BERT4Rec's best on Beauty
    "gru4rec": {**TRAINING, **RECURRENT},
    "lstm": {**TRAINING, **RECURRENT},
}


def setting_hint(model: str, path: str) -> Any:
    """The type of the setting at ``path`` for ``model``; an unknown path is a one-line error."""
    root, _, rest = path.partition(".")
    if root == "model" and rest:
        if rest not in setting_names(model):
            raise SeqrecError(f"search space: {not_applicable(model, rest, path)}")
        return type_hints(MODELS[model][0]).get(rest, Any)
    if root == "train" and rest:
        cls: Any = TrainConfig
        parts = rest.split(".")
        for i, part in enumerate(parts):
            names = [f.name for f in fields(cls)]
            if part not in names:
                known = [f"train.{'.'.join([*parts[:i], n])}" for n in names]
                raise SeqrecError(f"search space: unknown setting {path!r}{nearest(path, known)}")
            hint = type_hints(cls).get(part, Any)
            if is_dataclass(hint):
                cls = hint
                continue
            if i != len(parts) - 1:
                raise SeqrecError(f"search space: {'.'.join(['train', *parts[:i + 1]])} has no settings inside it")
            return hint
        raise SeqrecError(f"search space: {path} is a table of settings, not one setting; name one inside it")
    raise SeqrecError(f"search space: {path!r}: only model.* and train.* settings can be searched"
                      f"{nearest(path, ['model.' + path, 'train.' + path])}")


def make_param(model: str, path: str, spec: Mapping[str, Any]) -> Param:
    """A parameter from its table (``low``/``high``/``log``/``step`` or ``choices``), checked."""
    for key in spec:
        if key not in SPEC_KEYS:
            raise SeqrecError(f"search space: {path}: unknown key {key!r}{nearest(key, SPEC_KEYS)}; "
                              "give low and high (with log, step) or choices")
    hint = setting_hint(model, path)
    if "choices" in spec:
        if {"low", "high", "log", "step"} & set(spec):
            raise SeqrecError(f"search space: {path}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SeqrecError(f"search space: {path}: choices must be a non-empty list")
        return Param(path, "choice", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise SeqrecError(f"search space: {path}: give both low and high, or choices")
    kind = "int" if hint in (int, int | None) else "float" if hint in (float, float | None) else ""
    if not kind:
        raise SeqrecError(f"search space: {path} is not a number; give choices = [...] instead of low/high")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            raise SeqrecError(f"search space: {path}: {name} = {value!r} must be a number")
        if kind == "int" and value is not None and value != int(value):
            raise SeqrecError(f"search space: {path}: {name} = {value!r} must be a whole number")
    if not isinstance(log, bool):
        raise SeqrecError(f"search space: {path}: log = {log!r} must be true or false")
    if low > high:
        raise SeqrecError(f"search space: {path}: low ({low:g}) is above high ({high:g})")
    if log and low <= 0:
        raise SeqrecError(f"search space: {path}: a log scale needs low > 0, got {low:g}")
    if step is not None and (step <= 0 or log):
        raise SeqrecError(f"search space: {path}: step must be positive, and cannot go with log")
    if kind == "int":
        return Param(path, kind, int(low), int(high), log, None if step is None else int(step))
    return Param(path, kind, float(low), float(high), log, None if step is None else float(step))


def _spec_tables(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(dotted path, table) of each parameter table in a nested TOML dict."""
    for key, value in data.items():
        path = f"{prefix}{key}"
        if not isinstance(value, Mapping):
            raise SeqrecError(f"search space: {path} = {value!r}: give a table [{path}] with low and high, or "
                              "choices (a fixed value is a flag or a --config setting)")
        if set(value) & set(SPEC_KEYS):
            yield path, value
        else:
            yield from _spec_tables(value, f"{path}.")


def load_space_file(path: Path) -> tuple[bool, dict[str, Mapping[str, Any]]]:
    """(whether the default space is kept, the file's parameter tables by path)."""
    data = dict(load_toml(path))
    keep = data.pop("defaults", True)
    if not isinstance(keep, bool):
        raise SeqrecError(f"{path}: defaults = {keep!r} must be true or false")
    try:
        return keep, dict(_spec_tables(data))
    except SeqrecError as exc:
        raise SeqrecError(f"{path}: {exc}") from None


def build_space(model: str, fixed: Iterable[str] = (), file: Path | None = None) -> list[Param]:
    """The parameters searched for ``model``: its default space without the ``fixed`` paths, then
    the ``file``'s tables (which may name fixed paths too: the file asks for them by name)."""
    if model not in MODELS:
        raise SeqrecError(f"unknown model {model!r}{nearest(model, MODELS)}")
    keep, tables = (True, {}) if file is None else load_space_file(file)
    fixed_set = set(fixed)
    specs: dict[str, Mapping[str, Any]] = (
        {p: s for p, s in DEFAULT_SPACES.get(model, {}).items() if p not in fixed_set} if keep else {})
    specs.update(tables)
    where = f"{file}: " if file is not None else ""
    params = []
    for path, spec in specs.items():
        try:
            params.append(make_param(model, path, spec))
        except SeqrecError as exc:
            raise SeqrecError(f"{where}{exc}") from None
    if not params:
        raise SeqrecError(f"{model} has nothing to search: " + (
            "its default space is empty (give --space FILE)" if model not in DEFAULT_SPACES or not keep
            else "every parameter of its default space is fixed by a flag or --config (give --space FILE)"))
    return params


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"train.loss.name": "ce"} -> {"train": {"loss": {"name": "ce"}}}."""
    out: dict[str, Any] = {}
    for path, value in values.items():
        *tables, key = path.split(".")
        node = out
        for table in tables:
            node = node.setdefault(table, {})
        node[key] = value
    return out


def apply(fixed: RunConfig, values: Mapping[str, Any], where: str = "") -> RunConfig:
    """The fixed run with ``values`` (dotted paths) laid over it."""
    return run_config_from_dict(deep_merge(run_config_dict(fixed), nested(values)), where)


def _values(p: Param) -> list[Any]:
    return list(p.choices) if p.kind == "choice" else [p.low, p.high]


def check_space(fixed: RunConfig, params: Sequence[Param]) -> None:
    """Every bound and choice must give a valid run on the fixed run, alone or beside one value of
    another parameter (n_heads = 3 needs a dim it divides), so that a typo such as lr low = -1 fails
    before any training. Other invalid combinations fail their trial only."""
    for p in params:
        partners: list[dict[str, Any]] = [{}, *({q.path: v} for q in params if q is not p for v in _values(q))]
        for value in _values(p):
            errors = []
            for partner in partners:
                try:
                    apply(fixed, {**partner, p.path: value})
                    break
                except SeqrecError as exc:
                    errors.append(exc)
            else:
                raise SeqrecError(f"search space: {p.path} = {value!r} is not a valid setting: {errors[0]}")
