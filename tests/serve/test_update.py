"""`seqrec update`: new users and items are appended (old ids keep their internal ids), the model grows and is
fine-tuned, the updated artifact recommends the new item, and a service reloads it in place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from seqrec.artifact import load_artifact
from seqrec.cli import main
from seqrec.recommender import Recommender
from seqrec.update import update_artifact

NEW_ITEM = 999
ADMIN_KEY = "admin-key-0123456789abcdef"


def new_events(path: Path) -> Path:
    """20 new users who each watch 105 then the new item 999 (twice), user 2 who adds 999, and one row whose
    user id is no integer (the artifact's ids are integers): skipped and counted."""
    rows: list[tuple[object, int, int]] = []
    for u in range(500, 520):
        rows += [(u, 105, 9000 + i) for i in (0, 2)] + [(u, NEW_ITEM, 9000 + i) for i in (1, 3)]
    rows += [(2, 105, 9100), (2, NEW_ITEM, 9101), ("not-a-number", 101, 9102)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def updated(tmp_path_factory: pytest.TempPathFactory, build_artifact: Callable[..., Path]) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("update")
    old = build_artifact(tmp / "old")
    update_artifact(old, new_events(tmp / "new.csv"), tmp / "new", epochs=5, lr=0.02)
    return old, tmp / "new"


def test_old_ids_keep_their_internal_ids_and_new_ones_follow(updated: tuple[Path, Path]) -> None:
    old, new = (load_artifact(p) for p in updated)
    for a, b in ((old.dataset.items, new.dataset.items), (old.dataset.users, new.dataset.users)):
        np.testing.assert_array_equal(b.external[: len(a)], a.external)
    assert new.dataset.items.external[len(old.dataset.items):].tolist() == [NEW_ITEM]
    assert new.dataset.users.external[len(old.dataset.users):].tolist() == list(range(500, 520))
    assert new.model.config.n_items == old.model.config.n_items + 1
    user2 = int(old.dataset.users.to_internal([2])[0])
    grown = new.dataset.sequences.get(user2)
    np.testing.assert_array_equal(grown[:-2], old.dataset.sequences.get(user2))
    assert grown[-2:].tolist() == new.dataset.items.to_internal([105, NEW_ITEM]).tolist()
    assert new.info["update"]["skipped_rows"] == 1 and new.info["update"]["events"] == 82


def test_the_updated_artifact_recommends_the_new_item(updated: tuple[Path, Path]) -> None:
    recs = Recommender.load(updated[1]).recommend_history([105], k=5)
    assert NEW_ITEM in recs["item_id"].tolist()


@pytest.mark.parametrize("model", ["sasrec", "bert4rec", "gru4rec", "popular"])
def test_growing_keeps_every_old_score(tmp_path: Path, build_artifact: Callable[..., Path], model: str) -> None:
    """With no fine-tuning, the old items score as before (BERT4Rec's mask token moves behind the new rows)."""
    old = build_artifact(tmp_path / "old", model=model)
    report = update_artifact(old, new_events(tmp_path / "new.csv"), tmp_path / "new", epochs=0)
    assert report.new_items == 1 and report.new_users == 20 and report.skipped_rows == 1
    before, after = load_artifact(old).model.eval(), load_artifact(tmp_path / "new").model.eval()
    history = torch.tensor([[2, 6, 3]])  # internal ids of the old catalog
    with torch.no_grad():
        a = before.predict_next(history) @ before.item_table().weight.T
        b = after.predict_next(history) @ after.item_table().weight.T
    if model == "popular":
        assert report.model_version != report.previous_version  # recounted: the new events count
    else:
        torch.testing.assert_close(b[:, : a.shape[1]], a, atol=1e-5, rtol=0)


def test_a_service_reloads_the_update_and_serves_the_new_item(updated: tuple[Path, Path],
                                                              make_client: Callable[..., TestClient]) -> None:
    old, new = updated
    client = make_client(artifact=old, admin_key=ADMIN_KEY)
    before = client.get("/healthz").json()["model_version"]
    assert client.get("/v1/users/500/recommendations").status_code == 404
    r = client.post("/v1/admin/reload", headers={"X-Admin-Key": ADMIN_KEY}, json={"artifact": str(new)})
    assert r.status_code == 200, r.text
    assert r.json()["previous_version"] == before != r.json()["model_version"]
    recs = client.post("/v1/recommendations", json={"history": [105], "k": 5})
    assert recs.status_code == 200 and NEW_ITEM in [i["item_id"] for i in recs.json()["items"]]
    assert recs.headers["X-Model-Version"] == r.json()["model_version"]
    assert client.get("/v1/users/500/recommendations").status_code == 200  # a new user, from the artifact


def test_cli(tmp_path: Path, build_artifact: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    old = build_artifact(tmp_path / "old")
    data = new_events(tmp_path / "new.csv")
    assert main(["update", str(old), "--data", str(data), "--out", str(tmp_path / "new"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert '"new_items": 1' in out and '"new_users": 20' in out and '"skipped_rows": 1' in out
    assert main(["update", str(old), "--data", str(data), "--out", str(tmp_path / "new")]) == 2  # exists
    assert "--force" in capsys.readouterr().err
    assert main(["update", str(old), "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x")]) == 2


def test_new_items_start_from_their_attributes(tmp_path: Path, build_artifact: Callable[..., Path]) -> None:
    """An artifact with an attribute tower: with --items, the new item's row comes from its attributes, so
    before any fine-tuning it scores as `seqrec recommend --new-items` scores an item never trained on."""
    from seqrec.artifact import Artifact, save_artifact
    from seqrec.data.features import ItemFeaturesConfig
    from seqrec.items.features import build_with_tower, prepare_tower
    from seqrec.items.new_items import read_new_items, scores_with_new_items

    plain = load_artifact(build_artifact(tmp_path / "plain"))
    data = plain.dataset
    features = tmp_path / "features.csv"
    features.write_text("item_id,genre,price\n" + "".join(f"{i},g{i % 3},{i % 7}\n" for i in range(100, 160)))
    inputs = prepare_tower(ItemFeaturesConfig(item_features=str(features), item_mode="id+features"), data.items)
    torch.manual_seed(0)
    model = build_with_tower("gru4rec", plain.model.config, inputs.spec, inputs.features, inputs.text).eval()
    old = Path(save_artifact(tmp_path / "old", Artifact("gru4rec", model, data)))
    new_rows = tmp_path / "new-items.csv"
    new_rows.write_text(f"item_id,genre,price\n{NEW_ITEM},g1,3\n")
    report = update_artifact(old, new_events(tmp_path / "new.csv"), tmp_path / "new", epochs=0, items_file=new_rows)
    assert report.items_from_features == 1
    history = [int(i) for i in data.items.to_internal([101, 105])]
    untrained = scores_with_new_items(model, history, read_new_items(new_rows, inputs.spec, data.items))[-1]
    grown = load_artifact(tmp_path / "new").model.eval()
    with torch.no_grad():
        scores = grown.predict_next(torch.tensor([history])) @ grown.item_table().weight.T
        table = grown.item_table()
        if table.bias is not None:
            scores = scores + table.bias
    torch.testing.assert_close(scores[0, -1], untrained, atol=1e-5, rtol=0)
