"""Zero-shot evaluation on another catalog (``seqrec evaluate ARTIFACT --data OTHER --item-text ...``) and
items held out of training scored beside the trained ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import seqrec
from seqrec.cli import main
from seqrec.data.features import FeatureTensors, ItemFeaturesConfig
from seqrec.data.preprocess import Dataset, build_dataset
from seqrec.data.split import make_split
from seqrec.datasets.synthetic import markov_log
from seqrec.errors import SeqrecError
from seqrec.eval.evaluate import EvalConfig, evaluate
from seqrec.items.features import FeatureTower, prepare_tower
from seqrec.items.zero_shot import evaluate_other, move_to_catalog, other_catalog_inputs
from seqrec.train.config import TrainConfig

from .conftest import HashEncoder


def _log(prefix: str, seed: int) -> pd.DataFrame:
    frame = markov_log(n_users=60, n_items=20, length=8, seed=seed)
    return frame.assign(user=prefix + frame["user"].astype(str), item=prefix + frame["item"].astype(str))


def _files(folder: Path, data: Dataset, prefix: str) -> tuple[Path, Path]:
    """Text and attribute files of a catalog: the text and the attributes follow the item's number, so both
    catalogs share a vocabulary."""
    text, feats = folder / f"{prefix}text.csv", folder / f"{prefix}features.csv"
    ids = [str(v) for v in data.items.external]
    numbers = [int(i.removeprefix(prefix)) for i in ids]
    pd.DataFrame({"item_id": ids, "title": [f"thing {n % 5} of shelf {n % 3}" for n in numbers]}).to_csv(text,
                                                                                                         index=False)
    pd.DataFrame({"item_id": ids, "kind": [f"k{n % 4}" for n in numbers]}).to_csv(feats, index=False)
    return text, feats


@pytest.fixture
def catalogs(tmp_path: Path) -> tuple[Dataset, Dataset]:
    return build_dataset(_log("a", 1), name="a"), build_dataset(_log("b", 2), name="b")


def _text_model(tmp_path: Path, data: Dataset, mode: str = "text") -> seqrec.Recommender:
    text, feats = _files(tmp_path, data, "a")
    config = ItemFeaturesConfig(item_text=str(text) if "text" in mode else None,
                                item_features=str(feats) if "features" in mode else None, item_mode=mode)
    rec = seqrec.Recommender("sasrec", TrainConfig(epochs=2, batch_size=32, device="cpu"), dim=16, max_len=8)
    rec.tower_inputs = prepare_tower(config, data.items, HashEncoder(), tmp_path / "cache")
    rec.fit(data, progress=False)
    return rec


def test_moving_onto_its_own_catalog_changes_nothing(tmp_path: Path, catalogs: tuple[Dataset, Dataset]) -> None:
    a, _ = catalogs
    rec = _text_model(tmp_path, a, "id+text")
    assert rec.model is not None and rec.tower_inputs is not None
    moved = move_to_catalog(rec.model, a.items, a.items, rec.tower_inputs)
    test = make_split(a).test
    cfg = EvalConfig(ks=(5, 10))
    assert evaluate(moved, test, cfg) == evaluate(rec.model, test, cfg)


@pytest.mark.parametrize("mode", ["text", "features+text"])
def test_zero_shot_on_another_catalog(tmp_path: Path, catalogs: tuple[Dataset, Dataset], mode: str) -> None:
    a, b = catalogs
    rec = _text_model(tmp_path, a, mode)
    assert rec.model is not None and rec.dataset is not None
    text, feats = _files(tmp_path, b, "b")
    inputs = other_catalog_inputs(rec.model, b.items, str(text), str(feats) if "features" in mode else None,
                                  encoder=HashEncoder())
    moved = move_to_catalog(rec.model, rec.dataset.items, b.items, inputs)
    assert moved.item_table().weight.shape[0] == b.n_items + 1
    # the other catalog's vectors are the trained projection of its own text
    tower = rec.model.tower
    assert isinstance(tower, FeatureTower) and inputs is not None and inputs.text is not None
    rows = None
    if inputs.features is not None:
        num = inputs.features.num[1:] if inputs.features.num is not None else None
        rows = FeatureTensors([c[1:] for c in inputs.features.cat], num)
    want = tower.new_item_table(rows, inputs.text[1:])
    torch.testing.assert_close(moved.item_table().weight[1:], rec.model.similarity.items(want).weight)
    metrics = evaluate_other(rec.model, rec.dataset.items, b, inputs, (10,))
    assert 0.0 <= metrics["NDCG@10"] <= 1.0 and np.isfinite(metrics["HR@10"])


def test_held_out_items_score_minus_infinity_for_an_id_model(catalogs: tuple[Dataset, Dataset]) -> None:
    a, _ = catalogs
    rec = seqrec.Recommender("gru4rec", TrainConfig(epochs=1, batch_size=32, device="cpu"), dim=8, hidden=8)
    rec.fit(a, progress=False)
    assert rec.model is not None
    with pytest.raises(SeqrecError, match="embeds item ids only"):
        move_to_catalog(rec.model, a.items, a.items, None)
    fewer = type(a.items)(a.items.external[3:], 1)  # trained without the first three items
    small = move_to_catalog(rec.model, a.items, fewer, None, unscorable="exclude")
    back = move_to_catalog(small, fewer, a.items, None, unscorable="exclude")
    table = back.item_table()
    assert table.bias is not None and torch.isinf(table.bias[1:4]).all() and torch.isfinite(table.bias[4:]).all()


def _write_log(path: Path, frame: pd.DataFrame) -> Path:
    frame.rename(columns={"user": "user_id", "item": "item_id", "time": "timestamp"}).to_csv(path, index=False)
    return path


def test_cli_zero_shot_and_id_model_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_a, log_b = _write_log(tmp_path / "a.csv", _log("a", 1)), _write_log(tmp_path / "b.csv", _log("b", 2))
    a, b = build_dataset(_log("a", 1), name="a"), build_dataset(_log("b", 2), name="b")
    _, feats_a = _files(tmp_path, a, "a")
    _, feats_b = _files(tmp_path, b, "b")
    base = ["train", "--data", str(log_a), "--model", "sasrec", "--dim", "8", "--epochs", "1", "--max-len", "8",
            "--device", "cpu", "--quiet"]
    assert main([*base, "--item-features", str(feats_a), "--item-mode", "features", "--out",
                 str(tmp_path / "feat")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "feat"), "--data", str(log_b), "--item-features", str(feats_b),
                 "--format", "json", "--k", "5,10"]) == 0
    import json

    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) >= {"HR@5", "NDCG@10"}
    # a features model needs the other catalog's attributes
    assert main(["evaluate", str(tmp_path / "feat"), "--data", str(log_b)]) == 2
    assert "--item-features FILE" in capsys.readouterr().err
    # an id-only artifact refuses with one line
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "plain"), "--data", str(log_b), "--item-features", str(feats_b)]) == 2
    err = capsys.readouterr().err.strip()
    assert "embeds item ids only" in err and len(err.splitlines()) == 1
