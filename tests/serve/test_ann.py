"""Approximate top-K (FAISS): recall against exact scoring, exclusions, and the served path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("faiss")

from seqrec.artifact import Artifact, load_artifact, save_artifact
from seqrec.cli import build_parser
from seqrec.data.preprocess import build_dataset
from seqrec.errors import SeqrecError
from seqrec.models.registry import create
from seqrec.serve.ann import (
    HNSW_LARGE,
    HNSW_SMALL,
    ApproxIndex,
    build_index,
    cache_dir,
    choose_kind,
    default_params,
)
from seqrec.serve.index import ScoreRequest, ServedModel, model_version
from seqrec.serve.settings import ServeSettings, settings_from_args

N_ITEMS, DIM, N_QUERIES, K = 20_000, 32, 300, 10


def synthetic_catalog(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N + 1, D) clustered item vectors (row 0 padding), (N + 1,) bias, (Q, D) queries near the clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, DIM)).astype(np.float32)
    items = centres[rng.integers(0, 200, N_ITEMS)] + 0.5 * rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    weight = np.vstack([np.zeros((1, DIM), np.float32), items]).astype(np.float32)
    bias = np.concatenate([[0.0], 0.3 * rng.normal(size=N_ITEMS)]).astype(np.float32)
    queries = centres[rng.integers(0, 200, N_QUERIES)] + rng.normal(size=(N_QUERIES, DIM)).astype(np.float32)
    return weight, bias, queries.astype(np.float32)


def exact_top(weight: np.ndarray, bias: np.ndarray | None, queries: np.ndarray, k: int,
              excluded: list[np.ndarray] | None = None) -> np.ndarray:
    scores = queries @ weight.T + (0.0 if bias is None else bias)
    scores[:, 0] = -np.inf
    for row, ex in enumerate(excluded or []):
        scores[row, ex] = -np.inf
    return np.argsort(-scores, axis=1)[:, :k]


def recall(approx: list[np.ndarray], exact: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, e)) / len(e) for a, e in zip(approx, exact, strict=True)]))


@pytest.fixture(scope="module")
def catalog() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return synthetic_catalog()


@pytest.fixture(scope="module")
def hnsw(catalog: tuple[np.ndarray, np.ndarray, np.ndarray]) -> ApproxIndex:
    """The settings --index auto uses for catalogs of 100k items and more, here on a small table."""
    weight, bias, _ = catalog
    return ApproxIndex(weight, bias, "hnsw", **HNSW_LARGE)


@pytest.mark.parametrize("kind", ["hnsw", "pq"])
def test_recall_at_10_vs_exact(catalog: tuple[np.ndarray, np.ndarray, np.ndarray], kind: str,
                               request: pytest.FixtureRequest) -> None:
    """The graph (below 100k items) and the PQ scan (from 100k) --index auto builds, here on the 20k table."""
    weight, bias, queries = catalog
    index: ApproxIndex = request.getfixturevalue(kind)
    found = index.search(queries, K, [np.zeros(0, np.int64)] * len(queries))
    assert all(len(items) == K for items in found.items)
    assert recall(found.items, exact_top(weight, bias, queries, K)) >= 0.99
    # returned scores are the exact scores of the returned items, best first
    for row in (0, 3):
        items = found.items[row]
        np.testing.assert_allclose(found.scores[row], weight[items] @ queries[row] + bias[items], rtol=1e-5,
                                   atol=1e-5)
        assert np.all(np.diff(found.scores[row]) <= 0)


def test_bias_is_folded_in(catalog: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """A large bias on a few items must pull them to the top although their vectors are average."""
    weight, bias, queries = catalog
    weight, bias = weight[:5001], bias[:5001].copy()  # a smaller catalog: builds in a second
    boosted = np.array([5, 50, 500])
    bias[boosted] = 200.0  # far above any q.v here (about 30)
    index = ApproxIndex(weight, bias, "hnsw", **HNSW_LARGE)
    found = index.search(queries[:20], 3, [np.zeros(0, np.int64)] * 20)
    for items in found.items:
        assert set(items.tolist()) == set(boosted.tolist())


def test_no_bias_table(catalog: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    weight, _, queries = catalog
    weight = weight[:5001]
    index = ApproxIndex(weight, None, "hnsw", **HNSW_LARGE)
    found = index.search(queries, K, [np.zeros(0, np.int64)] * len(queries))
    assert recall(found.items, exact_top(weight, None, queries, K)) >= 0.99


def test_exclusions_never_leave_fewer_than_k(catalog: tuple[np.ndarray, np.ndarray, np.ndarray],
                                              hnsw: ApproxIndex) -> None:
    weight, bias, queries = catalog
    q = queries[:50]
    # exclude each row's exact top 300 (and padding): the search must dig past all of them
    excluded = [np.concatenate([[0], top]) for top in exact_top(weight, bias, q, 300)]
    hnsw.fallbacks = 0
    found = hnsw.search(q, K, excluded)
    for items, ex in zip(found.items, excluded, strict=True):
        assert len(items) == K
        assert not np.isin(items, ex).any()
        assert 0 not in items
    assert hnsw.fallbacks == 0  # the over-fetch itself found them, not the exact rescoring
    assert recall(found.items, exact_top(weight, bias, q, K, excluded)) >= 0.95


def test_everything_but_a_few_excluded_falls_back_to_exact() -> None:
    rng = np.random.default_rng(1)
    weight = np.vstack([np.zeros((1, 8)), rng.normal(size=(500, 8))]).astype(np.float32)
    index = ApproxIndex(weight, None, "hnsw")
    excluded = np.arange(1, 497)  # 4 items remain
    found = index.search(rng.normal(size=(2, 8)).astype(np.float32), 10, [excluded, excluded])
    for items in found.items:
        assert sorted(items.tolist()) == [497, 498, 499, 500]


@pytest.fixture(scope="module")
def ivfpq(catalog: tuple[np.ndarray, np.ndarray, np.ndarray]) -> ApproxIndex:
    weight, bias, _ = catalog
    return ApproxIndex(weight[:5001], bias[:5001], "ivfpq")


def test_ivfpq_recall(catalog: tuple[np.ndarray, np.ndarray, np.ndarray], ivfpq: ApproxIndex) -> None:
    weight, bias, queries = catalog
    weight, bias = weight[:5001], bias[:5001]
    found = ivfpq.search(queries, K, [np.zeros(0, np.int64)] * len(queries))
    assert all(len(items) == K for items in found.items)
    assert recall(found.items, exact_top(weight, bias, queries, K)) >= 0.95


def test_ivfpq_nprobe_is_a_search_setting(catalog: tuple[np.ndarray, np.ndarray, np.ndarray],
                                         ivfpq: ApproxIndex, hnsw: ApproxIndex) -> None:
    weight, bias, queries = catalog
    weight, bias = weight[:5001], bias[:5001]
    none = [np.zeros(0, np.int64)] * len(queries)
    truth = exact_top(weight, bias, queries, K)
    ivfpq.set_search(nprobe=1)
    narrow = recall(ivfpq.search(queries, K, none).items, truth)
    ivfpq.set_search(nprobe=ivfpq.n_list)  # every list: only the PQ ranking before re-ranking is left
    wide = recall(ivfpq.search(queries, K, none).items, truth)
    ivfpq.set_search(nprobe=default_params(5000, "ivfpq")["nprobe"])
    assert wide > narrow
    with pytest.raises(SeqrecError, match="nprobe"):
        hnsw.set_search(nprobe=4)


@pytest.fixture(scope="module")
def pq(catalog: tuple[np.ndarray, np.ndarray, np.ndarray]) -> ApproxIndex:
    """The flat 4-bit PQ scan --index auto uses from 100k items, here on the 20k-item table."""
    weight, bias, _ = catalog
    return ApproxIndex(weight, bias, "pq")


def test_pq_refine_factor_is_a_search_setting(catalog: tuple[np.ndarray, np.ndarray, np.ndarray],
                                              pq: ApproxIndex, hnsw: ApproxIndex) -> None:
    """Fewer candidates re-ranked, lower recall; the exclusions still hold at the narrowest setting."""
    weight, bias, queries = catalog
    excluded = [np.concatenate([[0], top]) for top in exact_top(weight, bias, queries, 5)]
    truth = exact_top(weight, bias, queries, K, excluded)
    pq.fallbacks = 0
    pq.set_search(refine_factor=1)
    narrow = pq.search(queries, K, excluded)
    pq.set_search(refine_factor=default_params(N_ITEMS, "pq")["refine_factor"])
    wide = pq.search(queries, K, excluded)
    assert pq.fallbacks == 0  # both went through the index
    assert recall(wide.items, truth) > recall(narrow.items, truth)
    assert recall(wide.items, truth) >= 0.98
    for items, ex in zip(narrow.items, excluded, strict=True):
        assert len(items) == K and not np.isin(items, ex).any()
    with pytest.raises(SeqrecError, match="refine_factor"):
        hnsw.set_search(refine_factor=4)


def test_a_row_excluding_much_of_the_catalog_is_scored_exactly(
        catalog: tuple[np.ndarray, np.ndarray, np.ndarray], pq: ApproxIndex) -> None:
    """A user who has seen thousands of items would make the index propose a large part of the catalog: that
    row is scored exactly instead, the other rows of the batch still go through the index."""
    weight, bias, queries = catalog
    q = queries[:3]
    heavy = np.concatenate([[0], exact_top(weight, bias, q[1:2], 3000)[0]])
    excluded = [np.zeros(0, np.int64), heavy, np.array([0, 7, 9])]
    pq.fallbacks = 0
    found = pq.search(q, K, excluded)
    assert pq.fallbacks == 1
    np.testing.assert_array_equal(found.items[1], exact_top(weight, bias, q[1:2], K, [heavy])[0])
    row = found.items[1]
    np.testing.assert_allclose(found.scores[1], weight[row] @ q[1] + bias[row], rtol=1e-5, atol=1e-5)
    for items, ex in zip(found.items, excluded, strict=True):
        assert len(items) == K and not np.isin(items, ex).any()


def test_pq_takes_one_dimension_per_code_below_128_folded_dimensions(pq: ApproxIndex) -> None:
    """A 256-wide table (257 folded) pads to 260 columns: 130 sub-quantisers of two dimensions each; a narrower
    one keeps one dimension per code, up to 127 folded dimensions (padded to an even 128)."""
    assert pq.dim % 2 == 0 and pq.dim == pq.faiss_index.M  # the 32-wide catalog: one dimension per 4-bit code
    rng = np.random.default_rng(2)
    narrow = np.vstack([np.zeros((1, 126)), rng.normal(size=(3000, 126))]).astype(np.float32)
    index = ApproxIndex(narrow, None, "pq")  # 126 + 1 folded
    assert (index.dim, index.faiss_index.M) == (128, 128)
    weight = np.vstack([np.zeros((1, 256)), rng.normal(size=(3000, 256))]).astype(np.float32)
    index = ApproxIndex(weight, None, "pq")
    assert (index.dim, index.faiss_index.M) == (260, 130)
    queries = rng.normal(size=(20, 256)).astype(np.float32)
    found = index.search(queries, K, [np.zeros(0, np.int64)] * 20)
    assert recall(found.items, exact_top(weight, None, queries, K)) >= 0.95


def test_defaults_by_catalog_size() -> None:
    """--index approx|auto builds with default_params: more links and a wider search below 100k items."""
    assert default_params(20_000, "hnsw") == HNSW_SMALL
    assert default_params(1_000_000, "hnsw") == HNSW_LARGE
    assert default_params(10_000_000, "ivfpq")["n_list"] == int(4 * 10_000_000 ** 0.5)
    rng = np.random.default_rng(0)
    built = build_index(rng.normal(size=(301, 8)).astype(np.float32), None, "approx")
    assert built is not None and built.kind == "hnsw"
    assert built.ef_search == HNSW_SMALL["ef_search"]
    assert built.faiss_index.hnsw.efConstruction == HNSW_SMALL["ef_construction"]


def test_choose_kind_by_catalog_size() -> None:
    assert choose_kind(10_000, "exact") == "exact"
    assert choose_kind(10_000, "auto") == "exact"
    assert choose_kind(10_000, "approx") == "hnsw"
    assert choose_kind(99_999, "approx") == "hnsw"
    assert choose_kind(100_000, "approx") == "pq"
    assert choose_kind(1_000_000, "auto") == "pq"
    assert choose_kind(4_999_999, "auto") == "pq"
    assert choose_kind(10_000_000, "auto") == "ivfpq"
    assert build_index(np.zeros((11, 4), np.float32), None, "auto") is None


@pytest.mark.parametrize("model", ["gru4rec", "sasrec"])
def test_served_approx_equals_exact_on_a_small_catalog(tmp_path: Path, build_artifact, model: str) -> None:  # type: ignore[no-untyped-def]
    """60 items: the graph search is exhaustive, so approx returns what exact returns, exclusions included."""
    art = load_artifact(build_artifact(tmp_path / model, model=model))
    exact = ServedModel(art, model_version(art))
    approx = ServedModel(art, model_version(art), "approx")
    assert exact.index_kind == "exact" and approx.index_kind == "hnsw"
    rng = np.random.default_rng(0)
    requests = [ScoreRequest(rng.integers(1, 61, size=n).astype(np.int64), 10, seen, np.array([7, 8], np.int64))
                for n, seen in [(3, True), (15, False), (40, True), (1, True)]]
    for a, e, r in zip(approx.score(requests), exact.score(requests), requests, strict=True):
        assert len(a.items) == 10
        np.testing.assert_array_equal(a.items, e.items)
        np.testing.assert_allclose(a.scores, e.scores, rtol=1e-4, atol=1e-4)
        assert not np.isin(a.items, r.banned).any()
        if r.exclude_seen:
            assert not np.isin(a.items, r.history).any()


def catalog_artifact(path: Path, n_items: int = 3000) -> Path:
    """An untrained SASRec artifact over ``n_items`` items (max_len 20), every item in the log."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, 31), 40)
    items = rng.integers(1, n_items + 1, size=len(users))
    frame = pd.DataFrame({"user": np.concatenate([users, np.full(n_items, 99)]),
                          "item": np.concatenate([items, np.arange(1, n_items + 1)]),
                          "time": np.arange(len(users) + n_items)})
    data = build_dataset(frame, name="catalog")
    torch.manual_seed(0)
    net = create("sasrec", n_items=data.n_items, max_len=20, dim=16, n_heads=2, n_layers=1)
    return Path(save_artifact(path, Artifact("sasrec", net.eval(), data)))


