"""Per-user DP-SGD gradients for many users at once, on the item rows each user touches.

With sampled softmax (one draw of negatives shared by the step), a user's loss reads only the item
rows of their own inputs and targets and of the shared negatives. For each user those rows are
gathered into a small local table ``(R, D)`` and the user's item ids are renumbered into it; the
model then runs under :func:`torch.func.functional_call` with the local table in place of the
catalog, and :func:`torch.func.vmap` over users gives every user's gradient at once: ``(B, ...)`` for
the encoder and ``(B, R, D)`` for the item table, never a dense ``(B, N + 1, D)`` block. Each user's
gradient is clipped to ``clip`` as a whole (encoder and rows together), the clipped row gradients are
added into one ``(N + 1, D)`` sum with ``index_add_``, and noise is added as in
:func:`seqrec.privacy.dp.private_step`, which computes the same clipped sum one user at a time and
stays the reference (and the path for the losses this one does not cover).

An item tower built from public item data (:class:`seqrec.items.features.FeatureTower`: modes ``text``,
``features``, ``features+text`` and their ``id+`` forms) holds that data in frozen per-item buffers (the
text vectors, the attribute indices). Those buffers are gathered the same way, so each user's local
table is the tower applied to the rows they touch; the tower's trained parameters that every item shares
(the text projection, the attribute embeddings) get a dense gradient per user and are clipped with the
encoder's. Without an id part a user's gradient has no per-item rows at all.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from seqrec.data.batch import SequenceBatch
from seqrec.losses import NegativeSampler
from seqrec.models.base import SequenceModel
from seqrec.train.config import TrainConfig

# a vmapped chunk's size: tokens (users x windows x positions) bound the activations and the (chunk, R, D)
# row gradients, users the (chunk, encoder parameters) block
CHUNK_TOKENS = 4_096
CHUNK_USERS = 128


class _Scorer(nn.Module):
    """The model's queries and its (possibly local) item table from one call, for functional_call."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        query = self.model(SequenceBatch(items))
        table = self.model.item_table()
        return query, table.weight, table.bias


def item_row_names(model: SequenceModel) -> list[str]:
    """Names (in ``model``) of the parameters with one row per item id: the item tables, an output bias."""
    rows = model.tower.n_items + 1
    return [f"tower.{n}" for n, p in model.tower.named_parameters() if p.dim() >= 1 and p.shape[0] == rows]


def item_buffer_names(model: SequenceModel) -> list[str]:
    """Names (in ``model``) of the tower's frozen buffers with one row per item id (a feature tower's text
    vectors and attribute rows)."""
    rows = model.tower.n_items + 1
    return [f"tower.{n}" for n, b in model.tower.named_buffers() if b.dim() >= 1 and b.shape[0] == rows]


def _rows_local(tower: nn.Module) -> bool:
    """Whether the tower's catalog is a row-wise function of per-item tensors of N + 1 rows: an id tower
    (its table), or a feature tower (its buffers, and its id table in the id+ modes)."""
    from seqrec.items.features import FeatureTower

    if isinstance(tower, FeatureTower) and not tower.spec.uses_id:
        return True
    id_emb = getattr(tower, "id_emb", None)
    return isinstance(id_emb, nn.Embedding) and id_emb.weight.shape[0] == getattr(tower, "n_items", -2) + 1


def supported(model: SequenceModel, cfg: TrainConfig) -> bool:
    """Whether this path computes the step: sampled softmax with shared negatives, an id or feature item
    tower without extra tokens, no user features, no recurrent layer (sasrec and hstu; lstm and gru4rec take
    the reference path)."""
    loss = cfg.loss
    tower = getattr(model, "tower", None)
    return (loss.name == "sampled" and loss.shared_negatives and loss.sampler != "in-batch"
            and tower is not None and tower.config.extra_tokens == 0 and _rows_local(tower)
            and "user_tower" not in model._modules
            and bool(item_row_names(model) or item_buffer_names(model))
            and not any(isinstance(m, nn.RNNBase) for m in model.modules()))  # packed RNNs do not vmap


