"""User features as a model input: every model trains and scores with them, the contracts (causality,
padding invariance) hold, save/load gives identical scores, missing users get the unknown value, and bad
files are one line with exit status 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import seqrec
from seqrec.cli import main
from seqrec.data.batch import SequenceBatch, TrainBatches
from seqrec.data.preprocess import Dataset
from seqrec.data.split import make_split
from seqrec.eval.evaluate import score_histories
from seqrec.items.users import UserTower, attach_user_tower, prepare_users, read_user_table, user_tower_of
from seqrec.models.base import SequenceModel
from seqrec.models.registry import create
from seqrec.train.config import TrainConfig

MODELS = ("lstm", "gru4rec", "sasrec", "bert4rec", "hstu")
SHARED_USERS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "movielens-100k" / "u.user"


def write_users(folder: Path, data: Dataset, skip: int = 3, extra: int = 2) -> Path:
    """A user CSV: age (numeric: many values), gender and occupation (categorical), zip (by prefix); the first
    ``skip`` users left out and ``extra`` ids the log never mentions added."""
    ids = [str(v) for v in data.users.external][skip:] + [f"stranger{i}" for i in range(extra)]
    lines = ["user_id,age,gender,occupation,zip"]
    for n, user in enumerate(ids):
        lines.append(f"{user},{18 + n % 50},{'FM'[n % 2]},job{n % 4},{10000 + 997 * n}")
    path = folder / "users.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _params(name: str) -> dict[str, int]:
    return {"dim": 16, "max_len": 10} | ({"hidden": 12} if name in ("lstm", "gru4rec") else {"n_heads": 2})


def _with_users(name: str, data: Dataset, folder: Path) -> SequenceModel:
    torch.manual_seed(0)
    model = create(name, n_items=data.n_items, dropout=0.0, **_params(name))
    inputs = prepare_users(write_users(folder, data), data.users, report=False)
    attach_user_tower(model, inputs.spec, inputs.tensors)
    return model.eval()


def test_reader_schema_zip_prefix_and_counts(tmp_path: Path, data: Dataset,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    inputs = prepare_users(write_users(tmp_path, data), data.users)
    kinds = {c.name: c.kind for c in inputs.spec.schema.columns}
    assert kinds == {"age": "num", "gender": "cat", "occupation": "cat", "zip": "cat"}
    zips = next(c for c in inputs.spec.schema.columns if c.name == "zip").values
    assert all(len(z) == 3 for z in zips)
    assert (inputs.not_in_log, inputs.without_row) == (2, 3)
    err = capsys.readouterr().err
    assert "2 of 79 users are not in the log" in err and "3 of 80 users have no row" in err
    # row 0 and the users without a row hold the unknown value; a described user does not
    num = inputs.tensors.num
    assert num is not None and num[0, -1] == 1 and (num[1:4, -1] == 1).all() and (num[4:, -1] == 0).all()


def test_movielens_u_user_reads_directly(data: Dataset) -> None:
    if not SHARED_USERS.is_file():
        pytest.skip("MovieLens-100k is not in ../shared/data")
    frame = read_user_table(SHARED_USERS)
    assert len(frame) == 943 and list(frame.columns) == ["age", "gender", "occupation", "zip"]
    assert frame.loc["1", "zip"] == "857"


@pytest.mark.parametrize("name", MODELS)
def test_contracts_hold_with_user_features(tmp_path: Path, data: Dataset, name: str) -> None:
    model = _with_users(name, data, tmp_path)
    g = torch.Generator().manual_seed(1)
    items = torch.randint(1, data.n_items + 1, (4, 6), generator=g)
    users = torch.tensor([5, 6, 7, 8])
    with torch.no_grad():
        q = model(SequenceBatch(items, users=users))
        # the user changes the output: different features, different queries
        assert not torch.allclose(q, model(SequenceBatch(items, users=torch.tensor([9, 10, 11, 12]))))
        padded = model(SequenceBatch(torch.cat([torch.zeros(4, 3, dtype=torch.long), items], 1), users=users))
        torch.testing.assert_close(padded[:, -6:], q, atol=1e-5, rtol=1e-4)
        if model.causal:
            changed = items.clone()
            changed[:, -1] = changed[:, -1] % data.n_items + 1
            torch.testing.assert_close(model(SequenceBatch(changed, users=users))[:, :-1], q[:, :-1])
        nxt = model.predict_next(items, users=users)
        torch.testing.assert_close(nxt, model(SequenceBatch(model.next_inputs(items), users=users))[:, -1])


def test_missing_users_get_the_unknown_value(tmp_path: Path, data: Dataset) -> None:
    model = _with_users("sasrec", data, tmp_path)
    tower = user_tower_of(model)
    assert isinstance(tower, UserTower)
    with torch.no_grad():
        unknown = tower.vectors(None, 1)
        # users 0..2 are not in the file; -1 and ids past the table are users the log never had
        for ids in ([0], [1], [2], [-1], [data.n_users + 5]):
            torch.testing.assert_close(tower.vectors(torch.tensor(ids), 1), unknown)
        assert not torch.allclose(tower.vectors(torch.tensor([3]), 1), unknown)


def test_batches_carry_user_ids(data: Dataset) -> None:
    split = make_split(data)
    batches = TrainBatches(split.train, 5, 16)
    for batch in batches.epoch(torch.Generator().manual_seed(0)):
        assert batch.users is not None and batch.users.shape == (batch.items.shape[0],)
        for row, user in zip(batch.items, batch.users.tolist(), strict=True):  # the window is that user's
            mine = set(split.train.subset(np.array([user])).items.tolist())
            assert set(row[row > 0].tolist()) <= mine


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_scores_and_round_trips(tmp_path: Path, data: Dataset, name: str) -> None:
    rec = seqrec.Recommender(name, TrainConfig(epochs=1, batch_size=32, device="cpu", seed=3), **_params(name))
    rec.user_inputs = prepare_users(write_users(tmp_path, data), data.users, report=False)
    rec.fit(data, progress=False)
    assert rec.model is not None and user_tower_of(rec.model) is not None
    before_metrics = rec.evaluate(ks=(5,))
    users = [data.users.external[u] for u in (4, 5, 6)]
    before = rec.recommend(users, k=5)
    # users with the same history but other features get other scores
    hist, rows = data.sequences, np.array([4, 4])
    scores = score_histories(rec.model, hist, rows, True, users=np.array([4, 9]))
    assert not torch.allclose(scores[0], scores[1])
    rec.save(tmp_path / "art")
    assert "users" in (tmp_path / "art" / "tower.json").read_text()
    loaded = seqrec.Recommender.load(tmp_path / "art")
    pd.testing.assert_frame_equal(loaded.recommend(users, k=5), before)
    assert loaded.evaluate(ks=(5,)) == before_metrics


def test_an_artifact_without_user_features_is_unchanged(tmp_path: Path, data: Dataset) -> None:
    rec = seqrec.Recommender("sasrec", TrainConfig(epochs=1, batch_size=32, device="cpu"), dim=16, max_len=10)
    rec.fit(data, progress=False)
    rec.save(tmp_path / "art")
    assert not (tmp_path / "art" / "tower.json").exists()
    assert rec.model is not None and user_tower_of(rec.model) is None
    assert not any(k.startswith("user_tower.") for k in rec.model.state_dict())


def test_cli_train_evaluate_recommend_with_user_features(tmp_path: Path, data: Dataset,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    args = _train_args(tmp_path, data, "--user-features", str(write_users(tmp_path, data)))
    assert main(args) == 0
    assert "2 of 79 users are not in the log" in capsys.readouterr().err
    out = tmp_path / "never"
    assert main(["evaluate", str(out), "--format", "json"]) == 0
    capsys.readouterr()
    (tmp_path / "who.txt").write_text("4\n5\n")
    assert main(["recommend", str(out), "--users", str(tmp_path / "who.txt"), "--k", "3", "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 6


def test_tune_trains_its_trials_with_the_user_features(tmp_path: Path, data: Dataset) -> None:
    pytest.importorskip("optuna")
    space = tmp_path / "space.toml"
    space.write_text("defaults = false\n[train.lr]\nlow = 1e-3\nhigh = 1e-2\n")
    args = _train_args(tmp_path, data, "--user-features", str(write_users(tmp_path, data)))
    args[0] = "tune"
    out = args.index("--out")
    args[out + 1] = str(tmp_path / "study")
    assert main([*args, "--space", str(space), "--trials", "1", "--save-best"]) == 0
    kept = seqrec.Recommender.load(tmp_path / "study" / "best-model")
    assert kept.model is not None and user_tower_of(kept.model) is not None  # the features its config names


def _train_args(tmp_path: Path, data: Dataset, *extra: str) -> list[str]:
    log = tmp_path / "log.csv"
    seqs = data.sequences
    rows = [(data.users.external[u], data.items.external[i - 1]) for u in range(len(data.users))
            for i in seqs.items[seqs.offsets[u]:seqs.offsets[u + 1]]]
    pd.DataFrame(rows, columns=["user_id", "item_id"]).to_csv(log, index=False)
    return ["train", "--data", str(log), "--model", "gru4rec", "--dim", "8", "--epochs", "1", "--device", "cpu",
            "--out", str(tmp_path / "never"), "--quiet", *extra]


@pytest.mark.parametrize(("content", "message"), [
    ("user_id,age\n1,20\n1,30\n", "user id '1' appears 2 times"),
    ('[{"user_id": "1", "age": 20}, {"user_id": "2"}]', "column 'age' has no value for user '2'"),
    ("user_id,age,job\n1,20,\n2,30,x\n", "column 'job' has no value"),
    (b"user_id,city\n1,K\xf6ln\n", "not UTF-8"),
    ("", "no such file"),
])
def test_bad_user_files_are_one_line_and_exit_2(tmp_path: Path, data: Dataset, capsys: pytest.CaptureFixture[str],
                                                content: str | bytes, message: str) -> None:
    path = tmp_path / ("users.json" if str(content).startswith("[") else "users.csv")
    if content:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(_train_args(tmp_path, data, "--user-features", str(path))) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("name", ["lstm", "gru4rec"])
def test_a_served_recurrent_state_equals_predict_next_for_the_unknown_user(tmp_path: Path, data: Dataset,
                                                                          name: str) -> None:
    from seqrec.serve.state import RecurrentStepper

    model = _with_users(name, data, tmp_path)
    stepper = RecurrentStepper(model)
    items = [3, 5, 7, 2]
    state = stepper.advance(stepper.from_history(items[:2]), items[2:])
    with torch.no_grad():
        want = model.predict_next(torch.tensor([items]))[0]
    torch.testing.assert_close(stepper.query(state), want, atol=1e-5, rtol=1e-5)
