"""Artifacts are input too: a corpus of tampered artifacts, made from one small trained artifact, each of
which `load_artifact` must refuse with one ArtifactError line (never another exception, a hang, or a large
allocation), and the CLI with exit status 2 and one stderr line for recommend, evaluate and serve start-up.

Most tampering is followed by resealing the manifest (``rewrite_manifest``), so that the field checks, not
the digest check, are what refuse it; the digest check has its own cases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import tomli_w
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import seqrec
import seqrec.artifact
import seqrec.artifact_checks as checks
from seqrec.artifact import MANIFEST, Artifact, load_artifact, save_artifact
from seqrec.atomic import atomic_dir
from seqrec.cli import main
from seqrec.datasets.synthetic import markov_dataset
from seqrec.errors import ArtifactError
from seqrec.models.registry import build_model, make_config
from seqrec.models.sasrec import SASRecConfig

Tamper = Callable[[Path], object]
FUZZ = settings(max_examples=30, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MAX_PARAMETERS = 100_000  # the trained model has ~1,200; no load in this module may build a larger one


# ---- the artifact and the guards ---------------------------------------------------------------


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SASRec artifact (dim 8, max_len 10, 2 layers) trained one epoch on 40 synthetic users."""
    data = markov_dataset(n_users=40, n_items=20, length=8)
    rec = seqrec.Recommender("sasrec", seqrec.TrainConfig(epochs=1, device="cpu"), dim=8, max_len=10)
    rec.fit(data, progress=False)
    return rec.save(tmp_path_factory.mktemp("hardening") / "art")


class Hang(BaseException):
    """Raised by the alarm: not an Exception, so no `except` in the code under test can swallow it."""


