"""Nothing fails silently: each of these once trained, recommended or dropped data without a word."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import seqrec
from seqrec.cli import main

TINY = ["--model", "popular", "--max-len", "10", "--quiet"]


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code, _, err = run(capsys, argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqrec: error: "), err
    return lines[0]


def test_a_time_column_that_does_not_exist_is_an_error(capsys: pytest.CaptureFixture[str], tiny_log: Path,
                                                       tmp_path: Path) -> None:
    line = one_error(capsys, ["train", "--data", str(tiny_log), "--time-col", "when", *TINY,
                              "--out", str(tmp_path / "a")])
    assert "'when'" in line and "timestamp" in line  # names the missing column and lists the real ones


def test_a_time_column_with_no_readable_value_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},{i},soon\n" for u in range(5) for i in range(4)))
    line = one_error(capsys, ["train", "--data", str(log), *TINY, "--out", str(tmp_path / "a")])
    assert "no value of the time column" in line and "'soon'" in line


def test_many_unreadable_rows_are_reported_loudly(capsys: pytest.CaptureFixture[str], tiny_log: Path,
                                                  tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    lines = tiny_log.read_text().splitlines()
    lines += [f"u{u},,{5000 + u}" for u in range(len(lines) // 4)]  # > 10% of rows without an item
    log.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, ["train", "--data", str(log), *TINY, "--out", str(tmp_path / "a")])
    assert code == 0 and "warning:" in err and "dropped as missing or unparsable" in err


def test_a_headerless_file_gets_a_no_header_hint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("".join(f"{u},{i},{100 * i}\n" for u in range(5) for i in range(1, 5)))
    assert "--no-header" in one_error(capsys, ["train", "--data", str(log), *TINY, "--out", str(tmp_path / "a")])


def test_unparsable_dates_raise_no_pandas_warning(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n" + "".join(
        f"u{u},{i},{'2020-01-0' + str(i) if i % 2 else 'March ' + str(i)}\n" for u in range(4) for i in range(1, 6)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seqrec.build_dataset(seqrec.read_log(log))


def test_training_without_out_saves_to_a_fresh_run_folder(capsys: pytest.CaptureFixture[str], tiny_log: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, ["train", "--data", str(tiny_log), *TINY])
    runs = list((tmp_path / "runs").iterdir())
    assert code == 0 and len(runs) == 1 and runs[0].name.startswith("popular-")
    assert str(Path("runs") / runs[0].name) in out and (runs[0] / "config.toml").is_file()


def test_an_existing_artifact_is_kept_without_force(capsys: pytest.CaptureFixture[str], tiny_log: Path,
                                                    trained_artifact: Path, tmp_path: Path) -> None:
    art = shutil.copytree(trained_artifact, tmp_path / "art")
    before = (art / "model.safetensors").read_bytes()
    assert "--force" in one_error(capsys, ["train", "--data", str(tiny_log), *TINY, "--out", str(art)])
    assert (art / "model.safetensors").read_bytes() == before
    code, _, _ = run(capsys, ["train", "--data", str(tiny_log), *TINY, "--out", str(art), "--force"])
    assert code == 0 and seqrec.Recommender.load(art).model_name == "popular"


def test_resume_says_where_it_resumed(capsys: pytest.CaptureFixture[str], tiny_log: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    data = seqrec.build_dataset(seqrec.read_log(tiny_log))
    rec = seqrec.Recommender("sasrec", seqrec.TrainConfig(epochs=1, device="cpu"), dim=8, max_len=10)
    rec.fit(data, out_dir=out, progress=False)  # leaves a checkpoint after epoch 1, no artifact
    args = ["train", "--data", str(tiny_log), "--model", "sasrec", "--dim", "8", "--max-len", "10", "--quiet",
            "--epochs", "2", "--device", "cpu", "--out", str(out)]
    code, stdout, err = run(capsys, [*args, "--resume"])
    assert code == 0, err
    assert f"resuming from the checkpoint in {out} after epoch 1" in stdout
    code, stdout, _ = run(capsys, [*args, "--resume", "--force"])  # the finished artifact keeps no checkpoint
    assert code == 0 and "--resume: no checkpoint" in stdout


def test_a_time_cap_that_stops_training_is_reported(capsys: pytest.CaptureFixture[str], tiny_log: Path,
                                                    tmp_path: Path) -> None:
    code, _, err = run(capsys, ["train", "--data", str(tiny_log), "--model", "sasrec", "--dim", "8", "--max-len",
                                "10", "--quiet", "--epochs", "5", "--max-seconds", "1e-9", "--out",
                                str(tmp_path / "a")])
    assert code == 0 and "stopped after 1 epochs: max_seconds" in err


def test_history_with_unknown_items_is_reported_and_empty_is_an_error(
        capsys: pytest.CaptureFixture[str], trained_artifact: Path) -> None:
    code, _, err = run(capsys, ["recommend", str(trained_artifact), "--history", "100,nope,101"])
    assert code == 0 and "1 of 3 history items are unknown" in err and "nope" in err
    assert "empty" in one_error(capsys, ["recommend", str(trained_artifact), "--history", " , "])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"seqrec {seqrec.__version__}"


def test_cut_offs_take_iso_dates(capsys: pytest.CaptureFixture[str], tiny_log: Path, tmp_path: Path) -> None:
    # the tiny log's times are 1000..1800 seconds after the epoch
    code, _, err = run(capsys, ["train", "--data", str(tiny_log), *TINY, "--split", "temporal", "--valid-time",
                                "1970-01-01T00:25:00", "--test-time", "1970-01-01T00:27:30+00:00",
                                "--out", str(tmp_path / "a")])
    assert code == 0, err
    info = json.loads((tmp_path / "a" / "info.json").read_text())
    assert (info["valid_time"], info["test_time"]) == (1500.0, 1650.0)


def test_evaluate_orders_cut_offs_by_number_and_writes_json_and_csv(capsys: pytest.CaptureFixture[str],
                                                                  trained_artifact: Path) -> None:
    _, out, _ = run(capsys, ["evaluate", str(trained_artifact), "--k", "20,5,10", "--format", "json"])
    names = [n for n in json.loads(out) if n.startswith("HR@")]
    assert names == ["HR@5", "HR@10", "HR@20"]
    _, out, _ = run(capsys, ["evaluate", str(trained_artifact), "--format", "csv"])
    assert out.splitlines()[0] == "metric,value" and "NDCG@10" in out


def test_recommend_for_a_file_of_users_into_parquet(capsys: pytest.CaptureFixture[str], trained_artifact: Path,
                                                     tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("u1\nu2\nnobody\n\nu3\n")
    out = tmp_path / "recs.parquet"
    code, _, err = run(capsys, ["recommend", str(trained_artifact), "--users", str(users), "--k", "3",
                                "--out", str(out)])
    frame = pd.read_parquet(out)
    assert code == 0 and "1 of 4 users are unknown" in err
    assert sorted(frame["user_id"].unique()) == ["u1", "u2", "u3"] and len(frame) == 9


def test_an_unknown_numeric_id_is_named_as_given() -> None:
    from seqrec.data.ids import IdMap
    from seqrec.errors import UnknownIdError

    with pytest.raises(UnknownIdError, match=r"^unknown user 999: it was not"):  # not np.int64(999)
        IdMap(np.array([1, 2, 3], dtype=np.int64)).to_internal([2, 999], kind="user")


def test_an_output_that_cannot_be_written_is_one_line(capsys: pytest.CaptureFixture[str], trained_artifact: Path,
                                                      tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    line = one_error(capsys, ["recommend", str(trained_artifact), "--user", "u1", "--out", str(missing / "r.json")])
    assert f"--out {missing / 'r.json'}: cannot write" in line
    pytest.importorskip("matplotlib")
    line = one_error(capsys, ["plot", str(trained_artifact), "--out", str(missing / "c.png")])
    assert f"--out {missing / 'c.png'}: cannot write (No such file or directory)" in line


def test_a_failed_write_keeps_the_previous_file_whole(capsys: pytest.CaptureFixture[str], trained_artifact: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "recs.csv"
    out.write_text("the previous recommendations\n")

    def half_then_full(self: pd.DataFrame, path: Path, **_: object) -> None:
        Path(path).write_text("user_id,item_id\nu1,")  # half a file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_full)
    line = one_error(capsys, ["recommend", str(trained_artifact), "--user", "u1", "--out", str(out)])
    assert "cannot write (No space left on device)" in line
    assert out.read_text() == "the previous recommendations\n"
    assert [p.name for p in tmp_path.iterdir()] == ["recs.csv"]  # no temporary file left beside it
