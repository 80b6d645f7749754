"""Run `seqrec train` as a child process for a benchmark and read what it wrote: shared by the benchmark
scripts that compare trainings run through the command line (user features, held-out items, transfer)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS = ("NDCG@10", "HR@10", "NDCG@20", "HR@20")


@dataclass
class TrainRun:
    command: list[str]
    seconds: float
    info: dict[str, Any]  # the artifact's info.json
    stderr: str

    def summary(self) -> dict[str, Any]:
        """The fields every benchmark reports for a run."""
        return {"command": " ".join(self.command), "seconds": round(self.seconds, 1),
                "epochs_run": len(self.info.get("history", [])), "stopped_by_time": "max_seconds" in self.stderr,
                "best_epoch": self.info.get("best_epoch"), "valid_best": self.info.get("best_valid"),
                "test": {k: self.info.get("test_metrics", {}).get(k) for k in METRICS}}


def train(command: list[str], out: Path, threads: int, label: str) -> TrainRun:
    """Run ``command`` (a `seqrec train ... --out OUT` line) with ``threads`` OpenMP threads; on failure print
    the end of its stderr and stop the benchmark with ``label``."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"{label}: exit {proc.returncode}")
    return TrainRun(command, seconds, json.loads((out / "info.json").read_text()), proc.stderr)


def add_run_args(p: argparse.ArgumentParser, epochs: int, patience: int, max_seconds: float, work: str,
                 out: Path) -> None:
    """The options every such benchmark takes."""
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--patience", type=int, default=patience)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=max_seconds, help="cap of each training run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", default="", help="what else ran on the machine")
    p.add_argument("--work", type=Path, default=Path(work))
    p.add_argument("--out", type=Path, default=out)
