"""Secrets: a Redis password never reaches a response body, a log line, an error message or `ps`; the
store URL can come from $SEQREC_STORE or a file; the API key's rules (first line, 16 characters);
the SQLite files are readable by their owner only."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from seqrec.cli import build_parser, main
from seqrec.errors import SeqrecError
from seqrec.serve.settings import redact_url, settings_from_args
from seqrec.serve.store import Event, RedisStore, StoreError, open_store

PASSWORD = "Pw-9f3Kq7zX2m"  # distinctive: a hit anywhere is this password, nothing else
KEY = "security-key-0123456789"
MakeClient = Callable[..., TestClient]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqrec: error: "), err
    return err[0]


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the key nor the store comes from the caller's environment."""
    for name in ("SEQREC_API_KEY", "SEQREC_STORE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A redis-server that wants PASSWORD (``--requirepass``): (its port, its process)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (CI installs it: apt-get install redis-server)")
    import redis

    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, password=PASSWORD)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        yield port, proc
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.parametrize(("url", "shown"), [
    (f"redis://:{PASSWORD}@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
    (f"redis://default:{PASSWORD}@cache.internal/2", "redis://***@cache.internal/2"),
    (f"rediss://user:{PASSWORD}@h:6380/0?ssl_cert_reqs=none", "rediss://***@h:6380/0?ssl_cert_reqs=none"),
    (f"redis://h:6379/0?password={PASSWORD}&socket_timeout=1", "redis://h:6379/0?password=***&socket_timeout=1"),
    (f"unix://:{PASSWORD}@/run/redis.sock?db=1", "unix://***@/run/redis.sock?db=1"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("sqlite:////var/lib/seqrec/events.db", "sqlite:////var/lib/seqrec/events.db"),
])
def test_printed_urls_hide_user_and_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("userinfo", [f":{PASSWORD}@", f"seqrec:{PASSWORD}@"])
def test_store_errors_never_quote_the_password(capsys: pytest.CaptureFixture[str], artifact_dir: Path,
                                               userinfo: str, no_env: None) -> None:
    url = f"redis://{userinfo}127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(StoreError) as caught:
        RedisStore(url)
    assert PASSWORD not in str(caught.value) and "redis://***@127.0.0.1" in str(caught.value)
    line = one_error_line(capsys, ["serve", str(artifact_dir), "--port", str(free_port()), "--store", url])
    assert "cannot reach Redis" in line and PASSWORD not in line


def test_a_store_that_goes_down_answers_503_without_the_password(
        make_client: MakeClient, redis_with_password: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, server = redis_with_password
    client = make_client(store=f"redis://:{PASSWORD}@127.0.0.1:{port}/0", api_key=KEY)
    assert client.get("/healthz").status_code == 200
    assert PASSWORD not in repr(client.app.state.service.store)
    stop(server)
    answers = [client.get("/healthz"), client.get("/v1/users/1/recommendations"),
               client.post("/v1/recommendations", json={"history": [101, 102]}),  # stateless: no store, 200
               client.post("/v1/events", json={"user_id": "u", "item_id": 101}, headers={"X-API-Key": KEY})]
    assert [r.status_code for r in answers] == [503, 503, 200, 503]
    for r in answers:
        assert PASSWORD not in r.text
    assert "redis://***@127.0.0.1" in answers[0].json()["message"]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return kids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_running_service_never_shows_the_password(
        artifact_dir: Path, tmp_path: Path, free_port: int, no_env: None,
        redis_with_password: tuple[int, subprocess.Popen[bytes]]) -> None:
    """The URL comes from --store-file; two workers; redis then goes away. Neither `ps` (command lines),
    the processes' environments, the log, nor any response body holds the password."""
    redis_port, redis_server = redis_with_password
    store_file = tmp_path / "store-url"
    store_file.write_text(f"redis://:{PASSWORD}@127.0.0.1:{redis_port}/0\nsecond line ignored\n")
    log = tmp_path / "serve.log"
    base = f"http://127.0.0.1:{free_port}"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "seqrec.cli", "serve", str(artifact_dir), "--port",
                                 str(free_port), "--store-file", str(store_file), "--workers", "2"],
                                env={**os.environ, "SEQREC_API_KEY": KEY}, stdout=out, stderr=subprocess.STDOUT)
    try:
        workers = wait_for_workers(proc, base, log, 2)
        for pid in [proc.pid, *workers]:
            for part in ("cmdline", "environ"):
                assert PASSWORD.encode() not in Path(f"/proc/{pid}/{part}").read_bytes(), (pid, part)
        stop(redis_server)
        bodies = [httpx.get(f"{base}/healthz"), httpx.get(f"{base}/v1/users/1/recommendations"),
                  httpx.post(f"{base}/v1/events", json={"user_id": "u", "item_id": 101}, headers={"X-API-Key": KEY})]
        assert [r.status_code for r in bodies] == [503, 503, 503]
        assert not [r.text for r in bodies if PASSWORD in r.text]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    text = log.read_text()
    assert f"store redis (redis://***@127.0.0.1:{redis_port}/0)" in text, text
    assert PASSWORD not in text


def wait_for_workers(proc: subprocess.Popen[bytes], base: str, log: Path, n: int) -> list[int]:
    """Wait until every one of the ``n`` workers answers /healthz; their pids."""
    deadline = time.monotonic() + 120  # a loaded 2-core box needs a while to import torch, three times
    seen: set[int] = set()
    while time.monotonic() < deadline and len(seen) < n:
        if proc.poll() is not None:
            pytest.fail(f"seqrec serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            text = httpx.get(f"{base}/metrics", timeout=2.0).text
            seen.update(int(line.split('worker="')[1].split('"')[0]) for line in text.splitlines()
                        if line.startswith("seqrec_model_info{"))
        except httpx.TransportError:
            time.sleep(0.2)
    assert len(seen) == n and set(children(proc.pid)) >= seen
    return sorted(seen)


def test_the_start_up_line_redacts_the_url_and_warns_about_ps(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    from seqrec.serve.cli import _announce

    url = f"redis://:{PASSWORD}@10.0.0.5:6379/0"
    cfg = settings_from_args(serve_args(tmp_path, "--store", url), {})
    _announce(cfg, "gru4rec-0123", "redis", store_in_argv=True)
    err = capsys.readouterr().err
    assert PASSWORD not in err and "store redis (redis://***@10.0.0.5:6379/0)" in err
    assert "warning: the --store URL holds a password" in err and "$SEQREC_STORE or --store-file" in err
    _announce(cfg, "gru4rec-0123", "redis", store_in_argv=False)  # from the file or the environment: no warning
    assert "warning" not in capsys.readouterr().err


# ---- where the store URL comes from ---------------------------------------------------------------
def serve_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", str(tmp_path), *extra])


def test_the_store_url_comes_from_the_flag_a_file_or_the_environment(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    secret = f"redis://:{PASSWORD}@127.0.0.1:6379/0"
    store_file = tmp_path / "store"
    store_file.write_text(f"  {secret}  \nredis://other:6379/1\n")
    env = {"SEQREC_STORE": "redis://from-env:6379/3"}
    assert settings_from_args(serve_args(tmp_path), env).store == "redis://from-env:6379/3"
    assert settings_from_args(serve_args(tmp_path, "--store-file", str(store_file)), env).store == secret
    assert settings_from_args(serve_args(tmp_path, "--store", "sqlite:///x.db"), env).store == "sqlite:///x.db"
    assert settings_from_args(serve_args(tmp_path), {}).store == "sqlite:///seqrec-serve.db"
    cfg = settings_from_args(serve_args(tmp_path, "--store-file", str(store_file)), {})
    assert PASSWORD not in repr(cfg)
    with pytest.raises(SeqrecError, match="not both"):
        settings_from_args(serve_args(tmp_path, "--store", "sqlite:///x.db", "--store-file", str(store_file)), {})
    store_file.write_text("\n" + secret)
    with pytest.raises(SeqrecError, match="first line is empty"):
        settings_from_args(serve_args(tmp_path, "--store-file", str(store_file)), {})
    with pytest.raises(SeqrecError, match="cannot read"):
        settings_from_args(serve_args(tmp_path, "--store-file", str(tmp_path / "absent")), {})
    bad = f"postgres://u:{PASSWORD}@db/x"
    with pytest.raises(SeqrecError) as caught:
        settings_from_args(serve_args(tmp_path, "--store", bad), {})
    assert PASSWORD not in str(caught.value)


# ---- the API key -------------------------------------------------------------------------------------
def test_the_key_file_gives_its_first_line(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n# rotated 2024-05-01\n")
    assert settings_from_args(serve_args(tmp_path, "--api-key-file", str(key_file)), {}).api_key == KEY
    key_file.write_text(f"  {KEY}  ")  # no newline at all
    assert settings_from_args(serve_args(tmp_path, "--api-key-file", str(key_file)), {}).api_key == KEY


def test_short_keys_are_refused_unless_allowed(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, no_env: None) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("short-key-15chr\n" + "x" * 40 + "\n")  # a long second line does not count
    argv = ["serve", str(tmp_path / "never-loaded"), "--api-key-file", str(key_file)]
    line = one_error_line(capsys, argv)
    assert "15 characters, fewer than 16" in line and "--allow-short-key" in line
    allowed = settings_from_args(serve_args(tmp_path, "--api-key-file", str(key_file), "--allow-short-key"), {})
    assert allowed.api_key == "short-key-15chr"

    monkeypatch.setenv("SEQREC_API_KEY", "only-9-ch")
    line = one_error_line(capsys, ["serve", str(tmp_path / "never-loaded")])
    assert "$SEQREC_API_KEY" in line and "9 characters" in line
    assert settings_from_args(serve_args(tmp_path, "--allow-short-key"), {"SEQREC_API_KEY": "only-9-ch"}).api_key
    assert settings_from_args(serve_args(tmp_path), {"SEQREC_API_KEY": "k" * 16}).api_key == "k" * 16


# ---- SQLite file modes -------------------------------------------------------------------------------
def test_the_sqlite_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, under which files are created 0644
    try:
        store = open_store(f"sqlite:///{tmp_path / 'events.db'}")
        store.append([Event("u", "101", 0.0)], cap=10)
        assert store.user_state("u", 10).items == ["101"]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        store.close()
    finally:
        os.umask(old)
    assert modes == {"events.db": 0o600, "events.db-wal": 0o600, "events.db-shm": 0o600}, {
        name: oct(mode) for name, mode in modes.items()}
