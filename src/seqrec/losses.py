"""Training losses over catalog scores, independent of the model.

Every loss takes hidden states at target positions and the model's output embeddings:
full softmax cross-entropy, sampled softmax (uniform / popularity / in-batch negatives,
optional logQ correction), binary cross-entropy with sampled negatives, and gBCE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from seqrec.errors import SeqrecError
from seqrec.fused_ce import chunked_ce
from seqrec.models.base import SequenceEncoder

LOSSES = ("ce", "sampled", "bce", "gbce")
SAMPLERS = ("uniform", "popularity", "in-batch")


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"
    n_negatives: int = 1  # per target for bce/gbce; for sampled softmax per batch, or per target if not shared
    sampler: str = "uniform"
    logq: bool = True  # subtract log of the sampling probability (sampled softmax)
    gbce_t: float = 0.75  # gBCE calibration parameter t
    shared_negatives: bool = True  # sampled softmax: one draw for the whole batch (False: a draw per target)
    bf16_grads: bool = False  # full CE: the catalog softmax's gradient matmuls on bf16 operands (see chunked_ce)


class NegativeSampler:
    """Draws negative item ids (>= 1) uniformly or by training popularity."""

    def __init__(self, n_items: int, kind: str, counts: np.ndarray | None = None) -> None:
        if kind not in SAMPLERS:
            raise SeqrecError(f"unknown negative sampler {kind!r}; choose one of: {', '.join(SAMPLERS)}")
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


def _bias(model: SequenceEncoder, ids: torch.Tensor) -> torch.Tensor | float:
    b = model.item_bias()
    return 0.0 if b is None else b[ids]


def full_ce(model: SequenceEncoder, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over the whole catalog. hidden (M, D), targets (M,)."""
    logits = model.score(hidden)  # (M, N + 1), padding at -inf
    return F.cross_entropy(logits.float(), targets)


def sampled_softmax(model: SequenceEncoder, hidden: torch.Tensor, targets: torch.Tensor,
                    negatives: torch.Tensor, log_q: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the target and its negatives; accidental hits masked.

    ``negatives`` is (K,), shared by the batch (one (M x K) matrix product), or (M, K), a draw per
    target (as RecTools' SASRec samples them). With ``log_q`` (the log sampling probability of
    each id) the logits of sampled items are corrected by ``- log(K q)``, so the estimate of the
    full softmax gradient is unbiased.
    """
    emb = model.item_embeddings()
    pos = (hidden * emb[targets]).sum(-1) + _bias(model, targets)  # (M,)
    if negatives.dim() == 1:
        neg = hidden @ emb[negatives].T + _bias(model, negatives)  # (M, K)
        hit = negatives[None, :] == targets[:, None]
    else:
        neg = torch.einsum("md,mkd->mk", hidden, emb[negatives]) + _bias(model, negatives)  # (M, K)
        hit = negatives == targets[:, None]
    if log_q is not None:
        k = negatives.shape[-1]
        neg = neg - (log_q[negatives] + math.log(k))
        pos = pos - (log_q[targets] + math.log(k))
    neg = neg.masked_fill(hit, float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1).float()  # (M, 1 + K)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def bce(model: SequenceEncoder, hidden: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
        beta: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy with per-target negatives (M, K); ``beta`` != 1 gives gBCE."""
    emb = model.item_embeddings()
    pos = (hidden * emb[targets]).sum(-1) + _bias(model, targets)  # (M,)
    neg = (hidden[:, None, :] * emb[negatives]).sum(-1) + _bias(model, negatives)  # (M, K)
    valid = (negatives != targets[:, None]).float()
    pos_loss = -beta * F.logsigmoid(pos.float())
    neg_loss = -(F.logsigmoid(-neg.float()) * valid).sum(1)
    return (pos_loss + neg_loss).mean()


def gbce_beta(n_items: int, n_negatives: int, t: float) -> float:
    """gBCE's beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = negatives / (items - 1)."""
    alpha = n_negatives / max(1, n_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def compute_loss(model: SequenceEncoder, hidden: torch.Tensor, targets: torch.Tensor, cfg: LossConfig,
                 sampler: NegativeSampler | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dispatch on ``cfg.name``. hidden (M, D) at target positions, targets (M,)."""
    if cfg.name == "ce":
        return chunked_ce(hidden, model.item_embeddings(), model.item_bias(), targets, bf16_grads=cfg.bf16_grads)
    if sampler is None:
        raise SeqrecError(f"loss {cfg.name!r} needs a negative sampler")
    n_items = sampler.n_items
    if cfg.name == "sampled":
        if cfg.sampler == "in-batch":
            negatives = torch.unique(targets)
            log_q = sampler.log_probs.to(hidden.device) if cfg.logq else None
        else:
            shape = (cfg.n_negatives,) if cfg.shared_negatives else (targets.shape[0], cfg.n_negatives)
            negatives = sampler.sample(shape, generator).to(hidden.device)
            log_q = sampler.log_probs.to(hidden.device) if cfg.logq else None
        return sampled_softmax(model, hidden, targets, negatives, log_q)
    negatives = sampler.sample((targets.shape[0], cfg.n_negatives), generator).to(hidden.device)
    if cfg.name == "bce":
        return bce(model, hidden, targets, negatives)
    if cfg.name == "gbce":
        return bce(model, hidden, targets, negatives, gbce_beta(n_items, cfg.n_negatives, cfg.gbce_t))
    raise SeqrecError(f"unknown loss {cfg.name!r}; choose one of: {', '.join(LOSSES)}")
