"""Recurrent state per event: kept in the store, advanced by each post, used by recommendations, equal to
re-encoding the whole history (1e-5), and rebuilt when the model or the history's window changes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from seqrec.artifact import Artifact, load_artifact, save_artifact
from seqrec.data.sequences import Sequences
from seqrec.eval.evaluate import score_histories
from seqrec.serve.service import EventInput, Service, build_service
from seqrec.serve.settings import ServeSettings
from seqrec.serve.state import history_digest
from seqrec.serve.store import CachedState, Event

K = 10
MAX_LEN = 20  # the tiny artifacts' window (conftest.MAX_LEN)


def make_settings(artifact: Path, store: str, **overrides: Any) -> ServeSettings:
    return ServeSettings(artifact=artifact, store=store, **overrides)


@pytest.fixture(scope="module", params=["gru4rec", "lstm"])
def rnn_artifact(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 build_artifact: Callable[..., Path]) -> Path:
    return build_artifact(tmp_path_factory.mktemp("state-art") / request.param, model=request.param)


@pytest.fixture
def rnn_service(rnn_artifact: Path, store_url: str) -> Iterator[Service]:
    svc = build_service(make_settings(rnn_artifact, store_url))
    yield svc
    svc.close()


def post(service: Service, user: str, *items: int) -> None:
    service.submit_events([EventInput(user, i) for i in items]).result(timeout=30)


def count_encodings(service: Service, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of the model's encoder (what a recommendation scored from a state never calls)."""
    calls = [0]
    model = service.index.model
    original = model.predict_next

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "predict_next", counted)
    return calls


def assert_offline(service: Service, user: str, encodings: list[int] | None = None) -> None:
    """The served top-k equals full-ranking scores over the user's whole history, recomputed offline;
    with ``encodings`` (from count_encodings), serving it must not have called the encoder."""
    got = service.submit_user(user, K).result(timeout=30)
    if encodings is not None:
        assert encodings[0] == 0, "served by re-encoding the history"
    history, _ = service.user_history(user)
    ix = service.index
    full = score_histories(ix.model, Sequences.from_lists([history.tolist()]), np.zeros(1, dtype=np.int64),
                           exclude_seen=True)[0]
    want = torch.topk(full, K)
    np.testing.assert_allclose([s.score for s in got.items], want.values.numpy(), rtol=0, atol=1e-5)
    assert got.version == ix.version


