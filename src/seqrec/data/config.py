"""Where the data comes from and how it is read, cleaned and split: one frozen dataclass."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from seqrec.data import outofcore, prepared
from seqrec.data.features import ItemFeaturesConfig
from seqrec.data.io import ReadOptions, read_log
from seqrec.data.preprocess import Dataset, PreprocessOptions, build_dataset
from seqrec.data.split import Split, make_split
from seqrec.datasets import KNOWN, RawHook, load_dataset
from seqrec.errors import SeqrecError
from seqrec.items.transfer import TransferConfig
from seqrec.settings import check_choice, check_fields, setting

DEFAULT_DATASET = "movielens-latest-small"
SPLITS = ("leave-one-out", "temporal")


def parse_time(text: str) -> float:
    """Unix seconds from ``text``: a number, or an ISO 8601 date or date-time (UTC when no zone is given)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither unix seconds nor an ISO date such as 2018-06-01"
                                         ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def check_dataset(name: str, value: str | None) -> None:
    if value is not None:
        check_choice(name, value, KNOWN)


@dataclass(frozen=True)
class DataConfig:
    dataset: str | None = setting(None, f"a bundled or known dataset (none: {DEFAULT_DATASET} unless data is "
                                  "given); `seqrec datasets` lists them", check=check_dataset)
    data: str | None = setting(None, "path to an interaction log: csv/tsv/parquet/.dat/.inter/user-per-line, "
                               ".gz ok (read with the read options)")
    prepared: str | None = setting(None, "a folder written by `seqrec prepare`: train from its memory-mapped "
                                   "arrays, without reading or cleaning the log again")
    data_root: str = setting("../shared/data", "folder holding the known datasets (the command line's default is "
                             "$SEQREC_DATA_ROOT when set)")
    read: ReadOptions = field(default_factory=ReadOptions)
    preprocess: PreprocessOptions = field(default_factory=PreprocessOptions)
    items: ItemFeaturesConfig = field(default_factory=ItemFeaturesConfig)  # item attributes, text, tower mode
    transfer: TransferConfig = field(default_factory=TransferConfig)  # --init-from ARTIFACT, --freeze encoder
    split: str = setting("leave-one-out", "leave-one-out (each user's last event is the test target, the one "
                         "before it the validation target) or temporal (global time cut-offs)", choices=SPLITS)
    valid_time: float | None = setting(None, "temporal split: validation cut-off, unix seconds or an ISO date "
                                       "(2018-06-01, 2018-06-01T12:00:00+02:00; UTC when no zone)",
                                       parse=parse_time)
    test_time: float | None = setting(None, "temporal split: test cut-off, unix seconds or an ISO date",
                                      parse=parse_time)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.prepared is not None:
            check_prepared_config(self)
        if self.dataset is not None and self.data is not None:
            raise SeqrecError("give a dataset (--dataset) or a data file (--data), not both")
        if self.dataset is not None and self.read != ReadOptions():
            raise SeqrecError(f"the read options (--format, --sep, --user-col, ...) apply to a --data file; the "
                              f"known dataset {self.dataset!r} is read as `seqrec datasets` describes")
        if self.split == "temporal":
            if self.valid_time is None or self.test_time is None:
                raise SeqrecError("a temporal split needs --valid-time and --test-time (unix seconds)")
            if self.valid_time > self.test_time:
                raise SeqrecError(f"the validation cut-off {self.valid_time} is after the test cut-off "
                                  f"{self.test_time}; swap --valid-time and --test-time")
        elif self.valid_time is not None or self.test_time is not None:
            raise SeqrecError("--valid-time and --test-time apply to --split temporal only")

    @property
    def name(self) -> str:
        """The dataset's name: the known name, or the log file's name."""
        if self.prepared is not None:
            return Path(self.prepared).name
        return Path(self.data).name if self.data is not None else (self.dataset or DEFAULT_DATASET)


def check_prepared_config(config: DataConfig) -> None:
    """``--prepared`` replaces the log and its reading and cleaning options, which were fixed when preparing."""
    if config.dataset is not None or config.data is not None:
        raise SeqrecError("give a prepared dataset (--prepared) or a log (--data/--dataset), not both")
    if config.read != ReadOptions() or config.preprocess != PreprocessOptions():
        raise SeqrecError("the read and cleaning options (--user-col, --user-core, ...) were fixed by `seqrec "
                          "prepare`; leave them out with --prepared, or prepare the log again with them")


def load_data(config: DataConfig, raw_hook: RawHook | None = None) -> Dataset:
    """Read, clean and index the log that ``config`` names; ``raw_hook`` transforms the raw rows first."""
    if config.prepared is not None:
        return prepared.load_for_training(Path(config.prepared), raw_hook is not None)
    if config.data is None:
        return load_dataset(config.dataset or DEFAULT_DATASET, config.data_root, config.preprocess, raw_hook)
    path = Path(config.data)
    outofcore.check_fits_in_memory(path, config.read)
    if path.is_dir():  # a directory of Parquet files: read batch by batch, as `seqrec prepare` reads it
        return prepared.build_in_memory(path, config.read, config.preprocess, raw_hook is not None)
    frame = read_log(path, config.read)
    if raw_hook is not None:
        frame = raw_hook(frame)
    return build_dataset(frame, config.preprocess, name=path.name, source=str(path),
                         header_rows=int(config.read.header))


def split_data(config: DataConfig, data: Dataset) -> Split:
    if config.prepared is not None and config.split == "leave-one-out":  # stored with it, memory-mapped
        stored = prepared.load_split(Path(config.prepared), data)
        if stored is not None:
            return stored
    return make_split(data, config.split, config.valid_time, config.test_time)
