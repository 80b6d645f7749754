"""Training windows and evaluation inputs: left padding, next-item targets, every event a target once."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from seqrec.data.batch import TrainBatches, eval_inputs, gather_windows, window_ends
from seqrec.data.sequences import Sequences


def unique_sequences(lengths: list[int]) -> Sequences:
    """Sequences whose items are 1, 2, 3, ... in order, so an item names one event."""
    items = np.arange(1, sum(lengths) + 1)
    return Sequences.from_lengths(np.asarray(lengths), items)


LENGTHS = [1, 2, 3, 7, 11, 12, 0, 25]


def epoch(seqs: Sequences, max_len: int, sliding: bool, batch_size: int = 3) -> list[tuple[torch.Tensor, ...]]:
    batches = TrainBatches(seqs, max_len, batch_size=batch_size, sliding=sliding)
    out = [(b.items, b.targets, b.times) for b in batches.epoch(torch.Generator().manual_seed(0))]
    assert len(out) == len(batches)
    return out


@pytest.mark.parametrize("max_len", [1, 3, 5, 10, 30])
def test_sliding_windows_make_every_event_but_the_first_a_target_exactly_once(max_len: int) -> None:
    seqs = unique_sequences(LENGTHS)
    counts: Counter[int] = Counter()
    for items, targets, times in epoch(seqs, max_len, sliding=True):
        assert targets is not None
        assert items.shape[1] == max_len and targets.shape == items.shape
        assert times is None  # the log has no times
        real = items > 0
        assert torch.equal(real, real.cummax(1).values)  # left-padded: zeros only before real items
        # each target is the event right after its input (items are consecutive numbers)
        assert torch.equal(targets[real], items[real] + 1) and not targets[~real].any()
        counts.update(targets[targets > 0].tolist())
    firsts = set(seqs.offsets[:-1][np.asarray(LENGTHS) > 0] + 1)
    assert set(counts) == set(range(1, sum(LENGTHS) + 1)) - firsts and set(counts.values()) == {1}


def test_without_sliding_each_user_gives_one_window_of_their_latest_events() -> None:
    seqs = unique_sequences(LENGTHS)
    max_len = 5
    windows = sorted(tuple(row.tolist()) for items, targets, _ in epoch(seqs, max_len, sliding=False)
                     for row in torch.cat([items, targets[:, -1:]], 1))
    want = sorted(tuple(np.pad(seqs.get(u)[-(max_len + 1):], (max_len + 1 - min(n, max_len + 1), 0)).tolist())
                  for u, n in enumerate(LENGTHS) if n >= 2)
    assert windows == want


@pytest.mark.parametrize("bucket", [False, True])
def test_batches_carry_the_times_of_their_input_events(bucket: bool) -> None:
    plain = unique_sequences(LENGTHS)
    seqs = Sequences(plain.offsets, plain.items, plain.items * 10.0 + 0.5)  # an event's time names it
    batches = TrainBatches(seqs, 4, batch_size=3, bucket=bucket)
    n_targets = 0
    for batch in batches.epoch(torch.Generator().manual_seed(0)):
        assert batch.targets is not None and batch.times is not None
        assert batch.times.dtype == torch.float64 and batch.times.shape == batch.items.shape
        real = batch.items > 0
        assert torch.equal(batch.times[real], batch.items[real] * 10.0 + 0.5)
        assert not batch.times[~real].any()
        n_targets += int((batch.targets > 0).sum())
    assert n_targets == sum(n - 1 for n in LENGTHS if n >= 2)


def test_window_helpers_by_hand() -> None:
    seqs = Sequences.from_lists([[5, 6, 7, 8, 9], [3]])
    users, ends = window_ends(seqs, max_len=2, sliding=True)
    assert users.tolist() == [0, 0] and ends.tolist() == [5, 3]
    assert gather_windows(seqs, users, ends, 3).tolist() == [[7, 8, 9], [5, 6, 7]]
    users, ends = window_ends(seqs, max_len=2, sliding=False)
    assert users.tolist() == [0] and gather_windows(seqs, users, ends, 3).tolist() == [[7, 8, 9]]


def test_epochs_are_reproducible_from_the_generator_seed() -> None:
    batches = TrainBatches(unique_sequences(LENGTHS), 4, batch_size=2)
    first = [b.items for b in batches.epoch(torch.Generator().manual_seed(5))]
    again = [b.items for b in batches.epoch(torch.Generator().manual_seed(5))]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_eval_inputs_are_left_padded_most_recent_last() -> None:
    seqs = Sequences.from_lists([[1, 2, 3, 4, 5], [6], [], [7, 8]])
    got = eval_inputs(seqs, max_len=3, rows=np.array([0, 1, 2, 3]))
    assert got.tolist() == [[3, 4, 5], [0, 0, 6], [0, 0, 0], [0, 7, 8]]
    assert eval_inputs(seqs, max_len=3, rows=np.array([3, 0])).tolist() == [[0, 7, 8], [3, 4, 5]]


def test_sequence_helpers() -> None:
    seqs = Sequences.from_lists([[1, 2, 3], [4], [5, 6]])
    assert seqs.truncate_tail(np.array([1, 2, 0])).items.tolist() == [1, 2, 5, 6]
    sub = seqs.subset(np.array([2, 0]))
    assert [sub.get(r).tolist() for r in range(2)] == [[5, 6], [1, 2, 3]]
