"""The benchmark scripts' shared argument checks: bad input is one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("script", ["run.py", "tune.py"])
@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_thread_count_is_one_line(script: str, value: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--threads", value], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"--threads: must be a positive whole number of threads, got '{value}'" in done.stderr.splitlines()[-1]
