"""Bad input to the CLI: exit status 2 and one line on stderr that names the problem, no traceback.

Bugs (anything but a SeqrecError) propagate out of `main` and fail these tests with their traceback.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from safetensors.torch import load_file, save_file

import seqrec.artifact
from seqrec.cli import main


def user_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, check it failed as a user error, and return its one stderr line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("seqrec: error: ")
    return lines[0]


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def write_log(path: Path, body: str) -> Path:
    path.write_text("user_id,item_id,timestamp\n" + body)
    return path


# ---- the data -----------------------------------------------------------------------------------


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_train_args: list[str]) -> None:
    missing = tmp_path / "nope.csv"
    line = user_error(capsys, ["train", "--data", str(missing), *tiny_train_args])
    assert str(missing) in line and "no such file" in line


def test_directory_without_parquet_files(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         tiny_train_args: list[str]) -> None:
    """A directory reads as one log of Parquet files; one without any is a one-line error."""
    (tmp_path / "notes.txt").write_text("not a log\n")
    line = user_error(capsys, ["train", "--data", str(tmp_path), *tiny_train_args])
    assert str(tmp_path) in line and "no Parquet files" in line


def test_unknown_dataset_name(capsys: pytest.CaptureFixture[str], tiny_train_args: list[str]) -> None:
    line = user_error(capsys, ["train", "--dataset", "no-such-data", *tiny_train_args])
    assert "--dataset no-such-data is not valid" in line and "movielens-latest-small" in line


@pytest.mark.parametrize(("option", "role"), [("--user-col", "user"), ("--item-col", "item")])
def test_wrong_column_name(capsys: pytest.CaptureFixture[str], tiny_log: Path, tiny_train_args: list[str],
                           option: str, role: str) -> None:
    line = user_error(capsys, ["train", "--data", str(tiny_log), option, "who", *tiny_train_args])
    assert str(tiny_log) in line and f"no column 'who' for {role} ids" in line
    assert "user_id, item_id, timestamp" in line and option in line  # what there is, and how to fix it


@pytest.mark.parametrize(("body", "where"), [
    ("1,10,1\n2,11,2\n,12,3\n3,13,4\n", "line 4, column user: nan"),  # empty id
    ("1,10,1\n2,11,2\nabc,12,3\n", "line 4, column user: 'abc'"),  # not a number among numbers
    ("1,10,1\n2,NaN,2\n", "line 3, column item"),
])
def test_unparsable_ids_with_strict(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    tiny_train_args: list[str], body: str, where: str) -> None:
    log = write_log(tmp_path / "bad.csv", body)
    line = user_error(capsys, ["train", "--data", str(log), "--strict", *tiny_train_args])
    assert str(log) in line and "unparsable" in line and where in line


def test_dataset_emptied_by_user_core(capsys: pytest.CaptureFixture[str], tiny_log: Path,
                                      tiny_train_args: list[str]) -> None:
    line = user_error(capsys, ["train", "--data", str(tiny_log), "--user-core", "100", *tiny_train_args])
    assert "no interactions left after filtering" in line and "--user-core" in line


def test_temporal_split_without_cutoffs(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        tiny_train_args: list[str]) -> None:
    missing = tmp_path / "not-read.csv"  # the settings are checked before the file is opened
    line = user_error(capsys, ["train", "--data", str(missing), "--split", "temporal", *tiny_train_args])
    assert "--valid-time and --test-time" in line


# ---- evaluation and recommendation ------------------------------------------------------------


def test_k_larger_than_the_catalog(capsys: pytest.CaptureFixture[str], trained_artifact: Path) -> None:
    line = user_error(capsys, ["evaluate", str(trained_artifact), "--k", "5,26"])
    assert "K=26" in line and "25 items" in line and "--k" in line


def test_unknown_user(capsys: pytest.CaptureFixture[str], trained_artifact: Path) -> None:
    line = user_error(capsys, ["recommend", str(trained_artifact), "--user", "nobody"])
    assert "unknown user 'nobody'" in line


def test_unknown_history_items(capsys: pytest.CaptureFixture[str], trained_artifact: Path) -> None:
    line = user_error(capsys, ["recommend", str(trained_artifact), "--history", "999,zzz"])
    assert "none of the history items are known" in line


def test_recommend_needs_a_user_or_a_history(capsys: pytest.CaptureFixture[str], trained_artifact: Path) -> None:
    line = user_error(capsys, ["recommend", str(trained_artifact)])
    assert "--user" in line and "--history" in line


def test_recommend_k_larger_than_the_catalog(capsys: pytest.CaptureFixture[str], trained_artifact: Path) -> None:
    line = user_error(capsys, ["recommend", str(trained_artifact), "--user", "u1", "--k", "26"])
    assert "k=26" in line and "25" in line


# ---- artifacts --------------------------------------------------------------------------------


def test_no_artifact_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = user_error(capsys, ["evaluate", str(tmp_path / "none")])
    assert str(tmp_path / "none") in line and "seqrec train --out" in line


def test_incomplete_artifact(capsys: pytest.CaptureFixture[str], tmp_path: Path, trained_artifact: Path) -> None:
    art = copy_artifact(trained_artifact, tmp_path / "art")
    (art / "users.json").unlink()
    line = user_error(capsys, ["recommend", str(art), "--user", "u1"])
    assert str(art) in line and "missing users.json" in line


def reseal(art: Path) -> None:
    """Rewrite the manifest's digests, as an attacker or a careless edit might: the field checks must hold."""
    manifest = json.loads((art / "manifest.json").read_text())
    for name in manifest["sha256"]:
        manifest["sha256"][name] = hashlib.sha256((art / name).read_bytes()).hexdigest()
    (art / "manifest.json").write_text(json.dumps(manifest))


