"""Training losses over catalog scores, independent of the model.

Every loss takes query states at target positions, the model's item table and the targets, and
scores through :mod:`seqrec.scoring`: full softmax cross-entropy (tiled), sampled softmax (uniform /
popularity / in-batch negatives, optional logQ correction), binary cross-entropy with sampled
negatives, and gBCE. A new loss is one function passed to :func:`register_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from seqrec.errors import SeqrecError
from seqrec.items.tower import ItemTable
from seqrec.scoring import candidate_scores, catalog_scores, target_scores
from seqrec.settings import check_choice, check_fields, setting
from seqrec.tiled_ce import tiled_ce

SAMPLERS = ("uniform", "popularity", "in-batch")


@dataclass(frozen=True)
class LossConfig:
    name: str = setting("ce", "training loss: ce (full softmax), sampled (sampled softmax), bce, gbce, "
                        "or a registered one", flag="loss")
    n_negatives: int = setting(1, "negatives per target (bce, gbce) or per batch (sampled softmax)", low=1,
                               flag="negatives")
    sampler: str = setting("uniform", "negative sampler", choices=SAMPLERS)
    logq: bool = setting(True, "sampled softmax: subtract the log of each item's sampling probability")
    gbce_t: float = setting(0.75, "gBCE calibration parameter t", low=0.0)
    shared_negatives: bool = setting(True, "sampled softmax: one draw of negatives for the whole batch "
                                     "(off: a draw per target)", flag="shared-negatives/per-target-negatives")
    bf16_grads: bool = setting(False, "full CE: the catalog softmax's two gradient matmuls on bf16 operands "
                               "(AMX / tensor cores); logits, exp and sums stay fp32, gradients differ by ~0.1%",
                               flag="ce-bf16-grads")

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("loss", self.name, LOSSES)


class NegativeSampler:
    """Draws negative item ids (>= 1) uniformly or by training popularity."""

    def __init__(self, n_items: int, kind: str, counts: np.ndarray | None = None) -> None:
        check_choice("sampler", kind, SAMPLERS)
        self.n_items = n_items
        self.kind = kind
        probs = np.ones(n_items + 1) if counts is None or kind == "uniform" else counts[: n_items + 1] + 1e-3
        probs = probs.astype(np.float64)
        probs[0] = 0.0
        probs /= probs.sum()
        self.probs = torch.from_numpy(probs).float()  # (N + 1,)
        self.log_probs = torch.log(self.probs.clamp_min(1e-30))

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        n = int(np.prod(shape))
        if self.kind == "uniform":
            out = torch.randint(1, self.n_items + 1, (n,), generator=generator)
        else:
            out = torch.multinomial(self.probs, n, replacement=True, generator=generator)
        return out.view(shape)


@dataclass(frozen=True)
class LossInputs:
    query: torch.Tensor  # (M, D) query states at target positions
    table: ItemTable  # (N + 1, D) catalog [and bias]
    targets: torch.Tensor  # (M,) item ids in 1..N
    config: LossConfig
    sampler: NegativeSampler
    generator: torch.Generator | None = None


LossFn = Callable[[LossInputs], torch.Tensor]
LOSSES: dict[str, LossFn] = {}


def register_loss(name: str, fn: LossFn) -> None:
    """Make ``fn`` trainable as ``LossConfig(name=name)`` (``--loss name``)."""
    LOSSES[name] = fn


def full_ce(query: torch.Tensor, table: ItemTable, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over the whole catalog, the plain reference of :func:`tiled_ce`."""
    return F.cross_entropy(catalog_scores(query, table).float(), targets)


def sampled_softmax(query: torch.Tensor, table: ItemTable, targets: torch.Tensor, negatives: torch.Tensor,
                    log_q: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the target and its negatives; accidental hits masked.

    ``negatives`` is (K,), shared by the batch (one (M x K) matrix product), or (M, K), a draw per
    target (as RecTools' SASRec samples them). With ``log_q`` (the log sampling probability of
    each id) the logits of sampled items are corrected by ``- log(K q)``, so the estimate of the
    full softmax gradient is unbiased.
    """
    pos = target_scores(query, table, targets)  # (M,)
    neg = candidate_scores(query, table, negatives)  # (M, K)
    hit = (negatives[None, :] if negatives.dim() == 1 else negatives) == targets[:, None]
    if log_q is not None:
        k = negatives.shape[-1]
        neg = neg - (log_q[negatives] + math.log(k))
        pos = pos - (log_q[targets] + math.log(k))
    neg = neg.masked_fill(hit, float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1).float()  # (M, 1 + K)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def bce(query: torch.Tensor, table: ItemTable, targets: torch.Tensor, negatives: torch.Tensor,
        beta: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy with per-target negatives (M, K); ``beta`` != 1 gives gBCE."""
    pos = target_scores(query, table, targets)  # (M,)
    neg = candidate_scores(query, table, negatives)  # (M, K)
    valid = (negatives != targets[:, None]).float()
    pos_loss = -beta * F.logsigmoid(pos.float())
    neg_loss = -(F.logsigmoid(-neg.float()) * valid).sum(1)
    return (pos_loss + neg_loss).mean()


def gbce_beta(n_items: int, n_negatives: int, t: float) -> float:
    """gBCE's beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = negatives / (items - 1)."""
    alpha = n_negatives / max(1, n_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def _ce(x: LossInputs) -> torch.Tensor:
    return tiled_ce(x.query, x.table, x.targets, bf16_grads=x.config.bf16_grads)


def _sampled(x: LossInputs) -> torch.Tensor:
    cfg, device = x.config, x.query.device
    if cfg.sampler == "in-batch":
        negatives = torch.unique(x.targets)
    else:
        shape = (cfg.n_negatives,) if cfg.shared_negatives else (x.targets.shape[0], cfg.n_negatives)
        negatives = x.sampler.sample(shape, x.generator).to(device)
    log_q = x.sampler.log_probs.to(device) if cfg.logq else None
    return sampled_softmax(x.query, x.table, x.targets, negatives, log_q)


def _per_target_negatives(x: LossInputs) -> torch.Tensor:
    shape = (x.targets.shape[0], x.config.n_negatives)
    return x.sampler.sample(shape, x.generator).to(x.query.device)


def _bce(x: LossInputs) -> torch.Tensor:
    return bce(x.query, x.table, x.targets, _per_target_negatives(x))


def _gbce(x: LossInputs) -> torch.Tensor:
    beta = gbce_beta(x.sampler.n_items, x.config.n_negatives, x.config.gbce_t)
    return bce(x.query, x.table, x.targets, _per_target_negatives(x), beta)


register_loss("ce", _ce)
register_loss("sampled", _sampled)
register_loss("bce", _bce)
register_loss("gbce", _gbce)


def compute_loss(inputs: LossInputs) -> torch.Tensor:
    """The loss named by ``inputs.config.name``."""
    fn = LOSSES.get(inputs.config.name)
    if fn is None:
        raise SeqrecError(f"unknown loss {inputs.config.name!r}; choose one of: {', '.join(LOSSES)}")
    return fn(inputs)
