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
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_cli  # noqa: E402

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
    done = train_cli.train(cmd, out, threads, mode)
    summary = done.summary()
    return {"mode": mode, "command": summary["command"], "seconds": summary["seconds"], "test": summary["test"],
            "best_epoch": summary["best_epoch"], "valid_best": summary["valid_best"],
            "n_parameters": done.info.get("n_parameters")}


def _timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_summary(items: int, seconds: list[float], cpu: list[float]) -> dict[str, object]:
    """Median items/s of one configuration's runs, and the fastest run's: on a shared machine a run whose
    threads waited for a core (CPU seconds above wall seconds on one thread's worth of work) is slower than
    the code is, so both are reported."""
    return {"seconds": [round(x, 2) for x in seconds], "cpu_seconds": [round(x, 2) for x in cpu],
            "items_per_second": round(items / float(np.median(seconds)), 1),
            "best_items_per_second": round(items / min(seconds), 1)}


def embed_speed(text: Path, threads: int, rounds: int, precisions: list[str]) -> dict:
    """Items per second of the frozen sentence encoder over the whole catalog's text, no disk cache: before
    (sentence-transformers' own encode: fp32, max_seq_length 256, batches of 128 sorted by characters, as
    seqrec ran it first) against SentenceEncoder at each of ``precisions`` (duplicates once, batches of 32
    sorted by token count; bf16 autocast, or the int8 ONNX Runtime model), each on 1 thread and on
    ``threads``; the SentenceEncoder paths on ``threads`` are repeated ``rounds`` times (median; the others
    run once, they are the slow ones). Quality: cosine of each path's vectors to the before (fp32, full
    length) ones. The headline ``items_per_second`` is the last precision's, on ``threads``."""
    import pandas as pd
    import torch

    from seqrec.items.text import SentenceEncoder, encoder_key

    texts = pd.read_csv(text)["text"].astype(str).tolist()
    encoders = {p: SentenceEncoder(threads=threads, precision=p) for p in precisions}
    first = encoders[precisions[0]]  # its model also runs the before path
    model = first.model

    def before(n_threads: int) -> Callable[[], np.ndarray]:
        def go() -> np.ndarray:
            torch.set_num_threads(n_threads)
            model.max_seq_length = 256
            try:
                out = model.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
            finally:
                model.max_seq_length = first.max_seq_length
            return np.asarray(out, dtype=np.float32)
        return go

    def after(enc: SentenceEncoder, n_threads: int) -> Callable[[], np.ndarray]:
        def go() -> np.ndarray:
            enc.threads = n_threads
            return enc.encode(texts)
        return go

    configs = {f"before/{t}": before(t) for t in (1, threads)}
    for p, enc in encoders.items():
        configs |= {f"{p}/{t}": after(enc, t) for t in (1, threads)}
        enc.encode(texts[:64])  # warm-up
    repeated = {f"{p}/{threads}" for p in precisions}
    seconds: dict[str, list[float]] = {k: [] for k in configs}
    cpu: dict[str, list[float]] = {k: [] for k in configs}
    outputs: dict[str, np.ndarray] = {}
    for r in range(rounds):
        for name, fn in configs.items():
            if r > 0 and name not in repeated:
                continue
            outputs[name], wall, used = _timed(fn)
            seconds[name].append(wall)
            cpu[name].append(used)
            print(f"round {r}: {name} (path/threads) {len(texts) / wall:.1f} items/s", file=sys.stderr, flush=True)
    reference = outputs["before/1"]
    rows = {name: run_summary(len(texts), seconds[name], cpu[name]) for name in configs}
    ips = {name: round(len(texts) / float(np.median(seconds[name])), 1) for name in configs}
    paths = {}
    for p, enc in encoders.items():
        cos = (outputs[f"{p}/{threads}"] * reference).sum(axis=1)
        paths[p] = {"encoder": encoder_key(enc), "items_per_second": ips[f"{p}/{threads}"],
                    "ratio_vs_before_same_threads": round(ips[f"{p}/{threads}"] / ips[f"before/{threads}"], 2),
                    "ratio_1_thread": round(ips[f"{p}/1"] / ips["before/1"], 2),
                    "cosine_to_fp32_full_length": {"min": round(float(cos.min()), 6),
                                                   "p01": round(float(np.quantile(cos, 0.01)), 6),
                                                   "median": round(float(np.median(cos)), 6)}}
    lengths = first.token_lengths(texts)
    return {"items": len(texts), "unique_texts": len(set(texts)), "threads": threads, "rounds": rounds,
            "tokens": {"mean": round(float(lengths.mean()), 1), "p99": int(np.percentile(lengths, 99)),
                       "max": int(lengths.max()), "over_128": int((lengths > 128).sum())},
            "batch_size": first.batch_size, "runs": rows, "paths": paths,
            "items_per_second": paths[precisions[-1]]["items_per_second"], "torch": torch.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="id,id+text,text")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/seqrec-features-bench"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "features-scientific.json")
    p.add_argument("--embed-speed", action="store_true", help="only time the text encoder (items/s)")
    p.add_argument("--rounds", type=int, default=3, help="with --embed-speed: runs of the fast path (median)")
    p.add_argument("--note", default="", help="with --embed-speed: what else ran on the machine")
    p.add_argument("--precisions", default="bf16,int8",
                   help="with --embed-speed: the SentenceEncoder precisions timed (comma-separated)")
    p.add_argument("--prepare-only", action="store_true",
                   help="only write the log (scientific.txt) and the text (scientific_text.csv) into --work")
    p.add_argument("extra", nargs="*", help="more `seqrec train` flags (after --)")
    args = p.parse_args()
    log, text = prepare(args.work)
    if args.prepare_only:
        print(f"wrote {log} and {text}")
        return
    if args.embed_speed:
        result = embed_speed(text, args.threads, args.rounds, args.precisions.split(","))
        print(json.dumps(result))
        args.out.write_text(json.dumps({"benchmark": "features-embed-speed", "script": " ".join(sys.argv),
                                        "machine": platform.processor() or platform.machine(),
                                        "cpus": os.cpu_count(), "note": args.note, **result},
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