def local_ids(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, M) global ids, 0 in every row -> (C, R) each row's distinct ids ascending (padded with 0, so the
    local id 0 is the padding row) and (C, M) the ids renumbered into their row's list."""
    ordered, order = ids.sort(dim=1)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    rank = new.long().cumsum(1) - 1
    local = torch.empty_like(ids).scatter_(1, order, rank)
    rows = torch.zeros(ids.shape[0], int(rank[:, -1].max()) + 1, dtype=ids.dtype)
    rows.scatter_(1, rank, ordered)  # equal ids share a rank and write the same value
    return rows, local


def _chunks(lengths: np.ndarray, n_windows: np.ndarray, users: np.ndarray) -> list[np.ndarray]:
    """Users grouped by (windows, length) so that a chunk's padding stays small, each chunk within
    CHUNK_TOKENS tokens after padding."""
    order = users[np.lexsort((lengths[users], n_windows[users]))]
    out, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order):
            width = int(n_windows[order[end]]) * int(lengths[order[end]])
            if width * (end + 1 - start) > CHUNK_TOKENS or end - start >= CHUNK_USERS:
                break
            end += 1
        out.append(order[start:end])
        start = end
    return out


class TouchedRows:
    """Computes the sum of the sampled users' clipped gradients with vmapped per-user gradients."""

    def __init__(self, model: SequenceModel, params: list[torch.nn.Parameter], windows: Any) -> None:
        self.model, self.windows = model, windows
        self.scorer = _Scorer(model)
        self.row_names = item_row_names(model)
        self.buffer_names = item_buffer_names(model)
        train_ids = {id(p) for p in params}
        named = dict(model.named_parameters())
        self.trained = [n for n, p in named.items() if id(p) in train_ids]
        self.frozen = [n for n in named if n not in self.trained]
        position = {id(p): i for i, p in enumerate(params)}
        self.index = {n: position[id(named[n])] for n in self.trained}  # name -> its place in ``params``
        self.params = params
        real = (windows.windows[:, :-1] > 0).sum(1).numpy()  # real inputs per window
        starts = windows.start
        self.n_windows = np.diff(starts)
        self.lengths = np.zeros(windows.n_users, dtype=np.int64)
        nonempty = self.n_windows > 0
        self.lengths[nonempty] = np.maximum.reduceat(real, starts[:-1][nonempty]) if len(real) else 0
        self._grad = grad_and_value(self._user_loss, argnums=(0, 1))

    def padded(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, W, L) inputs and targets of ``users``, windows padded with empty ones, L the longest."""
        w, length = int(self.n_windows[users].max()), int(self.lengths[users].max())
        items = torch.zeros(len(users), w, length + 1, dtype=self.windows.windows.dtype)
        for i, u in enumerate(users.tolist()):
            a, b = int(self.windows.start[u]), int(self.windows.start[u + 1])
            items[i, : b - a] = self.windows.windows[a:b, -(length + 1):]
        inputs = items[..., :-1]
        return inputs, torch.where(inputs > 0, items[..., 1:], 0)

    def _user_loss(self, trained_shared: dict[str, torch.Tensor], trained_rows: dict[str, torch.Tensor],
                   frozen: dict[str, torch.Tensor], items: torch.Tensor, targets: torch.Tensor,
                   negatives: torch.Tensor, log_q_targets: torch.Tensor | None,
                   log_q_negatives: torch.Tensor | None) -> torch.Tensor:
        """One user's mean sampled-softmax loss over their targets (the reference's sampled_softmax)."""
        params = {f"model.{n}": v for part in (trained_shared, trained_rows, frozen) for n, v in part.items()}
        query, weight, bias = functional_call(self.scorer, params, (items,))
        q, t = query.reshape(-1, query.shape[-1]), targets.reshape(-1)
        pos = (q * weight[t]).sum(-1)
        neg = q @ weight[negatives].T
        if bias is not None:
            pos, neg = pos + bias[t], neg + bias[negatives]
        if log_q_targets is not None and log_q_negatives is not None:
            k = math.log(negatives.shape[0])
            neg = neg - (log_q_negatives + k)
            pos = pos - (log_q_targets.reshape(-1) + k)
        neg = neg.masked_fill(negatives[None, :] == t[:, None], float("-inf"))
        logits = torch.cat([pos[:, None], neg], dim=1).float()
        per_target = torch.logsumexp(logits, dim=1) - logits[:, 0]
        real = t > 0
        return torch.where(real, per_target, 0.0).sum() / real.sum().clamp_min(1)

    def clipped_sum(self, users: np.ndarray, negatives: torch.Tensor, sampler: NegativeSampler,
                    logq: bool, clip: float) -> tuple[list[torch.Tensor], list[float], list[float]]:
        """The sum over ``users`` of each one's gradient clipped to ``clip`` (aligned with ``params``),
        with each user's norm before clipping and loss (users without windows add nothing)."""
        device = self.model.device
        named = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        total = [torch.zeros_like(p) for p in self.params]
        norms: list[float] = []
        losses: list[float] = []
        users = users[self.n_windows[users] > 0]
        for chunk in _chunks(self.lengths, self.n_windows, users):
            inputs, targets = self.padded(chunk)
            c = len(chunk)
            ids = torch.cat([torch.zeros(c, 1, dtype=inputs.dtype), inputs.reshape(c, -1), targets.reshape(c, -1),
                             negatives.expand(c, -1).to(inputs.dtype)], dim=1)
            rows, local = local_ids(ids)
            m = inputs[0].numel()
            local_inputs = local[:, 1: 1 + m].view_as(inputs)
            local_targets = local[:, 1 + m: 1 + 2 * m].view_as(targets)
            local_negs = local[:, 1 + 2 * m:]
            rows_d = rows.to(device)
            # frozen tensors other than item rows are the module's own (functional_call leaves them); the
            # per-item buffers are gathered like the rows, so the tower's table is that of the local rows
            shared = {n: named[n].detach() for n in self.trained if n not in self.row_names}
            row_trained = {n: named[n].detach()[rows_d] for n in self.trained if n in self.row_names}
            frozen_rows = {n: named[n].detach()[rows_d] for n in self.frozen if n in self.row_names}
            frozen_rows |= {n: buffers[n][rows_d] for n in self.buffer_names}
            lq_t = lq_n = None
            if logq:
                log_probs = sampler.log_probs.to(device)
                lq_t, lq_n = log_probs[targets.to(device)], log_probs[negatives.to(device)].expand(c, -1)
            per_user = vmap(self._grad, in_dims=(None, 0, 0, 0, 0, 0, 0 if logq else None, 0 if logq else None),
                            randomness="different")
            with sdpa_kernel(SDPBackend.MATH):  # plain ops, each with a batching rule (no per-user loop)
                (g_shared, g_rows), loss = per_user(shared, row_trained, frozen_rows, local_inputs.to(device),
                                                    local_targets.to(device), local_negs.to(device), lq_t, lq_n)
            sq = torch.zeros(c, device=device)
            for g in (*g_shared.values(), *g_rows.values()):
                sq += g.float().pow(2).flatten(1).sum(1)
            norm = sq.sqrt()
            factor = (clip / (norm + 1e-12)).clamp(max=1.0)
            for n, g in g_shared.items():
                total[self.index[n]] += torch.tensordot(factor.to(g.dtype), g, dims=1)
            flat_rows = rows_d.reshape(-1)
            for n, g in g_rows.items():
                scaled = g * factor.to(g.dtype).view(-1, *([1] * (g.dim() - 1)))
                total[self.index[n]].index_add_(0, flat_rows, scaled.reshape(-1, *g.shape[2:]))
            norms += norm.tolist()
            losses += loss.detach().tolist()
        return total, norms, losses
