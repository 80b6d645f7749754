"""An artifact trained with user features is served with them: a user of the training data is scored with
their own feature row, as offline evaluation scores them (1e-5), and a user the model has no row for
(known only from posted events, or forgotten) with the learned "unknown" row."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.artifact import load_artifact, save_artifact
from seqrec.data.sequences import Sequences
from seqrec.eval.evaluate import score_histories
from seqrec.items.users import attach_user_tower, prepare_users
from seqrec.serve.service import Service, build_service
from seqrec.serve.settings import ServeSettings


def with_user_features(plain: Path, out: Path) -> Path:
    """``plain`` with a user tower over a small user file (age, gender; users 1 and 2 without a row)."""
    art = load_artifact(plain)
    users = [str(u) for u in art.dataset.users.external][2:]
    lines = ["user_id,age,gender"] + [f"{u},{18 + 7 * n % 50},{'FM'[n % 2]}" for n, u in enumerate(users)]
    (out.parent / "users.csv").write_text("\n".join(lines) + "\n")
    inputs = prepare_users(out.parent / "users.csv", art.dataset.users, report=False)
    torch.manual_seed(1)
    attach_user_tower(art.model, inputs.spec, inputs.tensors)
    with torch.no_grad():  # larger than the initial values, so that users differ clearly
        for p in art.model.user_tower.parameters():  # type: ignore[union-attr]
            p.normal_(0.0, 0.5)
    return save_artifact(out, art)


@pytest.fixture(params=["sasrec", "gru4rec"])
def service(request: pytest.FixtureRequest, build_artifact: Callable[..., Path], tmp_path: Path) -> Iterator[Service]:
    plain = build_artifact(tmp_path / "plain", model=request.param)
    path = with_user_features(plain, tmp_path / "featured")
    svc = build_service(ServeSettings(path, store=f"sqlite:///{tmp_path / 'e.db'}", api_key="k" * 16))
    yield svc
    svc.close()


def offline(service: Service, history: np.ndarray, user: int | None, k: int = 10) -> tuple[list[int], np.ndarray]:
    """Top-k internal items and scores of one history, as evaluation scores it (user None: no user row)."""
    model = service.index.model
    seqs = Sequences.from_lengths(np.array([len(history)]), history)
    users = None if user is None else np.array([user])
    scores = score_histories(model, seqs, np.arange(1), exclude_seen=True, users=users)[0]
    top = torch.topk(scores, k)
    return top.indices.tolist(), top.values.numpy()


def served(service: Service, user: str, k: int = 10) -> tuple[list[int], np.ndarray]:
    recs = service.submit_user(user, k).result(30)
    items = service.index.items
    return [items.internal(items.canonical(s.item_id)) for s in recs.items], np.array([s.score for s in recs.items])


def test_a_known_user_is_scored_with_their_features(service: Service) -> None:
    assert service.index.user_features
    differs = 0
    for user in ("1", "3", "7", "20"):  # user 1 has no row in the file: the unknown row, as offline gives it
        internal = service.index.users.internal(user)
        history = service.index.artifact_history(internal)
        items, scores = served(service, user)
        want_items, want_scores = offline(service, history, internal)
        assert items == want_items
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
        _, unknown_scores = offline(service, history, None)
        differs += not np.allclose(scores, unknown_scores, atol=1e-4)
    assert differs >= 3  # the features change the scores of users 3, 7 and 20


def test_users_without_a_feature_row_get_the_unknown_row(service: Service) -> None:
    from seqrec.serve.service import EventInput

    service.submit_events([EventInput("new-user", 105), EventInput("new-user", 110)]).result(30)
    history = np.array([service.index.items.internal("105"), service.index.items.internal("110")])
    items, scores = served(service, "new-user")
    assert items == offline(service, history, None)[0]
    np.testing.assert_allclose(scores, offline(service, history, None)[1], atol=1e-5)

    service.forget("3")  # forgotten: neither the training history nor the features are used
    service.submit_events([EventInput("3", 105)]).result(30)
    items, scores = served(service, "3")
    assert items == offline(service, history[:1], None)[0]
    np.testing.assert_allclose(scores, offline(service, history[:1], None)[1], atol=1e-5)
