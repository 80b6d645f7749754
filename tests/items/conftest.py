"""Shared pieces of the item tower tests: a tiny deterministic text encoder and small feature/text files."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from seqrec.data.preprocess import Dataset
from seqrec.datasets.synthetic import markov_dataset


class HashEncoder:
    """Deterministic stand-in for the sentence encoder: a normalised vector from each text's hash."""

    name = "hash-8"
    dim = 8

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            raw = np.frombuffer(hashlib.sha256(text.encode()).digest()[: self.dim], dtype=np.uint8)
            vec = raw.astype(np.float32) - 127.5
            out[i] = vec / np.linalg.norm(vec)
        return out


@pytest.fixture
def encoder() -> HashEncoder:
    return HashEncoder()


@pytest.fixture
def data() -> Dataset:
    return markov_dataset(n_users=80, n_items=24, length=10)


def write_files(folder: Path, data: Dataset, skip: int = 2, extra: int = 1) -> tuple[Path, Path]:
    """A feature CSV (genre multi-valued, brand single, price numeric) and a text CSV for the catalog,
    leaving out the first ``skip`` items and adding ``extra`` ids the log never mentions."""
    ids = [str(v) for v in data.items.external][skip:] + [f"ghost{i}" for i in range(extra)]
    lines = ["item_id,genre,brand,price"]
    text = ["item_id,title,description"]
    for n, item in enumerate(ids):
        lines.append(f"{item},g{n % 3}|g{n % 5},b{n % 4},{1.5 * (n % 7) + n}")
        text.append(f"{item},Item {item},A thing of kind {n % 3}")
    feats, texts = folder / "features.csv", folder / "text.csv"
    feats.write_text("\n".join(lines) + "\n")
    texts.write_text("\n".join(text) + "\n")
    return feats, texts
