"""A/B of training-step time between this checkout and an earlier revision of seqrec.

    python benchmarks/step_ab.py --baseline-rev HEAD~1 --rounds 4 --steps 40

Both sides train SASRec (64-d, 2 blocks, full cross-entropy, dropout 0.3) on the same seeded
amazon-beauty-bert4rec batches through the training loop's own step (``Trainer._step``: forward,
tiled CE, backward, clipping, fused AdamW). Each side runs in its own process (two versions of one
package cannot share one), alternating baseline / current round by round so that machine drift
hits both alike; each process times ``--steps`` steps after ``--warmup`` and reports its median.
Writes benchmarks/results/step-ab-<tag>.json with every process's median, the medians of those,
and their ratio (baseline / current: above 1 means the current checkout is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
DATA_ROOT = REPO.parent / "shared" / "data"


def child(src: str, dataset: str, steps: int, warmup: int, threads: int) -> None:
    """Time training steps with the seqrec found under ``src``; print one JSON line."""
    sys.path.insert(0, src)
    import torch

    import seqrec
    from seqrec.data.batch import TrainBatches
    from seqrec.datasets import load_dataset
    from seqrec.models.registry import create
    from seqrec.train.loop import Trainer
    from seqrec.train.optim import make_optimizer

    torch.set_num_threads(threads)
    split = seqrec.leave_one_out(load_dataset(dataset, DATA_ROOT))
    torch.manual_seed(0)
    model = create("sasrec", n_items=split.n_items, max_len=50, dropout=0.3)
    cfg = seqrec.TrainConfig(device="cpu")
    trainer = Trainer(model, split, cfg, progress=False)
    batches = TrainBatches(trainer.train, 50, cfg.batch_size, cfg.sliding, cfg.bucket)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    model.train()
    times = []
    for i, batch in enumerate(batches.epoch(gen)):
        if i >= warmup + steps:
            break
        t0 = time.perf_counter()
        trainer._step(batch, opt, gen)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"median_step_ms": 1000 * statistics.median(times), "steps": len(times),
                      "seqrec_file": seqrec.__file__}))


def run_side(src: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    cmd = [sys.executable, __file__, "--child", str(src), "--dataset", args.dataset, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-rev", default="HEAD~1", help="git revision to compare against")
    p.add_argument("--dataset", default="amazon-beauty-bert4rec")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.dataset, args.steps, args.warmup, args.threads)
        return 0
    rev = subprocess.run(["git", "rev-parse", args.baseline_rev], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=REPO, check=True,
                       capture_output=True)
        try:
            sides: dict[str, list[float]] = {"baseline": [], "current": []}
            srcs = {"baseline": tree / "src", "current": REPO / "src"}
            for r in range(args.rounds):
                for side in (("baseline", "current") if r % 2 == 0 else ("current", "baseline")):
                    ms = run_side(srcs[side], args)["median_step_ms"]
                    sides[side].append(ms)
                    print(f"round {r + 1} {side}: {ms:.1f} ms/step", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    base, cur = statistics.median(sides["baseline"]), statistics.median(sides["current"])
    out = {
        "baseline_rev": rev, "dataset": args.dataset, "threads": args.threads, "steps": args.steps,
        "step_ms": sides, "median_step_ms": {"baseline": base, "current": cur},
        "speedup_baseline_over_current": base / cur,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "ran_beside": args.note, "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = ROOT / "results" / f"step-ab{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["median_step_ms"]), f"ratio {base / cur:.3f}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
