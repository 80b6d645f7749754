"""Preprocessing at scale, on a synthetic log (seeded): users uniform, items Zipf-distributed, times uniform.

In memory (the default): a pandas frame of ROWS rows through cleaning, k-core, id mapping, the
leave-one-out split and the training windows, with seconds per stage and peak memory.

    python benchmarks/scale.py --rows 10000000

Out of core (``--prepare``): the log is written as a directory of Parquet files (one per "day", chunk by
chunk, so generating stays small) under --scratch, then ``seqrec prepare`` runs on it in a child process
(its wall time and peak RSS are the child's), then the path of ``seqrec train --prepared`` (load_data,
split_data, Recommender.fit; without the popular baseline the command evaluates first) in another child,
timed from its start to the first optimizer step (a global optimizer hook stops it there). ``--baseline`` also
reads the same directory with pandas and builds the Dataset in memory (this process), timing it and
checking that both give the same users, items and sequences.

    python benchmarks/scale.py --rows 10000000 --prepare --baseline
    python benchmarks/scale.py --rows 100000000 --users 2000000 --items 1000000 --prepare
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import seqrec
from seqrec.data.batch import TrainBatches
from seqrec.data.config import DataConfig, load_data, split_data

ROOT = Path(__file__).resolve().parent
FILE_ROWS = 1_000_000  # rows per generated Parquet file ("day")
T0 = 1_500_000_000
DAY = 86_400

FIRST_STEP = """
import json, sys, time
start, prepared, model, loss = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
import torch
torch.set_num_threads(2)
from torch.optim.optimizer import register_optimizer_step_post_hook
from seqrec.data.config import DataConfig, load_data, split_data
from seqrec.recommender import Recommender
from seqrec.losses import LossConfig
from seqrec.train.config import TrainConfig

marks = {"imports": time.time() - start}

class FirstStep(Exception):
    pass

def stop(optimizer, args, kwargs):
    marks["first_step"] = time.time() - start
    raise FirstStep

register_optimizer_step_post_hook(stop)
config = DataConfig(prepared=prepared)
data = load_data(config)
marks["load"] = time.time() - start
split = split_data(config, data)
marks["split"] = time.time() - start
def first_forward(module, inputs):
    marks.setdefault("first_forward", time.time() - start)  # the batches are built by then

rec = Recommender(model, TrainConfig(epochs=1, loss=LossConfig(loss, n_negatives=1024)))
rec.prepare_model = lambda m: m.register_forward_pre_hook(first_forward)
try:
    rec.fit(data, split, progress=False)
except FirstStep:
    print("MARKS " + json.dumps(marks), flush=True)
    sys.exit(0)
sys.exit(3)
"""


def generate_frame(rows: int, users: int, items: int, seed: int, day: int | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lo = T0 if day is None else T0 + day * DAY
    hi = T0 + 100_000_000 if day is None else lo + DAY
    return pd.DataFrame({
        "user_id": rng.integers(0, users, rows),
        "item_id": (rng.zipf(1.3, rows) % items).astype(np.int64),
        "timestamp": rng.integers(lo, hi, rows),
    })


def generate_dir(folder: Path, rows: int, users: int, items: int) -> float:
    """One Parquet file per FILE_ROWS rows; returns the seconds it took (0 when already there)."""
    marker = folder.with_name(folder.name + ".complete")
    if marker.exists() and marker.read_text() == f"{rows} {users} {items}":
        return 0.0
    shutil.rmtree(folder, ignore_errors=True)
    marker.unlink(missing_ok=True)
    folder.mkdir(parents=True)
    t = time.perf_counter()
    for day, start in enumerate(range(0, rows, FILE_ROWS)):
        chunk = generate_frame(min(FILE_ROWS, rows - start), users, items, seed=day, day=day)
        pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), folder / f"day-{day:04d}.parquet")
    marker.write_text(f"{rows} {users} {items}")
    return time.perf_counter() - t


def child_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def run_prepare(data: Path, out: Path, core: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "seqrec.cli", "prepare", "--data", str(data), "--out", str(out), "--force",
           "--user-core", str(core), "--item-core", str(core)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}): {proc.stderr.strip()}")
    found = re.search(r" in ([0-9.]+) s$", proc.stdout.strip().splitlines()[0])
    return {"seconds": seconds, "seconds_in_command": float(found.group(1)) if found else None,
            "peak_rss_mb": child_rss_mb(), "output": proc.stdout.strip().splitlines(),
            "command": shlex.join(["seqrec", *cmd[3:]])}


CLI_FIRST_STEP = """
import sys, time
import torch
torch.set_num_threads(2)
from torch.optim.optimizer import register_optimizer_step_post_hook
from seqrec.cli import main

