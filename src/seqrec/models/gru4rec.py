"""GRU4Rec (Hidasi et al., 2016) in its next-item form: embedding dropout, GRU, hidden dropout,
a fully connected output layer, full softmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqrec.items.tower import ItemTower
from seqrec.models.base import SequenceModel
from seqrec.models.recurrent import RecurrentConfig, recurrent_tower, redraw_in_order, run_packed


@dataclass(frozen=True)
class GRU4RecConfig(RecurrentConfig):
    pass


class GRU4RecModel(SequenceModel):
    name = "gru4rec"

    def __init__(self, config: GRU4RecConfig, tower: ItemTower | None = None) -> None:
        super().__init__()
        self.config = config
        rng_state = torch.random.get_rng_state()
        self.tower = tower or ItemTower(recurrent_tower(config))
        self.emb_drop = nn.Dropout(config.dropout)
        self.rnn = nn.GRU(config.dim, config.hidden, config.n_layers, batch_first=True,
                          dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.hidden_drop = nn.Dropout(config.dropout)
        if tower is None:
            redraw_in_order(rng_state, self.tower.id_emb, self.rnn, self.tower.output)
        self.setup_similarity(config)

    def encode(self, x: torch.Tensor, items: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        hidden = run_packed(self.rnn, self.emb_drop(x), items)  # (B, L, H)
        return self.hidden_drop(hidden)
