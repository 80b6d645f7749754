"""Amazon Beauty or Sports (S3-Rec files): SASRec id-only against id+features (the S3-Rec attribute file), same
settings and seed, each run capped at the same wall time.

    python benchmarks/features_beauty.py --max-seconds 480 --out benchmarks/results/features-beauty.json
    python benchmarks/features_beauty.py --dataset sports --max-seconds 1200 \
        --out benchmarks/results/features-sports.json

Flags after ``--`` go to every ``seqrec train`` (e.g. ``-- --lowpass 0.5``).
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
DATA = Path(os.environ.get("SEQREC_DATA_ROOT", ROOT / ".." / "shared" / "data"))
DATASETS = {"beauty": ("amazon-beauty-s3rec", "Beauty_item2attributes.json.gz"),
            "sports": ("amazon-sports-s3rec", "Sports_and_Outdoors_item2attributes.json.gz")}
SETTINGS = ["--model", "sasrec", "--dim", "256", "--n-layers", "1", "--dropout", "0.3", "--original-norm",
            "--positions", "end", "--schedule", "cosine", "--lr", "1e-3"]


def run(mode: str, work: Path, args: argparse.Namespace) -> dict:
    dataset, attrs = DATASETS[args.dataset]
    out = work / f"{args.dataset}-{mode.replace('+', '-')}"
    cmd = ["seqrec", "train", "--dataset", dataset, *SETTINGS, "--epochs", str(args.epochs),
           "--max-seconds", str(args.max_seconds), "--patience", "5", "--device", "cpu", "--out", str(out),
           "--force", "--data-root", str(DATA)]
    if mode != "id":
        cmd += ["--item-features", str(DATA / dataset / attrs), "--item-mode", mode, "--combine", args.combine]
    cmd += args.extra
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"{mode}: exit {proc.returncode}")
    info = json.loads((out / "info.json").read_text())
    test = {k: info.get("test_metrics", {}).get(k) for k in ("NDCG@10", "HR@10", "NDCG@20", "HR@20")}
    return {"mode": mode, "command": " ".join(cmd), "seconds": round(time.perf_counter() - t0, 1),
            "valid_best": info.get("best_valid"), "test": test, "epochs_run": len(info.get("history", [])),
            "best_epoch": info.get("best_epoch")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="beauty")
    p.add_argument("--modes", default="id,id+features")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--max-seconds", type=int, default=480)
    p.add_argument("--combine", default="sum")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/seqrec-features-bench"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "features-beauty.json")
    p.add_argument("extra", nargs="*", help="more `seqrec train` flags (after --)")
    args = p.parse_args()
    results = []
    for mode in args.modes.split(","):
        results.append(run(mode, args.work, args))
        print(json.dumps(results[-1]), flush=True)
        args.out.write_text(json.dumps({"benchmark": f"features-{args.dataset}", "script": " ".join(sys.argv),
                                        "machine": platform.processor() or platform.machine(),
                                        "threads": args.threads, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
