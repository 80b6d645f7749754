"""MovieLens-100k with and without user features (u.user: age, gender, occupation, zip prefix): SASRec and
GRU4Rec, the same settings and seed in each pair, leave-one-out, full ranking.

    python benchmarks/user_features.py --models sasrec,gru4rec --max-seconds 300 \
        --out benchmarks/results/user-features-ml100k.json

One training process at a time; ``--threads`` sets OMP_NUM_THREADS for a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("SEQREC_DATA_ROOT", ROOT / ".." / "shared" / "data"))
USERS = DATA_ROOT / "movielens-100k" / "u.user"
SETTINGS = {
    "sasrec": ["--dim", "64", "--n-layers", "2", "--n-heads", "2", "--max-len", "200", "--dropout", "0.2",
               "--lr", "1e-3"],
    "gru4rec": ["--dim", "64", "--hidden", "128", "--max-len", "200", "--dropout", "0.2", "--lr", "1e-3"],
}
METRICS = ("NDCG@10", "HR@10", "NDCG@20", "HR@20")


def run(model: str, users: bool, work: Path, args: argparse.Namespace) -> dict:
    out = work / f"{model}-{'users' if users else 'plain'}"
    cmd = ["seqrec", "train", "--dataset", "movielens-100k", "--data-root", str(DATA_ROOT), "--model", model,
           *SETTINGS[model], "--epochs", str(args.epochs), "--patience", str(args.patience), "--seed", str(args.seed),
           "--max-seconds", str(args.max_seconds), "--device", "cpu", "--k", "10,20", "--quiet", "--out", str(out),
           "--force"]
    if users:
        cmd += ["--user-features", str(USERS)]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"{model} users={users}: exit {proc.returncode}")
    info = json.loads((out / "info.json").read_text())
    history = info.get("history", [])
    return {"model": model, "user_features": users, "command": " ".join(cmd), "seconds": round(seconds, 1),
            "epochs_run": len(history), "stopped_by_time": "max_seconds" in proc.stderr,
            "best_epoch": info.get("best_epoch"), "best_valid": info.get("best_valid"),
            "n_parameters": info.get("n_parameters"),
            "test": {k: info.get("test_metrics", {}).get(k) for k in METRICS},
            "notes": [line for line in proc.stderr.splitlines() if line.startswith("seqrec: note")]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sasrec,gru4rec")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=300.0, help="cap of each training run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", default="", help="what else ran on the machine")
    p.add_argument("--work", type=Path, default=Path("/tmp/seqrec-user-features-bench"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "user-features-ml100k.json")
    args = p.parse_args()
    results: list[dict] = []
    changes: dict[str, dict[str, float | None]] = {}
    for model in args.models.split(","):
        pair = [run(model, False, args.work, args), run(model, True, args.work, args)]
        results += pair
        base, with_users = pair[0]["test"], pair[1]["test"]
        changes[model] = {k: (with_users[k] / base[k] - 1.0) if base[k] and with_users[k] is not None else None
                          for k in METRICS}
        for row in pair:
            print(json.dumps({k: row[k] for k in ("model", "user_features", "test", "epochs_run", "seconds")}),
                  flush=True)
        args.out.write_text(json.dumps({
            "benchmark": "user-features-ml100k", "script": " ".join([sys.executable, *sys.argv]),
            "machine": platform.processor() or platform.machine(), "threads": args.threads,
            "max_seconds_per_run": args.max_seconds, "note": args.note,
            "relative_change_with_user_features": changes, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
