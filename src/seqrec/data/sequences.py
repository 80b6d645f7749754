"""Per-user ordered item sequences in compressed (CSR) form."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sequences:
    """Sequence ``u`` is ``items[offsets[u]:offsets[u + 1]]``, oldest first."""

    offsets: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # (E,) int64, internal item ids >= 1
    times: np.ndarray | None = None  # (E,) float64 or None when only order is known

    @property
    def n_users(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return self.n_users

    def get(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    @classmethod
    def from_lengths(cls, lengths: np.ndarray, items: np.ndarray,
                     times: np.ndarray | None = None) -> Sequences:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(offsets, items.astype(np.int64), times)

    @classmethod
    def from_lists(cls, seqs: list[list[int]]) -> Sequences:
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        flat = np.array([i for s in seqs for i in s], dtype=np.int64)
        return cls.from_lengths(lengths, flat)

    def truncate_tail(self, drop: np.ndarray) -> Sequences:
        """Drop the last ``drop[u]`` events of every user (vectorised)."""
        lengths = np.maximum(self.lengths - drop, 0)
        keep = _keep_mask(self.offsets, lengths)
        times = None if self.times is None else self.times[keep]
        return Sequences.from_lengths(lengths, self.items[keep], times)

    def subset(self, users: np.ndarray) -> Sequences:
        """Sequences of the given users, in that order."""
        lengths = self.lengths[users]
        starts = self.offsets[users]
        idx = _ranges(starts, lengths)
        times = None if self.times is None else self.times[idx]
        return Sequences.from_lengths(lengths, self.items[idx], times)

    def replace_rows(self, users: np.ndarray, rows: Sequences) -> Sequences:
        """A copy whose sequence ``users[i]`` is ``rows``' sequence ``i`` (vectorised)."""
        if len(users) != rows.n_users or len(np.unique(users)) != len(users):
            raise ValueError(f"{len(users)} distinct users needed for {rows.n_users} replacement rows")
        if (self.times is None) != (rows.times is None):
            raise ValueError("both sides need times, or neither")
        replaced = np.zeros(self.n_users, dtype=bool)
        replaced[users] = True
        row_of = np.zeros(self.n_users, dtype=np.int64)
        row_of[users] = np.arange(len(users))
        lengths = self.lengths.copy()
        lengths[users] = rows.lengths
        new_users = np.flatnonzero(replaced)  # ascending: the order the output stores them in
        own = _ranges(self.offsets[:-1][~replaced], lengths[~replaced])
        new = _ranges(rows.offsets[:-1][row_of[new_users]], lengths[new_users])
        from_rows = np.repeat(replaced, lengths)
        items = np.empty(int(lengths.sum()), dtype=np.int64)
        items[~from_rows], items[from_rows] = self.items[own], rows.items[new]
        times = None
        if self.times is not None and rows.times is not None:
            times = np.empty(items.shape[0], dtype=self.times.dtype)
            times[~from_rows], times[from_rows] = self.times[own], rows.times[new]
        return Sequences.from_lengths(lengths, items, times)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each pair, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    row_starts = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return row_starts + np.arange(total)


def _keep_mask(offsets: np.ndarray, keep_lengths: np.ndarray) -> np.ndarray:
    """Mask over events keeping the first ``keep_lengths[u]`` events of each user."""
    lengths = np.diff(offsets)
    pos = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], lengths)
    return pos < np.repeat(keep_lengths, lengths)
