"""Items never seen in training: Amazon Scientific (UniSRec files, with item text) with 15% of its items held
out entirely (every event with them removed from the training log), SASRec with item modes id, id+text and
text, the same settings and seed.

Each model is trained on the reduced log, then moved onto the full catalog with no further training
(:func:`seqrec.items.zero_shot.move_to_catalog`: a held-out item gets its vector from its text through the
trained projection; the id model has none, so it never ranks one) and evaluated on the full log's
leave-one-out test split, full ranking over every item, seen items excluded. Reported: all users, and the
users whose test target is a held-out item. Reference: popularity among the held-out items only, counted on
the full log's test inputs (it sees the held-out items' events, which no model did). Because that reference is
told the target is a held-out item, each model is also ranked the same way on those users: its scores over the
held-out items only (``heldout_target_users_among_heldout``), the like-for-like comparison.

    python benchmarks/heldout_items.py --modes id,id+text,text --max-seconds 480 \
        --out benchmarks/results/heldout-items-scientific.json

One training process at a time; ``--threads`` sets OMP_NUM_THREADS for a shared machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from seqrec.data.io import ReadOptions, read_log
from seqrec.data.preprocess import Dataset, build_dataset
from seqrec.data.split import EvalSet, make_split
from seqrec.eval.evaluate import EvalConfig, evaluate, mask_seen, ranks_from_scores, score_histories
from seqrec.eval.metrics import all_metrics
from seqrec.items.zero_shot import item_spec, move_to_catalog, other_catalog_inputs
from seqrec.models.base import SequenceModel
from seqrec.recommender import Recommender

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_cli  # noqa: E402
from features_scientific import SETTINGS, prepare  # noqa: E402
from train_cli import METRICS  # noqa: E402


def hold_out(log: Path, work: Path, share: float, seed: int) -> tuple[Path, set[str]]:
    """The training log without the held-out items' events, and the held-out item ids."""
    rows = [line.split() for line in log.read_text().splitlines() if line.strip()]
    items = sorted({i for row in rows for i in row[1:]}, key=int)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(items, size=round(share * len(items)), replace=False).tolist())
    out = work / "scientific-train.txt"
    with open(out, "w") as f:
        for row in rows:
            kept = [i for i in row[1:] if i not in held]
            if kept:
                f.write(f"{row[0]} {' '.join(kept)}\n")
    return out, held


