"""Write a directory atomically: build it beside the target, then rename it into place.

The directory is private: ``tempfile.mkdtemp`` creates it 0700, :func:`write_private` and
:func:`create_private` create files 0600, and before the rename every entry is made so (files 0600,
folders 0700), whoever wrote it; a rename keeps modes, so the target is private from its first moment.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from seqrec.errors import SeqrecError

FILE_MODE, DIR_MODE = 0o600, 0o700
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh private temporary directory beside ``final``; on success it replaces ``final``,
    on any failure it is removed, so nothing half-written is ever left behind."""
    if final.exists() and not final.is_dir():
        raise SeqrecError(f"{final}: exists and is not a directory; choose another output path")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        os.chmod(tmp, DIR_MODE)  # mkdtemp's mode already; said here so that it cannot silently change
    except OSError as exc:
        raise SeqrecError(f"{final}: cannot create the output directory ({exc.strerror})") from exc
    try:
        yield tmp
        make_private(tmp)
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def create_private(path: Path) -> None:
    """Create the empty file ``path`` with mode 0600 (failing if anything is there already)."""
    os.close(_open_private(path))


def write_private(path: Path, data: bytes) -> None:
    """Create the file ``path`` with mode 0600 and write ``data`` to it."""
    fd = _open_private(path)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _open_private(path: Path) -> int:
    fd = os.open(path, _CREATE, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # exactly 0600, whatever the umask took away
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private(root: Path) -> None:
    """Files under ``root`` 0600, folders 0700 (``root`` included); links are left alone, not followed."""
    for folder, _dirs, files in os.walk(root):  # not into linked folders
        os.chmod(folder, DIR_MODE)
        for name in files:
            entry = os.path.join(folder, name)
            if stat.S_ISREG(os.lstat(entry).st_mode):
                os.chmod(entry, FILE_MODE)


def commit_dir(tmp: Path, final: Path) -> None:
    """Replace ``final`` with ``tmp``; a reader sees the old or the new directory, never half, and never
    neither. On Linux the two are swapped in one step (``renameat2`` with ``RENAME_EXCHANGE``); elsewhere the
    old one is moved aside to ``.NAME.old`` first, and a commit cut between the two renames is repaired by the
    next one (:func:`restore_dir`) instead of losing the old directory."""
    restore_dir(final)
    if final.exists() and _exchange(tmp, final):
        shutil.rmtree(tmp)  # it holds the old directory now
        return
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def restore_dir(final: Path) -> bool:
    """Put back ``.NAME.old`` when ``final`` is missing (a commit cut between its two renames): True if it did."""
    old = final.with_name(f".{final.name}.old")
    if final.exists() or not old.is_dir():
        return False
    os.replace(old, final)
    return True


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the platform or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # a libc without the wrapper (glibc < 2.28, some others)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or file system without the flag
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_file(path: Path, write: Callable[[Path], object], name: str | None = None) -> None:
    """Write the file ``path`` whole: ``write`` fills a temporary file beside it (same suffix, so writers
    that go by the extension still can), which is then renamed into place. A reader never sees half a
    file, and a failed write leaves the old file as it was; it is one line naming ``name`` (default: the
    path)."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SeqrecError(f"{name or path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_text(path: Path, text: str) -> None:
    """Replace the file ``path`` whole with ``text`` (a reader never sees half a file)."""
    replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
