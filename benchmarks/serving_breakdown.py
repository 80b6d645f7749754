"""Where a recommendation request's CPU goes, stage by stage, in one process (no network, one torch thread).

    python benchmarks/serving_breakdown.py --artifact runs/beauty-serve-sasrec

Each stage is timed with the CPU clock of the thread that runs it (``time.thread_time``), so time spent
waiting for a core that other processes hold is not counted; medians over ``--repeat`` requests for
distinct users of the artifact:

* ``get_recommendations``: the event loop's side of ``GET /v1/users/{id}/recommendations`` through the ASGI app
  as served (the plain-ASGI hot path of seqrec.serve.hotpath: key and query checks, handing the request to the
  scorer and awaiting it, the JSON answer, metrics), with the scorer's own work excluded; uvicorn's HTTP
  parsing and the socket are not in it; ``get_recommendations_fastapi``: the same through FastAPI (the app
  built with ``hot_path=False``: middleware, routing, validation, dependencies);
* the scorer's stages for one request alone and per request in a batch of 8: reading the history from the
  store, the encoder forward pass, the catalog product, masking and top-k, and building the answer;
* ``post_event`` and ``post_event_fastapi``: the event loop's side of ``POST /v1/events`` (the writer's commit
  and fsync excluded), through the hot path and through FastAPI;
* ``minimal_asgi_get``: for comparison, the same GET through a bare ASGI handler that only parses the path and
  ``k``, awaits the scorer and encodes the same answer (no middleware, validation, dependencies or metrics):
  what FastAPI's layers cost.

It answers "how many requests per second can two cores give at best": the sum of the stages is the CPU a
request needs, before uvicorn and the load generator take theirs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.data.sequences import Sequences
from seqrec.eval.evaluate import encode_rows
from seqrec.eval.tiled import tile_top
from seqrec.scoring import catalog_scores
from seqrec.serve.api import create_app
from seqrec.serve.service import EventInput, Service, _UserQuery, build_service
from seqrec.serve.settings import ServeSettings

ROOT = Path(__file__).resolve().parent.parent
KEY = "breakdown-key-0123456789"


def med(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def scorer_stages(svc: Service, users: list[str], batch: int, repeat: int) -> dict[str, float]:
    """Per-request CPU of each scorer stage, for batches of ``batch`` requests (the scorer's own functions)."""
    ix = svc.index
    model, table = ix.model, ix._table
    stages: dict[str, list[float]] = {k: [] for k in ("store_read", "encoder", "catalog_product", "mask_and_topk",
                                                      "answer", "whole_batch")}
    for r in range(repeat):
        chosen = [users[(r * batch + j) % len(users)] for j in range(batch)]
        t0 = time.thread_time()
        histories = [svc.user_history(u)[0] for u in chosen]
        stages["store_read"].append((time.thread_time() - t0) * 1e3 / batch)
        seqs = Sequences.from_lists([h.tolist() for h in histories])
        rows = np.arange(batch)
        with torch.inference_mode():
            t0 = time.thread_time()
            query = encode_rows(model, seqs, rows)
            stages["encoder"].append((time.thread_time() - t0) * 1e3 / batch)
            t0 = time.thread_time()
            scores = catalog_scores(query, table).float()
            stages["catalog_product"].append((time.thread_time() - t0) * 1e3 / batch)
            t0 = time.thread_time()
            for row, h in enumerate(histories):
                scores[row, torch.from_numpy(h)] = float("-inf")
            values, indices = tile_top(scores, 10)
            values_np, indices_np = values.numpy(), indices.numpy()
            stages["mask_and_topk"].append((time.thread_time() - t0) * 1e3 / batch)
        t0 = time.thread_time()
        for row in range(batch):
            [(ix.items.external_of(i), float(s), ix.title(i))
             for i, s in zip(indices_np[row].tolist(), values_np[row].tolist(), strict=True)]
        stages["answer"].append((time.thread_time() - t0) * 1e3 / batch)
        svc.result_cache = 0  # the whole path, every time
        queries: list[Any] = [_UserQuery(u, 10, True) for u in chosen]
        t0 = time.thread_time()
        svc._score_batch(queries)
        stages["whole_batch"].append((time.thread_time() - t0) * 1e3 / batch)
    return {k: med(v) for k, v in stages.items()}


async def asgi_call(app: Any, method: str, path: str, query: bytes = b"", body: bytes = b"",
                    headers: list[tuple[bytes, bytes]] | None = None) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), *(headers or [])], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 8000)}
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def minimal_app(svc: Service) -> Any:
    """GET /v1/users/{id}/recommendations?k= with nothing around it: no middleware, validation or metrics."""
    from urllib.parse import parse_qs

    from seqrec.serve.routes.recommendations import scored_out
    from seqrec.serve.schemas import UserRecommendationsOut

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        user = scope["path"].split("/")[3]
        k = int(parse_qs(scope["query_string"].decode()).get("k", ["10"])[0])
        recs = await asyncio.wrap_future(svc.submit_user(user, k, True))
        body = UserRecommendationsOut(user_id=user, model_version=recs.version, items=scored_out(recs.items),
                                      history_length=recs.history_length,
                                      unknown_history_items=recs.unknown_items).model_dump_json().encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"x-model-version", recs.version.encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def app_side(app: Any, plain: Any, svc: Service, users: list[str], repeat: int) -> dict[str, float]:
    """CPU of the event-loop thread per request, the scorer's and writer's threads excluded: ``app`` as served,
    ``plain`` without the hot path."""
    loop = asyncio.new_event_loop()
    reads, writes, minimal, plain_reads, plain_writes = [], [], [], [], []
    bare = minimal_app(svc)
    headers = [(b"x-api-key", KEY.encode()), (b"content-type", b"application/json")]
    item = svc.index.items.external[0]
    def timed(method: str, path: str, query: bytes = b"", body: bytes = b"", target: Any = app) -> float:
        t0 = time.thread_time()
        loop.run_until_complete(asgi_call(target, method, path, query, body, headers))
        return (time.thread_time() - t0) * 1e3

    try:
        for r in range(repeat):
            user = users[r % len(users)]
            reads.append(timed("GET", f"/v1/users/{user}/recommendations", b"k=10"))
            writes.append(timed("POST", "/v1/events", body=json.dumps({"user_id": user, "item_id": item}).encode()))
            other = users[(r + repeat) % len(users)]
            minimal.append(timed("GET", f"/v1/users/{other}/recommendations", b"k=10", target=bare))
            third = users[(r + 2 * repeat) % len(users)]
            plain_reads.append(timed("GET", f"/v1/users/{third}/recommendations", b"k=10", target=plain))
            event = json.dumps({"user_id": third, "item_id": item}).encode()
            plain_writes.append(timed("POST", "/v1/events", body=event, target=plain))
    finally:
        loop.close()
    return {"get_recommendations": med(reads), "get_recommendations_fastapi": med(plain_reads),
            "post_event": med(writes), "post_event_fastapi": med(plain_writes), "minimal_asgi_get": med(minimal)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, default=ROOT / "runs" / "beauty-serve-sasrec")
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--name", default="beauty-sasrec")
    p.add_argument("--beside", default="", help="free text: what else ran on the machine, for the record")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        settings = ServeSettings(artifact=args.artifact, store=f"sqlite:///{tmp}/e.db", api_key=KEY, torch_threads=1)
        svc = build_service(settings)
        svc.result_cache = 0
        users = [str(u) for u in svc.index.users.external[: 6 * args.repeat]]
        svc.submit_events([EventInput(u, svc.index.items.external[1]) for u in users[::3]]).result()
        app, plain = create_app(svc, settings), create_app(svc, settings, hot_path=False)
        for batch in (1, 8):  # warm-up
            scorer_stages(svc, users, batch, 5)
        result = {
            "command": shlex.join(["python", "benchmarks/serving_breakdown.py", *sys.argv[1:]]),
            "note": args.beside or "not recorded",
            "artifact": str(args.artifact), "model": svc.index.model_name, "n_items": svc.index.n_items,
            "clock": "time.thread_time of the thread doing the work: CPU ms per request, medians",
            "scorer_batch1_ms": scorer_stages(svc, users, 1, args.repeat),
            "scorer_batch8_per_request_ms": scorer_stages(svc, users, 8, max(20, args.repeat // 4)),
            "event_loop_ms": app_side(app, plain, svc, users, args.repeat),
            "torch": torch.__version__,
            "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        svc.close()
    out = ROOT / "benchmarks" / "results" / f"serving-breakdown-{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
