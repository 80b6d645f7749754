"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from seqrec.models.base import SequenceEncoder
from seqrec.models.layers import Block, attention_mask, check_positions, item_positions


@dataclass(frozen=True)
class SASRecConfig:
    n_items: int
    max_len: int = 50
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 1
    dropout: float = 0.2
    ff_dim: int | None = None  # None: same as dim, as in the original
    norm_first: bool = True  # pre-norm blocks (False: post-norm)
    original_norm: bool = False  # the original SASRec code's norm placement (overrides norm_first; see Block)
    tie_embeddings: bool = True  # score with the input item embeddings
    positions: str = "start"  # learned positions counted from the first item ("start") or the last ("end")

    def __post_init__(self) -> None:
        check_positions(self.positions)


class SASRecEncoder(SequenceEncoder):
    name = "sasrec"
    causal = True

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = c = config
        self.item_emb = nn.Embedding(c.n_items + 1, c.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.dim, c.n_heads, c.ff_dim or c.dim, c.dropout, self.block_norm) for _ in range(c.n_layers))
        self.final_norm = nn.LayerNorm(c.dim) if c.norm_first or c.original_norm else nn.Identity()
        self.out_emb = None if c.tie_embeddings else nn.Embedding(c.n_items + 1, c.dim, padding_idx=0)
        self.apply(_init)

    @property
    def block_norm(self) -> str:
        c = self.config
        return "sasrec" if c.original_norm else "pre" if c.norm_first else "post"

    def encode(self, items: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        items = items[:, -self.config.max_len :]
        real = (items > 0).unsqueeze(-1)  # (B, L, 1)
        pos = self.pos_emb(item_positions(items, self.config.positions))
        x = self.item_emb(items) * math.sqrt(self.config.dim) + pos
        x = self.drop(x) * real  # (B, L, D)
        mask = attention_mask(items, causal=True)
        for block in self.blocks:
            x = block(x, mask) * real
        return self.final_norm(x)

    def item_embeddings(self) -> torch.Tensor:
        return (self.out_emb or self.item_emb).weight


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
