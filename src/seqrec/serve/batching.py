"""Micro-batching: requests that arrive while a worker is busy share its next call.

No timer and no waiting: one worker thread takes whatever is queued (up to ``max_batch``)
the moment it is free. A lone request is served at once; under load the batches grow, and
the fixed cost of a call (a model forward pass, an fsync) is paid once per batch instead of
once per request. One scoring worker also keeps torch on one core, leaving the other to HTTP.

The batch function returns one result per request, in order; a result that is an exception
fails only its own request. If the function raises, every request of the batch fails.

A request whose future was cancelled before the worker took it (its client went away) is dropped
unprocessed: ``processed`` counts the requests handed to the function, ``dropped`` those skipped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")

_STOP = object()


class MicroBatcher(Generic[Req, Res]):
    def __init__(self, fn: Callable[[list[Req]], list[Res | Exception]], max_batch: int = 64,
                 on_batch: Callable[[int], None] | None = None, name: str = "seqrec-scorer") -> None:
        self._fn = fn
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        # Written by the worker thread only; other threads just read them.
        self.processed = 0  # requests handed to the batch function
        self.dropped = 0  # requests cancelled before the worker took them, never processed
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, request: Req) -> Future[Res]:
        if self._closed:
            raise RuntimeError("the scorer is shut down")
        future: Future[Res] = Future()
        self._queue.put((request, future))
        return future

    def __call__(self, request: Req, timeout: float = 30.0) -> Res:
        return self.submit(request).result(timeout)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join(timeout=10.0)

    def _take(self) -> tuple[list[tuple[Req, Future[Res]]], bool]:
        """Block for one request, then drain what else is already queued. Returns (batch, stop)."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                self._queue.put(_STOP)  # finish this batch first, stop on the next turn
                break
            batch.append(nxt)
        return batch, False  # type: ignore[return-value]

    def _run(self) -> None:
        while True:
            taken, stop = self._take()
            if stop:
                return
            # A caller that gave up (a client that disconnected) cancelled its future: skip it.
            # Setting a result on a cancelled future would raise and kill this thread.
            batch = [(req, fut) for req, fut in taken if fut.set_running_or_notify_cancel()]
            self.dropped += len(taken) - len(batch)
            self.processed += len(batch)
            if not batch:
                continue
            if self._on_batch is not None:
                self._on_batch(len(batch))
            try:
                results = self._fn([req for req, _ in batch])
            except Exception as exc:  # handed to every waiting request; the worker lives on
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), res in zip(batch, results, strict=True):
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
