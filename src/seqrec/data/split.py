"""Train / validation / test splits. The test event is never used in training (neither
as input nor as target) and the validation event is never a training target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from seqrec.data.preprocess import Dataset
from seqrec.data.sequences import Sequences, _keep_mask
from seqrec.errors import DataError

SplitKind = Literal["leave-one-out", "temporal"]


@dataclass(frozen=True)
class EvalSet:
    """Users to evaluate, each with an input history and one held-out target."""

    users: np.ndarray  # (M,) internal user ids
    history: Sequences  # M rows, oldest first; the model's input
    targets: np.ndarray  # (M,) internal item ids

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def sample(self, n: int, seed: int = 0) -> EvalSet:
        """A fixed random subset of ``n`` users (all of them when ``n`` >= len), in original order."""
        if n >= len(self):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return EvalSet(self.users[rows], self.history.subset(rows), self.targets[rows])


@dataclass(frozen=True)
class Split:
    train: Sequences  # one row per user (possibly empty), training events only
    valid: EvalSet
    test: EvalSet
    n_items: int
    kind: str
    valid_time: float | None = None  # temporal split: the cut-offs (unix seconds) that made it
    test_time: float | None = None


def leave_one_out(data: Dataset) -> Split:
    """Last event of each user is the test target, the one before it the validation target.

    Users with fewer than 3 events are kept for training only.
    """
    seqs = data.sequences
    lengths = seqs.lengths
    evaluable = np.flatnonzero(lengths >= 3)
    drop = np.where(lengths >= 3, 2, 0)
    train = seqs.truncate_tail(drop)
    last = seqs.offsets[evaluable + 1] - 1
    valid = EvalSet(evaluable, train.subset(evaluable), seqs.items[last - 1])
    test_hist = seqs.truncate_tail(np.where(lengths >= 3, 1, 0)).subset(evaluable)
    test = EvalSet(evaluable, test_hist, seqs.items[last])
    if len(evaluable) == 0:
        raise DataError("no user has 3 or more events, so leave-one-out has nothing to evaluate")
    return Split(train, valid, test, data.n_items, "leave-one-out")


def temporal(data: Dataset, valid_time: float, test_time: float) -> Split:
    """Global temporal split: events before ``valid_time`` train; each user's first event in
    [valid_time, test_time) is their validation target and first event at or after
    ``test_time`` their test target, with every earlier event as input."""
    seqs = data.sequences
    if seqs.times is None:
        raise DataError("a temporal split needs a time column; use --split leave-one-out or set --time-col")
    if valid_time > test_time:
        raise DataError(f"validation cutoff {valid_time} is after the test cutoff {test_time}")
    n_before_valid = _count_before(seqs, valid_time)
    n_before_test = _count_before(seqs, test_time)
    train = Sequences.from_lengths(
        n_before_valid, seqs.items[_keep_mask(seqs.offsets, n_before_valid)],
        seqs.times[_keep_mask(seqs.offsets, n_before_valid)])
    valid = _targets_at(seqs, n_before_valid, limit=n_before_test)
    test = _targets_at(seqs, n_before_test, limit=seqs.lengths)
    if len(test) == 0:
        raise DataError(f"no user has an event at or after the test cutoff {test_time} "
                        "with history before it")
    return Split(train, valid, test, data.n_items, "temporal", valid_time, test_time)


def _count_before(seqs: Sequences, cutoff: float) -> np.ndarray:
    assert seqs.times is not None
    before = seqs.times < cutoff
    user_of = np.repeat(np.arange(seqs.n_users), seqs.lengths)
    return np.bincount(user_of[before], minlength=seqs.n_users).astype(np.int64)


def _targets_at(seqs: Sequences, n_hist: np.ndarray, limit: np.ndarray) -> EvalSet:
    """Users whose event number ``n_hist[u]`` exists (below ``limit``) and who have history."""
    users = np.flatnonzero((n_hist < limit) & (n_hist >= 1))
    hist = seqs.truncate_tail(seqs.lengths - n_hist).subset(users)
    targets = seqs.items[seqs.offsets[users] + n_hist[users]]
    return EvalSet(users, hist, targets)


def make_split(data: Dataset, kind: str = "leave-one-out", valid_time: float | None = None,
               test_time: float | None = None) -> Split:
    if kind == "leave-one-out":
        return leave_one_out(data)
    if kind == "temporal":
        if valid_time is None or test_time is None:
            raise DataError("a temporal split needs --valid-time and --test-time (unix seconds)")
        return temporal(data, valid_time, test_time)
    raise DataError(f"unknown split {kind!r}; use leave-one-out or temporal")
