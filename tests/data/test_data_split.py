"""Leave-one-out and temporal splits: hand cases, and no leakage into training windows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from seqrec.data.batch import TrainBatches
from seqrec.data.preprocess import Dataset, build_dataset
from seqrec.data.sequences import Sequences
from seqrec.data.split import EvalSet, Split, leave_one_out, make_split, temporal
from seqrec.errors import DataError


def dataset(events: list[tuple[str, str, float]]) -> Dataset:
    """(user, item, time) events -> Dataset."""
    users, items, times = zip(*events, strict=True)
    raw = pd.DataFrame({"user": list(users), "item": list(items), "time": [str(t) for t in times]})
    return build_dataset(raw)


def rows(data: Dataset, seqs: Sequences) -> list[list[str]]:
    return [data.items.to_external(seqs.get(r)).tolist() for r in range(seqs.n_users)]


def described(data: Dataset, ev: EvalSet) -> dict[str, tuple[list[str], str]]:
    """External user -> (history, target)."""
    users = data.users.to_external(ev.users).tolist()
    targets = data.items.to_external(ev.targets).tolist()
    return {u: (h, t) for u, h, t in zip(users, rows(data, ev.history), targets, strict=True)}


def unique_item_dataset(seed: int, n_users: int = 60, max_len: int = 30) -> tuple[Dataset, np.ndarray]:
    """Every event has its own item, so an item id identifies one event; returns (data, event times)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, size=n_users)
    users = np.repeat(np.arange(n_users), lengths)
    times = rng.integers(0, 1000, size=len(users))
    raw = pd.DataFrame({"user": users.astype(str), "item": np.arange(len(users)).astype(str),
                        "time": times.astype(str)})
    return build_dataset(raw), times


def training_items(split: Split, max_len: int, sliding: bool) -> tuple[set[int], set[int]]:
    """(every input item, every target item) over one epoch of training batches."""
    inputs: set[int] = set()
    targets: set[int] = set()
    for batch in TrainBatches(split.train, max_len, batch_size=16, sliding=sliding).epoch(
            torch.Generator().manual_seed(0)):
        inputs |= set(batch.items[batch.items > 0].tolist())
        targets |= set(batch.targets[batch.targets > 0].tolist())
    return inputs, targets


# ---- leave-one-out -----------------------------------------------------------------------------


def test_leave_one_out_by_hand() -> None:
    data = dataset([("A", "a", 1), ("A", "b", 2), ("A", "c", 3), ("A", "d", 4),
                    ("B", "e", 1), ("B", "f", 2),
                    ("C", "c", 9), ("C", "a", 5), ("C", "e", 7)])
    split = leave_one_out(data)
    assert split.kind == "leave-one-out" and split.n_items == data.n_items
    assert rows(data, split.train) == [["a", "b"], ["e", "f"], ["a"]]  # B is too short to evaluate
    assert described(data, split.valid) == {"A": (["a", "b"], "c"), "C": (["a"], "e")}
    assert described(data, split.test) == {"A": (["a", "b", "c"], "d"), "C": (["a", "e"], "c")}


def test_leave_one_out_needs_a_user_with_three_events() -> None:
    with pytest.raises(DataError, match="3 or more events"):
        leave_one_out(dataset([("A", "a", 1), ("A", "b", 2), ("B", "a", 1)]))


@pytest.mark.parametrize("sliding", [True, False])
def test_leave_one_out_never_leaks_into_training(sliding: bool) -> None:
    data, _ = unique_item_dataset(seed=1)
    split = make_split(data, "leave-one-out")
    inputs, targets = training_items(split, max_len=5, sliding=sliding)
    test_events, valid_events = set(split.test.targets.tolist()), set(split.valid.targets.tolist())
    assert test_events and valid_events and targets
    assert not test_events & (inputs | targets)  # the test event is neither input nor target
    assert not valid_events & targets  # the validation event is never a training target
    assert not valid_events & set(split.valid.history.items.tolist())  # nor its own input
    # each history is everything before the held-out event, and the test input ends with the valid event
    for r, u in enumerate(split.test.users):
        full = data.sequences.get(int(u)).tolist()
        assert split.test.history.get(r).tolist() == full[:-1] and split.test.targets[r] == full[-1]
        assert split.valid.history.get(r).tolist() == full[:-2] and split.valid.targets[r] == full[-2]


# ---- temporal ----------------------------------------------------------------------------------


