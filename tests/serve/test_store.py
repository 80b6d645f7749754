"""The EventStore contract, run against a real SQLite file and a real redis-server (no mocks)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from seqrec.serve.store import Event, SQLiteStore, StoreError, open_store


def ev(user: str, item: str, ts: float = 1.0) -> Event:
    return Event(user, item, ts)


def test_append_keeps_arrival_order_per_user(store_url: str) -> None:
    store = open_store(store_url)
    store.append([ev("a", "1"), ev("b", "9"), ev("a", "2")], cap=10)
    store.append([ev("a", "3", ts=0.5)], cap=10)  # an older timestamp still goes last: arrival order
    assert store.user_state("a", 10).items == ["1", "2", "3"]
    assert store.user_state("b", 10).items == ["9"]
    assert store.user_state("nobody", 10).items == []
    store.close()


def test_cap_keeps_the_most_recent_events(store_url: str) -> None:
    store = open_store(store_url)
    store.append([ev("a", str(i)) for i in range(7)], cap=5)
    store.append([ev("a", "7"), ev("a", "8")], cap=5)
    assert store.user_state("a", 100).items == ["4", "5", "6", "7", "8"]
    assert store.user_state("a", 2).items == ["7", "8"]
    store.close()


def test_forget_erases_events_and_tombstones_only_when_asked(store_url: str) -> None:
    store = open_store(store_url)
    store.append([ev("a", "1"), ev("a", "2"), ev("b", "3")], cap=10)
    assert store.forget("a", tombstone=False) == 2
    assert store.user_state("a", 10).items == [] and not store.user_state("a", 10).forgotten
    assert store.forget("b", tombstone=True) == 1
    assert store.user_state("b", 10).forgotten
    assert store.forget("never-seen", tombstone=False) == 0  # idempotent
    store.append([ev("b", "4")], cap=10)  # a forgotten user may come back, as a new user
    state = store.user_state("b", 10)
    assert state.items == ["4"] and state.forgotten
    store.close()


def test_tombstones_survive_a_reopen(store_url: str) -> None:
    store = open_store(store_url)
    store.forget("gone", tombstone=True)
    store.close()
    again = open_store(store_url)
    assert again.user_state("gone", 10).forgotten
    assert not again.user_state("other", 10).forgotten
    again.close()


def test_ids_with_spaces_and_unicode_round_trip(store_url: str) -> None:
    store = open_store(store_url)
    store.append([ev("ü ser", "item with spaces"), ev("ü ser", "ñ-2")], cap=10)
    assert store.user_state("ü ser", 10).items == ["item with spaces", "ñ-2"]
    store.close()


def test_sqlite_uses_wal_full_sync_and_secure_delete(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "e.db"))
    w = store._writer
    assert w.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert w.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert w.execute("PRAGMA secure_delete").fetchone()[0] == 1
    store.close()


def test_sqlite_batch_is_atomic(tmp_path: Path) -> None:
    """A batch that fails half-way leaves nothing behind."""
    store = SQLiteStore(str(tmp_path / "e.db"))
    with pytest.raises(StoreError, match="NOT NULL"):
        store.append([ev("a", "1"), Event("a", cast(str, None), 1.0)], cap=10)  # violates NOT NULL
    assert store.user_state("a", 10).items == []
    store.close()


def test_unreachable_stores_fail_with_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        open_store(f"sqlite:///{tmp_path / 'missing-dir' / 'e.db'}")
    with pytest.raises(StoreError, match="cannot reach Redis"):
        open_store("redis://127.0.0.1:1/0")
