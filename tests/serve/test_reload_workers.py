"""POST /v1/admin/reload with --workers 2 reloads every worker: the answer lists each worker's version, a load
loop running through the swap sees no error, every answer names the model that scored it, and a worker
restarted after the swap loads the new artifact."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

KEY = "reload-key-0123456789abcdef"
ADMIN_KEY = "reload-admin-0123456789abcdef"
WORKER = re.compile(r'worker="(\d+)"')


@pytest.fixture(scope="module")
def second_artifact(tmp_path_factory: pytest.TempPathFactory, build_artifact: Callable[..., Path]) -> Path:
    """sasrec on the default artifact's data: the same id space, another model."""
    return build_artifact(tmp_path_factory.mktemp("reload-workers") / "sasrec", model="sasrec")


def workers_up(base: str, n: int, besides: frozenset[str] = frozenset(), timeout: float = 90.0) -> set[str]:
    """The pids of the workers once ``n`` of them, not counting ``besides``, have written metrics."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pids = set(WORKER.findall(httpx.get(f"{base}/metrics", timeout=5.0).text)) - besides
        except httpx.TransportError:  # a connection the kernel gave a worker just killed is reset
            pids = set()
        if len(pids) >= n:
            return pids
        time.sleep(0.2)
    pytest.fail(f"{n} workers did not come up in {timeout:g} s")


def test_reload_reaches_every_worker_under_load(artifact_dir: Path, second_artifact: Path, tmp_path: Path,
                                                free_port: int, serve_process: Callable[..., subprocess.Popen[bytes]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQREC_ADMIN_KEY", ADMIN_KEY)
    base = f"http://127.0.0.1:{free_port}"
    proc = serve_process(artifact_dir, free_port, tmp_path / "events.db", KEY, "--workers", "2",
                         log=tmp_path / "serve.log")
    try:
        workers_up(base, 2)
        old = httpx.get(f"{base}/healthz").json()["model_version"]
        stop = threading.Event()
        seen: list[tuple[float, int, str | None, str | None]] = []  # (sent at, status, header, body version)

        def load(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                sent = time.monotonic()
                try:  # a fresh connection each time: the kernel spreads them over both workers
                    if i % 5 == 0:
                        r = httpx.post(f"{base}/v1/events", json={"user_id": f"load-{n}", "item_id": 100 + i % 60},
                                       headers={"X-API-Key": KEY}, timeout=30.0)
                        body = None
                    else:
                        r = httpx.get(f"{base}/v1/users/{1 + i % 40}/recommendations?k=5", timeout=30.0)
                        body = r.json().get("model_version")
                    seen.append((sent, r.status_code, r.headers.get("X-Model-Version"), body))
                except httpx.TransportError as exc:
                    seen.append((sent, 0, type(exc).__name__, None))

        threads = [threading.Thread(target=load, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            r = httpx.post(f"{base}/v1/admin/reload", headers={"X-Admin-Key": ADMIN_KEY},
                           json={"artifact": str(second_artifact)}, timeout=120.0)
            done = time.monotonic()
            time.sleep(1.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert r.status_code == 200, r.text
        new = r.json()["model_version"]
        assert new != old and r.json()["previous_version"] == old
        assert len(r.json()["workers"]) == 2 and set(r.json()["workers"].values()) == {new}

        assert len(seen) > 20
        assert [s for s in seen if s[1] not in (200, 201)] == []  # no error through the swap
        assert all(header == body for _, status, header, body in seen if status == 200)  # scored-with version
        assert {s[2] for s in seen} == {old, new}
        assert {s[2] for s in seen if s[0] > done} == {new}  # after the answer, every worker serves the new model

        # a worker restarted after the swap loads the new artifact, not the one given at start-up
        killed = next(iter(r.json()["workers"]))
        os.kill(int(killed), signal.SIGKILL)
        workers_up(base, 1, besides=frozenset(r.json()["workers"]))  # its replacement is up
        versions = {httpx.get(f"{base}/healthz").json()["model_version"] for _ in range(20)}
        assert versions == {new}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
