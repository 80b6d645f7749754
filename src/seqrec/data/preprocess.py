"""Clean a raw log and turn it into a Dataset: drop bad rows (counted), filter,
deduplicate, k-core, map ids, and order each user's events by time (stable)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from seqrec.data.ids import IdMap
from seqrec.data.sequences import Sequences
from seqrec.errors import DataError
from seqrec.settings import check_fields, setting


@dataclass(frozen=True)
class PreprocessOptions:
    min_rating: float | None = setting(None, "keep events with a rating >= this (none: keep all)")
    dedupe: bool = setting(True, "drop exact duplicate (user, item, time) rows; needs a time column")
    drop_consecutive_repeats: bool = setting(False, "drop an event whose item repeats the user's previous one",
                                             flag="drop-repeats")
    user_core: int = setting(0, "iterative k-core: keep users with at least this many events", low=0)
    item_core: int = setting(0, "iterative k-core: keep items with at least this many events", low=0)
    strict: bool = setting(False, "stop at the first unparsable row instead of dropping it (and counting it)")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class PreprocessReport:
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    first_bad: dict[str, str] = field(default_factory=dict)  # reason -> "row N, column C: value V"
    rows_kept: int = 0

    def add(self, reason: str, count: int, example: str | None = None) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(count)
            if example and reason not in self.first_bad:
                self.first_bad[reason] = example

    def lines(self) -> list[str]:
        out = [f"rows read: {self.rows_read:,}"]
        for reason, n in self.dropped.items():
            hint = f" (first: {self.first_bad[reason]})" if reason in self.first_bad else ""
            out.append(f"dropped {n:,} rows: {reason}{hint}")
        out.append(f"rows kept: {self.rows_kept:,}")
        return out

    def unreadable_share(self) -> float:
        """Share of the rows read that were dropped as missing or unparsable (not by a filter asked for)."""
        bad = sum(n for reason, n in self.dropped.items() if reason.startswith("missing or unparsable"))
        return bad / self.rows_read if self.rows_read else 0.0


@dataclass(frozen=True)
class Dataset:
    """A cleaned log: one ordered sequence per user, internal ids, optional item metadata."""

    name: str
    sequences: Sequences
    users: IdMap  # internal user u <-> external id
    items: IdMap  # internal item i (>= 1) <-> external id
    item_titles: list[str] | None = None  # index i - 1 -> title of internal item i
    report: PreprocessReport | None = None

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_events(self) -> int:
        return int(self.sequences.items.shape[0])

    def stats(self) -> dict[str, float]:
        lengths = self.sequences.lengths
        return {
            "users": self.n_users,
            "items": self.n_items,
            "events": self.n_events,
            "mean_length": float(lengths.mean()) if len(lengths) else 0.0,
            "median_length": float(np.median(lengths)) if len(lengths) else 0.0,
            "density": self.n_events / max(1, self.n_users * self.n_items),
        }


def _parse_ids(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Return (values, ok-mask). Ids that look numeric become int64; else strings."""
    text = col.astype("string").str.strip()
    present = text.notna() & (text != "") & (text.str.lower() != "nan")
    nums = pd.to_numeric(text.where(present), errors="coerce")
    numeric_ok = (nums.notna() & (nums == nums.round())).to_numpy(dtype=bool)
    # A float64 holds integers exactly only up to 2**53: larger ids must not pass through
    # one (two ids would merge), and ids beyond int64 stay strings.
    is_int = pd.api.types.is_integer_dtype(nums.dtype)
    limit = 2**63 - 1 if is_int else 2**53 - 1
    exact = numeric_ok & (nums.abs() <= limit).fillna(False).to_numpy(dtype=bool)
    if present.sum() and exact.sum() >= 0.5 * present.sum() and not (numeric_ok & ~exact).any():
        values = nums.where(exact, 0).to_numpy(dtype=np.int64 if is_int else np.float64)
        return values.astype(np.int64), exact
    return text.fillna("").to_numpy(dtype=object), present.to_numpy()


