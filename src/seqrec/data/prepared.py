"""A prepared dataset: a cleaned log written once as memory-mapped arrays that training reads directly.

Layout of the folder ``seqrec prepare --out`` writes (atomically: a temporary folder renamed at the end):

- ``offsets.npy`` (U + 1,) int64, ``items.npy`` (E,) int64 and, when the log has times,
  ``times.npy`` (E,) float64: the per-user sequences in CSR form (:class:`seqrec.data.sequences.Sequences`);
- ``user_ids.npy`` / ``item_ids.npy``: the external ids, int64, in internal-id order; text ids are
  stored as ``*_ids.data.npy`` (uint8, UTF-8) and ``*_ids.offsets.npy`` (int64, U + 1);
- ``manifest.json``: format and seqrec version, every array's file, dtype, shape and size, the read and
  cleaning options, the cleaning report, and the source log.

Loading checks the versions and sizes, then maps the arrays (nothing is read until used).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from seqrec import __version__
from seqrec.atomic import atomic_dir, write_private
from seqrec.data import outofcore
from seqrec.data.ids import IdMap
from seqrec.data.io import ReadOptions
from seqrec.data.preprocess import Dataset, PreprocessOptions, PreprocessReport
from seqrec.data.sequences import Sequences
from seqrec.data.split import EvalSet, Split
from seqrec.errors import DataError
from seqrec.settings import default_of, to_dict

FORMAT = "seqrec-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def prepare(data: Path, out: Path, read: ReadOptions | None = None,
            preprocess: PreprocessOptions | None = None, force: bool = False) -> Dataset:
    """Read and clean the log at ``data`` out of core and write it to ``out``; returns the Dataset."""
    read, preprocess = read or ReadOptions(), preprocess or PreprocessOptions()
    check_target(out, force)
    dataset = outofcore.build(data, read, preprocess)
    write(dataset, out, data, read, preprocess)
    return dataset


def check_target(out: Path, force: bool) -> None:
    """``out`` may be new, an empty folder, or (with ``force``) an earlier prepared dataset."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; choose another --out")
    if (out / MANIFEST).exists():
        if not force:
            raise DataError(f"{out}: holds a prepared dataset already; pass --force to replace it, or choose "
                            "another --out")
        return
    if any(out.iterdir()):
        raise DataError(f"{out}: is a folder with other files in it; choose a new or empty --out")


