"""`seqrec runs` and `seqrec compare`: listing order, unreadable folders, differing settings, the plot."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

import seqrec
from seqrec.cli import main
from seqrec.datasets.synthetic import markov_dataset
from seqrec.runs import differing_settings, list_runs, read_run


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny artifacts with known test NDCG@10: popular 0.10, sasrec (lr 1e-3) 0.30, sasrec (lr 1e-2) 0.20."""
    data = markov_dataset(n_users=40, n_items=20, length=8)
    split = seqrec.leave_one_out(data)
    root = tmp_path_factory.mktemp("built")
    specs = {
        "pop": ("popular", seqrec.TrainConfig(epochs=1, device="cpu"), {}, 0.10),
        "sas": ("sasrec", seqrec.TrainConfig(epochs=1, device="cpu", lr=1e-3), {"dim": 8}, 0.30),
        "sas2": ("sasrec", seqrec.TrainConfig(epochs=1, device="cpu", lr=1e-2), {"dim": 8, "n_layers": 1}, 0.20),
    }
    out = {}
    for name, (model, train, kwargs, ndcg) in specs.items():
        rec = seqrec.Recommender(model, train, **kwargs)
        rec.fit(data, split, progress=False)
        rec.info["test_metrics"] = {"NDCG@10": ndcg, "HR@10": 2 * ndcg}
        out[name] = rec.save(root / name)
    return out


@pytest.fixture
def tree(built: dict[str, Path], tmp_path: Path) -> Path:
    """runs/{a/deep/pop, b/sas, c/sas2}: nested at different depths, listed in another order than found."""
    root = tmp_path / "runs"
    for name, where in (("pop", "a/deep/pop"), ("sas", "b/sas"), ("sas2", "c/sas2")):
        shutil.copytree(built[name], root / where)
    return root


def test_listed_by_test_ndcg_best_first(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert [r.name for r in list_runs(tree)] == ["b/sas", "c/sas2", "a/deep/pop"]
    assert main(["runs", str(tree)]) == 0
    lines = capsys.readouterr().out.splitlines()
    body = [line.split()[0] for line in lines[2:]]
    assert body == ["b/sas", "c/sas2", "a/deep/pop"]
    assert "test NDCG@10" in lines[0]


def test_json_and_csv_fields(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", str(tree), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows] == ["b/sas", "c/sas2", "a/deep/pop"]
    sas = rows[0]
    assert (sas["dataset"], sas["model"], sas["dim"], sas["n_layers"], sas["loss"], sas["lr"], sas["epochs"]) == (
        "markov", "sasrec", 8, 2, "ce", 1e-3, 1)
    assert sas["test_NDCG@10"] == pytest.approx(0.30) and sas["test_HR@10"] == pytest.approx(0.60)
    history = json.loads((tree / "b/sas/info.json").read_text())["history"]
    assert sas["best_valid_NDCG@10"] == pytest.approx(history[-1]["valid_NDCG@10"])
    assert sas["train_seconds"] > 0 and sas["date"]
    assert rows[1]["lr"] == 1e-2 and rows[1]["n_layers"] == 1
    assert rows[2]["model"] == "popular" and rows[2]["dim"] is None

    assert main(["runs", str(tree), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["run"] for r in table] == ["b/sas", "c/sas2", "a/deep/pop"]
    assert float(table[1]["test_NDCG@10"]) == pytest.approx(0.20)


def test_weights_never_loaded(tree: Path) -> None:
    (tree / "b/sas/model.safetensors").write_bytes(b"not weights")
    (tree / "c/sas2/model.safetensors").unlink()
    assert [r.error for r in list_runs(tree)] == [None, None, None]


@pytest.mark.parametrize(("file", "content", "reason"), [
    ("info.json", "{not json", "info.json is not valid JSON"),
    ("info.json", "[1, 2]", "info.json holds a list"),
    ("config.toml", "[model\nname = ", "config.toml is not valid TOML"),
    ("config.toml", "x = 1\n", "config.toml has no [model] table"),
    ("info.json", b"\xff\xfe\x00garbage", "cannot read its files"),
])
def test_malformed_listed_as_unreadable(tree: Path, capsys: pytest.CaptureFixture[str], file: str,
                                        content: str | bytes, reason: str) -> None:
    target = tree / "c/sas2" / file
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)
    assert main(["runs", str(tree)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.out.splitlines()
    bad = [line for line in lines if "unreadable" in line]
    assert len(bad) == 1 and bad[0].startswith("c/sas2  unreadable: ") and reason in bad[0]
    assert lines[-1] == bad[0]  # after the table of the readable runs, which stay in order
    assert [line.split()[0] for line in lines[2:-1]] == ["b/sas", "a/deep/pop"]

    assert main(["runs", str(tree), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[-1]["run"] == "c/sas2" and reason in rows[-1]["unreadable"]


def test_unreadable_folder(tree: Path) -> None:
    (tree / "c/sas2/info.json").unlink()
    (tree / "c/sas2/info.json").mkdir()
    run = read_run(tree / "c/sas2")
    assert run.error is not None and "not a regular file" in run.error


def test_missing_folder_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err
    assert main(["runs", str(tmp_path)]) == 0
    assert "no runs under" in capsys.readouterr().out


def test_compare_shows_differing_settings_then_metrics(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tree / "b/sas", tree / "c/sas2"
    diff = differing_settings([read_run(a), read_run(b)])
    assert diff["train.lr"] == [1e-3, 1e-2] and diff["model.n_layers"] == [2, 1]
    assert "model.dim" not in diff and "train.epochs" not in diff
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    settings, metrics = out.split("metrics:")
    rows = {line.split()[0]: line.split()[1:] for line in settings.splitlines()[2:] if line.strip()}
    assert rows["train.lr"] == ["0.0010", "0.0100"] and rows["model.n_layers"] == ["2", "1"]
    assert "model.dim" not in rows and "train.batch_size" not in rows
    ndcg = next(line for line in metrics.splitlines() if line.startswith("test NDCG@10"))
    assert ndcg.split()[2:] == ["0.3000", "0.2000"]


def test_compare_rejects_unreadable(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "c/sas2/info.json").write_text("{")
    assert main(["compare", str(tree / "b/sas"), str(tree / "c/sas2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreadable: info.json is not valid JSON" in err
    assert main(["compare", str(tree / "b/sas")]) == 2


def test_compare_plot_written(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    assert main(["compare", str(tree / "b/sas"), str(tree / "c/sas2"), str(tree / "a/deep/pop"),
                 "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"learning curves written to {out}" in capsys.readouterr().out