@contextlib.contextmanager
def no_hang(seconds: int = 20) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the code under test blocks, e.g. on a FIFO or /dev/zero."""
    def alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"still running after {seconds} s: something blocked or read without end")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def small_builds() -> Iterator[None]:
    """Every model built off the meta device must be small, and no meta build may have more than 64
    layers (building a million-layer model even there takes minutes): a load that would allocate or
    build what a tampered config asks for fails the test here, instead of exhausting the machine."""
    real_build = seqrec.artifact.build_model
    meta_build = checks.build_model

    def guarded_meta(name: str, config: Any, *args: Any) -> Any:
        assert torch.empty(0).device.type == "meta", "artifact_checks built a model off the meta device"
        assert getattr(config, "n_layers", 1) <= 64, f"a meta build of {config.n_layers} layers"
        return meta_build(name, config, *args)

    def guarded_real(name: str, config: Any, *args: Any) -> Any:
        assert getattr(config, "n_layers", 1) <= 64, f"a real build of {config.n_layers} layers"
        n = sum(t.numel for t in checks.model_spec(name, config).values())  # sized on the meta device
        assert n <= MAX_PARAMETERS, f"load_artifact built a model of {n:,} parameters"
        return real_build(name, config, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checks, "build_model", guarded_meta)
        mp.setattr(seqrec.artifact, "build_model", guarded_real)
        yield


def refused(art: Path) -> str:
    """Load ``art``, expecting one ArtifactError line that names the directory; return it."""
    with no_hang(), small_builds(), pytest.raises(ArtifactError) as info:
        load_artifact(art)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message and len(message) <= seqrec.artifact.MAX_MESSAGE, message
    assert message.startswith(f"{art}: "), message
    return message


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ---- tampering ---------------------------------------------------------------------------------


def edit_toml(change: Callable[[dict[str, Any]], object]) -> Tamper:
    def tamper(art: Path) -> None:
        config = tomllib.loads((art / "config.toml").read_text())
        change(config)
        (art / "config.toml").write_text(tomli_w.dumps(config))
    return tamper


def set_model(**values: Any) -> Tamper:
    return edit_toml(lambda c: c["model"].update(values))


def edit_json(name: str, change: Callable[[Any], Any]) -> Tamper:
    def tamper(art: Path) -> None:
        (art / name).write_text(json.dumps(change(json.loads((art / name).read_text()))))
    return tamper


def write(name: str, text: str) -> Tamper:
    return lambda art: (art / name).write_text(text)


def edit_tensors(name: str, change: Callable[[dict[str, torch.Tensor]], object]) -> Tamper:
    def tamper(art: Path) -> None:
        tensors = load_file(str(art / name))
        change(tensors)
        save_file(tensors, str(art / name))
    return tamper


def first_float(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in sorted(tensors.items()) if v.is_floating_point() and v.numel())


def nan_weight(tensors: dict[str, torch.Tensor]) -> None:
    tensors[first_float(tensors)].view(-1)[0] = float("nan")


def set_offset(position: int, value: int) -> Tamper:
    def change(t: dict[str, torch.Tensor]) -> None:
        t["offsets"][position] = value
    return edit_tensors("sequences.safetensors", change)


def replace_with_symlink(name: str, target: str | Callable[[Path], Path]) -> Tamper:
    def tamper(art: Path) -> None:
        to = target(art) if callable(target) else Path(target)
        (art / name).unlink()
        (art / name).symlink_to(to)
    return tamper


def outside_copy(name: str) -> Callable[[Path], Path]:
    def target(art: Path) -> Path:
        outside = art.parent / f"outside-{name}"
        shutil.copyfile(art / name, outside)
        return outside
    return target


def replace_with_fifo(name: str) -> Tamper:
    def tamper(art: Path) -> None:
        (art / name).unlink()
        os.mkfifo(art / name)
    return tamper


def replace_with_directory(name: str) -> Tamper:
    def tamper(art: Path) -> None:
        (art / name).unlink()
        (art / name).mkdir()
    return tamper


def zero_bytes(name: str, n: int) -> Tamper:
    """Zero the last ``n`` bytes of ``name`` (the tensor data, and with small files part of the header)."""
    def tamper(art: Path) -> None:
        data = bytearray((art / name).read_bytes())
        assert len(data) >= n
        data[-n:] = bytes(n)
        (art / name).write_bytes(bytes(data))
    return tamper


def pad(name: str, n_bytes: int) -> Tamper:
    """Append ``n_bytes`` of whitespace (or a TOML comment): the content still parses, only the size grows."""
    filler = "#" + " " * (n_bytes - 2) + "\n" if name.endswith(".toml") else " " * n_bytes
    return lambda art: (art / name).write_text((art / name).read_text() + filler)


def header_claims(n: int) -> Tamper:
    def tamper(art: Path) -> None:
        data = (art / "model.safetensors").read_bytes()
        (art / "model.safetensors").write_bytes(n.to_bytes(8, "little") + data[8:])
    return tamper


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# (id, tamper, reseal the manifest afterwards, what the one error line must say)
CASES: list[tuple[str, Tamper, bool, str]] = [
    # config.toml
    ("config-number", write("config.toml", "3\n"), True, "not valid TOML"),
    ("config-list", write("config.toml", "[1, 2]\n"), True, "not valid TOML"),
    ("config-binary", lambda a: (a / "config.toml").write_bytes(b"\xff\xfe\x00"), True, "not UTF-8"),
    ("model-number", edit_toml(lambda c: c.update(model=3)), True, "[model] must be a table"),
    ("model-list", edit_toml(lambda c: c.update(model=[1, 2])), True, "[model] must be a table"),
    ("max-len-missing", edit_toml(lambda c: c["model"].pop("max_len")), True, "lacks max_len"),
    ("max-len-text", set_model(max_len="fifty"), True, "max_len"),
    ("max-len-negative", set_model(max_len=-5), True, "max_len"),
    ("n-heads-zero", set_model(n_heads=0), True, "n_heads"),
    ("dropout-above-one", set_model(dropout=7.5), True, "cannot be built"),
    ("unknown-model-key", set_model(colour="red"), True, "unknown key 'colour'"),
    ("unknown-model", set_model(name="sasrec2"), True, "unknown model 'sasrec2'"),
    ("train-list", edit_toml(lambda c: c.update(train=[1, 2])), True, "[train]"),
    ("data-number", edit_toml(lambda c: c.update(data=4)), True, "[data]"),
    ("unknown-top-key", edit_toml(lambda c: c.update(extra=1)), True, "unknown key 'extra'"),
    ("format-as-text", edit_toml(lambda c: c.update(format_version="2")), True, "format '2'"),
    ("config-huge", pad("config.toml", 2_000_000), True, "more than the 1.0 MB"),
    # resource traps: refused from what the config implies, before anything of that size is built
    ("dim-65536", set_model(dim=65536), True, "config.toml [model] implies"),
    ("n-layers-million", set_model(n_layers=10**6), True, "config.toml [model] implies"),
    ("max-len-trillion", set_model(max_len=10**12), True, "config.toml [model] implies"),
    ("n-items-trillion", set_model(n_items=10**12), True, "config.toml [model] implies"),
    ("dim-overflow", set_model(dim=2**62), True, "config.toml [model]"),
    # id maps, titles, info
    ("items-ids-text", edit_json("items.json", lambda d: d | {"ids": "abc"}), True, "'ids' a list"),
    ("items-offset-0", edit_json("items.json", lambda d: d | {"offset": 0}), True, "'offset' must be 1"),
    ("items-offset-100000", edit_json("items.json", lambda d: d | {"offset": 100000}), True, "'offset' must be 1"),
    ("items-offset-float", edit_json("items.json", lambda d: d | {"offset": 1.0}), True, "'offset' must be 1"),
    ("users-offset-5", edit_json("users.json", lambda d: d | {"offset": 5}), True, "'offset' must be 0"),
    ("items-one-short", edit_json("items.json", lambda d: d | {"ids": d["ids"][:-1]}), True, "items.json lists 19"),
    ("items-duplicate", edit_json("items.json", lambda d: d | {"ids": [d["ids"][0], *d["ids"][:-1]]}), True,
     "not unique"),
    ("items-id-overflow", edit_json("items.json", lambda d: d | {"ids": [2**64, *d["ids"][1:]]}), True, "64-bit"),
    ("items-id-float", edit_json("items.json", lambda d: d | {"ids": [1.5, *d["ids"][1:]]}), True, "kind 'int'"),
    ("items-unknown-key", edit_json("items.json", lambda d: d | {"extra": 1}), True, "unknown key 'extra'"),
    ("titles-surrogate", edit_json("items.json", lambda d: d | {"titles": ["\ud800"] * len(d["ids"])}), True,
     "not valid Unicode"),
    ("titles-short", edit_json("items.json", lambda d: d | {"titles": ["a"]}), True, "'titles' must be a list"),
    ("users-not-json", write("users.json", "{"), True, "not valid JSON"),
    ("users-nested", write("users.json", nested(100_000)), True, "nested too deeply"),
    ("users-huge", pad("users.json", 2_000_000), True, "users.json holds"),
    ("info-list", edit_json("info.json", lambda d: [d]), True, "info.json must be a table"),
    ("info-split", edit_json("info.json", lambda d: d | {"split": "bogus"}), True, "'split'"),
    ("info-temporal-without-times", edit_json("info.json", lambda d: d | {"split": "temporal"}), True,
     "'valid_time'"),
    ("info-dataset-list", edit_json("info.json", lambda d: d | {"dataset": [1]}), True, "'dataset'"),
    # sequences
    ("sequence-items-float", edit_tensors("sequences.safetensors", lambda t: t.update(items=t["items"].double())),
     True, "int64"),
    ("sequence-offsets-float",
     edit_tensors("sequences.safetensors", lambda t: t.update(offsets=t["offsets"].double())), True, "int64"),
    ("offsets-past-the-end", set_offset(-1, 10**6), True, "offsets must rise"),
    ("offsets-negative", set_offset(1, -3), True, "offsets must rise"),
    ("offsets-not-from-zero", set_offset(0, 1), True, "offsets must rise"),
    ("sequence-item-outside", edit_tensors("sequences.safetensors", lambda t: t["items"].__setitem__(0, 21)),
     True, "outside the catalog"),
    ("times-nan", edit_tensors("sequences.safetensors", lambda t: t["times"].__setitem__(0, float("nan"))),
     True, "'times'"),
    ("sequence-extra-tensor", edit_tensors("sequences.safetensors", lambda t: t.update(x=torch.zeros(1))),
     True, "unknown tensor 'x'"),
    ("sequences-truncated", lambda a: (a / "sequences.safetensors").write_bytes(b"\x01"), True, "too short"),
    # weights
    ("nan-weights", edit_tensors("model.safetensors", nan_weight), True, "NaN"),
    ("weights-f64", edit_tensors("model.safetensors", lambda t: t.update({k: v.double() for k, v in t.items()})),
     True, "implies F32"),
    ("weights-extra", edit_tensors("model.safetensors", lambda t: t.update(extra=torch.zeros(2))), True,
     "config.toml [model] implies"),
    ("weights-missing", edit_tensors("model.safetensors", lambda t: t.pop(first_float(t))), True,
     "config.toml [model] implies"),
    ("weights-renamed", edit_tensors("model.safetensors", lambda t: t.update(other=t.pop(first_float(t)))), True,
     "corrupt artifact"),
    ("weights-transposed",
     edit_tensors("model.safetensors", lambda t: t.update({"pos_emb.weight": t["pos_emb.weight"].T.contiguous()})),
     True, "implies F32 [10, 8]"),
    ("header-claims-too-much", header_claims(2**40), True, "header claims"),
    ("weights-garbage", write("model.safetensors", "\x00garbage" * 10), True, "corrupt artifact"),
    # what the files are
    ("config-link-to-dev-zero", replace_with_symlink("config.toml", "/dev/zero"), False, "symbolic link"),
    ("users-link-outside", replace_with_symlink("users.json", outside_copy("users.json")), False, "symbolic link"),
    ("items-link-inside", replace_with_symlink("items.json", lambda a: a / "users.json"), False, "symbolic link"),
    ("config-fifo", replace_with_fifo("config.toml"), False, "FIFO"),
    ("weights-fifo", replace_with_fifo("model.safetensors"), False, "FIFO"),
    ("manifest-fifo", replace_with_fifo(MANIFEST), False, "FIFO"),
    ("info-fifo", replace_with_fifo("info.json"), False, "FIFO"),
    ("sequences-directory", replace_with_directory("sequences.safetensors"), False, "is a directory"),
    ("users-missing", lambda a: (a / "users.json").unlink(), False, "missing users.json"),
    # the manifest and the digests
    ("weights-5000-zeroed", zero_bytes("model.safetensors", 5000), False, "model.safetensors does not match"),
    ("sequences-edited", edit_tensors("sequences.safetensors", lambda t: t["items"].__setitem__(0, 2)), False,
     "sequences.safetensors does not match"),
    ("info-edited", edit_json("info.json", lambda d: d | {"dataset": "other"}), False, "info.json does not match"),
    ("info-unlisted", edit_json(MANIFEST, lambda d: {"sha256": {k: v for k, v in d["sha256"].items()
                                                               if k != "info.json"}}), False,
     "lists no digest for info.json"),
    ("info-listed-but-missing", lambda a: (a / "info.json").unlink(), False, "lists info.json, but"),
    ("manifest-lists-other-file", edit_json(MANIFEST, lambda d: {"sha256": d["sha256"] | {"../x": "0" * 64}}),
     False, "not an artifact file"),
    ("manifest-digest-short", edit_json(MANIFEST, lambda d: {"sha256": d["sha256"] | {"users.json": "ab"}}),
     False, "64 hexadecimal"),
    ("manifest-list", edit_json(MANIFEST, lambda d: [d]), False, "manifest.json must be a table"),
    ("manifest-extra-key", edit_json(MANIFEST, lambda d: d | {"md5": {}}), False, "unknown key 'md5'"),
]
REPRESENTATIVE = ("config-number", "max-len-missing", "dim-65536", "n-layers-million", "items-offset-0",
                  "info-list", "offsets-past-the-end", "nan-weights", "config-link-to-dev-zero", "config-fifo",
                  "users-link-outside", "weights-5000-zeroed", "info-unlisted")


@pytest.mark.parametrize(("tamper", "reseal_after", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_tampered_artifact_is_refused_in_one_line(small_artifact: Path, tmp_path: Path, tamper: Tamper,
                                                    reseal_after: bool, expected: str,
                                                    rewrite_manifest: Callable[[Path], None]) -> None:
    art = copy_of(small_artifact, tmp_path / "art")
    tamper(art)
    if reseal_after:
        rewrite_manifest(art)
    assert expected in refused(art)


BEFORE_ANY_READ = ("config-link-to-dev-zero", "users-link-outside", "items-link-inside", "config-fifo",
                   "weights-fifo", "manifest-fifo", "info-fifo", "sequences-directory", "users-missing", "config-huge")


@pytest.mark.parametrize("case", [*BEFORE_ANY_READ, "users-huge"])
def test_what_a_file_is_and_its_size_are_checked_before_it_is_read(small_artifact: Path, tmp_path: Path, case: str,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    rewrite_manifest: Callable[[Path], None]) -> None:
    _, tamper, reseal_after, expected = next(c for c in CASES if c[0] == case)
    art = copy_of(small_artifact, tmp_path / "art")
    tamper(art)
    if reseal_after:
        rewrite_manifest(art)
    read: list[str] = []
    real_read = checks.read_file

    def spy(p: Path, name: str, expected_stat: os.stat_result) -> bytes:
        read.append(name)
        return real_read(p, name, expected_stat)

    monkeypatch.setattr(checks, "read_file", spy)
    assert expected in refused(art)
    if case in BEFORE_ANY_READ:
        assert read == []
    else:  # refused from its size and the number of users in the (already checked) sequences
        assert "users.json" not in read and "sequences.safetensors" in read


@pytest.mark.parametrize("swap", ["fifo", "symlink", "new-file"])
def test_a_file_swapped_after_its_check_is_refused(small_artifact: Path, tmp_path: Path, swap: str) -> None:
    """Between the lstat and the read, the file becomes a FIFO, a link, or another file: the read
    neither blocks nor follows the link, and sees that the file is not the one that was checked (a
    same-sized replacement may reuse the inode; the digest of the bytes read catches that one)."""
    art = copy_of(small_artifact, tmp_path / "art")
    checked = os.lstat(art / "users.json")
    shutil.copyfile(art / "users.json", tmp_path / "elsewhere.json")
    (art / "users.json").unlink()
    if swap == "fifo":
        os.mkfifo(art / "users.json")
    elif swap == "symlink":
        (art / "users.json").symlink_to(tmp_path / "elsewhere.json")
    else:
        (art / "users.json").write_text((tmp_path / "elsewhere.json").read_text() + " ")
    with no_hang(), pytest.raises(ArtifactError, match=r"users\.json"):
        checks.read_file(art, "users.json", checked)


def test_other_entries_in_the_directory_are_never_opened(small_artifact: Path, tmp_path: Path) -> None:
    """`seqrec plot` writes curves.png into a run's directory, training leaves checkpoint/: neither is an
    artifact file, and neither is read (a FIFO among them would hang a load that opened it)."""
    art = copy_of(small_artifact, tmp_path / "art")
    (art / "curves.png").write_bytes(b"\x89PNG")
    (art / "checkpoint").mkdir()
    os.mkfifo(art / "pipe")
    (art / "zero").symlink_to("/dev/zero")
    with no_hang(), small_builds():
        load_artifact(art)


def test_the_untampered_artifact_loads(small_artifact: Path) -> None:
    """The corpus's base case: what every tampered case starts from is accepted."""
    with no_hang(), small_builds():
        art = load_artifact(small_artifact)
    assert art.model_name == "sasrec" and art.max_len == 10 and len(art.dataset.items) == 20
    manifest = json.loads((small_artifact / MANIFEST).read_text())["sha256"]
    assert art.digests == manifest and set(manifest) == {*checks.FILES, checks.INFO}


