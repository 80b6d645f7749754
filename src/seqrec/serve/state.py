"""Per-user recurrent state for lstm / gru4rec: one RNN step per event instead of re-encoding the history.

``step`` advances a user's state by one item in O(1); ``query`` gives the next-item query from it, equal
to ``model.predict_next(history)`` (within float error) as long as the history is at most ``max_len``
items. Beyond that the model reads only the last ``max_len`` items (a sliding window), which a recurrent
state cannot forget incrementally, so such histories are re-encoded (:meth:`RecurrentStepper.exact_for`).

The service keeps the state in the event store beside the history (:class:`seqrec.serve.store.CachedState`):
tagged with the model version, the number of history items folded in and a digest of those items, so a
state is used only for the exact history and model it was computed from (see :func:`history_digest`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from seqrec.errors import SeqrecError


@dataclass(frozen=True)
class RnnState:
    h: torch.Tensor  # (n_layers, 1, H)
    c: torch.Tensor | None  # (n_layers, 1, H) for an LSTM
    length: int  # items folded in


def history_digest(history: np.ndarray) -> bytes:
    """16 bytes naming a history of internal item ids exactly (order included)."""
    return hashlib.blake2b(np.ascontiguousarray(history, dtype="<i8").tobytes(), digest_size=16).digest()


def is_recurrent(model: nn.Module) -> bool:
    from seqrec.models.gru4rec import GRU4RecModel
    from seqrec.models.lstm import LSTMModel

    return isinstance(model, (GRU4RecModel, LSTMModel))


class RecurrentStepper:
    def __init__(self, model: nn.Module) -> None:
        from seqrec.models.lstm import LSTMModel

        if not is_recurrent(model):
            raise SeqrecError(f"incremental state needs a recurrent model (lstm, gru4rec), not {type(model).__name__}")
        net: Any = model
        self.model: Any = net.eval()
        self.rnn: nn.RNNBase = net.rnn
        self.lstm = isinstance(model, LSTMModel)
        self.max_len = int(net.config.max_len)
        self._shape = (self.rnn.num_layers, 1, self.rnn.hidden_size)

    def initial(self) -> RnnState:
        p = next(self.rnn.parameters())
        h = p.new_zeros(self._shape)
        return RnnState(h, h.clone() if self.lstm else None, 0)

    @torch.inference_mode()
    def step(self, state: RnnState, item: int) -> RnnState:
        """The state after one more item (an internal id >= 1)."""
        return self.advance(state, [item])

    @torch.inference_mode()
    def advance(self, state: RnnState, items: list[int] | np.ndarray) -> RnnState:
        """The state after ``items`` (internal ids >= 1), one RNN call for all of them."""
        if not len(items):
            return state
        ids = torch.as_tensor(np.asarray(items, dtype=np.int64), device=state.h.device)[None]
        x = self.model.tower(ids)
        users = self.model._modules.get("user_tower")
        if users is not None:  # user features: the unknown user, as predict_next without user ids (serving's)
            x = x + users(None, ids)
        if self.lstm:
            assert state.c is not None
            _, (h, c) = self.rnn(x, (state.h, state.c))
            return RnnState(h, c, state.length + len(items))
        _, h = self.rnn(x, state.h)
        return RnnState(h, None, state.length + len(items))

    def from_history(self, items: list[int] | np.ndarray) -> RnnState:
        return self.advance(self.initial(), items)

    @torch.inference_mode()
    def query(self, state: RnnState) -> torch.Tensor:
        """(D,) the next-item query; zeros for an empty history, as the model gives."""
        return self.model.similarity.query(state.h[-1, 0])

    @torch.inference_mode()
    def queries(self, states: list[RnnState]) -> torch.Tensor:
        """(R, D) the queries of many states at once."""
        return self.model.similarity.query(torch.stack([s.h[-1, 0] for s in states]))

    def exact_for(self, state: RnnState) -> bool:
        """Whether :meth:`query` equals the model's windowed encoding for this history."""
        return state.length <= self.max_len

    # ---- bytes for the store ----------------------------------------------------------------
    def to_bytes(self, state: RnnState) -> bytes:
        parts = [state.h] if state.c is None else [state.h, state.c]
        return b"".join(t.detach().float().cpu().numpy().astype("<f4").tobytes() for t in parts)

    def from_bytes(self, data: bytes, length: int) -> RnnState | None:
        """The state stored as ``data``, or None when its size does not fit this model."""
        n = int(np.prod(self._shape))
        if len(data) != 4 * n * (2 if self.lstm else 1):
            return None
        flat = torch.from_numpy(np.frombuffer(data, dtype="<f4").copy())
        device = next(self.rnn.parameters()).device
        h = flat[:n].view(self._shape).to(device)
        c = flat[n:].view(self._shape).to(device) if self.lstm else None
        return RnnState(h, c, length)
