"""Pseudonymised user ids and excluded users, applied to the raw log before anything is built from it.

A pseudonym is ``HMAC-SHA256(key, id)`` in hex, computed from the id as the log spells it. The key
is read from a file (or given by the command line from an environment variable) and is never
written anywhere: artifacts, checkpoints and printed output hold pseudonyms only. Without the key a
pseudonym cannot be linked to an id (short of guessing the key); with it, the same id always maps to
the same pseudonym, so a service holding the key can look users up.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from seqrec.data.config import DataConfig
from seqrec.data.config import load_data as plain_load_data
from seqrec.data.preprocess import Dataset
from seqrec.errors import SeqrecError

MIN_KEY_BYTES = 16  # 128 bits: shorter keys could be guessed, and with them every pseudonym reversed
ENV_KEY = "SEQREC_PSEUDONYM_KEY"


def check_key(key: bytes, where: str) -> bytes:
    key = key.strip()
    if len(key) < MIN_KEY_BYTES:
        raise SeqrecError(f"{where}: the pseudonymisation key is {len(key)} bytes; use at least {MIN_KEY_BYTES} "
                          "random bytes, e.g. `openssl rand -hex 32 > key`")
    return key


def read_key(path: Path) -> bytes:
    """The key in ``path`` (surrounding whitespace ignored), at least 16 bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SeqrecError(f"{path}: cannot read the pseudonymisation key ({exc.strerror})") from None
    return check_key(data, str(path))


def pseudonym(key: bytes, user: object) -> str:
    """HMAC-SHA256 of the id's text under ``key``, in hex."""
    return hmac.new(key, str(user).encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonyms(key: bytes, users: Iterable[object]) -> list[str]:
    return [pseudonym(key, u) for u in users]


def key_check(key: bytes) -> str:
    """A short keyed value stored in a pseudonymised artifact, so that whoever uses it later can tell the
    right key from a wrong one; it names no user and, being an HMAC, does not reveal the key."""
    return pseudonym(key, "seqrec: pseudonymisation key check")[:16]


def verify_key(info: Mapping[str, object], key: bytes | None, where: str) -> None:
    """One clear line unless ``key`` fits the artifact whose info.json is ``info``: a pseudonymised
    artifact needs its key, an artifact of raw ids takes none, and a wrong key is refused."""
    pseudonymised = bool(info.get("pseudonymised_users"))
    if pseudonymised and key is None:
        raise SeqrecError(f"{where}: its user ids are pseudonymised; give the key it was trained with "
                          f"(--pseudonymise-users KEYFILE or ${ENV_KEY})")
    if not pseudonymised and key is not None:
        raise SeqrecError(f"{where}: it was trained on raw user ids, so a pseudonymisation key does not apply; "
                          "drop --pseudonymise-users (and unset $" + ENV_KEY + ")")
    check = info.get("pseudonym_key_check")
    if key is not None and check is not None and check != key_check(key):
        raise SeqrecError(f"{where}: the pseudonymisation key is not the one it was trained with")


@dataclass(frozen=True)
class Ingest:
    """What happens to user ids at ingest: pseudonymised under ``key``, ``exclude`` dropped entirely."""

    key: bytes | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)  # raw ids (or their pseudonyms)

    @property
    def active(self) -> bool:
        return self.key is not None or bool(self.exclude)


def read_user_file(path: Path) -> frozenset[str]:
    """User ids, one per line; blank lines and lines starting with # are skipped."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise SeqrecError(f"{path}: cannot read the user list ({exc.strerror})") from None
    return frozenset(s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#"))


def apply(frame: pd.DataFrame, ingest: Ingest) -> tuple[pd.DataFrame, int]:
    """The raw log without the excluded users' rows and with pseudonymised user ids: (frame, rows dropped)."""
    users = frame["user"]
    present = users.notna()
    text = users.where(~present, users.astype(str).str.strip())
    keep = ~(present & text.isin(ingest.exclude))
    mapped = None
    if ingest.key is not None:
        key = ingest.key
        mapped = text.where(~present, text.map(lambda u: pseudonym(key, u)))
        keep &= ~(present & mapped.isin(ingest.exclude))  # an exclusion list may hold pseudonyms
    out = frame[keep.to_numpy()].copy()
    if mapped is not None:
        out["user"] = mapped[keep.to_numpy()].to_numpy()  # missing ids stay missing: the cleaner reports them
    return out, int((~keep).sum())


def load_data(config: DataConfig, ingest: Ingest) -> tuple[Dataset, int]:
    """``seqrec.data.config.load_data`` with ``ingest`` applied to the raw rows before cleaning, k-cores
    and id maps, so an excluded user leaves no trace in what is built: (dataset, rows dropped)."""
    dropped = 0

    def hook(frame: pd.DataFrame) -> pd.DataFrame:
        nonlocal dropped
        out, dropped = apply(frame, ingest)
        return out

    return plain_load_data(config, hook), dropped
