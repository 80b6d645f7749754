"""`seqrec serve` start-up: options, one-line errors for bad artifacts and settings, no training code."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import seqrec.serve
from seqrec.artifact import MANIFEST, load_artifact
from seqrec.cli import build_parser, main
from seqrec.errors import ArtifactError
from seqrec.serve.index import ServedModel
from seqrec.serve.settings import settings_from_args, settings_from_environment, settings_to_environment


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqrec: error: "), err
    return err[0]


def test_defaults_bind_loopback_and_read_the_key_from_the_env(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", str(tmp_path)])
    cfg = settings_from_args(args, {"SEQREC_API_KEY": "k" * 16})
    assert (cfg.host, cfg.port, cfg.store, cfg.api_key) == ("127.0.0.1", 8000, "sqlite:///seqrec-serve.db", "k" * 16)
    assert cfg.history_cap == 200 and not cfg.read_requires_key and cfg.torch_threads >= 1
    args = build_parser().parse_args(["serve", str(tmp_path), "--store", "redis://127.0.0.1:6379/2",
                                      "--history-cap", "50", "--read-requires-key", "--port", "9000"])
    cfg = settings_from_args(args, {})
    assert (cfg.store, cfg.history_cap, cfg.read_requires_key, cfg.port, cfg.api_key) == (
        "redis://127.0.0.1:6379/2", 50, True, 9000, None)


def test_worker_processes_rebuild_the_same_settings_with_the_key_outside_the_json(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", str(tmp_path), "--workers", "2", "--history-cap", "7",
                                      "--gil-switch-ms", "0.5", "--read-requires-key",
                                      "--store", "redis://127.0.0.1:6379/1"])
    cfg = settings_from_args(args, {"SEQREC_API_KEY": "secret-key-0123456789"})
    env = settings_to_environment(cfg)
    assert "secret-key" not in env["SEQREC_SERVE_SETTINGS"] and env["SEQREC_API_KEY"] == "secret-key-0123456789"
    assert settings_from_environment(env) == cfg and (cfg.workers, cfg.gil_switch_ms) == (2, 0.5)
    keyless = settings_from_args(args, {})
    assert settings_from_environment(settings_to_environment(keyless)).api_key is None


def test_workers_on_a_taken_port_fail_in_one_line(capsys: pytest.CaptureFixture[str], artifact_dir: Path,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEQREC_SERVE_SETTINGS", "SEQREC_API_KEY"):  # run() exports both; restore them afterwards
        monkeypatch.setenv(name, "")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        line = one_error_line(capsys, ["serve", str(artifact_dir), "--workers", "2", "--port", port,
                                       "--store", f"sqlite:///{tmp_path / 'events.db'}"])
    assert f"cannot listen on 127.0.0.1:{port}" in line


def corrupt_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_corrupt_artifact_fails_at_start_up_in_one_line(capsys: pytest.CaptureFixture[str], artifact_dir: Path,
                                                          tmp_path: Path,
                                                          rewrite_manifest: Callable[[Path], None]) -> None:
    bad = corrupt_copy(artifact_dir, tmp_path / "bad-weights")
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert "model.safetensors does not match its digest" in one_error_line(capsys, ["serve", str(bad)])
    rewrite_manifest(bad)  # the digests agree: the weights themselves are unreadable
    assert "corrupt artifact" in one_error_line(capsys, ["serve", str(bad)])

    missing = tmp_path / "nothing-here"
    assert "no artifact directory" in one_error_line(capsys, ["serve", str(missing)])

    torn = corrupt_copy(artifact_dir, tmp_path / "torn")
    (torn / "config.toml").unlink()
    assert "missing config.toml" in one_error_line(capsys, ["serve", str(torn)])
    unlisted = corrupt_copy(artifact_dir, tmp_path / "unlisted")
    (unlisted / MANIFEST).unlink()
    assert f"missing {MANIFEST}" in one_error_line(capsys, ["serve", str(unlisted)])

    old = corrupt_copy(artifact_dir, tmp_path / "format-1")
    (old / "config.toml").rename(old / "config.json")
    assert "older seqrec (format 1, config.json)" in one_error_line(capsys, ["serve", str(old)])

    mismatched = corrupt_copy(artifact_dir, tmp_path / "mismatched")
    items = json.loads((mismatched / "items.json").read_text())
    items["ids"], items["titles"] = items["ids"][:-1], items["titles"][:-1]
    (mismatched / "items.json").write_text(json.dumps(items))
    assert "items.json does not match its digest" in one_error_line(capsys, ["serve", str(mismatched)])
    rewrite_manifest(mismatched)
    line = one_error_line(capsys, ["serve", str(mismatched)])
    assert "the model has 60 items but items.json lists 59" in line


def test_an_artifact_whose_parts_disagree_is_refused_when_served(artifact_dir: Path) -> None:
    artifact = load_artifact(artifact_dir)
    titles = artifact.dataset.item_titles
    assert titles is not None
    ServedModel(artifact, "v1")  # consistent
    artifact.dataset = dataclasses.replace(artifact.dataset, item_titles=titles[:-1])
    with pytest.raises(ArtifactError, match=r"inconsistent artifact: items.json has 59 titles for 60 items"):
        ServedModel(artifact, "v1")


def test_bad_settings_fail_in_one_line(capsys: pytest.CaptureFixture[str], artifact_dir: Path,
                                       tmp_path: Path) -> None:
    art = str(artifact_dir)
    assert "--store" in one_error_line(capsys, ["serve", art, "--store", "postgres://x"])
    assert ":memory:" in one_error_line(capsys, ["serve", art, "--store", "sqlite:///:memory:"])
    assert "cannot open" in one_error_line(capsys, ["serve", art, "--store", f"sqlite:///{tmp_path}/no/such/dir.db"])
    assert "--history-cap" in one_error_line(capsys, ["serve", art, "--history-cap", "0"])
    assert "--workers" in one_error_line(capsys, ["serve", art, "--workers", "0"])
    assert "--gil-switch-ms" in one_error_line(capsys, ["serve", art, "--gil-switch-ms", "0"])
    (tmp_path / "key").write_text("\n")
    assert "is empty" in one_error_line(capsys, ["serve", art, "--api-key-file", str(tmp_path / "key")])


def serve_sources() -> list[Path]:
    return sorted(Path(seqrec.serve.__file__).parent.rglob("*.py"))


def test_serving_code_never_imports_training_code() -> None:
    for path in serve_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n == "seqrec.train" or n.startswith("seqrec.train.")], path


def test_loading_the_service_loads_no_training_module() -> None:
    """Not even indirectly (through seqrec/__init__.py or artifact.py): serving stays light."""
    code = ("import sys, seqrec.serve.api, seqrec.serve.service; "
            "print(sorted(m for m in sys.modules if m.startswith('seqrec.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