def write(dataset: Dataset, out: Path, source: Path, read: ReadOptions, preprocess: PreprocessOptions) -> None:
    seqs = dataset.sequences
    arrays: dict[str, np.ndarray] = {"offsets": seqs.offsets, "items": seqs.items}
    if seqs.times is not None:
        arrays["times"] = seqs.times
    for role, ids in (("user_ids", dataset.users), ("item_ids", dataset.items)):
        arrays.update(_id_arrays(role, ids.external))
    report = dataset.report or PreprocessReport()
    with atomic_dir(out) as tmp:
        entries: dict[str, dict[str, Any]] = {}

        def save(key: str, array: np.ndarray) -> None:
            name = f"{key}.npy"
            np.save(tmp / name, np.ascontiguousarray(array), allow_pickle=False)
            entries[key] = {"file": name, "dtype": array.dtype.str, "shape": list(array.shape),
                            "bytes": (tmp / name).stat().st_size}

        for key, array in arrays.items():
            save(key, array)
        split = _write_leave_one_out(seqs, save)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "seqrec_version": __version__,
            "name": dataset.name, "source": str(source),
            "read": to_dict(read), "preprocess": to_dict(preprocess),
            "users": {"kind": _kind(dataset.users.external), "count": dataset.n_users},
            "items": {"kind": _kind(dataset.items.external), "count": dataset.n_items},
            "events": dataset.n_events,
            "report": {"rows_read": report.rows_read, "dropped": report.dropped, "first_bad": report.first_bad,
                       "rows_kept": report.rows_kept},
            "leave_one_out": split,
            "arrays": entries,
        }
        write_private(tmp / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _write_leave_one_out(seqs: Sequences, save: Callable[[str, np.ndarray], None]) -> dict[str, Any] | None:
    """The leave-one-out split (:func:`seqrec.data.split.leave_one_out`), computed here once so that training
    maps it: each evaluable user's (3 or more events) last event is the test target, the one before it the
    validation target. None when no user is evaluable (the split's own error then says so)."""
    lengths = seqs.lengths
    evaluable = np.flatnonzero(lengths >= 3)
    if len(evaluable) == 0:
        return None
    last = seqs.offsets[evaluable + 1] - 1
    every = len(evaluable) == seqs.n_users
    save("loo_users", evaluable)
    save("loo_valid_targets", seqs.items[last - 1])
    save("loo_test_targets", seqs.items[last])
    in_eval = None if every else np.repeat(lengths >= 3, lengths)
    for part, tail, rows in (("train", 2, None), ("valid", 2, evaluable), ("test", 1, evaluable)):
        if part == "valid" and every:
            continue  # every user is evaluable: the validation histories are the training sequences
        keep = np.ones(seqs.items.shape[0], dtype=bool)
        for k in range(1, tail + 1):
            keep[last - (k - 1)] = False
        lens = np.where(lengths >= 3, lengths - tail, lengths)
        if rows is not None and in_eval is not None:
            keep &= in_eval
            lens = lens[rows]
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        save(f"loo_{part}_offsets", offsets)
        save(f"loo_{part}_items", seqs.items[keep])
        if seqs.times is not None:
            save(f"loo_{part}_times", seqs.times[keep])
        del keep
    return {"users": len(evaluable), "valid_history": "train" if every else "own"}


def load_split(path: Path, data: Dataset) -> Split | None:
    """The leave-one-out split stored with the prepared dataset at ``path``, memory-mapped (None: none stored)."""
    manifest = read_manifest(path)
    info = manifest.get("leave_one_out")
    if not info:
        return None
    arrays = {key: _map(path, key, entry, manifest) for key, entry in manifest["arrays"].items()
              if key.startswith("loo_")}

    def seqs(part: str) -> Sequences:
        return Sequences(arrays[f"loo_{part}_offsets"], arrays[f"loo_{part}_items"], arrays.get(f"loo_{part}_times"))

    users = arrays["loo_users"]
    train = seqs("train")
    valid = EvalSet(users, train if info["valid_history"] == "train" else seqs("valid"), arrays["loo_valid_targets"])
    test = EvalSet(users, seqs("test"), arrays["loo_test_targets"])
    return Split(train, valid, test, data.n_items, "leave-one-out")


def _kind(external: np.ndarray) -> str:
    return "int" if external.dtype.kind in "iu" else "str"


def _id_arrays(role: str, external: np.ndarray) -> dict[str, np.ndarray]:
    if _kind(external) == "int":
        return {role: external.astype(np.int64, copy=False)}
    text = pa.array(external, type=pa.large_string())
    _, offsets, data = text.buffers()
    assert offsets is not None
    offs = np.frombuffer(offsets, dtype=np.int64, count=len(text) + 1)
    blob = (np.frombuffer(data, dtype=np.uint8, count=int(offs[-1])) if data is not None
            else np.zeros(0, dtype=np.uint8))
    return {f"{role}.data": blob, f"{role}.offsets": offs}


def reprepare_command(path: Path, manifest: dict[str, Any]) -> str:
    """The `seqrec prepare` command that writes ``path`` again from its source with its options."""
    parts = ["seqrec", "prepare", "--data", str(manifest.get("source", "LOG")), "--out", str(path), "--force"]
    for section in ("read", "preprocess"):
        values = manifest.get(section) or {}
        cls = ReadOptions if section == "read" else PreprocessOptions
        for f in cls.__dataclass_fields__.values():
            if f.name in values and values[f.name] != default_of(f) and values[f.name] is not None:
                value = values[f.name]
                flag = "--" + str(f.metadata.get("flag") or f.name.replace("_", "-")).split("/")[0]
                if isinstance(value, bool):
                    parts.append(flag if value else "--no-" + flag[2:])
                else:
                    parts += [flag, str(value)]
    return shlex.join(parts)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the prepared dataset at ``path``, checked against this seqrec's format and version."""
    if not path.is_dir():
        raise DataError(f"{path}: no such folder; write it with `seqrec prepare --data LOG --out {path}`")
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not a prepared dataset (no {MANIFEST}); write one with "
                        f"`seqrec prepare --data LOG --out {path}`") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: unreadable ({exc}); prepare it again with `seqrec prepare --data LOG --out "
                        f"{path} --force`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: {MANIFEST} does not describe a seqrec prepared dataset; prepare it again with "
                        f"`seqrec prepare --data LOG --out {path} --force`")
    found = (manifest.get("seqrec_version"), manifest.get("format_version"))
    if found != (__version__, FORMAT_VERSION):
        raise DataError(f"{path}: prepared by seqrec {found[0]} (format {found[1]}), but this is seqrec "
                        f"{__version__} (format {FORMAT_VERSION}); prepare it again: "
                        f"{reprepare_command(path, manifest)}")
    return manifest


