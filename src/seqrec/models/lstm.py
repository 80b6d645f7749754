"""The seed design exactly: item embedding -> LSTM -> fully connected layer -> softmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqrec.models.base import SequenceEncoder, left_to_right, right_to_left


@dataclass(frozen=True)
class LSTMConfig:
    n_items: int
    max_len: int = 50
    dim: int = 64  # item embedding size
    hidden: int = 128  # LSTM hidden size (= output layer input)
    n_layers: int = 1
    dropout: float = 0.1


class LSTMEncoder(SequenceEncoder):
    name = "lstm"

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.n_items + 1, config.dim, padding_idx=0)
        self.rnn = nn.LSTM(config.dim, config.hidden, config.n_layers, batch_first=True,
                           dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden, config.n_items + 1)  # the FC layer before softmax

    def encode(self, items: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        return run_packed(self.rnn, self.drop(self.item_emb(items)), items)

    def item_embeddings(self) -> torch.Tensor:
        return self.out.weight

    def item_bias(self) -> torch.Tensor | None:
        return self.out.bias


def run_packed(rnn: nn.RNNBase, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Run an RNN over left-padded (B, L, D) input so padding never touches the state.

    Padding positions get zeros; outputs at real positions do not depend on how much
    padding precedes them.
    """
    lengths = (items > 0).sum(1)  # (B,)
    L = x.shape[1]
    right = left_to_right(x, lengths)  # (B, L, D), real items first
    packed = pack_padded_sequence(right, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    hidden, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # (B, L, H)
    hidden = hidden * (lengths > 0)[:, None, None]
    return right_to_left(hidden, lengths)
