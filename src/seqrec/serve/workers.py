"""How `seqrec serve` runs its processes: the port, the HTTP connection limits, and with
``--workers N`` N service processes on one port, each with its own listening socket.

**The port.** Before the model loads, :func:`claim_port` binds the port with a plain socket (no
``SO_REUSEPORT``): if anything holds it, even another `seqrec serve --workers N` whose sockets
would let a reuse-port socket join them, start-up stops with one line. It then keeps the port,
listening, so no other server can start there while the model loads (connections that arrive
meanwhile wait and are answered once it has loaded). Every socket on the port is made by this
process.

**Workers.** Every worker serves from its own ``SO_REUSEPORT`` socket, so the kernel spreads
incoming connections over the workers as they arrive. (With one listening socket shared by all
workers, the first worker to wake accepts every connection waiting in the backlog: a client that
opens its keep-alive connections at once can end up with all of them on one worker while the
others idle.) The supervisor (this process) makes each worker's socket, bound and listening,
when the worker has loaded the model and asks for it over a pipe (the first worker gets the
socket that claimed the port), so no connection waits on a worker that is restarting, and no
socket on the port comes from anywhere else. It restarts a
worker that dies, gives up with one clear line if workers keep dying right after they start, and
stops every worker on SIGTERM or SIGINT.

**Reloads.** A worker that reloads over HTTP (``POST /v1/admin/reload``) first loads the new artifact
itself, then tells the supervisor over its pipe; the supervisor remembers the artifact (a worker it
restarts later loads that one), passes the reload to every other worker, collects the version each now
serves, and hands them back to the worker that asked, which answers the request with them. SIGHUP on
the supervisor reloads every worker's artifact in place. A worker dies with its supervisor, even one killed with
``kill -9``: on Linux the kernel sends it SIGTERM (``PR_SET_PDEATHSIG``), and everywhere the pipe
to the supervisor reaches end-of-file, which a watchdog thread turns into SIGTERM.

**Connection limits.** uvicorn bounds neither the size nor the number of request headers, nor how
long a request may take to arrive, and it closes an idle connection only after its first
response. :class:`BoundedHttpProtocol` (uvicorn's httptools protocol plus those limits) answers
431 to a request head over ``max_header_bytes`` or ``max_headers``, 408 to a request not received
within ``read_timeout_s`` of its first byte, 503 to a connection beyond ``max_connections``, and
closes a connection that is idle for ``keep_alive_s``, before its first request too; each of
these closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from seqrec.errors import SeqrecError
from seqrec.serve.settings import ServeSettings

EARLY_DEATH_S = 15.0  # a worker that dies sooner than this after starting counts as a failed start
MAX_FAILED_STARTS = 3
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_READY = "ready"  # a worker that has loaded the model asks for its socket with this


# ---- the port ------------------------------------------------------------------------------------
def supported() -> bool:
    """Whether this platform has SO_REUSEPORT (one listening socket per worker)."""
    return hasattr(socket, "SO_REUSEPORT")


def claim_port(host: str, port: int, backlog: int, reuseport: bool = False) -> socket.socket:
    """A socket listening on (host, port), or a one-line SeqrecError if anything holds the port, even
    sockets with SO_REUSEPORT (which ``reuseport`` sockets would join): a plain socket must bind first."""
    if reuseport:
        _bind(host, port, reuseport=False).close()
    return listening_socket(host, port, backlog, reuseport)


def listening_socket(host: str, port: int, backlog: int, reuseport: bool = False) -> socket.socket:
    """A socket listening on (host, port); with ``reuseport`` one of the workers' group."""
    sock = _bind(host, port, reuseport)
    try:
        sock.listen(backlog)
    except OSError as exc:  # EADDRINUSE: a socket bound there, unlike ours, without listening yet
        sock.close()
        raise SeqrecError(_bind_error(host, port, exc)) from None
    return sock


def _bind(host: str, port: int, reuseport: bool) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise SeqrecError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart must not wait for TIME_WAIT
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SeqrecError(_bind_error(host, port, exc)) from None
    return sock


def _bind_error(host: str, port: int, exc: OSError) -> str:
    where = f"cannot listen on {host}:{port}: {exc.strerror}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is already in use ({where}); stop the server there or choose another --port"
    return f"{where}; choose another --port or --host"


# ---- connection limits ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    read_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int = 256

    @classmethod
    def of(cls, settings: ServeSettings) -> ConnectionLimits:
        return cls(settings.max_header_bytes, settings.max_headers, settings.read_timeout_s,
                   settings.keep_alive_s, settings.max_connections)


