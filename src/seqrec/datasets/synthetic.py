"""Synthetic logs with a learnable sequential pattern, for tests and benchmarks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from seqrec.data.preprocess import Dataset, build_dataset


def markov_log(n_users: int = 300, n_items: int = 60, length: int = 20, p_follow: float = 0.8,
               seed: int = 0) -> pd.DataFrame:
    """Each user walks a fixed random successor map with probability ``p_follow``, else jumps
    to a uniformly random item: a sequence model can learn it, popularity cannot."""
    rng = np.random.default_rng(seed)
    successor = rng.permutation(n_items)
    items = np.empty((n_users, length), dtype=np.int64)
    items[:, 0] = rng.integers(0, n_items, n_users)
    for t in range(1, length):  # loop over positions, vectorised over users
        follow = rng.random(n_users) < p_follow
        items[:, t] = np.where(follow, successor[items[:, t - 1]], rng.integers(0, n_items, n_users))
    users = np.repeat(np.arange(n_users), length)
    times = np.tile(np.arange(length), n_users) + 1_000_000
    return pd.DataFrame({"user": users, "item": items.ravel() + 1, "time": times})


def markov_dataset(**kwargs: int | float) -> Dataset:
    return build_dataset(markov_log(**kwargs), name="markov")  # type: ignore[arg-type]