@pytest.mark.parametrize("mode", ["exact", "approx"])
def test_history_holding_the_top_results_still_gets_k(tmp_path: Path, mode: str) -> None:
    """A history that contains the model's own top 150 for its query: both modes return k unseen items.

    SASRec reads the last max_len (20) items, so putting the top items in front of the same 20 keeps the
    query; excluding the history then leaves exactly the exact ranking from place 151 or so on."""
    art = load_artifact(catalog_artifact(tmp_path / "art"))
    exact = ServedModel(art, model_version(art))
    served = ServedModel(art, model_version(art), mode)
    last = np.random.default_rng(1).choice(np.arange(1, 3001), size=20, replace=False).astype(np.int64)
    none = np.zeros(0, np.int64)
    ranking = exact.score([ScoreRequest(last, 400, False, none)])[0].items
    top = ranking[~np.isin(ranking, last)][:150]
    history = np.concatenate([top, last])
    expected = ranking[~np.isin(ranking, history)][:K]
    got = served.score([ScoreRequest(history, K, True, none)])[0]
    assert len(got.items) == K
    assert not np.isin(got.items, history).any()
    if mode == "exact":
        np.testing.assert_array_equal(got.items, expected)
    else:
        assert served.ann is not None and served.ann.fallbacks == 0  # over-fetched, not rescored exactly
        assert len(np.intersect1d(got.items, expected)) >= K - 1


