"""Regenerate the tables in benchmarks/README.md from benchmarks/results/*.json.

    python benchmarks/summarize.py

Numbers are copied from the JSON files written by the benchmark scripts; nothing is typed by hand.
Each table lives between a pair of markers (``<!-- name:begin -->`` / ``<!-- name:end -->``);
a marker pair absent from the README is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SPEED_BEGIN, SPEED_END = "<!-- speed:begin -->", "<!-- speed:end -->"
SERVING_BEGIN, SERVING_END = "<!-- serving:begin -->", "<!-- serving:end -->"
SCALE_BEGIN, SCALE_END = "<!-- scale:begin -->", "<!-- scale:end -->"
PEERS_BEGIN, PEERS_END = "<!-- peers:begin -->", "<!-- peers:end -->"
ROOF_BEGIN, ROOF_END = "<!-- roofline:begin -->", "<!-- roofline:end -->"
TARGETS_BEGIN, TARGETS_END = "<!-- targets:begin -->", "<!-- targets:end -->"
S3_BEGIN, S3_END = "<!-- s3rec:begin -->", "<!-- s3rec:end -->"

# Published full-ranking NDCG@10 (sources in benchmarks/README.md) and the bar each result
# must reach: (dataset, model, loss, what, published NDCG@10, bar NDCG@10). When several runs of one model
# and loss exist, the one with the best *validation* NDCG@10 stands for it (the test split never chooses).
TARGETS = [
    ("amazon-beauty-bert4rec", "sasrec", "ce", "SASRec + full CE >= published", 0.0327, 0.0327),
    ("amazon-beauty-bert4rec", "bert4rec", "ce", "BERT4Rec >= published", 0.0187, 0.0187),
    ("amazon-beauty-bert4rec", "sasrec", "bce", "SASRec + BCE (1 neg) within 10%", 0.0126, 0.0126 * 0.9),
    ("amazon-beauty-s3rec", "sasrec", "ce", "SASRec (CE or SS) >= SASRec+SS", 0.0531, 0.0531),
    ("amazon-sports-s3rec", "sasrec", "ce", "SASRec (CE or SS) >= SASRec+SS", 0.0314, 0.0314),
]
S3_PUBLISHED = {  # NDCG@10 / HR@10 on the same files, full ranking (sources in benchmarks/README.md)
    "amazon-beauty-s3rec": "SASRec (BCE) 0.0318 / 0.0605; ICLRec 0.0403 / 0.0744; SASRec+SS 0.0531 / 0.0921; "
                           "BSARec 0.0611 / 0.1008",
    "amazon-sports-s3rec": "SASRec (BCE) 0.0192 / 0.0350; MCLRec 0.0260 / 0.0501; SASRec+SS 0.0314 / 0.0569; "
                           "eSASRec 0.0323 / 0.0560",
}


# Two hosts ran these benchmarks. Files written since the CPU was recorded name it; for older files
# the date decides: every file dated 2026-11-28 ran on the AMD EPYC (the serving files of that day
# record it), every later one on the Intel Xeon (the serving files of 2026-12-01 record it).
FIRST_INTEL_DAY = "2026-12-01"


def host(r: dict) -> str:
    """The CPU a result ran on: its recorded model, else inferred from its date ("by date")."""
    m = r.get("machine")
    recorded = " ".join(str(x) for x in (r.get("cpu"), m.get("cpu") if isinstance(m, dict) else m) if x)
    if "EPYC" in recorded:
        return "AMD EPYC"
    if "Xeon" in recorded:
        return "Intel Xeon"
    date = str(r.get("date") or r.get("date_utc") or "")[:10]
    if not date:
        return "not recorded"
    return ("AMD EPYC" if date < FIRST_INTEL_DAY else "Intel Xeon") + " (by date)"


def when(r: dict) -> str:
    """Date and host of a result, for a table cell."""
    date = str(r.get("date") or r.get("date_utc") or "")[:10]
    return f"{date or 'no date'}, {host(r)}"


# Bucketed batches weigh every target alike (train/loop.py, TargetWeighting). Result files do not
# record the weighting; bucketed runs written before it existed (before this time, UTC) took each
# batch's mean loss as it was, so a target in a small batch weighed more than one in a large batch.
TARGET_WEIGHTING_SINCE = "2026-12-01T16:32"


def batches(r: dict) -> str:
    """How a run's training batches were formed: random, or length buckets (weighted or not)."""
    if r.get("model") == "popular":
        return "-"
    if not r.get("train_config", {}).get("bucket", True):
        return "random"
    return "buckets (weighted)" if str(r.get("date", "")) >= TARGET_WEIGHTING_SINCE else "buckets (unweighted)"


