"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional encoder trained with the masked-item
(cloze) objective; it predicts the next item from a mask token appended to the history."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from seqrec.items.tower import ItemTower, TowerConfig
from seqrec.models.base import SequenceModel
from seqrec.models.layers import Block, TransformerConfig, attention_mask, item_positions
from seqrec.models.sasrec import init_weights
from seqrec.settings import setting

HEADS = ("mlp", "none")


@dataclass(frozen=True)
class BERT4RecConfig(TransformerConfig):
    n_heads: int = setting(2, "attention heads (dim must be divisible by it)", low=1)
    norm_first: bool = setting(False, "layer norm before each sub-layer (pre-norm); off: after each residual sum")
    scale_embeddings: bool = setting(True, "multiply item vectors by sqrt(dim) before the positions are added; "
                                     "off: their plain sum, as in BERT4Rec's original code", added=True)
    head: str = setting("mlp", "output transform before the item table: mlp (Linear, GELU, LayerNorm, as in "
                        "BERT4Rec's original code) or none (the encoder's states themselves)", choices=HEADS,
                        added=True)


class BERT4RecModel(SequenceModel):
    name = "bert4rec"
    causal = False
    objective = "cloze"
    objectives = ("cloze",)  # bidirectional attention would let each position see its own next-item target

    def __init__(self, config: BERT4RecConfig, tower: ItemTower | None = None) -> None:
        super().__init__()
        self.config = c = config
        self.mask_token = c.n_items + 1
        self.tower = tower or ItemTower(TowerConfig(c.n_items, c.dim, output="tied", bias=True, extra_tokens=1))
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.norm = nn.LayerNorm(c.dim)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.dim, c.n_heads, c.ff_dim or 4 * c.dim, c.dropout, "pre" if c.norm_first else "post", "gelu")
            for _ in range(c.n_layers))
        self.head = (nn.Sequential(nn.Linear(c.dim, c.dim), nn.GELU(), nn.LayerNorm(c.dim)) if c.head == "mlp"
                     else nn.Identity())
        self.apply(init_weights)
        self.setup_similarity(c)

    def encode(self, x: torch.Tensor, items: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        real = (items > 0).unsqueeze(-1)  # (B, L, 1)
        pos = self.pos_emb(item_positions(items, self.config.positions))
        scale = math.sqrt(self.config.dim) if self.config.scale_embeddings else 1.0
        x = self.drop(self.norm(x * scale + pos)) * real  # (B, L, D)
        mask = attention_mask(items, causal=False)
        for block in self.blocks:
            x = block(x, mask) * real
        return self.head(x)

    def next_inputs(self, items: torch.Tensor) -> torch.Tensor:
        """Append the mask token (dropping the oldest item if the window is full)."""
        mask = torch.full_like(items[:, :1], self.config.n_items + 1)  # the mask token
        return torch.cat([items[:, 1:], mask], dim=1)
