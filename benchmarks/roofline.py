"""How far is a SASRec training step from this machine's matrix-multiply limit, and where does the time go?

    python benchmarks/roofline.py --threads 2 --steps 60

1. Measures achievable matmul throughput (fp32 and bf16, GFLOP/s; median of repeats) for a
   large square product and for the output layer's shape (rows x 64 @ 64 x items).
2. Times ``--steps`` real training steps of SASRec (64-d, 2 blocks, full cross-entropy) on
   amazon-beauty-bert4rec batches, split into phases (batch, encoder forward, loss with its
   gradients, encoder backward, clip + optimiser), counts FLOPs (torch's FlopCounterMode for
   the encoder, 6 M N D for the output layer), and projects the epoch time.
3. Writes benchmarks/results/roofline-<threads>t[-bf16][-<tag>].json.

``--baseline`` also runs every timed batch under the schedule training used before (each catalog
tile op on all threads, the for-loop AdamW), alternating the order batch by batch, and reports
the ratios of the two: an A/B in one process.

``--ce-bf16-grads`` times the steps with the catalog softmax's two gradient matmuls on bf16 operands
(``tiled_ce(bf16_grads=True)``) and every batch also with the fp32 softmax, alternating; the
limit it is judged against counts those two matmuls at the bf16 peak (``epoch_limit_seconds_mixed``).

``--bf16`` times the steps under bfloat16 autocast (the encoder; the catalog softmax stays fp32);
the limit at the bf16 peak is reported either way. OpenMP's wait policy is left as the caller sets
it (recorded in the JSON): ``OMP_WAIT_POLICY=PASSIVE python benchmarks/roofline.py`` shows what
sleeping threads cost a lone process.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

import machine  # benchmarks/machine.py
import seqrec
from seqrec.data.batch import SequenceBatch, TrainBatches
from seqrec.datasets import load_dataset
from seqrec.models.registry import create
from seqrec.tiled_ce import tiled_ce
from seqrec.train.config import TrainConfig
from seqrec.train.optim import make_optimizer, param_groups

ROOT = Path(__file__).resolve().parent
DATA_ROOT = ROOT.parent.parent / "shared" / "data"


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 7) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times) / 1e9


def peaks() -> dict[str, float]:
    """Keys square_<side>_<dtype>: bf16 is measured at side 1024 first and at 4096 only where it is
    fast (AMX, AVX512-BF16); without them a 4096 product takes minutes."""
    out = {}
    for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        small = matmul_gflops(1024, 1024, 1024, dtype, 3) if tag == "bf16" else None
        if small is not None and small < 50:
            out[f"square_1024_{tag}"] = small
        else:
            out[f"square_4096_{tag}"] = matmul_gflops(4096, 4096, 4096, dtype, 5)
        out[f"output_layer_256x64x2048_{tag}"] = matmul_gflops(256, 64, 2048, dtype, 21)
        out[f"output_layer_512x64x54543_{tag}"] = matmul_gflops(512, 64, 54543, dtype, 3)
    return out


def square_peak(peak: dict[str, float], tag: str) -> float:
    return peak.get(f"square_4096_{tag}") or peak[f"square_1024_{tag}"]


PHASES = ("batch", "encoder_forward", "loss_with_grads", "encoder_backward", "clip_and_optimizer")


class Variant:
    """One training-step schedule: ``current`` is what training uses now (with ``--ce-bf16-grads``, its
    bf16 gradient matmuls); ``baseline`` the plain schedule (every op on all threads, the
    for-loop AdamW); ``fp32`` the current schedule with the fp32 softmax — kept to A/B in one process."""

    def __init__(self, name: str, model: torch.nn.Module, bf16_grads: bool = False) -> None:
        self.name, self.parallel_tiles, self.bf16_grads = name, name != "baseline", bf16_grads
        self.opt = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-3) if name == "baseline" else make_optimizer(
            model, TrainConfig())
        self.phases: dict[str, list[float]] = defaultdict(list)
        self.targets = 0


def one_step(model: torch.nn.Module, batch: Any, variant: Variant, autocast: Any,
             counter: FlopCounterMode | None) -> tuple[dict[str, float], int]:
    """Time one training step's phases; returns (seconds per phase, targets)."""
    t1 = time.perf_counter()
    if counter is not None:
        counter.__enter__()
    with autocast:
        hidden = model(SequenceBatch(batch.items))
    mask = batch.targets > 0
    h = hidden[mask]
    h_leaf = h.detach().requires_grad_()
    t2 = time.perf_counter()
    if counter is not None:
        counter.__exit__(None, None, None)
    with autocast:
        loss = tiled_ce(h_leaf, model.item_table(), batch.targets[mask], bf16_grads=variant.bf16_grads,
                        parallel=variant.parallel_tiles)
    variant.opt.zero_grad(set_to_none=True)
    loss.backward()
    t3 = time.perf_counter()
    h.backward(h_leaf.grad)
    t4 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    variant.opt.step()
    t5 = time.perf_counter()
    return {"encoder_forward": t2 - t1, "loss_with_grads": t3 - t2, "encoder_backward": t4 - t3,
            "clip_and_optimizer": t5 - t4}, int(mask.sum())