def test_temporal_split_by_hand() -> None:
    data = dataset([("A", "a", 1), ("A", "b", 5), ("A", "c", 12), ("A", "d", 15), ("A", "e", 22),
                    ("A", "f", 30), ("B", "g", 11), ("B", "h", 21), ("C", "i", 2), ("C", "j", 3),
                    ("D", "k", 25), ("E", "l", 10), ("E", "m", 20)])
    split = temporal(data, valid_time=10, test_time=20)
    assert split.kind == "temporal"
    assert rows(data, split.train) == [["a", "b"], [], ["i", "j"], [], []]
    assert described(data, split.valid) == {"A": (["a", "b"], "c")}  # B and E have no history before 10
    assert described(data, split.test) == {"A": (["a", "b", "c", "d"], "e"), "B": (["g"], "h"),
                                           "E": (["l"], "m")}  # the cutoffs are inclusive on the right


@pytest.mark.parametrize("sliding", [True, False])
def test_temporal_split_never_leaks_into_training(sliding: bool) -> None:
    data, times = unique_item_dataset(seed=2)
    split = make_split(data, "temporal", valid_time=400, test_time=700)
    time_of = dict(zip(data.items.to_internal(np.arange(len(times))).tolist(), times.tolist(), strict=True))
    assert all(time_of[i] < 400 for i in split.train.items.tolist())
    assert all(400 <= time_of[i] < 700 for i in split.valid.targets.tolist())
    assert all(time_of[i] >= 700 for i in split.test.targets.tolist())
    assert all(time_of[i] < 700 for i in split.test.history.items.tolist())
    inputs, targets = training_items(split, max_len=5, sliding=sliding)
    test_events, valid_events = set(split.test.targets.tolist()), set(split.valid.targets.tolist())
    assert test_events and valid_events
    assert not test_events & (inputs | targets)
    assert not valid_events & targets


def test_temporal_split_errors() -> None:
    data = dataset([("A", "a", 1), ("A", "b", 2), ("A", "c", 3)])
    with pytest.raises(DataError, match="after the test cutoff"):
        temporal(data, valid_time=3, test_time=2)
    with pytest.raises(DataError, match="no user has an event at or after the test cutoff"):
        temporal(data, valid_time=2, test_time=100)
    order_only = build_dataset(pd.DataFrame({"user": ["A", "A"], "item": ["a", "b"]}))
    with pytest.raises(DataError, match="needs a time column"):
        temporal(order_only, valid_time=1, test_time=2)


def test_make_split_checks_its_options() -> None:
    data = dataset([("A", "a", 1), ("A", "b", 2), ("A", "c", 3)])
    with pytest.raises(DataError, match="--valid-time and --test-time"):
        make_split(data, "temporal", valid_time=1)
    with pytest.raises(DataError, match="unknown split 'random'"):
        make_split(data, "random")


def test_eval_set_sample_is_a_fixed_subset_of_whole_users() -> None:
    data, _ = unique_item_dataset(seed=1)
    valid = leave_one_out(data).valid
    part = valid.sample(5, seed=0)
    assert len(part) == 5 and part.history.n_users == 5
    assert np.array_equal(part.users, valid.sample(5, seed=0).users)  # same seed, same users
    assert np.all(np.diff(part.users) > 0) or len(set(part.users.tolist())) == 5
    for i, user in enumerate(part.users.tolist()):
        row = int(np.flatnonzero(valid.users == user)[0])
        assert part.targets[i] == valid.targets[row]
        assert np.array_equal(part.history.get(i), valid.history.get(row))
    assert valid.sample(len(valid) + 10) is valid


def test_replace_rows_by_hand() -> None:
    seqs = Sequences.from_lengths(np.array([2, 1, 0, 3]), np.array([1, 2, 3, 4, 5, 6]),
                                  np.array([10.0, 11, 12, 13, 14, 15]))
    rows = Sequences.from_lengths(np.array([3, 1]), np.array([9, 8, 7, 6]), np.array([1.0, 2, 3, 4]))
    out = seqs.replace_rows(np.array([3, 0]), rows)  # unsorted users
    assert [out.get(u).tolist() for u in range(4)] == [[6], [3], [], [9, 8, 7]]
    assert out.times is not None and out.times.tolist() == [4.0, 12.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        seqs.replace_rows(np.array([0, 0]), rows)
    with pytest.raises(ValueError):
        seqs.replace_rows(np.array([0, 1]), Sequences.from_lengths(np.array([1, 1]), np.array([1, 2])))