def _parse_time(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    nums = pd.to_numeric(col, errors="coerce")
    if nums.notna().mean() < 0.5:  # not numbers: try dates
        with warnings.catch_warnings():  # pandas' "could not infer format" is noise here: bad rows are reported
            warnings.simplefilter("ignore", UserWarning)
            dates = pd.to_datetime(col, errors="coerce", utc=True)
        ok = dates.notna().to_numpy()
        secs = (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        return secs.fillna(0).to_numpy(dtype=np.float64), ok
    return nums.fillna(0).to_numpy(dtype=np.float64), nums.notna().to_numpy()


def _example(frame: pd.DataFrame, bad: np.ndarray, column: str, header_rows: int) -> str:
    i = int(np.flatnonzero(bad)[0])
    return f"line {i + 1 + header_rows}, column {column}: {frame[column].iloc[i]!r}"


def _clean(frame: pd.DataFrame, report: PreprocessReport, opts: PreprocessOptions, source: str,
           header_rows: int) -> pd.DataFrame:
    cols: dict[str, np.ndarray] = {"row": np.arange(len(frame))}
    keep = np.ones(len(frame), dtype=bool)
    parsers = [("user", _parse_ids), ("item", _parse_ids)]
    if "time" in frame:
        parsers.append(("time", _parse_time))
    if "rating" in frame:
        parsers.append(("rating", _parse_float))
    for name, parse in parsers:
        values, ok = parse(frame[name])
        if name == "time" and len(ok) and not ok.any():
            raise DataError(f"{source}: no value of the time column could be read as a number or a date (e.g. "
                            f"{_example(frame, ~ok, name, header_rows)}); choose another --time-col, or leave it "
                            "out to use file order")
        bad = ~ok & keep
        if bad.any():
            example = _example(frame, bad, name, header_rows)
            if opts.strict:
                raise DataError(f"{source}: missing or unparsable {name} at {example}; fix or drop the row")
            report.add(f"missing or unparsable {name}", int(bad.sum()), example)
        keep &= ok
        cols[name] = values
    return pd.DataFrame(cols)[keep].reset_index(drop=True)


def _parse_float(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    nums = pd.to_numeric(col, errors="coerce")
    return nums.fillna(0).to_numpy(dtype=np.float64), nums.notna().to_numpy()


def k_core(users: np.ndarray, items: np.ndarray, user_core: int, item_core: int) -> np.ndarray:
    """Mask of rows surviving iterative k-core filtering (codes must be 0-based ints)."""
    keep = np.ones(len(users), dtype=bool)
    if user_core <= 1 and item_core <= 1:
        return keep
    while True:
        u_cnt = np.bincount(users[keep], minlength=int(users.max(initial=0)) + 1)
        i_cnt = np.bincount(items[keep], minlength=int(items.max(initial=0)) + 1)
        new = keep & (u_cnt[users] >= user_core) & (i_cnt[items] >= item_core)
        if new.sum() == keep.sum():
            return new
        keep = new


def build_dataset(frame: pd.DataFrame, opts: PreprocessOptions | None = None, name: str = "custom",
                  source: str = "input", header_rows: int = 1,
                  titles: dict[object, str] | None = None) -> Dataset:
    """Turn a raw ``user, item[, time][, rating]`` frame into a Dataset."""
    opts = opts or PreprocessOptions()
    report = PreprocessReport(rows_read=len(frame))
    df = _clean(frame, report, opts, source, header_rows)
    if opts.min_rating is not None:
        if "rating" not in df:
            raise DataError(f"{source}: --min-rating needs a rating column; set --rating-col")
        low = df["rating"].to_numpy() < opts.min_rating
        report.add(f"rating below {opts.min_rating}", int(low.sum()))
        df = df[~low]
    time_cols = ["time"] if "time" in df else []
    if opts.dedupe and time_cols:  # without time a repeated (user, item) may be a real repeat
        dup = df.duplicated(subset=["user", "item", *time_cols]).to_numpy()
        report.add("exact duplicate", int(dup.sum()))
        df = df[~dup]
    # Chronological order per user; ties keep the original row order (stable sort).
    df = df.sort_values(["user", *time_cols, "row"], kind="stable").reset_index(drop=True)
    if opts.drop_consecutive_repeats:
        same = (df["user"].to_numpy()[1:] == df["user"].to_numpy()[:-1]) & (
            df["item"].to_numpy()[1:] == df["item"].to_numpy()[:-1])
        rep = np.concatenate(([False], same))
        report.add("consecutive repeat", int(rep.sum()))
        df = df[~rep].reset_index(drop=True)
    u_codes, _ = pd.factorize(df["user"], sort=True)
    i_codes, _ = pd.factorize(df["item"], sort=True)
    core = k_core(u_codes, i_codes, opts.user_core, opts.item_core)
    report.add(f"k-core (users >= {opts.user_core}, items >= {opts.item_core})", int((~core).sum()))
    df = df[core].reset_index(drop=True)
    if len(df) == 0:
        raise DataError(f"{source}: no interactions left after filtering; lower --user-core/--item-core "
                        "or --min-rating, or check the column options")
    report.rows_kept = len(df)
    return _to_dataset(df, name, report, titles)


def _to_dataset(df: pd.DataFrame, name: str, report: PreprocessReport,
                titles: dict[object, str] | None) -> Dataset:
    u_codes, u_uniques = pd.factorize(df["user"], sort=True)
    i_codes, i_uniques = pd.factorize(df["item"], sort=True)
    lengths = np.bincount(u_codes, minlength=len(u_uniques))
    # a copy: under pandas copy-on-write to_numpy gives a read-only view, which torch warns about
    times = df["time"].to_numpy(dtype=np.float64, copy=True) if "time" in df else None
    # df is sorted by user then time, and factorize(sort=True) keeps that order
    seqs = Sequences.from_lengths(lengths, i_codes.astype(np.int64) + 1, times)
    item_ext = np.asarray(i_uniques)
    item_titles = None
    if titles:
        item_titles = [str(titles.get(_plain(x), str(x))) for x in item_ext]
    return Dataset(name, seqs, IdMap(np.asarray(u_uniques), 0), IdMap(item_ext, 1), item_titles, report)


def _plain(x: object) -> object:
    return int(x) if isinstance(x, np.integer) else x
