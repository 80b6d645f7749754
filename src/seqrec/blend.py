"""Blend trained models: a weighted product of their next-item distributions, evaluated by full ranking.

Each model gives a distribution over the whole catalog (softmax of its scores); the blend ranks items by
``sum_m w_m * log p_m(item)`` with weights summing to 1. Each model's log normaliser is one number per user,
so this ranks as ``sum_m w_m * score_m(item)``: one product of the weighted queries, side by side, with
the item tables side by side, scored tile by tile like a single model (:mod:`seqrec.eval.tiled`).
Models trained on the same log with different item towers (item ids; item text) make different mistakes, so
their blend can rank better than either alone.

``seqrec blend A B [C ...]`` checks that the artifacts share one catalog and one split, chooses the weights
on the validation split (a grid over the simplex; the test split is never looked at for the choice), then
evaluates the chosen blend once on test. ``--weights`` fixes them instead.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.atomic import replace_text
from seqrec.data.sequences import Sequences
from seqrec.data.split import EvalSet
from seqrec.errors import SeqrecError
from seqrec.eval.evaluate import check_cutoffs, encode_rows, mask_seen, ranks_from_scores, seen_pairs
from seqrec.eval.metrics import all_metrics
from seqrec.eval.tiled import top_and_ranks
from seqrec.items.tower import ItemTable
from seqrec.models.base import SequenceModel
from seqrec.recommender import Recommender
from seqrec.scoring import catalog_scores

ROWS_PER_CHUNK = 256  # users scored at once, against the catalog in tiles (seqrec.eval.tiled)
MAX_GRID = 2000  # weight vectors tried at most


@dataclass(frozen=True)
class Member:
    """One blended model: its artifact path and its loaded recommender."""

    path: Path
    rec: Recommender

    @property
    def model(self) -> SequenceModel:
        assert self.rec.model is not None
        return self.rec.model


def load_members(paths: list[Path]) -> list[Member]:
    """Load the artifacts; they must hold the same catalog and the same users' histories."""
    if len(paths) < 2:
        raise SeqrecError("blend needs two or more artifacts")
    members = [Member(p, Recommender.load(p)) for p in paths]
    for m in members:
        m.rec.require_histories()  # before comparing users: such an artifact holds none
    first = members[0]
    assert first.rec.dataset is not None
    for m in members[1:]:
        assert m.rec.dataset is not None
        if not np.array_equal(m.rec.dataset.items.external, first.rec.dataset.items.external):
            raise SeqrecError(f"{m.path} and {first.path} have different catalogs; blend models trained on one log")
        if not np.array_equal(m.rec.dataset.users.external, first.rec.dataset.users.external):
            raise SeqrecError(f"{m.path} and {first.path} have different users; blend models trained on one log")
    return members


def eval_set(members: list[Member], on: str) -> EvalSet:
    """The split ``on`` of the first member; every member's must hold the same targets."""
    sets = [m.rec.eval_set(on) for m in members]
    for m, s in zip(members[1:], sets[1:], strict=True):
        same = (np.array_equal(s.targets, sets[0].targets) and np.array_equal(s.users, sets[0].users)
                and np.array_equal(s.history.offsets, sets[0].history.offsets)
                and np.array_equal(s.history.items, sets[0].history.items))
        if not same:
            raise SeqrecError(f"{m.path} and {members[0].path} were split differently (their {on} targets "
                              "differ); train them with the same split settings")
    return sets[0]


def weight_grid(n_models: int, step: float) -> np.ndarray:
    """(G, n_models) weights on the simplex in steps of ``step`` (every weight a multiple of it)."""
    if not 0.0 < step <= 0.5:
        raise SeqrecError(f"--step must lie in (0, 0.5], got {step:g}")
    units = round(1.0 / step)
    if abs(units * step - 1.0) > 1e-9:
        raise SeqrecError(f"--step must divide 1 (0.1, 0.05, 0.25, ...), got {step:g}")
    size = math.comb(units + n_models - 1, n_models - 1)
    if size > MAX_GRID:
        raise SeqrecError(f"--step {step:g} gives {size:,} weight vectors for {n_models} models (at most "
                          f"{MAX_GRID:,}); take a coarser step")
    rows = [c for c in itertools.product(range(units + 1), repeat=n_models - 1) if sum(c) <= units]
    return np.array([[*c, units - sum(c)] for c in rows], dtype=np.float64) / units


