"""Tune a model on a dataset with `seqrec tune`, then evaluate the best trial's model once on test.

    python benchmarks/tune.py --dataset amazon-beauty-s3rec --model sasrec --trials 40 --timeout 28800

The search sees only the validation split. The best trial's model is kept (`seqrec tune --save-best`);
when the search ends, only that model is evaluated on the test split, by full ranking over the whole
catalog with seen items excluded. Where the study's best trial has no kept model (it completed in a call
without --save-best), or with --retrain, its run (best.toml) is trained again with the same seed
instead. Flags this script does not know are passed to `seqrec tune` (fixed settings such as
--max-len 50, or --space FILE, --pruner none, --device cuda).
The study (SQLite) lives in --study-dir/<dataset>-<model>[-<tag>]: running the same command again
continues it. Results go to benchmarks/results/tune-<dataset>-<model>[-<tag>].json with the exact
command, every trial, the best settings, validation and test metrics and the published numbers.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: sleeping (not spinning) idle threads, as in benchmarks/run.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import resource
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

import machine  # benchmarks/machine.py
import seqrec
from seqrec.cli import main as seqrec_main
from seqrec.runconfig import load_run_config, run_config_dict
from seqrec.tune import BEST_MODEL, kept_model, read_data

ROOT = Path(__file__).resolve().parent
DATA_ROOT = ROOT.parent.parent / "shared" / "data"
# Fixed settings of every trial unless a passed-through flag says otherwise: those of the best S3-Rec
# runs (benchmarks/results/amazon-*-s3rec-sasrec-d256*.json): full CE, cosine decay after 100 warm-up
# steps, early stopping; each trial capped in time so that one slow setting cannot eat the budget.
FIXED = ("--loss", "ce", "--schedule", "cosine", "--warmup-steps", "100", "--epochs", "24", "--patience", "5",
         "--max-seconds", "1500", "--device", "cpu", "--save-best")
# Published full-ranking NDCG@10 / HR@10 on the same files (sources in benchmarks/README.md)
PUBLISHED: dict[str, dict[str, Any]] = {
    "amazon-beauty-s3rec": {"WEARec (paper)": {"NDCG@10": 0.0614, "HR@10": 0.1041},
                            "BSARec (its log)": {"NDCG@10": 0.0611, "HR@10": 0.1008}},
    "amazon-sports-s3rec": {"WEARec (paper)": {"NDCG@10": 0.0367, "HR@10": 0.0631},
                            "BSARec (paper)": {"NDCG@10": 0.0360}},
    "amazon-scientific-unisrec": {"VQ-Rec (its README)": {"NDCG@10": 0.0645, "HR@10": 0.1238}},
    "amazon-beauty-bert4rec": {"SASRec + full CE (Klenitskiy & Vasilev)": {"NDCG@10": 0.0327, "HR@10": 0.0533},
                               "BERT4Rec (Klenitskiy & Vasilev)": {"NDCG@10": 0.0187, "HR@10": 0.0338}},
}


def parse() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", help="a bundled or ../shared/data dataset (default: amazon-beauty-s3rec); with "
                   "--data, required: the name of the study, of the result and of its published numbers")
    p.add_argument("--data", help="train on this log file instead of --dataset (pass --format etc. through)")
    p.add_argument("--model", default="sasrec")
    p.add_argument("--trials", type=int, default=40, help="trials in this call (a continued study adds them)")
    p.add_argument("--timeout", type=float, help="start no trial after this many seconds")
    p.add_argument("--threads", type=machine.threads, default=2)
    p.add_argument("--tag", default="", help="suffix for the study folder and the result file name")
    p.add_argument("--study-dir", type=Path, default=Path("runs/tune"), help="where the studies live")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    p.add_argument("--retrain-only", action="store_true",
                   help="search no further: train the study's best run again and evaluate it on test")
    p.add_argument("--retrain", action="store_true",
                   help="train the best run again even when its trial's model was kept")
    args, passed = p.parse_known_args()
    if args.data and not args.dataset:
        p.error("--data needs --dataset NAME: the name its study, result file and published numbers go under")
    args.dataset = args.dataset or "amazon-beauty-s3rec"
    return args, passed


def test_once(rec: seqrec.Recommender) -> dict[str, Any]:
    """Evaluate a trained model once on test; its training figures come from its info."""
    t0 = time.perf_counter()
    test = rec.evaluate(ks=(5, 10, 20))
    info = rec.info
    return {"valid_best": info.get("best_valid"), "best_epoch": info.get("best_epoch"),
            "epochs_run": len(info.get("history", [])), "train_seconds": info.get("train_seconds"),
            "test_eval_seconds": time.perf_counter() - t0, "n_parameters": info.get("n_parameters"),
            "test": {k: v for k, v in test.items() if k.split("@")[0] in ("HR", "NDCG", "MRR", "coverage")},
            "history": info.get("history")}


def retrain_and_test(best_toml: Path) -> dict[str, Any]:
    """Train the best run again (same seed, so the same model as its trial) and evaluate it once on test."""
    run = load_run_config(best_toml)
    trial_data = read_data(run)  # as each trial read it: the log, the split, the item and user features
    rec = seqrec.Recommender(run.model, run.train, **run.model_config)
    rec.tower_inputs, rec.user_inputs = trial_data.tower, trial_data.users
    rec.fit(trial_data.data, trial_data.split, progress=False)
    return {"run_config": run_config_dict(run), **test_once(rec)}


def test_saved(model_dir: Path) -> dict[str, Any]:
    """Evaluate the best trial's kept model once on test."""
    rec = seqrec.Recommender.load(model_dir)
    return {"model_dir": str(model_dir), "trial": rec.info["tune"]["trial"], **test_once(rec)}