def edit_toml(art: Path, change: Callable[[dict[str, Any]], object]) -> None:
    config = tomllib.loads((art / "config.toml").read_text())
    change(config)
    (art / "config.toml").write_text(tomli_w.dumps(config))
    reseal(art)


def edit_json(art: Path, name: str, change: Callable[[Any], Any]) -> None:
    data = json.loads((art / name).read_text())
    (art / name).write_text(json.dumps(change(data)))
    reseal(art)


@pytest.mark.parametrize(("name", "damage"), [
    ("model.safetensors", lambda p: p.write_bytes(b"\x00garbage, not safetensors" * 8)),
    ("config.toml", lambda p: p.write_text(p.read_text()[:40])),  # truncated
    ("sequences.safetensors", lambda p: p.write_bytes(p.read_bytes()[:60])),
    ("items.json", lambda p: p.write_text("{")),
])
def test_corrupted_artifact(capsys: pytest.CaptureFixture[str], tmp_path: Path, trained_artifact: Path,
                            name: str, damage: Callable[[Path], object]) -> None:
    art = copy_artifact(trained_artifact, tmp_path / "art")
    damage(art / name)
    line = user_error(capsys, ["evaluate", str(art)])
    assert str(art) in line and f"{name} does not match its digest" in line
    reseal(art)  # the same damage with matching digests is caught by the parsers
    line = user_error(capsys, ["evaluate", str(art)])
    assert str(art) in line and "corrupt artifact" in line


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c["model"].update(dim=16), "corrupt artifact"),  # weights of the wrong shape
    (lambda c: c["model"].update(n_heads=0), "n_heads"),
    (lambda c: c["model"].update(max_len=-5), "max_len"),
    (lambda c: c["model"].update(max_len="fifty"), "max_len"),
    (lambda c: c["model"].pop("max_len"), "lacks max_len"),
    (lambda c: c.update(model=3), "[model]"),
    (lambda c: c.update(train=[1, 2]), "[train]"),
])
def test_edited_config_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, trained_artifact: Path,
                                   change: Callable[[dict[str, Any]], object], expected: str) -> None:
    art = copy_artifact(trained_artifact, tmp_path / "art")
    edit_toml(art, change)
    line = user_error(capsys, ["evaluate", str(art)])
    assert str(art) in line and expected in line