def load(path: Path) -> Dataset:
    """The prepared dataset at ``path``, its sequences memory-mapped (read-only)."""
    manifest = read_manifest(path)
    arrays = {key: _map(path, key, entry, manifest) for key, entry in manifest["arrays"].items()
              if not key.startswith("loo_")}
    seqs = Sequences(arrays["offsets"], arrays["items"], arrays.get("times"))
    users = IdMap(_ids(arrays, "user_ids", manifest["users"]["kind"]), 0)
    items = IdMap(_ids(arrays, "item_ids", manifest["items"]["kind"]), 1)
    rep = manifest.get("report") or {}
    report = PreprocessReport(int(rep.get("rows_read", 0)), dict(rep.get("dropped", {})),
                              dict(rep.get("first_bad", {})), int(rep.get("rows_kept", 0)))
    if len(users) != seqs.n_users or int(seqs.offsets[-1]) != seqs.items.shape[0]:
        raise DataError(f"{path}: the arrays disagree with each other; prepare it again: "
                        f"{reprepare_command(path, manifest)}")
    return Dataset(str(manifest.get("name", path.name)), seqs, users, items, None, report)


def _map(path: Path, key: str, entry: dict[str, Any], manifest: dict[str, Any]) -> np.ndarray:
    file = path / str(entry["file"])
    again = f"prepare it again: {reprepare_command(path, manifest)}"
    if not file.is_file():
        raise DataError(f"{file}: missing from the prepared dataset; {again}")
    size = file.stat().st_size
    if size != int(entry["bytes"]):
        raise DataError(f"{file}: {size:,} bytes, but the manifest says {int(entry['bytes']):,}; {again}")
    array = np.load(file, mmap_mode="r", allow_pickle=False)
    if array.dtype.str != entry["dtype"] or list(array.shape) != list(entry["shape"]):
        raise DataError(f"{file}: {array.dtype.str} {list(array.shape)}, but the manifest says {entry['dtype']} "
                        f"{entry['shape']}; {again}")
    return np.asarray(array)


def _ids(arrays: dict[str, np.ndarray], role: str, kind: str) -> np.ndarray:
    if kind == "int":
        return np.array(arrays[role], dtype=np.int64)
    offsets, data = arrays[f"{role}.offsets"], arrays[f"{role}.data"]
    text = pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(np.ascontiguousarray(offsets)),
                                            pa.py_buffer(np.ascontiguousarray(data)))
    return np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)


def load_for_training(path: Path, raw_hook: bool) -> Dataset:
    """:func:`load` for a training run; a hook on the raw rows (pseudonyms, excluded users) has no raw rows
    to work on here."""
    if raw_hook:
        raise DataError(f"{path}: a prepared dataset holds no raw rows, so users cannot be pseudonymised or "
                        "excluded while training from it; train from the log (--data) for that")
    return load(path)


def build_in_memory(path: Path, read: ReadOptions, preprocess: PreprocessOptions, raw_hook: bool) -> Dataset:
    """A directory of Parquet files read as one log, into memory (as `seqrec prepare` reads it)."""
    if raw_hook:
        raise DataError(f"{path}: users cannot be pseudonymised or excluded while reading a directory of Parquet "
                        "files; give a single log file for that")
    return outofcore.build(path, read, preprocess)
