"""/metrics through prometheus_client: with --workers 2 one scrape sees every worker's counters, and SIGHUP
on the supervisor reloads every worker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from seqrec.serve.metrics import Metrics

KEY = "prom-key-0123456789abcdef"


def series(text: str, name: str) -> dict[str, float]:
    """{labels: value} of every sample of ``name``."""
    return {m.group(1) or "": float(m.group(2))
            for m in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M)}


def test_single_process_format() -> None:
    m = Metrics("gru4rec", "gru4rec-0123456789abcdef", "sqlite")
    m.observe_request("GET", "/v1/users/{user_id}/recommendations", 200, 0.003)
    m.observe_batch(3)
    m.add("events_stored", 2)
    text = m.render()
    assert 'seqrec_http_requests_total{method="GET",route="/v1/users/{user_id}/recommendations",status="200"} 1' in text
    assert ('seqrec_http_request_duration_seconds_bucket{method="GET",route="/v1/users/{user_id}/recommendations",'
            'le="0.005"} 1') in text
    assert "seqrec_events_stored_total 2\n" in text and "seqrec_score_batch_size_count 1\n" in text
    assert "_created" not in text


def start(artifact: Path, port: int, db: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    cmd = [sys.executable, "-m", "seqrec.cli", "serve", str(artifact), "--host", "127.0.0.1", "--port", str(port),
           "--store", f"sqlite:///{db}", "--workers", "2"]
    proc = subprocess.Popen(cmd, env={**env, "SEQREC_API_KEY": KEY}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"seqrec serve exited with {proc.returncode}: {err[-2000:]}")
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1.0).text
            if len(series(text, "seqrec_events_stored_total")) == 2:  # both workers are up and writing files
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail("two workers did not come up in 90 s")


def test_one_scrape_sees_every_worker_and_sighup_reloads_all(artifact_dir: Path, tmp_path: Path,
                                                             free_port: int) -> None:
    base = f"http://127.0.0.1:{free_port}"
    proc = start(artifact_dir, free_port, tmp_path / "events.db")
    try:
        for i in range(24):  # fresh connections: the kernel spreads them over both workers
            r = httpx.post(f"{base}/v1/events", json={"user_id": f"u{i}", "item_id": 101},
                           headers={"X-API-Key": KEY})
            assert r.status_code == 201
        text = httpx.get(f"{base}/metrics").text
        stored = series(text, "seqrec_events_stored_total")
        assert len(stored) == 2 and all('worker="' in labels for labels in stored)
        assert sum(stored.values()) == 24  # whichever worker answered the scrape
        posts = {k: v for k, v in series(text, "seqrec_http_requests_total").items() if "/v1/events" in k}
        assert sum(posts.values()) == 24
        assert str(proc.pid) not in text  # the supervisor's start-up check left nothing behind
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        reloads = 0.0
        while time.monotonic() < deadline and reloads < 2:
            reloads = sum(series(httpx.get(f"{base}/metrics").text, "seqrec_model_reloads_total").values())
            time.sleep(0.2)
        assert reloads == 2
        assert httpx.get(f"{base}/v1/users/u1/recommendations?k=3").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
