"""The seed design exactly: item embedding -> LSTM -> fully connected layer -> softmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqrec.items.tower import ItemTower
from seqrec.models.base import SequenceModel
from seqrec.models.recurrent import RecurrentConfig, recurrent_tower, redraw_in_order, run_packed
from seqrec.settings import setting


@dataclass(frozen=True)
class LSTMConfig(RecurrentConfig):
    dropout: float = setting(0.1, "dropout on the embedded inputs", low=0.0)


class LSTMModel(SequenceModel):
    name = "lstm"

    def __init__(self, config: LSTMConfig, tower: ItemTower | None = None) -> None:
        super().__init__()
        self.config = config
        rng_state = torch.random.get_rng_state()
        self.tower = tower or ItemTower(recurrent_tower(config))
        self.rnn = nn.LSTM(config.dim, config.hidden, config.n_layers, batch_first=True,
                           dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        if tower is None:
            redraw_in_order(rng_state, self.tower.id_emb, self.rnn, self.tower.output)
        self.setup_similarity(config)

    def encode(self, x: torch.Tensor, items: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        return run_packed(self.rnn, self.drop(x), items)
