"""A trained model on disk: safetensors weights + JSON config, id maps, histories, metrics.

Loading never unpickles anything. Saving writes to a temporary directory and renames it,
so a failure never leaves a half-written artifact.
"""

from __future__ import annotations

import dataclasses
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
from seqrec.errors import ArtifactError
from seqrec.models.base import SequenceEncoder
from seqrec.models.registry import MODELS, build_model

FORMAT_VERSION = 1
FILES = ("config.json", "model.safetensors", "items.json", "users.json", "sequences.safetensors")


@dataclass
class Artifact:
    model_name: str
    model: SequenceEncoder
    dataset: Dataset
    max_len: int
    train_config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # split, history, test metrics, timings


def save_artifact(path: str | Path, art: Artifact) -> Path:
    final = Path(path)
    with atomic_dir(final) as tmp:
        config = {
            "format_version": FORMAT_VERSION,
            "model": art.model_name,
            "model_config": dataclasses.asdict(art.model.config),
            "max_len": art.max_len,
            "dataset": art.dataset.name,
            "train_config": art.train_config,
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
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
        (tmp / "info.json").write_text(json.dumps(art.info, indent=2, default=_jsonable))
    return final


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_artifact(path: str | Path) -> Artifact:
    p = Path(path)
    if not p.is_dir():
        raise ArtifactError(f"{p}: no artifact directory here; train one with `seqrec train --out {p}`")
    missing = [f for f in FILES if not (p / f).exists()]
    if missing:
        raise ArtifactError(f"{p}: not a complete seqrec artifact (missing {', '.join(missing)}); retrain it")
    try:
        config = json.loads((p / "config.json").read_text())
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{p}: artifact format {version} is not supported by this seqrec "
                                f"(expects {FORMAT_VERSION}); retrain it or install the matching version")
        name = config["model"]
        if name not in MODELS:
            raise ArtifactError(f"{p}: unknown model {name!r} in config.json; was it written by a newer seqrec?")
        model = build_model(name, MODELS[name][0](**config["model_config"]))
        model.load_state_dict(load_file(str(p / "model.safetensors")))
        model.eval()
        dataset = _load_dataset(p, config.get("dataset", "artifact"))
        info = json.loads((p / "info.json").read_text()) if (p / "info.json").exists() else {}
    except ArtifactError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{p}: corrupt artifact ({first[:200]}); retrain or restore it") from exc
    return Artifact(name, model, dataset, int(config["max_len"]), config.get("train_config", {}), info)


def _load_dataset(p: Path, name: str) -> Dataset:
    items = json.loads((p / "items.json").read_text())
    users = json.loads((p / "users.json").read_text())
    t = load_file(str(p / "sequences.safetensors"))
    times = t["times"].numpy() if "times" in t else None
    seqs = Sequences(t["offsets"].numpy(), t["items"].numpy(), times)
    return Dataset(name, seqs, IdMap.from_json(users), IdMap.from_json(items), items.get("titles"))
