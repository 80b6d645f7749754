"""Item ids -> vectors, for the encoder's inputs and for the catalog table that scores every item.

One module serves every model; what differed between them is a :class:`TowerConfig`:

- ``output="tied"``: the input table scores the catalog too (SASRec, BERT4Rec, HSTU);
- ``output="table"``: a separate (N + 1, D) output table, initialised like an embedding;
- ``output="linear"``: the recurrent models' fully connected output layer, (N + 1) rows of width
  ``out_dim`` (their hidden size), with nn.Linear's initialisation and bias.

``extra_tokens`` adds input rows after the catalog (BERT4Rec's mask token) that are never scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from seqrec.settings import check_choice

OUTPUTS = ("tied", "table", "linear")


class ItemTable(NamedTuple):
    """The catalog as the scorer sees it; row 0 is padding and is never recommended."""

    weight: torch.Tensor  # (N + 1, D)
    bias: torch.Tensor | None  # (N + 1,) or None


@dataclass(frozen=True)
class TowerConfig:
    n_items: int
    dim: int  # input vector size
    output: str = "tied"  # tied | table | linear (see the module docstring)
    out_dim: int | None = None  # width of the output table or layer; None: dim
    bias: bool = False  # a learned (N + 1,) output bias
    extra_tokens: int = 0  # input-only rows after the catalog (ids n_items + 1, ...)

    def __post_init__(self) -> None:
        check_choice("output", self.output, OUTPUTS)
        if self.output == "tied" and self.out_dim not in (None, self.dim):
            raise ValueError("a tied output table has the input width")


class ItemTower(nn.Module):
    """Maps (...,) item ids to (..., dim) input vectors; :meth:`table` gives the (N + 1, D) catalog."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.id_emb = nn.Embedding(c.n_items + 1 + c.extra_tokens, c.dim, padding_idx=0)
        out_dim = c.out_dim or c.dim
        self.output: nn.Embedding | nn.Linear | None = None
        if c.output == "table":
            self.output = nn.Embedding(c.n_items + 1, out_dim, padding_idx=0)
        elif c.output == "linear":
            self.output = nn.Linear(out_dim, c.n_items + 1, bias=c.bias)
        has_bias = c.bias and c.output != "linear"  # nn.Linear holds its own
        self.bias = nn.Parameter(torch.zeros(c.n_items + 1)) if has_bias else None

    @property
    def n_items(self) -> int:
        return self.config.n_items

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.id_emb(ids)  # (..., dim)

    def table(self) -> ItemTable:
        if self.output is None:
            weight = self.id_emb.weight
            # a slice would add a copy to every backward pass; only extra tokens need one
            return ItemTable(weight[: self.n_items + 1] if self.config.extra_tokens else weight, self.bias)
        if isinstance(self.output, nn.Linear):
            return ItemTable(self.output.weight, self.output.bias)
        return ItemTable(self.output.weight, self.bias)
