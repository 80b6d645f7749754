"""Serving configuration: one frozen dataclass, filled from CLI options and the environment.

This module and ``seqrec/cli.py`` are the only places that read the environment or
configuration files. The API key never comes from the command line, where ``ps`` would show it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from seqrec.errors import SeqrecError

API_KEY_ENV = "SEQREC_API_KEY"
SETTINGS_ENV = "SEQREC_SERVE_SETTINGS"  # how `--workers N` hands the settings to its worker processes
DEFAULT_STORE = "sqlite:///seqrec-serve.db"


@dataclass(frozen=True)
class ServeSettings:
    artifact: Path
    host: str = "127.0.0.1"
    port: int = 8000
    store: str = DEFAULT_STORE  # sqlite:///relative.db | sqlite:////absolute.db | redis://host:port/db
    api_key: str | None = None  # required by writes (and reads when read_requires_key); None: writes refused
    read_requires_key: bool = False
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

    def __post_init__(self) -> None:
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
        if not self.store.startswith(("sqlite://", "redis://", "rediss://", "unix://")):
            raise SeqrecError(f"--store {self.store!r}: use sqlite:///path.db or redis://host:port/db")


def default_torch_threads(workers: int = 1) -> int:
    """Half the cores, shared by the workers: the other half serves HTTP (and, on a small box,
    the clients)."""
    return max(1, (os.cpu_count() or 2) // (2 * max(1, workers)))


def settings_to_environment(settings: ServeSettings) -> dict[str, str]:
    """Environment variables from which :func:`settings_from_environment` rebuilds ``settings`` in a
    worker process; the API key travels in ``$SEQREC_API_KEY``, never in the JSON."""
    fields = dataclasses.asdict(settings)
    fields["artifact"] = str(settings.artifact)
    key = fields.pop("api_key")
    env = {SETTINGS_ENV: json.dumps(fields)}
    if key is not None:
        env[API_KEY_ENV] = key
    return env


def settings_from_environment(environ: Mapping[str, str] | None = None) -> ServeSettings:
    env = os.environ if environ is None else environ
    if SETTINGS_ENV not in env:
        raise SeqrecError(f"${SETTINGS_ENV} is not set: start the service with `seqrec serve`")
    fields = json.loads(env[SETTINGS_ENV])
    return ServeSettings(**{**fields, "artifact": Path(fields["artifact"]), "api_key": read_api_key(None, env)})


def read_api_key(key_file: Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The write key: from ``key_file`` when given, else ``$SEQREC_API_KEY``, else None."""
    env = os.environ if environ is None else environ
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            raise SeqrecError(f"--api-key-file {key_file}: cannot read it ({exc.strerror})") from None
        if not key:
            raise SeqrecError(f"--api-key-file {key_file} is empty; put the API key on its first line")
        return key
    key = env.get(API_KEY_ENV, "").strip()
    return key or None


def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``, ``sqlite:////abs.db`` -> ``/abs.db`` (SQLAlchemy's convention)."""
    path = url.removeprefix("sqlite://")
    if not path.startswith("/") or path == "/":
        raise SeqrecError(f"--store {url!r}: write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path = path[1:]
    if path == ":memory:":
        raise SeqrecError("--store sqlite:///:memory: would lose every event on restart; give a file path")
    return path


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServeSettings:
    """ServeSettings from ``seqrec serve`` options plus the key from a file or the environment."""
    return ServeSettings(
        artifact=args.artifact, host=args.host, port=args.port, store=args.store,
        api_key=read_api_key(args.api_key_file, environ), read_requires_key=args.read_requires_key,
        history_cap=args.history_cap, max_body_bytes=args.max_body_bytes, max_score_batch=args.max_score_batch,
        torch_threads=args.torch_threads or default_torch_threads(args.workers), access_log=args.access_log,
        workers=args.workers, gil_switch_ms=args.gil_switch_ms, device=args.device)
