"""Full-ranking evaluation over large catalogs scores (users x tile) blocks, never (users x catalog)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from seqrec.data.sequences import Sequences
from seqrec.data.split import EvalSet
from seqrec.eval import tiled
from seqrec.eval.evaluate import EvalConfig, evaluate
from seqrec.models.registry import create


def _eval_set(n_items: int, users: int, length: int, seed: int = 0) -> EvalSet:
    rng = np.random.default_rng(seed)
    history = Sequences.from_lengths(np.full(users, length), rng.integers(1, n_items + 1, users * length))
    return EvalSet(np.arange(users), history, rng.integers(1, n_items + 1, users))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ranking_scores_tiles_of_bounded_width(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every score block is at most (batch x ITEM_TILE), the catalog is covered once per batch, and the
    (rows x catalog) path (ties at the k-th place) is not taken; a bfloat16 table too."""
    n_items, batch, users = 100_000, 16, 40
    torch.manual_seed(0)
    model = create("sasrec", n_items=n_items, max_len=5, dim=8, n_heads=1)
    model.tower.store_tables(dtype)
    blocks: list[tuple[int, int]] = []
    real_fill = tiled.fill_tile

    def spy(out: torch.Tensor, *args: Any) -> torch.Tensor:
        blocks.append(tuple(out.shape))  # type: ignore[arg-type]
        return real_fill(out, *args)

    def no_full_rows(*args: Any) -> torch.Tensor:
        raise AssertionError("a (rows x catalog) score matrix was built")

    monkeypatch.setattr(tiled, "fill_tile", spy)
    monkeypatch.setattr("seqrec.eval.evaluate.score_histories", no_full_rows)
    metrics = evaluate(model, _eval_set(n_items, users, 5), EvalConfig(ks=(10,), batch_size=batch, workers=1))
    assert 0.0 <= metrics["NDCG@10"] <= 1.0
    assert max(rows for rows, _ in blocks) <= batch
    assert max(width for _, width in blocks) == tiled.ITEM_TILE
    n_batches = -(-users // batch)
    assert sum(width for _, width in blocks) == n_batches * (n_items + 1)  # each item scored once per batch


SCRIPT = """
import json, resource, sys
import numpy as np, torch
from seqrec.data.sequences import Sequences
from seqrec.data.split import EvalSet
from seqrec.eval.evaluate import EvalConfig, evaluate
from seqrec.models.registry import create
torch.set_num_threads(1)
n_items, users = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = create("sasrec", n_items=n_items, max_len=5, dim=4, n_heads=1)
rng = np.random.default_rng(0)
history = Sequences.from_lengths(np.full(users, 5), rng.integers(1, n_items + 1, users * 5))
data = EvalSet(np.arange(users), history, rng.integers(1, n_items + 1, users))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
metrics = evaluate(model, data, EvalConfig(ks=(10,), batch_size=users, workers=1))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "after": after, "ndcg": metrics["NDCG@10"]}))
"""


@pytest.mark.slow
def test_ten_million_items_peak_memory_far_below_a_score_matrix() -> None:
    """A 10M-item catalog, 64 users in one batch: the peak RSS grows by far less than the 2.56 GB a
    (64 x 10M) float32 score matrix would take (a fresh process, so the peak is this evaluation's)."""
    n_items, users = 10_000_000, 64
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(n_items), str(users)], capture_output=True,
                          text=True, timeout=300, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    score_matrix = users * n_items * 4
    assert 0.0 <= out["ndcg"] <= 1.0
    assert out["after"] - out["before"] < score_matrix / 10
