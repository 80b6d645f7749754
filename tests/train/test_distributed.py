"""Data-parallel and sharded training under torchrun (`seqrec train --nproc N`), gloo on the CPU.

Each launch starts real processes (one thread each) on tiny data: the same run on 1 and 2 processes,
a run killed with every rank and resumed, two "nodes" on 127.0.0.1, a rank that dies, and launches
that must fail with one line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from seqrec.cli import main
from seqrec.data.batch import TrainBatches
from seqrec.data.sequences import Sequences
from seqrec.datasets.synthetic import markov_log
from seqrec.errors import SeqrecError
from seqrec.train.distributed import Launch, RankBatches, Ranks, reach_endpoint, torchrun_argv, worker_argv

# dropout 0 and the full softmax: a step is a deterministic function of its global batch. Bucketing
# (the default) stays on, so that targets per rank differ and the loss weighting is exercised.
ARGS = ["--max-len", "10", "--dropout", "0", "--loss", "ce", "--seed", "1", "--patience", "20", "--device", "cpu",
        "--quiet", "--user-col", "user", "--item-col", "item", "--time-col", "time"]
GRU = ["--model", "gru4rec", "--dim", "16", "--hidden", "16", "--lr", "0.005"]
# the attention's key bias (and the part of the key projection that acts like one) has a zero gradient in
# exact arithmetic; Adam turns its rounding noise into steps of up to lr, so lr stays low enough for
# those to stay under the tolerance
SASREC = ["--model", "sasrec", "--dim", "16", "--n-heads", "1", "--lr", "0.0005"]
LIMIT = 240  # seconds a launch may take on a loaded 2-core machine


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Users of 3 to 24 events: batches (and each rank's share of one) hold different numbers of targets."""
    path = tmp_path_factory.mktemp("dist") / "log.csv"
    frame = markov_log(n_users=90, n_items=40, length=24, seed=3)
    keep = 3 + np.random.default_rng(0).integers(0, 22, size=frame["user"].nunique())
    frame = frame[frame.groupby("user").cumcount().to_numpy() < keep[frame["user"].factorize()[0]]]
    frame.to_csv(path, index=False)
    return path


def _start(log: Path, out: Path, *extra: str, base: list[str] = ARGS) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "seqrec", "train", "--data", str(log), *base, "--out", str(out),
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _train(log: Path, out: Path, *extra: str, base: list[str] = ARGS) -> str:
    proc = _start(log, out, *extra, base=base)
    _, err = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 0, err
    return err


def _history(out: Path) -> list[dict[str, float]]:
    info = json.loads((out / "info.json").read_text())
    return [{k: v for k, v in row.items() if k not in ("seconds", "eval_seconds")} for row in info["history"]]


