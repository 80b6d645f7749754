"""Thread-level parallelism on CPU: several Python threads, each running torch ops on one thread.

For many small ops (cache-sized matmuls, row reductions over one tile) splitting every op across
the intra-op threads costs a fork/join per op; giving each thread whole units of work instead
runs the ops back to back (torch releases the GIL inside them). Used by the full-ranking
evaluation (a batch of users per job) and the fused cross-entropy (a share of the catalog tiles
per job): :func:`map_on_threads` inside :func:`single_threaded_ops`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from queue import Empty, SimpleQueue
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (size, pid, pool): made on first use, grown on demand
_POOL_LOCK = threading.Lock()


@contextmanager
def single_threaded_ops() -> Iterator[None]:
    """torch ops on one thread each while the block runs (the setting is process-wide); the
    caller's thread count is restored even if the block raises."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def map_on_threads(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]`` on up to ``workers`` threads of a process-wide pool, results in order.

    Each thread takes the next item as it frees up. Grad mode is per thread in torch, so the caller's
    is carried into the threads (an autograd Function's forward runs with it off; an evaluation under
    ``no_grad`` stays so). After an error no new item is started; the first error is re-raised once
    every thread has stopped. ``fn`` must not call this itself: it would wait for busy pool threads.
    """
    n = min(workers, len(items))
    if n <= 1:
        return [fn(x) for x in items]
    grad = torch.is_grad_enabled()
    results: list[R | None] = [None] * len(items)
    todo: SimpleQueue[int] = SimpleQueue()
    for i in range(len(items)):
        todo.put(i)
    failed = threading.Event()

    def drain() -> None:
        with torch.set_grad_enabled(grad):
            while not failed.is_set():
                try:
                    i = todo.get_nowait()
                except Empty:
                    return
                try:
                    results[i] = fn(items[i])
                except BaseException:
                    failed.set()
                    raise

    pool = _pool(n)
    futures = [pool.submit(drain) for _ in range(n)]
    wait(futures)
    for f in futures:
        f.result()  # re-raises the first error
    return results  # type: ignore[return-value]  # every slot was filled: no job failed


def _pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool, with at least ``workers`` threads; a new one after a fork (threads do not survive it)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] < workers or _POOL[1] != os.getpid():
            if _POOL is not None and _POOL[1] == os.getpid():
                _POOL[2].shutdown(wait=False)
            _POOL = (workers, os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="seqrec"))
        return _POOL[2]
