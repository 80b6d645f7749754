"""Experiment tracking for `seqrec train` and `seqrec tune`: MLflow and TensorBoard.

``--track mlflow`` logs a run's settings (the run config, flattened to dotted names) as parameters,
each epoch's loss and validation metrics (step = epoch), the test metrics and the artifact
directory. ``--track tensorboard`` writes the same scalars as TensorBoard event files. Both are
optional (``pip install 'seqrec[track]'``); a tracker whose package is missing is a one-line error
before any training.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

from seqrec.errors import SeqrecError
from seqrec.settings import nearest

TRACKERS = ("mlflow", "tensorboard")
INSTALL = "pip install 'seqrec[track]'"
EpochHook = Callable[[dict[str, float]], None]


class Tracker(Protocol):
    """Where a run's settings, per-epoch metrics, final metrics and files go."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_epoch(self, row: Mapping[str, float]) -> None: ...

    def log_final(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifacts(self, path: Path) -> None: ...

    def close(self, status: str) -> None: ...  # "finished", "failed" or "pruned"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"loss": {"name": "ce"}}} -> {"train.loss.name": "ce"}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def track_names(text: str) -> tuple[str, ...]:
    """``--track`` values: names separated by commas, each a known tracker."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in TRACKERS:
            raise argparse.ArgumentTypeError(f"--track {name!r} is no tracker{nearest(name, TRACKERS)}; "
                                             f"use {' or '.join(TRACKERS)}")
    return names


def add_track_args(parser: argparse.ArgumentParser) -> None:
    """The ``--track`` flags, shared by `seqrec train` and `seqrec tune`."""
    g = parser.add_argument_group("experiment tracking (pip install 'seqrec[track]')")
    g.add_argument("--track", type=track_names, action="append", default=[], metavar="{mlflow,tensorboard}",
                   help="log settings, per-epoch metrics and results to MLflow and/or TensorBoard (repeat the flag "
                   "or separate names with commas)")
    g.add_argument("--track-uri", help="MLflow tracking URI (default: MLflow's own, $MLFLOW_TRACKING_URI or "
                   "sqlite:///mlflow.db in the working folder)")
    g.add_argument("--track-experiment", default=None,
                   help="MLflow experiment name (default: seqrec for train, the study name for tune)")
    g.add_argument("--track-dir", type=Path, help="TensorBoard log folder of this run (default: "
                   "tensorboard/<out name> beside the artifact for train, OUT/tensorboard/trial-N for tune)")


def requested(args: argparse.Namespace) -> tuple[str, ...]:
    """The trackers asked for, each once, in order."""
    return tuple(dict.fromkeys(n for names in getattr(args, "track", []) for n in names))


def metric_name(name: str) -> str:
    """A metric name MLflow accepts: ``valid_NDCG@10`` -> ``valid_NDCG_at_10``."""
    return re.sub(r"[^\w./\- :]", "_", name.replace("@", "_at_"))


def _epoch_scalars(row: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k != "epoch"}


# ---- MLflow -------------------------------------------------------------------------------------


class MlflowTracker:
    """One MLflow run, written through ``MlflowClient`` (no global active run)."""

    STATUS: ClassVar[dict[str, str]] = {"finished": "FINISHED", "failed": "FAILED", "pruned": "KILLED"}

    def __init__(self, uri: str | None, experiment: str, run_name: str, tags: Mapping[str, str] | None = None
                 ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise SeqrecError(f"--track mlflow needs mlflow-skinny: {INSTALL}") from None
        for name in ("mlflow", "alembic"):  # their INFO lines (creating tables, new experiment) are noise here
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.run_id = self.client.create_run(self._experiment(experiment), run_name=run_name,
                                                 tags=dict(tags or {})).info.run_id
        except Exception as exc:  # MLflow's errors (bad URI, unreachable server) are a user's to fix
            raise SeqrecError(f"--track mlflow: cannot start a run at {uri or 'the default URI'}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        self.closed = False
        atexit.register(self._abandon)

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        return str(self.client.create_experiment(name, artifact_location=self._artifact_root(name)))

    def _artifact_root(self, name: str) -> str | None:
        """Artifacts beside a local SQLite store (mlartifacts/<experiment>), not in the working folder."""
        uri = self.client.tracking_uri
        if not uri.startswith("sqlite:///"):
            return None
        db = Path(uri[len("sqlite:///"):])
        return (db.resolve().parent / "mlartifacts" / re.sub(r"[^\w.-]", "_", name)).as_uri()

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_epoch(self, row: Mapping[str, float]) -> None:
        self._metrics(_epoch_scalars(row), int(row.get("epoch", 0)))

    def log_final(self, metrics: Mapping[str, float], step: int) -> None:
        self._metrics(metrics, step)

    def _metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(metric_name(k), float(v), now, step)
                                                    for k, v in metrics.items()])

    def log_artifacts(self, path: Path) -> None:
        self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)

    def close(self, status: str) -> None:
        if not self.closed:
            self.closed = True
            self.client.set_terminated(self.run_id, self.STATUS[status])
            atexit.unregister(self._abandon)

    def _abandon(self) -> None:
        """At exit, a run that was never closed (an error, an interrupt) is marked failed."""
        if not self.closed:
            self.close("failed")


# ---- TensorBoard --------------------------------------------------------------------------------


class TensorBoardTracker:
    """Event files in one folder: ``valid/<metric>`` and ``train/<name>`` per epoch, ``test/<metric>``."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SeqrecError(f"--track tensorboard needs the tensorboard package: {INSTALL}") from None
        try:
            self.writer = SummaryWriter(log_dir=str(log_dir))
        except OSError as exc:
            raise SeqrecError(f"--track tensorboard: cannot write to {log_dir} ({exc.strerror})") from None
        self.log_dir = log_dir

    @staticmethod
    def tag(name: str) -> str:
        for prefix in ("valid", "test"):
            if name.startswith(prefix + "_"):
                return f"{prefix}/{name[len(prefix) + 1:]}"
        return f"train/{name}"

    def log_params(self, params: Mapping[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("run_config", "| setting | value |\n|---|---|\n" + rows, 0)

    def log_epoch(self, row: Mapping[str, float]) -> None:
        step = int(row.get("epoch", 0))
        for name, value in _epoch_scalars(row).items():
            self.writer.add_scalar(self.tag(name), value, step)
        self.writer.flush()

    def log_final(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(self.tag(name), float(value), step)
        self.writer.flush()

    def log_artifacts(self, path: Path) -> None:
        self.writer.add_text("artifact", str(path.resolve()), 0)

    def close(self, status: str) -> None:
        self.writer.add_text("status", status, 0)
        self.writer.close()


# ---- several at once ----------------------------------------------------------------------------


class Trackers:
    """The trackers of one run, called together; no tracker is a no-op."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)
        self.last_epoch = 0

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_params(params)

    def hook(self, inner: EpochHook | None = None) -> EpochHook:
        """An ``on_epoch`` callback: ``inner`` (e.g. the printer), then every tracker."""
        def on_epoch(row: dict[str, float]) -> None:
            if inner is not None:
                inner(row)
            self.last_epoch = int(row.get("epoch", self.last_epoch))
            for t in self.trackers:
                t.log_epoch(row)
        return on_epoch

    def finish(self, metrics: Mapping[str, float], artifact: Path | None = None, status: str = "finished",
               prefix: str = "") -> None:
        """Log the final metrics (named ``prefix`` + name; step: the last epoch) and the artifact
        directory, and close every tracker."""
        named = {f"{prefix}{k}": v for k, v in metrics.items()}
        for t in self.trackers:
            if named:
                t.log_final(named, self.last_epoch)
            if artifact is not None:
                t.log_artifacts(artifact)
            t.close(status)


def open_trackers(names: Sequence[str], *, run_name: str, experiment: str, mlflow_uri: str | None,
                  tensorboard_dir: Path, tags: Mapping[str, str] | None = None) -> Trackers:
    """Start one run in each named tracker (a missing package is a one-line error)."""
    trackers: list[Tracker] = []
    for name in names:
        if name == "mlflow":
            trackers.append(MlflowTracker(mlflow_uri, experiment, run_name, tags))
        elif name == "tensorboard":
            trackers.append(TensorBoardTracker(tensorboard_dir))
        else:
            raise SeqrecError(f"--track {name!r} is no tracker{nearest(name, TRACKERS)}")
    return Trackers(trackers)


def check_installed(names: Sequence[str]) -> None:
    """Fail early, before any data is read, when a requested tracker's package is missing."""
    import importlib.util

    needs = {"mlflow": ("mlflow", "mlflow-skinny"), "tensorboard": ("tensorboard", "tensorboard")}
    for name in names:
        module, package = needs[name]
        if importlib.util.find_spec(module) is None:
            raise SeqrecError(f"--track {name} needs {package}: {INSTALL}")


def train_trackers(args: argparse.Namespace, run_config: Mapping[str, Any], out: Path) -> Trackers:
    """The trackers of a `seqrec train` run writing the artifact ``out``, with its settings logged."""
    names = requested(args)
    if not names:
        return Trackers()
    check_installed(names)
    trackers = open_trackers(names, run_name=out.name, experiment=args.track_experiment or "seqrec",
                             mlflow_uri=args.track_uri,
                             tensorboard_dir=args.track_dir or out.parent / "tensorboard" / out.name,
                             tags={"seqrec.command": "train", "seqrec.artifact": str(out)})
    trackers.log_params(flatten(run_config))
    return trackers
