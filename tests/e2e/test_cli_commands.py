"""The CLI's happy paths on a tiny log: help, datasets, train -> evaluate -> recommend."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from seqrec.cli import build_parser, main
from seqrec.recommender import Recommender

# the popular baseline and a tiny SASRec, given only the settings these models take
POPULAR_ARGS = ("--model", "popular", "--max-len", "10", "--quiet")
SASREC_ARGS = ("--model", "sasrec", "--epochs", "1", "--dim", "8", "--max-len", "10", "--quiet")
ARTIFACT_FILES = ("config.toml", "model.safetensors", "items.json", "users.json", "sequences.safetensors",
                  "manifest.json")


def subcommands() -> list[str]:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices)


def run_ok(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def table_rows(out: str) -> list[list[str]]:
    """Rows of the last plain-text table in ``out`` (after its ---- line)."""
    lines = out.strip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("----"))
    return [line.split() for line in lines[start + 1:]]


def history_of(log: Path, user: str) -> set[int]:
    frame = pd.read_csv(log)
    return set(frame.loc[frame["user_id"] == user, "item_id"].tolist())


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: seqrec")
    for name in ("train", "evaluate", "recommend", "datasets"):
        assert name in out


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: seqrec {command}" in capsys.readouterr().out


def test_datasets_lists_the_bundled_movielens(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rows = table_rows(run_ok(capsys, ["datasets", "--data-root", str(tmp_path)]))
    status = {row[0]: row[1] for row in rows}
    assert status["movielens-latest-small"] == "bundled"
    assert status["movielens-100k"] == "not"  # "not found under <empty root>"


def test_train_writes_a_complete_artifact(trained_artifact: Path) -> None:
    assert all((trained_artifact / name).is_file() for name in ARTIFACT_FILES)
    config = tomllib.loads((trained_artifact / "config.toml").read_text())
    assert config["format_version"] == 2 and config["model"]["name"] == "gru4rec" and config["model"]["max_len"] == 10
    assert "max_len" not in config["train"]  # one source of truth
    info = json.loads((trained_artifact / "info.json").read_text())
    assert len(info["history"]) == 1  # --epochs 1
    assert 0.0 <= info["test_metrics"]["NDCG@10"] <= 1.0
    assert json.loads((trained_artifact / "items.json").read_text())["ids"] == list(range(100, 125))
    assert not any(".tmp" in p.name for p in trained_artifact.parent.iterdir())


def test_train_prints_the_dataset_and_full_ranking_metrics(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                           tiny_log: Path) -> None:
    out_dir = tmp_path / "popular"
    out = run_ok(capsys, ["train", "--data", str(tiny_log), *POPULAR_ARGS, "--k", "5,10", "--out", str(out_dir)])
    assert "30 users, 25 items, 240 events" in out
    assert "full ranking over 25 items" in out and "NDCG@10" in out
    assert f"artifact written to {out_dir}" in out
    assert (out_dir / "model.safetensors").is_file()


def test_train_with_bf16_gradient_matmuls_records_the_option(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                             tiny_log: Path) -> None:
    out_dir = tmp_path / "sasrec-bf16grads"
    run_ok(capsys, ["train", "--data", str(tiny_log), *SASREC_ARGS, "--loss", "ce", "--ce-bf16-grads",
                    "--out", str(out_dir)])
    assert Recommender.load(out_dir).config.loss.bf16_grads is True
    info = json.loads((out_dir / "info.json").read_text())
    assert 0.0 <= info["test_metrics"]["NDCG@10"] <= 1.0


def test_evaluate_full_ranking(capsys: pytest.CaptureFixture[str], trained_artifact: Path) -> None:
    out = run_ok(capsys, ["evaluate", str(trained_artifact), "--k", "5,10"])
    assert "full ranking" in out and "SAMPLED" not in out
    metrics = {row[0]: float(row[1]) for row in table_rows(out)}
    assert {"HR@5", "HR@10", "NDCG@10", "MRR@10", "Recall@10", "coverage@10"} <= set(metrics)
    assert 0.0 <= metrics["HR@5"] <= metrics["HR@10"] <= 1.0


def test_evaluate_json_on_validation(capsys: pytest.CaptureFixture[str], trained_artifact: Path) -> None:
    metrics = json.loads(run_ok(capsys, ["evaluate", str(trained_artifact), "--on", "valid", "--json"]))
    assert set(metrics) >= {"HR@1", "HR@20", "NDCG@20"} and not any("sampled" in m for m in metrics)
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_evaluate_sampled_is_labelled(capsys: pytest.CaptureFixture[str], trained_artifact: Path) -> None:
    out = run_ok(capsys, ["evaluate", str(trained_artifact), "--sampled", "uniform", "--negatives", "10"])
    assert "SAMPLED" in out and "full ranking" not in out
    names = [row[0] for row in table_rows(out)]
    assert names and all(name.startswith("sampled_uniform10_") for name in names)


def test_recommend_for_a_known_user(capsys: pytest.CaptureFixture[str], trained_artifact: Path,
                                    tiny_log: Path) -> None:
    rows = table_rows(run_ok(capsys, ["recommend", str(trained_artifact), "--user", "u3", "--k", "5"]))
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    items = [int(row[1]) for row in rows]
    scores = [float(row[2]) for row in rows]
    assert len(set(items)) == 5 and all(100 <= i < 125 for i in items)
    assert not set(items) & history_of(tiny_log, "u3")  # seen items are not recommended
    assert scores == sorted(scores, reverse=True)


def test_recommend_for_an_ad_hoc_history(capsys: pytest.CaptureFixture[str], trained_artifact: Path) -> None:
    rows = table_rows(run_ok(capsys, ["recommend", str(trained_artifact), "--history", "100, 101,unknown",
                                      "--k", "3"]))
    items = [int(row[1]) for row in rows]
    assert len(rows) == 3 and not {100, 101} & set(items)
    with_seen = table_rows(run_ok(capsys, ["recommend", str(trained_artifact), "--history", "100,101",
                                           "--k", "25", "--include-seen"]))
    assert {int(row[1]) for row in with_seen} == set(range(100, 125))


def test_temporal_split_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_log: Path) -> None:
    out_dir = tmp_path / "temporal"
    run_ok(capsys, ["train", "--data", str(tiny_log), *POPULAR_ARGS, "--k", "5",
                    "--split", "temporal", "--valid-time", "1500", "--test-time", "1650", "--out", str(out_dir)])
    out = run_ok(capsys, ["evaluate", str(out_dir), "--k", "5"])
    assert "HR@5" in out


def test_an_artifact_config_reproduces_its_run(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               trained_artifact: Path) -> None:
    again = tmp_path / "again"
    run_ok(capsys, ["train", "--config", str(trained_artifact / "config.toml"), "--out", str(again), "--quiet"])
    first, second = (tomllib.loads((p / "config.toml").read_text()) for p in (trained_artifact, again))
    assert first == second  # the same resolved run, data settings included
    metrics = [json.loads((p / "info.json").read_text())["test_metrics"] for p in (trained_artifact, again)]
    assert metrics[0] == metrics[1]  # seeded: the same model, the same test metrics


def test_a_temporal_split_artifact_re_evaluates_from_python(tmp_path: Path, tiny_log: Path) -> None:
    import seqrec

    data = seqrec.build_dataset(seqrec.read_log(tiny_log))
    split = seqrec.temporal(data, 1500, 1650)
    rec = Recommender("popular")
    rec.fit(data, split, progress=False)
    before = rec.evaluate(ks=(5, 10))
    rec.save(tmp_path / "temporal")
    loaded = Recommender.load(tmp_path / "temporal")  # rebuilds the split from the saved cut-offs
    assert loaded.info["split"] == "temporal" and loaded.info["test_time"] == 1650
    assert loaded.evaluate(ks=(5, 10)) == before
