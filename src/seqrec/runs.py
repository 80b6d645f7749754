"""`seqrec runs` and `seqrec compare`: artifacts listed and compared from their config.toml and info.json.

Nothing here loads weights: each run is read from its two small text files (``tomllib`` and ``json``), and
a folder whose files cannot be read or parsed becomes an "unreadable" row with the reason, never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from seqrec.atomic import replace_file
from seqrec.errors import SeqrecError
from seqrec.report import table

CONFIG, INFO = "config.toml", "info.json"
MAX_BYTES = 16 << 20  # a config.toml or info.json larger than this is not a seqrec run's
METRIC = "NDCG@10"
COLUMNS = ("run", "dataset", "model", "dim", "n_layers", "loss", "lr", "epochs", "best_valid_NDCG@10",
           "test_NDCG@10", "test_HR@10", "train_seconds", "date")
RUN_FORMATS = ("table", "json", "csv")


@dataclass
class Run:
    """One artifact folder as read from its text files; ``error`` is set when they could not be read."""

    path: Path
    name: str  # as shown: the path relative to the listed folder, or as given
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    mtime: float | None = None
    error: str | None = None

    @property
    def model(self) -> str | None:
        model = self.config.get("model")
        return str(model.get("name")) if isinstance(model, dict) and "name" in model else None

    def setting(self, *path: str) -> Any:
        """A config value by its keys (``"train", "loss", "name"``), or None."""
        node: Any = self.config
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    @property
    def history(self) -> list[dict[str, Any]]:
        rows = self.info.get("history")
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    def best_valid(self) -> float | None:
        """The validation NDCG@10 of the best epoch (the history row of ``best_epoch``, else the best row)."""
        key = f"valid_{METRIC}"
        best = self.info.get("best_epoch")
        values = [(r.get("epoch"), _number(r.get(key))) for r in self.history]
        at_best = [v for e, v in values if e == best and v is not None]
        if at_best:
            return at_best[0]
        found = [v for _, v in values if v is not None]
        return max(found) if found else None

    def test(self, metric: str) -> float | None:
        metrics = self.info.get("test_metrics")
        return _number(metrics.get(metric)) if isinstance(metrics, dict) else None

    def row(self) -> dict[str, Any]:
        """The listing's fields (None where unknown)."""
        dataset = self.info.get("dataset")
        if dataset is None:
            dataset = self.setting("data", "dataset")
        return {
            "run": self.name,
            "dataset": dataset if isinstance(dataset, str) else None,
            "model": self.model,
            "dim": self.setting("model", "dim"),
            "n_layers": self.setting("model", "n_layers"),
            "loss": self.setting("train", "loss", "name"),
            "lr": self.setting("train", "lr"),
            "epochs": self.setting("train", "epochs"),
            "best_valid_NDCG@10": self.best_valid(),
            "test_NDCG@10": self.test("NDCG@10"),
            "test_HR@10": self.test("HR@10"),
            "train_seconds": _number(self.info.get("train_seconds")),
            "date": None if self.mtime is None else datetime.fromtimestamp(self.mtime).isoformat(timespec="seconds"),
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_text(path: Path) -> str:
    st = path.stat()
    if not path.is_file():
        raise ValueError(f"{path.name} is not a regular file")
    if st.st_size > MAX_BYTES:
        raise ValueError(f"{path.name} is {st.st_size:,} bytes, more than a run's ({MAX_BYTES:,} at most)")
    return path.read_text(encoding="utf-8")


def read_run(path: Path, name: str | None = None) -> Run:
    """The run in ``path``, read from config.toml and info.json only; never raises for a bad folder."""
    run = Run(path, name if name is not None else str(path))
    try:
        config_text, info_text = _read_text(path / CONFIG), _read_text(path / INFO)
        run.mtime = (path / INFO).stat().st_mtime
    except FileNotFoundError as exc:
        run.error = f"{Path(exc.filename or '?').name} is missing"
        return run
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        run.error = _one_line(f"cannot read its files ({getattr(exc, 'strerror', None) or exc})")
        return run
    try:
        config = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as exc:
        run.error = _one_line(f"{CONFIG} is not valid TOML ({exc})")
        return run
    try:
        info = json.loads(info_text)
    except (ValueError, RecursionError) as exc:
        run.error = _one_line(f"{INFO} is not valid JSON ({exc})")
        return run
    if not isinstance(info, dict):
        run.error = f"{INFO} holds a {type(info).__name__}, not an object"
    elif not isinstance(config.get("model"), dict) or not isinstance(config["model"].get("name"), str):
        run.error = f"{CONFIG} has no [model] table with a name"
    else:
        run.config, run.info = config, info
    return run


def find_runs(root: Path) -> list[Path]:
    """Every folder under ``root`` (``root`` included) holding a config.toml and an info.json, sorted."""
    if not root.is_dir():
        raise SeqrecError(f"{root}: no such folder; give the folder holding your runs (default: runs)")
    found = []
    for folder, dirs, files in os.walk(root, onerror=None, followlinks=False):
        dirs.sort()
        if CONFIG in files and INFO in files:
            found.append(Path(folder))
    return sorted(found)


def _sort_key(run: Run) -> tuple[int, float, str]:
    ndcg = run.test(METRIC) if run.error is None else None
    return (0 if ndcg is not None else 1 if run.error is None else 2, -(ndcg or 0.0), run.name)


def list_runs(root: Path) -> list[Run]:
    """The runs under ``root``: by test NDCG@10, best first; runs without test metrics, then unreadable ones last."""
    runs = [read_run(p, str(p.relative_to(root)) if p != root else str(root)) for p in find_runs(root)]
    return sorted(runs, key=_sort_key)


def _show(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if key == "train_seconds" and isinstance(value, float):
        return f"{value:.1f}s"
    if key == "date" and isinstance(value, str):
        return value.replace("T", " ")[:16]
    if key == "lr" and isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_runs(runs: Sequence[Run], fmt: str = "table") -> str:
    """The listing as a table (unreadable runs on their own lines below it), JSON or CSV."""
    readable = [r for r in runs if r.error is None]
    bad = [r for r in runs if r.error is not None]
    if fmt == "json":
        rows: list[dict[str, Any]] = [r.row() for r in readable]
        rows += [{"run": r.name, "unreadable": r.error} for r in bad]
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*COLUMNS, "unreadable"])
        for r in readable:
            writer.writerow([*("" if v is None else v for v in r.row().values()), ""])
        for r in bad:
            writer.writerow([r.name, *[""] * (len(COLUMNS) - 1), r.error])
        return out.getvalue().rstrip("\n")
    if fmt != "table":
        raise SeqrecError(f"unknown format {fmt!r}; choose one of {', '.join(RUN_FORMATS)}")
    headers = ["run", "dataset", "model", "dim", "layers", "loss", "lr", "epochs", "valid NDCG@10",
               "test NDCG@10", "test HR@10", "train", "date"]
    lines = [table(headers, [[_show(v, k) for k, v in r.row().items()] for r in readable])] if readable else []
    lines += [f"{r.name}  unreadable: {r.error}" for r in bad]
    return "\n".join(lines)


