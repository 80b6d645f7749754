"""`kill -9` of the real server in the middle of a model swap, with event batches being written all the while:
after a restart every acknowledged batch is there whole, a batch that was never acknowledged is there whole or
not at all, the store is intact, and the model served is one of the two complete artifacts."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from seqrec.atomic import commit_dir

KEY = "kill-swap-key-0123456789"
ADMIN_KEY = "kill-swap-admin-0123456789abcdef"
BATCH = [100, 101, 102, 103, 104]  # the items of every posted batch, in this order
ServeProcess = Callable[..., subprocess.Popen[bytes]]  # the conftest fixture serve_process


def version_of(artifact: Path) -> str:
    """The version the service names an artifact by: model name and the start of its weights' digest."""
    config = (artifact / "config.toml").read_text()
    model = next(line.split('"')[1] for line in config.splitlines() if line.startswith("name = "))
    return f"{model}-{json.loads((artifact / 'manifest.json').read_text())['sha256']['model.safetensors'][:16]}"


class Writer(threading.Thread):
    """Posts batches of five events, one new user each, until the server goes away; remembers which were
    acknowledged (201) and which were sent but not answered."""

    def __init__(self, base: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.base, self.prefix = base, prefix
        self.acked: list[str] = []
        self.unanswered: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        with httpx.Client(base_url=self.base, headers={"X-API-Key": KEY}, timeout=30.0) as client:
            while not self.stop.is_set():
                user = f"{self.prefix}-{n}"
                n += 1
                try:
                    r = client.post("/v1/events", json={"events": [{"user_id": user, "item_id": i} for i in BATCH]})
                except httpx.TransportError:
                    self.unanswered.append(user)
                    return
                assert r.status_code == 201, r.text
                self.acked.append(user)


def stored_items(base: str, user: str) -> list[int]:
    r = httpx.get(f"{base}/v1/users/{user}/history", headers={"X-API-Key": KEY}, timeout=30.0)
    if r.status_code == 404:
        return []
    assert r.status_code == 200, r.text
    return [item["item_id"] for item in r.json()["items"]]


def check_after_restart(base: str, db: Path, writers: list[Writer], versions: set[str]) -> str:
    """Every acknowledged batch whole, unanswered ones whole or absent, the SQLite file intact; the version."""
    for writer in writers:
        assert writer.acked, "the writer got no batch acknowledged before the kill"
        for user in writer.acked:
            assert stored_items(base, user) == BATCH, user
        for user in writer.unanswered:
            assert stored_items(base, user) in ([], BATCH), user
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    served = httpx.get(f"{base}/healthz").json()["model_version"]
    assert served in versions
    r = httpx.get(f"{base}/v1/users/1/recommendations?k=5")
    assert r.status_code == 200 and r.json()["model_version"] == r.headers["x-model-version"] == served
    return str(served)


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=30)


def test_kill_9_during_a_swap_loses_no_acknowledged_event(build_artifact: Callable[..., Path], tmp_path: Path,
                                                          free_port: int, serve_process: ServeProcess,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQREC_ADMIN_KEY", ADMIN_KEY)
    first = build_artifact(tmp_path / "first")  # gru4rec
    second = build_artifact(tmp_path / "second", model="sasrec")  # the same id space, other weights
    versions = {version_of(first), version_of(second)}
    assert len(versions) == 2
    served_dir = tmp_path / "current"  # the path the server is started on; replaced whole below
    shutil.copytree(first, served_dir)
    db, base = tmp_path / "events.db", f"http://127.0.0.1:{free_port}"
    admin = {"X-Admin-Key": ADMIN_KEY}
    writers: list[Writer] = []

    # 1. the served path now holds the second artifact (an atomic replace, as `seqrec train --out` does); the
    #    server is told to reload it and killed a moment later, mid-load or mid-swap, with writes in flight
    proc = serve_process(served_dir, free_port, db, KEY)
    try:
        assert httpx.get(f"{base}/healthz").json()["model_version"] == version_of(first)
        writers.append(Writer(base, "a"))
        writers[-1].start()
        time.sleep(0.5)
        staging = tmp_path / ".current.new"
        shutil.copytree(second, staging)
        commit_dir(staging, served_dir)
        killer = threading.Timer(0.05, kill_9, (proc,))
        killer.start()
        with contextlib.suppress(httpx.TransportError):  # killed before it answered: the point of the test
            httpx.post(f"{base}/v1/admin/reload", headers=admin, timeout=30.0)
        killer.join()
        writers[-1].join(timeout=30)
    finally:
        if proc.poll() is None:
            kill_9(proc)

    # 2. restarted on the same path: the complete second artifact; then a swap back to the first is answered,
    #    and the server killed right after it, writes still in flight
    proc = serve_process(served_dir, free_port, db, KEY)
    try:
        assert check_after_restart(base, db, writers, versions) == version_of(second)
        writers.append(Writer(base, "b"))
        writers[-1].start()
        time.sleep(0.3)
        r = httpx.post(f"{base}/v1/admin/reload", headers=admin, json={"artifact": str(first)}, timeout=30.0)
        assert r.status_code == 200 and r.json()["model_version"] == version_of(first), r.text
        assert httpx.get(f"{base}/v1/users/1/recommendations").headers["x-model-version"] == version_of(first)
        time.sleep(0.2)
        kill_9(proc)
        writers[-1].join(timeout=30)
    finally:
        if proc.poll() is None:
            kill_9(proc)

    # 3. a reload is not remembered across a restart: the path given at start is served again, whole
    proc = serve_process(served_dir, free_port, db, KEY)
    try:
        assert check_after_restart(base, db, writers, versions) == version_of(second)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
