"""Readers for interaction logs: CSV/TSV, Parquet, MovieLens, RecBole `.inter`, user-per-line.

Every reader returns a DataFrame with string-or-int columns ``user``, ``item`` and,
when present, ``time`` and ``rating``, in file order. Gzip is transparent.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from seqrec.errors import DataError
from seqrec.settings import check_fields, setting

FORMATS: tuple[str, ...] = ("auto", "csv", "parquet", "movielens", "inter", "user-per-line")
DEFAULT_TIME_COL = "timestamp"  # used when the file has it and no time column is named


@dataclass(frozen=True)
class ReadOptions:
    """How to read a log. Column names refer to the file's header (or 0-based positions
    as strings when ``header`` is False)."""

    format: str = setting("auto", "log format (auto: from the file name and first line)", choices=FORMATS)
    sep: str | None = setting(None, "column separator (none: sniffed from the first line)")
    header: bool = setting(True, "the file's first line names its columns (off: columns are named 0, 1, ...)")
    user_col: str = setting("user_id", "column holding the user ids")
    item_col: str = setting("item_id", "column holding the item ids")
    # None (Python) is taken as "": look for a column named timestamp
    time_col: str | None = setting("", f"column holding event times, which must exist when given; '' means: a "
                                   f"column named {DEFAULT_TIME_COL!r} when the file has one, else file order stands "
                                   "for time")
    rating_col: str | None = setting(None, "column holding ratings (none: no ratings)")

    def __post_init__(self) -> None:
        if self.time_col is None:  # one spelling of "no time column", so that TOML (no null) round-trips
            object.__setattr__(self, "time_col", "")
        check_fields(self)


def _open_text(path: Path) -> io.TextIOBase:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return io.StringIO(raw.decode("utf-8", errors="replace"))


def _first_line(path: Path) -> str:
    lines = _head_lines(path, 1)
    return lines[0] if lines else ""


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def detect_format(path: Path) -> str:
    """Guess the format from the file name, then from the first line."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith(".inter"):
        return "inter"
    if name.endswith(".dat") or name == "u.data":
        return "movielens"
    first = _first_line(path).strip()
    if "\t" not in first and "," not in first and ";" not in first:
        # whitespace-separated: a long first line, or lines of different lengths (a first
        # user with one or two items), mean `user item item ...`
        counts = {len(line.split()) for line in _head_lines(path, 50) if line.strip()}
        if len(first.split()) > 3 or len(counts) > 1:
            return "user-per-line"
    return "csv"


def _head_lines(path: Path, n: int) -> list[str]:
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        return [str(line) for _, line in zip(range(n), fh, strict=False)]


def _compression(path: Path) -> str | None:
    """Gzip by content, not by name: a gzipped file need not end in .gz."""
    return "gzip" if _is_gzip(path) else None


def _sniff_sep(line: str) -> str:
    for sep in ("\t", ",", ";", "|", "::"):
        if sep in line:
            return sep
    return r"\s+"


def read_log(path: str | Path, options: ReadOptions | None = None) -> pd.DataFrame:
    """Read an interaction log into columns user, item[, time][, rating]."""
    opts = options or ReadOptions()
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file; check the path (or use --dataset for bundled data)")
    if p.is_dir():
        raise DataError(f"{p}: is a directory; give the log file inside it")
    fmt = detect_format(p) if opts.format == "auto" else opts.format
    try:
        if fmt == "parquet":
            return _select(pd.read_parquet(p), opts, p)
        if fmt == "movielens":
            return _read_movielens(p)
        if fmt == "inter":
            return _read_inter(p, opts)
        if fmt == "user-per-line":
            return _read_user_per_line(p)
        return _read_csv(p, opts)
    except DataError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{p}: cannot read as {fmt}: {msg}; check --format and --sep") from exc