class _Refused(Exception):
    """Raised in a parser callback to stop a request over a limit; the parser reports it as invalid."""


_ERROR_NAMES = {400: "bad_request", 408: "request_timeout", 431: "headers_too_large", 503: "too_many_connections"}


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on the request head, the time a request takes to
    arrive, idle connections and the number of connections; see the module docstring."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    @classmethod
    def use(cls, settings: ServeSettings) -> None:
        """Set this process's limits (uvicorn builds the protocol itself, one per connection)."""
        cls.limits = ConnectionLimits.of(settings)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request head, or between requests
        self._head_bytes = 0  # bytes received while in the head: bounds what the parser buffers
        self._head_size = 0  # bytes of the parsed request line and header fields
        self._head_fields = 0
        self._refusal: tuple[int, str] | None = None
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._send_error(503, f"more than {self.limits.max_connections} open connections; retry later")
            return
        self._arm_keep_alive()  # a connection that never sends a byte is closed as an idle one

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
            self._send_error(431, self._too_large())

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_size, self._head_fields = True, 0, 0
        self._cancel_read_timer()
        self._read_timer = self.loop.call_later(self.limits.read_timeout_s, self._read_timed_out)

    def on_url(self, url: bytes) -> None:
        self._count(len(url), fields=0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, fields=1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_read_timer()
        self._in_head, self._head_bytes = True, 0

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser refused: ours when a limit refused it."""
        self._send_error(*(self._refusal or (400, msg)))

    # helpers
    def _count(self, size: int, fields: int) -> None:
        self._head_size += size
        self._head_fields += fields
        if self._head_fields > self.limits.max_headers:
            self._refuse(431, f"more than {self.limits.max_headers} header fields")
        if self._head_size > self.limits.max_header_bytes:
            self._refuse(431, self._too_large())

    def _too_large(self) -> str:
        return f"request line and headers larger than {self.limits.max_header_bytes} bytes"

    def _refuse(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _Refused(message)

    def _arm_keep_alive(self) -> None:
        self.timeout_keep_alive_task = self.loop.call_later(self.limits.keep_alive_s, self.timeout_keep_alive_handler)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if not self._in_head and cycle is not None:  # the app has the head and waits for the body
            cycle.disconnected = True  # its receive() now reports a disconnect, its send() does nothing
            cycle.message_event.set()
            if cycle.response_started:  # it has answered already (413, say): nothing to add
                self.transport.close()
                return
        self._send_error(408, f"request not received within {self.limits.read_timeout_s:g} s; send it faster")

    def _send_error(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON error body, then close the connection."""
        body = json.dumps({"error": _ERROR_NAMES.get(status, "http_error"), "message": message,
                           "details": None}).encode()  # the API's error shape
        head = [STATUS_LINE[status], *(name + b": " + value + b"\r\n" for name, value in
                                       self.server_state.default_headers),
                b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def uvicorn_options(settings: ServeSettings, log_level: str = "info") -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.Config`` for every way `seqrec serve` runs: the protocol with
    the limits (set per process by ``BoundedHttpProtocol.use``), and uvicorn's own limits."""
    return {"host": settings.host, "port": settings.port, "access_log": settings.access_log, "log_level": log_level,
            "http": BoundedHttpProtocol, "timeout_keep_alive": settings.keep_alive_s,
            "limit_concurrency": settings.max_connections + 1,  # uvicorn counts the connection asking too
            "backlog": settings.backlog}


def serve(app: Any, settings: ServeSettings, sock: socket.socket, log_level: str = "info") -> None:
    """Serve ``app`` on the listening ``sock`` until SIGTERM or SIGINT."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings, log_level))).run(sockets=[sock])


# ---- the supervisor ------------------------------------------------------------------------------
@dataclass
class _Worker:
    proc: BaseProcess
    conn: Connection  # the worker asks for its socket here; its end-of-file tells the worker we died
    started: float
    artifact: Path  # the artifact it was started with
    serving: bool = False

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()  # SIGTERM: uvicorn finishes the requests in flight, then exits

    def reap(self) -> None:
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


@dataclass
class _Reload:
    """A reload one worker asked for, passed on to the others: who still has to answer, and the answers."""

    origin: _Worker
    waiting: set[int]  # pids of the workers that have not answered yet
    results: dict[str, str] = field(default_factory=dict)  # pid -> the version it serves now, or "error: ..."


class _Supervisor:
    def __init__(self, settings: ServeSettings, claim: socket.socket, log_level: str) -> None:
        self.settings = settings
        self.claim: socket.socket | None = claim  # the socket that holds the port: the first ready worker's
        self.log_level = log_level
        self.ctx: SpawnContext = multiprocessing.get_context("spawn")  # a fresh interpreter each: no forked torch
        self.stop = threading.Event()
        self.status = 0
        self.failed = 0
        self.workers: list[_Worker] = []
        self.reloads: dict[str, _Reload] = {}  # token -> a reload being passed on

    def start(self) -> _Worker:
        ours, theirs = self.ctx.Pipe(duplex=True)
        # The settings (key and store URL included) travel through the spawn pipe: no command line, no environment.
        proc = self.ctx.Process(target=_worker_main, args=(self.settings, theirs, os.getpid(), self.log_level),
                                name="seqrec-serve-worker")
        proc.start()
        theirs.close()
        return _Worker(proc, ours, time.monotonic(), Path(self.settings.artifact))

    def run(self) -> int:
        self.workers = [self.start() for _ in range(self.settings.workers)]
        try:
            while not self.stop.is_set():
                self.poll()
                self.replace_dead()
        finally:
            if self.claim is not None:
                self.claim.close()
            for w in self.workers:
                w.stop()
            for w in self.workers:
                w.reap()
        return self.status

    def poll(self) -> None:
        """Wait up to half a second for a message from any worker: a loaded worker asks for its listening
        socket; a serving one reports a reload, or answers one passed on to it."""
        ready = wait([w.conn for w in self.workers], timeout=0.5)
        for worker in [w for w in self.workers if w.conn in ready]:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                continue  # it died; replace_dead starts another
            if message == _READY and not worker.serving:
                self.hand_out_socket(worker)
            elif isinstance(message, tuple) and message and worker.serving:
                self.on_reload_message(worker, message)
    def hand_out_socket(self, worker: _Worker) -> None:
        """Give a worker that has loaded the model a listening socket."""
        try:
            sock = self.claim or listening_socket(self.settings.host, self.settings.port, self.settings.backlog,
                                                  reuseport=True)
            self.claim = None
        except SeqrecError as exc:  # cannot happen while a worker listens; say so if it does
            self.fail(str(exc))
            return
        self.give(worker, sock)
        if worker.serving and worker.artifact != Path(self.settings.artifact):  # started before a reload
            with contextlib.suppress(OSError):  # it died meanwhile
                worker.conn.send(("reload", "", str(self.settings.artifact)))

    def on_reload_message(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        """("reload", token, artifact, version): ``worker`` has reloaded; pass it on to the others.
        ("reloaded", token, version or "error: ..."): a worker's answer to a reload passed on."""
        pid = str(worker.proc.pid)
        if message[0] == "reload" and len(message) == 4:
            _, token, artifact, version = message
            self.settings = replace(self.settings, artifact=Path(artifact))  # what a restarted worker loads
            others = [w for w in self.workers if w is not worker and w.serving and w.proc.is_alive()]
            reload = _Reload(worker, {w.proc.pid or 0 for w in others}, {pid: str(version)})
            self.reloads[token] = reload
            for other in others:
                try:
                    other.conn.send(("reload", token, artifact))
                except OSError:
                    reload.waiting.discard(other.proc.pid or 0)  # it died; its replacement loads the artifact
            self.finish_reloads()
        elif message[0] == "reloaded" and len(message) == 3:
            _, token, result = message
            asked = self.reloads.get(token)
            if asked is not None:
                asked.results[pid] = str(result)
                asked.waiting.discard(worker.proc.pid or 0)
                self.finish_reloads()

    def finish_reloads(self) -> None:
        """Answer the workers whose reloads every other worker has answered (or died meanwhile)."""
        alive = {w.proc.pid for w in self.workers if w.proc.is_alive()}
        for token, reload in list(self.reloads.items()):
            for pid in [p for p in reload.waiting if p not in alive]:
                reload.waiting.discard(pid)
                reload.results[str(pid)] = f"restarted: loads {self.settings.artifact}"
            if reload.waiting:
                continue
            del self.reloads[token]
            with contextlib.suppress(OSError):  # the worker that asked is gone: nobody waits for the answer
                reload.origin.conn.send(("reload_done", token, reload.results))

    @staticmethod
    def give(worker: _Worker, sock: socket.socket) -> None:
        try:
            reduction.send_handle(worker.conn, sock.fileno(), worker.proc.pid or 0)
            worker.serving = True
        except OSError:
            pass  # it died meanwhile
        finally:
            sock.close()  # the worker has its own copy: a worker that dies takes its socket along

    def replace_dead(self) -> None:
        for i, worker in enumerate(self.workers):
            if self.stop.is_set() or worker.proc.is_alive():
                continue
            worker.reap()
            self.failed = self.failed + 1 if time.monotonic() - worker.started < EARLY_DEATH_S else 0
            if self.failed >= MAX_FAILED_STARTS:
                self.fail(f"workers keep exiting at start-up (last exit code {worker.proc.exitcode}); "
                          "see the lines above")
                return
            print(f"seqrec serve: worker {worker.proc.pid} exited with code {worker.proc.exitcode}; starting another",
                  file=sys.stderr, flush=True)
            self.workers[i] = self.start()
            self.finish_reloads()

    def fail(self, message: str) -> None:
        print(f"seqrec: error: {message}", file=sys.stderr, flush=True)
        self.status = 2
        self.stop.set()


def run_workers(settings: ServeSettings, claim: socket.socket, log_level: str = "info") -> int:
    """Start ``settings.workers`` workers and supervise them until a stop signal; returns the exit
    status. ``claim`` is the listening SO_REUSEPORT socket from :func:`claim_port`."""
    supervisor = _Supervisor(settings, claim, log_level)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        supervisor.stop.set()

    def forward_reload(signum: int, frame: FrameType | None) -> None:  # SIGHUP: every worker reloads
        for w in getattr(supervisor, "workers", []):
            if w.proc.is_alive() and w.proc.pid is not None:
                os.kill(w.proc.pid, signal.SIGHUP)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, forward_reload)
    return supervisor.run()


# ---- a worker ------------------------------------------------------------------------------------
def _worker_main(settings: ServeSettings, conn: Connection, supervisor: int, log_level: str) -> None:
    """One worker: load the model and the store, ask the supervisor for a listening socket, serve."""
    _die_with_supervisor(supervisor)
    from seqrec.serve.cli import worker_app

    app = worker_app(settings)
    try:
        conn.send(_READY)
        sock = socket.socket(fileno=reduction.recv_handle(conn))
    except (EOFError, OSError):
        return  # the supervisor is gone
    link = SupervisorLink(conn, app.state.service)
    app.state.service.peers = link.pass_on
    threading.Thread(target=link.run, name="seqrec-supervisor-link", daemon=True).start()
    serve(app, settings, sock, log_level)


def _die_with_supervisor(supervisor: int) -> None:
    """On Linux, have the kernel send this process SIGTERM when the supervisor dies, however it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the kernel was told
        sys.exit(0)


def _watch_supervisor(conn: Connection) -> None:
    """A thread that turns end-of-file on the supervisor's pipe (it died, however) into SIGTERM: the link
    without a service to reload."""
    threading.Thread(target=SupervisorLink(conn, None).run, name="seqrec-supervisor-watch", daemon=True).start()


class SupervisorLink:
    """A worker's end of its pipe to the supervisor. Its thread turns end-of-file (the supervisor died, however)
    into SIGTERM, reloads when the supervisor passes on another worker's reload, and hands the answers of the
    other workers to a reload this worker passed on."""

    def __init__(self, conn: Connection, service: Any) -> None:
        self.conn = conn
        self.service = service  # seqrec.serve.service.Service
        self._send_lock = threading.Lock()
        self._pending: dict[str, Future[dict[str, str]]] = {}

    def pass_on(self, artifact: Path, version: str) -> Future[dict[str, str]]:
        """Tell the supervisor this worker now serves ``artifact`` (``version``); the future gets every worker's
        version (pid -> version, or "error: ...") once the others have reloaded too."""
        token = os.urandom(8).hex()
        future: Future[dict[str, str]] = Future()
        self._pending[token] = future
        self._send(("reload", token, str(Path(artifact).resolve()), version))
        return future

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(message)

    def run(self) -> None:
        try:
            while True:
                self.handle(self.conn.recv())
        except (EOFError, OSError):
            os.kill(os.getpid(), signal.SIGTERM)

    def handle(self, message: Any) -> None:
        if not isinstance(message, tuple) or not message:
            return
        if message[0] == "reload" and len(message) == 3 and self.service is not None:
            _, token, artifact = message
            try:
                self.service.reload(Path(artifact))
                result = str(self.service.version)
            except SeqrecError as exc:
                result = f"error: {exc}"
            print(f"seqrec serve: worker {os.getpid()}: reload of {artifact}: {result}", file=sys.stderr, flush=True)
            if token:
                self._send(("reloaded", token, result))
        elif message[0] == "reload_done" and len(message) == 3:
            future = self._pending.pop(message[1], None)
            if future is not None:
                future.set_result(dict(message[2]))