# ---- compare ----------------------------------------------------------------------------------


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def read_runs(paths: Sequence[Path]) -> list[Run]:
    """The runs to compare, in the order given; a folder that is not a readable run is a SeqrecError."""
    if len(paths) < 2:
        raise SeqrecError("compare needs at least two runs; give two or more artifact directories")
    runs = []
    for path in paths:
        if not path.is_dir():
            raise SeqrecError(f"{path}: no such folder; give artifact directories written by `seqrec train --out`")
        run = read_run(path)
        if run.error is not None:
            raise SeqrecError(f"{path}: unreadable: {run.error}")
        runs.append(run)
    return runs


def differing_settings(runs: Sequence[Run]) -> dict[str, list[Any]]:
    """Each config setting (dotted name) whose value is not the same in every run: its value per run."""
    flat = [_flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f} - {"format_version"})
    return {k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k), default=str) for f in flat}) > 1}


def compare_text(runs: Sequence[Run]) -> str:
    """The runs side by side: the settings that differ, then the metrics."""
    names = [r.name for r in runs]
    diff = differing_settings(runs)
    dataset = [r.row()["dataset"] for r in runs]
    if len(set(map(str, dataset))) > 1:
        diff = {"dataset": dataset, **diff}
    parts = ["settings that differ:"]
    parts.append(table(["setting", *names], [[k, *(_show(v) for v in vs)] for k, vs in diff.items()])
                 if diff else "  (none: the runs share every setting)")
    metrics: list[list[str]] = [
        ["best epoch", *(_show(r.info.get("best_epoch")) for r in runs)],
        [f"best valid {METRIC}", *(_show(r.best_valid()) for r in runs)],
        *([f"test {m}", *(_show(r.test(m)) for r in runs)] for m in ("NDCG@10", "HR@10", "MRR@10")),
        ["train time", *(_show(_number(r.info.get("train_seconds")), "train_seconds") for r in runs)],
        ["parameters", *(_show(r.info.get("n_parameters")) for r in runs)],
    ]
    parts += ["", "metrics:", table(["metric", *names], metrics)]
    return "\n".join(parts)


def plot_compare(runs: Sequence[Run], output: Path) -> Path:
    """Validation NDCG@10 by epoch of every run on one figure (seqrec.plot's style), written to ``output``."""
    key = f"valid_{METRIC}"
    curves = []
    for run in runs:
        rows = [r for r in run.history if _number(r.get("epoch")) is not None and _number(r.get(key)) is not None]
        trained = [r for r in rows if r["epoch"] > 0]
        curves.append((run.name, trained or rows))
    if not any(rows for _, rows in curves):
        raise SeqrecError(f"none of the runs has a validation {METRIC} history to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SeqrecError("plotting needs matplotlib: pip install 'seqrec[plot]'") from exc
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in curves:
        if rows:
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker="o", label=name)
    ax.set(xlabel="epoch", ylabel=f"validation {METRIC}", title="validation (full ranking)")
    ax.legend()
    fig.tight_layout()
    try:
        replace_file(output, lambda tmp: fig.savefig(tmp, dpi=100), f"--plot {output}")
    finally:
        plt.close(fig)
    return output