def test_only_the_digest_catches_zeroed_weights(small_artifact: Path, tmp_path: Path,
                                                rewrite_manifest: Callable[[Path], None]) -> None:
    """Zeroing the tensor data leaves a valid file (zeros are finite weights): the digest alone refuses it."""
    art = copy_of(small_artifact, tmp_path / "art")
    header = 8 + int.from_bytes((art / "model.safetensors").read_bytes()[:8], "little")
    data = bytearray((art / "model.safetensors").read_bytes())
    data[header:] = bytes(len(data) - header)
    (art / "model.safetensors").write_bytes(bytes(data))
    assert "model.safetensors does not match its digest" in refused(art)
    rewrite_manifest(art)
    with no_hang(), small_builds():
        loaded = load_artifact(art)
    assert all(not v.any() for v in loaded.model.state_dict().values())


def test_a_device_node_is_never_opened(small_artifact: Path, tmp_path: Path) -> None:
    art = copy_of(small_artifact, tmp_path / "art")
    (art / "items.json").unlink()
    try:
        os.mknod(art / "items.json", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # a /dev/zero
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here ({exc})")
    assert "items.json is a device" in refused(art)


# ---- resources ---------------------------------------------------------------------------------


def test_memory_the_files_need_is_checked_before_reading(small_artifact: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "available_memory", lambda: 1000)
    monkeypatch.setattr(checks, "read_file", lambda *args: pytest.fail("read a file before checking memory"))
    line = refused(small_artifact)
    assert "needs about" in line and "1.0 KB is available" in line


def test_memory_a_huge_config_implies_is_checked_before_building(small_artifact: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 rewrite_manifest: Callable[[Path], None]) -> None:
    art = copy_of(small_artifact, tmp_path / "art")
    set_model(dim=65536)(art)
    rewrite_manifest(art)
    monkeypatch.setattr(checks, "available_memory", lambda: 64 * 10**9)
    line = refused(art)
    # 2 layers of 6 dim^2 weights (and a little more): 206 GB of float32, twice over (tensors and model)
    assert "config.toml [model] implies 51,543,080,960 parameters, 206.2 GB" in line
    assert "needs about 412.3 GB" in line and "64.0 GB is available" in line
    monkeypatch.setattr(checks, "available_memory", lambda: None)  # unknown: the shapes still refuse it
    assert "id_emb.weight is F32 [21, 8] but config.toml [model] implies F32 [21, 65536]" in refused(art)


def test_a_million_layers_are_counted_without_being_built(small_artifact: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          rewrite_manifest: Callable[[Path], None]) -> None:
    art = copy_of(small_artifact, tmp_path / "art")
    set_model(n_layers=10**6)(art)
    rewrite_manifest(art)
    monkeypatch.setattr(checks, "available_memory", lambda: None)
    line = refused(art)
    assert "implies 12,000,004 weight tensors with n_layers = 1,000,000, model.safetensors holds 28" in line


NEURAL = {"lstm": {"hidden": 8}, "gru4rec": {"hidden": 8}, "sasrec": {"n_heads": 2}, "bert4rec": {"n_heads": 2},
          "hstu": {"n_heads": 2}}


@pytest.mark.parametrize("name", [*NEURAL, "popular"])
def test_the_meta_model_is_the_real_one(name: str) -> None:
    """What the checks compare the weights with is what the model built for real holds; a model of
    five layers, sized from its one- and two-layer versions, has the tensors it is said to have."""
    params = {"dim": 8, "n_layers": 5, **NEURAL[name]} if name in NEURAL else {}
    config = make_config(name, n_items=20, max_len=10, **params)
    real = {k: (tuple(v.shape), v.dtype) for k, v in build_model(name, config).state_dict().items()}
    spec = checks.implied_weights(name, config, len(real))
    assert {k: (t.shape, checks.DTYPES[t.dtype]) for k, t in spec.items()} == real
    with pytest.raises(ArtifactError, match=f"implies {len(real)} weight tensors"):
        checks.implied_weights(name, config, len(real) + 1)


def test_available_memory_is_known_here() -> None:
    free = checks.available_memory()
    assert free is not None and 0 < free < 2**50


# ---- permissions -------------------------------------------------------------------------------


def modes(art: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(os.lstat(p).st_mode) for p in [art, *art.iterdir()]}


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_saved_files_are_private_whatever_the_umask(small_artifact: Path, tmp_path: Path, umask: int) -> None:
    with no_hang(), small_builds():
        art = load_artifact(small_artifact)
    out = tmp_path / "out"
    out.mkdir(mode=0o755)  # an existing artifact directory is replaced, not reused
    previous = os.umask(umask)
    try:
        save_artifact(out, Artifact(art.model_name, art.model, art.dataset, art.train_config, art.info))
    finally:
        os.umask(previous)
    found = modes(out)
    assert found.pop("out") == 0o700
    assert set(found) == {*checks.FILES, checks.INFO, MANIFEST}
    assert set(found.values()) == {0o600}, found
    with no_hang(), small_builds():
        load_artifact(out)


def test_atomic_dir_makes_whatever_was_written_private(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    with atomic_dir(final) as tmp:
        assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o700
        (tmp / "state.json").write_text("{}")
        os.chmod(tmp / "state.json", 0o666)
        (tmp / "sub").mkdir(mode=0o777)
        (tmp / "sub" / "x").write_text("x")
    assert modes(final) == {"ckpt": 0o700, "state.json": 0o600, "sub": 0o700}
    assert stat.S_IMODE(os.stat(final / "sub" / "x").st_mode) == 0o600


# ---- the command line --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with no_hang(), small_builds():
        code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqrec: error: "), err
    return lines[0]


@pytest.fixture
def serve_leaves_no_trace() -> Iterator[None]:
    """`seqrec serve` sets torch's threads and the GIL switch interval for its process; put them back."""
    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    yield
    torch.set_num_threads(threads)
    sys.setswitchinterval(interval)


@pytest.mark.parametrize("case", REPRESENTATIVE)
def test_the_cli_refuses_a_tampered_artifact_in_one_line(capsys: pytest.CaptureFixture[str], small_artifact: Path,
                                                         tmp_path: Path, case: str, serve_leaves_no_trace: None,
                                                         rewrite_manifest: Callable[[Path], None]) -> None:
    _, tamper, reseal_after, expected = next(c for c in CASES if c[0] == case)
    art = copy_of(small_artifact, tmp_path / "art")
    tamper(art)
    if reseal_after:
        rewrite_manifest(art)
    user = str(json.loads((small_artifact / "users.json").read_text())["ids"][0])
    for argv in (["recommend", str(art), "--user", user], ["evaluate", str(art)]):
        assert expected in cli_error(capsys, argv)
    port = free_port()
    store = f"sqlite:///{tmp_path / 'events.db'}"
    assert expected in cli_error(capsys, ["serve", str(art), "--port", str(port), "--store", store])
    with socket.socket() as s:  # refused before binding: the port is still free
        s.bind(("127.0.0.1", port))


def test_the_cli_accepts_the_untampered_artifact(capsys: pytest.CaptureFixture[str], small_artifact: Path) -> None:
    user = str(json.loads((small_artifact / "users.json").read_text())["ids"][0])
    with no_hang(), small_builds():
        assert main(["recommend", str(small_artifact), "--user", user, "--k", "3"]) == 0
    assert capsys.readouterr().out.count("\n") >= 3


# ---- generated tampering -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
toml_values = st.recursive(
    st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.floats() | st.text(max_size=12)
    | st.dates() | st.datetimes(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3),
    max_leaves=8)


@st.composite
def json_edits(draw: st.DrawFn, original: Any) -> Any:
    """A random JSON value, or ``original`` (an object) with one key replaced, removed or added, or one
    element of one of its lists replaced."""
    how = draw(st.sampled_from(["whole", "replace", "remove", "add", "element"]))
    if how == "whole" or not isinstance(original, dict) or not original:
        return draw(json_values)
    doc = dict(original)
    key = draw(st.sampled_from(sorted(doc)))
    if how == "replace":
        doc[key] = draw(json_values)
    elif how == "remove":
        del doc[key]
    elif how == "add":
        doc[draw(st.text(max_size=8))] = draw(json_values)
    else:
        lists = sorted(k for k, v in doc.items() if isinstance(v, list) and v)
        if lists:
            key = draw(st.sampled_from(lists))
            items = list(doc[key])
            items[draw(st.integers(0, len(items) - 1))] = draw(json_values)
            doc[key] = items
        else:
            doc[key] = draw(json_values)
    return doc


@contextlib.contextmanager
def scratch_copy(src: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield copy_of(src, Path(folder) / "art")


def loads_or_is_refused(art: Path) -> None:
    """The property every generated case must have: a consistent artifact, or one ArtifactError line."""
    try:
        with no_hang(), small_builds():
            loaded = load_artifact(art)
    except ArtifactError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{art}: "), str(exc)
        return
    data = loaded.dataset
    assert len(data.items) == loaded.model.config.n_items and data.sequences.n_users == len(data.users)
    assert data.item_titles is None or len(data.item_titles) == len(data.items)


@pytest.mark.parametrize("name", ["items.json", "users.json", "info.json", MANIFEST])
@FUZZ
@given(data=st.data())
def test_generated_json_is_loaded_or_refused(small_artifact: Path, name: str, data: st.DataObject,
                                             rewrite_manifest: Callable[[Path], None]) -> None:
    original = json.loads((small_artifact / name).read_text())
    value = data.draw(json_edits(original), label=name)
    with scratch_copy(small_artifact) as art:
        (art / name).write_text(json.dumps(value))
        if name != MANIFEST:  # a generated manifest is its own test; the files it covers are intact
            rewrite_manifest(art)
        loads_or_is_refused(art)


@pytest.mark.parametrize("key", ["name", *(f.name for f in dataclasses.fields(SASRecConfig))])
@settings(FUZZ, max_examples=15)
@given(value=st.none() | toml_values)
def test_generated_model_settings_are_loaded_or_refused(small_artifact: Path, key: str, value: Any,
                                                        rewrite_manifest: Callable[[Path], None]) -> None:
    """Each [model] key given a random TOML value (None: the key removed)."""
    with scratch_copy(small_artifact) as art:
        config = tomllib.loads((art / "config.toml").read_text())
        if value is None:
            config["model"].pop(key, None)
        else:
            config["model"][key] = value
        (art / "config.toml").write_text(tomli_w.dumps(config))
        rewrite_manifest(art)
        loads_or_is_refused(art)


@pytest.mark.parametrize("name", ["model.safetensors", "sequences.safetensors"])
@FUZZ
@given(data=st.data())
def test_generated_byte_damage_is_loaded_or_refused(small_artifact: Path, name: str, data: st.DataObject,
                                                    rewrite_manifest: Callable[[Path], None]) -> None:
    """Bytes overwritten (mostly in the 8-byte length and the JSON header), or the file cut short."""
    original = (small_artifact / name).read_bytes()
    header_end = 8 + int.from_bytes(original[:8], "little")
    damaged = bytearray(original)
    if data.draw(st.booleans(), label="cut"):
        damaged = damaged[: data.draw(st.integers(0, len(original) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="edits")):
            at = data.draw(st.integers(0, header_end - 1) | st.integers(0, len(original) - 1), label="at")
            damaged[at] = data.draw(st.integers(0, 255) | st.sampled_from(b'{}[]",:0123456789'), label="byte")
    with scratch_copy(small_artifact) as art:
        (art / name).write_bytes(bytes(damaged))
        rewrite_manifest(art)
        loads_or_is_refused(art)


def test_a_generated_case_can_fail(small_artifact: Path, tmp_path: Path) -> None:
    """The property is not vacuous: another exception out of load_artifact fails it."""
    art = copy_of(small_artifact, tmp_path / "art")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checks, "parse_json", lambda name, data: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            loads_or_is_refused(art)
