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
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_cli  # noqa: E402
from train_cli import METRICS  # noqa: E402

DATA_ROOT = Path(os.environ.get("SEQREC_DATA_ROOT", ROOT / ".." / "shared" / "data"))
USERS = DATA_ROOT / "movielens-100k" / "u.user"
SETTINGS = {
    "sasrec": ["--dim", "64", "--n-layers", "2", "--n-heads", "2", "--max-len", "200", "--dropout", "0.2",
               "--lr", "1e-3"],
    "gru4rec": ["--dim", "64", "--hidden", "128", "--max-len", "200", "--dropout", "0.2", "--lr", "1e-3"],
}


def run(model: str, users: bool, work: Path, args: argparse.Namespace) -> dict:
    out = work / f"{model}-{'users' if users else 'plain'}"
    cmd = ["seqrec", "train", "--dataset", "movielens-100k", "--data-root", str(DATA_ROOT), "--model", model,
           *SETTINGS[model], "--epochs", str(args.epochs), "--patience", str(args.patience), "--seed", str(args.seed),
           "--max-seconds", str(args.max_seconds), "--device", "cpu", "--k", "10,20", "--quiet", "--out", str(out),
           "--force"]
    if users:
        cmd += ["--user-features", str(USERS)]
    done = train_cli.train(cmd, out, args.threads, f"{model} users={users}")
    info = done.info
    return {"model": model, "user_features": users, **done.summary(), "best_valid": info.get("best_valid"),
            "n_parameters": info.get("n_parameters"),
            "notes": [line for line in done.stderr.splitlines() if line.startswith("seqrec: note")]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sasrec,gru4rec")
    train_cli.add_run_args(p, 200, 10, 300.0, "/tmp/seqrec-user-features-bench",
                           ROOT / "benchmarks" / "results" / "user-features-ml100k.json")
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
