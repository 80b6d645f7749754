"""Blend trained models: a weighted product of their next-item distributions, evaluated by full ranking.

Each model gives a distribution over the whole catalog (softmax of its scores); the blend ranks items by
``sum_m w_m * log p_m(item)`` with weights summing to 1. Models trained on the same log with different item
towers (item ids; item text) make different mistakes, so their blend can rank better than either alone.

``seqrec blend A B [C ...]`` checks that the artifacts share one catalog and one split, chooses the weights
on the validation split (a grid over the simplex; the test split is never looked at for the choice), then
evaluates the chosen blend once on test. ``--weights`` fixes them instead.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.atomic import replace_text
from seqrec.errors import SeqrecError
from seqrec.eval.evaluate import EvalSet, mask_seen, ranks_from_scores, score_histories
from seqrec.eval.metrics import all_metrics
from seqrec.models.base import SequenceModel
from seqrec.recommender import Recommender

ROWS_PER_CHUNK = 1024  # users scored at once: (chunk, catalog) floats per model


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
    first = members[0]
    for m in members:
        if m.rec.info.get("histories") is False:
            raise SeqrecError(f"{m.path}: written without per-user histories, so there is nothing to evaluate on")
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
    sets = [m.rec._eval_set(on) for m in members]
    for m, s in zip(members[1:], sets[1:], strict=True):
        if not np.array_equal(s.targets, sets[0].targets) or not np.array_equal(s.users, sets[0].users):
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
    rows = [c for c in itertools.product(range(units + 1), repeat=n_models - 1) if sum(c) <= units]
    return np.array([[*c, units - sum(c)] for c in rows], dtype=np.float64) / units


@torch.no_grad()
def blended_ranks(members: list[Member], data: EvalSet, weights: np.ndarray) -> np.ndarray:
    """(G, R) rank of each row's target under each weight vector (rows of ``weights``), seen items excluded."""
    out = np.empty((len(weights), len(data.targets)))
    w = torch.as_tensor(weights, dtype=torch.float32)
    for lo in range(0, len(data.targets), ROWS_PER_CHUNK):
        rows = np.arange(lo, min(lo + ROWS_PER_CHUNK, len(data.targets)))
        logp = torch.stack([torch.log_softmax(score_histories(m.model, data.history, rows, exclude_seen=False)
                                              .cpu(), dim=1) for m in members])  # (M, R, N + 1)
        targets = torch.from_numpy(data.targets[rows])
        for g in range(len(weights)):
            active = w[g] > 0  # a zero weight must not turn the model's -inf padding into NaN
            scores = torch.einsum("m,mrn->rn", w[g][active], logp[active])
            mask_seen(scores, data.history, rows)
            out[g, rows] = ranks_from_scores(scores, targets).numpy()
    return out


def choose(members: list[Member], grid: np.ndarray, metric: str, ks: tuple[int, ...]) -> tuple[np.ndarray, list]:
    """The grid row with the best validation ``metric`` (ties: the first), and every row's figure."""
    ranks = blended_ranks(members, eval_set(members, "valid"), grid)
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
    if (w < 0).any() or w.sum() <= 0:
        raise SeqrecError("--weights: non-negative numbers, not all zero")
    return w / w.sum()


def run(args: argparse.Namespace) -> dict[str, Any]:
    ks = tuple(sorted(set(args.k)))
    metric = args.valid_metric
    name, _, cut = metric.partition("@")
    if name not in ("HR", "NDCG", "MRR") or not cut.isdigit() or int(cut) < 1:
        raise SeqrecError(f"--valid-metric: HR@K, NDCG@K or MRR@K, got {metric!r}")
    members = load_members(list(args.artifacts))
    result: dict[str, Any] = {"artifacts": [str(m.path) for m in members],
                              "models": [m.rec.model_name for m in members]}
    if args.weights:
        weights = parse_weights(args.weights, len(members))
    else:
        weights, tried = choose(members, weight_grid(len(members), args.step), metric, (*ks, int(cut)))
        result.update({"chosen_on": "valid", "valid_metric": metric, "grid": tried})
    result["weights"] = [round(float(x), 6) for x in weights]
    ranks = blended_ranks(members, eval_set(members, args.on), weights[None, :])[0]
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
