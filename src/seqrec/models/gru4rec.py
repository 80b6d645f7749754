"""GRU4Rec (Hidasi et al., 2016) in its next-item form: embedding dropout, GRU, hidden dropout,
a fully connected output layer, full softmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqrec.models.base import SequenceEncoder
from seqrec.models.lstm import run_packed


@dataclass(frozen=True)
class GRU4RecConfig:
    n_items: int
    max_len: int = 50
    dim: int = 64  # item embedding size
    hidden: int = 128  # GRU hidden size
    n_layers: int = 1
    dropout: float = 0.2  # on embeddings and on the hidden state


class GRU4RecEncoder(SequenceEncoder):
    name = "gru4rec"

    def __init__(self, config: GRU4RecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.n_items + 1, config.dim, padding_idx=0)
        self.emb_drop = nn.Dropout(config.dropout)
        self.rnn = nn.GRU(config.dim, config.hidden, config.n_layers, batch_first=True,
                          dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.hidden_drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden, config.n_items + 1)

    def encode(self, items: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        hidden = run_packed(self.rnn, self.emb_drop(self.item_emb(items)), items)  # (B, L, H)
        return self.hidden_drop(hidden)

    def item_embeddings(self) -> torch.Tensor:
        return self.out.weight

    def item_bias(self) -> torch.Tensor | None:
        return self.out.bias
