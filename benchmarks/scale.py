"""Preprocessing at scale: a synthetic 10-million-row log through cleaning, k-core, id mapping,
leave-one-out split and training windows. Reports seconds per stage and peak memory.

    python benchmarks/scale.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import seqrec
from seqrec.data.batch import TrainBatches

ROOT = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=500_000)
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--note", default="")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    stages: dict[str, float] = {}
    t = time.perf_counter()
    frame = pd.DataFrame({
        "user": rng.integers(0, args.users, args.rows),
        "item": (rng.zipf(1.3, args.rows) % args.items).astype(np.int64),
        "time": rng.integers(1_500_000_000, 1_600_000_000, args.rows),
    })
    stages["generate"] = time.perf_counter() - t
    t = time.perf_counter()
    data = seqrec.build_dataset(frame, seqrec.PreprocessOptions(user_core=5, item_core=5))
    stages["clean_kcore_map_sort"] = time.perf_counter() - t
    t = time.perf_counter()
    split = seqrec.leave_one_out(data)
    stages["leave_one_out"] = time.perf_counter() - t
    t = time.perf_counter()
    batches = TrainBatches(split.train, 50, 128)
    stages["training_windows"] = time.perf_counter() - t
    out = {
        "rows": args.rows, "kept": data.n_events, "users": data.n_users, "items": data.n_items,
        "windows": int(batches.windows.shape[0]), "seconds": stages,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "ran_beside": args.note,
    }
    (ROOT / "results" / f"scale-{args.rows}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
