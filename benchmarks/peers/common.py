"""What every worker shares: arguments, thread setup, and the append-only progress file.

Standard library only at import time (torch is imported inside ``start``, after the thread
variables are set): it is imported by workers in three different virtual environments.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

VALID_TARGET = 0.030  # time-to-quality threshold on validation NDCG@10


def parse(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, required=True, help="prepared data folder (from run.py)")
    p.add_argument("--out", type=Path, required=True, help="progress file: one JSON line per event")
    p.add_argument("--train-seconds", type=float, required=True, help="stop training after this much")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", choices=("true", "false"), default="true")
    p.add_argument("--bf16", action="store_true", help="seqrec only: bfloat16 autocast of the encoder")
    p.add_argument("--ce-bf16-grads", action="store_true",
                   help="seqrec only: the catalog softmax's gradient matmuls on bf16 operands")
    return p.parse_args()


def set_threads(n: int) -> None:
    """Call before torch is imported; run.py also sets these in the worker's environment."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def start(description: str) -> tuple[argparse.Namespace, Progress]:
    """What every worker does first: arguments, threads (environment, then torch), the progress file."""
    args = parse(description)
    set_threads(args.threads)
    import torch  # every worker's environment has torch; imported only after the thread variables

    torch.set_num_threads(args.threads)
    return args, Progress(args.out)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Progress:
    """Appends one flushed JSON line per event, so a killed worker leaves everything up to the kill."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        self.t0 = time.perf_counter()

    def start_training(self) -> None:
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def room_for_epoch(self, budget: float, last_epoch: float) -> bool:
        """Whether another epoch as long as the last one ends within the training budget, so that a
        slow tool stops in time for its test ranking instead of being killed at the cap without one."""
        return self.elapsed() + last_epoch <= budget

    def write(self, kind: str, **fields: Any) -> None:
        row = {"kind": kind, **fields, "elapsed": self.elapsed(), "peak_rss_mb": peak_rss_mb()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
