"""Pseudonymised user ids, forgetting and retraining, through the command line: raw ids never reach
a written byte, a forgotten user's id and history leave the artifact's files, a retrain without
exclusions equals the original, bad input is one line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from seqrec.cli import main
from seqrec.privacy.ids import pseudonym

KEY = b"0123456789abcdef0123456789abcdef"
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
