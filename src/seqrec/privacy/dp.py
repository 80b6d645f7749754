"""DP-SGD with the user as the unit of privacy, accounted by Opacus (RDP or PRV).

One user is one record. Each step Poisson-samples users (each independently with probability
``q = batch_users / users``); all of a sampled user's training windows and targets give ONE gradient
(the mean loss over their targets), clipped to L2 norm ``clip``; the clipped gradients are summed,
Gaussian noise of standard deviation ``sigma * clip`` is added to every coordinate, and the sum is
divided by the expected batch ``q * users``. ``sigma`` is Opacus' ``get_noise_multiplier`` for
``(epsilon, delta)`` over the planned steps; the accountant's history (``[sigma, q, steps]`` rows) is
checkpointed, so a resumed run continues it exactly.

With sampled softmax (shared negatives) the users of a step are processed together by
:mod:`seqrec.privacy.touched`: per-user gradients through ``torch.func.vmap``, the item table's only on
the rows each user touches. Other losses compute per-user gradients one user at a time (the
reference path), so the item table's gradient exists once per user being processed. Neither
materialises a dense (B, N, D) block.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seqrec.data.batch import SequenceBatch, gather_windows, window_ends
from seqrec.data.sequences import Sequences
from seqrec.errors import SeqrecError
from seqrec.losses import LossConfig, LossInputs, NegativeSampler, compute_loss
from seqrec.models.base import SequenceModel
from seqrec.privacy.touched import TouchedRows
from seqrec.train.config import PrivacyConfig, TrainConfig

DP_MODELS = ("lstm", "gru4rec", "sasrec", "hstu")  # next-item models, no cross-example layers


def _opacus() -> Any:
    try:
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
    except ImportError:  # pragma: no cover - depends on the environment
        raise SeqrecError("differentially private training needs Opacus: pip install 'seqrec[privacy]'") from None
    return create_accountant, get_noise_multiplier


def resolve_delta(cfg: PrivacyConfig, n_users: int) -> float:
    """``cfg.delta``, or 0.1 / users; refuse a delta of 1 / users or more (it would allow leaking a user)."""
    delta = cfg.delta if cfg.delta is not None else 0.1 / n_users
    if delta >= 1.0 / n_users:
        raise SeqrecError(f"--dp-delta {delta:g} must be below 1 / the number of users ({1.0 / n_users:.3g} for "
                          f"{n_users:,} users); a delta that large permits releasing a user's data outright")
    return delta


def check_supported(model: SequenceModel, cfg: TrainConfig, objective: str) -> None:
    """One line for a combination DP-SGD here cannot run."""
    if model.name not in DP_MODELS:
        raise SeqrecError(f"--dp-epsilon: {model.name} cannot train with DP-SGD here; "
                          f"use one of {', '.join(DP_MODELS)}")
    if objective != "next":
        raise SeqrecError("--dp-epsilon: only the next-item objective is supported with DP-SGD; drop --objective cloze")
    if cfg.loss.sampler == "in-batch":
        raise SeqrecError("--dp-epsilon: in-batch negatives mix users in one gradient; use --sampler uniform")
    if cfg.loss.sampler == "popularity" and cfg.loss.name != "ce":
        raise SeqrecError("--dp-epsilon: popularity negatives are drawn from counts over every user's data, which "
                          "the noise does not cover; use --sampler uniform")
    if cfg.train_rest_valid:
        raise SeqrecError("--dp-epsilon: --train-rest-valid is not supported with DP-SGD")


@dataclass(frozen=True)
class Plan:
    """The DP schedule: sampling rate, steps per epoch, noise multiplier, delta."""

    n_users: int
    sample_rate: float
    steps_per_epoch: int
    noise_multiplier: float
    delta: float


def plan(cfg: TrainConfig, n_users: int) -> Plan:
    """Calibrate the noise so that ``cfg.epochs`` epochs of Poisson-sampled steps reach (epsilon, delta)."""
    p = cfg.privacy
    assert p.epsilon is not None
    delta = resolve_delta(p, n_users)
    q = min(1.0, p.batch_users / n_users)
    steps = max(1, round(1.0 / q))
    sigma = noise_multiplier(p.epsilon, delta, q, max(1, cfg.epochs) * steps, p.accountant)
    return Plan(n_users, q, steps, sigma, delta)


@functools.lru_cache(maxsize=64)
def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Opacus' ``get_noise_multiplier`` (a binary search over the accountant: seconds, so cached)."""
    _, get_noise_multiplier = _opacus()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns when the optimal RDP order is at the end of its range
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant=accountant))


