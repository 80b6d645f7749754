"""`seqrec tune`: a seeded Optuna study on a tiny log, resumable from SQLite, pruned per epoch, scored
on the validation split only, writing a best.toml that `seqrec train --config` accepts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("optuna")

import optuna

from seqrec import tune
from seqrec.cli import main
from seqrec.errors import SeqrecError
from seqrec.runconfig import RunConfig
from seqrec.tune_space import build_space, check_space

# a tiny SASRec whose learning rate and dropout are searched (two epochs a trial)
SPACE = """defaults = false
[train.lr]
low = 1e-3
high = 1e-2
log = true

[model.dropout]
low = 0.1
high = 0.3
"""
FIXED = ("--model", "sasrec", "--epochs", "2", "--dim", "8", "--n-layers", "1", "--max-len", "10", "--quiet")


def tune_args(log: Path, out: Path, space: Path, *extra: str) -> list[str]:
    return ["tune", "--data", str(log), *FIXED, "--space", str(space), "--out", str(out), *extra]


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    return path


def trials(out: Path) -> list[dict[str, Any]]:
    return list(json.loads((out / "trials.json").read_text())["trials"])


def test_tune_writes_a_best_config_that_train_accepts(tiny_log: Path, tmp_path: Path, space: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert main(tune_args(tiny_log, out, space, "--trials", "3")) == 0
    printed = capsys.readouterr().out
    rows = trials(out)
    assert [r["trial"] for r in rows] == [0, 1, 2]
    assert all(r["state"] == "complete" for r in rows)
    assert len({r["train.lr"] for r in rows}) == 3  # three different points
    summary = json.loads((out / "trials.json").read_text())
    best = max(rows, key=lambda r: r["value"])
    assert summary["best"]["trial"] == best["trial"]
    assert f"best: trial {best['trial']}" in printed
    assert (out / "trials.csv").read_text().splitlines()[0].startswith("trial,state,value")
    config = tomllib.loads((out / "best.toml").read_text())
    assert config["train"]["lr"] == pytest.approx(best["train.lr"])
    assert config["model"]["dropout"] == pytest.approx(best["model.dropout"])
    assert config["model"]["dim"] == 8 and config["train"]["epochs"] == 2  # the fixed part
    artifact = tmp_path / "best-model"
    assert main(["train", "--config", str(out / "best.toml"), "--out", str(artifact), "--quiet"]) == 0
    info = json.loads((artifact / "info.json").read_text())
    assert info["best_valid"] == pytest.approx(best["value"])  # the same run, retrained: same validation score
    assert "test_metrics" in info


def test_save_best_keeps_the_best_trial_model_and_evaluate_tests_it(tiny_log: Path, tmp_path: Path, space: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from seqrec.recommender import Recommender

    out = tmp_path / "study"
    assert main(tune_args(tiny_log, out, space, "--trials", "4", "--save-best")) == 0
    printed = capsys.readouterr().out
    rows = trials(out)
    done = [r for r in rows if r["state"] == "complete"]
    best = max(done, key=lambda r: (r["value"], -r["trial"]))
    assert len({r["value"] for r in done}) > 1  # the trials differ, so the choice matters
    info = json.loads((out / "best-model" / "info.json").read_text())
    assert info["tune"]["trial"] == best["trial"] and info["best_valid"] == pytest.approx(best["value"])
    assert f"its model: {out / 'best-model'}" in printed
    rec = Recommender.load(out / "best-model")
    assert rec.config.lr == pytest.approx(best["train.lr"])
    assert rec.evaluate(on="valid", ks=(10,))["NDCG@10"] == pytest.approx(best["value"])  # the trial's own model
    assert main(["evaluate", str(out / "best-model")]) == 0
    assert "NDCG@10" in capsys.readouterr().out


def test_a_model_that_cannot_be_saved_leaves_its_trial_complete(tiny_log: Path, tmp_path: Path, space: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    out.mkdir()
    (out / "best-model").write_text("a file where the artifact would go")
    assert main(tune_args(tiny_log, out, space, "--trials", "1", "--save-best")) == 0
    printed = capsys.readouterr().out
    assert "trial 0: note: its model could not be saved" in printed
    assert [r["state"] for r in trials(out)] == ["complete"] and (out / "best.toml").is_file()
    assert "its model:" not in printed


def test_a_kept_model_of_another_study_is_not_claimed(tiny_log: Path, tmp_path: Path, space: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shared"
    assert main(tune_args(tiny_log, out, space, "--trials", "1", "--save-best", "--study-name", "a")) == 0
    assert main(tune_args(tiny_log, out, space, "--trials", "1", "--study-name", "b")) == 0
    printed = capsys.readouterr().out.split("study 'b'")[-1]
    assert "its model:" not in printed and "seqrec train --config" in printed
    assert tune.kept_model(out, "a") is not None and tune.kept_model(out, "b") is None


def test_save_best_never_replaces_another_studys_model(tiny_log: Path, tmp_path: Path, space: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shared"
    assert main(tune_args(tiny_log, out, space, "--trials", "1", "--save-best", "--study-name", "a")) == 0
    kept = tune.kept_model(out, "a")
    capsys.readouterr()
    assert main(tune_args(tiny_log, out, space, "--trials", "1", "--save-best", "--study-name", "b")) == 2
    err = capsys.readouterr().err.strip()
    assert "keeps the model of study 'a', not 'b'" in err and len(err.splitlines()) == 1, err
    assert tune.kept_model(out, "a") == kept is not None  # untouched
    assert len(trials(out)) == 1  # study b never started


def test_a_model_of_a_deleted_study_of_the_same_name_is_not_its_best(tiny_log: Path, tmp_path: Path, space: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert main(tune_args(tiny_log, out, space, "--trials", "1", "--save-best", "--study-name", "s")) == 0
    old = tune.kept_model(out, "s")
    assert old is not None
    (out / "study.db").unlink()  # a new study of the same name numbers its trials from 0 again
    slow = tmp_path / "slow.toml"
    slow.write_text(SPACE.replace("low = 1e-3\nhigh = 1e-2", "low = 1e-7\nhigh = 2e-7"))
    assert main(tune_args(tiny_log, out, slow, "--trials", "1", "--save-best", "--study-name", "s")) == 0
    printed = capsys.readouterr().out.split("study 's'")[-1]
    (new,) = trials(out)
    assert new["value"] != old[1]  # the searched learning rates differ, so do the values
    assert tune.kept_model(out, "s") == (0, new["value"])  # the old model was replaced, not claimed
    assert f"its model: {out / 'best-model'}" in printed


def test_a_model_whose_trial_was_not_recorded_is_not_claimed(tiny_log: Path, tmp_path: Path, space: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert main(tune_args(tiny_log, out, space, "--trials", "1", "--save-best", "--study-name", "s")) == 0
    info_path = out / "best-model" / "info.json"
    info = json.loads(info_path.read_text())
    info["tune"]["value"] = 0.99  # as if saved by a trial killed before Optuna recorded its value
    info_path.write_text(json.dumps(info))
    capsys.readouterr()
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}")
    assert tune.kept_model(out, "s") == (0, 0.99) and tune.kept_trial(study, out) is None
    tune.print_summary(study, out, "valid_NDCG@10")
    printed = capsys.readouterr().out
    assert "its model:" not in printed and "does not record as a completed trial" in printed
    assert "seqrec train --config" in printed


def test_a_study_recorded_before_a_setting_was_added_continues(tiny_log: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    space = tmp_path / "b4r.toml"
    space.write_text("defaults = false\n[train.lr]\nlow = 1e-3\nhigh = 1e-2\n")
    args = ["tune", "--data", str(tiny_log), "--model", "bert4rec", "--epochs", "1", "--dim", "8", "--n-layers", "1",
            "--max-len", "10", "--quiet", "--space", str(space), "--out", str(out), "--study-name", "old"]
    assert main([*args, "--trials", "1"]) == 0
    study = optuna.load_study(study_name="old", storage=f"sqlite:///{out / 'study.db'}")
    fixed = study.user_attrs["seqrec.fixed"]
    assert fixed["model"].pop("head") == "mlp" and fixed["model"].pop("scale_embeddings") is True
    study.set_user_attr("seqrec.fixed", fixed)  # as a seqrec without those settings recorded it
    assert main([*args, "--trials", "1"]) == 0
    assert "continuing study 'old': 1 trials so far" in capsys.readouterr().out
    fixed["model"]["norm_first"] = True  # a real difference is still refused
    study.set_user_attr("seqrec.fixed", fixed)
    assert main([*args, "--trials", "1"]) == 2
    assert "model.norm_first" in capsys.readouterr().err


def test_a_study_continues_where_it_stopped(tiny_log: Path, tmp_path: Path, space: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert main(tune_args(tiny_log, out, space, "--trials", "2", "--study-name", "s")) == 0
    assert main(tune_args(tiny_log, out, space, "--trials", "2", "--study-name", "s")) == 0
    assert "continuing study 's': 2 trials so far" in capsys.readouterr().out
    rows = trials(out)
    assert [r["trial"] for r in rows] == [0, 1, 2, 3]
    assert len({r["train.lr"] for r in rows}) == 4  # the second call draws new points, not the first two again
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    assert [s.study_name for s in storage.get_all_studies()] == ["s"]


def test_continuing_with_other_settings_is_an_error(tiny_log: Path, tmp_path: Path, space: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert main(tune_args(tiny_log, out, space, "--trials", "1")) == 0
    capsys.readouterr()
    argv = tune_args(tiny_log, out, space, "--trials", "1")
    argv[argv.index("--epochs") + 1] = "3"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "another fixed run (train.epochs: 2 -> 3)" in err and len(err.strip().splitlines()) == 1


def test_a_pruned_trial_stops_early(tiny_log: Path, tmp_path: Path, space: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # a pruner that prunes every trial at its first report: NDCG is never above 2
    monkeypatch.setattr(tune, "make_pruner", lambda _p: optuna.pruners.ThresholdPruner(lower=2.0))
    out = tmp_path / "study"
    assert main(tune_args(tiny_log, out, space, "--trials", "2")) == 0
    rows = trials(out)
    assert [r["state"] for r in rows] == ["pruned", "pruned"]
    assert [r["epochs"] for r in rows] == [1, 1]  # of 2 planned
    assert not (out / "best.toml").exists()  # no trial completed


def test_the_median_pruner_is_fed_every_epoch(tiny_log: Path, tmp_path: Path, space: Path) -> None:
    out = tmp_path / "study"
    assert main(tune_args(tiny_log, out, space, "--trials", "1")) == 0
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    study = optuna.load_study(study_name=f"{tiny_log.name}-sasrec", storage=storage)
    assert sorted(study.trials[0].intermediate_values) == [1, 2]
    assert study.trials[0].value == pytest.approx(max(study.trials[0].intermediate_values.values()))


def test_the_test_split_is_never_evaluated(tiny_log: Path, tmp_path: Path, space: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from seqrec.recommender import Recommender
    from seqrec.train import loop

    splits: list[Any] = []
    real_split, real_evaluate = tune.split_data, loop.evaluate

    def keep_split(*args: Any) -> Any:
        splits.append(real_split(*args))
        return splits[-1]

    evaluated: list[Any] = []

    def guarded(model: Any, eval_set: Any, *args: Any, **kwargs: Any) -> Any:
        assert eval_set is not splits[0].test, "the test split was evaluated"
        evaluated.append(eval_set)
        return real_evaluate(model, eval_set, *args, **kwargs)

    def no_test(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("Recommender.evaluate was called")

    monkeypatch.setattr(tune, "split_data", keep_split)
    monkeypatch.setattr(loop, "evaluate", guarded)
    monkeypatch.setattr(Recommender, "evaluate", no_test)
    assert main(tune_args(tiny_log, tmp_path / "study", space, "--trials", "2")) == 0
    assert len(splits) == 1 and len(evaluated) == 4  # 2 trials x 2 epochs, each on the validation split
    assert all(e is splits[0].valid for e in evaluated)


def test_enqueued_settings_are_tried_first(tiny_log: Path, tmp_path: Path, space: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text("[model]\nname = 'sasrec'\ndropout = 0.25\n[train]\nlr = 0.002\nepochs = 7\n")
    out = tmp_path / "study"
    assert main(tune_args(tiny_log, out, space, "--trials", "3", "--enqueue", "train.lr=0.005,model.dropout=0.2",
                          "--enqueue", str(run_file))) == 0
    rows = trials(out)
    assert (rows[0]["train.lr"], rows[0]["model.dropout"]) == (0.005, 0.2)
    assert (rows[1]["train.lr"], rows[1]["model.dropout"]) == (0.002, 0.25)  # epochs: not searched, not read


@pytest.mark.parametrize(("value", "expected"), [
    ("train.lr=0.5", "train.lr = 0.5 is outside the search space (train.lr in [0.001, 0.01, log])"),
    ("model.dim=8", "sets none of the searched settings"),
    ("lr", "give a run .toml file or PATH=VALUE pairs"),
])
def test_bad_enqueue_is_one_line(tiny_log: Path, tmp_path: Path, space: Path, capsys: pytest.CaptureFixture[str],
                                 value: str, expected: str) -> None:
    assert main(tune_args(tiny_log, tmp_path / "study", space, "--trials", "1", "--enqueue", value)) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err


def test_fixed_settings_leave_the_default_space() -> None:
    full = {p.path for p in build_space("sasrec")}
    assert {"train.lr", "model.dim", "model.dropout"} <= full
    fixed = {p.path for p in build_space("sasrec", fixed={"model.dim", "train.lr"})}
    assert fixed == full - {"model.dim", "train.lr"}
    assert "train.mask_prob" in {p.path for p in build_space("bert4rec")}
    assert "model.hidden" in {p.path for p in build_space("gru4rec")}


def test_a_space_file_overrides_and_adds(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('[train.lr]\nlow = 1e-4\nhigh = 1e-3\nlog = true\n[train.loss.name]\nchoices = ["ce", "sampled"]\n'
                    '[model.n_heads]\nchoices = [1, 2]\n')
    params = {p.path: p for p in build_space("sasrec", file=path)}
    assert (params["train.lr"].low, params["train.lr"].high, params["train.lr"].log) == (1e-4, 1e-3, True)
    assert params["train.loss.name"].choices == ("ce", "sampled")
    assert "model.dim" in params  # the defaults stay
    path.write_text("defaults = false\n[model.dim]\nchoices = [16, 32]\n")
    assert [p.path for p in build_space("sasrec", file=path)] == ["model.dim"]


@pytest.mark.parametrize(("text", "expected"), [
    ("[model.dimm]\nchoices = [8]\n", "did you mean 'dim'"),
    ("[model.hidden]\nchoices = [8]\n", "hidden does not apply to sasrec"),
    ("[train.lrr]\nlow = 1\nhigh = 2\n", "did you mean 'train.lr'"),
    ("[lr]\nlow = 1\nhigh = 2\n", "only model.* and train.* settings"),
    ("[train.lr]\nlow = 0.1\nhigh = 0.01\n", "low (0.1) is above high (0.01)"),
    ("[train.lr]\nlow = 0\nhigh = 0.01\nlog = true\n", "a log scale needs low > 0"),
    ("[train.lr]\nlow = 0.001\nhigh = 0.01\nstep = 0.001\nlog = true\n", "cannot go with log"),
    ("[train.lr]\nlow = 0.001\nhgh = 0.01\n", "unknown key 'hgh'"),
    ("[train.lr]\nlow = 0.001\n", "give both low and high"),
    ("[model.n_layers]\nlow = 1.5\nhigh = 3\n", "must be a whole number"),
    ("[train.loss.name]\nlow = 1\nhigh = 2\n", "is not a number; give choices"),
    ("[model.dim]\nchoices = []\n", "choices must be a non-empty list"),
    ("[train]\nlr = 0.1\n", "give a table [train.lr]"),
    ("defaults = 3\n", "defaults = 3 must be true or false"),
])
def test_bad_space_files_are_one_line_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(SeqrecError) as info:
        build_space("sasrec", file=path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_a_value_the_setting_rejects_is_an_error_before_training() -> None:
    from seqrec.tune_space import Param

    with pytest.raises(SeqrecError, match=r"train.lr = -0.5 is not a valid setting"):
        check_space(RunConfig("sasrec"), [Param("train.lr", "float", -0.5, 0.1)])


def test_a_value_valid_beside_another_parameter_passes_and_a_bad_combination_fails_its_trial(
        tiny_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.toml"
    space.write_text("defaults = false\n[model.n_heads]\nchoices = [3]\n[model.dim]\nchoices = [8, 9]\n")
    with pytest.raises(SeqrecError, match="dim 8 must be divisible by n_heads 3"):  # no dim that 3 divides
        check_space(RunConfig("sasrec", {"dim": 8}), build_space("sasrec", {"model.dim"}, space)[:1])
    argv = tune_args(tiny_log, tmp_path / "study", space, "--trials", "4")
    argv[argv.index("--dim"):argv.index("--dim") + 2] = []
    assert main(argv) == 0
    rows = trials(tmp_path / "study")
    assert {r["model.dim"]: r["state"] for r in rows} == {8: "fail", 9: "complete"}
    assert "failed: model sasrec: dim 8 must be divisible by n_heads 3" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "expected"), [
    (("--trials", "0"), "--trials: must be 1 or more"),
    (("--timeout", "-5"), "--timeout: must be a positive number"),
    (("--model", "sasrek"), "did you mean 'sasrec'"),
    (("--model", "popular"), "popular has nothing to search"),
    (("--prune-after", "-1"), "--prune-after -1"),
])
def test_bad_arguments_exit_2_with_one_line(tiny_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            extra: tuple[str, ...], expected: str) -> None:
    argv = ["tune", "--data", str(tiny_log), "--out", str(tmp_path / "o"), "--quiet", *extra]
    if "--model" not in extra:
        argv += ["--model", "sasrec"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err


def test_unreadable_data_is_one_line_and_leaves_no_study(tiny_log: Path, tmp_path: Path, space: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(tune_args(tmp_path / "missing.csv", tmp_path / "study", space, "--trials", "1")) == 2
    err = capsys.readouterr().err
    assert "missing.csv: no such file" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "study").exists()  # no study.db half-made for a run that never started


def test_without_optuna_tune_names_the_install(tiny_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    assert main(["tune", "--data", str(tiny_log), "--model", "sasrec", "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'seqrec[tune]'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_study_killed_with_sigkill_continues_and_retries_the_cut_trial(tiny_log: Path, tmp_path: Path,
                                                                         space: Path) -> None:
    out = tmp_path / "study"
    # a heartbeat every second, silent for 3 s = killed (the defaults are 20 s and 60 s)
    entry = ("import sys; from seqrec import tune; tune.HEARTBEAT_SECONDS, tune.GRACE_SECONDS = 1, 3; "
             "from seqrec.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = [sys.executable, "-c", entry, *tune_args(tiny_log, out, space, "--study-name", "k", "--patience", "20")]
    argv[argv.index("--epochs") + 1] = "20"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*argv, "--trials", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:  # kill the first trial after its first epoch
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not running_with_an_epoch(out / "study.db"):
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(4.0)  # past the grace period
    done = subprocess.run([*argv, "--trials", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "continuing study 'k': 1 trials so far" in done.stdout
    after = trials(out)
    assert [r["state"] for r in after] == ["fail", "complete"]
    params = ("train.lr", "model.dropout")
    assert [after[1][k] for k in params] == [after[0][k] for k in params]  # the cut trial, tried again


def running_with_an_epoch(db: Path) -> bool:
    """Whether a trial in Optuna's SQLite file is running and has reported an epoch (read-only: the
    reader must not create the schema the tuning process is creating)."""
    if not db.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)) as con:
            row = con.execute("SELECT count(*) FROM trials t JOIN trial_intermediate_values v "
                              "ON v.trial_id = t.trial_id WHERE t.state = 'RUNNING'").fetchone()
    except sqlite3.OperationalError:  # tables not there yet, or locked for a moment
        return False
    return bool(row[0])
