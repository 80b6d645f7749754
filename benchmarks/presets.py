"""Build each size preset of the attention models and take one training step; report size and time.

    python benchmarks/presets.py --sizes large,xl,xxl --models sasrec,bert4rec,hstu

The small presets (tiny, small, base) take their training step in the test suite
(tests/models/test_contracts.py). Here the larger ones are built over a Beauty-sized catalog
(54,542 items), given one batch of ``--batch`` sequences of length ``--len``, and updated once
with full cross-entropy: forward, backward, optimiser step. AdamW keeps two fp32 moments per
parameter (16 bytes per parameter in all), more than this 24 GiB machine holds for the
billion-parameter preset, so ``--optimizer sgd`` is the default here; the optimiser used is recorded.
Results: benchmarks/results/presets.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import gc
import json
import resource
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from seqrec.data.batch import SequenceBatch
from seqrec.models.registry import build_model, make_config
from seqrec.tiled_ce import tiled_ce

ROOT = Path(__file__).resolve().parent


def one_step(name: str, size: str, n_items: int, batch: int, length: int, optimizer: str,
             device: str = "cpu") -> dict[str, object]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(name, make_config(name, size=size, n_items=n_items, max_len=length)).to(device)
    built = time.perf_counter() - t0
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    blocks = sum(p.numel() for m in stacks for p in m.parameters())  # the layer stack, without embeddings
    opt: torch.optim.Optimizer = (torch.optim.SGD(model.parameters(), lr=1e-3) if optimizer == "sgd"
                                  else torch.optim.AdamW(model.parameters(), lr=1e-3))
    items = torch.randint(1, n_items + 1, (batch, length + 1)).to(device)
    model.train()
    t1 = time.perf_counter()
    hidden = model(SequenceBatch(items[:, :-1]))
    loss = tiled_ce(hidden.reshape(-1, hidden.shape[-1]), model.item_table(), items[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    step = time.perf_counter() - t1
    gpu = {"gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20} if device.startswith("cuda") else {}
    return {**gpu, "device": device, "model": name, "size": size, "parameters": model.n_parameters(),
            "block_parameters": blocks,
            "build_seconds": built, "step_seconds": step, "loss": float(loss.detach()),
            "finite": bool(torch.isfinite(loss.detach())),
            "optimizer": optimizer, "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="large,xl,xxl")
    p.add_argument("--models", default="sasrec,bert4rec,hstu")
    p.add_argument("--items", type=int, default=54542)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--len", type=int, default=16)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "presets.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes.split(","):
        for name in args.models.split(","):
            row = one_step(name, size, args.items, args.batch, args.len, args.optimizer, args.device)
            print(json.dumps(row), flush=True)
            rows.append(row)
            gc.collect()
    out = {"rows": rows, "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
           "threads": args.threads, "torch": torch.__version__, "ran_beside": args.note,
           "date": datetime.now(UTC).isoformat(timespec="seconds")}
    path = args.out
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
