"""Contracts every registered model must keep (DESIGN.md principle 7)."""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np
import pytest
import tomli_w
import torch

import seqrec
from seqrec.data.batch import SequenceBatch, eval_inputs
from seqrec.data.sequences import Sequences
from seqrec.datasets.synthetic import markov_dataset
from seqrec.errors import ArtifactError, SeqrecError
from seqrec.eval.evaluate import score_histories
from seqrec.models.base import SequenceModel
from seqrec.models.layers import Block, causal_window_mean, item_positions
from seqrec.models.registry import MODELS, create, make_config
from seqrec.scoring import catalog_scores

N_ITEMS, L = 40, 12
LEARNED = [name for name, (_, cls) in MODELS.items() if cls.trainable]
# the settings each model takes beyond n_items, max_len and dim (popular takes neither dim nor these)
EXTRA: dict[str, dict[str, int]] = {"lstm": {"hidden": 16}, "gru4rec": {"hidden": 16}, "sasrec": {"n_heads": 2},
                                    "bert4rec": {"n_heads": 2}, "hstu": {"n_heads": 2}}


def params(name: str, dim: int = 16, **override: object) -> dict[str, object]:
    """Keyword settings that ``name`` takes: the common size plus its own extras."""
    if name == "popular":
        return {}
    return {"dim": dim, **EXTRA[name], **override}


def _model(name: str) -> SequenceModel:
    torch.manual_seed(0)
    model = create(name, n_items=N_ITEMS, max_len=L, **params(name))
    return model.eval()


