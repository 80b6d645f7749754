"""Utility and measured privacy of DP-SGD (user-level) on one dataset.

Half of the users (seeded) are members: the model trains on them (leave-one-out: their last event is the
test target, the one before it the validation target). The other half never reach training; the catalog
(item ids) stays the whole dataset's. For each setting (the untrained model as a control, no DP, and each
--epsilons value) this reports the members' test NDCG@10 / HR@10 (full ranking), seconds per epoch, peak
RSS of the run (each setting runs in its own child process), and membership-inference attacks whose
score is a user's mean next-item loss over their training events (all but the last two):

* ``loss``: the loss-threshold attack, members against non-members (0.5 is chance);
* ``lira`` (with ``--lira N``): a LiRA-style likelihood-ratio attack. N shadow models are trained with the
  same settings on random halves of ALL users (in pairs: a half and its complement, so each user is in
  exactly N/2 of them); each user's loss under the shadows that trained on them and under those that did
  not gives two Gaussians (per-user means, variance pooled over users), and the target model's loss for
  that user is scored by the log likelihood ratio (in / out).

    python benchmarks/privacy.py --dataset movielens-latest-small --lira 4 --threads 1

``--dataset amazon-scientific-unisrec`` reads the UniSRec Scientific files through
``features_scientific.prepare`` (a user-per-line log and the item text CSV, written under ``--work``); with
``--item-mode text`` the item tower embeds only that public text (a frozen sentence embedding through a
learned projection, no per-item parameter), so DP-SGD's noise covers the shared projection and the encoder.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from seqrec.data.batch import SequenceBatch
from seqrec.data.features import ItemFeaturesConfig
from seqrec.data.io import ReadOptions, read_log
from seqrec.data.preprocess import build_dataset
from seqrec.data.split import leave_one_out
from seqrec.datasets import load_dataset
from seqrec.items.features import prepare_tower
from seqrec.losses import LossConfig
from seqrec.privacy import touched
from seqrec.privacy.dp import UserWindows
from seqrec.privacy.forget import without_users
from seqrec.recommender import Recommender
from seqrec.train.config import PrivacyConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DP_KEYS = ("dim", "dropout", "loss", "negatives", "lr", "clip", "batch_users", "warmup_steps", "schedule", "epochs",
           "reference_path", "dp_train")
NODP_KEYS = ("dim_nodp", "loss_nodp", "lr_nodp", "epochs_nodp")
# each row: the settings it ran with
RUN_KEYS = ("model", "n_layers", "max_len", "threads", "item_mode", *DP_KEYS, *NODP_KEYS)


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
def user_losses(rec: Recommender, data: Any) -> np.ndarray:
    """Every user's mean next-item cross-entropy over their events but the last two (what members train
    on); NaN for a user with no such target."""
    model = rec.model
    assert model is not None
    model.eval()
    seqs = data.sequences.truncate_tail(np.full(data.n_users, 2))
    windows = UserWindows(seqs, int(model.config.max_len), True)
    table = model.item_table()
    out = np.full(data.n_users, np.nan)
    for u in range(data.n_users):
        batch = windows.batch(u)
        if batch is None or batch.targets is None:
            continue
        query = model(SequenceBatch(batch.items))
        mask = batch.targets > 0
        scores = query[mask] @ table.weight.T + (0 if table.bias is None else table.bias)
        scores[:, 0] = float("-inf")
        out[u] = float(torch.nn.functional.cross_entropy(scores, batch.targets[mask]))
    return out


def loss_attack_auc(losses: np.ndarray, members: np.ndarray, others: np.ndarray) -> float:
    """Lower loss -> "member"."""
    a, b = losses[members], losses[others]
    return auc(-a[np.isfinite(a)], -b[np.isfinite(b)])


def lira_scores(target: np.ndarray, shadow: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Log likelihood ratio in/out of each user's target loss: per-user means over the shadows that did
    (``inside``) and did not train on them, one pooled variance each (N is small)."""
    ok = np.isfinite(shadow)
    n_in, n_out = (inside & ok).sum(0), (~inside & ok).sum(0)
    mu_in = np.where(inside & ok, shadow, 0.0).sum(0) / np.maximum(n_in, 1)
    mu_out = np.where(~inside & ok, shadow, 0.0).sum(0) / np.maximum(n_out, 1)
    res_in, res_out = (shadow - mu_in)[inside & ok], (shadow - mu_out)[~inside & ok]
    # the unbiased pooled variance (each user's mean uses up one degree of freedom); a floor for N = 2
    var_in = max(float((res_in ** 2).sum() / max(1, len(res_in) - int((n_in > 0).sum()))), 1e-6)
    var_out = max(float((res_out ** 2).sum() / max(1, len(res_out) - int((n_out > 0).sum()))), 1e-6)
    log_in = -0.5 * (target - mu_in) ** 2 / var_in - 0.5 * np.log(var_in)
    log_out = -0.5 * (target - mu_out) ** 2 / var_out - 0.5 * np.log(var_out)
    return np.where((n_in > 0) & (n_out > 0) & np.isfinite(target), log_in - log_out, np.nan)


