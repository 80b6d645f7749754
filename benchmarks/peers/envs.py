"""Per-tool virtual environments under benchmarks/peers/.venvs/, created once and reused."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"

# torch first, alone, so that pip takes the local CPU wheel and never a CUDA one.
TORCH = ["torch==2.13.0"]
SPECS: dict[str, list[list[str]]] = {
    "recbole": [TORCH, ["recbole==1.2.1", "torch==2.13.0", "numpy<2", "pandas<2.3", "scipy<1.14", "setuptools<81",
                        "ray", "thop", "tensorboard", "colorlog", "texttable", "plotly", "kmeans-pytorch"]],
    "rectools": [TORCH, ["rectools[torch]==0.19.*", "torch==2.13.0"]],
}
CHECK = {"recbole": "import recbole.quick_start", "rectools": "from rectools.models import SASRecModel"}
MARKER = ".seqrec-peers-installed"


def python_of(env: str) -> Path:
    return VENVS / env / "bin" / "python"


def ensure(env: str) -> tuple[bool, float]:
    """Create and fill the venv for ``env`` unless its marker says it is done; (ok, seconds spent)."""
    t0 = time.perf_counter()
    root = VENVS / env
    marker = root / MARKER
    wanted = repr(SPECS[env])
    if marker.exists() and marker.read_text() == wanted:
        return True, 0.0
    log = VENVS / f"{env}-install.log"
    VENVS.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        steps: list[list[str]] = []
        if not python_of(env).exists():
            steps.append([sys.executable, "-m", "venv", str(root)])
        steps += [[str(python_of(env)), "-m", "pip", "install", "--quiet", *spec] for spec in SPECS[env]]
        steps.append([str(python_of(env)), "-c", CHECK[env]])
        for cmd in steps:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT,
                                   env={**_base_env(), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
            if code != 0:
                print(f"[peers] {env}: install step failed (exit {code}): {' '.join(cmd[-3:])}; see {log}", flush=True)
                return False, time.perf_counter() - t0
    marker.write_text(wanted)
    return True, time.perf_counter() - t0


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}


if __name__ == "__main__":
    for name in sys.argv[1:] or list(SPECS):
        ok, secs = ensure(name)
        print(f"[peers] {name}: {'ready' if ok else 'FAILED'} ({secs:.0f}s)", flush=True)
