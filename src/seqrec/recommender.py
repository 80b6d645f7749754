"""The Python API: ``Recommender(model).fit(dataset) -> evaluate() -> recommend(users)``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from seqrec.artifact import Artifact, load_artifact, save_artifact
from seqrec.data.preprocess import Dataset
from seqrec.data.sequences import Sequences
from seqrec.data.split import EvalSet, Split, make_split
from seqrec.errors import ArtifactError, SeqrecError
from seqrec.eval.evaluate import EvalConfig, evaluate, score_histories
from seqrec.items.features import TowerInputs, build_with_tower
from seqrec.items.users import UserInputs, attach_user_tower
from seqrec.models.base import SequenceModel
from seqrec.models.registry import build_model, make_config
from seqrec.settings import from_dict, to_dict
from seqrec.train.config import TrainConfig
from seqrec.train.loop import FitResult, fit


class Recommender:
    """A sequence model plus the data it knows: fit, evaluate, recommend, save, load.

    ``model_params`` are the model's settings (``max_len``, ``dim``, ...; see ``seqrec train --help``);
    an unknown one is an error naming the nearest valid one.
    """

    def __init__(self, model: str = "gru4rec", config: TrainConfig | None = None, **model_params: Any) -> None:
        self.model_name = model
        self.config = config or TrainConfig()
        self.model_params = model_params
        make_config(model, n_items=1, **model_params)  # fail now, not after reading the data
        self.model: SequenceModel | None = None
        self.dataset: Dataset | None = None
        self.split: Split | None = None
        self.info: dict[str, Any] = {}
        self.data_config: dict[str, Any] | None = None  # how the data was read (the CLI sets it; saved)
        self.tower_inputs: TowerInputs | None = None  # item features/text (seqrec.items.features.prepare_tower)
        self.prepare_model: Callable[[SequenceModel], None] | None = None  # e.g. --init-from (items.transfer)
        self.user_inputs: UserInputs | None = None  # user features (seqrec.items.users.prepare_users)
        self.path: Path | None = None  # the artifact it was loaded from, if any (named in errors)

    # ---- training -------------------------------------------------------------------------
    def fit(self, dataset: Dataset, split: Split | None = None, out_dir: str | Path | None = None,
            resume: bool = False, progress: bool = True,
            on_epoch: Callable[[dict[str, float]], None] | None = None) -> FitResult:
        self.dataset = dataset
        self.split = split or make_split(dataset)
        torch.manual_seed(self.config.seed)
        model_config = make_config(self.model_name, n_items=dataset.n_items, **self.model_params)
        tower = self.tower_inputs
        self.model = (build_model(self.model_name, model_config) if tower is None else
                      build_with_tower(self.model_name, model_config, tower.spec, tower.features, tower.text))
        if self.user_inputs is not None:
            if self.config.privacy.enabled:
                raise SeqrecError("user features cannot be used with private training (--dp-epsilon)")
            attach_user_tower(self.model, self.user_inputs.spec, self.user_inputs.tensors)
        if self.prepare_model is not None:
            self.prepare_model(self.model)
        t0 = time.perf_counter()
        result = fit(self.model, self.split, self.config, Path(out_dir) if out_dir else None, resume,
                     progress, on_epoch)
        self.info.update(split=self.split.kind, valid_time=self.split.valid_time, test_time=self.split.test_time,
                         history=result.history, best_epoch=result.best_epoch, best_valid=result.best_metric,
                         train_seconds=time.perf_counter() - t0, n_parameters=self.model.n_parameters())
        if result.privacy:  # DP-SGD: noise multiplier, sampling rate, epsilon spent, accountant history
            self.info["privacy"] = result.privacy
        return result

    def _ready(self) -> tuple[SequenceModel, Dataset]:
        if self.model is None or self.dataset is None:
            raise SeqrecError("the recommender is not trained yet; call fit() or Recommender.load()")
        return self.model, self.dataset

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self, on: str | EvalSet = "test", ks: Sequence[int] | None = None, exclude_seen: bool = True,
                 sampled: str | None = None, n_negatives: int | None = None) -> dict[str, float]:
        """Full-ranking metrics on ``on`` (or, with ``sampled``, metrics against sampled negatives);
        ``ks`` and ``n_negatives`` default to :class:`EvalConfig`'s."""
        model, dataset = self._ready()
        eval_set = self.eval_set(on) if isinstance(on, str) else on
        split = self.split
        counts = np.bincount(split.train.items, minlength=dataset.n_items + 1) if split else None
        default = EvalConfig()
        cfg = EvalConfig(tuple(ks) if ks is not None else default.ks, exclude_seen, self.config.eval_batch_size,
                         sampled, n_negatives if n_negatives is not None else default.n_negatives)
        return evaluate(model, eval_set, cfg, counts)

    def require_histories(self) -> None:
        """Refuse an artifact written without per-user histories: there is nothing to evaluate on."""
        if self.info.get("histories") is False:
            where = f"{self.path}: " if self.path is not None else ""
            raise SeqrecError(f"{where}written without per-user histories (pseudonymised users), so there is "
                              "nothing to evaluate on; its test metrics are in info.json")

    def eval_set(self, on: str) -> EvalSet:
        """The ``on`` split ('test' or 'valid'): its users' histories and targets."""
        _, dataset = self._ready()
        self.require_histories()
        if self.split is None:
            self.split = make_split(dataset, self.info.get("split", "leave-one-out"),
                                    self.info.get("valid_time"), self.info.get("test_time"))
        if on not in ("test", "valid"):
            raise SeqrecError(f"evaluate on 'test' or 'valid', not {on!r}")
        return self.split.test if on == "test" else self.split.valid

    @property
    def max_len(self) -> int:
        """The model's input window: its config is the one source of it."""
        if self.model is not None:
            return int(self.model.config.max_len)
        return int(make_config(self.model_name, n_items=1, **self.model_params).max_len)

    # ---- recommendation -------------------------------------------------------------------
    def recommend(self, users: Sequence[Any], k: int = 10, exclude_seen: bool = True) -> pd.DataFrame:
        """Top-k for known users (external ids) from their whole history."""
        _, dataset = self._ready()
        rows = dataset.users.to_internal(list(users), kind="user")
        frame = self._top_k(dataset.sequences, rows, k, exclude_seen, users=rows)
        frame.insert(0, "user_id", np.asarray(list(users), dtype=object)[frame.pop("row").to_numpy()])
        return frame

    def recommend_history(self, history: Sequence[Any], k: int = 10, exclude_seen: bool = True,
                          exclude: Sequence[Any] = ()) -> pd.DataFrame:
        """Top-k for an ad-hoc history of external item ids (oldest first). Unknown items are skipped."""
        _, dataset = self._ready()
        internal = dataset.items.to_internal(list(history), strict=False)
        known = internal[internal > 0]
        if len(history) and not len(known):
            raise SeqrecError("none of the history items are known to the model; check the item ids")
        seqs = Sequences.from_lists([known.tolist()])
        banned = dataset.items.to_internal(list(exclude), strict=False)
        frame = self._top_k(seqs, np.zeros(1, dtype=np.int64), k, exclude_seen, banned[banned > 0])
        return frame.drop(columns="row")

    def _top_k(self, seqs: Sequences, rows: np.ndarray, k: int, exclude_seen: bool,
               banned: np.ndarray | None = None, users: np.ndarray | None = None) -> pd.DataFrame:
        model, dataset = self._ready()
        if k < 1 or k > dataset.n_items:
            raise SeqrecError(f"k={k} must be between 1 and the catalog size {dataset.n_items}")
        scores = score_histories(model, seqs, rows, exclude_seen, users=users)  # on the model's device
        if banned is not None and len(banned):
            scores[:, torch.from_numpy(banned).to(scores.device)] = float("-inf")
        top = torch.topk(scores, k, dim=1)
        idx, val = top.indices.cpu().numpy(), top.values.cpu().numpy()
        flat = idx.ravel()
        frame = pd.DataFrame({
            "row": np.repeat(np.arange(len(rows)), k),
            "rank": np.tile(np.arange(1, k + 1), len(rows)),
            "item_id": dataset.items.to_external(np.maximum(flat, 1)),
            "score": val.ravel(),
        })
        if dataset.item_titles:
            frame["title"] = [dataset.item_titles[i - 1] for i in np.maximum(flat, 1)]
        return frame[np.isfinite(frame["score"].to_numpy())].reset_index(drop=True)

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        model, dataset = self._ready()
        art = Artifact(self.model_name, model, dataset, to_dict(self.config), self.info, self.data_config)
        return save_artifact(path, art)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Recommender:
        art = load_artifact(path)
        try:
            config = from_dict(TrainConfig, art.train_config, "config.toml [train]")
        except SeqrecError as exc:
            raise ArtifactError(f"{path}: {exc}") from None
        rec = cls(art.model_name, config)
        rec.data_config = art.data_config
        rec.path = Path(path)
        rec.model, rec.dataset, rec.info = art.model, art.dataset, art.info
        rec.model_params = {k: v for k, v in vars(art.model.config).items() if k != "n_items"}
        if device != "cpu":
            from seqrec.devices import resolve_device

            rec.model.to(resolve_device(device))
        return rec
