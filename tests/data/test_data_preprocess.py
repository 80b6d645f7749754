"""Cleaning a raw log: bad rows dropped and counted (or strict errors), filters, k-core, id maps,
and the order of each user's events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqrec.data.preprocess import Dataset, PreprocessOptions, build_dataset, k_core
from seqrec.errors import DataError


def frame(users: list[object], items: list[object], times: list[object] | None = None,
          ratings: list[object] | None = None) -> pd.DataFrame:
    """A raw log as the readers return it: strings in file order."""
    cols: dict[str, list[object]] = {"user": users, "item": items}
    if times is not None:
        cols["time"] = times
    if ratings is not None:
        cols["rating"] = ratings
    return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in cols.items()})


def sequences(data: Dataset) -> dict[object, list[object]]:
    """External user id -> external item ids, oldest first."""
    users = data.users.external.tolist()
    return {users[u]: data.items.to_external(data.sequences.get(u)).tolist() for u in range(data.n_users)}


def test_missing_and_unparsable_ids_are_dropped_and_counted() -> None:
    raw = frame(["1", "1", None, "", "abc", "2", "2", "3.5"],
                ["10", "11", "12", "13", "14", "10", "nan", "10"],
                ["1", "2", "3", "4", "5", "6", "7", "8"])
    data = build_dataset(raw, source="log.csv")
    assert sequences(data) == {1: [10, 11], 2: [10]}
    report = data.report
    assert report is not None
    assert report.rows_read == 8 and report.rows_kept == 3
    assert report.dropped == {"missing or unparsable user": 4, "missing or unparsable item": 1}
    assert report.first_bad["missing or unparsable user"] == "line 4, column user: None"  # header is line 1
    assert any("dropped 4 rows: missing or unparsable user" in line for line in report.lines())


def test_unparsable_times_and_ratings_are_dropped_and_counted() -> None:
    raw = frame(["1", "1", "1", "1"], ["10", "11", "12", "13"], ["1", "soon", "3", "4"], ["5", "4", "x", "3"])
    data = build_dataset(raw)
    assert sequences(data) == {1: [10, 13]}
    assert data.report is not None
    assert data.report.dropped == {"missing or unparsable time": 1, "missing or unparsable rating": 1}


def test_strict_raises_naming_line_column_and_value() -> None:
    raw = frame(["1", "2", "x7", "3"], ["10", "11", "12", "13"])
    with pytest.raises(DataError, match=r"log\.csv: .*user at line 4, column user: 'x7'"):
        build_dataset(raw, PreprocessOptions(strict=True), source="log.csv")
    no_header = frame(["1", "2"], ["10", None])
    with pytest.raises(DataError, match=r"item at line 2, column item"):
        build_dataset(no_header, PreprocessOptions(strict=True), header_rows=0)


def test_string_ids_are_kept_as_strings() -> None:
    data = build_dataset(frame(["alice", "bob", "alice"], ["x", "y", "10"]))
    assert sequences(data) == {"alice": ["x", "10"], "bob": ["y"]}


def test_large_integer_ids_never_merge() -> None:
    # 2**53 + 1 and 2**53 are one float64: ids must not pass through one
    big = [str(2**53 + 1), str(2**53), "18446744073709551615", "99999999999999999999"]
    data = build_dataset(frame(big, ["1", "2", "3", "4"]))
    assert data.n_users == 4
    assert sorted(str(u) for u in data.users.external) == sorted(big)
    ints = build_dataset(frame([str(2**53 + 1), str(2**53)], ["1", "2"]))
    assert sorted(ints.users.external.tolist()) == [2**53, 2**53 + 1]


def test_dates_are_parsed_as_times() -> None:
    raw = frame(["1", "1", "1"], ["10", "11", "12"], ["2020-01-03", "2020-01-01", "2020-01-02"])
    data = build_dataset(raw)
    assert sequences(data) == {1: [11, 12, 10]}
    assert data.sequences.times is not None and np.diff(data.sequences.times).tolist() == [86400.0, 86400.0]


def test_rating_threshold() -> None:
    raw = frame(["1", "1", "1", "2"], ["10", "11", "12", "10"], ["1", "2", "3", "1"], ["4", "3.5", "5", "1"])
    data = build_dataset(raw, PreprocessOptions(min_rating=4))
    assert sequences(data) == {1: [10, 12]}
    assert data.report is not None and data.report.dropped == {"rating below 4": 2}
    with pytest.raises(DataError, match="rating column"):
        build_dataset(frame(["1"], ["10"]), PreprocessOptions(min_rating=4))


def test_exact_duplicates_are_removed_but_repeats_at_other_times_kept() -> None:
    raw = frame(["1", "1", "1", "1"], ["10", "10", "10", "11"], ["5", "5", "6", "7"])
    data = build_dataset(raw)
    assert sequences(data) == {1: [10, 10, 11]}
    assert data.report is not None and data.report.dropped == {"exact duplicate": 1}
    assert build_dataset(raw, PreprocessOptions(dedupe=False)).n_events == 4


def test_consecutive_repeats_are_dropped_on_request_only() -> None:
    raw = frame(["1"] * 5 + ["2", "2"], ["10", "10", "11", "10", "10", "10", "10"], [1, 2, 3, 4, 5, 1, 2])
    assert sequences(build_dataset(raw)) == {1: [10, 10, 11, 10, 10], 2: [10, 10]}
    data = build_dataset(raw, PreprocessOptions(drop_consecutive_repeats=True))
    assert sequences(data) == {1: [10, 11, 10], 2: [10]}  # a repeat across users is not a repeat
    assert data.report is not None and data.report.dropped == {"consecutive repeat": 3}


def test_consecutive_repeats_are_judged_in_time_order_not_file_order() -> None:
    raw = frame(["1", "1", "1"], ["10", "11", "10"], ["1", "3", "2"])  # time order: 10, 10, 11
    assert sequences(build_dataset(raw, PreprocessOptions(drop_consecutive_repeats=True))) == {1: [10, 11]}


def test_iterative_k_core_needs_more_than_one_pass() -> None:
    # a chain: dropping items a and d leaves u1 and u3 with one event each; dropping them leaves
    # items b and c with one user each, which empties u2. Only the dense {u4, u5} x {x, y} survives.
    pairs = [("u1", "a"), ("u1", "b"), ("u2", "b"), ("u2", "c"), ("u3", "c"), ("u3", "d"),
             ("u4", "x"), ("u4", "y"), ("u5", "x"), ("u5", "y")]
    raw = frame([u for u, _ in pairs], [i for _, i in pairs])
    data = build_dataset(raw, PreprocessOptions(user_core=2, item_core=2))
    assert sequences(data) == {"u4": ["x", "y"], "u5": ["x", "y"]}
    assert data.report is not None and sum(data.report.dropped.values()) == 6
    users, items = pd.factorize(raw["user"])[0], pd.factorize(raw["item"])[0]
    one_pass = (np.bincount(users)[users] >= 2) & (np.bincount(items)[items] >= 2)
    assert one_pass.sum() == 8  # a single pass would have kept u1-u3's b and c
    assert k_core(users, items, 2, 2).sum() == 4


def slow_k_core(pairs: list[tuple[int, int]], user_core: int, item_core: int) -> set[int]:
    """Reference: remove offending rows one sweep at a time until nothing changes."""
    alive = set(range(len(pairs)))
    while True:
        u_cnt: dict[int, int] = {}
        i_cnt: dict[int, int] = {}
        for r in alive:
            u_cnt[pairs[r][0]] = u_cnt.get(pairs[r][0], 0) + 1
            i_cnt[pairs[r][1]] = i_cnt.get(pairs[r][1], 0) + 1
        keep = {r for r in alive if u_cnt[pairs[r][0]] >= user_core and i_cnt[pairs[r][1]] >= item_core}
        if keep == alive:
            return alive
        alive = keep


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=60),
       st.integers(0, 4), st.integers(0, 4))
def test_k_core_matches_the_reference(pairs: list[tuple[int, int]], user_core: int, item_core: int) -> None:
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    items = np.array([i for _, i in pairs], dtype=np.int64)
    got = set(np.flatnonzero(k_core(users, items, user_core, item_core)).tolist())
    assert got == slow_k_core(pairs, user_core, item_core)


def test_item_id_zero_is_reserved_for_padding() -> None:
    raw = frame(["1", "1", "2", "2"], ["0", "5", "0", "7"])  # an external item id 0 is an ordinary item
    data = build_dataset(raw)
    assert data.n_items == 3
    assert sorted(np.unique(data.sequences.items).tolist()) == [1, 2, 3]
    assert data.items.offset == 1 and data.items.to_internal([0, 5, 7]).tolist() == [1, 2, 3]
    assert data.items.to_external(np.array([1])).tolist() == [0]
    assert data.users.offset == 0 and data.users.to_internal([1, 2]).tolist() == [0, 1]


def test_equal_timestamps_keep_the_original_row_order() -> None:
    raw = frame(["1", "1", "1", "1", "2", "2"], ["30", "10", "20", "40", "20", "10"], ["5", "5", "1", "5", "9", "9"])
    assert sequences(build_dataset(raw)) == {1: [20, 30, 10, 40], 2: [20, 10]}


def test_order_is_a_stable_sort_by_time_on_many_ties() -> None:
    rng = np.random.default_rng(11)
    n = 3000
    users, times = rng.integers(0, 20, n), rng.integers(0, 5, n)  # many ties
    raw = frame([str(u) for u in users], [str(i) for i in range(n)], [str(t) for t in times])
    got = sequences(build_dataset(raw))
    for u in range(20):
        rows = np.flatnonzero(users == u)
        want = rows[np.argsort(times[rows], kind="stable")]
        assert got[u] == want.tolist()


def test_sequences_and_times_agree_and_are_writable() -> None:
    raw = frame(["1", "2", "1"], ["10", "11", "12"], ["3", "1", "2"])
    seqs = build_dataset(raw).sequences
    assert seqs.offsets.tolist() == [0, 2, 3]
    assert seqs.times is not None and seqs.times.tolist() == [2.0, 3.0, 1.0]
    assert seqs.times.flags.writeable  # a read-only view makes torch.from_numpy warn on save


@pytest.mark.parametrize(("raw", "options"), [
    (frame(["1", "2"], ["10", "11"]), PreprocessOptions(user_core=2)),
    (frame(["1", "1"], ["10", "11"], ratings=["1", "2"]), PreprocessOptions(min_rating=3)),
    (frame([None, "", "nan"], ["10", "11", "12"]), PreprocessOptions()),
    (frame([], []), PreprocessOptions()),
])
def test_a_dataset_that_filtering_empties_is_a_data_error(raw: pd.DataFrame, options: PreprocessOptions) -> None:
    with pytest.raises(DataError, match=r"log\.csv: no interactions left after filtering"):
        build_dataset(raw, options, source="log.csv")
