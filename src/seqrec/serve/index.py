"""The loaded model as the service uses it: id lookups, catalog scoring and similar items.

Scoring goes through :func:`seqrec.eval.evaluate.score_histories`, the function offline
evaluation uses (and through it :mod:`seqrec.scoring`), so served scores are the offline scores
(a test holds them to 1e-5).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seqrec.artifact import Artifact
from seqrec.data.batch import eval_inputs, eval_widths
from seqrec.data.ids import IdMap
from seqrec.data.sequences import Sequences
from seqrec.errors import ArtifactError
from seqrec.eval.evaluate import encode_rows, score_histories
from seqrec.eval.tiled import tile_top
from seqrec.items.users import user_tower_of
from seqrec.privacy.ids import pseudonym
from seqrec.scoring import catalog_scores
from seqrec.serve.ann import ApproxIndex, build_index

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


class PseudonymousIds(RequestIds):
    """The users of an artifact trained with pseudonymised ids: a request's raw id becomes its keyed
    pseudonym (the HMAC applied at ingest to the id's text) before it reaches the store, a cache or the
    model's id map, so the service keeps no raw user id anywhere."""

    def __init__(self, ids: IdMap, key: bytes) -> None:
        super().__init__(ids)
        self.numeric = False
        self.key = key

    def canonical(self, raw: ExternalId) -> str:
        return pseudonym(self.key, str(raw).strip())


@dataclass(frozen=True)
class ScoreRequest:
    history: np.ndarray  # (n,) internal item ids, oldest first, n >= 1
    k: int
    exclude_seen: bool
    banned: np.ndarray  # (m,) internal item ids never to return
    query: torch.Tensor | None = None  # (D,) the history's query when known already (a recurrent state)
    user: int = -1  # internal user id whose features the model reads (a model with user features); -1: unknown


@dataclass(frozen=True)
class Ranked:
    items: np.ndarray  # (<= k,) internal item ids, best first
    scores: np.ndarray  # (<= k,) float32


def model_version(artifact: Artifact) -> str:
    """``<model>-<first 16 hex of sha256(model.safetensors)>``: changes whenever the weights do. The digest
    is the one checked when the artifact was loaded, so the file is not read again."""
    return f"{artifact.model_name}-{artifact.digests['model.safetensors'][:16]}"


class ServedModel:
    def __init__(self, artifact: Artifact, version: str, index_mode: str = "exact", backend: str = "torch",
                 threads: int = 1, pseudonym_key: bytes | None = None) -> None:
        self.model = artifact.model.eval()
        self.model_name = artifact.model_name
        self.version = version
        data = artifact.dataset
        self.items = RequestIds(data.items)
        self.pseudonym_key = pseudonym_key
        self.users = RequestIds(data.users) if pseudonym_key is None else PseudonymousIds(data.users, pseudonym_key)
        self.titles = data.item_titles
        self.sequences = data.sequences
        # A model trained with user features reads the user's row of its table (unknown users: the learned
        # "unknown" row), as offline evaluation does.
        self.user_features = user_tower_of(self.model) is not None
        with torch.inference_mode():
            # Computed once: for a cosine similarity or a feature/text tower it is a pass over the catalog.
            self._table = self.model.item_table()
            emb = self._table.weight.detach().float()  # (N + 1, D)
            self._unit = F.normalize(emb, dim=1)  # rows of zeros stay zeros: cosine 0
        self._check(int(emb.shape[0]) - 1)
        self.ann: ApproxIndex | None = None
        if index_mode != "exact":
            table = self._table
            weight = table.weight.detach().float().cpu().numpy()
            bias = None if table.bias is None else table.bias.detach().float().cpu().numpy()
            self.ann = build_index(weight, bias, index_mode)
        self.index_kind = "exact" if self.ann is None else self.ann.kind
        self.backend = backend
        if backend == "onnxruntime" and self.user_features:  # the exported encoder takes item ids only
            raise ArtifactError("--backend onnxruntime cannot read this model's user features; serve it with "
                                "--backend torch")
        self._session = onnx_session(self.model, self.model_name, threads) if backend == "onnxruntime" else None

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
        users = np.array([r.user for r in requests], dtype=np.int64) if self.user_features else None
        given = self._given_queries(seqs, requests, users)
        if self.ann is not None:
            return self._score_approx(seqs, requests, given, users)
        with torch.inference_mode():
            if given is not None:
                scores = catalog_scores(given, self._table).float()
            elif self._session is None:
                scores = score_histories(self.model, seqs, np.arange(len(requests)), exclude_seen=False,
                                         table=self._table, users=users)  # (R, N + 1)
            else:
                scores = catalog_scores(self._encode(seqs), self._table).float()
            for row, r in enumerate(requests):
                # The same masking as mask_seen(), per row, since each request chooses its own.
                if r.exclude_seen:
                    scores[row, torch.from_numpy(r.history).to(scores.device)] = float("-inf")
                if len(r.banned):
                    scores[row, torch.from_numpy(r.banned).to(scores.device)] = float("-inf")
            top_values, top_indices = tile_top(scores, max(r.k for r in requests))
        values, indices = top_values.cpu().numpy(), top_indices.cpu().numpy()
        return [_finite(indices[row, : r.k], values[row, : r.k]) for row, r in enumerate(requests)]

    def _given_queries(self, seqs: Sequences, requests: list[ScoreRequest],
                       users: np.ndarray | None = None) -> torch.Tensor | None:
        """(R, D) queries when some requests bring their own (the rest encoded as usual); None when none does."""
        missing = np.array([i for i, r in enumerate(requests) if r.query is None], dtype=np.int64)
        if len(missing) == len(requests):
            return None
        with torch.inference_mode():
            rows = [r.query for r in requests]
            if len(missing):
                encoded = self._encode(Sequences.from_lengths(seqs.lengths[missing],
                                                              np.concatenate([requests[i].history for i in missing])),
                                       None if users is None else users[missing])
                for n, i in enumerate(missing.tolist()):
                    rows[i] = encoded[n]
            return torch.stack([q for q in rows if q is not None]).to(self.model.device)

    def _score_approx(self, seqs: Sequences, requests: list[ScoreRequest], given: torch.Tensor | None = None,
                      users: np.ndarray | None = None) -> list[Ranked]:
        assert self.ann is not None
        with torch.inference_mode():
            query = (self._encode(seqs, users) if given is None else given).float().cpu().numpy()
        excluded = [np.concatenate([r.history, r.banned]) if r.exclude_seen else r.banned for r in requests]
        found = self.ann.search(query, max(r.k for r in requests), excluded)
        return [_finite(found.items[row][: r.k], found.scores[row][: r.k]) for row, r in enumerate(requests)]

    def _encode(self, seqs: Sequences, users: np.ndarray | None = None) -> torch.Tensor:
        """(R, D) queries of every row of ``seqs`` (``users``: each row's internal user, for a model with user
        features): torch, or the exported graph in onnxruntime (rows grouped by the same input widths as
        offline encoding)."""
        rows = np.arange(seqs.n_users)
        if self._session is None:
            return encode_rows(self.model, seqs, rows, users)
        widths = eval_widths(seqs, int(self.model.config.max_len), rows)
        out: np.ndarray | None = None
        for width in np.unique(widths):
            sel = np.flatnonzero(widths == width)
            query = self._session.run(None, {"items": eval_inputs(seqs, int(width), rows[sel]).numpy()})[0]
            if out is None:
                out = np.empty((len(rows), query.shape[1]), dtype=np.float32)
            out[sel] = query
        assert out is not None
        return torch.from_numpy(out).to(self.model.device)

    def similar(self, item: int, k: int) -> Ranked:
        """Nearest items to an internal item by cosine of the output embeddings."""
        with torch.inference_mode():
            sims = self._unit @ self._unit[item]  # (N + 1,)
            sims[0] = float("-inf")  # padding
            sims[item] = float("-inf")  # the item itself
            top = torch.topk(sims, k)
        return _finite(top.indices.cpu().numpy(), top.values.cpu().numpy())


def onnx_session(model: torch.nn.Module, name: str, threads: int) -> Any:
    """The model's encoder exported to ONNX (as `seqrec export` writes it) in an onnxruntime session."""
    try:
        import onnxruntime as ort

        from seqrec.export import encoder_module, export_module, sample_histories
    except ImportError as exc:
        raise ArtifactError(f"--backend onnxruntime needs {exc.name}: pip install 'seqrec[onnx]'") from None
    module = encoder_module(model.cpu())
    config: Any = getattr(model, "config", None)
    n_items, max_len = int(config.n_items), int(config.max_len)
    with tempfile.TemporaryDirectory(prefix="seqrec-onnx-") as tmp:
        path = Path(tmp) / "encoder.onnx"
        export_module(module, sample_histories(n_items, max_len)[2], path, name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])


def _finite(items: np.ndarray, scores: np.ndarray) -> Ranked:
    keep = np.isfinite(scores)  # excluded items sit at -inf and are never returned
    return Ranked(items[keep], scores[keep])