def train(mode: str, log: Path, text: Path, work: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    out = work / f"run-{mode.replace('+', '-')}"
    cmd = ["seqrec", "train", "--data", str(log), "--format", "user-per-line", *SETTINGS, "--epochs",
           str(args.epochs), "--patience", str(args.patience), "--max-seconds", str(args.max_seconds), "--seed",
           str(args.seed), "--device", "cpu", "--quiet", "--out", str(out), "--force"]
    if mode != "id":
        cmd += ["--item-text", str(text), "--text-cols", "text", "--item-mode", mode]
    row = train_cli.train(cmd, out, args.threads, mode).summary()
    return out, {"mode": mode, "command": row["command"], "train_seconds": row["seconds"],
                 "epochs_run": row["epochs_run"], "stopped_by_time": row["stopped_by_time"],
                 "best_epoch": row["best_epoch"], "test_on_reduced_log": row["test"]}


def subset(data: EvalSet, mask: np.ndarray) -> EvalSet:
    rows = np.flatnonzero(mask)
    return EvalSet(data.users[rows], data.history.subset(rows), data.targets[rows])


def evaluate_full(artifact: Path, full: Dataset, text: Path, held_rows: np.ndarray) -> dict:
    """The artifact moved onto the full catalog: metrics on all users and on the held-out-target users."""
    rec = Recommender.load(artifact)
    assert rec.model is not None and rec.dataset is not None
    inputs = other_catalog_inputs(rec.model, full.items, str(text), text_cols="text") \
        if item_spec(rec.model) is not None else None
    moved = move_to_catalog(rec.model, rec.dataset.items, full.items, inputs, unscorable="exclude")
    test = make_split(full).test
    is_held = np.isin(test.targets, held_rows)
    cfg = EvalConfig(ks=(10, 20))
    every = evaluate(moved, test, cfg)
    held = evaluate(moved, subset(test, is_held), cfg)
    seen = evaluate(moved, subset(test, ~is_held), cfg)
    return {"all_users": {k: every[k] for k in METRICS}, "heldout_target_users": {k: held[k] for k in METRICS},
            "other_users": {k: seen[k] for k in METRICS},
            "heldout_target_users_among_heldout": among_heldout(moved, test, held_rows, is_held)}


def ranked_among_heldout(scores: torch.Tensor, targets: np.ndarray, held_rows: np.ndarray) -> dict:
    """Metrics of (R, N + 1) scores (seen items already excluded) with every item but the held-out ones ruled
    out: the ranking both the models and the popularity reference get when told the target is held out."""
    outside = torch.full((scores.shape[1],), -torch.inf, device=scores.device)
    outside[torch.from_numpy(held_rows).to(scores.device)] = 0.0
    ranks = ranks_from_scores(scores + outside, torch.from_numpy(targets)).numpy()
    metrics = all_metrics(ranks, (10, 20))
    return {k: metrics[k] for k in METRICS}


@torch.no_grad()
def among_heldout(model: SequenceModel, test: EvalSet, held_rows: np.ndarray, is_held: np.ndarray) -> dict:
    """The held-out-target users with the model ranking the held-out items only (seen items excluded): what
    the popularity reference is told, so the two compare like for like."""
    rows = np.flatnonzero(is_held)
    scores = score_histories(model, test.history, rows, exclude_seen=True)
    return ranked_among_heldout(scores, test.targets[rows], held_rows)


def popularity_among_heldout(full: Dataset, held_rows: np.ndarray) -> dict:
    test = make_split(full).test
    counts = torch.from_numpy(np.bincount(test.history.items, minlength=full.n_items + 1).astype(np.float32))
    out = {}
    for name, mask in (("all_users", np.ones(len(test), dtype=bool)),
                       ("heldout_target_users", np.isin(test.targets, held_rows))):
        rows = np.flatnonzero(mask)
        scores = counts.repeat(len(rows), 1)
        mask_seen(scores, test.history, rows)
        out[name] = ranked_among_heldout(scores, test.targets[rows], held_rows)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="id,id+text,text")
    p.add_argument("--share", type=float, default=0.15, help="share of the items held out")
    train_cli.add_run_args(p, 40, 5, 480.0, "/tmp/seqrec-heldout-bench",
                           ROOT / "benchmarks" / "results" / "heldout-items-scientific.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    log, text = prepare(args.work)
    reduced, held = hold_out(log, args.work, args.share, args.seed)
    full = build_dataset(read_log(log, ReadOptions(format="user-per-line")), name="scientific")
    held_rows = full.items.to_internal(sorted(held))
    test_targets = np.isin(make_split(full).test.targets, held_rows)
    result = {"benchmark": "heldout-items-scientific", "script": " ".join([sys.executable, *sys.argv]),
              "machine": platform.processor() or platform.machine(), "threads": args.threads,
              "max_seconds_per_run": args.max_seconds, "note": args.note,
              "items": full.n_items, "heldout_items": len(held), "users": len(full.users),
              "heldout_target_users": int(test_targets.sum()),
              "popularity_among_heldout_items": popularity_among_heldout(full, held_rows), "results": []}
    for mode in args.modes.split(","):
        artifact, row = train(mode, reduced, text, args.work, args)
        row |= evaluate_full(artifact, full, text, held_rows)
        result["results"].append(row)
        print(json.dumps({k: row[k] for k in ("mode", "all_users", "heldout_target_users",
                                              "heldout_target_users_among_heldout", "epochs_run")}),
              flush=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
