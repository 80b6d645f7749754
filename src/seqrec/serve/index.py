"""The loaded model as the service uses it: id lookups, catalog scoring and similar items.

Scoring goes through :func:`seqrec.eval.evaluate.score_histories`, the function offline
evaluation uses (and through it :mod:`seqrec.scoring`), so served scores are the offline scores
(a test holds them to 1e-5).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seqrec.artifact import Artifact
from seqrec.data.ids import IdMap
from seqrec.data.sequences import Sequences
from seqrec.errors import ArtifactError
from seqrec.eval.evaluate import score_histories
from seqrec.eval.tiled import tile_top

ExternalId = int | str
_INT_TEXT = re.compile(r"[+-]?\d{1,18}")  # fits int64; longer digit strings stay text and match nothing


class RequestIds:
    """External id <-> internal index through a dict: no pandas on the request path, no overflow.

    Ids arrive as JSON ints or strings (a URL always gives a string), so both are reduced to one
    canonical text: for an integer-keyed map ``7``, ``"7"`` and ``"+7"`` are the same id.
    """

    def __init__(self, ids: IdMap) -> None:
        self.numeric = ids.external.dtype.kind in "iu"
        self.external: list[ExternalId] = [int(v) if self.numeric else str(v) for v in ids.external.tolist()]
        self.offset = ids.offset
        self._index = {str(v): i + ids.offset for i, v in enumerate(self.external)}

    def __len__(self) -> int:
        return len(self.external)

    def canonical(self, raw: ExternalId) -> str:
        text = str(raw)
        if self.numeric and _INT_TEXT.fullmatch(text):
            return str(int(text))
        return text

    def internal(self, canonical: str) -> int:
        """Internal index, or -1 when the id is unknown."""
        return self._index.get(canonical, -1)

    def internal_many(self, canonical: list[str]) -> np.ndarray:
        get = self._index.get
        return np.fromiter((get(c, -1) for c in canonical), dtype=np.int64, count=len(canonical))

    def external_of(self, internal: int) -> ExternalId:
        return self.external[internal - self.offset]


@dataclass(frozen=True)
class ScoreRequest:
    history: np.ndarray  # (n,) internal item ids, oldest first, n >= 1
    k: int
    exclude_seen: bool
    banned: np.ndarray  # (m,) internal item ids never to return


@dataclass(frozen=True)
class Ranked:
    items: np.ndarray  # (<= k,) internal item ids, best first
    scores: np.ndarray  # (<= k,) float32


def model_version(artifact_dir: Path, model_name: str) -> str:
    """``<model>-<first 16 hex of sha256(model.safetensors)>``: changes whenever the weights do."""
    digest = hashlib.sha256()
    with open(artifact_dir / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{model_name}-{digest.hexdigest()[:16]}"


class ServedModel:
    def __init__(self, artifact: Artifact, version: str) -> None:
        self.model = artifact.model.eval()
        self.model_name = artifact.model_name
        self.version = version
        data = artifact.dataset
        self.items = RequestIds(data.items)
        self.users = RequestIds(data.users)
        self.titles = data.item_titles
        self.sequences = data.sequences
        with torch.inference_mode():
            emb = self.model.item_table().weight.detach().float()  # (N + 1, D)
            self._unit = F.normalize(emb, dim=1)  # rows of zeros stay zeros: cosine 0
        self._check(int(emb.shape[0]) - 1)

    def _check(self, n_model: int) -> None:
        """Catch artifacts whose parts disagree at start-up, not as a 500 on some later request."""
        seqs = self.sequences
        problems = []
        if n_model != len(self.items):
            problems.append(f"the model has {n_model} items but items.json lists {len(self.items)}")
        if seqs.n_users != len(self.users):
            problems.append(f"sequences.safetensors has {seqs.n_users} users but users.json {len(self.users)}")
        if len(seqs.items) and (seqs.items.min() < 1 or seqs.items.max() > n_model):
            problems.append("sequences.safetensors holds item ids outside the catalog")
        if self.titles is not None and len(self.titles) != len(self.items):
            problems.append(f"items.json has {len(self.titles)} titles for {len(self.items)} items")
        if problems:
            raise ArtifactError(f"inconsistent artifact: {'; '.join(problems)}; retrain or restore it")
        if getattr(self.model.config, "use_time", False):
            # Served scores must equal offline ones; the service does not feed event times yet.
            raise ArtifactError("this HSTU artifact uses the relative time bias, which serving does not support "
                                "yet; retrain it without use_time to serve it")

    @property
    def n_items(self) -> int:
        return len(self.items)

    def title(self, internal: int) -> str | None:
        return self.titles[internal - 1] if self.titles is not None else None

    def artifact_history(self, user: int) -> np.ndarray:
        """(n,) the training-data history of an internal user, oldest first."""
        return self.sequences.get(user)

    def score(self, requests: list[ScoreRequest]) -> list[Ranked]:
        """Top-k for many histories with one forward pass (the micro-batcher calls this)."""
        lengths = np.array([len(r.history) for r in requests], dtype=np.int64)
        seqs = Sequences.from_lengths(lengths, np.concatenate([r.history for r in requests]))
        with torch.inference_mode():
            scores = score_histories(self.model, seqs, np.arange(len(requests)), exclude_seen=False)  # (R, N + 1)
            for row, r in enumerate(requests):
                # The same masking as mask_seen(), per row, since each request chooses its own.
                if r.exclude_seen:
                    scores[row, torch.from_numpy(r.history).to(scores.device)] = float("-inf")
                if len(r.banned):
                    scores[row, torch.from_numpy(r.banned).to(scores.device)] = float("-inf")
            top_values, top_indices = tile_top(scores, max(r.k for r in requests))
        values, indices = top_values.cpu().numpy(), top_indices.cpu().numpy()
        return [_finite(indices[row, : r.k], values[row, : r.k]) for row, r in enumerate(requests)]

    def similar(self, item: int, k: int) -> Ranked:
        """Nearest items to an internal item by cosine of the output embeddings."""
        with torch.inference_mode():
            sims = self._unit @ self._unit[item]  # (N + 1,)
            sims[0] = float("-inf")  # padding
            sims[item] = float("-inf")  # the item itself
            top = torch.topk(sims, k)
        return _finite(top.indices.cpu().numpy(), top.values.cpu().numpy())


def _finite(items: np.ndarray, scores: np.ndarray) -> Ranked:
    keep = np.isfinite(scores)  # excluded items sit at -inf and are never returned
    return Ranked(items[keep], scores[keep])
