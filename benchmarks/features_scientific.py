"""Amazon Scientific (UniSRec files): SASRec with item modes id, id+text and text, same settings and seed.

Each user's line of ``Scientific.test.inter`` (history + target, item ids + 1) is the sequence; the item text
(title, category path, brand) is ``Scientific.text`` keyed by the same ids. Leave-one-out, full ranking.

    python benchmarks/features_scientific.py --modes id,id+text,text --epochs 30 \
        --out benchmarks/results/features-scientific.json

One training process at a time; set OMP_NUM_THREADS / --threads for a shared machine.
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
DATA = Path(os.environ.get("SEQREC_DATA_ROOT", ROOT / ".." / "shared" / "data")) / "amazon-scientific-unisrec"
SETTINGS = ["--model", "sasrec", "--dim", "256", "--n-layers", "2", "--dropout", "0.4", "--lr", "1e-3",
            "--schedule", "cosine", "--warmup-steps", "100"]


def prepare(work: Path) -> tuple[Path, Path]:
    """The user-per-line log and the text CSV, ids + 1."""
    work.mkdir(parents=True, exist_ok=True)
    log, text = work / "scientific.txt", work / "scientific_text.csv"
    lines = (DATA / "Scientific.test.inter").read_text().splitlines()[1:]
    with open(log, "w") as f:
        for line in lines:
            user, history, target = line.split("\t")
            items = [str(int(i) + 1) for i in [*history.split(), target]]
            f.write(f"u{user} {' '.join(items)}\n")
    index = dict(line.split("\t") for line in (DATA / "Scientific.item2index").read_text().splitlines())
    import csv

    with open(text, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "text"])
        for line in (DATA / "Scientific.text").read_text().splitlines()[1:]:
            asin, body = line.split("\t", 1)
            if asin in index:
                writer.writerow([int(index[asin]) + 1, body.strip()])
    return log, text


def run(mode: str, log: Path, text: Path, work: Path, epochs: int, threads: int, extra: list[str]) -> dict:
    out = work / f"run-{mode.replace('+', '-')}"
    cmd = ["seqrec", "train", "--data", str(log), "--format", "user-per-line", *SETTINGS, "--epochs", str(epochs),
           "--device", "cpu", "--out", str(out), "--force", *extra]
    if mode != "id":
        cmd += ["--item-text", str(text), "--text-cols", "text", "--item-mode", mode]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"{mode}: exit {proc.returncode}")
    info = json.loads((out / "info.json").read_text())
    test = {k: info.get("test_metrics", {}).get(k) for k in ("NDCG@10", "HR@10", "NDCG@20", "HR@20")}
    return {"mode": mode, "command": " ".join(cmd), "seconds": round(seconds, 1), "test": test,
            "best_epoch": info.get("best_epoch"), "n_parameters": info.get("n_parameters")}


def embed_speed(text: Path, threads: int) -> dict:
    """Items per second of the frozen sentence encoder over the whole catalog's text (no cache)."""
    import pandas as pd
    import torch

    from seqrec.items.text import SentenceEncoder

    torch.set_num_threads(threads)
    texts = pd.read_csv(text)["text"].astype(str).tolist()
    enc = SentenceEncoder()
    enc.encode(texts[:32])  # warm-up
    t0 = time.perf_counter()
    enc.encode(texts)
    seconds = time.perf_counter() - t0
    return {"items": len(texts), "seconds": round(seconds, 1), "items_per_second": round(len(texts) / seconds, 1),
            "threads": threads}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="id,id+text,text")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/seqrec-features-bench"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "features-scientific.json")
    p.add_argument("--embed-speed", action="store_true", help="only time the text encoder (items/s)")
    p.add_argument("extra", nargs="*", help="more `seqrec train` flags (after --)")
    args = p.parse_args()
    log, text = prepare(args.work)
    if args.embed_speed:
        result = embed_speed(text, args.threads)
        print(json.dumps(result))
        args.out.write_text(json.dumps({"benchmark": "features-embed-speed", "script": " ".join(sys.argv),
                                        "machine": platform.processor() or platform.machine(), **result},
                                       indent=2) + "\n")
        return
    results = []
    for mode in args.modes.split(","):
        results.append(run(mode, log, text, args.work, args.epochs, args.threads, args.extra))
        print(json.dumps(results[-1]), flush=True)
        args.out.write_text(json.dumps({"benchmark": "features-scientific", "script": " ".join(sys.argv),
                                        "machine": platform.processor() or platform.machine(),
                                        "threads": args.threads, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
