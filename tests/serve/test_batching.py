"""MicroBatcher: requests queued while the worker is busy share one call; errors reach every caller."""

from __future__ import annotations

import threading

import pytest

from seqrec.serve.batching import MicroBatcher


def test_requests_queued_during_a_call_share_the_next_one() -> None:
    gate, started = threading.Event(), threading.Event()
    sizes: list[int] = []

    def double(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        started.set()
        gate.wait(5)
        return [2 * x for x in batch]

    batcher = MicroBatcher(double, max_batch=4)
    first = batcher.submit(0)
    assert started.wait(5)  # the worker is inside its first call now
    later = [batcher.submit(i) for i in range(1, 10)]
    gate.set()
    assert first.result(5) == 0 and [f.result(5) for f in later] == [2 * i for i in range(1, 10)]
    assert sizes == [1, 4, 4, 1]  # 9 waiting requests in batches of at most 4
    batcher.close()


def test_an_error_reaches_every_request_of_the_batch_and_the_worker_lives_on() -> None:
    def picky(batch: list[int]) -> list[int]:
        if -1 in batch:
            raise ValueError("no negatives")
        return batch

    batcher = MicroBatcher(picky)
    with pytest.raises(ValueError, match="no negatives"):
        batcher(-1)
    assert batcher(3) == 3
    batcher.close()
    with pytest.raises(RuntimeError, match="shut down"):
        batcher.submit(1)


def test_a_cancelled_request_is_skipped_and_the_worker_survives() -> None:
    gate, started = threading.Event(), threading.Event()
    seen: list[int] = []

    def record(batch: list[int]) -> list[int]:
        started.set()
        gate.wait(5)
        seen.extend(batch)
        return batch

    batcher = MicroBatcher(record)
    first = batcher.submit(1)
    assert started.wait(5)
    doomed = batcher.submit(2)
    assert doomed.cancel()  # the client went away before the worker took it
    gate.set()
    assert first.result(5) == 1 and batcher(3) == 3
    assert seen == [1, 3]
    batcher.close()
