"""Every reader on small files written here: the same three events come back as user, item[, time]."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from seqrec.data.io import ReadOptions, detect_format, read_log
from seqrec.data.preprocess import build_dataset
from seqrec.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

USERS = ["1", "1", "2"]
ITEMS = ["10", "11", "10"]
TIMES = ["100", "200", "150"]


def write(path: Path, text: str, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def as_lists(frame: pd.DataFrame, columns: tuple[str, ...] = ("user", "item", "time")) -> list[list[str]]:
    return [[str(v) for v in frame[c]] for c in columns]


def test_csv_with_header_and_default_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,10,100\n1,11,200\n2,10,150\n")
    frame = read_log(path)
    assert list(frame.columns) == ["user", "item", "time"]
    assert as_lists(frame) == [USERS, ITEMS, TIMES]


def test_csv_with_custom_column_names_and_extra_columns(tmp_path: Path) -> None:
    text = "ts,rating,movie,who\n100,4.5,10,1\n200,3,11,1\n150,5,10,2\n"
    path = write(tmp_path / "log.csv", text)
    frame = read_log(path, ReadOptions(user_col="who", item_col="movie", time_col="ts", rating_col="rating"))
    assert list(frame.columns) == ["user", "item", "time", "rating"]
    assert as_lists(frame) == [USERS, ITEMS, TIMES]
    assert frame["rating"].tolist() == ["4.5", "3", "5"]


def test_tsv_is_sniffed(tmp_path: Path) -> None:
    path = write(tmp_path / "log.tsv", "user_id\titem_id\ttimestamp\n1\t10\t100\n1\t11\t200\n2\t10\t150\n")
    assert as_lists(read_log(path)) == [USERS, ITEMS, TIMES]


def test_semicolon_delimiter_sniffed_and_explicit(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user_id;item_id;timestamp\n1;10;100\n1;11;200\n2;10;150\n")
    assert as_lists(read_log(path)) == [USERS, ITEMS, TIMES]
    assert as_lists(read_log(path, ReadOptions(sep=";"))) == [USERS, ITEMS, TIMES]


def test_no_header_with_positional_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "100,1,10\n200,1,11\n150,2,10\n")
    frame = read_log(path, ReadOptions(header=False, user_col="1", item_col="2", time_col="0"))
    assert as_lists(frame) == [USERS, ITEMS, TIMES]


@pytest.mark.parametrize("no_time", [None, ""])  # two spellings of "no time column"
def test_space_separated_pairs_without_header(tmp_path: Path, no_time: str | None) -> None:
    # the BERT4Rec Amazon layout: `user item` per line, order only
    path = write(tmp_path / "beauty.txt", "1 10\n1 11\n2 10\n")
    opts = ReadOptions(format="csv", sep=" ", header=False, user_col="0", item_col="1", time_col=no_time)
    assert opts.time_col == ""
    frame = read_log(path, opts)
    assert list(frame.columns) == ["user", "item"]
    assert as_lists(frame, ("user", "item")) == [USERS, ITEMS]


@pytest.mark.parametrize("name", ["log.csv.gz", "log.csv"])  # gzip is found by content, not by name
def test_gzip_compressed_csv(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "user_id,item_id,timestamp\n1,10,100\n1,11,200\n2,10,150\n", gz=True)
    assert as_lists(read_log(path)) == [USERS, ITEMS, TIMES]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame({"uid": [1, 1, 2], "iid": [10, 11, 10], "t": [100, 200, 150]}).to_parquet(path)
    assert detect_format(path) == "parquet"
    frame = read_log(path, ReadOptions(user_col="uid", item_col="iid", time_col="t"))
    assert as_lists(frame) == [USERS, ITEMS, TIMES]
    data = build_dataset(frame)
    assert data.users.external.tolist() == [1, 2] and data.items.external.tolist() == [10, 11]


def test_movielens_double_colon_dat(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.dat", "1::10::4::100\n1::11::5::200\n2::10::3::150\n")
    assert detect_format(path) == "movielens"
    frame = read_log(path)
    assert as_lists(frame, ("user", "item", "time", "rating")) == [USERS, ITEMS, TIMES, ["4", "5", "3"]]


def test_movielens_tab_u_data(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", "1\t10\t4\t100\n1\t11\t5\t200\n2\t10\t3\t150\n")
    assert detect_format(path) == "movielens"
    assert as_lists(read_log(path)) == [USERS, ITEMS, TIMES]


def test_movielens_with_too_few_columns_is_a_data_error(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.dat", "1::10\n2::11\n")
    with pytest.raises(DataError, match="4 columns"):
        read_log(path)


def test_recbole_inter(tmp_path: Path) -> None:
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t100\n1\t11\t5\t200\n2\t10\t3\t150\n"
    path = write(tmp_path / "ml.inter", text)
    assert detect_format(path) == "inter"
    frame = read_log(path)
    assert list(frame.columns) == ["user", "item", "time"]
    assert as_lists(frame) == [USERS, ITEMS, TIMES]


@pytest.mark.parametrize("gz", [False, True])
def test_user_per_line(tmp_path: Path, gz: bool) -> None:
    path = write(tmp_path / ("seqs.txt.gz" if gz else "seqs.txt"), "u1 a b c d\n\nu2 c a\nu3 e\n", gz=gz)
    assert detect_format(path) == "user-per-line"
    frame = read_log(path)
    assert list(frame.columns) == ["user", "item"]  # no time: line order stands for time
    assert frame["user"].tolist() == ["u1"] * 4 + ["u2"] * 2 + ["u3"]
    assert frame["item"].tolist() == ["a", "b", "c", "d", "c", "a", "e"]


def test_user_per_line_detected_when_the_first_user_has_few_items(tmp_path: Path) -> None:
    path = write(tmp_path / "seqs.txt", "u1 a b\nu2 c a d e f\n")
    assert detect_format(path) == "user-per-line"
    assert read_log(path)["item"].tolist() == ["a", "b", "c", "a", "d", "e", "f"]


def test_user_per_line_with_no_usable_line_is_a_data_error(tmp_path: Path) -> None:
    path = write(tmp_path / "seqs.txt", "u1\nu2\n")
    with pytest.raises(DataError, match="user-per-line"):
        read_log(path, ReadOptions(format="user-per-line"))


def test_time_is_optional_and_file_order_stands_for_it(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user_id,item_id\n1,12\n1,10\n1,11\n")
    frame = read_log(path)
    assert "time" not in frame
    data = build_dataset(frame)
    assert data.sequences.times is None
    assert data.items.to_external(data.sequences.get(0)).tolist() == [12, 10, 11]


# ---- clear errors -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_log(tmp_path / "nope.csv")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        read_log(tmp_path)


def test_wrong_column_name_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "uid,item_id\n1,10\n")
    with pytest.raises(DataError, match=r"no column 'user_id' for user ids \(columns: uid, item_id\)"):
        read_log(path)
    with pytest.raises(DataError, match="no rating column 'stars'"):
        read_log(path, ReadOptions(user_col="uid", rating_col="stars"))


@pytest.mark.parametrize(("name", "content"), [
    ("log.csv", b"user_id,item_id\n1,10\n2,11,12,13\n"),  # ragged
    ("log.csv", b""),  # empty
    ("log.parquet", b"this is not parquet"),
])
def test_unreadable_content_is_a_data_error_naming_the_file(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=str(path)):
        read_log(path)


# ---- the real files, when present -----------------------------------------------------------


@pytest.mark.skipif(not (SHARED_DATA / "movielens-100k" / "u.data").exists(), reason="needs ../shared/data")
def test_real_movielens_100k() -> None:
    data = build_dataset(read_log(SHARED_DATA / "movielens-100k" / "u.data"))
    assert (data.n_users, data.n_items, data.n_events) == (943, 1682, 100_000)


@pytest.mark.skipif(not (SHARED_DATA / "amazon-beauty-s3rec" / "Beauty.txt.gz").exists(),
                    reason="needs ../shared/data")
def test_real_user_per_line_amazon_beauty() -> None:
    data = build_dataset(read_log(SHARED_DATA / "amazon-beauty-s3rec" / "Beauty.txt.gz"))
    assert (data.n_users, data.n_items, data.n_events) == (22_363, 12_101, 198_502)
