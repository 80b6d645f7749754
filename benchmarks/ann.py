"""Approximate top-K (``seqrec serve --index approx``) against exact scoring: recall@10, latency, build.

Two catalogs:

- ``artifact``: a trained artifact's item table (``model.item_table()``, bias included when the model has
  one); the queries are the encoded histories of ``--queries`` of its users (seeded sample), each with its
  own history excluded, as a served request with ``exclude_seen`` has it.
- ``synthetic``: an ``--items`` x ``--dim`` table built to look like a trained one (see
  :func:`synthetic_table`): clustered directions, norms and a bias that grow with a Zipf popularity. The
  queries come from held-out synthetic users: each has one to three interest clusters and a history drawn
  from them by popularity; its query is the normalised sum of its last ten items plus noise, and its
  history is excluded.

For each index setting the script builds a :class:`seqrec.serve.ann.ApproxIndex` once (build seconds,
serialised index bytes, peak RSS growth), then for each search setting (``--ef-search`` for HNSW,
``--nprobe`` for IVF-PQ, ``--refine`` for PQ) times one query at a time (batch 1, one thread) through
``ApproxIndex.search``, the call the service makes, and a batch of 64 for throughput. Exact scoring is timed
the way the service does it (torch: ``q @ W.T + b``, excluded items at -inf, top-k) on the same queries, in the
same run. Recall@10 is the fraction of each query's exact top 10 (after exclusions) that the index returns.

    python benchmarks/ann.py artifact --artifact runs/beauty-sasrec --name beauty
    python benchmarks/ann.py synthetic --items 1000000 --name synthetic-1m

Writes benchmarks/results/ann-<name>.json with the command inside. ``save-artifact`` instead writes a
servable artifact over the same synthetic table (a GRU4Rec, dim 64, untrained apart from its output table
and bias, which are the synthetic table; ``--users`` synthetic users as its log), for the HTTP load test
of a 1M-item catalog (benchmarks/serving_load.py):

    python benchmarks/ann.py save-artifact --items 1000000 --users 10000 --out runs/synthetic-1m
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.serve.ann import ApproxIndex, choose_kind, default_params, import_faiss

ROOT = Path(__file__).resolve().parent
K = 10


def synthetic_table(n_items: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(N + 1, D) item vectors (row 0 padding) and (N + 1,) bias, shaped like a trained item table.

    Items fall into ``max(64, N // 500)`` clusters of Zipf-distributed sizes; an item's direction is its
    cluster centre plus noise. Popularity is Zipf over a random order of the items (exponent 0.9); the
    norm grows with log-popularity (from 1 to about 3) and so does the bias, as trained tables show
    (popular items get large norms and large biases).
    """
    rng = np.random.default_rng(seed)
    n_clusters = max(64, n_items // 500)
    size_w = np.arange(1, n_clusters + 1, dtype=np.float64) ** -0.6
    cluster = rng.choice(n_clusters, size=n_items, p=size_w / size_w.sum()).astype(np.int64)
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.empty((n_items, dim), np.float32)
    for lo in range(0, n_items, 200_000):  # in chunks: no second full-size temporary
        hi = min(n_items, lo + 200_000)
        v = centres[cluster[lo:hi]] + 0.35 * rng.normal(size=(hi - lo, dim)).astype(np.float32) / np.sqrt(dim) * 4
        vectors[lo:hi] = v / np.linalg.norm(v, axis=1, keepdims=True)
    rank = rng.permutation(n_items) + 1
    log_pop = -0.9 * np.log(rank.astype(np.float64))  # 0 for the most popular item
    scaled = (log_pop - log_pop.min()) / (log_pop.max() - log_pop.min())  # 0..1
    vectors *= (1.0 + 2.0 * scaled ** 2).astype(np.float32)[:, None]
    bias = (1.5 * scaled - 0.75 + 0.1 * rng.normal(size=n_items)).astype(np.float32)
    weight = np.vstack([np.zeros((1, dim), np.float32), vectors])
    info = {"clusters": n_clusters, "cluster_size_zipf": 0.6, "popularity_zipf": 0.9, "norm_range": [1.0, 3.0],
            "direction_noise": 0.35 * 4, "bias": "1.5 * scaled log-popularity - 0.75 + N(0, 0.1)"}
    return weight, np.concatenate([[0.0], bias]).astype(np.float32), {"items": n_items, "dim": dim} | info | {
        "_cluster": cluster, "_centres": centres, "_pop": np.exp(log_pop)}


def synthetic_users(meta: dict[str, Any], weight: np.ndarray, n_users: int, seed: int,
                    ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(Q, D) queries of held-out synthetic users and each one's history (internal ids) to exclude."""
    rng = np.random.default_rng(seed + 1)
    cluster, pop = meta["_cluster"], meta["_pop"]
    members = np.argsort(cluster, kind="stable")
    starts = np.searchsorted(cluster[members], np.arange(len(meta["_centres"]) + 1))
    size = np.diff(starts).astype(np.float64)
    dim = weight.shape[1]
    queries = np.empty((n_users, dim), np.float32)
    histories = []
    for u in range(n_users):
        interests = rng.choice(len(size), size=rng.integers(1, 4), replace=False, p=size / size.sum())
        length = int(rng.integers(5, 51))
        hist = []
        for _ in range(length):
            c = interests[rng.integers(len(interests))]
            pool = members[starts[c]:starts[c + 1]]
            p = pop[pool] / pop[pool].sum()
            hist.append(int(pool[rng.choice(len(pool), p=p)]) + 1)  # internal ids start at 1
        history = np.array(hist, np.int64)
        last = weight[history[-10:]]
        q = (last / np.linalg.norm(last, axis=1, keepdims=True)).sum(0)
        q = q / np.linalg.norm(q) + 0.3 * rng.normal(size=dim) / np.sqrt(dim)
        queries[u] = 3.0 * q / np.linalg.norm(q)
        histories.append(np.unique(history))
    return queries, histories


def save_synthetic_artifact(args: argparse.Namespace) -> None:
    import pandas as pd

    from seqrec.artifact import Artifact, save_artifact
    from seqrec.data.preprocess import build_dataset
    from seqrec.models.registry import create

    weight, bias, meta = synthetic_table(args.items, args.dim, args.seed)
    _, histories = synthetic_users(meta, weight, args.users, args.seed)
    users = np.repeat(np.arange(1, args.users + 1), [len(h) for h in histories])
    everything = np.arange(1, args.items + 1)  # one user has seen every item, so the catalog is all of them
    frame = pd.DataFrame({"user": np.concatenate([users, np.full(args.items, args.users + 1)]),
                          "item": np.concatenate([*histories, everything]),
                          "time": np.arange(len(users) + args.items)})
    data = build_dataset(frame, name=f"synthetic-{args.items}")
    rows = data.items.to_internal(everything)  # internal row of each synthetic item
    torch.manual_seed(args.seed)
    net = create("gru4rec", n_items=data.n_items, max_len=50, dim=args.dim, hidden=args.dim, n_layers=1)
    with torch.no_grad():
        table = net.item_table()
        table.weight[torch.from_numpy(rows)] = torch.from_numpy(weight[1:])
        assert table.bias is not None
        table.bias[torch.from_numpy(rows)] = torch.from_numpy(bias[1:])
    info = {"note": "synthetic catalog from benchmarks/ann.py: output table and bias = the synthetic table"}
    out = save_artifact(args.out, Artifact("gru4rec", net.eval(), data, info=info))
    print(f"wrote {out}: {data.n_items} items, {args.users + 1} users")


def artifact_queries(path: str, n_users: int, seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray,
                                                                 list[np.ndarray], dict[str, Any]]:
    from seqrec.artifact import load_artifact
    from seqrec.data.sequences import Sequences
    from seqrec.eval.evaluate import encode_rows

    art = load_artifact(path)
    model = art.model.eval()
    seqs = art.dataset.sequences
    rows = np.random.default_rng(seed).choice(seqs.n_users, size=min(n_users, seqs.n_users), replace=False)
    histories = [np.asarray(seqs.get(int(r)), np.int64) for r in rows]
    with torch.inference_mode():
        table = model.item_table()
        picked = Sequences.from_lengths(np.array([len(h) for h in histories], np.int64), np.concatenate(histories))
        query = encode_rows(model, picked, np.arange(len(rows))).float().cpu().numpy()
        weight = table.weight.detach().float().cpu().numpy()
        bias = None if table.bias is None else table.bias.detach().float().cpu().numpy()
    meta = {"artifact": path, "model": art.model_name, "dataset": art.dataset.name, "items": int(weight.shape[0]) - 1,
            "dim": int(weight.shape[1]), "bias": bias is not None}
    return weight, bias, query, [np.unique(h) for h in histories], meta


class Exact:
    """The service's exact path: scores over the whole catalog in torch, excluded at -inf, top-k."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None) -> None:
        self.weight = torch.from_numpy(weight)
        self.bias = None if bias is None else torch.from_numpy(bias)

    def top(self, query: np.ndarray, excluded: list[np.ndarray], k: int) -> np.ndarray:
        with torch.inference_mode():
            scores = torch.from_numpy(query) @ self.weight.T
            if self.bias is not None:
                scores += self.bias
            scores[:, 0] = float("-inf")
            for row, ex in enumerate(excluded):
                scores[row, torch.from_numpy(ex)] = float("-inf")
            return torch.topk(scores, k, dim=1).indices.numpy()


def timed(fn: Any, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def summary(seconds: list[float]) -> dict[str, float]:
    ms = 1000 * np.asarray(seconds)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "mean_ms": round(float(ms.mean()), 4), "qps": round(float(1000 / ms.mean()), 1)}


def batch_qps(fn: Any, n_queries: int, batch: int) -> float:
    t = time.perf_counter()
    for lo in range(0, n_queries, batch):
        fn(lo, min(n_queries, lo + batch))
    return round(n_queries / (time.perf_counter() - t), 1)


def measure(index: ApproxIndex, query: np.ndarray, excluded: list[np.ndarray], truth: np.ndarray) -> dict[str, Any]:
    """Recall@10 against ``truth``, then batch-1 latency and batch-64 throughput of ``index.search``."""
    index.fallbacks = 0
    found = index.search(query, K, excluded)
    rec = float(np.mean([len(np.intersect1d(a, e)) / K for a, e in zip(found.items, truth, strict=True)]))
    out: dict[str, Any] = {"recall_at_10": round(rec, 4), "rows_short_of_k": int(sum(len(a) < K for a in found.items)),
                           "rows_rescored_exactly": index.fallbacks}
    out["batch1"] = summary(timed(lambda i: index.search(query[i:i + 1], K, excluded[i:i + 1]), len(query)))
    out["batch64_qps"] = batch_qps(lambda lo, hi: index.search(query[lo:hi], K, excluded[lo:hi]), len(query), 64)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args: argparse.Namespace) -> dict[str, Any]:
    faiss = import_faiss()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    bias: np.ndarray | None
    if args.source == "synthetic":
        weight, bias, meta = synthetic_table(args.items, args.dim, args.seed)
        query, excluded = synthetic_users(meta, weight, args.queries, args.seed)
        meta = {k: v for k, v in meta.items() if not k.startswith("_")}
    else:
        weight, bias, query, excluded, meta = artifact_queries(args.artifact, args.queries, args.seed)
    n_items = int(weight.shape[0]) - 1
    print(f"catalog {n_items} x {weight.shape[1]}, {len(query)} queries ({time.perf_counter() - t0:.0f} s)", flush=True)
    exact = Exact(weight, bias)
    truth = np.vstack([exact.top(query[lo:lo + 256], excluded[lo:lo + 256], K) for lo in range(0, len(query), 256)])
    n_lat = min(len(query), args.exact_queries)
    exact_lat = summary(timed(lambda i: exact.top(query[i:i + 1], excluded[i:i + 1], K), n_lat))
    exact_b64 = batch_qps(lambda lo, hi: exact.top(query[lo:hi], excluded[lo:hi], K), n_lat, 64)
    print(f"exact: {exact_lat}, batch 64 {exact_b64} q/s", flush=True)
    auto_kind = choose_kind(n_items, "approx")
    kind = args.kind or auto_kind
    results = []
    for build in args.build:
        given = parse_params(build)
        params = default_params(n_items, kind) | given
        search_key = {"hnsw": "ef_search", "ivfpq": "nprobe", "pq": "refine_factor"}[kind]
        sweep = {"hnsw": args.ef_search, "ivfpq": args.nprobe, "pq": args.refine}[kind] or [params[search_key]]
        if search_key in given:  # a build that names its search setting is measured at that one
            sweep = [given[search_key]]
        faiss.omp_set_num_threads(args.build_threads)
        rss0 = peak_rss_mb()
        t = time.perf_counter()
        index: ApproxIndex | None = ApproxIndex(weight, bias, kind, **params, cache_dir=args.cache_dir)
        assert index is not None
        build_s = time.perf_counter() - t
        rss_growth = peak_rss_mb() - rss0
        index_bytes = int(faiss.serialize_index(index.faiss_index).nbytes)
        faiss.omp_set_num_threads(1)
        print(f"{kind} {params}: built in {build_s:.1f} s, {index_bytes / 2**20:.0f} MiB", flush=True)
        for value in sweep:
            index.set_search(**{search_key: value})
            row = measure(index, query, excluded, truth) | {"kind": kind, "params": params | {search_key: value}}
            row |= {"speedup_p50": round(exact_lat["p50_ms"] / row["batch1"]["p50_ms"], 2),
                    "throughput_vs_exact_batch1": round(row["batch1"]["qps"] / exact_lat["qps"], 2),
                    "throughput_vs_exact_batch64": round(row["batch64_qps"] / exact_b64, 2),
                    "build_s": round(build_s, 1), "index_mib": round(index_bytes / 2**20, 1),
                    "peak_rss_growth_mib": round(rss_growth, 1)}
            print(json.dumps(row), flush=True)
            results.append(row)
        index = None  # freed before the next build
    table_mib = round(weight.nbytes / 2**20, 1)
    return {"catalog": meta, "queries": len(query), "k": K, "auto_kind": auto_kind,
            "exact": {"batch1": exact_lat, "batch64_qps": exact_b64, "timed_queries": n_lat, "table_mib": table_mib},
            "approx": results}


def parse_params(text: str) -> dict[str, int]:
    """``hnsw_m=32,ef_construction=200`` -> {"hnsw_m": 32, "ef_construction": 200}; empty: the defaults."""
    out: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = int(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=("artifact", "synthetic", "save-artifact"))
    p.add_argument("--artifact", help="artifact directory (source artifact)")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--exact-queries", type=int, default=300, help="queries timed on the exact path")
    p.add_argument("--kind", choices=("hnsw", "pq", "ivfpq"), help="default: what --index approx picks for the size")
    p.add_argument("--build", nargs="+", default=[""],
                   help="index settings to build, e.g. hnsw_m=32,ef_construction=200 (empty: what --index auto uses; "
                   "one that names ef_search or nprobe is measured at that value only)")
    p.add_argument("--ef-search", type=int, nargs="*", default=[], help="HNSW efSearch values to measure")
    p.add_argument("--nprobe", type=int, nargs="*", default=[], help="IVF-PQ nprobe values to measure")
    p.add_argument("--refine", type=int, nargs="*", default=[],
                   help="PQ: candidates per wanted item (re-ranked exactly) to measure")
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, help="keep the built indexes there (as seqrec serve's ANN cache does)")
    p.add_argument("--users", type=int, default=10_000, help="save-artifact: synthetic users in the log")
    p.add_argument("--out", help="save-artifact: artifact directory")
    p.add_argument("--name")
    p.add_argument("--note", default="")
    args = p.parse_args()
    if args.source == "artifact" and not args.artifact:
        p.error("source artifact needs --artifact")
    if args.source == "save-artifact":
        if not args.out:
            p.error("save-artifact needs --out")
        save_synthetic_artifact(args)
        return
    if not args.name:
        p.error("--name is required")
    t = time.perf_counter()
    result = {"benchmark": "ann", "name": args.name,
              "command": "python benchmarks/ann.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                          "faiss": import_faiss().__version__, "search_threads": 1,
                          "build_threads": args.build_threads},
              "note": args.note} | run(args)
    result["seconds"] = round(time.perf_counter() - t, 1)
    out = ROOT / "results" / f"ann-{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