def forward(model: SequenceModel, items: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
    return model(SequenceBatch(items, times=times))


def _batch(seed: int = 0, pad: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, N_ITEMS + 1, (5, L), generator=g)
    items[:, :pad] = 0
    return items


@pytest.mark.parametrize("name", list(MODELS))
def test_shapes(name: str) -> None:
    model = _model(name)
    items = _batch()
    hidden = forward(model, items)
    table = model.item_table()
    dim = table.weight.shape[1]
    assert hidden.shape == (5, L, dim)
    assert table.weight.shape[0] == N_ITEMS + 1
    assert table.bias is None or table.bias.shape == (N_ITEMS + 1,)
    assert model.device == torch.device("cpu")
    query = model.predict_next(items)
    assert query.shape == (5, dim)
    scores = catalog_scores(query, table)
    assert scores.shape == (5, N_ITEMS + 1)
    assert torch.isinf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_predict_next_is_the_last_query_of_the_next_item_inputs(name: str) -> None:
    model = _model(name)
    items = _batch()
    with torch.no_grad():
        want = forward(model, model.next_inputs(items))[:, -1]
        torch.testing.assert_close(model.predict_next(items), want, rtol=0, atol=0)
    if model.objective == "next":
        assert torch.equal(model.next_inputs(items), items)


@pytest.mark.parametrize("name", [n for n in MODELS if MODELS[n][1].causal])
def test_causality(name: str) -> None:
    """Changing a future item never changes an earlier position's output."""
    model = _model(name)
    items = _batch(pad=0)
    changed = items.clone()
    changed[:, 7:] = (changed[:, 7:] % N_ITEMS) + 1
    with torch.no_grad():
        a, b = forward(model, items), forward(model, changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-5, rtol=1e-5)
    if name != "popular":
        assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("name", list(MODELS))
def test_padding_invariance(name: str) -> None:
    """Extra left padding changes nothing at the real positions or in the prediction."""
    model = _model(name)
    short = _batch(pad=4)[:, 2:]  # (5, L - 2) with 2 pads
    long = torch.cat([torch.zeros(5, 2, dtype=torch.long), short], dim=1)  # same items, 4 pads
    with torch.no_grad():
        a, b = forward(model, short), forward(model, long)
        torch.testing.assert_close(a[:, 2:], b[:, 4:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.predict_next(short), model.predict_next(long), atol=1e-5, rtol=1e-5)


def test_bidirectional_model_sees_the_future() -> None:
    model = _model("bert4rec")
    items = _batch(pad=0)
    changed = items.clone()
    changed[:, -1] = (changed[:, -1] % N_ITEMS) + 1
    with torch.no_grad():
        assert not torch.allclose(forward(model, items)[:, 0], forward(model, changed)[:, 0])


def test_hstu_time_bias_changes_output_only_when_times_differ() -> None:
    torch.manual_seed(0)
    model = create("hstu", n_items=N_ITEMS, max_len=L, dim=16, n_heads=2, use_time=True).eval()
    items = _batch(pad=0)
    with torch.no_grad():
        model.bias.time.normal_()
        plain = forward(model, items, torch.zeros(5, L))
        spaced = forward(model, items, torch.arange(L).float().repeat(5, 1) * 3600)
        assert torch.allclose(forward(model, items, torch.zeros(5, L)), plain)
        assert not torch.allclose(plain, spaced)
        assert not torch.allclose(model.predict_next(items, torch.zeros(5, L)),
                                  model.predict_next(items, torch.arange(L).float().repeat(5, 1) * 3600))
    without = _model("hstu")  # use_time=False (the default) ignores times
    with torch.no_grad():
        without.bias.time.normal_()
        torch.testing.assert_close(forward(without, items, torch.arange(L).float().repeat(5, 1) * 3600),
                                   forward(without, items))


def test_time_aware_hstu_trains_with_timestamps() -> None:
    data = markov_dataset(n_users=120, n_items=30, length=12, seed=4)
    assert data.sequences.times is not None
    cfg = seqrec.TrainConfig(epochs=2, batch_size=32, lr=5e-3, seed=0)
    rec = seqrec.Recommender("hstu", cfg, max_len=10, dim=16, use_time=True)
    result = rec.fit(data, progress=False)
    assert rec.model is not None and rec.model.bias.time.abs().sum() > 0  # the time bias learned
    assert result.history[-1]["valid_NDCG@10"] > 0


@pytest.fixture(scope="module")
def markov() -> tuple[seqrec.Dataset, seqrec.Split]:
    data = markov_dataset(n_users=300, n_items=50, length=16, seed=1)
    return data, seqrec.leave_one_out(data)


@pytest.mark.parametrize("name", LEARNED)
def test_seeded_tiny_fit_beats_popular_and_round_trips(name: str, markov, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data, split = markov
    # the cloze objective trains on the masked positions only: half of them, for a signal in 8 epochs
    cfg = seqrec.TrainConfig(epochs=8, batch_size=64, lr=5e-3, seed=0, patience=8,
                             mask_prob=0.5 if name == "bert4rec" else 0.2)
    pop = seqrec.Recommender("popular", cfg, max_len=15)
    pop.fit(data, split, progress=False)
    rec = seqrec.Recommender(name, cfg, max_len=15, **params(name, dim=32, dropout=0.1, **(
        {"hidden": 32} if name in ("lstm", "gru4rec") else {"n_heads": 1})))
    rec.fit(data, split, progress=False)
    ours, base = rec.evaluate(ks=(10,)), pop.evaluate(ks=(10,))
    assert ours["NDCG@10"] > base["NDCG@10"] + 0.05, (ours, base)
    rec.save(tmp_path / "art")
    loaded = seqrec.Recommender.load(tmp_path / "art")
    users = data.users.external[:20].tolist()
    a, b = rec.recommend(users, k=5), loaded.recommend(users, k=5)
    np.testing.assert_array_equal(a["item_id"].to_numpy(), b["item_id"].to_numpy())
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=0, atol=0)
    assert loaded.evaluate(ks=(10,)) == ours


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "hstu"])
def test_size_presets_build_and_take_a_training_step(name: str, size: str) -> None:
    """The larger presets (large, xl, xxl) take their step in benchmarks/presets.py."""
    from seqrec.models.layers import SIZES
    from seqrec.models.registry import build_model, make_config
    from seqrec.train.loop import fit

    torch.manual_seed(0)
    model = build_model(name, make_config(name, size=size, n_items=N_ITEMS, max_len=L))
    dim, n_layers, _ = SIZES[size]
    assert model.item_table().weight.shape == (N_ITEMS + 1, dim)
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    assert [len(m) for m in stacks] == [n_layers]
    split = seqrec.leave_one_out(markov_dataset(n_users=16, n_items=N_ITEMS, length=8, seed=0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, split, seqrec.TrainConfig(epochs=1, batch_size=8, device="cpu"), progress=False)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_hstu_cosine_scores_are_cosines_over_temperature_and_round_trip(markov, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data, split = markov
    cfg = seqrec.TrainConfig(epochs=6, batch_size=64, lr=5e-3, seed=0, patience=8)
    rec = seqrec.Recommender("hstu", cfg, max_len=15, dim=32, n_heads=1, dropout=0.1, similarity="cosine",
                             temperature=0.1)
    rec.fit(data, split, progress=False)
    model = rec.model
    assert model is not None
    with torch.no_grad():
        emb = model.item_table().weight
        assert torch.allclose(emb[1:].norm(dim=1), torch.ones(emb.shape[0] - 1))  # unit rows
        scores = catalog_scores(model.predict_next(_batch()), model.item_table())
    assert scores[:, 1:].abs().max() <= 1 / 0.1 + 1e-4  # |cos| / temperature
    pop = seqrec.Recommender("popular", cfg, max_len=15)
    pop.fit(data, split, progress=False)
    assert rec.evaluate(ks=(10,))["NDCG@10"] > pop.evaluate(ks=(10,))["NDCG@10"] + 0.05
    rec.save(tmp_path / "art")
    loaded = seqrec.Recommender.load(tmp_path / "art")
    assert loaded.model is not None
    assert loaded.model.config.similarity == "cosine" and loaded.model.config.temperature == 0.1
    assert loaded.evaluate(ks=(10,)) == rec.evaluate(ks=(10,))


def test_positions_count_from_the_first_or_back_from_the_last_item() -> None:
    items = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    assert item_positions(items, "start").tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert item_positions(items, "end").tolist() == [[0, 0, 2, 1, 0], [4, 3, 2, 1, 0]]
    with pytest.raises(SeqrecError, match="positions"):
        create("sasrec", n_items=N_ITEMS, positions="middle")


VARIANTS = [("sasrec", {"positions": "end"}), ("bert4rec", {"positions": "end"}), ("sasrec", {"original_norm": True}),
            ("sasrec", {"original_norm": True, "positions": "end"}), ("sasrec", {"lowpass": 0.5, "lowpass_window": 3}),
            ("sasrec", {"lowpass": 0.7, "lowpass_window": 4, "original_norm": True, "positions": "end"}),
            ("sasrec", {"lowpass": 0.3, "lowpass_window": 2, "norm_first": False}),
            ("bert4rec", {"scale_embeddings": False, "head": "none"})]


@pytest.mark.parametrize(("name", "variant"), VARIANTS)
def test_model_variants_keep_padding_invariance_and_causality(name: str, variant: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = create(name, n_items=N_ITEMS, max_len=L, dim=16, n_heads=2, **variant).eval()
    short = _batch(pad=4)[:, 2:]
    long = torch.cat([torch.zeros(5, 2, dtype=torch.long), short], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(forward(model, short)[:, 2:], forward(model, long)[:, 4:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.predict_next(short), model.predict_next(long), atol=1e-5, rtol=1e-5)
        torch.manual_seed(0)
        plain = create(name, n_items=N_ITEMS, max_len=L, dim=16, n_heads=2).eval()
        assert not torch.allclose(model.predict_next(short), plain.predict_next(short))  # same weights, another model
    if model.causal:
        items = _batch(pad=0)
        changed = items.clone()
        changed[:, 7:] = (changed[:, 7:] % N_ITEMS) + 1
        with torch.no_grad():
            torch.testing.assert_close(forward(model, items)[:, :7], forward(model, changed)[:, :7], atol=1e-5,
                                       rtol=1e-5)


def test_causal_window_mean_averages_the_last_real_items_only() -> None:
    x = torch.randn(2, 6, 3)
    real = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool).unsqueeze(-1)
    got = causal_window_mean(x, real, window=3)
    for b in range(2):
        for t in range(6):
            seen = [s for s in range(max(0, t - 2), t + 1) if real[b, s, 0]]
            want = x[b, seen].mean(0) if seen else torch.zeros(3)
            torch.testing.assert_close(got[b, t], want)
    torch.testing.assert_close(causal_window_mean(x, real, window=50)[1, -1], x[1].mean(0))  # wider than L: all


def test_lowpass_sasrec_trains_and_round_trips(markov, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data, split = markov
    cfg = seqrec.TrainConfig(epochs=3, batch_size=64, lr=5e-3, seed=0, patience=3)
    rec = seqrec.Recommender("sasrec", cfg, max_len=15, dim=32, n_heads=1, lowpass=0.5, lowpass_window=4)
    rec.fit(data, split, progress=False)
    assert rec.model is not None
    betas = [block.lowpass.beta for block in rec.model.blocks]  # type: ignore[union-attr]
    assert all(beta.shape == (1, 1, 32) for beta in betas)
    rec.save(tmp_path / "art")
    loaded = seqrec.Recommender.load(tmp_path / "art")
    assert loaded.model is not None and loaded.model.config.lowpass == 0.5
    assert loaded.evaluate(ks=(10,)) == rec.evaluate(ks=(10,))
    with pytest.raises(SeqrecError, match="lowpass"):
        create("sasrec", n_items=N_ITEMS, lowpass=1.5)


def test_bert4rec_plain_embedding_sum_and_no_head_train_and_round_trip(markov, tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    plain = create("bert4rec", n_items=N_ITEMS, max_len=L, dim=16, n_heads=2, scale_embeddings=False, head="none")
    assert isinstance(plain.head, torch.nn.Identity)  # type: ignore[attr-defined]
    assert not any(".head." in name or name.startswith("head.") for name, _ in plain.named_parameters())
    items = _batch(pad=2)
    captured: list[torch.Tensor] = []
    plain.norm.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))  # type: ignore[union-attr,operator]
    with torch.no_grad():  # no scaling: the embedding LayerNorm reads the item vector plus the position
        plain.eval()(SequenceBatch(items))
        want = plain.tower(items) + plain.pos_emb(item_positions(items, "start"))  # type: ignore[operator]
    torch.testing.assert_close(captured[0], want)
    data, split = markov
    cfg = seqrec.TrainConfig(epochs=2, batch_size=64, lr=5e-3, seed=0)
    rec = seqrec.Recommender("bert4rec", cfg, max_len=15, dim=16, scale_embeddings=False, head="none")
    rec.fit(data, split, progress=False)
    rec.save(tmp_path / "art")
    loaded = seqrec.Recommender.load(tmp_path / "art")
    assert loaded.model is not None and loaded.model.config.head == "none"
    assert loaded.model.config.scale_embeddings is False
    assert loaded.evaluate(ks=(10,)) == rec.evaluate(ks=(10,))
    with pytest.raises(SeqrecError, match="head"):
        create("bert4rec", n_items=N_ITEMS, head="linear")


def test_a_bert4rec_artifact_written_before_the_added_settings_loads_as_it_was(  # type: ignore[no-untyped-def]
        markov, tmp_path, rewrite_manifest) -> None:
    data, split = markov
    rec = seqrec.Recommender("bert4rec", seqrec.TrainConfig(epochs=1, seed=0), max_len=15, dim=16)
    rec.fit(data, split, progress=False)
    art = rec.save(tmp_path / "art")
    config = tomllib.loads((art / "config.toml").read_text())
    del config["model"]["scale_embeddings"], config["model"]["head"]  # as an older seqrec wrote it
    (art / "config.toml").write_text(tomli_w.dumps(config))
    rewrite_manifest(art)
    loaded = seqrec.Recommender.load(art)
    assert loaded.model is not None and loaded.model.config.scale_embeddings and loaded.model.config.head == "mlp"
    assert loaded.evaluate(ks=(10,)) == rec.evaluate(ks=(10,))
    del config["model"]["norm_first"]  # a setting that is not marked added is still required
    (art / "config.toml").write_text(tomli_w.dumps(config))
    rewrite_manifest(art)
    with pytest.raises(ArtifactError, match="lacks norm_first"):
        seqrec.Recommender.load(art)


def test_original_sasrec_norm_normalises_queries_only_and_adds_residuals_to_normalised_inputs() -> None:
    torch.manual_seed(0)
    block = Block(8, 2, 8, 0.0, norm="sasrec").eval()
    x = torch.randn(3, 5, 8) * 4 + 1
    mask = torch.ones(3, 1, 5, 5, dtype=torch.bool).tril()
    w, b = block.qkv.weight, block.qkv.bias
    q_in = block.norm1(x)
    q = (q_in @ w[:8].T + b[:8]).view(3, 5, 2, 4).transpose(1, 2)
    k, v = ((x @ w[i:i + 8].T + b[i:i + 8]).view(3, 5, 2, 4).transpose(1, 2) for i in (8, 16))
    att = torch.softmax((q @ k.transpose(-1, -2)) / 2.0 + torch.where(mask, 0.0, float("-inf")), -1) @ v
    h = block.norm2(q_in + block.proj(att.transpose(1, 2).reshape(3, 5, 8)))
    with torch.no_grad():
        torch.testing.assert_close(block(x, mask), h + block.ff(h), atol=1e-5, rtol=1e-5)


NEURAL = [name for name in MODELS if name != "popular"]


@pytest.mark.parametrize("name", NEURAL)
def test_cosine_similarity_scores_every_neural_model_by_cosine_over_temperature(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, n_items=N_ITEMS, max_len=L, **params(name, similarity="cosine", temperature=0.2)).eval()
    items = _batch()
    with torch.no_grad():
        query, table = model.predict_next(items), model.item_table()
        assert torch.allclose(query.norm(dim=1), torch.full((5,), 1 / 0.2))  # unit query / temperature
        assert torch.allclose(table.weight[1:].norm(dim=1), torch.ones(N_ITEMS))  # unit item rows
        torch.testing.assert_close(forward(model, items).norm(dim=-1)[items > 0],
                                   torch.full((int((items > 0).sum()),), 1 / 0.2))
        raw = model.tower.table()  # before the similarity: the vectors the model learns
        want = query @ torch.nn.functional.normalize(raw.weight, dim=-1).T
        want = want if raw.bias is None else want + raw.bias
        scores = catalog_scores(query, table)
        torch.testing.assert_close(scores[:, 1:], want[:, 1:])
        if raw.bias is None:
            assert scores[:, 1:].abs().max() <= 1 / 0.2 + 1e-4  # |cos| / temperature
        history = Sequences.from_lists([[3, 4, 5], [7]])
        served = score_histories(model, history, np.arange(2), exclude_seen=False)
        inputs = eval_inputs(history, L, np.arange(2))  # the histories, left-padded to max_len
        torch.testing.assert_close(served, catalog_scores(model.predict_next(inputs), table), atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    dot = create(name, n_items=N_ITEMS, max_len=L, **params(name)).eval()
    with torch.no_grad():
        assert not torch.allclose(dot.predict_next(items), query)  # same weights: only the similarity differs


def test_a_setting_the_model_does_not_take_is_an_error_naming_it() -> None:
    with pytest.raises(SeqrecError, match="sasrec has no setting 'hidden'"):
        create("sasrec", n_items=N_ITEMS, max_len=L, dim=16, hidden=16, n_heads=2)
    with pytest.raises(SeqrecError, match="n_heads"):
        make_config("lstm", n_items=N_ITEMS, n_heads=2)
    with pytest.raises(SeqrecError, match="dim"):
        create("popular", n_items=N_ITEMS, dim=16)
    with pytest.raises(SeqrecError, match="l2_norm"):
        create("hstu", n_items=N_ITEMS, l2_norm=True)  # now similarity="cosine"
    with pytest.raises(SeqrecError, match="divisible"):
        create("sasrec", n_items=N_ITEMS, dim=10, n_heads=4)
    with pytest.raises(SeqrecError, match="hidden"):
        seqrec.Recommender("bert4rec", hidden=16)  # checked when the recommender is made, not after reading data
    assert create("popular", n_items=N_ITEMS, max_len=L).config.max_len == L


def test_max_len_is_a_model_setting_and_limits_what_the_model_reads() -> None:
    model = _model("sasrec")
    assert model.config.max_len == L
    long = torch.cat([_batch(seed=1, pad=0), _batch(pad=0)], dim=1)  # (5, 2 L): only the last L are read
    with torch.no_grad():
        torch.testing.assert_close(model.predict_next(long), model.predict_next(long[:, -L:]), rtol=0, atol=0)
    assert seqrec.Recommender("sasrec", max_len=7, dim=16).max_len == 7
    assert "max_len" not in {f.name for f in dataclasses.fields(seqrec.TrainConfig)}
