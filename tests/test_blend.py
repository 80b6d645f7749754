"""`seqrec blend`: the weight grid, a blend's ranks against each model's own, the choice on validation, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import seqrec
from seqrec.blend import blended_ranks, eval_set, load_members, weight_grid
from seqrec.cli import main
from seqrec.datasets.synthetic import markov_dataset
from seqrec.errors import SeqrecError
from seqrec.eval.evaluate import mask_seen, ranks_from_scores, score_histories
from seqrec.eval.metrics import all_metrics
from seqrec.privacy.commands import no_histories


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


def reference_ranks(paths: list[Path], on: str, weights: list[float]) -> np.ndarray:
    """Ranks under sum_m w_m log_softmax(scores_m), from each model's whole score matrix: the definition."""
    members = load_members(paths)
    data = eval_set(members, on)
    rows = np.arange(len(data.targets))
    total = sum(w * torch.log_softmax(score_histories(m.model, data.history, rows, False, users=data.users), 1)
                for w, m in zip(weights, members, strict=True) if w > 0)
    assert isinstance(total, torch.Tensor)
    mask_seen(total, data.history, rows)
    return ranks_from_scores(total, torch.from_numpy(data.targets)).numpy()


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
    ranks = blended_ranks(members, data, np.array([[1.0, 0.0], [0.0, 1.0]]), 10)
    for row, member in zip(ranks, members, strict=True):
        alone = member.rec.evaluate(on=on, ks=(5, 10))
        got = all_metrics(row, (5, 10))
        for key in ("NDCG@10", "HR@5", "MRR@10"):
            assert got[key] == pytest.approx(alone[key], abs=1e-9)


@pytest.mark.parametrize("weights", [[0.3, 0.7], [0.8, 0.2]])
def test_a_mixed_blend_ranks_as_its_definition(pair: list[Path], weights: list[float]) -> None:
    members = load_members(pair)
    got = blended_ranks(members, eval_set(members, "test"), np.array([weights]), 10)[0]
    want = reference_ranks(pair, "test", weights)
    alone = [blended_ranks(members, eval_set(members, "test"), np.array([w]), 10)[0] for w in ([1, 0], [0, 1])]
    assert not np.array_equal(got, alone[0]) and not np.array_equal(got, alone[1])  # the blend is neither model
    within = want <= 10
    np.testing.assert_allclose(got[within], want[within])
    assert np.isinf(got[~within]).all()


def test_blending_a_model_with_itself_changes_nothing(pair: list[Path]) -> None:
    members = load_members([pair[0], pair[0]])
    data = eval_set(members, "test")
    half, whole = blended_ranks(members, data, np.array([[0.5, 0.5], [1.0, 0.0]]), 10)
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
    ranks = blended_ranks(members, eval_set(members, "test"), np.array([result["weights"]]), 10)[0]
    assert result["metrics"]["NDCG@10"] == pytest.approx(all_metrics(ranks, (10,))["NDCG@10"])
    printed = capsys.readouterr().out
    assert "chosen on valid NDCG@10" in printed and "NDCG@10" in printed
    for row in grid:  # each weight vector was scored on the validation split, as the definition ranks it
        want = all_metrics(reference_ranks(pair, "valid", row["weights"]), (10,))["NDCG@10"]
        assert row["NDCG@10"] == pytest.approx(want, abs=1e-12)


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
    (["--step", "0.0005"], "take a coarser step"),
    (["--weights", "nan,1"], "finite non-negative"),
    (["--weights", "inf,1"], "finite non-negative"),
    (["--valid-metric", "NDCG@\uff11\uff10"], "HR@K, NDCG@K or MRR@K"),
    (["--k", "500"], "larger than the catalog"),
    (["--out", "/nonexistent-folder/blend.json"], "its folder does not exist"),
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


def test_an_artifact_without_histories_is_refused_by_blend_and_evaluate(pair: list[Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rec = seqrec.Recommender.load(pair[1])
    assert rec.dataset is not None  # as `seqrec train --pseudonymise-users` without --keep-histories writes it:
    rec.dataset = no_histories(rec.dataset)
    rec.info["histories"] = False
    bare = rec.save(tmp_path / "bare")
    for argv in (["blend", str(pair[0]), str(bare)], ["evaluate", str(bare)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{bare}: written without per-user histories" in err, err


def test_a_model_with_user_features_is_scored_with_each_row_user(tiny_log: Path, tmp_path: Path) -> None:
    users = tmp_path / "users.csv"
    rng = np.random.default_rng(0)
    users.write_text("user_id,age,group\n" + "".join(f"u{u},{rng.integers(18, 70)},g{rng.integers(4)}\n"
                                                   for u in range(30)))
    out = tmp_path / "users-model"
    assert main(["train", "--data", str(tiny_log), "--model", "sasrec", "--dim", "16", "--epochs", "3", "--lr",
                 "1e-2", "--max-len", "10", "--user-features", str(users), "--quiet", "--out", str(out)]) == 0
    members = load_members([out, out])
    data = eval_set(members, "test")
    model, rows = members[0].model, np.arange(len(data.targets))
    with_users = score_histories(model, data.history, rows, False, users=data.users)
    assert not torch.allclose(with_users, score_histories(model, data.history, rows, False))  # users matter
    ranks = blended_ranks(members, data, np.array([[1.0, 0.0]]), 10)[0]
    alone = members[0].rec.evaluate(on="test", ks=(5, 10))
    assert all_metrics(ranks, (10,))["NDCG@10"] == pytest.approx(alone["NDCG@10"], abs=1e-9)
    assert all_metrics(ranks, (10,))["HR@10"] == pytest.approx(alone["HR@10"], abs=1e-9)


def test_a_metric_name_is_read_as_the_metrics_spell_it(pair: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["blend", *map(str, pair), "--valid-metric", "NDCG@010", "--step", "0.5", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid_metric"] == "NDCG@10"


def test_an_empty_validation_split_is_refused(tiny_log: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = []
    for name in ("a", "b"):  # validation and test cut at the same time: no validation events
        out.append(tmp_path / name)
        assert main(["train", "--data", str(tiny_log), "--model", "gru4rec", "--dim", "8", "--hidden", "8",
                     "--epochs", "1", "--split", "temporal", "--valid-time", "1650", "--test-time", "1650",
                     "--quiet", "--out", str(out[-1])]) == 0
    capsys.readouterr()
    assert main(["blend", *map(str, out)]) == 2
    assert "validation split is empty" in capsys.readouterr().err
    assert main(["blend", *map(str, out), "--weights", "1,1", "--format", "json"]) == 0
