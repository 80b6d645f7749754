"""One server per port, no orphaned workers, and bounded connections: header size and count, the time
a request may take to arrive, idle connections, the number of connections, and memory after an abuse."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest

from seqrec.cli import build_parser, main
from seqrec.serve.settings import settings_from_args

KEY = "limits-key-0123456789"
READ_TIMEOUT, KEEP_ALIVE = 2, 1  # seconds, short so the tests are quick
ServeProcess = Callable[..., subprocess.Popen[bytes]]  # the conftest fixture serve_process
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqrec: error: "), err
    return err[0]


# ---- flags ---------------------------------------------------------------------------------------
def test_the_limits_have_flags_and_sane_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = settings_from_args(build_parser().parse_args(["serve", str(tmp_path)]), {})
    assert (cfg.max_header_bytes, cfg.max_headers, cfg.read_timeout_s, cfg.keep_alive_s, cfg.max_connections,
            cfg.backlog) == (65536, 100, 10.0, 5, 256, 2048)
    cfg = settings_from_args(build_parser().parse_args(
        ["serve", str(tmp_path), "--max-header-bytes", "8192", "--max-headers", "20", "--read-timeout", "2.5",
         "--keep-alive", "3", "--max-connections", "10", "--backlog", "64"]), {})
    assert (cfg.max_header_bytes, cfg.max_headers, cfg.read_timeout_s, cfg.keep_alive_s, cfg.max_connections,
            cfg.backlog) == (8192, 20, 2.5, 3, 10, 64)
    art = str(tmp_path / "never-loaded")
    for flag, value in [("--max-header-bytes", "100"), ("--max-headers", "0"), ("--read-timeout", "0"),
                        ("--keep-alive", "-1"), ("--max-connections", "0"), ("--backlog", "0")]:
        assert flag in one_error_line(capsys, ["serve", art, flag, value])


# ---- one server per port -------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
def test_a_taken_port_fails_in_one_line_before_the_model_loads(
        capsys: pytest.CaptureFixture[str], artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        workers: int) -> None:
    """Taken by a socket with SO_REUSEPORT (as another `seqrec serve --workers` holds it) or without."""
    monkeypatch.delenv("SEQREC_API_KEY", raising=False)

    def load_artifact(*args: object) -> None:
        raise AssertionError("the model was loaded although the port is taken")

    monkeypatch.setattr("seqrec.serve.service.load_artifact", load_artifact)
    with socket.socket() as taken:
        if workers > 1 and hasattr(socket, "SO_REUSEPORT"):
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_error_line(capsys, ["serve", str(artifact_dir), "--workers", str(workers), "--port", str(port),
                                       "--store", f"sqlite:///{tmp_path / 'events.db'}"])
    assert line.startswith(f"seqrec: error: port {port} is already in use"), line


def state(pid: int) -> str | None:
    """The process's state letter (Z: exited, not yet reaped by its new parent), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past our own TIME_WAIT connections
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def worker_pids(base: str, expected: int = 2, seconds: float = 90.0) -> set[int]:
    seen: set[int] = set()
    deadline = time.monotonic() + seconds
    while len(seen) < expected and time.monotonic() < deadline:
        lines = httpx.get(f"{base}/metrics").text.splitlines()
        seen.update(int(x.split('worker="')[1].split('"')[0]) for x in lines if x.startswith("seqrec_model_info{"))
    return seen


@linux_only
def test_one_server_per_port_and_workers_die_with_their_supervisor(artifact_dir: Path, tmp_path: Path, free_port: int,
                                                                  serve_process: ServeProcess) -> None:
    port = free_port
    base = f"http://127.0.0.1:{port}"
    proc = serve_process(artifact_dir, port, tmp_path / "events.db", KEY, "--workers", "2", log=tmp_path / "serve.log",
                         wait_s=120)
    try:
        workers = worker_pids(base)
        assert len(workers) == 2
        second = subprocess.run([sys.executable, "-m", "seqrec.cli", "serve", str(artifact_dir), "--port", str(port),
                                 "--workers", "2", "--store", f"sqlite:///{tmp_path / 'other.db'}"],
                                capture_output=True, text=True, timeout=120, env={**os.environ, "SEQREC_API_KEY": KEY})
        assert second.returncode == 2 and second.stderr.strip().splitlines() == [
            f"seqrec: error: port {port} is already in use (cannot listen on 127.0.0.1:{port}: Address already "
            "in use); stop the server there or choose another --port"], second.stderr
        # the workers have the limits too
        assert send_raw(port, [request_head(n_headers=101)]).startswith(b"HTTP/1.1 431 ")
    finally:
        proc.send_signal(signal.SIGKILL)  # no handler runs: the workers must notice by themselves
        proc.wait(timeout=10)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and (running(workers) or not port_is_free(port)):
        time.sleep(0.05)
    assert running(workers) == {}
    assert port_is_free(port)


def running(pids: Iterable[int]) -> dict[int, str | None]:
    return {p: state(p) for p in pids if state(p) not in (None, "Z")}


def test_the_portable_watchdog_stops_a_worker_whose_supervisor_is_gone() -> None:
    """Where the kernel cannot be asked (not Linux), end-of-file on the supervisor's pipe does it."""
    read_end, write_end = os.pipe()
    code = ("import sys, time; from multiprocessing.connection import Connection; "
            "from seqrec.serve.workers import _watch_supervisor; "
            "_watch_supervisor(Connection(int(sys.argv[1]), writable=False)); print('watching', flush=True); "
            "time.sleep(60)")
    worker = subprocess.Popen([sys.executable, "-c", code, str(read_end)], pass_fds=(read_end,),
                              stdout=subprocess.PIPE)
    os.close(read_end)
    try:
        assert worker.stdout is not None and worker.stdout.readline() == b"watching\n"
        os.close(write_end)  # as the kernel does for a supervisor killed with kill -9
        assert worker.wait(timeout=5) == -signal.SIGTERM
    finally:
        worker.kill()
        worker.wait()


