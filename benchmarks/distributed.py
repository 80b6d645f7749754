"""The largest size preset that takes a full AdamW step with DDP and with FSDP2, and each process's peak RSS.

    python benchmarks/distributed.py --sizes large,xl,xxl --nproc 2

For each size and ``--shard`` mode, torchrun starts ``--nproc`` gloo processes that build the
preset (SASRec over a Beauty-sized catalog, 54,542 items), wrap it as `seqrec train` does
(``seqrec.train.distributed.Replicas``: DDP, or ``fully_shard`` per block and at the root) and take
one step: forward on each rank's ``--batch`` sequences of ``--len`` items, full cross-entropy, backward,
the training loop's AdamW (``make_optimizer``). Every rank reports its peak RSS (ru_maxrss).
A configuration whose estimated memory (parameters counted on the meta device; bytes per parameter
below, summed over the processes that share this machine's memory) exceeds the memory available is
not started: the result says so, with the estimate. Result: benchmarks/results/distributed-<host>.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import resource
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
# bytes per parameter per process: weights + gradients + AdamW's two moments (16), plus DDP's gradient
# buckets (4); FSDP holds a 1/world share of those 16, and rank 0 a whole plain copy (4) to evaluate
BYTES_DDP, BYTES_SHARDED, BYTES_PLAIN = 20, 16, 4


def count_parameters(size: str, n_items: int, length: int) -> int:
    from seqrec.models.registry import build_model, make_config

    with torch.device("meta"):
        model = build_model("sasrec", make_config("sasrec", size=size, n_items=n_items, max_len=length))
    return sum(p.numel() for p in model.parameters())


def estimate_bytes(params: int, shard: str, nproc: int) -> int:
    """Memory the ``nproc`` processes of one configuration need together, by the rule above."""
    if shard == "none":
        return nproc * BYTES_DDP * params
    return BYTES_SHARDED * params + BYTES_PLAIN * params + nproc * BYTES_PLAIN * params  # + each build


def available_bytes() -> int:
    from seqrec.train.distributed import available_memory

    return available_memory()


def worker(args: argparse.Namespace) -> int:
    """One rank: build, wrap, one AdamW step; rank 0 prints every rank's numbers as one JSON line."""
    import torch.distributed as dist

    from seqrec.data.batch import SequenceBatch
    from seqrec.models.registry import build_model, make_config
    from seqrec.tiled_ce import tiled_ce
    from seqrec.train.config import TrainConfig
    from seqrec.train.distributed import Replicas, current
    from seqrec.train.optim import make_optimizer

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    ranks = current()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model("sasrec", make_config("sasrec", size=args.size, n_items=args.items, max_len=args.len))
    replicas = Replicas(model, args.shard, torch.device("cpu"), ranks)
    net = replicas.trained
    opt = make_optimizer(net, TrainConfig())
    built = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(ranks.rank)
    items = torch.randint(1, args.items + 1, (args.batch, args.len + 1), generator=gen)
    t1 = time.perf_counter()
    hidden = replicas.net(SequenceBatch(items[:, :-1]))
    loss = tiled_ce(hidden.reshape(-1, hidden.shape[-1]), net.item_table(), items[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    step = time.perf_counter() - t1
    mine = {"rank": ranks.rank, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "build_seconds": built, "step_seconds": step, "loss": float(loss.detach())}
    rows: list[dict[str, float] | None] = [None] * ranks.world
    dist.all_gather_object(rows, mine)
    if ranks.main:
        print("RESULT " + json.dumps(rows), flush=True)
    dist.destroy_process_group()
    return 0


def run_one(args: argparse.Namespace, size: str, shard: str) -> dict[str, object]:
    params = count_parameters(size, args.items, args.len)
    need, free = estimate_bytes(params, shard, args.nproc), available_bytes()
    row: dict[str, object] = {"size": size, "shard": shard, "nproc": args.nproc, "parameters": params,
                              "estimated_gib": need / 2**30, "available_gib": free / 2**30}
    if need > args.memory_share * free:
        return {**row, "ok": False, "why": f"not started: estimated {need / 2**30:.1f} GiB > "
                f"{args.memory_share:.0%} of the {free / 2**30:.1f} GiB available"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
           __file__, "--worker", "--size", size, "--shard", shard, "--items", str(args.items),
           "--batch", str(args.batch), "--len", str(args.len), "--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {**row, "ok": False, "why": f"exit status {proc.returncode}", "stderr_tail": proc.stderr[-800:]}
    ranks = json.loads(lines[-1][len("RESULT "):])
    return {**row, "ok": True, "seconds": time.perf_counter() - t0, "ranks": ranks,
            "peak_rss_mb_per_rank": [r["peak_rss_mb"] for r in ranks]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="large,xl,xxl")
    p.add_argument("--shards", default="none,full")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--items", type=int, default=54542)
    p.add_argument("--batch", type=int, default=2, help="sequences per rank")
    p.add_argument("--len", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--memory-share", type=float, default=0.8,
                   help="start a configuration only when its estimate is below this share of the free memory")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--shard", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for size in args.sizes.split(","):
        for shard in args.shards.split(","):
            row = run_one(args, size, shard)
            print(json.dumps(row), flush=True)
            rows.append(row)
    largest = {shard: max((str(r["size"]) for r in rows if r["shard"] == shard and r["ok"]),
                          key=args.sizes.split(",").index, default=None) for shard in args.shards.split(",")}
    out = {"rows": rows, "sizes_tried": args.sizes.split(","), "largest_tried_size_with_an_adamw_step": largest,
           "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "torch": torch.__version__,
           "cpus": os.cpu_count(), "memory_gib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30,
           "note": args.note, "date": datetime.now(UTC).isoformat(timespec="seconds")}
    path = ROOT / "results" / f"distributed-{platform.node() or 'host'}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
