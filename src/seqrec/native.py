"""Optional C++ kernels, compiled on first use with torch's extension builder.

The only one so far is the per-tile work of the full-catalog cross-entropy (``csrc/tiled_ce.cpp``;
its eager reference lives in fused_ce.py). Building needs a C++ compiler and ninja (a dependency);
it takes ~40 s once. The binary is cached in ``$SEQREC_NATIVE_DIR`` (default
``~/.cache/seqrec/native``) under a name that changes with the source, torch version and CPU flags,
since it is built with ``-march=native``. A build lock left by a killed build is removed after
``STALE_LOCK_SECONDS`` (torch would wait on it forever). If anything fails, seqrec warns once and
uses the eager path. ``SEQREC_NATIVE=0`` turns the kernels off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import time
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch

STALE_LOCK_SECONDS = 600.0
_LOCK = threading.Lock()
_LOADED: dict[str, Any] = {}  # name -> module, or None after a failed build


def enabled() -> bool:
    return os.environ.get("SEQREC_NATIVE", "1") != "0"


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


def _build_name(source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes() + torch.__version__.encode() + _cpu_flags().encode())
    return f"{source.stem}_{digest.hexdigest()[:12]}"


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seqrec" / "native"
    return Path(os.environ.get("SEQREC_NATIVE_DIR") or default)


def _drop_stale_lock(build_dir: Path) -> None:
    lock = build_dir / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
    except FileNotFoundError:
        pass


def _ninja_on_path() -> None:
    """torch looks for ninja on PATH; the ``ninja`` wheel puts it next to this interpreter."""
    here = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and (Path(here) / "ninja").exists():
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")


def kernels(stem: str) -> Any | None:
    """The compiled module for ``csrc/<stem>.cpp``, or None (disabled, or the build failed)."""
    if not enabled():
        return None
    with _LOCK:
        if stem not in _LOADED:
            _LOADED[stem] = _build(stem)
        return _LOADED[stem]


def _build(stem: str) -> Any | None:
    from torch.utils.cpp_extension import load

    source = Path(str(resources.files("seqrec") / "csrc" / f"{stem}.cpp"))
    try:
        name = _build_name(source)
        build_dir = cache_dir() / name
        build_dir.mkdir(parents=True, exist_ok=True)
        _drop_stale_lock(build_dir)
        _ninja_on_path()
        return load(name=name, sources=[str(source)], build_directory=str(build_dir),
                    extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"], extra_ldflags=["-fopenmp"])
    except Exception as exc:  # no compiler, no ninja, no headers: the eager path still works
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"seqrec: C++ kernels '{stem}' unavailable ({type(exc).__name__}: {first}); "
                      "using the eager path", RuntimeWarning, stacklevel=3)
        return None
