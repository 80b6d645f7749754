"""Settings declared once: validation from Python and the command line, TOML files, generated flags."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest

from seqrec.cli import build_parser, main, parse, run_flags, train_run_config
from seqrec.data.config import DataConfig
from seqrec.data.io import ReadOptions
from seqrec.data.preprocess import PreprocessOptions
from seqrec.errors import SeqrecError
from seqrec.losses import LossConfig
from seqrec.models.registry import MODELS, build_model, make_config
from seqrec.runconfig import RunConfig, load_run_config, run_config_toml
from seqrec.settings import dump_toml, from_dict, load_toml, setting, to_dict
from seqrec.train.config import TrainConfig


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, check it failed as a user error (status 2, one stderr line), return the line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqrec: error: "), err
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def cli_run(argv: list[str]) -> RunConfig:
    """The RunConfig that `seqrec train ARGV` would train, without reading data or training."""
    return train_run_config(parse(build_parser(), ["train", *argv]))


# ---- validation from Python -------------------------------------------------------------------


def test_a_misspelt_choice_names_the_nearest_one() -> None:
    with pytest.raises(SeqrecError, match=r"schedule='cosin'.*did you mean 'cosine'"):
        TrainConfig(schedule="cosin")


@pytest.mark.parametrize(("make", "words"), [
    (lambda: TrainConfig(lr=0.0), "lr=0.0 must be > 0"),
    (lambda: TrainConfig(epochs="5"), "epochs='5' must be an integer"),
    (lambda: TrainConfig(batch_size=0), "batch_size=0 must be >= 1"),
    (lambda: TrainConfig(mask_prob=1.5), "mask_prob=1.5 must be <= 1"),
    (lambda: TrainConfig(lr=float("nan")), "lr=nan must be > 0"),
    (lambda: TrainConfig(device="gpu"), "device='gpu' is not a device"),
    (lambda: TrainConfig(valid_metric="NDGC@10"), "did you mean 'NDCG@10'"),
    (lambda: TrainConfig(objective="masked"), "objective='masked' is not valid"),
    (lambda: TrainConfig(train_rest_valid=True), "needs valid_users"),
    (lambda: TrainConfig(loss="ce"), "loss='ce' must be a LossConfig"),
    (lambda: ReadOptions(format="cvs"), "did you mean 'csv'"),
    (lambda: PreprocessOptions(user_core=-1), "user_core=-1 must be >= 0"),
    (lambda: DataConfig(split="temporal"), "--valid-time and --test-time"),
    (lambda: DataConfig(dataset="movielens-latest-smal"), "did you mean 'movielens-latest-small'"),
    (lambda: DataConfig(dataset="movielens-100k", data="log.csv"), "not both"),
])
def test_wrong_values_are_one_line_errors(make: Any, words: str) -> None:
    with pytest.raises(SeqrecError) as info:
        make()
    assert words in str(info.value) and "\n" not in str(info.value)


def test_devices_that_are_spelt_right_pass() -> None:
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert TrainConfig(device=device).device == device


# ---- TOML -------------------------------------------------------------------------------------


def every_model_config() -> list[Any]:
    configs = [make_config(name, n_items=7) for name in MODELS]
    configs += [make_config(name, size="small", n_items=7, dropout=0.3) for name in ("sasrec", "bert4rec")]
    return configs


NON_DEFAULT_TRAIN = TrainConfig(
    epochs=3, lr=0.02, grad_clip=0.0, max_seconds=12.5, valid_users=4, train_rest_valid=True, objective="cloze",
    device="cuda:1", exclude_seen=False, loss=LossConfig("sampled", 8, "popularity", False, 0.5, False, True))
NON_DEFAULT_DATA = DataConfig(
    data="log.tsv", data_root="/data", read=ReadOptions("csv", "\t", False, "0", "1", None, "3"),
    preprocess=PreprocessOptions(min_rating=3.5, dedupe=False, drop_consecutive_repeats=True, user_core=5),
    split="temporal", valid_time=10.0, test_time=20.0)


@pytest.mark.parametrize("config", [TrainConfig(), NON_DEFAULT_TRAIN, DataConfig(), NON_DEFAULT_DATA,
                                    DataConfig(dataset="amazon-beauty-s3rec"), *every_model_config()],
                         ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_toml_exactly(tmp_path: Path, config: Any) -> None:
    path = write(tmp_path / "c.toml", dump_toml(to_dict(config)))
    assert from_dict(type(config), load_toml(path), str(path)) == config


def test_a_run_round_trips_through_its_toml_file(tmp_path: Path) -> None:
    run = RunConfig("sasrec", {"size": "small", "positions": "end"}, NON_DEFAULT_TRAIN, NON_DEFAULT_DATA)
    assert run.model_config["dim"] == 128 and "size" not in run.model_config  # resolved
    loaded = load_run_config(write(tmp_path / "run.toml", run_config_toml(run)))
    assert loaded == run
    assert cli_run(["--config", str(tmp_path / "run.toml")]) == run


def test_a_none_that_toml_cannot_hold_is_refused() -> None:
    @dataclass(frozen=True)
    class Odd:
        name: str | None = setting("x", "a name")

    assert to_dict(Odd("y")) == {"name": "y"}
    with pytest.raises(ValueError, match="TOML has no null"):
        to_dict(Odd(None))


@pytest.mark.parametrize(("text", "words"), [
    ("[train]\nlrr = 0.1\n", ["run.toml [train]", "unknown key 'lrr'", "did you mean 'lr'"]),
    ("[train.loss]\nnegatives = 4\n", ["run.toml [train.loss]", "did you mean 'n_negatives'"]),
    ("[data.read]\nuser_column = 'u'\n", ["run.toml [data.read]", "did you mean 'user_col'"]),
    ("[trian]\nepochs = 1\n", ["unknown table [trian]", "did you mean 'train'"]),
    ("[model]\nname = 'sasrec'\nhidden = 8\n", ["run.toml [model]", "hidden does not apply to sasrec"]),
    ("[model]\nname = 'gru4rec'\ndimm = 8\n", ["run.toml [model]", "did you mean 'dim'"]),
    ("[train]\nbatch_size = 'big'\n", ["run.toml [train]", "batch_size = 'big' must be an integer"]),
    ("[train]\nschedule = 'cosin'\n", ["run.toml [train]", "did you mean 'cosine'"]),
    ("[train\nepochs = 1\n", ["run.toml: not valid TOML"]),
])
def test_config_file_errors_name_the_file_the_table_and_the_nearest_key(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, words: list[str]) -> None:
    path = write(tmp_path / "run.toml", text)
    with pytest.raises(SeqrecError) as info:
        load_run_config(path)
    assert all(w in str(info.value) for w in words), str(info.value)
    line = one_line_error(capsys, ["train", "--config", str(path)])
    assert all(w in line for w in words), line


def test_a_missing_config_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = one_line_error(capsys, ["train", "--config", str(tmp_path / "none.toml")])
    assert "none.toml: no such config file" in line


# ---- generated flags ----------------------------------------------------------------------------


def settings_paths(cls: type, prefix: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    """Every leaf field of a config dataclass: (path, field)."""
    out = []
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if is_dataclass(default):
            out += settings_paths(type(default), (*prefix, f.name))
        else:
            out.append(((*prefix, f.name), f))
    return out


def shown(value: Any, names: tuple[str, ...]) -> str:
    if isinstance(value, bool):
        return names[0] if value else names[1]
    if value == "":
        return "''"
    return "none" if value is None else str(value)


def test_train_help_lists_every_setting_with_its_help_and_default(capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEQREC_DATA_ROOT", raising=False)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    text = " ".join(out[out.index("options:"):].split())  # the entries, past the usage lines
    flags = {flag.path: flag for flag in run_flags().config}
    expected = settings_paths(TrainConfig, ("train",)) + settings_paths(DataConfig, ("data",))
    assert len(expected) > 40
    for path, f in expected:
        assert path in flags, f"{'.'.join(path)} has no flag"
        flag = flags[path]
        assert flag.name in text
        entry = f"{' '.join(f.metadata['help'].split())} (default: {shown(f.default, flag.names)})"
        assert entry in text, entry
        at = re.search(rf"{re.escape(flag.name)}[ ,]", text)
        assert at is not None and 0 < text.index(entry) - at.start() < 250  # the help follows its flag


def test_train_help_lists_every_model_setting_and_the_models_that_take_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for cls, _ in MODELS.values():
        for f in fields(cls):
            if f.name != "n_items":
                assert f"--{f.name.replace('_', '-')}" in text or f.metadata.get("flag"), f.name
    assert "--hidden HIDDEN" in text and "(models: lstm, gru4rec;" in text
    assert "--max-len MAX_LEN" in text and "(models: all; default: 50)" in text


def test_old_flag_spellings_stay(capsys: pytest.CaptureFixture[str]) -> None:
    run = cli_run(["--negatives", "5", "--no-sliding", "--no-bucket", "--no-logq", "--per-target-negatives",
                   "--loss", "sampled", "--ce-bf16-grads", "--drop-repeats", "--model", "sasrec", "--size", "tiny"])
    assert run.train.loss == LossConfig("sampled", 5, logq=False, shared_negatives=False, bf16_grads=True)
    assert not run.train.sliding and not run.train.bucket and run.data.preprocess.drop_consecutive_repeats
    assert run.model_config["dim"] == 64 and run.model_config["ff_dim"] == 256


# ---- command line errors ------------------------------------------------------------------------


def test_a_misspelt_flag_value_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["train", "--schedule", "cosin"])
    assert "--schedule cosin" in line and "did you mean 'cosine'" in line


def test_a_model_setting_the_model_does_not_take_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["train", "--hidden", "32", "--model", "sasrec"])
    assert "--hidden does not apply to sasrec" in line and "lstm, gru4rec" in line


@pytest.mark.parametrize(("argv", "words"), [
    (["--hiden", "3"], "unknown option --hiden (did you mean '--hidden'?)"),
    (["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["--lr", "0"], "--lr 0.0 must be > 0"),
    (["--model", "sasrek"], "did you mean 'sasrec'"),
    (["--model", "gru4rec", "--size", "tiny"], "size applies to sasrec, bert4rec, hstu, not gru4rec"),
    (["--model", "sasrec", "--size", "huge"], "--size huge is not valid"),
    (["--positions", "middle", "--model", "sasrec"], "--positions middle is not valid"),
    (["--train-rest-valid"], "needs valid_users (--valid-users N)"),
    (["--dataset", "movielens-100k", "--user-col", "u"], "apply to a --data file"),
])
def test_flag_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    assert words in one_line_error(capsys, ["train", *argv])


# ---- config file and flags together ------------------------------------------------------------


RUN_TOML = """
[model]
name = "gru4rec"
dim = 16
hidden = 12

