"""Read and clean a large log column by column, without a Python object per row.

A CSV/TSV file, a Parquet file or a directory of Parquet files (one log, e.g. one file per day) is
read in record batches with pyarrow. Integer id columns stay int64 from the file to the id map; string
ids are dictionary-encoded batch by batch and the dictionaries unified, so only the distinct ids are
ever held as strings. Cleaning then works on int32/int64 codes with numpy: exact duplicates, the sort
by user then time (stable, so ties keep file order), consecutive repeats and the iterative k-core give
the same rows, ids and order as :func:`seqrec.data.preprocess.build_dataset` on the same log.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from seqrec.data.ids import IdMap
from seqrec.data.io import DEFAULT_TIME_COL, ReadOptions, _sniff_sep, detect_format
from seqrec.data.io import _first_line as first_text_line
from seqrec.data.preprocess import Dataset, PreprocessOptions, PreprocessReport
from seqrec.data.sequences import Sequences
from seqrec.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
BATCH_ROWS = 1 << 20  # rows per Parquet record batch
CSV_BLOCK = 32 << 20  # bytes per CSV block
KEY_CHUNK = 1 << 22  # rows per chunk when the sort key is computed
UNIFY_EVERY = 1 << 20  # new dictionary entries of text ids gathered before they are merged into one dictionary
# peak bytes per row read: pandas in memory about 243 (benchmarks/results/scale-prepare-10000000.json, baseline),
# build about 40 (scale-prepare-100000000.json: 4,002 MB at 100M rows); the second with a margin
BYTES_PER_ROW_IN_MEMORY = 240
BYTES_PER_ROW_OUT_OF_CORE = 48


# ---- the files of a log ---------------------------------------------------------------------------


def log_files(path: Path) -> list[Path]:
    """The files that make up the log at ``path``: the file itself, or a directory's Parquet files by name."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; check --data")
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(PARQUET_SUFFIXES))
    if not files:
        raise DataError(f"{path}: no Parquet files (*.parquet, *.pq) in this directory; give a directory of "
                        "Parquet files or a single log file")
    return files


def is_parquet(path: Path, options: ReadOptions) -> bool:
    fmt = detect_format(path) if options.format == "auto" else options.format
    return fmt == "parquet"


def check_columns(files: list[Path]) -> list[str]:
    """The Parquet files' column names, which must be the same in every file."""
    first = _schema(files[0]).names
    for f in files[1:]:
        names = _schema(f).names
        if names != first:
            missing = [c for c in first if c not in names]
            extra = [c for c in names if c not in first]
            what = "; ".join(part for part in (
                f"lacks {', '.join(missing)}" if missing else "",
                f"has {', '.join(extra)} besides" if extra else "",
                "orders them differently" if not missing and not extra else "") if part)
            raise DataError(f"{f}: its columns ({', '.join(names)}) disagree with {files[0].name}'s "
                            f"({', '.join(first)}): it {what}; every file of the directory needs the same columns")
    return list(first)


def _schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read as Parquet: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def estimated_rows(path: Path, options: ReadOptions) -> int:
    """Rows of the log: exact for Parquet (from the footers), from the size on disk for text."""
    files = log_files(path)
    if path.is_dir() or is_parquet(path, options):
        return sum(_parquet_rows(f) for f in files)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rb") as fh:
        head = fh.read(1 << 20)
        compressed = fh.fileobj.tell() if gz and hasattr(fh, "fileobj") else len(head)  # type: ignore[union-attr]
    lines = head.count(b"\n")
    if not lines:
        return 1
    # rows per byte on disk, from the first MiB (of text, and of the compressed file when gzipped)
    return int(size * lines / max(1, compressed if gz else len(head)))


