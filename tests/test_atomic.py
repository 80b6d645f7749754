"""Directories replaced atomically (seqrec.atomic.commit_dir): the old or the new, never neither, and a
commit cut between its two renames loses nothing."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from seqrec import atomic
from seqrec.atomic import commit_dir, restore_dir


def _dir(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "model.safetensors").write_text(text)
    return path


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_commit_replaces_the_directory_and_leaves_nothing_beside(tmp_path: Path, exchange: bool,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    final = _dir(tmp_path / "art", "old")
    commit_dir(_dir(tmp_path / ".art.tmp-1", "new"), final)
    assert (final / "model.safetensors").read_text() == "new"
    commit_dir(_dir(tmp_path / ".art.tmp-2", "newer"), final)
    assert (final / "model.safetensors").read_text() == "newer"
    assert _leftovers(tmp_path) == []
    commit_dir(_dir(tmp_path / ".fresh.tmp", "first"), tmp_path / "fresh")  # nothing there before
    assert (tmp_path / "fresh" / "model.safetensors").read_text() == "first"


def test_a_commit_cut_between_its_renames_is_repaired_not_lost(tmp_path: Path) -> None:
    final = tmp_path / "art"
    _dir(tmp_path / ".art.old", "old")  # what a kill between the two renames of the fallback leaves
    assert restore_dir(final) and (final / "model.safetensors").read_text() == "old"
    assert not restore_dir(final)  # nothing to repair now
    (final / "model.safetensors").rename(tmp_path / "keep")
    final.rename(tmp_path / ".art.old")
    (tmp_path / ".art.old" / "model.safetensors").write_text("old")
    commit_dir(_dir(tmp_path / ".art.tmp", "new"), final)  # the next commit puts the old back, then replaces it
    assert (final / "model.safetensors").read_text() == "new" and _leftovers(tmp_path) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the one-step swap is Linux's renameat2")
def test_a_reader_never_finds_the_directory_missing(tmp_path: Path) -> None:
    final = _dir(tmp_path / "art", "0")
    missing, done = [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            if not final.is_dir():
                missing.append(1)

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        for i in range(200):
            commit_dir(_dir(tmp_path / f".art.tmp-{i}", str(i + 1)), final)
    finally:
        done.set()
        reader.join()
    assert not missing and (final / "model.safetensors").read_text() == "200"
