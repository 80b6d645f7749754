"""`seqrec train --resume` after a kill -9 mid-training ends with the same metrics as a clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqrec.datasets.synthetic import markov_log

ARGS = ["--model", "sasrec", "--epochs", "6", "--dim", "16", "--max-len", "12", "--batch-size", "16",
        "--lr", "0.005", "--patience", "10", "--seed", "5", "--quiet", "--device", "cpu",
        "--user-col", "user", "--item-col", "item", "--time-col", "time"]


def _train(log: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "seqrec.cli", "train", "--data", str(log), *ARGS,
                             "--out", str(out), *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _history(out: Path) -> list[dict[str, float]]:
    info = json.loads((out / "info.json").read_text())
    return [{k: v for k, v in row.items() if k not in ("seconds", "eval_seconds")} for row in info["history"]]


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    markov_log(n_users=400, n_items=80, length=30, seed=3).to_csv(log, index=False)
    clean = _train(log, tmp_path / "clean")
    assert clean.wait(timeout=300) == 0, clean.stderr.read() if clean.stderr else ""

    victim = _train(log, tmp_path / "killed")
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert state.exists(), "no checkpoint was written"
    time.sleep(0.3)  # now inside the next epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (tmp_path / "killed" / "info.json").exists()

    resumed = _train(log, tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read() if resumed.stderr else ""
    assert _history(tmp_path / "killed") == _history(tmp_path / "clean")
