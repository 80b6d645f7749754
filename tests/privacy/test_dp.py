"""DP-SGD: the noise and epsilon match Opacus' accountant, each user's contribution is clipped, no user
contributes twice in a step, a resumed run continues the accountant exactly, and bad settings fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("opacus")
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from seqrec.data.split import leave_one_out
from seqrec.datasets.synthetic import markov_dataset
from seqrec.errors import SeqrecError
from seqrec.losses import LossConfig, NegativeSampler
from seqrec.models.registry import build_model, make_config
from seqrec.privacy import dp
from seqrec.train.config import PrivacyConfig, TrainConfig
from seqrec.train.loop import fit

N_USERS = 60


def small(model: str = "gru4rec") -> dict[str, int]:
    extra = {"hidden": 8} if model in ("lstm", "gru4rec") else {"n_heads": 1, "n_layers": 1}
    return {"max_len": 8, "dim": 8, **extra}


def setup(model: str = "gru4rec", **privacy: float) -> tuple[object, TrainConfig]:
    data = markov_dataset(n_users=N_USERS, n_items=20, length=10)
    split = leave_one_out(data)
    cfg = TrainConfig(epochs=2, lr=1e-2, privacy=PrivacyConfig(**{"epsilon": 4.0, "batch_users": 20, **privacy}),
                      device="cpu")
    torch.manual_seed(0)
    net = build_model(model, make_config(model, n_items=data.n_items, **small(model)))
    return (net, split), cfg


def test_noise_and_epsilon_match_the_accountant() -> None:
    cfg = TrainConfig(epochs=3, privacy=PrivacyConfig(epsilon=2.0, delta=1e-4, batch_users=100))
    plan = dp.plan(cfg, 1000)
    assert plan.sample_rate == pytest.approx(0.1) and plan.steps_per_epoch == 10
    assert plan.noise_multiplier == pytest.approx(
        get_noise_multiplier(target_epsilon=2.0, target_delta=1e-4, sample_rate=0.1, steps=30, accountant="rdp"))
    acc = dp.Accountant("rdp")
    ref = RDPAccountant()
    for _ in range(30):
        acc.step(plan.noise_multiplier, plan.sample_rate)
        ref.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
    assert acc.epsilon(1e-4) == pytest.approx(ref.get_epsilon(delta=1e-4))
    assert 1.9 < acc.epsilon(1e-4) <= 2.0 * 1.01  # calibrated to the target
    assert acc.history == [[plan.noise_multiplier, 0.1, 30]]


@pytest.mark.parametrize("model", ["lstm", "gru4rec", "sasrec", "hstu"])
def test_training_reaches_epsilon_and_records_it(model: str) -> None:
    (net, split), cfg = setup(model)
    rows: list[dict[str, float]] = []
    result = fit(net, split, cfg, progress=False, on_epoch=rows.append)  # type: ignore[arg-type]
    eps = [r["epsilon"] for r in rows]
    assert len(eps) == 2 and 0 < eps[0] < eps[1] <= 4.0 * 1.01
    plan = dp.plan(cfg, N_USERS)
    ref = RDPAccountant()
    for _ in range(2 * plan.steps_per_epoch):
        ref.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
    assert result.privacy["epsilon"] == pytest.approx(ref.get_epsilon(delta=plan.delta))
    assert result.privacy["epsilon"] == pytest.approx(eps[-1])


def test_each_users_contribution_is_clipped() -> None:
    (net, split), _ = setup()
    windows = dp.UserWindows(split.train, 8, True)  # type: ignore[attr-defined]
    params = [p for p in net.parameters() if p.requires_grad]  # type: ignore[attr-defined]
    sampler = NegativeSampler(20, "uniform")
    gen = torch.Generator().manual_seed(0)
    norms = []
    for clip in (1e-3, 0.5, 1e6):
        for u in range(10):
            batch = windows.batch(u)
            assert batch is not None
            grads, raw, _ = dp.user_gradient(net, batch, params, LossConfig(), sampler, gen, clip)  # type: ignore[arg-type]
            norm = float(torch.sqrt(sum((g ** 2).sum() for g in grads)))  # type: ignore[arg-type]
            assert norm <= clip * (1 + 1e-5)
            assert norm == pytest.approx(min(raw, clip), rel=1e-4)
            norms.append(raw)
    assert min(norms) > 1e-3  # the small clip did bind


def test_a_user_is_one_record_and_never_twice_in_a_step() -> None:
    (net, split), _ = setup()
    windows = dp.UserWindows(split.train, 3, True)  # type: ignore[attr-defined]
    # a user's windows all belong to that user, and together hold each of their targets once
    for u in range(N_USERS):
        batch = windows.batch(u)
        assert batch is not None and batch.targets is not None
        assert int((batch.targets > 0).sum()) == len(split.train.get(u)) - 1  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(1)
    sizes = []
    for _ in range(200):
        users = dp.poisson_users(N_USERS, 0.25, gen)
        assert len(np.unique(users)) == len(users)
        sizes.append(len(users))
    assert abs(np.mean(sizes) - 15) < 1.0  # Poisson sampling: N * q expected
    with pytest.raises(AssertionError, match="twice"):
        (_, cfg) = setup()
        dp.private_step(net, windows, np.array([1, 1]), list(net.parameters()), cfg,  # type: ignore[attr-defined]
                        dp.plan(cfg, N_USERS), NegativeSampler(20, "uniform"), gen, gen)


def test_one_users_gradient_is_bounded_in_the_noised_sum() -> None:
    """Adding or removing one user moves the pre-noise sum by at most the clip norm."""
    (net, split), cfg = setup(clip=0.1)
    params = [p for p in net.parameters() if p.requires_grad]  # type: ignore[attr-defined]
    windows = dp.UserWindows(split.train, 8, True)  # type: ignore[attr-defined]
    plan = dp.Plan(N_USERS, 0.5, 2, 0.0, 1e-3)  # no noise: the sum itself

    def step(users: list[int]) -> torch.Tensor:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        dp.private_step(net, windows, np.array(users), params, cfg, plan, NegativeSampler(20, "uniform"), g, g)  # type: ignore[arg-type]
        return torch.cat([p.grad.flatten() for p in params]) * plan.sample_rate * plan.n_users  # type: ignore[union-attr]

    net.eval()  # type: ignore[attr-defined]
    diff = step([0, 1, 2, 3]) - step([0, 1, 3])
    assert float(diff.norm()) <= 0.1 * (1 + 1e-4)


def test_resume_continues_the_accountant_exactly(tmp_path: Path) -> None:
    (net, split), cfg = setup()
    straight: list[dict[str, float]] = []
    fit(net, split, cfg, tmp_path / "a", progress=False, on_epoch=straight.append)  # type: ignore[arg-type]

    class Killed(Exception):
        pass

    def die(row: dict[str, float]) -> None:
        raise Killed  # after epoch 1's checkpoint was written

    (net2, _), _ = setup()
    with pytest.raises(Killed):
        fit(net2, split, cfg, tmp_path / "b", progress=False, on_epoch=die)  # type: ignore[arg-type]
    (net3, _), _ = setup()
    resumed: list[dict[str, float]] = []
    result = fit(net3, split, cfg, tmp_path / "b", resume=True, progress=False, on_epoch=resumed.append)  # type: ignore[arg-type]
    assert [r["epoch"] for r in resumed] == [2]
    assert resumed[0]["epsilon"] == straight[1]["epsilon"]
    assert result.privacy["accountant_history"] == [[dp.plan(cfg, N_USERS).noise_multiplier,
                                                     dp.plan(cfg, N_USERS).sample_rate,
                                                     2 * dp.plan(cfg, N_USERS).steps_per_epoch]]
    for a, b in zip(net.state_dict().values(), net3.state_dict().values(), strict=True):  # type: ignore[attr-defined]
        assert torch.equal(a, b)


def test_training_stops_when_the_budget_is_spent(tmp_path: Path) -> None:
    (net, split), cfg = setup()
    fit(net, split, cfg, tmp_path, progress=False)  # type: ignore[arg-type]
    more = TrainConfig(epochs=4, lr=1e-2, privacy=cfg.privacy, device="cpu")  # same noise would overspend
    (net2, _), _ = setup()
    result = fit(net2, split, more, tmp_path, resume=True, progress=False)  # type: ignore[arg-type]
    assert result.stopped_by_budget and len(result.history) < 4
    # the plan for 4 epochs has less noise per step, but the 2 epochs already spent used the larger noise;
    # whatever the mix, epsilon never passes the budget
    assert result.privacy["epsilon"] <= 4.0 * 1.01


@pytest.mark.parametrize(("privacy", "model", "message"), [
    ({"delta": 0.5}, "gru4rec", "must be below 1 / the number of users"),
    ({}, "bert4rec", "cannot train with DP-SGD"),
    ({}, "popular", "not private"),
])
def test_bad_combinations_are_refused(privacy: dict[str, float], model: str, message: str) -> None:
    data = markov_dataset(n_users=N_USERS, n_items=20, length=10)
    split = leave_one_out(data)
    cfg = TrainConfig(epochs=1, privacy=PrivacyConfig(epsilon=1.0, **privacy), device="cpu")
    params = {} if model == "popular" else {"max_len": 8}
    net = build_model(model, make_config(model, n_items=data.n_items, **params))
    with pytest.raises(SeqrecError, match=message):
        fit(net, split, cfg, progress=False)


def test_epsilon_must_be_positive() -> None:
    with pytest.raises(SeqrecError, match="must be > 0"):
        PrivacyConfig(epsilon=0.0)


@pytest.mark.parametrize(("flags", "message"), [
    (["--dp-epsilon", "0"], "--dp-epsilon 0.0 must be > 0"),
    (["--dp-epsilon", "-1"], "must be > 0"),
    (["--dp-epsilon", "1", "--dp-delta", "0.5"], "must be below 1 / the number of users"),
    (["--dp-epsilon", "1", "--model", "bert4rec"], "cannot train with DP-SGD"),
])
def test_cli_refuses_in_one_line(tmp_path: Path, flags: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from seqrec.cli import main

    lines = ["user_id,item_id,timestamp"] + [f"u{u},{100 + (u + t) % 20},{t}" for u in range(30) for t in range(6)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "art"
    args = ["train", "--data", str(tmp_path / "log.csv"), "--epochs", "1", "--max-len", "5", "--quiet",
            "--out", str(out), *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (out / "config.toml").exists()
