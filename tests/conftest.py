"""Shared fixtures: a tiny interaction log and one small artifact trained on it once per session.

Tests take these as fixtures rather than `from conftest import ...`: with several conftest.py
files in the tree, the module name `conftest` is not reliable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# the smallest model that still goes through every step of `seqrec train`
TINY_TRAIN_ARGS = ("--model", "gru4rec", "--epochs", "1", "--dim", "8", "--hidden", "8", "--max-len", "10",
                   "--quiet")


def write_tiny_log(path: Path, n_users: int = 30, n_items: int = 25, length: int = 8, seed: int = 0) -> Path:
    """A CSV of ``n_users`` users with ``length`` distinct items each (ids 100..), distinct times."""
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,timestamp"]
    for u in range(n_users):
        items = rng.choice(n_items, size=length, replace=False) + 100
        lines += [f"u{u},{item},{1000 + 100 * t + u}" for t, item in enumerate(items)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_train_args() -> list[str]:
    """Options for `seqrec train` that keep a run to about a second."""
    return list(TINY_TRAIN_ARGS)


@pytest.fixture(scope="session")
def tiny_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_log(tmp_path_factory.mktemp("log") / "tiny.csv")


@pytest.fixture(scope="session")
def trained_artifact(tiny_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gru4rec artifact trained for one epoch on ``tiny_log``. Copy it before changing it (and see
    ``rewrite_manifest``: loading checks every file against its digest)."""
    from seqrec.cli import main

    out = tmp_path_factory.mktemp("artifact") / "model"
    assert main(["train", "--data", str(tiny_log), *TINY_TRAIN_ARGS, "--out", str(out)]) == 0
    return out


def _rewrite_manifest(artifact: Path) -> None:
    from seqrec.artifact import FILES, MANIFEST

    digests = {name: hashlib.sha256((artifact / name).read_bytes()).hexdigest()
               for name in (*FILES, "info.json") if (artifact / name).exists()}
    (artifact / MANIFEST).write_text(json.dumps({"sha256": digests}, indent=2))


@pytest.fixture(scope="session")
def rewrite_manifest() -> Callable[[Path], None]:
    """``rewrite_manifest(artifact_dir)``: record the files' current SHA-256 digests in its manifest,
    so that a test's edit of a saved artifact reaches the check it is aimed at instead of failing
    the digest check first."""
    return _rewrite_manifest