def _parquet_rows(path: Path) -> int:
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read as Parquet: {_first_line(exc)}") from None


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable; total memory where unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_fits_in_memory(path: Path, options: ReadOptions) -> None:
    """A one-line error, before reading, when the log at ``path`` would not fit in the memory available:
    it names the memory needed and the `seqrec prepare` command to use instead."""
    if not path.exists():
        return  # the reader says so
    rows = estimated_rows(path, options)
    per_row = BYTES_PER_ROW_OUT_OF_CORE if path.is_dir() else BYTES_PER_ROW_IN_MEMORY
    need, have = rows * per_row, available_memory()
    if need <= have:
        return
    flags = "".join(f" --{name.replace('_', '-')} {value}" for name, value in (
        ("user_col", options.user_col), ("item_col", options.item_col), ("time_col", options.time_col))
        if value and value != getattr(ReadOptions(), name))
    out = f"{path.name.split('.')[0] or 'log'}-prepared"
    raise DataError(f"{path}: reading this log (about {rows:,} rows) in memory needs about {_gb(need)} but "
                    f"{_gb(have)} is available; prepare it out of core once with `seqrec prepare --data {path} "
                    f"--out {out}{flags}`, then train with `seqrec train --prepared {out}`")


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB"


# ---- columns ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """File column names for the roles user, item, time (None: file order), rating (None)."""

    user: str
    item: str
    time: str | None
    rating: str | None

    def roles(self) -> dict[str, str]:
        out = {"user": self.user, "item": self.item}
        if self.time:
            out["time"] = self.time
        if self.rating:
            out["rating"] = self.rating
        return out


def choose_columns(names: list[str], options: ReadOptions, source: str) -> Columns:
    """The columns the read options name, checked against the file's (as :func:`seqrec.data.io.read_log`)."""
    shown = ", ".join(names[:12])
    for role, name in (("user", options.user_col), ("item", options.item_col)):
        if name not in names:
            raise DataError(f"{source}: no column {name!r} for {role} ids (columns: {shown}); set --{role}-col")
    if options.time_col and options.time_col not in names:
        raise DataError(f"{source}: no time column {options.time_col!r} (columns: {shown}); set --time-col to one "
                        "of them, or leave it out to use file order")
    if options.rating_col and options.rating_col not in names:
        raise DataError(f"{source}: no rating column {options.rating_col!r}; set --rating-col")
    time = options.time_col or (DEFAULT_TIME_COL if DEFAULT_TIME_COL in names else None)
    return Columns(options.user_col, options.item_col, time, options.rating_col)


class Column:
    """A numpy column filled batch by batch: one buffer, sized up front when the row count is known
    (Parquet footers), grown by half when it is not, so that no list of chunks is ever concatenated."""

    def __init__(self, dtype: type[np.generic], capacity: int) -> None:
        self._data = np.empty(max(capacity, 1024), dtype=dtype)
        self.size = 0

    def append(self, values: np.ndarray) -> None:
        end = self.size + len(values)
        if end > len(self._data):
            grown = np.empty(max(end, len(self._data) * 3 // 2), dtype=self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : end] = values
        self.size = end

    def take(self) -> np.ndarray:
        """The filled part (the buffer itself when nearly full, else a tight copy); the column is emptied."""
        data, self._data = self._data, np.empty(0, dtype=self._data.dtype)
        if self.size < len(data) * 0.9:
            return data[: self.size].copy()
        return data[: self.size]


class _StringCodes:
    """Codes of a string column over one dictionary that grows as batches arrive (first-seen order)."""

    def __init__(self, capacity: int) -> None:
        self.dictionary: pa.Array = pa.array([], pa.string())
        self.codes = Column(np.int32, capacity)
        self._pending: list[pa.DictionaryArray] = []
        self._pending_size = 0

    def add(self, values: pa.Array) -> None:
        encoded = pc.dictionary_encode(values.cast(pa.string()))
        self._pending.append(encoded)
        self._pending_size += len(encoded.dictionary)
        if self._pending_size > max(UNIFY_EVERY, len(self.dictionary)):
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        head = pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), self.dictionary)
        unified = pa.chunked_array([head, *self._pending]).unify_dictionaries()
        self.dictionary = unified.chunk(0).dictionary  # the old entries keep their codes, new ones follow
        for chunk in unified.chunks[1:]:
            self.codes.append(chunk.indices.to_numpy(zero_copy_only=False))
        self._pending, self._pending_size = [], 0

    def finish(self) -> tuple[np.ndarray, pa.Array]:
        self._flush()
        return self.codes.take(), self.dictionary