[train]
epochs = 3
lr = 0.5
bucket = false

[train.loss]
name = "bce"
n_negatives = 4

[data]
dataset = "movielens-100k"
"""


def test_a_flag_given_on_the_command_line_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", RUN_TOML)
    run = cli_run(["--config", str(path), "--epochs", "1", "--negatives", "2", "--bucket", "--dim", "8"])
    assert (run.train.epochs, run.train.loss.n_negatives, run.train.bucket) == (1, 2, True)  # flags
    assert (run.train.lr, run.train.loss.name, run.model_config["hidden"]) == (0.5, "bce", 12)  # the file
    assert (run.model, run.model_config["dim"], run.data.dataset) == ("gru4rec", 8, "movielens-100k")
    assert run.train.batch_size == TrainConfig().batch_size  # neither: the default


def test_flags_replace_what_they_stand_for_as_a_whole(tmp_path: Path) -> None:
    sasrec = RUN_TOML.replace('"gru4rec"', '"sasrec"').replace("hidden = 12", "n_layers = 1")
    path = write(tmp_path / "run.toml", sasrec)
    run = cli_run(["--config", str(path), "--data", "log.csv", "--size", "small"])
    assert (run.data.data, run.data.dataset) == ("log.csv", None)  # --data replaces the file's dataset
    assert (run.model_config["dim"], run.model_config["n_layers"]) == (128, 2)  # --size replaces its settings


def test_the_data_root_comes_from_the_environment_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQREC_DATA_ROOT", "/from/env")
    assert cli_run([]).data.data_root == "/from/env"
    assert cli_run(["--data-root", "/given"]).data.data_root == "/given"


def test_the_command_line_trains_what_file_and_flags_say(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         tiny_log: Path) -> None:
    path = write(tmp_path / "run.toml", "[model]\nname = 'gru4rec'\ndim = 8\nhidden = 8\nmax_len = 10\n"
                 "[train]\nepochs = 3\n")
    out = tmp_path / "model"
    assert main(["train", "--config", str(path), "--data", str(tiny_log), "--epochs", "1", "--quiet",
                 "--out", str(out)]) == 0
    model = build_model("gru4rec", make_config("gru4rec", n_items=25, dim=8, hidden=8, max_len=10))
    assert f"gru4rec: {model.n_parameters():,} parameters" in capsys.readouterr().out  # the file's sizes
    assert len(json.loads((out / "info.json").read_text())["history"]) == 1  # --epochs 1 beat the file's 3
