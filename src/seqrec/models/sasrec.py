"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from seqrec.items.tower import ItemTower, TowerConfig
from seqrec.models.base import SequenceModel
from seqrec.models.layers import Block, TransformerConfig, attention_mask, item_positions
from seqrec.settings import setting


@dataclass(frozen=True)
class SASRecConfig(TransformerConfig):
    original_norm: bool = setting(False, "the original SASRec code's layer-norm placement (normalised "
                                  "queries only; overrides norm_first)")
    tie_embeddings: bool = setting(True, "score with the input item embeddings (off: a separate output table)")
    lowpass: float = setting(0.0, "weight of a causal low-pass branch mixed with attention in every block "
                             "(BSARec's inductive bias; 0: attention alone)", low=0.0, high=1.0)
    lowpass_window: int = setting(8, "the low-pass branch's window: each position's last N items", low=1)


class SASRecModel(SequenceModel):
    name = "sasrec"
    causal = True

    def __init__(self, config: SASRecConfig, tower: ItemTower | None = None) -> None:
        super().__init__()
        self.config = c = config
        output = "tied" if c.tie_embeddings else "table"
        self.tower = tower or ItemTower(TowerConfig(c.n_items, c.dim, output=output))
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.dim, c.n_heads, c.ff_dim or c.dim, c.dropout, self.block_norm, lowpass=c.lowpass,
                  lowpass_window=c.lowpass_window) for _ in range(c.n_layers))
        self.final_norm = nn.LayerNorm(c.dim) if c.norm_first or c.original_norm else nn.Identity()
        self.apply(init_weights)
        self.setup_similarity(c)

    @property
    def block_norm(self) -> str:
        c = self.config
        return "sasrec" if c.original_norm else "pre" if c.norm_first else "post"

    def encode(self, x: torch.Tensor, items: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        real = (items > 0).unsqueeze(-1)  # (B, L, 1)
        pos = self.pos_emb(item_positions(items, self.config.positions))
        x = self.drop(x * math.sqrt(self.config.dim) + pos) * real  # (B, L, D)
        mask = attention_mask(items, causal=True)
        for block in self.blocks:
            x = block(x, mask, real) * real
        return self.final_norm(x)


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) for every linear and embedding weight, zero biases."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