def quality_table() -> str:
    rows = ["| dataset | model | loss | tag | batches | NDCG@10 | HR@10 | MRR@10 | NDCG@20 | HR@20 | epochs (best) "
            "| s/epoch | train s | peak RSS MB | date, host | command |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted((ROOT / "results").glob("*.json")):
        r = json.loads(path.read_text())
        if "test" not in r or "loss" not in r:  # run.py's files only (other benchmarks report tests too)
            continue
        t = r["test"]
        rows.append(
            f"| {r['dataset']} | {r['model']} | {r['loss']} | {r.get('tag', '')} | {batches(r)} | {t['NDCG@10']:.4f} | "
            f"{t['HR@10']:.4f} | {t['MRR@10']:.4f} | {t.get('NDCG@20', float('nan')):.4f} | "
            f"{t.get('HR@20', float('nan')):.4f} | {r['epochs_run']} ({r['best_epoch']}) | "
            f"{r['median_epoch_seconds']:.0f} | {r['train_seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{when(r)} | `{r['command']}` |")
    return "\n".join(rows)


def _runs(dataset: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((ROOT / "results").glob(f"{dataset}-*.json"))]


def rest_valid(r: dict) -> bool:
    """Did the run train on the validation events of the users outside its validation sample?"""
    return bool(r.get("train_config", {}).get("train_rest_valid"))


def chosen(dataset: str, model: str, loss: str, variant: bool = False) -> dict | None:
    """The run of this model and loss with the best validation NDCG@10, or None. Runs under the
    published protocol (validation events never trained on) and ``--train-rest-valid`` runs
    (``variant``) are chosen separately: their validation scores are not comparable."""
    runs = [r for r in _runs(dataset) if r.get("model") == model and r.get("loss") == loss and "test" in r
            and rest_valid(r) == variant]
    return max(runs, key=lambda r: r["best_valid_NDCG@10"]) if runs else None


VARIANT = " [variant: other users' validation events trained on]"


def targets_table() -> str:
    rows = ["| dataset | target | published NDCG@10 | ours NDCG@10 (run tag) | ours / published | met |",
            "|---|---|---|---|---|---|"]
    for dataset, model, loss, what, published, bar in TARGETS:
        r = chosen(dataset, model, loss)
        if r is None:
            rows.append(f"| {dataset} | {what} | {published:.4f} | not run | | no |")
            continue
        ours = r["test"]["NDCG@10"]
        rows.append(f"| {dataset} | {what} | {published:.4f} | {ours:.4f} ({r.get('tag') or '-'}) | "
                    f"{ours / published:.2f} | {'yes' if ours >= bar else 'no'} |")
        v = chosen(dataset, model, loss, variant=True)
        if v is not None:
            ours = v["test"]["NDCG@10"]
            rows.append(f"| {dataset} | {what}{VARIANT} | {published:.4f} | {ours:.4f} ({v.get('tag') or '-'}) | "
                        f"{ours / published:.2f} | {'yes' if ours >= bar else 'no'} (variant) |")
    for dataset in ("amazon-beauty-bert4rec", *S3_PUBLISHED):
        hstu, sasrec = chosen(dataset, "hstu", "ce"), chosen(dataset, "sasrec", "ce")
        if hstu and sasrec:
            h, s = hstu["test"]["NDCG@10"], sasrec["test"]["NDCG@10"]
            rows.append(f"| {dataset} | HSTU >= SASRec (ours, both CE) | | {h:.4f} vs {s:.4f} | {h / s:.2f} | "
                        f"{'yes' if h >= s else 'no'} |")
    for dataset, best_published in (("amazon-beauty-s3rec", 0.0611), ("amazon-sports-s3rec", 0.0323)):
        for variant in (False, True):
            runs = [r for r in _runs(dataset) if "test" in r and rest_valid(r) == variant]
            if not runs:
                continue
            top = max(runs, key=lambda r: r["best_valid_NDCG@10"])  # chosen by validation, then its test score
            ours = top["test"]["NDCG@10"]
            met = ("yes" if ours >= best_published else "no") + (" (variant)" if variant else "")
            rows.append(f"| {dataset} | best seqrec model by validation ({top['model']}, {top.get('tag') or '-'}) "
                        f">= best published{VARIANT if variant else ''} | {best_published:.4f} | {ours:.4f} | "
                        f"{ours / best_published:.2f} | {met} |")
    return "\n".join(rows)


def s3_table() -> str:
    """Every model on the S3-Rec files, all six cut-off metrics."""
    cols = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")
    rows = [f"| dataset | model | loss | tag | batches | {' | '.join(cols)} | epochs (best) | s/epoch | host |",
            "|---|---|---|---|---|" + "---|" * len(cols) + "---|---|---|"]
    for dataset in S3_PUBLISHED:
        for r in _runs(dataset):
            t = r["test"]
            tag = (r.get("tag") or "") + (" (variant)" if rest_valid(r) else "")
            rows.append(f"| {dataset} | {r['model']} | {r['loss']} | {tag} | {batches(r)} | "
                        + " | ".join(f"{t[c]:.4f}" for c in cols)
                        + f" | {r['epochs_run']} ({r['best_epoch']}) | {r['median_epoch_seconds']:.0f} | {host(r)} |")
    notes = [f"Published on {d}, NDCG@10 / HR@10: {p}." for d, p in S3_PUBLISHED.items()]
    return "\n".join(rows) + "\n\n" + "\n".join(notes)


def speed_tables() -> str:
    """Full-ranking evaluation speed (benchmarks/eval_speed.py)."""
    rows = ["| benchmark | result | baselines in the same run | threads | host | ran beside | command |",
            "|---|---|---|---|---|---|---|"]
    for path in sorted((ROOT / "results").glob("eval-speed-*.json")):
        r = json.loads(path.read_text())
        one = r.get("one_batch_at_a_time_median_s")  # absent from files written before the field existed
        one_text = "" if one is None else (
            f"; one batch at a time: {one:.2f} s ({r['batch_threads_speedup_median']:.2f}x slower)")
        rows.append(f"| full-ranking eval, {r['users']:,} users x {r['items']:,} items | "
                    f"{r['seqrec_median_s']:.2f} s median ({r['users_per_second']:,.0f} users/s) | "
                    f"plain: {r['plain_median_s']:.2f} s ({r['speedup_median']:.2f}x slower){one_text} | "
                    f"{r['threads']} | {host(r)} | {r.get('ran_beside') or 'not noted'} | `{r['command']}` |")
    return "\n".join(rows)


def serving_table() -> str:
    """Load tests of `seqrec serve` (benchmarks/serving_load.py), one row per file."""
    rows = ["| run | date, host | model | workers | connections | GIL switch ms | req/s | p50 / p95 / p99 ms "
            "| errors | server cores | meets its target | command |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted((ROOT / "results").glob("serving-*.json")):
        r = json.loads(path.read_text())
        if "latency" not in r:  # serving_breakdown.py and serving_state.py measure stages, not load
            continue
        lat, serve = r["latency"], r.get("serve_command") or ""
        workers = next((a.split("=", 1)[1] for a in serve.split() if a.startswith("--workers=")), "1")
        gil = next((a.split("=", 1)[1] for a in serve.split() if a.startswith("--gil-switch-ms=")), "5 (default)")
        t = r.get("target")
        target = "" if not t else "yes" if r.get("target_met") else "no"
        rows.append(f"| {r['name']} | {when(r)} | {r['model']} | {workers} | {r.get('concurrency', '')} | {gil} | "
                    f"{r['requests_per_second']:,.1f} | {lat['p50_ms']:.1f} / {lat['p95_ms']:.1f} / "
                    f"{lat['p99_ms']:.1f} | {r['errors']} | {r['cpu']['server_cores']:.2f} | {target} | "
                    f"`{r['command']}` |")
    return "\n".join(rows)


def scale_table() -> str:
    """Preprocessing a synthetic log at scale (benchmarks/scale.py)."""
    rows = ["| rows | kept | users | items | seconds per stage | peak RSS MB | ran beside | command |",
            "|---|---|---|---|---|---|---|---|"]
    for path in sorted((ROOT / "results").glob("scale-*.json")):
        r = json.loads(path.read_text())
        if "seconds" not in r:  # scale.py --prepare files: described in their own section
            continue
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items())
        rows.append(f"| {r['rows']:,} | {r['kept']:,} | {r['users']:,} | {r['items']:,} | {stages} | "
                    f"{r['peak_rss_mb']:,.0f} | {r.get('ran_beside') or 'not noted'} | `{r['command']}` |")
    return "\n".join(rows)


def peers_tables() -> str:
    """The harness's own table (benchmarks/peers/run.py) for each peers-*.json, with its command."""
    sys.path.insert(0, str(ROOT / "peers"))
    spec = importlib.util.spec_from_file_location("peers_run", ROOT / "peers" / "run.py")
    assert spec is not None and spec.loader is not None
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    parts = []
    for path in sorted((ROOT / "results").glob("peers-*.json")):
        r = json.loads(path.read_text())
        beside = r["ran_beside"] or "nothing noted"
        beside = "its `--note`" if beside in r["command"] else beside  # the note is in the command already
        omp = {"default": "unset"}.get(r.get("omp_wait_policy", ""), r.get("omp_wait_policy")) or \
            "PASSIVE (files before the field: the harness always set it)"
        parts.append(f"`{path.name}` ({when(r)}): `{r['command']}` ({r['threads']} thread(s) per tool, cap "
                     f"{r['cap_minutes']} min, OMP_WAIT_POLICY {omp}; "
                     f"ran beside: {beside})\n\n"
                     + peers.table(r["runs"], peers.ratios(r["runs"])))  # ratios recomputed by the current rules
    return "\n\n".join(parts)


def roofline_table() -> str:
    rows = ["| measurement | value | command |", "|---|---|---|"]
    for path in sorted((ROOT / "results").glob("roofline-*.json")):
        r = json.loads(path.read_text())
        s, cmd = r["sasrec_step"], f"`{r['command']}`"
        peak = ", ".join(f"{k} {v:.1f}" for k, v in r["matmul_gflops"].items())
        share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in s["phase_share"].items())
        how = ("bf16 autocast, " if r.get("bf16_autocast") else "") + \
            ("bf16 gradient matmuls in the catalog softmax, " if r.get("ce_bf16_grads") else "") + \
            f"OMP_WAIT_POLICY {r.get('omp_wait_policy', 'PASSIVE')}"  # files before the field: PASSIVE
        epoch = s["projected_epoch_seconds"]
        fp32_limit = r["epoch_limit_seconds_fp32"]
        limits = f"{fp32_limit:.0f} s at the fp32 peak (ours {epoch / fp32_limit:.1f}x)"
        if r.get("epoch_limit_seconds_mixed"):
            limits += f", {r['epoch_limit_seconds_mixed']:.0f} s with the two gradient matmuls at the bf16 peak " \
                      f"(ours {epoch / r['epoch_limit_seconds_mixed']:.1f}x)"
        if r.get("epoch_limit_seconds_bf16"):
            limits += f", {r['epoch_limit_seconds_bf16']:.0f} s at the bf16 peak " \
                      f"(ours {epoch / r['epoch_limit_seconds_bf16']:.1f}x)"
        machine = r["machine"] if "Xeon" in r["machine"] or "EPYC" in r["machine"] else \
            f"{r['machine']}; {host(r)}"
        rows += [f"| matmul GFLOP/s ({machine}; {r['date'][:10]}) | {peak} | {cmd} |",
                 f"| SASRec epoch ({how}), projected from {s['steps_timed']} steps | {epoch:.0f} s "
                 f"({s['targets_per_epoch']:,} targets, {s['batches_per_epoch']} batches) | {cmd} |",
                 f"| hardware limit (output layer {s['output_layer_tflop_per_epoch']:.2f} + encoder "
                 f"{s['encoder_tflop_per_epoch']:.2f} TFLOP at the square-matmul peak) | {limits}; "
                 f"{100 * r['fraction_of_fp32_peak']:.0f}% of the fp32 peak | {cmd} |",
                 f"| where a step's time goes ({how}) | {share} | {cmd} |"]
        for other, label in (("baseline", "plain schedule (each tile op on all threads, for-loop AdamW)"),
                             ("fp32", "fp32 catalog softmax (current schedule)")):
            if s.get(other):
                b, x = s[other], s[f"speedup_vs_{other}"]
                ratios = ", ".join(f"{k.removeprefix('median_')} {v:.2f}x" for k, v in x.items()
                                   if k != "projected_epoch")
                rows.append(f"| same batches, {label}, alternating | {b['projected_epoch_seconds']:.0f} s projected "
                            f"epoch: current is {x['projected_epoch']:.2f}x faster; per-phase medians {ratios} "
                            f"| {cmd} |")
    for path in sorted((ROOT / "results").glob("presets*.json")):
        r = json.loads(path.read_text())
        for x in r["rows"]:
            rows.append(f"| {x['model']} --size {x['size']}: one training step ({x['optimizer']}; {when(r)}) | "
                        f"{x['parameters']:,} parameters ({x['block_parameters']:,} in the layers), "
                        f"step {x['step_seconds']:.1f} s, loss finite: {x['finite']}, process peak RSS so far "
                        f"{x['peak_rss_mb_so_far']:,.0f} MB | `{r['command']}` |")
    return "\n".join(rows)


def _replace(text: str, begin: str, end: str, body: str) -> str:
    if begin not in text:
        return text
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main() -> None:
    readme = ROOT / "README.md"
    text = _replace(readme.read_text(), BEGIN, END, quality_table())
    text = _replace(text, SPEED_BEGIN, SPEED_END, speed_tables())
    text = _replace(text, SERVING_BEGIN, SERVING_END, serving_table())
    text = _replace(text, SCALE_BEGIN, SCALE_END, scale_table())
    text = _replace(text, PEERS_BEGIN, PEERS_END, peers_tables())
    text = _replace(text, ROOF_BEGIN, ROOF_END, roofline_table())
    text = _replace(text, TARGETS_BEGIN, TARGETS_END, targets_table())
    text = _replace(text, S3_BEGIN, S3_END, s3_table())
    readme.write_text(text)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
