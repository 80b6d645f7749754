"""External id <-> internal index maps. Internal item ids start at 1; 0 is padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from seqrec.errors import UnknownIdError


@dataclass(frozen=True)
class IdMap:
    """Maps external ids to internal indices ``offset .. offset + n - 1``.

    ``external[i]`` is the external id of internal index ``i + offset``. Items use
    offset 1 (index 0 is padding); users use offset 0.
    """

    external: np.ndarray  # (n,) int64 or object (str)
    offset: int = 0

    def __len__(self) -> int:
        return int(self.external.shape[0])

    @property
    def _index(self) -> pd.Index:
        return pd.Index(self.external)

    def to_internal(self, ids: Sequence[Any] | np.ndarray, strict: bool = True,
                    kind: str = "id") -> np.ndarray:
        """Internal indices of ``ids``; unknown ids raise (strict) or map to -1."""
        values = np.asarray(coerce_like(self.external, ids))
        pos = self._index.get_indexer(values)
        if strict and (pos < 0).any():
            bad = values[pos < 0][0]
            bad = bad.item() if isinstance(bad, np.generic) else bad  # 7, not np.int64(7)
            raise UnknownIdError(f"unknown {kind} {bad!r}: it was not in the training data")
        return np.where(pos < 0, -1, pos + self.offset).astype(np.int64)

    def to_external(self, internal: np.ndarray) -> np.ndarray:
        return self.external[np.asarray(internal, dtype=np.int64) - self.offset]

    def to_json(self) -> dict[str, Any]:
        kind = "int" if self.external.dtype.kind in "iu" else "str"
        values = [int(v) for v in self.external] if kind == "int" else [str(v) for v in self.external]
        return {"kind": kind, "offset": self.offset, "ids": values}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IdMap:
        dtype = np.int64 if data["kind"] == "int" else object
        return cls(np.asarray(data["ids"], dtype=dtype), int(data["offset"]))


def coerce_like(reference: np.ndarray, ids: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Coerce user-given ids (often strings from a CLI or URL) to the map's id type."""
    arr = np.asarray(ids, dtype=object)
    if reference.dtype.kind in "iu":
        out = np.full(arr.shape, -(2**62), dtype=np.int64)  # never a real id
        for i, v in enumerate(arr.tolist()):
            try:
                out[i] = int(str(v))
            except (ValueError, OverflowError):
                continue
        return out
    return np.asarray([str(v) for v in arr.tolist()], dtype=object)
