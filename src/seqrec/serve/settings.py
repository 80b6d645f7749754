"""Serving configuration: one frozen dataclass, filled from CLI options and the environment.

This module and ``seqrec/cli.py`` are the only places that read the environment or
configuration files. The API key never comes from the command line, where ``ps`` would show it;
the store URL may (``--store``), but it can come from ``$SEQREC_STORE`` or ``--store-file`` too,
and wherever it is printed, logged or put into an error message it goes through
:func:`redact_url` first, so a Redis password never shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from seqrec.errors import SeqrecError
from seqrec.privacy import ids

API_KEY_ENV = "SEQREC_API_KEY"
ADMIN_KEY_ENV = "SEQREC_ADMIN_KEY"
STORE_ENV = "SEQREC_STORE"
PSEUDONYM_KEY_ENV = "SEQREC_SERVE_PSEUDONYM_KEY"  # hex; how worker processes get the pseudonymisation key
SETTINGS_ENV = "SEQREC_SERVE_SETTINGS"  # how uvicorn's own workers (no SO_REUSEPORT) get the settings
DEFAULT_STORE = "sqlite:///seqrec-serve.db"
MIN_KEY_LENGTH = 16
_KEY_HINT = "python -c 'import secrets; print(secrets.token_hex(16))' makes one"


@dataclass(frozen=True)
class ServeSettings:
    artifact: Path
    host: str = "127.0.0.1"
    port: int = 8000
    # sqlite:///relative.db | sqlite:////absolute.db | redis://host:port/db; may hold a password: kept out
    # of repr, and printed only through redact_url
    store: str = field(default=DEFAULT_STORE, repr=False)
    # required by writes (and reads when read_requires_key); None: writes refused
    api_key: str | None = field(default=None, repr=False)
    # POST /v1/admin/reload needs it (X-Admin-Key); None: reload over HTTP refused (SIGHUP still works)
    admin_key: str | None = field(default=None, repr=False)
    read_requires_key: bool = False
    # the key of an artifact trained with --pseudonymise-users: request ids are mapped with it on arrival
    pseudonym_key: bytes | None = field(default=None, repr=False)
    history_cap: int = 200  # posted events kept per user (the artifact's history is fixed and kept whole)
    max_body_bytes: int = 1 << 20  # larger request bodies get 413 before they are parsed
    max_score_batch: int = 64  # requests scored together in one forward pass
    torch_threads: int = 1
    access_log: bool = False  # off by default: access lines carry user ids and cost CPU
    workers: int = 1  # service processes sharing the port and the store (each loads the model)
    # How long a thread may hold the GIL before another may take it (Python's default is 5 ms): the event
    # loop and the scorer thread hand it back and forth, and every wait adds to a request's latency.
    gil_switch_ms: float = 5.0
    device: str = "cpu"  # where the model scores: cpu, cuda or cuda:N
    # top-K: exact (every item scored; equals offline), approx (FAISS HNSW / PQ / IVF-PQ by catalog size), auto
    # (approx from AUTO_EXACT_BELOW items), hnsw, pq or ivfpq (that kind of approximate index, whatever the size)
    index: str = "exact"
    backend: str = "torch"  # what encodes histories: torch, or onnxruntime (the encoder exported at start-up)
    # Connection limits, per worker process (uvicorn has none of the first three by default):
    max_header_bytes: int = 64 * 1024  # request line plus headers; more: 431 and the connection closed
    max_headers: int = 100  # header fields per request; more: 431
    read_timeout_s: float = 10.0  # from a request's first byte to its last (head and body); slower: 408
    keep_alive_s: int = 5  # an idle connection (before its first request or between two) is closed
    max_connections: int = 256  # open connections; the next one is answered 503 and closed
    backlog: int = 2048  # connections the kernel queues before the server accepts them

    def __post_init__(self) -> None:
        if self.pseudonym_key is not None and self.access_log:
            raise SeqrecError("--access-log writes request paths, which carry raw user ids; it cannot be combined "
                              "with pseudonymised users")
        if self.history_cap < 1:
            raise SeqrecError(f"--history-cap must be >= 1, got {self.history_cap}")
        if not 0 < self.port < 65536:
            raise SeqrecError(f"--port must be between 1 and 65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise SeqrecError(f"--max-body-bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_score_batch < 1 or self.torch_threads < 1 or self.workers < 1:
            raise SeqrecError("--max-score-batch, --torch-threads and --workers must be >= 1")
        if not 0.01 <= self.gil_switch_ms <= 1000:
            raise SeqrecError(f"--gil-switch-ms must be between 0.01 and 1000, got {self.gil_switch_ms}")
        if self.index not in ("exact", "approx", "auto", "hnsw", "pq", "ivfpq"):
            raise SeqrecError(f"--index {self.index!r}: choose exact, approx, auto, hnsw, pq or ivfpq")
        if self.backend not in ("torch", "onnxruntime"):
            raise SeqrecError(f"--backend {self.backend!r}: choose torch or onnxruntime")
        if not self.store.startswith(("sqlite://", "redis://", "rediss://", "unix://")):
            raise SeqrecError(f"--store {redact_url(self.store)!r}: use sqlite:///path.db or redis://host:port/db")
        self._check_limits()

    def _check_limits(self) -> None:
        if not 1024 <= self.max_header_bytes <= 1 << 24:
            raise SeqrecError(f"--max-header-bytes must be between 1024 and {1 << 24}, got {self.max_header_bytes}")
        if self.max_headers < 8:
            raise SeqrecError(f"--max-headers must be >= 8 (clients send a few of their own), got {self.max_headers}")
        for flag, seconds in (("--read-timeout", self.read_timeout_s), ("--keep-alive", self.keep_alive_s)):
            if not 0 < seconds <= 3600:
                raise SeqrecError(f"{flag} must be between 0 and 3600 seconds, got {seconds}")
        if self.max_connections < 1 or self.backlog < 1:
            raise SeqrecError("--max-connections and --backlog must be >= 1")


def default_torch_threads(workers: int = 1) -> int:
    """Half the cores, shared by the workers: the other half serves HTTP (and, on a small box,
    the clients)."""
    return max(1, (os.cpu_count() or 2) // (2 * max(1, workers)))


def settings_to_environment(settings: ServeSettings) -> dict[str, str]:
    """Environment variables from which :func:`settings_from_environment` rebuilds ``settings`` in a
    worker process; the secrets travel in ``$SEQREC_API_KEY`` and ``$SEQREC_STORE``, never in the JSON."""
    fields = dataclasses.asdict(settings)
    fields["artifact"] = str(settings.artifact)
    key = fields.pop("api_key")
    admin = fields.pop("admin_key")
    pseudonym_key = fields.pop("pseudonym_key")
    env = {SETTINGS_ENV: json.dumps(fields), STORE_ENV: fields.pop("store")}
    if key is not None:
        env[API_KEY_ENV] = key
    if pseudonym_key is not None:
        env[PSEUDONYM_KEY_ENV] = pseudonym_key.hex()
    if admin is not None:
        env[ADMIN_KEY_ENV] = admin
    return env


def settings_from_environment(environ: Mapping[str, str] | None = None) -> ServeSettings:
    """The settings of a worker process, as :func:`settings_to_environment` left them (the key was
    checked by the process that started the workers)."""
    env = os.environ if environ is None else environ
    if SETTINGS_ENV not in env:
        raise SeqrecError(f"${SETTINGS_ENV} is not set: start the service with `seqrec serve`")
    fields = json.loads(env[SETTINGS_ENV])
    return ServeSettings(**{**fields, "artifact": Path(fields["artifact"]), "store": read_store(None, None, env),
                            "api_key": read_api_key(None, env, allow_short=True),
                            "admin_key": read_admin_key(None, env),
                            "pseudonym_key": bytes.fromhex(env.get(PSEUDONYM_KEY_ENV, "")) or None})


def _first_line(path: Path, flag: str, what: str) -> str:
    """The first line of ``path``, stripped; a one-line SeqrecError when unreadable or blank."""
    try:
        with path.open(encoding="utf-8") as f:
            line = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SeqrecError(f"{flag} {path}: cannot read it ({reason})") from None
    if not line:
        raise SeqrecError(f"{flag} {path}: the first line is empty; put the {what} on its first line")
    return line


def _read_key(key_file: Path | None, env: Mapping[str, str], flag: str, env_name: str, what: str,
              short_hint: str | None) -> str | None:
    """The first line of ``key_file`` when given, else ``$env_name``, else None. A key shorter than 16
    characters is refused, its message ending with ``short_hint``; ``short_hint`` None allows it."""
    if key_file is not None:
        key, source = _first_line(key_file, flag, what), f"{flag} {key_file}"
    else:
        key, source = env.get(env_name, "").strip(), f"${env_name}"
    if not key:
        return None
    if len(key) < MIN_KEY_LENGTH and short_hint is not None:
        raise SeqrecError(f"{source}: the {what} has {len(key)} characters, fewer than {MIN_KEY_LENGTH}; "
                          f"use a longer one ({_KEY_HINT}){short_hint}")
    return key


def read_api_key(key_file: Path | None, environ: Mapping[str, str] | None = None,
                 allow_short: bool = False) -> str | None:
    """The write key: the first line of ``key_file`` when given, else ``$SEQREC_API_KEY``, else None.
    A key shorter than 16 characters is refused unless ``allow_short``."""
    env = os.environ if environ is None else environ
    return _read_key(key_file, env, "--api-key-file", API_KEY_ENV, "API key",
                     None if allow_short else " or pass --allow-short-key")


def read_admin_key(key_file: Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The admin key (reload): the first line of ``key_file``, else ``$SEQREC_ADMIN_KEY``, else None;
    at least 16 characters, always."""
    env = os.environ if environ is None else environ
    return _read_key(key_file, env, "--admin-key-file", ADMIN_KEY_ENV, "admin key", "")


