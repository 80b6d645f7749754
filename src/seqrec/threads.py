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

_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (size, pool): made on first use, grown on demand
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads do not exist there, and a lock may be held."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


@contextmanager
def single_threaded_ops() -> Iterator[None]:
    """torch ops on one thread each while the block runs; the caller's thread count is restored even
    if the block raises. Nesting is fine. The setting is process-wide and torch 2.13 does not
    propagate it consistently between threads (lowering it is seen by all, raising it not always), so
    it is meant for one training or evaluation at a time, which is how seqrec uses it."""
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
    ``no_grad`` stays so). After an error no new item is started, and whatever the error (a job's, or
    one raised in the caller while it waits, such as KeyboardInterrupt), this returns only after every
    thread has stopped: none goes on writing into the caller's buffers. ``fn`` must not call this
    itself: it would wait for busy pool threads.
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

    with _POOL_LOCK:  # a pool is only replaced (grown) under the lock: submit before anyone can
        futures = [_pool(n).submit(drain) for _ in range(n)]
    try:
        wait(futures)
    except BaseException:
        failed.set()
        wait(futures)
        raise
    for f in futures:
        f.result()  # re-raises the first error
    return results  # type: ignore[return-value]  # every slot was filled: no job failed


def _pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool with at least ``workers`` threads; call with ``_POOL_LOCK`` held. A replaced
    pool finishes the jobs already queued on it."""
    global _POOL
    if _POOL is None or _POOL[0] < workers:
        if _POOL is not None:
            _POOL[1].shutdown(wait=False)
        _POOL = (workers, ThreadPoolExecutor(workers, thread_name_prefix="seqrec"))
    return _POOL[1]
