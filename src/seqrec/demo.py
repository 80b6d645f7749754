"""`seqrec demo`: train on the bundled MovieLens data, compare with popularity, show recommendations."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from seqrec.data.split import leave_one_out
from seqrec.datasets import load_dataset
from seqrec.recommender import Recommender
from seqrec.report import metrics_table
from seqrec.train.config import TrainConfig

# TrainConfig's defaults but these; max_seconds keeps the demo within its three-minute promise on a slow
# or busy machine
DEMO_CONFIG = TrainConfig(epochs=12, lr=1e-2, patience=3, max_seconds=110)


def run_demo(out: Path, epochs: int, model: str = "gru4rec", quiet: bool = False) -> int:
    t0 = time.perf_counter()
    data = load_dataset("movielens-latest-small")
    s = data.stats()
    print("MovieLens latest-small (GroupLens, https://grouplens.org; see the bundled README.txt)")
    print(f"  {s['users']:,} users, {s['items']:,} movies, {s['events']:,} ratings used as implicit events; "
          f"mean history {s['mean_length']:.0f}, median {s['median_length']:.0f}")
    split = leave_one_out(data)
    print(f"  leave-one-out: {len(split.valid):,} validation and {len(split.test):,} test users; "
          f"{len(split.train.items):,} training events")
    cfg = replace(DEMO_CONFIG, epochs=epochs)
    base = Recommender("popular", cfg)
    base.fit(data, split, progress=False)
    rec = Recommender(model, cfg)
    print(f"\ntraining {model} for up to {epochs} epochs (early stopping on validation NDCG@10):")

    def show(row: dict[str, float]) -> None:
        print(f"  epoch {int(row['epoch']):2d}  loss {row['loss']:.4f}  valid NDCG@10 {row['valid_NDCG@10']:.4f}"
              f"  ({row['seconds']:.1f}s)", flush=True)

    result = rec.fit(data, split, progress=not quiet, on_epoch=show)
    if result.stopped_by_time:
        print(f"  (stopped after {len(result.history)} of {epochs} epochs: the demo caps training at "
              f"{cfg.max_seconds:g} s so that it ends in about three minutes on a busy machine)")
    ks = (5, 10, 20)
    results = {"popular": base.evaluate(ks=ks), model: rec.evaluate(ks=ks)}
    rec.info["test_metrics"] = results[model]
    rec.info["baseline_test_metrics"] = results["popular"]
    print("\ntest metrics (full ranking over all movies, already-seen movies excluded):")
    print(metrics_table(results, ["HR@10", "NDCG@10", "MRR@10", "NDCG@20", "coverage@10"]))
    _show_examples(rec)
    rec.save(out)
    print(f"\nartifact saved to {out}; try `seqrec recommend {out} --user 1` or `seqrec serve {out}`")
    print(f"done in {time.perf_counter() - t0:.0f}s")
    return 0


def _show_examples(rec: Recommender) -> None:
    assert rec.dataset is not None and rec.dataset.item_titles is not None
    data = rec.dataset
    titles = data.item_titles
    assert titles is not None
    for u in np.random.default_rng(7).choice(data.n_users, size=3, replace=False):
        user_id = data.users.external[u]
        last = data.sequences.get(int(u))[-5:]
        print(f"\nuser {user_id}: last five movies")
        for item in last:
            print(f"    {titles[item - 1]}")
        print("  top-10 recommendations:")
        recs = rec.recommend([user_id], k=10)
        for row in recs.itertuples(index=False):
            print(f"    {row.rank:2d}. {row.title}")
