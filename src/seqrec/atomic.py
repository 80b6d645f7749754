"""Write a directory atomically: build it beside the target, then rename it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from seqrec.errors import SeqrecError


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``final``; on success it replaces ``final``,
    on any failure it is removed, so nothing half-written is ever left behind."""
    if final.exists() and not final.is_dir():
        raise SeqrecError(f"{final}: exists and is not a directory; choose another output path")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as exc:
        raise SeqrecError(f"{final}: cannot create the output directory ({exc.strerror})") from exc
    try:
        yield tmp
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_dir(tmp: Path, final: Path) -> None:
    """Replace ``final`` with ``tmp``; a reader sees the old or the new directory, never half."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
