"""A trained model on disk: safetensors weights, the resolved config as TOML, id maps, histories, metrics.

Loading never unpickles anything, and treats every file as untrusted input: a manifest of SHA-256
digests is checked first, then every field's type and range, so a damaged or edited artifact gives
one clear error instead of a traceback, a server that fails later, or silently wrong answers.
Saving writes to a temporary directory and renames it, so a failure never leaves a half-written
artifact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seqrec.atomic import atomic_dir
from seqrec.data.ids import IdMap
from seqrec.data.preprocess import Dataset
from seqrec.data.sequences import Sequences
from seqrec.errors import ArtifactError, SeqrecError
from seqrec.models.base import SequenceModel
from seqrec.models.registry import MODELS, build_model
from seqrec.settings import dump_toml, from_dict, load_toml, to_dict

FORMAT_VERSION = 2
FILES = ("config.toml", "model.safetensors", "items.json", "users.json", "sequences.safetensors")
MANIFEST = "manifest.json"


@dataclass
class Artifact:
    model_name: str
    model: SequenceModel
    dataset: Dataset
    train_config: dict[str, Any] = field(default_factory=dict)  # TrainConfig as a dict (serving never trains)
    info: dict[str, Any] = field(default_factory=dict)  # split, history, test metrics, timings
    data_config: dict[str, Any] | None = None  # how the data was read, when known (reproduces the run)

    @property
    def max_len(self) -> int:
        return int(self.model.config.max_len)


def artifact_config(art: Artifact) -> dict[str, Any]:
    """The resolved config in the layout of a run config file (``seqrec train --config``): enough to
    rebuild the model and, with the data settings, to repeat the run."""
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": {"name": art.model_name, **to_dict(art.model.config)},
        "train": art.train_config,
    }
    if art.data_config is not None:
        config["data"] = art.data_config
    return config


def save_artifact(path: str | Path, art: Artifact) -> Path:
    final = Path(path)
    with atomic_dir(final) as tmp:
        (tmp / "config.toml").write_text(dump_toml(artifact_config(art)))
        save_file({k: v.detach().cpu().contiguous() for k, v in art.model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        items = art.dataset.items.to_json() | {"titles": art.dataset.item_titles}
        (tmp / "items.json").write_text(json.dumps(items))
        (tmp / "users.json").write_text(json.dumps(art.dataset.users.to_json()))
        seqs = art.dataset.sequences
        tensors = {"offsets": torch.from_numpy(np.array(seqs.offsets)), "items": torch.from_numpy(np.array(seqs.items))}
        if seqs.times is not None:
            tensors["times"] = torch.from_numpy(np.array(seqs.times, dtype=np.float64))
        save_file(tensors, str(tmp / "sequences.safetensors"))
        info = {"dataset": art.dataset.name} | art.info
        (tmp / "info.json").write_text(json.dumps(info, indent=2, default=_jsonable))
        digests = {name: _sha256(tmp / name) for name in (*FILES, "info.json")}
        (tmp / MANIFEST).write_text(json.dumps({"sha256": digests}, indent=2))
    return final


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_artifact(path: str | Path) -> Artifact:
    p = Path(path)
    if not p.is_dir():
        raise ArtifactError(f"{p}: no artifact directory here; train one with `seqrec train --out {p}`")
    if (p / "config.json").exists() and not (p / "config.toml").exists():
        raise ArtifactError(f"{p}: written by an older seqrec (format 1, config.json); retrain it")
    missing = [f for f in (*FILES, MANIFEST) if not (p / f).exists()]
    if missing:
        raise ArtifactError(f"{p}: not a complete seqrec artifact (missing {', '.join(missing)}); retrain it")
    try:
        _check_manifest(p)
        config = _table(load_toml(p / "config.toml"), "config.toml")
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"artifact format {version!r} is not supported by this seqrec "
                                f"(expects {FORMAT_VERSION}); retrain it or install the matching version")
        model_table = dict(_table(config.get("model"), "config.toml [model]"))
        name = model_table.pop("name", None)
        if not isinstance(name, str) or name not in MODELS:
            raise ArtifactError(f"unknown model {name!r} in config.toml; was it written by a newer seqrec?")
        missing_keys = [f.name for f in dataclasses.fields(MODELS[name][0])
                        if f.name not in model_table and f.default is not None]
        if missing_keys:  # an artifact holds its resolved config: a default would silently change the model
            raise ArtifactError(f"config.toml [model] lacks {', '.join(missing_keys)}; retrain or restore it")
        model_config = from_dict(MODELS[name][0], model_table, "config.toml [model]")
        train_config = _table(config.get("train", {}), "[train]")
        model = build_model(name, model_config)
        model.load_state_dict(_weights(p / "model.safetensors"))
        model.eval()
        info = _table(json.loads((p / "info.json").read_text()), "info.json") if (p / "info.json").exists() else {}
        dataset = _load_dataset(p, str(info.get("dataset", "artifact")), model_config.n_items)
        data_config = config.get("data")
    except ArtifactError as exc:
        raise ArtifactError(f"{p}: {exc}") from None
    except (SeqrecError, OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{p}: corrupt artifact ({first[:200]}); retrain or restore it") from None
    return Artifact(name, model, dataset, train_config, info, data_config if isinstance(data_config, dict) else None)


def _check_manifest(p: Path) -> None:
    manifest = _table(json.loads((p / MANIFEST).read_text()), MANIFEST)
    digests = _table(manifest.get("sha256"), f"{MANIFEST} sha256")
    for name in (*FILES, "info.json"):
        if name not in digests and name in FILES:
            raise ArtifactError(f"{MANIFEST} lists no digest for {name}; retrain or restore the artifact")
        if name in digests and (p / name).exists() and _sha256(p / name) != digests[name]:
            raise ArtifactError(f"{name} does not match its digest in {MANIFEST} (changed or damaged); "
                                "retrain or restore the artifact")


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ArtifactError(f"{where} must be a table/object, found {type(value).__name__}")
    return value


def _weights(path: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(path))
    for key, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ArtifactError(f"model.safetensors: {key} holds NaN or infinite values")
    return weights


def _id_map(data: dict[str, Any], where: str, offset: int) -> IdMap:
    ids, kind = data.get("ids"), data.get("kind")
    if kind not in ("int", "str") or not isinstance(ids, list):
        raise ArtifactError(f"{where}: 'kind' must be 'int' or 'str' and 'ids' a list")
    if data.get("offset") != offset:
        raise ArtifactError(f"{where}: 'offset' must be {offset}, found {data.get('offset')!r}")
    wanted = int if kind == "int" else str
    if not all(isinstance(v, wanted) and not isinstance(v, bool) for v in ids):
        raise ArtifactError(f"{where}: every id must be of kind {kind!r}")
    if len(set(ids)) != len(ids):
        raise ArtifactError(f"{where}: ids are not unique")
    return IdMap.from_json(data)


def _load_dataset(p: Path, name: str, n_items: int) -> Dataset:
    items_json = _table(json.loads((p / "items.json").read_text()), "items.json")
    items = _id_map(items_json, "items.json", offset=1)
    users = _id_map(_table(json.loads((p / "users.json").read_text()), "users.json"), "users.json", offset=0)
    if len(items) != n_items:
        raise ArtifactError(f"the model has {n_items} items but items.json lists {len(items)}")
    titles = items_json.get("titles")
    if titles is not None and (not isinstance(titles, list) or len(titles) != len(items)
                               or not all(isinstance(t, str) for t in titles)):
        raise ArtifactError(f"items.json: 'titles' must be a list of {len(items)} strings")
    seqs = _sequences(load_file(str(p / "sequences.safetensors")), len(users), n_items)
    return Dataset(name, seqs, users, items, titles)


def _sequences(t: dict[str, torch.Tensor], n_users: int, n_items: int) -> Sequences:
    offsets, items = t.get("offsets"), t.get("items")
    if offsets is None or items is None:
        raise ArtifactError("sequences.safetensors needs 'offsets' and 'items'")
    if offsets.dtype != torch.int64 or items.dtype != torch.int64 or offsets.dim() != 1 or items.dim() != 1:
        raise ArtifactError("sequences.safetensors: 'offsets' and 'items' must be 1-d int64")
    off, it = offsets.numpy(), items.numpy()
    if len(off) != n_users + 1 or off[0] != 0 or off[-1] != len(it) or (np.diff(off) < 0).any():
        raise ArtifactError(f"sequences.safetensors: offsets must rise from 0 to {len(it)} over {n_users} users")
    if len(it) and (it.min() < 1 or it.max() > n_items):
        raise ArtifactError("sequences.safetensors holds item ids outside the catalog")
    times = t.get("times")
    if times is not None and (times.shape != items.shape or not times.is_floating_point()):
        raise ArtifactError("sequences.safetensors: 'times' must be floats, one per item")
    return Sequences(off, it, None if times is None else times.numpy())
