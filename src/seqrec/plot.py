"""`seqrec plot RUN`: learning curves from the metrics history stored in an artifact."""

from __future__ import annotations

import json
from pathlib import Path

from seqrec.atomic import replace_file
from seqrec.errors import ArtifactError, SeqrecError


def plot_history(run: Path, output: Path | None = None) -> Path:
    info_path = run / "info.json"
    if not info_path.exists():
        raise ArtifactError(f"{run}: no info.json with a metrics history; is this a `seqrec train --out` directory?")
    try:
        history = json.loads(info_path.read_text()).get("history") or []
    except ValueError as exc:
        raise ArtifactError(f"{info_path}: not valid JSON ({exc})") from exc
    rows = [r for r in history if r.get("epoch", 0) > 0]
    if not rows:
        raise SeqrecError(f"{run}: the history has no training epochs to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SeqrecError("plotting needs matplotlib: pip install 'seqrec[plot]'") from exc
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["loss"] for r in rows], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key in sorted(k for k in rows[0] if k.startswith("valid_")):
        ax_metric.plot(epochs, [r[key] for r in rows], marker="o", label=key.removeprefix("valid_"))
    ax_metric.set(xlabel="epoch", ylabel="validation", title="validation (full ranking)")
    ax_metric.legend()
    fig.tight_layout()
    out = output or run / "curves.png"
    try:
        replace_file(out, lambda tmp: fig.savefig(tmp, dpi=100), f"--out {out}" if output else None)
    finally:
        plt.close(fig)
    return out