class Tables:
    """The members' fp32 item tables, and all of them side by side: a blend's catalog scores are one product,
    ``[w_1 q_1, ..., w_M q_M] @ [V_1, ..., V_M]^T + sum_m w_m b_m``. A weight vector with one model alone uses
    that model's own table, so its ranks are bit-identical to the model's own evaluation."""

    def __init__(self, members: list[Member]) -> None:
        self.each = [m.model.item_table().fp32() for m in members]  # once: a tower is a pass over the catalog
        self.joint = torch.cat([t.weight for t in self.each], 1)
        self.biases = [t.bias for t in self.each]

    def blend(self, queries: list[torch.Tensor], w: np.ndarray) -> tuple[torch.Tensor, ItemTable]:
        """The (R, D) query and the table whose product scores the blend ``w`` of ``queries``."""
        active = np.flatnonzero(w > 0)
        if len(active) == 1:
            return queries[active[0]], self.each[active[0]]
        query = torch.cat([float(wm) * q for wm, q in zip(w, queries, strict=True)], 1)
        biased = [float(w[m]) * b for m, b in enumerate(self.biases) if b is not None and w[m] > 0]
        return query, ItemTable(self.joint, torch.stack(biased).sum(0) if biased else None)


def _full_ranks(query: torch.Tensor, table: ItemTable, history: Sequences, rows: np.ndarray, targets: torch.Tensor,
                sub: torch.Tensor) -> torch.Tensor:
    """Exact ranks of the rows ``sub`` over the whole catalog (the tiled path's fallback for ties at K)."""
    scores = catalog_scores(query[sub], table)
    mask_seen(scores, history, rows[sub.cpu().numpy()])
    return ranks_from_scores(scores, targets[sub.cpu()])


@torch.no_grad()
def blended_ranks(members: list[Member], data: EvalSet, weights: np.ndarray, k: int) -> np.ndarray:
    """(G, R) rank of each row's target under each weight vector (rows of ``weights``), seen items excluded;
    exact up to ``k``, ``inf`` beyond it (no metric at a cut-off <= k tells those from misses)."""
    out = np.empty((len(weights), len(data.targets)))
    tables = Tables(members)
    for lo in range(0, len(data.targets), ROWS_PER_CHUNK):
        rows = np.arange(lo, min(lo + ROWS_PER_CHUNK, len(data.targets)))
        # users: a model with user features reads each row's user, as in its own evaluation
        queries = [encode_rows(m.model, data.history, rows, data.users[rows]).float() for m in members]
        targets = torch.from_numpy(data.targets[rows]).long()
        seen_rows, seen_items = seen_pairs(data.history, rows)
        for g, w in enumerate(weights):
            query, table = tables.blend(queries, w)
            exact = partial(_full_ranks, query, table, data.history, rows, targets)
            _, ranks = top_and_ranks(query, table, targets, seen_rows, seen_items, k, exact)
            out[g, rows] = ranks.cpu().numpy()
    return out


def choose(members: list[Member], grid: np.ndarray, metric: str, ks: tuple[int, ...]) -> tuple[np.ndarray, list]:
    """The grid row with the best validation ``metric`` (ties: the first), and every row's figure."""
    data = eval_set(members, "valid")
    if len(data.targets) == 0:
        raise SeqrecError("the validation split is empty, so there is nothing to choose weights on; give --weights")
    ranks = blended_ranks(members, data, grid, max(ks))
    scored = [(all_metrics(r, ks)[metric], w) for r, w in zip(ranks, grid, strict=True)]
    best = max(range(len(scored)), key=lambda i: scored[i][0])
    return grid[best], [{"weights": [round(float(x), 6) for x in w], metric: v} for v, w in scored]


