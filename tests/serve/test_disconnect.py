"""A recommendation request whose client has gone is not scored: one already gone when the request is
read is never queued, and one that leaves while queued is dropped by the scorer. A flood of abandoned
requests therefore costs the scorer nothing, and /healthz and live requests stay fast."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import Message

from seqrec.serve.api import create_app
from seqrec.serve.service import Service
from seqrec.serve.settings import ServeSettings

KEY = "disconnect-key-0123456789"


class Gate:
    """Wraps the model's batch scoring: the first call waits for ``release`` (a long forward pass in
    progress, so later requests queue up), and every call costs ``per_request`` seconds per request."""

    def __init__(self, service: Service, per_request: float = 0.0) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.per_request = per_request
        self._score = service.index.score
        service.index.score = self  # type: ignore[method-assign]

    def __call__(self, requests: list[Any]) -> Any:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(60)
        time.sleep(self.per_request * len(requests))
        return self._score(requests)


# ---- the ASGI app called directly: each path taken for certain ------------------------------------------
def call(service: Service, path: str, receive: Any, method: str = "GET", body: bytes = b"") -> list[Message]:
    """Run one request through the app; ``receive`` is an async callable giving the ASGI messages."""
    settings = ServeSettings(Path("unused"), api_key=KEY)
    app = create_app(service, settings)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"test"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    return sent


def status_of(sent: list[Message]) -> int:
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/users/1/recommendations", b""),
    ("POST", "/v1/recommendations", b'{"history": [105, 106]}'),
])
def test_a_client_gone_before_its_request_was_read_is_never_queued(service: Service, method: str, path: str,
                                                                    body: bytes) -> None:
    messages = iter([{"type": "http.request", "body": body, "more_body": True}])

    async def receive() -> Message:  # part of the request, then the disconnect, both there already
        return next(messages, {"type": "http.disconnect"})

    sent = call(service, path, receive, method, body)
    assert status_of(sent) == 499  # nginx's "client closed request": counted in the metrics, sent nowhere
    assert (service.scored_requests, service.skipped_requests) == (0, 0)


def test_a_client_that_leaves_while_queued_is_dropped_by_the_scorer(service: Service) -> None:
    gate = Gate(service)
    blocker = service.submit_user("1", 5)  # the scorer is busy with this one
    assert gate.entered.wait(30)
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> Message:  # the whole request; the client leaves a moment later
        message = next(messages, None)
        if message is None:
            await asyncio.sleep(0.2)  # its request is queued behind the blocker by now
            return {"type": "http.disconnect"}
        return message

    sent = call(service, "/v1/users/2/recommendations", receive)
    assert status_of(sent) == 499
    gate.release.set()
    assert len(blocker.result(30).items) == 5
    service.recommend_history([105], 3)  # queued after the dropped one: once it is answered, that one was taken
    assert (service.scored_requests, service.skipped_requests) == (2, 1)


def test_a_client_that_stays_gets_its_answer(service: Service) -> None:
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> Message:  # the request, then nothing: the client waits for its answer
        message = next(messages, None)
        if message is None:
            await asyncio.Event().wait()
        assert message is not None
        return message

    sent = call(service, "/v1/users/1/recommendations", receive)
    assert status_of(sent) == 200 and service.scored_requests == 1 and service.skipped_requests == 0


# ---- a real server on a real port ----------------------------------------------------------------------
@dataclass
class Live:
    base: str
    port: int
    service: Service


@pytest.fixture
def live(service: Service, free_port: int) -> Iterator[Live]:
    """The app under uvicorn (as `seqrec serve` runs it) in a thread of this process, so the test can
    hold the scorer and read its counters."""
    settings = ServeSettings(Path("unused"), port=free_port, api_key=KEY)
    config = uvicorn.Config(create_app(service, settings), host="127.0.0.1", port=free_port, log_level="warning",
                            access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Live(f"http://127.0.0.1:{free_port}", free_port, service)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def count_499(base: str) -> int:
    text = httpx.get(f"{base}/metrics").text
    found = re.search(r'^seqrec_http_requests_total\{method="GET",route="/v1/users/\{user_id\}/recommendations",'
                      r'status="499"\} (\d+)$', text, re.M)
    return int(found.group(1)) if found else 0


def abandon(port: int, user: int) -> None:
    """Send a recommendation request and close the connection at once, without reading the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET /v1/users/{user}/recommendations?k=10 HTTP/1.1\r\nHost: t\r\n\r\n".encode())


N_ABANDONED = 300
COST = 0.02  # seconds of "forward pass" per scored request: 300 abandoned ones would take 6 s to score


def test_abandoned_requests_are_not_scored_and_healthz_stays_fast(live: Live) -> None:
    gate = Gate(live.service, per_request=COST)
    waiting = ThreadPoolExecutor(max_workers=1)
    first = waiting.submit(httpx.get, f"{live.base}/v1/users/1/recommendations", timeout=60)
    assert gate.entered.wait(30)  # the scorer is inside a long forward pass: everything else queues
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda u: abandon(live.port, u), [1 + i % 40 for i in range(N_ABANDONED)]))
    # every abandoned request ends as a 499 (gone when read, or cancelled in the queue) while the scorer is busy
    deadline = time.monotonic() + 60
    while count_499(live.base) < N_ABANDONED and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count_499(live.base) == N_ABANDONED
    started = time.monotonic()
    assert httpx.get(f"{live.base}/healthz").status_code == 200
    assert time.monotonic() - started < 1.0
    gate.release.set()
    # a live request queued behind the abandoned ones is answered without waiting for them to be scored
    started = time.monotonic()
    r = httpx.get(f"{live.base}/v1/users/2/recommendations", timeout=60)
    waited = time.monotonic() - started
    assert r.status_code == 200 and first.result(timeout=60).status_code == 200
    waiting.shutdown()
    assert waited < N_ABANDONED * COST / 3, waited
    scored, skipped = live.service.scored_requests, live.service.skipped_requests
    assert scored == 2, (scored, skipped)  # the first and the last: none of the abandoned ones
    assert skipped <= N_ABANDONED  # the rest were never queued: their clients were gone when they were read
