"""Training windows and typed batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from seqrec.data.sequences import Sequences


class SequenceBatch(NamedTuple):
    items: torch.Tensor  # (B, L) input item ids, left-padded with 0, most recent last
    targets: torch.Tensor | None = None  # (B, L) item to predict at each position; 0 = none (None: inference)
    times: torch.Tensor | None = None  # (B, L) float64 event times of the inputs, when the log has them
    users: torch.Tensor | None = None  # (B,) internal user ids (their feature rows); -1 or None: unknown user

    def inputs_on(self, device: torch.device) -> SequenceBatch:
        """The model's inputs (items, times, users; no targets) on ``device``."""
        return SequenceBatch(self.items.to(device), None, None if self.times is None else self.times.to(device),
                             None if self.users is None else self.users.to(device))


def window_ends(seqs: Sequences, max_len: int, sliding: bool) -> tuple[np.ndarray, np.ndarray]:
    """(row user, end offset) for each training window of max_len + 1 events.

    Without ``sliding`` each user gives one window (their most recent events), as in SASRec;
    with it, long sequences are cut into consecutive windows so every event is a target once.
    """
    lengths = seqs.lengths
    users = np.flatnonzero(lengths >= 2)
    if not sliding:
        return users, seqs.offsets[users + 1]
    n_win = np.maximum(1, -(-(lengths[users] - 1) // max_len))
    rows = np.repeat(users, n_win)
    first = np.repeat(np.cumsum(n_win) - n_win, n_win)
    k = np.arange(int(n_win.sum())) - first  # window index counted from the end
    ends = seqs.offsets[rows + 1] - k * max_len
    return rows, ends


def gather_windows(seqs: Sequences, users: np.ndarray, ends: np.ndarray, width: int,
                   values: np.ndarray | None = None) -> np.ndarray:
    """Left-padded (R, width) matrix of the events (or of ``values`` per event, e.g. times)
    before ``ends`` of each user."""
    source = seqs.items if values is None else values
    starts = seqs.offsets[users]
    col = np.arange(width)[None, :]
    src = ends[:, None] - (width - col)
    valid = src >= starts[:, None]
    out = np.zeros((len(users), width), dtype=source.dtype)
    out[valid] = source[src[valid]]
    return out


class TrainBatches:
    """Shuffled next-item training batches, rebuilt from a seed each epoch."""

    BUCKET_SPAN = 64  # batches drawn together, then grouped by length

    def __init__(self, train: Sequences, max_len: int, batch_size: int, sliding: bool = True,
                 bucket: bool = False) -> None:
        users, ends = window_ends(train, max_len, sliding)
        self.windows = torch.from_numpy(gather_windows(train, users, ends, max_len + 1))  # (R, L + 1)
        self.times = None if train.times is None else torch.from_numpy(
            gather_windows(train, users, ends, max_len + 1, train.times))  # (R, L + 1) float64
        self.lengths = (self.windows > 0).sum(1)  # (R,) events in each window
        self.users = torch.from_numpy(np.asarray(users, dtype=np.int64))  # (R,) the user of each window
        self.batch_size, self.bucket = batch_size, bucket

    def __len__(self) -> int:
        return -(-self.windows.shape[0] // self.batch_size)

    def epoch(self, generator: torch.Generator) -> Iterator[SequenceBatch]:
        for rows in self._batches(generator):
            w = self.windows[rows]  # (B, L + 1)
            t = None if self.times is None else self.times[rows]
            if self.bucket:  # drop the columns that are padding in every row: less encoder work
                first = w.shape[1] - int(self.lengths[rows].max())
                w, t = w[:, first:], None if t is None else t[:, first:]
            items = w[:, :-1]
            targets = torch.where(items > 0, w[:, 1:], 0)
            yield SequenceBatch(items, targets, None if t is None else t[:, :-1], self.users[rows])

    def _batches(self, generator: torch.Generator) -> list[torch.Tensor]:
        """Row indices of each batch. With bucketing, windows of similar length share a batch:
        a random span of BUCKET_SPAN batches is sorted by length, cut, and the batches shuffled."""
        order = torch.randperm(self.windows.shape[0], generator=generator)
        if not self.bucket:
            return list(order.split(self.batch_size))
        span = self.batch_size * self.BUCKET_SPAN
        batches: list[torch.Tensor] = []
        for chunk in order.split(span):
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches.extend(chunk.split(self.batch_size))
        shuffle = torch.randperm(len(batches), generator=generator)
        return [batches[i] for i in shuffle.tolist()]


def eval_inputs(history: Sequences, max_len: int, rows: np.ndarray) -> torch.Tensor:
    """Left-padded (R, max_len) inputs for evaluation rows."""
    return torch.from_numpy(gather_windows(history, rows, history.offsets[rows + 1], max_len))


def eval_times(history: Sequences, max_len: int, rows: np.ndarray) -> torch.Tensor | None:
    """Left-padded (R, max_len) float64 event times for evaluation rows, or None."""
    if history.times is None:
        return None
    return torch.from_numpy(gather_windows(history, rows, history.offsets[rows + 1], max_len, history.times))


MIN_WIDTH = 8


def eval_widths(history: Sequences, max_len: int, rows: np.ndarray) -> np.ndarray:
    """(R,) input width per row: the next power of two (>= MIN_WIDTH) above the row's length, at
    most ``max_len``. A function of the row alone, so a row is encoded the same way whatever
    batch it is in; one column of padding is kept when the history is shorter than ``max_len``
    (BERT4Rec drops the oldest column to append its mask token)."""
    need = np.minimum(history.lengths[rows] + 1, max_len)
    width = MIN_WIDTH * 2 ** np.ceil(np.log2(need / MIN_WIDTH)).clip(min=0).astype(np.int64)  # need >= 1
    return np.minimum(width, max_len)
