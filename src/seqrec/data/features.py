"""Item attributes and item text: their settings, their readers, and their encoding as tensors.

A feature file has one row per item id: categorical columns (one value, or several as a list or a
delimited string) and numeric columns. Readers: CSV/TSV (any delimiter), Parquet, JSON (records, an
``{id: {column: value}}`` object, or S3-Rec's ``{id: [attribute, ...]}``), MovieLens-100k ``u.item``;
gzip-transparent. Categorical values are indexed from 2 (0 is padding, 1 the learned "unknown" value
of an item the file does not describe or a value never seen in training).
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from seqrec.data.ids import IdMap
from seqrec.errors import SeqrecError
from seqrec.settings import check_fields, setting

TEXT_PRECISIONS = ("auto", "fp32", "bf16", "int8")  # how the sentence encoder computes (seqrec.items.text)

MODES = ("id", "id+features", "id+text", "id+features+text", "text", "features+text", "features")
COMBINES = ("sum", "concat", "gate")
PAD, UNKNOWN = 0, 1
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")


@dataclass(frozen=True)
class ItemFeaturesConfig:
    item_features: str | None = setting(None, "item attribute file (csv/tsv/parquet/json, .gz ok; S3-Rec "
                                        "*_item2attributes.json, MovieLens movies.csv or u.item): one row per item")
    item_text: str | None = setting(None, "item text file (csv/tsv/parquet/json, .gz ok): one row per item, "
                                    "embedded once by a frozen sentence encoder")
    text_cols: str | None = setting(None, "comma-separated text columns of --item-text (default: every column "
                                    "but the id)")
    feature_cols: str | None = setting(None, "comma-separated columns of --item-features to use (default: every "
                                       "column but the id and free-text ones)")
    text_precision: str = setting("auto", "how the sentence encoder computes: auto (bf16 autocast on a CPU with "
                                  "native bf16, else fp32; SEQREC_TEXT_PRECISION overrides), fp32, bf16, or int8 "
                                  "(ONNX Runtime, CPU; fastest, vectors at cosine ~0.99 to fp32; needs the onnx "
                                  "extra)", choices=TEXT_PRECISIONS)
    item_id_col: str | None = setting(None, "id column of the item feature/text files (default: the first)")
    multi_sep: str = setting("|", "separator of a multi-valued categorical column written as one string")
    max_values: int = setting(1000, "most values a multi-valued column may hold for one item", low=1)
    user_features: str | None = setting(None, "user attribute file (csv/tsv/parquet/json, .gz ok, MovieLens "
                                        "u.user): one row per user, the first column the user id; categorical "
                                        "and numeric columns, a zip column by its first 3 characters")
    item_mode: str = setting("id", "what the item tower embeds: ids, attributes (features), text, or a "
                             "combination; modes without 'id' are inductive (they score unseen items)",
                             choices=MODES)
    combine: str = setting("sum", "how the tower combines its parts: sum, concat (concatenation + "
                           "projection) or gate (learned softmax weights per item)", choices=COMBINES)

    def __post_init__(self) -> None:
        check_fields(self)
        if "features" in self.item_mode and self.item_features is None:
            raise SeqrecError(f"--item-mode {self.item_mode} needs --item-features FILE")
        if "text" in self.item_mode and self.item_text is None:
            raise SeqrecError(f"--item-mode {self.item_mode} needs --item-text FILE")
        if self.text_precision != "auto" and self.item_text is None:
            raise SeqrecError(f"--text-precision {self.text_precision} has no text to embed: give --item-text FILE")
        if self.item_mode == "id" and (self.item_features or self.item_text):
            raise SeqrecError("--item-features/--item-text need an --item-mode that uses them "
                              "(id+features, id+text, id+features+text, text, features+text, features)")

    @property
    def uses_features(self) -> bool:
        return "features" in self.item_mode

    @property
    def uses_text(self) -> bool:
        return "text" in self.item_mode

    @property
    def uses_id(self) -> bool:
        return self.item_mode.split("+")[0] == "id"


# ---- reading -----------------------------------------------------------------------------------


def _open_text(path: Path, encoding: str = "utf-8") -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise SeqrecError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise SeqrecError(f"{path}: not UTF-8 text (byte {exc.start}); re-encode the file as UTF-8") from None


def read_item_table(path: str | Path, id_col: str | None = None, kind: str = "item") -> pd.DataFrame:
    """The file as a frame indexed by ``kind`` id (strings), one row per id; a duplicate id is an error."""
    p = Path(path)
    if not p.is_file():
        raise SeqrecError(f"{p}: no such file")
    stem = p.name.removesuffix(".gz")
    if stem == "u.item":
        frame = _ml100k_items(_open_text(p, "latin-1"))
    elif stem == "u.user":
        frame = _ml100k_users(_open_text(p))
    elif stem.endswith(".parquet"):
        try:
            frame = pd.read_parquet(p)
        except Exception as exc:
            raise SeqrecError(f"{p}: not a readable Parquet file ({str(exc).splitlines()[0][:120]})") from None
    elif stem.endswith(".json"):
        frame = _json_frame(p, json.loads(_open_text(p)))
    else:
        text = _open_text(p)
        try:
            frame = pd.read_csv(io.StringIO(text), sep=None, engine="python", dtype=str, keep_default_na=False,
                                na_values=[""])
        except (pd.errors.ParserError, ValueError) as exc:
            raise SeqrecError(f"{p}: not a readable CSV/TSV file ({str(exc).splitlines()[0][:120]})") from None
        frame.columns = [str(c).split(":")[0] for c in frame.columns]  # RecBole headers: item_id:token
    if frame.shape[1] < 2:
        raise SeqrecError(f"{p}: needs an id column and at least one more column")
    col = id_col or str(frame.columns[0])
    if col not in frame.columns:
        raise SeqrecError(f"{p}: no id column {col!r}; columns: {', '.join(map(str, frame.columns))}")
    if frame[col].isna().any():
        raise SeqrecError(f"{p}: row {int(np.flatnonzero(frame[col].isna())[0]) + 1} has no {kind} id")
    ids = frame[col].map(_id_text)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise SeqrecError(f"{p}: {kind} id {dup.iloc[0]!r} appears {int((ids == dup.iloc[0]).sum())} times; "
                          f"give one row per {kind}")
    return frame.drop(columns=[col]).set_axis(pd.Index(ids.to_numpy(), name=f"{kind}_id"), axis=0)


def _id_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _json_frame(p: Path, data: Any) -> pd.DataFrame:
    if isinstance(data, dict):
        values = list(data.values())
        if values and all(isinstance(v, list) for v in values):  # S3-Rec item2attributes
            return pd.DataFrame({"item_id": list(data), "attributes": values})
        if values and all(isinstance(v, dict) for v in values):
            frame = pd.DataFrame.from_records(values)
            frame.insert(0, "item_id", list(data))
            return frame
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        return pd.DataFrame.from_records(data)
    raise SeqrecError(f"{p}: JSON must be a list of records, an object of records or an object of "
                      "attribute lists, keyed by item id")


def _ml100k_items(text: str) -> pd.DataFrame:
    rows = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5 + len(ML100K_GENRES):
            continue
        flags = parts[5:5 + len(ML100K_GENRES)]
        rows.append({"item_id": parts[0], "title": parts[1],
                     "genres": [g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1"]})
    return pd.DataFrame.from_records(rows)


def _ml100k_users(text: str) -> pd.DataFrame:
    """MovieLens-100k ``u.user``: ``user|age|gender|occupation|zip``, no header."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 5:
            raise SeqrecError(f"u.user line {number}: expected user|age|gender|occupation|zip, got {line[:80]!r}")
        rows.append(dict(zip(("user_id", "age", "gender", "occupation", "zip"), parts, strict=True)))
    return pd.DataFrame.from_records(rows, columns=["user_id", "age", "gender", "occupation", "zip"])


