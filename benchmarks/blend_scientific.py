"""Amazon Scientific (UniSRec files): blend an item-id SASRec with a text-tower SASRec (`seqrec blend`).

Trains the two models of benchmarks/features_scientific.py (same log, split, seed and settings: item ids with
the causal low-pass branch; item text with the branch and cosine similarity at temperature 0.05), then
blends their next-item distributions with `seqrec blend`: weights chosen on the validation split by
NDCG@10, then one evaluation on test (leave-one-out, full ranking, seen items excluded).

    python benchmarks/blend_scientific.py --work /tmp/seqrec-blend --out benchmarks/results/blend-scientific.json

One training process at a time; set --threads for a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import features_scientific  # noqa: E402
import machine  # noqa: E402

LOWPASS = ["--patience", "5", "--lowpass", "0.87", "--lowpass-window", "4"]
MODELS = {"id": LOWPASS, "text": [*LOWPASS, "--similarity", "cosine", "--temperature", "0.05"]}
PUBLISHED = {"VQ-Rec (its README)": {"NDCG@10": 0.0645, "HR@10": 0.1238}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--threads", type=machine.threads, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/seqrec-blend"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "blend-scientific.json")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = p.parse_args()
    log, text = features_scientific.prepare(args.work)
    models = {mode: features_scientific.run(mode, log, text, args.work, args.epochs, args.threads, extra)
              for mode, extra in MODELS.items()}
    for mode, result in models.items():
        print(mode, json.dumps(result["test"]), flush=True)
    blend_json = args.work / "blend.json"
    cmd = ["seqrec", "blend", str(args.work / "run-id"), str(args.work / "run-text"), "--out", str(blend_json)]
    subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": str(args.threads)})
    blend = json.loads(blend_json.read_text())
    out = {"benchmark": "blend-scientific", "script": shlex.join(["python", *sys.argv]),
           "protocol": "leave-one-out, full ranking over all items, seen items excluded; blend weights chosen "
                       "on the validation split, test evaluated once",
           "machine": machine.describe(), "threads": args.threads, "ran_beside": args.note,
           "models": models, "blend_command": " ".join(cmd), "blend": blend, "published": PUBLISHED}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"weights": blend["weights"], "test": blend["metrics"]}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
