"""Forgetting users: remove their ids and histories from an artifact, atomically.

The artifact is rewritten whole into a private temporary directory and renamed over the old one
(:func:`seqrec.artifact.save_artifact`), so a reader sees the old artifact or the new one, never a
mix, and a failure leaves the old one untouched. The model's weights are NOT changed: what they
learnt from the user stays in them (bounded only when trained with DP-SGD); exact unlearning is
``seqrec retrain ARTIFACT --exclude-users FILE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from seqrec.artifact import load_artifact, save_artifact
from seqrec.data.ids import IdMap
from seqrec.data.preprocess import Dataset
from seqrec.errors import SeqrecError
from seqrec.privacy.ids import pseudonym


def without_users(dataset: Dataset, rows: np.ndarray) -> Dataset:
    """``dataset`` without the users at internal ``rows`` (their ids and histories)."""
    keep = np.setdiff1d(np.arange(dataset.n_users), rows)
    users = IdMap(dataset.users.external[keep].copy(), dataset.users.offset)
    return replace(dataset, sequences=dataset.sequences.subset(keep), users=users)


def user_rows(dataset: Dataset, users: Sequence[str], key: bytes | None) -> np.ndarray:
    """Internal rows of ``users`` (raw ids, mapped with ``key`` when given, or pseudonyms); one line
    naming the first id the artifact does not hold."""
    wanted = [pseudonym(key, u) if key is not None else u for u in users]
    rows = dataset.users.to_internal(wanted, strict=False)
    if (rows < 0).any():
        bad = users[int(np.flatnonzero(rows < 0)[0])]
        hint = "" if key is not None else " (pseudonymised artifact? pass --pseudonymise-users KEYFILE)"
        raise SeqrecError(f"user {bad!r} is not in the artifact{hint}; nothing was changed")
    return rows


def forget(path: Path, users: Sequence[str], key: bytes | None = None) -> int:
    """Remove ``users`` from the artifact at ``path``; returns how many users remain."""
    art = load_artifact(path)
    rows = user_rows(art.dataset, users, key)
    art.dataset = without_users(art.dataset, rows)
    art.info = {**art.info, "forgotten_users": int(art.info.get("forgotten_users", 0)) + len(set(rows.tolist()))}
    save_artifact(path, art)
    return art.dataset.n_users