# ---- the schema and its tensors ----------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "cat" (one value or several) | "num"
    values: tuple[str, ...] = ()  # categorical vocabulary: index i + 2
    width: int = 1  # most values one item has (the index matrix's columns)
    mean: float = 0.0
    std: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "values": list(self.values), "width": self.width,
                "mean": self.mean, "std": self.std}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Column:
        return cls(str(data["name"]), str(data["kind"]), tuple(str(v) for v in data["values"]), int(data["width"]),
                   float(data["mean"]), float(data["std"]))


@dataclass(frozen=True)
class FeatureSchema:
    columns: tuple[Column, ...] = ()

    @property
    def categorical(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "cat"]

    @property
    def numeric(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "num"]

    def to_json(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in self.columns]

    @classmethod
    def from_json(cls, data: list[dict[str, Any]]) -> FeatureSchema:
        return cls(tuple(Column.from_json(c) for c in data))


@dataclass
class FeatureTensors:
    """The encoded features of rows 0..R-1 (0: padding); ``cat[i]`` is (R, width) indices, ``num`` (R, n + 1)
    standardised values and a last column of 1.0 where the file does not describe the item."""

    cat: list[torch.Tensor] = field(default_factory=list)
    num: torch.Tensor | None = None


def _values(value: Any, sep: str) -> list[str]:
    if isinstance(value, list | tuple | np.ndarray):
        return [_id_text(v) for v in value]
    text = _id_text(value)
    return [v.strip() for v in text.split(sep) if v.strip()] if sep and sep in text else [text]


