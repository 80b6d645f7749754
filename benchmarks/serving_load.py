"""Load test for `seqrec serve`: a closed-loop asyncio HTTP client against a real server on loopback.

    python benchmarks/serving_load.py --name beauty-gru4rec            # trains runs/beauty-serve if absent
    python benchmarks/serving_load.py --train-model sasrec --train-out runs/beauty-serve-sasrec --name beauty-sasrec
    python benchmarks/serving_load.py --artifact runs/demo --name demo --duration 30

The mix is 80% `GET /v1/users/{id}/recommendations?k=10` and 20% `POST /v1/events` over 10,000
distinct users of the artifact. Each of `--concurrency` workers sends its next request as soon as
the previous one returns (closed loop), so the rate measured is what the server sustains, not
what was offered. The run is bounded by `--duration` seconds and `--max-requests`; the first
`--warmup` seconds are not counted. The server and this client share the machine: the JSON says
how much CPU each used and what else was running. Traffic only ever goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # never anything else: this is a local benchmark
WORKER_LABEL = re.compile(r'worker="(\d+)"')  # on every /metrics series when --workers > 1
CACHE_LINE = re.compile(r"(\d+) recommendation requests scored, (\d+) of them from the result cache")
COUNTERS = ("seqrec_score_batch_size_sum", "seqrec_score_batch_size_count", "seqrec_events_stored_total")
TRAIN_CMD = ["seqrec", "train", "--dataset", "amazon-beauty-bert4rec", "--epochs", "1", "--quiet"]


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one request at a time per connection.

    httpx costs several times the server's CPU per request, and here the client shares the two
    cores with the server; this client speaks the same protocol over the same loopback socket for
    a fraction of that, so the numbers measure the server rather than the client.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{headers}"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status = int((await self.reader.readline()).split(b" ", 2)[1])
        length = None
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ConnectionError("response without Content-Length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"read": [], "write": []})
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, help="artifact to serve (default: train runs/beauty-serve if absent)")
    p.add_argument("--train-out", type=Path, default=Path("runs/beauty-serve"))
    p.add_argument("--train-model", default="gru4rec", help="model trained (1 epoch) when the artifact is absent")
    p.add_argument("--name", default="beauty-gru4rec", help="results go to benchmarks/results/serving-NAME.json")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of measured load (after warm-up)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop workers (connections)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--write-share", type=float, default=0.2)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--store", default="sqlite", help="sqlite (a fresh temp file) or a redis:// URL")
    p.add_argument("--serve-arg", action="append", default=[], help="extra option for `seqrec serve` (repeatable)")
    p.add_argument("--beside", default="", help="free text: what else ran on the machine, for the record")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-rps", type=float, default=2000.0, help="requests per second the run should reach")
    p.add_argument("--target-p99-ms", type=float, default=10.0, help="p99 latency the run should stay under")
    p.add_argument("--profile", action="store_true",
                   help="sample the server with py-spy (a dev tool: pip install py-spy) over the measured window and "
                   "add where its CPU went to the result")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                   help="raw: a minimal asyncio HTTP/1.1 keep-alive client (cheap); httpx: httpx.AsyncClient")
    return p.parse_args()


def ensure_artifact(args: argparse.Namespace) -> tuple[Path, str | None]:
    if args.artifact is not None:
        return args.artifact, None
    out = args.train_out
    cmd = [*TRAIN_CMD, "--model", args.train_model, "--out", str(out)]
    if not (out / "model.safetensors").exists():
        print(f"training the benchmark model: {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return out, shlex.join(cmd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(artifact: Path, store: str, key: str,
                 extra: list[str]) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start `seqrec serve` on a free loopback port; (process, its command, its base URL)."""
    port = free_port()
    cmd = [sys.executable, "-m", "seqrec.cli", "serve", str(artifact), "--host", HOST, "--port", str(port),
           "--store", store, *extra]
    proc = subprocess.Popen(cmd, env={**os.environ, "SEQREC_API_KEY": key}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200 and all_workers_up(base, extra):
                return proc, shlex.join(cmd), base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become healthy in 180 s")


def n_workers(extra: list[str]) -> int:
    return next((int(a.split("=", 1)[1]) for a in extra if a.startswith("--workers=")), 1)


def all_workers_up(base: str, extra: list[str]) -> bool:
    """With `--workers N`: has every worker answered? The client's keep-alive connections are all
    opened at the start, so a worker still loading then would get none of them for the whole run."""
    wanted = n_workers(extra)
    if wanted == 1:
        return True
    seen = set()
    for _ in range(8 * wanted):  # a fresh connection each: the kernel hands it to any worker
        seen.update(WORKER_LABEL.findall(httpx.get(f"{base}/metrics", timeout=2).text))
        if len(seen) >= wanted:
            return True
    return False


def load_ids(artifact: Path, n_users: int, seed: int) -> tuple[list[str], list[Any]]:
    """Users of the artifact (so every read has a history) and its catalog. JSON only: this process
    must not import torch, it shares the CPU with the server."""
    users = json.loads((artifact / "users.json").read_text())["ids"]
    items = json.loads((artifact / "items.json").read_text())["ids"]
    rng = random.Random(seed)
    return [str(u) for u in rng.sample(users, min(n_users, len(users)))], items


Send = Callable[[str, str, bytes, bool], Awaitable[int]]  # (method, path, body, write) -> status


def raw_sender(base: str, key: str) -> Send:
    """A connection per worker (each worker calls this once)."""
    host, port = base.removeprefix("http://").split(":")
    conn = RawConnection(host, int(port))
    write_headers = f"Content-Type: application/json\r\nX-API-Key: {key}\r\n"

    async def send(method: str, path: str, body: bytes, write: bool) -> int:
        try:
            status, _ = await conn.request(method, path, body, write_headers if write else "")
        except BaseException:
            conn.close()  # the stream may be mid-response: start the next request on a fresh one
            raise
        return status

    return send


def httpx_sender(client: httpx.AsyncClient, key: str) -> Send:
    headers = {"X-API-Key": key, "Content-Type": "application/json"}

    async def send(method: str, path: str, body: bytes, write: bool) -> int:
        r = await client.request(method, path, content=body or None, headers=headers if write else None)
        return r.status_code

    return send


async def worker(send: Send, users: list[str], items: list[Any], args: argparse.Namespace, rng: random.Random,
                 clock: dict[str, float], tally: Tally) -> None:
    while time.perf_counter() < clock["end"] and tally.sent < args.max_requests:
        user = rng.choice(users)
        write = rng.random() < args.write_share
        if write:
            method, path = "POST", "/v1/events"
            body = json.dumps({"user_id": user, "item_id": rng.choice(items)}).encode()
        else:
            method, path, body = "GET", f"/v1/users/{quote(user, safe='')}/recommendations?k={args.k}", b""
        tally.sent += 1
        t0 = time.perf_counter()
        try:
            status = await send(method, path, body, write)
        except (OSError, EOFError, ValueError, IndexError, httpx.HTTPError) as exc:
            status = -1
            if t0 >= clock["start"]:
                tally.error(type(exc).__name__)
        t1 = time.perf_counter()
        if t0 < clock["start"] or status < 0:
            continue  # warm-up, or a transport error already counted
        if status >= 300:
            tally.error(f"HTTP {status}")
        else:
            tally.latencies["write" if write else "read"].append(t1 - t0)


async def run_load(base: str, users: list[str], items: list[Any], args: argparse.Namespace,
                   key: str) -> tuple[Tally, float]:
    now = time.perf_counter()
    clock = {"start": now + args.warmup, "end": now + args.warmup + args.duration}
    tally = Tally()
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:
        senders = [raw_sender(base, key) if args.client == "raw" else httpx_sender(client, key)
                   for _ in range(args.concurrency)]
        await asyncio.gather(*[worker(send, users, items, args, random.Random(args.seed + i), clock, tally)
                               for i, send in enumerate(senders)])
    measured = min(time.perf_counter(), clock["end"]) - clock["start"]
    return tally, measured


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)

    def pick(q: float) -> float:
        return round(1000 * s[min(len(s) - 1, int(q * len(s)))], 3)

    return {"p50_ms": pick(0.50), "p95_ms": pick(0.95), "p99_ms": pick(0.99), "max_ms": round(1000 * s[-1], 3),
            "mean_ms": round(1000 * sum(s) / len(s), 3)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its live descendants (`--workers`), from /proc (Linux)."""
    return sum(_own_cpu_seconds(p) for p in process_tree(pid))


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces): state, ppid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _own_cpu_seconds(pid: int) -> float:
    try:
        fields = _stat_fields(pid)
    except OSError:  # exited meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> set[int]:
    """``pid`` and every live descendant of it."""
    parents: dict[int, list[int]] = {}
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int(_stat_fields(proc_dir.name)[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(proc_dir.name))
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo.extend(parents.get(p, []))
    return tree


def busy_processes(exclude: set[int]) -> list[str]:
    """Other processes using CPU right now: what ran beside the benchmark."""
    out = subprocess.run(["ps", "-eo", "pid,pcpu,etimes,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines()[1:]:
        pid, pcpu, _, cmd = [*line.split(None, 3), ""][:4]
        if int(pid) not in exclude and float(pcpu) >= 5.0:
            rows.append(f"{float(pcpu):.0f}% {cmd[:160]}")
    return rows[:8]


def server_metrics(base: str, workers: int) -> dict[str, float]:
    """Batch-size and event counters, summed over the workers (each /metrics call reaches one)."""
    per_worker: dict[str, dict[str, float]] = {}
    for _ in range(8 * workers):
        text = httpx.get(f"{base}/metrics", timeout=10).text
        got: dict[str, float] = {}
        worker = "only"
        for line in text.splitlines():
            if line.startswith(COUNTERS):
                name, value = line.rsplit(" ", 1)
                worker = next(iter(WORKER_LABEL.findall(name)), "only")
                got[name.split("{")[0]] = float(value)
        per_worker[worker] = got
        if len(per_worker) >= workers:
            break
    return {k: sum(w.get(k, 0.0) for w in per_worker.values()) for k in COUNTERS}


def main() -> int:
    args = parse_args()
    artifact, train_cmd = ensure_artifact(args)
    key = secrets.token_hex(16)
    tmp = tempfile.TemporaryDirectory(prefix="seqrec-load-")
    store = f"sqlite:///{tmp.name}/events.db" if args.store == "sqlite" else args.store
    users, items = load_ids(artifact, args.users, args.seed)
    proc, serve_cmd, base = start_server(artifact, store, key, args.serve_arg)
    try:
        health = httpx.get(f"{base}/healthz").json()
        server_pids = process_tree(proc.pid)
        beside_before = busy_processes({os.getpid(), *server_pids})
        cpu0, own0 = cpu_seconds(proc.pid), sum(os.times()[:2])
        raw = Path(tmp.name) / "profile.txt"
        sampler = threading.Timer(args.warmup, start_profile, (proc.pid, args.duration, raw)) if args.profile else None
        if sampler is not None:
            sampler.start()
        t_load = time.perf_counter()
        tally, measured = asyncio.run(run_load(base, users, items, args, key))
        load_wall = time.perf_counter() - t_load  # warm-up included, as the CPU counters are
        profile = finish_profile(raw) if sampler is not None else None
        server_cpu, own_cpu = cpu_seconds(proc.pid) - cpu0, sum(os.times()[:2]) - own0
        beside_after = busy_processes({os.getpid(), *server_pids})
        metrics = server_metrics(base, n_workers(args.serve_arg))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        tmp.cleanup()
    scored = [tuple(map(int, m)) for m in CACHE_LINE.findall(err.decode(errors="replace"))]
    result = report(args, tally, measured, health, train_cmd, serve_cmd, artifact, store,
                    server_cpu / load_wall, own_cpu / load_wall, metrics, beside_before, beside_after)
    if profile is not None:
        result["profile"] = profile
    if scored:  # per worker: (requests scored, answered from the result cache), over the whole run
        total, hits = sum(t for t, _ in scored), sum(h for _, h in scored)
        result["result_cache"] = {"scored": total, "hits": hits, "hit_rate": round(hits / total, 4) if total else None,
                                  "over": "the whole run, warm-up included"}
    out = ROOT / "benchmarks" / "results" / f"serving-{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("requests_per_second", "latency", "errors", "target_met")}, indent=2))
    print(f"saved {out.relative_to(ROOT)}")
    return 0


def report(args: argparse.Namespace, tally: Tally, measured: float, health: dict[str, Any], train_cmd: str | None,
           serve_cmd: str, artifact: Path, store: str, server_cores: float, own_cores: float,
           metrics: dict[str, float], beside_before: list[str], beside_after: list[str]) -> dict[str, Any]:
    everything = tally.latencies["read"] + tally.latencies["write"]
    n_err = sum(tally.errors.values())
    rps = len(everything) / measured if measured > 0 else 0.0
    lat = percentiles(everything)
    batches = metrics.get("seqrec_score_batch_size_count", 0.0)
    return {
        "name": args.name,
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "train_command": train_cmd,
        "serve_command": serve_cmd.replace(store, "<store>") + f"  (store: {args.store})",
        "artifact": str(artifact),
        "model": health.get("model"), "model_version": health.get("model_version"), "n_items": health.get("n_items"),
        "mix": {"read_share": 1 - args.write_share, "write_share": args.write_share, "k": args.k,
                "distinct_users": args.users},
        "client": args.client, "concurrency": args.concurrency, "warmup_s": args.warmup,
        "measured_s": round(measured, 2),
        "requests": len(everything) + n_err, "ok": len(everything), "errors": n_err, "error_kinds": tally.errors,
        "requests_per_second": round(rps, 1),
        "latency": lat,
        "latency_by_op": {op: percentiles(v) | {"count": len(v)} for op, v in tally.latencies.items()},
        "mean_score_batch": round(metrics.get("seqrec_score_batch_size_sum", 0.0) / batches, 2) if batches else None,
        "cpu": {"server_cores": round(server_cores, 2), "load_generator_cores": round(own_cores, 2),
                "over": "the whole load, warm-up included (earlier files divided by the measured seconds only)",
                "machine_cores": os.cpu_count()},
        "target": {"rps": args.target_rps, "p99_ms": args.target_p99_ms, "errors": 0},
        "target_met": rps >= args.target_rps and lat.get("p99_ms", 1e9) < args.target_p99_ms and n_err == 0,
        "beside": {"note": args.beside or "the server and this load generator share the machine",
                   "busy_processes_before": beside_before, "busy_processes_after": beside_after},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu": _cpu_model(), "loadavg_after": list(os.getloadavg())},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ---- where the server's CPU goes (py-spy) --------------------------------------------------------------
_PROFILE_PROCS: list[subprocess.Popen[bytes]] = []

# (category, substrings of a sampled stack): the first category one of whose substrings the stack holds
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("catalog product (query @ item table)", ("catalog_scores", "fill_tile")),
    ("top-k and masking", ("tile_top", ";score (seqrec/serve/index.py", "_finite")),
    ("encoder forward (torch)", ("encode_rows", "predict_next", "_given_queries", "onnx")),
    ("state store read (SQLite/Redis)", ("user_state", "_read (seqrec/serve/store.py")),
    ("event writes (store append, fsync)", ("_write_batch", "append (seqrec/serve/store.py")),
    ("scorer: Python around the model", ("_score_batch", "_prepare", "_scored")),
    ("micro-batcher hand-off", ("batching.py", "futures/_base.py", "call_soon_threadsafe")),
    ("metrics (prometheus_client)", ("metrics.py", "prometheus_client")),
    ("JSON encoding of answers", ("json_body", "model_dump_json", "jsonable_encoder", "json/encoder")),
    ("request validation (pydantic, FastAPI dependencies)", ("solve_dependencies", "pydantic", "request_params_to_args",
                                                              "_validate")),
    ("FastAPI/Starlette routing and middleware", ("starlette", "fastapi", "seqrec/serve/api.py",
                                                 "seqrec/serve/routes")),
    ("uvicorn HTTP parsing and writing", ("uvicorn", "httptools")),
    ("asyncio event loop", ("asyncio", "selectors", "uvloop")),
]


def start_profile(pid: int, seconds: float, out: Path) -> None:
    """py-spy over the server and its workers: 100 samples a second, active threads only, collapsed stacks."""
    cmd = ["py-spy", "record", "-p", str(pid), "--subprocesses", "--nonblocking", "-r", "100", "-d",
           str(max(1, int(seconds))), "-f", "raw", "-o", str(out)]
    try:
        _PROFILE_PROCS.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    except FileNotFoundError:
        print("--profile: py-spy is not installed (pip install py-spy); no profile", file=sys.stderr)


def finish_profile(raw: Path) -> dict[str, Any] | None:
    for proc in _PROFILE_PROCS:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    if not raw.exists():
        return None
    return summarize_profile(raw.read_text())


def summarize_profile(text: str) -> dict[str, Any]:
    """Shares of the sampled server CPU by category (see CATEGORIES) and the 15 leaf functions seen most."""
    by_category: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        if stack.startswith("process "):  # --subprocesses puts the process and its command line first: not a frame
            stack = stack.partition(";")[2]
        name = next((c for c, keys in CATEGORIES if any(k in stack for k in keys)), "other")
        by_category[name] = by_category.get(name, 0) + n
        leaf = stack.rsplit(";", 1)[-1]
        leaves[leaf] = leaves.get(leaf, 0) + n
    share = {k: round(v / total, 4) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])} if total else {}
    top = [{"function": k[:200], "share": round(v / total, 4)}
           for k, v in sorted(leaves.items(), key=lambda kv: -kv[1])[:15]] if total else []
    return {"sampler": "py-spy record --subprocesses --nonblocking, 100 Hz, active threads only, over the measured "
                       "window; a sample counts for the first category its stack matches",
            "samples": total, "by_category": share, "top_leaf_functions": top}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
