"""Pieces shared by the recurrent models: their config base, their item tower, packed RNN runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqrec.items.tower import TowerConfig
from seqrec.models.base import NeuralConfig
from seqrec.settings import setting


@dataclass(frozen=True)
class RecurrentConfig(NeuralConfig):
    hidden: int = setting(128, "recurrent hidden size (the output layer's input)", low=1)
    n_layers: int = setting(1, "recurrent layers", low=1)


def recurrent_tower(c: RecurrentConfig) -> TowerConfig:
    """Input embeddings of size dim; a fully connected output layer with bias over the hidden state."""
    return TowerConfig(c.n_items, c.dim, output="linear", out_dim=c.hidden, bias=True)


def redraw_in_order(rng_state: torch.Tensor, *modules: nn.Module | None) -> None:
    """Re-initialise ``modules`` in the given order from ``rng_state`` (the state before they were built).

    The tower is built before the RNN, but a seeded recurrent model draws its parameters in the order
    of the seed design (input embedding, RNN, output layer), so that a seed gives the same model
    whichever module holds which table.
    """
    torch.random.set_rng_state(rng_state)
    for module in modules:
        if module is not None:
            module.reset_parameters()  # type: ignore[operator]


def run_packed(rnn: nn.RNNBase, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Run an RNN over left-padded (B, L, D) input so padding never touches the state.

    Padding positions get zeros; outputs at real positions do not depend on how much
    padding precedes them.
    """
    lengths = (items > 0).sum(1)  # (B,)
    L = x.shape[1]
    right = pad_right(x, lengths)  # (B, L, D), real items first
    packed = pack_padded_sequence(right, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    hidden, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # (B, L, H)
    hidden = hidden * (lengths > 0)[:, None, None]
    return pad_left(hidden, lengths)


def pad_right(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, L, ...) left-padded -> right-padded (real items first), by rolling each row."""
    L = x.shape[1]
    idx = (torch.arange(L, device=x.device)[None, :] + (L - lengths)[:, None]) % L  # (B, L)
    return _gather_rows(x, idx)


def pad_left(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pad_right`: real items last."""
    L = x.shape[1]
    idx = (torch.arange(L, device=x.device)[None, :] + lengths[:, None]) % L  # (B, L)
    return _gather_rows(x, idx)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if x.dim() == 2:
        return torch.gather(x, 1, idx)
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))
