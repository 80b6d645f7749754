"""The GPU benchmarks in one command, for a machine with a GPU (CI has none):

    python benchmarks/gpu.py [--budget 540]

Runs, each as its own process with its own time limit, and writes benchmarks/results/gpu-suite.json
(every stage's command, exit status, seconds and the tail of its output; the stages' own result files
are named there):

  smoke    benchmarks/gpu_smoke.py: train (fp32, bf16 autocast), evaluate, save, load, recommend and
           serve on the GPU; served scores equal offline ones
  beauty   one epoch of SASRec + full CE (the tiled cross-entropy) on Amazon Beauty (S3-Rec files), bf16
           autocast, then full-ranking evaluation (skipped when the dataset is absent)
  presets  one AdamW step of the xl and xxl SASRec presets (step seconds, peak GPU memory)
  catalog  10M items: 200 steps with the sparse item optimizer and 20 with dense AdamW
  ddp      `seqrec train --nproc 2` on two GPUs (NCCL), when there are two

``--device cpu --quick`` runs the same stages on tiny settings, to check the script itself without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
PY = sys.executable


def stages(args: argparse.Namespace, tmp: Path) -> list[tuple[str, list[str], float]]:
    """(name, command, share of the budget) for every stage this machine can run."""
    dev, quick = args.device, args.quick
    res = ROOT / "results"
    out: list[tuple[str, list[str], float]] = []
    if dev.startswith("cuda"):
        out.append(("smoke", [PY, str(ROOT / "gpu_smoke.py"), "--device", dev, "--out", str(res / "gpu-smoke.json")],
                    0.15))
    beauty = Path(args.data_root) / "amazon-beauty-s3rec"
    if beauty.exists() or quick:
        dataset = "movielens-latest-small" if quick else "amazon-beauty-s3rec"
        out.append(("beauty", [PY, str(ROOT / "run.py"), "--dataset", dataset, "--model", "sasrec",
                               "--loss", "ce", "--epochs", "1", "--device", dev,
                               *(["--bf16"] if dev.startswith("cuda") else []), "--max-minutes", "4",
                               "--tag", f"gpu-epoch-{dev.replace(':', '')}"], 0.2))
    sizes = "tiny" if quick else "xl,xxl"
    out.append(("presets", [PY, str(ROOT / "presets.py"), "--sizes", sizes, "--models", "sasrec",
                            "--optimizer", "adamw", "--batch", "8", "--len", "50", "--device", dev,
                            "--out", str(res / f"presets-{dev.replace(':', '')}.json")], 0.2))
    items = "20000" if quick else "10000000"
    steps = ["sparse:20", "dense:5"] if quick else ["sparse:200", "dense:20"]
    out.append(("catalog", [PY, str(ROOT / "catalog.py"), "--items", items, "--events", "200000" if quick else
                            "10000000", "--device", dev, "--eval-users", "0", "--variants", *steps,
                            "--tag", dev.replace(":", "")], 0.3))
    if dev.startswith("cuda") and torch.cuda.device_count() >= 2:
        out.append(("ddp", ["seqrec", "train", "--dataset", "movielens-latest-small", "--model", "sasrec",
                            "--epochs", "3", "--device", "cuda", "--nproc", "2", "--quiet",
                            "--out", str(tmp / "ddp")], 0.15))
    return out


def run_stage(name: str, command: list[str], limit: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, check=False)
        status, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status = "timeout"
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    row = {"stage": name, "command": " ".join(shlex.quote(c) for c in command), "status": status,
           "seconds": round(time.perf_counter() - t0, 2), "limit_seconds": round(limit, 1), "tail": text[-3000:]}
    print(json.dumps({k: v for k, v in row.items() if k != "tail"}), flush=True)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for all stages together")
    p.add_argument("--data-root", default=str(ROOT.parent.parent / "shared" / "data"),
                   help="where amazon-beauty-s3rec is looked for (benchmarks/run.py reads it from there)")
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the script, measures nothing")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gpu-suite.json")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu.py: no CUDA device visible to torch; nothing to run (use --device cpu --quick to check the script)",
              file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    report: dict[str, Any] = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "quick": args.quick, "stages": []}
    before = set((ROOT / "results").iterdir())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gpu-suite.json" if args.quick else args.out
        for name, command, share in stages(args, Path(tmp)):
            report["stages"].append(run_stage(name, command, args.budget * share))
            out.write_text(json.dumps(report, indent=2) + "\n")  # rewritten per stage: a cut run keeps the rest
    if args.quick:  # a check of the script measures nothing: its stages' result files go
        for path in set((ROOT / "results").iterdir()) - before:
            path.unlink()
    else:
        print(f"wrote {args.out}")
    return 0 if all(s["status"] == 0 for s in report["stages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
