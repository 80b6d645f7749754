"""A trained model on disk: safetensors weights, the resolved config as TOML, id maps, histories, metrics.

Loading never unpickles anything, and treats every file as untrusted input (see
:mod:`seqrec.artifact_checks`): only regular files of bounded size are opened, each is read once and
checked against the manifest's SHA-256 digest before it is parsed, the weights the config implies are
sized on the meta device and compared with the memory available and the weights' header before the
model is built, and every field's type and range is checked. A damaged or edited artifact therefore
gives one clear error instead of a traceback, a hang, an exhausted memory, a server that fails later, or
silently wrong answers. Saving writes to a private temporary directory (files 0600, directory 0700:
artifacts hold user histories) and renames it, so a failure never leaves a half-written artifact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from seqrec import artifact_checks as checks
from seqrec.artifact_checks import FILES, INFO, MANIFEST, TOWER, fail, table
from seqrec.atomic import atomic_dir, create_private, write_private
from seqrec.data.preprocess import Dataset
from seqrec.errors import ArtifactError, SeqrecError
from seqrec.items.features import TowerSpec, build_with_tower, tower_spec_of
from seqrec.models.base import SequenceModel
from seqrec.models.registry import MODELS, build_model
from seqrec.settings import dump_toml, from_dict, to_dict, with_added

FORMAT_VERSION = 2
CONFIG_KEYS = ("format_version", "model", "train", "data")
MAX_MESSAGE = 600  # characters of an error line (a value quoted from a damaged file could be megabytes)
__all__ = ["FILES", "FORMAT_VERSION", "INFO", "MANIFEST", "Artifact", "artifact_config", "load_artifact",
           "save_artifact"]


@dataclass
class Artifact:
    model_name: str
    model: SequenceModel
    dataset: Dataset
    train_config: dict[str, Any] = field(default_factory=dict)  # TrainConfig as a dict (serving never trains)
    info: dict[str, Any] = field(default_factory=dict)  # split, history, test metrics, timings
    data_config: dict[str, Any] | None = None  # how the data was read, when known (reproduces the run)
    digests: dict[str, str] = field(default_factory=dict)  # file -> SHA-256, as checked when loaded

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
    """Write ``art`` to the directory ``path`` (replacing it whole): every file 0600, the directory 0700."""
    final = Path(path)
    with atomic_dir(final) as tmp:
        write_private(tmp / "config.toml", dump_toml(artifact_config(art)).encode())
        create_private(tmp / "model.safetensors")  # save_file truncates it, keeping its mode
        save_file({k: v.detach().cpu().contiguous() for k, v in art.model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        items = art.dataset.items.to_json() | {"titles": art.dataset.item_titles}
        write_private(tmp / "items.json", json.dumps(items).encode())
        write_private(tmp / "users.json", json.dumps(art.dataset.users.to_json()).encode())
        seqs = art.dataset.sequences
        tensors = {"offsets": torch.from_numpy(np.array(seqs.offsets)), "items": torch.from_numpy(np.array(seqs.items))}
        if seqs.times is not None:
            tensors["times"] = torch.from_numpy(np.array(seqs.times, dtype=np.float64))
        create_private(tmp / "sequences.safetensors")
        save_file(tensors, str(tmp / "sequences.safetensors"))
        info = {"dataset": art.dataset.name} | art.info
        write_private(tmp / INFO, json.dumps(info, indent=2, default=_jsonable).encode())
        spec = tower_spec_of(art.model)
        if spec is not None:  # a feature/text tower or user features: schemas and vocabularies (tables are weights)
            write_private(tmp / TOWER, json.dumps(spec.to_json()).encode())
        digests = {name: _sha256(tmp / name) for name in (*FILES, INFO, *([TOWER] if spec is not None else []))}
        write_private(tmp / MANIFEST, json.dumps({"sha256": digests}, indent=2).encode())
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
    """Load an artifact directory, checking every byte before it is used; any problem is an
    :class:`ArtifactError` of one line that starts with the directory."""
    p = Path(path)
    if not p.is_dir():
        raise ArtifactError(f"{p}: no artifact directory here; train one with `seqrec train --out {p}`")
    if os.path.lexists(p / "config.json") and not os.path.lexists(p / "config.toml"):
        raise ArtifactError(f"{p}: written by an older seqrec (format 1, config.json); retrain it")
    try:
        return _load(p)
    except ArtifactError as exc:
        message = f"{p}: {exc}"
    except MemoryError:
        message = f"{p}: not enough memory to load this artifact"
    except (SeqrecError, OSError, ValueError, KeyError, TypeError, RuntimeError, IndexError, OverflowError,
            RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message = f"{p}: corrupt artifact ({first[:200]}); retrain or restore it"
    message = " ".join(message.split())  # one line, whatever a damaged file put into it
    raise ArtifactError(message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "...") from None


def _load(p: Path) -> Artifact:
    stats = checks.inspect_files(p)  # lstat only: regular files within their size limits
    checks.check_memory(checks.memory_for_files(stats), f"its files hold {checks.size(_total(stats))}")
    digests = checks.manifest_digests(checks.read_file(p, MANIFEST, stats[MANIFEST]),
                                      [name for name in stats if name != MANIFEST])

    def read(name: str) -> bytes:
        """The file, every byte checked against its digest before any is parsed."""
        data = checks.read_file(p, name, stats[name])
        checks.check_digest(name, data, digests[name])
        return data

    config = checks.parse_toml("config.toml", read("config.toml"))
    checks.only_keys(config, CONFIG_KEYS, "config.toml")
    version = config.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        fail(f"artifact format {version!r} is not supported by this seqrec "
             f"(expects {FORMAT_VERSION}); retrain it or install the matching version")
    name, model_config = _model_config(table(config.get("model"), "config.toml [model]"))
    train_config = table(config.get("train", {}), "[train]")
    data_config = table(config["data"], "config.toml [data]") if "data" in config else None

    tower = _tower_spec(read(TOWER)) if TOWER in stats else None
    weights = checks.SafeTensors.parse("model.safetensors", read("model.safetensors"))
    checks.check_weights_fit(checks.implied_weights(name, model_config, len(weights.tensors), tower), weights)
    state = checks.load_weights(weights)
    del weights
    # sized and matched above: this allocates what the file holds
    model = build_model(name, model_config) if tower is None else build_with_tower(name, model_config, tower)
    model.load_state_dict(state)
    model.eval()
    del state

    info = checks.check_info(table(checks.parse_json(INFO, read(INFO)), INFO)) if INFO in stats else {}
    seqs = checks.SafeTensors.parse("sequences.safetensors", read("sequences.safetensors"))
    n_items, n_users = model_config.n_items, checks.sequence_users(seqs)
    json_files = {}
    for json_name, count, what in (("items.json", n_items, f"{n_items:,} items"),
                                   ("users.json", n_users, f"{n_users:,} users")):
        checks.check_size(json_name, stats[json_name].st_size, checks.json_limit(json_name, count), what)
        json_files[json_name] = table(checks.parse_json(json_name, read(json_name)), json_name)
    dataset = _dataset(json_files, seqs, str(info.get("dataset", "artifact")), n_items)
    return Artifact(name, model, dataset, train_config, info, data_config, digests)


def _tower_spec(data: bytes) -> TowerSpec:
    raw = table(checks.parse_json(TOWER, data), TOWER)
    try:
        return TowerSpec.from_json(raw)
    except (KeyError, TypeError, ValueError, SeqrecError) as exc:
        fail(f"{TOWER} does not describe an item tower ({str(exc)[:120]}); retrain or restore it")


def _total(stats: dict[str, os.stat_result]) -> int:
    return sum(st.st_size for st in stats.values())


def _model_config(model_table: dict[str, Any]) -> tuple[str, Any]:
    model_table = dict(model_table)
    name = model_table.pop("name", None)
    if not isinstance(name, str) or name not in MODELS:
        fail(f"unknown model {name!r} in config.toml; was it written by a newer seqrec?")
    model_table = with_added(MODELS[name][0], model_table)  # settings newer than the artifact: what it did
    missing_keys = [f.name for f in dataclasses.fields(MODELS[name][0])
                    if f.name not in model_table and f.default is not None]
    if missing_keys:  # an artifact holds its resolved config: a default would silently change the model
        fail(f"config.toml [model] lacks {', '.join(missing_keys)}; retrain or restore it")
    return name, from_dict(MODELS[name][0], model_table, "config.toml [model]")


def _dataset(json_files: dict[str, dict[str, Any]], seqs: checks.SafeTensors, name: str, n_items: int) -> Dataset:
    items = checks.id_map(json_files["items.json"], "items.json", offset=1, extra=("titles",))
    users = checks.id_map(json_files["users.json"], "users.json", offset=0)
    if len(items) != n_items:
        fail(f"the model has {n_items} items but items.json lists {len(items)}; retrain or restore it")
    titles = checks.titles(json_files["items.json"], n_items)
    return Dataset(name, checks.sequences(seqs, len(users), n_items), users, items, titles)
