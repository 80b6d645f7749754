"""Out-of-core reading and prepared datasets: the same users, items, sequences and split as the in-memory
path on the same log (CSV file, Parquet directory; integer and text ids; duplicates and k-core), the
manifest's version check, and one-line errors with exit status 2 for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec import __version__
from seqrec.cli import main
from seqrec.data import outofcore, prepared
from seqrec.data.config import DataConfig, load_data, split_data
from seqrec.data.io import ReadOptions, read_log
from seqrec.data.preprocess import Dataset, PreprocessOptions, build_dataset
from seqrec.data.split import Split, leave_one_out
from seqrec.errors import DataError, SeqrecError
from seqrec.recommender import Recommender

TRAIN = ["--model", "gru4rec", "--epochs", "1", "--dim", "8", "--hidden", "8", "--max-len", "10", "--quiet"]


def make_log(text_ids: bool, rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A log with repeated (user, item, time) rows, time ties, rare users and items."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 120, rows) * 7 + 1000
    items = (rng.zipf(1.4, rows) % 300) * 3 - 50  # some negative ids
    times = rng.integers(0, 40, rows) + 1_600_000_000
    dup = rng.random(rows) < 0.1  # copy the previous row: exact duplicates
    for col in (users, items, times):
        col[1:][dup[1:]] = col[:-1][dup[1:]]
    frame = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": times, "rating": rng.integers(1, 6, rows)})
    if text_ids:
        frame["user_id"] = "u" + frame["user_id"].astype(str)
        frame["item_id"] = "item-" + frame["item_id"].astype(str)
    return frame


def write_parquet_dir(frame: pd.DataFrame, folder: Path, parts: int = 3) -> Path:
    folder.mkdir()
    for k, chunk in enumerate(np.array_split(np.arange(len(frame)), parts)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[chunk], preserve_index=False), folder / f"day-{k:02d}.parquet",
                       row_group_size=400)
    return folder


def in_memory(frame: pd.DataFrame, opts: PreprocessOptions) -> Dataset:
    """The in-memory path on the same rows, read back from a CSV file as `--data` reads it."""
    return build_dataset(read_log(_csv(frame), ReadOptions()), opts)


_TMP: list[Path] = []


def _csv(frame: pd.DataFrame) -> Path:
    path = _TMP[0] / f"log-{len(list(_TMP[0].iterdir()))}.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(autouse=True)
def _tmp(tmp_path: Path) -> None:
    _TMP[:] = [tmp_path]


def assert_same(a: Dataset, b: Dataset) -> None:
    assert a.users.external.dtype.kind == b.users.external.dtype.kind
    assert a.users.external.tolist() == b.users.external.tolist()
    assert a.items.external.tolist() == b.items.external.tolist()
    np.testing.assert_array_equal(a.sequences.offsets, b.sequences.offsets)
    np.testing.assert_array_equal(a.sequences.items, b.sequences.items)
    assert (a.sequences.times is None) == (b.sequences.times is None)
    if a.sequences.times is not None and b.sequences.times is not None:
        np.testing.assert_array_equal(a.sequences.times, b.sequences.times)
    sa, sb = leave_one_out(a), leave_one_out(b)
    np.testing.assert_array_equal(sa.train.offsets, sb.train.offsets)
    np.testing.assert_array_equal(sa.train.items, sb.train.items)
    for ea, eb in ((sa.valid, sb.valid), (sa.test, sb.test)):
        np.testing.assert_array_equal(ea.users, eb.users)
        np.testing.assert_array_equal(ea.targets, eb.targets)
        np.testing.assert_array_equal(ea.history.items, eb.history.items)


OPTIONS = [PreprocessOptions(), PreprocessOptions(user_core=5, item_core=3),
           PreprocessOptions(dedupe=False, drop_consecutive_repeats=True, user_core=3, item_core=2),
           PreprocessOptions(min_rating=3, user_core=2)]


@pytest.mark.parametrize("text_ids", [False, True], ids=["int-ids", "text-ids"])
@pytest.mark.parametrize("opts", OPTIONS, ids=["default", "kcore", "repeats", "rating"])
def test_csv_and_parquet_dir_equal_in_memory(tmp_path: Path, text_ids: bool, opts: PreprocessOptions) -> None:
    frame = make_log(text_ids)
    read = ReadOptions(rating_col="rating")
    expected = build_dataset(read_log(_csv(frame), read), opts)
    assert (expected.report is not None and expected.report.dropped.get("exact duplicate", 0) > 0) or not opts.dedupe
    from_csv = outofcore.build(_csv(frame), read, opts)
    from_dir = outofcore.build(write_parquet_dir(frame, tmp_path / "days"), read, opts)
    assert_same(from_csv, expected)
    assert_same(from_dir, expected)
    assert from_dir.report is not None and expected.report is not None
    assert from_dir.report.dropped == expected.report.dropped


def test_file_order_without_time_and_no_header(tmp_path: Path) -> None:
    frame = make_log(False)[["user_id", "item_id"]]
    path = tmp_path / "log.tsv"
    frame.to_csv(path, index=False, header=False, sep="\t")
    read = ReadOptions(header=False, user_col="0", item_col="1")
    expected = build_dataset(read_log(path, read), PreprocessOptions(user_core=2))
    assert expected.sequences.times is None
    assert_same(outofcore.build(path, read, PreprocessOptions(user_core=2)), expected)


def test_missing_values_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    lines = ["user_id,item_id,timestamp"] + [f"{u},{i},{t}" for u, i, t in
                                             zip([1, 1, 1, 2, 2, 2, 3], [5, 6, 7, 5, 6, 7, 5], range(7), strict=True)]
    lines += ["4,,9", ",5,10", "3,6,"]
    path.write_text("\n".join(lines) + "\n")
    expected = build_dataset(read_log(path), PreprocessOptions())
    got = outofcore.build(path)
    assert_same(got, expected)
    assert got.report is not None and expected.report is not None
    assert got.report.dropped == expected.report.dropped
    assert got.report.first_bad["missing or unparsable item"].startswith("line 9, column item_id")


def test_mostly_numeric_text_ids_become_numbers(tmp_path: Path) -> None:
    """Numbers written as text (a Parquet string column) map to the same int ids as in memory."""
    frame = make_log(False)
    frame["user_id"] = frame["user_id"].astype(str)
    frame.loc[5, "user_id"] = "junk"
    folder = write_parquet_dir(frame, tmp_path / "days", parts=2)
    expected = build_dataset(pd.concat([pd.read_parquet(p) for p in sorted(folder.iterdir())])
                             .rename(columns={"user_id": "user", "item_id": "item", "timestamp": "time"})
                             [["user", "item", "time"]], PreprocessOptions())
    got = outofcore.build(folder)
    assert got.users.external.dtype.kind == "i"
    assert_same(got, expected)


def test_prepare_load_and_train_config(tmp_path: Path) -> None:
    frame = make_log(True)
    folder = write_parquet_dir(frame, tmp_path / "days")
    opts = PreprocessOptions(user_core=3)
    written = prepared.prepare(folder, tmp_path / "prep", ReadOptions(), opts)
    loaded = load_data(DataConfig(prepared=str(tmp_path / "prep")))
    assert_same(loaded, written)
    assert_same(loaded, in_memory(frame, opts))
    assert_same(load_data(DataConfig(data=str(folder), preprocess=opts)), loaded)  # --data DIR, in memory
    assert isinstance(loaded.sequences.items, np.ndarray) and not loaded.sequences.items.flags.writeable
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert manifest["seqrec_version"] == __version__ and manifest["format_version"] == prepared.FORMAT_VERSION
    assert manifest["arrays"]["items"]["shape"] == [written.n_events]
    assert manifest["preprocess"]["user_core"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prep")]  # no temporary folder left


def test_other_version_is_one_line_with_the_command(tmp_path: Path) -> None:
    prepared.prepare(_csv(make_log(False)), tmp_path / "prep", ReadOptions(), PreprocessOptions(user_core=2))
    manifest_path = tmp_path / "prep" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["seqrec_version"], manifest["format_version"] = "0.0.1", 0
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError) as err:
        prepared.load(tmp_path / "prep")
    msg = str(err.value)
    assert "\n" not in msg and "seqrec 0.0.1 (format 0)" in msg and f"seqrec {__version__}" in msg
    assert "seqrec prepare --data" in msg and "--user-core 2" in msg and "--force" in msg


def test_truncated_array_is_an_error(tmp_path: Path) -> None:
    prepared.prepare(_csv(make_log(False)), tmp_path / "prep")
    items = tmp_path / "prep" / "items.npy"
    items.write_bytes(items.read_bytes()[:-8])
    with pytest.raises(DataError, match="bytes, but the manifest says"):
        prepared.load(tmp_path / "prep")


def test_disagreeing_columns_and_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = make_log(False)
    folder = write_parquet_dir(frame, tmp_path / "days")
    pq.write_table(pa.Table.from_pandas(frame.rename(columns={"rating": "stars"}), preserve_index=False),
                   folder / "day-09.parquet")
    assert main(["prepare", "--data", str(folder), "--out", str(tmp_path / "prep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "day-09.parquet" in err and "stars" in err and "rating" in err
    (tmp_path / "empty").mkdir()
    assert main(["prepare", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "prep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Parquet files" in err
    assert not (tmp_path / "prep").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_log_too_big_for_memory_names_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    log = _csv(make_log(False))
    monkeypatch.setattr(outofcore, "available_memory", lambda: 10_000)
    with pytest.raises(DataError) as err:
        load_data(DataConfig(data=str(log)))
    msg = str(err.value)
    assert "\n" not in msg and f"seqrec prepare --data {log}" in msg and "needs about" in msg
    assert main(["train", "--data", str(log), *TRAIN, "--out", str(tmp_path / "run")]) == 2
    assert "seqrec prepare" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_prepared_conflicts_with_data_and_read_options() -> None:
    with pytest.raises(SeqrecError, match="not both"):
        DataConfig(prepared="p", data="log.csv")
    with pytest.raises(SeqrecError, match="fixed by `seqrec prepare`"):
        DataConfig(prepared="p", preprocess=PreprocessOptions(user_core=5))


def test_train_from_prepared_end_to_end(tmp_path: Path) -> None:
    frame = make_log(True, rows=1500)
    folder = write_parquet_dir(frame, tmp_path / "days")
    prep = tmp_path / "prep"
    assert main(["prepare", "--data", str(folder), "--out", str(prep), "--user-core", "3"]) == 0
    assert main(["prepare", "--data", str(folder), "--out", str(prep)]) == 2  # exists: needs --force
    assert main(["train", "--prepared", str(prep), *TRAIN, "--out", str(tmp_path / "run")]) == 0
    rec = Recommender.load(tmp_path / "run")
    assert rec.dataset is not None
    assert_same(rec.dataset, in_memory(frame, PreprocessOptions(user_core=3)))
    user = str(rec.dataset.users.external[0])
    assert user.startswith("u") and len(rec.recommend([user], k=3)) == 3
    assert main(["train", "--prepared", str(prep), "--user-core", "5", *TRAIN, "--out", str(tmp_path / "r2")]) == 2


def assert_same_split(a: Split, b: Split) -> None:
    assert (a.kind, a.n_items) == (b.kind, b.n_items)
    for sa, sb in ((a.train, b.train), (a.valid.history, b.valid.history), (a.test.history, b.test.history)):
        np.testing.assert_array_equal(sa.offsets, sb.offsets)
        np.testing.assert_array_equal(sa.items, sb.items)
        assert sa.times is not None and sb.times is not None
        np.testing.assert_array_equal(sa.times, sb.times)
    for ea, eb in ((a.valid, b.valid), (a.test, b.test)):
        np.testing.assert_array_equal(ea.users, eb.users)
        np.testing.assert_array_equal(ea.targets, eb.targets)


@pytest.mark.parametrize("short_users", [False, True], ids=["all-evaluable", "some-short"])
def test_stored_split_equals_leave_one_out(tmp_path: Path, short_users: bool) -> None:
    frame = make_log(False)
    if short_users:  # users with 1 and 2 events: trained on, never evaluated
        extra = pd.DataFrame({"user_id": [1, 2, 2], "item_id": [frame["item_id"].iloc[0]] * 3,
                              "timestamp": [5, 6, 7], "rating": [5, 5, 5]})
        frame = pd.concat([frame, extra], ignore_index=True)
    prepared.prepare(_csv(frame), tmp_path / "prep")
    config = DataConfig(prepared=str(tmp_path / "prep"))
    data = load_data(config)
    split = split_data(config, data)
    assert not split.train.items.flags.writeable  # mapped, not computed
    assert (split.valid.history is split.train) != short_users
    assert_same_split(split, leave_one_out(data))
    assert_same_split(split, leave_one_out(in_memory(frame, PreprocessOptions())))
    temporal = DataConfig(prepared=str(tmp_path / "prep"), split="temporal", valid_time=1_600_000_020,
                          test_time=1_600_000_030)
    assert split_data(temporal, data).kind == "temporal"


def test_small_blocks_text_after_numbers_and_many_dictionaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """Many CSV blocks: text ids merged over many batch dictionaries, and a column read as numbers from
    the first block that meets text later (read again as text: the text rows count as unparsable)."""
    monkeypatch.setattr(outofcore, "CSV_BLOCK", 4096)
    monkeypatch.setattr(outofcore, "UNIFY_EVERY", 50)
    frame = make_log(True)
    assert_same(outofcore.build(_csv(frame)), in_memory(frame, PreprocessOptions()))
    numbers = make_log(False)
    numbers["user_id"] = numbers["user_id"].astype(object)
    numbers.loc[len(numbers) - 2, "user_id"] = "late-text"
    path = _csv(numbers)
    got, expected = outofcore.build(path), build_dataset(read_log(path), PreprocessOptions())
    assert_same(got, expected)
    assert got.report is not None and got.report.dropped["missing or unparsable user"] == 1
