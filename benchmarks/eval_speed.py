"""Full-ranking evaluation speed: every test user of a dataset against the whole catalog.

    python benchmarks/eval_speed.py --dataset amazon-beauty-bert4rec --repeats 3

Times seqrec's `evaluate` (tiled comparisons, 256-user batches ranked side by side by `--threads`
threads, each op single-threaded) and, in the same run, the same `evaluate` with one batch at a
time on `--threads` intra-op threads (the path of the earlier evaluation code), and a plain reference (1024-user
batches, whole-row comparisons) that computes the same ranks. Scores come from an untrained
SASRec: only speed is measured here, and all paths must agree exactly.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import seqrec
from seqrec.datasets import load_dataset
from seqrec.eval.evaluate import EvalConfig, evaluate, score_histories
from seqrec.eval.metrics import all_metrics
from seqrec.models.base import SequenceModel
from seqrec.models.registry import create

ROOT = Path(__file__).resolve().parent
DATA_ROOT = ROOT.parent.parent / "shared" / "data"


@torch.no_grad()
def plain_ranks(model: SequenceModel, data: seqrec.EvalSet) -> np.ndarray:
    """The straightforward version: big batches, whole-row comparisons."""
    out = []
    for start in range(0, len(data), 1024):
        rows = np.arange(start, min(start + 1024, len(data)))
        scores = score_histories(model, data.history, rows, True)
        t = scores.gather(1, torch.from_numpy(data.targets[rows])[:, None])
        ranks = 1.0 + (scores > t).sum(1).double() + ((scores == t).sum(1) - 1).double() / 2
        out.append(torch.where(torch.isinf(t[:, 0]), torch.inf, ranks).numpy())
    return np.concatenate(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="amazon-beauty-bert4rec")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, DATA_ROOT)
    test = seqrec.leave_one_out(data).test
    torch.manual_seed(0)
    model = create("sasrec", n_items=data.n_items, max_len=50).eval()
    ours, intra, plain = [], [], []
    for _ in range(args.repeats):  # interleaved, so drift hits all alike
        t0 = time.perf_counter()
        metrics = evaluate(model, test, EvalConfig(ks=(10, 20), workers=args.threads))
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        one_batch = evaluate(model, test, EvalConfig(ks=(10, 20), workers=1))
        intra.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = all_metrics(plain_ranks(model, test), (10, 20))
        plain.append(time.perf_counter() - t0)
    assert all(abs(metrics[k] - v) < 1e-12 for k, v in ref.items()), "the tiled and plain paths disagree"
    assert one_batch == metrics, "batches side by side disagree with one batch at a time"
    out = {
        "dataset": args.dataset, "users": len(test), "items": data.n_items,
        "seqrec_seconds": ours, "one_batch_at_a_time_seconds": intra, "plain_seconds": plain,
        "seqrec_median_s": statistics.median(ours), "one_batch_at_a_time_median_s": statistics.median(intra),
        "plain_median_s": statistics.median(plain),
        "speedup_median": statistics.median(plain) / statistics.median(ours),
        "batch_threads_speedup_median": statistics.median(intra) / statistics.median(ours),
        "users_per_second": len(test) / statistics.median(ours),
        "threads": args.threads, "ran_beside": args.note,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    path = ROOT / "results" / f"eval-speed-{args.dataset}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