class IdColumn:
    """An id column, kept as int64 values (integer columns) or as string codes (text columns)."""

    def __init__(self, role: str, capacity: int) -> None:
        self.role = role
        self.kind: str | None = None  # "int" or "str", fixed by the first batch
        self._capacity = capacity
        self._ints: Column | None = None
        self._strings: _StringCodes | None = None

    def valid(self, values: pa.Array) -> np.ndarray:
        """Rows of a batch whose value is present (blank and 'nan' strings count as missing)."""
        ok = pc.is_valid(values)
        if _is_text(values.type):
            text = pc.utf8_lower(pc.utf8_trim_whitespace(values.cast(pa.string())))
            ok = pc.and_(ok, pc.and_(pc.not_equal(text, ""), pc.not_equal(text, "nan")))
        return ok.to_numpy(zero_copy_only=False).astype(bool, copy=False)

    def add(self, values: pa.Array, source: str) -> None:
        kind = "str" if _is_text(values.type) else "int"
        if self.kind is None:
            self.kind = kind
        elif kind != self.kind:
            raise DataError(f"{source}: the {self.role} ids are {'text' if kind == 'str' else 'numbers'} here but "
                            f"{'text' if self.kind == 'str' else 'numbers'} in the files before it; write them "
                            "with one type in every file")
        if kind == "str":
            self._strings = self._strings or _StringCodes(self._capacity)
            self._strings.add(values)
            return
        self._ints = self._ints or Column(np.int64, self._capacity)
        if pa.types.is_floating(values.type):
            floats = values.to_numpy(zero_copy_only=False)
            if (floats != np.round(floats)).any():
                bad = floats[floats != np.round(floats)][0]
                raise DataError(f"{source}: {self.role} id {bad!r} is not a whole number; ids must be integers "
                                "or text")
            self._ints.append(floats.astype(np.int64))
            return
        if not pa.types.is_integer(values.type):
            raise DataError(f"{source}: the {self.role} id column has type {values.type}; ids must be integers "
                            "or text")
        self._ints.append(values.cast(pa.int64()).to_numpy(zero_copy_only=False))

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, external ids in sorted order, valid-row mask): codes index the external ids."""
        if self._strings is not None:
            codes, dictionary = self._strings.finish()
            self._strings = None
            return _text_ids(codes, dictionary)
        values = self._ints.take() if self._ints is not None else np.zeros(0, dtype=np.int64)
        self._ints = None
        codes, uniques = dense_codes(values, own=True)
        del values
        return codes, uniques, np.ones(len(codes), dtype=bool)


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
                or pa.types.is_dictionary(t))


def dense_codes(values: np.ndarray, own: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(codes, sorted uniques) of an int64 array: ``uniques[codes] == values``; int32 codes when they fit.

    Ids in a range not much wider than the row count go through a presence table (linear time);
    sparse ids (hashes) through a sort. With ``own`` the values may be overwritten (no copy is made)."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    lo, hi = int(values.min()), int(values.max())
    span = hi - lo + 1
    if span <= max(2 * n, 1 << 24):
        offset = values if own else values.copy()
        offset -= lo
        present = np.zeros(span, dtype=bool)
        present[offset] = True
        rank = np.cumsum(present, dtype=np.int64 if span > 2**31 - 1 else np.int32) - 1
        uniques = np.flatnonzero(present).astype(np.int64) + lo
        codes = rank[offset]
        del offset, rank
    else:
        uniques, codes = np.unique(values, return_inverse=True)
    return codes.astype(_code_type(len(uniques)), copy=False), uniques


def _code_type(n: int) -> type[np.integer]:
    return np.int32 if n < 2**31 else np.int64


def _text_ids(codes: np.ndarray, dictionary: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes and sorted external ids of a text column, read as the in-memory path reads it: stripped, and
    whole numbers when most rows hold one (the other rows then count as unparsable)."""
    stripped = pc.utf8_trim_whitespace(dictionary)
    lowered = pc.utf8_lower(stripped)
    present = pc.and_(pc.not_equal(stripped, ""), pc.not_equal(lowered, "nan")).to_numpy(zero_copy_only=False)
    counts = np.bincount(codes, minlength=len(dictionary))
    whole = pc.match_substring_regex(stripped, r"^[+-]?[0-9]{1,18}(\.0*)?$").to_numpy(zero_copy_only=False)
    rows_present = int(counts[present].sum())
    if rows_present and int(counts[whole & present].sum()) >= 0.5 * rows_present:
        digits = pc.replace_substring_regex(stripped.filter(pa.array(whole)), r"\.0*$", "")
        numbers = np.zeros(len(dictionary), dtype=np.int64)
        numbers[whole] = pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False)
        ok_entry = whole & present
        entry_code, uniques = dense_codes(numbers[ok_entry])
        external: np.ndarray = uniques
    else:
        ok_entry = present
        values = stripped.filter(pa.array(ok_entry))
        order = pc.array_sort_indices(values).to_numpy(zero_copy_only=False)
        sorted_values = values.take(pa.array(order))
        # equal values after stripping (' a' and 'a') share a code
        first = np.ones(len(order), dtype=bool)
        if len(order) > 1:
            first[1:] = pc.not_equal(sorted_values.slice(1), sorted_values.slice(0, len(order) - 1)).to_numpy(
                zero_copy_only=False)
        rank_sorted = np.cumsum(first) - 1
        entry_code = np.empty(len(order), dtype=np.int64)
        entry_code[order] = rank_sorted
        external = sorted_values.filter(pa.array(first)).to_numpy(zero_copy_only=False).astype(object)
    table = np.full(len(dictionary), -1, dtype=np.int64)
    table[ok_entry] = entry_code
    row_codes = table[codes]
    valid = row_codes >= 0
    return row_codes.astype(_code_type(len(external)), copy=False), external, valid