def _is_free_text(series: pd.Series) -> bool:
    strings = series.map(lambda v: isinstance(v, str))
    return bool(strings.all()) and len(series) > 20 and series.nunique() > 0.9 * len(series)


def infer_schema(frame: pd.DataFrame, config: ItemFeaturesConfig, source: str) -> FeatureSchema:
    """Columns and vocabularies from the training catalog's feature file."""
    names = _chosen(frame, config.feature_cols, source)
    columns = []
    for name in names:
        series = frame[name]
        _check_missing(series, name, source)
        numeric = pd.to_numeric(series, errors="coerce")
        if not numeric.isna().any() and series.map(lambda v: not isinstance(v, list | tuple | np.ndarray)).all() \
                and series.astype(str).str.contains(r"^-?[\d.eE+-]+$").all() and series.nunique() > 20:
            std = float(numeric.std()) if len(numeric) > 1 else 1.0
            columns.append(Column(name, "num", mean=float(numeric.mean()), std=std if std > 0 else 1.0))
            continue
        if config.feature_cols is None and _is_free_text(series):
            print(f"seqrec: note: {source}: column {name!r} looks like free text (nearly every value unique) "
                  "and is not used as a categorical feature; give it to --item-text instead", file=sys.stderr)
            continue
        lists = series.map(lambda v: _values(v, config.multi_sep))
        longest = int(lists.map(len).max()) if len(lists) else 1
        if longest > config.max_values:
            item = lists.index[int(np.argmax(lists.map(len).to_numpy()))]
            raise SeqrecError(f"{source}: column {name!r} has {longest:,} values for item {item!r}, more than "
                              f"--max-values {config.max_values:,}; drop the column or raise --max-values")
        vocab = sorted({v for vs in lists for v in vs})
        columns.append(Column(name, "cat", tuple(vocab), max(longest, 1)))
    if not columns:
        raise SeqrecError(f"{source}: no usable feature column")
    return FeatureSchema(tuple(columns))


def _chosen(frame: pd.DataFrame, wanted: str | None, source: str) -> list[str]:
    names = [str(c) for c in frame.columns]
    if wanted is None:
        return names
    chosen = [c.strip() for c in wanted.split(",") if c.strip()]
    for c in chosen:
        if c not in names:
            raise SeqrecError(f"{source}: no column {c!r}; columns: {', '.join(names)}")
    return chosen


def _check_missing(series: pd.Series, name: str, source: str) -> None:
    missing = series.map(lambda v: v is None or (isinstance(v, float) and np.isnan(v)))
    if missing.any():
        item = series.index[int(np.flatnonzero(missing.to_numpy())[0])]
        kind = "user" if series.index.name == "user_id" else "item"
        raise SeqrecError(f"{source}: column {name!r} has no value for {kind} {item!r}; fill it in (an empty list "
                          f"for no values) or leave the {kind} out of the file")


