"""Regenerate the results table in benchmarks/README.md from benchmarks/results/*.json.

    python benchmarks/summarize.py

Numbers are copied from the JSON files written by benchmarks/run.py; nothing is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SPEED_BEGIN, SPEED_END = "<!-- speed:begin -->", "<!-- speed:end -->"


def quality_table() -> str:
    rows = ["| dataset | model | loss | tag | NDCG@10 | HR@10 | MRR@10 | NDCG@20 | HR@20 | epochs (best) | s/epoch "
            "| train s | peak RSS MB | command |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted((ROOT / "results").glob("*.json")):
        r = json.loads(path.read_text())
        if "test" not in r:
            continue
        t = r["test"]
        rows.append(
            f"| {r['dataset']} | {r['model']} | {r['loss']} | {r.get('tag', '')} | {t['NDCG@10']:.4f} | "
            f"{t['HR@10']:.4f} | {t['MRR@10']:.4f} | {t.get('NDCG@20', float('nan')):.4f} | "
            f"{t.get('HR@20', float('nan')):.4f} | {r['epochs_run']} ({r['best_epoch']}) | "
            f"{r['median_epoch_seconds']:.0f} | {r['train_seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"`{r['command']}` |")
    return "\n".join(rows)


def speed_tables() -> str:
    rows = ["| benchmark | result | baseline in the same run | command |", "|---|---|---|---|"]
    for path in sorted((ROOT / "results").glob("eval-speed-*.json")):
        r = json.loads(path.read_text())
        rows.append(f"| full-ranking eval, {r['users']:,} users x {r['items']:,} items | "
                    f"{r['seqrec_median_s']:.1f} s median ({r['users_per_second']:,.0f} users/s) | "
                    f"plain: {r['plain_median_s']:.1f} s ({r['speedup_median']:.1f}x slower) | `{r['command']}` |")
    for path in sorted((ROOT / "results").glob("serving-*.json")):
        r = json.loads(path.read_text())
        lat = r["latency"]
        rows.append(f"| serving {r['name']} (80% reads / 20% writes, {r['mix']['distinct_users']:,} users) | "
                    f"{r['requests_per_second']:.0f} req/s, p50 {lat['p50_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms, "
                    f"p99 {lat['p99_ms']:.0f} ms, {r['errors']} errors | target 500 req/s, p99 < 25 ms | "
                    f"`{r['command'][:160]}` |")
    return "\n".join(rows)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    text = f"{head}{BEGIN}\n{quality_table()}\n{END}{tail}"
    head, rest = text.split(SPEED_BEGIN, 1)
    _, tail = rest.split(SPEED_END, 1)
    readme.write_text(f"{head}{SPEED_BEGIN}\n{speed_tables()}\n{SPEED_END}{tail}")
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
