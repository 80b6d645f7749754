"""Serving fixtures: tiny artifacts built without training (random weights score as well as any
for equality and plumbing tests), a service and an HTTP client over them, and a real Redis."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from seqrec.artifact import Artifact, save_artifact
from seqrec.data.preprocess import build_dataset
from seqrec.models.popular import PopularModel
from seqrec.models.registry import create
from seqrec.serve.api import create_app
from seqrec.serve.service import Service, build_service
from seqrec.serve.settings import ServeSettings

API_KEY = "test-key-0123456789"
N_USERS, FIRST_ITEM, N_ITEMS, MAX_LEN = 40, 100, 60, 20
# each model's size settings (popular takes none)
MODEL_PARAMS: dict[str, dict[str, int]] = {
    "lstm": {"dim": 16, "hidden": 16, "n_layers": 1}, "gru4rec": {"dim": 16, "hidden": 16, "n_layers": 1},
    "sasrec": {"dim": 16, "n_heads": 2, "n_layers": 1}, "bert4rec": {"dim": 16, "n_heads": 2, "n_layers": 1},
    "hstu": {"dim": 16, "n_heads": 2, "n_layers": 1}}


def tiny_frame(string_ids: bool = False, seed: int = 0) -> pd.DataFrame:
    """40 users with 3..24 events over items 100..159, user 1 with 40 (longer than MAX_LEN), and a
    user 41 who has seen every item once, so the catalog is exactly N_ITEMS."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, N_USERS + 1):
        n = 40 if u == 1 else int(rng.integers(3, 25))
        for t, item in enumerate(rng.integers(FIRST_ITEM, FIRST_ITEM + N_ITEMS, size=n)):
            rows.append((f"user-{u}" if string_ids else u, f"sku-{item}" if string_ids else int(item), 1000 + t))
    frame = pd.DataFrame(rows, columns=["user", "item", "time"])
    extra = pd.DataFrame({"user": f"user-{N_USERS + 1}" if string_ids else N_USERS + 1,
                          "time": 5000 + np.arange(N_ITEMS),
                          "item": [f"sku-{i}" if string_ids else i for i in range(FIRST_ITEM, FIRST_ITEM + N_ITEMS)]})
    return pd.concat([frame, extra], ignore_index=True)


def build_tiny_artifact(path: Path, model: str = "gru4rec", string_ids: bool = False, titles: bool = True) -> Path:
    frame = tiny_frame(string_ids)
    names = {(f"sku-{i}" if string_ids else i): f"Item {i}" for i in range(FIRST_ITEM, FIRST_ITEM + N_ITEMS)}
    data = build_dataset(frame, name="tiny", titles=names if titles else None)
    torch.manual_seed(0)
    net = create(model, n_items=data.n_items, max_len=MAX_LEN, **MODEL_PARAMS.get(model, {}))
    if isinstance(net, PopularModel):
        net.fit_counts(data.sequences.items)
    return Path(save_artifact(path, Artifact(model, net.eval(), data)))


@pytest.fixture(scope="session")
def build_artifact() -> Callable[..., Path]:
    """``build_artifact(path, model="gru4rec", string_ids=False, titles=True)`` -> artifact dir."""
    return build_tiny_artifact


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gru4rec, integer ids, titles."""
    return build_tiny_artifact(tmp_path_factory.mktemp("serve-art") / "tiny")


@pytest.fixture(scope="session")
def string_artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gru4rec, string user and item ids, no titles."""
    return build_tiny_artifact(tmp_path_factory.mktemp("serve-art-str") / "tiny", string_ids=True, titles=False)


def make_settings(artifact: Path, store: str, **overrides: Any) -> ServeSettings:
    return ServeSettings(artifact=artifact, store=store, **{"api_key": API_KEY, **overrides})


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def service(artifact_dir: Path, sqlite_url: str) -> Iterator[Service]:
    svc = build_service(make_settings(artifact_dir, sqlite_url))
    yield svc
    svc.close()


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(artifact_dir: Path, sqlite_url: str) -> Iterator[ClientFactory]:
    """``make_client(artifact=..., store=..., **settings)`` -> a started TestClient."""
    opened: list[TestClient] = []

    def make(artifact: Path | None = None, store: str | None = None, **overrides: Any) -> TestClient:
        settings = make_settings(artifact or artifact_dir, store or sqlite_url, **overrides)
        client = TestClient(create_app(build_service(settings), settings))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"X-API-Key": API_KEY}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    return _free_port()


@pytest.fixture(scope="session")
def port_factory() -> Callable[[], int]:
    """Free loopback ports for module-scoped servers (``free_port`` is per test)."""
    return _free_port


ServeProcess = Callable[..., "subprocess.Popen[bytes]"]


def _serve_process(artifact: Path, port: int, db: Path, key: str, *extra: str, log: Path | None = None,
                   wait_s: float = 90.0) -> subprocess.Popen[bytes]:
    """`seqrec serve ARTIFACT` on 127.0.0.1:PORT with a SQLite store, returned once /healthz answers. Its
    output goes to ``log`` when given (the failure message then quotes it), else stderr is kept for it."""
    cmd = [sys.executable, "-m", "seqrec.cli", "serve", str(artifact), "--host", "127.0.0.1", "--port", str(port),
           "--store", f"sqlite:///{db}", *extra]
    env = {**os.environ, "SEQREC_API_KEY": key}
    if log is None:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    else:
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + wait_s  # a loaded 2-core box needs a while to import torch
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = log.read_text() if log is not None else proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"seqrec serve exited with {proc.returncode}: {err[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"seqrec serve did not become healthy in {wait_s:g} s")


@pytest.fixture(scope="session")
def serve_process() -> ServeProcess:
    """Start `seqrec serve` as a subprocess (see ``_serve_process``); the caller stops it."""
    return _serve_process


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, no persistence; its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (CI installs it: apt-get install redis-server)")
    import redis

    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--daemonize", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None:
                    pytest.fail(f"redis-server exited with {proc.returncode}")
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    return redis_server


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store kind in turn (the Redis one skips when redis-server is absent)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    return str(request.getfixturevalue("redis_url"))
