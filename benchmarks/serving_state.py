"""Does keeping per-user model state pay in serving? In-process timings, one torch thread, random weights.

    python benchmarks/serving_state.py                       # writes benchmarks/results/serving-state.json

Recurrent models (gru4rec): re-encoding a history of length L against the stored state (decode + query), per
request, and the cost of one event (one RNN step + encode + digest). Attention models (sasrec, the Beauty
serving artifact's shape: d64, 2 layers, max_len 50): re-encoding the 50-item window against a lower bound of
a key/value-cached step (one position through every layer, which a cached step must at least compute: the
attention over the cached keys comes on top), and the bytes such a cache puts in the store per user against
the event list. The catalog product and top-k, which every request pays whatever the encoder, are timed for
scale. Medians over ``--repeat`` calls of the calling thread's CPU time (``time.thread_time``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.data.sequences import Sequences
from seqrec.eval.evaluate import encode_rows
from seqrec.eval.tiled import tile_top
from seqrec.models.registry import create
from seqrec.scoring import catalog_scores
from seqrec.serve.state import RecurrentStepper, history_digest

ROOT = Path(__file__).resolve().parent.parent


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    for _ in range(max(3, repeat // 10)):  # warm-up
        fn()
    times = []
    for _ in range(repeat):  # the CPU clock of this thread (torch runs on it with one thread): waiting for a core
        t0 = time.thread_time()  # that other processes hold is not counted
        fn()
        times.append(time.thread_time() - t0)
    return round(statistics.median(times) * 1e3, 4)


def histories(n_items: int, length: int, batch: int, seed: int = 0) -> Sequences:
    rng = np.random.default_rng(seed)
    return Sequences.from_lists([rng.integers(1, n_items + 1, size=length).tolist() for _ in range(batch)])


def encode_ms(model: Any, n_items: int, length: int, batch: int, repeat: int) -> float:
    seqs = histories(n_items, length, batch)
    rows = np.arange(batch)
    with torch.inference_mode():
        return median_ms(lambda: encode_rows(model, seqs, rows), repeat)


def rnn_numbers(n_items: int, lengths: list[int], repeat: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create("gru4rec", n_items=n_items, max_len=50, dim=64, hidden=64).eval()
    stepper = RecurrentStepper(model)
    out: dict[str, Any] = {"model": "gru4rec d64 hidden 64", "per_request_ms": {}}
    for length in lengths:
        history = np.random.default_rng(length).integers(1, n_items + 1, size=length)
        blob = stepper.to_bytes(stepper.from_history(history))

        def from_state(blob: bytes = blob, length: int = length, history: np.ndarray = history) -> torch.Tensor:
            history_digest(history)  # the freshness check a read makes
            state = stepper.from_bytes(blob, length)
            assert state is not None
            return stepper.query(state)

        out["per_request_ms"][str(length)] = {
            "reencode_batch1": encode_ms(model, n_items, length, 1, repeat),
            "reencode_batch16_per_request": round(encode_ms(model, n_items, length, 16, repeat) / 16, 4),
            "from_state": median_ms(from_state, repeat)}
    history = np.random.default_rng(1).integers(1, n_items + 1, size=20)
    state = stepper.from_history(history)
    blob = stepper.to_bytes(state)

    def one_event() -> bytes:
        prev = stepper.from_bytes(blob, 20)
        assert prev is not None
        new = stepper.advance(prev, [7])
        history_digest(np.append(history, 7))
        return stepper.to_bytes(new)

    out["per_event_ms"] = median_ms(one_event, repeat)
    out["state_bytes"] = len(blob)
    return out


def sasrec_numbers(n_items: int, repeat: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create("sasrec", n_items=n_items, max_len=50, dim=64, n_layers=2, n_heads=1).eval()
    cfg = model.config
    out: dict[str, Any] = {"model": "sasrec d64, 2 layers, 1 head, max_len 50, positions from the start"}
    for batch in (1, 16):
        full = encode_ms(model, n_items, 50, batch, repeat)
        one = encode_ms(model, n_items, 1, batch, repeat)
        out[f"batch{batch}"] = {"reencode_50_ms": full, "cached_step_lower_bound_ms": one,
                                "saved_per_request_ms_at_most": round((full - one) / batch, 4)}
    kv_bytes = cfg.n_layers * 2 * cfg.max_len * cfg.dim * 4
    out["kv_cache_bytes_per_user"] = kv_bytes
    out["store"] = store_numbers(kv_bytes, repeat)
    return out


def store_numbers(blob_bytes: int, repeat: int) -> dict[str, float]:
    """SQLite (WAL, synchronous=NORMAL here: the fsync is the same for both and would hide the difference):
    reading and writing a cache blob of ``blob_bytes`` against reading a 50-event list and writing one event."""
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(str(Path(tmp) / "s.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, user_id TEXT, item_id TEXT, ts REAL)")
        conn.execute("CREATE INDEX events_by_user ON events (user_id, id)")
        conn.execute("CREATE TABLE cache (user_id TEXT PRIMARY KEY, state BLOB) WITHOUT ROWID")
        rng = np.random.default_rng(0)
        for u in range(2000):
            conn.executemany("INSERT INTO events (user_id, item_id, ts) VALUES (?, ?, 0)",
                             [(f"u{u}", str(i)) for i in rng.integers(1, 54542, size=50)])
            conn.execute("INSERT INTO cache VALUES (?, ?)", (f"u{u}", os.urandom(blob_bytes)))
        users = iter(range(10**9))
        blob = os.urandom(blob_bytes)
        return {
            "read_events_50_ms": median_ms(lambda: conn.execute(
                "SELECT item_id FROM events WHERE user_id = ? ORDER BY id DESC LIMIT 200",
                (f"u{next(users) % 2000}",)).fetchall(), repeat),
            "read_kv_blob_ms": median_ms(lambda: conn.execute(
                "SELECT state FROM cache WHERE user_id = ?", (f"u{next(users) % 2000}",)).fetchone(), repeat),
            "write_event_ms": median_ms(lambda: conn.execute(
                "INSERT INTO events (user_id, item_id, ts) VALUES (?, '5', 0)", (f"u{next(users) % 2000}",)), repeat),
            "write_kv_blob_ms": median_ms(lambda: conn.execute(
                "INSERT OR REPLACE INTO cache VALUES (?, ?)", (f"u{next(users) % 2000}", blob)), repeat)}


def catalog_numbers(n_items: int, repeat: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = create("sasrec", n_items=n_items, max_len=50, dim=64, n_layers=2, n_heads=1).eval()
    table = model.item_table()
    out = {}
    for batch in (1, 16):
        query = torch.randn(batch, 64)

        def rank(query: torch.Tensor = query) -> Any:
            return tile_top(catalog_scores(query, table).float(), 10)

        with torch.inference_mode():
            out[f"batch{batch}_per_request_ms"] = round(median_ms(rank, repeat) / batch, 4)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=54_542, help="catalog size (default: Beauty's)")
    p.add_argument("--repeat", type=int, default=300)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving-state.json")
    p.add_argument("--beside", default="", help="free text: what else ran on the machine, for the record")
    args = p.parse_args()
    torch.set_num_threads(1)
    result = {
        "command": shlex.join(["python", "benchmarks/serving_state.py", *sys.argv[1:]]),
        "note": args.beside or "not recorded",
        "threads": 1, "n_items": args.items, "repeat": args.repeat,
        "clock": "time.thread_time: CPU ms of the calling thread, medians",
        "recurrent": rnn_numbers(args.items, [5, 20, 50], args.repeat),
        "attention": sasrec_numbers(args.items, args.repeat),
        "catalog_top10": catalog_numbers(args.items, args.repeat),
        "torch": torch.__version__,
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
