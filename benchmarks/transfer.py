"""Transfer across catalogs, with SASRec in item mode ``text`` (no id embedding), the same settings and seed
everywhere; leave-one-out on the target log, full ranking over the target catalog. Two pairs (``--source``):

``scientific-domains`` (default): Amazon Scientific (UniSRec files, with item text) split into two domains by
the category in each item's text (the one after "Industrial & Scientific"): target = lab, test & measurement,
professional medical/dental and occupational health items; source = every other category. Each user keeps
their events in each domain (two logs, disjoint catalogs).

``movielens``: the bundled MovieLens latest-small (each movie's text: its title and genres; each user's
ratings in time order) is the source and the whole Amazon Scientific catalog the target: no shared users,
items or vocabulary beyond English.

For each pair:

- target alone: trained on the target log only;
- pretrained on the source log, then fine-tuned on the target (``--init-from``: encoder and text projection
  copied);
- pretrained with the encoder frozen (``--init-from SOURCE --freeze encoder``: only the item tower trains);
- zero-shot: the source model evaluated on the target log with no training there
  (``seqrec evaluate SOURCE --data TARGET --item-text TEXT``).

    python benchmarks/transfer.py --max-seconds 480 --out benchmarks/results/transfer-scientific.json
    python benchmarks/transfer.py --source movielens --max-seconds 300 \\
        --out benchmarks/results/transfer-movielens-scientific.json

or in parts that add their rows to the same file (zero-shot and fine-tuning read the source artifact from
--work): ``--only target-alone,source-pretrain`` then ``--only zero-shot,target-finetuned,target-frozen``. One training
process at a time; ``--threads`` sets OMP_NUM_THREADS for a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_cli  # noqa: E402
from features_scientific import SETTINGS, prepare  # noqa: E402
from train_cli import METRICS  # noqa: E402

MOVIELENS = ROOT / "src" / "seqrec" / "datasets" / "movielens_latest_small"
SOURCES = ("scientific-domains", "movielens")
TARGET = ("Lab", "Test,", "Professional", "Occupational")  # first word of the category after the top level
TOP = "Industrial & Scientific "


def domain_of(text: str) -> str | None:
    at = text.find(TOP)
    if at < 0:
        return None
    words = text[at + len(TOP):].split()
    if not words:
        return None
    return "target" if words[0] in TARGET else "source"


def split_domains(log: Path, text: Path, work: Path) -> dict[str, Path]:
    """Two user-per-line logs (items of one domain each); items without a category are left out."""
    import csv

    with open(text, newline="") as f:
        domain = {row["item_id"]: domain_of(row["text"]) for row in csv.DictReader(f)}
    out = {name: work / f"scientific-{name}.txt" for name in ("source", "target")}
    lines: dict[str, list[str]] = {name: [] for name in out}
    for line in log.read_text().splitlines():
        user, *items = line.split()
        for name in out:
            mine = [i for i in items if domain.get(i) == name]
            if mine:
                lines[name].append(f"{user} {' '.join(mine)}\n")
    for name, path in out.items():
        path.write_text("".join(lines[name]))
    return out


def movielens_source(work: Path) -> tuple[Path, Path]:
    """The bundled MovieLens latest-small as a user-per-line log (time order) and a text CSV (title and genres)."""
    import csv

    import pandas as pd

    ratings = pd.read_csv(MOVIELENS / "ratings.csv.gz").sort_values(["userId", "timestamp", "movieId"], kind="stable")
    log, text = work / "movielens.txt", work / "movielens_text.csv"
    with open(log, "w") as f:
        for user, items in ratings.groupby("userId", sort=True)["movieId"]:
            f.write(f"m{user} {' '.join(str(i) for i in items)}\n")
    movies = pd.read_csv(MOVIELENS / "movies.csv")
    with open(text, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "text"])
        for movie, title, genres in movies.itertuples(index=False):
            kinds = "" if genres == "(no genres listed)" else ", ".join(str(genres).split("|"))
            writer.writerow([movie, f"{title}. {kinds}".strip() if kinds else title])
    return log, text


def train(name: str, log: Path, text: Path, work: Path, args: argparse.Namespace, *extra: str) -> tuple[Path, dict]:
    out = work / f"run-{name}"
    cmd = ["seqrec", "train", "--data", str(log), "--format", "user-per-line", *SETTINGS, "--epochs",
           str(args.epochs), "--patience", str(args.patience), "--max-seconds", str(args.max_seconds), "--seed",
           str(args.seed), "--device", "cpu", "--quiet", "--k", "10,20", "--out", str(out), "--force",
           "--item-text", str(text), "--text-cols", "text", "--item-mode", "text", *extra]
    return out, {"run": name, **train_cli.train(cmd, out, args.threads, name).summary()}


def zero_shot(source: Path, target: Path, text: Path, args: argparse.Namespace) -> dict:
    cmd = ["seqrec", "evaluate", str(source), "--data", str(target), "--data-format", "user-per-line",
           "--item-text", str(text), "--text-cols", "text", "--k", "10,20", "--format", "json"]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"zero-shot: exit {proc.returncode}")
    metrics = json.loads(proc.stdout)
    return {"run": "zero-shot (source model, no target training)", "command": " ".join(cmd),
            "seconds": round(time.perf_counter() - t0, 1), "test": {k: metrics.get(k) for k in METRICS}}


def stats(log: Path) -> dict:
    rows = [line.split()[1:] for line in log.read_text().splitlines() if line.strip()]
    return {"users": len(rows), "items": len({i for r in rows for i in r}), "events": sum(len(r) for r in rows),
            "users_with_3_or_more": sum(len(r) >= 3 for r in rows)}


DEFAULT_OUT = ROOT / "benchmarks" / "results" / "transfer-scientific.json"
RUNS = ("target-alone", "source-pretrain", "zero-shot", "target-finetuned", "target-frozen")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train_cli.add_run_args(p, 40, 5, 480.0, "/tmp/seqrec-transfer-bench", DEFAULT_OUT)
    p.add_argument("--source", choices=SOURCES, default=SOURCES[0],
                   help="scientific-domains: one Scientific domain to the other; movielens: MovieLens "
                        "latest-small to the whole Scientific catalog")
    p.add_argument("--only", default=",".join(RUNS),
                   help="run these (in order; zero-shot and the target-finetuned/-frozen runs need the "
                        "source-pretrain artifact in --work): several invocations add their rows to one --out file")
    args = p.parse_args()
    only = [r.strip() for r in args.only.split(",") if r.strip()]
    if unknown := sorted(set(only) - set(RUNS)):
        raise SystemExit(f"--only: unknown run {unknown[0]!r}; choose from {', '.join(RUNS)}")
    if args.source == "movielens" and args.out == DEFAULT_OUT:
        args.out = args.out.with_name("transfer-movielens-scientific.json")
    log, text = prepare(args.work)
    if args.source == "movielens":
        ml_log, ml_text = movielens_source(args.work)
        logs, texts = {"source": ml_log, "target": log}, {"source": ml_text, "target": text}
    else:
        logs = split_domains(log, text, args.work)
        texts = {"source": text, "target": text}
    script = " ".join([sys.executable, *sys.argv])
    result = {"benchmark": "transfer-scientific" if args.source == SOURCES[0] else "transfer-movielens-scientific",
              "script": script, "machine": platform.processor() or platform.machine(), "threads": args.threads,
              "max_seconds_per_run": args.max_seconds, "note": args.note,
              "domains": {name: stats(path) for name, path in logs.items()}, "results": []}
    if args.source == SOURCES[0]:
        result["target_categories"] = list(TARGET)
    if args.out.is_file() and set(only) != set(RUNS):  # a later part of the same benchmark: keep the rows so far
        earlier = json.loads(args.out.read_text())
        if earlier.get("benchmark") == result["benchmark"] and earlier.get("domains") == result["domains"]:
            kept = [row for row in earlier.get("results", []) if row.get("part") not in only]
            result["script"] = "; ".join(dict.fromkeys([*str(earlier.get("script", "")).split("; "), script]))
            result["note"] = earlier.get("note") or args.note
            result["results"] = kept

    def record(part: str, row: dict) -> None:
        result["results"].append({"part": part, **row})
        result["results"].sort(key=lambda r: RUNS.index(r["part"]) if r.get("part") in RUNS else len(RUNS))
        print(json.dumps({k: row.get(k) for k in ("run", "test", "epochs_run", "seconds")}), flush=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, args.out)

    work = args.work / args.source if args.source != SOURCES[0] else args.work
    work.mkdir(parents=True, exist_ok=True)
    source = work / "run-source-pretrain"
    text = texts["target"]
    if "target-alone" in only:
        record("target-alone", train("target-alone", logs["target"], text, work, args)[1])
    if "source-pretrain" in only:
        _, pre = train("source-pretrain", logs["source"], texts["source"], work, args)
        pre["run"] = "source-pretrain (its own test split, source catalog)"
        record("source-pretrain", pre)
    if "zero-shot" in only:
        record("zero-shot", zero_shot(source, logs["target"], text, args))
    if "target-finetuned" in only:
        record("target-finetuned", train("target-finetuned", logs["target"], text, work, args, "--init-from",
                                         str(source))[1])
    if "target-frozen" in only:
        record("target-frozen", train("target-frozen", logs["target"], text, work, args, "--init-from",
                                      str(source), "--freeze", "encoder")[1])


if __name__ == "__main__":
    main()