def read_store(store: str | None, store_file: Path | None, environ: Mapping[str, str] | None = None) -> str:
    """The store URL: ``--store``, else the first line of ``--store-file``, else ``$SEQREC_STORE``, else
    the default SQLite file. The file and the variable keep a Redis password out of ``ps``."""
    env = os.environ if environ is None else environ
    if store is not None and store_file is not None:
        raise SeqrecError("give --store or --store-file, not both")
    if store is not None:
        return store
    if store_file is not None:
        return _first_line(store_file, "--store-file", "store URL")
    return env.get(STORE_ENV, "").strip() or DEFAULT_STORE


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)@")  # greedy: up to the last @, so all of it goes
_SECRET_PARAMS = re.compile(r"(?i)([?&](?:password|passwd|pwd|username|user)=)[^&#]*")


def redact_url(url: str) -> str:
    """``url`` fit to print: user and password (``redis://user:pw@host/0`` -> ``redis://***@host/0``) and
    password query parameters (``?password=pw`` -> ``?password=***``) replaced with ``***``."""
    return _SECRET_PARAMS.sub(r"\1***", _USERINFO.sub(r"\1***@", url, count=1))


def url_has_credentials(url: str) -> bool:
    return redact_url(url) != url


def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``, ``sqlite:////abs.db`` -> ``/abs.db`` (SQLAlchemy's convention)."""
    path = url.removeprefix("sqlite://")
    if not path.startswith("/") or path == "/":
        raise SeqrecError(f"--store {url!r}: write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path = path[1:]
    if path == ":memory:":
        raise SeqrecError("--store sqlite:///:memory: would lose every event on restart; give a file path")
    return path


def _pseudonym_key(key_file: Path | None, environ: Mapping[str, str] | None) -> bytes | None:
    """The pseudonymisation key from --pseudonymise-users KEYFILE, else from ``$SEQREC_PSEUDONYM_KEY``."""
    if key_file is not None:
        return ids.read_key(key_file)
    text = (os.environ if environ is None else environ).get(ids.ENV_KEY, "")
    return ids.check_key(text.encode(), f"${ids.ENV_KEY}") if text else None


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServeSettings:
    """ServeSettings from ``seqrec serve`` options plus the key and the store from a file or the environment."""
    return ServeSettings(
        artifact=args.artifact, host=args.host, port=args.port,
        store=read_store(args.store, args.store_file, environ),
        api_key=read_api_key(args.api_key_file, environ, args.allow_short_key),
        admin_key=read_admin_key(getattr(args, "admin_key_file", None), environ),
        pseudonym_key=_pseudonym_key(getattr(args, "pseudonymise_users", None), environ),
        read_requires_key=args.read_requires_key, history_cap=args.history_cap, max_body_bytes=args.max_body_bytes,
        max_score_batch=args.max_score_batch, torch_threads=args.torch_threads or default_torch_threads(args.workers),
        access_log=args.access_log, workers=args.workers, gil_switch_ms=args.gil_switch_ms, device=args.device,
        index=getattr(args, "index", "exact"), backend=getattr(args, "backend", "torch"),
        max_header_bytes=args.max_header_bytes, max_headers=args.max_headers, read_timeout_s=args.read_timeout,
        keep_alive_s=args.keep_alive, max_connections=args.max_connections, backlog=args.backlog)
