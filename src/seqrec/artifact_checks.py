"""Checks on an artifact's bytes before any of them is used.

Each file must be a regular file of bounded size directly inside the artifact directory: links (even to a
file beside it), FIFOs, devices and directories are refused from ``os.lstat``, before anything is opened.
A file is then read once, through a descriptor that neither follows a link nor blocks, and its SHA-256 is
compared with the manifest's before a byte of it is parsed. What the model config implies (every tensor's
name, dtype and shape, and so the bytes) is worked out on the meta device, without allocating, and compared
with the memory available and with the weights' header before the model is built. Every failure raises an
:class:`ArtifactError` whose message is one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import stat
import tomllib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from seqrec.data.ids import IdMap
from seqrec.data.sequences import Sequences
from seqrec.errors import ArtifactError
from seqrec.models.registry import build_model

KB, MB, GB = 1000, 1000**2, 1000**3
MANIFEST = "manifest.json"
INFO = "info.json"
TOWER = "tower.json"  # optional: the item tower's features and text (see seqrec.items.features)
FILES = ("config.toml", "model.safetensors", "items.json", "users.json", "sequences.safetensors")
# the most each file may hold, checked before it is opened (a 1M-item catalog of dim 256 with a separate
# output table is ~2 GB of weights); the JSON id maps also get a bound from the counts (see json_limit)
MAX_BYTES = {"config.toml": 1 * MB, MANIFEST: 1 * MB, INFO: 64 * MB, "items.json": 1 * GB, "users.json": 1 * GB,
             TOWER: 256 * MB, "model.safetensors": 4 * GB, "sequences.safetensors": 4 * GB}
PER_ENTRY = {"items.json": 16 * KB, "users.json": 4 * KB}  # bytes per item (id and title) and per user id
MAX_HEADER = 16 * MB  # a safetensors JSON header: ~100 bytes a tensor
MAX_TENSORS = 20_000  # weight tensors a model may have (~1,600 transformer layers)
MAX_DIMS = 8
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
SPLITS = ("leave-one-out", "temporal")  # the kinds seqrec.data.split.make_split takes
HEX64 = re.compile(r"[0-9a-f]{64}")
ID_LOW, ID_HIGH = -(2**62) + 1, 2**63 - 1  # int ids: int64, above the sentinel that ids.coerce_like uses


def fail(message: str) -> NoReturn:
    raise ArtifactError(message)


def corrupt(name: str, detail: str) -> NoReturn:
    raise ArtifactError(f"corrupt artifact ({name}: {detail}); retrain or restore it")


def size(n: float) -> str:
    for unit, scale in (("TB", 1000 * GB), ("GB", GB), ("MB", MB), ("KB", KB)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} bytes"


# ---- files ------------------------------------------------------------------------------------


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def inspect_files(p: Path) -> dict[str, os.stat_result]:
    """``os.lstat`` of every artifact file (info.json when present): each must be a regular file, not a link,
    and within its size limit. Nothing is opened."""
    found: dict[str, os.stat_result] = {}
    missing = []
    for name in (*FILES, INFO, TOWER, MANIFEST):
        try:
            st = os.lstat(p / name)
        except FileNotFoundError:
            if name not in (INFO, TOWER):
                missing.append(name)
            continue
        if not stat.S_ISREG(st.st_mode):
            fail(f"{name} is {_kind(st.st_mode)}; an artifact holds regular files only; retrain or restore it")
        if st.st_size > MAX_BYTES[name]:
            fail(f"{name} holds {size(st.st_size)}, more than the {size(MAX_BYTES[name])} it may; "
                 "retrain or restore it")
        found[name] = st
    if missing:
        fail(f"not a complete seqrec artifact (missing {', '.join(missing)}); retrain it")
    return found


def read_file(p: Path, name: str, expected: os.stat_result) -> bytes:
    """The whole of ``name``, read through a descriptor that refuses a link and never blocks, and that must be
    the regular file ``expected`` describes (not one swapped in since)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p / name, flags)
    except OSError as exc:
        fail(f"{name}: cannot open it ({exc.strerror}); restore the artifact")
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        if (not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino, st.st_size)
                != (expected.st_dev, expected.st_ino, expected.st_size)):
            fail(f"{name} changed while the artifact was being loaded; load it again")
        data, got = bytearray(st.st_size), 0
        with memoryview(data) as view:
            while got < len(data):
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
        if got != len(data) or f.read(1):
            fail(f"{name} changed while the artifact was being loaded; load it again")
    return bytes(data)


