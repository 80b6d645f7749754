"""The shared thread helper: order, grad mode carried into the workers, errors, thread count."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from seqrec import threads
from seqrec.threads import map_on_threads, single_threaded_ops


def test_results_come_back_in_order_whatever_finishes_first() -> None:
    def slow_first(x: int) -> int:
        time.sleep(0.02 if x == 0 else 0.0)
        return x * x

    assert map_on_threads(slow_first, list(range(9)), workers=3) == [x * x for x in range(9)]


@pytest.mark.parametrize("grad", [True, False])
def test_the_callers_grad_mode_is_carried_into_the_workers(grad: bool) -> None:
    with torch.set_grad_enabled(grad):
        seen = map_on_threads(lambda _: torch.is_grad_enabled(), list(range(4)), workers=2)
    assert seen == [grad] * 4


def test_no_more_threads_than_asked_work_at_once() -> None:
    with threads._POOL_LOCK:
        threads._pool(4)  # a larger pool already exists
    lock, running, peak = threading.Lock(), [0], [0]

    def job(_: int) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1

    map_on_threads(job, list(range(12)), workers=2)
    assert peak[0] == 2


def test_the_first_error_is_raised_and_no_new_job_starts_after_it() -> None:
    started: list[int] = []

    def job(x: int) -> int:
        started.append(x)
        if x == 1:
            raise ValueError("job 1 failed")
        time.sleep(0.01)
        return x

    with pytest.raises(ValueError, match="job 1 failed"):
        map_on_threads(job, list(range(50)), workers=2)
    assert len(started) < 50


def test_one_worker_or_one_item_runs_on_the_callers_thread() -> None:
    me = threading.get_ident()
    assert map_on_threads(lambda _: threading.get_ident(), [0, 1], workers=1) == [me, me]
    assert map_on_threads(lambda _: threading.get_ident(), [0], workers=4) == [me]


def test_callers_on_several_threads_with_different_worker_counts_all_get_their_results() -> None:
    errors: list[BaseException] = []

    def caller(seed: int) -> None:
        try:
            for k in range(30):
                workers = 2 + (seed + k) % 5  # the pool grows while the other caller is using it
                items = list(range(seed, seed + 7))
                assert map_on_threads(lambda x: x * 2, items, workers=workers) == [x * 2 for x in items]
        except BaseException as exc:  # reported below, on the test thread
            errors.append(exc)

    callers = [threading.Thread(target=caller, args=(s,)) for s in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert errors == []


def test_a_caller_interrupted_while_waiting_returns_only_when_no_job_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    lock, running, started = threading.Lock(), [0], [0]

    def job(_: int) -> None:
        with lock:
            running[0] += 1
            started[0] += 1
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    real_wait, calls = threads.wait, [0]

    def interrupted_wait(futures: list[object]) -> object:
        calls[0] += 1
        if calls[0] == 1:
            time.sleep(0.01)
            raise KeyboardInterrupt
        return real_wait(futures)

    monkeypatch.setattr(threads, "wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        map_on_threads(job, list(range(40)), workers=2)
    assert running[0] == 0 and started[0] < 40


def test_nested_single_threaded_ops_restore_at_the_outermost_exit() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with single_threaded_ops():
            with single_threaded_ops():
                pass
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_single_threaded_ops_restores_the_thread_count_even_on_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), single_threaded_ops():
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_working_pool() -> None:
    map_on_threads(time.sleep, [0.05, 0.05], workers=2)  # both of the parent's threads start, then idle
    time.sleep(0.05)
    pid = os.fork()
    if pid == 0:  # child: the parent's threads are gone; a stale pool would hang here
        ok = map_on_threads(lambda x: x + 1, [0, 1, 2], workers=2) == [1, 2, 3]
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child's map_on_threads did not finish")