@pytest.mark.parametrize(("name", "change", "expected"), [
    ("items.json", lambda d: d | {"offset": 0}, "'offset' must be 1"),
    ("items.json", lambda d: d | {"offset": 100000}, "'offset' must be 1"),
    ("users.json", lambda d: d | {"offset": 5}, "'offset' must be 0"),
    ("items.json", lambda d: d | {"ids": "abc"}, "'ids' a list"),
    ("items.json", lambda d: d | {"ids": d["ids"][:-1]}, "items.json lists"),
    ("info.json", lambda d: [d], "info.json"),
])
def test_edited_id_maps_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, trained_artifact: Path,
                                    name: str, change: Callable[[Any], Any], expected: str) -> None:
    art = copy_artifact(trained_artifact, tmp_path / "art")
    edit_json(art, name, change)
    line = user_error(capsys, ["recommend", str(art), "--user", "u1"])
    assert str(art) in line and expected in line


def test_nan_weights_and_float_sequences_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     trained_artifact: Path) -> None:
    art = copy_artifact(trained_artifact, tmp_path / "art")
    weights = load_file(str(art / "model.safetensors"))
    first = next(k for k, v in weights.items() if v.is_floating_point())
    weights[first][0] = float("nan")
    save_file(weights, str(art / "model.safetensors"))
    reseal(art)
    assert "NaN" in user_error(capsys, ["evaluate", str(art)])
    art = copy_artifact(trained_artifact, tmp_path / "art2")
    seqs = load_file(str(art / "sequences.safetensors"))
    save_file({k: v.double() if k == "items" else v for k, v in seqs.items()}, str(art / "sequences.safetensors"))
    reseal(art)
    assert "int64" in user_error(capsys, ["evaluate", str(art)])


def test_incompatible_format_version(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     trained_artifact: Path) -> None:
    art = copy_artifact(trained_artifact, tmp_path / "art")
    edit_toml(art, lambda c: c.update(format_version=99))
    line = user_error(capsys, ["recommend", str(art), "--user", "u1"])
    assert "format 99" in line and "expects 2" in line


# ---- a failed `train --out DIR` leaves nothing half-written -------------------------------------


def leftovers(folder: Path) -> list[str]:
    """Temporary or half-written entries anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or ".old" in p.name)


def fail_writing_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(seqrec.artifact, "save_file", no_space)


def run_failing(argv: list[str]) -> int | None:
    try:
        return main(argv)
    except OSError:  # an environment failure may keep its traceback; what matters is what is left
        return None


def test_train_that_fails_before_training_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         tiny_log: Path, tiny_train_args: list[str]) -> None:
    out = tmp_path / "runs" / "model"
    user_error(capsys, ["train", "--data", str(tiny_log), "--user-core", "100", *tiny_train_args,
                        "--out", str(out)])
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_train_that_fails_while_saving_keeps_the_previous_artifact(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_log: Path, tiny_train_args: list[str],
        trained_artifact: Path) -> None:
    out = copy_artifact(trained_artifact, tmp_path / "model")
    before = {name: (out / name).read_bytes() for name in seqrec.artifact.FILES}
    fail_writing_weights(monkeypatch)
    assert run_failing(["train", "--data", str(tiny_log), *tiny_train_args, "--seed", "1",
                        "--out", str(out)]) != 0
    assert {name: (out / name).read_bytes() for name in seqrec.artifact.FILES} == before
    monkeypatch.undo()
    assert main(["recommend", str(out), "--user", "u1"]) == 0  # still a working artifact


def test_train_that_fails_while_saving_leaves_no_partial_artifact(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_log: Path) -> None:
    out = tmp_path / "model"
    fail_writing_weights(monkeypatch)
    assert run_failing(["train", "--data", str(tiny_log), "--model", "popular", "--quiet", "--out", str(out)]) != 0
    # a training checkpoint may stay for --resume; an artifact file may not
    assert not out.exists() or {p.name for p in out.iterdir()} <= {"checkpoint"}
    assert leftovers(tmp_path) == []


def test_out_is_an_existing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_log: Path,
                                 tiny_train_args: list[str]) -> None:
    out = tmp_path / "model"
    out.write_text("not a directory")
    line = user_error(capsys, ["train", "--data", str(tiny_log), *tiny_train_args, "--out", str(out)])
    assert str(out) in line and "--out" in line
    assert out.read_text() == "not a directory"
