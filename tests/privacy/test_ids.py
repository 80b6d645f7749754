"""Pseudonymised user ids, forgetting and retraining, through the command line: raw ids never reach
a written byte, a forgotten user's id and history leave the artifact's files, a retrain without
exclusions equals the original, bad input is one line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load_file

from seqrec.cli import main
from seqrec.errors import SeqrecError
from seqrec.privacy.ids import pseudonym
from seqrec.serve.api import create_app
from seqrec.serve.service import build_service
from seqrec.serve.settings import ServeSettings, settings_from_environment, settings_to_environment

KEY = b"0123456789abcdef0123456789abcdef"
API_KEY = "test-key-0123456789"
ARGS = ["--model", "gru4rec", "--epochs", "1", "--dim", "8", "--hidden", "8", "--max-len", "10", "--quiet"]


def write_log(path: Path, n_users: int = 30) -> Path:
    rng = np.random.default_rng(0)
    lines = ["user_id,item_id,timestamp"]
    for u in range(n_users):
        for t, item in enumerate(rng.choice(25, size=8, replace=False) + 100):
            lines.append(f"alice{u:03d}zz,{item},{1000 + 100 * t + u}")
    path.write_text("\n".join(lines) + "\n")
    return path


def all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_raw_ids_never_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "log.csv")
    keyfile = tmp_path / "key"
    keyfile.write_bytes(KEY)
    out, kept, work = tmp_path / "out" / "art", tmp_path / "out" / "kept", tmp_path / "out"
    assert main(["train", "--data", str(log), *ARGS, "--out", str(out), "--pseudonymise-users", str(keyfile)]) == 0
    assert main(["train", "--data", str(log), *ARGS, "--out", str(kept), "--pseudonymise-users", str(keyfile),
                 "--keep-histories"]) == 0
    assert main(["evaluate", str(kept)]) == 0
    assert main(["recommend", str(kept), "--user", "alice003zz", "--pseudonymise-users", str(keyfile),
                 "--out", str(tmp_path / "recs.csv")]) == 0  # the caller's own output names the id it asked for
    assert b"alice003zz" in (tmp_path / "recs.csv").read_bytes()
    (tmp_path / "who.txt").write_text("alice004zz\nalice005zz\n")
    assert main(["recommend", str(kept), "--users", str(tmp_path / "who.txt"), "--pseudonymise-users", str(keyfile),
                 "--out", str(tmp_path / "many.csv")]) == 0
    many = (tmp_path / "many.csv").read_text()
    assert many.count("alice004zz") == 10 and many.count("alice005zz") == 10
    assert main(["recommend", str(out), "--history", "100,101,102", "--out", str(work / "recs2.json")]) == 0
    assert main(["evaluate", str(out)]) == 2  # no histories: one line, not a traceback
    written = all_bytes(work)
    assert b"alice" not in written and KEY not in written
    assert pseudonym(KEY, "alice003zz").encode() in (kept / "users.json").read_bytes()
    assert json.loads((out / "users.json").read_text())["ids"] == []
    assert json.loads((out / "info.json").read_text())["pseudonymised_users"] is True
    printed = capsys.readouterr()
    assert "alice" not in printed.err and "alice" not in printed.out.replace("alice003zz", "")


@pytest.mark.parametrize("key", [b"short", b""])
def test_a_short_key_is_refused(tmp_path: Path, key: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_bytes(key)
    out = tmp_path / "art"
    assert main(["train", "--data", str(write_log(tmp_path / "log.csv")), *ARGS, "--out", str(out),
                 "--pseudonymise-users", str(keyfile)]) == 2
    assert "at least 16" in capsys.readouterr().err and not out.exists()


def test_forget_removes_id_and_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "log.csv")
    out = tmp_path / "art"
    assert main(["train", "--data", str(log), *ARGS, "--out", str(out)]) == 0
    users = json.loads((out / "users.json").read_text())["ids"]
    row = users.index("alice007zz")
    seqs = load_file(str(out / "sequences.safetensors"))
    history = seqs["items"][seqs["offsets"][row]:seqs["offsets"][row + 1]]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["forget", str(out), "--user", "alice007zz"]) == 0
    assert b"alice007zz" not in all_bytes(tmp_path / "art") and b"alice007zz" in (out / "..").resolve().joinpath(
        "log.csv").read_bytes()
    after = load_file(str(out / "sequences.safetensors"))
    assert len(after["offsets"]) == len(seqs["offsets"]) - 1
    assert len(after["items"]) == len(seqs["items"]) - len(history)
    kept = [u for u in users if u != "alice007zz"]
    assert json.loads((out / "users.json").read_text())["ids"] == kept
    assert (out / "model.safetensors").read_bytes() == before["model.safetensors"]  # weights untouched
    assert main(["recommend", str(out), "--user", "alice008zz"]) == 0
    assert main(["forget", str(out), "--user", "alice007zz"]) == 2  # gone already: nothing changed
    assert "not in the artifact" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".art.tmp")]


def test_retrain_repeats_the_run_and_excludes_users(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.csv")
    out, again, without = tmp_path / "art", tmp_path / "again", tmp_path / "without"
    assert main(["train", "--data", str(log), *ARGS, "--out", str(out)]) == 0
    assert main(["retrain", str(out), "--out", str(again), "--quiet"]) == 0
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert (again / "users.json").read_bytes() == (out / "users.json").read_bytes()
    exclude = tmp_path / "gone.txt"
    exclude.write_text("alice001zz\nalice002zz\n")
    assert main(["retrain", str(out), "--out", str(without), "--exclude-users", str(exclude), "--quiet"]) == 0
    assert b"alice001zz" not in all_bytes(without) and b"alice002zz" not in all_bytes(without)
    assert len(json.loads((without / "users.json").read_text())["ids"]) == 28
    assert (without / "model.safetensors").read_bytes() != (out / "model.safetensors").read_bytes()
    info = json.loads((without / "info.json").read_text())
    assert info["excluded_users"] == 2 and info["excluded_rows"] == 16


def _client(art: Path, store: Path, key: bytes | None) -> TestClient:
    settings = ServeSettings(artifact=art, store=f"sqlite:///{store}", api_key=API_KEY, pseudonym_key=key)
    return TestClient(create_app(build_service(settings), settings))


def test_the_service_maps_ids_with_the_key_and_stores_pseudonyms_only(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.csv")
    keyfile = tmp_path / "key"
    keyfile.write_bytes(KEY)
    art, kept = tmp_path / "art", tmp_path / "kept"
    for out, extra in ((art, []), (kept, ["--keep-histories"])):
        assert main(["train", "--data", str(log), *ARGS, "--out", str(out), "--pseudonymise-users", str(keyfile),
                     *extra]) == 0
    store = tmp_path / "state" / "store.db"
    store.parent.mkdir()
    headers = {"X-API-Key": API_KEY}
    with _client(kept, store, KEY) as client:
        # a user of the artifact's histories, found through the key
        got = client.get("/v1/users/alice003zz/recommendations", params={"k": 5})
        assert got.status_code == 200 and got.json()["user_id"] == "alice003zz"
        posted = client.post("/v1/events", headers=headers,
                             json={"events": [{"user_id": "bob-new-9", "item_id": 101},
                                              {"user_id": "bob-new-9", "item_id": 102}]})
        assert posted.status_code in (200, 201), posted.text
        mine = client.get("/v1/users/bob-new-9/recommendations", params={"k": 5})
        assert mine.status_code == 200 and mine.json()["user_id"] == "bob-new-9"
        history = client.get("/v1/users/bob-new-9/history", headers=headers).json()
        assert [i["item_id"] for i in history["items"]][-2:] == [101, 102]
        listed = client.get("/v1/users", headers=headers)
        assert listed.status_code == 409 and "pseudonymised" in listed.json()["message"]
        assert client.delete("/v1/users/bob-new-9", headers=headers).status_code == 200
    with _client(art, store, KEY) as client:  # no histories in the artifact: the store alone holds them
        client.post("/v1/events", headers=headers, json={"user_id": "carol-7", "item_id": 103})
        assert client.get("/v1/users/carol-7/recommendations").status_code == 200
        assert client.get("/v1/users/alice003zz/recommendations").status_code == 404
    written = all_bytes(store.parent)
    assert b"bob-new" not in written and b"carol-7" not in written and KEY not in written
    assert pseudonym(KEY, "carol-7").encode() in written


def test_the_service_refuses_a_missing_wrong_or_needless_key(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "log.csv")
    keyfile = tmp_path / "key"
    keyfile.write_bytes(KEY)
    art, raw = tmp_path / "art", tmp_path / "raw"
    assert main(["train", "--data", str(log), *ARGS, "--out", str(art), "--pseudonymise-users", str(keyfile)]) == 0
    assert main(["train", "--data", str(log), *ARGS, "--out", str(raw)]) == 0
    store = tmp_path / "store.db"
    for path, key, words in ((art, None, "give the key"), (art, b"another-key-0123456789", "not the one"),
                             (raw, KEY, "raw user ids")):
        with pytest.raises(SeqrecError, match=words):
            _client(path, store, key)
    with pytest.raises(SeqrecError, match="access-log"):
        ServeSettings(artifact=art, pseudonym_key=KEY, access_log=True)
    wrong = tmp_path / "wrong-key"
    wrong.write_bytes(b"another-key-0123456789")
    assert main(["recommend", str(art), "--user", "alice003zz", "--pseudonymise-users", str(wrong)]) == 2
    assert main(["recommend", str(raw), "--user", "alice003zz", "--pseudonymise-users", str(keyfile)]) == 2
    err = capsys.readouterr().err
    assert "not the one it was trained with" in err and "raw user ids" in err


def test_the_key_reaches_worker_processes_through_their_environment() -> None:
    settings = ServeSettings(artifact=Path("art"), api_key=API_KEY, pseudonym_key=KEY)
    env = settings_to_environment(settings)
    assert KEY.decode() not in "".join(env.values())  # hex, never the key's own text in a dump of the settings
    assert settings_from_environment(env).pseudonym_key == KEY
    assert settings_from_environment(settings_to_environment(ServeSettings(artifact=Path("a")))).pseudonym_key is None
