"""Item ids -> vectors, for the encoder's inputs and for the catalog table that scores every item.

One module serves every model; what differed between them is a :class:`TowerConfig`:

- ``output="tied"``: the input table scores the catalog too (SASRec, BERT4Rec, HSTU);
- ``output="table"``: a separate (N + 1, D) output table, initialised like an embedding;
- ``output="linear"``: the recurrent models' fully connected output layer, (N + 1) rows of width
  ``out_dim`` (their hidden size), with nn.Linear's initialisation and bias.

``extra_tokens`` adds input rows after the catalog (BERT4Rec's mask token) that are never scored.

For catalogs of millions of items, :meth:`ItemTower.use_sparse_rows` makes every lookup of the item
tables give a sparse gradient (only the rows a step used), and :meth:`ItemTower.store_tables` keeps
them in bfloat16; both are training settings (``item_optimizer``, ``item_dtype``) applied by the
optimizer factory, not part of the tower's config.
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

    def fp32(self) -> ItemTable:
        """A detached float32 copy (scoring many batches against a bf16 or trained table)."""
        return ItemTable(self.weight.detach().float(), None if self.bias is None else self.bias.detach().float())


class SparseItemTable(ItemTable):
    """An :class:`ItemTable` whose rows the scorer gathers from ``source`` with sparse gradients.

    ``source`` is the table's parameter itself, which may hold rows after the catalog (the mask
    token): a slice of it would not pass a sparse gradient back. Full-catalog paths use ``weight``.
    """

    source: torch.Tensor  # (N + 1 + extra, D) the leaf parameter ``weight`` is (a view of)

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor | None, source: torch.Tensor) -> SparseItemTable:
        table = cls(weight, bias)
        table.source = source
        return table


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
        self.sparse_rows = False  # see use_sparse_rows
        self._saves_float32 = False  # see store_tables

    def row_tables(self) -> list[torch.Tensor]:
        """The parameters with one row per item: the input table and a separate output table or layer."""
        tables = [self.id_emb.weight]
        if self.output is not None:
            tables.append(self.output.weight)
        return tables

    def use_sparse_rows(self, on: bool = True) -> None:
        """Item lookups (inputs, and the scorer's gathers of sampled rows) give sparse gradients, which
        hold only the rows used; full-catalog losses still give the output table a dense one."""
        self.sparse_rows = on
        self.id_emb.sparse = on
        if isinstance(self.output, nn.Embedding):
            self.output.sparse = on

    def store_tables(self, dtype: torch.dtype) -> None:
        """Keep the item tables in ``dtype`` (bfloat16 halves them); inputs are returned in float32. Saved
        weights (state_dict: artifacts, checkpoints) stay float32, the dtype the model's config implies."""
        for weight in self.row_tables():
            weight.data = weight.data.to(dtype)
        if dtype != torch.float32 and not self._saves_float32:
            self.register_state_dict_post_hook(_float32_tables)
            self._saves_float32 = True

    @property
    def n_items(self) -> int:
        return self.config.n_items

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.id_emb(ids)  # (..., dim)
        return x.float() if x.dtype == torch.bfloat16 else x  # a bfloat16 table feeds a float32 encoder

    def table(self) -> ItemTable:
        if self.output is None:
            weight = source = self.id_emb.weight
            # a slice would add a copy to every backward pass; only extra tokens need one
            if self.config.extra_tokens:
                weight = weight[: self.n_items + 1]
            bias = self.bias
        else:
            source = weight = self.output.weight
            bias = self.output.bias if isinstance(self.output, nn.Linear) else self.bias
        return SparseItemTable.of(weight, bias, source) if self.sparse_rows else ItemTable(weight, bias)


def _float32_tables(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, meta: object) -> None:
    """state_dict hook: tables stored in a lower precision are saved as float32."""
    for key, value in state.items():
        if key.startswith(prefix) and value.dtype == torch.bfloat16:
            state[key] = value.float()
