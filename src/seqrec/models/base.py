"""The encoder contract shared by every model."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class SequenceEncoder(nn.Module):
    """Encodes left-padded item sequences; scoring is ``hidden @ item_embeddings().T + bias``.

    A model only encodes: losses, negative sampling and optimisers live outside it.
    """

    name: ClassVar[str]
    causal: ClassVar[bool] = True  # position t sees only positions <= t
    objective: ClassVar[str] = "next"  # default training objective: "next" or "cloze"
    trainable: ClassVar[bool] = True
    config: Any

    def encode(self, items: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) item ids [and (B, L) event times in seconds] -> (B, L, D) hidden states.

        Models that do not use time ignore ``times``.
        """
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """(N + 1, D) output embeddings; row 0 is padding and is never recommended."""
        raise NotImplementedError

    def item_bias(self) -> torch.Tensor | None:
        """(N + 1,) output bias, or None."""
        return None

    def encode_last(self, items: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) history [and its times] -> (B, D) state that predicts the next item."""
        return self.encode(items, times)[:, -1]

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) hidden -> (..., N + 1) scores over the whole catalog (padding at -inf)."""
        logits = hidden @ self.item_embeddings().T
        bias = self.item_bias()
        if bias is not None:
            logits = logits + bias
        logits[..., 0] = float("-inf")
        return logits

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def score_tile(out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               lo: int, hi: int) -> torch.Tensor:
    """Write the scores of items ``lo:hi`` into ``out`` (R, hi - lo), as :meth:`SequenceEncoder.score`
    would give them (padding item 0 at -inf), without allocating a new (R, hi - lo) block."""
    if out.is_contiguous():
        torch.mm(hidden, weight[lo:hi].T, out=out)
    else:  # a column slice of a wider buffer (the catalog's last, partial tile)
        out.copy_(hidden @ weight[lo:hi].T)
    if bias is not None:
        out += bias[lo:hi]
    if lo == 0:
        out[:, 0] = float("-inf")  # padding is never a candidate
    return out


def left_to_right(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, L, ...) left-padded -> right-padded (real items first), by rolling each row."""
    L = x.shape[1]
    idx = (torch.arange(L, device=x.device)[None, :] + (L - lengths)[:, None]) % L  # (B, L)
    return _gather_rows(x, idx)


def right_to_left(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`left_to_right`."""
    L = x.shape[1]
    idx = (torch.arange(L, device=x.device)[None, :] + lengths[:, None]) % L  # (B, L)
    return _gather_rows(x, idx)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if x.dim() == 2:
        return torch.gather(x, 1, idx)
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))