def shadow_halves(n_users: int, n: int, seed: int) -> np.ndarray:
    """(n, users) membership of the shadows: pairs of a random half and its complement."""
    rng = np.random.default_rng(seed + 1_000)
    inside = np.zeros((n, n_users), dtype=bool)
    for i in range(0, n, 2):
        half = rng.permutation(n_users) < n_users // 2
        inside[i] = half
        if i + 1 < n:
            inside[i + 1] = ~half
    return inside


def train(args: argparse.Namespace, data: Any, members: np.ndarray, epsilon: float | None, seed: int,
          epochs: int) -> tuple[Recommender, Any, float]:
    train_data = without_users(data, np.setdiff1d(np.arange(data.n_users), members))
    privacy = PrivacyConfig(epsilon=epsilon, clip=args.clip, batch_users=args.batch_users) if epsilon else None
    loss = LossConfig(name=args.loss if epsilon else args.loss_nodp, n_negatives=args.negatives)
    dp_schedule = {"warmup_steps": args.warmup_steps, "schedule": args.schedule} if epsilon else {}
    cfg = TrainConfig(epochs=epochs, lr=args.lr if epsilon else args.lr_nodp, seed=seed, patience=max(1, epochs),
                      device="cpu", loss=loss, privacy=privacy or PrivacyConfig(), valid_users=args.valid_users,
                      **dp_schedule)
    params: dict[str, Any] = {"dim": args.dim if epsilon else args.dim_nodp, "n_layers": args.n_layers,
                              "max_len": args.max_len}
    if args.dropout is not None and epsilon:
        params["dropout"] = args.dropout
    rec = Recommender(args.model, cfg, **params)
    if epsilon and args.dp_train == "tower":
        rec.prepare_model = freeze_all_but_tower
    if args.item_mode != "id":
        feats = ItemFeaturesConfig(item_features=None if args.item_features is None else str(args.item_features),
                                   item_text=None if args.item_text is None else str(args.item_text),
                                   text_cols=args.text_cols, item_mode=args.item_mode)
        rec.tower_inputs = prepare_tower(feats, train_data.items)
    t0 = time.perf_counter()
    if args.reference_path:  # the A/B baseline: every user's gradient one at a time
        with mock.patch.object(touched, "supported", lambda *_: False):
            result = rec.fit(train_data, leave_one_out(train_data), progress=False)
    else:
        result = rec.fit(train_data, leave_one_out(train_data), progress=False)
    return rec, result, time.perf_counter() - t0


def freeze_all_but_tower(model: Any) -> None:
    """Only the item tower's parameters train (with a text tower: the projection of the frozen sentence
    vectors); the sequence encoder keeps its seeded initial weights. DP noise then covers fewer values."""
    tower = {id(p) for p in model.tower.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in tower)


