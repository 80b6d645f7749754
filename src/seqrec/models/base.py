"""What every model shares: its config base, the module contract, and the one forward pass.

A model = an item tower (ids -> vectors), a sequence encoder over the embedded inputs, and a
similarity (how queries meet item vectors; the product itself lives in :mod:`seqrec.scoring`).
``forward(batch)`` runs all of it, so wrappers such as DistributedDataParallel or Opacus see
every parameter used; losses, evaluation and serving score the returned queries against
:meth:`SequenceModel.item_table`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from seqrec.data.batch import SequenceBatch
from seqrec.items.tower import ItemTable, ItemTower
from seqrec.scoring import SIMILARITIES, DotSimilarity, Similarity, make_similarity
from seqrec.settings import check_fields, setting


@dataclass(frozen=True)
class ModelConfig:
    n_items: int  # catalog size, set from the data (not a setting)
    max_len: int = setting(50, "longest history the model reads: the most recent items", low=1)

    def __post_init__(self) -> None:
        check_fields(self)
        if isinstance(self.n_items, bool) or not isinstance(self.n_items, int) or self.n_items < 1:
            raise ValueError(f"n_items must be a positive integer, got {self.n_items!r}")


@dataclass(frozen=True)
class NeuralConfig(ModelConfig):
    dim: int = setting(64, "item embedding size", low=1)
    n_layers: int = setting(2, "recurrent or attention layers", low=1)
    dropout: float = setting(0.2, "dropout rate", low=0.0)
    similarity: str = setting("dot", "how queries meet item vectors: dot product, or cosine / temperature "
                              "(L2-normalised query and item vectors)", choices=SIMILARITIES)
    temperature: float = setting(0.05, "temperature of the cosine similarity", low=1e-6)


class SequenceModel(nn.Module):
    """Encodes left-padded item sequences into query states scored against :meth:`item_table`.

    A model only encodes: losses, negative sampling and optimisers live outside it.
    """

    name: ClassVar[str]
    causal: ClassVar[bool] = True  # position t sees only positions <= t
    objective: ClassVar[str] = "next"  # default training objective: "next" or "cloze"
    objectives: ClassVar[tuple[str, ...]] = ("next",)  # the objectives the model can train with
    trainable: ClassVar[bool] = True
    mask_token: int | None = None  # the input id the cloze objective masks with
    config: Any
    tower: ItemTower
    similarity: Similarity = DotSimilarity()

    def setup_similarity(self, config: NeuralConfig) -> None:
        self.similarity = make_similarity(config.similarity, config.temperature)

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        """(B, L) items [and times, user ids] -> (B, L, D) query states, one per position."""
        items = batch.items[:, -self.config.max_len :]
        times = None if batch.times is None else batch.times[:, -self.config.max_len :]
        x = self.tower(items)
        users = self._modules.get("user_tower")  # user features (seqrec.items.users), when the model has them
        if users is not None:
            x = x + users(batch.users, items)  # the same vector at every real position: causal, padding-free
        return self.similarity.query(self.encode(x, items, times))

    def encode(self, x: torch.Tensor, items: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        """(B, L, D_in) embedded inputs of (B, L) item ids [and times] -> (B, L, D) hidden states."""
        raise NotImplementedError

    def next_inputs(self, items: torch.Tensor) -> torch.Tensor:
        """The inputs whose last position predicts the item after ``items`` (identity for next-item models)."""
        return items

    def predict_next(self, items: torch.Tensor, times: torch.Tensor | None = None,
                     users: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) history [and its times, (B,) user ids] -> (B, D) query that scores the next item."""
        return self(SequenceBatch(self.next_inputs(items), times=times, users=users))[:, -1]

    def item_table(self) -> ItemTable:
        """The (N + 1, D) catalog [and (N + 1,) bias] the queries are scored against."""
        return self.similarity.items(self.tower.table())

    @property
    def device(self) -> torch.device:
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
