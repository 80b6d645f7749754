"""Per-user recurrent state for lstm / gru4rec: one RNN step per event instead of re-encoding the history.

A building block, not yet wired into the store or the scorer. ``step`` advances a user's state by one
item in O(1); ``query`` gives the next-item query from it, equal to ``model.predict_next(history)``
(within float error) as long as the history is at most ``max_len`` items. Beyond that the model reads
only the last ``max_len`` items (a sliding window), which a recurrent state cannot forget
incrementally: the served scores then need the windowed recomputation (or a model trained on whole
histories). :meth:`RecurrentStepper.exact_for` says which case a history is in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from seqrec.errors import SeqrecError


@dataclass(frozen=True)
class RnnState:
    h: torch.Tensor  # (n_layers, 1, H)
    c: torch.Tensor | None  # (n_layers, 1, H) for an LSTM
    length: int  # items folded in


class RecurrentStepper:
    def __init__(self, model: nn.Module) -> None:
        from seqrec.models.gru4rec import GRU4RecModel
        from seqrec.models.lstm import LSTMModel

        if not isinstance(model, (GRU4RecModel, LSTMModel)):
            raise SeqrecError(f"incremental state needs a recurrent model (lstm, gru4rec), not {type(model).__name__}")
        self.model: Any = model.eval()
        self.rnn: nn.RNNBase = model.rnn
        self.lstm = isinstance(model, LSTMModel)
        self.max_len = int(model.config.max_len)

    def initial(self) -> RnnState:
        p = next(self.rnn.parameters())
        h = p.new_zeros(self.rnn.num_layers, 1, self.rnn.hidden_size)
        return RnnState(h, h.clone() if self.lstm else None, 0)

    @torch.inference_mode()
    def step(self, state: RnnState, item: int) -> RnnState:
        """The state after one more item (an internal id >= 1)."""
        x = self.model.tower(torch.tensor([[item]], device=state.h.device))  # (1, 1, D)
        if self.lstm:
            assert state.c is not None
            _, (h, c) = self.rnn(x, (state.h, state.c))
            return RnnState(h, c, state.length + 1)
        _, h = self.rnn(x, state.h)
        return RnnState(h, None, state.length + 1)

    def from_history(self, items: list[int]) -> RnnState:
        state = self.initial()
        for item in items:
            state = self.step(state, item)
        return state

    @torch.inference_mode()
    def query(self, state: RnnState) -> torch.Tensor:
        """(D,) the next-item query; zeros for an empty history, as the model gives."""
        return self.model.similarity.query(state.h[-1, 0])

    def exact_for(self, state: RnnState) -> bool:
        """Whether :meth:`query` equals the model's windowed encoding for this history."""
        return state.length <= self.max_len
