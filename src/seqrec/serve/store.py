"""Per-user event state behind one small Protocol: SQLite (default) or Redis.

Stores keep raw external item ids, not model indices, so one store outlives a retrained
model and items unknown today can be scored once a new artifact knows them.

A forgotten user who was in the artifact's training data gets a tombstone so that their
artifact history is not served again; the tombstone is a salted HMAC, never the id itself,
so the bytes on disk hold no trace of the user.

The SQLite file is created owner-only (0600; SQLite gives its -wal and -shm files the same mode),
and a Redis URL's password never reaches an error message or a ``repr``: both use
:func:`~seqrec.serve.settings.redact_url`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Protocol

from seqrec.errors import SeqrecError
from seqrec.serve.settings import redact_url, sqlite_path


class StoreError(SeqrecError):
    """The state store cannot be reached or refused an operation."""


@dataclass(frozen=True)
class Event:
    user_id: str  # canonical external user id
    item_id: str  # canonical external item id (may be unknown to the model)
    timestamp: float  # unix seconds; stored, while order is arrival order


@dataclass(frozen=True)
class CachedState:
    """A model's state for one user's history (the recurrent models' hidden state), kept beside the events.

    Opaque to the store: the service writes it and uses it only when ``version`` is the served model's and
    ``length`` and ``digest`` name the user's history exactly (see :mod:`seqrec.serve.state`)."""

    version: str  # the model version it was computed with
    length: int  # history items folded in
    digest: bytes  # of those items (internal ids), 16 bytes
    data: bytes  # the state itself

    def to_bytes(self) -> bytes:
        version = self.version.encode()
        return struct.pack(">HQ", len(version), self.length) + version + self.digest + self.data

    @classmethod
    def from_bytes(cls, raw: bytes) -> CachedState | None:
        """None for bytes that are not a state (a damaged or foreign value: the state is recomputed)."""
        head = struct.calcsize(">HQ")
        if len(raw) < head:
            return None
        n, length = struct.unpack(">HQ", raw[:head])
        if len(raw) < head + n + 16:
            return None
        try:
            version = raw[head: head + n].decode()
        except UnicodeDecodeError:
            return None
        return cls(version, length, raw[head + n: head + n + 16], raw[head + n + 16:])


@dataclass(frozen=True)
class UserState:
    items: list[str]  # posted item ids, oldest first, at most the cap
    forgotten: bool  # the user asked to be forgotten: ignore their artifact history
    cached: CachedState | None = None  # the model state kept for this user, when asked for and present


# Called by ``append`` for each user with events, inside the append (SQLite: the same transaction), with
# the user's state after the append: the new cached state to keep, or None to keep none.
Advance = Callable[[str, UserState], "CachedState | None"]


class EventStore(Protocol):
    kind: str

    def append(self, events: Sequence[Event], cap: int, advance: Advance | None = None) -> None:
        """Append atomically (all or nothing), then keep each user's last ``cap`` events; with ``advance``,
        replace each of those users' cached state by what it returns."""

    def user_state(self, user_id: str, limit: int, with_cache: bool = False) -> UserState: ...

    def forget(self, user_id: str, tombstone: bool) -> int:
        """Erase every event of the user (from disk too); return how many there were."""

    def ping(self) -> None: ...

    def close(self) -> None: ...


def open_store(url: str) -> EventStore:
    if url.startswith("sqlite://"):
        return SQLiteStore(sqlite_path(url))
    return RedisStore(url)


def _tombstone(salt: bytes, user_id: str) -> str:
    return hmac.new(salt, user_id.encode(), hashlib.sha256).hexdigest()


def _by_user(events: Sequence[Event]) -> Iterator[tuple[str, list[Event]]]:
    """Events grouped by user, first appearance order, arrival order kept within a user."""
    order = {e.user_id: i for i, e in reversed(list(enumerate(events)))}
    ranked = sorted(events, key=lambda e: order[e.user_id])  # stable: keeps arrival order
    for user, group in groupby(ranked, key=lambda e: e.user_id):
        yield user, list(group)


# ---- SQLite ---------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
                                   ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, id);