SCIENTIFIC = "amazon-scientific-unisrec"


def load(args: argparse.Namespace) -> Any:
    """The dataset; Scientific from the user-per-line log features_scientific.prepare writes (its item text
    CSV becomes --item-text when none is given)."""
    if args.dataset != SCIENTIFIC:
        return load_dataset(args.dataset, args.data_root)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import features_scientific

    features_scientific.DATA = args.data_root / SCIENTIFIC
    log, text = features_scientific.prepare(args.work)
    if args.item_text is None and "text" in args.item_mode:
        args.item_text = text
    return build_dataset(read_log(log, ReadOptions(format="user-per-line")), name=SCIENTIFIC, source=str(log))


def run_one(args: argparse.Namespace, setting: str) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    data = load(args)
    rng = np.random.default_rng(args.seed)
    members = np.sort(rng.choice(data.n_users, data.n_users // 2, replace=False))
    others = np.setdiff1d(np.arange(data.n_users), members)
    epsilon = None if setting in ("init", "0") else float(setting)
    epochs = 0 if setting == "init" else args.epochs if epsilon else args.epochs_nodp
    rec, result, train_s = train(args, data, members, epsilon, args.seed, epochs)
    split = "valid" if args.valid_only else "test"
    metrics = rec.evaluate(on=split, ks=(10,))
    row: dict[str, Any] = {
        "setting": "untrained (control)" if setting == "init" else f"epsilon {epsilon:g}" if epsilon else "no DP",
        "epsilon_target": epsilon, "split": split, "NDCG@10": metrics["NDCG@10"], "HR@10": metrics["HR@10"],
        "epochs_run": len(result.history), "best_epoch": result.best_epoch,
        "seconds_per_epoch": float(np.median([h["seconds"] for h in result.history])) if epochs else 0.0,
        "train_seconds": train_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_parameters": rec.model.n_parameters() if rec.model is not None else 0,
        "run": {k: getattr(args, k) for k in RUN_KEYS if k not in (NODP_KEYS if epsilon else DP_KEYS)},
    }
    if args.valid_only:  # a tuning run: the test split and the attacks stay untouched
        if result.privacy:
            row["privacy"] = {k: v for k, v in result.privacy.items() if k != "accountant_history"}
        return row
    losses = user_losses(rec, data)
    row |= {"attack_auc": loss_attack_auc(losses, members, others),
            "mean_loss_members": float(np.nanmean(losses[members])),
            "mean_loss_nonmembers": float(np.nanmean(losses[others]))}
    if result.privacy:
        row["privacy"] = {k: v for k, v in result.privacy.items() if k != "accountant_history"}
    if args.lira and setting != "init" and setting in args.lira_settings.split(","):
        inside = shadow_halves(data.n_users, args.lira, args.seed)
        shadow = np.stack([user_losses(train(args, data, np.flatnonzero(inside[i]), epsilon,
                                             args.seed + 1 + i, epochs)[0], data) for i in range(args.lira)])
        scores = lira_scores(losses, shadow, inside)
        a, b = scores[members], scores[others]
        row["lira_auc"] = auc(a[np.isfinite(a)], b[np.isfinite(b)])
        row["lira_shadows"] = args.lira
        row["lira_users_scored"] = int(np.isfinite(scores).sum())
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="movielens-latest-small")
    p.add_argument("--data-root", type=Path, default=ROOT / ".." / "shared" / "data")
    p.add_argument("--model", default="sasrec")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--loss", default="ce", help="loss with DP: ce (full softmax) or sampled (sampled softmax, "
                   "shared negatives: the batched per-user gradients of seqrec.privacy.touched for sasrec/hstu)")
    p.add_argument("--loss-nodp", default="ce", help="loss without DP")
    p.add_argument("--negatives", type=int, default=1, help="negatives per batch with --loss sampled")
    p.add_argument("--dim-nodp", type=int, default=None, help="embedding size without DP (default: --dim)")
    p.add_argument("--dropout", type=float, default=None, help="model dropout with DP (default: the model's)")
    p.add_argument("--warmup-steps", type=int, default=0, help="DP: steps of linear learning-rate warm-up")
    p.add_argument("--schedule", default="constant", help="DP: learning rate after warm-up: constant or cosine")
    p.add_argument("--valid-users", type=int, default=None,
                   help="per-epoch validation on this many users (diagnostic only; DP keeps the last epoch)")
    p.add_argument("--valid-only", action="store_true",
                   help="tuning: report the validation split's metrics, no test metrics and no attacks")
    p.add_argument("--dp-train", choices=("all", "tower"), default="all",
                   help="DP: train every parameter, or only the item tower's (the encoder stays at its seeded "
                   "initialisation)")
    p.add_argument("--reference-path", action="store_true",
                   help="DP: compute per-user gradients one user at a time even where the batched path applies")
    p.add_argument("--item-mode", default="id", help="id, features (item vectors from --item-features only), "
                   "text (from --item-text only) or another seqrec item mode")
    p.add_argument("--item-features", type=Path, default=None, help="public item attribute file")
    p.add_argument("--item-text", type=Path, default=None,
                   help=f"public item text file (default for {SCIENTIFIC}: the CSV prepared under --work)")
    p.add_argument("--text-cols", default=None, help="comma-separated text columns of --item-text (default: all)")
    p.add_argument("--work", type=Path, default=Path("/tmp/seqrec-privacy-scientific"),
                   help=f"{SCIENTIFIC}: where the log and text CSV are written")
    p.add_argument("--settings", default="init,0,1,4,8",
                   help="comma-separated: init (the untrained control), 0 (no DP), epsilons")
    p.add_argument("--epochs", type=int, default=20, help="epochs with DP")
    p.add_argument("--epochs-nodp", type=int, default=None, help="epochs without DP (default: --epochs)")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate with DP")
    p.add_argument("--lr-nodp", type=float, default=1e-3, help="AdamW learning rate without DP")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--batch-users", type=int, default=128, help="expected users per DP step")
    p.add_argument("--lira", type=int, default=0, help="shadow models for the LiRA-style attack (0: none)")
    p.add_argument("--lira-settings", default="0,1,4,8", help="the settings the LiRA attack runs for")
    p.add_argument("--append", action="store_true", help="add the rows to --out's existing results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/privacy-<dataset>.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: one setting, JSON to stdout
    p.add_argument("--note", default="")
    args = p.parse_args()
    args.epochs_nodp = args.epochs if args.epochs_nodp is None else args.epochs_nodp
    args.dim_nodp = args.dim if args.dim_nodp is None else args.dim_nodp
    if args.one is not None:
        print(json.dumps(run_one(args, args.one)))
        return
    out = args.out or ROOT / "benchmarks" / "results" / f"privacy-{args.dataset}.json"
    doc: dict[str, Any] = {
        "command": "python " + shlex.join(sys.argv), "date": time.strftime("%Y-%m-%d"),
        "cpu": platform.processor() or platform.machine(), "note": args.note,
        "protocol": "members = half the users (seeded), trained with leave-one-out; attacks score each user by "
                    "their mean next-item loss over their events but the last two, members vs non-members: "
                    "loss threshold (attack_auc), and with --lira N a likelihood ratio against N shadow models "
                    "trained the same way on random halves of all users (lira_auc)",
        "results": []}
    if args.append and out.exists():
        old = json.loads(out.read_text())
        doc = old | {"more_commands": [*old.get("more_commands", []), doc["command"]]}
    for setting in args.settings.split(","):
        child = [a for a in sys.argv if a != "--one"]
        proc = subprocess.run([sys.executable, *child, "--one", setting], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"setting {setting}: exit status {proc.returncode}")
        doc["results"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(doc["results"][-1]), flush=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(out)  # complete after every setting, so a long run's finished rows are kept
    print(f"written to {out}")


if __name__ == "__main__":
    main()