class FirstStep(Exception):
    pass

def stop(optimizer, args, kwargs):
    print(f"FIRST_STEP {time.time():.6f}", flush=True)
    raise FirstStep

register_optimizer_step_post_hook(stop)
try:
    main(sys.argv[1:])
except FirstStep:
    sys.exit(0)
sys.exit(3)
"""


def run_cli_first_step(prepared: Path, run_dir: Path, model: str, loss: str) -> dict[str, Any]:
    """`seqrec train --prepared` itself in a child, from its start to the first optimizer step."""
    args = ["train", "--prepared", str(prepared), "--model", model, "--epochs", "1", "--out", str(run_dir),
            "--force", "--quiet", "--loss", loss, *(["--negatives", "1024"] if loss == "sampled" else [])]
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", CLI_FIRST_STEP, *args], capture_output=True, text=True,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("FIRST_STEP ")]
    shutil.rmtree(run_dir, ignore_errors=True)
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"seqrec train --prepared did not reach a step ({proc.returncode}): "
                         f"{proc.stderr.strip()[-2000:]}")
    return {"seconds_to_first_step": float(lines[0].split()[1]) - start, "command": shlex.join(["seqrec", *args])}


def run_first_step(prepared: Path, model: str, loss: str) -> dict[str, Any]:
    """`seqrec train --prepared`'s path (load, split, Recommender.fit) in a child, seconds from its start."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", FIRST_STEP, f"{start:.6f}", str(prepared), model, loss],
                          capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("MARKS ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"training did not reach a step ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    marks = json.loads(lines[0][len("MARKS "):])
    return {"seconds_since_start": marks, "peak_rss_mb_max_child": child_rss_mb(), "model": model,
            "loss": loss if loss != "sampled" else "sampled softmax, 1024 shared negatives"}


def library_stages(prepared: Path, computed_split: bool) -> dict[str, float]:
    """The same path as `train --prepared` up to the batches, stage by stage, in this process."""
    stages: dict[str, float] = {}
    t = time.perf_counter()
    data = load_data(DataConfig(prepared=str(prepared)))
    stages["load_mapped"] = time.perf_counter() - t
    t = time.perf_counter()
    split = split_data(DataConfig(prepared=str(prepared)), data)
    stages["leave_one_out_mapped"] = time.perf_counter() - t
    if computed_split:
        t = time.perf_counter()
        seqrec.leave_one_out(data)
        stages["leave_one_out_computed"] = time.perf_counter() - t
    t = time.perf_counter()
    TrainBatches(split.train, 50, 128)
    stages["training_windows"] = time.perf_counter() - t
    return stages


def baseline(folder: Path, prepared_dir: Path, core: int) -> dict[str, Any]:
    """The in-memory path on the same files, and whether it equals the prepared dataset."""
    from seqrec.data import prepared as prep

    t = time.perf_counter()
    files = sorted(folder.glob("*.parquet"))
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    frame = frame.rename(columns={"user_id": "user", "item_id": "item", "timestamp": "time"})
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    data = seqrec.build_dataset(frame, seqrec.PreprocessOptions(user_core=core, item_core=core))
    build_s = time.perf_counter() - t
    del frame
    got = prep.load(prepared_dir)
    equal = (np.array_equal(data.users.external, got.users.external)
             and np.array_equal(data.items.external, got.items.external)
             and np.array_equal(data.sequences.offsets, got.sequences.offsets)
             and np.array_equal(data.sequences.items, got.sequences.items)
             and data.sequences.times is not None and got.sequences.times is not None
             and np.array_equal(data.sequences.times, got.sequences.times))
    return {"read_parquet_seconds": read_s, "clean_kcore_map_sort_seconds": build_s, "equal_to_prepared": equal,
            "peak_rss_mb_this_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def in_memory(args: argparse.Namespace) -> dict[str, Any]:
    stages: dict[str, float] = {}
    t = time.perf_counter()
    frame = generate_frame(args.rows, args.users, args.items, seed=0).rename(
        columns={"user_id": "user", "item_id": "item", "timestamp": "time"})
    stages["generate"] = time.perf_counter() - t
    t = time.perf_counter()
    data = seqrec.build_dataset(frame, seqrec.PreprocessOptions(user_core=args.core, item_core=args.core))
    stages["clean_kcore_map_sort"] = time.perf_counter() - t
    t = time.perf_counter()
    split = seqrec.leave_one_out(data)
    stages["leave_one_out"] = time.perf_counter() - t
    t = time.perf_counter()
    batches = TrainBatches(split.train, 50, 128)
    stages["training_windows"] = time.perf_counter() - t
    return {"kept": data.n_events, "users": data.n_users, "items": data.n_items,
            "windows": int(batches.windows.shape[0]), "seconds": stages,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def out_of_core(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(args.scratch)
    folder = scratch / f"log-{args.rows}"
    prepared_dir = scratch / f"prepared-{args.rows}"
    out: dict[str, Any] = {"generate_seconds": generate_dir(folder, args.rows, args.users, args.items),
                           "files": len(list(folder.glob("*.parquet"))),
                           "log_bytes": sum(p.stat().st_size for p in folder.glob("*.parquet"))}
    out["prepare"] = run_prepare(folder, prepared_dir, args.core)
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    out.update(kept=manifest["events"], users=manifest["users"]["count"], items=manifest["items"]["count"],
               prepared_bytes=sum(int(a["bytes"]) for a in manifest["arrays"].values()))
    out["train_first_step"] = run_first_step(prepared_dir, args.model, args.loss)
    if args.cli:
        out["cli_first_step"] = run_cli_first_step(prepared_dir, scratch / f"run-{args.rows}", args.model, args.loss)
    out["library_stages"] = library_stages(prepared_dir, not args.no_computed_split)
    if args.baseline:
        out["in_memory_baseline"] = baseline(folder, prepared_dir, args.core)
        memory = out["in_memory_baseline"]
        # both without the interpreter's start: read + clean/k-core/map/sort against the command's own time
        out["speedup_prepare_vs_in_memory"] = ((memory["clean_kcore_map_sort_seconds"] + memory["read_parquet_seconds"])
                                               / (out["prepare"]["seconds_in_command"] or out["prepare"]["seconds"]))
    if not args.keep:
        shutil.rmtree(prepared_dir, ignore_errors=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=500_000)
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--core", type=int, default=5, help="user and item k-core")
    p.add_argument("--prepare", action="store_true", help="out of core: Parquet directory, seqrec prepare, "
                   "train --prepared to the first step")
    p.add_argument("--baseline", action="store_true", help="with --prepare: also the in-memory path on the same "
                   "files, and an equality check")
    p.add_argument("--model", default="sasrec", help="with --prepare: the model trained to its first step")
    p.add_argument("--loss", default="sampled", help="with --prepare: its loss (sampled: 1024 negatives; ce: the "
                   "full softmax, whose first step over a large catalog costs more than the data)")
    p.add_argument("--scratch", default=os.environ.get("TMPDIR", "/tmp") + "/seqrec-scale",
                   help="with --prepare: where the log and the prepared dataset are written (not the repository)")
    p.add_argument("--cli", action="store_true", help="with --prepare: also time `seqrec train --prepared` itself "
                   "from its start to the first optimizer step")
    p.add_argument("--no-computed-split", action="store_true", help="with --prepare: do not also time "
                   "leave_one_out computed from the mapped sequences (memory: several copies of the log)")
    p.add_argument("--keep", action="store_true", help="keep the prepared dataset and run under --scratch")
    p.add_argument("--note", default="")
    args = p.parse_args()
    result = {"rows": args.rows, "users_generated": args.users, "items_generated": args.items, "core": args.core,
              **(out_of_core(args) if args.prepare else in_memory(args)),
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "ran_beside": args.note,
              "cpus": os.cpu_count()}
    name = f"scale-prepare-{args.rows}.json" if args.prepare else f"scale-{args.rows}.json"
    (ROOT / "results" / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