CREATE TABLE IF NOT EXISTS forgotten (user_hash TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS states (user_id TEXT PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS added_items (seq INTEGER PRIMARY KEY, item_id TEXT UNIQUE NOT NULL, body TEXT NOT NULL);
"""


class SQLiteStore:
    """WAL mode, ``synchronous=FULL``: an event acknowledged with a 2xx survives ``kill -9``.

    One writer connection behind a lock (SQLite has one writer anyway) and one reader
    connection per thread, which WAL lets run beside the writer.
    """

    kind = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        _create_private(path)
        try:
            self._writer = self._connect()
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.executescript(_SCHEMA)
            self._salt = self._load_salt()
        except sqlite3.Error as exc:
            raise StoreError(f"--store sqlite:///{path}: cannot open the database ({exc})") from None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions, so a reader never pins an old snapshot
        # that would stop the checkpoint after a delete.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten with zeros
        return conn

    def _load_salt(self) -> bytes:
        with self._transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('salt', ?)", (secrets.token_bytes(32),))
            row = conn.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()
        return bytes(row[0])

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield self._writer
                except BaseException:
                    self._writer.execute("ROLLBACK")
                    raise
                self._writer.execute("COMMIT")  # returns once the WAL is fsynced (synchronous=FULL)
            except sqlite3.Error as exc:  # disk full, read-only file, ...: the whole batch is rolled back
                raise StoreError(f"{self.path}: {exc}") from exc

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def append(self, events: Sequence[Event], cap: int, advance: Advance | None = None) -> None:
        with self._transaction() as conn:
            conn.executemany("INSERT INTO events (user_id, item_id, ts) VALUES (?, ?, ?)",
                             [(e.user_id, e.item_id, e.timestamp) for e in events])
            for user, _ in _by_user(events):
                conn.execute("DELETE FROM events WHERE user_id = ?1 AND id < (SELECT id FROM events "
                             "WHERE user_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)", (user, cap - 1))
                if advance is not None:
                    new = advance(user, self._read(conn, user, cap, with_cache=True))
                    if new is None:
                        conn.execute("DELETE FROM states WHERE user_id = ?", (user,))
                    else:
                        conn.execute("INSERT OR REPLACE INTO states VALUES (?, ?)", (user, new.to_bytes()))

    def user_state(self, user_id: str, limit: int, with_cache: bool = False) -> UserState:
        try:
            return self._read(self._reader(), user_id, limit, with_cache)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def _read(self, conn: sqlite3.Connection, user_id: str, limit: int, with_cache: bool) -> UserState:
        rows = conn.execute("SELECT item_id FROM events WHERE user_id = ? ORDER BY id DESC LIMIT ?",
                            (user_id, limit)).fetchall()
        gone = conn.execute("SELECT 1 FROM forgotten WHERE user_hash = ?",
                            (_tombstone(self._salt, user_id),)).fetchone()
        cached = None
        if with_cache:
            row = conn.execute("SELECT state FROM states WHERE user_id = ?", (user_id,)).fetchone()
            cached = None if row is None else CachedState.from_bytes(bytes(row[0]))
        return UserState([r[0] for r in reversed(rows)], gone is not None, cached)

    def forget(self, user_id: str, tombstone: bool) -> int:
        with self._transaction() as conn:
            n = conn.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            conn.execute("DELETE FROM states WHERE user_id = ?", (user_id,))  # derived from the events
            if tombstone:
                conn.execute("INSERT OR IGNORE INTO forgotten VALUES (?)", (_tombstone(self._salt, user_id),))
        self._checkpoint()
        return int(n)

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it: the erased rows leave the WAL file too."""
        for _ in range(50):
            with self._lock:
                busy, _, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.02)  # a reader is mid-statement; it finishes within milliseconds
        raise StoreError(f"{self.path}: could not checkpoint the WAL after a delete; readers kept it busy")

    def ping(self) -> None:
        self._reader().execute("SELECT 1").fetchone()

    def put_item(self, item_id: str, body: str) -> None:
        """Keep an item added to the served catalog (PUT /v1/items; seqrec.serve.new_items), durable on return;
        the same id again replaces its body and keeps its place."""
        with self._transaction() as conn:
            conn.execute("INSERT INTO added_items (item_id, body) VALUES (?, ?) "
                         "ON CONFLICT(item_id) DO UPDATE SET body = excluded.body", (item_id, body))

    def added_items(self) -> list[tuple[str, str]]:
        """Every added item as (id, JSON body), in the order first added."""
        try:
            rows = self._reader().execute("SELECT item_id, body FROM added_items ORDER BY seq").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        return [(str(r[0]), str(r[1])) for r in rows]

    def close(self) -> None:
        with self._lock:
            for conn in [*self._readers, self._writer]:
                conn.close()
            self._readers.clear()


def _create_private(path: str) -> None:
    """Create the database file, empty and readable by its owner only, unless it exists. SQLite creates
    the -wal and -shm files with the database file's mode, so they are owner-only too. A path that
    cannot be created is left for SQLite to report in its own words."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return
    os.close(fd)


# ---- Redis ----------------------------------------------------------------------------------
class RedisStore:
    """A list per user (``RPUSH`` + ``LTRIM`` in one MULTI); durability is the server's setting
    (``appendonly yes``, ``appendfsync always`` for the same guarantee as SQLite)."""

    kind = "redis"
    prefix = "seqrec:"

    def __init__(self, url: str) -> None:
        try:
            import redis
        except ImportError:
            raise SeqrecError("--store redis:// needs the redis client: pip install 'seqrec[serve]'") from None
        self._errors: tuple[type[Exception], ...] = (redis.exceptions.RedisError,)
        self.url = redact_url(url)  # the URL fit to print: no user, no password
        self._secrets = _url_secrets(url)
        try:
            self._client: Any = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
            self._client.set(self.prefix + "salt", secrets.token_bytes(32), nx=True)
            salt = self._client.get(self.prefix + "salt")
        except (*self._errors, ValueError) as exc:  # ValueError: a URL redis-py cannot parse
            raise StoreError(f"store {self.url}: cannot reach Redis ({self._scrub(exc)})") from None
        if not isinstance(salt, bytes):
            raise StoreError(f"store {self.url}: the key {self.prefix}salt holds no salt; is the prefix used?")
        self._salt = salt

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"

    def _scrub(self, exc: Exception) -> str:
        """The error's text without the URL's secrets, should the client ever quote them."""
        text = str(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _key(self, user_id: str) -> str:
        return f"{self.prefix}events:{user_id}"

    def _state_key(self, user_id: str) -> str:
        return f"{self.prefix}state:{user_id}"

    def append(self, events: Sequence[Event], cap: int, advance: Advance | None = None) -> None:
        """With ``advance``, the users' lists and states are read in the appending MULTI and the new states
        written after it: a state written late by another worker is caught by its digest when read."""
        pipe = self._client.pipeline(transaction=True)
        users = []
        for user, group in _by_user(events):
            users.append(user)
            pipe.rpush(self._key(user), *[f"{e.timestamp!r} {e.item_id}" for e in group])
            pipe.ltrim(self._key(user), -cap, -1)
            if advance is not None:
                self._queue_read(pipe, user, cap, with_cache=True)
        replies = self._run(pipe)
        if advance is None:
            return
        writes = self._client.pipeline(transaction=False)
        for n, user in enumerate(users):
            new = advance(user, self._parse(replies[5 * n + 2: 5 * n + 5]))
            if new is None:
                writes.delete(self._state_key(user))
            else:
                writes.set(self._state_key(user), new.to_bytes())
        self._run(writes)

    def _queue_read(self, pipe: Any, user_id: str, limit: int, with_cache: bool) -> None:
        pipe.lrange(self._key(user_id), -limit, -1)
        pipe.sismember(self.prefix + "forgotten", _tombstone(self._salt, user_id))
        if with_cache:
            pipe.get(self._state_key(user_id))

    @staticmethod
    def _parse(replies: list[Any]) -> UserState:
        raw, gone, *rest = replies
        cached = CachedState.from_bytes(rest[0]) if rest and isinstance(rest[0], bytes) else None
        return UserState([r.decode().split(" ", 1)[1] for r in raw], bool(gone), cached)

    def user_state(self, user_id: str, limit: int, with_cache: bool = False) -> UserState:
        pipe = self._client.pipeline(transaction=False)
        self._queue_read(pipe, user_id, limit, with_cache)
        return self._parse(self._run(pipe))

    def forget(self, user_id: str, tombstone: bool) -> int:
        pipe = self._client.pipeline(transaction=True)
        pipe.llen(self._key(user_id))
        pipe.delete(self._key(user_id))
        pipe.delete(self._state_key(user_id))  # derived from the events
        if tombstone:
            pipe.sadd(self.prefix + "forgotten", _tombstone(self._salt, user_id))
        n = self._run(pipe)[0]
        self._rewrite_aof()
        return int(n)

    def _rewrite_aof(self) -> None:
        """With AOF on, the erased events stay in the log until it is rewritten: ask for that now.

        Only when AOF is on: BGREWRITEAOF on a server without AOF would write a file that was not there.
        """
        try:
            if self._client.config_get("appendonly").get("appendonly") == "yes":
                self._client.bgrewriteaof()
        except self._errors:
            pass  # CONFIG may be renamed away; the server's own rewrite policy applies then

    def _run(self, pipe: Any) -> list[Any]:
        try:
            return list(pipe.execute())
        except self._errors as exc:
            raise StoreError(f"Redis at {self.url}: {self._scrub(exc)}") from None

    def ping(self) -> None:
        try:
            self._client.ping()
        except self._errors as exc:
            raise StoreError(f"Redis at {self.url}: {self._scrub(exc)}") from None

    def put_item(self, item_id: str, body: str) -> None:
        """As :meth:`SQLiteStore.put_item`: the body in a hash, the first-added order in a sorted set."""
        pipe = self._client.pipeline(transaction=True)
        pipe.zadd(self.prefix + "items:order", {item_id: time.time()}, nx=True)
        pipe.hset(self.prefix + "items", item_id, body)
        self._run(pipe)

    def added_items(self) -> list[tuple[str, str]]:
        pipe = self._client.pipeline(transaction=True)
        pipe.zrange(self.prefix + "items:order", 0, -1)
        pipe.hgetall(self.prefix + "items")
        order, bodies = self._run(pipe)
        return [(i.decode(), bodies[i].decode()) for i in order if i in bodies]

    def close(self) -> None:
        self._client.close()


def _url_secrets(url: str) -> list[str]:
    """The passwords in ``url`` (userinfo or ``?password=``), raw and percent-decoded, longest first."""
    from urllib.parse import parse_qs, unquote, urlsplit

    try:
        parts = urlsplit(url)
        found = [parts.password, *parse_qs(parts.query).get("password", [])]
    except ValueError:
        return []
    return sorted({v for s in found if s for v in (s, unquote(s))}, key=len, reverse=True)
