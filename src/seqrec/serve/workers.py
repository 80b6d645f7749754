"""`seqrec serve --workers N`: N service processes on one port, each with its own listening socket.

Every worker binds the port with ``SO_REUSEPORT``, so the kernel spreads incoming connections
over the workers as they arrive. (With one listening socket shared by all workers, the first
worker to wake accepts every connection waiting in the backlog: a client that opens its
keep-alive connections at once can end up with all of them on one worker while the others idle.)

The supervisor (this process; `seqrec serve` checks the port first) restarts a worker that
dies, gives up with one clear line if workers keep dying right after they start, and stops every
worker on SIGTERM or SIGINT.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from seqrec.errors import SeqrecError
from seqrec.serve.settings import ServeSettings

EARLY_DEATH_S = 15.0  # a worker that dies sooner than this after starting counts as a failed start
MAX_FAILED_STARTS = 3


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT, not yet listening."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SeqrecError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port") from None
    return sock


def supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def run_workers(settings: ServeSettings, log_level: str = "info") -> int:
    """Start ``settings.workers`` workers (their settings are already in the environment) and
    supervise them until a stop signal; returns the exit status. The caller has checked the port."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each: no forked torch threads
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def start() -> tuple[BaseProcess, float]:
        proc = ctx.Process(target=_worker_main, args=(log_level,), name="seqrec-serve-worker")
        proc.start()
        return proc, time.monotonic()

    workers = [start() for _ in range(settings.workers)]
    failed = 0
    status = 0
    while not stop.wait(0.5):
        for i, (proc, started) in enumerate(workers):
            if proc.is_alive():
                continue
            failed = failed + 1 if time.monotonic() - started < EARLY_DEATH_S else 0
            if failed >= MAX_FAILED_STARTS:
                print(f"seqrec: error: workers keep exiting at start-up (last exit code {proc.exitcode}); "
                      "see the lines above", file=sys.stderr, flush=True)
                stop.set()
                status = 2
                break
            print(f"seqrec serve: worker {proc.pid} exited with code {proc.exitcode}; starting another",
                  file=sys.stderr, flush=True)
            workers[i] = start()
    for proc, _ in workers:
        if proc.is_alive():
            proc.terminate()  # SIGTERM: uvicorn finishes the requests in flight, then exits
    for proc, _ in workers:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return status


def _worker_main(log_level: str) -> None:
    """One worker: load the model and the store, bind the port (SO_REUSEPORT), serve."""
    import uvicorn

    from seqrec.serve.cli import worker_app
    from seqrec.serve.settings import settings_from_environment

    settings = settings_from_environment()
    app = worker_app(settings)
    sock = reuseport_socket(settings.host, settings.port)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, access_log=settings.access_log,
                            log_level=log_level)
    uvicorn.Server(config).run(sockets=[sock])
