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
from datetime import UTC, datetime
from pathlib import Path

import torch

import machine  # benchmarks/machine.py
import seqrec
from seqrec.cli import model_params
from seqrec.datasets import load_dataset

ROOT = Path(__file__).resolve().parent
DATA_ROOT = ROOT.parent.parent / "shared" / "data"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="amazon-beauty-bert4rec")
    p.add_argument("--model", default="sasrec")
    p.add_argument("--tag", default="", help="suffix for the result file name")
    p.add_argument("--loss", default="ce")
    p.add_argument("--negatives", type=int, default=1)
    p.add_argument("--grad-clip", type=float, default=5.0, help="max gradient norm; 0 turns clipping off")
    p.add_argument("--per-target-negatives", action="store_true",
                   help="sampled softmax: a draw of --negatives per target, not one per batch")
    p.add_argument("--sampler", default="uniform")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--max-minutes", type=float, default=25.0, help="training time budget")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--valid-users", type=int, help="early-stop on a fixed random subset of validation users")
    p.add_argument("--train-rest-valid", action="store_true",
                   help="with --valid-users: the other users' validation events are training targets")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--schedule", default="constant")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--mask-prob", type=float, default=0.2)
    p.add_argument("--no-sliding", action="store_true")
    p.add_argument("--no-bucket", action="store_true", help="random batches, not grouped by length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dim", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--n-layers", type=int)
    p.add_argument("--n-heads", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--ff-dim", type=int, help="attention models: feed-forward width (default: per model)")
    p.add_argument("--l2-norm", action="store_true", default=None,
                   help="hstu: score by cosine / temperature (L2-normalised state and item embeddings)")
    p.add_argument("--temperature", type=float, help="hstu with --l2-norm (default 0.05)")
    p.add_argument("--original-norm", action="store_true", default=None,
                   help="sasrec: the original SASRec code's layer-norm placement (normalised queries only)")
    p.add_argument("--positions", choices=("start", "end"),
                   help="sasrec/bert4rec: learned positions counted from the first item (default) or "
                   "back from the last")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast of the encoder (the catalog softmax stays fp32)")
    p.add_argument("--ce-bf16-grads", action="store_true",
                   help="full CE: the catalog softmax's two gradient matmuls on bf16 operands")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    return p.parse_args()


def main() -> int:
    args = parse()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_dataset(args.dataset, DATA_ROOT)
    split = seqrec.leave_one_out(data)
    cfg = seqrec.TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        patience=args.patience, seed=args.seed, max_len=args.max_len, loss=args.loss,
        n_negatives=args.negatives, sampler=args.sampler, mask_prob=args.mask_prob,
        shared_negatives=not args.per_target_negatives, grad_clip=args.grad_clip or None,
        sliding=not args.no_sliding, bucket=not args.no_bucket, max_seconds=args.max_minutes * 60, device="cpu",
        valid_users=args.valid_users, train_rest_valid=args.train_rest_valid,
        warmup_steps=args.warmup_steps, schedule=args.schedule, bf16=args.bf16, ce_bf16_grads=args.ce_bf16_grads)
    params = model_params(args)  # the same model options as `seqrec train`
    rec = seqrec.Recommender(args.model, cfg, **params)

    def show(row: dict[str, float]) -> None:
        print(f"epoch {int(row['epoch'])} loss {row['loss']:.4f} valid NDCG@10 {row.get('valid_NDCG@10', 0):.4f} "
              f"{row['seconds']:.1f}s", flush=True)

    result = rec.fit(data, split, progress=False, on_epoch=show)
    t_eval = time.perf_counter()
    test = rec.evaluate(ks=(5, 10, 20))
    eval_seconds = time.perf_counter() - t_eval
    epochs = [r["seconds"] for r in result.history if r["epoch"] > 0]
    out = {
        "dataset": args.dataset, "model": args.model, "loss": args.loss, "tag": args.tag,
        "protocol": "leave-one-out, full ranking over all items, seen items excluded",
        "test": {k: v for k, v in test.items() if k.split("@")[0] in ("HR", "NDCG", "MRR", "coverage")},
        "best_valid_NDCG@10": result.best_metric, "best_epoch": result.best_epoch,
        "epochs_run": len(epochs), "train_seconds": result.seconds,
        "median_epoch_seconds": statistics.median(epochs) if epochs else 0.0,
        "test_eval_seconds": eval_seconds, "wall_seconds": time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_parameters": rec.info.get("n_parameters"),
        "train_config": cfg.__dict__, "model_params": params, "history": result.history,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine.describe(),
        "ran_beside": args.note, "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    name = f"{args.dataset}-{args.model}" + (f"-{args.tag}" if args.tag else "")
    path = ROOT / "results" / f"{name}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["test"], indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
