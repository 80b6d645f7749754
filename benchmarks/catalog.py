"""Catalogs of millions of items: SASRec with sampled softmax on a synthetic log of 10M events.

The log (seeded): users of ``--length`` events each; an event follows the previous item with
probability ``--follow`` (one of the ``--window`` items after it in a hidden random order of the
catalog), else it is drawn by Zipf popularity (exponent ``--zipf``) over all items. A sequence
model can learn the hidden order for the items it sees; popularity cannot.

Each variant runs in its own process (its own peak RSS), on the same regenerated log:

- ``dense:S`` / ``sparse:S`` / ``sparse-bf16:S``: S training steps (median step time), the item
  tables under AdamW, the row-sparse optimizer, or the row-sparse optimizer with bfloat16 tables;
- ``...:epoch``: one full epoch, then full-ranking NDCG@10 / HR@10 over all items on a random
  sample of ``--eval-users`` test users, beside the popularity baseline on the same users.

    python benchmarks/catalog.py --items 1000000 --variants dense:200 sparse:epoch
    python benchmarks/catalog.py --items 10000000 --variants sparse:epoch dense:20 sparse-bf16:200

Writes benchmarks/results/catalog-<items>.json (``--tag T``: catalog-<items>-T.json) with the command inside.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import seqrec
from seqrec.data.batch import TrainBatches
from seqrec.data.ids import IdMap
from seqrec.data.preprocess import Dataset
from seqrec.data.sequences import Sequences
from seqrec.eval.evaluate import EvalConfig, evaluate
from seqrec.losses import LossConfig
from seqrec.models.registry import create
from seqrec.train.loop import Trainer
from seqrec.train.optim import make_optimizer

ROOT = Path(__file__).resolve().parent
KINDS = ("dense", "sparse", "sparse-bf16")


def synthetic_log(args: argparse.Namespace) -> Sequences:
    """(users x length) item ids in 1..items: a walk along a hidden order, or a jump by popularity."""
    rng = np.random.default_rng(args.seed)
    n, users = args.items, args.events // args.length
    weights = np.arange(1, n + 1, dtype=np.float64) ** -args.zipf
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    by_rank = rng.permutation(n)  # the item of each popularity rank
    order = rng.permutation(n)  # the hidden order the walks follow
    place = np.empty(n, dtype=np.int64)
    place[order] = np.arange(n)

    def popular(size: int) -> np.ndarray:
        return by_rank[np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1)]

    items = np.empty((users, args.length), dtype=np.int64)
    items[:, 0] = popular(users)
    for t in range(1, args.length):  # vectorised over users
        step = rng.integers(1, args.window + 1, users)
        follow = order[(place[items[:, t - 1]] + step) % n]
        items[:, t] = np.where(rng.random(users) < args.follow, follow, popular(users))
    return Sequences.from_lengths(np.full(users, args.length, dtype=np.int64), items.ravel() + 1)


def train_config(args: argparse.Namespace, kind: str) -> seqrec.TrainConfig:
    loss = LossConfig(name="sampled", n_negatives=args.negatives, sampler="uniform", logq=True)
    # grad_clip 0 in every variant alike (the committed results were measured so; the loop clips sparse rows too)
    return seqrec.TrainConfig(epochs=1, batch_size=args.batch_size, lr=1e-3, grad_clip=0.0, seed=0, loss=loss,
                              device=args.device,
                              item_optimizer="dense" if kind == "dense" else "sparse",
                              item_dtype="bfloat16" if kind.endswith("bf16") else "float32")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    kind, _, steps_text = variant.partition(":")
    full_epoch = steps_text == "epoch"
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    seqs = synthetic_log(args)
    data = Dataset("catalog", seqs, IdMap(np.arange(seqs.n_users)), IdMap(np.arange(1, args.items + 1), offset=1))
    split = seqrec.leave_one_out(data)
    prepare = time.perf_counter() - t0
    cfg = train_config(args, kind)
    torch.manual_seed(0)
    model = create("sasrec", n_items=args.items, max_len=args.length, dim=args.dim, n_layers=2, n_heads=1)
    trainer = Trainer(model, split, cfg, progress=False)
    model = model.to(trainer.device)
    t1 = time.perf_counter()
    batches = TrainBatches(trainer.train, args.length, cfg.batch_size, cfg.sliding, cfg.bucket)
    windows = time.perf_counter() - t1
    rss_before = peak_rss_mb()
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    model.train()
    limit = len(batches) if full_epoch else int(steps_text)
    step_seconds: list[float] = []
    losses: list[float] = []
    t_train = time.perf_counter()
    for i, batch in enumerate(batches.epoch(gen)):
        if i >= limit:
            break
        t = time.perf_counter()
        losses.append(trainer._step(batch, opt, gen))  # its float() of the loss waits for the device
        step_seconds.append(time.perf_counter() - t)
    train_seconds = time.perf_counter() - t_train
    out: dict[str, Any] = {
        "variant": variant, "item_optimizer": cfg.item_optimizer, "item_dtype": cfg.item_dtype,
        "prepare_seconds": prepare, "windows_seconds": windows, "steps_per_epoch": len(batches),
        "steps_run": len(step_seconds), "full_epoch": full_epoch, "train_seconds": train_seconds,
        "median_step_seconds": float(np.median(step_seconds[5:] or step_seconds)),
        "mean_step_seconds": float(np.mean(step_seconds)),
        "p90_step_seconds": float(np.percentile(step_seconds, 90)),
        "max_step_seconds": float(np.max(step_seconds)),
        "loss_first_50": float(np.mean(losses[:50])), "loss_last_50": float(np.mean(losses[-50:])),
        "peak_rss_mb_before_training": rss_before, "peak_rss_mb_training": peak_rss_mb(),
        "touched_rows": _touched(opt),
    }
    if full_epoch:
        out["epoch_seconds"] = train_seconds
    else:
        out["epoch_seconds_extrapolated"] = out["median_step_seconds"] * len(batches)
    if full_epoch and args.eval_users:
        out.update(_evaluate(model, split, args))
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _touched(opt: torch.optim.Optimizer) -> int | None:
    rows = getattr(opt, "rows", None)
    if rows is None:
        return None
    return sum(int(s["used"]) for s in rows.state.values())


def _evaluate(model: seqrec.SequenceModel, split: seqrec.Split, args: argparse.Namespace) -> dict[str, Any]:
    users = split.test.sample(args.eval_users, seed=1)
    cfg = EvalConfig(ks=(10,), batch_size=256)
    t = time.perf_counter()
    ours = evaluate(model, users, cfg)
    seconds = time.perf_counter() - t
    popular = create("popular", n_items=split.n_items)
    popular.fit_counts(split.train.items)
    base = evaluate(popular, users, cfg)
    return {"eval_users": len(users), "eval_seconds": seconds,
            "test_NDCG@10": ours["NDCG@10"], "test_HR@10": ours["HR@10"],
            "popular_NDCG@10": base["NDCG@10"], "popular_HR@10": base["HR@10"]}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--length", type=int, default=20, help="events per user")
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--follow", type=float, default=0.7)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--negatives", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--eval-users", type=int, default=2000)
    p.add_argument("--variants", nargs="+", default=["dense:200", "sparse:epoch"])
    p.add_argument("--note", default="", help="what else ran on the machine")
    p.add_argument("--tag", default="", help="suffix of the result file name (catalog-<items>-<tag>.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    for variant in args.variants:
        kind, _, steps = variant.partition(":")
        if kind not in KINDS or not (steps == "epoch" or steps.isdigit()):
            p.error(f"variant {variant!r}: use KIND:STEPS or KIND:epoch, KIND one of {', '.join(KINDS)}")
    return args


def main() -> int:
    args = parse()
    if args.child:
        Path(args.child_out).write_text(json.dumps(run_variant(args, args.child)))
        return 0
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "child_out", "note", "variants", "tag")}
    report: dict[str, Any] = {
        "command": command, "note": args.note, "settings": settings, "model": "sasrec, 2 layers, 1 head",
        "loss": "sampled softmax, uniform shared negatives, logQ", "torch": torch.__version__, "variants": []}
    path = ROOT / "results" / f"catalog-{args.items}{'-' + args.tag if args.tag else ''}.json"
    for variant in args.variants:  # the file is rewritten after each variant: a failed one keeps the others
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "variant.json"
            done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", variant,
                                   "--child-out", str(out)], check=False)
            result = json.loads(out.read_text()) if done.returncode == 0 else {
                "variant": variant, "failed": f"exit status {done.returncode}"}
        report["variants"].append(result)
        print(json.dumps(result, indent=2), flush=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