def test_built_index_is_cached_by_table_and_settings(tmp_path: Path,
                                                     catalog: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    weight, bias, queries = catalog
    weight, bias = weight[:2001], bias[:2001]
    none = [np.zeros(0, np.int64)] * 20
    first = ApproxIndex(weight, bias, "hnsw", **HNSW_LARGE, cache_dir=tmp_path)
    assert not first.from_cache and first.cache_path is not None and first.cache_path.is_file()
    again = ApproxIndex(weight, bias, "hnsw", **HNSW_LARGE, cache_dir=tmp_path)
    assert again.from_cache
    for a, b in zip(first.search(queries[:20], K, none).items, again.search(queries[:20], K, none).items, strict=True):
        np.testing.assert_array_equal(a, b)
    other = ApproxIndex(weight, bias + 1.0, "hnsw", **HNSW_LARGE, cache_dir=tmp_path)  # another table
    wider = ApproxIndex(weight, bias, "hnsw", hnsw_m=16, cache_dir=tmp_path)  # other build settings
    assert not other.from_cache and not wider.from_cache
    assert len({first.cache_path, other.cache_path, wider.cache_path}) == 3
    first.cache_path.write_bytes(b"not an index")  # damaged: rebuilt and written again
    rebuilt = ApproxIndex(weight, bias, "hnsw", **HNSW_LARGE, cache_dir=tmp_path)
    assert not rebuilt.from_cache
    assert ApproxIndex(weight, bias, "hnsw", **HNSW_LARGE, cache_dir=tmp_path).from_cache


def test_cache_dir_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEQREC_ANN_CACHE", "off")
    assert cache_dir() is None
    monkeypatch.setenv("SEQREC_ANN_CACHE", str(tmp_path / "ann"))
    assert cache_dir() == tmp_path / "ann"
    monkeypatch.delenv("SEQREC_ANN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "seqrec" / "ann"


def test_build_index_takes_a_kind_name() -> None:
    """A model extending a served one is built with the served kind (hnsw), not a --index mode."""
    table = np.random.default_rng(0).normal(size=(101, 8)).astype(np.float32)
    built = build_index(table, None, "hnsw")
    assert built is not None and built.kind == "hnsw"


def test_serve_takes_an_index_kind(tmp_path: Path) -> None:
    """`seqrec serve --index ivfpq` (or hnsw) builds that index whatever the catalog size; other names are refused."""
    settings = settings_from_args(build_parser().parse_args(["serve", str(tmp_path), "--index", "ivfpq"]), {})
    assert settings.index == "ivfpq"
    with pytest.raises(SeqrecError, match="--index 'ivf'"):
        ServeSettings(tmp_path, index="ivf")
    table = np.random.default_rng(0).normal(size=(101, 8)).astype(np.float32)
    with pytest.raises(SeqrecError, match="at least 1,000 items"):  # too few to train its quantisers
        build_index(table, None, "ivfpq")
    settings = settings_from_args(build_parser().parse_args(["serve", str(tmp_path), "--index", "pq"]), {})
    built = build_index(table, None, settings.index)
    assert built is not None and built.kind == "pq"
    query = table[1:4] + 0.01
    np.testing.assert_array_equal(np.stack(built.search(query, 5, [np.zeros(0, np.int64)] * 3).items),
                                  exact_top(table, None, query, 5))


def test_pq_index_is_cached(tmp_path: Path, catalog: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    weight, bias, queries = catalog
    weight, bias = weight[:3001], bias[:3001]
    first = ApproxIndex(weight, bias, "pq", cache_dir=tmp_path)
    again = ApproxIndex(weight, bias, "pq", cache_dir=tmp_path)
    assert not first.from_cache and again.from_cache
    none = [np.zeros(0, np.int64)] * len(queries)
    for a, b in zip(first.search(queries, K, none).items, again.search(queries, K, none).items, strict=True):
        np.testing.assert_array_equal(a, b)