def test_each_event_advances_the_state_and_recommendations_use_it(rnn_service: Service,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    encodings = count_encodings(rnn_service, monkeypatch)
    rng = np.random.default_rng(0)
    for n in range(1, MAX_LEN + 1):
        post(rnn_service, "fresh", int(rng.integers(100, 160)))
        encodings[0] = 0
        assert_offline(rnn_service, "fresh", encodings)  # scored from the stored state
        assert rnn_service.state_hits == n and rnn_service.state_misses == 0


def test_a_history_longer_than_the_window_is_reencoded(rnn_service: Service) -> None:
    post(rnn_service, "long", *range(100, 100 + MAX_LEN))
    assert_offline(rnn_service, "long")
    assert rnn_service.state_hits == 1
    post(rnn_service, "long", 150)  # MAX_LEN + 1 items: the model reads the last MAX_LEN, a state cannot slide
    assert_offline(rnn_service, "long")
    assert rnn_service.state_hits == 1 and rnn_service.state_misses == 1


def test_artifact_users_start_from_their_training_history(rnn_service: Service) -> None:
    ix = rnn_service.index
    user = next(u for u in ix.users.external if 0 < len(ix.artifact_history(ix.users.internal(str(u)))) < MAX_LEN - 2)
    assert_offline(rnn_service, str(user))  # no state yet: encoded
    assert rnn_service.state_misses == 1
    post(rnn_service, str(user), 101, 102)
    assert_offline(rnn_service, str(user))
    assert rnn_service.state_hits == 1


def test_unknown_items_leave_the_state_as_it_is(rnn_service: Service) -> None:
    post(rnn_service, "u", 101, 102)
    post(rnn_service, "u", 999999)  # unknown: stored, never scored
    assert_offline(rnn_service, "u")
    assert rnn_service.state_hits == 1


def test_history_cap_trimming_rebuilds_the_state(rnn_artifact: Path, tmp_path: Path) -> None:
    service = build_service(make_settings(rnn_artifact, f"sqlite:///{tmp_path / 'e.db'}", history_cap=4))
    try:
        for item in range(100, 110):  # the oldest posted events go: the state must not keep them
            post(service, "capped", item)
            assert_offline(service, "capped")
        assert service.user_history("capped")[0].tolist() == [service.index.items.internal(str(i))
                                                              for i in range(106, 110)]
        assert service.state_hits == 10
    finally:
        service.close()


def perturbed(artifact: Path, out: Path) -> Path:
    """The same artifact with other weights: the same id space, another model version."""
    loaded = load_artifact(artifact)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return Path(save_artifact(out, Artifact(loaded.model_name, loaded.model, loaded.dataset)))


def test_a_reload_makes_states_stale_until_the_next_event(rnn_service: Service, rnn_artifact: Path,
                                                          tmp_path: Path) -> None:
    post(rnn_service, "r", 101, 102, 103)
    assert_offline(rnn_service, "r")
    assert rnn_service.state_hits == 1
    old, new = rnn_service.reload(perturbed(rnn_artifact, tmp_path / "v2"))
    assert old != new
    assert_offline(rnn_service, "r")  # the stored state is the old model's: re-encoded with the new one
    assert rnn_service.state_misses == 1
    post(rnn_service, "r", 104)  # rebuilt from the history with the new model
    assert_offline(rnn_service, "r")
    assert rnn_service.state_hits == 2


def test_a_damaged_or_foreign_state_is_never_used(rnn_service: Service) -> None:
    post(rnn_service, "d", 101, 102)
    ix = rnn_service.index
    hist, _ = rnn_service.user_history("d")
    right = history_digest(hist)
    for bad in (CachedState(ix.version, len(hist), b"\0" * 16, b"\1" * 64),  # another history's
                CachedState(ix.version, len(hist), right, b"\1\2\3"),  # bytes that are no state of this model
                CachedState("gru4rec-other", len(hist), right, b"\1" * 64)):  # another model's
        # an event on an unknown item leaves the history as it is; the state is replaced by ``bad``
        rnn_service.store.append([Event("d", "999999", 0.0)], rnn_service.history_cap,
                                 lambda user, state, bad=bad: bad)
        assert rnn_service.store.user_state("d", 10, with_cache=True).cached == bad
        assert_offline(rnn_service, "d")
    assert rnn_service.state_hits == 0 and rnn_service.state_misses == 3


def test_forgetting_a_user_erases_their_state(rnn_service: Service) -> None:
    post(rnn_service, "f", 101, 102)
    assert rnn_service.store.user_state("f", 10, with_cache=True).cached is not None
    rnn_service.forget("f")
    assert rnn_service.store.user_state("f", 10, with_cache=True).cached is None


def test_attention_models_keep_no_state(tmp_path: Path, build_artifact: Callable[..., Path]) -> None:
    service = build_service(make_settings(build_artifact(tmp_path / "s", model="sasrec"),
                                          f"sqlite:///{tmp_path / 'e.db'}"))
    try:
        post(service, "a", 101, 102)
        assert_offline(service, "a")
        assert service.store.user_state("a", 10, with_cache=True).cached is None
        assert service.state_hits == service.state_misses == 0
    finally:
        service.close()


def test_cached_state_bytes_round_trip() -> None:
    state = CachedState("gru4rec-0123", 7, bytes(range(16)), b"\0\1\2\3")
    assert CachedState.from_bytes(state.to_bytes()) == state
    assert CachedState.from_bytes(b"\0") is None
    assert CachedState.from_bytes(state.to_bytes()[:12]) is None


def test_a_user_read_again_before_their_next_event_is_answered_from_the_result_cache(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    encodings = count_encodings(service, monkeypatch)
    first = service.submit_user("1", K).result(timeout=30)
    again = service.submit_user("1", K).result(timeout=30)
    assert again == first and service.cache_hits == 1 and encodings[0] == 1
    service.submit_user("1", K + 1).result(timeout=30)  # other options: scored
    assert service.cache_hits == 1
    post(service, "1", 101)  # another history: scored
    assert_offline(service, "1")
    assert service.cache_hits == 1


def test_the_result_cache_is_bounded_and_can_be_off(artifact_dir: Path, tmp_path: Path) -> None:
    svc = build_service(make_settings(artifact_dir, f"sqlite:///{tmp_path / 'e.db'}"))
    svc.result_cache = 3
    try:
        for user in range(1, 8):
            svc.submit_user(str(user), K).result(timeout=30)
        assert len(svc._results) == 3
        svc.submit_user("7", K).result(timeout=30)
        assert svc.cache_hits == 1
        svc.result_cache = 0
        svc.submit_user("7", K).result(timeout=30)
        assert svc.cache_hits == 1
    finally:
        svc.close()
