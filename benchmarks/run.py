"""Train one model on one dataset, evaluate by full ranking on the test split, save a JSON.

    python benchmarks/run.py --dataset amazon-beauty-bert4rec --model sasrec --loss ce --max-minutes 25

Results go to benchmarks/results/<dataset>-<model>[-<tag>].json with the exact command.
Leave-one-out, full ranking over the whole catalog, already-seen items excluded.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: sleeping (not spinning) idle threads, so that a second process on
# this 2-core machine does not turn every small parallel region into a 30x slowdown.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import resource
import shlex
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch

import machine  # benchmarks/machine.py
import seqrec
from seqrec.cli import RunFlags, add_run_flags, run_config_from_args
from seqrec.data.config import DataConfig, load_data, split_data
from seqrec.runconfig import RunConfig
from seqrec.settings import to_dict

ROOT = Path(__file__).resolve().parent
DATA_ROOT = ROOT.parent.parent / "shared" / "data"
# seqrec's defaults but these; the training and model flags are generated from the config dataclasses
BASE = RunConfig("sasrec", train=seqrec.TrainConfig(epochs=200, device="cpu"))


def parse() -> tuple[argparse.Namespace, RunFlags]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default="amazon-beauty-bert4rec")
    p.add_argument("--tag", default="", help="suffix for the result file name")
    p.add_argument("--max-minutes", type=float, default=25.0, help="training time budget")
    p.add_argument("--threads", type=machine.threads, default=2)
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    p.add_argument("--data-root", type=Path, default=DATA_ROOT, help="the folder that holds the datasets")
    flags = add_run_flags(p, BASE, with_data=False, exclude=("train.max_seconds",))
    return p.parse_args(), flags


def main() -> int:
    args, flags = parse()
    try:
        base = replace(BASE, train=replace(BASE.train, max_seconds=args.max_minutes * 60),
                       data=DataConfig(dataset=args.dataset, data_root=str(args.data_root)))
        run = run_config_from_args(args, flags, base)
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        data = load_data(run.data)
        split = split_data(run.data, data)
    except seqrec.SeqrecError as exc:  # a bad flag or a missing dataset: one line
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    cfg = run.train
    rec = seqrec.Recommender(run.model, cfg, **run.model_config)

    def show(row: dict[str, float]) -> None:
        print(f"epoch {int(row['epoch'])} loss {row['loss']:.4f} valid NDCG@10 {row.get('valid_NDCG@10', 0):.4f} "
              f"{row['seconds']:.1f}s", flush=True)

    result = rec.fit(data, split, progress=False, on_epoch=show)
    t_eval = time.perf_counter()
    test = rec.evaluate(ks=(5, 10, 20))
    eval_seconds = time.perf_counter() - t_eval
    epochs = [r["seconds"] for r in result.history if r["epoch"] > 0]
    out = {
        "dataset": args.dataset, "model": run.model, "loss": cfg.loss.name, "tag": args.tag,
        "protocol": "leave-one-out, full ranking over all items, seen items excluded",
        "test": {k: v for k, v in test.items() if k.split("@")[0] in ("HR", "NDCG", "MRR", "coverage")},
        "best_valid_NDCG@10": result.best_metric, "best_epoch": result.best_epoch,
        "epochs_run": len(epochs), "train_seconds": result.seconds,
        "median_epoch_seconds": statistics.median(epochs) if epochs else 0.0,
        "test_eval_seconds": eval_seconds, "wall_seconds": time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_parameters": rec.info.get("n_parameters"),
        "train_config": to_dict(cfg), "model_params": run.model_config, "history": result.history,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine.describe(),
        "ran_beside": args.note, "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    name = f"{args.dataset}-{run.model}" + (f"-{args.tag}" if args.tag else "")
    path = ROOT / "results" / f"{name}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["test"], indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
