"""Datasets by name: bundled (MovieLens latest-small) and known public files on disk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from seqrec.data.io import ReadOptions, read_log
from seqrec.data.preprocess import Dataset, PreprocessOptions, build_dataset
from seqrec.errors import DataError


@dataclass(frozen=True)
class KnownDataset:
    name: str
    path: str  # bundled: file inside the package; else relative to the data root
    read: ReadOptions
    description: str
    bundled: bool = False
    titles: str | None = None  # movies.csv-style file with item titles


KNOWN: dict[str, KnownDataset] = {d.name: d for d in [
    KnownDataset("movielens-latest-small", "movielens_latest_small/ratings.csv.gz",
                 ReadOptions(user_col="userId", item_col="movieId", time_col="timestamp", rating_col="rating"),
                 "GroupLens ml-latest-small: 610 users, 9.7k movies, 100k ratings with timestamps",
                 bundled=True, titles="movielens_latest_small/movies.csv"),
    KnownDataset("movielens-100k", "movielens-100k/u.data", ReadOptions(format="movielens"),
                 "GroupLens ML-100K: 943 users, 1,682 movies, 100k ratings"),
    KnownDataset("amazon-beauty-bert4rec", "amazon-beauty-bert4rec/beauty.txt.gz",
                 ReadOptions(format="csv", sep=" ", header=False, user_col="0", item_col="1", time_col=None),
                 "Amazon Beauty as in BERT4Rec: 40k users, 54.5k items, 354k events (order only)"),
    KnownDataset("amazon-beauty-s3rec", "amazon-beauty-s3rec/Beauty.txt.gz", ReadOptions(format="user-per-line"),
                 "Amazon Beauty 5-core as in S3-Rec: 22k users, 12k items, 199k events"),
    KnownDataset("amazon-sports-s3rec", "amazon-sports-s3rec/Sports_and_Outdoors.txt.gz",
                 ReadOptions(format="user-per-line"),
                 "Amazon Sports 5-core as in S3-Rec: 36k users, 18k items, 296k events"),
]}


def bundled_path(relative: str) -> Path:
    return Path(str(resources.files("seqrec.datasets").joinpath(relative)))


def dataset_path(name: str, data_root: Path) -> Path:
    info = _info(name)
    return bundled_path(info.path) if info.bundled else data_root / info.path


def _info(name: str) -> KnownDataset:
    if name not in KNOWN:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(KNOWN)} (or use --data PATH)")
    return KNOWN[name]


RawHook = Callable[[pd.DataFrame], pd.DataFrame]  # raw log rows in, raw log rows out


def load_dataset(name: str, data_root: Path | str = "../shared/data",
                 options: PreprocessOptions | None = None, raw_hook: RawHook | None = None) -> Dataset:
    """Load a bundled or known dataset by name, preprocessed with ``options``; ``raw_hook`` transforms the
    raw rows before anything is cleaned or indexed (e.g. dropping or pseudonymising users)."""
    info = _info(name)
    path = dataset_path(name, Path(data_root))
    if not path.exists():
        raise DataError(f"dataset {name!r} is not at {path}; set --data-root to the folder that holds {info.path}")
    titles = _titles(bundled_path(info.titles)) if info.titles else None
    frame = read_log(path, info.read)
    if raw_hook is not None:
        frame = raw_hook(frame)
    return build_dataset(frame, options, name=name, source=str(path), header_rows=int(info.read.header),
                         titles=titles)


def _titles(path: Path) -> dict[object, str]:
    movies = pd.read_csv(path, dtype={"movieId": "int64", "title": str})
    return dict(zip(movies["movieId"].tolist(), movies["title"].tolist(), strict=True))