def main() -> int:
    args, passed = parse()
    torch.set_num_threads(args.threads)
    name = f"{args.dataset}-{args.model}" + (f"-{args.tag}" if args.tag else "")
    study_dir = args.study_dir / name
    source = ["--data", args.data] if args.data else ["--dataset", args.dataset, "--data-root", str(DATA_ROOT)]
    argv = ["tune", *source, "--model", args.model, *FIXED,
            "--trials", str(args.trials), "--study-name", name, "--out", str(study_dir), "--quiet", *passed]
    if args.timeout is not None:
        argv += ["--timeout", str(args.timeout)]
    t0 = time.perf_counter()
    status = 0 if args.retrain_only else seqrec_main(argv)
    if status != 0:
        return status
    tune_seconds = time.perf_counter() - t0
    study = json.loads((study_dir / "trials.json").read_text())
    if study["best"] is None:
        print("tune.py: no trial completed; nothing to train", file=sys.stderr)
        return 1
    held = kept_model(study_dir, study["study"])
    # the kept model counts only as the best trial's own: the same number and the same value (a model saved by an
    # earlier study of the same name, or by a trial cut off before it was recorded, has neither)
    kept = (held == (study["best"]["trial"], study["best"]["value"])) and not (args.retrain or args.retrain_only)
    final = test_saved(study_dir / BEST_MODEL) if kept else retrain_and_test(study_dir / "best.toml")
    states = [t["state"] for t in study["trials"]]
    out = {
        "dataset": args.dataset, "model": args.model, "tag": args.tag,
        "protocol": "leave-one-out, full ranking over all items, seen items excluded; the search scored trials "
                    "on the validation split only, and the best run alone was evaluated on test, once",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "seqrec_tune_argv": argv, "study": study["study"], "storage": study["storage"],
        "metric": study["metric"], "space": study["space"], "fixed": study["fixed"],
        "trials_total": len(states), "trials_by_state": {s: states.count(s) for s in sorted(set(states))},
        "tune_seconds_this_call": tune_seconds,
        "best": study["best"], f"best_{study['metric']}": study["best"]["value"],
        "final_model": "the best trial's kept model" if kept else "the best run trained again with its seed",
        ("kept" if kept else "retrained"): final, "test": final["test"],
        "published": PUBLISHED.get(args.dataset, {}),
        "trials": study["trials"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": machine.describe(), "ran_beside": args.note,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = ROOT / "results" / f"tune-{name}.json"
    if args.retrain_only and path.is_file():  # the search ran in an earlier call: keep its command and time
        earlier = json.loads(path.read_text())
        out["command"] = f"{earlier['command']}; then {out['command']}"
        out["tune_seconds_this_call"] = earlier.get("tune_seconds_this_call")
        out["ran_beside"] = f"search: {earlier.get('ran_beside', '')}; retrain: {args.note}"
    path.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps({"best": study["best"], "test": final["test"]}, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