def align(frame: pd.DataFrame, items: IdMap, n_rows: int, source: str, report: bool = True) -> np.ndarray:
    """Row of each file row in the tower's tables (-1: an item the log never mentions, counted and reported)."""
    rows = items.to_internal(np.asarray(frame.index, dtype=object), strict=False) if len(frame) else np.zeros(0)
    unknown = int((rows < 0).sum())
    if report and unknown:
        print(f"seqrec: note: {source}: {unknown:,} of {len(frame):,} items are not in the log (ignored)",
              file=sys.stderr)
    if report and (rows >= 0).sum() < len(items):
        print(f"seqrec: note: {source}: {len(items) - int((rows >= 0).sum()):,} of {len(items):,} items have no "
              "row; they get the learned 'unknown' value", file=sys.stderr)
    if len(rows) and rows.max() >= n_rows:
        raise SeqrecError(f"{source}: internal error: row {rows.max()} outside the table")
    return np.asarray(rows, dtype=np.int64)


def encode_features(frame: pd.DataFrame, rows: np.ndarray, schema: FeatureSchema, n_rows: int,
                    config: ItemFeaturesConfig, source: str) -> FeatureTensors:
    """(n_rows, width) index matrices and the numeric matrix for the file rows placed at ``rows``."""
    keep = rows >= 0
    out = FeatureTensors()
    described = np.zeros(n_rows, dtype=bool)
    described[rows[keep]] = True
    for col in schema.categorical:
        if col.name not in frame.columns:
            raise SeqrecError(f"{source}: no column {col.name!r}, which the model's feature schema has; give "
                              "the same columns as at training")
        series = frame[col.name]
        _check_missing(series, col.name, source)
        index = {v: i + 2 for i, v in enumerate(col.values)}
        mat = np.zeros((n_rows, col.width), dtype=np.int64)
        mat[1:, 0] = UNKNOWN
        for row, value in zip(rows[keep], series.to_numpy()[keep], strict=True):
            vals = _values(value, config.multi_sep)
            if len(vals) > config.max_values:
                raise SeqrecError(f"{source}: column {col.name!r} has {len(vals):,} values for one item, more "
                                  f"than --max-values {config.max_values:,}")
            idx = [index.get(v, UNKNOWN) for v in vals][: col.width] or [UNKNOWN]
            mat[row, :] = PAD
            mat[row, : len(idx)] = idx
        out.cat.append(torch.from_numpy(mat))
    nums = schema.numeric
    num = np.zeros((n_rows, len(nums) + 1), dtype=np.float32)
    num[:, -1] = (~described).astype(np.float32)
    num[0, -1] = 0.0
    for j, col in enumerate(nums):
        if col.name not in frame.columns:
            raise SeqrecError(f"{source}: no column {col.name!r}, which the model's feature schema has")
        _check_missing(frame[col.name], col.name, source)
        values = pd.to_numeric(frame[col.name], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(values[keep]).any():
            raise SeqrecError(f"{source}: column {col.name!r} holds a value that is not a number")
        num[rows[keep], j] = ((values[keep] - col.mean) / col.std).astype(np.float32)
    out.num = torch.from_numpy(num)
    return out


def text_of(frame: pd.DataFrame, cols: Sequence[str] | None, source: str) -> pd.Series:
    """One string per item: the chosen text columns joined; a missing column is an error."""
    names = [str(c) for c in frame.columns]
    chosen = list(cols) if cols else names
    for c in chosen:
        if c not in names:
            raise SeqrecError(f"{source}: no text column {c!r}; columns: {', '.join(names)}")
    for c in chosen:
        _check_missing(frame[c], c, source)
    parts = [frame[c].map(lambda v: " ".join(_values(v, "")) if isinstance(v, list) else str(v)) for c in chosen]
    joined = parts[0]
    for part in parts[1:]:
        joined = joined + ". " + part
    return joined.str.strip()


def text_columns(config: ItemFeaturesConfig) -> list[str] | None:
    if config.text_cols is None:
        return None
    return [c.strip() for c in config.text_cols.split(",") if c.strip()]
