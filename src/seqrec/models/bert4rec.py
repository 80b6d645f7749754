"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional encoder trained with the masked-item
(cloze) objective; it predicts the next item from a mask token appended to the history."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from seqrec.models.base import SequenceEncoder
from seqrec.models.layers import Block, attention_mask, check_positions, item_positions
from seqrec.models.sasrec import _init


@dataclass(frozen=True)
class BERT4RecConfig:
    n_items: int
    max_len: int = 50
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    ff_dim: int | None = None  # None: 4 x dim
    norm_first: bool = False  # post-norm, as in BERT
    positions: str = "start"  # learned positions counted from the first item ("start") or the last ("end")

    def __post_init__(self) -> None:
        check_positions(self.positions)


class BERT4RecEncoder(SequenceEncoder):
    name = "bert4rec"
    causal = False
    objective = "cloze"

    def __init__(self, config: BERT4RecConfig) -> None:
        super().__init__()
        self.config = c = config
        self.mask_token = c.n_items + 1
        self.item_emb = nn.Embedding(c.n_items + 2, c.dim, padding_idx=0)  # + the mask token
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.norm = nn.LayerNorm(c.dim)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.dim, c.n_heads, c.ff_dim or 4 * c.dim, c.dropout, "pre" if c.norm_first else "post", "gelu")
            for _ in range(c.n_layers))
        self.head = nn.Sequential(nn.Linear(c.dim, c.dim), nn.GELU(), nn.LayerNorm(c.dim))
        self.bias = nn.Parameter(torch.zeros(c.n_items + 1))
        self.apply(_init)

    def encode(self, items: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        items = items[:, -self.config.max_len :]
        real = (items > 0).unsqueeze(-1)  # (B, L, 1)
        pos = self.pos_emb(item_positions(items, self.config.positions))
        x = self.item_emb(items) * math.sqrt(self.config.dim) + pos
        x = self.drop(self.norm(x)) * real  # (B, L, D)
        mask = attention_mask(items, causal=False)
        for block in self.blocks:
            x = block(x, mask) * real
        return self.head(x)

    def encode_last(self, items: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        """Append the mask token (dropping the oldest item if the window is full)."""
        mask = torch.full_like(items[:, :1], self.mask_token)
        return self.encode(torch.cat([items[:, 1:], mask], dim=1))[:, -1]

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight[: self.config.n_items + 1]

    def item_bias(self) -> torch.Tensor | None:
        return self.bias