def parse_weights(text: str, n_models: int) -> np.ndarray:
    try:
        w = np.array([float(x) for x in text.split(",")])
    except ValueError:
        raise SeqrecError(f"--weights: numbers separated by commas, got {text!r}") from None
    if len(w) != n_models:
        raise SeqrecError(f"--weights: {len(w)} numbers for {n_models} artifacts")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise SeqrecError(f"--weights: finite non-negative numbers, not all zero, got {text!r}")
    return w / w.sum()


def parse_metric(text: str) -> tuple[str, int]:
    """``NDCG@10`` -> (``NDCG@10``, 10): the name as the metrics spell it, and its cut-off."""
    name, _, cut = text.partition("@")
    if name not in ("HR", "NDCG", "MRR") or not (cut.isascii() and cut.isdigit()) or int(cut) < 1:
        raise SeqrecError(f"--valid-metric: HR@K, NDCG@K or MRR@K, got {text!r}")
    return f"{name}@{int(cut)}", int(cut)


def run(args: argparse.Namespace) -> dict[str, Any]:
    ks = tuple(sorted(set(args.k)))
    metric, cut = parse_metric(args.valid_metric)
    if args.out is not None and not args.out.parent.is_dir():
        raise SeqrecError(f"--out {args.out}: its folder does not exist")
    members = load_members(list(args.artifacts))
    n_items = len(members[0].rec.dataset.items) if members[0].rec.dataset is not None else 0
    check_cutoffs(ks, n_items)
    result: dict[str, Any] = {"artifacts": [str(m.path) for m in members],
                              "models": [m.rec.model_name for m in members]}
    if args.weights:
        weights = parse_weights(args.weights, len(members))
    else:
        weights, tried = choose(members, weight_grid(len(members), args.step), metric, (*ks, cut))
        result.update({"chosen_on": "valid", "valid_metric": metric, "step": args.step, "grid": tried})
    result["weights"] = [round(float(x), 6) for x in weights]
    ranks = blended_ranks(members, eval_set(members, args.on), weights[None, :], max(ks))[0]
    result["on"] = args.on
    result["metrics"] = {k: v for k, v in all_metrics(ranks, ks).items() if not k.startswith("Recall")}
    return result


def cmd_blend(args: argparse.Namespace) -> int:
    result = run(args)
    if args.out is not None:
        replace_text(args.out, json.dumps(result, indent=2) + "\n")
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    chosen = "chosen on valid " + result["valid_metric"] if "chosen_on" in result else "given"
    print(f"blend of {len(result['artifacts'])} models, weights {result['weights']} ({chosen}):")
    for path, w in zip(result["artifacts"], result["weights"], strict=True):
        print(f"  {w:.2f}  {path}")
    print(f"full ranking on {result['on']}, seen items excluded:")
    for key in sorted(result["metrics"], key=lambda k: (int(k.split("@")[1]), k)):
        print(f"  {key:<10} {result['metrics'][key]:.4f}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from seqrec.cli import ks_arg  # the cli imports this module

    p = sub.add_parser("blend", help="blend models trained on one log (weights chosen on validation), "
                       "evaluate by full ranking", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", type=Path, nargs="+", help="two or more artifacts trained on the same log and split")
    p.add_argument("--weights", help="fixed weights, one per artifact, separated by commas (default: chosen on "
                   "the validation split)")
    p.add_argument("--step", type=float, default=0.1, help="grid step of the weight search (default: 0.1)")
    p.add_argument("--valid-metric", default="NDCG@10", help="what the weights maximise on validation "
                   "(default: NDCG@10)")
    p.add_argument("--on", choices=("test", "valid"), default="test", help="the split evaluated with the "
                   "chosen weights (default: test)")
    p.add_argument("--k", type=ks_arg, default=(5, 10, 20), help="cut-offs, separated by commas (default: 5,10,20)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    p.add_argument("--out", type=Path, help="also write the result (weights, grid, metrics) to this JSON file")
    p.set_defaults(func=cmd_blend)