def _close(a: list[dict[str, float]], b: list[dict[str, float]], tol: float) -> None:
    assert len(a) == len(b) > 0
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert row_a[key] == pytest.approx(row_b[key], abs=tol), (key, row_a, row_b)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _rank_of(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# ---- the batches each rank takes -----------------------------------------------------------------


@pytest.mark.parametrize("bucket", [False, True])
def test_ranks_share_each_global_batch(bucket: bool) -> None:
    seqs = Sequences.from_lists([list(range(1, 2 + (u * 7) % 13)) for u in range(37)])
    one = TrainBatches(seqs, 4, 6, bucket=bucket)
    shares = [RankBatches(seqs, 4, 3, True, bucket, Ranks(r, 2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1])
    gen = [torch.Generator().manual_seed(5) for _ in range(3)]
    whole = [rows for rows in one._batches(gen[0]) if len(rows) >= 2]  # a last batch of 1 window is skipped
    parts = [s._batches(g) for s, g in zip(shares, gen[1:], strict=True)]
    assert len(parts[0]) == len(parts[1]) == len(shares[0])
    for rows, a, b in zip(whole, *parts, strict=True):
        assert not set(a.tolist()) & set(b.tolist())  # disjoint
        assert sorted(a.tolist() + b.tolist()) == sorted(rows.tolist())  # together: the 1-process batch


def test_a_global_batch_smaller_than_the_ranks_is_skipped() -> None:
    seqs = Sequences.from_lists([[1, 2, 3]] * 13)  # 13 windows: 2 batches of 2 x 3 = 6, then 1 (< 3 ranks)
    shares = [RankBatches(seqs, 4, 2, True, False, Ranks(r, 3)) for r in range(3)]
    assert [len(s) for s in shares] == [2, 2, 2]
    gen = torch.Generator().manual_seed(0)
    assert [len(b) for b in shares[2]._batches(gen)] == [2, 2]


def test_launch_options_become_torchrun_options() -> None:
    argv = ["train", "--nproc", "2", "--data", "x.csv", "--nnodes=2", "--node-rank", "1",
            "--rdzv-endpoint", "h:29400", "--rdzv-timeout", "9", "--epochs", "3"]
    assert worker_argv(argv) == ["train", "--data", "x.csv", "--epochs", "3"]
    cmd = torchrun_argv(Launch(2, 2, 1, "h:29400", 9), argv)
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "h:29400"
    assert cmd[cmd.index("--rdzv-backend") + 1] == "c10d"
    assert cmd[cmd.index("-m"):] == ["-m", "seqrec", *worker_argv(argv)]
    assert "--standalone" in torchrun_argv(Launch(2), ["train"])


# ---- real launches ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(log: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GRU4Rec in one process, batch 16."""
    out = tmp_path_factory.mktemp("single") / "run"
    _train(log, out, *GRU, "--epochs", "3", "--batch-size", "16")
    return out


@pytest.fixture(scope="module")
def two(log: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GRU4Rec in two processes (DDP), batch 8 each."""
    out = tmp_path_factory.mktemp("two") / "run"
    _train(log, out, *GRU, "--epochs", "3", "--batch-size", "8", "--nproc", "2")
    return out


def _same_weights(a: Path, b: Path, tol: float) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= tol, worst


def test_two_processes_equal_one_with_the_global_batch(single: Path, two: Path) -> None:
    _close(_history(two), _history(single), 1e-5)
    _same_weights(two, single, 1e-5)
    assert json.loads((two / "info.json").read_text())["history"][0]["loss"] > 0


def test_sharded_equals_one_process(log: Path, tmp_path: Path) -> None:
    """SASRec under FSDP2 (each attention block its own shard unit) against one process."""
    _train(log, tmp_path / "one", *SASREC, "--epochs", "2", "--batch-size", "16")
    _train(log, tmp_path / "fsdp", *SASREC, "--epochs", "2", "--batch-size", "8", "--nproc", "2", "--shard", "full")
    _close(_history(tmp_path / "fsdp"), _history(tmp_path / "one"), 1e-5)
    _same_weights(tmp_path / "fsdp", tmp_path / "one", 1e-5)


def test_two_nodes_on_one_machine(log: Path, two: Path, tmp_path: Path) -> None:
    """Two torchrun launches, one process each, meeting at a c10d rendezvous on 127.0.0.1."""
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [_start(log, tmp_path / "run", *GRU, "--epochs", "3", "--batch-size", "8", "--nproc", "1", "--nnodes", "2",
                    "--node-rank", str(r), "--rdzv-endpoint", endpoint, "--rdzv-timeout", "120") for r in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=LIMIT)
        assert node.returncode == 0, err
    _close(_history(tmp_path / "run"), _history(two), 1e-6)  # the same global batches as two local processes


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lstm", "sasrec", "bert4rec", "hstu", "popular"])
def test_every_model_trains_on_two_processes(log: Path, tmp_path: Path, model: str) -> None:
    if model == "popular":
        counted = [a for a in ARGS if a not in ("--dropout", "0")]  # popular has no dropout
        _train(log, tmp_path / "run", "--model", model, "--nproc", "2", base=counted)
        return
    _train(log, tmp_path / "run", "--model", model, "--dim", "16", "--epochs", "2", "--batch-size", "8",
           "--nproc", "2")
    assert len(_history(tmp_path / "run")) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("model", [GRU, [*SASREC, "--shard", "full"]], ids=["ddp", "fsdp"])
def test_resume_after_every_rank_was_killed(log: Path, tmp_path: Path, model: list[str]) -> None:
    # enough epochs that a loaded machine cannot finish the run between the first checkpoint and the kill
    extra = [*model, "--epochs", "20", "--patience", "100", "--batch-size", "8", "--nproc", "2"]
    _train(log, tmp_path / "clean", *extra)
    victim = _start(log, tmp_path / "killed", *extra)
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    deadline = time.time() + LIMIT
    while not state.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.02)
    assert state.exists(), "no checkpoint was written"
    ranks = _children(victim.pid)
    for pid in ranks:  # freeze the ranks where they are; they run on only after their launcher is gone
        os.kill(pid, signal.SIGSTOP)
    assert len(ranks) == 2
    os.killpg(victim.pid, signal.SIGKILL)  # the launcher's group: torchrun put each rank in a session of its own
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    for pid in ranks:
        os.kill(pid, signal.SIGCONT)
    deadline = time.time() + 30
    while any(_alive(pid) for pid in ranks) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in ranks), "a rank outlived its launcher"
    assert not (tmp_path / "killed" / "info.json").exists(), "training finished before it could be killed"
    err = _train(log, tmp_path / "killed", *extra, "--resume")
    assert "Traceback" not in err
    _close(_history(tmp_path / "killed"), _history(tmp_path / "clean"), 1e-6)


def test_a_dying_rank_stops_the_others(log: Path, tmp_path: Path) -> None:
    proc = _start(log, tmp_path / "run", *GRU, "--epochs", "200", "--patience", "200", "--batch-size", "8",
                  "--nproc", "2")
    state = tmp_path / "run" / "checkpoint" / "state.json"
    deadline = time.time() + LIMIT
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert state.exists(), proc.stderr.read() if proc.stderr else ""
    workers = {_rank_of(pid): pid for pid in _children(proc.pid)}
    assert set(workers) == {0, 1}
    os.kill(workers[1], signal.SIGKILL)
    t0 = time.time()
    _, err = proc.communicate(timeout=120)
    assert time.time() - t0 < 60
    assert proc.returncode == 1
    lines = [line for line in err.splitlines() if line.startswith("seqrec: error:")]
    assert len(lines) == 1 and "rank 1" in lines[0] and "SIGKILL" in lines[0] and "--resume" in lines[0], err
    assert not _alive(workers[0])
    assert (tmp_path / "run" / "checkpoint" / "state.json").exists()  # what --resume continues from


@pytest.mark.parametrize(("extra", "message"), [
    (["--nproc", "100000"], "holds at most"),
    (["--nproc", "2", "--dp-epsilon", "5"], "DP-SGD trains in one process"),
    (["--nnodes", "2"], "needs --rdzv-endpoint"),
    (["--nnodes", "2", "--rdzv-endpoint", "nohost"], "is not HOST:PORT"),
])
def test_launches_this_machine_cannot_make(log: Path, tmp_path: Path, extra: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--data", str(log), *ARGS, *GRU, "--out", str(tmp_path / "run"), "--epochs", "1", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and message in err, err
    assert not (tmp_path / "run").exists()


def test_bad_input_in_the_ranks_is_one_line(tmp_path: Path) -> None:
    proc = _start(tmp_path / "missing.csv", tmp_path / "run", *GRU, "--nproc", "2")
    _, err = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0 and "missing.csv" in err, err


def test_an_unreachable_endpoint_of_another_machine_fails_within_the_timeout() -> None:
    t0 = time.time()
    with pytest.raises(SeqrecError, match="not reachable within 1 s"):
        reach_endpoint("192.0.2.1:9", 1.0)  # TEST-NET-1: no host answers there
    assert time.time() - t0 < 10


def test_unreachable_rendezvous_is_one_line_within_the_timeout(log: Path, tmp_path: Path) -> None:
    """Nobody joins this node's rendezvous: torchrun gives up after --rdzv-timeout."""
    t0 = time.time()
    proc = _start(log, tmp_path / "run", *GRU, "--epochs", "1", "--nnodes", "2", "--rdzv-endpoint",
                  f"127.0.0.1:{_free_port()}", "--rdzv-timeout", "3")
    _, err = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0 and "did not all join within 3 s" in err, err
    assert time.time() - t0 < LIMIT
