"""Most-popular baseline: every user gets the items seen most often in training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from seqrec.data.batch import SequenceBatch
from seqrec.items.tower import ItemTable
from seqrec.models.base import ModelConfig, SequenceModel


@dataclass(frozen=True)
class PopularConfig(ModelConfig):
    pass


class PopularModel(SequenceModel):
    """Every query is the constant 1 and the catalog table holds training counts: score = count."""

    name = "popular"
    trainable = False

    def __init__(self, config: PopularConfig) -> None:
        super().__init__()
        self.config = config
        self.counts: torch.Tensor
        self.register_buffer("counts", torch.zeros(config.n_items + 1, 1))  # (N + 1, 1)

    def fit_counts(self, items: np.ndarray) -> None:
        """Count training events (internal item ids)."""
        counts = np.bincount(items, minlength=self.config.n_items + 1).astype(np.float32)
        counts[0] = 0.0
        self.counts.copy_(torch.from_numpy(counts)[:, None])

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        items = batch.items[:, -self.config.max_len :]
        return torch.ones(*items.shape, 1, device=items.device)  # (B, L, 1)

    def item_table(self) -> ItemTable:
        return ItemTable(self.counts, None)