def summarize_variant(v: Variant, n_targets: int, ce_flops_per_target: float, enc_flops: float) -> dict[str, Any]:
    total = {k: sum(x) for k, x in v.phases.items()}
    step_seconds = sum(total.values())
    per_target = step_seconds / v.targets
    return {
        "targets_timed": v.targets,
        "phase_share": {k: x / step_seconds for k, x in total.items()},
        "phase_ms_per_step": {k: 1000 * statistics.median(x) for k, x in v.phases.items()},
        "projected_epoch_seconds": per_target * n_targets,
        "achieved_gflops_whole_step": n_targets * (ce_flops_per_target + enc_flops) / (per_target * n_targets) / 1e9,
        "achieved_gflops_loss_phase": v.targets * ce_flops_per_target / total["loss_with_grads"] / 1e9,
    }


def profile_steps(args: argparse.Namespace) -> dict[str, Any]:
    """Times each batch under the current schedule and, with ``--baseline``, under the old one too
    (order alternating batch by batch, so drift hits both alike)."""
    data = load_dataset(args.dataset, DATA_ROOT)
    split = seqrec.leave_one_out(data)
    model = create("sasrec", n_items=split.n_items, max_len=50, dropout=0.3)
    batches = TrainBatches(split.train, 50, args.batch_size, sliding=True, bucket=True)
    n_targets = int((batches.lengths - 1).clamp(min=0).sum())
    variants = [Variant("current", model, args.ce_bf16_grads)] + [
        Variant(name, model) for name, on in (("baseline", args.baseline), ("fp32", args.ce_bf16_grads)) if on]
    enc_flops = 0.0
    gen = torch.Generator().manual_seed(0)
    it = iter(batches.epoch(gen))
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    for step in range(args.steps + 3):
        t0 = time.perf_counter()
        batch = next(it)
        fetch = time.perf_counter() - t0
        order = variants if step % 2 == 0 else variants[::-1]
        for v in order:
            counter = FlopCounterMode(display=False) if step == 3 and v is variants[0] else None
            times, targets = one_step(model, batch, v, autocast, counter)
            if counter is not None:
                enc_flops = 3 * counter.get_total_flops() / targets  # forward + backward ~ 3x forward, per target
            if step >= 3:  # skip warm-up steps
                for name, dt in {"batch": fetch, **times}.items():
                    v.phases[name].append(dt)
                v.targets += targets
    n, d = split.n_items, 64
    ce_flops_per_target = 6 * n * d
    out: dict[str, Any] = {
        "n_items": n, "targets_per_epoch": n_targets, "batches_per_epoch": len(batches), "steps_timed": args.steps,
        **summarize_variant(variants[0], n_targets, ce_flops_per_target, enc_flops),
        "output_layer_tflop_per_epoch": n_targets * ce_flops_per_target / 1e12,
        "encoder_tflop_per_epoch": n_targets * enc_flops / 1e12,
    }
    for other in variants[1:]:
        base = summarize_variant(other, n_targets, ce_flops_per_target, enc_flops)
        out[other.name] = base
        out[f"speedup_vs_{other.name}"] = {
            "projected_epoch": base["projected_epoch_seconds"] / out["projected_epoch_seconds"],
            **{f"median_{k}": statistics.median(other.phases[k]) / statistics.median(variants[0].phases[k])
               for k in PHASES if k != "batch"},
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="amazon-beauty-bert4rec")
    p.add_argument("--threads", type=machine.threads, default=2)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    p.add_argument("--bf16", action="store_true", help="time the steps under bfloat16 autocast")
    p.add_argument("--baseline", action="store_true",
                   help="also time every batch under the plain schedule (all-thread ops, for-loop AdamW)")
    p.add_argument("--ce-bf16-grads", action="store_true",
                   help="the catalog softmax's gradient matmuls on bf16 operands; every batch is also timed "
                        "with the fp32 softmax (A/B), and the limit counts those matmuls at the bf16 peak")
    p.add_argument("--tag", default="", help="suffix of the result file name")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    peak = peaks()
    step = profile_steps(args)
    fp32_peak = peak["square_4096_fp32"]
    tflop = float(step["output_layer_tflop_per_epoch"]) + float(step["encoder_tflop_per_epoch"])
    limit = tflop * 1e3 / fp32_peak
    # With --ce-bf16-grads two of the output layer's three matmuls run in bf16: their share of the
    # FLOPs is judged at the bf16 peak, the logits matmul and the encoder at the fp32 one.
    low_tflop = 2 / 3 * float(step["output_layer_tflop_per_epoch"]) if args.ce_bf16_grads else 0.0
    mixed = ((tflop - low_tflop) / fp32_peak + low_tflop / square_peak(peak, "bf16")) * 1e3
    out = {
        "matmul_gflops": peak, "sasrec_step": step, "bf16_autocast": args.bf16,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "epoch_limit_seconds_fp32": limit,
        "epoch_limit_seconds_bf16": tflop * 1e3 / square_peak(peak, "bf16"),
        "ratio_to_limit": float(step["projected_epoch_seconds"]) / limit,
        "ce_bf16_grads": args.ce_bf16_grads,
        "epoch_limit_seconds_mixed": mixed if args.ce_bf16_grads else None,
        "ratio_to_mixed_limit": float(step["projected_epoch_seconds"]) / mixed if args.ce_bf16_grads else None,
        "fraction_of_fp32_peak": float(step["achieved_gflops_whole_step"]) / fp32_peak,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine.describe(),
        "ran_beside": args.note, "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    name = f"roofline-{args.threads}t" + ("-bf16" if args.bf16 else "") + ("-bf16grads" if args.ce_bf16_grads else "") \
        + (f"-{args.tag}" if args.tag else "")
    path = ROOT / "results" / f"{name}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
