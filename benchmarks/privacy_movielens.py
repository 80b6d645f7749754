"""Utility and measured privacy of DP-SGD on MovieLens latest-small (bundled).

Half of the users (seeded) are members: the model trains on them (leave-one-out: their last event is the
test target, the one before it the validation target). The other half never reach training. For each
setting (no DP, and each --epsilons value) this reports the members' test NDCG@10 / HR@10 (full ranking),
seconds per epoch, peak RSS of the run (each setting runs in its own child process), and the AUC of a
loss-threshold membership-inference attack: a user's mean next-item loss over their training events
(all but the last two), members against non-members; 0.5 is chance.

    python benchmarks/privacy_movielens.py --threads 1 --out benchmarks/results/privacy-movielens.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.data.batch import SequenceBatch
from seqrec.data.split import leave_one_out
from seqrec.datasets import load_dataset
from seqrec.privacy.dp import UserWindows
from seqrec.privacy.forget import without_users
from seqrec.recommender import Recommender
from seqrec.train.config import PrivacyConfig, TrainConfig


def auc(members: np.ndarray, others: np.ndarray) -> float:
    """P(score of a member > score of a non-member), ties counting half (Mann-Whitney U)."""
    scores = np.concatenate([members, others])
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable").astype(np.float64) + 1
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, ranks)
    ranks = (sums / counts)[inv]  # mid-ranks for ties
    u = ranks[: len(members)].sum() - len(members) * (len(members) + 1) / 2
    return float(u / (len(members) * len(others)))


@torch.no_grad()
def user_losses(rec: Recommender, data: Any, rows: np.ndarray) -> np.ndarray:
    """Each user's mean next-item cross-entropy over their events but the last two (what members train on)."""
    model = rec.model
    assert model is not None
    model.eval()
    seqs = data.sequences.subset(rows).truncate_tail(np.full(len(rows), 2))
    windows = UserWindows(seqs, int(model.config.max_len), True)
    table = model.item_table()
    out = np.full(len(rows), np.nan)
    for u in range(len(rows)):
        batch = windows.batch(u)
        if batch is None or batch.targets is None:
            continue
        query = model(SequenceBatch(batch.items))
        mask = batch.targets > 0
        scores = query[mask] @ table.weight.T + (0 if table.bias is None else table.bias)
        scores[:, 0] = float("-inf")
        out[u] = float(torch.nn.functional.cross_entropy(scores, batch.targets[mask]))
    return out


def run_one(args: argparse.Namespace, epsilon: float | None) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    data = load_dataset("movielens-latest-small")
    rng = np.random.default_rng(args.seed)
    members = np.sort(rng.choice(data.n_users, data.n_users // 2, replace=False))
    others = np.setdiff1d(np.arange(data.n_users), members)
    train_data = without_users(data, others)  # the catalog (item ids) stays the same
    privacy = PrivacyConfig(epsilon=epsilon, clip=args.clip, batch_users=args.batch_users) if epsilon else None
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr if epsilon else args.lr_nodp, seed=args.seed,
                      patience=max(1, args.epochs), device="cpu", privacy=privacy or PrivacyConfig())
    rec = Recommender(args.model, cfg)
    t0 = time.perf_counter()
    result = rec.fit(train_data, leave_one_out(train_data), progress=False)
    train_s = time.perf_counter() - t0
    metrics = rec.evaluate(ks=(10,))
    loss_in, loss_out = user_losses(rec, data, members), user_losses(rec, data, others)
    ok_in, ok_out = loss_in[np.isfinite(loss_in)], loss_out[np.isfinite(loss_out)]
    row: dict[str, Any] = {
        "setting": "untrained (control)" if args.epochs == 0 else f"epsilon {epsilon:g}" if epsilon else "no DP",
        "epsilon_target": epsilon, "NDCG@10": metrics["NDCG@10"], "HR@10": metrics["HR@10"],
        "attack_auc": auc(-ok_in, -ok_out),  # lower loss -> "member"
        "mean_loss_members": float(ok_in.mean()), "mean_loss_nonmembers": float(ok_out.mean()),
        "epochs_run": len(result.history), "best_epoch": result.best_epoch,
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in result.history])) if args.epochs else 0.0,
        "train_seconds": train_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if result.privacy:
        row["privacy"] = {k: v for k, v in result.privacy.items() if k != "accountant_history"}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sasrec")
    p.add_argument("--epsilons", default="1,4,8", help="comma-separated; no DP always runs too")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate with DP")
    p.add_argument("--lr-nodp", type=float, default=1e-3, help="AdamW learning rate without DP")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--batch-users", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/privacy-movielens.json"))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: one setting, JSON to stdout
    p.add_argument("--note", default="")
    args = p.parse_args()
    if args.one is not None:
        if args.one == "init":  # control: the untrained model (0 epochs), the attack's chance level on this split
            args.epochs = 0
        print(json.dumps(run_one(args, None if args.one == "init" else float(args.one) or None)))
        return
    rows = []
    for eps in ["init", "0", *args.epsilons.split(",")]:
        child = [a for a in sys.argv if a != "--one"]
        out = subprocess.run([sys.executable, *child, "--one", eps], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    doc = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
           "cpu": platform.processor() or platform.machine(), "note": args.note,
           "protocol": "members = half the users (seeded), trained with leave-one-out; attack = mean next-item "
                       "loss over each user's events but the last two, members vs non-members",
           "results": rows}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
