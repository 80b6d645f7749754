"""`--track mlflow|tensorboard` on `seqrec train` and `seqrec tune`: what each tracker records, read
back through its own reader, and the one-line errors when a tracker is unknown or not installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from seqrec.cli import main
from seqrec.tracking import flatten, metric_name

TRAIN = ("--model", "gru4rec", "--epochs", "2", "--patience", "5", "--dim", "8", "--hidden", "8", "--max-len", "10",
         "--quiet")


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_flatten_and_metric_names() -> None:
    assert flatten({"model": {"name": "sasrec"}, "train": {"loss": {"name": "ce"}, "lr": 0.001}}) == {
        "model.name": "sasrec", "train.loss.name": "ce", "train.lr": 0.001}
    assert metric_name("valid_NDCG@10") == "valid_NDCG_at_10"


def test_train_writes_tensorboard_scalars(tiny_log: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "runs" / "model"
    assert main(["train", "--data", str(tiny_log), *TRAIN, "--out", str(out), "--track", "tensorboard"]) == 0
    log_dir = tmp_path / "runs" / "tensorboard" / "model"  # beside the artifact, which is replaced whole on save
    assert list(log_dir.glob("events.out.tfevents.*"))
    found = scalars(log_dir)
    info = json.loads((out / "info.json").read_text())
    assert [step for step, _ in found["valid/NDCG@10"]] == [1, 2]
    assert [v for _, v in found["valid/NDCG@10"]] == pytest.approx([r["valid_NDCG@10"] for r in info["history"]])
    assert [step for step, _ in found["train/loss"]] == [1, 2]
    assert found["test/NDCG@10"][0][1] == pytest.approx(info["test_metrics"]["NDCG@10"])


def test_train_logs_to_mlflow(tiny_log: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    out, uri = tmp_path / "model", f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["train", "--data", str(tiny_log), *TRAIN, "--out", str(out), "--track", "mlflow",
                 "--track-uri", uri, "--track-experiment", "tiny"]) == 0
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "model"
    params = run.data.params
    assert params["model.name"] == "gru4rec" and params["train.epochs"] == "2" and params["model.dim"] == "8"
    info = json.loads((out / "info.json").read_text())
    history = client.get_metric_history(run.info.run_id, "valid_NDCG_at_10")
    history = sorted(history, key=lambda m: m.step)
    assert [m.step for m in history] == [r["epoch"] for r in info["history"]]
    assert [m.value for m in history] == pytest.approx([r["valid_NDCG@10"] for r in info["history"]])
    assert run.data.metrics["test_NDCG_at_10"] == pytest.approx(info["test_metrics"]["NDCG@10"])
    files = {f.path for f in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/config.toml", "model/model.safetensors", "model/info.json"} <= files
    assert (tmp_path / "mlartifacts").is_dir()  # the artifacts sit beside the SQLite store


def test_both_trackers_at_once(tiny_log: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["train", "--data", str(tiny_log), *TRAIN, "--out", str(tmp_path / "m"), "--track",
                 "mlflow,tensorboard", "--track-uri", uri, "--track-dir", str(tmp_path / "tb")]) == 0
    assert "valid/NDCG@10" in scalars(tmp_path / "tb")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("seqrec")
    assert experiment is not None and len(client.search_runs([experiment.experiment_id])) == 1


def test_tune_logs_one_mlflow_run_per_trial(tiny_log: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("optuna")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = tmp_path / "space.toml"
    space.write_text("defaults = false\n[train.lr]\nlow = 1e-3\nhigh = 1e-2\nlog = true\n")
    assert main(["tune", "--data", str(tiny_log), *TRAIN, "--space", str(space), "--trials", "2", "--study-name",
                 "st", "--out", str(tmp_path / "study"), "--track", "mlflow,tensorboard", "--track-uri", uri]) == 0
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("st")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["st-trial-0", "st-trial-1"]
    trials = json.loads((tmp_path / "study" / "trials.json").read_text())["trials"]
    for run in runs:
        trial = trials[int(run.data.tags["seqrec.trial"])]
        assert float(run.data.params["train.lr"]) == pytest.approx(trial["train.lr"])
        assert run.data.metrics["best_valid_NDCG_at_10"] == pytest.approx(trial["value"])
    for n in (0, 1):
        assert "valid/NDCG@10" in scalars(tmp_path / "study" / "tensorboard" / f"trial-{n}")


@pytest.mark.parametrize(("module", "tracker", "package"), [("mlflow", "mlflow", "mlflow-skinny"),
                                                            ("tensorboard", "tensorboard", "tensorboard")])
def test_a_missing_package_is_one_line_naming_the_install(tiny_log: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str],
                                                          module: str, tracker: str, package: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: find_spec None, import fails
    out = tmp_path / "model"
    assert main(["train", "--data", str(tiny_log), *TRAIN, "--out", str(out), "--track", tracker]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"seqrec: error: --track {tracker} needs {package}: pip install 'seqrec[track]'"
    assert not out.exists()  # nothing trained


def test_an_unknown_tracker_is_one_line(tiny_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(tiny_log), *TRAIN, "--out", str(tmp_path / "m"), "--track", "mlfow"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'mlflow'" in err and len(err.strip().splitlines()) == 1
