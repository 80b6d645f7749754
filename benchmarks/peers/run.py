"""SASRec in seqrec, RecBole and RecTools side by side: same data, same protocol, one command.

    python benchmarks/peers/run.py --cap-minutes 30

Creates benchmarks/peers/.venvs/{recbole,rectools} on first use, converts the BERT4Rec Amazon Beauty
file into each tool's input, runs one worker subprocess per tool under a wall-clock cap, and writes
benchmarks/results/peers-<date>.json plus a markdown table. Protocol and differences: README.md here.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import envs
from common import VALID_TARGET

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for machine.py
import machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DATA_FILE = ROOT.parent / "shared" / "data" / "amazon-beauty-bert4rec" / "beauty.txt.gz"
WORK = HERE / ".work"
TOOLS = ("seqrec", "recbole", "rectools", "rectools-nondet", "seqrec-bf16", "seqrec-bf16grads")
# seqrec-bf16: bf16 autocast of the encoder (the catalog softmax stays fp32); seqrec-bf16grads: the
# catalog softmax's two gradient matmuls on bf16 operands (--ce-bf16-grads). Both opt-in.
DEFAULT_TOOLS = TOOLS[:4]
TEST_SHARE = 0.2  # of the cap, kept for the final full-ranking test evaluation ...
TEST_RESERVE_MAX = 600.0  # ... but at most 10 minutes: the slowest peer ranks all test users in under a minute


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cap-minutes", type=float, default=30.0, help="wall-clock cap per tool run")
    p.add_argument("--tools", default=",".join(DEFAULT_TOOLS), help=f"any of {', '.join(TOOLS)}")
    p.add_argument("--rounds", type=int, default=1, help="repeat, alternating the order each round")
    p.add_argument("--threads", type=machine.threads, default=1)
    p.add_argument("--omp-wait-policy", choices=("default", "passive", "active"), default="default",
                   help="OMP_WAIT_POLICY for every worker; 'default' leaves it unset (each library's own behaviour)")
    p.add_argument("--max-users", type=int, default=0, help="keep only the first N users (smoke tests)")
    p.add_argument("--data", type=Path, default=DATA_FILE)
    p.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/peers-<date>.json)")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    p.add_argument("--reuse", type=Path, action="append", default=[],
                   help="an earlier result JSON: its runs of tools not run now are compared with this run's "
                        "(e.g. new seqrec runs against stored peers, or one peer again against stored seqrec); "
                        "repeatable, the first file's run of a tool wins")
    return p.parse_args()


# ---- data -----------------------------------------------------------------------------------
def convert(src: Path, dest: Path, max_users: int) -> dict[str, int]:
    """``user item`` lines (time-ordered per user) -> events.txt (same format, subset) and a
    RecBole atomic file whose timestamp is the line number, so every tool sees the same order."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "recbole" / "beauty").mkdir(parents=True, exist_ok=True)
    users: set[str] = set()
    items: set[str] = set()
    n = 0
    with gzip.open(src, "rt") as f, (dest / "events.txt").open("w") as ev, \
            (dest / "recbole" / "beauty" / "beauty.inter").open("w") as inter:
        inter.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for line in f:
            parts = line.split()
            if len(parts) != 2:
                continue
            user, item = parts
            if user not in users and max_users and len(users) >= max_users:
                break
            users.add(user)
            items.add(item)
            ev.write(f"{user} {item}\n")
            inter.write(f"{user}\t{item}\t{n}\n")
            n += 1
    stats = {"users": len(users), "items": len(items), "events": n}
    (dest / "stats.json").write_text(json.dumps(stats))
    return stats


# ---- one worker -----------------------------------------------------------------------------
def worker_command(tool: str, data: Path, out: Path, args: argparse.Namespace) -> list[str]:
    cap = args.cap_minutes * 60
    train = cap - min(cap * TEST_SHARE, TEST_RESERVE_MAX)
    base = ["--data", str(data), "--out", str(out), "--train-seconds", f"{train:.0f}",
            "--threads", str(args.threads)]
    if tool.startswith("seqrec"):
        flag = {"seqrec-bf16": ["--bf16"], "seqrec-bf16grads": ["--ce-bf16-grads"]}.get(tool, [])
        return [sys.executable, str(HERE / "worker_seqrec.py"), *base, *flag]
    if tool == "recbole":
        return [str(envs.python_of("recbole")), str(HERE / "worker_recbole.py"), *base]
    det = "false" if tool == "rectools-nondet" else "true"
    return [str(envs.python_of("rectools")), str(HERE / "worker_rectools.py"), *base, "--deterministic", det]