def _read_csv(path: Path, opts: ReadOptions) -> pd.DataFrame:
    sep = opts.sep or _sniff_sep(_first_line(path))
    engine = "python" if len(sep) > 1 else "c"
    frame = pd.read_csv(path, sep=sep, header=0 if opts.header else None, engine=engine, dtype=str,
                        compression=_compression(path))
    if not opts.header:
        frame.columns = [str(c) for c in range(frame.shape[1])]
    return _select(frame, opts, path)


def _read_movielens(path: Path) -> pd.DataFrame:
    first = _first_line(path)
    sep = "::" if "::" in first else "\t"
    frame = pd.read_csv(path, sep=sep, header=None, engine="python", dtype=str,
                        compression=_compression(path))
    if frame.shape[1] < 4:
        raise DataError(f"{path}: MovieLens files have 4 columns user, item, rating, time; "
                        f"found {frame.shape[1]}")
    frame = frame.iloc[:, :4]
    frame.columns = ["user", "item", "rating", "time"]
    return frame


def _read_inter(path: Path, opts: ReadOptions) -> pd.DataFrame:
    """RecBole atomic file: a tab-separated header of ``name:type`` fields."""
    frame = pd.read_csv(path, sep="\t", header=0, dtype=str, compression=_compression(path))
    frame.columns = [str(c).split(":")[0] for c in frame.columns]
    defaults = ReadOptions(user_col="user_id", item_col="item_id", time_col="timestamp", rating_col=None)
    chosen = ReadOptions(
        user_col=opts.user_col or defaults.user_col,
        item_col=opts.item_col or defaults.item_col,
        time_col=opts.time_col,
        rating_col=opts.rating_col if opts.rating_col in frame.columns else None,
    )
    return _select(frame, chosen, path)


def _read_user_per_line(path: Path) -> pd.DataFrame:
    """``user item item ...`` per line; order within a line stands for time."""
    users: list[str] = []
    items: list[str] = []
    counts: list[int] = []
    with _open_text(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 2:
                continue
            users.append(parts[0])
            items.extend(parts[1:])
            counts.append(len(parts) - 1)
    if not users:
        raise DataError(f"{path}: no 'user item item ...' lines found; is this a user-per-line file?")
    return pd.DataFrame({"user": np.repeat(np.array(users, dtype=object), counts), "item": items})


def _no_header_hint(columns: list[str], opts: ReadOptions) -> str:
    """A hint when the 'column names' look like data: the file probably has no header line."""
    if not opts.header:
        return ""
    numeric = sum(1 for c in columns if c.strip().lstrip("+-").replace(".", "", 1).isdigit())
    if numeric >= max(1, len(columns) // 2):
        return "; the first line looks like data, not names: if the file has no header, add --no-header"
    return ""


def _select(frame: pd.DataFrame, opts: ReadOptions, path: Path) -> pd.DataFrame:
    """Pick and rename the chosen columns; a missing required column is a clear error."""
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    wanted = {"user": opts.user_col, "item": opts.item_col}
    for role, name in wanted.items():
        if name not in columns:
            raise DataError(f"{path}: no column {name!r} for {role} ids (columns: {', '.join(columns[:12])}); "
                            f"set --{role}-col{_no_header_hint(columns, opts)}")
    out = pd.DataFrame({"user": frame[opts.user_col].to_numpy(), "item": frame[opts.item_col].to_numpy()})
    if opts.time_col and opts.time_col not in columns:
        raise DataError(f"{path}: no time column {opts.time_col!r} (columns: {', '.join(columns[:12])}); "
                        "set --time-col to one of them, or leave it out to use file order")
    time_col = opts.time_col or (DEFAULT_TIME_COL if DEFAULT_TIME_COL in columns else "")
    if time_col:
        out["time"] = frame[time_col].to_numpy()
    if opts.rating_col:
        if opts.rating_col not in columns:
            raise DataError(f"{path}: no rating column {opts.rating_col!r}; set --rating-col")
        out["rating"] = frame[opts.rating_col].to_numpy()
    return out