class Accountant:
    """Opacus' accountant with a JSON-able history (``[[sigma, q, steps], ...]``) for checkpoints."""

    def __init__(self, kind: str, history: list[list[float]] | None = None) -> None:
        create_accountant, _ = _opacus()
        self.kind = kind
        self._acc = create_accountant(kind)
        self._acc.history = [(float(s), float(q), int(n)) for s, q, n in history or []]

    @property
    def history(self) -> list[list[float]]:
        return [[float(s), float(q), int(n)] for s, q, n in self._acc.history]

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        self._acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)

    def epsilon(self, delta: float) -> float:
        if not self._acc.history:
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(self._acc.get_epsilon(delta=delta))

    def after(self, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        """The epsilon the accountant would report after ``steps`` more steps (nothing recorded)."""
        ahead = Accountant(self.kind, self.history)
        for _ in range(steps):
            ahead.step(noise_multiplier, sample_rate)
        return ahead.epsilon(delta)


class UserWindows:
    """Each training user's windows (all their targets), indexed by user: one DP record each."""

    def __init__(self, train: Sequences, max_len: int, sliding: bool) -> None:
        rows, ends = window_ends(train, max_len, sliding)
        order = np.argsort(rows, kind="stable")
        self.rows, ends = rows[order], ends[order]
        self.windows = torch.from_numpy(gather_windows(train, self.rows, ends, max_len + 1))  # (R, L + 1)
        self.times = None if train.times is None else torch.from_numpy(
            gather_windows(train, self.rows, ends, max_len + 1, train.times))
        self.n_users = train.n_users  # every user is a record, also those with nothing to learn from
        self.start = np.searchsorted(self.rows, np.arange(self.n_users + 1))  # (U + 1,) window range per user

    def batch(self, user: int) -> SequenceBatch | None:
        """All of ``user``'s windows as one batch (shared padding trimmed), or None when they have none."""
        a, b = int(self.start[user]), int(self.start[user + 1])
        if a == b:
            return None
        w = self.windows[a:b]
        first = w.shape[1] - int((w > 0).sum(1).max())
        w = w[:, first:]
        t = None if self.times is None else self.times[a:b, first:]
        items = w[:, :-1]
        return SequenceBatch(items, torch.where(items > 0, w[:, 1:], 0), None if t is None else t[:, :-1])


def poisson_users(n_users: int, sample_rate: float, gen: torch.Generator) -> np.ndarray:
    """Poisson sampling: each user independently with probability ``sample_rate``; each at most once."""
    return np.flatnonzero((torch.rand(n_users, generator=gen) < sample_rate).numpy())


def user_gradient(model: SequenceModel, batch: SequenceBatch, params: list[torch.nn.Parameter],
                  loss_cfg: LossConfig, sampler: NegativeSampler, gen: torch.Generator,
                  clip: float) -> tuple[list[torch.Tensor], float, float]:
    """One user's gradient of their mean loss over all their targets, clipped to norm ``clip``:
    (clipped gradients, norm before clipping, loss)."""
    device = model.device
    assert batch.targets is not None
    targets = batch.targets.to(device)
    inputs = SequenceBatch(batch.items.to(device), None, None if batch.times is None else batch.times.to(device))
    query = model(inputs)  # (W, L, D)
    mask = targets > 0
    loss = compute_loss(LossInputs(query[mask], model.item_table(), targets[mask], loss_cfg, sampler, gen))
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    dense = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    norm = float(torch.sqrt(sum((g.float() ** 2).sum() for g in dense)))  # type: ignore[arg-type]
    factor = min(1.0, clip / (norm + 1e-12))
    return [g * factor for g in dense], norm, float(loss.detach())


def clipped_sum(model: SequenceModel, windows: UserWindows, users: np.ndarray, params: list[torch.nn.Parameter],
                cfg: TrainConfig, sampler: NegativeSampler,
                gen: torch.Generator) -> tuple[list[torch.Tensor], list[float]]:
    """The reference: the sum of the users' clipped gradients, one user at a time, and their losses."""
    total = [torch.zeros_like(q) for q in params]
    losses: list[float] = []
    for u in users.tolist():
        batch = windows.batch(u)
        if batch is None:
            continue  # a sampled user with nothing to learn from adds a zero gradient
        grads, _, loss = user_gradient(model, batch, params, cfg.loss, sampler, gen, cfg.privacy.clip)
        for acc, g in zip(total, grads, strict=True):
            acc.add_(g)
        losses.append(loss)
    return total, losses


def private_step(model: SequenceModel, windows: UserWindows, users: np.ndarray, params: list[torch.nn.Parameter],
                 cfg: TrainConfig, p: Plan, sampler: NegativeSampler, gen: torch.Generator,
                 noise_gen: torch.Generator, rows: TouchedRows | None = None) -> list[float]:
    """Set ``params``' .grad to the noised mean of the sampled users' clipped gradients; returns the
    contributing users' losses. A user appears at most once (Poisson sampling draws each user once).
    With ``rows`` (sampled softmax: :mod:`seqrec.privacy.touched`) the users' gradients are computed
    together on the rows they touch, with one draw of negatives for the step; else one user at a time."""
    if len(np.unique(users)) != len(users):
        raise AssertionError("a user was sampled twice in one DP step")
    if rows is not None:
        negatives = sampler.sample((cfg.loss.n_negatives,), gen)
        total, _, losses = rows.clipped_sum(users, negatives, sampler, cfg.loss.logq, cfg.privacy.clip)
    else:
        total, losses = clipped_sum(model, windows, users, params, cfg, sampler, gen)
    scale = 1.0 / (p.sample_rate * p.n_users)  # the expected batch: the denominator must not depend on the data
    std = p.noise_multiplier * cfg.privacy.clip
    for param, acc in zip(params, total, strict=True):
        noise = torch.normal(0.0, std, acc.shape, generator=noise_gen).to(acc.device, acc.dtype)
        param.grad = (acc + noise) * scale
    return losses
