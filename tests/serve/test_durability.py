"""The real server as a subprocess: an event acknowledged with 201 survives `kill -9`; several
worker processes on one port share the store, so every worker sees every event."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

KEY = "durability-key-0123456789"
ServeProcess = Callable[..., subprocess.Popen[bytes]]  # the conftest fixture serve_process


def test_an_acknowledged_event_survives_kill_9(artifact_dir: Path, tmp_path: Path, free_port: int,
                                               serve_process: ServeProcess) -> None:
    db = tmp_path / "events.db"
    base = f"http://127.0.0.1:{free_port}"
    proc = serve_process(artifact_dir, free_port, db, KEY)
    try:
        r = httpx.post(f"{base}/v1/events", json={"user_id": "durable", "item_id": 105},
                       headers={"X-API-Key": KEY})
        assert r.status_code == 201
        assert httpx.get(f"{base}/v1/users/durable/recommendations").json()["history_length"] == 1
    finally:
        proc.send_signal(signal.SIGKILL)  # no shutdown hook, no checkpoint: only what was fsynced
        proc.wait(timeout=10)
    proc = serve_process(artifact_dir, free_port, db, KEY)
    try:
        body = httpx.get(f"{base}/v1/users/durable/recommendations").json()
        assert body["history_length"] == 1
        assert body["user_id"] == "durable" and len(body["items"]) == 10
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_workers_share_the_store_and_label_their_metrics(artifact_dir: Path, tmp_path: Path, free_port: int,
                                                         serve_process: ServeProcess) -> None:
    base = f"http://127.0.0.1:{free_port}"
    proc = serve_process(artifact_dir, free_port, tmp_path / "events.db", KEY, "--workers", "2")
    try:
        for i in range(3):
            r = httpx.post(f"{base}/v1/events", json={"user_id": "shared", "item_id": 101 + i},
                           headers={"X-API-Key": KEY})
            assert r.status_code == 201
            # a fresh connection per read: whichever worker accepts it must see every event so far
            lengths = {httpx.get(f"{base}/v1/users/shared/recommendations").json()["history_length"]
                       for _ in range(8)}
            assert lengths == {i + 1}
        workers = set()
        for _ in range(24):  # fresh connections: SO_REUSEPORT hashes each to one of the two workers
            text = httpx.get(f"{base}/metrics").text
            info = next(line for line in text.splitlines() if line.startswith("seqrec_model_info{"))
            workers.add(info.split('worker="')[1].split('"')[0])
            assert 'seqrec_events_stored_total{worker="' in text
        assert len(workers) == 2 and str(proc.pid) not in workers  # both workers answer, never the supervisor
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0


def worker_pids(base: str, expected: int = 2, seconds: float = 60.0) -> set[str]:
    """The workers that answer scrapes, polled until ``expected`` have answered or ``seconds`` pass: the
    supervisor is healthy once one worker is, and a loaded machine may take a while to start the other."""
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while len(seen) < expected and time.monotonic() < deadline:
        seen.update(line.split('worker="')[1].split('"')[0] for line in httpx.get(f"{base}/metrics").text.splitlines()
                    if line.startswith("seqrec_model_info{"))
    return seen


def test_the_supervisor_replaces_a_killed_worker(artifact_dir: Path, tmp_path: Path, free_port: int,
                                                serve_process: ServeProcess) -> None:
    base = f"http://127.0.0.1:{free_port}"
    proc = serve_process(artifact_dir, free_port, tmp_path / "events.db", KEY, "--workers", "2")
    try:
        before = worker_pids(base)
        assert len(before) == 2
        victim = sorted(before)[0]
        os.kill(int(victim), signal.SIGKILL)
        deadline = time.monotonic() + 90
        after: set[str] = set()
        while time.monotonic() < deadline and len(after - {victim}) < 2:
            time.sleep(1.0)
            try:
                after = worker_pids(base, seconds=2.0)
            except httpx.TransportError:
                continue
        assert victim not in after and len(after) == 2  # a new worker took the dead one's place
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