# ---- bounded connections -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory,
           serve_process: ServeProcess, port_factory: Callable[[], int]) -> Iterator[tuple[int, int]]:
    """One single-process server with short timeouts and default sizes: (port, pid)."""
    tmp = tmp_path_factory.mktemp("limits")
    port = port_factory()
    proc = serve_process(artifact_dir, port, tmp / "events.db", KEY, "--read-timeout", str(READ_TIMEOUT),
                         "--keep-alive", str(KEEP_ALIVE), log=tmp / "serve.log", wait_s=120)
    yield port, proc.pid
    proc.terminate()
    proc.wait(timeout=30)


def request_head(n_headers: int = 0, method: str = "GET", path: str = "/healthz", extra: bytes = b"") -> bytes:
    fields = b"".join(b"X-Filler-%d: %d\r\n" % (i, i) for i in range(n_headers))
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n".encode() + fields + extra + b"\r\n"


def send_raw(port: int, chunks: Iterable[bytes], timeout: float = 30.0) -> bytes:
    """Send ``chunks`` (as far as the server lets us), then read until the server closes: all it answered,
    or b"" if it reset the connection. A server that neither answers nor closes fails the test."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it stopped reading: expected when it refuses
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if b"connection: close" not in data.lower() and data.startswith(b"HTTP/1.1 2"):
                    break  # accepted and kept alive: the test fails on it below
        except ConnectionResetError:
            pass
        return data


def read_response(s: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(x.split(b":")[1]) for x in head.lower().split(b"\r\n") if x.startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return data


def huge_headers(n: int, size: int) -> Iterator[bytes]:
    value = b"a" * size
    yield b"GET /healthz HTTP/1.1\r\nHost: test\r\n"
    for i in range(n):
        yield b"X-Big-%d: " % i + value + b"\r\n"
    yield b"\r\n"


def refused(answer: bytes) -> bool:
    """Answered 431 and closed, or the connection reset before the answer could be read: never accepted."""
    return answer == b"" or answer.startswith(b"HTTP/1.1 431 ")


def test_oversized_heads_are_refused(server: tuple[int, int]) -> None:
    port, _ = server
    assert refused(send_raw(port, huge_headers(1, 20 * 1024 * 1024))), "a 20 MB header was accepted"
    assert refused(send_raw(port, huge_headers(200, 1024 * 1024))), "200 headers of 1 MB were accepted"
    answer = send_raw(port, [request_head(n_headers=101)])
    assert answer.startswith(b"HTTP/1.1 431 ") and b"more than 100 header fields" in answer
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # within the limits: served
        s.sendall(request_head(n_headers=90))
        assert read_response(s).startswith(b"HTTP/1.1 200 ")
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_idle_connections_are_closed(server: tuple[int, int]) -> None:
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # never sends a byte
        t0 = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - t0 < KEEP_ALIVE + 2
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # idle after one answer
        s.sendall(request_head())
        assert read_response(s).startswith(b"HTTP/1.1 200 ")
        t0 = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - t0 < KEEP_ALIVE + 2


def rss_kib(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1])


def slow_clients(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that each send the head of a 4 kB event post and 100 bytes of its body, then stall."""
    fields = f"Content-Type: application/json\r\nX-API-Key: {KEY}\r\nContent-Length: 4096\r\n"
    head = request_head(method="POST", path="/v1/events", extra=fields.encode())
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused already: over --max-connections
            s.sendall(head + b'{"events": [' + b" " * 88)
    return socks


def wait_closed(socks: list[socket.socket], seconds: float) -> tuple[list[bytes], int]:
    """What each connection was answered once the server closed it; and how many it left open after ``seconds``."""
    sel = selectors.DefaultSelector()
    answers = {s: b"" for s in socks}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            sock = cast(socket.socket, key.fileobj)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            answers[sock] += chunk
            if not chunk:
                sel.unregister(sock)
    left_open = len(sel.get_map())
    sel.close()
    for s in socks:
        s.close()
    return list(answers.values()), left_open


@linux_only
def test_slow_clients_are_cut_off_and_memory_returns(server: tuple[int, int]) -> None:
    port, pid = server
    for i in range(30):  # warm up: every route's code and the scorer have run
        httpx.get(f"http://127.0.0.1:{port}/v1/users/{1 + i % 40}/recommendations")
        httpx.post(f"http://127.0.0.1:{port}/v1/events", json={"user_id": f"w{i}", "item_id": 101},
                   headers={"X-API-Key": KEY})
    baseline = rss_kib(pid)
    t0 = time.monotonic()
    socks = slow_clients(port, 300)
    answers, left_open = wait_closed(socks, READ_TIMEOUT + 8)
    assert left_open == 0, f"{left_open} stalled connections still open {time.monotonic() - t0:.1f} s later"
    statuses = [a[9:12] for a in answers]
    assert set(statuses) <= {b"408", b"503", b""}, set(statuses)  # never accepted
    assert statuses.count(b"503") >= 300 - 256  # over --max-connections: refused at once
    assert statuses.count(b"408") >= 200  # the rest: cut off after --read-timeout
    time.sleep(0.5)
    after = rss_kib(pid)
    assert after <= baseline * 1.10, f"RSS {baseline} kB before, {after} kB after"
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
