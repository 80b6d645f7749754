"""Settings declared once: a config dataclass field carries its default, help text and valid values.

Command-line flags, TOML config files and benchmark scripts are generated from these fields; a
wrong value or an unknown setting is an error that names the nearest valid one.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import numbers
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from seqrec.errors import SeqrecError

T = TypeVar("T")
Check = Callable[[str, Any], None]  # (name, value) -> None, raises SeqrecError on a bad value


def setting(default: Any, help: str, choices: tuple[Any, ...] | None = None, low: float | None = None,
            flag: str | None = None, *, above: float | None = None, high: float | None = None,
            check: Check | None = None, parse: Callable[[str], Any] | None = None, added: bool = False) -> Any:
    """A dataclass field with its help text and validation.

    ``choices`` restricts the value; ``low`` / ``above`` bound a number from below (inclusive /
    exclusive), ``high`` from above (inclusive); None values pass the bounds. ``check(name, value)``
    is any other test. ``flag`` renames the command-line flag (``"negatives"`` gives
    ``--negatives``); for a switch, ``"on/off"`` names both spellings (default ``--x/--no-x``).
    ``parse`` turns the flag's text into the value (default: by the field's type). ``added`` marks a
    model setting introduced after artifacts without it were written, whose default is what those
    artifacts did: an artifact that lacks it loads with the default.
    """
    meta = {"help": help, "choices": choices, "low": low, "flag": flag, "above": above, "high": high,
            "check": check, "parse": parse, "added": added}
    return field(default=default, metadata=meta)


def with_added(cls: type, table: Mapping[str, Any]) -> dict[str, Any]:
    """``table`` (a config's settings by name) with every setting of ``cls`` marked ``added`` that it lacks
    at its default: what a config written before that setting existed meant."""
    return {**{f.name: f.default for f in fields(cls) if f.metadata.get("added") and f.name not in table}, **table}


# ---- validation -------------------------------------------------------------------------------


def check_fields(config: Any) -> None:
    """Check every field of a config dataclass: its type, declared choices, bounds and check."""
    hints = type_hints(type(config))
    for f in fields(config):
        check_value(f, hints.get(f.name, Any), getattr(config, f.name), f.name)


def check_value(f: Field[Any], hint: Any, value: Any, name: str) -> None:
    """Check one value of field ``f``; errors call it ``name`` (a field name or a flag)."""
    expected = type_mismatch(value, hint)
    if expected is not None:
        raise SeqrecError(f"{named(name, value)} must be {expected}")
    meta = f.metadata
    choices = meta.get("choices") or _literal_choices(hint)
    if choices is not None:
        check_choice(name, value, choices)
    if value is not None and not isinstance(value, bool) and isinstance(value, numbers.Real):
        low, above, high = meta.get("low"), meta.get("above"), meta.get("high")
        if low is not None and not value >= low:  # written so that a NaN fails every bound
            raise SeqrecError(f"{named(name, value)} must be >= {low}")
        if above is not None and not value > above:
            raise SeqrecError(f"{named(name, value)} must be > {above}")
        if high is not None and not value <= high:
            raise SeqrecError(f"{named(name, value)} must be <= {high}")
    if meta.get("check") is not None:
        meta["check"](name, value)


def _literal_choices(hint: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` type (with None when optional), or None for other types."""
    options = _options(hint)
    literals = [a for o in options if typing.get_origin(o) is typing.Literal for a in typing.get_args(o)]
    if not literals:
        return None
    return (*literals, None) if type(None) in options else tuple(literals)


def named(name: str, value: Any) -> str:
    """How an error shows a setting's value: ``--lr 0.0`` for a flag, ``lr=0.0`` for a field."""
    return f"{name} {value}" if name.startswith("--") else f"{name}={value!r}"


def nearest(word: str, options: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest option, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise a one-line error when ``value`` is not one of ``choices``."""
    options = tuple(choices)
    if value not in options:
        shown = [str(o) for o in options if o is not None]  # None (a Python default) has no spelling in flags
        raise SeqrecError(f"{named(name, value)} is not valid{nearest(str(value), shown)}; "
                          f"choose one of: {', '.join(shown)}")


def type_hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a dataclass (empty when they cannot be resolved at run time)."""
    key: Any = cls  # a class is hashable, whatever its instances' __hash__
    return _type_hints(key)


@functools.cache
def _type_hints(cls: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}


def _options(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a union (``X | None``), or ``(hint,)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def type_mismatch(value: Any, hint: Any) -> str | None:
    """What a value of type ``hint`` must be, when ``value`` is not one; None when it fits."""
    options = _options(hint)
    if value is None:
        return None if type(None) in options else _describe(options)
    for option in options:
        if _fits(value, option):
            return None
    return _describe(options)


def _fits(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return False
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, str | Path)
    if typing.get_origin(hint) is typing.Literal:
        return True  # the values themselves are checked as choices
    if isinstance(hint, type) and is_dataclass(hint):
        return isinstance(value, hint)
    return True  # a type these configs do not use: not checked


def _describe(options: tuple[Any, ...]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    words = [names.get(o) or (f"a {o.__name__}" if isinstance(o, type) else str(o))
             for o in options if o is not type(None)]
    return " or ".join(words)


# ---- dicts and TOML ---------------------------------------------------------------------------


def default_of(f: Field[Any]) -> Any:
    """A field's default value (``MISSING`` for a required field)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a nested dict of TOML values. None values are left out, which is only
    allowed for fields whose default is None (so that :func:`from_dict` gives the config back)."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if value is None:
            if default_of(f) is not None:
                raise ValueError(f"{type(config).__name__}.{f.name} is None but its default is not: "
                                 "TOML has no null, so the value would not survive a round trip")
            continue
        out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build ``cls`` from a (TOML) dict, strictly: an unknown key names the nearest known one, a
    wrong type or value is a one-line error that starts with ``where`` (e.g. ``"run.toml [train]"``).
    Missing keys take their defaults; nested dataclasses come from nested tables."""
    if not isinstance(data, Mapping):
        raise SeqrecError(f"{where}: must be a table, found {data!r}")
    known = {f.name: f for f in fields(cls) if f.init}  # type: ignore[arg-type]
    hints = type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise SeqrecError(f"{where_prefix(where)}unknown key {key!r}{nearest(key, known)}; "
                              f"known keys: {', '.join(known)}")
        kwargs[key] = convert_value(value, hints.get(key, Any), where, key)
    missing = [name for name, f in known.items() if name not in kwargs and default_of(f) is MISSING]
    if missing:
        raise SeqrecError(f"{where_prefix(where)}missing key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except (SeqrecError, ValueError) as exc:  # a config's own validation of the values
        raise SeqrecError(f"{where_prefix(where)}{exc}") from None


def where_prefix(where: str) -> str:
    """``"run.toml [train]: "`` to start an error message, or nothing when ``where`` is empty."""
    return f"{where}: " if where else ""


def nested_where(where: str, key: str) -> str:
    """``"run.toml [train]"`` -> ``"run.toml [train.loss]"``; an empty ``where`` stays empty."""
    if not where:
        return ""
    return f"{where[:-1]}.{key}]" if where.endswith("]") else f"{where} [{key}]"


def convert_value(value: Any, hint: Any, where: str, key: str) -> Any:
    """A TOML value for field ``key`` of type ``hint``, type-checked (ints widen to floats)."""
    options = _options(hint)
    for option in options:
        if isinstance(option, type) and is_dataclass(option) and isinstance(value, Mapping):
            return from_dict(option, value, nested_where(where, key))
    expected = type_mismatch(value, hint)
    if expected is not None:
        raise SeqrecError(f"{where_prefix(where)}{key} = {value!r} must be {expected}")
    if float in options and int not in options and not isinstance(value, bool) and isinstance(value, int):
        return float(value)
    if Path in options and isinstance(value, str):
        return Path(value)
    return value


def dump_toml(data: Mapping[str, Any]) -> str:
    """A nested dict (no None values) as TOML text."""
    return tomli_w.dumps(dict(data))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing file or a syntax error is a one-line error."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SeqrecError(f"{p}: no such config file; check the path") from None
    except IsADirectoryError:
        raise SeqrecError(f"{p}: is a directory; give the TOML file inside it") from None
    except tomllib.TOMLDecodeError as exc:
        raise SeqrecError(f"{p}: not valid TOML: {exc}; fix the file") from None
    except UnicodeDecodeError:
        raise SeqrecError(f"{p}: not valid TOML: not UTF-8 text") from None
    except OSError as exc:
        raise SeqrecError(f"{p}: cannot read: {exc.strerror}") from None


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``, table by table."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ---- command-line flags -----------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """One command-line flag generated from a config field."""

    path: tuple[str, ...]  # field names from the top config down, e.g. ("train", "loss", "n_negatives")
    field: Field[Any]
    hint: Any  # the field's resolved type
    names: tuple[str, ...]  # ("--lr",); a switch has two: ("--logq", "--no-logq")

    @property
    def dest(self) -> str:
        return ".".join(self.path)

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def help(self) -> str:
        return str(self.field.metadata.get("help", ""))

    @property
    def is_switch(self) -> bool:
        return bool in _options(self.hint) and len(self.names) == 2

    def show(self, value: Any) -> str:
        """A value as the help text shows it: a switch by the flag that gives it."""
        if self.is_switch and isinstance(value, bool):
            return self.names[0] if value else self.names[1]
        return show_value(value)


def show_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    return str(value)


def flags_of(cls: type, prefix: tuple[str, ...] = (), renames: Mapping[str, str] | None = None,
             exclude: Iterable[str] = ()) -> list[Flag]:
    """The flags of every field of ``cls`` that has help text, nested dataclasses flattened (their
    fields' flags are not prefixed). ``renames`` maps a dotted path to a flag spelling, for fields
    whose class does not set ``flag``; ``exclude`` drops dotted paths."""
    out: list[Flag] = []
    hints = type_hints(cls)
    for f in fields(cls):
        path = (*prefix, f.name)
        hint = hints.get(f.name, Any)
        if ".".join(path) in exclude:
            continue
        if isinstance(hint, type) and is_dataclass(hint):
            out += flags_of(hint, path, renames, exclude)
        elif "help" in f.metadata:
            spelling = f.metadata.get("flag") or (renames or {}).get(".".join(path)) or f.name.replace("_", "-")
            out.append(Flag(path, f, hint, _flag_names(spelling, bool in _options(hint))))
    return out


def _flag_names(spelling: str, switch: bool) -> tuple[str, ...]:
    parts = [p.strip().lstrip("-") for p in spelling.split("/")]
    if switch:
        return (f"--{parts[0]}", f"--{parts[1]}" if len(parts) > 1 else f"--no-{parts[0]}")
    return (f"--{parts[0]}",)


class _Switch(argparse.Action):
    """``--x`` sets True, its other spelling (``--no-x``) False."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, option_string == self.option_strings[0])


def add_flag(group: Any, flag: Flag, help: str) -> None:
    """Add ``flag`` to an argparse parser or group. Its default is SUPPRESS, so that only the flags
    given on the command line reach the namespace (a config file's values stand otherwise)."""
    text = help.replace("%", "%%")
    if flag.is_switch:
        group.add_argument(*flag.names, dest=flag.dest, action=_Switch, default=argparse.SUPPRESS, help=text)
        return
    choices = flag.field.metadata.get("choices")
    base = next((o for o in _options(flag.hint) if o is not type(None)), str)
    metavar = ("{" + ",".join(str(c) for c in choices if c is not None) + "}" if choices
               else flag.name.lstrip("-").replace("-", "_").upper())
    parse = flag.field.metadata.get("parse") or (base if base in (int, float) else str)
    group.add_argument(flag.name, dest=flag.dest, type=parse, default=argparse.SUPPRESS, metavar=metavar, help=text)


def flag_help(flag: Flag, default: Any) -> str:
    """The help line: the field's help text and its default."""
    return f"{flag.help} (default: {flag.show(default)})"


def given(args: argparse.Namespace, flags: Iterable[Flag]) -> dict[str, Any]:
    """The flags given on the command line, as a nested dict along each flag's path."""
    out: dict[str, Any] = {}
    for flag in flags:
        if hasattr(args, flag.dest):
            table = out
            for key in flag.path[:-1]:
                table = table.setdefault(key, {})
            table[flag.path[-1]] = getattr(args, flag.dest)
    return out


def check_given(args: argparse.Namespace, flags: Iterable[Flag]) -> None:
    """Check each given flag's value on its own, so that an error names the flag."""
    for flag in flags:
        if hasattr(args, flag.dest):
            check_value(flag.field, flag.hint, getattr(args, flag.dest), flag.name)


def value_at(config: Any, path: Sequence[str]) -> Any:
    """``config.train.loss.name`` for the path ``("train", "loss", "name")``."""
    for key in path:
        config = getattr(config, key)
    return config