def check_digest(name: str, data: bytes, digest: str) -> None:
    if hashlib.sha256(data).hexdigest() != digest:
        fail(f"{name} does not match its digest in {MANIFEST} (changed or damaged); retrain or restore the artifact")


def json_limit(name: str, count: int) -> int:
    """The most an id map with ``count`` entries may hold: generous, but bounded by what the weights imply."""
    return min(MAX_BYTES[name], 1 * MB + PER_ENTRY[name] * count)


def check_size(name: str, n_bytes: int, limit: int, because: str) -> None:
    if n_bytes > limit:
        fail(f"{name} holds {size(n_bytes)}, more than {size(limit)} for {because}; retrain or restore it")


# ---- memory -----------------------------------------------------------------------------------


def available_memory() -> int | None:
    """Bytes this process can still allocate: /proc/meminfo's MemAvailable (else the physical memory),
    capped by a cgroup v2 limit; None when unknown."""
    found: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        found = None
    if found is None:
        try:
            found = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found = min(found, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return found


def check_memory(needed: int, what: str) -> None:
    free = available_memory()
    if free is not None and needed > free:
        fail(f"loading it needs about {size(needed)} of memory ({what}) but {size(max(free, 0))} is available; "
             "free memory or check config.toml [model]")


def memory_for_files(stats: dict[str, os.stat_result]) -> int:
    """Peak memory while loading, from the file sizes: each safetensors file as bytes, as tensors and (the
    weights) as the model; JSON and TOML as Python objects, at most ~8 times their text."""
    tensors = stats["model.safetensors"].st_size + stats["sequences.safetensors"].st_size
    text = sum(st.st_size for name, st in stats.items() if not name.endswith(".safetensors"))
    return 3 * tensors + 8 * text


# ---- parsing ----------------------------------------------------------------------------------


def _text(name: str, data: bytes, kind: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        corrupt(name, f"not valid {kind}: not UTF-8 text")


def parse_json(name: str, data: bytes) -> Any:
    text = _text(name, data, "JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        corrupt(name, f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    except RecursionError:
        corrupt(name, "not valid JSON: nested too deeply")
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        corrupt(name, f"not valid JSON: {str(exc).splitlines()[0][:100]}")


def parse_toml(name: str, data: bytes) -> dict[str, Any]:
    text = _text(name, data, "TOML")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        corrupt(name, f"not valid TOML: {str(exc).splitlines()[0]}")
    except RecursionError:
        corrupt(name, "not valid TOML: nested too deeply")


def table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(f"{where} must be a table/object, found {type(value).__name__}; retrain or restore it")
    return value


def only_keys(data: dict[str, Any], allowed: Collection[str], where: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        fail(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)}); retrain or restore it")


def manifest_digests(data: bytes, present: Collection[str]) -> dict[str, str]:
    """The manifest's digests: one for every file present (info.json included), none for any other."""
    manifest = table(parse_json(MANIFEST, data), MANIFEST)
    only_keys(manifest, ("sha256",), MANIFEST)
    digests = table(manifest.get("sha256"), f"{MANIFEST} sha256")
    for name, digest in digests.items():
        if name not in (*FILES, INFO, TOWER):
            fail(f"{MANIFEST} lists {name!r}, which is not an artifact file; retrain or restore the artifact")
        if name not in present:
            fail(f"{MANIFEST} lists {name}, but the artifact has no such file; retrain or restore it")
        if not isinstance(digest, str) or not HEX64.fullmatch(digest):
            fail(f"{MANIFEST}: the digest of {name} is not 64 hexadecimal digits; retrain or restore the artifact")
    for name in present:
        if name not in digests:
            fail(f"{MANIFEST} lists no digest for {name}; retrain or restore the artifact")
    return digests


def utf8_strings(values: Iterable[str], where: str) -> None:
    """Strings that print: lone surrogates (which JSON escapes allow) cannot be written out."""
    try:
        "\n".join(values).encode("utf-8")
    except UnicodeEncodeError:
        fail(f"{where} holds text that is not valid Unicode; retrain or restore it")


# ---- safetensors ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype].itemsize

    def __str__(self) -> str:
        return f"{self.dtype} {list(self.shape)}"


@dataclass(frozen=True)
class SafeTensors:
    """A safetensors file whose header has been checked: known dtypes, every tensor's byte range matching
    its shape, the ranges tiling the data exactly (no gap, no overlap, nothing after them)."""

    name: str
    data: bytes
    start: int  # where the tensor data begins
    tensors: dict[str, TensorInfo]
    ranges: dict[str, tuple[int, int]]

    @classmethod
    def parse(cls, name: str, data: bytes) -> SafeTensors:
        if len(data) < 8:
            corrupt(name, f"{len(data)} bytes, too short for a safetensors file")
        n = int.from_bytes(data[:8], "little")
        if n > len(data) - 8:
            corrupt(name, f"its header claims {n:,} bytes; the file holds {len(data):,}")
        if n > MAX_HEADER:
            corrupt(name, f"its header of {size(n)} is over the {size(MAX_HEADER)} seqrec reads")
        header = parse_json(name, data[8 : 8 + n])
        if not isinstance(header, dict):
            corrupt(name, "its header is not a JSON object")
        tensors, ranges = {}, {}
        for key, entry in header.items():
            if key == "__metadata__":
                if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                    corrupt(name, "__metadata__ must map names to strings")
                continue
            info, span = _entry(name, key, entry)
            tensors[key], ranges[key] = info, span
        end = 0
        for key, (begin, stop) in sorted(ranges.items(), key=lambda kv: kv[1]):
            if begin != end:
                corrupt(name, f"tensor {key!r} starts at byte {begin:,}, expected {end:,}")
            end = stop
        if end != len(data) - 8 - n:
            corrupt(name, f"its tensors hold {end:,} bytes but the file has {len(data) - 8 - n:,} after the header")
        return cls(name, data, 8 + n, tensors, ranges)

    def tensor(self, key: str) -> torch.Tensor:
        """A copy of tensor ``key`` (aligned memory, independent of the file's bytes)."""
        info, (begin, stop) = self.tensors[key], self.ranges[key]
        if stop == begin:  # an empty tensor (an artifact without histories): a 0-byte buffer has no view
            return torch.zeros(info.shape, dtype=DTYPES[info.dtype])
        raw = np.frombuffer(self.data, dtype=np.uint8, count=stop - begin, offset=self.start + begin).copy()
        return torch.from_numpy(raw).view(DTYPES[info.dtype]).reshape(info.shape)


def _entry(name: str, key: str, entry: Any) -> tuple[TensorInfo, tuple[int, int]]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        corrupt(name, f"tensor {key!r} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        corrupt(name, f"tensor {key!r} has dtype {dtype!r}; seqrec reads {', '.join(DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 <= d < 2**63 for d in shape)):
        corrupt(name, f"tensor {key!r} has no valid shape (up to {MAX_DIMS} non-negative integers)")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        corrupt(name, f"tensor {key!r} has no valid data_offsets")
    info = TensorInfo(dtype, tuple(shape))
    if offsets[1] - offsets[0] != info.nbytes:
        corrupt(name, f"tensor {key!r} is {info} ({info.nbytes:,} bytes) but spans {offsets[1] - offsets[0]:,} bytes")
    return info, (offsets[0], offsets[1])


# ---- the model --------------------------------------------------------------------------------


class _SkipMetaNormal(TorchFunctionMode):
    """Skip ``normal_`` on meta tensors: it has no meta kernel, and its Python reference imports
    torch._dynamo (a second, once per process); values mean nothing on the meta device anyway."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        if func in (torch.Tensor.normal_, torch.nn.init.normal_) and getattr(target, "is_meta", False):
            return target
        return func(*args, **kwargs)


def model_spec(name: str, config: Any, tower: Any = None) -> dict[str, TensorInfo]:
    """The weights a config (and a feature tower's spec) implies, from a model built on the meta device
    (no memory is allocated)."""
    from seqrec.items.features import build_with_tower

    try:
        with torch.device("meta"), _SkipMetaNormal():
            model = build_model(name, config) if tower is None else build_with_tower(name, config, tower)
        state = model.state_dict()
    except (ValueError, RuntimeError, TypeError, OverflowError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        fail(f"config.toml [model] describes a model that cannot be built ({first}); retrain or restore it")
    spec = {}
    for key, value in state.items():
        if value.dtype not in DTYPE_NAMES:
            fail(f"config.toml [model]: {key} would be {value.dtype}, which artifacts do not hold")
        spec[key] = TensorInfo(DTYPE_NAMES[value.dtype], tuple(value.shape))
    return spec


def implied_weights(name: str, config: Any, n_tensors: int, tower: Any = None) -> dict[str, TensorInfo]:
    """The weights ``config`` implies, checked against the memory available and the ``n_tensors`` the weights
    file holds before the full model is built even on the meta device (a million layers would take
    minutes there): a model of more than two layers is first sized from its one- and two-layer versions."""
    n_layers = getattr(config, "n_layers", None)
    if isinstance(n_layers, int) and n_layers > 2:
        one = model_spec(name, dataclasses.replace(config, n_layers=1), tower)
        two = model_spec(name, dataclasses.replace(config, n_layers=2), tower)
        tensors = len(one) + (n_layers - 1) * (len(two) - len(one))
        params = _numel(one) + (n_layers - 1) * (_numel(two) - _numel(one))
        nbytes = _nbytes(one) + (n_layers - 1) * (_nbytes(two) - _nbytes(one))
        spec = None
    else:
        spec = model_spec(name, config, tower)
        tensors, params, nbytes = len(spec), _numel(spec), _nbytes(spec)
    # the weights' bytes are in memory already; their tensors and the model built for them come on top
    check_memory(2 * nbytes, f"config.toml [model] implies {params:,} parameters, {size(nbytes)}")
    layers = f" with n_layers = {n_layers:,}" if isinstance(n_layers, int) else ""
    if tensors != n_tensors:
        fail(f"corrupt artifact: config.toml [model] implies {tensors:,} weight tensors{layers}, "
             f"model.safetensors holds {n_tensors:,}; retrain or restore it")
    if tensors > MAX_TENSORS:
        fail(f"config.toml [model] implies {tensors:,} weight tensors{layers}, more than the {MAX_TENSORS:,} "
             "seqrec loads; retrain a smaller model")
    return spec if spec is not None else model_spec(name, config, tower)


def _numel(spec: dict[str, TensorInfo]) -> int:
    return sum(t.numel for t in spec.values())


def _nbytes(spec: dict[str, TensorInfo]) -> int:
    return sum(t.nbytes for t in spec.values())


def check_weights_fit(spec: dict[str, TensorInfo], weights: SafeTensors) -> None:
    """The weights file holds exactly the tensors the config implies, each of the same dtype and shape."""
    for key, expected in spec.items():
        found = weights.tensors.get(key)
        if found is None:
            corrupt(weights.name, f"no tensor {key!r}, which config.toml [model] implies")
        if found != expected:
            corrupt(weights.name, f"{key} is {found} but config.toml [model] implies {expected}")
    for key in weights.tensors:
        if key not in spec:
            corrupt(weights.name, f"tensor {key!r} is not part of the model config.toml [model] describes")


def load_weights(weights: SafeTensors) -> dict[str, torch.Tensor]:
    out = {}
    for key in weights.tensors:
        tensor = weights.tensor(key)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            fail(f"model.safetensors: {key} holds NaN or infinite values; retrain or restore it")
        out[key] = tensor
    return out


# ---- the data ---------------------------------------------------------------------------------


def sequence_users(seqs: SafeTensors) -> int:
    """The number of users ``sequences.safetensors`` holds, from its header (checked for layout)."""
    t = seqs.tensors
    if "offsets" not in t or "items" not in t:
        fail("sequences.safetensors needs 'offsets' and 'items'; retrain or restore it")
    for key in t:
        if key not in ("offsets", "items", "times"):
            fail(f"sequences.safetensors holds an unknown tensor {key!r}; retrain or restore it")
    if any(t[k].dtype != "I64" or len(t[k].shape) != 1 for k in ("offsets", "items")):
        fail("sequences.safetensors: 'offsets' and 'items' must be 1-d int64; retrain or restore it")
    times = t.get("times")
    if times is not None and (times.dtype not in ("F64", "F32", "F16", "BF16") or times.shape != t["items"].shape):
        fail("sequences.safetensors: 'times' must be floats, one per item; retrain or restore it")
    if t["offsets"].shape[0] < 1:
        fail("sequences.safetensors: 'offsets' must hold at least one value; retrain or restore it")
    return t["offsets"].shape[0] - 1


def sequences(seqs: SafeTensors, n_users: int, n_items: int) -> Sequences:
    off, it = seqs.tensor("offsets").numpy(), seqs.tensor("items").numpy()
    if len(off) != n_users + 1:
        fail(f"sequences.safetensors holds {len(off) - 1} users but users.json lists {n_users}; "
             "retrain or restore it")
    if off[0] != 0 or off[-1] != len(it) or off.min() < 0 or off.max() > len(it) or (np.diff(off) < 0).any():
        fail(f"sequences.safetensors: offsets must rise from 0 to {len(it)} over {n_users} users; "
             "retrain or restore it")
    if len(it) and (it.min() < 1 or it.max() > n_items):
        fail("sequences.safetensors holds item ids outside the catalog; retrain or restore it")
    times = seqs.tensor("times").double().numpy() if "times" in seqs.tensors else None
    if times is not None and not np.isfinite(times).all():
        fail("sequences.safetensors: 'times' holds NaN or infinite values; retrain or restore it")
    return Sequences(off, it, times)


def id_map(data: dict[str, Any], where: str, offset: int, extra: tuple[str, ...] = ()) -> IdMap:
    only_keys(data, ("kind", "offset", "ids", *extra), where)
    ids, kind = data.get("ids"), data.get("kind")
    if kind not in ("int", "str") or not isinstance(ids, list):
        fail(f"{where}: 'kind' must be 'int' or 'str' and 'ids' a list; retrain or restore it")
    found = data.get("offset")
    if type(found) is not int or found != offset:
        fail(f"{where}: 'offset' must be {offset}, found {found!r}; retrain or restore it")
    if kind == "int":
        if not all(type(v) is int and ID_LOW <= v <= ID_HIGH for v in ids):
            fail(f"{where}: every id must be of kind 'int' (a 64-bit integer); retrain or restore it")
    else:
        if not all(type(v) is str for v in ids):
            fail(f"{where}: every id must be of kind 'str'; retrain or restore it")
        utf8_strings(ids, f"{where} 'ids'")
    if len(set(ids)) != len(ids):
        fail(f"{where}: ids are not unique; retrain or restore it")
    return IdMap.from_json(data)


def titles(items_json: dict[str, Any], n_items: int) -> list[str] | None:
    found = items_json.get("titles")
    if found is None:
        return None
    if not isinstance(found, list) or len(found) != n_items or not all(type(t) is str for t in found):
        fail(f"items.json: 'titles' must be a list of {n_items} strings; retrain or restore it")
    utf8_strings(found, "items.json 'titles'")
    return found


def check_info(info: dict[str, Any]) -> dict[str, Any]:
    """The fields of info.json that seqrec reads back (the rest is a record: history, metrics, timings)."""
    if not isinstance(info.get("dataset", ""), str):
        fail("info.json: 'dataset' must be a string; retrain or restore it")
    utf8_strings([info.get("dataset", "")], "info.json 'dataset'")
    split = info.get("split", "leave-one-out")
    if split not in SPLITS:
        fail(f"info.json: 'split' must be one of {', '.join(SPLITS)}, found {split!r}; retrain or restore it")
    for key in ("valid_time", "test_time"):
        value = info.get(key)
        if value is None and split != "temporal":
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not abs(value) < 1e300:  # or NaN
            temporal = " (a temporal split)" if split == "temporal" else ""
            fail(f"info.json: {key!r} must be a finite number{temporal}; retrain or restore it")
    return info
