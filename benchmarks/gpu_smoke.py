"""End-to-end check of the CUDA path, for a machine with a GPU (CI has none):

    python benchmarks/gpu_smoke.py [--device cuda] [--out benchmarks/results/gpu-smoke.json]

Trains SASRec on the bundled MovieLens data on the GPU (full cross-entropy, then bf16 autocast),
evaluates by full ranking there, saves, loads onto the GPU, recommends, and serves one request
through the HTTP app, checking that served scores equal offline ones. Each step's seconds and the
metrics go to a JSON; the whole run takes well under five minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import seqrec
from seqrec.train.config import TrainConfig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu-smoke.json")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device visible to torch; nothing to check", file=sys.stderr)
        return 2
    steps: dict[str, Any] = {"device": args.device, "torch": torch.__version__,
                             "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    t = time.perf_counter()
    data = seqrec.load_dataset("movielens-latest-small")
    split = seqrec.leave_one_out(data)
    for name, bf16 in (("fp32", False), ("bf16", True)):
        cfg = TrainConfig(epochs=3, device=args.device, bf16=bf16, lr=1e-3)
        rec = seqrec.Recommender("sasrec", cfg, dim=64)
        t0 = time.perf_counter()
        rec.fit(data, split, progress=False)
        assert rec.model is not None and rec.model.device.type == torch.device(args.device).type
        steps[f"train_{name}_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        steps[f"test_{name}"] = rec.evaluate(ks=(10,))
        steps[f"evaluate_{name}_seconds"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        rec.save(Path(tmp) / "art")
        loaded = seqrec.Recommender.load(Path(tmp) / "art", device=args.device)
        assert loaded.evaluate(ks=(10,)) == steps["test_bf16"], "a loaded artifact evaluates differently"
        user = data.users.external[0]
        offline = loaded.recommend([user], k=5)
        steps["recommend"] = offline[["item_id", "score"]].astype(str).values.tolist()
        steps["served_equals_offline"] = serve_one(Path(tmp) / "art", args.device, user, offline)
    steps["total_seconds"] = time.perf_counter() - t
    args.out.write_text(json.dumps(steps, indent=2, default=str))
    print(json.dumps(steps, indent=2, default=str))
    return 0


def serve_one(artifact: Path, device: str, user: Any, offline: Any) -> bool:
    from fastapi.testclient import TestClient

    from seqrec.serve.api import create_app
    from seqrec.serve.service import build_service
    from seqrec.serve.settings import ServeSettings

    settings = ServeSettings(artifact=artifact, store=f"sqlite:///{artifact.parent / 'serve.db'}", device=device)
    service = build_service(settings)
    with TestClient(create_app(service, settings)) as client:
        body = client.get(f"/v1/users/{user}/recommendations?k=5").json()
    served = [float(r["score"]) for r in body["items"]]
    return bool(torch.allclose(torch.tensor(served), torch.tensor(offline["score"].tolist()), atol=1e-4))


if __name__ == "__main__":
    sys.exit(main())
