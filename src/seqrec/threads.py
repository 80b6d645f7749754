"""Thread-level parallelism on CPU: several Python threads, each running torch ops on one thread.

For many small ops (cache-sized matmuls, row reductions over one tile) splitting every op across
the intra-op threads costs a fork/join per op; giving each thread whole units of work instead
runs the ops back to back (torch releases the GIL inside them). Used by the full-ranking
evaluation (a batch of users per thread) and the fused cross-entropy (catalog tiles per thread).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


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
