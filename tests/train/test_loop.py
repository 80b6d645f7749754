"""Training loop: seeds, resume after an interruption, bf16, schedules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import seqrec
from seqrec.data.batch import SequenceBatch
from seqrec.datasets.synthetic import markov_dataset
from seqrec.devices import resolve_device
from seqrec.errors import SeqrecError
from seqrec.losses import LossConfig
from seqrec.models.registry import create
from seqrec.scoring import catalog_scores
from seqrec.train.loop import Trainer, fit, lr_factor, training_sequences
from seqrec.train.optim import make_optimizer, param_groups

MAX_LEN = 10
CFG = seqrec.TrainConfig(epochs=4, batch_size=32, lr=5e-3, seed=3, patience=10)


@pytest.fixture(scope="module")
def split() -> seqrec.Split:
    return seqrec.leave_one_out(markov_dataset(n_users=120, n_items=30, length=12, seed=2))


def _run(split: seqrec.Split, cfg: seqrec.TrainConfig = CFG, **kw: object) -> tuple[list[dict[str, float]], dict]:
    torch.manual_seed(0)
    model = create("sasrec", n_items=split.n_items, max_len=MAX_LEN, dim=16, n_heads=1)
    result = fit(model, split, cfg, progress=False, **kw)
    return result.history, model.state_dict()


def _strip_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in ("seconds", "eval_seconds")} for row in history]


def test_same_seed_same_metrics(split: seqrec.Split) -> None:
    a, _ = _run(split)
    b, _ = _run(split)
    assert _strip_time(a) == _strip_time(b)
    c, _ = _run(split, dataclasses.replace(CFG, seed=4))
    assert _strip_time(a) != _strip_time(c)


def test_resume_after_interruption_matches_uninterrupted(split: seqrec.Split, tmp_path: Path) -> None:
    full, full_state = _run(split, out_dir=tmp_path / "a")

    def stop_after_two(row: dict[str, float]) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(split, out_dir=tmp_path / "b", on_epoch=stop_after_two)
    resumed, resumed_state = _run(split, out_dir=tmp_path / "b", resume=True)
    assert _strip_time(resumed) == _strip_time(full)
    for k, v in full_state.items():
        torch.testing.assert_close(resumed_state[k], v, rtol=0, atol=0)


def test_bf16_autocast_trains(split: seqrec.Split) -> None:
    history, _ = _run(split, dataclasses.replace(CFG, bf16=True, epochs=3))
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["valid_NDCG@10"] > 0


@pytest.mark.parametrize("loss", ["sampled", "bce", "gbce"])
def test_other_losses_train(split: seqrec.Split, loss: str) -> None:
    history, _ = _run(split, dataclasses.replace(CFG, loss=LossConfig(name=loss, n_negatives=8), epochs=3))
    assert history[-1]["loss"] < history[0]["loss"]


def test_early_stopping_restores_best(split: seqrec.Split) -> None:
    cfg = dataclasses.replace(CFG, epochs=30, patience=1, lr=5e-2)
    history, _ = _run(split, cfg)
    assert len(history) < 30
    best = max(r["valid_NDCG@10"] for r in history)
    assert history[-1]["valid_NDCG@10"] <= best


def test_warmup_and_cosine_schedule() -> None:
    cfg = dataclasses.replace(CFG, warmup_steps=10, schedule="cosine")
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, cfg) == pytest.approx(0.5)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0)


def test_no_weight_decay_on_embeddings_and_norms() -> None:
    model = create("sasrec", n_items=20, max_len=5, dim=8)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    no_ids = {id(p) for p in no_decay["params"]}
    assert id(model.tower.id_emb.weight) in no_ids and id(model.pos_emb.weight) in no_ids
    assert id(model.final_norm.weight) in no_ids
    assert id(model.blocks[0].qkv.weight) in {id(p) for p in decay["params"]}


def test_fused_adamw_updates_like_the_plain_one() -> None:
    """The optimiser training uses (fused kernel on CPU) takes the same steps as the for-loop AdamW."""
    torch.manual_seed(0)
    a = create("sasrec", n_items=20, max_len=5, dim=8, dropout=0.0)
    b = create("sasrec", n_items=20, max_len=5, dim=8, dropout=0.0)
    b.load_state_dict(a.state_dict())
    cfg = dataclasses.replace(CFG, weight_decay=0.1)
    fused = make_optimizer(a, cfg)
    plain = torch.optim.AdamW(param_groups(b, cfg.weight_decay), lr=cfg.lr)
    assert fused.defaults["fused"] is True
    items = torch.randint(1, 21, (4, 5))
    for _ in range(3):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            scores = catalog_scores(model(SequenceBatch(items))[:, -1], model.item_table())
            scores.log_softmax(-1)[:, 1:].mean().backward()
            opt.step()
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, msg=name)


def test_bucketed_batches_give_the_same_loss_as_padded_ones(split: seqrec.Split) -> None:
    """The speed path (length buckets, trimmed padding) computes the same loss on the same rows."""
    from seqrec.data.batch import TrainBatches
    from seqrec.losses import LossInputs, NegativeSampler, compute_loss

    torch.manual_seed(0)
    model = create("sasrec", n_items=split.n_items, max_len=10, dim=16).eval()
    sampler = NegativeSampler(split.n_items, "uniform")
    plain = TrainBatches(split.train, 10, 16, bucket=False)
    fast = TrainBatches(split.train, 10, 16, bucket=True)
    rows = fast._batches(torch.Generator().manual_seed(0))[0]
    assert sorted(rows.tolist()) == sorted(set(rows.tolist()))
    full = plain.windows[rows]
    trimmed = full[:, full.shape[1] - int(fast.lengths[rows].max()):]
    assert trimmed.shape[1] <= full.shape[1]
    losses = []
    for w in (full, trimmed):
        items, targets = w[:, :-1], torch.where(w[:, :-1] > 0, w[:, 1:], 0)
        query, real = model(SequenceBatch(items)), targets > 0
        losses.append(compute_loss(LossInputs(query[real], model.item_table(), targets[real], LossConfig(), sampler)))
    torch.testing.assert_close(losses[0], losses[1])
    epoch_rows = torch.cat(fast._batches(torch.Generator().manual_seed(1)))
    assert sorted(epoch_rows.tolist()) == list(range(fast.windows.shape[0]))


@pytest.mark.parametrize("max_len", [4, 6, 9])
def test_cloze_rows_hold_the_same_events_with_and_without_buckets(max_len: int) -> None:
    """Each cloze row holds the row's most recent max_len events, whether or not a bucketed batch has
    trimmed the padding its rows share (the longest row then fills the batch's first column)."""
    from seqrec.data.batch import TrainBatches
    from seqrec.data.sequences import Sequences
    from seqrec.train.loop import cloze

    seqs = Sequences.from_lists([[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16]])
    expected = {tuple(s[-max_len:]) for s in ([1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16])}
    for bucket in (False, True):
        batches = TrainBatches(seqs, max_len, 1, sliding=False, bucket=bucket)  # one row a batch: no shared padding
        rows = set()
        for batch in batches.epoch(torch.Generator().manual_seed(0)):
            out = cloze(batch, Trainer._cloze_window(batch), 99, 0.0, torch.Generator(), max_len)
            events = torch.where(out.items == 99, out.targets, out.items)[0]  # the masked item back in place
            width = min(max_len, int((events > 0).sum())) if bucket else max_len  # trimmed, or all max_len
            assert out.items.shape[1] == width
            rows.add(tuple(events[events > 0].tolist()))
            assert int((out.targets > 0).sum()) == 1 and out.targets[0, -1] > 0  # nothing drawn: the last item
        assert rows == expected, (bucket, rows)


def test_target_weighting_gives_every_target_the_same_weight() -> None:
    """Bucketed batches: a batch's mean loss is scaled by its targets over the mean so far, so a
    target weighs the same in a batch of 40 as in one of 4,000 (random batches' objective)."""
    from seqrec.train.loop import TargetWeighting

    w = TargetWeighting()
    assert w.weight(100) == 1.0  # the first batch is the mean so far
    assert w.weight(300) == 300 / 200  # mean of (100, 300)
    gen = torch.Generator().manual_seed(0)
    sizes = torch.randint(20, 5000, (4000,), generator=gen).tolist()
    w = TargetWeighting()
    per_target = [w.weight(n) / n for n in sizes]
    mean = sum(sizes) / len(sizes)
    assert per_target[-1] == pytest.approx(1 / mean, rel=1e-12)
    # after a start, each target's weight stays within 6% of 1 / (mean targets per batch)
    assert max(abs(x * mean - 1) for x in per_target[1000:]) < 0.06


def test_bucketed_training_scales_each_batch_by_its_targets(split: seqrec.Split,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from seqrec.train import loop

    seen: list[int] = []
    weight = loop.TargetWeighting.weight

    def spy(self: loop.TargetWeighting, rows: int) -> float:
        seen.append(rows)
        return weight(self, rows)

    monkeypatch.setattr(loop.TargetWeighting, "weight", spy)
    _run(split, dataclasses.replace(CFG, epochs=1))
    assert len(seen) > 1 and len(set(seen)) > 1  # one call per step, with the batch's own targets
    seen.clear()
    _run(split, dataclasses.replace(CFG, epochs=1, bucket=False))
    assert seen == []  # random batches: the plain mean


def test_validation_on_a_user_subset_is_used_for_early_stopping(split: seqrec.Split) -> None:
    cfg = dataclasses.replace(CFG, epochs=2, valid_users=30)
    history, _ = _run(split, cfg)
    full, _ = _run(split, dataclasses.replace(cfg, valid_users=None))
    assert [r["loss"] for r in history] == [r["loss"] for r in full]  # training is unchanged
    assert [r["valid_NDCG@10"] for r in history] != [r["valid_NDCG@10"] for r in full]


def test_rest_valid_trains_on_validation_events_of_other_users_only(split: seqrec.Split) -> None:
    valid = split.valid.sample(30, seed=0)
    train = training_sequences(split, valid, rest_valid=True)
    held_out = set(valid.users.tolist())
    for i, u in enumerate(split.test.users.tolist()):
        if u in held_out:
            assert train.get(u).tolist() == split.train.get(u).tolist()
        else:  # everything but the test event, ending with the validation event
            assert train.get(u).tolist() == split.test.history.get(i).tolist()
            assert train.get(u)[-1] == split.valid.targets[i]
    assert training_sequences(split, valid, rest_valid=False) is split.train
    cfg = dataclasses.replace(CFG, epochs=1, valid_users=30)
    plain, _ = _run(split, cfg)
    rest, _ = _run(split, dataclasses.replace(cfg, train_rest_valid=True))
    assert plain[0]["loss"] != rest[0]["loss"]  # more targets: a different epoch


def test_training_windows_are_as_long_as_the_models_max_len(split: seqrec.Split,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """max_len belongs to the model: training reads it from the model's config."""
    from seqrec.train import loop

    widths: list[int] = []
    real_init = loop.TrainBatches.__init__

    def spy(self: loop.TrainBatches, train: object, max_len: int, *args: object, **kwargs: object) -> None:
        widths.append(max_len)
        real_init(self, train, max_len, *args, **kwargs)

    monkeypatch.setattr(loop.TrainBatches, "__init__", spy)
    model = create("sasrec", n_items=split.n_items, max_len=7, dim=16, n_heads=1)
    assert Trainer(model, split, CFG).max_len == 7
    fit(model, split, dataclasses.replace(CFG, epochs=1), progress=False)
    assert widths == [7]


@pytest.mark.parametrize(("clip", "calls"), [(0.0, False), (5.0, True)])
def test_a_grad_clip_of_zero_turns_clipping_off(split: seqrec.Split, monkeypatch: pytest.MonkeyPatch,
                                                clip: float, calls: bool) -> None:
    seen: list[float] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params: object, max_norm: float, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(max_norm)
        return real_clip(params, max_norm, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    _run(split, dataclasses.replace(CFG, epochs=1, grad_clip=clip))
    assert bool(seen) == calls and set(seen) <= {clip}


@pytest.mark.parametrize("name", ["sasrec", "lstm", "gru4rec", "hstu"])
def test_a_causal_model_cannot_train_with_the_cloze_objective(split: seqrec.Split, name: str) -> None:
    """It has no mask token: the masked inputs would be the padding id, which the model ignores."""
    params = {"hidden": 16} if name in ("lstm", "gru4rec") else {"n_heads": 1}
    model = create(name, n_items=split.n_items, max_len=MAX_LEN, dim=16, **params)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SeqrecError, match="cloze"):
        fit(model, split, dataclasses.replace(CFG, epochs=1, objective="cloze"), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before any step


def test_bert4rec_cannot_train_with_the_next_item_objective(split: seqrec.Split) -> None:
    """Bidirectional attention would let each position read the item it has to predict."""
    model = create("bert4rec", n_items=split.n_items, max_len=MAX_LEN, dim=16, n_heads=1)
    with pytest.raises(SeqrecError, match="next"):
        fit(model, split, dataclasses.replace(CFG, epochs=1, objective="next"), progress=False)
    history = fit(model, split, dataclasses.replace(CFG, epochs=1, objective="cloze"), progress=False).history
    assert len(history) == 1  # its own objective trains


def test_resolve_device_only_looks_up_the_device() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert resolve_device("cpu") == torch.device("cpu")
        want = "cuda" if torch.cuda.is_available() else "cpu"
        assert resolve_device("auto").type == want
        assert torch.get_num_threads() == 1  # no side effect on torch's settings
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(SeqrecError, match="unknown device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(SeqrecError, match="no CUDA"):
            resolve_device("cuda")
