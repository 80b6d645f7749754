"""`seqrec blend`: the weight grid, a blend's ranks against each model's own, the choice on validation, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import seqrec
from seqrec.blend import blended_ranks, eval_set, load_members, weight_grid
from seqrec.cli import main
from seqrec.datasets.synthetic import markov_dataset
from seqrec.errors import SeqrecError
from seqrec.eval.metrics import all_metrics


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two different models trained on one log and split: sasrec and gru4rec."""
    data = markov_dataset(n_users=60, n_items=30, length=8)
    split = seqrec.leave_one_out(data)
    root = tmp_path_factory.mktemp("blend")
    out = []
    for name, kwargs in (("sasrec", {"dim": 16}), ("gru4rec", {"dim": 16, "hidden": 16})):
        rec = seqrec.Recommender(name, seqrec.TrainConfig(epochs=3, device="cpu", lr=1e-2), **kwargs)
        rec.fit(data, split, progress=False)
        out.append(rec.save(root / name))
    return out


@pytest.fixture(scope="module")
def other_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = markov_dataset(n_users=60, n_items=25, length=8)
    rec = seqrec.Recommender("gru4rec", seqrec.TrainConfig(epochs=1, device="cpu"), dim=8, hidden=8)
    rec.fit(data, seqrec.leave_one_out(data), progress=False)
    return rec.save(tmp_path_factory.mktemp("other") / "gru")


def test_weight_grid_covers_the_simplex() -> None:
    two, three = weight_grid(2, 0.1), weight_grid(3, 0.1)
    assert two.shape == (11, 2) and three.shape == (66, 3)
    assert np.allclose(two.sum(1), 1.0) and np.allclose(three.sum(1), 1.0)
    assert (three >= 0).all() and len({tuple(r) for r in three.round(6)}) == 66
    with pytest.raises(SeqrecError, match="divide 1"):
        weight_grid(2, 0.3)


@pytest.mark.parametrize("on", ["valid", "test"])
def test_a_one_hot_blend_ranks_as_the_model_alone(pair: list[Path], on: str) -> None:
    members = load_members(pair)
    data = eval_set(members, on)
    ranks = blended_ranks(members, data, np.array([[1.0, 0.0], [0.0, 1.0]]))
    for row, member in zip(ranks, members, strict=True):
        alone = member.rec.evaluate(on=on, ks=(5, 10))
        got = all_metrics(row, (5, 10))
        for key in ("NDCG@10", "HR@5", "MRR@10"):
            assert got[key] == pytest.approx(alone[key], abs=1e-9)


def test_blending_a_model_with_itself_changes_nothing(pair: list[Path]) -> None:
    members = load_members([pair[0], pair[0]])
    data = eval_set(members, "test")
    half, whole = blended_ranks(members, data, np.array([[0.5, 0.5], [1.0, 0.0]]))
    np.testing.assert_allclose(half, whole)


def test_the_cli_chooses_the_best_weights_on_validation(pair: list[Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "blend.json"
    assert main(["blend", *map(str, pair), "--step", "0.25", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    grid = result["grid"]
    assert len(grid) == 5 and result["chosen_on"] == "valid"
    best = max(grid, key=lambda r: r["NDCG@10"])
    assert result["weights"] == best["weights"]
    members = load_members(pair)
    ranks = blended_ranks(members, eval_set(members, "test"), np.array([result["weights"]]))[0]
    assert result["metrics"]["NDCG@10"] == pytest.approx(all_metrics(ranks, (10,))["NDCG@10"])
    printed = capsys.readouterr().out
    assert "chosen on valid NDCG@10" in printed and "NDCG@10" in printed


def test_fixed_weights_are_normalised(pair: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["blend", *map(str, pair), "--weights", "3,1", "--format", "json", "--on", "valid"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"] == [0.75, 0.25] and "grid" not in result and result["on"] == "valid"


@pytest.mark.parametrize("extra, message", [
    (["--weights", "1,2,3"], "3 numbers for 2 artifacts"),
    (["--weights", "a,b"], "numbers separated by commas"),
    (["--weights", "0,0"], "not all zero"),
    (["--valid-metric", "AUC"], "HR@K, NDCG@K or MRR@K"),
    (["--step", "0.3"], "divide 1"),
])
def test_bad_settings_are_one_line(pair: list[Path], extra: list[str], message: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["blend", *map(str, pair), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_artifacts_of_other_logs_are_refused(pair: list[Path], other_catalog: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["blend", str(pair[0]), str(other_catalog)]) == 2
    assert "different catalogs" in capsys.readouterr().err
    assert main(["blend", str(pair[0])]) == 2
    assert "two or more artifacts" in capsys.readouterr().err
