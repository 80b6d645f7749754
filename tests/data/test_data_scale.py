"""A million-row log goes through cleaning, k-core, the split and training windows in seconds:
every step is vectorised (a per-row Python loop would take minutes here)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from seqrec.data.batch import TrainBatches
from seqrec.data.preprocess import PreprocessOptions, build_dataset
from seqrec.data.split import leave_one_out


def test_one_million_rows() -> None:
    n, n_users, n_items = 1_000_000, 40_000, 20_000
    rng = np.random.default_rng(0)
    raw = pd.DataFrame({
        "user": rng.integers(0, n_users, n),
        "item": rng.integers(0, n_items, n),
        "time": rng.integers(0, 10**6, n),
    })
    data = build_dataset(raw, PreprocessOptions(user_core=5, item_core=5))
    assert data.report is not None and data.report.rows_read == n
    assert data.n_events == n - sum(data.report.dropped.values())
    assert data.n_events > 0.99 * n and data.n_users > 0.99 * n_users
    lengths = data.sequences.lengths
    assert lengths.sum() == data.n_events and lengths.min() >= 5
    times = data.sequences.times
    assert times is not None
    # chronological within each user: time only decreases where a new user starts
    drops = np.flatnonzero(np.diff(times) < 0) + 1
    assert np.isin(drops, data.sequences.offsets).all()

    split = leave_one_out(data)
    assert len(split.test) == data.n_users
    assert split.train.items.shape[0] == data.n_events - 2 * data.n_users
    batches = TrainBatches(split.train, max_len=50, batch_size=1024)
    assert batches.windows.shape[1] == 51
    w = batches.windows
    n_targets = int(((w[:, :-1] > 0) & (w[:, 1:] > 0)).sum())
    assert n_targets == split.train.items.shape[0] - data.n_users  # all but each user's first event