def run_worker(tool: str, data: Path, raw: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = raw / f"{tool}.jsonl"
    log = raw / f"{tool}.log"
    cmd = worker_command(tool, data, out, args)
    t = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t,
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("OMP_WAIT_POLICY", None)
    if args.omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    cap = args.cap_minutes * 60
    print(f"[peers] {tool}: running (cap {args.cap_minutes:g} min), log {log}", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env, cwd=str(raw),
                                start_new_session=True)
        code: int | None = None
        killed, polled_rss = False, 0.0
        while code is None:
            polled_rss = max(polled_rss, _vm_hwm_mb(proc.pid))
            try:
                code = proc.wait(timeout=min(2.0, max(0.01, cap - (time.perf_counter() - t0))))
            except subprocess.TimeoutExpired:
                if time.perf_counter() - t0 >= cap:
                    os.killpg(proc.pid, signal.SIGKILL)  # the worker's own process group only
                    proc.wait()
                    killed = True
                    break
    wall = time.perf_counter() - t0
    children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = summarize(tool, out, wall, killed, code, cap)
    summary["children_max_rss_mb_so_far"] = children_rss
    summary["polled_peak_rss_mb"] = polled_rss  # the worker's VmHWM, read every 2 s while it ran
    summary["peak_rss_mb"] = max(summary["peak_rss_mb"] or 0.0, polled_rss) or None
    if code not in (0, None):
        tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
        print(f"[peers] {tool}: worker failed (exit {code}): {tail[0] if tail else ''}", flush=True)
    return summary


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident memory of a running process (Linux /proc), 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def summarize(tool: str, path: Path, wall: float, killed: bool, code: int | None, cap: float) -> dict[str, Any]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    meta = next((r for r in rows if r["kind"] == "meta"), {})
    epochs = [r for r in rows if r["kind"] == "epoch" and r.get("epoch", 0) > 0]
    test = next((r for r in rows if r["kind"] == "test"), None)
    probe = next((r for r in rows if r["kind"] == "probe"), None)
    valid = [(r["elapsed"], r["valid_ndcg10"]) for r in epochs if r.get("valid_ndcg10") is not None]
    reached = next((e for e, v in valid if v >= VALID_TARGET), None)
    # Not reached: a lower bound is the wall time if killed at the cap, else the training time up to
    # the last validation (the worker stopped itself to leave room for its test ranking).
    trained_short = (wall if killed else valid[-1][0] if valid else None) if reached is None else None
    return {
        "tool": tool, "version": meta.get("version"), "exit_code": code, "killed_at_cap": killed,
        "wall_seconds": wall, "epochs_run": len(epochs),
        "median_epoch_seconds": statistics.median(r["epoch_seconds"] for r in epochs) if epochs else None,
        "median_valid_eval_seconds": _median(r.get("valid_eval_seconds") for r in epochs),
        "best_valid_NDCG@10": max((v for _, v in valid), default=None),
        "seconds_to_valid_NDCG@10>=0.030": reached,
        "time_to_quality_lower_bound": trained_short is not None,
        "seconds_without_quality": trained_short,
        "test_NDCG@10": test["ndcg10"] if test else None, "test_HR@10": test["hr10"] if test else None,
        "test_eval_seconds": test["eval_seconds"] if test else None,
        "probe_eval_seconds": probe["eval_seconds"] if probe else None,  # ranking the test users, barely trained
        "peak_rss_mb": max((r["peak_rss_mb"] for r in rows), default=None),
        "data_seen": {k: meta.get(k) for k in ("n_users", "n_items", "n_events", "n_test_users")},
        "settings": meta.get("settings"), "defaults": meta.get("defaults"), "unmatched": meta.get("unmatched"),
        "cap_seconds": cap, "progress_file": str(path),
    }


# ---- report ---------------------------------------------------------------------------------
def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each seqrec run vs each peer, per round: peer / seqrec (> 1 means seqrec is faster or smaller)."""
    out = []
    for rnd in sorted({r["round"] for r in runs}):
        for mine in (r for r in runs if r["round"] == rnd and r["tool"].startswith("seqrec")):
            for peer in (r for r in runs if r["round"] == rnd and not r["tool"].startswith("seqrec")):
                ttq_peer = peer["seconds_to_valid_NDCG@10>=0.030"]
                ttq_mine = mine["seconds_to_valid_NDCG@10>=0.030"]
                bound = ttq_peer is None
                if bound:
                    ttq_peer = peer.get("seconds_without_quality") or (
                        peer["wall_seconds"] if peer["killed_at_cap"] else None)
                out.append({
                    "round": rnd, "seqrec": mine["tool"], "peer": peer["tool"],
                    "time_to_quality": _div(ttq_peer, ttq_mine), "time_to_quality_is_lower_bound": bound,
                    "eval_speed": _div(_ranking_seconds(peer)[0], mine["test_eval_seconds"]),
                    "eval_speed_from_probe": _ranking_seconds(peer)[1],
                    "valid_eval_speed": _div(peer.get("median_valid_eval_seconds"),
                                             mine.get("median_valid_eval_seconds")),
                    "epoch_time": _div(peer["median_epoch_seconds"], mine["median_epoch_seconds"]),
                    "memory": _div(_peak(peer), _peak(mine)),
                })
    return out


def runs_from(path: Path, skip: set[str]) -> list[dict[str, Any]]:
    """The runs of an earlier result file for tools not in ``skip``, marked with where they came from."""
    earlier = json.loads(path.read_text())
    return [{**r, "from": f"{path.name} ({earlier.get('date', '?')})"}
            for r in earlier["runs"] if r["tool"] not in skip and not r.get("from")]


def _peak(run: dict[str, Any]) -> float | None:
    """Peak RSS, or None when only the start-up value is known (killed before any progress line,
    by a harness version that did not yet poll the worker's VmHWM)."""
    if run.get("polled_peak_rss_mb"):
        return float(run["peak_rss_mb"])
    return run["peak_rss_mb"] if run["epochs_run"] or not run["killed_at_cap"] else None


def _ranking_seconds(run: dict[str, Any]) -> tuple[float | None, bool]:
    """Seconds to rank all test users: the test ranking's, else the probe's (flagged True)."""
    if run["test_eval_seconds"] is None and run.get("probe_eval_seconds") is not None:
        return run["probe_eval_seconds"], True
    return run["test_eval_seconds"], False


def _eval_cell(run: dict[str, Any]) -> str:
    secs, probe = _ranking_seconds(run)
    return _f(secs, ".1f") + (" (probe)" if probe else "")


def _median(xs: Any) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _f(x: float | None, fmt: str = ".4f", bound: bool = False) -> str:
    if x is None:
        return "—"
    return (">" if bound else "") + format(x, fmt)


def table(runs: list[dict[str, Any]], rat: list[dict[str, Any]]) -> str:
    lines = ["| round | tool | version | epochs | s/epoch | s to valid NDCG@10≥0.030 | best valid | test NDCG@10 "
             "| test HR@10 | test eval s | valid eval s (median) | peak RSS MB | children max RSS so far MB |",
             "|" + "---|" * 13]
    for r in runs:
        ttq = r["seconds_to_valid_NDCG@10>=0.030"]
        short = r.get("seconds_without_quality")
        ttq_s = _f(ttq, ".0f") if ttq is not None else f"> cap ({r['wall_seconds']:.0f})" if r["killed_at_cap"] \
            else f"> {short:.0f} (not reached)" if short else "not reached"
        tool = r["tool"] + (f" (from {r['from']})" if r.get("from") else "")
        lines.append(f"| {r['round']} | {tool} | {r['version']} | {r['epochs_run']} "
                     f"| {_f(r['median_epoch_seconds'], '.1f')} | {ttq_s} | {_f(r['best_valid_NDCG@10'])} "
                     f"| {_f(r['test_NDCG@10'])} | {_f(r['test_HR@10'])} | {_eval_cell(r)} "
                     f"| {_f(r.get('median_valid_eval_seconds'), '.1f')} | {_f(r['peak_rss_mb'], '.0f')} "
                     f"| {_f(r.get('children_max_rss_mb_so_far'), '.0f')} |")
    if rat:
        lines += ["", "| round | seqrec run | peer | time-to-quality (peer/seqrec) | test eval speed "
                  "| valid eval speed | epoch time | memory |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {x['round']} | {x.get('seqrec', 'seqrec')} | {x['peer']} "
                  f"| {_f(x['time_to_quality'], '.2f', x['time_to_quality_is_lower_bound'])}"
                  f" | {_f(x['eval_speed'], '.2f')}{' (probe)' if x.get('eval_speed_from_probe') else ''}"
                  f" | {_f(x.get('valid_eval_speed'), '.2f')}"
                  f" | {_f(x['epoch_time'], '.2f')} | {_f(x['memory'], '.2f')} |"
                  for x in rat]
    return "\n".join(lines)


def main() -> int:
    args = parse()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        print(f"[peers] unknown tools {sorted(unknown)}; choose from {', '.join(TOOLS)}")
        return 2
    if not args.data.exists():
        print(f"[peers] SKIP: data file {args.data} is absent on this machine; nothing to compare")
        return 0
    install: dict[str, float] = {}
    ready = {"seqrec"}
    for env in sorted({t.split("-")[0] for t in tools} - {"seqrec"}):
        ok, secs = envs.ensure(env)
        install[env] = secs
        print(f"[peers] {env}: {'ready' if ok else 'FAILED, skipped'} (install {secs:.0f}s)", flush=True)
        if ok:
            ready.add(env)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    data = WORK / f"data-{args.max_users or 'all'}"
    stats = convert(args.data, data, args.max_users)
    print(f"[peers] data: {stats['users']} users, {stats['items']} items, {stats['events']} events", flush=True)
    runs: list[dict[str, Any]] = []
    for rnd in range(1, args.rounds + 1):
        order = tools if rnd % 2 else tools[::-1]
        raw = WORK / f"run-{stamp}" / f"round{rnd}"
        raw.mkdir(parents=True, exist_ok=True)
        for tool in order:
            if tool.split("-")[0] not in ready:
                continue
            summary = run_worker(tool, data, raw, args)
            summary["round"] = rnd
            runs.append(summary)
            seen = summary["data_seen"]
            if seen.get("n_users") is not None and (seen["n_users"], seen["n_items"]) != (stats["users"],
                                                                                          stats["items"]):
                print(f"[peers] WARNING {tool} saw {seen['n_users']} users / {seen['n_items']} items, "
                      f"the file has {stats['users']} / {stats['items']}", flush=True)
    taken = set(tools)
    for path in args.reuse:
        earlier = runs_from(path, taken)
        runs += earlier
        taken |= {r["tool"] for r in earlier}
    rat = ratios(runs)
    result = {
        "protocol": "leave-one-out (last item test, second-to-last validation), full ranking over all items, "
                    "history items excluded; SASRec dim 64, 2 blocks, 1 head, max len 50, full softmax CE, "
                    "batch 128, lr 1e-3, each tool's default dropout",
        "data": {"file": str(args.data), "max_users": args.max_users, **stats},
        "cap_minutes": args.cap_minutes, "threads": args.threads, "rounds": args.rounds,
        "omp_wait_policy": args.omp_wait_policy,
        "install_seconds": install, "runs": runs, "ratios_peer_over_seqrec": rat,
        "reused_runs_from": [str(p) for p in args.reuse] or None,
        "command": "python " + " ".join(sys.argv), "ran_beside": args.note, "cpu": machine.cpu(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = args.out or ROOT / "benchmarks" / "results" / f"peers-{stamp[:8]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(table(runs, rat))
    print(f"[peers] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