def _to_seconds(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(float64 seconds, valid mask) of a time column batch: numbers, timestamps, dates or text."""
    t = values.type
    if pa.types.is_timestamp(t):
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[t.unit]
        ints = values.cast(pa.int64())
        return _filled(pc.divide(ints.cast(pa.float64()), float(per_second))), _valid(ints)
    if pa.types.is_date(t):
        days = values.cast(pa.date32()).cast(pa.int32())
        return _filled(pc.multiply(days.cast(pa.float64()), 86400.0)), _valid(days)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        floats = values.cast(pa.float64())
        return _filled(floats), _valid(floats)
    frame = pd.Series(values.to_numpy(zero_copy_only=False))
    nums = pd.to_numeric(frame, errors="coerce")
    if nums.notna().mean() < 0.5:
        dates = pd.to_datetime(frame, errors="coerce", utc=True)
        secs = (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        return secs.fillna(0).to_numpy(dtype=np.float64), dates.notna().to_numpy()
    return nums.fillna(0).to_numpy(dtype=np.float64), nums.notna().to_numpy()


def _filled(values: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False), dtype=np.float64)


def _valid(values: pa.Array) -> np.ndarray:
    return np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool)


def _to_float(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        floats = values.cast(pa.float64())
        return _filled(floats), _valid(floats)
    nums = pd.to_numeric(pd.Series(values.to_numpy(zero_copy_only=False)), errors="coerce")
    return nums.fillna(0).to_numpy(dtype=np.float64), nums.notna().to_numpy()


# ---- reading ----------------------------------------------------------------------------------------


def batches(path: Path, options: ReadOptions, text_ids: list[str] | None = None
            ) -> Iterator[tuple[str, pa.RecordBatch, Columns]]:
    """(source, record batch, columns) over the whole log, in file order. A CSV column named in ``text_ids``
    is read as text; one that pyarrow took for numbers from the first block and then met text in raises
    :class:`_Retype`, and the log is read again with it in ``text_ids``."""
    files = log_files(path)
    if path.is_dir() or is_parquet(path, options):
        names = check_columns(files)
        columns = choose_columns(names, options, str(path))
        wanted = list(dict.fromkeys(columns.roles().values()))
        for f in files:
            try:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=wanted):
                    yield str(f), batch, columns
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"{f}: cannot read as Parquet: {_first_line(exc)}") from None
        return
    fmt = detect_format(path) if options.format == "auto" else options.format
    if fmt != "csv":
        raise DataError(f"{path}: {fmt} files are read in memory only; `seqrec prepare` reads CSV/TSV files, "
                        "Parquet files and directories of Parquet files")
    yield from _csv_batches(path, options, text_ids or [])


def _csv_batches(path: Path, options: ReadOptions, text_ids: list[str]
                 ) -> Iterator[tuple[str, pa.RecordBatch, Columns]]:
    sep = options.sep or _sniff_sep(first_text_line(path))
    if len(sep) != 1:
        raise DataError(f"{path}: the separator {sep!r} is not one character; `seqrec prepare` reads CSV/TSV "
                        "with a one-character --sep")
    yield from _csv_pass(path, options, sep, text_ids)


class _Retype(Exception):
    def __init__(self, column: str, reason: str) -> None:
        super().__init__(column)
        self.column, self.reason = column, reason


def _csv_pass(path: Path, options: ReadOptions, sep: str, text_ids: list[str]
              ) -> Iterator[tuple[str, pa.RecordBatch, Columns]]:
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    stream = pa.input_stream(str(path), compression="gzip" if gz else None)
    read = pacsv.ReadOptions(block_size=CSV_BLOCK, autogenerate_column_names=not options.header)
    parse = pacsv.ParseOptions(delimiter=sep)
    try:
        reader = pacsv.open_csv(stream, read_options=read, parse_options=parse)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read as csv: {_first_line(exc)}; check --sep") from None
    names = reader.schema.names
    if not options.header:  # pyarrow names them f0, f1, ...; seqrec names them 0, 1, ...
        names = [str(i) for i in range(len(names))]
    columns = choose_columns(names, options, str(path))
    reader.close()
    file_names = reader.schema.names
    rename = dict(zip(names, file_names, strict=True))
    roles = columns.roles()
    wanted = list(dict.fromkeys(rename[c] for c in roles.values()))
    types = {rename[c]: pa.string() for c in text_ids}
    stream = pa.input_stream(str(path), compression="gzip" if gz else None)
    convert = pacsv.ConvertOptions(include_columns=wanted, column_types=types, strings_can_be_null=False)
    reader = pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
    back = {v: k for k, v in rename.items()}
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:
            column = _failed_column(str(exc), file_names, wanted)
            if column is None:
                raise DataError(f"{path}: cannot read as csv: {_first_line(exc)}; check --sep") from None
            raise _Retype(back[column], _first_line(exc)) from None
        yield str(path), batch.rename_columns([back[c] for c in batch.schema.names]), columns


def _failed_column(message: str, file_names: list[str], wanted: list[str]) -> str | None:
    """The wanted column a pyarrow conversion error names (by its position in the file)."""
    found = re.search(r"column #(\d+)", message)
    if found is None or int(found.group(1)) >= len(file_names):
        return None
    name = file_names[int(found.group(1))]
    return name if name in wanted else None


# ---- cleaning -----------------------------------------------------------------------------------------


class _Log:
    """The columns of a log as read: rows in file order, bad rows already dropped."""

    def __init__(self, capacity: int) -> None:
        self.users, self.items = IdColumn("user", capacity), IdColumn("item", capacity)
        self.times: Column | None = None
        self.ratings: Column | None = None
        self.capacity = capacity


def read_columns(path: Path, options: ReadOptions, opts: PreprocessOptions) -> tuple[_Log, PreprocessReport]:
    """The log's columns and the report of the rows dropped while reading them."""
    text_ids: list[str] = []
    while True:
        try:
            return _read_columns(path, options, opts, text_ids)
        except _Retype as retry:  # a later block held text in a column the first block had as numbers
            if retry.column in text_ids:
                raise DataError(f"{path}: cannot read column {retry.column!r}: {retry.reason}") from None
            text_ids.append(retry.column)


def _read_columns(path: Path, options: ReadOptions, opts: PreprocessOptions, text_ids: list[str]
                  ) -> tuple[_Log, PreprocessReport]:
    report = PreprocessReport()
    log = _Log(int(estimated_rows(path, options) * (1.0 if path.is_dir() or is_parquet(path, options) else 1.1)))
    rows = 0
    header = int(options.header)
    for source, batch, columns in batches(path, options, text_ids):
        n = batch.num_rows
        keep = np.ones(n, dtype=bool)
        raw = {role: batch.column(name) for role, name in columns.roles().items()}
        parsed: dict[str, np.ndarray] = {}
        checks: list[tuple[str, np.ndarray]] = [("user", log.users.valid(raw["user"])),
                                                ("item", log.items.valid(raw["item"]))]
        if "time" in raw:
            parsed["time"], ok = _to_seconds(raw["time"])
            checks.append(("time", ok))
        if "rating" in raw:
            parsed["rating"], ok = _to_float(raw["rating"])
            checks.append(("rating", ok))
        for role, ok in checks:
            bad = ~ok & keep
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                where = f"line {rows + i + 1 + header}" if len(log_files(path)) == 1 else f"{source} row {i + 1}"
                example = f"{where}, column {columns.roles()[role]}: {raw[role][i].as_py()!r}"
                if opts.strict:
                    raise DataError(f"{source}: missing or unparsable {role} at {example}; fix or drop the row")
                report.add(f"missing or unparsable {role}", int(bad.sum()), example)
            keep &= ok
        rows += n
        mask = None if keep.all() else pa.array(keep)
        try:
            log.users.add(raw["user"] if mask is None else raw["user"].filter(mask), source)
            log.items.add(raw["item"] if mask is None else raw["item"].filter(mask), source)
        except pa.ArrowException as exc:  # e.g. unsigned ids beyond int64
            raise DataError(f"{source}: cannot read the ids: {_first_line(exc)}") from None
        if "time" in parsed:
            log.times = log.times or Column(np.float64, log.capacity)
            log.times.append(parsed["time"][keep])
        if "rating" in parsed:
            log.ratings = log.ratings or Column(np.float64, log.capacity)
            log.ratings.append(parsed["rating"][keep])
    report.rows_read = rows
    return log, report


def sort_order(users: np.ndarray, times: np.ndarray | None) -> np.ndarray:
    """Row order by user code, then time; ties keep file order (one stable sort on a combined key)."""
    n = len(users)
    if times is None or n == 0:
        return np.argsort(users, kind="stable")
    n_users = int(users.max()) + 1
    whole = bool(np.all(times == np.floor(times))) and np.isfinite(times).all()
    lo = float(times.min()) if whole else 0.0
    span = float(times.max()) - lo + 1 if whole else 0.0
    key = np.empty(n, dtype=np.int64)
    if whole and span * n_users < 2**62:
        for a in range(0, n, KEY_CHUNK):  # in chunks: the temporaries stay small
            b = min(n, a + KEY_CHUNK)
            np.multiply(users[a:b], np.int64(span), out=key[a:b], dtype=np.int64)
            key[a:b] += (times[a:b] - lo).astype(np.int64)
    else:  # times as ranks: at most n distinct values
        uniq, rank = np.unique(times, return_inverse=True)
        np.multiply(users, np.int64(len(uniq)), out=key, dtype=np.int64)
        key += rank
        del uniq, rank
    return np.argsort(key, kind="stable")


def lean_k_core(users: np.ndarray, items: np.ndarray, user_core: int, item_core: int) -> np.ndarray:
    """:func:`seqrec.data.preprocess.k_core` with a byte per row of temporaries: per-id pass/fail tables
    looked up per row, not per-row counts."""
    keep = np.ones(len(users), dtype=bool)
    if user_core <= 1 and item_core <= 1:
        return keep
    n_users, n_items = int(users.max(initial=0)) + 1, int(items.max(initial=0)) + 1
    kept = len(users)
    while True:
        u_ok = np.bincount(users[keep], minlength=n_users) >= user_core
        i_ok = np.bincount(items[keep], minlength=n_items) >= item_core
        keep &= u_ok[users]
        keep &= i_ok[items]
        now = int(np.count_nonzero(keep))
        if now == kept:
            return keep
        kept = now


def duplicate_mask(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Rows (already sorted by user, time, file order) repeating an earlier row's user, item and time."""
    n = len(users)
    dup = np.zeros(n, dtype=bool)
    if n < 2:
        return dup
    same = (users[1:] == users[:-1]) & (times[1:] == times[:-1])  # row i + 1 continues row i's (user, time)
    if not same.any():
        return dup
    in_group = np.zeros(n, dtype=bool)
    in_group[1:] |= same
    in_group[:-1] |= same
    rows = np.flatnonzero(in_group)
    group = np.cumsum(~np.concatenate(([False], same)))[rows]  # a number per (user, time) run
    order = np.lexsort((rows, items[rows], group))  # by run, then item, then file order
    g, it = group[order], items[rows][order]
    again = np.zeros(len(rows), dtype=bool)
    again[1:] = (g[1:] == g[:-1]) & (it[1:] == it[:-1])
    dup[rows[order[again]]] = True
    return dup


def build(path: Path, options: ReadOptions | None = None, opts: PreprocessOptions | None = None,
          name: str | None = None) -> Dataset:
    """The Dataset of the log at ``path`` (a file or a directory of Parquet files), cleaned as
    :func:`seqrec.data.preprocess.build_dataset` cleans it."""
    options = options or ReadOptions()
    opts = opts or PreprocessOptions()
    source = str(path)
    log, report = read_columns(path, options, opts)
    pa.default_memory_pool().release_unused()  # the batches' buffers, back to the system
    if log.times is not None and log.times.size == 0 and report.rows_read:
        raise DataError(f"{source}: no value of the time column could be read as a number or a date; choose "
                        "another --time-col, or leave it out to use file order")
    u_codes, u_ext, u_ok = log.users.finish()
    i_codes, i_ext, i_ok = log.items.finish()
    times = log.times.take() if log.times is not None else None
    ratings = log.ratings.take() if log.ratings is not None else None
    del log
    keep = u_ok & i_ok
    for role, ok in (("user", u_ok), ("item", i_ok)):
        bad = int((~ok & (u_ok if role == "item" else True)).sum())
        if bad and opts.strict:
            raise DataError(f"{source}: {bad:,} {role} ids are not whole numbers while most are; fix or drop "
                            "those rows")
        report.add(f"missing or unparsable {role}", bad)
    if opts.min_rating is not None:
        if ratings is None:
            raise DataError(f"{source}: --min-rating needs a rating column; set --rating-col")
        low = keep & (ratings < opts.min_rating)
        report.add(f"rating below {opts.min_rating}", int(low.sum()))
        keep &= ~low
    del ratings
    if not keep.all():
        u_codes, i_codes = u_codes[keep], i_codes[keep]
        times = None if times is None else times[keep]
    del keep
    order = sort_order(u_codes, times)
    u_codes, i_codes = u_codes[order], i_codes[order]
    times = None if times is None else times[order]
    del order
    drop = np.zeros(len(u_codes), dtype=bool)
    if opts.dedupe and times is not None:
        dup = duplicate_mask(u_codes, i_codes, times)
        report.add("exact duplicate", int(dup.sum()))
        drop |= dup
    if drop.any():
        u_codes, i_codes = u_codes[~drop], i_codes[~drop]
        times = None if times is None else times[~drop]
    if opts.drop_consecutive_repeats and len(u_codes) > 1:
        rep = np.zeros(len(u_codes), dtype=bool)
        rep[1:] = (u_codes[1:] == u_codes[:-1]) & (i_codes[1:] == i_codes[:-1])
        report.add("consecutive repeat", int(rep.sum()))
        u_codes, i_codes = u_codes[~rep], i_codes[~rep]
        times = None if times is None else times[~rep]
    core = lean_k_core(u_codes, i_codes, opts.user_core, opts.item_core)
    report.add(f"k-core (users >= {opts.user_core}, items >= {opts.item_core})", int((~core).sum()))
    if not core.all():
        u_codes, i_codes = u_codes[core], i_codes[core]
        times = None if times is None else times[core]
    del core
    if len(u_codes) == 0:
        raise DataError(f"{source}: no interactions left after filtering; lower --user-core/--item-core "
                        "or --min-rating, or check the column options")
    report.rows_kept = len(u_codes)
    return _dataset(name or path.name, u_codes, u_ext, i_codes, i_ext, times, report)


def _dataset(name: str, u_codes: np.ndarray, u_ext: np.ndarray, i_codes: np.ndarray, i_ext: np.ndarray,
             times: np.ndarray | None, report: PreprocessReport) -> Dataset:
    """Renumber the surviving ids densely (sorted order stays sorted) and lay the rows out per user."""
    u_counts = np.bincount(u_codes, minlength=len(u_ext))
    u_seen = u_counts > 0
    i_seen = np.bincount(i_codes, minlength=len(i_ext)) > 0
    i_new = np.cumsum(i_seen, dtype=np.int64)  # 1-based internal item ids; 0 is padding
    items = i_new[i_codes]
    del i_new
    offsets = np.zeros(int(u_seen.sum()) + 1, dtype=np.int64)
    np.cumsum(u_counts[u_seen], out=offsets[1:])
    seqs = Sequences(offsets, items, times)
    return Dataset(name, seqs, IdMap(u_ext[u_seen], 0), IdMap(i_ext[i_seen], 1), None, report)
